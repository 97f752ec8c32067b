//! Session audit: typed events (`event`), the hash-chained event log and its writer task
//! (`log`), decoders that turn a copy of the relayed bytes into events (`pg` for PostgreSQL,
//! `sftp` for SFTP), terminal recordings (`recording`, asciicast v2), and review
//! (`review` for `jitgate audit sessions|show|replay|export`, `verify` for the chain).
//!
//! Every session gets a [`SessionAudit`] once it knows who and where it is; everything it
//! records goes through [`SessionAudit::emit`]. Nothing here waits on the disk: events go to
//! the writer through a bounded channel (a session only waits when the writer is a full
//! queue behind, which keeps the log complete rather than fast), and the writer reports
//! whether it can write on [`Audit::health`]. What a failure means is the gateway's choice
//! (`audit.on_failure`): `fail_closed` refuses new sessions and ends open ones
//! (`server` watches the health), `fail_open` only logs.

pub mod event;
pub mod log;
pub mod pg;
pub mod recording;
pub mod review;
pub mod sftp;
pub mod store;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};

pub use event::{Body, DropOutcome, Event, SessionMeta};
pub use log::Health;

/// Events queued for the writer before a session has to wait for it.
const QUEUE: usize = 16 * 1024;

/// What a failing audit log means for sessions (`audit.on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Refuse new sessions and end open ones while events cannot be written.
    #[default]
    FailClosed,
    /// Keep serving; the failure is logged.
    FailOpen,
}

/// The `audit:` section of the config, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Where the event log and recordings are written (`audit.dir`).
    pub dir: PathBuf,
    pub on_failure: OnFailure,
    /// `audit.postgres`: a database the lines and recordings are also shipped to, shared by
    /// replicas (each writes its own chain).
    pub postgres: Option<crate::config::PgTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit directory {dir}: {source}")]
    Open { dir: String, source: std::io::Error },
    #[error(
        "audit directory {dir} is in use by another gateway with instance_id {instance} \
         (each instance writes its own chain; give each replica its own instance_id)"
    )]
    InUse { dir: String, instance: String },
}

/// The gateway's audit: cheap to clone, all clones feed one writer.
#[derive(Clone)]
pub struct Audit {
    /// Flush requests; the writer ends once every clone of this is gone.
    tx: mpsc::Sender<log::Msg>,
    queue: Arc<log::Queue>,
    health: watch::Receiver<Health>,
    on_failure: OnFailure,
    dir: PathBuf,
    /// Held for the process's life: one writer per instance and directory.
    _lock: Arc<std::fs::File>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("dir", &self.dir).finish()
    }
}

impl Audit {
    /// Opens the log in `config.dir` for `instance` and starts the writer task; the returned
    /// handle ends once every [`Audit`] clone is gone and the last events are on disk.
    pub fn start(
        config: &AuditConfig,
        instance: &str,
    ) -> Result<(Audit, tokio::task::JoinHandle<()>), AuditError> {
        let dir = &config.dir;
        let open_err = |source| AuditError::Open {
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(open_err)?;
        std::fs::create_dir_all(dir.join(recording::DIR)).map_err(open_err)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!(".lock-{instance}")))
            .map_err(open_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::InUse {
                    dir: dir.display().to_string(),
                    instance: instance.to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let writer = log::Writer::open(dir, instance).map_err(open_err)?;
        let (tx, rx) = mpsc::channel(8);
        let queue = Arc::new(log::Queue::default());
        let (health_tx, files_health) = watch::channel(Health::Ok);
        let task = tokio::spawn(log::run(writer, queue.clone(), rx, health_tx));
        let health = match &config.postgres {
            None => files_health,
            Some(store) => {
                let (store_tx, store_health) = watch::channel(Health::Ok);
                tokio::spawn(store::ship(
                    store.clone(),
                    dir.clone(),
                    instance.to_string(),
                    store_tx,
                ));
                both(files_health, store_health)
            }
        };
        Ok((
            Audit {
                tx,
                queue,
                health,
                on_failure: config.on_failure,
                dir: dir.clone(),
                _lock: Arc::new(lock),
            },
            task,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Whether a new session may start: under `fail_closed` not while the log cannot be
    /// written; the error is what the user is told.
    pub fn accepting(&self) -> Result<(), String> {
        match (&*self.health.borrow(), self.on_failure) {
            (Health::Failing(_), OnFailure::FailClosed) => Err(
                "jitgate cannot write its audit log, so it accepts no sessions now; ask the \
                 operator"
                    .to_string(),
            ),
            _ => Ok(()),
        }
    }

    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Queues an event that belongs to no session (a refusal before login, the reaper's).
    pub async fn emit(&self, body: impl Into<Body>) {
        self.send(None, None, body.into()).await;
    }

    async fn send(
        &self,
        session: Option<Arc<str>>,
        labels: Option<&crate::telemetry::Labels>,
        body: Body,
    ) {
        crate::telemetry::observe(&body, labels);
        let record = event::Record {
            time: SystemTime::now(),
            session,
            body,
        };
        let mut slot = Some(record);
        // A full queue (the writer far behind) makes the session wait rather than lose the
        // event; once the writer is gone (shutdown) there is nothing left to write to.
        while !self.queue.push(&mut slot, QUEUE) {
            if self.tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Waits until everything queued so far is written and synced (or the writer is gone).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(log::Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The audit of one session: every event it emits carries `meta`.
    pub fn session(&self, meta: &SessionMeta) -> SessionAudit {
        SessionAudit {
            audit: self.clone(),
            fragment: meta.fragment(),
            id: meta.session.clone(),
            labels: Arc::new(crate::telemetry::Labels {
                protocol: meta.protocol,
                target: meta.target.clone(),
            }),
        }
    }
}

/// One health out of the files' and the store's: failing while either fails.
fn both(
    mut files: watch::Receiver<Health>,
    mut store: watch::Receiver<Health>,
) -> watch::Receiver<Health> {
    let (tx, rx) = watch::channel(Health::Ok);
    tokio::spawn(async move {
        loop {
            let now = match (&*files.borrow_and_update(), &*store.borrow_and_update()) {
                (Health::Failing(why), _) => Health::Failing(why.clone()),
                (Health::Ok, Health::Failing(why)) => Health::Failing(why.clone()),
                (Health::Ok, Health::Ok) => Health::Ok,
            };
            tx.send_if_modified(|h| {
                let changed = *h != now;
                *h = now;
                changed
            });
            tokio::select! {
                r = files.changed() => if r.is_err() { return },
                r = store.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// Bytes a session relayed each way, however it ends (`session.end`).
#[derive(Debug, Default)]
pub struct Counters {
    pub from_client: std::sync::atomic::AtomicU64,
    pub to_client: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.from_client.load(Relaxed), self.to_client.load(Relaxed))
    }

    pub fn add(&self, from_client: u64, to_client: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.from_client.fetch_add(from_client, Relaxed);
        self.to_client.fetch_add(to_client, Relaxed);
    }
}

/// One session's audit: its fields, serialised once, and the writer.
#[derive(Clone)]
pub struct SessionAudit {
    audit: Audit,
    fragment: Arc<str>,
    id: String,
    labels: Arc<crate::telemetry::Labels>,
}

impl SessionAudit {
    pub async fn emit(&self, body: impl Into<Body>) {
        self.audit
            .send(Some(self.fragment.clone()), Some(&self.labels), body.into())
            .await;
    }

    /// The session id the events carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }
}
