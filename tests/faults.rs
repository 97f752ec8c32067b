//! Target faults (issue 10 item 7), with the real gateway, psql and PostgreSQL: a target that
//! accepts TCP and never answers holds up nothing else (not the start-up, not the other
//! targets, not the reaper) and is logged once; PostgreSQL restarted mid-session gives the
//! client the server's own error and the gateway keeps serving; a target down when a session
//! ends gets its role dropped once it is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders, silent]
    postgres: { roles: [orders_read] }
"#;

fn wait_until(
    what: &str,
    limit: Duration,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what} did not happen:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_psql(conninfo: &str, sql: &str) -> Child {
    psql_command(conninfo, sql)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "still running after {limit:?}: {}",
                stderr(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A listener that accepts every connection and never says a word.
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming() {
            held.push(socket);
        }
    });
    port
}

/// The silent target: the gateway listens at once, `orders` serves psql while a login to
/// `silent` waits, that login ends with the usual FATAL (no hang), and the reaper's failing
/// passes over `silent` are logged once, not once per interval.
#[test]
fn a_silent_target_holds_up_nothing_else() {
    let Some(pg) = Postgres::start() else { return };
    let silent = silent_listener();
    let gw = Gateway::start_edited(Some(&pg), None, POLICY, |config| {
        format!(
            "{config}  silent:\n    postgres:\n      host: 127.0.0.1\n      port: {silent}\n      databases: [orders]\n      tls: disable\n      admin:\n        user: {ADMIN_USER}\n        password_file: admin-password\n"
        )
        .replace("handshake_timeout: 3s\n", "handshake_timeout: 3s\nreap_interval: 1s\n")
    });
    let (crt, key) = gw.issue("alice", &[]);
    let stuck = spawn_psql(
        &gw.conninfo(
            "alice",
            Some((&crt, &key)),
            "dbname=silent connect_timeout=40",
        ),
        "SELECT 1",
    );
    // Meanwhile the good target works, more than once.
    for _ in 0..3 {
        let o = psql(
            &gw.conninfo("alice", Some((&crt, &key)), ""),
            "SELECT current_database()",
        );
        assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
        assert_eq!(stdout(&o), "orders");
    }
    let o = finish(stuck, Duration::from_secs(40));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("jitgate could not create your account on target silent"),
        "{}",
        stderr(&o)
    );
    // A second failing pass, then: still one error line for it.
    wait_until(
        "a second failing reaper pass over silent",
        Duration::from_secs(60),
        || gw.log(),
        || gw.log().contains("reaper pass failed again"),
    );
    let log = gw.log();
    let errors = log
        .lines()
        .filter(|l| {
            l.contains("reaper pass failed; retried every reap_interval") && l.contains("silent")
        })
        .count();
    assert_eq!(errors, 1, "{log}");
    // The listeners did not wait for the silent target's first pass (which failed only after
    // the admin login's own 10 s deadline).
    let listening = log.find("jitgate listening").unwrap();
    let failed = log.find("reaper pass failed").unwrap();
    assert!(listening < failed, "{log}");
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

/// PostgreSQL restarted under a running query: psql gets the server's own words, the gateway
/// serves the next session at once, and the first session's role is gone.
#[test]
fn postgres_restarted_mid_session() {
    let Some((mut pg, gw)) = pg_env(POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &[]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let running = spawn_psql(&conninfo, "SELECT pg_sleep(30)");
    wait_until(
        "the query running",
        Duration::from_secs(20),
        || gw.log(),
        || {
            pg.superuser_sql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
            ) == "1"
        },
    );
    pg.stop();
    pg.start_again();
    let o = finish(running, Duration::from_secs(20));
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("server closed the connection unexpectedly")
            || said.contains("terminating connection"),
        "{said}"
    );
    let o = psql(&conninfo, "SELECT 1");
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
    assert!(gw
        .minted_credentials()
        .iter()
        .all(|c| !gw.log().contains(c.as_str())));
}

/// The target is down when the session ends (it ends because of that): the drop is retried,
/// and once PostgreSQL is back the role goes, with one error line for the outage, not one per
/// attempt.
#[test]
fn a_target_down_at_drop_time_gets_its_role_dropped_when_back() {
    let Some((mut pg, gw)) = pg_env(POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &[]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let running = spawn_psql(&conninfo, "SELECT pg_sleep(30)");
    wait_until(
        "the role made",
        Duration::from_secs(20),
        || gw.log(),
        || pg.jit_roles().len() == 1,
    );
    let role = pg.jit_roles().remove(0);
    pg.stop();
    let o = finish(running, Duration::from_secs(20));
    assert!(!o.status.success());
    // The gateway is trying to drop it now; give it a few failed attempts.
    wait_until(
        "a failed drop attempt logged",
        Duration::from_secs(20),
        || gw.log(),
        || gw.log().contains(&role) && gw.log().contains("retrying"),
    );
    pg.start_again();
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
    let o = psql(&conninfo, "SELECT 1");
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
}

/// sshd restarted (`systemctl restart ssh`: the listener only) under a running ssh session:
/// the session goes on to its end, its account is removed over the admin connection that
/// outlived the restart, and the next session goes through the new listener.
#[test]
fn sshd_restarted_mid_session() {
    use common::sshd::Sshd;
    if which("ssh").is_none() {
        unavailable("ssh (apt-get install openssh-client)");
        return;
    }
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let policy = "grants:\n  - name: web\n    subjects: { users: [alice] }\n    targets: [web-1]\n    ssh: {}\n";
    let gw = Gateway::start_with(None, Some(&sshd), policy);
    let (crt, key) = gw.issue("alice", &[]);
    let ssh = |command: &str| {
        let proxy = format!(
            "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
            jitgate_bin().display(),
            gw.ssh_port,
            crt.display(),
            key.display(),
            gw.path("certs/ca.crt").display()
        );
        std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", &proxy])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "alice@web-1",
                command,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = ssh("sleep 2; echo survived");
    // Restarted once the session's upstream connection exists (the account alone exists a
    // moment before the gateway's login, which a restart then would refuse).
    wait_until(
        "the session started",
        Duration::from_secs(20),
        || gw.log(),
        || !sshd.own_accounts().is_empty() && gw.log().contains("session started"),
    );
    sshd.restart();
    let o = finish(first, Duration::from_secs(30));
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
    assert_eq!(stdout(&o), "survived");
    wait_until(
        "the account removed",
        Duration::from_secs(20),
        || gw.log(),
        || sshd.own_accounts().is_empty(),
    );
    let o = finish(ssh("id -un"), Duration::from_secs(30));
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
    assert!(stdout(&o).starts_with("jit-alice-"), "{}", stdout(&o));
    wait_until(
        "the second account removed",
        Duration::from_secs(20),
        || gw.log(),
        || sshd.own_accounts().is_empty(),
    );
}
