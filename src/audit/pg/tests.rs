//! Unit tests of `audit::pg`, on messages built the way drivers and the server send them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use serde_json::{json, Value};

/// A backend message: tag, length, body.
fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn complete(tag: &str) -> Vec<u8> {
    backend(b'C', format!("{tag}\0").as_bytes())
}

fn error(code: &str, message: &str) -> Vec<u8> {
    backend(
        b'E',
        format!("SERROR\0VERROR\0C{code}\0M{message}\0\0").as_bytes(),
    )
}

fn ready() -> Vec<u8> {
    backend(b'Z', b"I")
}

fn data_row() -> Vec<u8> {
    backend(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b.to_vec()
}

enum P<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Null,
}

fn parse(b: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    frontend::parse(name, sql, types.iter().copied(), b).unwrap();
}

fn bind(b: &mut BytesMut, portal: &str, statement: &str, params: &[P<'_>]) {
    let formats: Vec<i16> = params
        .iter()
        .map(|p| i16::from(matches!(p, P::Binary(_))))
        .collect();
    frontend::bind(
        portal,
        statement,
        formats,
        params,
        |p, out| match p {
            P::Text(t) => {
                out.put_slice(t.as_bytes());
                Ok(IsNull::No)
            }
            P::Binary(v) => {
                out.put_slice(v);
                Ok(IsNull::No)
            }
            P::Null => Ok(IsNull::Yes),
        },
        Some(0),
        b,
    )
    .map_err(|_| "bind")
    .unwrap();
}

/// Feeds the exchange to a fresh decoder in chunks of `chunk` bytes and returns its events
/// as JSON, the way the log writes them.
fn decode(options: PgAuditOptions, exchange: &[(Side, Vec<u8>)], chunk: usize) -> Vec<Value> {
    let mut decoder = PgDecoder::new(options);
    let mut out = Vec::new();
    for (side, bytes) in exchange {
        for piece in bytes.chunks(chunk) {
            match side {
                Side::Client => decoder.client(piece, &mut out),
                Side::Server => decoder.upstream(piece, &mut out),
            }
        }
    }
    out.iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

/// The same events whatever the chunking: every byte alone, odd sizes, all at once.
fn decode_all_ways(options: PgAuditOptions, exchange: &[(Side, Vec<u8>)]) -> Vec<Value> {
    let whole = decode(options, exchange, usize::MAX);
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(decode(options, exchange, chunk), whole, "chunks of {chunk}");
    }
    whole
}

fn server(parts: &[Vec<u8>]) -> (Side, Vec<u8>) {
    (Side::Server, parts.concat())
}

#[test]
fn a_simple_query_with_two_statements_and_an_error() {
    let events = decode_all_ways(
        PgAuditOptions::default(),
        &[
            (Side::Client, query("SELECT 1 AS one; SELECT 2 AS two")),
            server(&[
                backend(b'T', &[0, 0]),
                data_row(),
                complete("SELECT 1"),
                data_row(),
                complete("SELECT 1"),
                ready(),
            ]),
            (Side::Client, query("SELECT * FROM nope")),
            server(&[error("42P01", "relation \"nope\" does not exist"), ready()]),
            (Side::Client, query("")),
            server(&[backend(b'I', &[]), ready()]),
        ],
    );
    assert_eq!(
        events,
        [
            json!({"event": "pg.query", "query": "SELECT 1 AS one; SELECT 2 AS two"}),
            json!({"event": "pg.result", "query": "SELECT 1 AS one; SELECT 2 AS two",
                   "tag": "SELECT 1", "rows": 1}),
            json!({"event": "pg.result", "query": "SELECT 1 AS one; SELECT 2 AS two",
                   "tag": "SELECT 1", "rows": 1}),
            json!({"event": "pg.query", "query": "SELECT * FROM nope"}),
            json!({"event": "pg.result", "query": "SELECT * FROM nope", "sqlstate": "42P01",
                   "message": "relation \"nope\" does not exist"}),
            json!({"event": "pg.query", "query": ""}),
        ]
    );
}

#[test]
fn tags_without_a_count_have_no_rows() {
    let events = decode(
        PgAuditOptions::default(),
        &[
            (Side::Client, query("BEGIN; INSERT INTO t VALUES (1)")),
            server(&[complete("BEGIN"), complete("INSERT 0 1"), ready()]),
        ],
        usize::MAX,
    );
    assert_eq!(events[1]["tag"], "BEGIN");
    assert!(events[1].get("rows").is_none(), "{}", events[1]);
    assert_eq!(events[2]["rows"], 1);
}

#[test]
fn a_pipeline_is_matched_in_order_and_an_error_skips_to_sync() {
    let mut c = BytesMut::new();
    parse(&mut c, "s1", "SELECT $1::int4 + 1", &[23]);
    bind(&mut c, "", "s1", &[P::Binary(&41i32.to_be_bytes())]);
    frontend::describe(b'P', "", &mut c).unwrap();
    frontend::execute("", 0, &mut c).unwrap();
    frontend::close(b'S', "s1", &mut c).unwrap();
    parse(&mut c, "s1", "SELECT $1::text || '!'", &[]);
    bind(&mut c, "p1", "s1", &[P::Text("hi")]);
    frontend::execute("p1", 0, &mut c).unwrap();
    parse(&mut c, "", "SELECT 1/0", &[]);
    bind(&mut c, "", "", &[P::Null]);
    frontend::execute("", 0, &mut c).unwrap();
    bind(&mut c, "", "s1", &[P::Text("skipped")]);
    frontend::execute("", 0, &mut c).unwrap();
    frontend::sync(&mut c);
    // After the Sync: the same name, answered normally again.
    bind(&mut c, "", "s1", &[P::Text("again")]);
    frontend::execute("", 0, &mut c).unwrap();
    frontend::sync(&mut c);
    let events = decode_all_ways(
        PgAuditOptions::default(),
        &[
            (Side::Client, c.to_vec()),
            server(&[
                backend(b'1', &[]),
                backend(b'2', &[]),
                backend(b'T', &[0, 0]),
                data_row(),
                complete("SELECT 1"),
                backend(b'3', &[]),
                backend(b'1', &[]),
                backend(b'2', &[]),
                data_row(),
                complete("SELECT 1"),
                backend(b'1', &[]),
                backend(b'2', &[]),
                error("22012", "division by zero"),
                ready(),
                backend(b'2', &[]),
                data_row(),
                complete("SELECT 1"),
                ready(),
            ]),
        ],
    );
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "pg.parse",
            "pg.bind",
            "pg.execute",
            "pg.parse",
            "pg.bind",
            "pg.execute",
            "pg.parse",
            "pg.bind",
            "pg.execute",
            "pg.bind",
            "pg.execute",
            "pg.bind",
            "pg.execute",
            "pg.result",
            "pg.result",
            "pg.result",
            "pg.result",
        ]
    );
    assert_eq!(
        events[0],
        json!({"event": "pg.parse", "statement": "s1", "query": "SELECT $1::int4 + 1",
               "parameter_types": [23]})
    );
    assert_eq!(
        events[1],
        json!({"event": "pg.bind", "portal": "", "statement": "s1",
               "query": "SELECT $1::int4 + 1", "parameters": [{"base64": "AAAAKQ=="}]})
    );
    assert_eq!(events[4]["query"], "SELECT $1::text || '!'");
    assert_eq!(events[4]["parameters"], json!(["hi"]));
    assert_eq!(
        events[5],
        json!({"event": "pg.execute", "portal": "p1", "query": "SELECT $1::text || '!'"})
    );
    assert_eq!(events[7]["parameters"], json!([null]));
    let results: Vec<(&Value, &Value)> = events[13..]
        .iter()
        .map(|e| (&e["query"], e.get("tag").unwrap_or(&e["sqlstate"])))
        .collect();
    assert_eq!(
        results,
        [
            (&json!("SELECT $1::int4 + 1"), &json!("SELECT 1")),
            (&json!("SELECT $1::text || '!'"), &json!("SELECT 1")),
            (&json!("SELECT 1/0"), &json!("22012")),
            (&json!("SELECT $1::text || '!'"), &json!("SELECT 1")),
        ]
    );
}

#[test]
fn an_error_at_parse_is_the_parse_s_query() {
    let mut c = BytesMut::new();
    parse(&mut c, "", "SELEC 1", &[]);
    bind(&mut c, "", "", &[]);
    frontend::execute("", 0, &mut c).unwrap();
    frontend::sync(&mut c);
    let events = decode(
        PgAuditOptions::default(),
        &[
            (Side::Client, c.to_vec()),
            server(&[error("42601", "syntax error"), ready()]),
        ],
        usize::MAX,
    );
    let result = events.last().unwrap();
    assert_eq!(result["query"], "SELEC 1");
    assert_eq!(result["sqlstate"], "42601");
}

#[test]
fn redacted_parameters_keep_format_type_and_length() {
    let mut c = BytesMut::new();
    parse(&mut c, "", "SELECT $1::text, $2::int4, $3", &[25, 23]);
    bind(
        &mut c,
        "",
        "",
        &[
            P::Text("card-4111111111111111"),
            P::Binary(&7i32.to_be_bytes()),
            P::Null,
        ],
    );
    frontend::execute("", 0, &mut c).unwrap();
    frontend::sync(&mut c);
    let options = PgAuditOptions {
        redact_parameters: true,
        ..PgAuditOptions::default()
    };
    let events = decode(
        options,
        &[
            (Side::Client, c.to_vec()),
            server(&[error("22P02", "invalid input syntax: \"4111\""), ready()]),
        ],
        usize::MAX,
    );
    assert_eq!(
        events[1]["parameters"],
        json!([
            {"length": 21, "format": "text", "type": 25, "withheld": "redacted"},
            {"length": 4, "format": "binary", "type": 23, "withheld": "redacted"},
            null,
        ])
    );
    // Error messages can quote values: left out too.
    assert_eq!(events[3]["sqlstate"], "22P02");
    assert!(events[3].get("message").is_none(), "{}", events[3]);
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("4111"), "{all}");
}

#[test]
fn long_queries_and_parameters_are_cut_not_buffered() {
    let options = PgAuditOptions {
        max_query: 11,
        max_parameter: 4,
        ..PgAuditOptions::default()
    };
    // "é" is two bytes: a cut through it leaves it out.
    let sql = "SELECT 'ééééééé'";
    let mut c = BytesMut::new();
    c.extend_from_slice(&query(sql));
    parse(&mut c, "", sql, &[]);
    bind(&mut c, "", "", &[P::Text("12345"), P::Text("1234")]);
    let events = decode_all_ways(options, &[(Side::Client, c.to_vec())]);
    let cut = json!({"text": "SELECT 'é", "truncated": true, "query_bytes": sql.len()});
    assert_eq!(events[0]["query"], cut);
    assert_eq!(events[1]["query"]["text"], "SELECT 'é");
    assert_eq!(
        events[2]["parameters"],
        json!([{"length": 5, "format": "text", "withheld": "too_long"}, "1234"])
    );
}

#[test]
fn bulk_data_is_counted_and_never_kept() {
    let mut framer = Framer::new(frame::server_keeps, MAX_QUERY);
    let big = backend(b'D', &vec![7u8; 8 * 1024 * 1024]);
    let mut seen = Vec::new();
    for piece in big.chunks(16 * 1024) {
        framer
            .feed(piece, |m| seen.push((m.tag, m.len, m.body.len())))
            .unwrap();
    }
    assert_eq!(seen, [(b'D', 8 * 1024 * 1024, 0)]);
}

#[test]
fn copy_in_and_out_are_counted() {
    let mut copy_data = BytesMut::new();
    frontend::CopyData::new(&b"1\tone\n"[..])
        .unwrap()
        .write(&mut copy_data);
    frontend::CopyData::new(&b"2\ttwo\n"[..])
        .unwrap()
        .write(&mut copy_data);
    frontend::copy_done(&mut copy_data);
    let events = decode_all_ways(
        PgAuditOptions::default(),
        &[
            (Side::Client, query("COPY t FROM STDIN")),
            server(&[backend(b'G', &[0, 0, 0])]),
            (Side::Client, copy_data.to_vec()),
            server(&[complete("COPY 2"), ready()]),
            (Side::Client, query("COPY t TO STDOUT")),
            server(&[
                backend(b'H', &[0, 0, 0]),
                backend(b'd', b"1\tone\n"),
                backend(b'c', &[]),
                complete("COPY 1"),
                ready(),
            ]),
        ],
    );
    assert_eq!(
        events[1],
        json!({"event": "pg.copy", "query": "COPY t FROM STDIN", "direction": "in",
               "bytes": 12, "messages": 2, "rows": 2})
    );
    assert_eq!(events[2]["tag"], "COPY 2");
    assert_eq!(events[2]["rows"], 2);
    assert_eq!(
        events[4],
        json!({"event": "pg.copy", "query": "COPY t TO STDOUT", "direction": "out",
               "bytes": 6, "messages": 1, "rows": 1})
    );
}

#[test]
fn a_suspended_portal_counts_the_rows_sent() {
    let mut c = BytesMut::new();
    parse(&mut c, "", "SELECT generate_series(1, 10)", &[]);
    bind(&mut c, "c1", "", &[]);
    frontend::execute("c1", 2, &mut c).unwrap();
    frontend::sync(&mut c);
    let events = decode(
        PgAuditOptions::default(),
        &[
            (Side::Client, c.to_vec()),
            server(&[
                backend(b'1', &[]),
                backend(b'2', &[]),
                data_row(),
                data_row(),
                backend(b's', &[]),
                ready(),
            ]),
        ],
        usize::MAX,
    );
    assert_eq!(events[2]["max_rows"], 2);
    assert_eq!(
        events[3],
        json!({"event": "pg.result", "query": "SELECT generate_series(1, 10)", "rows": 2,
               "suspended": true})
    );
}

#[test]
fn lost_framing_is_reported_once_and_decoding_stops() {
    let mut bad = query("SELECT 1");
    bad.extend_from_slice(&[b'Q', 0, 0, 0, 2]);
    bad.extend_from_slice(&query("SELECT 2"));
    let events = decode(
        PgAuditOptions::default(),
        &[
            (Side::Client, bad),
            (Side::Client, query("SELECT 3")),
            server(&[complete("SELECT 1")]),
        ],
        usize::MAX,
    );
    assert_eq!(
        events,
        [
            json!({"event": "pg.query", "query": "SELECT 1"}),
            json!({"event": "pg.unparsed", "from": "client",
                   "reason": "message 'Q' declares length 2"}),
        ]
    );
}

#[test]
fn a_copy_the_client_aborts_has_no_rows() {
    let mut fail = BytesMut::new();
    frontend::CopyData::new(&b"1\tone\n"[..])
        .unwrap()
        .write(&mut fail);
    frontend::copy_fail("no more", &mut fail).unwrap();
    let events = decode_all_ways(
        PgAuditOptions::default(),
        &[
            (Side::Client, query("COPY t FROM STDIN")),
            server(&[backend(b'G', &[0, 0, 0])]),
            (Side::Client, fail.to_vec()),
            server(&[error("57014", "COPY from stdin failed: no more"), ready()]),
        ],
    );
    assert_eq!(
        events[1],
        json!({"event": "pg.copy", "query": "COPY t FROM STDIN", "direction": "in",
               "bytes": 6, "messages": 1, "aborted": true})
    );
    assert_eq!(events[2]["sqlstate"], "57014");
}

#[test]
fn an_unknown_message_type_is_recorded_once_and_decoding_goes_on() {
    let mut c = backend(b'~', b"future");
    c.extend(backend(b'~', b"again"));
    c.extend(query("SELECT 1"));
    let events = decode_all_ways(
        PgAuditOptions::default(),
        &[
            (Side::Client, c),
            server(&[backend(b'S', b"a\0b\0"), complete("SELECT 1"), ready()]),
        ],
    );
    assert_eq!(
        events,
        [
            json!({"event": "pg.unknown_message", "from": "client", "tag": "~", "bytes": 6}),
            json!({"event": "pg.query", "query": "SELECT 1"}),
            json!({"event": "pg.result", "query": "SELECT 1", "tag": "SELECT 1", "rows": 1}),
        ]
    );
}
