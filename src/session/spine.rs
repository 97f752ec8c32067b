//! One client connection of either protocol, as the rest of the gateway sees it: its id, the
//! client's address, the connection's tracing span and the audit from the accept; the verified
//! identity, the target, what was asked and why as the login goes on; the grant and the JIT
//! account once the account exists. Every audit event of the connection goes through
//! [`Session::emit`] (or [`Session::deny`] for a refusal), so each carries what is known of the
//! session when it happens, in one shape for both protocols.
//!
//! `pg::session` owns its session from accept to the drop. On SSH the russh handler (which
//! russh runs in a task of its own) and `ssh::session` (which drops the account however the
//! connection ends) both hold it: a [`Session`] is a cheap handle on one shared record, filled
//! in once per field and never rolled back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument as _;

use super::{Credential, Registered, SessionInfo, Sessions};
use crate::audit::{Audit, Body, Counters, DropOutcome, Event, SessionAudit, SessionMeta};
use crate::identity::Identity;
use crate::jit::{LeaseId, Provisioner};
use crate::logsafe::diagnostic;
use crate::policy::{Grant, TargetKind};

/// Longest a session's end waits for its account's drop (retries included) before handing the
/// account to the reaper: a lock another session holds on a role's objects, or a target that
/// stays away, must not keep the lease "live", and the reaper never takes a live lease.
pub const DROP_DEADLINE: Duration = Duration::from_secs(90);

/// A handle on one connection's session record; clones share it.
#[derive(Clone)]
pub struct Session(Arc<Inner>);

struct Inner {
    /// Made at the accept; the lease of the session's account takes it (one session, one
    /// account, one id: the log's `lease=`, the audit's `session`).
    id: LeaseId,
    protocol: TargetKind,
    client: SocketAddr,
    span: tracing::Span,
    audit: Audit,
    /// The accept: the session's duration counts from here.
    accepted: Instant,
    known: Mutex<Known>,
    opened: OnceLock<Opened>,
}

/// What the login has established so far.
#[derive(Default)]
struct Known {
    identity: Option<Identity>,
    credential: Option<Credential>,
    target: Option<String>,
    /// What the client asked for (psql `user=`, the SSH user name): a grant name or its own.
    requested: Option<String>,
    /// The reason the client gave, as given.
    reason: Option<String>,
}

/// The session once its account exists.
struct Opened {
    audit: SessionAudit,
    meta: SessionMeta,
    grant: String,
    account: String,
}

/// How a session ended, for `session.end`.
#[derive(Debug)]
pub struct Ending {
    /// A short stable word (`closed`, `failed`, `not_started`, an `EndReason`'s).
    pub reason: &'static str,
    /// The longer version (the error, the operator's words), when there is one.
    pub detail: Option<String>,
    /// Bytes relayed (from the client, to the client).
    pub bytes: (u64, u64),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.0.id)
            .field("protocol", &self.0.protocol)
            .field("client", &self.0.client)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for a connection just accepted from `client`, with its root span
    /// (`pg.connection` or `ssh.connection`): the caller runs the connection inside it.
    pub fn accept(protocol: TargetKind, client: SocketAddr, audit: Audit) -> Session {
        let span = match protocol {
            TargetKind::Postgres => tracing::info_span!("pg.connection", client = %client),
            TargetKind::Ssh => tracing::info_span!("ssh.connection", client = %client),
        };
        Session(Arc::new(Inner {
            id: LeaseId::random(),
            protocol,
            client,
            span,
            audit,
            accepted: Instant::now(),
            known: Mutex::default(),
            opened: OnceLock::new(),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &LeaseId {
        &self.0.id
    }

    pub fn protocol(&self) -> TargetKind {
        self.0.protocol
    }

    pub fn client(&self) -> SocketAddr {
        self.0.client
    }

    /// The connection's span: spans of its steps (policy, mint, upstream login, drop) are its
    /// children, named so explicitly where the step runs in another task.
    pub fn span(&self) -> &tracing::Span {
        &self.0.span
    }

    /// The gateway's audit (whether it accepts sessions now, `Audit::accepting`).
    pub fn audit(&self) -> &Audit {
        &self.0.audit
    }

    /// The client's certificate was verified: this is who they are.
    pub fn identified(&self, identity: &Identity, credential: Credential) {
        let mut known = self.known();
        known.identity = Some(identity.clone());
        known.credential = Some(credential);
    }

    /// The target the client named (as named: it may not exist).
    pub fn target(&self, name: &str) {
        self.known().target = Some(name.to_string());
    }

    /// What the client asked for, and the reason it gave.
    pub fn requested(&self, requested: &str, reason: Option<&str>) {
        let mut known = self.known();
        known.requested = Some(requested.to_string());
        known.reason = reason.map(str::to_string);
    }

    /// The reason the client gave, once it has been given (SSH: before the user name).
    pub fn reason(&self, reason: Option<&str>) {
        self.known().reason = reason.map(str::to_string);
    }

    /// When the session must end at the latest: the lease's expiry, or the client
    /// certificate's notAfter if that comes first (no session outlives its credential).
    pub fn deadline(&self, lease_expires: SystemTime) -> SystemTime {
        let known = self.known();
        known
            .credential
            .as_ref()
            .map_or(lease_expires, |c| lease_expires.min(c.not_after))
    }

    /// The verified identity's user name, once known (for log lines).
    pub fn user(&self) -> Option<String> {
        self.known().identity.as_ref().map(|i| i.user.clone())
    }

    /// Records a refusal (`access.denied`) with what is known of the session so far; `why` is
    /// the operator's version, `sqlstate` what a Postgres client was sent.
    pub async fn deny(&self, sqlstate: Option<&str>, why: &str) {
        let event = {
            let known = self.known();
            let untrusted = |s: &Option<String>| {
                s.as_deref()
                    .map(|s| crate::logsafe::untrusted(s).to_string())
            };
            Event::AccessDenied {
                protocol: crate::audit::event::protocol_name(self.0.protocol),
                client: self.0.client.to_string(),
                user: known.identity.as_ref().map(|i| i.user.clone()),
                serial: known.identity.as_ref().map(|i| i.serial.clone()),
                target: untrusted(&known.target),
                requested: untrusted(&known.requested),
                sqlstate: sqlstate.map(str::to_string),
                why: why.to_string(),
            }
        };
        self.0.audit.emit(event).await;
    }

    /// The account exists: from here every event carries the session's fields (identity,
    /// client, target, grant, reason, account). Once only; a second call changes nothing.
    /// Before [`Session::identified`] and [`Session::target`] there is nothing to open.
    pub fn open(&self, grant: &Grant, account: &str) -> Option<&SessionAudit> {
        let meta = {
            let known = self.known();
            SessionMeta::new(
                self.0.id.as_str(),
                self.0.protocol,
                known.identity.as_ref()?,
                self.0.client,
                known.target.as_deref()?,
            )
            .grant(grant.name(), grant.reason())
            .account(account)
        };
        let opened = self.0.opened.get_or_init(|| Opened {
            audit: self.0.audit.session(&meta),
            meta,
            grant: grant.name().to_string(),
            account: account.to_string(),
        });
        Some(&opened.audit)
    }

    /// The session's audit, once its account exists (the relay's decoders and the SSH
    /// channels' taps emit through a clone of it).
    pub fn audited(&self) -> Option<&SessionAudit> {
        self.0.opened.get().map(|o| &o.audit)
    }

    /// The fields every event of the opened session carries (recordings repeat them).
    pub fn meta(&self) -> Option<&SessionMeta> {
        self.0.opened.get().map(|o| &o.meta)
    }

    /// The JIT account's name, once it exists.
    pub fn account(&self) -> Option<&str> {
        self.0.opened.get().map(|o| o.account.as_str())
    }

    /// Records an event of the session. Before the account exists the session has no fields
    /// for it to carry (the only event then is a refusal, [`Session::deny`]), so it goes out
    /// on its own.
    pub async fn emit(&self, event: impl Into<Body>) {
        match self.audited() {
            Some(audit) => audit.emit(event).await,
            None => self.0.audit.emit(event).await,
        }
    }

    /// Registers the opened session as live (for trust changes, `jitgate sessions`, locks)
    /// until the returned guard is dropped; `bytes` are the relay's counters. None before the
    /// account exists.
    pub fn register(&self, sessions: &Sessions, bytes: Arc<Counters>) -> Option<Registered> {
        let opened = self.0.opened.get()?;
        let info = {
            let known = self.known();
            SessionInfo {
                id: self.0.id.clone(),
                protocol: self.0.protocol,
                identity: known.identity.clone()?,
                credential: known.credential.clone()?,
                target: known.target.clone()?,
                requested: known.requested.clone().unwrap_or_default(),
                reason: known.reason.clone(),
                grant: opened.grant.clone(),
                account: opened.account.clone(),
                client: self.0.client,
                since: SystemTime::now(),
                bytes,
            }
        };
        Some(sessions.register(info))
    }

    /// How long since the connection was accepted.
    pub fn age(&self) -> Duration {
        self.0.accepted.elapsed()
    }

    /// Logs and records (`session.end`) how the opened session ended.
    pub async fn end(&self, ending: Ending) {
        let (user, target) = {
            let known = self.known();
            let user = known.identity.as_ref().map(|i| i.user.clone());
            (user, known.target.clone())
        };
        tracing::info!(
            event = "session.end", lease = %self.0.id, user = user.as_deref().unwrap_or(""),
            target_name = target.as_deref().unwrap_or(""), end_reason = ending.reason,
            detail = ending.detail.as_deref().map(diagnostic).map(tracing::field::display),
            seconds = self.age().as_secs(), "session ended"
        );
        self.emit(Event::SessionEnd {
            duration_ms: self.age().as_millis() as u64,
            bytes_from_client: ending.bytes.0,
            bytes_to_client: ending.bytes.1,
            ended: ending.reason.to_string(),
            detail: ending.detail,
        })
        .await;
    }

    /// Drops the session's account through its target's provisioner (retried while the target
    /// is unreachable, within [`DROP_DEADLINE`]), logs the outcome and records it
    /// (`jit.account.dropped`). What is not dropped is the reaper's once the lease stops being
    /// live (the caller's `LiveGuard`, which it drops after this).
    pub async fn drop_account<P: Provisioner>(
        &self,
        provisioner: &P,
        lease: &P::Lease,
    ) -> DropOutcome {
        let started = Instant::now();
        let account = self.account().unwrap_or("").to_string();
        let (id, target) = (&self.0.id, provisioner.target_name());
        let dropping = provisioner
            .drop_with_retry(lease)
            .instrument(tracing::info_span!(parent: &self.0.span, "jit.drop", lease = %id));
        let (outcome, error) = match tokio::time::timeout(DROP_DEADLINE, dropping).await {
            Ok(Ok(())) => {
                tracing::info!(event = "jit.account.dropped", lease = %id, account = %account, target_name = %target, "account dropped");
                (DropOutcome::Dropped, None)
            }
            Ok(Err(e)) => {
                let error = diagnostic(&e.to_string()).to_string();
                tracing::error!(event = "jit.account.drop_failed", lease = %id, account = %account, target_name = %target, error = %error, "account NOT dropped; handed to the reaper, which retries every reap interval");
                (DropOutcome::Failed, Some(error))
            }
            Err(_) => {
                tracing::error!(event = "jit.account.drop_failed", lease = %id, account = %account, target_name = %target, seconds = DROP_DEADLINE.as_secs(), "account NOT dropped within the drop deadline; handed to the reaper, which retries every reap interval");
                (DropOutcome::TimedOut, None)
            }
        };
        self.emit(Event::AccountDropped {
            outcome,
            drop_ms: started.elapsed().as_millis() as u64,
            error,
        })
        .await;
        outcome
    }
}
