//! Postgres message framing for the decoder: cuts one direction's byte stream, fed in chunks of
//! any size, into messages (`byte tag`, `int32 length` counting itself, body), keeping only as
//! much of each body as the decoder reads, so bulk data (DataRow, CopyData) is counted, never
//! buffered.

/// Bind messages are kept up to this size; a parameter past it is reported by length only.
const MAX_BIND: usize = 4 * 1024 * 1024;
/// Room for a Parse's statement name and parameter types beside its query.
const PARSE_SLACK: usize = 64 * 1024;
/// What is kept of a CommandComplete or ErrorResponse.
const MAX_ANSWER: usize = 64 * 1024;
/// Names (statement, portal) and OIDs: Execute, Close, Describe, FunctionCall heads.
const HEAD: usize = 1024;

/// How many body bytes of a client message with this tag the decoder reads.
pub(super) fn client_keeps(tag: u8, max_query: usize) -> usize {
    match tag {
        b'Q' => max_query.saturating_add(1),
        b'P' => max_query.saturating_add(PARSE_SLACK),
        b'B' => MAX_BIND,
        b'E' | b'C' | b'F' => HEAD,
        _ => 0,
    }
}

/// How many body bytes of a server message with this tag the decoder reads.
pub(super) fn server_keeps(tag: u8, _max_query: usize) -> usize {
    match tag {
        b'C' | b'E' => MAX_ANSWER,
        _ => 0,
    }
}

/// One message as the decoder sees it.
pub(super) struct Message<'a> {
    pub tag: u8,
    /// Body length as declared (the length field minus its own 4 bytes).
    pub len: usize,
    /// The body, or its first bytes when `truncated`.
    pub body: &'a [u8],
    pub truncated: bool,
}

/// Framing state of one direction.
pub(super) struct Framer {
    keeps: fn(u8, usize) -> usize,
    max_query: usize,
    head: [u8; 5],
    head_got: usize,
    /// Some while inside a body: (declared length, bytes of it seen so far, bytes to keep).
    body: Option<(usize, usize, usize)>,
    buf: Vec<u8>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(server_keeps, 0)
    }
}

impl Framer {
    pub fn new(keeps: fn(u8, usize) -> usize, max_query: usize) -> Framer {
        Framer {
            keeps,
            max_query,
            head: [0; 5],
            head_got: 0,
            body: None,
            buf: Vec::new(),
        }
    }

    /// Feeds one chunk; `on_message` gets every message the chunk completes. An error (a
    /// length that cannot be) means the stream is not framed the way the decoder thinks, and
    /// nothing after it can be trusted.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut on_message: impl FnMut(Message<'_>),
    ) -> Result<(), String> {
        while !chunk.is_empty() || matches!(self.body, Some((0, _, _))) {
            let Some((len, seen, keep)) = self.body else {
                let take = (5 - self.head_got).min(chunk.len());
                self.head[self.head_got..self.head_got + take].copy_from_slice(&chunk[..take]);
                self.head_got += take;
                chunk = &chunk[take..];
                if self.head_got == 5 {
                    self.head_got = 0;
                    let tag = self.head[0];
                    let declared = i32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    if declared < 4 {
                        return Err(format!(
                            "message {:?} declares length {declared}",
                            char::from(tag)
                        ));
                    }
                    let len = declared as usize - 4;
                    self.body = Some((len, 0, (self.keeps)(tag, self.max_query).min(len)));
                    self.buf.clear();
                }
                continue;
            };
            let take = (len - seen).min(chunk.len());
            let room = keep.saturating_sub(self.buf.len()).min(take);
            self.buf.extend_from_slice(&chunk[..room]);
            chunk = &chunk[take..];
            let seen = seen + take;
            if seen < len {
                self.body = Some((len, seen, keep));
                continue;
            }
            self.body = None;
            on_message(Message {
                tag: self.head[0],
                len,
                body: &self.buf,
                truncated: self.buf.len() < len,
            });
        }
        Ok(())
    }
}

/// Reads a body's fields; past the end every read gives nothing, so a cut body reads as far as
/// it goes.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
    len: usize,
}

impl<'a> Reader<'a> {
    pub fn new(body: &'a [u8]) -> Reader<'a> {
        Reader {
            rest: body,
            len: body.len(),
        }
    }

    /// A NUL-terminated string's bytes (all that is left when there is no NUL).
    pub fn cstr(&mut self) -> &'a [u8] {
        let (s, rest) = match self.rest.iter().position(|b| *b == 0) {
            Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        s
    }

    /// A name (statement, portal), lossy UTF-8.
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.cstr()).into_owned()
    }

    /// A NUL-terminated string that may have been cut, with its length on the wire: exact when
    /// its NUL was kept, else an upper bound (the rest of the message's declared length).
    pub fn cstr_or_rest(&mut self, message_len: usize) -> (&'a [u8], usize) {
        let consumed = self.len - self.rest.len();
        let whole = self.rest.contains(&0);
        let s = self.cstr();
        let full = if whole {
            s.len()
        } else {
            message_len.saturating_sub(consumed + 1).max(s.len())
        };
        (s, full)
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            self.rest = &self.rest[self.rest.len()..];
            return None;
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(b)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.u32().map(|n| n as i32)
    }

    /// An `int16` count, then that many `int16`s (as far as the body goes).
    pub fn u16s(&mut self) -> Vec<u16> {
        let n = self.u16().unwrap_or(0) as usize;
        (0..n).map_while(|_| self.u16()).collect()
    }

    /// An `int16` count, then that many `int32`s (as far as the body goes).
    pub fn u32s_after_count16(&mut self) -> Vec<u32> {
        let n = self.u16().unwrap_or(0) as usize;
        (0..n).map_while(|_| self.u32()).collect()
    }
}

/// An ErrorResponse's SQLSTATE (`C`) and primary message (`M`).
pub(super) fn error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let mut r = Reader::new(body);
    let (mut code, mut message) = (None, None);
    while let Some(field) = r.u8() {
        if field == 0 {
            break;
        }
        let value = String::from_utf8_lossy(r.cstr()).into_owned();
        match field {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
    }
    (code, message)
}
