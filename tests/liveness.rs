//! Replicas clean up after each other through the targets, and a gateway that never comes back
//! leaves nothing running (issue 10 items 4 and 5): real gateways killed with `kill -9` while a
//! real psql and a real ssh session are open, a real PostgreSQL and a real sshd. Each test
//! prints the figures it measured (`cargo test --test liveness -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::*;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
  - name: web
    subjects: { users: [alice] }
    targets: [web-1]
    ssh: {}
"#;

fn tools_present() -> Option<()> {
    for bin in ["psql", "ssh"] {
        if which(bin).is_none() {
            unavailable(&format!(
                "{bin} (apt-get install postgresql-client openssh-client)"
            ))?;
        }
    }
    Some(())
}

/// `config` with top-level `extra` lines added (after `targets:`, which ends the file).
fn with(extra: &str) -> impl FnOnce(String) -> String + '_ {
    move |config| format!("{config}{extra}")
}

/// A client certificate for alice from `gw`'s CA.
fn alice(gw: &Gateway) -> (PathBuf, PathBuf) {
    gw.issue("alice", &[])
}

/// psql through `gw` running `sql` in the background.
fn psql(gw: &Gateway, cert: &(PathBuf, PathBuf), sql: &str) -> Child {
    Command::new(which("psql").unwrap())
        .args(["-X", "-q", "-A", "-t"])
        .arg(gw.conninfo("alice", Some((&cert.0, &cert.1)), ""))
        .args(["-c", sql])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// ssh through `jitgate tunnel` to `gw`, running `command` on web-1 in the background.
fn ssh(gw: &Gateway, cert: &(PathBuf, PathBuf), command: &str) -> Child {
    let proxy = format!(
        "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
        jitgate_bin().display(),
        gw.ssh_port,
        cert.0.display(),
        cert.1.display(),
        gw.path("certs/ca.crt").display()
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
        .arg("alice@web-1")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `ready` every 50 ms for at most `limit`; how long it took, or a panic with `context`.
fn wait_for(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// How many processes run as `uid` (by number: it still works once the account is gone).
fn processes_of_uid(uid: u32) -> usize {
    let out = Command::new("pgrep")
        .args(["-u", &uid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn uid_of(account: &str) -> u32 {
    let out = Command::new("id").args(["-u", account]).output().unwrap();
    assert!(out.status.success(), "id -u {account}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// How many backends run `sql` right now.
fn running(pg: &Postgres, sql: &str) -> usize {
    pg.superuser_sql(
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

/// The watchdog's log on the target for `instance`.
fn watchdog_log(sshd: &Sshd, instance: &str) -> String {
    fs::read_to_string(sshd.state_dir.join(format!("instances/{instance}.log"))).unwrap_or_default()
}

/// The watchdog's log once it has written its summary line, which comes after the last
/// `userdel` (the accounts can be gone a moment before it), or after 5 s whatever it says.
fn watchdog_summary(sshd: &Sshd, instance: &str) -> String {
    let start = Instant::now();
    loop {
        let log = watchdog_log(sshd, instance);
        if log.contains("done: ") || start.elapsed() > Duration::from_secs(5) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gateway's log (and its previous run's, after a restart), read by path so that it can be
/// shown while the test holds the gateway mutably.
fn logs_of(gw: &Gateway) -> impl Fn() -> String {
    let (now, before) = (gw.path("gateway.log"), gw.path("gateway.previous.log"));
    move || {
        let read = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}
--- current run ---
{}",
            read(&before),
            read(&now)
        )
    }
}

fn kill_children(children: Vec<Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Two replicas share one PostgreSQL and one SSH target. While both run, neither touches the
/// other's accounts; once one is killed (-9) with a psql and an ssh session open, the survivor
/// finds its liveness locks free and reaps its role (backend terminated) and its Linux account
/// (processes killed) within one reap interval — not after lease expiry plus five minutes.
#[test]
fn a_survivor_reaps_a_killed_replicas_accounts_within_one_reap_interval() {
    let Some(()) = tools_present() else { return };
    let Some(pg) = Postgres::start() else { return };
    let Some(sshd) = Sshd::start() else { return };
    // The victim keeps the default watchdog grace (30 s), so what removes its SSH account
    // within a second is the survivor's reaper, not the victim's own watchdog.
    let mut victim = Gateway::start_with(Some(&pg), Some(&sshd), POLICY);
    let survivor_id = format!("{}-b", sshd.instance_id);
    let survivor = Gateway::start_edited(Some(&pg), Some(&sshd), POLICY, |config| {
        let config = config.replace(
            &format!("instance_id: {}\n", sshd.instance_id),
            &format!("instance_id: {survivor_id}\n"),
        );
        format!("{config}reap_interval: 1s\n")
    });
    let (victim_log, survivor_log) = (logs_of(&victim), logs_of(&survivor));
    let context = || format!("victim:\n{}\nsurvivor:\n{}", victim_log(), survivor_log());

    let cert = alice(&victim);
    let sql = "SELECT pg_sleep(60)";
    let children = vec![psql(&victim, &cert, sql), ssh(&victim, &cert, "sleep 60")];
    wait_for(
        "psql's query running",
        Duration::from_secs(20),
        context,
        || running(&pg, sql) == 1,
    );
    wait_for(
        "ssh's sleep running",
        Duration::from_secs(20),
        context,
        || {
            sshd.own_accounts()
                .iter()
                .any(|a| processes_of_uid(uid_of(a)) > 0)
        },
    );
    let roles = pg.jit_roles();
    let accounts = sshd.own_accounts();
    assert_eq!((roles.len(), accounts.len()), (1, 1), "{}", context());
    let uid = uid_of(&accounts[0]);
    // The markers say the owner holds a liveness lock.
    let comment = pg.superuser_sql(
        "postgres",
        &format!(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{}'",
            roles[0]
        ),
    );
    assert!(comment.contains(" live=1 "), "{comment}");
    // What keeps a dead gateway's role inert until it is reaped (no watchdog runs on
    // PostgreSQL): one connection at most, and no password login two minutes after creation.
    let inert = pg.superuser_sql(
        "postgres",
        &format!(
            "SELECT rolconnlimit, rolvaliduntil <= now() + interval '2 minutes', \
             rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls \
             FROM pg_roles WHERE rolname = '{}'",
            roles[0]
        ),
    );
    assert_eq!(inert, "1|t|f", "{inert}");

    // Two of the survivor's passes over both targets after the sessions started: the
    // victim's locks are held, so nothing of it is touched.
    let passes = || survivor_log().matches("reaper pass").count();
    let before = passes();
    wait_for(
        "two reaper passes of the survivor",
        Duration::from_secs(20),
        context,
        || passes() >= before + 4,
    );
    assert_eq!(pg.jit_roles(), roles, "{}", context());
    assert_eq!(sshd.own_accounts(), accounts, "{}", context());

    victim.kill_hard();
    let killed = Instant::now();
    let role_gone = wait_for(
        "the victim's role reaped",
        Duration::from_secs(10),
        context,
        || pg.jit_roles().is_empty() && pg.jit_backends().is_empty(),
    );
    let account_gone = wait_for(
        "the victim's account reaped",
        Duration::from_secs(10),
        context,
        || sshd.own_accounts().is_empty() && processes_of_uid(uid) == 0,
    );
    let all_gone = killed.elapsed();
    eprintln!(
        "survivor (reap_interval 1s) reaped the killed replica's role in {role_gone:.2?} and its \
         Linux account and processes in {all_gone:.2?} (account check waited {account_gone:.2?} more)"
    );
    assert!(
        all_gone < Duration::from_secs(4),
        "{all_gone:?}\n{}",
        context()
    );
    let log = survivor_log();
    let reaped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reaped account without a live session"))
        .collect();
    assert_eq!(reaped.len(), 2, "{log}");
    assert!(
        reaped
            .iter()
            .all(|l| l.contains("liveness lock on the target is free")
                && l.contains(&format!("owner_instance={}", sshd.instance_id))),
        "{reaped:?}"
    );
    kill_children(children);
}

/// The only gateway is killed (-9) with two ssh sessions open and never comes back: the
/// target's watchdog waits its grace, then kills the accounts' processes and removes them.
#[test]
fn a_gateway_that_never_comes_back_leaves_nothing_running_on_the_ssh_target() {
    let Some(()) = tools_present() else { return };
    let Some(sshd) = Sshd::start() else { return };
    let grace = Duration::from_secs(2);
    let mut gw = Gateway::start_edited(None, Some(&sshd), POLICY, with("watchdog_grace: 2s\n"));
    let gw_log = logs_of(&gw);
    let context = || {
        format!(
            "{}\nwatchdog:\n{}",
            gw_log(),
            watchdog_log(&sshd, &sshd.instance_id)
        )
    };
    let cert = alice(&gw);
    // One command in the foreground, one detached from the session (it would outlive the
    // connection's end on its own).
    let children = vec![
        ssh(&gw, &cert, "sleep 300"),
        ssh(
            &gw,
            &cert,
            "nohup setsid sleep 301 >/dev/null 2>&1 < /dev/null & sleep 302",
        ),
    ];
    wait_for(
        "both sessions' processes running",
        Duration::from_secs(20),
        context,
        || {
            let accounts = sshd.own_accounts();
            accounts.len() == 2 && accounts.iter().all(|a| processes_of_uid(uid_of(a)) > 0)
        },
    );
    let uids: Vec<u32> = sshd.own_accounts().iter().map(|a| uid_of(a)).collect();

    gw.kill_hard();
    let killed = Instant::now();
    // The ssh clients lose the gateway; what the accounts run on the target does not notice.
    let gone = wait_for(
        "the watchdog's removal",
        grace + Duration::from_secs(10),
        context,
        || sshd.own_accounts().is_empty() && uids.iter().all(|u| processes_of_uid(*u) == 0),
    );
    eprintln!(
        "watchdog (grace {grace:?}) removed both accounts and their processes {:.2?} after kill -9",
        killed.elapsed()
    );
    assert!(
        gone >= grace,
        "removed before the grace was over: {gone:?}\n{}",
        context()
    );
    assert!(
        gone < grace + Duration::from_secs(5),
        "{gone:?}\n{}",
        context()
    );
    let log = watchdog_summary(&sshd, &sshd.instance_id);
    assert_eq!(log.matches(" removed jit-alice-").count(), 2, "{log}");
    assert!(log.contains("done: 2 removed, 0 failed"), "{log}");
    kill_children(children);
}

/// A gateway killed (-9) and restarted within the grace takes its lock back: its old
/// watchdog stands down and removes nothing of the new run's live session.
#[test]
fn a_gateway_restarted_within_the_grace_keeps_its_new_sessions() {
    let Some(()) = tools_present() else { return };
    let Some(sshd) = Sshd::start() else { return };
    let mut gw = Gateway::start_edited(None, Some(&sshd), POLICY, with("watchdog_grace: 8s\n"));
    let gw_log = logs_of(&gw);
    let context = || {
        format!(
            "{}\nwatchdog:\n{}",
            gw_log(),
            watchdog_log(&sshd, &sshd.instance_id)
        )
    };
    let cert = alice(&gw);
    let mut children = vec![ssh(&gw, &cert, "sleep 300")];
    wait_for(
        "the first session's sleep",
        Duration::from_secs(20),
        context,
        || sshd.own_accounts().len() == 1,
    );
    let first = sshd.own_accounts();

    gw.kill_hard();
    let killed = Instant::now();
    gw.restart();
    // The restarted gateway's own start-up pass removes the first run's account (no session
    // of it is live); its new session gets a new one.
    children.push(ssh(&gw, &cert, "sleep 303"));
    wait_for(
        "the new session's sleep",
        Duration::from_secs(20),
        context,
        || {
            let accounts = sshd.own_accounts();
            accounts.len() == 1 && accounts != first && processes_of_uid(uid_of(&accounts[0])) > 0
        },
    );
    let second = sshd.own_accounts();
    wait_for(
        "the old watchdog standing down",
        Duration::from_secs(20),
        context,
        || {
            watchdog_log(&sshd, &sshd.instance_id)
                .contains("the lock was taken back within the grace")
        },
    );
    eprintln!(
        "restarted within the grace (8s): the old watchdog stood down {:.2?} after kill -9",
        killed.elapsed()
    );
    let log = watchdog_log(&sshd, &sshd.instance_id);
    assert!(!log.contains("no gateway took the lock back"), "{log}");
    assert_eq!(sshd.own_accounts(), second, "{}", context());
    assert!(processes_of_uid(uid_of(&second[0])) > 0, "{}", context());
    let new_session = children.last_mut().unwrap();
    assert!(
        new_session.try_wait().unwrap().is_none(),
        "the new session ended"
    );

    // A clean stop (the session ended, its account dropped) tells the watchdog so: it ends at
    // once instead of waiting its grace.
    kill_children(children);
    wait_for(
        "the session's account dropped",
        Duration::from_secs(20),
        context,
        || sshd.own_accounts().is_empty(),
    );
    gw.stop();
    let log = watchdog_log(&sshd, &sshd.instance_id);
    assert!(
        log.contains("the gateway stopped cleanly; nothing to do"),
        "{log}"
    );
}

/// A throwaway admin account (not root) allowed `sudo -n /bin/sh -s`, removed however the
/// test ends.
struct SudoAdmin {
    name: String,
}

impl SudoAdmin {
    fn create(sshd: &Sshd) -> SudoAdmin {
        let name = format!("jgadm{}", random_word(8));
        let ok = Command::new("useradd")
            .args([
                "-M",
                "-d",
                "/nonexistent",
                "-s",
                "/bin/sh",
                "-p",
                "*",
                &name,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "useradd {name}");
        let admin = SudoAdmin { name };
        fs::write(
            format!("/etc/sudoers.d/{}", admin.name),
            format!("{} ALL=(root) NOPASSWD: /bin/sh -s\n", admin.name),
        )
        .unwrap();
        let admin_pub = fs::read_to_string(sshd.admin_key.with_extension("pub")).unwrap();
        fs::write(
            sshd.dir.join("authorized_keys").join(&admin.name),
            admin_pub,
        )
        .unwrap();
        admin
    }
}

impl Drop for SudoAdmin {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/sudoers.d/{}", self.name));
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// The watchdog runs under `sudo -n /bin/sh -s` when the admin is not root: sudo passes on no
/// end of the connection (no pty, no signal), so the watchdog outlives it the same way.
#[test]
fn the_watchdog_works_through_sudo() {
    let Some(()) = tools_present() else { return };
    if !std::path::Path::new("/usr/sbin/visudo").exists() {
        unavailable("sudo (visudo)");
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let admin = SudoAdmin::create(&sshd);
    let mut gw = Gateway::start_edited(None, Some(&sshd), POLICY, |config| {
        let config = config.replace("user: root\n", &format!("user: {}\n", admin.name));
        format!("{config}watchdog_grace: 1s\n")
    });
    let gw_log = logs_of(&gw);
    let context = || {
        format!(
            "{}\nwatchdog:\n{}",
            gw_log(),
            watchdog_log(&sshd, &sshd.instance_id)
        )
    };
    let cert = alice(&gw);
    let children = vec![ssh(&gw, &cert, "sleep 300")];
    wait_for(
        "the session's sleep",
        Duration::from_secs(20),
        context,
        || {
            let accounts = sshd.own_accounts();
            accounts.len() == 1 && processes_of_uid(uid_of(&accounts[0])) > 0
        },
    );
    let uid = uid_of(&sshd.own_accounts()[0]);
    gw.kill_hard();
    let gone = wait_for(
        "the watchdog's removal",
        Duration::from_secs(10),
        context,
        || sshd.own_accounts().is_empty() && processes_of_uid(uid) == 0,
    );
    eprintln!("watchdog under sudo (grace 1s) removed the account {gone:.2?} after kill -9");
    assert!(gone >= Duration::from_secs(1), "{gone:?}\n{}", context());
    let log = watchdog_summary(&sshd, &sshd.instance_id);
    assert!(log.contains("done: 1 removed, 0 failed"), "{log}");
    kill_children(children);
}

/// The holder's admin session is killed on the server (as a PostgreSQL restart or a network
/// cut would end it): the gateway takes its lock again on a new session, and meanwhile does not
/// take itself for dead — its own reaper (every second) leaves its live session's role alone.
#[test]
fn a_lost_postgres_lock_is_taken_again_and_the_instance_keeps_its_sessions() {
    const PG_POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
"#;
    let Some(()) = tools_present() else { return };
    let Some(pg) = Postgres::start() else { return };
    let gw = Gateway::start_edited(Some(&pg), None, PG_POLICY, with("reap_interval: 1s\n"));
    let gw_log = logs_of(&gw);
    let context = || gw_log();
    let holder = || {
        pg.superuser_sql(
            "postgres",
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'jitgate liveness test-gw'",
        )
    };
    wait_for(
        "the liveness session",
        Duration::from_secs(20),
        context,
        || !holder().is_empty(),
    );
    let cert = alice(&gw);
    let sql = "SELECT pg_sleep(30)";
    let children = vec![psql(&gw, &cert, sql)];
    wait_for(
        "psql's query running",
        Duration::from_secs(20),
        context,
        || running(&pg, sql) == 1,
    );
    let roles = pg.jit_roles();
    let first = holder();
    let (class, key) = jitgate::jit::liveness::pg_lock_key("test-gw");
    let held_by = |pid: &str| {
        pg.superuser_sql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND classid = {class}::oid AND objid = {}::oid AND objsubid = 2 AND pid = {pid}",
                i64::from(key as u32)
            ),
        ) == "1"
    };
    assert!(
        held_by(&first),
        "the liveness session holds no lock:\n{}",
        context()
    );

    pg.superuser_sql("postgres", &format!("SELECT pg_terminate_backend({first})"));
    let retaken = wait_for(
        "the lock taken again",
        Duration::from_secs(10),
        context,
        || {
            let now = holder();
            !now.is_empty() && now != first && held_by(&now)
        },
    );
    eprintln!(
        "the Postgres liveness lock was taken again {retaken:.2?} after its session was terminated"
    );
    // Two of its own reaper passes after the loss: the live session's role stays.
    let passes = || gw_log().matches("reaper pass").count();
    let before = passes();
    wait_for(
        "two reaper passes",
        Duration::from_secs(20),
        context,
        || passes() >= before + 2,
    );
    assert_eq!(pg.jit_roles(), roles, "{}", context());
    assert_eq!(running(&pg, sql), 1, "{}", context());
    assert!(context().contains("liveness lock lost"), "{}", context());
    assert!(
        context().contains("liveness lock taken back"),
        "{}",
        context()
    );
    kill_children(children);
}
