//! What every kind of target offers the rest of the gateway: drop a lease's account, list the
//! accounts jitgate manages there, remove one the reaper chose, and ask the target about other
//! instances' liveness locks. `jit::postgres` (roles) and `jit::linux` (users) implement it; the
//! reaper (`jit::reaper::reap`) and the server's reap driver are written once against it.

use std::collections::HashMap;
use std::future::Future;

use super::lease::Marker;
use super::liveness::Owner;
use crate::policy::TargetKind;

/// An error of a provisioner, which knows whether trying again later may help.
pub trait ProvisionError: std::error::Error + Send + 'static {
    /// Worth retrying later (the target may come back), as opposed to a refusal that repeats.
    fn is_transient(&self) -> bool;
}

/// An account found on a target with a jitgate marker (a Postgres role, a Linux user).
pub trait Managed {
    fn marker(&self) -> &Marker;
    /// The account's name on the target.
    fn name(&self) -> &str;
}

/// Mints and drops JIT accounts on one target.
///
/// Minting is not part of it: a Postgres role is minted for one database (the one the client
/// asked for, in the role's login window and grants) and comes back with a password, a Linux
/// account is minted for a person's home and comes back with an SSH key; each session handler
/// calls its own protocol's `mint`, and nothing generic ever mints.
///
/// The methods return `impl Future + Send` (not `async fn`) so that generic callers can spawn
/// what they return.
pub trait Provisioner: Send + Sync + 'static {
    type Error: ProvisionError;
    /// What a mint hands out and a drop takes back.
    type Lease: Sync;
    /// An account as the target lists it.
    type Account: Managed + Send + Sync;

    /// The protocol, for what must stay protocol-specific (log field names).
    const KIND: TargetKind;

    /// The target's name in the config.
    fn target_name(&self) -> &str;

    /// Ends what runs as the lease's account and removes it. An account that is already gone
    /// is success; one not marked as this lease's is refused and left untouched.
    fn drop_lease(
        &self,
        lease: &Self::Lease,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How a drop of `lease` is named in the retry's log lines ("dropping jit_x on db-1").
    fn describe_drop(&self, lease: &Self::Lease) -> String;

    /// [`Provisioner::drop_lease`], retried with backoff for about a minute while the target
    /// is unreachable (`jit::retry_transient`); the reaper does the rest.
    fn drop_with_retry(
        &self,
        lease: &Self::Lease,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async move {
            let what = self.describe_drop(lease);
            super::retry_transient(&what, ProvisionError::is_transient, || {
                self.drop_lease(lease)
            })
            .await
        }
    }

    /// Every account on the target carrying a jitgate marker (any instance's).
    fn managed(&self) -> impl Future<Output = Result<Vec<Self::Account>, Self::Error>> + Send;

    /// Removes a managed account the reaper found. The caller decided it has no live session.
    fn reap(&self, account: &Self::Account)
        -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Asks the target, for each of `instances` (never this instance's own), whether its
    /// liveness lock is free, within `jit::liveness::PROBE_TIMEOUT`. What the target could not
    /// say is [`Owner::Unknown`].
    fn probe_instances(
        &self,
        instances: &[&str],
    ) -> impl Future<Output = HashMap<String, Owner>> + Send;
}
