//! The event log: append-only JSON lines, one file per instance and day
//! (`audit-<instance>-<YYYY-MM-DD>.jsonl`, UTC), hash-chained — each line ends with
//! `"prev":"<SHA-256 of the previous line>"`, and a file's first line links to the previous
//! file's last, so `jitgate audit verify` finds a changed, removed, inserted or reordered line.
//!
//! One writer task owns the files. Sessions hand it events through a bounded [`Queue`] and
//! never wait on the disk: the writer takes what is queued every [`DRAIN_INTERVAL`], formats
//! and chains each line, writes in batches and flushes with `fdatasync` every
//! [`FLUSH_INTERVAL`] and at close. A write that
//! fails keeps its lines queued (the chain stays whole), reports the failure on the health
//! channel, and is retried at each interval; the gateway decides what a failure means
//! (`audit.on_failure`). At every flush the writer also checks that the file it writes is
//! still the one at its path: a file removed or replaced underneath it is a failure to report,
//! not a place to keep writing into unseen.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::event::{rfc3339, strip_braces, Body, Event, Record, SCHEMA_VERSION};

/// How often written lines are flushed to disk (and a failed write retried).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Lines written before a batch goes to the file without waiting for the interval.
const BATCH_BYTES: usize = 256 * 1024;

/// Lines kept while the disk refuses them; beyond this they are counted as lost.
const PENDING_MAX: usize = 64 * 1024 * 1024;

/// The link of the first line ever written by an instance.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether the writer can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Writes fail; the words say why (for the log and the user's refusal).
    Failing(String),
}

pub enum Msg {
    /// Write and fsync everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// How often the writer takes what sessions queued. Sessions never wake it for one event
/// (a wake-up per query would cost the relay more than the event itself); it wakes at this
/// interval, or at once when [`WAKE_AT`] records wait.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// Records waiting that make a session wake the writer.
pub const WAKE_AT: usize = 1024;

/// Records on their way to the writer, pushed under a short lock.
#[derive(Default)]
pub struct Queue {
    records: std::sync::Mutex<Vec<Record>>,
    wake: tokio::sync::Notify,
}

impl Queue {
    /// Queues the record in `slot` (taking it) unless `max` records already wait; false if
    /// so. Wakes the writer when the queue reaches [`WAKE_AT`] (or is full).
    pub fn push(&self, slot: &mut Option<Record>, max: usize) -> bool {
        let len = {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if records.len() >= max {
                drop(records);
                self.wake.notify_one();
                return false;
            }
            records.extend(slot.take());
            records.len()
        };
        if len == WAKE_AT {
            self.wake.notify_one();
        }
        true
    }

    fn take(&self, into: &mut Vec<Record>) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *records, into);
    }
}

/// The file name of `instance`'s log for the UTC day of `t`.
pub fn file_name(instance: &str, t: SystemTime) -> String {
    let date = time::OffsetDateTime::from(t).date();
    format!("audit-{instance}-{date}.jsonl")
}

/// The chain link of a line: lowercase hex SHA-256 of its bytes (without the newline).
pub fn link(line: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, line);
    hex(digest.as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `instance`'s log files in `dir`, oldest first (the date in the name sorts).
pub fn instance_files(dir: &Path, instance: &str) -> io::Result<Vec<PathBuf>> {
    let prefix = format!("audit-{instance}-");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && is_log_name(n, &prefix))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `audit-<instance>-YYYY-MM-DD.jsonl`: the rest after the prefix is exactly a date.
fn is_log_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(".jsonl"))
        .is_some_and(|date| {
            date.len() == 10
                && date.bytes().enumerate().all(|(i, b)| {
                    if i == 4 || i == 7 {
                        b == b'-'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        })
}

/// Every log file in `dir` (all instances), grouped by instance, each oldest first.
pub fn all_chains(dir: &Path) -> io::Result<Vec<(String, Vec<PathBuf>)>> {
    let mut instances: Vec<String> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| {
            let rest = n.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
            // The last 11 characters are "-YYYY-MM-DD".
            let cut = rest.len().checked_sub(11)?;
            let instance = rest.get(..cut)?;
            is_log_name(&n, &format!("audit-{instance}-")).then(|| instance.to_string())
        })
        .collect();
    instances.sort();
    instances.dedup();
    instances
        .into_iter()
        .map(|i| instance_files(dir, &i).map(|f| (i, f)))
        .collect()
}

/// Where an instance's chain stands: the next line's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tail {
    seq: u64,
    prev: String,
}

/// Reads the last complete line of `path`; a partial line after it (a crash in mid-write) is
/// reported as the number of bytes to cut.
fn last_line(path: &Path) -> io::Result<(Option<Vec<u8>>, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    // Lines are short (a query is capped); read back far enough to find two newlines.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let partial = buf.iter().rev().take_while(|&&b| b != b'\n').count() as u64;
        let complete = &buf[..buf.len() - partial as usize];
        let body = complete.strip_suffix(b"\n").unwrap_or(complete);
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => return Ok((Some(body[i + 1..].to_vec()), partial)),
            None if start == 0 => {
                return Ok(((!body.is_empty()).then(|| body.to_vec()), partial));
            }
            None => window *= 4,
        }
    }
}

pub(crate) fn seq_of(line: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("seq")?.as_u64()
}

/// The open file of the current day.
struct Current {
    path: PathBuf,
    file: File,
    /// Bytes known to be in the file (written whole).
    len: u64,
    dev_ino: (u64, u64),
}

/// The writer's state; driven by [`run`].
pub struct Writer {
    dir: PathBuf,
    instance: String,
    tail: Tail,
    current: Option<Current>,
    /// Lines formatted and chained but not yet in a file, with the file they belong to.
    pending: Vec<(PathBuf, Vec<u8>)>,
    pending_bytes: usize,
    /// Lines that could not even be queued (the disk refused them for too long).
    lost: u64,
    unsynced: bool,
    repairs: Vec<(String, u64)>,
}

impl Writer {
    /// Opens `dir` (created 0700 if missing) for `instance` and finds where its chain stands.
    pub fn open(dir: &Path, instance: &str) -> io::Result<Writer> {
        fs::create_dir_all(dir)?;
        let files = instance_files(dir, instance)?;
        let mut tail = Tail {
            seq: 0,
            prev: GENESIS.to_string(),
        };
        let mut repairs = Vec::new();
        // The newest file that has a line gives the tail; empty files are skipped.
        for path in files.iter().rev() {
            let (line, partial) = last_line(path)?;
            if partial > 0 {
                let file = OpenOptions::new().write(true).open(path)?;
                let len = file.metadata()?.len();
                file.set_len(len - partial)?;
                file.sync_all()?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                tracing::warn!(file = %name, bytes = partial, "audit log ended in a partial line (a crash in mid-write?); it was cut off");
                repairs.push((name, partial));
            }
            if let Some(line) = line {
                tail = Tail {
                    seq: seq_of(&line).map_or(0, |s| s + 1),
                    prev: link(&line),
                };
                break;
            }
        }
        Ok(Writer {
            dir: dir.to_path_buf(),
            instance: instance.to_string(),
            tail,
            current: None,
            pending: Vec::new(),
            pending_bytes: 0,
            lost: 0,
            unsynced: false,
            repairs,
        })
    }

    /// Formats, chains and queues one record.
    pub fn push(&mut self, record: &Record) {
        if self.lost > 0 && self.pending_bytes < PENDING_MAX {
            let lost = std::mem::take(&mut self.lost);
            self.push_body(
                SystemTime::now(),
                None,
                &Body::Core(Event::AuditLost { count: lost }),
            );
        }
        self.push_body(record.time, record.session.as_deref(), &record.body);
    }

    fn push_body(&mut self, time: SystemTime, session: Option<&str>, body: &Body) {
        if self.pending_bytes >= PENDING_MAX {
            self.lost += 1;
            return;
        }
        let body = serde_json::to_string(body).unwrap_or_default();
        let body = strip_braces(&body);
        let mut line = String::with_capacity(160 + body.len() + session.map_or(0, str::len));
        line.push_str("{\"v\":");
        line.push_str(&SCHEMA_VERSION.to_string());
        line.push_str(",\"seq\":");
        line.push_str(&self.tail.seq.to_string());
        line.push_str(",\"time\":\"");
        line.push_str(&rfc3339(time));
        line.push_str("\",\"instance\":");
        line.push_str(&serde_json::to_string(&self.instance).unwrap_or_default());
        for part in [session.unwrap_or(""), body] {
            if !part.is_empty() {
                line.push(',');
                line.push_str(part);
            }
        }
        line.push_str(",\"prev\":\"");
        line.push_str(&self.tail.prev);
        line.push_str("\"}");
        self.tail.prev = link(line.as_bytes());
        self.tail.seq += 1;
        crate::telemetry::audit_line(&line, body);
        line.push('\n');
        let path = self.dir.join(file_name(&self.instance, time));
        self.pending_bytes += line.len();
        match self.pending.last_mut() {
            Some((p, buf)) if *p == path => buf.extend_from_slice(line.as_bytes()),
            _ => self.pending.push((path, line.into_bytes())),
        }
    }

    /// The first lines of a run: the start marker and any repair made on opening.
    pub fn start(&mut self) {
        let now = SystemTime::now();
        self.push_body(
            now,
            None,
            &Body::Core(Event::AuditStart {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        for (file, bytes_removed) in std::mem::take(&mut self.repairs) {
            self.push_body(
                now,
                None,
                &Body::Core(Event::AuditRepaired {
                    file,
                    bytes_removed,
                }),
            );
        }
    }

    pub fn wants_write(&self) -> bool {
        self.pending_bytes >= BATCH_BYTES
    }

    /// Writes every queued line to its file; on failure the unwritten ones stay queued.
    pub fn write(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let path = self.pending[0].0.clone();
            let current = open_current(&mut self.current, &path)?;
            // Checked before each batch: lines written into a file removed from the
            // directory would be lost without a trace.
            if let Err(e) = still_at_path(current) {
                self.current = None;
                return Err(e);
            }
            let buf = &self.pending[0].1;
            if let Err(e) = current.file.write_all(buf) {
                // Part of the batch may be in the file: cut back to the last whole line, so
                // the retry writes the batch once.
                let _ = current.file.set_len(current.len);
                let _ = current.file.seek(SeekFrom::Start(current.len));
                self.current = None;
                return Err(e);
            }
            current.len += buf.len() as u64;
            self.pending_bytes -= buf.len();
            self.pending.remove(0);
            self.unsynced = true;
        }
        Ok(())
    }

    /// Writes and makes durable what is queued, checking the file is still at its path.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write()?;
        if self.current.is_none() {
            // Nothing was written since a failure: whether today's file can be opened is
            // what says the log is writable again.
            let path = self.dir.join(file_name(&self.instance, SystemTime::now()));
            open_current(&mut self.current, &path)?;
        }
        if let Some(current) = &self.current {
            if let Err(e) = still_at_path(current) {
                self.current = None;
                return Err(e);
            }
            if self.unsynced {
                current.file.sync_data()?;
                self.unsynced = false;
            }
        }
        Ok(())
    }

    pub fn pending_lines(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The open file for `path`, opened (created 0600, never through a symlink) if it is not the
/// one open now; the one open before is synced first.
fn open_current<'c>(current: &'c mut Option<Current>, path: &Path) -> io::Result<&'c mut Current> {
    if current.as_ref().is_some_and(|c| c.path != path) {
        if let Some(old) = current.take() {
            old.file.sync_data()?;
        }
    }
    if current.is_none() {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(path)?;
        let meta = file.metadata()?;
        *current = Some(Current {
            path: path.to_path_buf(),
            len: meta.len(),
            dev_ino: (meta.dev(), meta.ino()),
            file,
        });
    }
    current
        .as_mut()
        .ok_or_else(|| io::Error::other("audit file not open"))
}

/// O_NOFOLLOW: an audit file that is a symlink is not followed (it would be someone else's).
fn libc_o_nofollow() -> i32 {
    // Linux's value; jitgate targets Linux (the Dockerfile, the provisioning scripts).
    0o400000
}

fn still_at_path(current: &Current) -> io::Result<()> {
    match fs::symlink_metadata(&current.path) {
        Ok(meta) if (meta.dev(), meta.ino()) == current.dev_ino => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "{} was replaced while the gateway wrote it",
            current.path.display()
        ))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "{} was removed while the gateway wrote it ({e})",
                current.path.display()
            ),
        )),
    }
}

/// The writer task: takes records until every sender is gone, writing them as described
/// in the module comment, and reports its health on `health`.
pub async fn run(
    mut writer: Writer,
    queue: std::sync::Arc<Queue>,
    mut rx: mpsc::Receiver<Msg>,
    health: watch::Sender<Health>,
) {
    writer.start();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut batch: Vec<Record> = Vec::new();
    let mut drain = |writer: &mut Writer, health: &watch::Sender<Health>| {
        queue.take(&mut batch);
        for record in batch.drain(..) {
            writer.push(&record);
            if writer.wants_write() {
                report(health, writer.write());
            }
        }
    };
    loop {
        tokio::select! {
            () = queue.wake.notified() => drain(&mut writer, &health),
            _ = drain_tick.tick() => drain(&mut writer, &health),
            msg = rx.recv() => match msg {
                Some(Msg::Flush(done)) => {
                    drain(&mut writer, &health);
                    report(&health, writer.flush());
                    if writer.pending_lines() {
                        waiting.push(done);
                    } else {
                        let _ = done.send(());
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                drain(&mut writer, &health);
                report(&health, writer.flush());
                if !writer.pending_lines() {
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
            }
        }
    }
    drain(&mut writer, &health);
    if let Err(e) = writer.flush() {
        tracing::error!(error = %e, "audit log: the last events could not be written at shutdown");
    }
}

fn report(health: &watch::Sender<Health>, result: io::Result<()>) {
    let now = match result {
        Ok(()) => Health::Ok,
        Err(e) => Health::Failing(e.to_string()),
    };
    health.send_if_modified(|h| {
        if *h == now {
            return false;
        }
        match &now {
            Health::Ok => tracing::warn!("audit log writable again"),
            Health::Failing(why) => {
                tracing::error!(error = %why, "audit log cannot be written")
            }
        }
        *h = now;
        true
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(n: u64) -> Record {
        Record {
            time: SystemTime::now(),
            session: Some("\"session\":\"s1\"".into()),
            body: Body::Core(Event::SessionWarning {
                message: format!("m{n}"),
            }),
        }
    }

    #[test]
    fn lines_chain_and_continue_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), "gw1").unwrap();
        w.start();
        w.push(&record(1));
        w.flush().unwrap();
        drop(w);
        let mut w = Writer::open(dir.path(), "gw1").unwrap();
        w.start();
        w.push(&record(2));
        w.flush().unwrap();
        let files = instance_files(dir.path(), "gw1").unwrap();
        assert_eq!(files.len(), 1);
        let text = fs::read_to_string(&files[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let mut prev = GENESIS.to_string();
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["seq"], i as u64);
            assert_eq!(v["v"], 1);
            assert_eq!(v["prev"], prev.as_str());
            prev = link(line.as_bytes());
        }
        assert!(lines[1].contains("\"session\":\"s1\""));
        assert!(lines[3].contains("\"message\":\"m2\""));
    }

    #[test]
    fn a_partial_last_line_is_cut_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), "gw1").unwrap();
        w.start();
        w.flush().unwrap();
        drop(w);
        let path = &instance_files(dir.path(), "gw1").unwrap()[0];
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"{\"v\":1,\"seq\":1,\"ti").unwrap();
        let mut w = Writer::open(dir.path(), "gw1").unwrap();
        w.start();
        w.flush().unwrap();
        let text = fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("\"event\":\"audit.repaired\""));
        assert!(text.contains("\"bytes_removed\":18"));
    }

    #[test]
    fn a_removed_file_is_a_failure_not_a_silent_sink() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), "gw1").unwrap();
        w.start();
        w.flush().unwrap();
        let path = instance_files(dir.path(), "gw1").unwrap().remove(0);
        fs::remove_file(&path).unwrap();
        w.push(&record(1));
        let err = w.flush().unwrap_err();
        assert!(err.to_string().contains("removed"), "{err}");
        // The next flush writes into a new file at the path.
        w.flush().unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("\"m1\""));
    }

    #[test]
    fn log_names_are_recognised_per_instance() {
        assert!(is_log_name("audit-gw-1-2026-12-02.jsonl", "audit-gw-1-"));
        assert!(!is_log_name(
            "audit-gw-1-2026-12-02.jsonl.bak",
            "audit-gw-1-"
        ));
        assert!(!is_log_name("audit-gw-1-x-2026-12-02.jsonl", "audit-gw-1-"));
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "audit-a-2026-12-01.jsonl",
            "audit-a-2026-12-02.jsonl",
            "audit-b-c-2026-12-02.jsonl",
            "notes.txt",
        ] {
            fs::write(dir.path().join(n), "").unwrap();
        }
        let chains = all_chains(dir.path()).unwrap();
        let names: Vec<(&str, usize)> = chains.iter().map(|(i, f)| (i.as_str(), f.len())).collect();
        assert_eq!(names, [("a", 2), ("b-c", 1)]);
    }
}
