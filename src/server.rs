//! `jitgate serve`: loads config, policies and TLS once, starts the listeners and the reaper,
//! reloads policies on SIGHUP, and on SIGINT/SIGTERM stops accepting, ends every session and
//! drops every account before exiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event, Health, OnFailure};
use crate::config::{Config, Target};
use crate::control::locks::Locks;
use crate::control::socket::ControlSocket;
use crate::jit::linux::{LinuxError, LinuxProvisioner};
use crate::jit::liveness::{Liveness, Release};
use crate::jit::postgres::PgProvisioner;
use crate::jit::reaper::{reap, LiveLeases, ReapReport};
use crate::jit::{Managed, Provisioner};
use crate::limits::{Limits, Throttled};
use crate::pg::cancel::{CancelRegistry, PeerRouter};
use crate::pg::session::PgContext;
use crate::pg::startup::ALPN_POSTGRESQL;
use crate::policy::{PolicyError, PolicySet, PolicyStore, TargetKind};
use crate::session::{trust, EndReason, Sessions};
use crate::ssh::hostkey::{load_or_create_host_key, HostKeyError};
use crate::ssh::session::{russh_config, SshContext};
use crate::tls::{ServerTls, ServerTlsFiles, TlsError};

/// The locks' file in `state_dir`.
pub const LOCKS_FILE: &str = "locks.json";

/// How long shutdown waits for sessions to end and their accounts to be dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How often the trust watcher looks at the CRL file: a revocation ends live sessions within
/// this plus the time the session's own goodbye takes (well under 1 s in the tests).
const TRUST_CHECK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("policies: {0}")]
    Policy(#[from] PolicyError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("peers: {0}")]
    Peers(String),
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("no listener configured: set listen.postgres and/or listen.ssh in the config")]
    NoListener,
    #[error("SSH target: {0}")]
    SshTarget(#[from] LinuxError),
    #[error("SSH host key: {0}")]
    HostKey(#[from] HostKeyError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("audit: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::socket::SocketError),
    #[error("locks: {0}")]
    Locks(#[from] crate::control::locks::LockError),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The addresses the gateway listens on, handed to `serve_until`'s `on_listening`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub postgres: Option<std::net::SocketAddr>,
    pub ssh: Option<std::net::SocketAddr>,
}

/// Runs the gateway until SIGINT or SIGTERM (see the module doc).
pub async fn serve(config: Config) -> Result<(), ServeError> {
    serve_until(config, CancellationToken::new(), |_| {}).await
}

/// `serve`, which also stops (the same way) when `stop` is cancelled, and calls `on_listening`
/// once both listeners are bound and the signal handlers installed — from then on a signal or
/// `stop` is never missed. For embedding the gateway (`jitgate demo`).
pub async fn serve_until(
    config: Config,
    stop: CancellationToken,
    on_listening: impl FnOnce(Listening),
) -> Result<(), ServeError> {
    // The control socket first: a second gateway started with this config (and so the same
    // locks file) stops here, before it touches anything.
    let mut control = ControlSocket::bind(&config.control_socket).await?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| ServeError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let locks = Locks::open(&config.state_dir.join(LOCKS_FILE))?;
    tracing::info!(socket = %control.path().display(), locks = locks.list().len(), "control socket listening");
    // The audit log next: under fail_closed no session may start without it, and a
    // directory that cannot be opened is the operator's to fix before anyone connects.
    let (audit, audit_task) = Audit::start(&config.audit, &config.instance_id)?;
    tracing::info!(dir = %config.audit.dir.display(), on_failure = ?config.audit.on_failure, "audit log open");
    let policies = PolicyStore::load(&config.policy_dir)?;
    tracing::info!(grants = policies.current().len(), dir = %config.policy_dir.display(), "policies loaded");
    let tls = Arc::new(ServerTls::load(
        ServerTlsFiles {
            ca: config.tls.ca.clone(),
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
            crl: config.tls.crl.clone(),
        },
        vec![ALPN_POSTGRESQL.to_vec()],
    )?);

    let mut targets = HashMap::new();
    let mut ssh_targets = HashMap::new();
    for (name, target) in &config.targets {
        match target {
            Target::Postgres(t) => {
                let provisioner = PgProvisioner::with_concurrency(
                    t.clone(),
                    config.instance_id.clone(),
                    config.limits.max_mints_per_target,
                );
                targets.insert(name.clone(), (Arc::new(t.clone()), provisioner));
            }
            Target::Ssh(t) => {
                let provisioner = LinuxProvisioner::with_concurrency(
                    t.clone(),
                    config.instance_id.clone(),
                    config.limits.max_mints_per_target,
                )?;
                ssh_targets.insert(name.clone(), (Arc::new(t.clone()), provisioner));
            }
        }
    }

    // This instance's liveness lock on every target, held for as long as it runs: others
    // reap its accounts at once when it is gone, and the SSH targets' watchdogs remove them
    // if it never comes back. Mints wait a little for it (see `attach_liveness`).
    let release = Release::default();
    let mut holders = Vec::new();
    for (_, provisioner) in targets.values() {
        let (held, liveness) = Liveness::channel();
        provisioner.attach_liveness(liveness);
        holders.push(tokio::spawn(
            provisioner.clone().hold_liveness(held, release.clone()),
        ));
    }
    for (_, provisioner) in ssh_targets.values() {
        let (held, liveness) = Liveness::channel();
        provisioner.attach_liveness(liveness);
        holders.push(tokio::spawn(provisioner.clone().hold_liveness(
            config.watchdog_grace,
            held,
            release.clone(),
        )));
    }

    let shutdown = CancellationToken::new();
    let limits = Limits::new(config.limits.clone());
    let live = LiveLeases::default();
    let live_sessions = Sessions::default();
    let sessions = TaskTracker::new();
    let policy_view = policies.clone();
    let current_policies: Arc<dyn Fn() -> Arc<PolicySet> + Send + Sync> =
        Arc::new(move || policy_view.current());
    let ctx = Arc::new(PgContext {
        instance_id: config.instance_id.clone(),
        trust_domain: config.trust_domain.clone(),
        handshake_timeout: config.handshake_timeout,
        tls,
        policies: current_policies.clone(),
        targets,
        cancels: match &config.peering {
            None => CancelRegistry::default(),
            Some(peering) => CancelRegistry::with_peers(
                PeerRouter::new(peering, &config.tls.ca, &config.tls.cert, &config.tls.key)
                    .map_err(ServeError::Peers)?,
            ),
        },
        live: live.clone(),
        sessions: live_sessions.clone(),
        locks: locks.clone(),
        warnings: config.session_warnings.clone(),
        audit: audit.clone(),
        limits: limits.clone(),
        shutdown: shutdown.clone(),
    });
    let ssh_ctx = match config.listen.ssh {
        Some(_) => {
            let host_key = load_or_create_host_key(&config.ssh_host_key)?;
            let ssh_tls = Arc::new(ServerTls::load(
                ServerTlsFiles {
                    ca: config.tls.ca.clone(),
                    cert: config.tls.cert.clone(),
                    key: config.tls.key.clone(),
                    crl: config.tls.crl.clone(),
                },
                Vec::new(),
            )?);
            Some(Arc::new(SshContext {
                trust_domain: config.trust_domain.clone(),
                handshake_timeout: config.handshake_timeout,
                tls: ssh_tls,
                policies: current_policies.clone(),
                targets: ssh_targets,
                russh: Arc::new(russh_config(host_key)),
                live: live.clone(),
                sessions: live_sessions.clone(),
                locks: locks.clone(),
                warnings: config.session_warnings.clone(),
                audit: audit.clone(),
                limits: limits.clone(),
                shutdown: shutdown.clone(),
            }))
        }
        None => None,
    };

    // The doctor's read-only checks, in the background: they log what a target still needs,
    // and never hold up (or stop) the gateway.
    let doctor_stop = shutdown.clone();
    let doctor = crate::doctor::warn_at_start(config.clone(), policies.current());
    tokio::spawn(async move {
        tokio::select! {
            () = doctor => {}
            () = doctor_stop.cancelled() => {}
        }
    });

    // OpenTelemetry, if an endpoint is configured: before the first session, so that every
    // session has its trace.
    let telemetry = {
        let (sessions, leases) = (live_sessions.clone(), live.clone());
        crate::telemetry::start(
            &config.telemetry,
            &config.instance_id,
            crate::telemetry::Gauges {
                sessions: Arc::new(move || sessions.len() as u64),
                accounts: Arc::new(move || leases.len() as u64),
            },
        )?
    };

    // Leftovers of a crashed run of this instance are reaped by the loop's first pass, which
    // starts now and runs beside the listeners.
    let reaper = tokio::spawn(reap_loop(
        ctx.clone(),
        ssh_ctx.clone(),
        config.reap_interval,
        shutdown.clone(),
    ));
    let mut watched = vec![(TargetKind::Postgres, ctx.tls.clone())];
    if let Some(ssh) = &ssh_ctx {
        watched.push((TargetKind::Ssh, ssh.tls.clone()));
    }
    let watcher = tokio::spawn(watch_crl(live_sessions.clone(), watched, shutdown.clone()));
    let control_task =
        tokio::spawn(control.serve(live_sessions.clone(), locks.clone(), shutdown.clone()));
    let audit_watch = tokio::spawn(watch_audit(
        audit.clone(),
        live_sessions.clone(),
        shutdown.clone(),
    ));

    if config.listen.postgres.is_none() && config.listen.ssh.is_none() {
        return Err(ServeError::NoListener);
    }
    let pg_listener = bind(config.listen.postgres).await?;
    let ssh_listener = bind(config.listen.ssh).await?;
    for (kind, listener) in [("postgres", &pg_listener), ("ssh", &ssh_listener)] {
        if let Some(listener) = listener {
            let local = listener.local_addr().map_err(|source| ServeError::Listen {
                addr: kind.into(),
                source,
            })?;
            tracing::info!(protocol = kind, addr = %local, instance = %config.instance_id, "jitgate listening");
        }
    }

    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
    on_listening(Listening {
        postgres: local(&pg_listener),
        ssh: local(&ssh_listener),
    });
    loop {
        tokio::select! {
            accepted = accept(&pg_listener) => match accepted {
                Ok((tcp, peer)) => if let Some(handshake) = admit_tcp(&limits, &tcp, peer) {
                    sessions.spawn(crate::pg::session::handle(tcp, peer, handshake, ctx.clone()));
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept(&ssh_listener) => match (accepted, &ssh_ctx) {
                (Ok((tcp, peer)), Some(ssh_ctx)) => if let Some(handshake) = admit_tcp(&limits, &tcp, peer) {
                    sessions.spawn(crate::ssh::session::handle(tcp, peer, handshake, ssh_ctx.clone()));
                }
                (Ok(_), None) => {}
                (Err(e), _) => accept_failed(e).await,
            },
            _ = hangup.recv() => match policies.reload() {
                Ok(n) => {
                    // Sessions that relied on a grant the new set no longer gives end now.
                    let ended = trust::recheck_policies(&live_sessions, &policies.current());
                    tracing::info!(grants = n, sessions_ended = ended, "policies reloaded");
                }
                Err(e) => tracing::error!(error = %e, "policy reload refused; the previous policies stay in force"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = stop.cancelled() => break,
        }
    }

    tracing::info!(
        sessions = live.len(),
        "shutting down: ending sessions and dropping their accounts"
    );
    drop(pg_listener);
    drop(ssh_listener);
    shutdown.cancel();
    sessions.close();
    let ended = tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
        .await
        .is_ok();
    if !ended {
        tracing::error!(
            "sessions did not end in time; the reaper will remove their accounts at next start"
        );
    }
    reaper.abort();
    // Clean: the SSH watchdogs stand down at once if their target shows no account of this
    // instance; otherwise they wait their grace and remove what is left.
    release.release(ended && live.is_empty());
    for holder in holders {
        let _ = tokio::time::timeout(Duration::from_secs(15), holder).await;
    }
    watcher.abort();
    audit_watch.abort();
    control_task.abort();
    drop(control);
    // Every session's last events are queued by now: write them before exiting.
    audit.flush().await;
    drop((ctx, ssh_ctx, audit));
    let _ = tokio::time::timeout(Duration::from_secs(5), audit_task).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    tracing::info!("jitgate stopped");
    Ok(())
}

async fn bind(addr: Option<std::net::SocketAddr>) -> Result<Option<TcpListener>, ServeError> {
    match addr {
        None => Ok(None),
        Some(addr) => {
            TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|source| ServeError::Listen {
                    addr: addr.to_string(),
                    source,
                })
        }
    }
}

/// Accepts on a listener that may not be configured (then it never yields).
async fn accept(
    listener: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A new client connection: TCP keepalive on, and counted against its source address; a
/// source past `limits:` has the connection closed unanswered (logged once a minute).
fn admit_tcp(
    limits: &Limits,
    tcp: &tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<crate::limits::Handshake> {
    if let Err(e) = crate::limits::keepalive(tcp, limits.config().tcp_keepalive) {
        tracing::debug!(client = %peer, error = %e, "TCP keepalive could not be set");
    }
    match limits.handshake(peer.ip()) {
        Ok(handshake) => Some(handshake),
        Err(throttled) => {
            if limits.first_throttle_this_minute(peer.ip()) {
                let why = match throttled {
                    Throttled::Handshakes(n) => format!("{n} handshakes from it are in progress (limits.max_handshakes_per_source)"),
                    Throttled::Failures(n) => format!("{n} of its handshakes failed in the last minute (limits.max_failed_handshakes_per_minute)"),
                };
                tracing::warn!(event = "limits.throttled", client = %peer.ip(), why = %why, "connections from this address are closed unanswered for now; logged once a minute");
            }
            None
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Looks at the CRL file every `TRUST_CHECK_INTERVAL` (through each listener's `ServerTls`);
/// whenever a new CRL took effect, checks every live session's certificate against it and
/// ends those it refuses. The checks (a signature verification each) run on a blocking
/// thread, so thousands of sessions do not hold up the runtime.
async fn watch_crl(
    sessions: Sessions,
    watched: Vec<(TargetKind, Arc<ServerTls>)>,
    shutdown: CancellationToken,
) {
    let mut seen: Vec<u64> = watched.iter().map(|(_, tls)| tls.refresh_crl()).collect();
    let mut tick = tokio::time::interval(TRUST_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let mut changed = false;
        for ((_, tls), seen) in watched.iter().zip(seen.iter_mut()) {
            let generation = tls.refresh_crl();
            changed |= generation != *seen;
            *seen = generation;
        }
        if !changed || sessions.is_empty() {
            continue;
        }
        let (sessions, watched) = (sessions.clone(), watched.clone());
        let checked = tokio::task::spawn_blocking(move || {
            trust::recheck_certificates(&sessions, |kind| {
                watched
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, tls)| &**tls)
            })
        })
        .await;
        match checked {
            Ok(ended) => tracing::info!(
                sessions_ended = ended,
                "live sessions checked against the new CRL"
            ),
            Err(e) => {
                tracing::error!(error = %e, "checking live sessions against the new CRL failed")
            }
        }
    }
}

/// Under `audit.on_failure: fail_closed`, ends every live session as soon as the audit log
/// cannot be written (new sessions are refused at login by `Audit::accepting`).
async fn watch_audit(audit: Audit, sessions: Sessions, shutdown: CancellationToken) {
    if audit.on_failure() != OnFailure::FailClosed {
        return;
    }
    let mut health = audit.health();
    loop {
        if let Health::Failing(why) = &*health.borrow_and_update() {
            let ended = sessions.end_where(|_| Some(EndReason::AuditUnavailable));
            if !ended.is_empty() {
                tracing::error!(sessions_ended = ended.len(), error = %why, "audit log cannot be written: open sessions ended (audit.on_failure: fail_closed)");
            }
        }
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// The reaper: a pass at start-up, then one every `every`. The start-up pass does not hold up
/// the listeners: sessions minted meanwhile are live, so it never touches them, and a target
/// that does not answer must not keep everyone else out.
async fn reap_loop(
    ctx: Arc<PgContext>,
    ssh: Option<Arc<SshContext>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let faults = TargetFaults::default();
    loop {
        tokio::select! {
            () = reap_all(&ctx, ssh.as_ref(), &faults) => {}
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Longest one target's reaper pass may take; a pass cut short is tried again next interval.
const REAP_PASS_DEADLINE: Duration = Duration::from_secs(60);

/// The targets whose last reaper pass failed, and why: a fault is logged when it starts and
/// when it clears, not once per interval while it lasts.
#[derive(Default)]
struct TargetFaults(std::sync::Mutex<HashMap<String, String>>);

impl TargetFaults {
    fn record(&self, target: &str, outcome: Result<ReapReport, String>) {
        let mut faults = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(report) => {
                if faults.remove(target).is_some() {
                    tracing::info!(target_name = %target, "target answers the reaper again");
                }
                log_reap(target, report);
            }
            Err(e) => {
                let e = crate::logsafe::diagnostic(&e).to_string();
                if faults.insert(target.to_string(), e.clone()).is_none() {
                    tracing::error!(target_name = %target, error = %e, "reaper pass failed; retried every reap_interval, logged again when the target answers");
                } else {
                    tracing::debug!(target_name = %target, error = %e, "reaper pass failed again");
                }
            }
        }
    }
}

/// One pass over every target, each on its own (a silent one holds up none of the others),
/// each within `REAP_PASS_DEADLINE`.
async fn reap_all(ctx: &Arc<PgContext>, ssh: Option<&Arc<SshContext>>, faults: &TargetFaults) {
    let mut passes = tokio::task::JoinSet::new();
    for (name, (_, provisioner)) in &ctx.targets {
        passes.spawn(reap_target(ctx.clone(), name.clone(), provisioner.clone()));
    }
    for (name, (_, provisioner)) in ssh.map(|s| &s.targets).into_iter().flatten() {
        passes.spawn(reap_target(ctx.clone(), name.clone(), provisioner.clone()));
    }
    while let Some(done) = passes.join_next().await {
        if let Ok((name, report)) = done {
            faults.record(&name, report);
        }
    }
}

/// One target's pass within `REAP_PASS_DEADLINE`, its reaped accounts audited.
async fn reap_target<P: Provisioner>(
    ctx: Arc<PgContext>,
    name: String,
    provisioner: Arc<P>,
) -> (String, Result<ReapReport, String>) {
    let pass = reap(&*provisioner, &ctx.instance_id, |account| {
        ctx.live.contains(&account.marker().lease)
    });
    let report = match tokio::time::timeout(REAP_PASS_DEADLINE, pass).await {
        Ok(report) => report.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer within {}s",
            REAP_PASS_DEADLINE.as_secs()
        )),
    };
    audit_reaped(&ctx.audit, &name, &report).await;
    (name, report)
}

async fn audit_reaped<E>(audit: &Audit, target: &str, report: &Result<ReapReport, E>) {
    for r in report.iter().flat_map(|r| &r.reaped) {
        audit
            .emit(Event::AccountReaped {
                target: target.to_string(),
                account: r.account.clone(),
                lease: r.lease.clone(),
                owner_instance: r.owner_instance.clone(),
                why: r.why.clone(),
            })
            .await;
    }
}

fn log_reap(target: &str, report: ReapReport) {
    if report.failed.is_empty() {
        tracing::debug!(target_name = %target, dropped = report.dropped.len(), "reaper pass")
    } else {
        tracing::error!(target_name = %target, failed = ?report.failed, "reaper could not drop some accounts")
    }
}
