//! The splice: after login, bytes pass between client and upstream untouched until either side
//! closes, the lease's time is up, or the gateway shuts down.
//!
//! No bytes are left behind at the splice: the front door and the upstream login read exactly
//! one message at a time (no read-ahead buffer of ours), and whatever the client pipelined
//! after its StartupMessage still sits in rustls's buffer, where the copy below picks it up.
//! The audit issue hooks in here: decode a copy of each direction, never re-encode.

use std::future::Future;
use std::time::Duration;

use tokio::io::{copy_bidirectional, AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long to keep relaying after asking the target to end the session, so the server's
/// own FATAL (57P01) reaches the client before the sockets close.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum End {
    /// Either side closed (Terminate, EOF or reset); bytes relayed each way.
    Closed {
        to_upstream: u64,
        to_client: u64,
    },
    /// The client closed its TCP connection without a TLS close_notify — libpq does this after
    /// Terminate, so it is an ordinary end, not an error.
    ClientHungUp,
    Failed(std::io::Error),
    /// The lease reached `max_session`.
    Expired,
    /// The gateway is shutting down.
    Shutdown,
}

/// Relays until the session ends. At the deadline or on shutdown, `terminate` is awaited (it
/// ends the upstream backend, whose FATAL is still relayed) before the copy is abandoned.
pub async fn splice<C, U, F>(
    client: &mut C,
    upstream: &mut U,
    deadline: Instant,
    shutdown: &CancellationToken,
    terminate: impl FnOnce() -> F,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let copy = copy_bidirectional(client, upstream);
    tokio::pin!(copy);
    let end = tokio::select! {
        result = &mut copy => return closed(result),
        _ = tokio::time::sleep_until(deadline) => End::Expired,
        _ = shutdown.cancelled() => End::Shutdown,
    };
    let drain = async {
        terminate().await;
        let _ = tokio::time::timeout(DRAIN, &mut copy).await;
    };
    drain.await;
    end
}

fn closed(result: std::io::Result<(u64, u64)>) -> End {
    match result {
        Ok((to_upstream, to_client)) => End::Closed {
            to_upstream,
            to_client,
        },
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => End::ClientHungUp,
        Err(e) => End::Failed(e),
    }
}
