//! The access decision: (identity, target, requested `user=`, reason) → [`Grant`] or [`Denial`].
//!
//! Only this module can make a `Grant`, so holding one proves the policy said yes; provisioning
//! (`jit`) takes a `&Grant`. [`explain`] walks the same rules for `jitgate policy explain`.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{GrantRule, HomeMode, PolicySet, SshGrant};
use crate::identity::Identity;

/// Longest reason (in characters) copied into a grant, the audit log and the role comment.
pub const MAX_REASON_CHARS: usize = 200;

/// One connection attempt, as the front door saw it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    pub identity: &'a Identity,
    /// Target name (psql `dbname=`, without any `/database`).
    pub target: &'a str,
    /// psql `user=`: a grant name or the person's own user name.
    pub requested: &'a str,
    /// From `-c jitgate.reason=…` or `application_name=reason:…`, as given.
    pub reason: Option<&'a str>,
}

/// A positive policy decision for one connection. Not `Clone`: one decision, one lease.
#[derive(Debug)]
pub struct Grant {
    name: String,
    target: String,
    pg_roles: Vec<String>,
    pg_set_role: bool,
    max_session: Duration,
    reason: Option<String>,
    ssh: SshGrant,
}

impl Grant {
    /// The grant (policy entry) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Roles the JIT role joins (`IN ROLE`); may be empty.
    pub fn pg_roles(&self) -> &[String] {
        &self.pg_roles
    }

    /// Whether the JIT role may `SET ROLE` to the granted roles (`postgres.set_role`). Without
    /// it, on PostgreSQL 16+, membership is `INHERIT TRUE, SET FALSE`: the granted privileges
    /// work, but objects cannot be created as (and so owned by) a granted role.
    pub fn pg_set_role(&self) -> bool {
        self.pg_set_role
    }

    /// Longest the lease may live: the JIT role's `VALID UNTIL` is now + this.
    pub fn max_session(&self) -> Duration {
        self.max_session
    }

    /// The stated reason, trimmed, if one was given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Supplementary Linux groups the JIT account joins; may be empty.
    pub fn ssh_groups(&self) -> &[String] {
        &self.ssh.groups
    }

    /// Whether the JIT account may use `sudo` (to anything, without a password).
    pub fn sudo(&self) -> bool {
        self.ssh.sudo
    }

    /// Whether `ssh -L` to `host:port` (a direct-tcpip request) is allowed. Host names
    /// compare case-insensitively; `[::1]` and `::1` are the same.
    pub fn forward_allowed(&self, host: &str, port: u16) -> bool {
        self.ssh.port_forwards.iter().any(|f| f.allows(host, port))
    }

    /// Whether the sftp subsystem (and so scp, which uses it by default) is allowed.
    pub fn sftp_allowed(&self) -> bool {
        self.ssh.sftp
    }

    pub fn home(&self) -> HomeMode {
        self.ssh.home
    }
}

/// Why a connection is refused. `Display` is the message the user sees (in the FATAL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("grant {grant} does not apply to {user} for target {target}")]
    NotApplicable {
        grant: String,
        user: String,
        target: String,
    },
    #[error("no policy grants {user} access to {target}")]
    NoGrant { user: String, target: String },
    #[error(
        "{user} has several grants for {target} ({}): connect with user=<grant name>",
        grants.join(", ")
    )]
    Ambiguous {
        user: String,
        target: String,
        grants: Vec<String>,
    },
    #[error(
        "no grant named {requested:?} and it is not your user name ({user}): \
         connect with user={user} or user=<grant name>"
    )]
    UnknownName { requested: String, user: String },
    #[error(
        "grant {grant} requires a reason: connect with options='-c jitgate.reason=TICKET-123' \
         or application_name='reason:TICKET-123'"
    )]
    ReasonRequired { grant: String },
    #[error(
        "the reason given is {chars} characters long; at most {MAX_REASON_CHARS} are allowed \
         (grant {grant})"
    )]
    ReasonTooLong { grant: String, chars: usize },
    #[error("the reason given must not contain control characters (grant {grant})")]
    ReasonNotPrintable { grant: String },
}

impl Denial {
    /// SQLSTATE for the client's FATAL: all policy refusals are
    /// `invalid_authorization_specification`.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Denial::NotApplicable { .. }
            | Denial::NoGrant { .. }
            | Denial::Ambiguous { .. }
            | Denial::UnknownName { .. }
            | Denial::ReasonRequired { .. }
            | Denial::ReasonTooLong { .. }
            | Denial::ReasonNotPrintable { .. } => "28000",
        }
    }
}

/// Decides one connection. Deny by default: a grant comes only from a rule that applies.
pub fn evaluate(policies: &PolicySet, req: &AccessRequest<'_>) -> Result<Grant, Denial> {
    let identity = req.identity;
    let rule = if let Some(rule) = policies.rule(req.requested) {
        if !rule.applies(identity, req.target) {
            return Err(Denial::NotApplicable {
                grant: rule.name.clone(),
                user: identity.user.clone(),
                target: req.target.to_string(),
            });
        }
        rule
    } else if req.requested == identity.user {
        own_name_choice(policies, identity, req.target)?
    } else {
        return Err(Denial::UnknownName {
            requested: req.requested.to_string(),
            user: identity.user.clone(),
        });
    };
    let reason = checked_reason(rule, req.reason)?;
    Ok(Grant {
        name: rule.name.clone(),
        target: req.target.to_string(),
        pg_roles: rule.pg_roles.clone(),
        pg_set_role: rule.pg_set_role,
        max_session: rule.max_session,
        reason,
        ssh: rule.ssh.clone(),
    })
}

/// The rule a connection as the own user name gets: the only one that applies.
fn own_name_choice<'a>(
    policies: &'a PolicySet,
    identity: &Identity,
    target: &str,
) -> Result<&'a GrantRule, Denial> {
    let applicable: Vec<&GrantRule> = policies.applicable(identity, target).collect();
    match applicable.as_slice() {
        [] => Err(Denial::NoGrant {
            user: identity.user.clone(),
            target: target.to_string(),
        }),
        [only] => Ok(only),
        several => Err(Denial::Ambiguous {
            user: identity.user.clone(),
            target: target.to_string(),
            grants: several.iter().map(|rule| rule.name.clone()).collect(),
        }),
    }
}

fn checked_reason(rule: &GrantRule, reason: Option<&str>) -> Result<Option<String>, Denial> {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        None if rule.require_reason => Err(Denial::ReasonRequired {
            grant: rule.name.clone(),
        }),
        None => Ok(None),
        Some(reason) => {
            let chars = reason.chars().count();
            if chars > MAX_REASON_CHARS {
                Err(Denial::ReasonTooLong {
                    grant: rule.name.clone(),
                    chars,
                })
            } else if reason.chars().any(char::is_control) {
                // It goes into the audit log and a role COMMENT: keep it one printable line.
                Err(Denial::ReasonNotPrintable {
                    grant: rule.name.clone(),
                })
            } else {
                Ok(Some(reason.to_string()))
            }
        }
    }
}

/// A human report for `jitgate policy explain --user U --group G --target T`: for every grant,
/// whether its subjects and targets match (and by which entry), then the verdict for a
/// connection as `user=U`. SPIFFE entries are not checked (no SPIFFE id is given here); use
/// [`explain_identity`] for a full identity.
pub fn explain(policies: &PolicySet, user: &str, groups: &[String], target: &str) -> String {
    let identity = Identity {
        user: user.to_string(),
        groups: groups.to_vec(),
        spiffe_id: None,
        serial: String::new(),
    };
    explain_identity(policies, &identity, target)
}

/// [`explain`] for a complete identity (SPIFFE id included).
pub fn explain_identity(policies: &PolicySet, identity: &Identity, target: &str) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, policies, identity, target);
    out
}

fn write_report(
    out: &mut String,
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
) -> std::fmt::Result {
    let groups = list_or_none(&identity.groups);
    let spiffe_id = identity.spiffe_id.as_deref().unwrap_or("none");
    writeln!(
        out,
        "user {}, groups {groups}, SPIFFE id {spiffe_id}, target {target}",
        identity.user
    )?;
    writeln!(out, "{} grant(s) loaded", policies.len())?;
    for rule in &policies.rules {
        writeln!(out)?;
        writeln!(out, "grant {} ({})", rule.name, rule.origin)?;
        if let Some(description) = &rule.description {
            // One line, whatever the YAML scalar style.
            let words: Vec<&str> = description.split_whitespace().collect();
            writeln!(out, "  {}", words.join(" "))?;
        }
        let subject = rule.subject_match(identity);
        match subject {
            Some(matched) => writeln!(out, "  subjects: match ({matched})")?,
            None => {
                let spiffe: Vec<String> = rule.spiffe.iter().map(|p| p.text.clone()).collect();
                let spiffe_note = if identity.spiffe_id.is_none() && !spiffe.is_empty() {
                    " (not checked: no SPIFFE id)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "  subjects: no match (users {}; groups {}; spiffe {}{spiffe_note})",
                    list_or_none(&rule.users),
                    list_or_none(&rule.groups),
                    list_or_none(&spiffe),
                )?;
            }
        }
        let target_glob = rule.target_match(target);
        match target_glob {
            Some(glob) => writeln!(out, "  targets:  match ({glob})")?,
            None => {
                let globs: Vec<String> = rule.targets.iter().map(|p| p.text.clone()).collect();
                writeln!(out, "  targets:  no match ({})", globs.join(", "))?;
            }
        }
        if subject.is_some() && target_glob.is_some() {
            writeln!(
                out,
                "  => applies: postgres roles {}{}; max session {}{}",
                list_or_none(&rule.pg_roles),
                if rule.pg_set_role {
                    " (SET ROLE allowed)"
                } else {
                    ""
                },
                humantime::format_duration(rule.max_session),
                if rule.require_reason {
                    "; a reason is required"
                } else {
                    ""
                }
            )?;
            let forwards: Vec<String> = rule
                .ssh
                .port_forwards
                .iter()
                .map(|f| f.to_string())
                .collect();
            writeln!(
                out,
                "     ssh: groups {}; sudo {}; port forwards {}; sftp {}; home {}",
                list_or_none(&rule.ssh.groups),
                yes_no(rule.ssh.sudo),
                list_or_none(&forwards),
                yes_no(rule.ssh.sftp),
                rule.ssh.home,
            )?;
        } else {
            writeln!(out, "  => does not apply")?;
        }
    }
    writeln!(out)?;
    match own_name_choice(policies, identity, target) {
        Ok(rule) => writeln!(
            out,
            "verdict: user={} gets grant {}{}",
            identity.user,
            rule.name,
            if rule.require_reason {
                " (a reason is required: options='-c jitgate.reason=...' or \
                 application_name='reason:...')"
            } else {
                ""
            }
        ),
        Err(denial) => writeln!(out, "verdict: user={} is denied: {denial}", identity.user),
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
