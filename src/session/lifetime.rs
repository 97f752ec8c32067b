//! A session's time: it ends at the earlier of its lease's expiry (the mint's now + the grant's
//! `max_session`) and its client certificate's notAfter — no session outlives the credential
//! it was opened with — and the user is warned `session_warnings` before (5 and 1 minutes by
//! default). Each protocol turns the [`Event`]s into its own words: a Postgres
//! NoticeResponse, a line on an SSH session's stderr, and at the end its usual goodbye.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EndReason, EndSwitch};
use crate::audit::Counters;

/// `session_warnings` when the config sets none: five minutes and one minute before the end.
pub const DEFAULT_WARNINGS: [Duration; 2] = [Duration::from_secs(300), Duration::from_secs(60)];

/// What happens next in a session's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Tell the user; the session goes on.
    Warning(String),
    /// End the session now, for this reason.
    End(EndReason),
}

/// The grant's `idle_timeout`: the session ends once its byte counters stood still that long.
#[derive(Debug)]
struct Idle {
    after: Duration,
    bytes: Arc<Counters>,
    /// The counters as last seen, and since when they have stood at that.
    seen: (u64, u64),
    since: Instant,
}

impl Idle {
    /// How often the counters are looked at: the session ends at most this late.
    fn tick(&self) -> Duration {
        (self.after / 20).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

#[derive(Debug)]
pub struct Lifetime {
    deadline: Instant,
    idle: Option<Idle>,
    /// `MaxSession` or `CertificateExpired`: whichever comes first.
    cause: EndReason,
    /// (when, how long before the end), earliest first; `next` is the first not yet given.
    warnings: Vec<(Instant, Duration)>,
    next: usize,
}

impl Lifetime {
    /// `leads`: how long before the end to warn (any order). A warning whose time has already
    /// passed when the session starts (a certificate with 3 minutes left gets no 5-minute
    /// warning) is skipped rather than given late with a wrong figure.
    pub fn new(lease_expires: SystemTime, not_after: SystemTime, leads: &[Duration]) -> Lifetime {
        let (at, cause) = if not_after < lease_expires {
            (not_after, EndReason::CertificateExpired)
        } else {
            (lease_expires, EndReason::MaxSession)
        };
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let deadline = Instant::now() + left;
        let mut leads: Vec<Duration> = leads
            .iter()
            .copied()
            .filter(|lead| !lead.is_zero() && *lead < left)
            .collect();
        leads.sort_unstable_by(|a, b| b.cmp(a));
        leads.dedup();
        Lifetime {
            deadline,
            idle: None,
            cause,
            warnings: leads
                .into_iter()
                .map(|lead| (deadline - lead, lead))
                .collect(),
            next: 0,
        }
    }

    /// Ends the session, too, once `bytes` (both ways) stood still for `after`.
    pub fn idle_after(mut self, after: Option<Duration>, bytes: Arc<Counters>) -> Lifetime {
        self.idle = after.map(|after| Idle {
            after,
            seen: bytes.get(),
            bytes,
            since: Instant::now(),
        });
        self
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Why the session will end if nothing ends it sooner.
    pub fn cause(&self) -> &EndReason {
        &self.cause
    }

    /// Waits for the next event: the switch (a trust change, an operator), the gateway's
    /// shutdown, a warning, or the deadline. Cancel-safe: a warning is only counted as given
    /// when this returns it.
    pub async fn next(&mut self, switch: &EndSwitch, shutdown: &CancellationToken) -> Event {
        loop {
            let warning = self.warnings.get(self.next).copied();
            let warn_at = warning.map_or(self.deadline, |(at, _)| at);
            let look_at = self
                .idle
                .as_ref()
                .map_or(self.deadline, |i| Instant::now() + i.tick());
            tokio::select! {
                // A trust change beats a timer due at the same moment; the deadline beats a
                // warning due with it.
                biased;
                reason = switch.ended() => return Event::End(reason),
                () = shutdown.cancelled() => return Event::End(EndReason::Shutdown),
                () = tokio::time::sleep_until(self.deadline) => return Event::End(self.cause.clone()),
                () = tokio::time::sleep_until(warn_at), if warning.is_some() => {
                    self.next += 1;
                    let lead = warning.map_or(Duration::ZERO, |(_, lead)| lead);
                    return Event::Warning(self.warning_text(lead));
                }
                () = tokio::time::sleep_until(look_at), if self.idle.is_some() => {
                    if let Some(idle) = &mut self.idle {
                        let now = idle.bytes.get();
                        if now != idle.seen {
                            idle.seen = now;
                            idle.since = Instant::now();
                        } else if idle.since.elapsed() >= idle.after {
                            return Event::End(EndReason::Idle(idle.after));
                        }
                    }
                }
            }
        }
    }

    fn warning_text(&self, lead: Duration) -> String {
        let when = humantime::format_duration(Duration::from_secs(lead.as_secs()));
        match self.cause {
            EndReason::CertificateExpired => format!(
                "jitgate: this session ends in {when}, when your certificate expires; \
                 get a new certificate and reconnect"
            ),
            _ => format!(
                "jitgate: this session ends in {when}, at the max_session of its grant; \
                 reconnect for a new session"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_ends_a_still_session_and_traffic_keeps_it() {
        let now = SystemTime::now();
        let never = CancellationToken::new();
        let switch = EndSwitch::default();
        let bytes = Arc::new(Counters::default());
        let mut life = Lifetime::new(now + 3600 * S, now + 3600 * S, &[])
            .idle_after(Some(60 * S), bytes.clone());
        // Traffic at 40 s (one byte) restarts the clock: the end comes 60 s after it, give
        // or take one look (every 3 s for a 60 s timeout).
        let traffic = tokio::spawn({
            let bytes = bytes.clone();
            async move {
                tokio::time::sleep(40 * S).await;
                bytes.add(0, 1);
            }
        });
        let start = Instant::now();
        assert_eq!(
            life.next(&switch, &never).await,
            Event::End(EndReason::Idle(60 * S))
        );
        let ended = start.elapsed().as_secs();
        assert!((100..=106).contains(&ended), "ended after {ended}s");
        traffic.await.unwrap_or_default();

        // Without idle_timeout nothing but the deadline ends it.
        let mut life = Lifetime::new(now + 3600 * S, now + 3600 * S, &[]).idle_after(None, bytes);
        let start = Instant::now();
        assert_eq!(
            life.next(&switch, &never).await,
            Event::End(EndReason::MaxSession)
        );
        assert!(start.elapsed().as_secs() >= 3599);
    }

    #[tokio::test(start_paused = true)]
    async fn warns_then_ends_at_the_earlier_of_lease_and_certificate() {
        let now = SystemTime::now();
        let never = CancellationToken::new();
        let switch = EndSwitch::default();
        // The certificate runs out first: 100 s; warnings at 30 s and 10 s before; a 200 s
        // lead cannot be given and is skipped.
        let mut life = Lifetime::new(now + 600 * S, now + 100 * S, &[10 * S, 200 * S, 30 * S]);
        assert_eq!(life.cause(), &EndReason::CertificateExpired);
        let start = Instant::now();
        let first = life.next(&switch, &never).await;
        assert!(
            matches!(&first, Event::Warning(t) if t.contains("ends in 30s, when your certificate expires")),
            "{first:?}"
        );
        assert_eq!(start.elapsed().as_secs(), 70);
        let second = life.next(&switch, &never).await;
        assert!(
            matches!(&second, Event::Warning(t) if t.contains("ends in 10s")),
            "{second:?}"
        );
        assert_eq!(start.elapsed().as_secs(), 90);
        assert_eq!(
            life.next(&switch, &never).await,
            Event::End(EndReason::CertificateExpired)
        );
        assert_eq!(start.elapsed().as_secs(), 100);

        // max_session first, 90 s: of the defaults only the 1-minute warning fits.
        let start = Instant::now();
        let mut life = Lifetime::new(now + 90 * S, now + 3600 * S, &DEFAULT_WARNINGS);
        let first = life.next(&switch, &never).await;
        assert!(
            matches!(&first, Event::Warning(t) if t.contains("ends in 1m, at the max_session")),
            "{first:?}"
        );
        assert_eq!(start.elapsed().as_secs(), 30);
        assert_eq!(
            life.next(&switch, &never).await,
            Event::End(EndReason::MaxSession)
        );
        assert_eq!(start.elapsed().as_secs(), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn the_switch_and_shutdown_end_at_once() {
        let now = SystemTime::now();
        let shutdown = CancellationToken::new();
        let switch = EndSwitch::default();
        let mut life = Lifetime::new(now + 600 * S, now + 600 * S, &DEFAULT_WARNINGS);
        switch.end(EndReason::CertificateRevoked);
        assert_eq!(
            life.next(&switch, &shutdown).await,
            Event::End(EndReason::CertificateRevoked)
        );
        let mut life = Lifetime::new(now + 600 * S, now + 600 * S, &DEFAULT_WARNINGS);
        shutdown.cancel();
        assert_eq!(
            life.next(&EndSwitch::default(), &shutdown).await,
            Event::End(EndReason::Shutdown)
        );
    }
}
