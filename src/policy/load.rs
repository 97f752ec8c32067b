//! Reads `policies/*.yaml` into a validated [`PolicySet`], or says everything that is wrong.
//!
//! Runs at start, on SIGHUP and for `jitgate policy check`; a set with any problem is refused
//! whole, so a half-valid policy can never be in force.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::{Forward, GrantRule, HomeMode, Pattern, PolicySet, SshGrant};
use crate::yaml::{self, LocatedMessage, MessageList, Problems};

/// Grant names are used as psql `user=`, so they follow PostgreSQL's identifier length.
const NAME_MAX: usize = 63;
const SUBJECT_MAX: usize = 255;
/// SPIFFE IDs are at most 2048 bytes (SPIFFE-ID spec, section 2.3).
const SPIFFE_MAX: usize = 2048;
const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(3600);
const MAX_SESSION_MIN: Duration = Duration::from_secs(60);
/// Short enough to test; an operator who sets it this low gets what they asked for.
const IDLE_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const MAX_SESSION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest Linux group name `groupadd` accepts.
const LINUX_GROUP_MAX: usize = 32;
/// Longest DNS name (RFC 1035 section 2.3.4, without the trailing dot).
const FORWARD_HOST_MAX: usize = 253;

/// Errors of the policy loading layer.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// One `file:line:col: message` per problem, across all files.
    #[error("{}", MessageList(.0))]
    Invalid(Vec<LocatedMessage>),
}

impl PolicySet {
    /// Loads every `.yaml`/`.yml` file of `dir` (sorted by name; names starting with `.` are
    /// skipped). A directory without policy files is a valid, deny-everything set; a missing
    /// directory is an error.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |error| PolicyError::Io { path, error }
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_policy = !name.starts_with('.')
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                );
            // fs::metadata follows symlinks: a link to a policy file counts.
            if is_policy && fs::metadata(&path).map_err(io_error(&path))?.is_file() {
                files.push(path);
            }
        }
        files.sort();

        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let text = fs::read_to_string(&path).map_err(io_error(&path))?;
            sources.push((path, text));
        }
        Self::from_sources(sources.iter().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// Validates policy files given as (path, text), in this order (public for `fuzz/`'s
    /// `policy` target, which feeds it text without a directory).
    pub fn from_sources<'a>(
        sources: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<PolicySet, PolicyError> {
        let mut rules = Vec::new();
        let mut found = Vec::new();
        // Grant name -> `file:line:col` of its first definition.
        let mut first_seen: HashMap<String, String> = HashMap::new();
        for (path, text) in sources {
            let raw = match yaml::parse::<RawFile>(path, text) {
                Ok(raw) => raw,
                Err(located) => {
                    found.push(located);
                    continue;
                }
            };
            let mut problems = Problems::new(path);
            let grants = raw.and_then(|f| f.grants).unwrap_or_default();
            for grant in &grants {
                let name = &grant.value.name;
                let here = LocatedMessage::at(path, name.referenced, "").position();
                match first_seen.get(&name.value) {
                    Some(first) => problems.at(
                        name.referenced,
                        format!(
                            "duplicate grant name `{}` (first defined at {first})",
                            yaml::printable(&name.value)
                        ),
                    ),
                    None => {
                        first_seen.insert(name.value.clone(), here.clone());
                    }
                }
                if let Some(rule) = validate(&grant.value, here, &mut problems) {
                    rules.push(rule);
                }
            }
            found.extend(problems.into_vec());
        }
        if found.is_empty() {
            Ok(PolicySet { rules })
        } else {
            // Files are visited in name order; within a file, report top to bottom.
            found.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            Err(PolicyError::Invalid(found))
        }
    }
}

// ---- the files as written ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    grants: Option<Vec<Spanned<RawGrant>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    name: Spanned<String>,
    description: Option<String>,
    subjects: Spanned<RawSubjects>,
    targets: Spanned<Vec<Spanned<String>>>,
    postgres: Option<RawPgGrant>,
    ssh: Option<RawSshGrant>,
    max_session: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    require_reason: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    users: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<String>>>,
    spiffe: Option<Vec<Spanned<String>>>,
    workloads: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgGrant {
    roles: Option<Vec<Spanned<String>>>,
    connection_limit: Option<Spanned<String>>,
    set_role: Option<bool>,
    redact_parameters: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshGrant {
    groups: Option<Vec<Spanned<String>>>,
    sudo: Option<bool>,
    port_forwards: Option<Vec<Spanned<String>>>,
    sftp: Option<bool>,
    home: Option<Spanned<String>>,
    record_exec_output: Option<bool>,
}

// ---- validation ----------------------------------------------------------------------------

fn validate(raw: &RawGrant, origin: String, problems: &mut Problems<'_>) -> Option<GrantRule> {
    let before = problems.len();
    let name = problems.check(&raw.name, |n| {
        yaml::simple_name("grant name", n, NAME_MAX).map(|()| n.clone())
    });

    let RawSubjects {
        users,
        groups,
        spiffe,
        workloads,
    } = &raw.subjects.value;
    let listed = [users, groups, spiffe, workloads]
        .iter()
        .map(|list| list.as_ref().map_or(0, Vec::len))
        .sum::<usize>();
    let users = checked_list(users.as_deref(), problems, |u| {
        yaml::plain_text("user", u, SUBJECT_MAX).map(|()| u.clone())
    });
    let groups = checked_list(groups.as_deref(), problems, |g| {
        yaml::plain_text("group", g, SUBJECT_MAX).map(|()| g.clone())
    });
    let spiffe = checked_list(spiffe.as_deref(), problems, |s| spiffe_glob(s));
    let workloads = checked_list(workloads.as_deref(), problems, |w| {
        yaml::plain_text("workload", w, SUBJECT_MAX).map(|()| w.clone())
    });
    if listed == 0 {
        problems.at(
            raw.subjects.referenced,
            "subjects must list at least one of users, groups, workloads, spiffe",
        );
    }
    if raw.postgres.is_none() && raw.ssh.is_none() {
        // Before sections decided the kind, such a grant applied to every kind of target.
        problems.at(
            raw.name.referenced,
            "the grant has neither a postgres: nor an ssh: section, so it applies to no \
             target: add `postgres: {}` for databases and/or `ssh: {}` for hosts",
        );
    }

    if raw.targets.value.is_empty() {
        problems.at(
            raw.targets.referenced,
            "targets must list at least one target name or glob",
        );
    }
    let targets = checked_list(Some(&raw.targets.value), problems, |t| target_glob(t));

    let roles = match &raw.postgres {
        None => Vec::new(),
        Some(pg) => {
            let mut roles: Vec<String> = Vec::new();
            for role in pg.roles.as_deref().unwrap_or_default() {
                let role_name = problems.check(role, |r| {
                    yaml::plain_text("postgres role", r, NAME_MAX)?;
                    if roles.contains(r) {
                        return Err(format!("role `{}` is listed twice", yaml::printable(r)));
                    }
                    Ok(r.clone())
                });
                roles.extend(role_name);
            }
            // Each gateway connection gets a role of its own, created with CONNECTION LIMIT
            // 1: more could only ever serve logins made outside the gateway.
            if let Some(limit) = &pg.connection_limit {
                problems.at(
                    limit.referenced,
                    "connection_limit is no longer accepted: every gateway connection gets a \
                     role of its own, limited to that one connection; remove the line",
                );
            }
            roles
        }
    };

    let ssh = match &raw.ssh {
        None => Some(SshGrant::defaults()),
        Some(ssh) => validate_ssh(ssh, problems),
    };

    let max_session = match &raw.max_session {
        None => Some(DEFAULT_MAX_SESSION),
        Some(text) => problems.check(text, |t| {
            yaml::duration_in("max_session", t, MAX_SESSION_MIN, MAX_SESSION_MAX)
        }),
    };

    let idle_timeout = match &raw.idle_timeout {
        None => Some(None),
        Some(text) => problems.check(text, |t| {
            yaml::duration_in("idle_timeout", t, IDLE_TIMEOUT_MIN, MAX_SESSION_MAX).map(Some)
        }),
    };

    if problems.len() != before {
        return None;
    }
    Some(GrantRule {
        name: name?,
        description: raw.description.clone(),
        origin,
        users,
        groups,
        spiffe,
        workloads,
        targets,
        postgres_section: raw.postgres.is_some(),
        ssh_section: raw.ssh.is_some(),
        forwards_listed: raw
            .ssh
            .as_ref()
            .is_some_and(|ssh| ssh.port_forwards.is_some()),
        pg_roles: roles,
        pg_set_role: raw
            .postgres
            .as_ref()
            .and_then(|pg| pg.set_role)
            .unwrap_or(false),
        pg_redact_parameters: raw
            .postgres
            .as_ref()
            .and_then(|pg| pg.redact_parameters)
            .unwrap_or(false),
        max_session: max_session?,
        idle_timeout: idle_timeout?,
        require_reason: raw.require_reason.unwrap_or(false),
        ssh: ssh?,
    })
}

fn validate_ssh(raw: &RawSshGrant, problems: &mut Problems<'_>) -> Option<SshGrant> {
    let before = problems.len();
    let mut groups: Vec<String> = Vec::new();
    for group in raw.groups.as_deref().unwrap_or_default() {
        let name = problems.check(group, |g| {
            linux_group(g)?;
            if groups.contains(g) {
                return Err(format!("group `{}` is listed twice", yaml::printable(g)));
            }
            Ok(g.clone())
        });
        groups.extend(name);
    }
    let mut port_forwards: Vec<Forward> = Vec::new();
    for entry in raw.port_forwards.as_deref().unwrap_or_default() {
        let forward = problems.check(entry, |f| {
            let forward = forward(f)?;
            if port_forwards.contains(&forward) {
                return Err(format!(
                    "port forward `{}` is listed twice",
                    yaml::printable(f)
                ));
            }
            Ok(forward)
        });
        port_forwards.extend(forward);
    }
    let home = match &raw.home {
        None => Some(HomeMode::Persistent),
        Some(home) => problems.check(home, |h| match h.as_str() {
            "persistent" => Ok(HomeMode::Persistent),
            "ephemeral" => Ok(HomeMode::Ephemeral),
            _ => Err(format!(
                "home must be persistent or ephemeral (got `{}`)",
                yaml::printable(h)
            )),
        }),
    };
    if problems.len() != before {
        return None;
    }
    Some(SshGrant {
        groups,
        sudo: raw.sudo.unwrap_or(false),
        port_forwards,
        sftp: raw.sftp.unwrap_or(true),
        home: home?,
        record_exec_output: raw.record_exec_output.unwrap_or(false),
    })
}

/// `[a-z_][a-z0-9_-]*`, at most 32 characters: a group name every `groupadd` accepts.
fn linux_group(text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if first_ok && rest_ok && text.len() <= LINUX_GROUP_MAX {
        Ok(())
    } else {
        Err(format!(
            "group `{}` must be a Linux group name ([a-z_][a-z0-9_-]*, at most \
             {LINUX_GROUP_MAX} characters)",
            yaml::printable(text)
        ))
    }
}

/// `host:port` or `[ipv6]:port`, port 1 to 65535.
fn forward(text: &str) -> Result<Forward, String> {
    let bad = |why: &str| {
        format!(
            "port forward `{}` {why}; write host:port, e.g. 127.0.0.1:5432, db.internal:443 or \
             [::1]:5432",
            yaml::printable(text)
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            if inner.is_empty()
                || !inner
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
            {
                return Err(bad("has an invalid IPv6 address"));
            }
            inner
        }
        None if host.contains(':') => return Err(bad("needs [brackets] around an IPv6 address")),
        None => {
            let ok = !host.is_empty()
                && host.len() <= FORWARD_HOST_MAX
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(bad("has an invalid host name"));
            }
            host
        }
    };
    let port = yaml::integer_in("port", port, 1, u32::from(u16::MAX))
        .ok()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| bad("needs a port from 1 to 65535"))?;
    Ok(Forward {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Checks each entry; the valid ones are returned, the others reported at their position.
fn checked_list<T>(
    entries: Option<&[Spanned<String>]>,
    problems: &mut Problems<'_>,
    check: impl Fn(&String) -> Result<T, String>,
) -> Vec<T> {
    entries
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| problems.check(entry, &check))
        .collect()
}

/// Target names are `[A-Za-z0-9_.-]`; a glob adds `*` and `?`.
fn target_glob(text: &str) -> Result<Pattern, String> {
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '?'));
    if text.is_empty() || text.len() > NAME_MAX || !ok_chars {
        return Err(format!(
            "target `{}` must be a target name or a glob of A-Z, a-z, 0-9, `_`, `.`, `-`, \
             `*`, `?` (at most {NAME_MAX} characters)",
            yaml::printable(text)
        ));
    }
    Ok(Pattern::new(text))
}

fn spiffe_glob(text: &str) -> Result<Pattern, String> {
    if !text.starts_with("spiffe://") || text.len() <= "spiffe://".len() {
        return Err(format!(
            "spiffe entry `{}` must be a SPIFFE id glob starting with spiffe://, \
             e.g. spiffe://jitgate.local/user/*",
            yaml::printable(text)
        ));
    }
    if text.len() > SPIFFE_MAX || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "spiffe entry `{}` must be at most {SPIFFE_MAX} bytes without spaces",
            yaml::printable(text)
        ));
    }
    Ok(Pattern::new(text))
}
