//! One bastion connection, start to end: TLS with the client certificate, the tunnel's
//! preamble (target by SNI, refusals as one line), the SSH server inside, and — when the
//! connection ends, its lease expires or the gateway stops — the account's removal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::preamble;
use super::server::{Account, BastionHandler, Progress};
use crate::config::SshTarget;
use crate::control::locks::Locks;
use crate::identity::Identity;
use crate::jit::linux::LinuxProvisioner;
use crate::jit::reaper::LiveLeases;
use crate::policy::{self, Denial, PolicySet, TargetKind};
use crate::session::lifetime::{Event, Lifetime};
use crate::session::{trust, Credential, EndReason, Ending, Registered, Session, Sessions};
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
    let session = Session::accept(TargetKind::Ssh, peer, ctx.audit.clone());
    let span = session.span().clone();
    serve_connection(tcp, session, handshake, &ctx)
        .instrument(span)
        .await;
}

/// What the connection's task has heard from the handler (`Progress`): the account it owns
/// once minted, and what it needs to end the session.
#[derive(Default)]
struct Heard {
    authenticated: bool,
    account: Option<Box<Account>>,
    upstream: Option<Arc<russh::client::Handle<crate::ssh_client::PinnedHost>>>,
    channels: Vec<russh::ChannelId>,
}

impl Heard {
    /// Takes one message in; true when it was the account.
    fn take(&mut self, progress: Progress) -> bool {
        match progress {
            Progress::Authenticated => self.authenticated = true,
            Progress::Minted(account) => {
                self.account = Some(account);
                return true;
            }
            Progress::Upstream(upstream) => self.upstream = Some(upstream),
            Progress::ChannelOpened(id) => self.channels.push(id),
            Progress::ChannelClosed(id) => self.channels.retain(|c| *c != id),
        }
        false
    }
}

async fn serve_connection(
    tcp: TcpStream,
    session: Session,
    handshake: crate::limits::Handshake,
    ctx: &SshContext,
) {
    let peer = session.client();
    let _ = tcp.set_nodelay(true);
    // handshake_timeout covers the client's whole part up to a started session: TLS, the
    // preamble, then SSH's version exchange, key exchange and authentication request (as
    // OpenSSH's LoginGraceTime does), so a client that goes silent half-way is not held.
    let deadline = tokio::time::Instant::now() + ctx.handshake_timeout;
    let admitted = match tokio::time::timeout(
        ctx.handshake_timeout,
        admit(tcp, handshake, ctx, &session),
    )
    .await
    {
        Err(_) => return tracing::info!(client = %peer, "bastion handshake timed out"),
        Ok(Err(AdmitError::Refused(reason))) => {
            tracing::info!(event = "access.denied", client = %peer, reason = %reason, "bastion connection refused");
            session.deny(None, &reason).await;
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
        target,
        provisioner,
        reason,
    } = admitted;
    let user = identity.user.clone();
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let handler = BastionHandler::new(
        session.clone(),
        identity,
        target.clone(),
        provisioner.clone(),
        (ctx.policies)(),
        reason,
        ctx.live.clone(),
        progress_tx,
    )
    .offering(ctx.targets.keys().cloned().collect())
    .locked_by(ctx.locks.clone())
    .limited_by(ctx.limits.clone());
    // run_stream itself waits for the client's version line.
    let Ok(started) = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(ctx.russh.clone(), stream, handler),
    )
    .await
    else {
        return handshake_timed_out(peer, ctx);
    };
    let mut heard = Heard::default();
    let mut ended_by: Option<EndReason> = None;
    match started {
        Ok(running) => {
            let handle = running.handle();
            tokio::pin!(running);
            // Until the account exists the handler's news and the handshake deadline drive
            // this loop; from then on the session is registered and its lifetime (deadline,
            // warnings, the switch a trust change flips) does too.
            let mut live: Option<(Registered, Lifetime)> = None;
            let mut listening = true;
            let why = loop {
                let event = tokio::select! {
                    biased;
                    news = progress.recv(), if listening => {
                        match news {
                            Some(news) => {
                                if heard.take(news) && live.is_none() {
                                    live = register(&heard, &session, ctx);
                                }
                            }
                            None => listening = false,
                        }
                        continue;
                    }
                    result = &mut running => {
                        session_error(peer, result);
                        break None;
                    }
                    // Before authentication there may be no SSH transport to say goodbye on.
                    () = tokio::time::sleep_until(deadline), if !heard.authenticated => {
                        handshake_timed_out(peer, ctx);
                        break None;
                    }
                    event = async {
                        match &mut live {
                            Some((registered, lifetime)) => {
                                lifetime.next(registered.switch(), &ctx.shutdown).await
                            }
                            None => {
                                ctx.shutdown.cancelled().await;
                                Event::End(EndReason::Shutdown)
                            }
                        }
                    } => event,
                };
                match event {
                    Event::Warning(text) => {
                        warn_channels(&handle, &heard.channels, &user, &text).await
                    }
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
    // What the handler said last (an account minted as the connection died) is ours too.
    while let Ok(news) = progress.try_recv() {
        heard.take(news);
    }

    let Some(account) = heard.account else {
        return;
    };
    let _releasing = provisioner.releasing(&account.lease);
    if let Some(upstream) = heard.upstream {
        let _ = upstream
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    // The channels' last events (ssh.exit, forwards' byte counts) come before session.end.
    account.open.close();
    let _ = tokio::time::timeout(CHANNELS_FINISH, account.open.wait()).await;
    session
        .end(Ending {
            reason: ended_by.as_ref().map_or("closed", EndReason::as_str),
            detail: ended_by.as_ref().map(EndReason::to_string),
            bytes: account.bytes.get(),
        })
        .await;
    session
        .drop_account(provisioner.as_ref(), &*account.lease)
        .await;
    // The lease's registration as live (and the session's place in `limits:`) goes here,
    // after the drop was tried.
    drop(account);
}

/// Registers the session once its account exists (the mint is done), then checks it once
/// against the CRL and policies as they are now (`session::trust::recheck_new`).
fn register(heard: &Heard, session: &Session, ctx: &SshContext) -> Option<(Registered, Lifetime)> {
    let account = heard.account.as_ref()?;
    let registered = session.register(&ctx.sessions, account.bytes.clone())?;
    let lifetime = Lifetime::new(
        account.lease.expires_at,
        registered.info().credential.not_after,
        &ctx.warnings,
    )
    .idle_after(account.idle_timeout, account.bytes.clone());
    trust::recheck_new(&registered, &ctx.tls, &(ctx.policies)());
    ctx.locks.recheck_new(&registered);
    Some((registered, lifetime))
}

/// Writes `text` on the stderr (extended data type 1, RFC 4254 §5.2) of every open session
/// channel: OpenSSH's client prints it on its own stderr, or on the terminal of a pty session,
/// between the target's output. One short message, so russh's unbounded handle queue is fine.
async fn warn_channels(
    handle: &russh::server::Handle,
    channels: &[russh::ChannelId],
    user: &str,
    text: &str,
) {
    tracing::info!(event = "session.warning", user = %user, channels = channels.len(), message = %text, "end of session announced");
    // \r\n: a pty's terminal is in raw mode and does not add the carriage return itself.
    let line = format!("\r\n{text}\r\n");
    for channel in channels {
        let _ = handle
            .extended_data(*channel, 1, bytes::Bytes::from(line.clone()))
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
    session: &Session,
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
    session.reason(reason.as_deref());

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
    session.identified(&identity, Credential::from_chain(&chain));
    let Some(name) = sni else {
        let message = "no target name was sent (jitgate tunnel sends it as TLS SNI)".to_string();
        return refuse(stream, message.clone(), message).await;
    };
    session.target(&name);
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
