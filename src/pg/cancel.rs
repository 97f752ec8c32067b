//! CancelRequest routing. Each session gets a BackendKeyData of the gateway's own (64 random
//! bits: pid and key), mapped here to its upstream backend; a CancelRequest carrying it is
//! re-sent to that backend. Unknown keys are dropped silently, as PostgreSQL does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rand::Rng;
use tokio::io::AsyncWriteExt;

use super::upstream;
use crate::config::PgTarget;

/// The key a client holds: the gateway's, never the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub key: i32,
}

/// Where a cancel for one session goes.
#[derive(Clone)]
struct UpstreamBackend {
    target: Arc<PgTarget>,
    pid: i32,
    key: i32,
}

#[derive(Clone, Default)]
pub struct CancelRegistry {
    sessions: Arc<Mutex<HashMap<CancelKey, UpstreamBackend>>>,
}

impl CancelRegistry {
    /// Registers a session's upstream backend and returns the fresh key for its client.
    pub fn register(
        &self,
        target: Arc<PgTarget>,
        upstream_pid: i32,
        upstream_key: i32,
    ) -> CancelKey {
        let mut rng = rand::rng();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // PIDs are positive in PostgreSQL; some clients assume so.
            let key = CancelKey {
                pid: rng.random_range(1..=i32::MAX),
                key: rng.random(),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(key) {
                slot.insert(UpstreamBackend {
                    target,
                    pid: upstream_pid,
                    key: upstream_key,
                });
                return key;
            }
        }
    }

    pub fn unregister(&self, key: CancelKey) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Forwards a cancel for `key`, if it belongs to a live session. `client` and `client_tls`
    /// (whether the request came inside TLS) are for the log.
    pub async fn cancel(&self, key: CancelKey, client: SocketAddr, client_tls: bool) {
        let backend = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let Some(backend) = backend else {
            tracing::debug!(client = %client, client_tls, "cancel request with an unknown key dropped");
            return;
        };
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(backend.pid, backend.key, &mut buf);
        let result = async {
            let mut stream = upstream::connect(&backend.target)
                .await
                .map_err(|e| e.to_string())?;
            stream.write_all(&buf).await.map_err(|e| e.to_string())?;
            stream.shutdown().await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(client = %client, client_tls, target_name = %backend.target.name, "cancel request forwarded")
            }
            Err(e) => {
                tracing::warn!(client = %client, client_tls, target_name = %backend.target.name, error = %e, "cancel request could not be forwarded")
            }
        }
    }
}
