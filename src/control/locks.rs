//! Operators' locks (`jitgate lock`): a lock on a user, a grant or a target refuses new
//! sessions it covers before any account is minted (`pg::session`, `ssh::server`) and ends the
//! live ones at once (`control::socket`), as Teleport's locks do. Locks are kept in
//! `<state_dir>/locks.json`, rewritten whole and atomically (temporary file, fsync, rename;
//! mode 0600) on every change, so they survive a restart; a lock given `--for` expires by
//! itself.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::session::{EndReason, Registered, SessionInfo};

/// What a lock covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every session of this person (the certificate's user name).
    User(String),
    /// Every session opened with this grant (a policy entry's name).
    Grant(String),
    /// Every session to this target.
    Target(String),
}

impl Scope {
    fn covers(&self, user: &str, grant: &str, target: &str) -> bool {
        match self {
            Scope::User(u) => u == user,
            Scope::Grant(g) => g == grant,
            Scope::Target(t) => t == target,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::User(u) => write!(f, "user {u}"),
            Scope::Grant(g) => write!(f, "grant {g}"),
            Scope::Target(t) => write!(f, "target {t}"),
        }
    }
}

/// One lock, as kept in the state file and shown by `jitgate locks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub id: String,
    pub scope: Scope,
    /// The operator's words; shown to the users it refuses.
    pub reason: Option<String>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// None: until `jitgate unlock`.
    #[serde(with = "rfc3339_option", default)]
    pub expires_at: Option<SystemTime>,
    /// Who locked, as the control socket saw them (`uid 0`).
    pub created_by: String,
}

impl Lock {
    pub fn active_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    pub fn covers(&self, session: &SessionInfo) -> bool {
        self.scope
            .covers(&session.identity.user, &session.grant, &session.target)
    }

    /// What a refused (or ended) user is told: that an operator locked them out, which of
    /// their things (their name, grant or target) the lock is on, until when, and why.
    pub fn user_message(&self) -> String {
        let mut text = format!("jitgate: access is locked by an operator ({}", self.scope);
        if let Some(at) = self.expires_at {
            text.push_str(&format!(", until {}", seconds(at)));
        }
        text.push(')');
        if let Some(reason) = &self.reason {
            text.push_str(": ");
            text.push_str(reason);
        }
        text
    }

    /// The operator's version, for the log and the audit's `access.denied`.
    pub fn describe(&self) -> String {
        let mut text = format!("locked: lock {} ({}", self.id, self.scope);
        if let Some(at) = self.expires_at {
            text.push_str(&format!(", until {}", seconds(at)));
        }
        text.push_str(&format!(", by {})", self.created_by));
        if let Some(reason) = &self.reason {
            text.push_str(": ");
            text.push_str(reason);
        }
        text
    }

    pub fn end_reason(&self) -> EndReason {
        EndReason::Locked {
            lock: self.id.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// An RFC 3339 time to the second, for messages.
pub fn seconds(t: SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&format)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the locks file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the locks file {path} is not valid ({source}); fix or remove it (a gateway does not \
         start without knowing its locks)"
    )]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the locks file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no lock {0} (jitgate locks lists them)")]
    NoSuchLock(String),
}

/// The file's shape: versioned, so a later format can be told apart.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    locks: Vec<Lock>,
}

const STATE_VERSION: u32 = 1;

struct Inner {
    /// None: kept in memory only (a handler built without the gateway's store).
    file: Option<PathBuf>,
    locks: Mutex<Vec<Lock>>,
}

/// The gateway's locks. Cheap to clone; all clones share them.
#[derive(Clone)]
pub struct Locks(Arc<Inner>);

impl Default for Locks {
    fn default() -> Self {
        Locks(Arc::new(Inner {
            file: None,
            locks: Mutex::new(Vec::new()),
        }))
    }
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("file", &self.0.file)
            .field("locks", &self.lock().len())
            .finish()
    }
}

impl Locks {
    /// The locks kept in `file` (none if it does not exist yet).
    pub fn open(file: &Path) -> Result<Locks, LockError> {
        let locks = match fs::read(file) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|source| LockError::Invalid {
                        path: file.to_path_buf(),
                        source,
                    })?;
                state.locks
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(LockError::Read {
                    path: file.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Locks(Arc::new(Inner {
            file: Some(file.to_path_buf()),
            locks: Mutex::new(locks),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Lock>> {
        self.0.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first lock in force that covers this login, if one does.
    pub fn refusing(&self, user: &str, grant: &str, target: &str) -> Option<Lock> {
        let now = SystemTime::now();
        self.lock()
            .iter()
            .find(|l| l.active_at(now) && l.scope.covers(user, grant, target))
            .cloned()
    }

    /// The locks in force, oldest first.
    pub fn list(&self) -> Vec<Lock> {
        let now = SystemTime::now();
        self.lock()
            .iter()
            .filter(|l| l.active_at(now))
            .cloned()
            .collect()
    }

    /// Adds a lock and writes the file; on a write failure the lock is not added.
    pub fn add(
        &self,
        scope: Scope,
        duration: Option<Duration>,
        reason: Option<String>,
        by: &str,
    ) -> Result<Lock, LockError> {
        // To the microsecond, as the file keeps it: a reopened store has the same lock.
        let micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
        let lock = Lock {
            id: format!("lock-{}", crate::jit::lease::random_suffix(10)),
            scope,
            reason,
            created_at: now,
            expires_at: duration.and_then(|d| now.checked_add(d)),
            created_by: by.to_string(),
        };
        let mut locks = self.lock();
        let mut next: Vec<Lock> = locks.iter().filter(|l| l.active_at(now)).cloned().collect();
        next.push(lock.clone());
        self.persist(&next)?;
        *locks = next;
        Ok(lock)
    }

    /// Removes a lock (in force or expired) and writes the file.
    pub fn remove(&self, id: &str) -> Result<Lock, LockError> {
        let now = SystemTime::now();
        let mut locks = self.lock();
        let Some(removed) = locks.iter().find(|l| l.id == id).cloned() else {
            return Err(LockError::NoSuchLock(id.to_string()));
        };
        let next: Vec<Lock> = locks
            .iter()
            .filter(|l| l.id != id && l.active_at(now))
            .cloned()
            .collect();
        self.persist(&next)?;
        *locks = next;
        Ok(removed)
    }

    /// Ends `registered` if a lock covers it: a lock added while its login was minting its
    /// account ended the sessions live then, which did not include this one yet.
    pub fn recheck_new(&self, registered: &Registered) {
        let info = registered.info();
        let now = SystemTime::now();
        let lock = self
            .lock()
            .iter()
            .find(|l| l.active_at(now) && l.covers(info))
            .cloned();
        if let Some(lock) = lock {
            if registered.switch().end(lock.end_reason()) {
                tracing::warn!(event = "session.ended_by_lock", lease = %info.id, user = %info.identity.user, target_name = %info.target, lock = %lock.id, "live session ended: a lock covers it");
            }
        }
    }

    /// Writes `locks` to the file: a temporary file beside it (0600), fsync'd, renamed over
    /// it, and the directory fsync'd, so a crash leaves the old file or the new one.
    fn persist(&self, locks: &[Lock]) -> Result<(), LockError> {
        let Some(file) = &self.0.file else {
            return Ok(());
        };
        let failed = |source| LockError::Write {
            path: file.clone(),
            source,
        };
        let state = StateFile {
            version: STATE_VERSION,
            locks: locks.to_vec(),
        };
        let mut text =
            serde_json::to_vec_pretty(&state).map_err(|e| failed(std::io::Error::other(e)))?;
        text.push(b'\n');
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            crate::jit::lease::random_suffix(8)
        ));
        let written = (|| {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&text)?;
            out.sync_all()?;
            fs::rename(&tmp, file)?;
            fs::File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(failed)
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::audit::event::rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<SystemTime, String> {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
    }
}

mod rfc3339_option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::rfc3339::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::session::tests::info;
    use crate::session::Sessions;

    #[test]
    fn locks_cover_their_scope_expire_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.json");
        let locks = Locks::open(&file).unwrap();
        assert!(locks.refusing("alice", "db", "orders").is_none());
        let user = locks
            .add(
                Scope::User("alice".into()),
                None,
                Some("INC-7".into()),
                "uid 0",
            )
            .unwrap();
        let grant = locks
            .add(
                Scope::Grant("web".into()),
                Some(Duration::from_secs(3600)),
                None,
                "uid 0",
            )
            .unwrap();
        assert_eq!(locks.refusing("alice", "db", "orders"), Some(user.clone()));
        assert!(locks.refusing("bob", "db", "orders").is_none());
        assert_eq!(locks.refusing("bob", "web", "web-1"), Some(grant.clone()));
        assert_eq!(
            user.user_message(),
            "jitgate: access is locked by an operator (user alice): INC-7"
        );
        assert!(grant.user_message().contains("(grant web, until 20"));

        // The file is private, and a reopened store (a restarted gateway) has the same locks.
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let reopened = Locks::open(&file).unwrap();
        assert_eq!(reopened.list(), vec![user.clone(), grant.clone()]);
        reopened.remove(&user.id).unwrap();
        assert!(matches!(
            reopened.remove(&user.id),
            Err(LockError::NoSuchLock(_))
        ));
        assert_eq!(Locks::open(&file).unwrap().list(), vec![grant]);
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // An expired lock refuses nothing and is not listed.
        let short = reopened
            .add(
                Scope::Target("orders".into()),
                Some(Duration::ZERO),
                None,
                "uid 0",
            )
            .unwrap();
        assert!(!short.active_at(SystemTime::now()));
        assert!(reopened.refusing("carol", "db", "orders").is_none());
        assert_eq!(reopened.list().len(), 1);
    }

    #[test]
    fn a_broken_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("locks.json");
        fs::write(&file, "{ not json").unwrap();
        assert!(matches!(Locks::open(&file), Err(LockError::Invalid { .. })));
    }

    #[tokio::test]
    async fn a_session_registered_under_a_lock_is_ended() {
        let locks = Locks::default();
        let sessions = Sessions::default();
        locks
            .add(
                Scope::User("alice".into()),
                None,
                Some("leaver".into()),
                "uid 0",
            )
            .unwrap();
        let alice = sessions.register(info("alice", "db"));
        let bob = sessions.register(info("bob", "db"));
        locks.recheck_new(&alice);
        locks.recheck_new(&bob);
        assert!(matches!(
            alice.switch().ended().await,
            EndReason::Locked { reason: Some(r), .. } if r == "leaver"
        ));
        assert!(bob.switch().reason().is_none());
    }
}
