//! `jitgate demo` end to end, as a newcomer runs it: the real binary in a process group of its
//! own (so a SIGINT to the group is exactly a terminal's Ctrl-C), the commands it prints pasted
//! into a real shell (psql, ssh through `jitgate tunnel`), then Ctrl-C — and nothing it started
//! may be left: no process, no account, no listening port. Twice in the same sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sshd::jit_accounts;
use common::*;

const READY: &str = "jitgate demo ready";
const STATE_DIR: &str = "/var/lib/jitgate-demo";

/// A running `jitgate demo`.
struct Demo {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    log: PathBuf,
}

impl Demo {
    fn start(sandbox: &Path, pg_port: u16, ssh_port: u16, log: PathBuf) -> Demo {
        let mut child = Command::new(jitgate_bin())
            .arg("demo")
            .arg("--dir")
            .arg(sandbox)
            .args(["--pg-port", &pg_port.to_string()])
            .args(["--ssh-port", &ssh_port.to_string()])
            .env_remove("JITGATE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child: Some(child),
            lines,
            stdout: Vec::new(),
            log,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads stdout until `until` appears in a line (or the demo exits, or time is up).
    fn read_until(&mut self, until: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let done = line.contains(until);
                    self.stdout.push(line);
                    if done {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "jitgate demo closed stdout before {until:?}:\n{}\n--- log:\n{}",
                    self.stdout.join("\n"),
                    self.log()
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            assert!(
                start.elapsed() < timeout,
                "no {until:?} from jitgate demo within {timeout:?}:\n{}\n--- log:\n{}",
                self.stdout.join("\n"),
                self.log()
            );
        }
    }

    /// The printed commands starting with `program `, as printed.
    fn commands(&self, program: &str) -> Vec<String> {
        self.stdout
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.starts_with(&format!("{program} ")))
            .map(str::to_string)
            .collect()
    }

    /// Ctrl-C on a terminal: SIGINT to the whole foreground process group.
    fn interrupt(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args(["-INT", "--", &format!("-{pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // What it printed after the instructions.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.stdout.push(line);
                }
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "jitgate demo did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test: stop it as a user would, so it still cleans up.
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pasted command line, run by a shell without the caller's libpq settings; psql shows
/// SQLSTATEs (`\set VERBOSITY verbose` in a psqlrc of its own).
fn paste(line: &str, psqlrc: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .env("PSQLRC", psqlrc)
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null());
    cmd
}

fn run_pasted(line: &str, psqlrc: &Path) -> Output {
    paste(line, psqlrc).output().unwrap()
}

/// Processes whose command line mentions any of `needles`.
fn processes_mentioning(needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().any(|n| cmdline.contains(n.as_str())) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Every value of `key:` in the demo's jitgate.yaml, in order.
fn yaml_values(config: &str, key: &str) -> Vec<String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_child(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running {timeout:?} after the demo stopped");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One demo run: set-up, the printed commands, Ctrl-C with sessions open, nothing left.
fn one_run(work: &Path, sandbox: &Path, round: usize) {
    let pg_port = free_port();
    let ssh_port = free_port();
    let psqlrc = work.join("psqlrc");
    fs::write(&psqlrc, "\\set VERBOSITY verbose\n").unwrap();
    let mut demo = Demo::start(
        sandbox,
        pg_port,
        ssh_port,
        work.join(format!("demo-{round}.log")),
    );
    demo.read_until(READY, Duration::from_secs(180));
    demo.read_until("Ctrl-C stops", Duration::from_secs(10));
    let printed = demo.stdout.join("\n");

    let psql = demo.commands("psql");
    assert_eq!(psql.len(), 3, "three psql commands:\n{printed}");
    let ssh = demo.commands("ssh");
    assert_eq!(ssh.len(), 1, "one ssh command:\n{printed}");

    // alice (dba) writes, as a role made for the session.
    let out = run_pasted(&psql[0], &psqlrc);
    assert!(
        out.status.success(),
        "alice: {}\n{}",
        stderr(&out),
        demo.log()
    );
    let text = stdout(&out);
    assert!(text.contains("jit_alice_"), "{text}");
    assert!(text.contains("INSERT 0 1"), "{text}");
    // bob (analyst) reads ...
    let out = run_pasted(&psql[1], &psqlrc);
    assert!(out.status.success(), "bob SELECT: {}", stderr(&out));
    assert!(stdout(&out).contains("quantity"), "{}", stdout(&out));
    // ... and may not write.
    let out = run_pasted(&psql[2], &psqlrc);
    assert!(
        !out.status.success(),
        "bob's INSERT worked: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("42501") && err.contains("permission denied"),
        "{err}"
    );
    // alice on web-1 through the bastion, as a fresh Linux account.
    let out = run_pasted(&format!("{} id -un", ssh[0]), &psqlrc);
    assert!(
        out.status.success(),
        "ssh: {}\n{}",
        stderr(&out),
        demo.log()
    );
    assert!(stdout(&out).starts_with("jit-alice-"), "{}", stdout(&out));

    // Sessions still open when Ctrl-C comes.
    let mut open_ssh = paste(&format!("{} sleep 600", ssh[0]), &psqlrc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let alice_psql = psql[0].split(" -c ").next().unwrap().to_string();
    let mut open_psql = paste(&format!("{alice_psql} -c 'SELECT pg_sleep(600)'"), &psqlrc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the open ssh session's account",
        Duration::from_secs(30),
        || !jit_accounts("demo").is_empty(),
    );
    wait_for("the open psql session", Duration::from_secs(30), || {
        demo.log().matches("session.start").count() >= 6
    });

    let config = fs::read_to_string(sandbox.join("jitgate.yaml")).unwrap();
    let upstream_ports: Vec<u16> = yaml_values(&config, "port")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(upstream_ports.len(), 2, "{config}");
    let key_file = PathBuf::from(&yaml_values(&config, "key_file")[0]);
    let sshd_dir = key_file.parent().unwrap().to_path_buf();
    let pg_dir = fs::canonicalize(sandbox.join("postgres")).unwrap();

    demo.interrupt();
    let status = demo.wait(Duration::from_secs(120));
    let log = demo.log();
    assert!(
        status.success(),
        "jitgate demo exited with {status}:\n{log}"
    );
    let printed = demo.stdout.join("\n");
    assert!(printed.contains("jitgate demo stopped"), "{printed}");
    wait_child(&mut open_ssh, "ssh", Duration::from_secs(30));
    wait_child(&mut open_psql, "psql", Duration::from_secs(30));

    // Nothing left: processes, accounts, ports, the SSH target's files.
    let needles = [
        sandbox.display().to_string(),
        sshd_dir.display().to_string(),
        pg_dir.display().to_string(),
    ];
    let left = processes_mentioning(&needles);
    assert!(left.is_empty(), "left running: {left:#?}\n{log}");
    assert_eq!(jit_accounts("demo"), Vec::<String>::new(), "{log}");
    for port in [pg_port, ssh_port].iter().chain(&upstream_ports) {
        assert!(port_free(*port), "port {port} still taken\n{log}");
    }
    assert!(!sshd_dir.exists(), "{} left", sshd_dir.display());
    assert!(!Path::new(STATE_DIR).exists(), "{STATE_DIR} left");
    // Every role the target saw created was dropped (its log has every statement).
    let pg_log = fs::read_to_string(pg_dir.join("postgres.log")).unwrap();
    let created = pg_log.matches("CREATE ROLE \"jit_").count();
    let dropped = pg_log.matches("DROP ROLE \"jit_").count();
    assert!(created >= 2, "{created} roles created:\n{pg_log}");
    assert_eq!(created, dropped, "roles created vs dropped:\n{pg_log}");
    // The logs stay.
    assert!(sandbox.join("sshd.log").is_file());
    for event in [
        "session.start",
        "session.end",
        "jit.account.created",
        "jit.account.dropped",
    ] {
        assert!(log.contains(event), "no {event} in the log:\n{log}");
    }
}

/// What the full demo needs, or `None` where the test is skipped.
fn requirements() -> Option<()> {
    for bin in ["psql", "ssh", "ssh-keygen"] {
        if which(bin).is_none() {
            unavailable(&format!(
                "{bin} (apt-get install postgresql-client openssh-client)"
            ))?;
        }
    }
    if jitgate::sandbox::postgres::bindir().is_none() {
        unavailable("PostgreSQL server binaries (apt-get install postgresql)")?;
    }
    if !Path::new("/usr/sbin/sshd").is_file() {
        unavailable("openssh-server (/usr/sbin/sshd)")?;
    }
    if !jitgate::sandbox::is_root() {
        unavailable("root (the demo's SSH target creates Linux users)")?;
    }
    Some(())
}

#[test]
fn demo_works_as_printed_twice_and_leaves_nothing_behind() {
    if requirements().is_none() {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("jitgate-demo-test-")
        .tempdir()
        .unwrap();
    let sandbox = work.path().join("sandbox");

    // First run: the sandbox is below a directory the postgres user cannot enter (as under
    // /root), so the cluster lives under /tmp, linked from the sandbox.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o700)).unwrap();
    one_run(work.path(), &sandbox, 1);
    let outside = fs::read_link(sandbox.join("postgres")).unwrap();
    assert!(!outside.starts_with(&sandbox), "{}", outside.display());

    assert!(outside.join("postgres.log").is_file());

    // Second run, same sandbox, now reachable: the cluster is inside it; the first run's
    // went with its link.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    one_run(work.path(), &sandbox, 2);
    assert!(fs::symlink_metadata(sandbox.join("postgres"))
        .unwrap()
        .is_dir());
    assert!(!outside.exists(), "{} left", outside.display());
}

#[test]
fn a_taken_port_is_one_line_naming_the_flag_and_nothing_starts() {
    let work = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cases = vec![("--pg-port", port, free_port())];
    // Only a root demo has an SSH listener.
    if jitgate::sandbox::is_root() {
        cases.push(("--ssh-port", free_port(), port));
    }
    for (flag, pg_port, ssh_port) in cases {
        let sandbox = work.path().join("sandbox");
        let out = Command::new(jitgate_bin())
            .arg("demo")
            .arg("--dir")
            .arg(&sandbox)
            .args(["--pg-port", &pg_port.to_string()])
            .args(["--ssh-port", &ssh_port.to_string()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}: {out:?}");
        let err = stderr(&out);
        assert_eq!(
            err,
            format!(
                "jitgate: 127.0.0.1:{port} is already in use; choose another port with {flag} <port>"
            )
        );
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
        assert!(!sandbox.exists(), "the sandbox was created anyway");
    }
}
