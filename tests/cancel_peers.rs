//! Cancel across replicas (issue 10 item 8): two gateways (peer_id 1 and 2, each listing the
//! other under `peers:`) share one PostgreSQL and one CA behind a TCP forwarder that sends a
//! session's login to one and its cancel to the other, as a load balancer may. psql's Ctrl-C
//! opens a new connection for its CancelRequest, which lands on the other replica than the
//! session's; that replica passes it on to the session's, and the running query is cancelled,
//! every time, in both directions. A key of a peer nobody knows is dropped without a word, as
//! PostgreSQL drops an unknown key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
"#;

/// Accepts on a port of its own and sends each connection to `backends[route % 2]`, `route`
/// as it is when the connection arrives, piping bytes both ways; returns the port and
/// `route`. The test points it at the session's replica for the login (however many
/// connections the client makes for it) and at the other one before the cancel, as a load
/// balancer may.
fn switchboard(backends: [u16; 2]) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let route = Arc::new(AtomicUsize::new(0));
    let current = route.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let backend = backends[current.load(Ordering::SeqCst) % 2];
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", backend)) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, route)
}

fn wait_until(what: &str, log: impl Fn() -> String, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not happen:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!(
                "psql still running: {}",
                stderr(&child.wait_with_output().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn lines(gw: &Gateway, needle: &str) -> usize {
    gw.log().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_cancel_on_the_other_replica_reaches_the_session() {
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let mut one = Gateway::start(&pg, POLICY);
    let shared = one.path("certs");
    let shared = shared.display();
    // The second replica: its own instance id and peer number, the first one's CA and
    // certificate, and the first one as its peer.
    let two = Gateway::start_edited(Some(&pg), None, POLICY, |config| {
        format!(
            "{}peer_id: 2\npeers:\n  1: 127.0.0.1:{}\n",
            config
                .replace("instance_id: test-gw\n", "instance_id: test-gw-2\n")
                .replace(" certs/", &format!(" {shared}/")),
            one.port
        )
    });
    // The first one learns its peer's port now, and starts again with it.
    let config = std::fs::read_to_string(one.path("jitgate.yaml")).unwrap();
    std::fs::write(
        one.path("jitgate.yaml"),
        format!("{config}peer_id: 1\npeers:\n  2: 127.0.0.1:{}\n", two.port),
    )
    .unwrap();
    one.stop();
    one.restart();

    let (front, route) = switchboard([one.port, two.port]);
    let (crt, key) = one.issue("alice", &[]);
    let conninfo = format!(
        "{} port={front}",
        one.conninfo("alice", Some((&crt, &key)), "")
    );
    let sql = "SELECT pg_sleep(30)";
    for round in 0..4 {
        // Sessions sit on either replica in turn, and each cancel comes in at the other.
        route.store(round % 2, Ordering::SeqCst);
        let psql = psql_command(&conninfo, sql)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(
            "the query running",
            || format!("{}\n{}", one.log(), two.log()),
            || {
                pg.superuser_sql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}'"),
                ) == "1"
            },
        );
        // Ctrl-C: psql sends its CancelRequest on a new connection, to the other replica.
        route.store(round % 2 + 1, Ordering::SeqCst);
        let status = Command::new("kill")
            .args(["-INT", &psql.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = finish(psql);
        let said = stderr(&out);
        assert!(
            said.contains("canceling statement due to user request"),
            "round {round}: {said}\n--- one\n{}\n--- two\n{}",
            one.log(),
            two.log()
        );
    }
    // Two passed on by each replica to the other, and each owner forwarded two to PostgreSQL.
    assert_eq!(
        lines(&one, "cancel request passed on to its peer"),
        2,
        "{}",
        one.log()
    );
    assert_eq!(
        lines(&two, "cancel request passed on to its peer"),
        2,
        "{}",
        two.log()
    );
    assert_eq!(lines(&one, "cancel request forwarded"), 2, "{}", one.log());
    assert_eq!(lines(&two, "cancel request forwarded"), 2, "{}", two.log());

    // A key naming peer 9, which neither knows: dropped, nothing cancelled, nothing logged
    // above debug.
    let mut raw = TcpStream::connect(("127.0.0.1", two.port)).unwrap();
    let key: i32 = ((9u32 << 18) | (3 << 16) | 0x1234) as i32;
    let mut packet = Vec::new();
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&4242i32.to_be_bytes());
    packet.extend_from_slice(&key.to_be_bytes());
    raw.write_all(&packet).unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the gateway answered a cancel: {rest:?}");
    wait_until(
        "the unknown key logged at debug",
        || two.log(),
        || {
            two.log()
                .contains("cancel request with a key of no known peer dropped")
        },
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());

    // libpq 17's encrypted cancel (PQcancelBlocking: the CancelRequest inside TLS), twice,
    // once from each side.
    let Some(lib) = libpq17() else { return };
    let program = libpq_cancel_program(&lib, one.dir.path());
    for round in 0..2 {
        route.store(round, Ordering::SeqCst);
        let out = Command::new(&program)
            .args([conninfo.as_str(), sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The program cancels 2 s after sending its query: by then the route has turned.
        wait_until(
            "the query running",
            || format!("{}\n{}", one.log(), two.log()),
            || {
                pg.superuser_sql(
                    "postgres",
                    &format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}'"),
                ) == "1"
            },
        );
        route.store(round + 1, Ordering::SeqCst);
        let out = finish(out);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        assert!(text.contains("ssl 1"), "{text}");
        assert!(
            text.contains("57014 canceling statement due to user request"),
            "TLS round {round}: {text}\n--- one\n{}\n--- two\n{}",
            one.log(),
            two.log()
        );
    }
    let passed = |gw: &Gateway| {
        gw.log()
            .lines()
            .filter(|l| {
                l.contains("cancel request passed on to its peer") && l.contains("client_tls=true")
            })
            .count()
    };
    assert_eq!(
        (passed(&one), passed(&two)),
        (1, 1),
        "{}\n{}",
        one.log(),
        two.log()
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}
