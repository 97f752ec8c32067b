//! `jitgate doctor`: is each target ready for jitgate, and if not, what exactly fixes it.
//!
//! Sits beside the data path, not in it: it connects to every target with the configured admin
//! credential, checks what `jit` will need there (one [`Check`] per line: ✓ or ✗ with the
//! command or SQL that fixes it), and in [`Mode::Full`] proves it with a dry-run mint, login and
//! drop of a throwaway account. `jitgate serve` runs the read-only checks at start, in the
//! background, and logs each ✗ as a warning ([`warn_at_start`]).

mod policy;
mod postgres;
mod ssh;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::config::{Config, Target};
use crate::policy::{PolicySet, TargetKind};

pub use postgres::fix_for_mint_error;

/// The identity, grant name and role/account stem of every dry run: `jit_jitgate_doctor_…`
/// roles and `jit-jitgate_doctor-…` accounts are the doctor's.
pub const PROBE_NAME: &str = "jitgate-doctor";

/// How much a run does on the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every check, and a dry-run mint + login + drop on each target (`jitgate doctor`).
    Full,
    /// Only checks that change nothing on a target (`jitgate serve` at start: creating an
    /// account on every host at every restart would be a surprise in their logs, and would
    /// race whatever counts JIT accounts right after a start).
    ReadOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("the config has no target {0}")]
    NoSuchTarget(String),
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    /// What was checked, and for a ✗ what was found.
    pub what: String,
    /// For a ✗: the command or SQL that fixes it, when there is one.
    pub fix: Option<String>,
}

/// The checks of one target (or of the policies), in the order they ran.
#[derive(Debug, Clone)]
pub struct Section {
    /// The target's name, or `policies`.
    pub subject: String,
    pub title: String,
    pub checks: Vec<Check>,
    /// Why the remaining checks did not run (they need what just failed).
    pub skipped: Option<String>,
}

impl Section {
    fn new(subject: &str, title: String) -> Self {
        Section {
            subject: subject.to_string(),
            title,
            checks: Vec::new(),
            skipped: None,
        }
    }

    fn pass(&mut self, what: impl Into<String>) {
        self.checks.push(Check {
            ok: true,
            what: what.into(),
            fix: None,
        });
    }

    fn fail(&mut self, what: impl Into<String>, fix: Option<String>) {
        self.checks.push(Check {
            ok: false,
            what: what.into(),
            fix,
        });
    }

    fn skip(mut self, why: &str) -> Self {
        self.skipped = Some(why.to_string());
        self
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sections: Vec<Section>,
}

impl Report {
    /// How many checks failed.
    pub fn failures(&self) -> usize {
        self.sections.iter().map(|s| s.failures().count()).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, section) in self.sections.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{}", section.title)?;
            for check in &section.checks {
                let mark = if check.ok { '✓' } else { '✗' };
                writeln!(f, "  {mark} {}", check.what)?;
                if let Some(fix) = &check.fix {
                    writeln!(f, "      fix: {fix}")?;
                }
            }
            if let Some(why) = &section.skipped {
                writeln!(f, "  - not checked further: {why}")?;
            }
        }
        let failed = self.failures();
        if failed == 0 {
            writeln!(f, "\nall checks passed")
        } else {
            writeln!(
                f,
                "\n{failed} check{} failed",
                if failed == 1 { "" } else { "s" }
            )
        }
    }
}

/// What the grants that name one target ask of it: each role or group with the grants that
/// name it, and whether any grant gives sudo.
#[derive(Debug, Clone, Default)]
struct Needs {
    /// Postgres role or Linux group → the grants naming it.
    names: BTreeMap<String, Vec<String>>,
    sudo: bool,
}

impl Needs {
    fn of(policies: &PolicySet, target: &str, kind: TargetKind) -> Needs {
        let mut needs = Needs::default();
        for grant in policies.grants() {
            if !grant.names_target(target, kind) {
                continue;
            }
            let names = match kind {
                TargetKind::Postgres => grant.pg_roles(),
                TargetKind::Ssh => grant.ssh_groups(),
            };
            for name in names {
                needs
                    .names
                    .entry(name.clone())
                    .or_default()
                    .push(grant.name().to_string());
            }
            needs.sudo |= kind == TargetKind::Ssh && grant.sudo();
        }
        needs
    }
}

/// The instance id the dry runs mark their accounts with: not the gateway's own, so a running
/// gateway's reaper never takes a dry run's account as one of its dead sessions; once expired
/// (a minute), any gateway's reaper removes one a crashed doctor left.
fn probe_instance(config: &Config) -> String {
    format!("{}-doctor", config.instance_id)
}

/// Runs the checks on every target (or on `only`), plus the policy checks when no target is
/// named. Targets are checked side by side; the report lists them in name order.
pub async fn run(
    config: &Config,
    policies: Result<Arc<PolicySet>, String>,
    only: Option<&str>,
    mode: Mode,
) -> Result<Report, DoctorError> {
    if let Some(name) = only {
        if config.target(name).is_none() {
            return Err(DoctorError::NoSuchTarget(name.to_string()));
        }
    }
    let mut report = Report::default();
    let policies = match policies {
        Ok(set) => {
            if only.is_none() {
                report.sections.push(policy::check(config, &set));
            }
            set
        }
        Err(e) => {
            let mut section = Section::new(
                "policies",
                format!("policies ({})", config.policy_dir.display()),
            );
            section.fail(
                format!("policies load: {e}"),
                Some(format!(
                    "jitgate policy check {}",
                    config.policy_dir.display()
                )),
            );
            report.sections.push(section);
            Arc::new(PolicySet::default())
        }
    };
    let instance = probe_instance(config);
    let mut tasks = Vec::new();
    for (name, target) in &config.targets {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let target = target.clone();
        let instance = instance.clone();
        let config_path = config.path.clone();
        let policies = policies.clone();
        let task = tokio::spawn(async move {
            match &target {
                Target::Postgres(t) => {
                    let needs = Needs::of(&policies, &t.name, TargetKind::Postgres);
                    postgres::check(t, &needs, &instance, &config_path, mode).await
                }
                Target::Ssh(t) => {
                    let needs = Needs::of(&policies, &t.name, TargetKind::Ssh);
                    ssh::check(t, &needs, &instance, &config_path, mode).await
                }
            }
        });
        tasks.push((name.clone(), task));
    }
    for (name, task) in tasks {
        let section = task.await.unwrap_or_else(|e| {
            let mut section = Section::new(&name, format!("target {name}"));
            section.fail(format!("the checks themselves failed: {e}"), None);
            section
        });
        report.sections.push(section);
    }
    Ok(report)
}

/// `jitgate serve`'s start-up check: the read-only checks, each ✗ logged as a warning (with
/// its fix). The gateway serves meanwhile: one broken target must not keep the others down.
pub async fn warn_at_start(config: Config, policies: Arc<PolicySet>) {
    let report = match run(&config, Ok(policies), None, Mode::ReadOnly).await {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "doctor: start-up checks did not run");
            return;
        }
    };
    for section in &report.sections {
        for check in section.failures() {
            tracing::warn!(
                target_name = %section.subject,
                check = %check.what,
                fix = check.fix.as_deref().map(tracing::field::display),
                "doctor: a target is not ready; `jitgate doctor` shows every check"
            );
        }
    }
    let failed = report.failures();
    if failed == 0 {
        tracing::info!(
            targets = config.targets.len(),
            "doctor: every target passed the start-up checks"
        );
    } else {
        tracing::warn!(failed, "doctor: some start-up checks failed");
    }
}
