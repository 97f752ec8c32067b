//! SFTP framing for the decoder: cuts one direction's byte stream, fed in chunks of any size,
//! into packets (`uint32 length`, then `byte type` and the payload; filexfer-02 §3), keeping
//! only as much of each packet as the decoder needs so memory stays bounded.

use std::ops::ControlFlow;

/// Largest packet buffered whole. OpenSSH's sftp-server refuses packets over 256 KiB
/// (`SFTP_MAX_MSG_LENGTH`), so nothing legitimate is lost to this cap.
pub(super) const MAX_PACKET: usize = 256 * 1024;

/// How much of a packet is kept when only its first fields matter (WRITE, DATA, NAME…):
/// type, id, a handle (OpenSSH's are 4 bytes, the draft allows 256), offset and a length.
pub(super) const HEAD_LEN: usize = 1024;

/// Packet types (filexfer-02 §3 and §7), version 3 as OpenSSH speaks it.
pub(super) mod ty {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const RENAME: u8 = 18;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const EXTENDED: u8 = 200;
}

/// Types that carry paths, kept whole (up to `MAX_PACKET`). Every other type is read only
/// for its first fields (id, handle, status code, data length), so only its head is kept,
/// whatever its size: bulk data and listings are counted, never buffered.
pub(super) fn keep_whole(packet_type: u8) -> bool {
    matches!(
        packet_type,
        ty::OPEN
            | ty::SETSTAT
            | ty::OPENDIR
            | ty::REMOVE
            | ty::MKDIR
            | ty::RMDIR
            | ty::RENAME
            | ty::SYMLINK
            | ty::EXTENDED
    )
}

/// One packet as the decoder sees it: its type, its declared length, and the bytes kept.
pub(super) struct Packet<'a> {
    pub packet_type: u8,
    /// Length of type + payload as declared on the wire.
    pub len: usize,
    /// The payload after the type byte: whole, or only its head (see `truncated`).
    pub payload: &'a [u8],
    /// Whether bytes past `payload` were skipped rather than kept.
    pub truncated: bool,
}

/// Framing state of one direction.
#[derive(Default)]
pub(super) struct Framer {
    len_bytes: [u8; 4],
    len_got: usize,
    /// Some while inside a packet: (declared length, bytes of it seen so far).
    body: Option<(usize, usize)>,
    /// Bytes of the current packet kept (type byte first), at most `keep`.
    buf: Vec<u8>,
    keep: usize,
}

/// What framing saw that the decoder reports in its stats.
#[derive(Default)]
pub(super) struct FrameCounts {
    pub oversized: u64,
    pub empty: u64,
}

impl Framer {
    /// Feeds one chunk; `on_packet` gets every packet the chunk completes, until it answers
    /// `Break` (then the rest of the chunk is left unread, as later chunks will be).
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        counts: &mut FrameCounts,
        mut on_packet: impl FnMut(Packet<'_>) -> ControlFlow<()>,
    ) {
        while !chunk.is_empty() {
            let Some((len, seen)) = self.body else {
                let take = (4 - self.len_got).min(chunk.len());
                let (head, rest) = chunk.split_at(take);
                self.len_bytes[self.len_got..self.len_got + take].copy_from_slice(head);
                self.len_got += take;
                chunk = rest;
                if self.len_got == 4 {
                    self.len_got = 0;
                    let len = u32::from_be_bytes(self.len_bytes) as usize;
                    if len == 0 {
                        // No type byte: nothing to decode, and the next length follows at once.
                        counts.empty += 1;
                    } else {
                        self.body = Some((len, 0));
                        self.buf.clear();
                    }
                }
                continue;
            };
            if seen == 0 {
                // The first body byte is the type: it decides how much to keep.
                let packet_type = chunk[0];
                self.keep = if !keep_whole(packet_type) {
                    len.min(HEAD_LEN)
                } else if len <= MAX_PACKET {
                    len
                } else {
                    counts.oversized += 1;
                    len.min(HEAD_LEN)
                };
                // Hold at most what this packet keeps: give back a big packet's buffer.
                if self.buf.capacity() > 4 * HEAD_LEN && self.keep <= HEAD_LEN {
                    self.buf.shrink_to(HEAD_LEN);
                }
                self.buf.reserve_exact(self.keep);
            }
            let take = (len - seen).min(chunk.len());
            let (part, rest) = chunk.split_at(take);
            let room = self.keep.saturating_sub(self.buf.len()).min(part.len());
            self.buf.extend_from_slice(&part[..room]);
            chunk = rest;
            let seen = seen + take;
            if seen < len {
                self.body = Some((len, seen));
                continue;
            }
            self.body = None;
            if let Some((&packet_type, payload)) = self.buf.split_first() {
                let flow = on_packet(Packet {
                    packet_type,
                    len,
                    payload,
                    truncated: self.keep < len,
                });
                if flow.is_break() {
                    return;
                }
            }
        }
    }

    /// Bytes currently held (for the fuzz target's memory bound).
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }
}

/// Reads the fields of a payload; every getter returns None past the end.
pub(super) struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Some((u64::from(hi) << 32) | u64::from(lo))
    }

    /// A `string` (uint32 length + bytes) wholly inside the kept bytes.
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Just a `string`'s declared length, for bulk data that was not kept.
    pub fn string_len(&mut self) -> Option<u32> {
        self.u32()
    }

    /// ATTRS (filexfer-02 §5): the fields a setstat may change.
    pub fn attrs(&mut self) -> Option<super::SftpAttrs> {
        const SIZE: u32 = 0x1;
        const UIDGID: u32 = 0x2;
        const PERMISSIONS: u32 = 0x4;
        const ACMODTIME: u32 = 0x8;
        let flags = self.u32()?;
        let mut attrs = super::SftpAttrs::default();
        if flags & SIZE != 0 {
            attrs.size = Some(self.u64()?);
        }
        if flags & UIDGID != 0 {
            attrs.uid = Some(self.u32()?);
            attrs.gid = Some(self.u32()?);
        }
        if flags & PERMISSIONS != 0 {
            attrs.permissions = Some(format!("{:04o}", self.u32()? & 0o7777));
        }
        if flags & ACMODTIME != 0 {
            attrs.atime = Some(self.u32()?);
            attrs.mtime = Some(self.u32()?);
        }
        // Extended attribute pairs come last and are not recorded: not reading them means a
        // truncated head still yields the fields above.
        Some(attrs)
    }
}
