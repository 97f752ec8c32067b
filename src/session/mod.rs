//! A connection's session record ([`Session`], `spine`: what both protocols know of a
//! connection and the one way its audit events go), and the live sessions of this gateway
//! process, both protocols: who (identity, certificate),
//! where (target, grant, account), since when, and a switch that ends the session now with a
//! reason. A session registers once its account exists and deregisters by a guard however its
//! task ends. Trust changes (`trust`: a CRL reload, a policy reload) walk this registry and
//! flip switches; each session's own task (`pg::session`, `ssh::session`) watches its switch
//! and its [`lifetime::Lifetime`] (max_session, certificate expiry, the warnings before them).
//!
//! The registry is the one place that knows what is live, so an operator's view and kill
//! switch (`jitgate sessions`, locks) can be built on [`Sessions::list`] and
//! [`Sessions::end_where`] without touching the protocols.

pub mod lifetime;
pub mod spine;
pub mod trust;

pub use spine::{Ending, Session};

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::audit::Counters;
use crate::identity::Identity;
use crate::jit::LeaseId;
use crate::policy::TargetKind;

/// The client certificate a session was opened with, kept so that a trust change can check it
/// again exactly as a new connection would be checked.
#[derive(Debug, Clone)]
pub struct Credential {
    /// As presented in the TLS handshake, end-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's notAfter: no session outlives it.
    pub not_after: SystemTime,
}

impl Credential {
    /// From a chain `tls::ServerTls::verify_client` has accepted. A leaf that cannot be parsed
    /// again (it parsed once, so this does not happen) gets a notAfter in the past: the
    /// session then ends at once rather than running without a bound.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Credential {
        let not_after = chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf).ok())
            .and_then(|(_, cert)| {
                let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
            })
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Credential {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            not_after,
        }
    }
}

/// What one live session is, as registered: enough to show it to an operator and to ask the
/// policy again whether it would still be let in.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The lease id: one session, one account, one id (the log's `lease=`).
    pub id: LeaseId,
    pub protocol: TargetKind,
    pub identity: Identity,
    pub credential: Credential,
    pub target: String,
    /// What the client asked for (psql `user=`, the SSH user name): a grant name or its own.
    pub requested: String,
    /// The reason the client gave, as given.
    pub reason: Option<String>,
    /// The grant the policy chose at login.
    pub grant: String,
    /// The JIT account on the target (role or Linux user).
    pub account: String,
    pub client: SocketAddr,
    pub since: SystemTime,
    /// Bytes relayed so far each way, shared with the relay (`jitgate sessions` shows them).
    pub bytes: Arc<Counters>,
}

/// Why a live session is ended by the gateway (rather than by either side closing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The grant's `max_session` was reached.
    MaxSession,
    /// No byte went either way for the grant's `idle_timeout` (given here).
    Idle(std::time::Duration),
    /// The client certificate's notAfter was reached.
    CertificateExpired,
    /// The client certificate is on the CRL now.
    CertificateRevoked,
    /// The client certificate fails verification for another reason (the words are the
    /// verifier's, as a new connection would be refused with).
    CertificateRefused(String),
    /// A policy reload: the request no longer yields the grant the session was opened with.
    /// `detail` is the operator's version (which grant applies now, or why none does).
    PolicyChanged { grant: String, detail: String },
    /// The gateway is shutting down.
    Shutdown,
    /// The audit log cannot be written and `audit.on_failure` is `fail_closed`.
    AuditUnavailable,
    /// An operator ended it (`jitgate sessions end`). `by` says who, as the control socket
    /// saw them (`uid 0`); `reason` is the operator's, shown to the user.
    Ended { by: String, reason: Option<String> },
    /// An operator's lock (`jitgate lock`) covers it: a lock ends the live sessions it
    /// matches as well as refusing new ones.
    Locked {
        lock: String,
        reason: Option<String>,
    },
}

impl EndReason {
    /// What the user is told (the SSH disconnect message, the Postgres notice before the
    /// target's FATAL). Names nothing the user could not know: their grant, their certificate.
    pub fn user_message(&self) -> String {
        match self {
            EndReason::MaxSession => {
                "jitgate: this session reached the max_session of its grant".to_string()
            }
            EndReason::Idle(after) => format!(
                "jitgate: this session was idle for {} (the idle_timeout of its grant); \
                 it ends now",
                humantime::format_duration(*after)
            ),
            EndReason::CertificateExpired => {
                "jitgate: your certificate expired; this session ends with it".to_string()
            }
            EndReason::CertificateRevoked => "jitgate: your certificate was revoked".to_string(),
            EndReason::CertificateRefused(why) => {
                format!("jitgate: your certificate is no longer accepted: {why}")
            }
            EndReason::PolicyChanged { grant, .. } => format!(
                "jitgate: the policy no longer grants this session (grant {grant}); it ends now"
            ),
            EndReason::Shutdown => "jitgate: the gateway is shutting down".to_string(),
            EndReason::AuditUnavailable => {
                "jitgate: the session cannot be audited any more (the gateway cannot write \
                 its audit log), so it ends; ask the operator"
                    .to_string()
            }
            EndReason::Ended { reason, .. } => match reason {
                Some(reason) => format!("jitgate: an operator ended this session: {reason}"),
                None => "jitgate: an operator ended this session".to_string(),
            },
            EndReason::Locked { reason, .. } => match reason {
                Some(reason) => {
                    format!("jitgate: an operator locked this access; the session ends: {reason}")
                }
                None => "jitgate: an operator locked this access; the session ends".to_string(),
            },
        }
    }

    /// A short stable word for logs (`end_reason=`).
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::MaxSession => "max_session",
            EndReason::Idle(_) => "idle_timeout",
            EndReason::CertificateExpired => "certificate_expired",
            EndReason::CertificateRevoked => "certificate_revoked",
            EndReason::CertificateRefused(_) => "certificate_refused",
            EndReason::PolicyChanged { .. } => "policy_changed",
            EndReason::Shutdown => "shutdown",
            EndReason::AuditUnavailable => "audit_unavailable",
            EndReason::Ended { .. } => "ended_by_operator",
            EndReason::Locked { .. } => "locked",
        }
    }

    /// Whether trust in the session was withdrawn (logged as `session.ended_by_trust`), as
    /// opposed to its time being up or the gateway stopping.
    pub fn is_trust(&self) -> bool {
        match self {
            EndReason::CertificateRevoked
            | EndReason::CertificateRefused(_)
            | EndReason::PolicyChanged { .. } => true,
            EndReason::MaxSession
            | EndReason::Idle(_)
            | EndReason::CertificateExpired
            | EndReason::Shutdown
            | EndReason::AuditUnavailable
            | EndReason::Ended { .. }
            | EndReason::Locked { .. } => false,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::PolicyChanged { grant, detail } => {
                write!(
                    f,
                    "policy reload: grant {grant} no longer applies ({detail})"
                )
            }
            EndReason::CertificateRefused(why) => write!(f, "certificate refused: {why}"),
            EndReason::Ended { by, reason } => {
                write!(f, "ended by an operator ({by})")?;
                reason.iter().try_for_each(|r| write!(f, ": {r}"))
            }
            EndReason::Locked { lock, reason } => {
                write!(f, "lock {lock}")?;
                reason.iter().try_for_each(|r| write!(f, ": {r}"))
            }
            other => f.write_str(other.as_str()),
        }
    }
}

/// Ends one session: the first reason given wins; the session's task sees it through
/// [`EndSwitch::ended`].
#[derive(Debug, Clone, Default)]
pub struct EndSwitch {
    token: CancellationToken,
    reason: Arc<OnceLock<EndReason>>,
}

impl EndSwitch {
    /// Flips the switch; false if it had already been flipped (the first reason stays).
    pub fn end(&self, reason: EndReason) -> bool {
        let first = self.reason.set(reason).is_ok();
        self.token.cancel();
        first
    }

    /// Resolves once the switch is flipped, with the reason.
    pub async fn ended(&self) -> EndReason {
        self.token.cancelled().await;
        self.reason.get().cloned().unwrap_or(EndReason::Shutdown)
    }

    pub fn reason(&self) -> Option<&EndReason> {
        self.reason.get()
    }
}

struct Entry {
    info: Arc<SessionInfo>,
    switch: EndSwitch,
}

/// The registry. Cheap to clone; all clones share it.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Entry>>>);

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.len())
            .finish()
    }
}

/// A session's registration; dropping it deregisters the session.
#[derive(Debug)]
pub struct Registered {
    sessions: Sessions,
    id: LeaseId,
    switch: EndSwitch,
    info: Arc<SessionInfo>,
}

impl Registered {
    pub fn switch(&self) -> &EndSwitch {
        &self.switch
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.lock().remove(self.id.as_str());
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a live session until the returned guard is dropped.
    pub fn register(&self, info: SessionInfo) -> Registered {
        let info = Arc::new(info);
        let switch = EndSwitch::default();
        self.lock().insert(
            info.id.as_str().to_string(),
            Entry {
                info: info.clone(),
                switch: switch.clone(),
            },
        );
        Registered {
            sessions: self.clone(),
            id: info.id.clone(),
            switch,
            info,
        }
    }

    /// Every live session, in no particular order.
    pub fn list(&self) -> Vec<Arc<SessionInfo>> {
        self.lock().values().map(|e| e.info.clone()).collect()
    }

    /// Ends one session by id; false if no such session is live.
    pub fn end(&self, id: &str, reason: EndReason) -> bool {
        let switch = self.lock().get(id).map(|e| e.switch.clone());
        switch.is_some_and(|s| s.end(reason))
    }

    /// Ends every live session `verdict` gives a reason for, and returns those it ended (with
    /// the reason) for the caller to log. `verdict` runs outside the registry's lock, so it may
    /// take its time (a certificate check, a policy evaluation) without holding up logins.
    pub fn end_where(
        &self,
        verdict: impl Fn(&SessionInfo) -> Option<EndReason>,
    ) -> Vec<(Arc<SessionInfo>, EndReason)> {
        let live: Vec<(Arc<SessionInfo>, EndSwitch)> = self
            .lock()
            .values()
            .map(|e| (e.info.clone(), e.switch.clone()))
            .collect();
        let mut ended = Vec::new();
        for (info, switch) in live {
            if let Some(reason) = verdict(&info) {
                if switch.end(reason.clone()) {
                    ended.push((info, reason));
                }
            }
        }
        ended
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn info(user: &str, grant: &str) -> SessionInfo {
        SessionInfo {
            id: LeaseId::random(),
            protocol: TargetKind::Postgres,
            identity: Identity::person(user, &["dba".to_string()]),
            credential: Credential {
                chain: Vec::new(),
                not_after: SystemTime::now(),
            },
            target: "orders".into(),
            requested: grant.into(),
            reason: None,
            grant: grant.into(),
            account: "jit_x".into(),
            client: "127.0.0.1:5".parse().unwrap(),
            since: SystemTime::now(),
            bytes: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_guard_deregisters_and_the_first_reason_wins() {
        let sessions = Sessions::default();
        let a = sessions.register(info("alice", "g"));
        let b = sessions.register(info("bob", "g"));
        assert_eq!(sessions.len(), 2);
        let ended = sessions
            .end_where(|s| (s.identity.user == "alice").then_some(EndReason::CertificateRevoked));
        assert_eq!(ended.len(), 1);
        assert_eq!(a.switch().ended().await, EndReason::CertificateRevoked);
        assert!(!a.switch().end(EndReason::MaxSession));
        assert_eq!(a.switch().reason(), Some(&EndReason::CertificateRevoked));
        // Ending an already ended session again reports nothing new.
        assert!(sessions
            .end_where(|_| Some(EndReason::Shutdown))
            .iter()
            .all(|(s, _)| s.identity.user == "bob"));
        assert!(!sessions.end(b.info().id.as_str(), EndReason::MaxSession));
        drop(a);
        assert_eq!(sessions.len(), 1);
        drop(b);
        assert!(sessions.is_empty());
        assert!(!sessions.end("nope", EndReason::Shutdown));
    }
}
