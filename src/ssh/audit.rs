//! The audit of one SSH session channel: what it became (shell, exec, subsystem), a terminal
//! recording when it has a terminal (or its grant records exec output), the SFTP file
//! operations decoded from a copy of its data, and at its end `ssh.exit` with the exit
//! status, the bytes each way and the recording's SHA-256.
//!
//! The splice (`ssh::channel`) shows it every data message as it passes; the recording's
//! handle and the SFTP decoder only look at a copy and never make the relay wait on a disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::channel::ChannelOutcome;
use crate::audit::recording::{
    CastHeader, Recorder, RecorderConfig, RecordingHandle, RecordingMeta,
};
use crate::audit::sftp::{SftpDecoder, SftpEvent};
use crate::audit::{Counters, Event, SessionAudit, SessionMeta};

/// Where recordings go under the audit directory (events name them relative to it).
pub use crate::audit::recording::DIR as RECORDINGS;

/// Terminal size recorded when the client asked for no pty.
const NO_PTY_SIZE: (u16, u16) = (80, 24);

struct PtyInfo {
    term: String,
    cols: u16,
    rows: u16,
}

#[derive(Default)]
struct State {
    pty: Option<PtyInfo>,
    sftp: Option<SftpDecoder>,
    recorder: Option<Recorder>,
    /// Relative to the audit directory, as events name it.
    recording: Option<String>,
}

pub struct ChannelAudit {
    channel: u32,
    audit: SessionAudit,
    meta: RecordingMeta,
    dir: PathBuf,
    state: Mutex<State>,
    /// Set once a recording starts; read on every data message without the lock.
    handle: std::sync::OnceLock<RecordingHandle>,
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// The whole session's (for `session.end`).
    session_bytes: Arc<Counters>,
    /// Counts this channel as open until `finish` is done (`session.end` waits for it).
    open: Mutex<Option<tokio_util::task::task_tracker::TaskTrackerToken>>,
}

fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl ChannelAudit {
    pub fn new(
        channel: u32,
        audit: SessionAudit,
        meta: &SessionMeta,
        session_bytes: Arc<Counters>,
        open: tokio_util::task::task_tracker::TaskTrackerToken,
    ) -> ChannelAudit {
        ChannelAudit {
            channel,
            dir: audit.audit().dir().to_path_buf(),
            audit,
            meta: RecordingMeta {
                session_id: meta.session.clone(),
                user: meta.user.clone(),
                groups: meta.groups.clone(),
                target: meta.target.clone(),
                jit_account: meta.account.clone(),
            },
            state: Mutex::new(State::default()),
            handle: std::sync::OnceLock::new(),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            session_bytes,
            open: Mutex::new(Some(open)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn audit(&self) -> &SessionAudit {
        &self.audit
    }

    pub fn channel(&self) -> u32 {
        self.channel
    }

    pub fn pty(&self, term: &str, cols: u32, rows: u32) {
        // A client without a terminal of its own (`ssh -tt` from a pipe) may say 0×0.
        let (cols, rows) = match (clamp(cols), clamp(rows)) {
            (0, _) | (_, 0) => NO_PTY_SIZE,
            size => size,
        };
        self.state().pty = Some(PtyInfo {
            term: term.to_string(),
            cols,
            rows,
        });
    }

    pub fn has_pty(&self) -> bool {
        self.state().pty.is_some()
    }

    /// TERM from the pty request, if there was one.
    pub fn term(&self) -> Option<String> {
        self.state().pty.as_ref().map(|p| p.term.clone())
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        if let Some(handle) = self.handle.get() {
            handle.resize(clamp(cols), clamp(rows));
        }
    }

    /// Starts the recording (`command` for an exec); returns its name for the event, or
    /// None (logged) if the file cannot be created — the session is not held up by it.
    pub async fn record(&self, command: Option<&str>) -> Option<String> {
        let (term, cols, rows) = {
            let state = self.state();
            match &state.pty {
                Some(p) => (Some(p.term.clone()), p.cols, p.rows),
                None => (None, NO_PTY_SIZE.0, NO_PTY_SIZE.1),
            }
        };
        let name = format!(
            "{RECORDINGS}/{}-{}.cast",
            self.meta.session_id, self.channel
        );
        let mut header = CastHeader::new(cols, rows);
        header.command = command.map(str::to_string);
        header.title = Some(format!(
            "{}@{} ({})",
            self.meta.user,
            self.meta.target,
            self.meta.jit_account.as_deref().unwrap_or("-")
        ));
        header.env = term.map(|t| {
            let mut env = std::collections::BTreeMap::new();
            env.insert("TERM".to_string(), Some(t));
            env
        });
        header.jitgate = Some(self.meta.clone());
        match Recorder::create(self.dir.join(&name), header, RecorderConfig::default()).await {
            Ok(recorder) => {
                let _ = self.handle.set(recorder.handle());
                let mut state = self.state();
                state.recorder = Some(recorder);
                state.recording = Some(name.clone());
                Some(name)
            }
            Err(e) => {
                tracing::error!(session = %self.meta.session_id, error = %e, "terminal recording could not be started");
                None
            }
        }
    }

    /// The channel runs the sftp subsystem: decode its data.
    pub fn sftp(&self) {
        self.state().sftp = Some(SftpDecoder::new());
    }

    /// Data from the client (what the user typed, or SFTP requests).
    pub fn input(&self, data: &Bytes, out: &mut Vec<SftpEvent>) {
        self.from_client
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.session_bytes.add(data.len() as u64, 0);
        if let Some(handle) = self.handle.get() {
            handle.input(data.clone());
        }
        if let Some(sftp) = self.state().sftp.as_mut() {
            sftp.client(data, out);
        }
    }

    /// Data (stdout or stderr) from the target.
    pub fn output(&self, data: &Bytes, out: &mut Vec<SftpEvent>) {
        self.to_client
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.session_bytes.add(0, data.len() as u64);
        if let Some(handle) = self.handle.get() {
            handle.output(data.clone());
        }
        if let Some(sftp) = self.state().sftp.as_mut() {
            sftp.server(data, out);
        }
    }

    /// The channel closed: the last SFTP events, the recording finished and hashed, and
    /// `ssh.exit`.
    pub async fn finish(&self, outcome: &ChannelOutcome) {
        let mut events = Vec::new();
        let (recorder, recording) = {
            let mut state = self.state();
            if let Some(sftp) = state.sftp.as_mut() {
                sftp.finish(&mut events);
            }
            (state.recorder.take(), state.recording.clone())
        };
        for event in events {
            self.audit.emit(event).await;
        }
        let mut recording_sha256 = None;
        if let Some(recorder) = recorder {
            match recorder.finish().await {
                Ok(summary) => recording_sha256 = sha256_file(summary.path).await,
                Err(e) => {
                    tracing::error!(session = %self.meta.session_id, error = %e, "terminal recording could not be finished")
                }
            }
        }
        self.audit
            .emit(Event::SshExit {
                channel: self.channel,
                status: outcome.exit_status,
                signal: outcome.exit_signal.clone(),
                bytes_from_client: self.from_client.load(Ordering::Relaxed),
                bytes_to_client: self.to_client.load(Ordering::Relaxed),
                recording,
                recording_sha256,
            })
            .await;
        drop(self.open.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// SHA-256 of a file, hex, read off the runtime's threads.
async fn sha256_file(path: PathBuf) -> Option<String> {
    tokio::task::spawn_blocking(move || hash(&path).ok())
        .await
        .ok()
        .flatten()
}

fn hash(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::audit::log::hex(ctx.finish().as_ref()))
}
