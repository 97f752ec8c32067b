//! Issue 11's comparison, in one run on one machine: PostgreSQL reached directly, through
//! PgBouncer (session pooling, client certificates required: the same front-door work as
//! jitgate) and through jitgate; an sshd reached directly, through an OpenSSH jump host
//! (`ssh -W`, what ProxyJump runs) and through jitgate. Every workload runs on every path,
//! the path order rotating each round; it prints one markdown table per protocol (median,
//! min–max, ratio to direct, the issue's bar). Times are printed, never asserted.
//! `JITGATE_BENCH_QUICK=1`: short runs (under 3 minutes). How to run it: BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::{jitgate_bin, random_word, which, Gateway, Postgres, ADMIN_USER, DEFAULT_POLICY};

/// How long and how often. Quick mode keeps the shape and shrinks every size.
struct Mode {
    quick: bool,
    /// `JITGATE_BENCH_ONLY=<text>`: only the workloads whose key contains it (to profile one
    /// row); the others are printed as skipped. Keys: idle memory, 1 client, 8 clients,
    /// 32 clients, prepared, TPC-B-like, new connection per transaction, COPY, stream, scp,
    /// connect + true, echo, concurrent.
    only: Option<String>,
    rounds: usize,
    /// `pgbench -T`.
    pg_secs: u32,
    /// `pgbench -i -s`: at least the TPC-B client count, so clients do not queue on one branch.
    pg_scale: u32,
    /// COPY out: rows of 1 024 bytes (1 023 `x` and the newline).
    copy_rows: u64,
    /// Idle sessions opened per round (held across rounds: each round measures the next batch).
    idle_sessions: usize,
    stream_bytes: u64,
    scp_bytes: u64,
    /// Sequential `ssh HOST true` per round; the round's median is its value.
    setup_runs: usize,
    echo_keys: usize,
    concurrent: usize,
}

impl Mode {
    fn from_env() -> Mode {
        let quick = std::env::var("JITGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let only = std::env::var("JITGATE_BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty());
        if quick {
            Mode {
                quick,
                only: only.clone(),
                rounds: 3,
                pg_secs: 1,
                pg_scale: 8,
                copy_rows: 1 << 17,
                idle_sessions: 20,
                stream_bytes: 128 << 20,
                scp_bytes: 64 << 20,
                setup_runs: 3,
                echo_keys: 200,
                concurrent: 20,
            }
        } else {
            Mode {
                quick,
                only,
                rounds: 3,
                pg_secs: 10,
                pg_scale: 8,
                copy_rows: 1 << 20,
                idle_sessions: 50,
                stream_bytes: 1 << 30,
                scp_bytes: 512 << 20,
                setup_runs: 10,
                echo_keys: 1000,
                concurrent: 100,
            }
        }
    }
}

/// libpq variables that would change what the conninfo strings below ask for.
const PG_ENV: &[&str] = &[
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLROOTCERT",
    "PGOPTIONS",
];

/// alice: a JIT role in orders (orders_read + orders_write) and a JIT account on web-1.
fn policy() -> String {
    format!(
        "{DEFAULT_POLICY}  - name: web-ops\n    subjects: {{ groups: [ops] }}\n    targets: [web-1]\n    ssh: {{}}\n"
    )
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs harness-less benches without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/compare.rs: skipped (run it with `cargo bench --bench compare`)");
        return ExitCode::SUCCESS;
    }
    // jitgate as shipped logs at info (the test harness's default is debug).
    std::env::set_var("JITGATE_TEST_GATEWAY_LOG", "info");
    let mode = Mode::from_env();
    let load = LoadSampler::start();
    let started = Instant::now();
    let ok = run(&mode);
    let (lo, hi, mean, compilers) = load.stop();
    println!(
        "\nwall time {:.0} s; load average (1 min) during the run: {lo:.2}–{hi:.2}, mean {mean:.2} \
         ({} CPUs; the bench's own clients and servers count in it); compiler processes \
         (rustc, cc1, ld) seen at once, sampled every 2 s: at most {compilers}",
        started.elapsed().as_secs_f64(),
        cpus()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Returns whether nothing was left behind (no `jit_` role, no JIT account).
fn run(mode: &Mode) -> bool {
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    println!(
        "jitgate comparison benchmark ({}), {}, {} CPUs ({model}), load average at start {}",
        if mode.quick { "quick" } else { "full" },
        time::OffsetDateTime::now_utc().date(),
        cpus(),
        loadavg()
    );
    println!("jitgate binary: {}", jitgate_bin().display());

    let pg_tools = pg_tools();
    let mut pg = match &pg_tools {
        Ok(_) => Postgres::start(),
        Err(_) => None,
    };
    let ssh_missing = ssh_missing();
    let (sshd, jump) = if ssh_missing.is_none() {
        (Sshd::start(), Sshd::start())
    } else {
        (None, None)
    };
    if let Some(pg) = pg.as_mut() {
        tune_postgres(pg, mode);
    }
    let gw = Gateway::start_edited(pg.as_ref(), sshd.as_ref(), &policy(), |config| {
        // The harness's 3 s handshake timeout is for tests; the shipped default applies here.
        // One identity (alice) opens every session: the per-identity and per-source limits
        // are raised past the concurrency measured (shipped: 50 and 64).
        config.replace("handshake_timeout: 3s\n", "")
            + "limits:\n  max_sessions_per_identity: 1000\n  max_handshakes_per_source: 1000\n"
    });
    let (crt, key) = gw.issue("alice", &["dba", "ops"]);
    // For `perf record -p` while one row runs (JITGATE_BENCH_ONLY).
    println!("jitgate serve: pid {}", gw.pid().unwrap_or(0));
    let mut clean = true;

    match (&pg_tools, &pg) {
        (Ok(tools), Some(pg)) => {
            let report = pg_bench(mode, tools, pg, &gw, &crt, &key);
            report.print();
            let left = pg.wait_no_jit_roles();
            if !left.is_empty() {
                println!("jit_ roles left after the run: {left:?}");
                clean = false;
            }
        }
        (Err(missing), _) => println!("\nPostgreSQL: not run, {missing} not found"),
        (Ok(_), None) => println!("\nPostgreSQL: not run, the server could not be started"),
    }
    match (&ssh_missing, &sshd, &jump) {
        (None, Some(sshd), Some(jump)) => {
            let report = ssh_bench(mode, sshd, jump, &gw, &crt, &key);
            report.print();
            let left = settle(sshd);
            if !left.is_empty() {
                println!("JIT accounts left after the run: {left:?}");
                clean = false;
            }
        }
        (Some(missing), _, _) => println!("\nSSH: not run, {missing}"),
        _ => println!("\nSSH: not run, sshd could not be started"),
    }
    clean
}

// ---------------------------------------------------------------------------------------
// Tables

/// One path's values for one row, or why it has none.
enum Cell {
    Values(Vec<f64>),
    Absent(String),
}

impl Cell {
    fn median(&self) -> Option<f64> {
        match self {
            Cell::Values(v) if !v.is_empty() => {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                Some(if v.len() % 2 == 1 {
                    v[v.len() / 2]
                } else {
                    (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
                })
            }
            _ => None,
        }
    }
}

/// Whether a larger number is better (throughput) or worse (time, memory).
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

/// The issue's bar for jitgate, judged on medians.
enum Bar {
    /// jitgate / direct at least this.
    RatioAtLeast(f64),
    /// jitgate - direct at most this (in the row's unit).
    AddedAtMost(f64),
    /// jitgate's value at most this.
    AtMost(f64),
}

struct Row {
    workload: String,
    unit: &'static str,
    better: Better,
    cells: Vec<Cell>,
    bar: Option<Bar>,
}

struct Report {
    title: String,
    paths: Vec<&'static str>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    fn print(&self) {
        println!("\n### {}\n", self.title);
        print!("| workload | unit |");
        for (i, p) in self.paths.iter().enumerate() {
            if i == 0 {
                print!(" {p} |");
            } else {
                print!(" {p} | ratio |");
            }
        }
        println!(" bar (jitgate) |");
        print!("|---|---|");
        for i in 0..self.paths.len() {
            print!("{}", if i == 0 { "---|" } else { "---|---|" });
        }
        println!("---|");
        for row in &self.rows {
            print!("| {} | {} |", row.workload, row.unit);
            let direct = row.cells[0].median();
            for (i, cell) in row.cells.iter().enumerate() {
                let text = match cell {
                    Cell::Values(v) if !v.is_empty() => {
                        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let m = cell.median().unwrap_or(f64::NAN);
                        format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi))
                    }
                    Cell::Values(_) => "no value".to_string(),
                    Cell::Absent(why) => why.clone(),
                };
                print!(" {text} |");
                if i > 0 {
                    let ratio = match (cell.median(), direct) {
                        (Some(m), Some(d)) if d != 0.0 => {
                            if row.better == Better::Lower {
                                let sign = if m >= d { "+" } else { "" };
                                format!("{:.2} ({sign}{})", m / d, fmt_num(m - d))
                            } else {
                                format!("{:.2}", m / d)
                            }
                        }
                        _ => "—".to_string(),
                    };
                    print!(" {ratio} |");
                }
            }
            let jg = row.cells.last().and_then(Cell::median);
            let bar = match (&row.bar, jg) {
                (None, _) => String::new(),
                (Some(bar), jg) => {
                    let (text, met) = match bar {
                        Bar::RatioAtLeast(r) => (
                            format!("≥ {r}× direct"),
                            jg.zip(direct).map(|(j, d)| j / d >= *r),
                        ),
                        Bar::AddedAtMost(a) => (
                            format!("≤ +{a} {}", row.unit),
                            jg.zip(direct).map(|(j, d)| j - d <= *a),
                        ),
                        Bar::AtMost(a) => (format!("≤ {a} {}", row.unit), jg.map(|j| j <= *a)),
                    };
                    let verdict = match met {
                        Some(true) => "met",
                        Some(false) => "**missed**",
                        None => "not measured",
                    };
                    format!("{text}: {verdict}")
                }
            };
            println!(" {bar} |");
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

/// Runs `f` for every available path, `mode.rounds` times, the order rotating by one each
/// round (round r starts with path r). `f` returns one value per metric; the first failure of
/// a path ends that path's measurements for this workload (its cells say why).
fn measure(
    mode: &Mode,
    label: &str,
    absent: &[Option<String>],
    metrics: usize,
    mut f: impl FnMut(usize) -> Result<Vec<f64>, String>,
) -> Vec<Vec<Cell>> {
    let n = absent.len();
    let mut values = vec![vec![Vec::new(); metrics]; n];
    let mut why: Vec<Option<String>> = absent.to_vec();
    if let Some(only) = &mode.only {
        if !label.contains(only.as_str()) {
            why = vec![Some("skipped (JITGATE_BENCH_ONLY)".to_string()); n];
        }
    }
    for round in 0..mode.rounds {
        for k in 0..n {
            let i = (k + round) % n;
            if why[i].is_some() {
                continue;
            }
            match f(i) {
                Ok(v) => {
                    for (m, x) in v.into_iter().enumerate().take(metrics) {
                        values[i][m].push(x);
                    }
                }
                Err(e) => {
                    let short: String = e.chars().take(120).collect();
                    eprintln!("path {i} failed: {e}");
                    why[i] = Some(format!(
                        "failed: {}",
                        short.replace('|', "/").replace('\n', " ")
                    ));
                }
            }
        }
    }
    (0..metrics)
        .map(|m| {
            (0..n)
                .map(|i| match &why[i] {
                    Some(w) => Cell::Absent(w.clone()),
                    None => Cell::Values(values[i][m].clone()),
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

struct PgTools {
    pgbench: PathBuf,
    psql: PathBuf,
    version: String,
}

fn pg_tools() -> Result<PgTools, String> {
    let bindir = jitgate::sandbox::postgres::bindir()
        .ok_or("the PostgreSQL server binaries (apt-get install postgresql)")?;
    let pgbench = bindir.join("pgbench");
    let psql = bindir.join("psql");
    for tool in [&pgbench, &psql] {
        if !tool.is_file() {
            return Err(format!("{}", tool.display()));
        }
    }
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    Ok(PgTools {
        pgbench,
        psql,
        version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// Turns the test cluster into a benchmark one: no statement or connection logging, room for
/// every pooled and direct connection, bigger shared buffers (fsync stays off, as the harness
/// sets it), then the pgbench tables and the grants both roles need.
fn tune_postgres(pg: &mut Postgres, mode: &Mode) {
    for sql in [
        "ALTER SYSTEM SET log_statement = 'none'",
        "ALTER SYSTEM SET log_connections = off",
        "ALTER SYSTEM SET log_disconnections = off",
        "ALTER SYSTEM SET max_connections = 400",
        "ALTER SYSTEM SET shared_buffers = '256MB'",
        "ALTER SYSTEM SET synchronous_commit = off",
    ] {
        pg.superuser_sql("postgres", sql);
    }
    // shared_buffers and max_connections need a restart (the harness stops immediately;
    // nothing has been written yet that recovery could not replay).
    pg.stop();
    pg.start_again();
    let bindir = jitgate::sandbox::postgres::bindir().unwrap();
    // The server's socket is in its data directory, one level below the harness's dir.
    let socket_dir = fs::read_dir(pg.dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| d.join(format!(".s.PGSQL.{}", pg.port)).exists())
        .expect("the server's socket");
    let out = Command::new(bindir.join("pgbench"))
        .args(["-i", "-s", &mode.pg_scale.to_string(), "-q", "-h"])
        .arg(&socket_dir)
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "orders"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history";
    pg.superuser_sql(
        "orders",
        &format!("GRANT SELECT ON {tables} TO orders_read, orders_write, {ADMIN_USER}"),
    );
    pg.superuser_sql(
        "orders",
        &format!("GRANT INSERT, UPDATE ON {tables} TO orders_write, {ADMIN_USER}"),
    );
    pg.superuser_sql("orders", "VACUUM ANALYZE");
}

struct PgPath {
    name: &'static str,
    conninfo: String,
    password: Option<String>,
}

impl PgPath {
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        cmd
    }
}

struct PgbenchOut {
    tps: f64,
    latency_ms: f64,
    connection_ms: Option<f64>,
    transactions: f64,
}

fn pgbench(tools: &PgTools, path: &PgPath, args: &[String]) -> Result<PgbenchOut, String> {
    let out = path
        .command(&tools.pgbench)
        .args(args)
        .arg(&path.conninfo)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let failed = value("number of failed transactions: ").unwrap_or(0.0);
    if failed > 0.0 {
        return Err(format!("{failed} failed transactions"));
    }
    Ok(PgbenchOut {
        tps: value("tps = ").ok_or_else(|| format!("no tps in: {text}"))?,
        latency_ms: value("latency average = ").ok_or("no latency")?,
        connection_ms: value("average connection time = "),
        transactions: value("number of transactions actually processed: ").unwrap_or(f64::NAN),
    })
}

fn copy_sql(rows: u64) -> String {
    format!("COPY (SELECT repeat('x', 1023) FROM generate_series(1, {rows})) TO STDOUT")
}

/// psql's COPY out, stdout to /dev/null (or counted), wall time including login.
fn copy_out(
    tools: &PgTools,
    path: &PgPath,
    rows: u64,
    count: bool,
) -> Result<(Duration, u64), String> {
    let mut cmd = path.command(&tools.psql);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(&path.conninfo)
        .args(["-c", &copy_sql(rows)])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let (out, bytes) = if count {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let bytes = std::io::copy(&mut child.stdout.take().unwrap(), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        (child.wait_with_output().map_err(|e| e.to_string())?, bytes)
    } else {
        let devnull = fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        (cmd.stdout(devnull).output().map_err(|e| e.to_string())?, 0)
    };
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "psql COPY: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((elapsed, bytes))
}

/// An idle psql session: connected, one `SELECT 1` answered, then nothing.
fn idle_session(tools: &PgTools, path: &PgPath) -> Result<Child, String> {
    let mut child = path
        .command(&tools.psql)
        .args(["-X", "-q", "-A", "-t", "-d"])
        .arg(&path.conninfo)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 1;\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "1" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("idle psql session did not log in (read {line:?})"));
    }
    Ok(child)
}

/// (ppid, own ticks, reaped children's ticks) from /proc/PID/stat.
fn proc_ticks(pid: &str) -> Option<(u32, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let n = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Where the CPU of one pgbench run went, in clock ticks: PostgreSQL (the postmaster, its
/// live backends, and the ones it reaped), the proxy process, and the clients this bench
/// reaped (pgbench).
struct PgCpu {
    postmaster: Option<u32>,
    proxies: Vec<Option<u32>>,
}

impl PgCpu {
    fn sample(&self, path: usize) -> [u64; 3] {
        let pg = self.postmaster.map_or(0, |pm| {
            let (_, own, reaped) = proc_ticks(&pm.to_string()).unwrap_or_default();
            let live: u64 = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| proc_ticks(e.file_name().to_str()?))
                .filter(|(ppid, _, _)| *ppid == pm)
                .map(|(_, own, _)| own)
                .sum();
            own + reaped + live
        });
        let proxy = self.proxies[path]
            .and_then(|p| proc_ticks(&p.to_string()))
            .map_or(0, |(_, own, _)| own);
        let client = proc_ticks("self").map_or(0, |(_, _, reaped)| reaped);
        [pg, proxy, client]
    }
}

/// The postmaster's pid, from the postmaster.pid file somewhere below the harness's dir.
fn postmaster_pid(pg: &Postgres) -> Option<u32> {
    let mut dirs = vec![pg.dir.path().to_path_buf()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in dirs {
            if let Ok(text) = fs::read_to_string(d.join("postmaster.pid")) {
                return text.lines().next()?.trim().parse().ok();
            }
            next.extend(
                fs::read_dir(&d)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir()),
            );
        }
        dirs = next;
    }
    None
}

fn rss_kib(pid: u32) -> Result<f64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

fn pg_bench(
    mode: &Mode,
    tools: &PgTools,
    pg: &Postgres,
    gw: &Gateway,
    crt: &Path,
    key: &Path,
) -> Report {
    let bouncer = PgBouncer::start(pg, gw);
    let bouncer_version = Command::new(PGBOUNCER)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let paths = [
        PgPath {
            name: "direct",
            conninfo: format!(
                "host=127.0.0.1 port={} dbname=orders user={ADMIN_USER} sslmode=disable connect_timeout=10",
                pg.port
            ),
            password: Some(pg.admin_password.clone()),
        },
        PgPath {
            name: "PgBouncer (mTLS)",
            conninfo: match &bouncer {
                Ok(b) => b.conninfo(),
                Err(_) => String::new(),
            },
            password: None,
        },
        PgPath {
            name: "jitgate",
            conninfo: gw.conninfo("alice", Some((crt, key)), ""),
            password: None,
        },
    ];
    let absent = vec![None, bouncer.as_ref().err().cloned(), None];
    println!(
        "\n{}; {}",
        tools.version,
        if bouncer_version.is_empty() {
            "PgBouncer not installed"
        } else {
            &bouncer_version
        }
    );
    println!("  direct   libpq -> PostgreSQL, plain TCP on 127.0.0.1, role {ADMIN_USER}, SCRAM");
    println!("  PgBouncer libpq -> PgBouncer (TLS verify-full, client certificate required, auth_type=cert, session pool) -> PostgreSQL, plain TCP, SCRAM");
    println!("  jitgate  libpq -> jitgate (TLS verify-full, client certificate, audit on) -> PostgreSQL, plain TCP, a JIT role minted and dropped per connection");

    // Every byte must arrive every way (untimed); one session on each path first, so the
    // memory measured next leaves out what a proxy sets up once.
    for (i, p) in paths.iter().enumerate() {
        if absent[i].is_some() {
            continue;
        }
        let (_, bytes) = copy_out(tools, p, 4096, true).unwrap();
        assert_eq!(bytes, 4096 * 1024, "COPY out via {}", p.name);
    }
    let mut rows = Vec::new();
    // Idle session memory, measured before any load (a proxy's allocator keeps what 32
    // pgbench clients made it touch): the proxy's RSS growth per session, each round adding a
    // batch on top of the sessions the earlier rounds left open (freed memory is reused).
    let mut mem_absent = absent.clone();
    mem_absent[0] = Some("no proxy".to_string());
    let proxy_pid = |i: usize| -> Option<u32> {
        match i {
            1 => bouncer.as_ref().ok().and_then(PgBouncer::pid),
            2 => gw.pid(),
            _ => None,
        }
    };
    let mut held: Vec<Vec<Child>> = (0..paths.len()).map(|_| Vec::new()).collect();
    let k = mode.idle_sessions;
    let cells = measure(mode, "idle memory", &mem_absent, 1, |i| {
        let pid = proxy_pid(i).ok_or("no pid")?;
        std::thread::sleep(Duration::from_millis(300));
        let before = rss_kib(pid)?;
        for _ in 0..k {
            held[i].push(idle_session(tools, &paths[i])?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(pid)?;
        Ok(vec![(after - before) / k as f64])
    });
    for children in held.iter_mut() {
        for mut c in children.drain(..) {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
    pg.wait_no_jit_roles();
    rows.push(Row {
        workload: format!("idle session memory (proxy RSS growth, {k} more sessions per round)"),
        unit: "KiB",
        better: Better::Lower,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::AtMost(16.0)),
    });

    // jitgate drops its roles after the session, off the client's path but on the same CPU:
    // they are let finish before the next path is measured.
    let settle_pg = |i: usize| {
        if i == 2 {
            pg.wait_no_jit_roles();
        }
    };
    // A warm-up on every path.
    for (i, p) in paths.iter().enumerate() {
        if absent[i].is_some() {
            continue;
        }
        let warm: Vec<String> = ["-n", "-S", "-c", "4", "-j", "2", "-T", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        pgbench(tools, p, &warm).unwrap();
    }

    let t = mode.pg_secs.to_string();
    let args = |a: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.extend(["-T".to_string(), t.clone()]);
        v
    };
    let cpu = PgCpu {
        postmaster: postmaster_pid(pg),
        proxies: vec![
            None,
            bouncer.as_ref().ok().and_then(PgBouncer::pid),
            gw.pid(),
        ],
    };
    let cpu_rows: std::cell::RefCell<Vec<(String, Vec<Vec<Cell>>)>> = Default::default();
    // One pgbench run, with the CPU it cost per transaction (µs: PostgreSQL, proxy, client).
    let timed_pgbench = |i: usize, a: &[String]| -> Result<(PgbenchOut, [f64; 3]), String> {
        let before = cpu.sample(i);
        let r = pgbench(tools, &paths[i], a);
        let after = cpu.sample(i);
        settle_pg(i);
        let r = r?;
        let per = |k: usize| after[k].saturating_sub(before[k]) as f64 * 10_000.0 / r.transactions;
        let split = [per(0), per(1), per(2)];
        Ok((r, split))
    };
    let run_pgbench = |label: &str, a: &[&str], bar: f64, rows: &mut Vec<Row>| {
        let a = args(a);
        let cells = measure(mode, label, &absent, 5, |i| {
            let (r, c) = timed_pgbench(i, &a)?;
            Ok(vec![r.tps, r.latency_ms * 1000.0, c[0], c[1], c[2]])
        });
        let mut it = cells.into_iter();
        rows.push(Row {
            workload: format!("`pgbench {}` {label}", a.join(" ")),
            unit: "TPS",
            better: Better::Higher,
            cells: it.next().unwrap(),
            bar: Some(Bar::RatioAtLeast(bar)),
        });
        let latency = it.next().unwrap();
        cpu_rows
            .borrow_mut()
            .push((label.to_string(), it.collect()));
        latency
    };
    let latency = run_pgbench(
        "1 client",
        &["-n", "-S", "-c", "1", "-j", "1"],
        0.9,
        &mut rows,
    );
    rows.push(Row {
        workload: "the same, average latency".to_string(),
        unit: "µs",
        better: Better::Lower,
        cells: latency,
        bar: Some(Bar::AddedAtMost(20.0)),
    });
    run_pgbench(
        "8 clients",
        &["-n", "-S", "-c", "8", "-j", "2"],
        0.85,
        &mut rows,
    );
    run_pgbench(
        "32 clients",
        &["-n", "-S", "-c", "32", "-j", "2"],
        0.85,
        &mut rows,
    );
    run_pgbench(
        "prepared, 8 clients",
        &["-n", "-S", "-M", "prepared", "-c", "8", "-j", "2"],
        0.75,
        &mut rows,
    );
    run_pgbench(
        "TPC-B-like, 8 clients",
        &["-n", "-c", "8", "-j", "2"],
        0.9,
        &mut rows,
    );

    // New connection per transaction: connections/s is the TPS.
    let a = args(&["-n", "-S", "-C", "-c", "4", "-j", "2"]);
    let cells = measure(mode, "new connection per transaction", &absent, 5, |i| {
        let (r, c) = timed_pgbench(i, &a)?;
        Ok(vec![
            r.tps,
            r.connection_ms.unwrap_or(f64::NAN),
            c[0],
            c[1],
            c[2],
        ])
    });
    let mut it = cells.into_iter();
    rows.push(Row {
        workload: format!("`pgbench {}` new connection per transaction", a.join(" ")),
        unit: "conn/s",
        better: Better::Higher,
        cells: it.next().unwrap(),
        bar: Some(Bar::RatioAtLeast(1.0)),
    });
    rows.push(Row {
        workload: "the same, average connection time".to_string(),
        unit: "ms",
        better: Better::Lower,
        cells: it.next().unwrap(),
        bar: None,
    });
    cpu_rows
        .borrow_mut()
        .push(("new connection per transaction".to_string(), it.collect()));

    let rows_n = mode.copy_rows;
    let mib = (rows_n * 1024) >> 20;
    let cells = measure(mode, "COPY", &absent, 1, |i| {
        let d = copy_out(tools, &paths[i], rows_n, false);
        settle_pg(i);
        let (d, _) = d?;
        Ok(vec![(rows_n * 1024) as f64 / 1e6 / d.as_secs_f64()])
    });
    rows.push(Row {
        workload: format!("COPY out {mib} MiB (`psql -c 'COPY …' > /dev/null`, wall incl. login)"),
        unit: "MB/s",
        better: Better::Higher,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::RatioAtLeast(0.95)),
    });

    // The issue's order: memory last.
    let memory = rows.remove(0);
    rows.push(memory);
    let mut cpu_table = String::from(
        "CPU per transaction (µs, medians; from /proc, 10 ms ticks): PostgreSQL (postmaster and \
         backends) + proxy + client (pgbench) = total\n\n| workload |",
    );
    for p in &paths {
        cpu_table.push_str(&format!(" {} |", p.name));
    }
    cpu_table.push_str("\n|---|");
    cpu_table.push_str(&"---|".repeat(paths.len()));
    for (label, parts) in cpu_rows.borrow().iter() {
        cpu_table.push_str(&format!("\n| {label} |"));
        for i in 0..paths.len() {
            let m: Vec<Option<f64>> = (0..3)
                .map(|k| parts.get(k).and_then(|c| c.get(i)).and_then(Cell::median))
                .collect();
            match (m[0], m[1], m[2]) {
                (Some(a), Some(b), Some(c)) if i == 0 => {
                    cpu_table.push_str(&format!(" {a:.0} + — + {c:.0} = {:.0} |", a + b + c))
                }
                (Some(a), Some(b), Some(c)) => {
                    cpu_table.push_str(&format!(" {a:.0} + {b:.0} + {c:.0} = {:.0} |", a + b + c))
                }
                _ => cpu_table.push_str(" — |"),
            }
        }
    }
    let mut notes = vec![format!(
        "{} rounds, path order rotating per round; cells: median (min–max); ratio = path / direct \
         (for µs, ms and KiB rows: also the difference). pgbench -T {}, scale {}; PostgreSQL: \
         fsync off, synchronous_commit off, shared_buffers 256MB, no statement logging.",
        mode.rounds, mode.pg_secs, mode.pg_scale
    )];
    notes.push(cpu_table);
    if mode.quick {
        notes.push("Quick mode: 1 s pgbench runs and a 128 MiB COPY; the issue's bars are for the full run.".to_string());
    }
    Report {
        title: "PostgreSQL".to_string(),
        paths: paths.iter().map(|p| p.name).collect(),
        rows,
        notes,
    }
}

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// PgBouncer on a loopback port, run as the postgres user (it refuses root), session pooling,
/// `auth_type = cert` with `client_tls_sslmode = verify-full`: a client certificate from the
/// gateway's CA whose CN is the database user; the upstream login is SCRAM with the password
/// from its auth_file.
struct PgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    client: (PathBuf, PathBuf),
}

impl PgBouncer {
    fn start(pg: &Postgres, gw: &Gateway) -> Result<PgBouncer, String> {
        if !Path::new(PGBOUNCER).is_file() {
            return Err("not installed".to_string());
        }
        let dir = tempfile::Builder::new()
            .prefix("jitgate-pgbouncer-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        for f in ["ca.crt", "server.crt", "server.key"] {
            let dest = d.join(f);
            fs::copy(gw.path(&format!("certs/{f}")), &dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(
            d.join("userlist.txt"),
            format!("\"{ADMIN_USER}\" \"{}\"\n", pg.admin_password),
        )
        .unwrap();
        fs::set_permissions(d.join("userlist.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let port = common::free_port();
        let ini = format!(
            "[databases]\norders = host=127.0.0.1 port={pgport} dbname=orders\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = cert\nauth_file = {d}/userlist.txt\npool_mode = session\n\
             max_client_conn = 1000\ndefault_pool_size = 200\nmax_db_connections = 0\n\
             client_tls_sslmode = verify-full\nclient_tls_ca_file = {d}/ca.crt\n\
             client_tls_cert_file = {d}/server.crt\nclient_tls_key_file = {d}/server.key\n\
             server_tls_sslmode = disable\nlog_connections = 0\nlog_disconnections = 0\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            pgport = pg.port,
            d = d.display()
        );
        fs::write(d.join("pgbouncer.ini"), ini).unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(d)
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("chown to postgres failed".to_string());
        }
        let mut cmd = if jitgate::sandbox::is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                PGBOUNCER,
            ]);
            c
        } else {
            Command::new(PGBOUNCER)
        };
        let child = cmd
            .arg(d.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let client = gw.issue(ADMIN_USER, &[]);
        let mut bouncer = PgBouncer {
            dir,
            port,
            child,
            client,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if bouncer.child.try_wait().ok().flatten().is_some()
                || start.elapsed() > Duration::from_secs(10)
            {
                let log = fs::read_to_string(bouncer.dir.path().join("pgbouncer.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "did not start: {}",
                    log.lines().last().unwrap_or("")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bouncer)
    }

    /// The cert's CN is the user: the same certificate kind jitgate's clients use.
    /// The client certificate's CN is the database user (`jitgate certs issue --user`, the
    /// same kind of certificate jitgate's clients show); libpq wants its key owned by root
    /// or the caller, so it stays where the gateway issued it.
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=orders user={ADMIN_USER} sslmode=verify-full \
             sslrootcert={} sslcert={} sslkey={} connect_timeout=10",
            self.port,
            self.dir.path().join("ca.crt").display(),
            self.client.0.display(),
            self.client.1.display()
        )
    }

    /// setpriv execs: the child is pgbouncer itself.
    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// SSH

fn ssh_missing() -> Option<String> {
    for program in ["ssh", "scp", "ssh-keygen", "timeout"] {
        if which(program).is_none() {
            return Some(format!(
                "{program} not found (apt-get install openssh-client)"
            ));
        }
    }
    if !Path::new("/usr/sbin/sshd").is_file() {
        return Some("/usr/sbin/sshd not found (apt-get install openssh-server)".to_string());
    }
    if !jitgate::sandbox::is_root() {
        return Some("needs root (jitgate creates Linux users through sshd)".to_string());
    }
    None
}

const COMMON_OPTS: &[&str] = &[
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
];

struct Route {
    name: &'static str,
    opts: Vec<String>,
    dest: String,
    jitgate: bool,
}

impl Route {
    fn key_opts(key: &Path, port: u16) -> Vec<String> {
        let mut opts: Vec<String> = COMMON_OPTS.iter().map(|s| s.to_string()).collect();
        opts.extend([
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("IdentityFile={}", key.display()),
            "-o".into(),
            format!("Port={port}"),
        ]);
        opts
    }

    /// `ssh -W` through the jump host's sshd (as root with its admin key): what
    /// `ProxyJump` runs, spelled out so the jump hop gets the same options.
    fn jump(target: &Sshd, jump: &Sshd, user: &str) -> Route {
        let mut opts = Route::key_opts(&target.admin_key, target.port);
        let hop = Route::key_opts(&jump.admin_key, jump.port).join(" ");
        opts.extend([
            "-o".into(),
            format!("ProxyCommand=ssh {hop} -W %h:%p root@127.0.0.1"),
        ]);
        Route {
            name: "OpenSSH jump host",
            opts,
            dest: format!("{user}@127.0.0.1"),
            jitgate: false,
        }
    }

    fn through(gw: &Gateway, cert: &Path, key: &Path) -> Route {
        let mut opts: Vec<String> = COMMON_OPTS.iter().map(|s| s.to_string()).collect();
        opts.extend([
            "-o".into(),
            format!(
                "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} %h",
                jitgate_bin().display(),
                gw.ssh_port,
                cert.display(),
                key.display(),
                gw.path("certs/ca.crt").display()
            ),
        ]);
        Route {
            name: "jitgate",
            opts,
            dest: "alice@web-1".into(),
            jitgate: true,
        }
    }

    /// `program` (ssh or scp) with this route's options, killed after `limit` seconds.
    fn command(&self, program: &str, limit: u32) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &limit.to_string(), program])
            .args(&self.opts)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        cmd
    }
}

/// A plain local account on the target (bash, no rc files, empty home) for the direct and
/// jump paths: the JIT account is such a user too. Logs in with the target's admin key.
struct BenchUser {
    name: String,
    home: PathBuf,
    keys: PathBuf,
}

impl BenchUser {
    fn create(sshd: &Sshd) -> BenchUser {
        let name = format!("jgcmp-{}", random_word(8));
        let home = sshd.dir.join(format!("home-{name}"));
        // Password `*`: no password login, but not locked, which sshd without PAM refuses.
        let out = Command::new("useradd")
            .args([
                "-M",
                "-s",
                "/bin/bash",
                "-p",
                "*",
                "-c",
                "jitgate benches/compare.rs",
                "-d",
            ])
            .arg(&home)
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let user = BenchUser {
            keys: sshd.dir.join("authorized_keys").join(&name),
            name,
            home,
        };
        fs::create_dir(&user.home).unwrap();
        fs::set_permissions(&user.home, fs::Permissions::from_mode(0o700)).unwrap();
        let public = fs::read_to_string(sshd.admin_key.with_extension("pub")).unwrap();
        fs::write(&user.keys, public).unwrap();
        fs::set_permissions(&user.keys, fs::Permissions::from_mode(0o600)).unwrap();
        let owner = format!("{0}:{0}", user.name);
        let out = Command::new("chown")
            .arg(&owner)
            .arg(&user.home)
            .arg(&user.keys)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown the bench user");
        user
    }
}

impl Drop for BenchUser {
    fn drop(&mut self) {
        // userdel refuses while a process of the user exists.
        for _ in 0..100 {
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.name])
                .status();
            let removed = Command::new("userdel")
                .arg(&self.name)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if removed {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_file(&self.keys);
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// Waits (untimed, up to 30 s) until the gateway has removed every JIT account it made.
fn settle(sshd: &Sshd) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = sshd.own_accounts();
        if left.is_empty() || start.elapsed() > Duration::from_secs(30) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn failed(what: &str, out: &std::process::Output) -> String {
    format!(
        "{what}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `ssh HOST 'head -c N /dev/zero'`: MB/s from the first byte to EOF; every byte must arrive.
fn stream(route: &Route, bytes: u64) -> Result<f64, String> {
    let mut child = route
        .command("ssh", 600)
        .args([&route.dest, &format!("head -c {bytes} /dev/zero")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = out.read(&mut buf).map_err(|e| e.to_string())? as u64;
    let first = Instant::now();
    loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let data = first.elapsed();
    let status = child.wait_with_output().map_err(|e| e.to_string())?;
    if !status.status.success() || got != bytes {
        return Err(format!(
            "{} ({got} of {bytes} bytes)",
            failed("ssh head", &status)
        ));
    }
    Ok(bytes as f64 / 1e6 / data.as_secs_f64())
}

/// `scp FILE HOST:/tmp/…`: MB/s over the wall time including login; the size is checked on
/// the target (the same machine), then the copy removed.
fn upload(route: &Route, file: &Path, bytes: u64) -> Result<f64, String> {
    let name = format!("/tmp/jgcmp-up-{}", random_word(8));
    let start = Instant::now();
    let out = route
        .command("scp", 600)
        .arg("-q")
        .arg(file)
        .arg(format!("{}:{name}", route.dest))
        .output()
        .map_err(|e| e.to_string())?;
    let wall = start.elapsed();
    let size = fs::metadata(&name).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&name);
    if !out.status.success() || size != bytes {
        return Err(format!("{} ({size} of {bytes} bytes)", failed("scp", &out)));
    }
    Ok(bytes as f64 / 1e6 / wall.as_secs_f64())
}

/// `runs` sequential `ssh HOST true`, back to back: the median in ms.
fn connect_true(route: &Route, runs: usize) -> Result<f64, String> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out = route
            .command("ssh", 60)
            .args([&route.dest, "true"])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(failed("ssh true", &out));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Cell::Values(times).median().unwrap_or(f64::NAN))
}

/// Keystroke echo in a pty: `ssh -tt HOST 'stty raw -echo; exec cat'` — one byte written,
/// the time until cat's copy comes back (the round trip a shell's echo takes), `keys` times;
/// the p50 in µs. A watchdog kills ssh if it stalls.
fn echo(route: &Route, keys: usize) -> Result<f64, String> {
    let mut child = route
        .command("ssh", 120)
        .args(["-tt", &route.dest, "stty raw -echo; echo READY; exec cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 1];
    while !seen.ends_with(b"READY\n") && !seen.ends_with(b"READY\r\n") {
        stdout
            .read_exact(&mut b)
            .map_err(|e| format!("before READY: {e}"))?;
        seen.push(b[0]);
        if seen.len() > 65536 {
            return Err("no READY".to_string());
        }
    }
    let mut times = Vec::with_capacity(keys);
    for _ in 0..keys {
        let start = Instant::now();
        stdin.write_all(b"x").map_err(|e| e.to_string())?;
        stdout.read_exact(&mut b).map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        if b[0] != b'x' {
            return Err(format!("echo returned {:?}", b[0] as char));
        }
        // A typist's pace is far slower; a short gap keeps writes from coalescing.
        std::thread::sleep(Duration::from_micros(500));
    }
    drop(stdin);
    // TERM to `timeout`, which passes it on to ssh (a KILL would orphan ssh).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    Ok(Cell::Values(times).median().unwrap_or(f64::NAN))
}

/// `n` `ssh HOST true` started at once: seconds until the last one exited, and how many failed.
fn concurrent(route: &Route, n: usize) -> Result<Vec<f64>, String> {
    let start = Instant::now();
    let children: Vec<Child> = (0..n)
        .map(|_| {
            route
                .command("ssh", 120)
                .args([&route.dest, "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut failures = 0;
    for mut c in children {
        if !c.wait().map(|s| s.success()).unwrap_or(false) {
            failures += 1;
        }
    }
    Ok(vec![start.elapsed().as_secs_f64(), failures as f64])
}

fn ssh_bench(
    mode: &Mode,
    sshd: &Sshd,
    jump: &Sshd,
    gw: &Gateway,
    crt: &Path,
    key: &Path,
) -> Report {
    let user = BenchUser::create(sshd);
    let routes = [
        Route {
            name: "direct",
            opts: Route::key_opts(&sshd.admin_key, sshd.port),
            dest: format!("{}@127.0.0.1", user.name),
            jitgate: false,
        },
        Route::jump(sshd, jump, &user.name),
        Route::through(gw, crt, key),
    ];
    let openssh = Command::new("ssh").arg("-V").output().unwrap();
    println!("\n{}", String::from_utf8_lossy(&openssh.stderr).trim());
    println!(
        "  direct   ssh -> sshd on 127.0.0.1 as {} (bash, empty home), key login",
        user.name
    );
    println!("  jump     ssh with ProxyCommand `ssh -W %h:%p root@jump` (what ProxyJump runs) -> a second sshd -> the target, as direct");
    println!("  jitgate  ssh with ProxyCommand `jitgate tunnel` (TLS, client certificate) -> jitgate (audit on) -> a JIT account created and removed per connection");
    let absent = vec![None, None, None];
    // Before and after each jitgate measurement: no account being removed in the background.
    let after = |r: &Route| {
        if r.jitgate {
            settle(sshd);
        }
    };
    // Warm-up (and a check that every route logs in).
    for r in &routes {
        connect_true(r, 1).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        after(r);
    }
    let mut rows = Vec::new();
    let cells = measure(mode, "stream", &absent, 1, |i| {
        let v = stream(&routes[i], mode.stream_bytes);
        after(&routes[i]);
        Ok(vec![v?])
    });
    rows.push(Row {
        workload: format!(
            "{} MiB stream (`ssh HOST 'head -c …'`, first byte to EOF)",
            mode.stream_bytes >> 20
        ),
        unit: "MB/s",
        better: Better::Higher,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::RatioAtLeast(0.75)),
    });

    let work = tempfile::Builder::new()
        .prefix("jitgate-cmp-")
        .tempdir()
        .unwrap();
    let file = work.path().join("upload");
    let out = Command::new("head")
        .args(["-c", &mode.scp_bytes.to_string(), "/dev/urandom"])
        .stdout(fs::File::create(&file).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
    let cells = measure(mode, "scp", &absent, 1, |i| {
        let v = upload(&routes[i], &file, mode.scp_bytes);
        after(&routes[i]);
        Ok(vec![v?])
    });
    drop(work);
    rows.push(Row {
        workload: format!("scp {} MiB up (wall incl. login)", mode.scp_bytes >> 20),
        unit: "MB/s",
        better: Better::Higher,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::RatioAtLeast(0.7)),
    });

    let cells = measure(mode, "connect + true", &absent, 1, |i| {
        let v = connect_true(&routes[i], mode.setup_runs);
        after(&routes[i]);
        Ok(vec![v?])
    });
    rows.push(Row {
        workload: format!(
            "connect + `true`, {} back to back per round (jitgate: account created and removed each time)",
            mode.setup_runs
        ),
        unit: "ms",
        better: Better::Lower,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::AtMost(280.0)),
    });

    let cells = measure(mode, "echo", &absent, 1, |i| {
        let v = echo(&routes[i], mode.echo_keys);
        after(&routes[i]);
        Ok(vec![v?])
    });
    rows.push(Row {
        workload: format!(
            "keystroke echo p50 in a pty ({} keys, `stty raw -echo; cat`)",
            mode.echo_keys
        ),
        unit: "µs",
        better: Better::Lower,
        cells: cells.into_iter().next().unwrap(),
        bar: Some(Bar::AddedAtMost(80.0)),
    });

    let cells = measure(mode, "concurrent", &absent, 2, |i| {
        let v = concurrent(&routes[i], mode.concurrent);
        after(&routes[i]);
        v
    });
    let mut it = cells.into_iter();
    rows.push(Row {
        workload: format!(
            "{} concurrent `ssh HOST true`: the last one done",
            mode.concurrent
        ),
        unit: "s",
        better: Better::Lower,
        cells: it.next().unwrap(),
        bar: Some(Bar::AtMost(8.0)),
    });
    rows.push(Row {
        workload: "the same: connections that failed".to_string(),
        unit: "count",
        better: Better::Lower,
        cells: it.next().unwrap(),
        bar: Some(Bar::AtMost(0.0)),
    });
    let mut notes = vec![format!(
        "{} rounds, path order rotating per round; cells: median (min–max); ratio = path / direct \
         (for ms, µs and s rows: also the difference). Every path negotiates OpenSSH's defaults; \
         through jitgate both hops are russh's (curve25519-sha256, no sntrup761).",
        mode.rounds
    )];
    if mode.quick {
        notes.push(format!(
            "Quick mode: {} MiB stream, {} MiB scp, {} concurrent; the issue's bars are for 1 GiB, 512 MiB and 100.",
            mode.stream_bytes >> 20,
            mode.scp_bytes >> 20,
            mode.concurrent
        ));
    }
    drop(user);
    Report {
        title: "SSH".to_string(),
        paths: routes.iter().map(|r| r.name).collect(),
        rows,
        notes,
    }
}

// ---------------------------------------------------------------------------------------
// Load average

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compiler processes running now (someone else's build would skew every number).
fn compilers() -> usize {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("comm")).ok())
        .filter(|c| {
            matches!(
                c.trim(),
                "rustc" | "cc1" | "cc1plus" | "ld" | "ld.lld" | "rust-lld"
            )
        })
        .count()
}

/// Samples the 1-minute load average and the compilers running every 2 s while the bench
/// runs.
struct LoadSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<f64>>>,
    compilers: Arc<Mutex<usize>>,
    thread: std::thread::JoinHandle<()>,
}

impl LoadSampler {
    fn start() -> LoadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let compilers_seen = Arc::new(Mutex::new(0));
        let (s, v, c) = (stop.clone(), samples.clone(), compilers_seen.clone());
        let thread = std::thread::spawn(move || {
            let mut tick = 0u32;
            while !s.load(Ordering::Relaxed) {
                if tick.is_multiple_of(20) {
                    if let Some(l) = loadavg()
                        .split_whitespace()
                        .next()
                        .and_then(|l| l.parse().ok())
                    {
                        v.lock().unwrap().push(l);
                    }
                    let n = compilers();
                    let mut max = c.lock().unwrap();
                    *max = (*max).max(n);
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        LoadSampler {
            stop,
            samples,
            compilers: compilers_seen,
            thread,
        }
    }

    fn stop(self) -> (f64, f64, f64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let v = self.samples.lock().unwrap();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let compilers = *self.compilers.lock().unwrap();
        (lo, hi, mean, compilers)
    }
}
