//! `jitgate serve`: loads config, policies and TLS once, starts the listeners and the reaper,
//! reloads policies on SIGHUP, and on SIGINT/SIGTERM stops accepting, ends every session and
//! drops every account before exiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Target};
use crate::jit::postgres::PgProvisioner;
use crate::jit::reaper::{reap_postgres, LiveLeases};
use crate::pg::cancel::CancelRegistry;
use crate::pg::session::PgContext;
use crate::pg::startup::ALPN_POSTGRESQL;
use crate::policy::{PolicyError, PolicySet};
use crate::tls::{ServerTls, ServerTlsFiles, TlsError};

/// How long shutdown waits for sessions to end and their accounts to be dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
    #[error("no listener configured: set listen.postgres in the config")]
    NoListener,
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// The current policy set; replaced whole on a successful reload.
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
}

impl PolicyStore {
    pub fn load(dir: &Path) -> Result<Arc<Self>, PolicyError> {
        let set = PolicySet::load_dir(dir)?;
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(set)),
        }))
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the directory again; an invalid set is refused and the old one stays.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let set = PolicySet::load_dir(&self.dir)?;
        let n = set.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(n)
    }
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
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
    for (name, target) in &config.targets {
        match target {
            Target::Postgres(t) => {
                let provisioner = PgProvisioner::new(t.clone(), config.instance_id.clone());
                targets.insert(name.clone(), (Arc::new(t.clone()), provisioner));
            }
            // SSH targets are served by the SSH listener
            Target::Ssh(_) => {}
        }
    }

    let shutdown = CancellationToken::new();
    let live = LiveLeases::default();
    let sessions = TaskTracker::new();
    let policy_view = policies.clone();
    let ctx = Arc::new(PgContext {
        instance_id: config.instance_id.clone(),
        trust_domain: config.trust_domain.clone(),
        handshake_timeout: config.handshake_timeout,
        tls,
        policies: Arc::new(move || policy_view.current()),
        targets,
        cancels: CancelRegistry::default(),
        live: live.clone(),
        shutdown: shutdown.clone(),
    });

    // Leftovers of a crashed run of this instance go before anyone connects.
    reap_all(&ctx).await;
    let reaper = tokio::spawn(reap_loop(
        ctx.clone(),
        config.reap_interval,
        shutdown.clone(),
    ));

    let addr = config.listen.postgres.ok_or(ServeError::NoListener)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    tracing::info!(postgres = %local, instance = %config.instance_id, "jitgate listening");

    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signal)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    sessions.spawn(crate::pg::session::handle(tcp, peer, ctx.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = hangup.recv() => match policies.reload() {
                Ok(n) => tracing::info!(grants = n, "policies reloaded"),
                Err(e) => tracing::error!(error = %e, "policy reload refused; the previous policies stay in force"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    tracing::info!(
        sessions = live.len(),
        "shutting down: ending sessions and dropping their accounts"
    );
    drop(listener);
    shutdown.cancel();
    sessions.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
        .await
        .is_err()
    {
        tracing::error!(
            "sessions did not end in time; the reaper will remove their accounts at next start"
        );
    }
    reaper.abort();
    tracing::info!("jitgate stopped");
    Ok(())
}

async fn reap_loop(ctx: Arc<PgContext>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => reap_all(&ctx).await,
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn reap_all(ctx: &PgContext) {
    for (name, (_, provisioner)) in &ctx.targets {
        match reap_postgres(provisioner, &ctx.instance_id, |role| {
            ctx.live.contains(&role.marker.lease)
        })
        .await
        {
            Ok(report) if report.failed.is_empty() => {
                tracing::debug!(target_name = %name, dropped = report.dropped.len(), "reaper pass")
            }
            Ok(report) => {
                tracing::error!(target_name = %name, failed = ?report.failed, "reaper could not drop some accounts")
            }
            Err(e) => tracing::error!(target_name = %name, error = %e, "reaper pass failed"),
        }
    }
}
