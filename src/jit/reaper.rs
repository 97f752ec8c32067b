//! The reaper: removes managed accounts that have no live session. It runs at start-up,
//! every `reap_interval`, and as `jitgate reap`, so no crash can leave access standing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::lease::LeaseId;
use super::postgres::{ManagedRole, PgProvisioner};

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

/// Whether a managed role should go: ours without a live session, or anyone's long expired.
pub fn should_reap(
    role: &ManagedRole,
    instance_id: &str,
    is_live: impl Fn(&ManagedRole) -> bool,
    now: SystemTime,
) -> bool {
    if role.marker.instance == instance_id {
        !is_live(role)
    } else {
        role.marker.expires_at + FOREIGN_GRACE < now
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub dropped: Vec<String>,
    pub failed: Vec<String>,
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
                report.dropped.push(role.role);
            }
            Err(e) => {
                tracing::error!(target_name = %provisioner.target().name, role = %role.role, error = %e, "reaping failed");
                report.failed.push(role.role);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::lease::Marker;

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
}
