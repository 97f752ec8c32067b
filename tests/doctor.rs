//! `jitgate doctor` against a real PostgreSQL and a real sshd: a target set up as the README
//! prescribes passes every check; a missing privilege, a role a grant names that does not
//! exist, a wrong pinned host key and a grant naming no target each show as ✗ with the fix,
//! and the fix printed is the one that works. The dry runs leave no role and no account.
//! The mint-failure log names the same fix (`jitgate serve`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::sshd::{jit_accounts, Sshd};
use common::{
    jitgate_bin, psql, stderr, unavailable, which, Gateway, Postgres, ADMIN_USER, DEFAULT_POLICY,
};

const READY_POLICY: &str = r#"
grants:
  - name: orders-dba
    subjects: { groups: [dba] }
    targets: [orders]
    postgres: { roles: [orders_read, orders_write] }
  - name: web-ops
    subjects: { groups: [ops] }
    targets: ["web-*"]
    ssh: { groups: [adm], sudo: true }
"#;

/// READY_POLICY plus a role that does not exist and a grant whose target is not configured.
const BROKEN_POLICY: &str = r#"
  - name: orders-audit
    subjects: { users: [carol] }
    targets: [orders]
    postgres: { roles: [orders_read, orders_audit] }
  - name: reports-ro
    subjects: { groups: [analyst] }
    targets: [reports]
    postgres: { roles: [orders_read] }
"#;

/// A config directory with a Postgres target `orders` and the sshd as `web-1`.
fn setup(pg: &Postgres, sshd: &Sshd, policy: &str, extra_targets: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("jitgate-doctor-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    fs::create_dir(d.join("policies")).unwrap();
    fs::write(d.join("policies/test.yaml"), policy).unwrap();
    let secret = d.join("admin-password");
    fs::write(&secret, format!("{}\n", pg.admin_password)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "instance_id: {instance}\ntls: {{ca: a, cert: b, key: c}}\ntargets:\n  \
         orders:\n    postgres:\n      host: 127.0.0.1\n      port: {port}\n      \
         databases: [orders, postgres]\n      tls: disable\n      admin:\n        \
         user: {ADMIN_USER}\n        password_file: admin-password\n{ssh}{extra_targets}",
        instance = sshd.instance_id,
        port = pg.port,
        ssh = sshd.target_yaml("web-1"),
    );
    fs::write(d.join("jitgate.yaml"), config).unwrap();
    dir
}

/// Runs `jitgate doctor`; returns (exit code, stdout).
fn doctor(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(jitgate_bin())
        .args(["doctor", "--config"])
        .arg(dir.join("jitgate.yaml"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "jitgate doctor {args:?} exited {:?}\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// The `fix:` line printed right under the ✗ line starting with `check`.
fn fix_for(stdout: &str, check: &str) -> String {
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with(&format!("✗ {check}")) {
            let fix = lines.next().unwrap_or_default().trim();
            return fix
                .strip_prefix("fix: ")
                .unwrap_or_else(|| panic!("no fix under `{line}`:\n{stdout}"))
                .to_string();
        }
    }
    panic!("no ✗ line starting with `{check}`:\n{stdout}");
}

/// Nothing a dry run made is left: no JIT role, no account, no ephemeral home.
fn assert_nothing_left(pg: &Postgres, sshd: &Sshd) {
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
    assert_eq!(
        jit_accounts(&format!("{}-doctor", sshd.instance_id)),
        Vec::<String>::new()
    );
    let homes: Vec<PathBuf> = fs::read_dir(sshd.state_dir.join("tmp-home"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert_eq!(homes, Vec::<PathBuf>::new());
}

fn targets() -> Option<(Postgres, Sshd)> {
    if which("visudo").is_none() {
        unavailable("visudo (apt-get install sudo)")?;
    }
    let pg = Postgres::start()?;
    let sshd = Sshd::start()?;
    Some((pg, sshd))
}

#[test]
fn a_ready_target_passes_every_check() {
    let Some((pg, sshd)) = targets() else { return };
    let dir = setup(&pg, &sshd, READY_POLICY, "");
    let (code, out) = doctor(dir.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains('✗'), "{out}");
    let major = pg.version_num() / 10_000;
    for line in [
        "target orders (postgres 127.0.0.1:".to_string(),
        "  ✓ reachable".to_string(),
        format!("  ✓ admin {ADMIN_USER} logs in to database orders"),
        format!("  ✓ admin {ADMIN_USER} has pg_signal_backend"),
        "  ✓ role orders_write (grant orders-dba) exists on the target".to_string(),
        "  ✓ password_encryption is scram-sha-256".to_string(),
        format!("  ✓ database postgres exists and admin {ADMIN_USER} can connect to it"),
        "  ✓ dry run in orders: created role jit_jitgate_doctor_".to_string(),
        "  ✓ dry run in postgres: created role jit_jitgate_doctor_".to_string(),
        "target web-1 (ssh 127.0.0.1:".to_string(),
        "  ✓ host key matches the pinned one (SHA256:".to_string(),
        "  ✓ admin root logs in with".to_string(),
        "  ✓ tools present: useradd, userdel, usermod, groupadd, groupdel, pkill, flock, setpriv, perl, getent, find, stat, visudo".to_string(),
        "  ✓ group adm (grant web-ops) exists on the target".to_string(),
        "  ✓ dry run: created account jit-jitgate_doctor-".to_string(),
        "  ✓ grant orders-dba applies to orders (postgres)".to_string(),
        "  ✓ grant web-ops applies to web-1 (ssh)".to_string(),
        "all checks passed".to_string(),
    ] {
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    if major >= 16 {
        let line =
            format!("  ✓ admin {ADMIN_USER} holds ADMIN OPTION on orders_write (PostgreSQL {major} needs it)");
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    assert!(
        out.contains(", groups adm, sudo), logged in as it, removed it; nothing left"),
        "{out}"
    );
    assert_nothing_left(&pg, &sshd);

    // --target checks that one only, and not the policies.
    let (code, out) = doctor(dir.path(), &["--target", "web-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("target orders") && !out.contains("policies"),
        "{out}"
    );
    let (code, _) = doctor(dir.path(), &["--target", "nope"]);
    assert_eq!(code, 2);
}

#[test]
fn what_is_missing_is_named_with_its_fix() {
    let Some((pg, sshd)) = targets() else { return };
    let major = pg.version_num() / 10_000;
    // The privilege the version needs most: ADMIN OPTION on 16+ (without it every mint fails),
    // pg_signal_backend on 15 (without it no JIT session can be ended).
    let (check, revoke) = if major >= 16 {
        (
            format!("admin {ADMIN_USER} holds ADMIN OPTION on orders_write (PostgreSQL {major} needs it)"),
            format!("REVOKE ADMIN OPTION FOR orders_write FROM {ADMIN_USER}"),
        )
    } else {
        (
            format!("admin {ADMIN_USER} has pg_signal_backend"),
            format!("REVOKE pg_signal_backend FROM {ADMIN_USER}"),
        )
    };
    pg.superuser_sql("postgres", &revoke);
    if major >= 16 {
        // And an admin that may use a granted role's privileges itself (INHERIT), which the
        // README's set-up rules out.
        pg.superuser_sql(
            "postgres",
            &format!("GRANT orders_read TO {ADMIN_USER} WITH INHERIT TRUE"),
        );
    }
    // web-2 is the same sshd, pinned with another key.
    let wrong = tempfile::tempdir().unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "not-the-host", "-f"])
        .arg(wrong.path().join("k"))
        .status()
        .unwrap();
    assert!(status.success());
    let wrong_key = fs::read_to_string(wrong.path().join("k.pub")).unwrap();
    let web2 = sshd
        .target_yaml("web-2")
        .replace(&sshd.host_key_line, wrong_key.trim());
    let policy = format!("{READY_POLICY}{BROKEN_POLICY}");
    let dir = setup(&pg, &sshd, &policy, &web2);

    let (code, out) = doctor(dir.path(), &[]);
    assert_eq!(code, 1, "{out}");
    let privilege_fix = fix_for(&out, &check);
    if major >= 16 {
        assert_eq!(
            privilege_fix,
            format!(
                "GRANT orders_write TO {ADMIN_USER} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;"
            )
        );
        // The dry run hits the same wall, and its failure names the same fix.
        assert_eq!(
            fix_for(&out, "dry run in orders: creating a role failed"),
            privilege_fix
        );
        assert!(!out.contains("dry run in postgres"), "{out}");
        let inherit_fix = fix_for(
            &out,
            &format!("admin {ADMIN_USER} holds orders_read's privileges itself"),
        );
        assert_eq!(
            inherit_fix,
            format!(
                "GRANT orders_read TO {ADMIN_USER} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;"
            )
        );
        pg.superuser_sql("postgres", &inherit_fix);
    } else {
        assert_eq!(
            privilege_fix,
            format!("GRANT pg_signal_backend TO {ADMIN_USER};")
        );
    }
    let role_fix = fix_for(
        &out,
        "role orders_audit (grant orders-audit) exists on the target",
    );
    assert!(
        role_fix.starts_with("CREATE ROLE orders_audit NOLOGIN;"),
        "{role_fix}"
    );
    let key_fix = fix_for(
        &out,
        "host key matches the pinned one: the target presented key SHA256:",
    );
    assert!(
        key_fix.contains(&format!(
            "ssh-keyscan -t ed25519 -p {} '127.0.0.1'",
            sshd.port
        )),
        "{key_fix}"
    );
    let policy_fix = fix_for(
        &out,
        "grant reports-ro: targets entry `reports` names no configured target",
    );
    assert!(
        policy_fix.contains("add a target `reports`"),
        "{policy_fix}"
    );
    // web-1 itself is fine, and the broken web-2 stops before logging in.
    assert!(
        out.contains("  ✓ dry run: created account jit-jitgate_doctor-"),
        "{out}"
    );
    assert!(
        out.contains("  - not checked further: the host is not the pinned one"),
        "{out}"
    );
    assert_nothing_left(&pg, &sshd);

    // The SQL printed is the fix: run it as the superuser, and the target passes.
    pg.superuser_sql("postgres", &privilege_fix);
    pg.superuser_sql("postgres", &role_fix);
    let (code, out) = doctor(dir.path(), &["--target", "orders"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("  ✓ {check}")), "{out}");
    assert_nothing_left(&pg, &sshd);
}

#[test]
fn a_mint_failure_logs_the_fix_and_serve_warns_at_start() {
    if which("psql").is_none() {
        unavailable("psql");
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let major = pg.version_num() / 10_000;
    // 16+: without ADMIN OPTION the grant of orders_write fails; 15: without CREATEROLE the
    // role cannot be created at all.
    let (revoke, fix) = if major >= 16 {
        (
            format!("REVOKE ADMIN OPTION FOR orders_write FROM {ADMIN_USER}"),
            format!(
                "GRANT orders_write TO {ADMIN_USER} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;"
            ),
        )
    } else {
        (
            format!("ALTER ROLE {ADMIN_USER} NOCREATEROLE"),
            format!("ALTER ROLE {ADMIN_USER} CREATEROLE;"),
        )
    };
    pg.superuser_sql("postgres", &revoke);
    let gw = Gateway::start(&pg, DEFAULT_POLICY);
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 1");
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("jitgate could not create your account on target orders; ask the operator"),
        "{said}"
    );
    // The user is not told how the gateway is set up; the operator's log line says the fix.
    assert!(!said.contains(ADMIN_USER), "{said}");
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("mint failed"))
        .unwrap_or_else(|| panic!("no mint failure logged:\n{log}"));
    eprintln!("{line}");
    assert!(line.contains(&format!("fix={fix}")), "{line}");
    // serve's own start-up check saw it too, in the background, and the gateway served.
    let start = std::time::Instant::now();
    let warned = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains("doctor: a target is not ready") && l.contains(&fix)
        })
    };
    while !warned(&gw.log()) && start.elapsed() < std::time::Duration::from_secs(15) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(warned(&gw.log()), "{}", gw.log());
    for l in gw.log().lines().filter(|l| l.contains("doctor:")) {
        eprintln!("{l}");
    }
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
}
