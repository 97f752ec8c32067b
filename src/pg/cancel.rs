//! CancelRequest routing. Each session gets a BackendKeyData of the gateway's own (pid and key,
//! random), mapped here to its upstream backend; a CancelRequest carrying it is re-sent to that
//! backend. Unknown keys are dropped silently, as PostgreSQL does. The key itself and its bytes
//! ([`CancelKey`]) are wire messages, in `pg::message`; this file issues keys and routes them.
//!
//! Behind a load balancer a psql Ctrl-C opens a new connection, which may land on another
//! replica than the session. With `peer_id` set, the key's top 14 bits name the replica that
//! issued it and the next 2 are a hop count (PgBouncer's `peers` does the same): a replica that
//! gets a key of another passes the request on to that peer's Postgres listener, inside TLS
//! (verified against `tls.ca`, presenting the gateway's own certificate), with the hop count
//! lowered; a count of zero, or a number no peer has, is dropped. The other 47 bits (pid and
//! the key's low 16) stay random.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::message::CancelKey;
use super::upstream;
use crate::config::peers::{PeerAddr, Peering};
use crate::config::PgTarget;

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
    peers: Option<Arc<PeerRouter>>,
}

/// Hops a cancel may still make between replicas, as issued (2 bits).
const HOPS: u32 = 3;

/// The replica that issued `key` (0 for a key of a gateway without `peer_id`).
pub fn issuer(key: CancelKey) -> u16 {
    ((key.key as u32) >> 18) as u16
}

fn hops(key: CancelKey) -> u32 {
    ((key.key as u32) >> 16) & 3
}

fn with_hops(key: CancelKey, hops: u32) -> CancelKey {
    let bits = ((key.key as u32) & !(3 << 16)) | ((hops & 3) << 16);
    CancelKey {
        pid: key.pid,
        key: bits as i32,
    }
}

/// A fresh key: random, or, for replica `peer`, its number and a full hop count on top.
fn fresh_key(rng: &mut impl Rng, peer: Option<u16>) -> CancelKey {
    let random: i32 = rng.random();
    let key = match peer {
        None => random,
        Some(id) => ((u32::from(id) << 18) | (HOPS << 16) | (random as u32 & 0xffff)) as i32,
    };
    CancelKey {
        // PIDs are positive in PostgreSQL; some clients assume so.
        pid: rng.random_range(1..=i32::MAX),
        key,
    }
}

/// This replica's number and how to reach each peer.
pub struct PeerRouter {
    id: u16,
    peers: HashMap<u16, Peer>,
}

struct Peer {
    addr: PeerAddr,
    name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

impl PeerRouter {
    /// One TLS client config per peer: its certificate is verified against `ca` for the
    /// peer's host, and this gateway presents `cert`/`key` (its own server certificate).
    pub fn new(
        peering: &Peering,
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<PeerRouter, String> {
        let mut peers = HashMap::new();
        for (id, addr) in &peering.peers {
            let name = ServerName::try_from(addr.host.clone()).map_err(|_| {
                format!(
                    "peer {id}: {} is not a host name or IP address a certificate can carry",
                    addr.host
                )
            })?;
            let tls = crate::tls::tunnel_client_config(ca, cert, key, name.clone())
                .map_err(|e| format!("peer {id}: {e}"))?;
            peers.insert(
                *id,
                Peer {
                    addr: addr.clone(),
                    name,
                    tls,
                },
            );
        }
        Ok(PeerRouter {
            id: peering.id,
            peers,
        })
    }
}

impl CancelRegistry {
    /// A registry whose keys name this replica, passing other replicas' keys on to them.
    pub fn with_peers(router: PeerRouter) -> CancelRegistry {
        CancelRegistry {
            sessions: Arc::default(),
            peers: Some(Arc::new(router)),
        }
    }

    /// Registers a session's upstream backend and returns the fresh key for its client.
    pub fn register(
        &self,
        target: Arc<PgTarget>,
        upstream_pid: i32,
        upstream_key: i32,
    ) -> CancelKey {
        let mut rng = rand::rng();
        let peer = self.peers.as_ref().map(|p| p.id);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let key = fresh_key(&mut rng, peer);
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
        let key = match &self.peers {
            Some(router) if issuer(key) != router.id => {
                return router.pass_on(key, client, client_tls).await;
            }
            // A key passed on by a peer has fewer hops left than the one registered.
            Some(_) => with_hops(key, HOPS),
            None => key,
        };
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

impl PeerRouter {
    /// Sends a CancelRequest for another replica's key to that replica, inside TLS.
    async fn pass_on(&self, key: CancelKey, client: SocketAddr, client_tls: bool) {
        let owner = issuer(key);
        let left = hops(key);
        let Some(peer) = self.peers.get(&owner) else {
            tracing::debug!(client = %client, client_tls, peer = owner, "cancel request with a key of no known peer dropped");
            return;
        };
        if left == 0 {
            tracing::debug!(client = %client, client_tls, peer = owner, "cancel request out of hops between peers dropped (peers: lists disagree?)");
            return;
        }
        let onward = with_hops(key, left - 1);
        let result = tokio::time::timeout(PEER_TIMEOUT, send_to_peer(peer, onward)).await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(client = %client, client_tls, peer = owner, addr = %peer.addr, "cancel request passed on to its peer")
            }
            Ok(Err(e)) => {
                tracing::warn!(client = %client, client_tls, peer = owner, addr = %peer.addr, error = %e, "cancel request could not be passed on to its peer")
            }
            Err(_) => {
                tracing::warn!(client = %client, client_tls, peer = owner, addr = %peer.addr, seconds = PEER_TIMEOUT.as_secs(), "cancel request could not be passed on to its peer in time")
            }
        }
    }
}

/// Connect, TLS and the request together.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// SSLRequest, `S`, TLS, then the CancelRequest, as libpq 17 sends an encrypted cancel.
async fn send_to_peer(peer: &Peer, key: CancelKey) -> Result<(), String> {
    let mut tcp = tokio::net::TcpStream::connect((peer.addr.host.as_str(), peer.addr.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await.map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if answer[0] != b'S' {
        return Err(format!(
            "the peer answered {:?} to SSLRequest, not S: is it a jitgate Postgres listener?",
            answer[0] as char
        ));
    }
    let mut tls = tokio_rustls::TlsConnector::from(peer.tls.clone())
        .connect(peer.name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    buf.clear();
    postgres_protocol::message::frontend::cancel_request(key.pid, key.key, &mut buf);
    tls.write_all(&buf).await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_issuer_and_hops_and_keep_47_random_bits() {
        let mut rng = rand::rng();
        for id in [1u16, 2, 777, 16_383] {
            let key = fresh_key(&mut rng, Some(id));
            assert_eq!(issuer(key), id);
            assert_eq!(hops(key), HOPS);
            assert!(key.pid > 0);
            let onward = with_hops(key, 1);
            assert_eq!(issuer(onward), id);
            assert_eq!(hops(onward), 1);
            assert_eq!(with_hops(onward, HOPS), key);
        }
        // The low 16 bits of the key and the pid differ between keys of one issuer.
        let a = fresh_key(&mut rng, Some(5));
        let b = fresh_key(&mut rng, Some(5));
        assert_ne!((a.pid, a.key), (b.pid, b.key));
    }
}
