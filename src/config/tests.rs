//! Unit tests of `config`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::targets::{state_dir, uid_range, DEFAULT_STATE_DIR, DEFAULT_UID_RANGE};
use super::*;

const EXAMPLE: &str = "\
instance_id: gw-1
trust_domain: jitgate.local
tls:
  ca: certs/ca.crt
  cert: certs/server.crt
  key: certs/server.key
  crl: certs/crl.pem
listen:
  postgres: 127.0.0.1:6432
handshake_timeout: 10s
policy_dir: policies
audit:
  dir: audit
  on_failure: fail_open
reap_interval: 60s
targets:
  orders:
    postgres:
      host: 127.0.0.1
      port: 5432
      databases: [orders, orders_archive]
      tls: disable
      admin:
        user: jitgate_admin
        database: orders
        password_file: /run/secrets/pg
";

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(Path::new("/etc/jitgate/jitgate.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(config) => vec![format!("unexpectedly valid: {config:?}")],
        Err(ConfigError::Invalid(list)) => list.iter().map(|m| m.to_string()).collect(),
        Err(other) => vec![format!("unexpected error kind: {other}")],
    }
}

#[test]
fn watchdog_grace_is_a_duration_of_a_second_or_more() -> Result<(), ConfigError> {
    let config = load(&EXAMPLE.replace("reap_interval: 60s", "watchdog_grace: 5s"))?;
    assert_eq!(config.watchdog_grace, Duration::from_secs(5));
    let bad = errors(&EXAMPLE.replace("reap_interval: 60s", "watchdog_grace: 0s"));
    assert!(
        bad.len() == 1 && bad[0].contains("watchdog_grace"),
        "{bad:?}"
    );
    Ok(())
}

#[test]
fn session_warnings_are_durations_or_none() -> Result<(), ConfigError> {
    let config = load(&EXAMPLE.replace("reap_interval: 60s", "session_warnings: [10m, 30s]"))?;
    assert_eq!(
        config.session_warnings,
        vec![Duration::from_secs(600), Duration::from_secs(30)]
    );
    let config = load(&EXAMPLE.replace("reap_interval: 60s", "session_warnings: []"))?;
    assert!(config.session_warnings.is_empty());
    let bad = errors(&EXAMPLE.replace("reap_interval: 60s", "session_warnings: [5m, soon, 0s]"));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("session_warnings: invalid duration `soon`"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("session_warnings must be between 1s and 1day"),
        "{bad:?}"
    );
    Ok(())
}

#[test]
fn example_config_loads() -> Result<(), ConfigError> {
    let config = load(EXAMPLE)?;
    assert_eq!(config.instance_id, "gw-1");
    assert_eq!(config.trust_domain, "jitgate.local");
    assert_eq!(
        config.tls,
        TlsFiles {
            ca: PathBuf::from("/etc/jitgate/certs/ca.crt"),
            cert: PathBuf::from("/etc/jitgate/certs/server.crt"),
            key: PathBuf::from("/etc/jitgate/certs/server.key"),
            crl: Some(PathBuf::from("/etc/jitgate/certs/crl.pem")),
        }
    );
    assert_eq!(
        config.listen.postgres,
        Some(SocketAddr::from(([127, 0, 0, 1], 6432)))
    );
    assert_eq!(config.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.reap_interval, Duration::from_secs(60));
    assert_eq!(config.policy_dir, PathBuf::from("/etc/jitgate/policies"));
    assert_eq!(config.audit.dir, PathBuf::from("/etc/jitgate/audit"));
    assert_eq!(config.audit.on_failure, crate::audit::OnFailure::FailOpen);
    let Some(Target::Postgres(pg)) = config.target("orders") else {
        unreachable!("orders is a postgres target: {config:?}")
    };
    assert_eq!(pg.name, "orders");
    assert_eq!(pg.host, "127.0.0.1");
    assert_eq!(pg.port, 5432);
    assert_eq!(pg.databases, vec!["orders", "orders_archive"]);
    assert_eq!(pg.tls, UpstreamTls::Disable);
    assert_eq!(
        pg.admin,
        PgAdmin {
            user: "jitgate_admin".into(),
            database: "orders".into(),
            password: PasswordSource::File(PathBuf::from("/run/secrets/pg")),
        }
    );
    assert!(config.target("nope").is_none());
    Ok(())
}

#[test]
fn defaults_apply() -> Result<(), ConfigError> {
    let config = Config::from_yaml(
        Path::new("jitgate.yaml"),
        "\
instance_id: gw-1
tls: {ca: ca.crt, cert: s.crt, key: s.key}
targets:
  orders:
    postgres:
      host: db
      databases: [orders]
      tls: verify-full
      tls_ca: pg-ca.crt
      admin: {user: a, password_env: PG_PASS}
",
    )?;
    assert_eq!(config.trust_domain, "jitgate.local");
    assert_eq!(config.listen, Listen::default());
    assert_eq!(config.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.reap_interval, Duration::from_secs(60));
    assert_eq!(config.watchdog_grace, Duration::from_secs(30));
    assert_eq!(
        config.session_warnings,
        vec![Duration::from_secs(300), Duration::from_secs(60)]
    );
    assert_eq!(config.policy_dir, PathBuf::from("policies"));
    assert_eq!(config.audit.dir, PathBuf::from("audit"));
    assert_eq!(config.audit.on_failure, crate::audit::OnFailure::FailClosed);
    assert_eq!(config.tls.crl, None);
    // The gateway's own state and control socket: beside the config.
    assert_eq!(config.state_dir, PathBuf::from("."));
    assert_eq!(config.control_socket, PathBuf::from("./jitgate.sock"));
    let Some(Target::Postgres(pg)) = config.target("orders") else {
        unreachable!("orders is a postgres target")
    };
    assert_eq!(pg.port, 5432);
    assert_eq!(pg.admin.database, "orders");
    assert_eq!(pg.admin.password, PasswordSource::Env("PG_PASS".into()));
    assert_eq!(
        pg.tls,
        UpstreamTls::VerifyFull {
            ca: PathBuf::from("pg-ca.crt")
        }
    );
    Ok(())
}

#[test]
fn unknown_field_points_at_the_key() {
    let text = EXAMPLE.replace("      host: 127.0.0.1", "      hots: 127.0.0.1");
    assert_eq!(
        errors(&text),
        vec![
            "/etc/jitgate/jitgate.yaml:19:7: unknown field `hots`, expected one of \
                 host, port, databases, tls, tls_ca, admin"
        ]
    );
}

#[test]
fn bad_tls_mode_points_at_the_value() {
    let text = EXAMPLE.replace("tls: disable", "tls: verify_full");
    assert_eq!(
        errors(&text),
        vec![
            "/etc/jitgate/jitgate.yaml:22:12: tls must be one of disable, require, \
                 verify-full (got `verify_full`)"
        ]
    );
}

#[test]
fn tls_ca_required_for_verify_full_and_only_then() {
    let text = EXAMPLE.replace("tls: disable", "tls: verify-full");
    assert_eq!(
        errors(&text),
        vec!["/etc/jitgate/jitgate.yaml:22:12: tls_ca is required when tls is verify-full"]
    );
    let text = EXAMPLE.replace("tls: disable", "tls: require\n      tls_ca: ca.crt");
    assert_eq!(
        errors(&text),
        vec!["/etc/jitgate/jitgate.yaml:23:15: tls_ca is only used when tls is verify-full"]
    );
}

#[test]
fn bad_duration_points_at_the_value() {
    let text = EXAMPLE.replace("handshake_timeout: 10s", "handshake_timeout: 10 parsecs");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "/etc/jitgate/jitgate.yaml:10:20: handshake_timeout: invalid duration `10 parsecs`"
        ),
        "{errs:?}"
    );
}

#[test]
fn all_semantic_problems_are_reported() {
    let text = EXAMPLE
        .replace("instance_id: gw-1", "instance_id: GW_1")
        .replace("postgres: 127.0.0.1:6432", "postgres: localhost")
        .replace("port: 5432", "port: 70000")
        .replace("[orders, orders_archive]", "[]")
        .replace("  orders:\n", "  orders/x:\n");
    assert_eq!(
        errors(&text),
        vec![
            "/etc/jitgate/jitgate.yaml:1:14: instance_id `GW_1` must be 1 to 32 characters \
                 of a-z, 0-9 and `-`",
            "/etc/jitgate/jitgate.yaml:9:13: listen.postgres `localhost` must be IP:port, \
                 e.g. 127.0.0.1:6432",
            "/etc/jitgate/jitgate.yaml:17:3: target name `orders/x` may only contain A-Z, \
                 a-z, 0-9, `_`, `.` and `-` (found '/')",
            "/etc/jitgate/jitgate.yaml:20:13: port must be a whole number from 1 to 65535 \
                 (got 70000)",
            "/etc/jitgate/jitgate.yaml:21:18: databases must list at least one database",
        ]
    );
}

#[test]
fn password_source_needs_exactly_one() {
    let both = EXAMPLE.replace(
        "password_file: /run/secrets/pg",
        "password_file: /run/secrets/pg\n        password_env: X",
    );
    assert_eq!(
        errors(&both),
        vec![
            "/etc/jitgate/jitgate.yaml:24:9: admin needs exactly one of password_file, \
                 password_env (both are given)"
        ]
    );
    let neither = EXAMPLE.replace("        password_file: /run/secrets/pg\n", "");
    assert_eq!(
        errors(&neither),
        vec![
            "/etc/jitgate/jitgate.yaml:24:9: admin needs exactly one of password_file, \
                 password_env"
        ]
    );
    let bad_env = EXAMPLE.replace("password_file: /run/secrets/pg", "password_env: 1-X");
    assert_eq!(
        errors(&bad_env),
        vec![
            "/etc/jitgate/jitgate.yaml:26:23: password_env `1-X` must be an environment \
                 variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ]
    );
}

#[test]
fn target_needs_exactly_one_kind_and_unknown_kinds_are_rejected() {
    let text = "\
instance_id: gw-1
tls: {ca: a, cert: b, key: c}
targets:
  web:
    telnet: {host: x}
";
    assert_eq!(
        errors(text),
        vec![
            "/etc/jitgate/jitgate.yaml:5:5: unknown field `telnet`, expected one of postgres, ssh"
                .to_string()
        ]
    );
    let text = "\
instance_id: gw-1
tls: {ca: a, cert: b, key: c}
targets:
  web: {}
";
    assert_eq!(
        errors(text),
        vec!["/etc/jitgate/jitgate.yaml:4:8: target `web` needs exactly one kind: postgres, ssh"]
    );
}

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII1q8uFXCj4bsxY2FLPwNKK+Y80FthR6MKDvh+zsLGX3 web-1";

fn ssh_example() -> String {
    format!(
        "\
instance_id: gw-1
tls: {{ca: ca.crt, cert: s.crt, key: s.key}}
listen:
  postgres: 127.0.0.1:6432
  ssh: 127.0.0.1:2222
ssh_host_key: keys/host_ed25519
targets:
  web-1:
    ssh:
      host: 10.0.0.5
      port: 2200
      host_key: \"{SSH_KEY}\"
      admin:
        user: jitgate
        key_file: keys/admin_ed25519
      state_dir: /srv/jitgate/
      uid_range: 300000-300999
"
    )
}

#[test]
fn ssh_target_loads() -> Result<(), ConfigError> {
    let config = load(&ssh_example())?;
    assert_eq!(
        config.listen,
        Listen {
            postgres: Some(SocketAddr::from(([127, 0, 0, 1], 6432))),
            ssh: Some(SocketAddr::from(([127, 0, 0, 1], 2222))),
        }
    );
    assert_eq!(
        config.ssh_host_key,
        PathBuf::from("/etc/jitgate/keys/host_ed25519")
    );
    let Some(Target::Ssh(ssh)) = config.target("web-1") else {
        unreachable!("web-1 is an ssh target: {config:?}")
    };
    assert_eq!(config.targets["web-1"].name(), "web-1");
    assert_eq!(
        *ssh,
        SshTarget {
            name: "web-1".into(),
            host: "10.0.0.5".into(),
            port: 2200,
            host_key: HostKeySource::Inline(SSH_KEY.into()),
            admin: SshAdmin {
                user: "jitgate".into(),
                key_file: PathBuf::from("/etc/jitgate/keys/admin_ed25519"),
            },
            state_dir: "/srv/jitgate".into(),
            uid_range: (300_000, 300_999),
        }
    );
    let key = ssh.pinned_key()?;
    assert_eq!(key.algorithm(), russh::keys::Algorithm::Ed25519);
    Ok(())
}

#[test]
fn ssh_defaults_apply() -> Result<(), ConfigError> {
    let text = "\
instance_id: gw-1
tls: {ca: ca.crt, cert: s.crt, key: s.key}
targets:
  web-1:
    ssh:
      host: 127.0.0.1
      host_key_file: keys/web-1.pub
      admin: {user: root, key_file: /etc/jitgate/admin}
";
    let config = load(text)?;
    assert_eq!(config.listen, Listen::default());
    assert_eq!(
        config.ssh_host_key,
        PathBuf::from("/etc/jitgate/ssh_host_ed25519_key")
    );
    let Some(Target::Ssh(ssh)) = config.target("web-1") else {
        unreachable!("web-1 is an ssh target")
    };
    assert_eq!(ssh.port, 22);
    assert_eq!(
        ssh.host_key,
        HostKeySource::File(PathBuf::from("/etc/jitgate/keys/web-1.pub"))
    );
    assert_eq!(ssh.state_dir, "/var/lib/jitgate");
    assert_eq!(ssh.uid_range, (200_000, 299_999));
    Ok(())
}

#[test]
fn ssh_problems_point_at_the_value() {
    let text = ssh_example()
        .replace("ssh: 127.0.0.1:2222", "ssh: 2222")
        .replace("port: 2200", "port: 0")
        .replace(SSH_KEY, "ssh-ed25519 not-base64")
        .replace("user: jitgate", "user: Admin;rm")
        .replace("state_dir: /srv/jitgate/", "state_dir: srv/../x")
        .replace("300000-300999", "300999-300000");
    let errs = errors(&text);
    assert_eq!(errs.len(), 6, "{errs:#?}");
    assert_eq!(
        errs[0],
        "/etc/jitgate/jitgate.yaml:5:8: listen.ssh `2222` must be IP:port, e.g. 127.0.0.1:2222"
    );
    assert_eq!(
        errs[1],
        "/etc/jitgate/jitgate.yaml:11:13: port must be a whole number from 1 to 65535 (got 0)"
    );
    assert!(
        errs[2].starts_with("/etc/jitgate/jitgate.yaml:12:17: host_key: not an OpenSSH public key"),
        "{errs:#?}"
    );
    assert_eq!(
        errs[3],
        "/etc/jitgate/jitgate.yaml:14:15: admin.user `Admin;rm` must be a Linux user name \
             ([a-z_][a-z0-9_.-]*, at most 32 characters)"
    );
    assert_eq!(
        errs[4],
        "/etc/jitgate/jitgate.yaml:16:18: state_dir `srv/../x` must be an absolute path \
             below / of A-Z, a-z, 0-9, `_`, `.`, `-` (no `.` or `..` parts, at most 200 \
             characters)"
    );
    assert_eq!(
        errs[5],
        "/etc/jitgate/jitgate.yaml:17:18: uid_range `300999-300000` must be FIRST-LAST \
             with 1000 <= FIRST <= LAST <= 2147483646, e.g. 200000-299999"
    );
}

#[test]
fn ssh_host_key_needs_exactly_one_source_and_one_kind() {
    let both = ssh_example().replace(
        "      admin:\n",
        "      host_key_file: k.pub\n      admin:\n",
    );
    assert_eq!(
        errors(&both),
        vec![
            "/etc/jitgate/jitgate.yaml:10:7: ssh target needs exactly one of host_key, \
                 host_key_file (both are given)"
        ]
    );
    let neither = ssh_example().replace(&format!("      host_key: \"{SSH_KEY}\"\n"), "");
    let errs = errors(&neither);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "/etc/jitgate/jitgate.yaml:10:7: ssh target needs exactly one of host_key, \
                 host_key_file: the target's host key is pinned"
        ),
        "{errs:?}"
    );
    let two_kinds = ssh_example().replace(
            "    ssh:\n",
            "    postgres: {host: h, databases: [d], tls: disable, admin: {user: a, password_env: P}}\n    ssh:\n",
        );
    assert_eq!(
        errors(&two_kinds),
        vec![
            "/etc/jitgate/jitgate.yaml:9:5: target `web-1` needs exactly one kind: postgres, \
                 ssh (both are given)"
        ]
    );
}

#[test]
fn uid_ranges() {
    assert_eq!(uid_range("200000-299999"), Ok((200_000, 299_999)));
    assert_eq!(uid_range(" 5000 - 5000 "), Ok((5000, 5000)));
    for bad in [
        "",
        "200000",
        "-5",
        "999-2000",
        "2000-1999",
        "1000-2147483647",
        "1000-+2000",
        "a-b",
        "1000-2000-3000",
        "1000-99999999999",
    ] {
        assert!(uid_range(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn state_dirs() {
    assert_eq!(state_dir("/var/lib/jitgate"), Ok("/var/lib/jitgate".into()));
    assert_eq!(state_dir("/srv/j/"), Ok("/srv/j".into()));
    for bad in [
        "", "/", "var/lib", "/a/../b", "/a//b", "/a/./b", "/a b", "/a;b", "/a'b",
    ] {
        assert!(state_dir(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn pinned_key_from_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("web-1.pub");
    fs::write(&path, format!("# pinned on 2025-01-01\n\n{SSH_KEY}\n"))?;
    let target = SshTarget {
        name: "web-1".into(),
        host: "h".into(),
        port: 22,
        host_key: HostKeySource::File(path.clone()),
        admin: SshAdmin {
            user: "root".into(),
            key_file: dir.path().join("admin"),
        },
        state_dir: DEFAULT_STATE_DIR.into(),
        uid_range: DEFAULT_UID_RANGE,
    };
    let from_file = target.pinned_key()?;
    let inline = SshTarget {
        host_key: HostKeySource::Inline(SSH_KEY.into()),
        ..target.clone()
    }
    .pinned_key()?;
    assert_eq!(from_file.key_data(), inline.key_data());

    fs::write(&path, "garbage\n")?;
    let err = target.pinned_key().err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.starts_with(&format!(
            "target web-1: cannot use the pinned host key from host_key_file {}: not an \
                 OpenSSH public key",
            path.display()
        ))),
        "{err:?}"
    );
    let missing = SshTarget {
        host_key: HostKeySource::File(dir.path().join("absent.pub")),
        ..target
    };
    assert!(matches!(
        missing.pinned_key(),
        Err(ConfigError::PinnedKey { .. })
    ));
    Ok(())
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = Config::load(Path::new("/nonexistent/jitgate.yaml")).err();
    assert!(
        matches!(&err, Some(ConfigError::Read { path, .. }) if path == Path::new("/nonexistent/jitgate.yaml")),
        "{err:?}"
    );
}

#[test]
fn load_reads_the_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("jitgate.yaml");
    fs::write(&path, EXAMPLE)?;
    let config = Config::load(&path)?;
    assert_eq!(config.path, path);
    assert_eq!(config.tls.ca, dir.path().join("certs/ca.crt"));
    Ok(())
}

#[test]
fn password_from_file_trims_one_newline() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pw");
    fs::write(&path, "s3cret\n\n")?;
    let source = PasswordSource::File(path.clone());
    assert_eq!(source.read()?.expose(), "s3cret\n");
    fs::write(&path, "s3cret\r\n")?;
    assert_eq!(source.read()?.expose(), "s3cret");
    fs::write(&path, "\n")?;
    let err = source.read().err().map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!(
            "the password in password file {} is empty",
            path.display()
        ))
    );
    let missing = PasswordSource::File(dir.path().join("absent"));
    let err = missing
        .read()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.starts_with("cannot read password file "), "{err}");
    assert!(err.contains("absent"), "{err}");
    Ok(())
}

#[test]
fn password_from_env() -> Result<(), ConfigError> {
    // A variable name only this test uses: tests run in parallel threads.
    let var = "JITGATE_CONFIG_TEST_PASSWORD_FROM_ENV";
    std::env::set_var(var, "hunter2\n");
    let source = PasswordSource::Env(var.into());
    let secret = source.read()?;
    assert_eq!(secret.expose(), "hunter2");
    assert_eq!(format!("{secret:?}"), "[redacted]");
    std::env::remove_var(var);
    let err = source.read().err().map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!("password environment variable {var} is not set"))
    );
    Ok(())
}

#[test]
fn password_errors_never_show_the_content() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // A directory is not readable as a file: the error must name it, not leak anything.
    let source = PasswordSource::File(dir.path().to_path_buf());
    let err = source
        .read()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    Ok(())
}

#[test]
fn state_dir_and_control_socket() -> Result<(), ConfigError> {
    let base = "instance_id: gw-1\ntls: {ca: ca.crt, cert: s.crt, key: s.key}\n";
    let config = Config::from_yaml(
        Path::new("/etc/jitgate/jitgate.yaml"),
        &format!("{base}state_dir: /var/lib/jitgate-gw\n"),
    )?;
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/jitgate-gw"));
    assert_eq!(
        config.control_socket,
        PathBuf::from("/var/lib/jitgate-gw/jitgate.sock")
    );
    let config = Config::from_yaml(
        Path::new("/etc/jitgate/jitgate.yaml"),
        &format!("{base}control_socket: run/gw.sock\n"),
    )?;
    assert_eq!(config.state_dir, PathBuf::from("/etc/jitgate"));
    assert_eq!(
        config.control_socket,
        PathBuf::from("/etc/jitgate/run/gw.sock")
    );
    // Longer than a Unix socket path may be: said where it was set.
    let long = format!("{base}control_socket: /{}\n", "s".repeat(120));
    let found = errors(&long).join("\n");
    assert!(
        found.contains("a Unix socket path must be shorter than 108"),
        "{found}"
    );
    Ok(())
}

#[test]
fn limits_default_and_point_at_a_bad_value() -> Result<(), ConfigError> {
    let config = load(EXAMPLE)?;
    assert_eq!(config.limits, crate::limits::LimitsConfig::default());
    let config = load(&EXAMPLE.replace(
        "reap_interval: 60s",
        "limits:\n  max_sessions_per_identity: 3\n  tcp_keepalive: 15s",
    ))?;
    assert_eq!(config.limits.max_sessions_per_identity, 3);
    assert_eq!(config.limits.tcp_keepalive, Duration::from_secs(15));
    assert_eq!(
        config.limits.max_sessions,
        crate::limits::LimitsConfig::default().max_sessions
    );
    let bad = errors(&EXAMPLE.replace(
        "reap_interval: 60s",
        "limits:\n  max_sessions: 0\n  max_mints_per_target: lots",
    ));
    assert_eq!(
        bad,
        vec![
            "/etc/jitgate/jitgate.yaml:16:17: limits.max_sessions must be a whole number from 1 \
             to 1000000 (got 0)"
                .to_string(),
            "/etc/jitgate/jitgate.yaml:17:25: limits.max_mints_per_target must be a whole number \
             from 1 to 256 (got `lots`)"
                .to_string(),
        ]
    );
    Ok(())
}

#[test]
fn peers_need_a_peer_id_and_addresses() -> Result<(), ConfigError> {
    let config = load(&EXAMPLE.replace(
        "reap_interval: 60s",
        "peer_id: 1\npeers:\n  2: 10.0.0.2:6432\n  3: \"[fd00::3]:6432\"",
    ))?;
    let Some(peering) = config.peering else {
        return Err(ConfigError::Invalid(Vec::new()));
    };
    assert_eq!(peering.id, 1);
    assert_eq!(peering.peers[&2].to_string(), "10.0.0.2:6432");
    assert_eq!(peering.peers[&3].host, "fd00::3");
    assert!(load(EXAMPLE)?.peering.is_none());

    let bad = errors(&EXAMPLE.replace("reap_interval: 60s", "peers:\n  2: 10.0.0.2:6432"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("peers needs peer_id"), "{bad:?}");
    let bad = errors(&EXAMPLE.replace(
        "reap_interval: 60s",
        "peer_id: 1\npeers:\n  1: 10.0.0.1:6432\n  2: gw-2\n  16384: 10.0.0.9:6432",
    ));
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        bad[0].contains("1 is this gateway's own peer_id"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("peer address `gw-2` must be host:port"),
        "{bad:?}"
    );
    assert!(
        bad[2].contains("a peer's number must be a whole number from 1 to 16383"),
        "{bad:?}"
    );
    Ok(())
}
