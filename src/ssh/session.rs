//! One bastion connection, start to end: TLS with the client certificate, the tunnel's
//! preamble (target by SNI, refusals as one line), the SSH server inside, and — when the
//! connection ends, its lease expires or the gateway stops — the account's removal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::preamble;
use super::server::{AccountSlot, BastionHandler};
use crate::config::SshTarget;
use crate::control::locks::Locks;
use crate::identity::Identity;
use crate::jit::linux::LinuxProvisioner;
use crate::jit::reaper::LiveLeases;
use crate::jit::Provisioner;
use crate::policy::{self, Denial, PolicySet, TargetKind};
use crate::session::lifetime::{Event, Lifetime};
use crate::session::{trust, Credential, EndReason, Registered, SessionInfo, Sessions};
use crate::tls::ServerTls;

/// How long a session's end waits for its channels' audit (recordings hashed, last events).
const CHANNELS_FINISH: Duration = Duration::from_secs(5);

type ClientStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Everything a bastion connection needs from the gateway, shared by all of them.
pub struct SshContext {
    pub trust_domain: String,
    pub handshake_timeout: Duration,
    pub tls: Arc<ServerTls>,
    pub policies: Arc<dyn Fn() -> Arc<PolicySet> + Send + Sync>,
    pub targets: HashMap<String, (Arc<SshTarget>, Arc<LinuxProvisioner>)>,
    pub russh: Arc<russh::server::Config>,
    pub live: LiveLeases,
    /// The live sessions, for trust changes to end (`session::trust`).
    pub sessions: Sessions,
    /// Operators' locks (`jitgate lock`), checked before any account is minted.
    pub locks: Locks,
    /// How long before a session's end the user is warned (`session_warnings`).
    pub warnings: Vec<Duration>,
    pub audit: crate::audit::Audit,
    /// Sessions in total and per identity, handshakes per source (`limits:`).
    pub limits: crate::limits::Limits,
    pub shutdown: CancellationToken,
}

/// How often the connection looks for its account before the session is registered. A trust
/// change in between is not missed (registration checks once more), but the shorter this
/// is, the sooner the session shows in the registry.
const REGISTER_POLL: Duration = Duration::from_millis(50);

/// A russh server config for the bastion: our host key, `none` (and, for clients that never
/// try it, any public key) — the TLS client certificate is the authentication — and
/// keepalives instead of an idle timeout.
pub fn russh_config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-jitgate".into()),
        methods: russh::MethodSet::from(
            &[russh::MethodKind::None, russh::MethodKind::PublicKey][..],
        ),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        ..Default::default()
    }
}

struct Admitted {
    stream: ClientStream,
    identity: Identity,
    credential: Credential,
    target: Arc<SshTarget>,
    provisioner: Arc<LinuxProvisioner>,
    reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum AdmitError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Preamble(#[from] preamble::PreambleError),
    /// Refused, with the message already sent to the tunnel; this is the operator's version.
    #[error("refused: {0}")]
    Refused(String),
}

/// `handshake` counts it against its source address until the client's certificate is
/// accepted; any other end counts as a failed handshake.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: crate::limits::Handshake,
    ctx: Arc<SshContext>,
) {
    let _ = tcp.set_nodelay(true);
    // handshake_timeout covers the client's whole part up to a started session: TLS, the
    // preamble, then SSH's version exchange, key exchange and authentication request (as
    // OpenSSH's LoginGraceTime does), so a client that goes silent half-way is not held.
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let admitted = match tokio::time::timeout(ctx.handshake_timeout, admit(tcp, handshake, &ctx))
        .await
    {
        Err(_) => return tracing::info!(client = %peer, "bastion handshake timed out"),
        Ok(Err(AdmitError::Refused(reason))) => {
            tracing::info!(event = "access.denied", client = %peer, reason = %reason, "bastion connection refused");
            ctx.audit
                .emit(crate::audit::Event::AccessDenied {
                    protocol: "ssh",
                    client: peer.to_string(),
                    user: None,
                    serial: None,
                    target: None,
                    requested: None,
                    sqlstate: None,
                    why: reason,
                })
                .await;
            return;
        }
        Ok(Err(e)) => {
            return tracing::info!(client = %peer, error = %e, "bastion connection closed before SSH")
        }
        Ok(Ok(admitted)) => admitted,
    };
    let Admitted {
        stream,
        identity,
        credential,
        target,
        provisioner,
        reason,
    } = admitted;
    let user = identity.user.clone();
    let account = AccountSlot::default();
    let handler = BastionHandler::new(
        peer,
        identity.clone(),
        target.clone(),
        provisioner.clone(),
        (ctx.policies)(),
        reason.clone(),
        ctx.live.clone(),
        account.clone(),
    )
    .offering(ctx.targets.keys().cloned().collect())
    .audited(ctx.audit.clone())
    .locked_by(ctx.locks.clone())
    .limited_by(ctx.limits.clone());
    let who = Who {
        identity,
        credential,
        reason,
        peer,
    };
    // run_stream itself waits for the client's version line.
    let Ok(started) = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(ctx.russh.clone(), stream, handler),
    )
    .await
    else {
        return handshake_timed_out(peer, &ctx);
    };
    let mut ended_by: Option<EndReason> = None;
    match started {
        Ok(running) => {
            let handle = running.handle();
            tokio::pin!(running);
            // Until the account exists, look at the slot a few times a second; from then on
            // the session is registered and its lifetime (deadline, warnings, the switch a
            // trust change flips) drives this loop.
            let mut live: Option<(Registered, Lifetime)> = None;
            let why = loop {
                if live.is_none() {
                    live = register(&account, &ctx, &who, &target);
                }
                let authenticated = account.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                if !authenticated && tokio::time::Instant::now() >= deadline {
                    // Before authentication there may be no SSH transport to say goodbye on.
                    handshake_timed_out(peer, &ctx);
                    break None;
                }
                let event = match &mut live {
                    Some((registered, lifetime)) => tokio::select! {
                        result = &mut running => {
                            session_error(peer, result);
                            break None;
                        }
                        event = lifetime.next(registered.switch(), &ctx.shutdown) => event,
                    },
                    None => tokio::select! {
                        result = &mut running => {
                            session_error(peer, result);
                            break None;
                        }
                        () = ctx.shutdown.cancelled() => Event::End(EndReason::Shutdown),
                        () = tokio::time::sleep(REGISTER_POLL) => continue,
                    },
                };
                match event {
                    Event::Warning(text) => warn_channels(&handle, &account, &user, &text).await,
                    Event::End(reason) => break Some(reason),
                }
            };
            if let Some(reason) = why {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        reason.user_message(),
                        "en".to_string(),
                    )
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut running).await;
                ended_by = Some(reason);
            }
            // The registration goes with `live` here; the account is dropped below.
        }
        Err(e) => tracing::info!(client = %peer, error = %e, "SSH handshake failed"),
    }

    let live = account.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(live) = live else {
        return;
    };
    let _releasing = live.lease.as_ref().map(|l| provisioner.releasing(l));
    if let Some(upstream) = live.upstream {
        let _ = upstream
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    if let Some(lease) = live.lease {
        let end_reason = ended_by.as_ref().map_or("closed", EndReason::as_str);
        // The channels' last events (ssh.exit, forwards' byte counts) come before session.end.
        live.open.close();
        let _ = tokio::time::timeout(CHANNELS_FINISH, live.open.wait()).await;
        tracing::info!(event = "session.end", lease = %lease.id, user = %user, target_name = %target.name, end_reason, "session ended");
        if let Some(audit) = &live.audit {
            audit
                .emit(crate::audit::Event::SessionEnd {
                    duration_ms: live.started.map_or(0, |s| s.elapsed().as_millis() as u64),
                    bytes_from_client: live.bytes.get().0,
                    bytes_to_client: live.bytes.get().1,
                    ended: end_reason.to_string(),
                    detail: ended_by.as_ref().map(EndReason::to_string),
                })
                .await;
        }
        let dropping = std::time::Instant::now();
        let (outcome, error) = match provisioner
            .drop_with_retry(&lease)
            .instrument(tracing::info_span!("jit.drop", lease = %lease.id))
            .await
        {
            Ok(()) => {
                tracing::info!(event = "jit.account.dropped", lease = %lease.id, account = %lease.user, target_name = %target.name, "account dropped");
                (crate::audit::DropOutcome::Dropped, None)
            }
            Err(e) => {
                let error = crate::logsafe::diagnostic(&e.to_string()).to_string();
                tracing::error!(event = "jit.account.drop_failed", lease = %lease.id, account = %lease.user, target_name = %target.name, error = %error, "account NOT dropped; the reaper will retry");
                (crate::audit::DropOutcome::Failed, Some(error))
            }
        };
        if let Some(audit) = &live.audit {
            audit
                .emit(crate::audit::Event::AccountDropped {
                    outcome,
                    drop_ms: dropping.elapsed().as_millis() as u64,
                    error,
                })
                .await;
        }
        // `live.live` (the lease's registration) goes here, after the drop was tried.
        drop(live.live);
    }
}

/// Who a connection is for, as the session registry records it.
struct Who {
    identity: Identity,
    credential: Credential,
    reason: Option<String>,
    peer: SocketAddr,
}

/// Registers the session once its account exists (the mint is done), then checks it once
/// against the CRL and policies as they are now (`session::trust::recheck_new`).
fn register(
    account: &AccountSlot,
    ctx: &SshContext,
    who: &Who,
    target: &SshTarget,
) -> Option<(Registered, Lifetime)> {
    let info = {
        let slot = account.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slot.as_ref()?;
        let lease = slot.lease.as_ref()?;
        SessionInfo {
            id: lease.id.clone(),
            protocol: TargetKind::Ssh,
            identity: who.identity.clone(),
            credential: who.credential.clone(),
            target: target.name.clone(),
            requested: slot.requested.clone().unwrap_or_default(),
            reason: who.reason.clone(),
            grant: slot.grant.clone().unwrap_or_default(),
            account: lease.user.clone(),
            client: who.peer,
            since: SystemTime::now(),
            bytes: slot.bytes.clone(),
        }
    };
    let lifetime = {
        let slot = account.lock().unwrap_or_else(|p| p.into_inner());
        let live = slot.as_ref()?;
        let expires_at = live.lease.as_ref()?.expires_at;
        Lifetime::new(expires_at, who.credential.not_after, &ctx.warnings)
            .idle_after(live.idle_timeout, live.bytes.clone())
    };
    let registered = ctx.sessions.register(info);
    trust::recheck_new(&registered, &ctx.tls, &(ctx.policies)());
    ctx.locks.recheck_new(&registered);
    Some((registered, lifetime))
}

/// Writes `text` on the stderr (extended data type 1, RFC 4254 §5.2) of every open session
/// channel: OpenSSH's client prints it on its own stderr, or on the terminal of a pty session,
/// between the target's output. One short message, so russh's unbounded handle queue is fine.
async fn warn_channels(
    handle: &russh::server::Handle,
    account: &AccountSlot,
    user: &str,
    text: &str,
) {
    let channels = account
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|a| a.channels.clone())
        .unwrap_or_default();
    tracing::info!(event = "session.warning", user = %user, channels = channels.len(), message = %text, "end of session announced");
    // \r\n: a pty's terminal is in raw mode and does not add the carriage return itself.
    let line = format!("\r\n{text}\r\n");
    for channel in channels {
        let _ = handle
            .extended_data(channel, 1, bytes::Bytes::from(line.clone()))
            .await;
    }
}

fn session_error(peer: SocketAddr, result: Result<(), russh::Error>) {
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "SSH session ended with an error");
    }
}

fn handshake_timed_out(peer: SocketAddr, ctx: &SshContext) {
    tracing::info!(client = %peer, seconds = ctx.handshake_timeout.as_secs(), "SSH handshake did not finish within handshake_timeout; connection closed");
}

async fn admit(
    tcp: TcpStream,
    handshake: crate::limits::Handshake,
    ctx: &SshContext,
) -> Result<Admitted, AdmitError> {
    let mut stream = ctx
        .tls
        .acceptor()
        .accept(tcp)
        .await
        .map_err(AdmitError::Tls)?;
    let sni = stream.get_ref().1.server_name().map(str::to_string);
    let hello = preamble::read_line(&mut stream).await?;
    let reason = preamble::parse_hello(&hello)?;

    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or(&[])
        .to_vec();
    let identity = match chain.first() {
        None => Err(
            "jitgate requires a client certificate: pass --cert and --key to jitgate tunnel"
                .to_string(),
        ),
        Some(leaf) => ctx
            .tls
            .verify_client(&chain)
            .map_err(|e| format!("client certificate rejected: {e}"))
            .and_then(|()| {
                Identity::from_der(leaf, &ctx.trust_domain)
                    .map_err(|e| format!("client certificate rejected: {e}"))
            }),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(message) => return refuse(stream, message.clone(), message).await,
    };
    handshake.done();
    let Some(name) = sni else {
        let message = "no target name was sent (jitgate tunnel sends it as TLS SNI)".to_string();
        return refuse(stream, message.clone(), message).await;
    };
    let policies = (ctx.policies)();
    // A target that does not exist and one that exists but grants this person nothing are
    // refused in the same words: certificate holders learn no target names.
    let Some((target, provisioner)) = ctx.targets.get(&name) else {
        let denial = Denial::no_such_target(&identity, &name, None);
        return refuse_denied(stream, &denial, &policies, &identity, ctx).await;
    };
    // Refuse early when nothing at all would let this person in; which grant applies is
    // decided by the SSH user name, inside SSH.
    if policy::applicable_grants(&policies, &identity, &name, TargetKind::Ssh).is_empty() {
        let denial = policy::no_access(
            &identity,
            &name,
            None,
            "no grant applies to them for this target".to_string(),
        );
        return refuse_denied(stream, &denial, &policies, &identity, ctx).await;
    }
    stream
        .write_all(preamble::ok().as_bytes())
        .await
        .map_err(AdmitError::Tls)?;
    stream.flush().await.map_err(AdmitError::Tls)?;
    Ok(Admitted {
        stream,
        identity,
        credential: Credential::from_chain(&chain),
        target: target.clone(),
        provisioner: provisioner.clone(),
        reason,
    })
}

/// Sends `message` to the tunnel and closes; `detail` is what the log gets.
async fn refuse(
    mut stream: ClientStream,
    message: String,
    detail: String,
) -> Result<Admitted, AdmitError> {
    let _ = stream.write_all(preamble::error(&message).as_bytes()).await;
    let _ = stream.shutdown().await;
    Err(AdmitError::Refused(detail))
}

async fn refuse_denied(
    stream: ClientStream,
    denial: &Denial,
    policies: &PolicySet,
    identity: &Identity,
    ctx: &SshContext,
) -> Result<Admitted, AdmitError> {
    let message = refusal_text(denial, policies, identity, ctx.targets.keys());
    refuse(stream, message, denial.detail()).await
}

/// A policy refusal as one line for the user: the denial, and for a `NoAccess` what they can
/// use instead (among the SSH targets in `targets`).
pub fn refusal_text<'t>(
    denial: &Denial,
    policies: &PolicySet,
    identity: &Identity,
    targets: impl IntoIterator<Item = &'t String>,
) -> String {
    match denial {
        Denial::NoAccess { .. } => {
            let offer = policy::offer(
                policies,
                identity,
                TargetKind::Ssh,
                targets.into_iter().map(String::as_str),
            );
            format!("{denial}; {offer}")
        }
        Denial::Ambiguous { .. }
        | Denial::ReasonRequired { .. }
        | Denial::ReasonTooLong { .. }
        | Denial::ReasonNotPrintable { .. } => denial.to_string(),
    }
}
