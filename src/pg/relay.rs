//! The splice: after login, bytes pass between client and upstream untouched until either side
//! closes or the session must end (its time is up, trust in it was withdrawn, the gateway
//! shuts down).
//!
//! No bytes are left behind at the splice: the front door and the upstream login read exactly
//! one message at a time (no read-ahead buffer of ours), and whatever the client pipelined
//! after its StartupMessage still sits in rustls's buffer, where the copy below picks it up.
//! The audit taps both pumps ([`Tap`]): each chunk read is handed, as read, to the
//! session's decoder (`audit::pg`), and the events it yields are queued for the audit writer
//! before the chunk is passed on — a statement is on its way to the log before it reaches the
//! target. Nothing is re-encoded; the decoder only looks at the bytes.
//!
//! The gateway speaks to the client itself only with whole NoticeResponse messages (the
//! warnings before a session's end, the reason it ends). A message may only go between two of
//! the upstream's messages, never inside one, so the upstream→client pump follows message
//! boundaries: every backend message after startup is a tag byte and a 4-byte length
//! (protocol 3.0, §55.7), so it reads the 5-byte header of each message and skips its body
//! without looking at it — a few instructions per message, no copy, no decoding. Asking the
//! target to send the notice instead (`pg_notify`, a `RAISE` in the role's session) is not
//! possible: the role's backend is busy with the user's query when the warning is due.
//! PostgreSQL allows a NoticeResponse at any time (§55.2.7), and libpq shows one as soon as
//! it reads it (psql prints it while a query runs, or after the next one when idle).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::audit::pg::{PgDecoder, PgEvent};
use crate::audit::SessionAudit;
use crate::session::EndReason;

/// How long to keep relaying after asking the target to end the session, so the server's
/// own FATAL (57P01) reaches the client before the sockets close.
const DRAIN: Duration = Duration::from_secs(5);

/// A pump reads into [`SMALL_READ`] bytes while the traffic is one message at a time (an idle
/// or interactive session, pgbench -S), and into [`BULK_READ`] once a read fills the small
/// buffer (COPY, big result sets), until a read would have fit the small one again. An idle
/// session then holds 2 × 2 KiB of pump buffers, not 2 × 16 KiB (idle memory, BENCHMARKS.md).
const SMALL_READ: usize = 2 * 1024;
const BULK_READ: usize = 16 * 1024;

struct PumpBuffer(Vec<u8>);

impl PumpBuffer {
    fn new() -> PumpBuffer {
        PumpBuffer(vec![0; SMALL_READ])
    }

    /// Called once the `n` bytes of a read have been passed on.
    fn after_read(&mut self, n: usize) {
        if n == self.0.len() && self.0.len() < BULK_READ {
            self.0 = vec![0; BULK_READ];
        } else if n <= SMALL_READ && self.0.len() > SMALL_READ {
            self.0 = vec![0; SMALL_READ];
        }
    }
}

/// The session's audit on the relay: one decoder sees both directions (it pairs each
/// result with its statement), and its events go to the session's audit.
pub struct Tap {
    decoder: Mutex<PgDecoder>,
    audit: SessionAudit,
}

impl Tap {
    pub fn new(decoder: PgDecoder, audit: SessionAudit) -> Tap {
        Tap {
            decoder: Mutex::new(decoder),
            audit,
        }
    }

    /// Decodes a copy of `chunk` (from the client if `from_client`) and queues its events.
    async fn saw(&self, from_client: bool, chunk: &[u8]) {
        let mut events: Vec<PgEvent> = Vec::new();
        {
            let mut decoder = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
            if from_client {
                decoder.client(chunk, &mut events);
            } else {
                decoder.upstream(chunk, &mut events);
            }
        }
        for event in events {
            self.audit.emit(event).await;
        }
    }
}

pub use crate::audit::Counters;

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
    /// The gateway ended the session (max_session, certificate expiry, a trust change,
    /// shutdown).
    Ended(EndReason),
}

/// Relays until the session ends. When `until` resolves, `terminate` is awaited (it ends the
/// upstream backend, whose FATAL is still relayed) before the copy is abandoned. Each message
/// from `notices` (a whole backend message, e.g. a NoticeResponse) is written to the client at
/// the next boundary between the upstream's messages; the last ones sent before `until`
/// resolves still go out during the drain.
#[allow(clippy::too_many_arguments)]
pub async fn splice<C, U, F>(
    client: &mut C,
    upstream: &mut U,
    until: impl Future<Output = EndReason>,
    notices: mpsc::Receiver<Bytes>,
    terminate: impl FnOnce() -> F,
    tap: Option<&Tap>,
    counters: &Counters,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let to_upstream = pump_to_upstream(&mut client_read, &mut upstream_write, tap, counters);
    let to_client = pump_to_client(
        &mut upstream_read,
        &mut client_write,
        notices,
        tap,
        counters,
    );
    let copy = async { tokio::try_join!(to_upstream, to_client) };
    tokio::pin!(copy);
    tokio::pin!(until);
    let reason = tokio::select! {
        result = &mut copy => return closed(result),
        reason = &mut until => reason,
    };
    // The relay goes on while the target is asked to end the backend: the reason's notice
    // (sent just before `until` resolved) goes out first, then the server's FATAL.
    let relay = tokio::time::timeout(DRAIN, &mut copy);
    let _ = tokio::join!(terminate(), relay);
    End::Ended(reason)
}

/// Copies client to upstream (write, flush, shut down at EOF), showing each chunk to the tap.
async fn pump_to_upstream<R, W>(
    client: &mut R,
    upstream: &mut W,
    tap: Option<&Tap>,
    counters: &Counters,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = PumpBuffer::new();
    let mut total = 0u64;
    loop {
        let buf = &mut buffer.0;
        let n = client.read(buf).await?;
        if n == 0 {
            upstream.shutdown().await?;
            return Ok(total);
        }
        if let Some(tap) = tap {
            tap.saw(true, &buf[..n]).await;
        }
        upstream.write_all(&buf[..n]).await?;
        upstream.flush().await?;
        total += n as u64;
        counters.from_client.fetch_add(n as u64, Ordering::Relaxed);
        buffer.after_read(n);
    }
}

/// Copies upstream to client as tokio's copy does (write, flush, shut down at EOF), and puts
/// each notice in at the next message boundary.
async fn pump_to_client<R, W>(
    upstream: &mut R,
    client: &mut W,
    mut notices: mpsc::Receiver<Bytes>,
    tap: Option<&Tap>,
    counters: &Counters,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = PumpBuffer::new();
    let mut frames = Frames::default();
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut notices_open = true;
    let mut total = 0u64;
    loop {
        tokio::select! {
            // A notice already queued goes before whatever the upstream sends next (the
            // reason a session ends, before the FATAL that ends it).
            biased;
            notice = notices.recv(), if notices_open => match notice {
                Some(notice) if frames.at_boundary() => {
                    client.write_all(&notice).await?;
                    client.flush().await?;
                }
                Some(notice) => pending.push_back(notice),
                None => notices_open = false,
            },
            // `read` is cancel-safe: a notice arriving first loses no upstream bytes.
            n = upstream.read(&mut buffer.0) => {
                let n = n?;
                let buf = &buffer.0;
                if n == 0 {
                    client.shutdown().await?;
                    return Ok(total);
                }
                if let Some(tap) = tap {
                    tap.saw(false, &buf[..n]).await;
                }
                let mut rest = &buf[..n];
                if !pending.is_empty() {
                    if let Some(k) = frames.advance_to_boundary(rest) {
                        client.write_all(&rest[..k]).await?;
                        for notice in pending.drain(..) {
                            client.write_all(&notice).await?;
                        }
                        rest = &rest[k..];
                        frames.advance(rest);
                    }
                } else {
                    frames.advance(rest);
                }
                client.write_all(rest).await?;
                client.flush().await?;
                total += n as u64;
                counters.to_client.fetch_add(n as u64, Ordering::Relaxed);
                buffer.after_read(n);
            }
        }
    }
}

/// Where the upstream→client byte stream stands in its framing: inside a message's 5-byte
/// header (`have` bytes of it seen) or its body (`body_left` bytes to go).
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 5],
    have: usize,
    body_left: usize,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Moves over all of `bytes`.
    fn advance(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            rest = &rest[self.step(rest)..];
        }
    }

    /// Moves over `bytes` up to the first message boundary and returns its offset (0 when
    /// already at one); None (having moved over all of them) if `bytes` ends inside a message.
    fn advance_to_boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while !self.at_boundary() {
            if at == bytes.len() {
                return None;
            }
            at += self.step(&bytes[at..]);
        }
        Some(at)
    }

    /// Consumes some of `bytes` (never zero of a non-empty slice); returns how many.
    fn step(&mut self, bytes: &[u8]) -> usize {
        if self.body_left > 0 {
            let n = self.body_left.min(bytes.len());
            self.body_left -= n;
            return n;
        }
        let n = (5 - self.have).min(bytes.len());
        self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        if self.have == 5 {
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            // The length counts itself. A length below 4 is a broken stream the client will
            // reject anyway; it only decides where a notice could go, so treat it as empty.
            self.body_left = (len as usize).saturating_sub(4);
            self.have = 0;
        }
        n
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn pump_buffers_grow_for_bulk_and_shrink_back() {
        let mut b = PumpBuffer::new();
        b.after_read(100);
        assert_eq!(b.0.len(), SMALL_READ);
        b.after_read(SMALL_READ);
        assert_eq!(b.0.len(), BULK_READ);
        b.after_read(BULK_READ);
        b.after_read(SMALL_READ + 1);
        assert_eq!(b.0.len(), BULK_READ);
        b.after_read(SMALL_READ);
        assert_eq!(b.0.len(), SMALL_READ);
    }

    #[test]
    fn boundaries_are_found_across_any_split() {
        let stream: Vec<u8> = [
            message(b'T', b"row description"),
            message(b'D', &[7u8; 40]),
            message(b'I', b""),
            message(b'Z', b"I"),
        ]
        .concat();
        let mut expected = Vec::new();
        let mut at = 0;
        for len in [20, 45, 5, 6] {
            at += len;
            expected.push(at);
        }
        // Every way of cutting the stream in two gives the same boundaries.
        for cut in 0..=stream.len() {
            let mut frames = Frames::default();
            let mut found = Vec::new();
            let mut pos = 0;
            for part in [&stream[..cut], &stream[cut..]] {
                let mut rest = part;
                while !rest.is_empty() {
                    let s = frames.step(rest);
                    rest = &rest[s..];
                    pos += s;
                    match frames.advance_to_boundary(rest) {
                        Some(k) => {
                            rest = &rest[k..];
                            pos += k;
                            found.push(pos);
                        }
                        None => {
                            pos += rest.len();
                            rest = &[];
                        }
                    }
                }
            }
            assert_eq!(found, expected, "cut at {cut}");
            assert!(frames.at_boundary());
        }
    }

    #[tokio::test]
    async fn a_notice_goes_between_messages_never_inside_one() {
        let (mut up_far, mut up_near) = tokio::io::duplex(1024);
        let (mut client_near, mut client_far) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        let pump = tokio::spawn(async move {
            let counters = Counters::default();
            pump_to_client(&mut up_near, &mut client_near, rx, None, &counters).await
        });
        let row = message(b'D', &[1u8; 30]);
        // Half a message, then the notice: it must wait for the other half.
        up_far.write_all(&row[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let notice = message(b'N', b"SWARNING\0Mhi\0\0");
        tx.send(Bytes::from(notice.clone())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        up_far.write_all(&row[10..]).await.unwrap();
        let ready = message(b'Z', b"I");
        up_far.write_all(&ready).await.unwrap();
        drop(up_far);
        let mut seen = Vec::new();
        client_far.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, [row.clone(), notice.clone(), ready].concat());
        assert_eq!(pump.await.unwrap().unwrap(), (row.len() + 6) as u64);
    }
}
