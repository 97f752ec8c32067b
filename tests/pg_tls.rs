//! TLS on both sides as it is deployed: a target PostgreSQL with `ssl=on` and a CA of its own
//! (the gateway's `tls: verify-full` with `tls_ca`, and `tls: require`), and PostgreSQL 17+
//! clients — the real libpq 17 from the @embedded-postgres package — with direct TLS
//! (`sslnegotiation=direct`), psql's Ctrl-C and libpq 17's TLS CancelRequest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A gateway whose target `orders` uses upstream TLS `tls` (the YAML after `tls: `).
fn gateway_tls(pg: &Postgres, tls: &str) -> Gateway {
    let tls = format!("tls: {tls}");
    Gateway::start_edited(Some(pg), None, DEFAULT_POLICY, |c| {
        c.replace("tls: disable", &tls)
    })
}

fn tls_env() -> Option<Postgres> {
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)")?;
    }
    Postgres::start()
}

/// Every run of digits in `text`: an address leaks if the target's port is one of them.
fn numbers(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect()
}

/// alice's session through `gw` and whether the JIT role's and the admin's connections to the
/// target are encrypted (as the target itself sees them in pg_stat_ssl).
fn session_over_tls(pg: &Postgres, gw: &Gateway) {
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(
        &gw.conninfo("alice", Some((&crt, &key)), ""),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    let row = stdout(&out);
    assert!(
        row.starts_with("jit_alice_") && row.ends_with("|t"),
        "{row}"
    );
    let admin = pg.superuser_sql(
        "postgres",
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE ssl) FROM pg_stat_ssl \
             JOIN pg_stat_activity USING (pid) WHERE usename = '{ADMIN_USER}'"
        ),
    );
    let (all, encrypted) = admin.split_once('|').unwrap();
    assert!(
        all != "0" && all == encrypted,
        "admin connections (all|ssl): {admin}"
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}

/// alice is refused through `gw`: a FATAL that names the target by its name only. Returns
/// psql's stderr.
fn refused_without_address(pg: &Postgres, gw: &Gateway) -> String {
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 1");
    let err = stderr(&out);
    assert!(!out.status.success(), "psql got a session: {err}");
    assert!(
        err.contains("FATAL") && err.contains("target orders") && err.contains("ask the operator"),
        "{err}"
    );
    let port = pg.port.to_string();
    assert!(
        !numbers(&err).contains(&port.as_str()),
        "the FATAL names the target's port {port}: {err}"
    );
    assert!(
        !err.contains("UnknownIssuer") && !err.contains("certificate"),
        "the FATAL tells the TLS trouble: {err}"
    );
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
    err
}

/// The gateway's log lines that mention `needle`, for the assertion messages.
fn log_lines(gw: &Gateway, needle: &str) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn verify_full_with_the_targets_ca_and_name_works() {
    let Some(pg) = tls_env() else {
        return;
    };
    let ca = pg.enable_ssl(&[]);
    let gw = gateway_tls(&pg, &format!("verify-full\n      tls_ca: {}", ca.display()));
    session_over_tls(&pg, &gw);
}

#[test]
fn require_encrypts_against_an_ssl_server() {
    let Some(pg) = tls_env() else {
        return;
    };
    // A certificate for another name from a CA the gateway does not know: `require` checks
    // neither, it only encrypts.
    pg.enable_ssl(&["db.example.internal"]);
    let gw = gateway_tls(&pg, "require");
    session_over_tls(&pg, &gw);
}

#[test]
fn verify_full_refuses_a_certificate_from_another_ca() {
    let Some(pg) = tls_env() else {
        return;
    };
    pg.enable_ssl(&[]);
    let others = tempfile::tempdir().unwrap();
    // The CA of a second `certs init`, with the same subject as the one that signed the
    // target's certificate ("O=jitgate, CN=jitgate user CA"): webpki takes it for the issuer
    // and finds the signature wrong (BadSignature).
    let same_name = others.path().join("certs");
    jitgate(&["certs", "init", "--dir", same_name.to_str().unwrap()]);
    // A CA of another name altogether (UnknownIssuer).
    let other_name = others.path().join("other-ca.crt");
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&other_name, ca.cert.pem()).unwrap();
    for wrong in [same_name.join("ca.crt"), other_name] {
        let gw = gateway_tls(
            &pg,
            &format!("verify-full\n      tls_ca: {}", wrong.display()),
        );
        refused_without_address(&pg, &gw);
        let expected = format!(
            "the target's certificate is not signed by the CA in tls_ca {}",
            wrong.display()
        );
        let lines = log_lines(&gw, "mint failed");
        assert!(lines.iter().any(|l| l.contains(&expected)), "{}", gw.log());
        // A refused certificate is a TLS problem, not a target that is down.
        assert!(
            lines
                .iter()
                .all(|l| l.contains("TLS setup for target orders") && !l.contains("cannot reach")),
            "{}",
            gw.log()
        );
    }
}

#[test]
fn verify_full_refuses_a_certificate_for_another_name() {
    let Some(pg) = tls_env() else {
        return;
    };
    // Signed by the CA the gateway trusts, but for db.example.internal while the target's
    // `host` is 127.0.0.1.
    let ca = pg.enable_ssl(&["db.example.internal"]);
    let gw = gateway_tls(&pg, &format!("verify-full\n      tls_ca: {}", ca.display()));
    refused_without_address(&pg, &gw);
    let lines = log_lines(&gw, "mint failed");
    assert!(
        lines.iter().any(|l| l.contains(
            "the target's certificate does not name its configured host \\\"127.0.0.1\\\""
        ) && l.contains("db.example.internal")),
        "{}",
        gw.log()
    );
}

/// The directory holding libpq 17 (`libpq.so.5` and the OpenSSL it links) from the
/// @embedded-postgres package scripts/install-deps.sh caches; under CI its absence fails.
/// psql (the system's binary) running on libpq 17.
fn psql17(lib: &Path, conninfo: &str, sql: &str) -> Command {
    let mut cmd = psql_command(conninfo, sql);
    cmd.env("LD_LIBRARY_PATH", lib);
    cmd
}

fn libpq17_env() -> Option<(PathBuf, Postgres, Gateway)> {
    let lib = libpq17()?;
    let (pg, gw) = pg_env(DEFAULT_POLICY)?;
    Some((lib, pg, gw))
}

#[test]
fn libpq17_direct_tls_through_the_gateway() {
    let Some((lib, pg, gw)) = libpq17_env() else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    // libpq 15 rejects the option itself ("invalid connection option"): a success is libpq 17.
    for sslmode in ["verify-full", "require"] {
        let conninfo = gw.conninfo(
            "alice",
            Some((&crt, &key)),
            &format!("sslmode={sslmode} sslnegotiation=direct"),
        );
        let out = psql17(&lib, &conninfo, "SELECT current_user")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sslmode={sslmode}: {}\n{}",
            stderr(&out),
            gw.log()
        );
        assert!(stdout(&out).starts_with("jit_alice_"), "{}", stdout(&out));
    }
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}

/// Waits (up to 10 s) until a JIT role's backend runs a query starting with `prefix`.
fn wait_running(pg: &Postgres, prefix: &str) {
    let start = Instant::now();
    loop {
        let n = pg.superuser_sql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND state = 'active' AND usename LIKE 'jit\\_%' AND query LIKE '{prefix}%'"
            ),
        );
        if n == "1" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{prefix}… never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_output(child: std::process::Child, within: Duration) -> Output {
    let start = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn libpq17_psql_ctrl_c_cancels_the_query() {
    let Some((lib, pg, gw)) = libpq17_env() else {
        return;
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    for negotiation in ["postgres", "direct"] {
        let conninfo = gw.conninfo(
            "alice",
            Some((&crt, &key)),
            &format!("sslnegotiation={negotiation}"),
        );
        let child = psql17(&lib, &conninfo, "SELECT pg_sleep(30)")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_running(&pg, "SELECT pg_sleep");
        let pid = child.id().to_string();
        let sent = Instant::now();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let out = wait_output(child, Duration::from_secs(10));
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "cancel took {:?}",
            sent.elapsed()
        );
        let err = stderr(&out);
        assert!(
            err.contains("canceling statement due to user request"),
            "{negotiation}: {err}\n{}",
            gw.log()
        );
    }
    // psql's Ctrl-C handler calls PQcancel, which must be async-signal-safe and so sends the
    // bare packet even with libpq 17 (the TLS cancel is PQcancelBlocking's; see below).
    let forwarded = log_lines(&gw, "cancel request forwarded");
    assert_eq!(forwarded.len(), 2, "{}", gw.log());
    assert!(
        forwarded.iter().all(|l| l.contains("client_tls=false")),
        "{forwarded:?}"
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}

#[test]
fn libpq17_cancel_request_over_tls() {
    let Some((lib, pg, gw)) = libpq17_env() else {
        return;
    };
    let program = libpq_cancel_program(&lib, gw.dir.path());
    let (crt, key) = gw.issue("alice", &["dba"]);
    for negotiation in ["postgres", "direct"] {
        let conninfo = gw.conninfo(
            "alice",
            Some((&crt, &key)),
            &format!("sslnegotiation={negotiation}"),
        );
        let started = Instant::now();
        let out = Command::new(&program)
            .args([conninfo.as_str(), "SELECT pg_sleep(30)"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(out, Duration::from_secs(20));
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{negotiation}: {text}\n{}\n{}",
            stderr(&out),
            gw.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cancel took {:?}",
            started.elapsed()
        );
        assert!(text.starts_with("libpq 17"), "{text}");
        assert!(text.contains("ssl 1"), "{text}");
        assert!(
            text.contains("57014 canceling statement due to user request"),
            "{negotiation}: {text}\n{}",
            gw.log()
        );
    }
    let forwarded = log_lines(&gw, "cancel request forwarded");
    assert_eq!(forwarded.len(), 2, "{}", gw.log());
    assert!(
        forwarded.iter().all(|l| l.contains("client_tls=true")),
        "{forwarded:?}"
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}
