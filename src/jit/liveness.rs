//! Liveness locks (DESIGN §3): while it runs, each gateway instance holds a lock on every
//! target — a session-level advisory lock on a PostgreSQL admin connection
//! (`jit::postgres::liveness`), a `flock` held by a long-lived admin exec on an SSH host
//! (`jit::linux::liveness`, which is also the host's watchdog). The reaper of any instance asks
//! the target whether another instance's lock is free and, if it is, reaps that instance's
//! accounts at once: the targets hold the truth, jitgate keeps no shared state of its own.
//!
//! This file holds what both kinds share: the answer of a probe ([`Owner`]), the holder's
//! state as the rest of the gateway sees it ([`Liveness`]), the PostgreSQL lock key, and the
//! holder's loop ([`hold`]: take the lock, watch it, take it again with backoff when lost).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long one probe (a statement or an exec on the target) may take: a silent target must
/// not stall the reaper. The owner is then [`Owner::Unknown`].
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long taking the lock may take (connect, log in, lock), before it counts as a failure.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The SSH watchdog's default grace: how long it waits after its connection ended before it
/// removes its instance's accounts, so that a gateway that reconnects (a restart, a network
/// blip) takes its lock back first.
pub const DEFAULT_WATCHDOG_GRACE: Duration = Duration::from_secs(30);

/// What a target says about another instance's liveness lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Someone holds the lock: the instance runs (or its lock has not been released yet).
    Alive,
    /// The lock is free: no gateway of that instance holds it, its accounts may go now.
    Gone,
    /// The probe failed or timed out, or the instance never took a lock here: only lease
    /// expiry plus `FOREIGN_GRACE` decides.
    Unknown,
}

/// PostgreSQL advisory lock class of every jitgate liveness lock (`"jgat"` in ASCII), the
/// first key of the two-`int4` form `pg_try_advisory_lock(classid, objid)`. Applications that
/// use the one-`bigint` form live in another key space (pg_locks tells them apart by
/// `objsubid`: 1 for bigint keys, 2 for two-int keys), so only another two-int user of this
/// very class could collide.
pub const PG_LOCK_CLASS: i32 = 0x6a67_6174;

/// The advisory lock key of `instance`: ([`PG_LOCK_CLASS`], FNV-1a 32 of the instance id's
/// bytes, as a signed `int4`). Stable across versions and hosts; documented in the README.
/// Two instance ids with the same hash (one chance in 2^32 per pair) share one lock: the
/// second cannot take it while the first runs (it logs that another session holds it, and
/// `pg_stat_activity` names the holder by its `application_name`, `jitgate liveness <id>`):
/// give one of them another instance_id.
pub fn pg_lock_key(instance: &str) -> (i32, i32) {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in instance.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (PG_LOCK_CLASS, i32::from_ne_bytes(hash.to_ne_bytes()))
}

/// Where this instance's lock on one target stands, as its holder task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// The first attempt to take it has not finished yet (the gateway just started).
    Starting,
    Held,
    /// Not held: an attempt failed, or the lock was lost; the holder keeps trying.
    Down,
}

/// Whether this instance holds its lock on one target right now, as its holder task sees it.
#[derive(Debug, Clone)]
pub struct Liveness {
    state: watch::Receiver<LockState>,
}

/// The holder task's side of a [`Liveness`].
#[derive(Debug)]
pub struct LivenessSender {
    state: watch::Sender<LockState>,
}

impl Liveness {
    pub fn channel() -> (LivenessSender, Liveness) {
        let (tx, rx) = watch::channel(LockState::Starting);
        (LivenessSender { state: tx }, Liveness { state: rx })
    }

    pub fn is_held(&self) -> bool {
        *self.state.borrow() == LockState::Held
    }

    /// Whether the lock is held, after waiting (at most `within`) for the holder's first
    /// attempt to finish if it has not yet. A lock that is down is not waited for: a target
    /// that refuses or is unreachable must not slow every mint down.
    pub async fn wait_held(&self, within: Duration) -> bool {
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(within, state.wait_for(|s| *s != LockState::Starting)).await;
        self.is_held()
    }
}

impl LivenessSender {
    pub fn set(&self, held: bool) {
        self.state.send_replace(if held {
            LockState::Held
        } else {
            LockState::Down
        });
    }
}

/// How a holder task is asked to stop: `stop` cancelled, and `clean` set when the gateway
/// dropped every account it had (then the SSH watchdog stands down at once instead of waiting
/// its grace and reaping what is left).
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub stop: CancellationToken,
    clean: Arc<AtomicBool>,
}

impl Release {
    /// Stops every holder sharing this `Release`; `clean`: no account of this instance is left.
    pub fn release(&self, clean: bool) {
        self.clean.store(clean, Ordering::SeqCst);
        self.stop.cancel();
    }

    pub fn is_clean(&self) -> bool {
        self.clean.load(Ordering::SeqCst)
    }
}

/// Exponential backoff between attempts to (re)take a lock: 200 ms doubling to 15 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(15);
    /// A lock held this long counts as a success: the next loss starts the backoff afresh.
    pub const STEADY: Duration = Duration::from_secs(60);

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Logs a failed attempt once per distinct reason (not at every retry of the same failure).
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Option<String>,
}

impl FailureLog {
    pub fn failed(&mut self, target: &str, reason: &str) {
        if self.last.as_deref() != Some(reason) {
            tracing::warn!(target_name = %target, reason = %crate::logsafe::diagnostic(reason), "cannot take this instance's liveness lock on the target; retrying with backoff (until it holds, other instances may reap this instance's accounts there)");
            self.last = Some(reason.to_string());
        } else {
            tracing::debug!(target_name = %target, reason = %crate::logsafe::diagnostic(reason), "liveness lock: still failing");
        }
    }

    pub fn held(&mut self, target: &str, after_loss: bool) {
        if after_loss || self.last.is_some() {
            tracing::info!(target_name = %target, "liveness lock taken back");
        } else {
            tracing::info!(target_name = %target, "liveness lock held");
        }
        self.last = None;
    }
}

/// How one kind of target holds this instance's lock: what [`hold`] needs of it.
pub trait LockHolder: Send + Sync {
    /// What keeps the lock while it lives (an admin session, a long-lived exec).
    type Held: Send;

    fn target_name(&self) -> &str;

    /// Takes the lock: a new hold on it, or why not.
    fn take(&self) -> impl Future<Output = Result<Self::Held, String>> + Send;

    /// Waits until the hold ends or stops answering; why.
    fn watch(held: &mut Self::Held) -> impl Future<Output = String> + Send;

    /// The gateway stops while the lock is held: lets it go (dropping `held` ends it).
    fn let_go(&self, held: Self::Held, release: &Release) -> impl Future<Output = ()> + Send;

    /// Logs that a held lock was lost, and why.
    fn log_lost(&self, why: &str);
}

/// Holds this instance's lock through `holder` until `release` says stop, and tells `held`
/// whenever that changes: each attempt within [`ACQUIRE_TIMEOUT`], a lost or refused lock
/// taken again after [`Backoff`], each new reason for failing logged once ([`FailureLog`]).
/// Runs for the gateway's life (`serve` spawns one per target).
pub async fn hold<H: LockHolder>(holder: &H, held: LivenessSender, release: Release) {
    let name = holder.target_name();
    let mut backoff = Backoff::default();
    let mut failures = FailureLog::default();
    let mut lost_once = false;
    loop {
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(ACQUIRE_TIMEOUT, holder.take()) => attempt,
            () = release.stop.cancelled() => return,
        };
        match attempt {
            Ok(Ok(mut hold)) => {
                held.set(true);
                failures.held(name, lost_once);
                let since = Instant::now();
                let why = tokio::select! {
                    why = H::watch(&mut hold) => why,
                    () = release.stop.cancelled() => {
                        held.set(false);
                        holder.let_go(hold, &release).await;
                        return;
                    }
                };
                held.set(false);
                lost_once = true;
                holder.log_lost(&why);
                if since.elapsed() >= Backoff::STEADY {
                    backoff.reset();
                }
            }
            Ok(Err(reason)) => failures.failed(name, &reason),
            Err(_) => failures.failed(
                name,
                &format!(
                    "taking the lock did not finish within {}s",
                    ACQUIRE_TIMEOUT.as_secs()
                ),
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = release.stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_in_the_jitgate_class() {
        // FNV-1a 32 of "gw-1" (the value the README documents).
        assert_eq!(pg_lock_key("gw-1"), (0x6a67_6174, 0xb2c2_88a1_u32 as i32));
        assert_eq!(pg_lock_key("gw-1"), pg_lock_key("gw-1"));
        assert_ne!(pg_lock_key("gw-1").1, pg_lock_key("gw-2").1);
        assert_eq!(pg_lock_key("").1, 0x811c_9dc5_u32 as i32);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn mints_wait_only_for_the_first_attempt_and_boundedly() {
        let (tx, live) = Liveness::channel();
        assert!(!live.is_held());
        // Starting: waited for, at most `within`.
        let started = tokio::time::Instant::now();
        assert!(!live.wait_held(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let waiter = {
            let live = live.clone();
            tokio::spawn(async move { live.wait_held(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.set(true);
        assert!(waiter.await.unwrap_or(false));
        assert!(live.is_held());
        // Down (lost, reconnecting): answered at once.
        tx.set(false);
        let asked = tokio::time::Instant::now();
        assert!(!live.wait_held(Duration::from_secs(5)).await);
        assert_eq!(asked.elapsed(), Duration::ZERO);
    }
}
