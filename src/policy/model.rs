//! The validated policy: a [`PolicySet`] of grant rules, as `load` builds it and `eval` reads it.
//!
//! Nothing here decides access; it only answers "does this rule's subject / target match?".

use std::fmt;
use std::time::Duration;

use wildmatch::WildMatch;

use crate::identity::{Identity, SubjectKind};

/// What a target is, as far as a grant is concerned: a grant applies only to the kinds whose
/// section (`postgres:`, `ssh:`) it has, so a grant written for databases never opens a shell
/// on a host its `targets:` glob happens to match, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    Postgres,
    Ssh,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Postgres => "postgres",
            TargetKind::Ssh => "ssh",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All grant rules from a policy directory, in load order (files by name, then as written).
/// An empty set denies everything.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub(super) rules: Vec<GrantRule>,
}

impl PolicySet {
    /// Number of grant rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Grant names in load order (for `jitgate policy check`).
    pub fn grant_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }

    /// Warnings for `jitgate policy check`: valid grants whose options promise more than they
    /// hold (one `file:line:col: grant …: …` line each).
    pub fn warnings(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|rule| rule.restricts_in_protocol_only())
            .map(|rule| {
                format!(
                    "{}: grant {}: {}",
                    rule.origin,
                    rule.name,
                    super::eval::SHELL_BYPASS_NOTE
                )
            })
            .collect()
    }

    /// Every grant rule, read-only, in load order (for `jitgate doctor`, which checks what
    /// each asks of the targets it names).
    pub fn grants(&self) -> impl Iterator<Item = GrantInfo<'_>> {
        self.rules.iter().map(GrantInfo)
    }

    pub(super) fn rule(&self, name: &str) -> Option<&GrantRule> {
        self.rules.iter().find(|rule| rule.name == name)
    }

    /// Rules that apply to `identity` for `target` of `kind`, in load order.
    pub(super) fn applicable<'a, 'b>(
        &'a self,
        identity: &'b Identity,
        target: &'b str,
        kind: TargetKind,
    ) -> impl Iterator<Item = &'a GrantRule> + use<'a, 'b> {
        self.rules
            .iter()
            .filter(move |rule| rule.applies(identity, target, kind))
    }
}

/// What one grant asks of the targets it names, for `jitgate doctor`. Reading it decides
/// nothing: only `policy::evaluate` makes a `Grant`.
#[derive(Debug, Clone, Copy)]
pub struct GrantInfo<'a>(&'a GrantRule);

impl<'a> GrantInfo<'a> {
    pub fn name(&self) -> &'a str {
        &self.0.name
    }

    /// `file:line:col` of its name.
    pub fn origin(&self) -> &'a str {
        &self.0.origin
    }

    /// Its `targets:` entries (names or globs), as written.
    pub fn target_globs(&self) -> impl Iterator<Item = &'a str> {
        self.0.targets.iter().map(|p| p.text.as_str())
    }

    /// Whether `glob` (one of [`Self::target_globs`]) matches `target`.
    pub fn glob_matches(glob: &str, target: &str) -> bool {
        Pattern::new(glob).matches(target)
    }

    /// Whether the grant has the section for targets of `kind`.
    pub fn serves(&self, kind: TargetKind) -> bool {
        self.0.serves(kind)
    }

    /// Whether the grant applies to `target` of `kind` (for some subject).
    pub fn names_target(&self, target: &str, kind: TargetKind) -> bool {
        self.0.serves(kind) && self.0.target_match(target).is_some()
    }

    pub fn pg_roles(&self) -> &'a [String] {
        &self.0.pg_roles
    }

    pub fn ssh_groups(&self) -> &'a [String] {
        &self.0.ssh.groups
    }

    pub fn sudo(&self) -> bool {
        self.0.ssh.sudo
    }
}

/// One `grants:` entry, validated.
#[derive(Debug, Clone)]
pub(super) struct GrantRule {
    pub(super) name: String,
    pub(super) description: Option<String>,
    /// `file:line:col` of its name, for `explain` and duplicate reports.
    pub(super) origin: String,
    pub(super) users: Vec<String>,
    pub(super) groups: Vec<String>,
    pub(super) spiffe: Vec<Pattern>,
    /// Workload names (`spiffe://<td>/workload/<name>`).
    pub(super) workloads: Vec<String>,
    pub(super) targets: Vec<Pattern>,
    /// Whether the grant has a `postgres:` section (applies to Postgres targets).
    pub(super) postgres_section: bool,
    /// Whether the grant has an `ssh:` section (applies to SSH targets).
    pub(super) ssh_section: bool,
    /// Whether `ssh.port_forwards` was written (even empty): the author meant to restrict.
    pub(super) forwards_listed: bool,
    pub(super) pg_roles: Vec<String>,
    /// The JIT role may `SET ROLE` to the granted roles (PostgreSQL 16+; 15 always allows it).
    pub(super) pg_set_role: bool,
    /// Bind parameters are audited as type and length only (`postgres.redact_parameters`).
    pub(super) pg_redact_parameters: bool,
    pub(super) max_session: Duration,
    /// No byte either way for this long ends the session (`idle_timeout`; none by default).
    pub(super) idle_timeout: Option<Duration>,
    pub(super) require_reason: bool,
    pub(super) ssh: SshGrant,
}

/// What a JIT Linux account gets (the grant's `ssh:` section; defaults when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SshGrant {
    /// Supplementary Linux groups, validated names.
    pub(super) groups: Vec<String>,
    pub(super) sudo: bool,
    /// Allowed `ssh -L` (direct-tcpip) destinations.
    pub(super) port_forwards: Vec<Forward>,
    pub(super) sftp: bool,
    pub(super) home: HomeMode,
    /// Exec channels' output is recorded too, not only their command and exit.
    pub(super) record_exec_output: bool,
}

impl SshGrant {
    pub(super) fn defaults() -> Self {
        SshGrant {
            groups: Vec::new(),
            sudo: false,
            port_forwards: Vec::new(),
            sftp: true,
            home: HomeMode::Persistent,
            record_exec_output: false,
        }
    }
}

/// One allowed forward destination. The host is kept lowercase and without IPv6 brackets,
/// as it arrives in a direct-tcpip request (RFC 4254 section 7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Forward {
    pub(super) host: String,
    pub(super) port: u16,
}

impl Forward {
    pub(super) fn allows(&self, host: &str, port: u16) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a JIT Linux account's home is (policy `ssh.home`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HomeMode {
    /// The person's own directory on the target, lent to each connection's account and locked
    /// away (root-owned, 0700) between connections: files outlive the account.
    #[default]
    Persistent,
    /// A fresh directory removed with the account.
    Ephemeral,
}

impl HomeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HomeMode::Persistent => "persistent",
            HomeMode::Ephemeral => "ephemeral",
        }
    }
}

impl fmt::Display for HomeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GrantRule {
    /// The first subject entry that matches, if any: users, then groups for a person,
    /// workloads for a workload, then SPIFFE globs for either. A workload never matches a
    /// `users:` or `groups:` entry, whatever its name or OUs: machines are granted by name.
    pub(super) fn subject_match<'a>(&'a self, identity: &Identity) -> Option<SubjectMatch<'a>> {
        match identity.kind {
            SubjectKind::Person => {
                if let Some(user) = self.users.iter().find(|u| **u == identity.user) {
                    return Some(SubjectMatch::User(user));
                }
                if let Some(group) = self.groups.iter().find(|g| identity.groups.contains(g)) {
                    return Some(SubjectMatch::Group(group));
                }
            }
            SubjectKind::Workload => {
                if let Some(name) = self.workloads.iter().find(|w| **w == identity.user) {
                    return Some(SubjectMatch::Workload(name));
                }
            }
        }
        let spiffe_id = identity.spiffe_id.as_deref()?;
        self.spiffe
            .iter()
            .find(|p| p.matches(spiffe_id))
            .map(|p| SubjectMatch::Spiffe(&p.text))
    }

    /// The first target glob that matches `target`, if any.
    pub(super) fn target_match(&self, target: &str) -> Option<&Pattern> {
        self.targets.iter().find(|p| p.matches(target))
    }

    /// Whether the grant has the section for targets of `kind`.
    pub(super) fn serves(&self, kind: TargetKind) -> bool {
        match kind {
            TargetKind::Postgres => self.postgres_section,
            TargetKind::Ssh => self.ssh_section,
        }
    }

    /// Whether the grant sets `sftp: false` or lists `port_forwards`: options that only bind
    /// clients asking for the sftp subsystem or a direct-tcpip channel, not a shell.
    pub(super) fn restricts_in_protocol_only(&self) -> bool {
        self.ssh_section && (!self.ssh.sftp || self.forwards_listed)
    }

    pub(super) fn applies(&self, identity: &Identity, target: &str, kind: TargetKind) -> bool {
        self.serves(kind)
            && self.subject_match(identity).is_some()
            && self.target_match(target).is_some()
    }
}

/// Why a rule's subjects matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubjectMatch<'a> {
    User(&'a str),
    Group(&'a str),
    Workload(&'a str),
    Spiffe(&'a str),
}

impl fmt::Display for SubjectMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectMatch::User(u) => write!(f, "user {u}"),
            SubjectMatch::Group(g) => write!(f, "group {g}"),
            SubjectMatch::Workload(w) => write!(f, "workload {w}"),
            SubjectMatch::Spiffe(p) => write!(f, "spiffe {p}"),
        }
    }
}

/// A `*`/`?` glob (wildmatch): `*` matches any run of characters, `/` included.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub(super) text: String,
    matcher: WildMatch,
}

impl Pattern {
    pub(super) fn new(text: &str) -> Self {
        Pattern {
            text: text.to_string(),
            matcher: WildMatch::new(text),
        }
    }

    pub(super) fn matches(&self, candidate: &str) -> bool {
        self.matcher.matches(candidate)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
