//! Terminal recordings as asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>).
//! The relay hands each chunk to a `RecordingHandle`, which timestamps it and queues it
//! without waiting; one writer task turns the queue into the `.cast` file. `cast` reads,
//! exports and replays them.

mod cast;

/// Where recordings go under the audit directory; events name them relative to it.
pub const DIR: &str = "recordings";

pub use cast::{
    read_cast, replay, replay_with, to_cast_string, Cast, CastError, CastEvent, CastHeader,
    RecordingMeta, ReplayClock, ReplayOptions, TimedEvent,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How the writer is sized. The defaults bound what a stalled disk can make a session hold:
/// at most `max_queued_bytes` of chunks, after which chunks are dropped and a gap is marked.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Chunks queued at most.
    pub capacity: usize,
    /// Bytes of queued chunks at most.
    pub max_queued_bytes: usize,
    /// How often buffered lines reach the file.
    pub flush_interval: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_queued_bytes: 4 * 1024 * 1024,
            flush_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot write recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode recording {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("recording writer for {path} stopped: {reason}")]
    Writer { path: PathBuf, reason: String },
}

/// What a finished recording holds, for the session's end event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordingSummary {
    pub path: PathBuf,
    /// Input bytes recorded ("i" events).
    pub bytes_in: u64,
    /// Output bytes recorded ("o" events).
    pub bytes_out: u64,
    pub dropped: Dropped,
}

/// What the recording lost because its queue was full; each loss is also an "m" event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub resizes: u64,
}

impl Dropped {
    fn is_empty(&self) -> bool {
        *self == Dropped::default()
    }
}

enum Chunk {
    Output(Bytes),
    Input(Bytes),
    Resize(u16, u16),
}

impl Chunk {
    fn weight(&self) -> usize {
        match self {
            Chunk::Output(b) | Chunk::Input(b) => b.len(),
            Chunk::Resize(..) => 0,
        }
    }
}

/// When a chunk was handed over, and its place among all chunks handed over (kept or lost),
/// so a gap marker lands between the chunks it fell between.
#[derive(Clone, Copy)]
struct Stamp {
    at: Instant,
    seq: u64,
}

enum Msg {
    Chunk(Stamp, Chunk),
    Close,
}

/// Losses not yet marked in the file, shared by the handles and the writer.
struct Gap {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    resizes: AtomicU64,
    /// Sequence number of the first loss not yet marked; u64::MAX when none.
    first_seq: AtomicU64,
    /// Its time, in µs since the start.
    first_at: AtomicU64,
}

struct Shared {
    start: Instant,
    seq: AtomicU64,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    gap: Gap,
}

impl Shared {
    fn lost(&self, stamp: Stamp, chunk: &Chunk) {
        let gap = &self.gap;
        match chunk {
            Chunk::Output(b) => gap.bytes_out.fetch_add(b.len() as u64, Ordering::Relaxed),
            Chunk::Input(b) => gap.bytes_in.fetch_add(b.len() as u64, Ordering::Relaxed),
            Chunk::Resize(..) => gap.resizes.fetch_add(1, Ordering::Relaxed),
        };
        if gap.first_seq.fetch_min(stamp.seq, Ordering::Relaxed) > stamp.seq {
            gap.first_at
                .store(micros(stamp.at, self.start), Ordering::Relaxed);
        }
    }

    /// Takes the losses not yet marked that came before chunk `before` (all, at the close),
    /// with the time of the first.
    fn take_gap(&self, before: u64) -> Option<(u64, Dropped)> {
        let gap = &self.gap;
        if gap.first_seq.load(Ordering::Relaxed) >= before {
            return None;
        }
        gap.first_seq.store(u64::MAX, Ordering::Relaxed);
        let at = gap.first_at.load(Ordering::Relaxed);
        let dropped = Dropped {
            bytes_in: gap.bytes_in.swap(0, Ordering::Relaxed),
            bytes_out: gap.bytes_out.swap(0, Ordering::Relaxed),
            resizes: gap.resizes.swap(0, Ordering::Relaxed),
        };
        (!dropped.is_empty()).then_some((at, dropped))
    }
}

fn micros(at: Instant, start: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX - 1)
}

/// The relay's side: cheap to clone, never waits. A chunk that does not fit in the queue is
/// dropped and counted, and the file gets a gap marker, rather than slowing the session.
#[derive(Clone)]
pub struct RecordingHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl RecordingHandle {
    /// Bytes the terminal showed (the upstream's stdout and stderr).
    pub fn output(&self, data: Bytes) {
        if !data.is_empty() {
            self.send(Chunk::Output(data));
        }
    }

    /// Bytes the user typed.
    pub fn input(&self, data: Bytes) {
        if !data.is_empty() {
            self.send(Chunk::Input(data));
        }
    }

    /// The client's terminal changed size (window-change, RFC 4254 §6.7).
    pub fn resize(&self, cols: u16, rows: u16) {
        self.send(Chunk::Resize(cols, rows));
    }

    /// Whether the writer has stopped (a write failed, or the recording was finished).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn send(&self, chunk: Chunk) {
        let stamp = Stamp {
            at: Instant::now(),
            seq: self.shared.seq.fetch_add(1, Ordering::Relaxed),
        };
        let weight = chunk.weight();
        let shared = &self.shared;
        let queued = shared.queued_bytes.fetch_add(weight, Ordering::Relaxed);
        if queued + weight > shared.max_queued_bytes {
            shared.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            shared.lost(stamp, &chunk);
            return;
        }
        if let Err(e) = self.tx.try_send(Msg::Chunk(stamp, chunk)) {
            shared.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            if let Msg::Chunk(stamp, chunk) = e.into_inner() {
                shared.lost(stamp, &chunk);
            }
        }
    }
}

/// Owns one recording: hands out handles, and `finish` closes the file.
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    task: JoinHandle<Result<RecordingSummary, RecordingError>>,
    path: PathBuf,
}

impl Recorder {
    /// Creates the file (never overwriting one) and writes its header, so a recording that
    /// cannot be written fails here, before the session starts. The header's timestamp is
    /// set to now if the caller left it empty.
    pub async fn create(
        path: impl Into<PathBuf>,
        mut header: CastHeader,
        config: RecorderConfig,
    ) -> Result<Recorder, RecordingError> {
        let path = path.into();
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        if header.timestamp.is_none() {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            header.timestamp = Some(now.as_secs());
        }
        let mut line = header.to_line().map_err(|source| RecordingError::Encode {
            path: path.clone(),
            source,
        })?;
        line.push('\n');
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io)?;
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(line.as_bytes()).await.map_err(io)?;
        out.flush().await.map_err(io)?;

        let shared = Arc::new(Shared {
            start: Instant::now(),
            seq: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: config.max_queued_bytes,
            gap: Gap {
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                resizes: AtomicU64::new(0),
                first_seq: AtomicU64::new(u64::MAX),
                first_at: AtomicU64::new(0),
            },
        });
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let writer = Writer {
            out,
            path: path.clone(),
            shared: shared.clone(),
            last: 0,
            output: Utf8Carry::default(),
            input: Utf8Carry::default(),
            summary: RecordingSummary {
                path: path.clone(),
                bytes_in: 0,
                bytes_out: 0,
                dropped: Dropped::default(),
            },
            line: Vec::new(),
        };
        let task = tokio::spawn(writer.run(rx, config.flush_interval));
        Ok(Recorder {
            tx,
            shared,
            task,
            path,
        })
    }

    pub fn handle(&self) -> RecordingHandle {
        RecordingHandle {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what is queued, marks any remaining gap, flushes and syncs the file.
    pub async fn finish(self) -> Result<RecordingSummary, RecordingError> {
        // Waiting here is fine: the session is over. If the writer is gone, its result says why.
        let _ = self.tx.send(Msg::Close).await;
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(RecordingError::Writer {
                path: self.path,
                reason: e.to_string(),
            }),
        }
    }
}

/// The writer task's state.
struct Writer {
    out: BufWriter<tokio::fs::File>,
    path: PathBuf,
    shared: Arc<Shared>,
    /// Time of the last event written, in µs: events never go back in time, even when the
    /// two pumps' chunks reach the queue out of order.
    last: u64,
    output: Utf8Carry,
    input: Utf8Carry,
    summary: RecordingSummary,
    line: Vec<u8>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        flush_interval: Duration,
    ) -> Result<RecordingSummary, RecordingError> {
        let mut tick = tokio::time::interval(flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Chunk(stamp, chunk)) => {
                        self.chunk(stamp, chunk).await?;
                        dirty = true;
                    }
                    Some(Msg::Close) | None => break,
                },
                _ = tick.tick(), if dirty => {
                    self.out.flush().await.map_err(|e| self.io(e))?;
                    dirty = false;
                }
            }
        }
        // Chunks sent before the close but queued behind it are still written; later ones
        // find the queue closed and are counted as lost.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Chunk(stamp, chunk) = msg {
                self.chunk(stamp, chunk).await?;
            }
        }
        self.flush_carries(self.last).await?;
        self.mark_gap(u64::MAX).await?;
        self.out.flush().await.map_err(|e| self.io(e))?;
        self.out
            .get_ref()
            .sync_all()
            .await
            .map_err(|e| self.io(e))?;
        Ok(self.summary)
    }

    async fn chunk(&mut self, stamp: Stamp, chunk: Chunk) -> Result<(), RecordingError> {
        self.shared
            .queued_bytes
            .fetch_sub(chunk.weight(), Ordering::Relaxed);
        self.mark_gap(stamp.seq).await?;
        let at = micros(stamp.at, self.shared.start);
        match chunk {
            Chunk::Output(data) => {
                self.summary.bytes_out += data.len() as u64;
                let text = self.output.decode(&data);
                self.event(at, CastEvent::Output(text)).await
            }
            Chunk::Input(data) => {
                self.summary.bytes_in += data.len() as u64;
                let text = self.input.decode(&data);
                self.event(at, CastEvent::Input(text)).await
            }
            Chunk::Resize(cols, rows) => self.event(at, CastEvent::Resize { cols, rows }).await,
        }
    }

    /// Writes a marker for losses not yet marked. The bytes around a gap do not join up,
    /// so a UTF-8 sequence carried across it is written out (as U+FFFD) first.
    async fn mark_gap(&mut self, before: u64) -> Result<(), RecordingError> {
        let Some((since, dropped)) = self.shared.take_gap(before) else {
            return Ok(());
        };
        self.flush_carries(since).await?;
        let d = &mut self.summary.dropped;
        d.bytes_in += dropped.bytes_in;
        d.bytes_out += dropped.bytes_out;
        d.resizes += dropped.resizes;
        self.event(since, CastEvent::Marker(gap_label(&dropped)))
            .await
    }

    /// Writes out partial UTF-8 sequences that will not be completed.
    async fn flush_carries(&mut self, at: u64) -> Result<(), RecordingError> {
        let output = self.output.flush();
        self.event(at, CastEvent::Output(output)).await?;
        let input = self.input.flush();
        self.event(at, CastEvent::Input(input)).await
    }

    async fn event(&mut self, at: u64, event: CastEvent) -> Result<(), RecordingError> {
        match &event {
            // A chunk that was only the start of a UTF-8 sequence has no text yet.
            CastEvent::Output(text) | CastEvent::Input(text) if text.is_empty() => return Ok(()),
            CastEvent::Output(_)
            | CastEvent::Input(_)
            | CastEvent::Resize { .. }
            | CastEvent::Marker(_)
            | CastEvent::Other { .. } => {}
        }
        self.last = self.last.max(at);
        let event = TimedEvent {
            time: self.last as f64 / 1e6,
            event,
        };
        self.line.clear();
        event
            .write_line(&mut self.line)
            .map_err(|source| RecordingError::Encode {
                path: self.path.clone(),
                source,
            })?;
        self.out.write_all(&self.line).await.map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> RecordingError {
        RecordingError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The text of a gap marker: `gap: N output bytes, N input bytes, N resizes dropped`.
pub fn gap_label(d: &Dropped) -> String {
    format!(
        "gap: {} output bytes, {} input bytes, {} resizes dropped",
        d.bytes_out, d.bytes_in, d.resizes
    )
}

/// Turns a byte stream cut anywhere into text: a UTF-8 sequence split across chunks is held
/// until its end arrives (as asciinema's recorder does with an incremental decoder), and
/// invalid bytes become U+FFFD.
#[derive(Default)]
struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    fn decode(&mut self, data: &[u8]) -> String {
        let joined;
        let mut rest: &[u8] = if self.held.is_empty() {
            data
        } else {
            self.held.extend_from_slice(data);
            joined = std::mem::take(&mut self.held);
            &joined
        };
        let mut text = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    return text;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete sequence at the end: at most 3 bytes wait.
                            self.held = after.to_vec();
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// What is held, as text, when nothing more will complete it.
    fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

#[cfg(test)]
mod tests;
