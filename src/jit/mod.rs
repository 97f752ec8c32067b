//! Just-in-time accounts: mint a least-privilege account on a target for one `Grant`, and drop it
//! when the session ends. The lease (who, until when, which gateway) is written on the account
//! itself, so a reaper can clean up after a crash without any state of the gateway's own.

pub mod admin_login;
pub mod lease;
pub mod linux;
pub mod liveness;
pub mod postgres;
pub mod provisioner;
pub mod reaper;

pub use lease::{LeaseId, PgLease};
pub use linux::LinuxLease;
pub use provisioner::{Managed, ProvisionError, Provisioner};

use std::future::Future;
use std::time::Duration;

/// How long a drop keeps trying while the target is unreachable; the reaper does the rest.
const DROP_RETRY_FOR: Duration = Duration::from_secs(60);

/// Runs `op` until it succeeds, fails for good, or has been failing transiently for about a
/// minute, backing off from 200 ms to 15 s between tries.
pub async fn retry_transient<T, E, F, Fut>(
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        match op().await {
            Err(e) if is_transient(&e) && waited < DROP_RETRY_FOR => {
                let error = crate::logsafe::diagnostic(&e.to_string()).to_string();
                // One line for the outage, not one per attempt.
                if failures == 0 {
                    tracing::warn!(error = %error, "{what} failed, retrying for up to {}s", DROP_RETRY_FOR.as_secs());
                } else {
                    tracing::debug!(error = %error, attempt = failures + 1, "{what} failed again, retrying");
                }
                failures += 1;
                tokio::time::sleep(delay).await;
                waited += delay;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Ok(done) if failures > 0 => {
                tracing::info!(
                    attempts = failures + 1,
                    "{what} succeeded after the target came back"
                );
                return Ok(done);
            }
            result => return result,
        }
    }
}

/// Lowercase ASCII letters and digits kept, every other run of characters one `_`, no `_` at
/// either end, at most `max` bytes; `user` if nothing is left. Account names are built from
/// this, whatever a certificate's name holds.
pub fn sanitise_user(user: &str, max: usize) -> String {
    let mut clean = String::new();
    for c in user.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        };
        if !(c == '_' && (clean.is_empty() || clean.ends_with('_'))) {
            clean.push(c);
        }
    }
    clean.truncate(max);
    let clean = clean.trim_end_matches('_');
    if clean.is_empty() {
        "user".to_string()
    } else {
        clean.to_string()
    }
}
