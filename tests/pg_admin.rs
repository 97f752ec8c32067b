//! jitgate's admin sessions on a real PostgreSQL carry their own limits: a lock another
//! session holds on a JIT role makes the drop fail after `lock_timeout` instead of waiting
//! for as long as the holder likes (issue 7 item 10).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long the superuser's transaction holds the role's lock: well past the admin's
/// `lock_timeout` (5 s) plus the time the check below allows, so that without a lock timeout
/// the drop is still waiting when the check gives up.
const HOLD_SECS: u64 = 25;

#[test]
fn a_held_lock_does_not_stall_the_drop() {
    if which("psql").is_none() {
        unavailable("psql");
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    // A short reap interval, so the hand-over to the reaper is seen within the test.
    let gw = Gateway::start_edited(Some(&pg), None, DEFAULT_POLICY, |config| {
        config.replace(
            "handshake_timeout: 3s\n",
            "handshake_timeout: 3s\nreap_interval: 2s\n",
        )
    });
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let session = std::thread::spawn(move || psql(&conninfo, "SELECT pg_sleep(4)"));

    let start = Instant::now();
    let role = loop {
        if let Some(role) = pg.jit_roles().into_iter().next() {
            break role;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no JIT role");
        std::thread::sleep(Duration::from_millis(50));
    };
    // COMMENT ON ROLE takes a lock on the role (ShareUpdateExclusiveLock) until the end of its
    // transaction; DROP ROLE needs AccessExclusiveLock on it. Rolled back, so the gateway's
    // marker stays.
    let mut holder = Command::new(jitgate::sandbox::postgres::bindir().unwrap().join("psql"))
        .args(["-X", "-q", "-h"])
        .arg(pg.socket_dir())
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(format!(
            "BEGIN; COMMENT ON ROLE \"{role}\" IS 'held'; SELECT pg_sleep({HOLD_SECS}); ROLLBACK;"
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let locked = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'object' AND granted \
         AND classid = 'pg_authid'::regclass AND objid = (SELECT oid FROM pg_roles WHERE rolname = '{role}')"
    );
    while pg.superuser_sql("postgres", &locked) == "0" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lock was not taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !session.is_finished(),
        "the session ended before the lock was held; the test proves nothing"
    );
    let out = session.join().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());

    // The drop starts now and waits for the lock: the admin's lock_timeout ends the wait.
    let ended = Instant::now();
    let timed_out = loop {
        let log = pg.server_log();
        if let Some(at) = log.find("canceling statement due to lock timeout") {
            break log[at..].to_string();
        }
        if ended.elapsed() > Duration::from_secs(12) {
            panic!(
                "the drop of {role} still waits for the lock after 12 s\n{}",
                gw.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let statement = timed_out.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(
        statement.contains("STATEMENT:") && statement.contains(&format!("DROP ROLE \"{role}\"")),
        "{statement}"
    );
    // The session did not wait for the lock: it handed the role to the reaper and ended.
    let handed = Instant::now();
    while !gw.log().contains("handed to the reaper") {
        assert!(
            handed.elapsed() < Duration::from_secs(10),
            "the session did not hand the role over: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gw.log().contains("session ended"), "{}", gw.log());
    // Once the lock is gone, the reaper (the lease is no longer live) drops the role.
    let _ = holder.kill();
    let _ = holder.wait();
    pg.superuser_sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%COMMENT ON ROLE%held%' AND pid <> pg_backend_pid()",
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}
