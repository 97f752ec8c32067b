//! SSH direct (as root with the admin key, and as a plain local user) vs through jitgate, in
//! one run, reported as ratios: connection setup (every jitgate connection creates and removes
//! a Linux account), bulk download and upload, and channel setup over a ControlMaster (the
//! splice without account creation), plus where the CPU goes. Times are printed, never
//! asserted; what is checked is that every byte arrives and that no JIT account outlives the
//! run. How to run it, last numbers: README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::sshd::Sshd;
use common::{jitgate_bin, random_word, which, Gateway};

/// Sequential `ssh HOST true`, each a new connection (and, through jitgate, a new account).
const SETUP_RUNS: usize = 20;
/// `head -c` on the target, read from ssh's stdout.
const DOWNLOAD_BYTES: u64 = 512 << 20;
/// The file `scp` uploads (random bytes; nothing on either path compresses).
const UPLOAD_BYTES: u64 = 256 << 20;
const BULK_RUNS: usize = 3;
/// Sequential `ssh -o ControlPath=… HOST true` over one ControlMaster connection.
const MUX_RUNS: usize = 50;

/// alice (group ops) may log in to web-1 with the defaults: persistent home, sftp/scp allowed.
const POLICY: &str = "
grants:
  - name: web-ops
    subjects: { groups: [ops] }
    targets: [web-1]
    ssh: {}
";

/// What every path gets: no user config, no host key prompts, never a password prompt, and
/// OpenSSH's default algorithms.
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
    jitgate: bool,
}

impl Route {
    fn direct(name: &'static str, sshd: &Sshd, user: &str) -> Route {
        let mut opts: Vec<String> = COMMON_OPTS.iter().map(|s| s.to_string()).collect();
        opts.extend([
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("IdentityFile={}", sshd.admin_key.display()),
            "-o".into(),
            format!("Port={}", sshd.port),
        ]);
        Route {
            name,
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

    fn ssh(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts)
            .args(extra)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
        cmd
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
    // The bench user, the gateway and sshd are stopped or removed (leftover JIT accounts too) by
    // their Drop impls when `run` returns, after the check that decides the exit code.
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
    let user = BenchUser::create(&sshd);
    let work = tempfile::Builder::new()
        .prefix("jitgate-bench-ssh-")
        .tempdir()
        .unwrap();
    let routes = [
        Route::direct("root", &sshd, "root"),
        Route::direct("user", &sshd, &user.name),
        Route::through(&gw, &cert, &key),
    ];
    let probe = CpuProbe::new(&gw, &sshd);

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
        "{}; load average at start: {}",
        String::from_utf8_lossy(&openssh.stderr).trim(),
        loadavg()
    );
    println!("jitgate binary: {}", jitgate_bin().display());
    println!("  root     ssh -> sshd on 127.0.0.1 as root with the admin key: the direct path");
    println!(
        "  user     the same, as {} (bash, empty home), with the same key",
        user.name
    );
    println!(
        "  jitgate  ssh -> ProxyCommand `jitgate tunnel` (TLS, client certificate) -> jitgate"
    );
    println!(
        "           (russh server, auth none; a JIT account created over the admin connection;"
    );
    println!("           russh client with an ephemeral key) -> sshd; channels spliced");
    println!("All on 127.0.0.1; ssh, the tunnel, jitgate and sshd share the machine.");
    // One untimed connection per route: warms up, and shows what ssh negotiated.
    for route in &routes {
        let out = route.ssh(&["-v", &route.dest, "true"]).output().unwrap();
        check("ssh -v true", &out, route.name);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let negotiated = |what: &str| {
            stderr
                .lines()
                .find_map(|l| l.split_once(what))
                .map_or("?".to_string(), |(_, rest)| rest.to_string())
        };
        let hop = if route.jitgate {
            " (ssh <-> jitgate)"
        } else {
            ""
        };
        println!(
            "  {:<8} negotiated{hop}: kex {}, {}",
            route.name,
            negotiated("kex: algorithm: "),
            negotiated("kex: client->server cipher: ")
        );
    }
    println!("  jitgate -> sshd: russh's default order: the first of mlkem768x25519-sha256,");
    println!("           curve25519-sha256 that sshd has; chacha20-poly1305@openssh.com");
    settle(&gw, &sshd);
    println!();

    // 1. Connection setup: back to back, then each after the previous account is gone.
    let mut setup = Vec::new();
    let mut phases = Vec::new();
    for route in &routes {
        let log_before = gw.log().len();
        let window = probe.start();
        let runs: Vec<_> = (0..SETUP_RUNS).map(|_| connect_once(route)).collect();
        // The removal of the last account belongs to this block's CPU.
        settle(&gw, &sshd);
        let cpu = window.stop();
        if route.jitgate {
            let log = strip_ansi(gw.log().get(log_before..).unwrap_or_default());
            phases.push(("back to back", Phases::from_log(&log, &runs)));
        }
        setup.push((runs.iter().map(|r| r.1).collect::<Vec<_>>(), cpu));
    }
    let mut settled = Vec::new();
    for route in &routes {
        let log_before = gw.log().len();
        let mut runs = Vec::new();
        for _ in 0..SETUP_RUNS {
            settle(&gw, &sshd);
            runs.push(connect_once(route));
        }
        settle(&gw, &sshd);
        if route.jitgate {
            let log = strip_ansi(gw.log().get(log_before..).unwrap_or_default());
            phases.push(("settled", Phases::from_log(&log, &runs)));
        }
        settled.push(runs.iter().map(|r| r.1).collect::<Vec<_>>());
    }

    // 2. and 3. Bulk, the routes interleaved run by run.
    let upload_file = work.path().join("upload.bin");
    let mut urandom = fs::File::open("/dev/urandom").unwrap().take(UPLOAD_BYTES);
    let mut file = fs::File::create(&upload_file).unwrap();
    std::io::copy(&mut urandom, &mut file).unwrap();
    drop(file);
    let mut download: Vec<Vec<Bulk>> = routes.iter().map(|_| Vec::new()).collect();
    let mut upload: Vec<Vec<Bulk>> = routes.iter().map(|_| Vec::new()).collect();
    for _ in 0..BULK_RUNS {
        for (route, runs) in routes.iter().zip(&mut download) {
            runs.push(download_once(route, &probe));
            settle(&gw, &sshd);
        }
    }
    for _ in 0..BULK_RUNS {
        for (route, runs) in routes.iter().zip(&mut upload) {
            runs.push(upload_once(route, &upload_file, &probe));
            settle(&gw, &sshd);
        }
    }

    // 4. Channel setup over one connection.
    let mut mux = Vec::new();
    for route in &routes {
        mux.push(multiplexed(route, work.path(), &sshd, &probe));
        settle(&gw, &sshd);
    }

    let table = Table;
    table.header(&routes);
    println!("connection setup: {SETUP_RUNS} x `ssh HOST true`, sequential, back to back");
    table.row("  mean (ms)", setup.iter().map(|(w, _)| ms(mean(w))), 1);
    table.row("  median (ms)", setup.iter().map(|(w, _)| ms(median(w))), 1);
    println!("connection setup: the same, each after the previous JIT account is gone");
    table.row("  mean (ms)", settled.iter().map(|w| ms(mean(w))), 1);
    table.row("  median (ms)", settled.iter().map(|w| ms(median(w))), 1);
    for (what, p) in &phases {
        p.print(what);
    }
    println!(
        "bulk download: `ssh HOST 'head -c {DOWNLOAD_BYTES} /dev/zero'`, stdout read and counted, median of {BULK_RUNS}"
    );
    let median_of =
        |runs: &[Bulk], f: fn(&Bulk) -> Duration| median(&runs.iter().map(f).collect::<Vec<_>>());
    table.row(
        "  MB/s, first byte to EOF",
        download
            .iter()
            .map(|r| mb_per_s(DOWNLOAD_BYTES, median_of(r, |b| b.data))),
        0,
    );
    table.row(
        "  MB/s, wall time incl. login",
        download
            .iter()
            .map(|r| mb_per_s(DOWNLOAD_BYTES, median_of(r, |b| b.wall))),
        0,
    );
    println!(
        "bulk upload: `scp` of a {} MiB random file to the target's /tmp, median of {BULK_RUNS}",
        UPLOAD_BYTES >> 20
    );
    table.row(
        "  MB/s, wall time incl. login",
        upload
            .iter()
            .map(|r| mb_per_s(UPLOAD_BYTES, median_of(r, |b| b.wall))),
        0,
    );
    // The settled connection setup is what an upload pays before its first byte.
    table.row(
        "  MB/s, wall minus settled setup",
        upload.iter().zip(&settled).map(|(r, s)| {
            mb_per_s(
                UPLOAD_BYTES,
                median_of(r, |b| b.wall).saturating_sub(median(s)),
            )
        }),
        0,
    );
    println!("multiplexed: {MUX_RUNS} x `ssh -o ControlPath=... HOST true` over one ControlMaster");
    table.row("  mean (ms)", mux.iter().map(|m| ms(mean(&m.runs))), 2);
    table.row("  median (ms)", mux.iter().map(|m| ms(median(&m.runs))), 2);
    println!(
        "  root's shell start (mux root - mux user): {:.1} ms; jitgate's account scripts pay it too",
        ms(median(&mux[0].runs)) - ms(median(&mux[1].runs))
    );
    println!("  (admin exec `/bin/sh -s` as root), twice per connection");
    for (route, m) in routes.iter().zip(&mux) {
        if !m.failed.is_empty() {
            println!(
                "  {}: {} of {MUX_RUNS} commands failed (left out above): {}",
                route.name,
                m.failed.len(),
                m.failed.join("; ")
            );
        }
    }

    println!();
    println!(
        "CPU seconds per connection / run / command, from /proc (utime+stime, reaped children"
    );
    println!("included). client = ssh or scp with its ssh and tunnel; tunnel = `jitgate tunnel`, sampled");
    println!("every 10 ms (a lower bound; part of client); gateway = `jitgate serve`; sshd = sshd and all");
    println!("it runs, account scripts included; bench = this process reading stdout. busy = total / wall.");
    println!(
        "{:<20}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>7}",
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
    for (route, m) in routes.iter().zip(&mux) {
        print_cpu(
            &format!("mux       {}", route.name),
            mean(&m.runs),
            &m.cpu.per(m.runs.len()),
        );
    }
    println!();

    let left = settle(&gw, &sshd);
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

/// A plain local account for the `user` column: bash with no rc files and an empty home, like a
/// JIT account, so that the shell's start costs the same on both sides (root's ~/.bashrc may
/// do a lot). It logs in with the admin key. Removed on drop.
struct BenchUser {
    name: String,
    home: PathBuf,
    keys: PathBuf,
}

impl BenchUser {
    fn create(sshd: &Sshd) -> BenchUser {
        let name = format!("jgbench-{}", random_word(8));
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
                "jitgate benches/ssh.rs",
            ])
            .arg("-d")
            .arg(&home)
            .arg(&name)
            .output()
            .unwrap();
        check("useradd", &out, "the bench user");
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
        // sshd reads authorized_keys with the user's privileges.
        let owner = format!("{0}:{0}", user.name);
        let out = Command::new("chown")
            .arg(&owner)
            .arg(&user.home)
            .arg(&user.keys)
            .output()
            .unwrap();
        check("chown", &out, "the bench user");
        user
    }
}

impl Drop for BenchUser {
    fn drop(&mut self) {
        // userdel refuses while a process (even a zombie) of the user exists.
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

/// One `ssh HOST true`: when it started and how long it took.
fn connect_once(route: &Route) -> (SystemTime, Duration) {
    let started = SystemTime::now();
    let start = Instant::now();
    let out = route.ssh(&[&route.dest, "true"]).output().unwrap();
    let elapsed = start.elapsed();
    check("ssh true", &out, route.name);
    (started, elapsed)
}

/// One bulk run: wall time from spawn to exit, data time from the first byte to EOF (for
/// uploads, the same as wall), and the CPU it cost.
struct Bulk {
    wall: Duration,
    data: Duration,
    cpu: Cpu,
}

fn download_once(route: &Route, probe: &CpuProbe) -> Bulk {
    let window = probe.start();
    let start = Instant::now();
    let mut child = route
        .ssh(&[&route.dest, &format!("head -c {DOWNLOAD_BYTES} /dev/zero")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let cpu = window.stop();
    check("ssh head -c", &out, route.name);
    assert_eq!(bytes, DOWNLOAD_BYTES, "bytes downloaded via {}", route.name);
    Bulk {
        wall,
        data: end - first.unwrap_or(end),
        cpu,
    }
}

fn upload_once(route: &Route, file: &Path, probe: &CpuProbe) -> Bulk {
    let remote = format!("/tmp/jitgate-bench-upload-{}.bin", route.name);
    let _ = fs::remove_file(&remote);
    let window = probe.start();
    let start = Instant::now();
    let out = Command::new("scp")
        .args(&route.opts)
        .arg(file)
        .arg(format!("{}:{remote}", route.dest))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let wall = start.elapsed();
    let cpu = window.stop();
    check("scp", &out, route.name);
    // The target is this machine: the file must be there, whole.
    let size = fs::metadata(&remote).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&remote);
    assert_eq!(size, UPLOAD_BYTES, "bytes uploaded via {}", route.name);
    Bulk {
        wall,
        data: wall,
        cpu,
    }
}

/// The commands run over one ControlMaster: wall times of those that succeeded, a note for
/// each that failed, and the CPU of the whole loop (the master and its tunnel included).
struct Mux {
    runs: Vec<Duration>,
    failed: Vec<String>,
    cpu: Cpu,
}

/// A ControlMaster connection, then `MUX_RUNS` sequential `ssh HOST true` over it.
fn multiplexed(route: &Route, dir: &Path, sshd: &Sshd, probe: &CpuProbe) -> Mux {
    let control = dir.join(format!("cm-{}", route.name));
    let control_path = format!("ControlPath={}", control.display());
    // With ControlPersist, ssh sends the ProxyCommand's stderr to /dev/null, so the master
    // does not hold these pipes open once it is in the background.
    let out = route
        .ssh(&[
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=yes",
            "-o",
            &control_path,
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
    let one = || {
        let start = Instant::now();
        let out = route
            .ssh(&["-o", &control_path, &route.dest, "true"])
            .output()
            .unwrap();
        (start.elapsed(), out)
    };
    let _ = one();
    let logins = sshd_logins(sshd);
    let window = probe.start_with(Some(master));
    let mut mux = Mux {
        runs: Vec::new(),
        failed: Vec::new(),
        cpu: Cpu::default(),
    };
    for i in 0..MUX_RUNS {
        let (elapsed, out) = one();
        if out.status.success() {
            mux.runs.push(elapsed);
        } else {
            mux.failed.push(format!(
                "#{i} {} after {:.1} ms {:?}",
                out.status,
                ms(elapsed),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    mux.cpu = window.stop();
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
    mux
}

fn sshd_logins(sshd: &Sshd) -> usize {
    sshd.log()
        .lines()
        .filter(|l| l.contains("Accepted publickey"))
        .count()
}

/// Waits (up to 15 s) until no JIT account exists and the gateway logged the removal of every
/// account it created (the script goes on briefly after `userdel`, holding the target's
/// lock); returns the accounts left.
fn settle(gw: &Gateway, sshd: &Sshd) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = sshd.own_accounts();
        let log = gw.log();
        let count = |event: &str| log.lines().filter(|l| l.contains(event)).count();
        let done = count("jit.account.created")
            <= count("jit.account.dropped") + count("jit.account.drop_failed");
        if (left.is_empty() && done) || start.elapsed() > Duration::from_secs(15) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
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

    fn print(&self, what: &str) {
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "  jitgate {what}, mean ms over {} (gateway log): spawn -> account created {:.1} -> upstream",
            self.to_created.len(),
            avg(&self.to_created)
        );
        println!(
            "    login done {:.1} -> ssh exited {:.1}; account dropped {:.1} after ssh exited",
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

/// The measured columns, then jitgate against each direct one.
struct Table;

impl Table {
    fn header(&self, routes: &[Route]) {
        print!("{:<34}", "");
        for r in routes {
            print!("{:>10}", r.name);
        }
        println!("{:>10}{:>10}", "jg/root", "jg/user");
    }

    fn row(&self, label: &str, values: impl Iterator<Item = f64>, decimals: usize) {
        let values: Vec<f64> = values.collect();
        print!("{label:<34}");
        for v in &values {
            print!("{v:>10.decimals$}");
        }
        println!(
            "{:>10.2}{:>10.2}",
            values[2] / values[0],
            values[2] / values[1]
        );
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
        "{label:<20}{wall:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>7.2}",
        cpu.client,
        cpu.tunnel,
        cpu.gateway,
        cpu.sshd,
        cpu.bench,
        cpu.total(),
        cpu.total() / wall
    );
}

/// What /proc/PID/stat says about a process's CPU, in clock ticks.
#[derive(Clone)]
struct ProcCpu {
    comm: String,
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: children it has reaped.
    children: u64,
}

impl ProcCpu {
    fn total(&self) -> u64 {
        self.own + self.children
    }
}

fn proc_stat(pid: u32) -> Option<ProcCpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // Fields after the command: state (3) ppid (4) … utime (14) stime (15) cutime (16) cstime (17).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcCpu {
        comm,
        ppid: u32::try_from(num(1)?).ok()?,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// Live descendants of `root` (not `root` itself), from /proc/PID/task/TID/children, leaving
/// out the subtrees of `skip`.
fn descendants(root: u32, skip: &[u32]) -> Vec<u32> {
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
                .filter(|c| !skip.contains(c))
            {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// The CPU a process tree spends, followed by sampling. Its live members' own time plus what
/// they reaped is a counter that only grows while children are reaped inside the tree; a
/// process whose parent exits first is reparented to init and its time would leave the
/// counter (sshd's monitor does this to the unprivileged child of a non-root login), so such
/// orphans are caught while they are still visible and added back.
struct Tree {
    root: u32,
    skip: Vec<u32>,
    /// Count the root's own time (not for this process: its own time is `bench`).
    root_own: bool,
    members: HashMap<u32, ProcCpu>,
    orphans: HashMap<u32, u64>,
    start: u64,
    /// `jitgate tunnel` processes: own time at first and last sight.
    tunnels: HashMap<u32, (u64, u64)>,
    first: bool,
}

impl Tree {
    fn new(root: u32, skip: Vec<u32>, root_own: bool) -> Tree {
        let mut tree = Tree {
            root,
            skip,
            root_own,
            members: HashMap::new(),
            orphans: HashMap::new(),
            start: 0,
            tunnels: HashMap::new(),
            first: true,
        };
        tree.start = tree.sample();
        tree.first = false;
        tree
    }

    /// Refreshes the members; returns the counter.
    fn sample(&mut self) -> u64 {
        let mut members = HashMap::new();
        let mut counter = 0;
        if let Some(root) = proc_stat(self.root) {
            counter += root.children + if self.root_own { root.own } else { 0 };
        }
        for pid in descendants(self.root, &self.skip) {
            if let Some(p) = proc_stat(pid) {
                counter += p.total();
                if p.comm == "jitgate" {
                    let first = if self.first { p.own } else { 0 };
                    let entry = self.tunnels.entry(pid).or_insert((first, p.own));
                    entry.1 = entry.1.max(p.own);
                }
                members.insert(pid, p);
            }
        }
        let gone: Vec<u32> = self
            .members
            .keys()
            .chain(self.orphans.keys())
            .filter(|pid| !members.contains_key(pid))
            .copied()
            .collect();
        for pid in gone {
            if let Some(p) = proc_stat(pid).filter(|p| p.ppid == 1) {
                if !self.first {
                    self.orphans.insert(pid, p.total());
                }
            }
        }
        self.members = members;
        counter
    }

    /// Ticks spent since `new`; and the tunnels' share.
    fn spent(&mut self) -> (u64, u64) {
        let now = self.sample();
        let orphans: u64 = self.orphans.values().sum();
        let tunnel = self.tunnels.values().map(|(a, b)| b - a).sum();
        ((now + orphans).saturating_sub(self.start), tunnel)
    }
}

/// Finds the gateway and the sshd listener by their config files; measures, between `start`
/// and `CpuWindow::stop`, what the client processes (this process's children but those two),
/// the gateway, sshd's tree and this process's own threads spent.
struct CpuProbe {
    gateway: u32,
    sshd: u32,
    tick: f64,
}

impl CpuProbe {
    fn new(gw: &Gateway, sshd: &Sshd) -> CpuProbe {
        let find = |needle: &Path| {
            let needle = needle.to_string_lossy().into_owned();
            let me = std::process::id();
            descendants(me, &[])
                .into_iter()
                .find(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .unwrap_or_else(|| panic!("no child process with {needle} on its command line"))
        };
        let tick = Command::new("getconf")
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
            tick,
        }
    }

    fn start(&self) -> CpuWindow {
        self.start_with(None)
    }

    /// `master`: a ControlMaster (not our child), counted as client with its tunnel.
    fn start_with(&self, master: Option<u32>) -> CpuWindow {
        let me = std::process::id();
        let (gateway, sshd, tick) = (self.gateway, self.sshd, self.tick);
        let own = |pid: u32| proc_stat(pid).map_or(0, |p| p.total());
        let bench_start = proc_stat(me).map_or(0, |p| p.own);
        let gateway_start = own(gateway);
        let mut trees = vec![Tree::new(me, vec![gateway, sshd], false)];
        if let Some(m) = master {
            trees.push(Tree::new(m, Vec::new(), true));
        }
        let mut sshd_tree = Tree::new(sshd, Vec::new(), true);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                for tree in &mut trees {
                    tree.sample();
                }
                sshd_tree.sample();
            }
            let s = |ticks: u64| ticks as f64 / tick;
            let (mut client, mut tunnel) = (0, 0);
            for tree in &mut trees {
                let (c, t) = tree.spent();
                client += c;
                tunnel += t;
            }
            Cpu {
                client: s(client),
                tunnel: s(tunnel),
                gateway: s(own(gateway).saturating_sub(gateway_start)),
                sshd: s(sshd_tree.spent().0),
                bench: s(proc_stat(me)
                    .map_or(0, |p| p.own)
                    .saturating_sub(bench_start)),
            }
        });
        CpuWindow { stop, thread }
    }
}

/// A measurement window: the sampler runs until `stop`.
struct CpuWindow {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Cpu>,
}

impl CpuWindow {
    fn stop(self) -> Cpu {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
