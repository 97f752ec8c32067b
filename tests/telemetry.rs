//! OpenTelemetry (issue 9 §6), with the real gateway, psql, ssh, PostgreSQL and sshd: the
//! gateway exports over OTLP/HTTP to a receiver on loopback started here; what arrives is
//! decoded with the OTLP message types and checked — a trace per connection whose children
//! are the policy decision, the mint, the upstream login and the drop; the metrics; every
//! audit event as a log record; and no JIT credential anywhere in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::sshd::Sshd;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
  - name: web
    subjects: { users: [alice] }
    targets: [web-1]
    ssh: {}
"#;

/// Every request body the receiver got, by path (`/v1/traces`, …).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver: reads each POST, keeps its body, answers 200 with an empty
/// (valid, empty protobuf) body.
fn receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(socket) = socket else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(socket.try_clone().unwrap());
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    keep.lock().unwrap().push((path, body));
                    let mut out = &socket;
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, got)
}

fn bodies(got: &Received, path: &str) -> Vec<Vec<u8>> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, b)| b.clone())
        .collect()
}

fn spans(got: &Received) -> Vec<Span> {
    bodies(got, "/v1/traces")
        .iter()
        .flat_map(|b| {
            ExportTraceServiceRequest::decode(&b[..])
                .unwrap()
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// Metric name → the sum of its points (counters and histograms: count), last export wins
/// per name since the SDK sends cumulative values.
fn metrics(got: &Received) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for body in bodies(got, "/v1/metrics") {
        let request = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
        for m in request
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
        {
            let value = match m.data {
                Some(Data::Sum(s)) => s
                    .data_points
                    .iter()
                    .map(|p| match p.value {
                        Some(
                            opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                i,
                            ),
                        ) => i as f64,
                        Some(
                            opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                                d,
                            ),
                        ) => d,
                        None => 0.0,
                    })
                    .sum(),
                Some(Data::Gauge(g)) => g.data_points.len() as f64,
                Some(Data::Histogram(h)) => h.data_points.iter().map(|p| p.count as f64).sum(),
                _ => 0.0,
            };
            out.insert(m.name, value);
        }
    }
    out
}

fn log_lines(got: &Received) -> Vec<String> {
    bodies(got, "/v1/logs")
        .iter()
        .flat_map(|b| {
            ExportLogsServiceRequest::decode(&b[..])
                .unwrap()
                .resource_logs
        })
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .filter_map(|r| match r.body.and_then(|b| b.value) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect()
}

/// The children of the connection span `root` (same trace, parent = root), by name.
fn children<'a>(all: &'a [Span], root: &Span) -> Vec<&'a str> {
    let mut names: Vec<&str> = all
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent_span_id == root.span_id)
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn sessions_export_traces_metrics_and_audit_records() {
    let Some(pg) = Postgres::start() else { return };
    let Some(sshd) = Sshd::start() else { return };
    let (port, got) = receiver();
    let mut gw = Gateway::start_edited(Some(&pg), Some(&sshd), POLICY, |config| {
        config.replace(
            "handshake_timeout: 3s\n",
            &format!(
                "handshake_timeout: 3s\ntelemetry:\n  otlp_endpoint: http://127.0.0.1:{port}\n  export_interval: 500ms\n"
            ),
        )
    });
    let (crt, key) = gw.issue("alice", &[]);
    let o = psql(
        &gw.conninfo("alice", Some((&crt, &key)), ""),
        "SELECT count(*) FROM pg_stat_activity",
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
    // A refusal: mallory holds a valid certificate and no grant.
    let (mcrt, mkey) = gw.issue("mallory", &[]);
    let o = psql(
        &gw.conninfo("mallory", Some((&mcrt, &mkey)), ""),
        "SELECT 1",
    );
    assert!(!o.status.success());
    let proxy = format!(
        "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
        jitgate_bin().display(),
        gw.ssh_port,
        crt.display(),
        key.display(),
        gw.path("certs/ca.crt").display()
    );
    let o = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", &proxy])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "web@web-1",
            "echo hi",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", stderr(&o), gw.log());
    assert_eq!(stdout(&o), "hi");
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
    // Shutting down sends whatever is still buffered.
    gw.stop();
    let log = gw.log();
    assert!(log.contains("OpenTelemetry export on"), "{log}");

    let all = spans(&got);
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    for (protocol, expected) in [
        (
            "pg.connection",
            vec!["jit.drop", "jit.mint", "policy", "upstream.login"],
        ),
        (
            "ssh.connection",
            vec!["jit.drop", "jit.mint", "policy", "upstream.login"],
        ),
    ] {
        let session = all
            .iter()
            .find(|s| s.name == protocol && !children(&all, s).is_empty())
            .unwrap_or_else(|| panic!("no {protocol} span with children among {names:?}"));
        assert!(
            session.parent_span_id.is_empty(),
            "{protocol} is a root span"
        );
        let mut got = children(&all, session);
        got.dedup();
        assert_eq!(got, expected, "children of {protocol}");
    }

    let m = metrics(&got);
    for name in [
        "jitgate.sessions.active",
        "jitgate.jit.accounts.live",
        "jitgate.jit.mint.duration",
        "jitgate.jit.drop.duration",
        "jitgate.relay.bytes",
        "jitgate.access.refused",
    ] {
        assert!(m.contains_key(name), "{name} not exported: {m:?}");
    }
    assert_eq!(m["jitgate.jit.mint.duration"], 2.0, "{m:?}");
    assert_eq!(m["jitgate.jit.drop.duration"], 2.0, "{m:?}");
    assert!(m["jitgate.access.refused"] >= 1.0, "{m:?}");
    assert!(m["jitgate.relay.bytes"] > 0.0, "{m:?}");
    assert!(!m.contains_key("jitgate.jit.drop.failures"), "{m:?}");

    // Every audit event as a log record carrying its JSON line, the same lines as the file.
    let lines = log_lines(&got);
    for event in [
        "session.start",
        "session.end",
        "jit.account.created",
        "jit.account.dropped",
        "access.denied",
        "pg.query",
        "ssh.exec",
    ] {
        let needle = format!("\"event\":\"{event}\"");
        assert!(
            lines.iter().any(|l| l.contains(&needle)),
            "no {event} log record among {} records",
            lines.len()
        );
    }
    let audit: String = std::fs::read_dir(gw.path("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for line in &lines {
        assert!(
            audit.contains(line.as_str()),
            "not in the audit files: {line}"
        );
    }

    // The credentials never leave the process: not in any exported byte.
    let credentials = gw.minted_credentials();
    assert_eq!(credentials.len(), 2, "a role password and an SSH key");
    for (path, body) in got.lock().unwrap().iter() {
        for c in &credentials {
            assert!(
                !body.windows(c.len()).any(|w| w == c.as_bytes()),
                "a JIT credential in an export to {path}"
            );
        }
    }
}
