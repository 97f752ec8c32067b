//! One Postgres client connection, start to end: front door → policy → mint → upstream login →
//! the client's handshake → splice → drop. Every refusal reaches the client as a FATAL with a
//! SQLSTATE, and every minted role is dropped on every path out of `run_login`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::cancel::CancelRegistry;
use super::message::{
    authentication_ok, backend_key_data, fatal, negotiate_protocol_version, warning,
};
use super::options::take_reason;
use super::relay::{splice, Counters, End, Tap};
use super::startup::{accept, Arrival, ClientStream, FrontDoorError, Login};
use super::upstream::{self, UpstreamError};
use crate::audit::pg::{PgAuditOptions, PgDecoder};
use crate::audit::{Audit, Event as AuditEvent};
use crate::config::PgTarget;
use crate::control::locks::Locks;
use crate::identity::Identity;
use crate::jit::postgres::PgProvisioner;
use crate::jit::reaper::LiveLeases;
use crate::jit::{LeaseId, PgLease};
use crate::limits::{Handshake, Limits};
use crate::logsafe::{diagnostic, untrusted};
use crate::policy::{self, AccessRequest, Denial, PolicySet, TargetKind};
use crate::session::lifetime::{Event, Lifetime};
use crate::session::{trust, Credential, Ending, Registered, Session, Sessions};
use crate::tls::ServerTls;

/// Longest a mint may take, waiting for an admin slot included (the admin login alone has
/// 15 s); the client is refused after it and the reaper takes what a cut-off mint left.
const MINT_DEADLINE: Duration = Duration::from_secs(30);

/// Everything a Postgres session needs from the gateway, shared by all sessions.
pub struct PgContext {
    pub instance_id: String,
    pub trust_domain: String,
    pub handshake_timeout: Duration,
    pub tls: Arc<ServerTls>,
    pub policies: Arc<dyn Fn() -> Arc<PolicySet> + Send + Sync>,
    pub targets: HashMap<String, (Arc<PgTarget>, Arc<PgProvisioner>)>,
    pub cancels: CancelRegistry,
    pub live: LiveLeases,
    /// The live sessions, for trust changes to end (`session::trust`).
    pub sessions: Sessions,
    /// Operators' locks (`jitgate lock`), checked before any account is minted.
    pub locks: Locks,
    /// How long before a session's end the user is warned (`session_warnings`).
    pub warnings: Vec<Duration>,
    pub audit: Audit,
    /// Sessions in total and per identity, handshakes per source (`limits:`).
    pub limits: Limits,
    pub shutdown: CancellationToken,
}

/// A refusal to send the client: SQLSTATE, message, optional hint; and, for the log only,
/// what the operator needs to know that the client must not (why a grant did not apply).
struct Refusal {
    code: String,
    message: String,
    hint: Option<String>,
    detail: Option<String>,
}

impl Refusal {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Refusal {
            code: code.into(),
            message: message.into(),
            hint: None,
            detail: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A policy refusal: the denial as the user may read it, what they can use instead (a
/// `NoAccess` says nothing else), and the operator's version for the log.
fn denial_refusal(
    denial: &Denial,
    policies: &PolicySet,
    identity: &Identity,
    ctx: &PgContext,
) -> Refusal {
    let refusal = Refusal::new(denial.sqlstate(), denial.to_string()).detail(denial.detail());
    match denial {
        Denial::NoAccess { .. } => refusal.hint(
            policy::offer(
                policies,
                identity,
                TargetKind::Postgres,
                ctx.targets.keys().map(String::as_str),
            )
            .to_string(),
        ),
        Denial::Ambiguous { .. }
        | Denial::ReasonRequired { .. }
        | Denial::ReasonTooLong { .. }
        | Denial::ReasonNotPrintable { .. } => refusal,
    }
}

/// Serves one accepted TCP connection.
/// `handshake` counts it against its source address until the client has shown a certificate
/// (or sent a cancel key); any other end of the handshake counts as a failed one.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, handshake: Handshake, ctx: Arc<PgContext>) {
    let session = Session::accept(TargetKind::Postgres, peer, ctx.audit.clone());
    let span = session.span().clone();
    serve_connection(tcp, session, handshake, &ctx)
        .instrument(span)
        .await;
}

async fn serve_connection(tcp: TcpStream, session: Session, handshake: Handshake, ctx: &PgContext) {
    let peer = session.client();
    let _ = tcp.set_nodelay(true);
    let arrival = tokio::time::timeout(
        ctx.handshake_timeout,
        accept(tcp, &ctx.tls, &ctx.trust_domain),
    )
    .await;
    if let Ok(Ok(_)) = &arrival {
        handshake.done();
    }
    match arrival {
        Err(_) => tracing::info!(client = %peer, "handshake timed out"),
        Ok(Err(FrontDoorError::Refused { code, message })) => {
            tracing::info!(event = "access.denied", client = %peer, sqlstate = code, reason = %message, "connection refused");
            session.deny(Some(code), &message).await;
        }
        // Port probes and health checks land here: not worth an info line each.
        Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "connection closed before login"),
        Ok(Ok(Arrival::Cancel { key, tls })) => ctx.cancels.cancel(key, peer, tls).await,
        Ok(Ok(Arrival::Login(login))) => run_login(*login, &session, ctx).await,
    }
}

/// What the client asked for in its StartupMessage, sorted out.
struct Requested {
    user: String,
    target: String,
    database: Option<String>,
    reason: Option<String>,
    forward: Vec<(String, String)>,
    unsupported: Vec<String>,
}

fn sort_params(params: Vec<(String, String)>) -> Result<Requested, Refusal> {
    let mut user = None;
    let mut database = None;
    let mut reason = None;
    let mut app_reason = None;
    let mut forward = Vec::new();
    let mut unsupported = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "options" => {
                let (r, rest) = take_reason(&value);
                reason = r.or(reason);
                if let Some(rest) = rest {
                    forward.push((name, rest));
                }
            }
            "replication" => {
                if !matches!(value.as_str(), "false" | "off" | "no" | "0") {
                    return Err(Refusal::new(
                        "0A000",
                        "replication connections are not supported through jitgate",
                    ));
                }
            }
            "application_name" => {
                app_reason = value.strip_prefix("reason:").map(|r| r.trim().to_string());
                forward.push((name, value));
            }
            n if n.starts_with("_pq_.") => unsupported.push(name),
            _ => forward.push((name, value)),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        Refusal::new("28000", "no user name given")
            .hint("connect with user=<grant name> or user=<your name>")
    })?;
    // libpq sends no database when it defaults to the user name.
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let (target, database) = match database.split_once('/') {
        Some((t, d)) => (t.to_string(), Some(d.to_string())),
        None => (database, None),
    };
    Ok(Requested {
        user,
        target,
        database,
        reason: reason.or(app_reason),
        forward,
        unsupported,
    })
}

async fn run_login(login: Login, session: &Session, ctx: &PgContext) {
    let Login {
        mut stream,
        identity,
        minor_version,
        params,
    } = login;
    let started = StdInstant::now();
    session.identified(
        &identity,
        Credential::from_chain(stream.get_ref().1.peer_certificates().unwrap_or(&[])),
    );
    let requested = match sort_params(params) {
        Ok(r) => r,
        Err(refusal) => return refuse(&mut stream, session, refusal).await,
    };
    if minor_version > 0 || !requested.unsupported.is_empty() {
        // We speak 3.0; say so before authentication, as PostgreSQL does.
        if stream
            .write_all(&negotiate_protocol_version(&requested.unsupported))
            .await
            .is_err()
        {
            return;
        }
    }
    // The policy speaks first, and a target that does not exist is refused in the same words
    // as one that exists but is not granted: no stranger learns target names, nor (before
    // holding a grant) a target's database list.
    let policies = (ctx.policies)();
    session.target(&requested.target);
    session.requested(&requested.user, requested.reason.as_deref());
    let Some((target, provisioner)) = ctx.targets.get(&requested.target) else {
        let denial = Denial::no_such_target(&identity, &requested.target, Some(&requested.user));
        let refusal = denial_refusal(&denial, &policies, &identity, ctx);
        return refuse(&mut stream, session, refusal).await;
    };
    let request = AccessRequest {
        identity: &identity,
        target: &target.name,
        kind: TargetKind::Postgres,
        requested: &requested.user,
        reason: requested.reason.as_deref(),
    };
    let grant =
        match tracing::info_span!("policy").in_scope(|| policy::evaluate(&policies, &request)) {
            Ok(grant) => grant,
            Err(denial) => {
                let refusal = denial_refusal(&denial, &policies, &identity, ctx);
                return refuse(&mut stream, session, refusal).await;
            }
        };
    // Only now, to a person the policy let in, may the target's databases be named.
    let database = match &requested.database {
        None => target.databases[0].clone(),
        Some(db) if target.databases.contains(db) => db.clone(),
        Some(db) => {
            let refusal = Refusal::new(
                "3D000",
                format!(
                    "target {} has no database {} that jitgate may connect to; allowed: {}",
                    target.name,
                    untrusted(db),
                    target.databases.join(", ")
                ),
            );
            return refuse(&mut stream, session, refusal).await;
        }
    };

    // A person past their share of the gateway is told so, as PostgreSQL tells a client past
    // max_connections (53300); the count holds until the account is dropped.
    let _permit = match ctx.limits.session(&identity.user) {
        Ok(permit) => permit,
        Err(e) => {
            let refusal = Refusal::new("53300", e.to_string()).detail(e.key());
            return refuse(&mut stream, session, refusal).await;
        }
    };
    // No session starts that cannot be audited (audit.on_failure: fail_closed), and none
    // gets an account first.
    if let Err(message) = ctx.audit.accepting() {
        let refusal = Refusal::new("57P03", message).detail("audit log cannot be written");
        return refuse(&mut stream, session, refusal).await;
    }
    // An operator's lock refuses the session before it has an account, in the words of an
    // authentication failure (28000, as Teleport's locks and a NOLOGIN role are refused).
    if let Some(lock) = ctx
        .locks
        .refusing(&identity.user, grant.name(), &target.name)
    {
        let refusal = Refusal::new("28000", lock.user_message()).detail(lock.describe());
        return refuse(&mut stream, session, refusal).await;
    }
    let lease_id = session.id().clone();
    let _live = ctx.live.register(&lease_id);
    let minting = provisioner
        .mint(lease_id.clone(), &grant, &identity, &database)
        .instrument(tracing::info_span!("jit.mint", lease = %lease_id, target_name = %target.name));
    let lease = match tokio::time::timeout(MINT_DEADLINE, minting).await {
        Ok(Ok(lease)) => lease,
        Err(_) => {
            // Whatever the target did with the CREATE ROLE, the lease is this instance's and
            // not live once `_live` goes: the reaper removes a role that was made.
            tracing::error!(lease = %lease_id, target_name = %target.name, user = %identity.user, seconds = MINT_DEADLINE.as_secs(), "mint did not finish in time; the target is slow or not answering");
            return refuse(&mut stream, session, jit_refusal(&target.name, &lease_id)).await;
        }
        Ok(Err(e)) => {
            // The user hears "ask the operator"; the operator's line says what fixes it.
            let fix = crate::doctor::fix_for_mint_error(&e, target, &grant);
            tracing::error!(lease = %lease_id, target_name = %target.name, user = %identity.user, error = %diagnostic(&e.to_string()), fix = fix.as_deref().map(tracing::field::display), "mint failed");
            return refuse(&mut stream, session, jit_refusal(&target.name, &lease_id)).await;
        }
    };
    tracing::info!(
        event = "jit.account.created", lease = %lease.id, role = %lease.role, target_name = %target.name,
        database = %database, grant = grant.name(), user = %identity.user, serial = %identity.serial,
        reason = %untrusted(grant.reason().unwrap_or("")), mint_ms = started.elapsed().as_millis() as u64,
        "account created"
    );
    let Some(audit) = session.open(&grant, &lease.role).cloned() else {
        // Identified and targeted above: not reached.
        return refuse(&mut stream, session, jit_refusal(&target.name, &lease_id)).await;
    };
    session
        .emit(AuditEvent::AccountCreated {
            database: Some(database.clone()),
            mint_ms: started.elapsed().as_millis() as u64,
            expires_at: crate::audit::event::rfc3339(lease.expires_at),
        })
        .await;

    // From here trust changes can end the session: register it, then check once more what a
    // CRL or policy reload (or a lock) during the mint may have changed.
    let counters = Arc::new(Counters::default());
    let registered = session.register(&ctx.sessions, counters.clone());
    if let Some(registered) = &registered {
        trust::recheck_new(registered, &ctx.tls, &(ctx.policies)());
        ctx.locks.recheck_new(registered);
    }

    let tap = Tap::new(
        PgDecoder::new(PgAuditOptions {
            redact_parameters: grant.redact_parameters(),
            ..PgAuditOptions::default()
        }),
        audit,
    );
    let (end, upstream) = match &registered {
        Some(registered) => {
            let opened = Opened {
                target,
                provisioner,
                lease: &lease,
                registered,
                tap: &tap,
                counters: &counters,
                requested: &requested,
                database: &database,
                idle_timeout: grant.idle_timeout(),
            };
            serve(&mut stream, session, ctx, &opened).await
        }
        None => (None, None),
    };
    drop(registered);
    let _ = stream.shutdown().await;
    drop(stream);

    // The upstream connection stays open until the drop has made the role NOLOGIN: while it
    // holds the role's only connection slot (CONNECTION LIMIT 1), a login outside the gateway
    // (with a password the role set itself) is refused. One that slips in once the client has
    // sent Terminate is ended by the drop, which terminates every backend of the role's oid
    // after NOLOGIN.
    let (reason, detail) = match &end {
        Some(End::Ended(reason)) => (reason.as_str(), Some(reason.to_string())),
        Some(End::Closed { .. } | End::ClientHungUp) => ("closed", None),
        Some(End::Failed(e)) => ("failed", Some(e.to_string())),
        None => ("not_started", None),
    };
    session
        .end(Ending {
            reason,
            detail,
            bytes: counters.get(),
        })
        .await;
    session.drop_account(provisioner.as_ref(), &lease).await;
    drop(upstream);
    // `_live` goes here: from now on the reaper may take whatever is left of the role.
}

/// A session past its mint: what `serve` needs.
struct Opened<'a> {
    target: &'a Arc<PgTarget>,
    provisioner: &'a Arc<PgProvisioner>,
    lease: &'a PgLease,
    registered: &'a Registered,
    tap: &'a Tap,
    counters: &'a Counters,
    requested: &'a Requested,
    database: &'a str,
    /// The grant's `idle_timeout`.
    idle_timeout: Option<Duration>,
}

/// Logs in upstream, completes the client's handshake, and relays. Returns how it ended.
async fn serve(
    stream: &mut ClientStream,
    session: &Session,
    ctx: &PgContext,
    opened: &Opened<'_>,
) -> (Option<End>, Option<upstream::UpstreamStream>) {
    let Opened {
        target,
        provisioner,
        lease,
        registered,
        ..
    } = *opened;
    let info = registered.info();
    let user = info.identity.user.as_str();
    let peer = info.client;
    let mut upstream = match upstream::login(target, lease, &opened.requested.forward)
        .instrument(tracing::info_span!("upstream.login", lease = %lease.id))
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(lease = %lease.id, target_name = %target.name, role = %lease.role, error = %diagnostic(&e.to_string()), "upstream login failed");
            refuse(
                stream,
                session,
                upstream_refusal(&e, &target.name, &lease.id),
            )
            .await;
            return (None, None);
        }
    };
    let key = ctx
        .cancels
        .register(target.clone(), upstream.backend_pid, upstream.backend_key);
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&authentication_ok());
    for msg in &upstream.greeting {
        hello.extend_from_slice(&msg.raw);
    }
    hello.extend_from_slice(&backend_key_data(key.pid, key.key));
    hello.extend_from_slice(&upstream.ready.raw);
    let end = if stream.write_all(&hello).await.is_ok() {
        tracing::info!(event = "session.start", client = %peer, lease = %lease.id, role = %lease.role, user = %user, target_name = %target.name, "session started");
        let deadline = session.deadline(lease.expires_at);
        session
            .emit(AuditEvent::SessionStart {
                requested: opened.requested.user.clone(),
                database: Some(opened.database.to_string()),
                deadline: crate::audit::event::rfc3339(deadline),
            })
            .await;
        let terminate = || async {
            if let Err(e) = provisioner.terminate_backends(lease).await {
                tracing::warn!(role = %lease.role, error = %e, "could not terminate the upstream backend");
            }
        };
        let mut lifetime = Lifetime::new(
            lease.expires_at,
            registered.info().credential.not_after,
            &ctx.warnings,
        )
        .idle_after(opened.idle_timeout, registered.info().bytes.clone());
        // The warnings, and at the end the reason, reach the client as WARNING notices put
        // between the upstream's messages (see pg::relay); the end itself is the target's
        // own FATAL 57P01 after `terminate`, as for any administrator's termination.
        let (notices, notices_rx) = tokio::sync::mpsc::channel(4);
        let until = async move {
            loop {
                match lifetime.next(registered.switch(), &ctx.shutdown).await {
                    Event::Warning(text) => {
                        tracing::info!(event = "session.warning", lease = %lease.id, user = %user, message = %text, "end of session announced");
                        session
                            .emit(AuditEvent::SessionWarning {
                                message: text.clone(),
                            })
                            .await;
                        let _ = notices.try_send(warning(&text).freeze());
                    }
                    Event::End(reason) => {
                        let _ = notices.try_send(warning(&reason.user_message()).freeze());
                        return reason;
                    }
                }
            }
        };
        Some(
            splice(
                stream,
                &mut upstream.stream,
                until,
                notices_rx,
                terminate,
                Some(opened.tap),
                opened.counters,
            )
            .await,
        )
    } else {
        None
    };
    ctx.cancels.unregister(key);
    (end, Some(upstream.stream))
}

/// What the user is told when their account cannot be made: which target, that the
/// operator must look, and the lease id to look under. The error itself (the admin's
/// credential trouble, the target's SQL error text, its address) is for the log only.
fn jit_refusal(target: &str, lease: &LeaseId) -> Refusal {
    // `connection_failure`: the target's own SQLSTATE would describe jitgate's admin work,
    // not anything the user did.
    Refusal::new(
        "08006",
        format!(
            "jitgate could not create your account on target {target}; ask the operator \
             (reference {lease})"
        ),
    )
    .hint("the gateway's log has the details under that reference")
}

/// What the user is told when the login as their account fails. The target's own error
/// text stays in the log; its SQLSTATE (when it sent one) is passed on, so clients that
/// retry on e.g. 53300 `too_many_connections` still can.
fn upstream_refusal(e: &UpstreamError, target: &str, lease: &LeaseId) -> Refusal {
    let code = if let UpstreamError::Refused { code, .. } = e {
        code.as_str()
    } else {
        "08006"
    };
    Refusal::new(
        code,
        format!(
            "jitgate could not log in to target {target} with your account; ask the operator \
             (reference {lease})"
        ),
    )
    .hint("the gateway's log has the details under that reference")
}

async fn refuse(stream: &mut ClientStream, session: &Session, refusal: Refusal) {
    // Client-chosen parts of the message (target, grant and database names) are escaped
    // where the message is built.
    let reason = refusal.detail.as_deref().unwrap_or(&refusal.message);
    tracing::info!(event = "access.denied", client = %session.client(), user = %session.user().unwrap_or_default(), sqlstate = %refusal.code, reason = %reason, "login refused");
    session.deny(Some(&refusal.code), reason).await;
    let packet = fatal(&refusal.code, &refusal.message, refusal.hint.as_deref());
    let _ = stream.write_all(&packet).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_params_are_sorted_out() {
        let r = sort_params(params(&[
            ("user", "alice"),
            ("database", "orders/archive"),
            ("options", "-c jitgate.reason=INC-1 -c work_mem=1MB"),
            ("application_name", "psql"),
            ("_pq_.compression", "on"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(
            (r.user.as_str(), r.target.as_str(), r.database.as_deref()),
            ("alice", "orders", Some("archive"))
        );
        assert_eq!(r.reason.as_deref(), Some("INC-1"));
        assert_eq!(
            r.forward,
            params(&[("options", "-c work_mem=1MB"), ("application_name", "psql")])
        );
        assert_eq!(r.unsupported, vec!["_pq_.compression".to_string()]);
    }

    #[test]
    fn reason_from_application_name_and_default_database() {
        let r = sort_params(params(&[
            ("user", "orders"),
            ("application_name", "reason: CHG-9"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(r.reason.as_deref(), Some("CHG-9"));
        assert_eq!(r.target, "orders");
        assert!(sort_params(params(&[("database", "orders")])).is_err());
        assert!(sort_params(params(&[("user", "a"), ("replication", "database")])).is_err());
    }
}
