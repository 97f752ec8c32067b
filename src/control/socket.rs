//! The gateway's end of the control socket: bound at start (a stale file from a crashed run is
//! removed, a live gateway's is not), mode 0600, and every connection's peer checked with
//! SO_PEERCRED: only root and the gateway's own uid are answered. Each request acts on the
//! live registry (`session::Sessions`) and the locks (`control::locks`).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::locks::Locks;
use super::{check_reason, read_line, Request, Response, Selector, SessionRow};
use crate::logsafe::untrusted;
use crate::session::{EndReason, Sessions};

/// How long a client has to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another gateway answers on the control socket {0}; stop it first, or give this one \
         its own control_socket (and state_dir)"
    )]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; jitgate will not remove it (set control_socket)")]
    NotASocket(PathBuf),
    #[error("cannot set up the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound socket; dropping it removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// The uid the gateway runs as (the socket file's owner), which may use the socket.
    own_uid: u32,
}

impl ControlSocket {
    /// Binds `path`, after removing a socket file nobody answers on (a crashed run's).
    pub async fn bind(path: &Path) -> Result<ControlSocket, SocketError> {
        let io = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket(path.to_path_buf()))
            }
            Ok(_) => match UnixStream::connect(path).await {
                Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing a stale control socket (nobody answers on it)");
                    std::fs::remove_file(path).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        // bind() creates the file with the umask's mode; 0600 at once. Until then the peer
        // check below still refuses anyone but root and our own uid.
        let made = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::metadata(path));
        let meta = match made {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(io(e));
            }
        };
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener: Some(listener),
            own_uid: meta.uid(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until `shutdown`; the socket file stays until this value is dropped.
    pub fn serve(
        &mut self,
        sessions: Sessions,
        locks: Locks,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let listener = self.listener.take();
        let own_uid = self.own_uid;
        async move {
            let Some(listener) = listener else { return };
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = shutdown.cancelled() => return,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let (sessions, locks) = (sessions.clone(), locks.clone());
                        tokio::spawn(answer(stream, own_uid, sessions, locks));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: who it is (SO_PEERCRED), one request, one answer.
async fn answer(stream: UnixStream, own_uid: u32, sessions: Sessions, locks: Locks) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            return tracing::warn!(error = %e, "control socket: cannot tell who connected; closed")
        }
    };
    let (read, mut write) = stream.into_split();
    let response = if uid != 0 && uid != own_uid {
        tracing::warn!(event = "control.refused", uid, "control socket: a connection from a uid that is neither root nor the gateway's was refused");
        Response::Error {
            error: format!(
                "permission denied: uid {uid} may not use the control socket (only root and \
                 uid {own_uid}, the gateway's)"
            ),
        }
    } else {
        let line =
            tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut BufReader::new(read))).await;
        match line {
            Err(_) => Response::Error {
                error: "no request within 5s".into(),
            },
            Ok(Err(e)) => Response::Error {
                error: format!("bad request: {e}"),
            },
            Ok(Ok(None)) => return,
            Ok(Ok(Some(line))) => match serde_json::from_str::<Request>(&line) {
                Ok(request) => handle(request, &format!("uid {uid}"), &sessions, &locks),
                Err(e) => Response::Error {
                    error: format!("bad request: {e}"),
                },
            },
        }
    };
    let mut line = serde_json::to_string(&response).unwrap_or_else(|e| {
        format!(r#"{{"result":"error","error":"cannot encode the answer: {e}"}}"#)
    });
    line.push('\n');
    let _ = write.write_all(line.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Carries out one request from the operator `by`.
pub fn handle(request: Request, by: &str, sessions: &Sessions, locks: &Locks) -> Response {
    match request {
        Request::Sessions => Response::Sessions {
            sessions: sessions.list().iter().map(|s| SessionRow::of(s)).collect(),
        },
        Request::End { which, reason } => {
            let reason = match check_reason(reason) {
                Ok(r) => r,
                Err(error) => return Response::Error { error },
            };
            let end = EndReason::Ended {
                by: by.to_string(),
                reason: reason.clone(),
            };
            let ended = sessions.end_where(|s| which.matches(s).then(|| end.clone()));
            for (s, _) in &ended {
                tracing::warn!(
                    event = "session.ended_by_operator", lease = %s.id, protocol = %s.protocol,
                    user = %s.identity.user, target_name = %s.target, grant = %s.grant,
                    account = %s.account, client = %s.client, by,
                    reason = %untrusted(reason.as_deref().unwrap_or("")),
                    "live session ended by an operator"
                );
            }
            if ended.is_empty() {
                let what = match &which {
                    Selector::Id(id) => format!("id {}", untrusted(id)),
                    Selector::User(u) => format!("user {}", untrusted(u)),
                    Selector::Target(t) => format!("target {}", untrusted(t)),
                };
                tracing::info!(by, which = %what, "sessions end: no live session matched");
            }
            Response::Ended {
                ended: ended.iter().map(|(s, _)| SessionRow::of(s)).collect(),
            }
        }
        Request::Lock {
            scope,
            for_secs,
            reason,
        } => {
            let reason = match check_reason(reason) {
                Ok(r) => r,
                Err(error) => return Response::Error { error },
            };
            let lock = match locks.add(scope, for_secs.map(Duration::from_secs), reason, by) {
                Ok(lock) => lock,
                Err(e) => {
                    tracing::error!(error = %e, "lock not added: its file cannot be written");
                    return Response::Error {
                        error: e.to_string(),
                    };
                }
            };
            tracing::warn!(event = "lock.created", lock = %lock.id, scope = %lock.scope, by, until = lock.expires_at.map(super::locks::seconds).as_deref().unwrap_or("unlocked"), reason = %untrusted(lock.reason.as_deref().unwrap_or("")), "lock added: new sessions it covers are refused, live ones end now");
            let ended = sessions.end_where(|s| lock.covers(s).then(|| lock.end_reason()));
            for (s, _) in &ended {
                tracing::warn!(
                    event = "session.ended_by_lock", lease = %s.id, protocol = %s.protocol,
                    user = %s.identity.user, target_name = %s.target, grant = %s.grant,
                    account = %s.account, client = %s.client, lock = %lock.id,
                    "live session ended: a lock covers it"
                );
            }
            Response::Locked {
                ended: ended.iter().map(|(s, _)| SessionRow::of(s)).collect(),
                lock,
            }
        }
        Request::Unlock { id } => match locks.remove(&id) {
            Ok(lock) => {
                tracing::warn!(event = "lock.removed", lock = %lock.id, scope = %lock.scope, by, "lock removed");
                Response::Unlocked { lock }
            }
            Err(e) => Response::Error {
                error: e.to_string(),
            },
        },
        Request::Locks => Response::Locks {
            locks: locks.list(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::control::{request, ControlError, Scope};
    use crate::session::tests::info;

    #[tokio::test]
    async fn one_request_one_answer_and_a_live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jitgate.sock");
        let sessions = Sessions::default();
        let locks = Locks::default();
        let mut socket = ControlSocket::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let stop = CancellationToken::new();
        let task = tokio::spawn(socket.serve(sessions.clone(), locks.clone(), stop.clone()));

        // A second gateway on the same path refuses to start.
        assert!(matches!(
            ControlSocket::bind(&path).await,
            Err(SocketError::InUse(_))
        ));

        let alice = sessions.register(info("alice", "db"));
        let _bob = sessions.register(info("bob", "db"));
        let Response::Sessions { sessions: rows } =
            request(&path, &Request::Sessions).await.unwrap()
        else {
            panic!("not a sessions answer")
        };
        assert_eq!(rows.len(), 2);
        let answer = request(
            &path,
            &Request::End {
                which: Selector::User("alice".into()),
                reason: Some("offboarded".into()),
            },
        )
        .await
        .unwrap();
        assert!(
            matches!(&answer, Response::Ended { ended } if ended.len() == 1 && ended[0].user == "alice")
        );
        assert_eq!(
            alice.switch().ended().await.user_message(),
            "jitgate: an operator ended this session: offboarded"
        );
        let answer = request(
            &path,
            &Request::Lock {
                scope: Scope::User("bob".into()),
                for_secs: None,
                reason: Some("a\nb".into()),
            },
        )
        .await;
        assert!(
            matches!(answer, Err(ControlError::Refused(_))),
            "{answer:?}"
        );

        stop.cancel();
        task.await.unwrap();
        drop(socket);
        assert!(!path.exists());
        assert!(matches!(
            request(&path, &Request::Sessions).await,
            Err(ControlError::NotRunning(_))
        ));
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_plain_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jitgate.sock");
        // A socket nobody listens on any more (a crashed gateway's).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = ControlSocket::bind(&path).await.unwrap();
        drop(socket);
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            ControlSocket::bind(&path).await,
            Err(SocketError::NotASocket(_))
        ));
    }
}
