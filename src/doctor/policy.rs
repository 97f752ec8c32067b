//! The policy checks (every grant's `targets:` entries name configured targets of a kind its
//! sections serve) and the dry runs' grant, which comes out of `policy::evaluate` like any
//! other: a one-grant policy written here, evaluated for the doctor's own identity.

use std::path::Path;

use super::{Section, PROBE_NAME};
use crate::config::{Config, Target};
use crate::identity::Identity;
use crate::policy::{evaluate, AccessRequest, Grant, GrantInfo, PolicySet, TargetKind};

fn kind_of(target: &Target) -> TargetKind {
    match target {
        Target::Postgres(_) => TargetKind::Postgres,
        Target::Ssh(_) => TargetKind::Ssh,
    }
}

fn sections_of(grant: &GrantInfo<'_>) -> String {
    let kinds: Vec<&str> = [TargetKind::Postgres, TargetKind::Ssh]
        .into_iter()
        .filter(|k| grant.serves(*k))
        .map(TargetKind::as_str)
        .collect();
    kinds
        .iter()
        .map(|k| format!("{k}:"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// One ✓ per grant whose every `targets:` entry names a configured target it can apply to,
/// else one ✗ per entry that does not.
pub(super) fn check(config: &Config, policies: &PolicySet) -> Section {
    let mut section = Section::new(
        "policies",
        format!(
            "policies ({}, {} grants)",
            config.policy_dir.display(),
            policies.len()
        ),
    );
    for grant in policies.grants() {
        let mut served = Vec::new();
        let mut ok = true;
        for glob in grant.target_globs() {
            let matched: Vec<&Target> = config
                .targets
                .values()
                .filter(|t| GrantInfo::glob_matches(glob, t.name()))
                .collect();
            let usable: Vec<&Target> = matched
                .iter()
                .copied()
                .filter(|t| grant.serves(kind_of(t)))
                .collect();
            if matched.is_empty() {
                ok = false;
                section.fail(
                    format!(
                        "grant {}: targets entry `{glob}` names no configured target",
                        grant.name()
                    ),
                    Some(format!(
                        "add a target `{glob}` to {}, or correct `targets:` of grant {} ({})",
                        config.path.display(),
                        grant.name(),
                        grant.origin()
                    )),
                );
            } else if usable.is_empty() {
                ok = false;
                let names: Vec<String> = matched
                    .iter()
                    .map(|t| format!("{} ({})", t.name(), kind_of(t)))
                    .collect();
                let wanted = matched.first().map_or(TargetKind::Postgres, |t| kind_of(t));
                section.fail(
                    format!(
                        "grant {}: targets entry `{glob}` matches only {}, but the grant has only a {} section",
                        grant.name(),
                        names.join(", "),
                        sections_of(&grant)
                    ),
                    Some(format!(
                        "add a `{wanted}:` section to grant {} ({}), or correct its `targets:`",
                        grant.name(),
                        grant.origin()
                    )),
                );
            } else {
                served.extend(
                    usable
                        .iter()
                        .map(|t| format!("{} ({})", t.name(), kind_of(t))),
                );
            }
        }
        if ok {
            served.sort();
            served.dedup();
            section.pass(format!(
                "grant {} applies to {}",
                grant.name(),
                served.join(", ")
            ));
        }
    }
    section
}

/// A YAML double-quoted string (names are validated plain text already; this keeps any of
/// them one scalar).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The dry run's grant on `target`: the roles (Postgres) or groups and sudo (SSH) the
/// configured grants name there, a home removed with the account, a one-minute lease. Made by
/// `policy::evaluate` from a policy of its own, so the dry run's account is built exactly as
/// a user's would be.
pub(super) fn probe_grant(
    target: &str,
    kind: TargetKind,
    names: &[String],
    sudo: bool,
) -> Result<(Grant, Identity), String> {
    let list = names
        .iter()
        .map(|n| quoted(n))
        .collect::<Vec<_>>()
        .join(", ");
    let section = match kind {
        TargetKind::Postgres => format!("    postgres: {{ roles: [{list}] }}\n"),
        TargetKind::Ssh => {
            format!("    ssh: {{ groups: [{list}], sudo: {sudo}, home: ephemeral }}\n")
        }
    };
    let yaml = format!(
        "grants:\n  - name: {PROBE_NAME}\n    subjects: {{ users: [{PROBE_NAME}] }}\n    \
         targets: [{}]\n{section}    max_session: 1m\n",
        quoted(target)
    );
    let set = PolicySet::from_sources([(Path::new("<jitgate doctor>"), yaml.as_str())])
        .map_err(|e| e.to_string())?;
    let identity = Identity::person(PROBE_NAME, &[]);
    let grant = evaluate(
        &set,
        &AccessRequest {
            identity: &identity,
            target,
            kind,
            requested: PROBE_NAME,
            reason: None,
        },
    )
    .map_err(|d| d.detail())?;
    Ok((grant, identity))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn probe_grants_come_from_evaluate() {
        let roles = vec!["orders_read".to_string(), "odd \"name\"".to_string()];
        let (grant, identity) = probe_grant("orders", TargetKind::Postgres, &roles, false).unwrap();
        assert_eq!(grant.name(), PROBE_NAME);
        assert_eq!(grant.pg_roles(), roles.as_slice());
        assert_eq!(identity.user, PROBE_NAME);
        let groups = vec!["adm".to_string()];
        let (grant, _) = probe_grant("web-1", TargetKind::Ssh, &groups, true).unwrap();
        assert_eq!(grant.ssh_groups(), groups.as_slice());
        assert!(grant.sudo());
        assert_eq!(grant.home(), crate::policy::HomeMode::Ephemeral);
        assert_eq!(grant.max_session(), std::time::Duration::from_secs(60));
    }
}
