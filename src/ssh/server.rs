//! The bastion's SSH server (russh `Handler`), one per connection, kept thin: it decides
//! with `policy::evaluate`, mints through `jit::linux`, logs in upstream, and hands every
//! channel to `ssh::channel` to splice. Replies to channel requests are sent only after the
//! target answered (RFC 4254 §5.4; russh keeps one want-reply flag per channel).

use std::collections::HashMap;
use std::sync::Arc;

use russh::server::{Auth, Handler, Msg, Session};
use russh::{client, Channel, ChannelId, ChannelOpenFailure, Disconnect, Pty, Sig};
use tracing::Instrument as _;

use super::audit::ChannelAudit;
use super::channel::{splice_session, splice_stream, SplicedChannel};
use crate::audit::Event as AuditEvent;
use crate::config::SshTarget;
use crate::control::locks::Locks;
use crate::identity::Identity;
use crate::jit::linux::{LinuxLease, LinuxProvisioner};
use crate::jit::reaper::{LiveGuard, LiveLeases};
use crate::logsafe::{diagnostic, untrusted, Untrusted};
use crate::policy::{self, AccessRequest, Denial, Grant, PolicySet, TargetKind};
use crate::session::Session as SessionRecord;
use crate::ssh_client::PinnedHost;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// What the handler tells the connection's task (`ssh::session`), in order and one way: that
/// task owns the account from the moment it exists, and drops it however the connection ends,
/// whatever state the handler is in then.
pub enum Progress {
    /// The client has done its part of the handshake (an authentication request came): from
    /// here its deadline is the mint's and the login's own, not handshake_timeout.
    Authenticated,
    /// The account exists.
    Minted(Box<Account>),
    /// Logged in upstream as the account; disconnected before the account is dropped.
    Upstream(Arc<client::Handle<PinnedHost>>),
    /// A session channel opened: a warning before the session's end goes to its stderr.
    ChannelOpened(ChannelId),
    ChannelClosed(ChannelId),
}

/// A minted account and what goes with it until it is dropped.
pub struct Account {
    pub lease: Arc<LinuxLease>,
    /// Keeps the lease registered as live until the account is dropped (or the task dies).
    pub live: LiveGuard,
    /// The session's place in `limits:` (per identity, in total), given back when the
    /// account has been dropped.
    pub permit: Option<crate::limits::SessionPermit>,
    /// Bytes relayed each way over all channels.
    pub bytes: Arc<crate::audit::Counters>,
    /// Channels and forwards whose audit has not finished: `session.end` waits for them, so it
    /// follows their `ssh.exit` and counts their bytes.
    pub open: TaskTracker,
    /// The grant's `idle_timeout`.
    pub idle_timeout: Option<std::time::Duration>,
}

pub struct BastionHandler {
    /// The connection's session: its span, its audit, what is known of it.
    pub session: SessionRecord,
    pub identity: Identity,
    pub target: Arc<SshTarget>,
    pub provisioner: Arc<LinuxProvisioner>,
    pub policies: Arc<PolicySet>,
    pub reason: Option<String>,
    pub live: LiveLeases,
    progress: mpsc::UnboundedSender<Progress>,
    /// The bastion's SSH target names, for telling a refused person what they can use.
    offer_targets: Vec<String>,
    decision: Option<Result<Grant, Denial>>,
    requested: Option<String>,
    grant: Option<Grant>,
    upstream: Option<Arc<client::Handle<PinnedHost>>>,
    channels: HashMap<ChannelId, (SplicedChannel, Arc<ChannelAudit>)>,
    locks: Locks,
    limits: Option<crate::limits::Limits>,
    bytes: Arc<crate::audit::Counters>,
    open: TaskTracker,
}

impl BastionHandler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: SessionRecord,
        identity: Identity,
        target: Arc<SshTarget>,
        provisioner: Arc<LinuxProvisioner>,
        policies: Arc<PolicySet>,
        reason: Option<String>,
        live: LiveLeases,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Self {
        BastionHandler {
            session,
            identity,
            target,
            provisioner,
            policies,
            reason,
            live,
            progress,
            offer_targets: Vec::new(),
            decision: None,
            requested: None,
            grant: None,
            upstream: None,
            channels: HashMap::new(),
            locks: Locks::default(),
            limits: None,
            bytes: Arc::default(),
            open: TaskTracker::new(),
        }
    }

    /// Tells the connection's task; if it is gone, so is the connection, and what was sent
    /// (an account) is dropped with the message: its lease stops being live and the reaper
    /// removes it.
    fn tell(&self, progress: Progress) {
        let _ = self.progress.send(progress);
    }

    /// The gateway's session limits, checked before minting.
    pub fn limited_by(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The operators' locks to check before minting.
    pub fn locked_by(mut self, locks: Locks) -> Self {
        self.locks = locks;
        self
    }

    async fn denied(&self, why: &str) {
        self.session.deny(None, why).await;
    }

    async fn emit(&self, event: AuditEvent) {
        self.session.emit(event).await;
    }

    /// The SSH target names a refusal may list (those this person's grants apply to).
    pub fn offering(mut self, targets: Vec<String>) -> Self {
        self.offer_targets = targets;
        self
    }

    /// Mints the account and logs in upstream. The error is the message for the user: which
    /// target, and the lease id the operator finds the cause under (the target's script
    /// output, its address, the admin's trouble stay in the log).
    async fn open(&mut self, grant: Grant) -> Result<(), String> {
        // No session starts that cannot be audited (audit.on_failure: fail_closed), and none
        // gets an account first.
        if let Err(message) = self.session.audit().accepting() {
            self.denied("audit log cannot be written").await;
            return Err(message);
        }
        // An operator's lock refuses the session before it has an account.
        if let Some(lock) =
            self.locks
                .refusing(&self.identity.user, grant.name(), &self.target.name)
        {
            tracing::info!(event = "access.denied", client = %self.session.client(), user = %self.identity.user, target_name = %self.target.name, lock = %lock.id, reason = %lock.describe(), "login refused: locked");
            self.denied(&lock.describe()).await;
            return Err(lock.user_message());
        }
        let permit = match self.limits.as_ref().map(|l| l.session(&self.identity.user)) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(e)) => {
                tracing::info!(event = "access.denied", client = %self.session.client(), user = %self.identity.user, target_name = %self.target.name, limit = e.key(), "login refused: limit");
                self.denied(&format!("{} reached", e.key())).await;
                return Err(e.to_string());
            }
        };
        let started = std::time::Instant::now();
        let id = self.session.id().clone();
        let live = self.live.register(&id);
        let lease = match self
            .provisioner
            .mint(id.clone(), &grant, &self.identity)
            .instrument(
                tracing::info_span!(parent: self.session.span(), "jit.mint", lease = %id, target_name = %self.target.name),
            )
            .await
        {
            Ok(lease) => Arc::new(lease),
            Err(e) => {
                drop(live);
                tracing::error!(lease = %id, target_name = %self.target.name, user = %self.identity.user, error = %diagnostic(&e.to_string()), "mint failed");
                return Err(format!(
                    "jitgate could not create your account on target {}; ask the operator \
                     (reference {id})",
                    self.target.name
                ));
            }
        };
        tracing::info!(
            event = "jit.account.created", lease = %lease.id, account = %lease.user, uid = lease.uid,
            target_name = %self.target.name, grant = grant.name(), user = %self.identity.user,
            serial = %self.identity.serial, reason = %untrusted(grant.reason().unwrap_or("")), "account created"
        );
        self.session.open(&grant, &lease.user);
        self.emit(AuditEvent::AccountCreated {
            database: None,
            mint_ms: started.elapsed().as_millis() as u64,
            expires_at: crate::audit::event::rfc3339(lease.expires_at),
        })
        .await;
        // Whatever happens next, the session's end drops this account.
        self.tell(Progress::Minted(Box::new(Account {
            lease: lease.clone(),
            live,
            permit,
            bytes: self.bytes.clone(),
            open: self.open.clone(),
            idle_timeout: grant.idle_timeout(),
        })));

        let upstream = crate::ssh_client::connect_pinned(&self.target, &lease.user, lease.key.expose())
            .instrument(tracing::info_span!(parent: self.session.span(), "upstream.login", lease = %lease.id))
            .await
            .map_err(|e| {
                tracing::error!(lease = %lease.id, target_name = %self.target.name, account = %lease.user, error = %diagnostic(&e.to_string()), "upstream login failed");
                format!(
                    "jitgate could not log in to target {} with your account; ask the operator \
                     (reference {})",
                    self.target.name, lease.id
                )
            })?;
        let upstream = Arc::new(upstream);
        self.tell(Progress::Upstream(upstream.clone()));
        self.upstream = Some(upstream);
        tracing::info!(event = "session.start", client = %self.session.client(), lease = %lease.id, account = %lease.user, user = %self.identity.user, target_name = %self.target.name, "session started");
        self.emit(AuditEvent::SessionStart {
            requested: self.requested.clone().unwrap_or_default(),
            database: None,
            deadline: crate::audit::event::rfc3339(self.session.deadline(lease.expires_at)),
        })
        .await;
        self.grant = Some(grant);
        Ok(())
    }

    /// The policy decision for the SSH user name; refusals are told at `auth_succeeded`, where
    /// a disconnect message can carry them.
    fn decide(&mut self, user: &str) -> Auth {
        let request = AccessRequest {
            identity: &self.identity,
            target: &self.target.name,
            kind: TargetKind::Ssh,
            requested: user,
            reason: self.reason.as_deref(),
        };
        self.decision = Some(
            tracing::info_span!(parent: self.session.span(), "policy")
                .in_scope(|| policy::evaluate(&self.policies, &request)),
        );
        self.requested = Some(user.to_string());
        self.session.requested(user, self.reason.as_deref());
        self.tell(Progress::Authenticated);
        Auth::Accept
    }

    fn channel(&self, id: ChannelId) -> Option<&SplicedChannel> {
        self.channels.get(&id).map(|(c, _)| c)
    }

    fn tap(&self, id: ChannelId) -> Option<&Arc<ChannelAudit>> {
        self.channels.get(&id).map(|(_, t)| t)
    }

    fn records_exec_output(&self) -> bool {
        self.grant.as_ref().is_some_and(|g| g.record_exec_output())
    }

    fn sftp_allowed(&self) -> bool {
        self.grant.as_ref().is_some_and(|g| g.sftp_allowed())
    }
}

fn reply(session: &mut Session, id: ChannelId, ok: bool) -> Result<(), russh::Error> {
    if ok {
        session.channel_success(id)
    } else {
        session.channel_failure(id)
    }
}

/// `scp` runs as an exec of `scp -t`/`scp -f` on the target (legacy protocol).
fn is_scp(command: &str) -> bool {
    let first = command.split_whitespace().next().unwrap_or("");
    first == "scp" || first.ends_with("/scp")
}

impl Handler for BastionHandler {
    type Error = russh::Error;

    /// The person was authenticated by the TLS client certificate before SSH began; `none`
    /// is accepted only here, inside that verified TLS session. The SSH user name picks the grant.
    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.decide(user))
    }

    /// Clients that never try `none` (paramiko, some libraries) offer a key: any key is fine,
    /// since it is not what authenticates the person; the certificate did.
    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.decide(user))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let outcome = match self.decision.take() {
            Some(Ok(grant)) => self.open(grant).await,
            Some(Err(denial)) => {
                tracing::info!(event = "access.denied", client = %self.session.client(), user = %self.identity.user, target_name = %self.target.name, reason = %denial.detail(), "login refused");
                self.denied(&denial.detail()).await;
                Err(super::session::refusal_text(
                    &denial,
                    &self.policies,
                    &self.identity,
                    &self.offer_targets,
                ))
            }
            None => Err("jitgate: no authentication decision was made".to_string()),
        };
        if let Err(message) = outcome {
            session.disconnect(Disconnect::ByApplication, &message, "en")?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(upstream), Some(audit), Some(meta)) =
            (&self.upstream, self.session.audited(), self.session.meta())
        else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        match upstream.channel_open_session().await {
            Ok(up) => {
                let id = channel.id();
                reply.accept().await;
                let (user, account) = (self.identity.user.clone(), up.id());
                let tap = Arc::new(ChannelAudit::new(
                    u32::from(id),
                    audit.clone(),
                    meta,
                    self.bytes.clone(),
                    self.open.token(),
                ));
                let spliced = splice_session(
                    channel,
                    up,
                    session.handle(),
                    tap.clone(),
                    move |outcome| {
                        tracing::info!(event = "ssh.exit", user = %user, channel = ?account, exit_status = ?outcome.exit_status, exit_signal = ?outcome.exit_signal, "channel closed");
                    },
                );
                self.channels.insert(id, (spliced, tap));
                self.tell(Progress::ChannelOpened(id));
            }
            Err(e) => {
                tracing::warn!(target_name = %self.target.name, error = %diagnostic(&e.to_string()), "upstream refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = u16::try_from(port_to_connect).ok().is_some_and(|port| {
            self.grant
                .as_ref()
                .is_some_and(|g| g.forward_allowed(host_to_connect, port))
        });
        tracing::info!(event = "ssh.port_forward", user = %self.identity.user, target_name = %self.target.name, destination = %untrusted(&format!("{host_to_connect}:{port_to_connect}")), allowed, "direct-tcpip requested");
        let host = host_to_connect.to_string();
        let Some(upstream) = self.upstream.as_ref().filter(|_| allowed) else {
            self.emit(AuditEvent::SshPortForward {
                host,
                port: port_to_connect,
                allowed: false,
                bytes_from_client: None,
                bytes_to_client: None,
            })
            .await;
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        match upstream
            .channel_open_direct_tcpip(
                host_to_connect,
                port_to_connect,
                originator_address,
                originator_port,
            )
            .await
        {
            Ok(up) => {
                reply.accept().await;
                let session = self.session.clone();
                let bytes = self.bytes.clone();
                let open = self.open.token();
                splice_stream(channel, up, move |from_client, to_client| async move {
                    let _open = open;
                    bytes.add(from_client, to_client);
                    session
                        .emit(AuditEvent::SshPortForward {
                            host,
                            port: port_to_connect,
                            allowed: true,
                            bytes_from_client: Some(from_client),
                            bytes_to_client: Some(to_client),
                        })
                        .await;
                });
            }
            Err(e) => {
                tracing::info!(destination = %untrusted(&format!("{host_to_connect}:{port_to_connect}")), error = %diagnostic(&e.to_string()), "upstream could not open the forward");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.remove(&channel).is_some() {
            self.tell(Progress::ChannelClosed(channel));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tap) = self.tap(channel) {
            tap.pty(term, col_width, row_height);
        }
        let ok = match self.channel(channel) {
            Some(ch) => {
                let (term, modes) = (term.to_string(), modes.to_vec());
                ch.request(move |up| async move {
                    up.request_pty(
                        true, &term, col_width, row_height, pix_width, pix_height, &modes,
                    )
                    .await
                })
                .await
            }
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The name only: values (tokens, passwords) are the user's business.
        tracing::debug!(event = "ssh.env", user = %self.identity.user, name = %untrusted(variable_name), "env");
        let ok = match self.channel(channel) {
            Some(ch) => {
                let (name, value) = (variable_name.to_string(), variable_value.to_string());
                ch.request(move |up| async move { up.set_env(true, name, value).await })
                    .await
            }
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(event = "ssh.shell", user = %self.identity.user, target_name = %self.target.name, "shell");
        if let Some(tap) = self.tap(channel).cloned() {
            // Recording starts before the target's shell does: its first prompt is in it.
            let recording = tap.record(None).await;
            self.emit(AuditEvent::SshShell {
                channel: tap.channel(),
                term: tap.term(),
                recording,
            })
            .await;
        }
        let ok = match self.channel(channel) {
            Some(ch) => {
                ch.request(|up| async move { up.request_shell(true).await })
                    .await
            }
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let allowed = self.sftp_allowed() || !is_scp(&command);
        tracing::info!(event = "ssh.exec", user = %self.identity.user, target_name = %self.target.name, command = %Untrusted::bytes(data), allowed, "exec");
        if let Some(tap) = self.tap(channel).cloned() {
            // A terminal session (`ssh -t host cmd`) is recorded like a shell; other execs
            // only when the grant asks for their output.
            let recording = if allowed && (tap.has_pty() || self.records_exec_output()) {
                tap.record(Some(&command)).await
            } else {
                None
            };
            self.emit(AuditEvent::SshExec {
                channel: tap.channel(),
                command: command.clone(),
                allowed,
                recording,
            })
            .await;
        }
        let ok = match self.channel(channel).filter(|_| allowed) {
            Some(ch) => {
                let data = data.to_vec();
                ch.request(move |up| async move { up.exec(true, data).await })
                    .await
            }
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = name != "sftp" || self.sftp_allowed();
        tracing::info!(event = "ssh.subsystem", user = %self.identity.user, target_name = %self.target.name, subsystem = %untrusted(name), allowed, "subsystem");
        if let Some(tap) = self.tap(channel).cloned() {
            if allowed && name == "sftp" {
                tap.sftp();
            }
            self.emit(AuditEvent::SshSubsystem {
                channel: tap.channel(),
                name: name.to_string(),
                allowed,
            })
            .await;
        }
        let ok = match self.channel(channel).filter(|_| allowed) {
            Some(ch) => {
                let name = name.to_string();
                ch.request(move |up| async move { up.request_subsystem(true, name).await })
                    .await
            }
            None => false,
        };
        reply(session, channel, ok)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tap) = self.tap(channel) {
            tap.resize(col_width, row_height);
        }
        if let Some(ch) = self.channel(channel) {
            let _ = ch
                .upstream()
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channel(channel) {
            let _ = ch.upstream().signal(signal).await;
        }
        Ok(())
    }

    /// X11 forwarding is not offered: it would open the user's display to the target.
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// Agent forwarding is refused: the user's keys must not reach the target.
    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    /// Remote forwarding (`ssh -R`) is refused: the target must not open ports back to the client.
    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
