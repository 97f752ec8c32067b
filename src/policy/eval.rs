//! The access decision: (identity, target, requested `user=`, reason) → [`Grant`] or [`Denial`].
//!
//! Only this module can make a `Grant`, so holding one proves the policy said yes; provisioning
//! (`jit`) takes a `&Grant`. [`explain`] walks the same rules for `jitgate policy explain`.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{GrantRule, HomeMode, PolicySet, SshGrant, TargetKind};
use crate::identity::Identity;
use crate::logsafe::untrusted;

/// Longest reason (in characters) copied into a grant, the audit log and the role comment.
pub const MAX_REASON_CHARS: usize = 200;

/// One connection attempt, as the front door saw it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    pub identity: &'a Identity,
    /// Target name (psql `dbname=`, without any `/database`; the TLS SNI for SSH).
    pub target: &'a str,
    /// What the target is (its `targets:` entry in the config): only grants with that
    /// kind's section apply.
    pub kind: TargetKind,
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
    pg_redact_parameters: bool,
    max_session: Duration,
    idle_timeout: Option<Duration>,
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

    /// The grant's `idle_timeout`: a session with no byte either way this long ends.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
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

    /// Whether bind parameters are audited as type and length only
    /// (`postgres.redact_parameters`).
    pub fn redact_parameters(&self) -> bool {
        self.pg_redact_parameters
    }

    /// Whether exec channels' output is recorded (`ssh.record_exec_output`).
    pub fn record_exec_output(&self) -> bool {
        self.ssh.record_exec_output
    }
}

/// Why a connection is refused. `Display` is the message the user sees (in the FATAL or the
/// SSH refusal): it never tells a stranger more than they asked about. Whether a target
/// exists, whether a grant of the requested name exists, and why it does not apply are all
/// the same [`Denial::NoAccess`] to them; [`Denial::detail`] is the operator's version, for
/// the log. Refusals that name a grant (`Ambiguous`, `Reason*`) only come once that grant
/// applies to the person, so they tell them nothing about anyone else's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "no grant gives {user} access to target {}{}",
        untrusted(target),
        requested.as_deref().map(|r| format!(" as {}", untrusted(r))).unwrap_or_default()
    )]
    NoAccess {
        /// How the identity is named (`alice`, `workload report`).
        user: String,
        target: String,
        /// The grant name asked for, when it is not the person's own name.
        requested: Option<String>,
        /// For the operator's log only.
        detail: String,
    },
    #[error(
        "{user} has several grants for {} ({}): connect with user=<grant name>",
        untrusted(target),
        grants.join(", ")
    )]
    Ambiguous {
        user: String,
        target: String,
        grants: Vec<String>,
    },
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
    /// The refusal for a target name the gateway does not have (of the listener's kind):
    /// to the user, word for word the refusal for a target that exists but is not theirs.
    pub fn no_such_target(identity: &Identity, target: &str, requested: Option<&str>) -> Denial {
        no_access(
            identity,
            target,
            requested,
            "no target of that name is configured for this listener".to_string(),
        )
    }

    /// SQLSTATE for the client's FATAL: all policy refusals are
    /// `invalid_authorization_specification`.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Denial::NoAccess { .. }
            | Denial::Ambiguous { .. }
            | Denial::ReasonRequired { .. }
            | Denial::ReasonTooLong { .. }
            | Denial::ReasonNotPrintable { .. } => "28000",
        }
    }

    /// What the operator's log gets: the user's message, plus why for a `NoAccess`.
    pub fn detail(&self) -> String {
        match self {
            Denial::NoAccess { detail, .. } => format!("{self} ({detail})"),
            Denial::Ambiguous { .. }
            | Denial::ReasonRequired { .. }
            | Denial::ReasonTooLong { .. }
            | Denial::ReasonNotPrintable { .. } => self.to_string(),
        }
    }
}

/// A [`Denial::NoAccess`]; `requested` is left out when it is the identity's own name.
pub fn no_access(
    identity: &Identity,
    target: &str,
    requested: Option<&str>,
    detail: String,
) -> Denial {
    Denial::NoAccess {
        user: identity.describe(),
        target: target.to_string(),
        requested: requested
            .filter(|r| *r != identity.user)
            .map(str::to_string),
        detail,
    }
}

/// Decides one connection. Deny by default: a grant comes only from a rule that applies.
pub fn evaluate(policies: &PolicySet, req: &AccessRequest<'_>) -> Result<Grant, Denial> {
    let identity = req.identity;
    let rule = if let Some(rule) = policies.rule(req.requested) {
        if !rule.applies(identity, req.target, req.kind) {
            let why = not_applicable_because(rule, identity, req.target, req.kind);
            return Err(no_access(
                identity,
                req.target,
                Some(req.requested),
                format!("grant {} exists but {why}", rule.name),
            ));
        }
        rule
    } else if req.requested == identity.user {
        own_name_choice(policies, identity, req.target, req.kind)?
    } else {
        return Err(no_access(
            identity,
            req.target,
            Some(req.requested),
            "no grant of that name exists, and it is not the user's own name".to_string(),
        ));
    };
    let reason = checked_reason(rule, req.reason)?;
    Ok(Grant {
        name: rule.name.clone(),
        target: req.target.to_string(),
        pg_roles: rule.pg_roles.clone(),
        pg_set_role: rule.pg_set_role,
        pg_redact_parameters: rule.pg_redact_parameters,
        max_session: rule.max_session,
        idle_timeout: rule.idle_timeout,
        reason,
        ssh: rule.ssh.clone(),
    })
}

/// Every reason a rule does not apply, for the operator's log.
fn not_applicable_because(
    rule: &GrantRule,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
) -> String {
    let mut why = Vec::new();
    if !rule.serves(kind) {
        why.push(format!("it has no {kind}: section"));
    }
    if rule.subject_match(identity).is_none() {
        why.push("its subjects do not match".to_string());
    }
    if rule.target_match(target).is_none() {
        why.push("its targets do not match".to_string());
    }
    why.join(" and ")
}

/// The names of the grants that apply to `identity` for `target` (of `kind`), in load order.
pub fn applicable_grants(
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
) -> Vec<String> {
    policies
        .applicable(identity, target, kind)
        .map(|rule| rule.name.clone())
        .collect()
}

/// What a refused person may use instead: each grant that applies to them, with the
/// configured targets (of the listener's kind) it applies on. Built from the gateway's own
/// target list, so it names only targets this person could connect to anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    kind: TargetKind,
    grants: Vec<(String, Vec<String>)>,
}

/// The [`Offer`] for `identity` among `targets` (configured names of `kind`).
pub fn offer<'t>(
    policies: &PolicySet,
    identity: &Identity,
    kind: TargetKind,
    targets: impl IntoIterator<Item = &'t str>,
) -> Offer {
    let mut targets: Vec<&str> = targets.into_iter().collect();
    targets.sort_unstable();
    let grants = policies
        .rules
        .iter()
        .filter_map(|rule| {
            let on: Vec<String> = targets
                .iter()
                .filter(|t| rule.applies(identity, t, kind))
                .map(|t| t.to_string())
                .collect();
            (!on.is_empty()).then(|| (rule.name.clone(), on))
        })
        .collect();
    Offer { kind, grants }
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.grants.is_empty() {
            return write!(f, "you have no grant for any {} target here", self.kind);
        }
        f.write_str("grants you can use: ")?;
        for (i, (grant, targets)) in self.grants.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{grant} on {}", targets.join(", "))?;
        }
        Ok(())
    }
}

/// The rule a connection as the own user name gets: the only one that applies.
fn own_name_choice<'a>(
    policies: &'a PolicySet,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
) -> Result<&'a GrantRule, Denial> {
    let applicable: Vec<&GrantRule> = policies.applicable(identity, target, kind).collect();
    match applicable.as_slice() {
        [] => Err(no_access(
            identity,
            target,
            None,
            "no grant applies to them for this target".to_string(),
        )),
        [only] => Ok(only),
        several => Err(Denial::Ambiguous {
            user: identity.describe(),
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

/// A human report for `jitgate policy explain --user U --group G --target T --kind K`: for
/// every grant, whether it has the section for the target's kind, whether its subjects and
/// targets match (and by which entry), then the verdict for a connection as `user=U`. SPIFFE
/// entries are not checked (no SPIFFE id is given here); use [`explain_identity`] for a full
/// identity.
pub fn explain(
    policies: &PolicySet,
    user: &str,
    groups: &[String],
    target: &str,
    kind: TargetKind,
) -> String {
    explain_identity(policies, &Identity::person(user, groups), target, kind)
}

/// [`explain`] for a complete identity (SPIFFE id and kind included).
pub fn explain_identity(
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(&mut out, policies, identity, target, kind);
    out
}

/// What `sftp: false` and `port_forwards` really hold against, said wherever they are shown.
pub const SHELL_BYPASS_NOTE: &str = "sftp: false and port_forwards hold only against clients \
     that ask for them (the sftp subsystem and scp, ssh -L): a shell or exec on the target can \
     still move files (sftp -s /usr/lib/openssh/sftp-server, rsync -e ssh, cat) and reach other \
     hosts (nc, socat, curl), so they are not a boundary against the account's own commands";

fn write_report(
    out: &mut String,
    policies: &PolicySet,
    identity: &Identity,
    target: &str,
    kind: TargetKind,
) -> std::fmt::Result {
    let groups = list_or_none(&identity.groups);
    let spiffe_id = identity.spiffe_id.as_deref().unwrap_or("none");
    writeln!(
        out,
        "{} {}, groups {groups}, SPIFFE id {spiffe_id}, target {target} ({kind})",
        identity.kind, identity.user
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
        let serves = rule.serves(kind);
        if serves {
            writeln!(out, "  kind:     match ({kind}: section)")?;
        } else {
            writeln!(
                out,
                "  kind:     skipped: no {kind}: section, so it never applies to {kind} targets"
            )?;
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
                    "  subjects: no match (users {}; groups {}; workloads {}; spiffe {}{spiffe_note})",
                    list_or_none(&rule.users),
                    list_or_none(&rule.groups),
                    list_or_none(&rule.workloads),
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
        if serves && subject.is_some() && target_glob.is_some() {
            writeln!(
                out,
                "  => applies: max session {}{}",
                humantime::format_duration(rule.max_session),
                if rule.require_reason {
                    "; a reason is required"
                } else {
                    ""
                }
            )?;
            match kind {
                TargetKind::Postgres => writeln!(
                    out,
                    "     postgres: roles {}{}",
                    list_or_none(&rule.pg_roles),
                    if rule.pg_set_role {
                        " (SET ROLE allowed)"
                    } else {
                        ""
                    },
                )?,
                TargetKind::Ssh => {
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
                }
            }
        } else {
            writeln!(out, "  => does not apply")?;
        }
        if rule.ssh_section && kind == TargetKind::Ssh && rule.restricts_in_protocol_only() {
            writeln!(out, "     note: {SHELL_BYPASS_NOTE}")?;
        }
    }
    writeln!(out)?;
    match own_name_choice(policies, identity, target, kind) {
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
        Err(denial) => writeln!(
            out,
            "verdict: user={} is denied: {}",
            identity.user,
            denial.detail()
        ),
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
