//! Criterion micro-benchmarks for the pieces on jitgate's hot paths: the audit tap decoding a
//! copy of one pgbench-sized exchange, policy evaluation for one connection, one audit line's
//! formatting (event JSON, timestamp, SHA-256 chain link), and the SCRAM verifier a JIT role's
//! CREATE ROLE carries. `cargo bench --bench micro`; instruction-level detail: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};

use jitgate::audit::event::{rfc3339, strip_braces};
use jitgate::audit::log::link;
use jitgate::audit::pg::{PgAuditOptions, PgDecoder};
use jitgate::audit::Body;
use jitgate::identity::Identity;
use jitgate::policy::{evaluate, AccessRequest, PolicySet, TargetKind};

/// pgbench -S's transaction in the simple protocol: the query the client sends.
const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";

fn backend_message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// What PostgreSQL answers it: RowDescription (one int4 column), one DataRow,
/// CommandComplete `SELECT 1`, ReadyForQuery idle.
fn select_answer() -> BytesMut {
    let mut buf = BytesMut::new();
    let mut row_desc = BytesMut::new();
    row_desc.put_i16(1);
    row_desc.put_slice(b"abalance\0");
    row_desc.put_i32(16_384); // table oid
    row_desc.put_i16(3); // column number
    row_desc.put_i32(23); // int4
    row_desc.put_i16(4);
    row_desc.put_i32(-1);
    row_desc.put_i16(0); // text
    backend_message(&mut buf, b'T', &row_desc);
    let mut data_row = BytesMut::new();
    data_row.put_i16(1);
    data_row.put_i32(4);
    data_row.put_slice(b"1234");
    backend_message(&mut buf, b'D', &data_row);
    backend_message(&mut buf, b'C', b"SELECT 1\0");
    backend_message(&mut buf, b'Z', b"I");
    buf
}

const POLICY: &str = r#"
grants:
  - name: orders-dba
    subjects: { groups: [dba] }
    targets: [orders]
    postgres: { roles: [orders_read, orders_write] }
    max_session: 1h
  - name: orders-analyst
    subjects: { groups: [analyst] }
    targets: ["ord*"]
    postgres: { roles: [orders_read] }
    max_session: 30m
  - name: web-ops
    subjects: { groups: [ops] }
    targets: ["web-*"]
    ssh: {}
"#;

fn audit_decode(c: &mut Criterion) {
    let mut query = BytesMut::new();
    postgres_protocol::message::frontend::query(SELECT, &mut query).unwrap();
    let answer = select_answer();
    let mut decoder = PgDecoder::new(PgAuditOptions::default());
    let mut events = Vec::new();
    c.bench_function(
        "audit: decode one pgbench -S exchange (query + answer)",
        |b| {
            b.iter(|| {
                events.clear();
                decoder.client(black_box(&query), &mut events);
                decoder.upstream(black_box(&answer), &mut events);
                black_box(events.len())
            })
        },
    );
}

fn policy_eval(c: &mut Criterion) {
    let set = PolicySet::from_sources([(Path::new("bench.yaml"), POLICY)]).unwrap();
    let identity = Identity::person("alice", &["dba".to_string()]);
    c.bench_function("policy: evaluate one connection (3 grants)", |b| {
        b.iter(|| {
            let req = AccessRequest {
                identity: black_box(&identity),
                target: "orders",
                kind: TargetKind::Postgres,
                requested: "alice",
                reason: None,
            };
            black_box(evaluate(&set, &req).is_ok())
        })
    });
}

fn event_line(c: &mut Criterion) {
    // The events the decoder makes for one exchange, as the writer formats each.
    let mut query = BytesMut::new();
    postgres_protocol::message::frontend::query(SELECT, &mut query).unwrap();
    let mut decoder = PgDecoder::new(PgAuditOptions::default());
    let mut events = Vec::new();
    decoder.client(&query, &mut events);
    decoder.upstream(&select_answer(), &mut events);
    let body = Body::Pg(events.into_iter().next().expect("a pg.query event"));
    let session = r#""session":"l-0123456789abcdef","protocol":"postgres","user":"alice","subject_kind":"person","groups":["dba"],"serial":"1f2e3d","client":"127.0.0.1:50000","target":"orders","grant":"orders-dba","account":"jit_alice_abcd""#;
    let prev = link(b"the previous line");
    c.bench_function("audit: format and chain one pg.query line", |b| {
        b.iter(|| {
            let json = serde_json::to_string(black_box(&body)).unwrap();
            let mut line = String::with_capacity(400);
            line.push_str("{\"v\":1,\"seq\":12345,\"time\":\"");
            line.push_str(&rfc3339(SystemTime::now()));
            line.push_str("\",\"instance\":\"bench\",");
            line.push_str(session);
            line.push(',');
            line.push_str(strip_braces(&json));
            line.push_str(",\"prev\":\"");
            line.push_str(&prev);
            line.push_str("\"}");
            black_box(link(line.as_bytes()))
        })
    });
}

fn verifier(c: &mut Criterion) {
    // A JIT role's password (what jit::lease::random_password makes: 43 alphanumerics).
    let password = "q8Zr1cK0b2v9xW3eY6tU5iO4pA7sD1fG2hJ3kL4zX5c";
    let mut group = c.benchmark_group("jit");
    group.sample_size(20);
    group.bench_function(
        "SCRAM-SHA-256 verifier, PostgreSQL's default 4096 PBKDF2 iterations",
        |b| {
            b.iter(|| {
                black_box(postgres_protocol::password::scram_sha_256(black_box(
                    password.as_bytes(),
                )))
            })
        },
    );
    group.bench_function(
        "SCRAM-SHA-256 verifier for CREATE ROLE (jitgate: 1 iteration)",
        |b| {
            b.iter(|| {
                black_box(jitgate::jit::postgres::verifier::scram_verifier(black_box(
                    password.as_bytes(),
                )))
            })
        },
    );
    group.finish();
}

criterion_group!(benches, audit_decode, policy_eval, event_line, verifier);
criterion_main!(benches);
