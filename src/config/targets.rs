//! The `targets:` section: one database (`postgres:`) or one host (`ssh:`) per name, each
//! checked here into a `PgTarget` or `SshTarget`; `audit.postgres` is checked as a database.

use std::path::Path;

use serde_saphyr::Spanned;

use crate::yaml::{self, Problems};

use super::load::file_path;
use super::model::{
    parse_public_key_line, HostKeySource, PasswordSource, PgAdmin, PgTarget, SshAdmin, SshTarget,
    Target, UpstreamTls,
};
use super::raw::{RawPgAdmin, RawPgTarget, RawSshTarget, RawTarget};

const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_SSH_PORT: u16 = 22;
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/jitgate";
pub(super) const DEFAULT_UID_RANGE: (u32, u32) = (200_000, 299_999);
/// Below this are system and ordinary login accounts (Debian's UID_MIN is 1000).
const UID_RANGE_MIN: u32 = 1000;
/// Some tools still treat UIDs as signed 32-bit values; (uid_t)-1 means "no change".
const UID_RANGE_MAX: u32 = 2_147_483_646;
/// Longest user name `useradd` accepts (and the longest JIT account name).
const POSIX_NAME_MAX: usize = 32;
const STATE_DIR_MAX: usize = 200;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub(super) const PG_NAME_MAX: usize = 63;

pub(super) fn validate_target(
    base: &Path,
    name: &str,
    raw: &Spanned<RawTarget>,
    problems: &mut Problems<'_>,
) -> Option<Target> {
    // Exhaustive destructuring: a new kind must be added to this check.
    let RawTarget { postgres, ssh } = &raw.value;
    match (postgres, ssh) {
        (Some(pg), None) => validate_pg(base, name, pg, problems).map(Target::Postgres),
        (None, Some(ssh)) => validate_ssh(base, name, ssh, problems).map(Target::Ssh),
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                format!(
                    "target `{}` needs exactly one kind: postgres, ssh (both are given)",
                    yaml::printable(name)
                ),
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                format!(
                    "target `{}` needs exactly one kind: postgres, ssh",
                    yaml::printable(name)
                ),
            );
            None
        }
    }
}

fn validate_host(raw: &Spanned<String>, problems: &mut Problems<'_>) -> Option<String> {
    problems.check(raw, |h| {
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!(
                "host `{}` must be a host name or IP address",
                yaml::printable(h)
            ))
        } else {
            Ok(h.clone())
        }
    })
}

fn validate_port(
    raw: Option<&Spanned<String>>,
    default: u16,
    problems: &mut Problems<'_>,
) -> Option<u16> {
    match raw {
        None => Some(default),
        Some(port) => problems.check(port, |p| {
            yaml::integer_in("port", p, 1, u32::from(u16::MAX))
                .and_then(|p| u16::try_from(p).map_err(|_| "port is out of range".to_string()))
        }),
    }
}

fn validate_ssh(
    base: &Path,
    name: &str,
    raw: &Spanned<RawSshTarget>,
    problems: &mut Problems<'_>,
) -> Option<SshTarget> {
    let ssh = &raw.value;
    let host = validate_host(&ssh.host, problems);
    let port = validate_port(ssh.port.as_ref(), DEFAULT_SSH_PORT, problems);
    let host_key = match (&ssh.host_key, &ssh.host_key_file) {
        (Some(line), None) => problems.check(line, |l| {
            parse_public_key_line(l)
                .map(|_| HostKeySource::Inline(l.trim().to_string()))
                .map_err(|reason| format!("host_key: {reason}"))
        }),
        (None, Some(file)) => {
            file_path(base, "host_key_file", file, problems).map(HostKeySource::File)
        }
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                "ssh target needs exactly one of host_key, host_key_file (both are given)",
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                "ssh target needs exactly one of host_key, host_key_file: the target's host key \
                 is pinned (e.g. the content of /etc/ssh/ssh_host_ed25519_key.pub)",
            );
            None
        }
    };
    let admin = {
        let admin = &ssh.admin.value;
        let user = problems.check(&admin.user, |u| {
            posix_name("admin.user", u).map(|()| u.clone())
        });
        let key_file = file_path(base, "admin.key_file", &admin.key_file, problems);
        match (user, key_file) {
            (Some(user), Some(key_file)) => Some(SshAdmin { user, key_file }),
            _ => None,
        }
    };
    let state_dir = match &ssh.state_dir {
        None => Some(DEFAULT_STATE_DIR.to_string()),
        Some(dir) => problems.check(dir, |d| state_dir(d)),
    };
    let uid_range = match &ssh.uid_range {
        None => Some(DEFAULT_UID_RANGE),
        Some(range) => problems.check(range, |r| uid_range(r)),
    };
    Some(SshTarget {
        name: name.to_string(),
        host: host?,
        port: port?,
        host_key: host_key?,
        admin: admin?,
        state_dir: state_dir?,
        uid_range: uid_range?,
    })
}

/// A name `useradd` accepts everywhere: `[a-z_][a-z0-9_.-]*`, at most 32 characters.
fn posix_name(what: &str, text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || text.len() > POSIX_NAME_MAX {
        return Err(format!(
            "{what} `{}` must be a Linux user name ([a-z_][a-z0-9_.-]*, at most \
             {POSIX_NAME_MAX} characters)",
            yaml::printable(text)
        ));
    }
    Ok(())
}

/// An absolute path of plain characters (it is used in shell scripts on the target, escaped,
/// and in sshd's StrictModes checks); a trailing `/` is dropped.
pub(super) fn state_dir(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let plain = trimmed
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    // `split` yields "" before the leading `/`; any later empty part is a `//`.
    let dotted = trimmed
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..");
    if !text.starts_with('/')
        || trimmed.is_empty()
        || trimmed.len() > STATE_DIR_MAX
        || !plain
        || dotted
    {
        return Err(format!(
            "state_dir `{}` must be an absolute path below / of A-Z, a-z, 0-9, `_`, `.`, `-` \
             (no `.` or `..` parts, at most {STATE_DIR_MAX} characters)",
            yaml::printable(text)
        ));
    }
    Ok(trimmed.to_string())
}

/// `FIRST-LAST`, inclusive, within 1000..=2147483646.
pub(crate) fn uid_range(text: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "uid_range `{}` must be FIRST-LAST with {UID_RANGE_MIN} <= FIRST <= LAST <= \
             {UID_RANGE_MAX}, e.g. 200000-299999",
            yaml::printable(text)
        )
    };
    let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
    let parse = |s: &str| -> Result<u32, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u32>().map_err(|_| bad())
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first < UID_RANGE_MIN || last > UID_RANGE_MAX || first > last {
        return Err(bad());
    }
    Ok((first, last))
}

pub(super) fn validate_pg(
    base: &Path,
    name: &str,
    raw: &Spanned<RawPgTarget>,
    problems: &mut Problems<'_>,
) -> Option<PgTarget> {
    let pg = &raw.value;
    let host = validate_host(&pg.host, problems);
    let port = validate_port(pg.port.as_ref(), DEFAULT_PG_PORT, problems);

    let mut databases = Vec::new();
    let mut databases_ok = true;
    if pg.databases.value.is_empty() {
        problems.at(
            pg.databases.referenced,
            "databases must list at least one database",
        );
        databases_ok = false;
    }
    for db in &pg.databases.value {
        let checked = problems.check(db, |d| {
            yaml::plain_text("database", d, PG_NAME_MAX)?;
            // `dbname=target/database` is split at the first `/`.
            if d.contains('/') {
                return Err(format!(
                    "database `{}` must not contain `/`",
                    yaml::printable(d)
                ));
            }
            Ok(d.clone())
        });
        match checked {
            Some(d) if databases.contains(&d) => {
                problems.at(
                    db.referenced,
                    format!("database `{}` is listed twice", yaml::printable(&d)),
                );
                databases_ok = false;
            }
            Some(d) => databases.push(d),
            None => databases_ok = false,
        }
    }

    let tls = problems
        .check(&pg.tls, |t| match t.as_str() {
            "disable" => Ok(TlsMode::Disable),
            "require" => Ok(TlsMode::Require),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(format!(
                "tls must be one of disable, require, verify-full (got `{}`)",
                yaml::printable(t)
            )),
        })
        .and_then(|mode| match (mode, &pg.tls_ca) {
            (TlsMode::VerifyFull, Some(ca)) => {
                file_path(base, "tls_ca", ca, problems).map(|ca| UpstreamTls::VerifyFull { ca })
            }
            (TlsMode::VerifyFull, None) => {
                problems.at(
                    pg.tls.referenced,
                    "tls_ca is required when tls is verify-full",
                );
                None
            }
            (TlsMode::Disable | TlsMode::Require, Some(ca)) => {
                problems.at(ca.referenced, "tls_ca is only used when tls is verify-full");
                None
            }
            (TlsMode::Disable, None) => Some(UpstreamTls::Disable),
            (TlsMode::Require, None) => Some(UpstreamTls::Require),
        });

    let admin = validate_admin(base, &pg.admin, databases.first(), problems);

    if !databases_ok {
        return None;
    }
    Some(PgTarget {
        name: name.to_string(),
        host: host?,
        port: port?,
        databases,
        tls: tls?,
        admin: admin?,
    })
}

#[derive(Debug, Clone, Copy)]
enum TlsMode {
    Disable,
    Require,
    VerifyFull,
}

fn validate_admin(
    base: &Path,
    raw: &Spanned<RawPgAdmin>,
    first_database: Option<&String>,
    problems: &mut Problems<'_>,
) -> Option<PgAdmin> {
    let admin = &raw.value;
    let user = problems.check(&admin.user, |u| {
        yaml::plain_text("admin.user", u, PG_NAME_MAX).map(|()| u.clone())
    });
    let database = match &admin.database {
        Some(db) => problems.check(db, |d| {
            yaml::plain_text("admin.database", d, PG_NAME_MAX).map(|()| d.clone())
        }),
        // When `databases` is empty that is reported already.
        None => first_database.cloned(),
    };
    let password = match (&admin.password_file, &admin.password_env) {
        (Some(file), None) => {
            file_path(base, "password_file", file, problems).map(PasswordSource::File)
        }
        (None, Some(var)) => problems.check(var, |v| {
            let mut chars = v.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Ok(PasswordSource::Env(v.clone()))
            } else {
                Err(format!(
                    "password_env `{}` must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    yaml::printable(v)
                ))
            }
        }),
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                "admin needs exactly one of password_file, password_env (both are given)",
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                "admin needs exactly one of password_file, password_env",
            );
            None
        }
    };
    Some(PgAdmin {
        user: user?,
        database: database?,
        password: password?,
    })
}
