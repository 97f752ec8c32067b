//! SFTP file-operation audit: decodes a copy of an `sftp` subsystem channel's bytes (both
//! directions, any chunking) into `ssh.sftp` events — one per opened file at its CLOSE, one per
//! remove/rename/mkdir/rmdir/setstat/symlink at its STATUS. The relay never waits on it.
//!
//! Protocol: draft-ietf-secsh-filexfer-02 (version 3), which is what OpenSSH's sftp-server
//! speaks, plus the OpenSSH extensions that name paths (OpenSSH `PROTOCOL` §4).

mod wire;

use std::collections::HashMap;
use std::ops::ControlFlow;

use serde::{Serialize, Serializer};
use wire::{ty, Fields, FrameCounts, Framer, Packet};

/// Longest path kept in an event (Linux PATH_MAX); longer ones are cut, marked with "…".
const MAX_PATH: usize = 4096;
/// Requests awaiting a response that are tracked at once; OpenSSH's client keeps 64 in flight.
const MAX_PENDING: usize = 4096;
/// Bytes of paths and handles those pending requests may hold together.
const MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Open handles tracked at once.
const MAX_HANDLES: usize = 1024;

/// One file operation, as written to the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename = "ssh.sftp")]
pub struct SftpEvent {
    pub op: SftpOp,
    /// The file or directory (for symlink: the link created), lossy UTF-8.
    pub path: String,
    /// rename/link: the new name; symlink: what the link points to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Bytes the server returned in DATA responses for this handle.
    pub bytes_read: u64,
    /// Bytes of WRITE requests the server answered with OK.
    pub bytes_written: u64,
    /// open/read/write: the OPEN flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_flags: Option<OpenFlags>,
    /// setstat, mkdir, and an open that creates: the attributes asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attrs: Option<SftpAttrs>,
    /// readdir: names the server listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// "ok" or the SSH_FX_* name of the first error; null when the channel closed before the
    /// server answered (the operation may or may not have happened).
    pub status: Option<SftpStatus>,
}

/// What was done. A file's op follows its OPEN flags: read-only → read, write without read →
/// write, both → open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SftpOp {
    Open,
    Read,
    Write,
    Remove,
    Rename,
    Mkdir,
    Rmdir,
    Setstat,
    Symlink,
    /// hardlink@openssh.com
    Link,
    /// A directory opened and listed (OPENDIR … CLOSE).
    Readdir,
}

/// SSH_FXP_OPEN pflags (filexfer-02 §6.3), serialized as a list of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    const NAMES: [(u32, &'static str); 6] = [
        (0x01, "read"),
        (0x02, "write"),
        (0x04, "append"),
        (0x08, "create"),
        (0x10, "truncate"),
        (0x20, "exclusive"),
    ];

    fn op(self) -> SftpOp {
        match (self.0 & 0x01 != 0, self.0 & 0x02 != 0) {
            (true, false) => SftpOp::Read,
            (false, true) => SftpOp::Write,
            (true, true) | (false, false) => SftpOp::Open,
        }
    }
}

impl Serialize for OpenFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        names.serialize(s)
    }
}

/// The attributes a request sets (filexfer-02 §5); permissions as an octal string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SftpAttrs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atime: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<u32>,
}

/// A STATUS code (filexfer-02 §7), serialized as "ok" or its SSH_FX_* name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftpStatus(pub u32);

impl SftpStatus {
    pub const OK: SftpStatus = SftpStatus(0);
    pub const EOF: SftpStatus = SftpStatus(1);

    pub fn name(self) -> std::borrow::Cow<'static, str> {
        let name = match self.0 {
            0 => "ok",
            1 => "SSH_FX_EOF",
            2 => "SSH_FX_NO_SUCH_FILE",
            3 => "SSH_FX_PERMISSION_DENIED",
            4 => "SSH_FX_FAILURE",
            5 => "SSH_FX_BAD_MESSAGE",
            6 => "SSH_FX_NO_CONNECTION",
            7 => "SSH_FX_CONNECTION_LOST",
            8 => "SSH_FX_OP_UNSUPPORTED",
            n => return format!("SSH_FX_{n}").into(),
        };
        name.into()
    }
}

impl Serialize for SftpStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// What the decoder could not follow, for the session's end event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SftpStats {
    pub packets: u64,
    /// Path-carrying packets over the 256 KiB cap, skipped undecoded.
    pub oversized: u64,
    /// Packets whose fields did not parse.
    pub malformed: u64,
    /// Requests or handles not followed because the tracking caps were reached.
    pub untracked: u64,
    /// Set when the server chose a version other than 3: decoding stopped there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported_version: Option<u32>,
}

/// A request awaiting its response, by request id.
enum Pending {
    Open {
        path: String,
        flags: OpenFlags,
        attrs: Option<SftpAttrs>,
    },
    Opendir(String),
    Read(Vec<u8>),
    Write(Vec<u8>, u64),
    Readdir(Vec<u8>),
    Close(Vec<u8>),
    /// An operation reported on its STATUS: the event waits there with status unset.
    Reported(SftpEvent),
    /// FSETSTAT names a handle; the path is looked up when the STATUS comes.
    Fsetstat(Vec<u8>, SftpAttrs),
}

impl Pending {
    fn cost(&self) -> usize {
        match self {
            Pending::Open { path, .. } | Pending::Opendir(path) => path.len(),
            Pending::Read(h) | Pending::Write(h, _) | Pending::Readdir(h) | Pending::Close(h) => {
                h.len()
            }
            Pending::Fsetstat(h, _) => h.len(),
            Pending::Reported(e) => e.path.len() + e.target_path.as_ref().map_or(0, String::len),
        }
    }
}

/// An open file or directory handle.
struct Opened {
    seq: u64,
    event: SftpEvent,
    /// The first error a READ/WRITE/READDIR on it got, which becomes the event's status.
    error: Option<SftpStatus>,
}

/// Decodes both directions of one sftp channel. Feed it copies; it never fails or panics.
#[derive(Default)]
pub struct SftpDecoder {
    client: Framer,
    server: Framer,
    frames: FrameCounts,
    tracker: Tracker,
}

/// Requests in flight and open handles: the state that pairs responses with requests.
#[derive(Default)]
struct Tracker {
    pending: HashMap<u32, (u64, Pending)>,
    pending_bytes: usize,
    handles: HashMap<Vec<u8>, Opened>,
    seq: u64,
    stats: SftpStats,
}

impl SftpDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the client sent (requests).
    pub fn client(&mut self, chunk: &[u8], _out: &mut Vec<SftpEvent>) {
        let Self {
            client,
            frames,
            tracker,
            ..
        } = self;
        if tracker.stats.unsupported_version.is_some() {
            return;
        }
        client.feed(chunk, frames, |p| {
            tracker.stats.packets += 1;
            if tracker.request(&p).is_none() {
                tracker.stats.malformed += 1;
            }
            ControlFlow::Continue(())
        });
    }

    /// Bytes the server sent (responses).
    pub fn server(&mut self, chunk: &[u8], out: &mut Vec<SftpEvent>) {
        let Self {
            server,
            frames,
            tracker,
            ..
        } = self;
        if tracker.stats.unsupported_version.is_some() {
            return;
        }
        server.feed(chunk, frames, |p| {
            tracker.stats.packets += 1;
            if tracker.response(&p, out).is_none() {
                tracker.stats.malformed += 1;
            }
            // After a VERSION we do not speak, nothing is read, not even the rest of this
            // chunk: what is reported must not depend on how the reads were cut.
            if tracker.stats.unsupported_version.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    }

    /// The channel closed: files still open, and operations never answered, are reported
    /// with status null, in the order they were requested.
    pub fn finish(&mut self, out: &mut Vec<SftpEvent>) {
        let t = &mut self.tracker;
        let mut left: Vec<(u64, SftpEvent)> = Vec::new();
        for (_, (seq, pending)) in t.pending.drain() {
            let event = match pending {
                Pending::Open { path, flags, attrs } => file_event(path, flags, attrs),
                Pending::Opendir(path) => plain(SftpOp::Readdir, path),
                Pending::Reported(event) => event,
                Pending::Fsetstat(handle, attrs) => match t.handles.get(&handle) {
                    Some(opened) => SftpEvent {
                        attrs: Some(attrs),
                        ..plain(SftpOp::Setstat, opened.event.path.clone())
                    },
                    None => continue,
                },
                Pending::Read(_) | Pending::Write(..) | Pending::Readdir(_) | Pending::Close(_) => {
                    continue
                }
            };
            left.push((seq, event));
        }
        for (_, opened) in t.handles.drain() {
            let mut event = opened.event;
            event.status = opened.error;
            left.push((opened.seq, event));
        }
        left.sort_by_key(|(seq, _)| *seq);
        out.extend(left.into_iter().map(|(_, e)| e));
        t.pending_bytes = 0;
    }

    /// Counters of what was skipped or not understood; framing's included.
    pub fn stats(&self) -> SftpStats {
        let stats = &self.tracker.stats;
        SftpStats {
            oversized: self.frames.oversized,
            malformed: stats.malformed + self.frames.empty,
            ..stats.clone()
        }
    }

    /// Bytes buffered by framing and tracking, for the fuzz target's bound.
    fn held(&self) -> usize {
        self.client.buffered() + self.server.buffered() + self.tracker.pending_bytes
    }
}

impl Tracker {
    fn request(&mut self, p: &Packet<'_>) -> Option<()> {
        if p.packet_type == ty::INIT {
            return Some(());
        }
        if p.truncated && wire::keep_whole(p.packet_type) {
            // A path-carrying packet over the cap: framing counted it; it cannot be decoded.
            return Some(());
        }
        let mut f = Fields(p.payload);
        let id = f.u32()?;
        let pending = match p.packet_type {
            ty::OPEN => {
                let path = path(f.string()?);
                let flags = OpenFlags(f.u32()?);
                let attrs = f.attrs().filter(|a| *a != SftpAttrs::default());
                Pending::Open { path, flags, attrs }
            }
            ty::OPENDIR => Pending::Opendir(path(f.string()?)),
            ty::CLOSE => Pending::Close(f.string()?.to_vec()),
            ty::READ => Pending::Read(f.string()?.to_vec()),
            ty::READDIR => Pending::Readdir(f.string()?.to_vec()),
            ty::WRITE => {
                let handle = f.string()?.to_vec();
                let _offset = f.u64()?;
                let len = f.string_len()?;
                // The data string must fit in the packet it came in.
                let fixed = 4 + 4 + handle.len() + 8 + 4;
                if len as usize > p.len.saturating_sub(1 + fixed) {
                    return None;
                }
                Pending::Write(handle, u64::from(len))
            }
            ty::FSETSTAT => {
                let handle = f.string()?.to_vec();
                Pending::Fsetstat(handle, f.attrs()?)
            }
            ty::SETSTAT => {
                let path = path(f.string()?);
                Pending::Reported(SftpEvent {
                    attrs: Some(f.attrs()?),
                    ..plain(SftpOp::Setstat, path)
                })
            }
            ty::REMOVE => Pending::Reported(plain(SftpOp::Remove, path(f.string()?))),
            ty::MKDIR => {
                let path = path(f.string()?);
                let attrs = f.attrs().filter(|a| *a != SftpAttrs::default());
                Pending::Reported(SftpEvent {
                    attrs,
                    ..plain(SftpOp::Mkdir, path)
                })
            }
            ty::RMDIR => Pending::Reported(plain(SftpOp::Rmdir, path(f.string()?))),
            ty::RENAME => Pending::Reported(two_paths(SftpOp::Rename, &mut f)?),
            ty::SYMLINK => {
                // OpenSSH sends SYMLINK's arguments reversed from the draft — target first,
                // then the link (OpenSSH PROTOCOL §4.1) — and every client follows it.
                let target = path(f.string()?);
                let link = path(f.string()?);
                Pending::Reported(SftpEvent {
                    target_path: Some(target),
                    ..plain(SftpOp::Symlink, link)
                })
            }
            ty::EXTENDED => match f.string()? {
                b"posix-rename@openssh.com" => {
                    Pending::Reported(two_paths(SftpOp::Rename, &mut f)?)
                }
                b"hardlink@openssh.com" => Pending::Reported(two_paths(SftpOp::Link, &mut f)?),
                b"lsetstat@openssh.com" => {
                    let path = path(f.string()?);
                    Pending::Reported(SftpEvent {
                        attrs: Some(f.attrs()?),
                        ..plain(SftpOp::Setstat, path)
                    })
                }
                // statvfs, fsync, limits, expand-path, copy-data, home-directory…: they read
                // metadata, or act on handles already reported at their CLOSE.
                _ => return Some(()),
            },
            // STAT, LSTAT, FSTAT, REALPATH, READLINK and unknown types change nothing.
            _ => return Some(()),
        };
        self.track(id, pending);
        Some(())
    }

    fn response(&mut self, p: &Packet<'_>, out: &mut Vec<SftpEvent>) -> Option<()> {
        let mut f = Fields(p.payload);
        if p.packet_type == ty::VERSION {
            let version = f.u32()?;
            if version != 3 {
                self.stats.unsupported_version = Some(version);
            }
            return Some(());
        }
        let id = f.u32()?;
        match p.packet_type {
            ty::STATUS => {
                let status = SftpStatus(f.u32()?);
                if let Some((_, pending)) = self.untrack(id) {
                    self.status(pending, status, out);
                }
            }
            ty::HANDLE => {
                let handle = f.string()?.to_vec();
                let Some((seq, pending)) = self.untrack(id) else {
                    return Some(());
                };
                let event = match pending {
                    Pending::Open { path, flags, attrs } => file_event(path, flags, attrs),
                    Pending::Opendir(path) => SftpEvent {
                        entries: Some(0),
                        ..plain(SftpOp::Readdir, path)
                    },
                    // A HANDLE answers only OPEN and OPENDIR.
                    Pending::Read(_)
                    | Pending::Write(..)
                    | Pending::Readdir(_)
                    | Pending::Close(_)
                    | Pending::Reported(_)
                    | Pending::Fsetstat(..) => return None,
                };
                if self.handles.len() >= MAX_HANDLES && !self.handles.contains_key(&handle) {
                    self.stats.untracked += 1;
                    return Some(());
                }
                let opened = Opened {
                    seq,
                    event,
                    error: None,
                };
                self.handles.insert(handle, opened);
            }
            ty::DATA => {
                let len = f.string_len()?;
                if let Some((_, Pending::Read(handle))) = self.untrack(id) {
                    if let Some(opened) = self.handles.get_mut(&handle) {
                        opened.event.bytes_read += u64::from(len);
                    }
                }
            }
            ty::NAME => {
                let count = f.u32()?;
                if let Some((_, Pending::Readdir(handle))) = self.untrack(id) {
                    if let Some(opened) = self.handles.get_mut(&handle) {
                        let entries = opened.event.entries.get_or_insert(0);
                        *entries += u64::from(count);
                    }
                }
            }
            // ATTRS, EXTENDED_REPLY and unknown types answer requests that were not tracked.
            _ => {
                self.untrack(id);
            }
        }
        Some(())
    }

    /// A STATUS for a tracked request.
    fn status(&mut self, pending: Pending, status: SftpStatus, out: &mut Vec<SftpEvent>) {
        let failed = status != SftpStatus::OK && status != SftpStatus::EOF;
        match pending {
            // A STATUS answering OPEN or OPENDIR is its failure.
            Pending::Open { path, flags, attrs } => out.push(SftpEvent {
                status: Some(status),
                ..file_event(path, flags, attrs)
            }),
            Pending::Opendir(path) => out.push(SftpEvent {
                status: Some(status),
                ..plain(SftpOp::Readdir, path)
            }),
            Pending::Read(handle) | Pending::Readdir(handle) => {
                if let Some(opened) = self.handles.get_mut(&handle) {
                    if failed {
                        opened.error.get_or_insert(status);
                    }
                }
            }
            Pending::Write(handle, len) => {
                if let Some(opened) = self.handles.get_mut(&handle) {
                    if status == SftpStatus::OK {
                        opened.event.bytes_written += len;
                    } else {
                        opened.error.get_or_insert(status);
                    }
                }
            }
            Pending::Close(handle) => {
                if let Some(opened) = self.handles.remove(&handle) {
                    let mut event = opened.event;
                    event.status = Some(opened.error.unwrap_or(status));
                    out.push(event);
                }
            }
            Pending::Fsetstat(handle, attrs) => {
                if let Some(opened) = self.handles.get(&handle) {
                    out.push(SftpEvent {
                        attrs: Some(attrs),
                        status: Some(status),
                        ..plain(SftpOp::Setstat, opened.event.path.clone())
                    });
                }
            }
            Pending::Reported(mut event) => {
                event.status = Some(status);
                out.push(event);
            }
        }
    }

    fn track(&mut self, id: u32, pending: Pending) {
        let cost = pending.cost();
        if self.pending.len() >= MAX_PENDING || self.pending_bytes + cost > MAX_PENDING_BYTES {
            self.stats.untracked += 1;
            return;
        }
        let seq = self.seq;
        self.seq += 1;
        self.pending_bytes += cost;
        if let Some((_, old)) = self.pending.insert(id, (seq, pending)) {
            // A reused id: the client no longer waits for the old request's answer.
            self.pending_bytes -= old.cost();
        }
    }

    fn untrack(&mut self, id: u32) -> Option<(u64, Pending)> {
        let (seq, pending) = self.pending.remove(&id)?;
        self.pending_bytes -= pending.cost();
        Some((seq, pending))
    }
}

fn plain(op: SftpOp, path: String) -> SftpEvent {
    SftpEvent {
        op,
        path,
        target_path: None,
        bytes_read: 0,
        bytes_written: 0,
        open_flags: None,
        attrs: None,
        entries: None,
        status: None,
    }
}

fn file_event(path: String, flags: OpenFlags, attrs: Option<SftpAttrs>) -> SftpEvent {
    SftpEvent {
        open_flags: Some(flags),
        attrs,
        ..plain(flags.op(), path)
    }
}

fn two_paths(op: SftpOp, f: &mut Fields<'_>) -> Option<SftpEvent> {
    let from = path(f.string()?);
    let to = path(f.string()?);
    Some(SftpEvent {
        target_path: Some(to),
        ..plain(op, from)
    })
}

/// A client-chosen path as text: lossy UTF-8, cut at `MAX_PATH` bytes.
fn path(raw: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(raw).into_owned();
    if s.len() > MAX_PATH {
        let mut cut = MAX_PATH;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Fuzz entry: the bytes are a script of chunks — each control byte's low bit picks the
/// direction, the rest its length — fed to one decoder, then closed. Must never panic, and
/// what it holds must stay under its caps.
pub fn fuzz_sftp(data: &[u8]) {
    let mut decoder = SftpDecoder::new();
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(control >> 1).min(tail.len()));
        if control & 1 == 0 {
            decoder.client(chunk, &mut out);
        } else {
            decoder.server(chunk, &mut out);
        }
        out.clear();
        debug_assert!(decoder.held() <= 2 * wire::MAX_PACKET + MAX_PENDING_BYTES);
        rest = tail;
    }
    decoder.finish(&mut out);
}

#[cfg(test)]
mod tests;
