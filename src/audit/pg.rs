//! Query audit: decodes a copy of a Postgres session's bytes (both directions, any chunking)
//! into `pg.*` events — what the client asked (simple queries, and the extended protocol's
//! Parse / Bind / Execute with their parameters) and what each statement came to (its command
//! tag and row count, or its SQLSTATE). The relay never waits on it and never sees it change a
//! byte: the decoder only reads.
//!
//! Protocol: PostgreSQL's frontend/backend protocol 3.0 (docs, "Message Flow" and "Message
//! Formats"), after start-up: every message is a type byte and an `int32` length that counts
//! itself. Results are matched to statements the way the server answers them: in order, and,
//! after an error in the extended protocol, with everything up to the next Sync skipped.

mod frame;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use serde::Serialize;

use frame::{Framer, Message};

/// Longest query text put in an event; longer ones are cut (at a character boundary) and
/// marked `"truncated": true`, with their full length in `query_bytes`.
pub const MAX_QUERY: usize = 256 * 1024;
/// Longest parameter value put in an event; a longer one is written as its length only.
pub const MAX_PARAMETER: usize = 16 * 1024;
/// Bytes of query text the decoder keeps for named statements and portals together. Past it a
/// new statement is remembered without its text (its Bind and results then have `query: null`).
const MAX_REMEMBERED: usize = 32 * 1024 * 1024;
/// Statements, portals or in-flight requests tracked at once.
const MAX_TRACKED: usize = 16 * 1024;

/// What the grant asks of the decoder.
#[derive(Debug, Clone, Copy)]
pub struct PgAuditOptions {
    /// Bind parameters are written as their format, declared type and length only.
    pub redact_parameters: bool,
    pub max_query: usize,
    pub max_parameter: usize,
}

impl Default for PgAuditOptions {
    fn default() -> Self {
        PgAuditOptions {
            redact_parameters: false,
            max_query: MAX_QUERY,
            max_parameter: MAX_PARAMETER,
        }
    }
}

/// One `pg.*` event, as written to the audit log (docs/audit-events.md, "Postgres").
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event")]
pub enum PgEvent {
    /// A simple-protocol Query message: one or more statements as the client wrote them.
    #[serde(rename = "pg.query")]
    Query { query: Text },
    /// The extended protocol's Parse: a statement prepared under a name ("" is the unnamed one).
    #[serde(rename = "pg.parse")]
    Parse {
        statement: String,
        query: Text,
        /// Parameter type OIDs the client declared (0: left to the server).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        parameter_types: Vec<u32>,
    },
    /// Bind: a statement's parameters bound into a portal.
    #[serde(rename = "pg.bind")]
    Bind {
        portal: String,
        statement: String,
        /// The statement's query as the name meant at the time; null when unknown (prepared
        /// before the session was audited, or past the decoder's memory budget).
        query: Option<Text>,
        parameters: Vec<Parameter>,
    },
    /// Execute: a portal run (`max_rows` 0 is "all rows").
    #[serde(rename = "pg.execute")]
    Execute {
        portal: String,
        query: Option<Text>,
        #[serde(skip_serializing_if = "is_zero")]
        max_rows: u32,
    },
    /// What a statement came to: a command tag, or an error's SQLSTATE.
    #[serde(rename = "pg.result")]
    Result(Outcome),
    /// A COPY's data, counted (never kept): `in` is client to server.
    #[serde(rename = "pg.copy")]
    Copy {
        query: Option<Text>,
        direction: CopyDirection,
        bytes: u64,
        messages: u64,
        /// Rows the server's `COPY n` tag reports; absent when the COPY failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        rows: Option<u64>,
        /// Whether the client ended it with CopyFail.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        aborted: bool,
    },
    /// A fast-path FunctionCall (by OID; its arguments are not decoded).
    #[serde(rename = "pg.function_call")]
    FunctionCall { function: u32 },
    /// A message type the decoder does not know, relayed untouched; written once per type
    /// and side (`bytes`: the first one's body length).
    #[serde(rename = "pg.unknown_message")]
    UnknownMessage {
        from: Side,
        tag: String,
        bytes: usize,
    },
    /// The decoder lost the message framing on one side and stopped decoding the session;
    /// the relay goes on untouched. Written once.
    #[serde(rename = "pg.unparsed")]
    Unparsed { from: Side, reason: String },
}

/// A `pg.result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub query: Option<Text>,
    /// The command tag ("SELECT 3", "INSERT 0 1", "COPY 10"); absent on error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Rows the tag reports (the last number of the tag), or, for a portal suspended at
    /// `max_rows`, the rows sent so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// The error's SQLSTATE; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The error's primary message (left out when the grant redacts parameters: messages
    /// can quote values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The portal stopped at `max_rows` and may be executed again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

/// Query text, cut at `max_query` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub text: std::sync::Arc<str>,
    /// The full length in bytes when the text was cut.
    pub cut_from: Option<usize>,
}

impl Serialize for Text {
    /// A plain string, or `{"text", "truncated": true, "query_bytes"}` when it was cut.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.cut_from {
            None => s.serialize_str(&self.text),
            Some(full) => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("text", &*self.text)?;
                m.serialize_entry("truncated", &true)?;
                m.serialize_entry("query_bytes", &full)?;
                m.end()
            }
        }
    }
}

/// One Bind parameter: a text value as a string, NULL as null, and otherwise an object —
/// `{"base64"}` for a binary value, `{"length", "format", "type"}` when redacted or too long.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Parameter {
    Null,
    Text(String),
    Binary {
        base64: String,
    },
    Withheld {
        length: usize,
        format: Format,
        /// The type OID the client declared at Parse, when it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        r#type: Option<u32>,
        /// Why the value is not here: "redacted" or "too_long".
        withheld: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyDirection {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Client,
    Server,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A prepared statement the decoder remembers: its query and declared parameter types.
#[derive(Clone)]
struct Statement {
    query: Option<Text>,
    types: Vec<u32>,
}

/// A request sent and not yet answered, in the order the server will answer.
enum Pending {
    /// A Query: its results come until ReadyForQuery.
    Query(Text),
    Parse(Option<Text>),
    Bind(Option<Text>),
    Describe,
    Close,
    Execute(Option<Text>),
    FunctionCall,
    Sync,
}

/// A COPY in progress, or ended and waiting for the server's CommandComplete (its row count).
struct Copying {
    direction: CopyDirection,
    bytes: u64,
    messages: u64,
    /// The data is over (CopyDone / CopyFail seen); `aborted` if by CopyFail.
    done: bool,
    aborted: bool,
}

/// Decodes both directions of one session. Fed every chunk the relay reads, in order per side.
pub struct PgDecoder {
    options: PgAuditOptions,
    client: Framer,
    server: Framer,
    statements: HashMap<String, Statement>,
    portals: HashMap<String, Option<Text>>,
    remembered: usize,
    pending: VecDeque<Pending>,
    copying: Option<Copying>,
    /// DataRows since the last result, for a suspended portal's count.
    rows: u64,
    /// Set when framing was lost: nothing more is decoded.
    lost: bool,
    /// Unknown message types already reported: (from the client, tag).
    unknown_seen: Vec<(bool, u8)>,
}

impl PgDecoder {
    pub fn new(options: PgAuditOptions) -> PgDecoder {
        PgDecoder {
            options,
            client: Framer::new(frame::client_keeps, options.max_query),
            server: Framer::new(frame::server_keeps, options.max_query),
            statements: HashMap::new(),
            portals: HashMap::new(),
            remembered: 0,
            pending: VecDeque::new(),
            copying: None,
            rows: 0,
            lost: false,
            unknown_seen: Vec::new(),
        }
    }

    /// A chunk the client sent.
    pub fn client(&mut self, chunk: &[u8], out: &mut Vec<PgEvent>) {
        self.feed(Side::Client, chunk, out);
    }

    /// A chunk the server sent.
    pub fn upstream(&mut self, chunk: &[u8], out: &mut Vec<PgEvent>) {
        self.feed(Side::Server, chunk, out);
    }

    fn feed(&mut self, side: Side, chunk: &[u8], out: &mut Vec<PgEvent>) {
        if self.lost {
            return;
        }
        let mut framer = std::mem::take(match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        });
        let fed = framer.feed(chunk, |m| match side {
            Side::Client => self.client_message(m, out),
            Side::Server => self.server_message(m, out),
        });
        *match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        } = framer;
        if let Err(reason) = fed {
            self.lost = true;
            out.push(PgEvent::Unparsed { from: side, reason });
        }
    }

    /// Query text from `bytes` (what the framer kept of it; `full` is its length on the wire).
    fn text(&self, bytes: &[u8], full: usize) -> Text {
        let cut = full > bytes.len() || bytes.len() > self.options.max_query;
        let mut kept = &bytes[..bytes.len().min(self.options.max_query)];
        if cut {
            // A cut can split a character: leave its first bytes out rather than show U+FFFD.
            if let Err(e) = std::str::from_utf8(kept) {
                if e.error_len().is_none() {
                    kept = &kept[..e.valid_up_to()];
                }
            }
        }
        Text {
            text: String::from_utf8_lossy(kept).into(),
            cut_from: cut.then_some(full.max(bytes.len())),
        }
    }

    fn track(&mut self, pending: Pending) {
        if self.pending.len() < MAX_TRACKED {
            self.pending.push_back(pending);
        }
    }

    fn remember(&mut self, query: &Text) -> Option<Text> {
        if self.remembered + query.text.len() > MAX_REMEMBERED {
            return None;
        }
        self.remembered += query.text.len();
        Some(query.clone())
    }

    fn forget(&mut self, query: Option<&Text>) {
        if let Some(q) = query {
            self.remembered = self.remembered.saturating_sub(q.text.len());
        }
    }

    fn client_message(&mut self, m: Message<'_>, out: &mut Vec<PgEvent>) {
        let mut r = frame::Reader::new(m.body);
        match m.tag {
            b'Q' => {
                let (query, full) = r.cstr_or_rest(m.len);
                let query = self.text(query, full);
                out.push(PgEvent::Query {
                    query: query.clone(),
                });
                self.track(Pending::Query(query));
            }
            b'P' => {
                let name = r.string();
                let (query, full) = r.cstr_or_rest(m.len);
                let query = self.text(query, full);
                let types = if m.truncated {
                    Vec::new()
                } else {
                    r.u32s_after_count16()
                };
                let kept = self.remember(&query);
                let old = self.statements.insert(
                    name.clone(),
                    Statement {
                        query: kept,
                        types: types.clone(),
                    },
                );
                self.forget(old.and_then(|s| s.query).as_ref());
                if self.statements.len() > MAX_TRACKED {
                    self.statements.remove(&name);
                }
                out.push(PgEvent::Parse {
                    statement: name,
                    query: query.clone(),
                    parameter_types: types,
                });
                self.track(Pending::Parse(Some(query)));
            }
            b'B' => {
                let portal = r.string();
                let statement = r.string();
                let known = self.statements.get(&statement).cloned();
                let query = known.as_ref().and_then(|s| s.query.clone());
                let types = known.map(|s| s.types).unwrap_or_default();
                let parameters = self.parameters(&mut r, &types);
                self.portals.insert(portal.clone(), query.clone());
                if self.portals.len() > MAX_TRACKED {
                    self.portals.remove(&portal);
                }
                out.push(PgEvent::Bind {
                    portal,
                    statement,
                    query: query.clone(),
                    parameters,
                });
                self.track(Pending::Bind(query));
            }
            b'E' => {
                let portal = r.string();
                let max_rows = r.u32().unwrap_or(0);
                let query = self.portals.get(&portal).cloned().flatten();
                out.push(PgEvent::Execute {
                    portal,
                    query: query.clone(),
                    max_rows,
                });
                self.track(Pending::Execute(query));
            }
            b'D' => self.track(Pending::Describe),
            b'C' => {
                let kind = r.u8();
                let name = r.string();
                match kind {
                    Some(b'S') => {
                        let old = self.statements.remove(&name);
                        self.forget(old.and_then(|s| s.query).as_ref());
                    }
                    Some(b'P') => {
                        self.portals.remove(&name);
                    }
                    _ => {}
                }
                self.track(Pending::Close);
            }
            b'S' => self.track(Pending::Sync),
            b'F' => {
                out.push(PgEvent::FunctionCall {
                    function: r.u32().unwrap_or(0),
                });
                self.track(Pending::FunctionCall);
            }
            b'd' => {
                if let Some(c) = self
                    .copying
                    .as_mut()
                    .filter(|c| c.direction == CopyDirection::In && !c.done)
                {
                    c.bytes += m.len as u64;
                    c.messages += 1;
                }
            }
            b'c' | b'f' => {
                if let Some(c) = self
                    .copying
                    .as_mut()
                    .filter(|c| c.direction == CopyDirection::In)
                {
                    c.done = true;
                    c.aborted = m.tag == b'f';
                }
            }
            // Flush and Terminate: nothing to match.
            b'H' | b'X' => {}
            tag => self.unknown(Side::Client, tag, m.len, out),
        }
    }

    /// A message type the decoder does not know (a newer protocol, or not PostgreSQL's):
    /// relayed as is, and recorded once per type and side so the log says what it did not read.
    fn unknown(&mut self, from: Side, tag: u8, len: usize, out: &mut Vec<PgEvent>) {
        let key = (from == Side::Client, tag);
        if self.unknown_seen.contains(&key) || self.unknown_seen.len() >= 64 {
            return;
        }
        self.unknown_seen.push(key);
        out.push(PgEvent::UnknownMessage {
            from,
            tag: char::from(tag).escape_default().to_string(),
            bytes: len,
        });
    }

    /// The statement whose answer is due: the first pending request.
    fn due_query(&self) -> Option<Text> {
        match self.pending.front()? {
            Pending::Query(q) => Some(q.clone()),
            Pending::Parse(q) | Pending::Bind(q) | Pending::Execute(q) => q.clone(),
            Pending::Describe | Pending::Close | Pending::FunctionCall | Pending::Sync => None,
        }
    }

    /// The COPY's event, once the server said how it ended (`rows` from its tag).
    fn copy_event(&mut self, rows: Option<u64>) -> Option<PgEvent> {
        let c = self.copying.take()?;
        Some(PgEvent::Copy {
            query: self.due_query(),
            direction: c.direction,
            bytes: c.bytes,
            messages: c.messages,
            rows,
            aborted: c.aborted,
        })
    }

    fn server_message(&mut self, m: Message<'_>, out: &mut Vec<PgEvent>) {
        match m.tag {
            b'C' => {
                let tag = String::from_utf8_lossy(frame::Reader::new(m.body).cstr()).into_owned();
                let rows = tag
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|_| tag.contains(' '));
                out.extend(self.copy_event(rows.filter(|_| tag.starts_with("COPY "))));
                let event = self.result(Outcome {
                    query: self.due_query(),
                    tag: Some(tag),
                    rows,
                    sqlstate: None,
                    message: None,
                    suspended: false,
                });
                out.push(event);
                self.answered_execute();
            }
            b'E' => {
                let (sqlstate, message) = frame::error_fields(m.body);
                out.extend(self.copy_event(None));
                let event = self.result(Outcome {
                    query: self.due_query(),
                    tag: None,
                    rows: None,
                    sqlstate,
                    message: message.filter(|_| !self.options.redact_parameters),
                    suspended: false,
                });
                out.push(event);
                // In the extended protocol the server now skips everything up to Sync; a
                // Query or FunctionCall carries on until its ReadyForQuery.
                match self.pending.front() {
                    Some(Pending::Query(_) | Pending::FunctionCall) | None => {}
                    Some(_) => {
                        while let Some(p) = self.pending.front() {
                            if matches!(p, Pending::Sync) {
                                break;
                            }
                            self.pending.pop_front();
                        }
                    }
                }
            }
            b's' => {
                let event = self.result(Outcome {
                    query: self.due_query(),
                    tag: None,
                    rows: Some(self.rows),
                    sqlstate: None,
                    message: None,
                    suspended: true,
                });
                out.push(event);
                self.answered_execute();
            }
            b'I' => self.answered_execute(),
            b'D' => self.rows += 1,
            b'1' => self.answered(|p| matches!(p, Pending::Parse(_))),
            b'2' => self.answered(|p| matches!(p, Pending::Bind(_))),
            b'3' => self.answered(|p| matches!(p, Pending::Close)),
            b'T' | b'n' => self.answered(|p| matches!(p, Pending::Describe)),
            b'V' => self.answered(|p| matches!(p, Pending::FunctionCall)),
            b'G' | b'H' | b'W' => {
                self.copying = Some(Copying {
                    direction: if m.tag == b'H' {
                        CopyDirection::Out
                    } else {
                        CopyDirection::In
                    },
                    bytes: 0,
                    messages: 0,
                    done: false,
                    aborted: false,
                });
            }
            b'd' => {
                if let Some(c) = self.copying.as_mut().filter(|c| !c.done) {
                    c.bytes += m.len as u64;
                    c.messages += 1;
                }
            }
            b'c' => {
                if let Some(c) = self
                    .copying
                    .as_mut()
                    .filter(|c| c.direction == CopyDirection::Out)
                {
                    c.done = true;
                }
            }
            b'Z' => {
                // Ends one Query, FunctionCall or Sync, and whatever the server skipped before it.
                while let Some(p) = self.pending.pop_front() {
                    if matches!(p, Pending::Query(_) | Pending::FunctionCall | Pending::Sync) {
                        break;
                    }
                }
                self.copying = None;
                self.rows = 0;
            }
            // ParameterStatus, BackendKeyData, NoticeResponse, NotificationResponse,
            // ParameterDescription, NegotiateProtocolVersion: nothing to report.
            b'S' | b'K' | b'N' | b'A' | b't' | b'v' => {}
            tag => self.unknown(Side::Server, tag, m.len, out),
        }
    }

    fn result(&mut self, outcome: Outcome) -> PgEvent {
        self.rows = 0;
        PgEvent::Result(outcome)
    }

    /// An Execute's answer (CommandComplete, EmptyQueryResponse, PortalSuspended) pops it; a
    /// Query's results do not (it ends at ReadyForQuery).
    fn answered_execute(&mut self) {
        self.answered(|p| matches!(p, Pending::Execute(_)));
    }

    fn answered(&mut self, is: impl Fn(&Pending) -> bool) {
        if self.pending.front().is_some_and(is) {
            self.pending.pop_front();
        }
    }

    fn parameters(&self, r: &mut frame::Reader<'_>, types: &[u32]) -> Vec<Parameter> {
        let formats: Vec<u16> = r.u16s();
        let count = r.u16().unwrap_or(0) as usize;
        let mut parameters = Vec::with_capacity(count.min(1024));
        for i in 0..count {
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            let format = if format == 1 {
                Format::Binary
            } else {
                Format::Text
            };
            let Some(len) = r.i32() else {
                break;
            };
            if len < 0 {
                parameters.push(Parameter::Null);
                continue;
            }
            let len = len as usize;
            let value = r.bytes(len);
            let withheld = |why| Parameter::Withheld {
                length: len,
                format,
                r#type: types.get(i).copied().filter(|t| *t != 0),
                withheld: why,
            };
            let parameter = if self.options.redact_parameters {
                withheld("redacted")
            } else if len > self.options.max_parameter {
                withheld("too_long")
            } else {
                match (format, value) {
                    (_, None) => withheld("too_long"),
                    (Format::Text, Some(v)) => match std::str::from_utf8(v) {
                        Ok(s) => Parameter::Text(s.to_string()),
                        Err(_) => Parameter::Binary {
                            base64: base64::engine::general_purpose::STANDARD.encode(v),
                        },
                    },
                    (Format::Binary, Some(v)) => Parameter::Binary {
                        base64: base64::engine::general_purpose::STANDARD.encode(v),
                    },
                }
            };
            parameters.push(parameter);
        }
        parameters
    }
}
