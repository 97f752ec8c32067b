//! The Postgres journey end to end: real PostgreSQL, the real `jitgate` binary, real `psql`
//! (and a raw wire client for what psql 15 cannot do).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn journey_least_privilege_role_spliced_and_dropped() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (alice_crt, alice_key) = gw.issue("alice", &["dba"]);
    let (bob_crt, bob_key) = gw.issue("bob", &["analyst"]);
    let alice = gw.conninfo("alice", Some((&alice_crt, &alice_key)), "");
    let bob = gw.conninfo("bob", Some((&bob_crt, &bob_key)), "");

    let out = psql(
        &alice,
        "SELECT current_user; INSERT INTO items VALUES (3, 'plum'); SELECT count(*) FROM items;",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert!(
        lines[0].starts_with("jit_alice_"),
        "current_user = {lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("3"));

    // bob can read but not write: PostgreSQL itself says no, with 42501.
    let out = psql(&bob, "SELECT name FROM items WHERE id = 1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "apple");
    let out = psql(&bob, "DELETE FROM items");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("42501"), "{}", stderr(&out));

    // Gone after disconnect, and no backend of it remains.
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
    assert_eq!(pg.jit_backends(), Vec::<String>::new());
    let log = gw.log();
    assert!(
        log.contains("jit.account.created") && log.contains("jit.account.dropped"),
        "{log}"
    );

    // The role was made as the design says: SCRAM verifier, marker, limits.
    let server_log = pg.server_log();
    let create = server_log
        .lines()
        .find(|l| l.contains("CREATE ROLE \"jit_alice_"))
        .unwrap();
    assert!(create.contains("PASSWORD 'SCRAM-SHA-256$"), "{create}");
    assert!(
        create.contains("NOSUPERUSER")
            && create.contains("CONNECTION LIMIT 1")
            && create.contains("VALID UNTIL")
    );
    if pg.version_num() < 160_000 {
        assert!(
            create.contains("IN ROLE \"orders_read\", \"orders_write\""),
            "{create}"
        );
    } else {
        // 16+: the granted roles' privileges, not the right to become them.
        let grant = server_log
            .lines()
            .find(|l| l.contains("GRANT \"orders_read\", \"orders_write\" TO \"jit_alice_"))
            .unwrap_or_else(|| panic!("no membership GRANT in the server log"));
        assert!(grant.contains("WITH INHERIT TRUE, SET FALSE"), "{grant}");
    }
    assert!(server_log.contains("COMMENT ON ROLE \"jit_alice_"));
}

#[test]
fn concurrent_sessions_get_their_own_roles() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let sessions: Vec<_> = (0..2)
        .map(|_| {
            let c = conninfo.clone();
            std::thread::spawn(move || psql(&c, "SELECT current_user, pg_sleep(1)"))
        })
        .collect();
    let users: Vec<String> = sessions
        .into_iter()
        .map(|h| {
            let out = h.join().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            stdout(&out).split('|').next().unwrap().to_string()
        })
        .collect();
    assert!(
        users.iter().all(|u| u.starts_with("jit_alice_")),
        "{users:?}"
    );
    assert_ne!(users[0], users[1]);
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn refusals_are_clear_and_create_nothing() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let refused = |conninfo: &str, expect: &str| {
        let out = psql(conninfo, "SELECT 1");
        assert!(!out.status.success(), "expected refusal for {conninfo}");
        assert!(
            stderr(&out).contains(expect),
            "expected {expect:?} in: {}",
            stderr(&out)
        );
    };

    // Plain connection and TLS without a certificate.
    refused(
        &gw.conninfo("alice", None, "")
            .replace("sslmode=verify-full", "sslmode=disable"),
        "jitgate requires TLS with a client certificate",
    );
    refused(
        &gw.conninfo("alice", None, ""),
        "requires a client certificate",
    );

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("certs");
    jitgate(&["certs", "init", "--dir", other_dir.to_str().unwrap()]);
    jitgate(&[
        "certs",
        "issue",
        "--dir",
        other_dir.to_str().unwrap(),
        "--user",
        "alice",
        "--group",
        "dba",
    ]);
    refused(
        &gw.conninfo(
            "alice",
            Some((&other_dir.join("alice.crt"), &other_dir.join("alice.key"))),
            "",
        ),
        "client certificate rejected",
    );

    // Expired.
    let now = time::OffsetDateTime::now_utc();
    let expired = jitgate::certs::issue(&jitgate::certs::IssueOptions {
        ca_dir: gw.path("certs"),
        out_dir: gw.path("expired"),
        user: "alice".into(),
        groups: vec!["dba".into()],
        trust_domain: jitgate::certs::DEFAULT_TRUST_DOMAIN.into(),
        not_before: now - time::Duration::hours(2),
        not_after: now - time::Duration::hours(1),
    })
    .unwrap();
    refused(
        &gw.conninfo("alice", Some((&expired.cert, &expired.key)), ""),
        "expired",
    );

    // No grant for this person, a reason missing where required, an unknown target.
    let (eve_crt, eve_key) = gw.issue("eve", &["sales"]);
    refused(
        &gw.conninfo("eve", Some((&eve_crt, &eve_key)), ""),
        "no grant gives eve access to target \"orders\"",
    );
    let (carol_crt, carol_key) = gw.issue("carol", &[]);
    refused(
        &gw.conninfo("carol", Some((&carol_crt, &carol_key)), ""),
        "requires a reason",
    );
    let (alice_crt, alice_key) = gw.issue("alice", &["dba"]);
    refused(
        &gw.conninfo("alice", Some((&alice_crt, &alice_key)), "")
            .replace("dbname=orders", "dbname=nope"),
        "no grant gives alice access to target \"nope\"",
    );
    // alice holds a grant for orders: she may learn its databases.
    refused(
        &gw.conninfo("alice", Some((&alice_crt, &alice_key)), "")
            .replace("dbname=orders", "dbname=orders/secret"),
        "target orders has no database \"secret\" that jitgate may connect to; allowed: \
         orders, postgres",
    );
    refused(
        &gw.conninfo("alice", Some((&alice_crt, &alice_key)), "")
            .replace("user=alice", "user=orders-analyst"),
        "no grant gives alice access to target \"orders\" as \"orders-analyst\"",
    );
    // What she can use instead, as the hint.
    refused(
        &gw.conninfo("alice", Some((&alice_crt, &alice_key)), "")
            .replace("user=alice", "user=orders-analyst"),
        "HINT:  grants you can use: orders-dba on orders",
    );
    // eve, who holds nothing, learns no database list by naming one.
    refused(
        &gw.conninfo("eve", Some((&eve_crt, &eve_key)), "")
            .replace("dbname=orders", "dbname=orders/secret"),
        "no grant gives eve access to target \"orders\"\nHINT:  you have no grant for any \
         postgres target here",
    );

    // Nothing was minted for any of them.
    assert!(
        !pg.server_log().contains("CREATE ROLE \"jit_"),
        "a refusal created a role"
    );
    assert_eq!(pg.jit_roles(), Vec::<String>::new());

    // The SQLSTATEs, as a driver sees them.
    let config = raw::client_config(&gw.path("certs/ca.crt"), &eve_crt, &eve_key, false);
    rt().block_on(async {
        let mut s = raw::connect(gw.port, config, false).await.unwrap();
        match raw::startup(&mut s, "eve", "orders").await {
            raw::Login::Refused { code, message } => {
                assert_eq!(code, "28000");
                assert_eq!(message, "no grant gives eve access to target \"orders\"");
            }
            raw::Login::Ready { .. } => panic!("eve was let in"),
        }
        // A target that does not exist is refused exactly as one that is not granted.
        let config = raw::client_config(&gw.path("certs/ca.crt"), &eve_crt, &eve_key, false);
        let mut s = raw::connect(gw.port, config, false).await.unwrap();
        match raw::startup(&mut s, "eve", "nope").await {
            raw::Login::Refused { code, message } => {
                assert_eq!(code, "28000");
                assert_eq!(message, "no grant gives eve access to target \"nope\"");
            }
            raw::Login::Ready { .. } => panic!("unknown target accepted"),
        }
    });

    // With a reason, carol gets in (through options or application_name).
    let out = psql(
        &gw.conninfo(
            "carol",
            Some((&carol_crt, &carol_key)),
            "options='-c jitgate.reason=INC-7'",
        ),
        "SELECT current_user",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("jit_carol_"));
    let out = psql(
        &gw.conninfo(
            "carol",
            Some((&carol_crt, &carol_key)),
            "application_name=reason:INC-8",
        ),
        "SELECT 1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(gw.log().contains("INC-7"));
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn revoked_certificate_is_refused_without_restart() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("dave", &["dba"]);
    let conninfo = gw.conninfo("dave", Some((&crt, &key)), "");
    let out = psql(&conninfo, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));
    jitgate(&[
        "certs",
        "revoke",
        "--dir",
        gw.path("certs").to_str().unwrap(),
        "--cert",
        crt.to_str().unwrap(),
    ]);
    // The gateway looks at the CRL file at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let out = psql(&conninfo, "SELECT 1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn cancel_through_the_gateways_own_key() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let config = raw::client_config(&gw.path("certs/ca.crt"), &crt, &key, false);
    rt().block_on(async {
        for tls_cancel in [false, true] {
            let mut session = raw::connect(gw.port, config.clone(), false).await.unwrap();
            let raw::Login::Ready { pid, key } =
                raw::startup(&mut session, "alice", "orders").await
            else {
                panic!("login refused: {}", gw.log());
            };
            let backend_pids = pg.jit_backends();
            assert!(
                !backend_pids.contains(&pid.to_string()),
                "the client saw the upstream pid"
            );
            raw::send_query(&mut session, "SELECT pg_sleep(30)").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            // A wrong key is ignored, as PostgreSQL does.
            send_cancel(gw.port, &config, pid, key.wrapping_add(1), tls_cancel).await;
            send_cancel(gw.port, &config, pid, key, tls_cancel).await;
            let code =
                tokio::time::timeout(Duration::from_secs(20), raw::result_code(&mut session)).await;
            assert_eq!(
                code.ok().flatten().as_deref(),
                Some("57014"),
                "tls_cancel={tls_cancel}\n{}",
                gw.log()
            );
        }
    });
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

/// libpq < 17 sends the bare 16-byte packet; libpq 17's cancel API goes through TLS first.
async fn send_cancel(
    port: u16,
    config: &std::sync::Arc<rustls::ClientConfig>,
    pid: i32,
    key: i32,
    tls: bool,
) {
    use tokio::io::AsyncWriteExt;
    let packet = raw::cancel_packet(pid, key);
    if tls {
        let mut s = raw::connect(port, config.clone(), false).await.unwrap();
        s.write_all(&packet).await.unwrap();
        s.shutdown().await.unwrap();
    } else {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&packet).await.unwrap();
        s.shutdown().await.unwrap();
    }
}

#[test]
fn direct_tls_needs_alpn_postgresql() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    rt().block_on(async {
        let config = raw::client_config(&gw.path("certs/ca.crt"), &crt, &key, true);
        let mut s = raw::connect(gw.port, config, true).await.unwrap();
        assert!(matches!(
            raw::startup(&mut s, "alice", "orders").await,
            raw::Login::Ready { .. }
        ));
        raw::send_query(&mut s, "SELECT 1").await;
        assert_eq!(raw::result_code(&mut s).await, None);
        drop(s);
        let config = raw::client_config(&gw.path("certs/ca.crt"), &crt, &key, false);
        let mut s = raw::connect(gw.port, config, true).await.unwrap();
        match raw::startup(&mut s, "alice", "orders").await {
            raw::Login::Refused { code, .. } => assert_eq!(code, "08P01"),
            raw::Login::Ready { .. } => panic!("direct TLS without ALPN accepted"),
        }
    });
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn credential_never_leaves_the_gateway() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let out = psql(
        &conninfo,
        "SELECT current_user; SHOW password_encryption; SELECT 1/0;",
    );
    let mut seen_by_client = String::from_utf8_lossy(&out.stdout).into_owned();
    seen_by_client.push_str(&String::from_utf8_lossy(&out.stderr));
    // Also everything a raw client receives on the wire during login and a query.
    let config = raw::client_config(&gw.path("certs/ca.crt"), &crt, &key, false);
    let wire = rt().block_on(async {
        use tokio::io::AsyncReadExt;
        let mut s = raw::connect(gw.port, config, false).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "alice"), ("database", "orders")],
            &mut buf,
        )
        .unwrap();
        postgres_protocol::message::frontend::query("SELECT 1", &mut buf).unwrap();
        postgres_protocol::message::frontend::terminate(&mut buf);
        tokio::io::AsyncWriteExt::write_all(&mut s, &buf)
            .await
            .unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        all
    });
    assert!(pg.wait_no_jit_roles().is_empty());
    let credentials = gw.minted_credentials();
    assert_eq!(credentials.len(), 2, "expected two minted credentials");
    let gateway_log = gw.log();
    let server_log = pg.server_log();
    assert!(
        server_log.contains("CREATE ROLE \"jit_"),
        "statement logging is on"
    );
    for secret in &credentials {
        assert!(
            !seen_by_client.contains(secret.as_str()),
            "client output has the credential"
        );
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "client wire has the credential"
        );
        assert!(
            !gateway_log.contains(secret.as_str()),
            "gateway log has the credential"
        );
        assert!(
            !server_log.contains(secret.as_str()),
            "server log has the credential"
        );
    }
}

#[test]
fn hostile_common_name_gets_a_safe_role() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let hostile = "a\"; DROP ROLE x; --";
    let (crt, key) = gw.issue(hostile, &["dba"]);
    pg.superuser_sql("postgres", "CREATE ROLE x NOLOGIN");
    let out = psql(
        &gw.conninfo("orders-dba", Some((&crt, &key)), ""),
        "SELECT current_user",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    assert!(
        stdout(&out).starts_with("jit_a_drop_role_x_"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        pg.superuser_sql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'x'"
        ),
        "1"
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn bad_input_is_refused_and_others_keep_working() {
    use std::io::{Read, Write};
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let addr = format!("127.0.0.1:{}", gw.port);
    // Oversized startup packet, garbage, and a connection that says nothing (3 s timeout).
    let mut big = std::net::TcpStream::connect(&addr).unwrap();
    big.write_all(&[0, 0x10, 0, 0, 0, 3, 0, 0]).unwrap();
    let mut garbage = std::net::TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 42");
    assert_eq!(stdout(&out), "42", "{}", stderr(&out));
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 16];
    // A signal another test's child process causes may interrupt the read: read again.
    let n = loop {
        match silent.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(n, 0, "a stalled handshake is closed");
    let mut reply = Vec::new();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = garbage.read_to_end(&mut reply);
    let mut reply = Vec::new();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = big.read_to_end(&mut reply);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 43");
    assert_eq!(stdout(&out), "43");
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn crash_leaves_no_account_after_restart() {
    let Some((pg, mut gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let mut long = long_session(&pg, &gw, &conninfo);
    gw.kill_hard();
    assert_eq!(
        pg.jit_roles().len(),
        1,
        "the crash left the role (as expected before the reaper)"
    );
    gw.restart();
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
    assert!(pg.jit_backends().is_empty());
    let _ = long.kill();
    let _ = long.wait();
}

#[test]
fn shutdown_drops_live_accounts() {
    let Some((pg, mut gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let long = long_session(&pg, &gw, &conninfo);
    gw.stop();
    assert_eq!(pg.jit_roles(), Vec::<String>::new(), "{}", gw.log());
    let out = long.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("terminating connection"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn target_trouble_is_reported_and_named() {
    let Some(pg) = Postgres::start() else { return };
    if which("psql").is_none() {
        unavailable("psql");
        return;
    }
    // The target's port has nothing listening.
    let closed = free_port();
    let gw = Gateway::start_edited(Some(&pg), None, DEFAULT_POLICY, |c| {
        c.replace(&format!("port: {}", pg.port), &format!("port: {closed}"))
    });
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 1");
    assert!(!out.status.success());
    // The user is told which target and a reference; the address is the operator's to see.
    let said = stderr(&out);
    assert!(
        said.contains(
            "jitgate could not create your account on target orders; ask the operator \
             (reference "
        ),
        "{said}"
    );
    assert!(!said.contains(&closed.to_string()), "{said}");
    let reference = said
        .split("(reference ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_string();
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("mint failed") && l.contains(&reference))
        .unwrap_or_else(|| panic!("no log line for {reference}:\n{log}"));
    assert!(
        line.contains(&format!("cannot reach target orders (127.0.0.1:{closed})")),
        "{line}"
    );
    drop(gw);

    // The target refuses the admin login (here: a role that does not exist): the user is told
    // the gateway is misconfigured, the operator's log says why.
    let gw = Gateway::start_edited(Some(&pg), None, DEFAULT_POLICY, |c| {
        c.replace(&format!("user: {ADMIN_USER}"), "user: jitgate_nobody")
    });
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("jitgate could not create your account on target orders"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("jitgate_nobody"), "{}", stderr(&out));
    assert!(
        gw.log().contains("rejected jitgate's admin login"),
        "{}",
        gw.log()
    );
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
}

/// A psql session busy for a minute, started and waited for until its role exists.
fn long_session(pg: &Postgres, gw: &Gateway, conninfo: &str) -> std::process::Child {
    let child = Command::new(which("psql").unwrap())
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            conninfo,
            "-c",
            "SELECT pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while pg.jit_roles().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no role appeared: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The README's second way to connect: libpq's environment variables, no connection string.
#[test]
fn libpq_environment_variables_work_as_the_readme_says() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = Command::new(which("psql").unwrap())
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", gw.path("certs/ca.crt"))
        .env("PGSSLCERT", &crt)
        .env("PGSSLKEY", &key)
        .env_remove("PGPASSWORD")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &gw.port.to_string(),
            "-d",
            "orders",
            "-U",
            "alice",
        ])
        .args(["-c", "SELECT current_user"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("jit_alice_"), "{}", stdout(&out));
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

/// A grant with only an `ssh:` section mints nothing on a Postgres target its glob matches.
#[test]
fn an_ssh_only_grant_opens_no_database() {
    let policy = r#"
grants:
  - name: hosts
    subjects: { users: [alice] }
    targets: ["*"]
    ssh: { sudo: true }
"#;
    let Some((pg, gw)) = pg_env(policy) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &[]);
    for user in ["alice", "hosts"] {
        let out = psql(
            &gw.conninfo(user, Some((&crt, &key)), ""),
            "SELECT current_user",
        );
        assert!(!out.status.success(), "{user}: {}", stdout(&out));
        let said = stderr(&out);
        assert!(
            said.contains("FATAL:  no grant gives alice access to target \"orders\""),
            "{said}"
        );
        assert!(
            said.contains("you have no grant for any postgres target here"),
            "{said}"
        );
    }
    assert!(
        gw.log()
            .contains("grant hosts exists but it has no postgres: section"),
        "{}",
        gw.log()
    );
    assert!(!pg.server_log().contains("CREATE ROLE \"jit_"));
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
}

/// A dbname with a newline and a terminal escape is one escaped line in the gateway's log,
/// and escaped in the refusal too.
#[test]
fn a_hostile_dbname_cannot_forge_log_lines() {
    let Some((_pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let config = raw::client_config(&gw.path("certs/ca.crt"), &crt, &key, false);
    let hostile =
        "nope\n2030-01-01T00:00:00.000000Z  INFO jitgate: event=\"access.granted\" \x1b[31mred";
    let message = rt().block_on(async {
        let mut s = raw::connect(gw.port, config, false).await.unwrap();
        match raw::startup(&mut s, "alice", hostile).await {
            raw::Login::Refused { message, .. } => message,
            raw::Login::Ready { .. } => panic!("let in"),
        }
    });
    let escaped = "\"nope\\n2030-01-01T00:00:00.000000Z  INFO jitgate: event=\\\"access.granted\\\" \\x1b[31mred\"";
    assert_eq!(
        message,
        format!("no grant gives alice access to target {escaped}")
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.log();
    assert!(!log.contains('\x1b'), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("2030-")), "{log}");
    let denied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access.denied") && l.contains("nope"))
        .collect();
    assert_eq!(denied.len(), 1, "{log}");
    assert!(denied[0].contains(escaped), "{}", denied[0]);
}

/// `max_session` ends a session that is still running, not only new logins (VALID UNTIL).
#[test]
fn max_session_ends_a_running_session() {
    let policy = r#"
grants:
  - name: brief
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
    max_session: 1m
"#;
    let Some((pg, gw)) = pg_env(policy) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &[]);
    let out = psql(
        &gw.conninfo("alice", Some((&crt, &key)), ""),
        "SELECT pg_sleep(150)",
    );
    assert!(!out.status.success(), "the session outlived its grant");
    assert!(
        stderr(&out).contains("terminating connection"),
        "{}",
        stderr(&out)
    );
    // The reason comes first, as a WARNING, then PostgreSQL's own FATAL.
    assert!(
        stderr(&out).contains("jitgate: this session reached the max_session of its grant"),
        "{}",
        stderr(&out)
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
    assert!(
        gw.log().contains("end_reason=\"max_session\""),
        "{}",
        gw.log()
    );
}

/// A JIT role may give itself a password (`ALTER ROLE CURRENT_USER PASSWORD`): that password
/// opens no session outside the gateway, neither while the gateway's session is open (its
/// one connection slot is taken) nor after (NOLOGIN, then every backend of its oid ended,
/// then the drop) (issue 7 item 9).
#[test]
fn a_password_the_role_sets_itself_opens_no_direct_session() {
    let Some((pg, gw)) = pg_env(DEFAULT_POLICY) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let conninfo = gw.conninfo("alice", Some((&crt, &key)), "");
    let mut child = Command::new(which("psql").unwrap())
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            &conninfo,
            "-c",
            "ALTER ROLE CURRENT_USER PASSWORD 'self-chosen-9f3'",
            "-c",
            "SELECT pg_sleep(3)",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let role = loop {
        let found = pg.superuser_sql(
            "postgres",
            "SELECT usename FROM pg_stat_activity WHERE usename LIKE 'jit_%' \
             AND query LIKE '%pg_sleep(3)%'",
        );
        if !found.is_empty() {
            break found;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let direct = |db: &str| {
        Command::new(which("psql").unwrap())
            .args([
                "-X",
                "-A",
                "-t",
                &format!(
                    "host=127.0.0.1 port={} user={role} dbname={db} password=self-chosen-9f3 \
                     sslmode=disable connect_timeout=5",
                    pg.port
                ),
                "-c",
                "SELECT 'direct session'",
            ])
            .output()
            .unwrap()
    };
    for db in ["orders", "postgres"] {
        let out = direct(db);
        assert!(
            !out.status.success() && !stdout(&out).contains("direct session"),
            "a self-set password logged in directly to {db} during the session: {}",
            stdout(&out)
        );
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", gw.log());
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
    let out = direct("orders");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert_eq!(pg.jit_backends(), Vec::<String>::new());
}

/// Membership in a granted role gives its privileges; on PostgreSQL 16+ it does not give
/// `SET ROLE` to it unless the grant says `set_role: true` (objects created as a granted role
/// would be owned by it and outlive the JIT role). PostgreSQL 15 cannot separate the two.
#[test]
fn granted_roles_give_privileges_not_set_role() {
    let policy = r#"
grants:
  - name: writers
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_write] }
  - name: owners
    subjects: { users: [bob] }
    targets: [orders]
    postgres: { roles: [orders_write], set_role: true }
"#;
    let Some((pg, gw)) = pg_env(policy) else {
        return;
    };
    let (crt, key) = gw.issue("alice", &[]);
    let alice = gw.conninfo("alice", Some((&crt, &key)), "");
    let out = psql(&alice, "SELECT count(*) FROM items");
    assert_eq!(stdout(&out), "2", "{}\n{}", stderr(&out), gw.log());
    let out = psql(&alice, "SET ROLE orders_write; SELECT current_user");
    if pg.version_num() < 160_000 {
        assert_eq!(stdout(&out), "orders_write", "{}", stderr(&out));
    } else {
        assert!(!out.status.success(), "SET ROLE worked: {}", stdout(&out));
        assert!(stderr(&out).contains("42501"), "{}", stderr(&out));
    }
    let (crt, key) = gw.issue("bob", &[]);
    let out = psql(
        &gw.conninfo("bob", Some((&crt, &key)), ""),
        "SET ROLE orders_write; SELECT current_user",
    );
    assert_eq!(stdout(&out), "orders_write", "{}", stderr(&out));
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

/// The admin set-up the README prescribes (and the tests use) lets the admin grant the roles,
/// not use them: it reads no data and, on 16+, cannot become a granted role.
#[test]
fn readme_admin_setup_reads_no_data() {
    let Some(pg) = Postgres::start() else { return };
    if which("psql").is_none() {
        unavailable("psql");
        return;
    }
    let admin = format!(
        "host=127.0.0.1 port={} dbname=orders user={ADMIN_USER} password={} sslmode=disable",
        pg.port, pg.admin_password
    );
    let out = psql(&admin, "SELECT count(*) FROM items");
    assert!(!out.status.success(), "the admin read data");
    assert!(stderr(&out).contains("42501"), "{}", stderr(&out));
    let out = psql(&admin, "SET ROLE orders_write");
    assert!(!out.status.success(), "the admin became orders_write");
    assert!(stderr(&out).contains("42501"), "{}", stderr(&out));
}
