//! SSH direct vs through jitgate, in one run, reported as ratios: connection setup (every
//! jitgate connection creates and removes a Linux account), bulk download and upload, and
//! channel setup over a ControlMaster (the splice without account creation). Times are printed,
//! never asserted; what is checked is that every byte arrives and that no JIT account outlives
//! the run. How to run it, last numbers: README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::sshd::Sshd;
use common::{jitgate_bin, which, Gateway};

/// Sequential `ssh HOST true`, each a new connection (and, through jitgate, a new account).
const SETUP_RUNS: usize = 3;
/// `head -c` on the target, read from ssh's stdout.
const DOWNLOAD_BYTES: u64 = 16 << 20;
/// The file `scp` uploads (random bytes: nothing on the path compresses anyway).
const UPLOAD_BYTES: u64 = 16 << 20;
const BULK_RUNS: usize = 3;
/// Sequential `ssh -o ControlPath=… HOST true` over one ControlMaster connection.
const MUX_RUNS: usize = 300;

/// alice (group ops) may log in to web-1 with the defaults: persistent home, sftp/scp allowed.
const POLICY: &str = "
grants:
  - name: web-ops
    subjects: { groups: [ops] }
    targets: [web-1]
";

/// What both paths get: no user config, no host key prompts, never a password prompt.
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

/// One way to reach the sshd: options (valid for ssh and scp alike) and the destination.
struct Route {
    name: &'static str,
    opts: Vec<String>,
    /// `user@host`, for ssh; scp gets `user@host:path`.
    dest: String,
}

impl Route {
    fn ssh(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts)
            .args(extra)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        cmd
    }

    fn is_jitgate(&self) -> bool {
        self.name == "jitgate"
    }
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs harness-less benches without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/ssh.rs: skipped (run it with `cargo bench --bench ssh`)");
        return ExitCode::SUCCESS;
    }
    for program in ["ssh", "scp", "ssh-keygen"] {
        if which(program).is_none() {
            println!(
                "benches/ssh.rs: skipped, {program} not found (apt-get install openssh-client)"
            );
            return ExitCode::SUCCESS;
        }
    }
    if !Path::new("/usr/sbin/sshd").is_file() {
        println!(
            "benches/ssh.rs: skipped, /usr/sbin/sshd not found (apt-get install openssh-server)"
        );
        return ExitCode::SUCCESS;
    }
    if !is_root() {
        println!("benches/ssh.rs: skipped, needs root (jitgate creates Linux users through sshd)");
        return ExitCode::SUCCESS;
    }
    // sshd and the gateway are stopped (and leftover accounts removed) by their Drop impls when
    // `run` returns, after the check that decides the exit code.
    if run() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs every measurement; returns whether no JIT account was left behind.
fn run() -> bool {
    let Some(sshd) = Sshd::start() else {
        println!("benches/ssh.rs: skipped, sshd could not be started");
        return true;
    };
    let gw = Gateway::start_with(None, Some(&sshd), POLICY);
    let (cert, key) = gw.issue("alice", &["ops"]);
    let work = tempfile::Builder::new()
        .prefix("jitgate-bench-ssh-")
        .tempdir()
        .unwrap();

    let mut direct = COMMON_OPTS
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    direct.extend([
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("IdentityFile={}", sshd.admin_key.display()),
        "-o".into(),
        format!("Port={}", sshd.port),
    ]);
    let mut through = COMMON_OPTS
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    through.extend([
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
    let routes = [
        Route {
            name: "direct",
            opts: direct,
            dest: "root@127.0.0.1".into(),
        },
        Route {
            name: "jitgate",
            opts: through,
            dest: "alice@web-1".into(),
        },
    ];
    let probe = CpuProbe::new(&gw, &sshd);
    std::env::set_var("DEBUG_GW_LOG", gw.path("gateway.log"));

    let date = time::OffsetDateTime::now_utc().date();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let openssh = Command::new("ssh").arg("-V").output().unwrap();
    println!();
    println!("jitgate SSH benchmark, {date}, {cpus} CPUs ({model})");
    println!(
        "{}, load average at start: {}",
        String::from_utf8_lossy(&openssh.stderr).trim(),
        loadavg()
    );
    println!("jitgate binary: {}", jitgate_bin().display());
    println!("  direct   ssh -> sshd on 127.0.0.1, as root with the admin key (publickey)");
    println!(
        "  jitgate  ssh -> ProxyCommand `jitgate tunnel` (TLS 1.3, client certificate) -> jitgate:"
    );
    println!("           russh server (auth none), JIT account created over the admin connection,");
    println!("           russh client logs in with an ephemeral key -> sshd; channels spliced");
    println!("All on 127.0.0.1; ssh, the tunnel, jitgate and sshd share the machine.");
    // One untimed connection per route: warms up, and shows what ssh negotiated.
    for route in &routes {
        let out = route.ssh(&["-v", &route.dest, "true"]).output().unwrap();
        check("ssh -v true", &out, route.name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let kex = |dir: &str| {
            stderr
                .lines()
                .find_map(|l| l.split_once(&format!("kex: {dir} cipher: ")))
                .map_or("?".to_string(), |(_, rest)| rest.to_string())
        };
        let hop = if route.is_jitgate() {
            " (ssh <-> jitgate)"
        } else {
            ""
        };
        println!(
            "  {:<8} negotiated{hop}: {}",
            route.name,
            kex("client->server")
        );
    }
    println!("  jitgate -> sshd: russh's default order, chacha20-poly1305@openssh.com first");
    wait_no_accounts(&sshd);
    println!();

    // 1. Connection setup.
    let mut setup = Vec::new();
    let mut jit_phases = None;
    for route in &routes {
        let log_before = gw.log().len();
        let before = probe.snapshot();
        let mut runs = Vec::new();
        for _ in 0..SETUP_RUNS {
            let started = SystemTime::now();
            let start = Instant::now();
            let out = route.ssh(&[&route.dest, "true"]).output().unwrap();
            let elapsed = start.elapsed();
            check("ssh true", &out, route.name);
            runs.push((started, elapsed));
        }
        // The drop of the last account belongs to this block's CPU.
        if route.is_jitgate() {
            wait_no_accounts(&sshd);
            let log = strip_ansi(gw.log().get(log_before..).unwrap_or_default());
            jit_phases = Some(Phases::from_log(&log, &runs));
        }
        let cpu = probe.since(&before, None);
        let wall: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        setup.push((wall, cpu));
    }

    // 2. and 3. Bulk, the routes interleaved run by run.
    let upload_file = work.path().join("upload.bin");
    let mut urandom = fs::File::open("/dev/urandom").unwrap().take(UPLOAD_BYTES);
    let mut file = fs::File::create(&upload_file).unwrap();
    std::io::copy(&mut urandom, &mut file).unwrap();
    drop(file);
    let mut download = vec![Vec::new(), Vec::new()];
    let mut upload = vec![Vec::new(), Vec::new()];
    for _ in 0..BULK_RUNS {
        for (route, runs) in routes.iter().zip(&mut download) {
            runs.push(download_once(route, &probe));
            wait_no_accounts(&sshd);
        }
    }
    for _ in 0..BULK_RUNS {
        for (route, runs) in routes.iter().zip(&mut upload) {
            runs.push(upload_once(route, &upload_file, &probe));
            wait_no_accounts(&sshd);
        }
    }

    // 4. Channel setup over one connection.
    let mut mux = Vec::new();
    for route in &routes {
        mux.push(multiplexed(route, work.path(), &sshd, &probe));
        wait_no_accounts(&sshd);
    }

    let table = Table;
    table.header(&routes);
    println!("connection setup: {SETUP_RUNS} x `ssh HOST true`, sequential");
    table.row("  mean (ms)", setup.iter().map(|(w, _)| ms(mean(w))), 1);
    table.row("  median (ms)", setup.iter().map(|(w, _)| ms(median(w))), 1);
    if let Some(p) = &jit_phases {
        p.print();
    }
    println!(
        "bulk download: `ssh HOST 'head -c {DOWNLOAD_BYTES} /dev/zero'`, stdout read and counted, median of {BULK_RUNS}"
    );
    table.row(
        "  MB/s, first byte to EOF",
        download.iter().map(|r| {
            mb_per_s(
                DOWNLOAD_BYTES,
                median(&r.iter().map(|b| b.data).collect::<Vec<_>>()),
            )
        }),
        0,
    );
    table.row(
        "  MB/s, wall time incl. login",
        download.iter().map(|r| {
            mb_per_s(
                DOWNLOAD_BYTES,
                median(&r.iter().map(|b| b.wall).collect::<Vec<_>>()),
            )
        }),
        0,
    );
    println!(
        "bulk upload: `scp` of a {} MiB random file to the target's /tmp, median of {BULK_RUNS}",
        UPLOAD_BYTES >> 20
    );
    let setup_median: Vec<Duration> = setup.iter().map(|(w, _)| median(w)).collect();
    table.row(
        "  MB/s, wall time incl. login",
        upload.iter().map(|r| {
            mb_per_s(
                UPLOAD_BYTES,
                median(&r.iter().map(|b| b.wall).collect::<Vec<_>>()),
            )
        }),
        0,
    );
    table.row(
        "  MB/s, wall minus median setup",
        upload.iter().zip(&setup_median).map(|(r, s)| {
            let wall = median(&r.iter().map(|b| b.wall).collect::<Vec<_>>());
            mb_per_s(UPLOAD_BYTES, wall.saturating_sub(*s))
        }),
        0,
    );
    println!("multiplexed: {MUX_RUNS} x `ssh -o ControlPath=... HOST true` over one ControlMaster");
    table.row("  mean (ms)", mux.iter().map(|(w, _)| ms(mean(w))), 2);
    table.row("  median (ms)", mux.iter().map(|(w, _)| ms(median(w))), 2);

    println!();
    println!("CPU seconds per connection / run / command, from /proc (utime+stime, reaped children included):");
    println!("  client = ssh or scp (and its ssh), tunnel = `jitgate tunnel` (sampled every 10 ms, a lower");
    println!("  bound, part of client's), gateway = `jitgate serve`, sshd = sshd and all it runs (incl. the");
    println!(
        "  account scripts), bench = this process (reading stdout). busy = total / wall, in cores."
    );
    println!(
        "{:<26}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>7}",
        "", "wall", "client", "tunnel", "gateway", "sshd", "bench", "total", "busy"
    );
    for (route, (wall, cpu)) in routes.iter().zip(&setup) {
        print_cpu(
            &format!("setup     {}", route.name),
            mean(wall),
            &cpu.per(SETUP_RUNS),
        );
    }
    for (route, runs) in routes.iter().zip(&download) {
        print_cpu(
            &format!("download  {}", route.name),
            mean_wall(runs),
            &Cpu::mean(runs),
        );
    }
    for (route, runs) in routes.iter().zip(&upload) {
        print_cpu(
            &format!("upload    {}", route.name),
            mean_wall(runs),
            &Cpu::mean(runs),
        );
    }
    for (route, (wall, cpu)) in routes.iter().zip(&mux) {
        print_cpu(
            &format!("mux       {}", route.name),
            mean(wall),
            &cpu.per(MUX_RUNS),
        );
    }
    println!();

    let left = wait_no_accounts(&sshd);
    let _ = fs::write("/tmp/ssh-bench-gw.log", gw.log());
    let _ = fs::write("/tmp/ssh-bench-sshd.log", sshd.log());
    let log = strip_ansi(&gw.log());
    let count = |event: &str| log.lines().filter(|l| l.contains(event)).count();
    let (created, dropped) = (count("jit.account.created"), count("jit.account.dropped"));
    if left.is_empty() {
        println!(
            "JIT accounts left after the run: none (jitgate created {created}, dropped {dropped})"
        );
    } else {
        println!(
            "JIT accounts left after the run: {} of {created} created ({dropped} dropped): {left:?}",
            left.len()
        );
    }
    left.is_empty()
}

/// One bulk run: wall time from spawn to exit, data time from the first byte to EOF (for
/// uploads, the same as wall), and the CPU it cost.
struct Bulk {
    wall: Duration,
    data: Duration,
    cpu: Cpu,
}

fn download_once(route: &Route, probe: &CpuProbe) -> Bulk {
    let before = probe.snapshot();
    let start = Instant::now();
    let mut child = route
        .ssh(&[&route.dest, &format!("head -c {DOWNLOAD_BYTES} /dev/zero")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sampler = TunnelSampler::start(child.id());
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    let mut first = None;
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        bytes += n as u64;
    }
    let end = Instant::now();
    let out = child.wait_with_output().unwrap();
    let wall = start.elapsed();
    check("ssh head -c", &out, route.name);
    assert_eq!(bytes, DOWNLOAD_BYTES, "bytes downloaded via {}", route.name);
    let tunnel = sampler.stop();
    Bulk {
        wall,
        data: end - first.unwrap_or(end),
        cpu: probe.since(&before, Some(tunnel)),
    }
}

fn upload_once(route: &Route, file: &Path, probe: &CpuProbe) -> Bulk {
    let remote = format!("/tmp/jitgate-bench-upload-{}.bin", route.name);
    let _ = fs::remove_file(&remote);
    let before = probe.snapshot();
    let start = Instant::now();
    let child = Command::new("scp")
        .args(&route.opts)
        .arg(file)
        .arg(format!("{}:{remote}", route.dest))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sampler = TunnelSampler::start(child.id());
    let out = child.wait_with_output().unwrap();
    let wall = start.elapsed();
    let tunnel = sampler.stop();
    check("scp", &out, route.name);
    // The target is this machine: the file must be there, whole.
    let size = fs::metadata(&remote).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&remote);
    assert_eq!(size, UPLOAD_BYTES, "bytes uploaded via {}", route.name);
    Bulk {
        wall,
        data: wall,
        cpu: probe.since(&before, Some(tunnel)),
    }
}

/// A ControlMaster connection, then `MUX_RUNS` sequential `ssh HOST true` over it. Returns
/// each command's wall time and the CPU of the loop (the master and its tunnel included).
fn multiplexed(route: &Route, dir: &Path, sshd: &Sshd, probe: &CpuProbe) -> (Vec<Duration>, Cpu) {
    let control = dir.join(format!("cm-{}", route.name));
    let control_path = format!("ControlPath={}", control.display());
    let out = route
        .ssh(&[
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=yes",
            "-o",
            &control_path,
            "-vvv",
            "-E",
            &format!("/tmp/master-{}.log", route.name),
            "-f",
            "-N",
            &route.dest,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    check("ssh ControlMaster", &out, route.name);
    let out = route
        .ssh(&["-o", &control_path, "-O", "check", &route.dest])
        .output()
        .unwrap();
    check("ssh -O check", &out, route.name);
    let master: u32 = String::from_utf8_lossy(&out.stderr)
        .split_once("pid=")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no master pid in {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let one = |route: &Route| {
        let start = Instant::now();
        let out = route
            .ssh(&["-vvv", "-o", &control_path, &route.dest, "true"])
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        if !out.status.success() {
            eprintln!(
                "DEBUG failing client stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !out.status.success() {
            let v = route
                .ssh(&["-v", "-o", &control_path, &route.dest, "true"])
                .output()
                .unwrap();
            let tail = |s: String| {
                s.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            eprintln!(
                "DEBUG retry: {}\n{}",
                v.status,
                String::from_utf8_lossy(&v.stderr)
            );
            eprintln!("DEBUG gateway log:\n{}", tail(_gw_log()));
            eprintln!("DEBUG sshd log:\n{}", tail(sshd.log()));
        }
        check("ssh true over the master", &out, route.name);
        elapsed
    };
    one(route);
    let logins = sshd_logins(sshd);
    let before = probe.snapshot_with(Some(master));
    let runs: Vec<Duration> = (0..MUX_RUNS).map(|_| one(route)).collect();
    let cpu = probe.since_with(&before, Some(master), None);
    // Every command went over the master: sshd saw no new login.
    assert_eq!(
        sshd_logins(sshd),
        logins,
        "a command via {} logged in to sshd instead of using the master",
        route.name
    );
    let out = route
        .ssh(&["-o", &control_path, "-O", "exit", &route.dest])
        .output()
        .unwrap();
    check("ssh -O exit", &out, route.name);
    (runs, cpu)
}

fn _gw_log() -> String {
    let dir = std::env::var("DEBUG_GW_LOG").unwrap_or_default();
    fs::read_to_string(dir).unwrap_or_default()
}

fn sshd_logins(sshd: &Sshd) -> usize {
    sshd.log()
        .lines()
        .filter(|l| l.contains("Accepted publickey"))
        .count()
}

fn wait_no_accounts(sshd: &Sshd) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = sshd.own_accounts();
        if left.is_empty() || start.elapsed() > Duration::from_secs(15) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Where the time of a jitgate connection goes, from the gateway's log timestamps (same
/// clock as this process): spawn of ssh -> account created (tunnel start, TLS, SSH handshake,
/// the account script) -> upstream login done (`session.start`) -> ssh exited; and how long
/// after ssh exited the account was gone (`jit.account.dropped`, off the client's path).
struct Phases {
    to_created: Vec<f64>,
    to_login: Vec<f64>,
    to_exit: Vec<f64>,
    to_dropped: Vec<f64>,
}

impl Phases {
    fn from_log(log: &str, runs: &[(SystemTime, Duration)]) -> Phases {
        let lines: Vec<(&str, SystemTime)> = log
            .lines()
            .filter_map(|l| Some((l, log_time(l)?)))
            .collect();
        let at = |event: &str, lease: &str| {
            lines
                .iter()
                .find(|(l, _)| l.contains(event) && field(l, "lease=") == Some(lease))
                .map(|(_, t)| *t)
        };
        let leases: Vec<&str> = lines
            .iter()
            .filter(|(l, _)| l.contains("jit.account.created"))
            .filter_map(|(l, _)| field(l, "lease="))
            .collect();
        let since = |a: SystemTime, b: SystemTime| {
            b.duration_since(a)
                .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
                * 1e3
        };
        let mut p = Phases {
            to_created: Vec::new(),
            to_login: Vec::new(),
            to_exit: Vec::new(),
            to_dropped: Vec::new(),
        };
        for ((started, wall), lease) in runs.iter().zip(leases) {
            let exited = *started + *wall;
            let (Some(created), Some(login)) =
                (at("jit.account.created", lease), at("session.start", lease))
            else {
                continue;
            };
            p.to_created.push(since(*started, created));
            p.to_login.push(since(created, login));
            p.to_exit.push(since(login, exited));
            if let Some(dropped) = at("jit.account.dropped", lease) {
                p.to_dropped.push(since(exited, dropped));
            }
        }
        p
    }

    fn print(&self) {
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "  jitgate, mean ms over {} connections (gateway log): spawn -> account created {:.1},",
            self.to_created.len(),
            avg(&self.to_created)
        );
        println!(
            "    -> upstream login done {:.1}, -> ssh exited {:.1}; account dropped {:.1} after ssh exited",
            avg(&self.to_login),
            avg(&self.to_exit),
            avg(&self.to_dropped)
        );
    }
}

/// The value after `key` on a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

/// tracing's default timestamp, `2026-11-29T10:11:12.123456Z`, at the start of a log line.
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, clock) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i32 = d.next()?.parse().ok()?;
    let month: u8 = d.next()?.parse().ok()?;
    let day: u8 = d.next()?.parse().ok()?;
    let mut c = clock.splitn(3, ':');
    let hours: u64 = c.next()?.parse().ok()?;
    let minutes: u64 = c.next()?.parse().ok()?;
    let seconds: f64 = c.next()?.parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let days = u64::try_from(date.to_julian_day() - 2_440_588).ok()?; // 1970-01-01
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + hours * 3_600 + minutes * 60)
            + Duration::from_secs_f64(seconds),
    )
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

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two measured columns and their ratio.
struct Table;

impl Table {
    fn header(&self, routes: &[Route]) {
        print!("{:<36}", "");
        for r in routes {
            print!("{:>11}", r.name);
        }
        println!("{:>11}", "jg/direct");
    }

    fn row(&self, label: &str, values: impl Iterator<Item = f64>, decimals: usize) {
        let values: Vec<f64> = values.collect();
        print!("{label:<36}");
        for v in &values {
            print!("{v:>11.decimals$}");
        }
        println!("{:>11.2}", values[1] / values[0]);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn mean(runs: &[Duration]) -> Duration {
    runs.iter().sum::<Duration>() / runs.len() as u32
}

fn median(runs: &[Duration]) -> Duration {
    let mut sorted = runs.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn mean_wall(runs: &[Bulk]) -> Duration {
    mean(&runs.iter().map(|b| b.wall).collect::<Vec<_>>())
}

/// CPU seconds by who spent them.
#[derive(Default, Clone, Copy)]
struct Cpu {
    client: f64,
    tunnel: f64,
    gateway: f64,
    sshd: f64,
    bench: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.client + self.gateway + self.sshd + self.bench
    }

    fn per(&self, n: usize) -> Cpu {
        let n = n as f64;
        Cpu {
            client: self.client / n,
            tunnel: self.tunnel / n,
            gateway: self.gateway / n,
            sshd: self.sshd / n,
            bench: self.bench / n,
        }
    }

    fn mean(runs: &[Bulk]) -> Cpu {
        let sum = runs.iter().fold(Cpu::default(), |a, b| Cpu {
            client: a.client + b.cpu.client,
            tunnel: a.tunnel + b.cpu.tunnel,
            gateway: a.gateway + b.cpu.gateway,
            sshd: a.sshd + b.cpu.sshd,
            bench: a.bench + b.cpu.bench,
        });
        sum.per(runs.len())
    }
}

fn print_cpu(label: &str, wall: Duration, cpu: &Cpu) {
    let wall = wall.as_secs_f64();
    println!(
        "{label:<26}{wall:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>7.2}",
        cpu.client,
        cpu.tunnel,
        cpu.gateway,
        cpu.sshd,
        cpu.bench,
        cpu.total(),
        cpu.total() / wall
    );
}

/// utime+stime of a process and of its reaped children, in clock ticks.
#[derive(Clone, Copy)]
struct ProcCpu {
    ppid: u32,
    own: u64,
    children: u64,
}

fn proc_stat(pid: u32) -> Option<(String, ProcCpu)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // Fields after the command: state (3) ppid (4) … utime (14) stime (15) cutime (16) cstime (17).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((
        comm,
        ProcCpu {
            ppid: num(1)? as u32,
            own: num(11)? + num(12)?,
            children: num(13)? + num(14)?,
        },
    ))
}

fn all_procs() -> HashMap<u32, ProcCpu> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?.1)))
        .collect()
}

/// Everything a live process tree has spent: each live member's own time plus what its reaped
/// children spent. The difference of two of these is what the tree spent in between.
fn tree_ticks(procs: &HashMap<u32, ProcCpu>, root: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Some(p) = procs.get(&pid) {
            total += p.own + p.children;
            todo.extend(procs.iter().filter(|(_, c)| c.ppid == pid).map(|(c, _)| *c));
        }
    }
    total
}

/// Finds the gateway and the sshd listener by their config files and measures, between two
/// snapshots, what the client processes (reaped children of this one), the gateway, sshd and
/// this process spent.
struct CpuProbe {
    gateway: u32,
    sshd: u32,
    tick: f64,
}

struct Snapshot {
    bench_own: u64,
    bench_children: u64,
    gateway: u64,
    sshd: u64,
    master: u64,
    master_tunnel: u64,
}

impl CpuProbe {
    fn new(gw: &Gateway, sshd: &Sshd) -> CpuProbe {
        let find = |needle: &Path| {
            let needle = needle.to_string_lossy().into_owned();
            fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != std::process::id())
                .find(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .unwrap_or_else(|| panic!("no process with {needle} on its command line"))
        };
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(100.0);
        CpuProbe {
            gateway: find(&gw.path("jitgate.yaml")),
            sshd: find(&sshd.dir.join("sshd_config")),
            tick: ticks,
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot_with(None)
    }

    fn snapshot_with(&self, master: Option<u32>) -> Snapshot {
        let procs = all_procs();
        let me = procs
            .get(&std::process::id())
            .copied()
            .expect("own /proc stat");
        Snapshot {
            bench_own: me.own,
            bench_children: me.children,
            gateway: tree_ticks(&procs, self.gateway),
            sshd: tree_ticks(&procs, self.sshd),
            master: master.map_or(0, |m| tree_ticks(&procs, m)),
            master_tunnel: master.map_or(0, |m| {
                descendants(m)
                    .into_iter()
                    .filter_map(proc_stat)
                    .filter(|(comm, _)| comm == "jitgate")
                    .map(|(_, cpu)| cpu.own)
                    .sum()
            }),
        }
    }

    fn since(&self, before: &Snapshot, tunnel: Option<u64>) -> Cpu {
        self.since_with(before, None, tunnel)
    }

    /// `master`: a ControlMaster (not our child) whose tree counts as client; its tunnel is
    /// measured exactly, being alive at both snapshots. `tunnel`: ticks a `TunnelSampler` saw.
    fn since_with(&self, before: &Snapshot, master: Option<u32>, tunnel: Option<u64>) -> Cpu {
        let now = self.snapshot_with(master);
        let s = |ticks: u64| ticks as f64 / self.tick;
        let tunnel = tunnel.unwrap_or(now.master_tunnel - before.master_tunnel);
        Cpu {
            client: s(now.bench_children - before.bench_children + now.master - before.master),
            tunnel: s(tunnel),
            gateway: s(now.gateway - before.gateway),
            sshd: s(now.sshd - before.sshd),
            bench: s(now.bench_own - before.bench_own),
        }
    }
}

/// Samples, every 10 ms, the CPU of `jitgate tunnel` processes below a child of ours; the
/// last sample of each is a lower bound of what it spent (it is reaped by ssh, not by us).
struct TunnelSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl TunnelSampler {
    fn start(root: u32) -> TunnelSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<u32, u64> = HashMap::new();
            while !flag.load(Ordering::Relaxed) {
                for pid in descendants(root) {
                    if let Some((comm, cpu)) = proc_stat(pid) {
                        if comm == "jitgate" {
                            let max = seen.entry(pid).or_default();
                            *max = (*max).max(cpu.own);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen.values().sum()
        });
        TunnelSampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Live descendants of `root`, from /proc/PID/task/TID/children.
fn descendants(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.filter_map(|t| t.ok()) {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}
