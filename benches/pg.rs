//! PostgreSQL direct vs through jitgate vs two bare relays (the peers), in one run, reported as
//! ratios: steady-state select-only throughput, connection setup (every jitgate connection
//! mints and drops a role) and bulk COPY out. Times are printed, never asserted; what is
//! checked is that no `jit_` role outlives the run. How to run it, last numbers: README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gateway, Postgres, ADMIN_USER, DEFAULT_POLICY};

/// Steady state: four clients on two threads, one connection each for the whole run.
const STEADY: &[&str] = &["-n", "-S", "-c", "4", "-j", "2", "-T", "10"];
/// Connection setup: a new connection for every transaction (`-C`), one client.
const CONNECT: &[&str] = &["-n", "-S", "-C", "-c", "1", "-j", "1", "-T", "10"];
/// Warms the page cache, the processes and the CPU clock before anything is measured.
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
    name: &'static str,
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
    // Everything (relays, gateway, then PostgreSQL) is stopped by Drop impls when `run`
    // returns, before the exit code is decided.
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

    let server_tls = peer::tls_config(&gw.path("certs/server.crt"), &gw.path("certs/server.key"));
    let audit_dir = tempfile::tempdir().unwrap();
    let relay = peer::Relay::start(pg.port, None, peer::Pump::Copy);
    let tls_relay = peer::Relay::start(pg.port, Some(server_tls.clone()), peer::Pump::Copy);
    let audit_off = peer::Relay::start(pg.port, Some(server_tls.clone()), peer::Pump::Splice);
    let audit_on = peer::Relay::start(
        pg.port,
        Some(server_tls),
        peer::Pump::SpliceAudited(audit_dir.path().to_path_buf()),
    );
    let admin = |port: u16, ssl: &str| {
        format!(
            "host=127.0.0.1 port={port} dbname=orders user={ADMIN_USER} {ssl} connect_timeout=10"
        )
    };
    let tls_to_peer = format!(
        "sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
        gw.path("certs/ca.crt").display()
    );
    let (crt, key) = gw.issue("alice", &["dba"]);
    let endpoints = [
        Endpoint {
            name: "direct",
            conninfo: admin(pg.port, "sslmode=disable"),
            password: Some(pg.admin_password.clone()),
        },
        Endpoint {
            name: "relay",
            conninfo: admin(relay.port, "sslmode=disable"),
            password: Some(pg.admin_password.clone()),
        },
        Endpoint {
            name: "tls-relay",
            conninfo: admin(tls_relay.port, &tls_to_peer),
            password: Some(pg.admin_password.clone()),
        },
        Endpoint {
            name: "audit-off",
            conninfo: admin(audit_off.port, &tls_to_peer),
            password: Some(pg.admin_password.clone()),
        },
        Endpoint {
            name: "audit-on",
            conninfo: admin(audit_on.port, &tls_to_peer),
            password: Some(pg.admin_password.clone()),
        },
        Endpoint {
            name: "jitgate",
            conninfo: gw.conninfo("alice", Some((&crt, &key)), ""),
            password: None,
        },
    ];
    let jitgate = &endpoints[JITGATE];

    let version = pg.superuser_sql("postgres", "SHOW server_version");
    let date = time::OffsetDateTime::now_utc().date();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("jitgate PostgreSQL benchmark, {date}, {cpus} CPUs, PostgreSQL {version}");
    println!("jitgate binary: {}", common::jitgate_bin().display());
    println!("  direct    libpq -> PostgreSQL, plain TCP (the test cluster has no TLS), role {ADMIN_USER}, SCRAM");
    println!(
        "  relay     libpq -> bare tokio TCP relay (copy_bidirectional) -> PostgreSQL, as direct"
    );
    println!(
        "  tls-relay libpq -> bare rustls-terminating relay -> PostgreSQL, as direct (verify-full)"
    );
    println!(
        "  audit-off libpq -> jitgate's own relay (pg::relay::splice) behind the same TLS, no audit"
    );
    println!(
        "  audit-on  the same, with jitgate's audit tap: every chunk decoded (audit::pg) and the"
    );
    println!("            events written to a hash-chained log by the real writer task");
    println!(
        "  jitgate   libpq -> jitgate (TLS, client certificate, verify-full) -> PostgreSQL, plain"
    );
    println!("            TCP, a JIT role minted and dropped per connection, SCRAM");
    println!("All on 127.0.0.1; pgbench, PostgreSQL, jitgate and the relays share the machine.");
    println!();

    // Every byte must arrive every way (untimed); then warm up every path.
    for ep in &endpoints {
        let bytes = copy_out_counted(tools, ep);
        assert_eq!(bytes, BULK_BYTES, "COPY out via {}", ep.name);
        pgbench(tools, ep, WARMUP);
    }

    let steady: Vec<Pgbench> = endpoints
        .iter()
        .map(|ep| pgbench(tools, ep, STEADY))
        .collect();
    let mut connect = Vec::new();
    let mut mint_ms = Vec::new();
    for ep in &endpoints {
        let log_before = gw.log().len();
        connect.push(pgbench(tools, ep, CONNECT));
        if std::ptr::eq(ep, jitgate) {
            let log = strip_ansi(gw.log().get(log_before..).unwrap_or_default());
            mint_ms = field_values(&log, "jit.account.created", "mint_ms=");
        }
    }
    let mut bulk = vec![Vec::new(); endpoints.len()];
    for _ in 0..BULK_RUNS {
        for (ep, runs) in endpoints.iter().zip(&mut bulk) {
            runs.push(copy_out_timed(tools, ep));
        }
    }
    let bulk: Vec<Duration> = bulk.into_iter().map(median).collect();

    let table = Table;
    table.header(&endpoints);
    println!("steady state: pgbench {}", STEADY.join(" "));
    table.row("  throughput (TPS)", steady.iter().map(|r| r.tps), 0);
    table.row(
        "  average latency (ms)",
        steady.iter().map(|r| r.latency_ms),
        3,
    );
    println!("connection setup: pgbench {}", CONNECT.join(" "));
    table.row("  connections/s", connect.iter().map(|r| r.tps), 1);
    table.row(
        "  average connection time (ms)",
        connect.iter().map(|r| r.connection_ms.unwrap_or(f64::NAN)),
        2,
    );
    if !mint_ms.is_empty() {
        let avg = mint_ms.iter().sum::<f64>() / mint_ms.len() as f64;
        println!(
            "  jitgate startup -> role created: {avg:.2} ms on average over {} roles (mint_ms in its log)",
            mint_ms.len()
        );
    }
    println!(
        "bulk: psql COPY of {:.1} MB to /dev/null, median of {BULK_RUNS}, wall time incl. login",
        BULK_BYTES as f64 / 1e6
    );
    table.row(
        "  MB/s",
        bulk.iter()
            .map(|d| BULK_BYTES as f64 / 1e6 / d.as_secs_f64()),
        0,
    );
    table.row("  seconds", bulk.iter().map(Duration::as_secs_f64), 3);

    println!();
    let counts = |runs: &[Pgbench], f: fn(&Pgbench) -> u64| {
        runs.iter()
            .map(|r| f(r).to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "transactions (direct / relay / tls-relay / audit-off / audit-on / jitgate): steady {}, connect {}; failed: {}",
        counts(&steady, |r| r.transactions),
        counts(&connect, |r| r.transactions),
        steady.iter().chain(&connect).map(|r| r.failed).sum::<u64>()
    );

    let left = pg.wait_no_jit_roles();
    let log = strip_ansi(&gw.log());
    let count = |event: &str| log.lines().filter(|l| l.contains(event)).count();
    let (created, dropped) = (count("jit.account.created"), count("jit.account.dropped"));
    if left.is_empty() {
        println!(
            "jit_ roles left after the run: none (jitgate minted {created}, dropped {dropped})"
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
/// that run the select-only script: the JIT role (through orders_read) and the admin (direct
/// and the relays).
fn prepare_pgbench_tables(tools: &Tools, pg: &Postgres) {
    let out = Command::new(&tools.pgbench)
        .args(["-i", "-s", "1", "-q", "-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "orders"])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    check("pgbench -i", &out, "the socket");
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
    check(&format!("pgbench {}", args.join(" ")), &out, ep.name);
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
    check("psql COPY", &out, ep.name);
    elapsed
}

/// The COPY with stdout counted: every byte must make it through.
fn copy_out_counted(tools: &Tools, ep: &Endpoint) -> u64 {
    let mut child = psql_copy(tools, ep).stdout(Stdio::piped()).spawn().unwrap();
    let bytes = std::io::copy(&mut child.stdout.take().unwrap(), &mut std::io::sink()).unwrap();
    let out = child.wait_with_output().unwrap();
    check("psql COPY (counted)", &out, ep.name);
    bytes
}

fn check(what: &str, out: &Output, via: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}) via {via}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Columns of `endpoints`, by position.
const DIRECT: usize = 0;
const TLS_RELAY: usize = 2;
const AUDIT_OFF: usize = 3;
const AUDIT_ON: usize = 4;
const JITGATE: usize = 5;

/// The measured columns and three ratios: jitgate against direct and against the TLS relay
/// (which does everything jitgate does on the wire except identity, policy, audit and the JIT
/// role), and jitgate's relay with its audit on against the same relay with it off.
struct Table;

impl Table {
    fn header(&self, endpoints: &[Endpoint]) {
        print!("{:<34}", "");
        for ep in endpoints {
            print!("{:>11}", ep.name);
        }
        println!(
            "{:>11}{:>11}{:>13}",
            "jg/direct", "jg/tls-rl", "audit on/off"
        );
    }

    fn row(&self, label: &str, values: impl Iterator<Item = f64>, decimals: usize) {
        let values: Vec<f64> = values.collect();
        print!("{label:<34}");
        for v in &values {
            print!("{v:>11.decimals$}");
        }
        println!(
            "{:>11.2}{:>11.2}{:>13.3}",
            values[JITGATE] / values[DIRECT],
            values[JITGATE] / values[TLS_RELAY],
            values[AUDIT_ON] / values[AUDIT_OFF]
        );
    }
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

/// The gateway's log is tracing's fmt output, which may be coloured even into a file.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a byte in 0x40..=0x7e.
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

mod peer {
    //! The peers: the least a proxy built on the same stack must do (accept, maybe terminate
    //! TLS with rustls, connect upstream, `copy_bidirectional`), with no identity, policy or
    //! JIT role. jitgate's distance from `tls-relay` is what jitgate itself costs.

    use super::*;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;

    use jitgate::audit::pg::{PgAuditOptions, PgDecoder};
    use jitgate::audit::{Audit, AuditConfig, OnFailure, SessionMeta};
    use jitgate::pg::relay::{splice, Counters, Tap};

    /// SSLRequest: length 8, code 80877103 (PostgreSQL protocol, section 54.2.10).
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    /// How a relay moves bytes once both ends are connected.
    #[derive(Clone)]
    pub enum Pump {
        /// `tokio::io::copy_bidirectional`.
        Copy,
        /// jitgate's relay, `pg::relay::splice`, with no audit tap.
        Splice,
        /// The same with the audit tap: a `PgDecoder` per connection, its events written by
        /// the real writer task into this directory.
        SpliceAudited(PathBuf),
    }

    /// A relay on its own runtime (as many workers as CPUs, like jitgate's), stopped on drop.
    pub struct Relay {
        pub port: u16,
        _runtime: tokio::runtime::Runtime,
    }

    impl Relay {
        pub fn start(upstream: u16, tls: Option<Arc<rustls::ServerConfig>>, pump: Pump) -> Relay {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
            let port = listener.local_addr().unwrap().port();
            let acceptor = tls.map(TlsAcceptor::from);
            let audit = match &pump {
                Pump::SpliceAudited(dir) => {
                    let config = AuditConfig {
                        dir: dir.clone(),
                        on_failure: OnFailure::FailClosed,
                        postgres: None,
                    };
                    let _guard = runtime.enter();
                    Some(Audit::start(&config, "bench").unwrap().0)
                }
                Pump::Copy | Pump::Splice => None,
            };
            runtime.spawn(async move {
                let mut n = 0u64;
                while let Ok((client, peer)) = listener.accept().await {
                    n += 1;
                    let acceptor = acceptor.clone();
                    let pump = pump.clone();
                    let tap = audit.as_ref().map(|audit| {
                        let meta = SessionMeta {
                            session: format!("bench{n}"),
                            protocol: "postgres",
                            user: "bench".to_string(),
                            subject_kind: "person",
                            groups: Vec::new(),
                            serial: "00".to_string(),
                            spiffe_id: None,
                            client: peer.to_string(),
                            target: "orders".to_string(),
                            grant: Some("bench".to_string()),
                            reason: None,
                            account: Some(ADMIN_USER.to_string()),
                        };
                        Tap::new(
                            PgDecoder::new(PgAuditOptions::default()),
                            audit.session(&meta),
                        )
                    });
                    tokio::spawn(async move {
                        let _ = serve(client, upstream, acceptor, pump, tap).await;
                    });
                }
            });
            Relay {
                port,
                _runtime: runtime,
            }
        }
    }

    async fn serve(
        mut client: TcpStream,
        upstream: u16,
        tls: Option<TlsAcceptor>,
        pump: Pump,
        tap: Option<Tap>,
    ) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        match tls {
            None => {
                let mut server = connect(upstream).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            }
            Some(acceptor) if !matches!(pump, Pump::Copy) => {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                if request != SSL_REQUEST {
                    return Err(std::io::Error::other("expected SSLRequest"));
                }
                client.write_all(b"S").await?;
                let mut client = acceptor.accept(client).await?;
                let mut server = connect(upstream).await?;
                // The StartupMessage (untyped: length, then version) is passed on by hand, as
                // jitgate handles its own; the SCRAM exchange after it is typed messages and
                // goes through the relay, where the decoder skips them.
                let mut len = [0u8; 4];
                client.read_exact(&mut len).await?;
                let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                client.read_exact(&mut startup).await?;
                server.write_all(&len).await?;
                server.write_all(&startup).await?;
                let (_notices_tx, notices) = tokio::sync::mpsc::channel(1);
                let counters = Counters::default();
                splice(
                    &mut client,
                    &mut server,
                    std::future::pending(),
                    notices,
                    || async {},
                    tap.as_ref(),
                    &counters,
                )
                .await;
            }
            Some(acceptor) => {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                if request != SSL_REQUEST {
                    return Err(std::io::Error::other("expected SSLRequest"));
                }
                client.write_all(b"S").await?;
                let mut client = acceptor.accept(client).await?;
                let mut server = connect(upstream).await?;
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            }
        }
        Ok(())
    }

    async fn connect(port: u16) -> std::io::Result<TcpStream> {
        let server = TcpStream::connect(("127.0.0.1", port)).await?;
        server.set_nodelay(true)?;
        Ok(server)
    }

    /// rustls with the ring provider and the gateway's own server certificate, so the same
    /// `sslrootcert` verifies both; no client certificate asked for.
    pub fn tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Arc::new(config)
    }
}
