//! The validated policy: a [`PolicySet`] of grant rules, as `load` builds it and `eval` reads it.
//!
//! Nothing here decides access; it only answers "does this rule's subject / target match?".

use std::fmt;
use std::time::Duration;

use wildmatch::WildMatch;

use crate::identity::Identity;

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

    pub(super) fn rule(&self, name: &str) -> Option<&GrantRule> {
        self.rules.iter().find(|rule| rule.name == name)
    }

    /// Rules that apply to `identity` for `target`, in load order.
    pub(super) fn applicable<'a, 'b>(
        &'a self,
        identity: &'b Identity,
        target: &'b str,
    ) -> impl Iterator<Item = &'a GrantRule> + use<'a, 'b> {
        self.rules
            .iter()
            .filter(move |rule| rule.applies(identity, target))
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
    pub(super) targets: Vec<Pattern>,
    pub(super) pg_roles: Vec<String>,
    pub(super) connection_limit: u32,
    pub(super) max_session: Duration,
    pub(super) require_reason: bool,
}

impl GrantRule {
    /// The first subject entry that matches, if any (users, then groups, then SPIFFE globs).
    pub(super) fn subject_match<'a>(&'a self, identity: &Identity) -> Option<SubjectMatch<'a>> {
        if let Some(user) = self.users.iter().find(|u| **u == identity.user) {
            return Some(SubjectMatch::User(user));
        }
        if let Some(group) = self.groups.iter().find(|g| identity.groups.contains(g)) {
            return Some(SubjectMatch::Group(group));
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

    pub(super) fn applies(&self, identity: &Identity, target: &str) -> bool {
        self.subject_match(identity).is_some() && self.target_match(target).is_some()
    }
}

/// Why a rule's subjects matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubjectMatch<'a> {
    User(&'a str),
    Group(&'a str),
    Spiffe(&'a str),
}

impl fmt::Display for SubjectMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectMatch::User(u) => write!(f, "user {u}"),
            SubjectMatch::Group(g) => write!(f, "group {g}"),
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
