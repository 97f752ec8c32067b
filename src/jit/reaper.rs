//! The reaper: removes managed accounts that have no live session. It runs at start-up,
//! every `reap_interval`, and as `jitgate reap`, so no crash can leave access standing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::lease::{LeaseId, Marker};
use super::linux::{LinuxError, LinuxProvisioner, ManagedAccount};
use super::postgres::{ManagedRole, PgProvisioner};

/// A lease registered in [`LiveLeases`] while this guard lives.
#[derive(Debug)]
pub struct LiveGuard {
    leases: LiveLeases,
    id: LeaseId,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.leases.remove(&self.id);
    }
}

/// Another instance's accounts are only reaped this long after their lease expired, so clocks
/// that disagree a little never cost a live session its account.
pub const FOREIGN_GRACE: Duration = Duration::from_secs(300);

/// Leases with a session in this process. Registered before minting, removed after dropping.
#[derive(Debug, Default, Clone)]
pub struct LiveLeases(Arc<Mutex<HashSet<String>>>);

impl LiveLeases {
    pub fn insert(&self, id: &LeaseId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.as_str().to_string());
    }

    /// Registers `id` as live until the returned guard is dropped, however the session's task
    /// ends (a panic included): a lease can never stay "live" after its task is gone, which
    /// would keep the reaper away from its account for good.
    pub fn register(&self, id: &LeaseId) -> LiveGuard {
        self.insert(id);
        LiveGuard {
            leases: self.clone(),
            id: id.clone(),
        }
    }

    pub fn remove(&self, id: &LeaseId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id.as_str());
    }

    pub fn contains(&self, lease: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(lease)
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An account found on a target with a jitgate marker (a Postgres role, a Linux user).
pub trait Managed {
    fn marker(&self) -> &Marker;
}

impl Managed for ManagedRole {
    fn marker(&self) -> &Marker {
        &self.marker
    }
}

impl Managed for ManagedAccount {
    fn marker(&self) -> &Marker {
        &self.marker
    }
}

/// Whether a managed account should go: ours without a live session, or anyone's long expired.
pub fn should_reap<A: Managed>(
    account: &A,
    instance_id: &str,
    is_live: impl Fn(&A) -> bool,
    now: SystemTime,
) -> bool {
    let marker = account.marker();
    if marker.instance == instance_id {
        !is_live(account)
    } else {
        marker.expires_at + FOREIGN_GRACE < now
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub dropped: Vec<String>,
    pub failed: Vec<String>,
    /// What the audit records of each dropped account, in `dropped`'s order.
    pub reaped: Vec<Reaped>,
}

/// One account the reaper removed, for the audit's `jit.account.reaped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    pub account: String,
    pub lease: String,
    pub owner_instance: String,
    pub why: String,
}

impl Reaped {
    fn of(account: &str, marker: &super::lease::Marker, instance_id: &str) -> Reaped {
        Reaped {
            account: account.to_string(),
            lease: marker.lease.clone(),
            owner_instance: marker.instance.clone(),
            why: if marker.instance == instance_id {
                "no live session holds it (a gateway crash or a failed drop)".to_string()
            } else {
                "its lease expired long ago and its gateway did not remove it".to_string()
            },
        }
    }
}

/// One pass over one Postgres target.
pub async fn reap_postgres(
    provisioner: &PgProvisioner,
    instance_id: &str,
    is_live: impl Fn(&ManagedRole) -> bool,
) -> Result<ReapReport, super::postgres::JitError> {
    let now = SystemTime::now();
    let mut report = ReapReport::default();
    for role in provisioner.managed_roles().await? {
        if !should_reap(&role, instance_id, &is_live, now) {
            continue;
        }
        match provisioner.reap_role(&role).await {
            Ok(()) => {
                tracing::info!(target_name = %provisioner.target().name, role = %role.role, lease = %role.marker.lease, "reaped account without a live session");
                report
                    .reaped
                    .push(Reaped::of(&role.role, &role.marker, instance_id));
                report.dropped.push(role.role);
            }
            Err(e) => {
                tracing::error!(target_name = %provisioner.target().name, role = %role.role, error = %crate::logsafe::diagnostic(&e.to_string()), "reaping failed");
                report.failed.push(role.role);
            }
        }
    }
    Ok(report)
}

/// One pass over one SSH target: removes (processes, account, home lock) every managed Linux
/// account that should go. Accounts outside group `jitgate` are never listed, so never touched.
pub async fn reap_linux(
    provisioner: &LinuxProvisioner,
    instance_id: &str,
    is_live: impl Fn(&ManagedAccount) -> bool,
) -> Result<ReapReport, LinuxError> {
    let now = SystemTime::now();
    let mut report = ReapReport::default();
    for account in provisioner.managed_accounts().await? {
        if !should_reap(&account, instance_id, &is_live, now) {
            continue;
        }
        match provisioner.reap_account(&account).await {
            Ok(()) => {
                tracing::info!(target_name = %provisioner.target().name, account = %account.name, lease = %account.marker.lease, "reaped account without a live session");
                report
                    .reaped
                    .push(Reaped::of(&account.name, &account.marker, instance_id));
                report.dropped.push(account.name);
            }
            Err(e) => {
                tracing::error!(target_name = %provisioner.target().name, account = %account.name, error = %crate::logsafe::diagnostic(&e.to_string()), "reaping failed");
                report.failed.push(account.name);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::lease::Marker;

    /// A session task that panics after registering its lease leaves no "live" lease behind
    /// (which would keep the reaper away from its account for good).
    #[test]
    fn a_panicking_task_deregisters_its_lease() {
        let live = LiveLeases::default();
        let id = LeaseId::random();
        let task = {
            let (live, id) = (live.clone(), id.clone());
            std::thread::spawn(move || {
                let _guard = live.register(&id);
                assert!(live.contains(id.as_str()));
                #[allow(clippy::panic)]
                {
                    panic!("the session task dies");
                }
            })
        };
        assert!(task.join().is_err(), "the task should have panicked");
        assert!(!live.contains(id.as_str()));
        assert!(live.is_empty());
    }

    fn role(instance: &str, lease: &str, expires_at: SystemTime) -> ManagedRole {
        ManagedRole {
            role: "jit_x".into(),
            marker: Marker {
                instance: instance.into(),
                lease: lease.into(),
                expires_at,
            },
        }
    }

    #[test]
    fn reaps_own_dead_and_foreign_expired_only() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let live = |r: &ManagedRole| r.marker.lease == "aaaaaaaaaaaaaaaa";
        assert!(!should_reap(
            &role("gw-1", "aaaaaaaaaaaaaaaa", later),
            "gw-1",
            live,
            now
        ));
        assert!(should_reap(
            &role("gw-1", "bbbbbbbbbbbbbbbb", later),
            "gw-1",
            live,
            now
        ));
        assert!(!should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", later),
            "gw-1",
            live,
            now
        ));
        let long_ago = now - FOREIGN_GRACE - Duration::from_secs(1);
        assert!(should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", long_ago),
            "gw-1",
            live,
            now
        ));
        assert!(!should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", now),
            "gw-1",
            live,
            now
        ));
    }

    #[test]
    fn linux_accounts_follow_the_same_rule() {
        let now = SystemTime::now();
        let account = |instance: &str, expires_at| ManagedAccount {
            name: "jit-alice-abcd1234".into(),
            uid: 200_000,
            home: "/var/lib/jitgate/home/alice".into(),
            marker: Marker {
                instance: instance.into(),
                lease: "cccccccccccccccc".into(),
                expires_at,
            },
            has_processes: false,
        };
        let live = |a: &ManagedAccount| a.has_processes;
        assert!(should_reap(&account("gw-1", now), "gw-1", live, now));
        assert!(!should_reap(&account("gw-2", now), "gw-1", live, now));
        let long_ago = now - FOREIGN_GRACE - Duration::from_secs(1);
        assert!(should_reap(&account("gw-2", long_ago), "gw-1", live, now));
    }
}
