//! Nothing outlives trust (issue 10 items 1 and 3): a revoked certificate, an expired one and
//! a policy reload that withdraws a grant end the live sessions that relied on them — a real
//! psql in `pg_sleep` and a real ssh in `sleep` through the real gateway — and the accounts go
//! with them; before a session's time is up its user is warned, in psql and on ssh's stderr.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::*;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice, bob] }
    targets: [orders]
    postgres: { roles: [orders_read] }
  - name: web
    subjects: { users: [alice] }
    targets: [web-1]
    ssh: {}
"#;

struct Env {
    pg: Postgres,
    sshd: Sshd,
    gw: Gateway,
}

/// A gateway with the Postgres target `orders` and the SSH target `web-1`; `edit` may change
/// its config.
fn env(edit: impl FnOnce(String) -> String) -> Option<Env> {
    for bin in ["psql", "ssh"] {
        if which(bin).is_none() {
            unavailable(&format!(
                "{bin} (apt-get install postgresql-client openssh-client)"
            ))?;
        }
    }
    let pg = Postgres::start()?;
    let sshd = Sshd::start()?;
    let gw = Gateway::start_edited(Some(&pg), Some(&sshd), POLICY, edit);
    Some(Env { pg, sshd, gw })
}

impl Env {
    /// A certificate for `user` (no groups) valid for `ttl` (`certs issue --ttl`).
    fn issue(&self, user: &str, ttl: &str) -> (PathBuf, PathBuf) {
        let out = self.gw.path(&format!("users-{ttl}"));
        jitgate(&[
            "certs",
            "issue",
            "--dir",
            self.gw.path("certs").to_str().unwrap(),
            "--user",
            user,
            "--ttl",
            ttl,
            "--out",
            out.to_str().unwrap(),
        ]);
        (
            out.join(format!("{user}.crt")),
            out.join(format!("{user}.key")),
        )
    }

    fn revoke(&self, cert: &Path) {
        jitgate(&[
            "certs",
            "revoke",
            "--dir",
            self.gw.path("certs").to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ]);
    }

    /// psql running `sql` in the background, its output captured.
    fn psql(&self, user: &str, cert: &(PathBuf, PathBuf), sql: &str) -> Child {
        Command::new(which("psql").unwrap())
            .args(["-X", "-q", "-A", "-t", "-v", "VERBOSITY=verbose"])
            .arg(self.gw.conninfo(user, Some((&cert.0, &cert.1)), ""))
            .args(["-c", sql])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// ssh through `jitgate tunnel` running `command` on web-1 in the background.
    fn ssh(&self, user: &str, cert: &(PathBuf, PathBuf), command: &str) -> Child {
        let proxy = format!(
            "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
            jitgate_bin().display(),
            self.gw.ssh_port,
            cert.0.display(),
            cert.1.display(),
            self.gw.path("certs/ca.crt").display()
        );
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", &proxy])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@web-1"))
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// How many client backends are running `sql` (as a JIT role) right now.
    fn running(&self, sql: &str) -> usize {
        self.pg
            .superuser_sql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{}'",
                    sql.replace('\'', "''")
                ),
            )
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether some JIT account of this test runs `sleep` on the SSH target.
    fn ssh_sleeping(&self) -> bool {
        self.sshd.own_accounts().iter().any(|account| {
            Command::new("pgrep")
                .args(["-u", account, "-x", "sleep"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what} did not happen:\n{}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_no_ssh_accounts(&self) -> Vec<String> {
        let start = Instant::now();
        loop {
            let left = self.sshd.own_accounts();
            if left.is_empty() || start.elapsed() > Duration::from_secs(15) {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits for every child to exit (each within `limit`); returns each one's output and how
/// long after the call it exited.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<(Output, Duration)> {
    let start = Instant::now();
    let mut children: Vec<(Child, Option<Duration>)> =
        children.into_iter().map(|c| (c, None)).collect();
    while children.iter().any(|(_, t)| t.is_none()) {
        for (child, exited) in &mut children {
            if exited.is_none() && child.try_wait().unwrap().is_some() {
                *exited = Some(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            for (child, _) in &mut children {
                let _ = child.kill();
            }
            let outputs: Vec<String> = children
                .into_iter()
                .map(|(c, _)| stderr(&c.wait_with_output().unwrap()))
                .collect();
            panic!("still running after {limit:?}: {outputs:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    children
        .into_iter()
        .map(|(c, t)| (c.wait_with_output().unwrap(), t.unwrap()))
        .collect()
}

/// `certs revoke` ends a live psql and a live ssh session of that certificate within about a
/// second, with the reason, and both accounts are dropped.
#[test]
fn revocation_ends_live_sessions_on_both_protocols() {
    let Some(env) = env(|c| c) else { return };
    let alice = env.issue("alice", "1h");
    let sql = "SELECT pg_sleep(30)";
    let psql = env.psql("alice", &alice, sql);
    let ssh = env.ssh("alice", &alice, "sleep 30; echo outlived");
    env.wait_until("psql's query running", || env.running(sql) == 1);
    env.wait_until("ssh's command running", || env.ssh_sleeping());

    env.revoke(&alice.0);
    let ended = wait_all(vec![psql, ssh], Duration::from_secs(10));
    let (psql, psql_after) = &ended[0];
    let (ssh, ssh_after) = &ended[1];
    eprintln!("after revoke: psql ended in {psql_after:?}, ssh in {ssh_after:?}");

    let said = stderr(psql);
    assert!(!psql.status.success(), "{said}");
    assert!(
        said.contains("WARNING:  01000: jitgate: your certificate was revoked"),
        "{said}"
    );
    // The end is PostgreSQL's own, as when an administrator terminates a backend.
    assert!(
        said.contains("57P01")
            && said.contains("terminating connection due to administrator command"),
        "{said}"
    );
    let said = stderr(ssh);
    assert_eq!(ssh.status.code(), Some(255), "{said}");
    assert!(
        said.contains("jitgate: your certificate was revoked"),
        "{said}"
    );
    assert!(!stdout(ssh).contains("outlived"));
    for after in [psql_after, ssh_after] {
        assert!(
            *after < Duration::from_millis(1500),
            "a session outlived its revocation by {after:?}:\n{}",
            env.gw.log()
        );
    }

    assert_eq!(env.pg.wait_no_jit_roles(), Vec::<String>::new());
    assert_eq!(env.wait_no_ssh_accounts(), Vec::<String>::new());
    let log = env.gw.log();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session.ended_by_trust"))
        .collect();
    assert_eq!(ended.len(), 2, "{log}");
    assert!(
        ended
            .iter()
            .all(|l| l.contains("end_reason=\"certificate_revoked\"")
                && l.contains("trigger=\"crl_reload\"")),
        "{ended:?}"
    );
}

/// A session ends when its certificate expires, even though max_session (1 h) is far off;
/// `session_warnings` before, the user is told, in psql and on ssh's stderr.
#[test]
fn certificate_expiry_ends_sessions_and_is_announced() {
    let Some(env) = env(|c| format!("{c}session_warnings: [8s]\n")) else {
        return;
    };
    let issued = Instant::now();
    let alice = env.issue("alice", "15s");
    let sql = "SELECT pg_sleep(60)";
    let psql = env.psql("alice", &alice, sql);
    let ssh = env.ssh("alice", &alice, "sleep 60; echo outlived");
    env.wait_until("psql's query running", || env.running(sql) == 1);
    env.wait_until("ssh's command running", || env.ssh_sleeping());

    let waiting_since = issued.elapsed();
    let ended = wait_all(vec![psql, ssh], Duration::from_secs(30));
    for (_, after) in &ended {
        let at = waiting_since + *after;
        // notAfter is now + 15 s, in whole seconds.
        assert!(
            at > Duration::from_secs(13) && at < Duration::from_secs(17),
            "ended {at:?} after the certificate was issued:\n{}",
            env.gw.log()
        );
    }
    let said = stderr(&ended[0].0);
    assert!(
        said.contains(
            "WARNING:  01000: jitgate: this session ends in 8s, when your certificate expires"
        ),
        "{said}"
    );
    assert!(
        said.contains("jitgate: your certificate expired; this session ends with it"),
        "{said}"
    );
    assert!(said.contains("57P01"), "{said}");
    let said = stderr(&ended[1].0);
    assert_eq!(ended[1].0.status.code(), Some(255), "{said}");
    assert!(
        said.contains("jitgate: this session ends in 8s, when your certificate expires"),
        "{said}"
    );
    assert!(
        said.contains("jitgate: your certificate expired; this session ends with it"),
        "{said}"
    );
    assert!(!stdout(&ended[1].0).contains("outlived"));
    assert_eq!(env.pg.wait_no_jit_roles(), Vec::<String>::new());
    assert_eq!(env.wait_no_ssh_accounts(), Vec::<String>::new());
    // Both sessions' `session.start` name the certificate's notAfter as their deadline, not
    // max_session's hour (docs/audit-events.md: the earliest of the two).
    let starts = audit_events(&env.gw, "session.start");
    let protocols: Vec<&str> = starts
        .iter()
        .map(|v| v["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols.len(), 2, "{starts:?}");
    assert!(
        protocols.contains(&"postgres") && protocols.contains(&"ssh"),
        "{starts:?}"
    );
    for start in &starts {
        let deadline = humantime::parse_rfc3339(start["deadline"].as_str().unwrap()).unwrap();
        let left = deadline
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(left < Duration::from_secs(60), "{start}");
    }
}

/// The gateway's audit events named `event`, in the order written.
fn audit_events(gw: &Gateway, event: &str) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(gw.path("audit"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|v| v["event"] == event)
        .collect()
}

/// A SIGHUP reload that removes a grant, or stops it applying to a user, ends the live
/// sessions that relied on it; a session whose grant still applies goes on.
#[test]
fn policy_reload_ends_sessions_of_a_withdrawn_grant() {
    let Some(env) = env(|c| c) else { return };
    let alice = env.issue("alice", "1h");
    let bob = env.issue("bob", "1h");
    let sql = "SELECT pg_sleep(30)";
    let psql = env.psql("alice", &alice, sql);
    let ssh = env.ssh("alice", &alice, "sleep 30; echo outlived");
    let bob_sql = "SELECT pg_sleep(4), 'bob done'";
    let bob_psql = env.psql("bob", &bob, bob_sql);
    env.wait_until("alice's query running", || env.running(sql) == 1);
    env.wait_until("bob's query running", || env.running(bob_sql) == 1);
    env.wait_until("ssh's command running", || env.ssh_sleeping());

    // `db` no longer applies to alice; `web` is gone.
    fs::write(
        env.gw.path("policies/test.yaml"),
        POLICY
            .replace("users: [alice, bob]", "users: [bob]")
            .split("  - name: web")
            .next()
            .unwrap(),
    )
    .unwrap();
    env.gw.signal("HUP");
    let ended = wait_all(vec![psql, ssh], Duration::from_secs(10));
    for (_, after) in &ended {
        assert!(
            *after < Duration::from_secs(2),
            "{after:?}\n{}",
            env.gw.log()
        );
    }
    let said = stderr(&ended[0].0);
    assert!(
        said.contains("jitgate: the policy no longer grants this session (grant db)"),
        "{said}"
    );
    assert!(said.contains("57P01"), "{said}");
    let said = stderr(&ended[1].0);
    assert!(
        said.contains("jitgate: the policy no longer grants this session (grant web)"),
        "{said}"
    );
    // Bob's grant still applies to him: his query finishes.
    let bob = wait_all(vec![bob_psql], Duration::from_secs(20));
    assert!(bob[0].0.status.success(), "{}", stderr(&bob[0].0));
    assert!(stdout(&bob[0].0).contains("bob done"));

    assert_eq!(env.pg.wait_no_jit_roles(), Vec::<String>::new());
    assert_eq!(env.wait_no_ssh_accounts(), Vec::<String>::new());
    let log = env.gw.log();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session.ended_by_trust"))
        .collect();
    assert_eq!(ended.len(), 2, "{log}");
    assert!(
        ended.iter().all(|l| l.contains("trigger=\"policy_reload\"")
            && l.contains("end_reason=\"policy_changed\"")),
        "{ended:?}"
    );
    // (`sessions_ended=` of the reload line may say 1: an SSH session registers a moment
    // after its command starts, and one registering during the reload is ended by the check
    // at registration instead.)
    assert!(log.contains("policies reloaded grants=1"), "{log}");
}
