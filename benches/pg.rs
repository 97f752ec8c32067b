//! PostgreSQL direct vs through jitgate, in one run, reported as ratios: steady-state
//! select-only throughput, connection setup (every jitgate connection mints and drops a role)
//! and bulk COPY out. Times are printed, never asserted; what is checked is that no `jit_`
//! role outlives the run. How to run it and the last numbers: `benches/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Postgres, ADMIN_USER, DEFAULT_POLICY};

/// Steady state: four clients on two threads, one connection each for the whole run.
const STEADY: &[&str] = &["-n", "-S", "-c", "4", "-j", "2", "-T", "10"];
/// Connection setup: a new connection for every transaction (`-C`), one client.
const CONNECT: &[&str] = &["-n", "-S", "-C", "-c", "1", "-j", "1", "-T", "10"];
/// Warms the page cache, both processes and the CPU frequency before anything is measured.
const WARMUP: &[&str] = &["-n", "-S", "-c", "4", "-j", "2", "-T", "2"];

const BULK_SQL: &str = "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 200000)) TO STDOUT";
/// 200 000 rows of `repeat('x', 1000)` plus the newline COPY's text format ends each with.
const BULK_BYTES: u64 = 200_000 * 1001;
const BULK_RUNS: usize = 3;

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

struct Tools {
    pgbench: PathBuf,
    psql: PathBuf,
}

/// One way to reach the `orders` database.
struct Endpoint {
    conninfo: String,
    password: Option<String>,
}

impl Endpoint {
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

struct Pgbench {
    tps: f64,
    latency_ms: f64,
    connection_ms: Option<f64>,
    transactions: u64,
    failed: u64,
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs harness-less benches without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/pg.rs: skipped (run it with `cargo bench --bench pg`)");
        return ExitCode::SUCCESS;
    }
    let tools = match find_tools() {
        Ok(tools) => tools,
        Err(missing) => {
            println!("benches/pg.rs: skipped, {missing} not found (apt-get install postgresql)");
            return ExitCode::SUCCESS;
        }
    };
    // Everything (gateway first, then PostgreSQL) is stopped by the harness's Drop impls
    // when `run` returns, before the exit code is decided.
    if run(&tools) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The PostgreSQL bindir the harness would pick (pg_config, else the newest
/// /usr/lib/postgresql/N/bin), with the server and the two clients measured here.
fn find_tools() -> Result<Tools, String> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versioned.sort();
    dirs.extend(versioned.into_iter().rev().map(|(_, dir)| dir));
    let needed = ["postgres", "initdb", "pg_ctl", "pgbench", "psql"];
    let Some(bindir) = dirs
        .into_iter()
        .find(|d| needed.iter().all(|b| d.join(b).is_file()))
    else {
        return Err(needed.join("/"));
    };
    Ok(Tools {
        pgbench: bindir.join("pgbench"),
        psql: bindir.join("psql"),
    })
}

/// Runs every measurement; returns whether no `jit_` role was left behind.
fn run(tools: &Tools) -> bool {
    let Some(pg) = Postgres::start() else {
        println!("benches/pg.rs: skipped, PostgreSQL could not be started");
        return true;
    };
    let gw = Gateway::start(&pg, DEFAULT_POLICY);
    prepare_pgbench_tables(tools, &pg);

    let direct = Endpoint {
        conninfo: format!(
            "host=127.0.0.1 port={} dbname=orders user={ADMIN_USER} sslmode=disable connect_timeout=10",
            pg.port
        ),
        password: Some(pg.admin_password.clone()),
    };
    let (crt, key) = gw.issue("alice", &["dba"]);
    let jitgate = Endpoint {
        conninfo: gw.conninfo("alice", Some((&crt, &key)), ""),
        password: None,
    };

    let version = pg.superuser_sql("postgres", "SHOW server_version");
    let date = time::OffsetDateTime::now_utc().date();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("jitgate PostgreSQL benchmark, {date}, {cpus} CPUs, PostgreSQL {version}");
    println!("jitgate binary: {}", common::jitgate_bin().display());
    println!("direct  = libpq -> PostgreSQL, plain TCP on 127.0.0.1 (the test cluster has no TLS), role {ADMIN_USER}, SCRAM");
    println!("jitgate = libpq -> jitgate over TLS (client certificate, verify-full) -> PostgreSQL, plain TCP, a JIT role per connection, SCRAM");
    println!();

    // Bulk first checks that every byte arrives both ways (untimed), which doubles as warm-up.
    for ep in [&direct, &jitgate] {
        let bytes = copy_out_counted(tools, ep);
        assert_eq!(bytes, BULK_BYTES, "COPY out via {}", ep.conninfo);
        pgbench(tools, ep, WARMUP);
    }

    let steady_direct = pgbench(tools, &direct, STEADY);
    let steady_jitgate = pgbench(tools, &jitgate, STEADY);

    let connect_direct = pgbench(tools, &direct, CONNECT);
    let log_before = gw.log().len();
    let connect_jitgate = pgbench(tools, &jitgate, CONNECT);
    let connect_log = strip_ansi(gw.log().get(log_before..).unwrap_or_default());
    let mint_ms = field_values(&connect_log, "jit.account.created", "mint_ms=");

    let mut bulk_direct = Vec::new();
    let mut bulk_jitgate = Vec::new();
    for _ in 0..BULK_RUNS {
        bulk_direct.push(copy_out_timed(tools, &direct));
        bulk_jitgate.push(copy_out_timed(tools, &jitgate));
    }
    let bulk_direct = median(bulk_direct);
    let bulk_jitgate = median(bulk_jitgate);
    let mbps = |d: Duration| BULK_BYTES as f64 / 1e6 / d.as_secs_f64();

    println!(
        "{:<46}{:>12}{:>12}{:>16}",
        "", "direct", "jitgate", "jitgate/direct"
    );
    println!("steady state: pgbench {}", STEADY.join(" "));
    row(
        "  throughput (TPS)",
        steady_direct.tps,
        steady_jitgate.tps,
        1,
    );
    row(
        "  average latency (ms)",
        steady_direct.latency_ms,
        steady_jitgate.latency_ms,
        3,
    );
    println!("connection setup: pgbench {}", CONNECT.join(" "));
    row(
        "  connections/s",
        connect_direct.tps,
        connect_jitgate.tps,
        1,
    );
    row(
        "  average connection time (ms)",
        connect_direct.connection_ms.unwrap_or(f64::NAN),
        connect_jitgate.connection_ms.unwrap_or(f64::NAN),
        2,
    );
    row(
        "  average latency incl. connect (ms)",
        connect_direct.latency_ms,
        connect_jitgate.latency_ms,
        2,
    );
    if !mint_ms.is_empty() {
        let avg = mint_ms.iter().sum::<f64>() / mint_ms.len() as f64;
        println!(
            "{:<46}{:>12}{:>12.2}   ({} roles, gateway log mint_ms)",
            "  of which login -> role created (ms)",
            "-",
            avg,
            mint_ms.len()
        );
    }
    println!(
        "bulk: psql COPY of {:.1} MB to /dev/null, median of {BULK_RUNS}",
        BULK_BYTES as f64 / 1e6
    );
    row("  MB/s", mbps(bulk_direct), mbps(bulk_jitgate), 1);
    row(
        "  seconds",
        bulk_direct.as_secs_f64(),
        bulk_jitgate.as_secs_f64(),
        3,
    );

    let failed: u64 = [
        &steady_direct,
        &steady_jitgate,
        &connect_direct,
        &connect_jitgate,
    ]
    .iter()
    .map(|r| r.failed)
    .sum();
    println!();
    println!(
        "transactions: steady {} / {}, connect {} / {}; failed: {failed}",
        steady_direct.transactions,
        steady_jitgate.transactions,
        connect_direct.transactions,
        connect_jitgate.transactions
    );

    let left = pg.wait_no_jit_roles();
    let log = strip_ansi(&gw.log());
    let count = |event: &str| log.lines().filter(|l| l.contains(event)).count();
    let (created, dropped) = (count("jit.account.created"), count("jit.account.dropped"));
    if left.is_empty() {
        println!(
            "jit_ roles left after the run: none (gateway minted {created}, dropped {dropped})"
        );
    } else {
        println!(
            "jit_ roles left after the run: {} of {created} minted ({dropped} dropped): {left:?}",
            left.len()
        );
    }
    left.is_empty()
}

/// `pgbench -i -s 1` in `orders` as the superuser over the socket, then SELECT for the roles
/// that run the select-only script: the JIT role (through orders_read) and the admin (direct).
fn prepare_pgbench_tables(tools: &Tools, pg: &Postgres) {
    let out = Command::new(&tools.pgbench)
        .args(["-i", "-s", "1", "-q", "-h"])
        .arg(pg.dir.path())
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "orders"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    check("pgbench -i", &out, None);
    pg.superuser_sql(
        "orders",
        &format!(
            "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history \
             TO orders_read, {ADMIN_USER}"
        ),
    );
}

fn pgbench(tools: &Tools, ep: &Endpoint, args: &[&str]) -> Pgbench {
    let out = ep
        .command(&tools.pgbench)
        .args(args)
        .arg(&ep.conninfo)
        .output()
        .unwrap();
    check(&format!("pgbench {}", args.join(" ")), &out, Some(ep));
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '/').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let required = |prefix: &str| {
        value(prefix).unwrap_or_else(|| panic!("no `{prefix}` in pgbench output:\n{text}"))
    };
    Pgbench {
        tps: required("tps = "),
        latency_ms: required("latency average = "),
        connection_ms: value("average connection time = "),
        transactions: required("number of transactions actually processed: ") as u64,
        failed: value("number of failed transactions: ").unwrap_or(0.0) as u64,
    }
}

fn psql_copy(tools: &Tools, ep: &Endpoint) -> Command {
    let mut cmd = ep.command(&tools.psql);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(&ep.conninfo)
        .args(["-c", BULK_SQL])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The COPY with stdout discarded, as `psql ... > /dev/null`; wall time including login.
fn copy_out_timed(tools: &Tools, ep: &Endpoint) -> Duration {
    let devnull = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let start = Instant::now();
    let out = psql_copy(tools, ep).stdout(devnull).output().unwrap();
    let elapsed = start.elapsed();
    check("psql COPY", &out, Some(ep));
    elapsed
}

/// The COPY with stdout counted: every byte must make it through.
fn copy_out_counted(tools: &Tools, ep: &Endpoint) -> u64 {
    let mut child = psql_copy(tools, ep).stdout(Stdio::piped()).spawn().unwrap();
    let bytes = std::io::copy(&mut child.stdout.take().unwrap(), &mut std::io::sink()).unwrap();
    let out = child.wait_with_output().unwrap();
    check("psql COPY (counted)", &out, Some(ep));
    bytes
}

fn check(what: &str, out: &Output, ep: Option<&Endpoint>) {
    assert!(
        out.status.success(),
        "{what} failed ({}) via {}:\n{}{}",
        out.status,
        ep.map_or("the socket", |e| e.conninfo.as_str()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn row(label: &str, direct: f64, jitgate: f64, decimals: usize) {
    println!(
        "{label:<46}{direct:>12.decimals$}{jitgate:>12.decimals$}{:>16.2}",
        jitgate / direct
    );
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// Numbers after `key` on the log lines that mention `event`.
fn field_values(log: &str, event: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(event))
        .filter_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// The gateway's log is tracing's fmt output, coloured even into a file.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
