//! How much one gateway lets in at once: sessions in total and per person, and, before anyone
//! has shown a certificate, handshakes per source address and failed handshakes per minute.
//! Every count is held by a permit that gives it back when dropped, so a session's task ending
//! any way (a panic included) never leaves a count behind.
//!
//! The defaults are meant to be invisible to real use and to stop one client (or one stolen
//! certificate) from taking the whole gateway: see the README's "Reliability" section.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The `limits:` section of the config, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Live sessions of both protocols together (from certificate check to account drop).
    pub max_sessions: usize,
    /// Live sessions of one identity (certificate user name), both protocols together.
    pub max_sessions_per_identity: usize,
    /// Connections from one source address still in their handshake (before the certificate
    /// has been checked).
    pub max_handshakes_per_source: usize,
    /// Failed handshakes (TLS failure, refused certificate, timeout, garbage) one source
    /// address may have in a minute; past that its new connections are closed unanswered
    /// until the minute is over.
    pub max_failed_handshakes_per_minute: u32,
    /// TCP keepalive on client connections: idle time before the first probe. Probes then go
    /// every [`KEEPALIVE_INTERVAL`], and [`KEEPALIVE_PROBES`] unanswered ones end the
    /// connection, so a client that vanished without a FIN gives back its account.
    pub tcp_keepalive: Duration,
    /// Account creations (and drops) running at once against one target; more wait their turn.
    pub max_mints_per_target: usize,
}

pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 3;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions: 2000,
            max_sessions_per_identity: 50,
            max_handshakes_per_source: 64,
            max_failed_handshakes_per_minute: 120,
            tcp_keepalive: Duration::from_secs(30),
            max_mints_per_target: 8,
        }
    }
}

/// Why a connection or a session is refused by a limit. `Display` is what the user is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "jitgate: the gateway is at its limit of {0} open sessions (limits.max_sessions); \
         try again later or ask the operator"
    )]
    Total(usize),
    #[error(
        "jitgate: {user} already has {limit} sessions open through this gateway \
         (limits.max_sessions_per_identity); close one and try again"
    )]
    PerIdentity { user: String, limit: usize },
}

impl LimitError {
    /// The limit's name in the config, for the log and the audit.
    pub fn key(&self) -> &'static str {
        match self {
            LimitError::Total(_) => "limits.max_sessions",
            LimitError::PerIdentity { .. } => "limits.max_sessions_per_identity",
        }
    }
}

/// Why a new connection is closed before its handshake (nothing is said: there is no
/// protocol yet to say it in, and a flood is not owed an answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many handshakes from this address are in progress.
    Handshakes(usize),
    /// Too many failed handshakes from this address this minute.
    Failures(u32),
}

const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    sessions: usize,
    per_identity: HashMap<String, usize>,
    handshakes: HashMap<IpAddr, usize>,
    /// Per source: when its current minute began and how many failures it had in it.
    failures: HashMap<IpAddr, (Instant, u32)>,
    /// When each throttled source was last logged.
    warned: HashMap<IpAddr, Instant>,
}

/// The gateway's counts; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Limits {
    config: Arc<LimitsConfig>,
    state: Arc<Mutex<State>>,
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Limits {
        Limits {
            config: Arc::new(config),
            state: Arc::default(),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection from `source`, before its handshake. The permit counts it as a
    /// handshake in progress until [`Handshake::done`] or its drop; a handshake that ends any
    /// other way than `done` (an error, a timeout, a drop) counts as failed.
    pub fn handshake(&self, source: IpAddr) -> Result<Handshake, Throttled> {
        let now = Instant::now();
        let mut state = self.state();
        if let Some((since, failed)) = state.failures.get(&source).copied() {
            if now.duration_since(since) >= FAILURE_WINDOW {
                state.failures.remove(&source);
            } else if failed >= self.config.max_failed_handshakes_per_minute {
                return Err(Throttled::Failures(failed));
            }
        }
        let open = state.handshakes.entry(source).or_insert(0);
        if *open >= self.config.max_handshakes_per_source {
            return Err(Throttled::Handshakes(*open));
        }
        *open += 1;
        Ok(Handshake {
            limits: self.clone(),
            source,
            failed: true,
        })
    }

    /// A session for `user`: refused past either session limit; counted until the permit is
    /// dropped.
    pub fn session(&self, user: &str) -> Result<SessionPermit, LimitError> {
        let mut state = self.state();
        if state.sessions >= self.config.max_sessions {
            return Err(LimitError::Total(self.config.max_sessions));
        }
        let mine = state.per_identity.get(user).copied().unwrap_or(0);
        if mine >= self.config.max_sessions_per_identity {
            return Err(LimitError::PerIdentity {
                user: user.to_string(),
                limit: self.config.max_sessions_per_identity,
            });
        }
        state.sessions += 1;
        *state.per_identity.entry(user.to_string()).or_insert(0) += 1;
        Ok(SessionPermit {
            limits: self.clone(),
            user: user.to_string(),
        })
    }

    /// True the first time in a minute that `source` is throttled: the log says so once, not
    /// once per connection of a flood.
    pub fn first_throttle_this_minute(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        if state.warned.len() > 4096 {
            state
                .warned
                .retain(|_, at| now.duration_since(*at) < FAILURE_WINDOW);
        }
        match state.warned.get(&source) {
            Some(at) if now.duration_since(*at) < FAILURE_WINDOW => false,
            _ => {
                state.warned.insert(source, now);
                true
            }
        }
    }

    /// Sessions counted now (for tests and `jitgate sessions`).
    pub fn sessions(&self) -> usize {
        self.state().sessions
    }

    fn handshake_over(&self, source: IpAddr, failed: bool) {
        let mut state = self.state();
        if let Some(open) = state.handshakes.get_mut(&source) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.handshakes.remove(&source);
            }
        }
        if failed {
            let now = Instant::now();
            let entry = state.failures.entry(source).or_insert((now, 0));
            if now.duration_since(entry.0) >= FAILURE_WINDOW {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
        // Sources that stopped failing are forgotten once their minute is over, so the
        // table does not grow with every address ever seen.
        if state.failures.len() > 4096 {
            state
                .failures
                .retain(|_, (since, _)| now_since(*since) < FAILURE_WINDOW);
        }
    }

    fn session_over(&self, user: &str) {
        let mut state = self.state();
        state.sessions = state.sessions.saturating_sub(1);
        if let Some(mine) = state.per_identity.get_mut(user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                state.per_identity.remove(user);
            }
        }
    }
}

fn now_since(at: Instant) -> Duration {
    Instant::now().duration_since(at)
}

/// One handshake in progress (see [`Limits::handshake`]).
#[derive(Debug)]
pub struct Handshake {
    limits: Limits,
    source: IpAddr,
    failed: bool,
}

impl Handshake {
    /// The handshake succeeded: the client showed a certificate the gateway accepts.
    pub fn done(mut self) {
        self.failed = false;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.limits.handshake_over(self.source, self.failed);
    }
}

/// One counted session (see [`Limits::session`]).
#[derive(Debug)]
pub struct SessionPermit {
    limits: Limits,
    user: String,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.limits.session_over(&self.user);
    }
}

/// Sets TCP keepalive on an accepted client socket (see [`LimitsConfig::tcp_keepalive`]).
pub fn keepalive(tcp: &tokio::net::TcpStream, idle: Duration) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(per_identity: usize, total: usize) -> Limits {
        Limits::new(LimitsConfig {
            max_sessions: total,
            max_sessions_per_identity: per_identity,
            max_handshakes_per_source: 2,
            max_failed_handshakes_per_minute: 3,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn per_identity_and_total_caps_count_until_the_permit_goes() {
        let l = limits(2, 3);
        let a1 = l.session("alice").unwrap();
        let _a2 = l.session("alice").unwrap();
        assert_eq!(
            l.session("alice").unwrap_err(),
            LimitError::PerIdentity {
                user: "alice".into(),
                limit: 2
            }
        );
        let _b1 = l.session("bob").unwrap();
        assert_eq!(l.session("carol").unwrap_err(), LimitError::Total(3));
        drop(a1);
        assert_eq!(l.sessions(), 2);
        let _a3 = l.session("alice").unwrap();
        assert!(l.session("alice").is_err());
    }

    #[test]
    fn a_refusal_counts_nothing() {
        let l = limits(1, 10);
        let _a = l.session("alice").unwrap();
        for _ in 0..5 {
            assert!(l.session("alice").is_err());
        }
        assert_eq!(l.sessions(), 1);
    }

    #[test]
    fn handshakes_per_source_and_failures_per_minute() {
        let l = limits(10, 10);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let h1 = l.handshake(ip).unwrap();
        let h2 = l.handshake(ip).unwrap();
        assert_eq!(l.handshake(ip).unwrap_err(), Throttled::Handshakes(2));
        // Another address is not held up by this one.
        l.handshake(other).unwrap().done();
        // Two successes give their places back and count no failure.
        h1.done();
        h2.done();
        // Three failures (dropped without `done`) use up the minute's allowance.
        for _ in 0..3 {
            drop(l.handshake(ip).unwrap());
        }
        assert_eq!(l.handshake(ip).unwrap_err(), Throttled::Failures(3));
        l.handshake(other).unwrap().done();
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_allowance_comes_back_after_a_minute() {
        let l = limits(10, 10);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..3 {
            drop(l.handshake(ip).unwrap());
        }
        assert!(l.handshake(ip).is_err());
        tokio::time::advance(FAILURE_WINDOW).await;
        l.handshake(ip).unwrap().done();
    }
}
