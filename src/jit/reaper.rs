//! The reaper: removes managed accounts that have no live session. It runs at start-up,
//! every `reap_interval`, and as `jitgate reap`, so no crash can leave access standing.
//! Another instance's accounts go as soon as the target says that instance's liveness lock is
//! free (`jit::liveness`), or else once their lease expired `FOREIGN_GRACE` ago.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::lease::{LeaseId, Marker};
use super::liveness::Owner;
use super::provisioner::{Managed, Provisioner};
use crate::policy::TargetKind;

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

/// Why the reaper takes an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// This instance's, and no session of this process holds it.
    NotLive,
    /// Another instance's, marked `live=1`, and the target says that instance's liveness lock
    /// is free: its gateway is gone.
    OwnerGone,
    /// Another instance's, and its lease expired more than `FOREIGN_GRACE` ago.
    Expired,
}

impl Why {
    /// The audit's words (`jit.account.reaped`, `why`).
    pub fn describe(self) -> &'static str {
        match self {
            Why::NotLive => "no live session holds it (a gateway crash or a failed drop)",
            Why::OwnerGone => {
                "its gateway is gone: that instance's liveness lock on the target is free"
            }
            Why::Expired => "its lease expired long ago and its gateway did not remove it",
        }
    }
}

/// Whether a managed account should go, and why: ours without a live session; another
/// instance's whose liveness lock `owner` says is free (only for accounts whose marker says
/// their instance holds one, `live=1`); anyone's long expired. Never asks `owner` about this
/// instance itself: whatever its own lock does (down while it reconnects), its own accounts
/// are judged by its own live sessions only.
pub fn reap_reason<A: Managed>(
    account: &A,
    instance_id: &str,
    is_live: impl Fn(&A) -> bool,
    owner: impl Fn(&str) -> Owner,
    now: SystemTime,
) -> Option<Why> {
    let marker = account.marker();
    if marker.instance == instance_id {
        return (!is_live(account)).then_some(Why::NotLive);
    }
    if marker.expires_at + FOREIGN_GRACE < now {
        return Some(Why::Expired);
    }
    match owner(&marker.instance) {
        Owner::Gone if marker.liveness => Some(Why::OwnerGone),
        Owner::Gone | Owner::Alive | Owner::Unknown => None,
    }
}

/// [`reap_reason`] as a yes or no.
pub fn should_reap<A: Managed>(
    account: &A,
    instance_id: &str,
    is_live: impl Fn(&A) -> bool,
    owner: impl Fn(&str) -> Owner,
    now: SystemTime,
) -> bool {
    reap_reason(account, instance_id, is_live, owner, now).is_some()
}

/// The other instances worth asking about: those with an account marked `live=1` that expiry
/// alone does not settle.
fn instances_to_probe<A: Managed>(
    accounts: &[A],
    instance_id: &str,
    now: SystemTime,
) -> Vec<String> {
    let set: BTreeSet<&str> = accounts
        .iter()
        .map(Managed::marker)
        .filter(|m| m.instance != instance_id && m.liveness && m.expires_at + FOREIGN_GRACE >= now)
        .map(|m| m.instance.as_str())
        .collect();
    set.into_iter().map(str::to_string).collect()
}

fn owner_of(answers: &HashMap<String, Owner>) -> impl Fn(&str) -> Owner + '_ {
    |instance| answers.get(instance).copied().unwrap_or(Owner::Unknown)
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
    fn of(account: &str, marker: &Marker, why: Why) -> Reaped {
        Reaped {
            account: account.to_string(),
            lease: marker.lease.clone(),
            owner_instance: marker.instance.clone(),
            why: why.describe().to_string(),
        }
    }
}

/// One pass over one target: removes every managed account that should go (a role and its
/// backends; a Linux user, its processes and its home lock). Accounts without a jitgate marker
/// (on SSH targets: outside group `jitgate`) are never listed, so never touched.
pub async fn reap<P: Provisioner>(
    provisioner: &P,
    instance_id: &str,
    is_live: impl Fn(&P::Account) -> bool,
) -> Result<ReapReport, P::Error> {
    let now = SystemTime::now();
    let mut report = ReapReport::default();
    let accounts = provisioner.managed().await?;
    let probe = instances_to_probe(&accounts, instance_id, now);
    let answers = if probe.is_empty() {
        HashMap::new()
    } else {
        let asked: Vec<&str> = probe.iter().map(String::as_str).collect();
        provisioner.probe_instances(&asked).await
    };
    let target = provisioner.target_name();
    for account in accounts {
        let Some(why) = reap_reason(&account, instance_id, &is_live, owner_of(&answers), now)
        else {
            continue;
        };
        let (name, marker) = (account.name(), account.marker());
        match provisioner.reap(&account).await {
            Ok(()) => {
                // The name's field is `role` for a role and `account` for a Linux user, as
                // in every other log line about them.
                match P::KIND {
                    TargetKind::Postgres => {
                        tracing::info!(target_name = %target, role = %name, lease = %marker.lease, owner_instance = %marker.instance, why = why.describe(), "reaped account without a live session")
                    }
                    TargetKind::Ssh => {
                        tracing::info!(target_name = %target, account = %name, lease = %marker.lease, owner_instance = %marker.instance, why = why.describe(), "reaped account without a live session")
                    }
                }
                report.reaped.push(Reaped::of(name, marker, why));
                report.dropped.push(name.to_string());
            }
            Err(e) => {
                let error = e.to_string();
                match P::KIND {
                    TargetKind::Postgres => {
                        tracing::error!(target_name = %target, role = %name, error = %crate::logsafe::diagnostic(&error), "reaping failed")
                    }
                    TargetKind::Ssh => {
                        tracing::error!(target_name = %target, account = %name, error = %crate::logsafe::diagnostic(&error), "reaping failed")
                    }
                }
                report.failed.push(name.to_string());
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::linux::ManagedAccount;
    use crate::jit::postgres::ManagedRole;

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
        marked_role(instance, lease, expires_at, false)
    }

    fn marked_role(
        instance: &str,
        lease: &str,
        expires_at: SystemTime,
        liveness: bool,
    ) -> ManagedRole {
        ManagedRole {
            role: "jit_x".into(),
            marker: Marker {
                instance: instance.into(),
                lease: lease.into(),
                expires_at,
                liveness,
            },
        }
    }

    /// What a target answers about each instance's lock, in these tests.
    fn unknown(_: &str) -> Owner {
        Owner::Unknown
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
            unknown,
            now
        ));
        assert!(should_reap(
            &role("gw-1", "bbbbbbbbbbbbbbbb", later),
            "gw-1",
            live,
            unknown,
            now
        ));
        assert!(!should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", later),
            "gw-1",
            live,
            unknown,
            now
        ));
        let long_ago = now - FOREIGN_GRACE - Duration::from_secs(1);
        assert!(should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", long_ago),
            "gw-1",
            live,
            unknown,
            now
        ));
        assert!(!should_reap(
            &role("gw-2", "bbbbbbbbbbbbbbbb", now),
            "gw-1",
            live,
            unknown,
            now
        ));
    }

    /// A free liveness lock: the foreign instance's accounts go now, without waiting for
    /// expiry; a held one or no answer leaves them to expiry plus grace.
    #[test]
    fn a_free_liveness_lock_reaps_foreign_accounts_at_once() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let none_live = |_: &ManagedRole| false;
        let gw2 = marked_role("gw-2", "bbbbbbbbbbbbbbbb", later, true);
        let gone = |i: &str| {
            if i == "gw-2" {
                Owner::Gone
            } else {
                Owner::Alive
            }
        };
        assert_eq!(
            reap_reason(&gw2, "gw-1", none_live, gone, now),
            Some(Why::OwnerGone)
        );
        for answer in [Owner::Alive, Owner::Unknown] {
            assert_eq!(reap_reason(&gw2, "gw-1", none_live, |_| answer, now), None);
        }
        // Expired long ago goes whatever the lock says.
        let old = marked_role("gw-2", "bbbbbbbbbbbbbbbb", now - FOREIGN_GRACE * 2, true);
        assert_eq!(
            reap_reason(&old, "gw-1", none_live, |_| Owner::Alive, now),
            Some(Why::Expired)
        );
        // Without `live=1` (a doctor's dry run, an older gateway) a free lock proves nothing.
        let unmarked = marked_role("gw-2", "bbbbbbbbbbbbbbbb", later, false);
        assert_eq!(reap_reason(&unmarked, "gw-1", none_live, gone, now), None);
    }

    /// An instance's own accounts are judged by its live sessions alone: its own lock being
    /// down (reconnecting) never makes it reap them, nor keep dead ones.
    #[test]
    fn own_accounts_ignore_the_lock() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let own = marked_role("gw-1", "aaaaaaaaaaaaaaaa", later, true);
        let asked = std::cell::Cell::new(false);
        let owner = |_: &str| {
            asked.set(true);
            Owner::Gone
        };
        assert_eq!(reap_reason(&own, "gw-1", |_| true, owner, now), None);
        assert_eq!(
            reap_reason(&own, "gw-1", |_| false, owner, now),
            Some(Why::NotLive)
        );
        assert!(!asked.get(), "the reaper asked about its own instance");
    }

    #[test]
    fn only_marked_unexpired_foreign_instances_are_probed() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let roles = [
            marked_role("gw-1", "aaaaaaaaaaaaaaaa", later, true),
            marked_role("gw-2", "bbbbbbbbbbbbbbbb", later, true),
            marked_role("gw-2", "cccccccccccccccc", later, true),
            marked_role("gw-3", "dddddddddddddddd", later, false),
            marked_role("gw-4", "eeeeeeeeeeeeeeee", now - FOREIGN_GRACE * 2, true),
            marked_role("gw-0", "ffffffffffffffff", later, true),
        ];
        assert_eq!(instances_to_probe(&roles, "gw-1", now), ["gw-0", "gw-2"]);
    }

    #[test]
    fn linux_accounts_follow_the_same_rule() {
        let now = SystemTime::now();
        let account = |instance: &str, expires_at, liveness| ManagedAccount {
            name: "jit-alice-abcd1234".into(),
            uid: 200_000,
            home: "/var/lib/jitgate/home/alice".into(),
            marker: Marker {
                instance: instance.into(),
                lease: "cccccccccccccccc".into(),
                expires_at,
                liveness,
            },
            has_processes: false,
        };
        let live = |a: &ManagedAccount| a.has_processes;
        assert!(should_reap(
            &account("gw-1", now, true),
            "gw-1",
            live,
            unknown,
            now
        ));
        assert!(!should_reap(
            &account("gw-2", now, true),
            "gw-1",
            live,
            unknown,
            now
        ));
        let long_ago = now - FOREIGN_GRACE - Duration::from_secs(1);
        assert!(should_reap(
            &account("gw-2", long_ago, false),
            "gw-1",
            live,
            unknown,
            now
        ));
        assert!(should_reap(
            &account("gw-2", now, true),
            "gw-1",
            live,
            |_| Owner::Gone,
            now
        ));
    }
}
