//! Session audit end to end (issue 9): real psql, a wire-level prepared-statement client, real
//! ssh with a pty, sftp, through the real gateway; the events it writes, `jitgate audit`
//! reading them back, `verify` catching every kind of tampering, fail_closed refusing and
//! ending sessions, and no JIT credential anywhere in the audit directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::sshd::Sshd;
use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const POLICY: &str = r#"
grants:
  - name: db
    subjects: { users: [alice] }
    targets: [orders]
    postgres: { roles: [orders_read] }
  - name: db-redacted
    subjects: { users: [bob] }
    targets: [orders]
    postgres: { roles: [orders_read], redact_parameters: true }
  - name: web
    subjects: { users: [alice] }
    targets: [web-1]
    ssh: {}
"#;

/// Every event in the gateway's audit directory, in the order written.
fn events(gw: &Gateway) -> Vec<Value> {
    let dir = gw.path("audit");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until an event matching `pred` is in the log (it is flushed every 200 ms).
fn wait_event(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let all = events(gw);
        if all.iter().any(&pred) {
            return all;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {what} in the audit log:\n{}\n{}",
            all.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is(event: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v: &Value| v["event"] == event
}

/// The events of one session, by kind, in order.
fn of_session<'a>(all: &'a [Value], session: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["session"] == session).collect()
}

fn audit_cli(gw: &Gateway, args: &[&str]) -> Output {
    Command::new(jitgate_bin())
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(gw.path("jitgate.yaml"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, recursively, as bytes.
fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_no_credential(gw: &Gateway) {
    let minted = gw.minted_credentials();
    assert!(
        !minted.is_empty(),
        "the gateway recorded no minted credential"
    );
    for (path, bytes) in all_bytes(&gw.path("audit")) {
        let text = String::from_utf8_lossy(&bytes);
        for secret in &minted {
            assert!(
                !text.contains(secret.as_str()),
                "a JIT credential is in {}",
                path.display()
            );
        }
    }
}

mod wire {
    //! Extended-protocol messages the way drivers send them (JDBC, node-postgres, psycopg):
    //! named and unnamed statements, text and binary parameters, NULL, a name reused.
    use super::*;
    use postgres_protocol::message::frontend;
    use postgres_protocol::IsNull;

    pub enum P<'a> {
        Text(&'a str),
        Binary(&'a [u8]),
        Null,
    }

    pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
        frontend::parse(name, sql, types.iter().copied(), buf).unwrap();
    }

    pub fn bind(buf: &mut BytesMut, portal: &str, statement: &str, params: &[P<'_>]) {
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
                    out.extend_from_slice(t.as_bytes());
                    Ok(IsNull::No)
                }
                P::Binary(b) => {
                    out.extend_from_slice(b);
                    Ok(IsNull::No)
                }
                P::Null => Ok(IsNull::Yes),
            },
            Some(0),
            buf,
        )
        .map_err(|_| "bind")
        .unwrap();
    }

    pub fn execute(buf: &mut BytesMut, portal: &str) {
        frontend::execute(portal, 0, buf).unwrap();
    }

    pub fn close_statement(buf: &mut BytesMut, name: &str) {
        frontend::close(b'S', name, buf).unwrap();
    }

    pub fn sync(buf: &mut BytesMut) {
        frontend::sync(buf);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_prepared_statements_are_audited_in_order() {
    let Some((_pg, gw)) = pg_env(POLICY) else {
        return;
    };
    let (cert, key) = gw.issue("alice", &[]);
    // psql: several statements in one simple query, then an error.
    let o = Command::new(which("psql").unwrap())
        .args(["-X", "-q", "-A", "-t"])
        .arg(gw.conninfo("db", Some((&cert, &key)), ""))
        .args(["-c", "SELECT 1 AS one; SELECT 2 AS two"])
        .args(["-c", "SELECT * FROM no_such_table"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no_such_table"),
        "{o:?}"
    );
    // The drop follows session.end: wait for it, the last event asserted below.
    let all = wait_event(
        &gw,
        "the psql session's account dropped",
        is("jit.account.dropped"),
    );
    let psql_session = all.iter().find(|v| v["event"] == "session.start").unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let psql: Vec<&Value> = of_session(&all, &psql_session);
    let kinds: Vec<&str> = psql.iter().map(|v| v["event"].as_str().unwrap()).collect();
    let first_query = kinds.iter().position(|k| *k == "pg.query").unwrap();
    assert_eq!(kinds[0], "jit.account.created", "{kinds:?}");
    assert_eq!(kinds[1], "session.start", "{kinds:?}");
    assert_eq!(
        &kinds[first_query..first_query + 6],
        [
            "pg.query",
            "pg.result",
            "pg.result",
            "pg.query",
            "pg.result",
            "session.end"
        ],
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"jit.account.dropped"), "{kinds:?}");
    let q = &psql[first_query..];
    assert_eq!(q[0]["query"], "SELECT 1 AS one; SELECT 2 AS two");
    assert_eq!(q[1]["tag"], "SELECT 1");
    assert_eq!(q[1]["rows"], 1);
    assert_eq!(q[3]["query"], "SELECT * FROM no_such_table");
    assert_eq!(q[4]["sqlstate"], "42P01");
    for v in &psql {
        assert_eq!(v["user"], "alice");
        assert_eq!(v["target"], "orders");
        assert_eq!(v["grant"], "db");
        assert!(v["account"].as_str().unwrap().starts_with("jit_"), "{v}");
        assert_eq!(v["protocol"], "postgres");
    }

    // A driver's extended protocol, pipelined before one Sync: a named statement with a
    // binary parameter, the same name reused for another query after Close, the unnamed
    // statement with a text parameter and a NULL.
    let config = raw::client_config(&gw.path("certs/ca.crt"), &cert, &key, false);
    let mut stream = raw::connect(gw.port, config, false).await.unwrap();
    assert!(matches!(
        raw::startup(&mut stream, "db", "orders").await,
        raw::Login::Ready { .. }
    ));
    let mut buf = BytesMut::new();
    use wire::P;
    wire::parse(&mut buf, "s1", "SELECT $1::int4 + 1", &[23]);
    wire::bind(&mut buf, "", "s1", &[P::Binary(&41i32.to_be_bytes())]);
    wire::execute(&mut buf, "");
    wire::close_statement(&mut buf, "s1");
    wire::parse(&mut buf, "s1", "SELECT $1::text || '!'", &[]);
    wire::bind(&mut buf, "p1", "s1", &[P::Text("hi")]);
    wire::execute(&mut buf, "p1");
    wire::parse(
        &mut buf,
        "",
        "SELECT coalesce($1::text, 'none'), $2::text",
        &[],
    );
    wire::bind(&mut buf, "", "", &[P::Null, P::Text("x")]);
    wire::execute(&mut buf, "");
    wire::sync(&mut buf);
    stream.write_all(&buf).await.unwrap();
    assert_eq!(raw::result_code(&mut stream).await, None);
    // An error in the middle of a pipeline: the rest up to Sync is skipped by the server.
    let mut buf = BytesMut::new();
    wire::parse(&mut buf, "", "SELECT 1/0", &[]);
    wire::bind(&mut buf, "", "", &[]);
    wire::execute(&mut buf, "");
    wire::parse(&mut buf, "", "SELECT 'skipped'", &[]);
    wire::bind(&mut buf, "", "", &[]);
    wire::execute(&mut buf, "");
    wire::sync(&mut buf);
    stream.write_all(&buf).await.unwrap();
    assert_eq!(
        raw::result_code(&mut stream).await.as_deref(),
        Some("22012")
    );
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut buf);
    stream.write_all(&buf).await.unwrap();
    drop(stream);

    let all = wait_event(&gw, "the driver session's end", |v| {
        v["event"] == "session.end" && v["session"] != psql_session.as_str()
    });
    let driver_session = all
        .iter()
        .rev()
        .find(|v| v["event"] == "session.end")
        .unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let driver = of_session(&all, &driver_session);
    let binds: Vec<&&Value> = driver.iter().filter(|v| v["event"] == "pg.bind").collect();
    assert_eq!(binds.len(), 5, "{driver:#?}");
    assert_eq!(binds[0]["statement"], "s1");
    assert_eq!(binds[0]["query"], "SELECT $1::int4 + 1");
    assert_eq!(binds[0]["parameters"][0]["base64"], "AAAAKQ==");
    // The reused name is matched to the query it named at the time.
    assert_eq!(binds[1]["statement"], "s1");
    assert_eq!(binds[1]["portal"], "p1");
    assert_eq!(binds[1]["query"], "SELECT $1::text || '!'");
    assert_eq!(binds[1]["parameters"][0], "hi");
    assert_eq!(binds[2]["statement"], "");
    assert_eq!(binds[2]["parameters"][0], Value::Null);
    assert_eq!(binds[2]["parameters"][1], "x");
    let results: Vec<&&Value> = driver
        .iter()
        .filter(|v| v["event"] == "pg.result")
        .collect();
    let summary: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            (
                r["query"].as_str().unwrap_or_default().to_string(),
                r["tag"]
                    .as_str()
                    .or(r["sqlstate"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("SELECT $1::int4 + 1".to_string(), "SELECT 1".to_string()),
            ("SELECT $1::text || '!'".to_string(), "SELECT 1".to_string()),
            (
                "SELECT coalesce($1::text, 'none'), $2::text".to_string(),
                "SELECT 1".to_string()
            ),
            ("SELECT 1/0".to_string(), "22012".to_string()),
        ],
        "{driver:#?}"
    );

    // Review: the sessions table lists both, --grep finds the driver's, show has the
    // timeline, export json is the session's lines as written.
    let o = audit_cli(&gw, &["sessions"]);
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    assert!(table.starts_with("SESSION"), "{table}");
    assert!(
        table.contains(&psql_session) && table.contains(&driver_session),
        "{table}"
    );
    let o = audit_cli(&gw, &["sessions", "--grep", "coalesce", "--json"]);
    let rows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{}", text(&o));
    assert_eq!(rows[0]["id"], driver_session.as_str());
    assert_eq!(rows[0]["status"], "closed");
    let o = audit_cli(&gw, &["show", &psql_session[..8]]);
    let show = text(&o);
    assert!(o.status.success(), "{show}");
    assert!(
        show.contains("SELECT * FROM no_such_table") && show.contains("42P01"),
        "{show}"
    );
    let o = audit_cli(&gw, &["export", &driver_session, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    // Exported lines are the chain's bytes, so each still hashes to the next line's "prev".
    let written: String = fs::read_dir(gw.path("audit"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .collect();
    let exported = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(exported.lines().count(), driver.len(), "{}", text(&o));
    for line in exported.lines() {
        assert!(written.lines().any(|l| l == line), "not as written: {line}");
    }
    let o = audit_cli(&gw, &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("audit log intact"), "{}", text(&o));
    assert_no_credential(&gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_parameters_keep_type_and_length_only() {
    let Some((_pg, gw)) = pg_env(POLICY) else {
        return;
    };
    let (cert, key) = gw.issue("bob", &[]);
    let config = raw::client_config(&gw.path("certs/ca.crt"), &cert, &key, false);
    let mut stream = raw::connect(gw.port, config, false).await.unwrap();
    assert!(matches!(
        raw::startup(&mut stream, "db-redacted", "orders").await,
        raw::Login::Ready { .. }
    ));
    let mut buf = BytesMut::new();
    wire::parse(&mut buf, "", "SELECT $1::text", &[25]);
    wire::bind(&mut buf, "", "", &[wire::P::Text("card-4111111111111111")]);
    wire::execute(&mut buf, "");
    wire::sync(&mut buf);
    stream.write_all(&buf).await.unwrap();
    assert_eq!(raw::result_code(&mut stream).await, None);
    drop(stream);
    let all = wait_event(&gw, "the session's end", is("session.end"));
    let bind = all.iter().find(|v| v["event"] == "pg.bind").unwrap();
    assert_eq!(bind["parameters"][0]["length"], 21, "{bind}");
    for (path, bytes) in all_bytes(&gw.path("audit")) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("4111111111111111"),
            "a redacted value is in {}",
            path.display()
        );
    }
}

/// Rewrites line `n` (1-based) of the only log file with `f`, or drops/inserts/swaps lines.
fn tamper(gw: &Gateway, f: impl FnOnce(&mut Vec<String>)) -> String {
    let dir = gw.path("audit");
    let file = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    let original = fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
    f(&mut lines);
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    let o = audit_cli(gw, &["verify"]);
    fs::write(&file, &original).unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify passed a tampered log:\n{}",
        text(&o)
    );
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let report = text(&o);
    assert!(report.contains(&name), "{report}");
    report
}

#[test]
fn verify_names_every_kind_of_tampering() {
    let Some((_pg, mut gw)) = pg_env(POLICY) else {
        return;
    };
    let (cert, key) = gw.issue("alice", &[]);
    for _ in 0..2 {
        let o = psql(&gw.conninfo("db", Some((&cert, &key)), ""), "SELECT 42");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_event(&gw, "both sessions' drops", |_| {
        events(&gw)
            .iter()
            .filter(|v| v["event"] == "jit.account.dropped")
            .count()
            == 2
    });
    gw.stop();
    let o = audit_cli(&gw, &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<String> = events(&gw).iter().map(Value::to_string).collect();
    assert!(lines.len() >= 12, "{lines:?}");
    // The first query's line (0-based i): a change shows at the line after it (1-based i + 2).
    let i = lines.iter().position(|l| l.contains("SELECT 42")).unwrap();
    let edited = tamper(&gw, |l| l[i] = l[i].replace("SELECT 42", "SELECT 43"));
    assert!(
        edited.contains(&format!(":{}: does not link", i + 2)),
        "{edited}"
    );
    let deleted = tamper(&gw, |l| {
        l.remove(4);
    });
    assert!(
        deleted.contains(":5: 1 line(s) before this one were removed"),
        "{deleted}"
    );
    let inserted = tamper(&gw, |l| {
        let copy = l[2].clone();
        l.insert(5, copy);
    });
    assert!(
        inserted.contains(":6: lines were inserted or reordered"),
        "{inserted}"
    );
    let swapped = tamper(&gw, |l| l.swap(6, 7));
    assert!(swapped.contains(":7:"), "{swapped}");
    // Untouched again, and the chain continues across a restart.
    gw.restart();
    let o = psql(&gw.conninfo("db", Some((&cert, &key)), ""), "SELECT 1");
    assert!(o.status.success(), "{}", stderr(&o));
    wait_event(&gw, "the third drop", |_| {
        events(&gw)
            .iter()
            .filter(|v| v["event"] == "jit.account.dropped")
            .count()
            == 3
    });
    let o = audit_cli(&gw, &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn an_unwritable_audit_log_refuses_and_ends_sessions_when_fail_closed() {
    let Some((pg, gw)) = pg_env(POLICY) else {
        return;
    };
    let (cert, key) = gw.issue("alice", &[]);
    let conninfo = gw.conninfo("db", Some((&cert, &key)), "");
    let mut long = psql_command(&conninfo, "SELECT pg_sleep(60)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_event(&gw, "the long session's start", is("session.start"));
    // The audit directory goes away and a file takes its name: nothing can be written.
    let dir = gw.path("audit");
    fs::rename(&dir, gw.path("audit.moved")).unwrap();
    fs::write(&dir, "not a directory").unwrap();
    let start = Instant::now();
    while long.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the open session went on without an audit log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = long.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be audited"), "{err}");
    let o = psql(&conninfo, "SELECT 1");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot write its audit log"),
        "{}",
        stderr(&o)
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
    assert!(
        gw.log().contains("audit log cannot be written"),
        "{}",
        gw.log()
    );
    // Back: sessions are served again, and what waited in memory is written in order.
    fs::remove_file(&dir).unwrap();
    fs::rename(gw.path("audit.moved"), &dir).unwrap();
    let start = Instant::now();
    loop {
        let o = psql(&conninfo, "SELECT 1");
        if o.status.success() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_event(&gw, "the ended session's end", |v| {
        v["event"] == "session.end" && v["ended"] == "audit_unavailable"
    });
}

struct SshEnv {
    _sshd: Sshd,
    gw: Gateway,
    cert: PathBuf,
    key: PathBuf,
    work: tempfile::TempDir,
}

impl SshEnv {
    fn start() -> Option<SshEnv> {
        for bin in ["ssh", "sftp"] {
            if which(bin).is_none() {
                unavailable(&format!("{bin} (apt-get install openssh-client)"))?;
            }
        }
        let sshd = Sshd::start()?;
        let gw = Gateway::start_with(None, Some(&sshd), POLICY);
        let (cert, key) = gw.issue("alice", &[]);
        Some(SshEnv {
            _sshd: sshd,
            gw,
            cert,
            key,
            work: tempfile::tempdir().unwrap(),
        })
    }

    fn opts(&self) -> Vec<String> {
        let proxy = format!(
            "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
            jitgate_bin().display(),
            self.gw.ssh_port,
            self.cert.display(),
            self.key.display(),
            self.gw.path("certs/ca.crt").display()
        );
        [
            "-F",
            "/dev/null",
            "-o",
            &proxy,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

#[test]
fn a_pty_session_is_recorded_and_replays() {
    let Some(env) = SshEnv::start() else { return };
    // A terminal session with typed input: `ssh -tt` gives the target a pty and sends what
    // comes on stdin as keystrokes.
    let mut ssh = Command::new("ssh")
        .arg("-tt")
        .args(env.opts())
        .arg("alice@web-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ssh.stdin.take().unwrap();
    stdin.write_all(b"echo typed-$((6*7))\nexit 3\n").unwrap();
    let out = ssh.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", env.gw.log());
    let all = wait_event(&env.gw, "ssh.exit", is("ssh.exit"));
    let shell = all.iter().find(|v| v["event"] == "ssh.shell").unwrap();
    let exit = all.iter().find(|v| v["event"] == "ssh.exit").unwrap();
    assert_eq!(exit["status"], 3, "{exit}");
    let recording = shell["recording"].as_str().unwrap();
    assert_eq!(exit["recording"], recording);
    let cast_path = env.gw.path("audit").join(recording);
    let cast = fs::read_to_string(&cast_path).unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0, "{header}");
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let output: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    let input: String = events
        .iter()
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(output.contains("typed-42"), "{output}");
    assert!(input.contains("echo typed-$((6*7))"), "{input}");
    let session = shell["session"].as_str().unwrap();
    // The channel's end is part of the session: its ssh.exit (with the recording's hash) comes
    // before session.end, whose byte counts include it.
    let all = wait_event(&env.gw, "session.end", is("session.end"));
    let kinds: Vec<&str> = of_session(&all, session)
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    let exit = kinds.iter().position(|k| *k == "ssh.exit").unwrap();
    let end = kinds.iter().position(|k| *k == "session.end").unwrap();
    assert!(exit < end, "{kinds:?}");

    // asciinema's own parser, where installed (scripts/install-deps.sh installs it).
    if let Some(asciinema) = which("asciinema") {
        // asciinema 2 opens /dev/tty even for `cat`: give it one with script(1).
        let o = Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{} cat '{}'",
                asciinema.display(),
                cast_path.display()
            ))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "asciinema cat: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("typed-42"));
    } else {
        unavailable("asciinema (pip install asciinema)");
    }
    let o = audit_cli(&env.gw, &["replay", session, "--speed", "50"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("typed-42"));
    let o = audit_cli(&env.gw, &["export", session, "--format", "cast"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        cast,
        "export is not the recording"
    );
    let o = audit_cli(&env.gw, &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    // A changed recording is caught through the chained line that hashed it.
    let original = fs::read(&cast_path).unwrap();
    fs::write(&cast_path, cast.replace("typed-42", "typed-43")).unwrap();
    let o = audit_cli(&env.gw, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("was changed"), "{}", text(&o));
    fs::write(&cast_path, original).unwrap();
    assert_no_credential(&env.gw);
}

#[test]
fn sftp_get_and_put_are_file_events() {
    let Some(env) = SshEnv::start() else { return };
    let w = env.work.path();
    fs::write(w.join("up.txt"), "to the target\n").unwrap();
    let batch = w.join("batch");
    fs::write(
        &batch,
        format!(
            "put {} audit-up.txt\nget audit-up.txt {}\nrm audit-up.txt\n",
            w.join("up.txt").display(),
            w.join("down.txt").display()
        ),
    )
    .unwrap();
    let o = Command::new("sftp")
        .args(env.opts())
        .arg("-b")
        .arg(&batch)
        .arg("alice@web-1")
        .output()
        .unwrap();
    assert!(o.status.success(), "sftp: {}\n{}", text(&o), env.gw.log());
    let all = wait_event(&env.gw, "ssh.exit", is("ssh.exit"));
    let sftp: Vec<&Value> = all.iter().filter(|v| v["event"] == "ssh.sftp").collect();
    let ops: Vec<(String, String)> = sftp
        .iter()
        .map(|v| {
            (
                v["op"].as_str().unwrap().to_string(),
                v["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |op: &str| {
        ops.iter()
            .any(|(o, p)| o == op && p.ends_with("audit-up.txt"))
    };
    assert!(has("write") && has("read") && has("remove"), "{ops:?}");
    let write = sftp.iter().find(|v| v["op"] == "write").unwrap();
    assert_eq!(write["bytes_written"], 14, "{write}");
    assert!(
        all.iter()
            .any(|v| v["event"] == "ssh.subsystem" && v["name"] == "sftp"),
        "{all:#?}"
    );
}

#[test]
fn two_gateways_share_one_audit_store_and_verify_it() {
    // Both replicas ship to one database (here the target's own cluster, in its own database
    // and role); `jitgate audit` on either sees both chains.
    if which("psql").is_none() && unavailable("psql (apt-get install postgresql-client)").is_none()
    {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    pg.superuser_sql(
        "postgres",
        "CREATE ROLE jitgate_audit LOGIN PASSWORD 'store-secret-1'",
    );
    pg.superuser_sql(
        "postgres",
        "CREATE DATABASE jitgate_audit OWNER jitgate_audit",
    );
    let secrets = tempfile::tempdir().unwrap();
    let password = secrets.path().join("store-password");
    fs::write(&password, "store-secret-1\n").unwrap();
    let with_store = |instance: &'static str| {
        let password = password.clone();
        let port = pg.port;
        move |config: String| {
            format!(
                "{}audit:\n  postgres:\n    host: 127.0.0.1\n    port: {port}\n    databases: [jitgate_audit]\n    tls: disable\n    admin:\n      user: jitgate_audit\n      password_file: {}\n",
                config.replace("instance_id: test-gw", &format!("instance_id: {instance}")),
                password.display()
            )
        }
    };
    let a = Gateway::start_edited(Some(&pg), None, POLICY, with_store("gw-a"));
    let b = Gateway::start_edited(Some(&pg), None, POLICY, with_store("gw-b"));
    for (gw, user, grant, sql) in [
        (&a, "alice", "db", "SELECT 1 AS via_a"),
        (&b, "bob", "db-redacted", "SELECT 2 AS via_b"),
    ] {
        let (cert, key) = gw.issue(user, &[]);
        let o = psql(&gw.conninfo(grant, Some((&cert, &key)), ""), sql);
        assert!(o.status.success(), "{}", stderr(&o));
        wait_event(gw, "the session's end", is("session.end"));
    }

    // Each replica's lines reach the store within its shipping interval.
    let start = Instant::now();
    let rows: Vec<Value> = loop {
        let o = audit_cli(&a, &["sessions", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let rows: Vec<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if rows.len() == 2 && rows.iter().all(|r| r["status"] == "closed") {
            break rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{rows:?}\n{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let by = |user: &str| rows.iter().find(|r| r["user"] == user).unwrap();
    assert_eq!(by("alice")["instance"], "gw-a");
    assert_eq!(by("bob")["instance"], "gw-b");
    // The other replica's session, shown from this one.
    let bob = by("bob")["id"].as_str().unwrap().to_string();
    let o = audit_cli(&a, &["show", &bob]);
    assert!(text(&o).contains("SELECT 2 AS via_b"), "{}", text(&o));
    let o = audit_cli(&b, &["verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("chain gw-a (audit store)"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("chain gw-b (audit store)"),
        "{}",
        text(&o)
    );

    // A row changed in the store is named, by instance and row.
    pg.superuser_sql(
        "jitgate_audit",
        "UPDATE jitgate_audit_lines SET line = replace(line, 'via_a', 'via_x') \
         WHERE instance = 'gw-a' AND line LIKE '%\"pg.query\"%'",
    );
    let o = audit_cli(&b, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("audit store, instance gw-a, row ")
            && text(&o).contains("does not link to the line before it"),
        "{}",
        text(&o)
    );
    // And a row deleted.
    pg.superuser_sql(
        "jitgate_audit",
        "DELETE FROM jitgate_audit_lines WHERE instance = 'gw-b' AND line LIKE '%\"session.start\"%'",
    );
    let o = audit_cli(&a, &["verify"]);
    assert!(
        text(&o).contains("audit store, instance gw-b, row ")
            && text(&o).contains("1 line(s) before this one were removed"),
        "{}",
        text(&o)
    );
    // A row no gateway wrote, whose instance would be a path: refused, nothing written.
    pg.superuser_sql(
        "jitgate_audit",
        "INSERT INTO jitgate_audit_lines (instance, seq, line) VALUES ('../escape', 0, '{}')",
    );
    let o = audit_cli(&a, &["sessions"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is not an instance_id"), "{}", text(&o));
    for gw in [&a, &b] {
        assert_no_credential(gw);
        assert!(!fs::read_to_string(gw.path("gateway.log"))
            .unwrap()
            .contains("store-secret-1"));
    }
}

#[test]
fn an_unreachable_store_refuses_sessions_when_fail_closed() {
    let Some((pg, _gw)) = pg_env(POLICY) else {
        return;
    };
    // Nothing listens there: the store cannot take events, which under fail_closed is the
    // same as a disk that refuses them. (No login is attempted, so any variable will do as
    // the password source.)
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gw = Gateway::start_edited(Some(&pg), None, POLICY, |config| {
        format!(
            "{config}audit:\n  postgres:\n    host: 127.0.0.1\n    port: {port}\n    databases: [jitgate_audit]\n    tls: disable\n    admin:\n      user: jitgate_audit\n      password_env: HOME\n"
        )
    });
    let (cert, key) = gw.issue("alice", &[]);
    let conninfo = gw.conninfo("db", Some((&cert, &key)), "");
    let start = Instant::now();
    let o = loop {
        let o = psql(&conninfo, "SELECT 1");
        if !o.status.success() {
            break o;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "sessions still served without the store:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        stderr(&o).contains("cannot write its audit log"),
        "{}",
        stderr(&o)
    );
    assert!(
        gw.log().contains("audit store cannot be written"),
        "{}",
        gw.log()
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}
