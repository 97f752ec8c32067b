//! The SSH journey end to end: real OpenSSH `ssh`, `scp`, `sftp` and `rsync` through
//! `jitgate tunnel` and the real `jitgate` bastion, to a real sshd on loopback, where each
//! connection runs as a fresh Linux account that is gone when the connection closes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sshd::Sshd;
use common::*;

struct Env {
    sshd: Sshd,
    gw: Gateway,
    cert: PathBuf,
    key: PathBuf,
    work: tempfile::TempDir,
}

fn policy(forward_port: u16) -> String {
    format!(
        r#"
grants:
  - name: web-ops
    subjects: {{ groups: [ops] }}
    targets: [web-1]
    ssh:
      port_forwards: ["127.0.0.1:{forward_port}"]
      home: persistent
  - name: web-scratch
    subjects: {{ users: [eph] }}
    targets: [web-1]
    ssh: {{ home: ephemeral }}
  - name: web-ticket
    subjects: {{ users: [tess] }}
    targets: [web-1]
    ssh: {{}}
    require_reason: true
  - name: db-everywhere
    subjects: {{ users: [pete] }}
    targets: ["*"]
    postgres: {{ roles: [orders_read] }}
  - name: web-badgroup
    subjects: {{ users: [gus] }}
    targets: [web-1]
    ssh: {{ groups: [no-such-group-jitgate] }}
"#
    )
}

fn env_with(forward_port: u16) -> Option<Env> {
    for bin in ["ssh", "scp", "sftp", "rsync"] {
        if which(bin).is_none() {
            unavailable(&format!(
                "{bin} (apt-get install openssh-client openssh-sftp-server rsync)"
            ))?;
        }
    }
    let sshd = Sshd::start()?;
    let gw = Gateway::start_with(None, Some(&sshd), &policy(forward_port));
    Some(Env::new(sshd, gw, &["ops"]))
}

impl Env {
    /// The environment around a started sshd and gateway, as alice in `groups`.
    fn new(sshd: Sshd, gw: Gateway, groups: &[&str]) -> Env {
        let (cert, key) = gw.issue("alice", groups);
        Env {
            sshd,
            gw,
            cert,
            key,
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn proxy(&self, cert: &Path, key: &Path, extra: &str) -> String {
        format!(
            "ProxyCommand={} tunnel --gateway 127.0.0.1:{} --cert {} --key {} --ca {} {extra} %h",
            jitgate_bin().display(),
            self.gw.ssh_port,
            cert.display(),
            key.display(),
            self.gw.path("certs/ca.crt").display()
        )
    }

    /// Options every OpenSSH tool here gets: no user config, the tunnel as ProxyCommand.
    fn opts(&self, cert: &Path, key: &Path, extra: &str) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            &self.proxy(cert, key, extra),
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

    fn ssh_as(&self, cert: &Path, key: &Path, user: &str, args: &[&str]) -> Output {
        Command::new("ssh")
            .args(self.opts(cert, key, ""))
            .arg(format!("{user}@web-1"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ssh(&self, args: &[&str]) -> Output {
        self.ssh_as(&self.cert, &self.key, "alice", args)
    }

    fn wait_no_accounts(&self) -> Vec<String> {
        let start = Instant::now();
        loop {
            let left = self.sshd.own_accounts();
            if left.is_empty() || start.elapsed() > Duration::from_secs(15) {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn person_home(&self, person: &str) -> PathBuf {
        self.sshd.state_dir.join("home").join(person)
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn exec_keeps_streams_exit_codes_and_signals_apart() {
    let Some(env) = env_with(1) else { return };
    let o = env.ssh(&["id", "-un"]);
    assert!(o.status.success(), "{}\n{}", err(&o), env.gw.log());
    assert!(out(&o).starts_with("jit-alice-"), "{}", out(&o));
    let first_account = out(&o);

    let o = env.ssh(&["echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(out(&o), "out");
    assert_eq!(err(&o), "err");

    // A signal is reported as OpenSSH reports it for a direct connection.
    let direct = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-v",
            "-i",
        ])
        .arg(&env.sshd.admin_key)
        .args([
            "-p",
            &env.sshd.port.to_string(),
            "root@127.0.0.1",
            "kill -TERM $$",
        ])
        .output()
        .unwrap();
    let mut through = Command::new("ssh");
    through
        .args(env.opts(&env.cert, &env.key, ""))
        .args(["-v", "alice@web-1", "kill -TERM $$"]);
    let through = through.output().unwrap();
    assert_eq!(through.status.code(), direct.status.code());
    assert!(
        err(&through).contains("rtype exit-signal"),
        "{}",
        err(&through)
    );
    assert!(
        !err(&through).contains("rtype exit-status"),
        "a signal is not an exit status"
    );

    // Each of those connections had its own account, and all are gone.
    assert_eq!(
        env.wait_no_accounts(),
        Vec::<String>::new(),
        "{}",
        env.gw.log()
    );
    let members = Command::new("getent")
        .args(["group", "jitgate"])
        .output()
        .unwrap();
    let members = out(&members);
    let members: Vec<&str> = members
        .rsplit(':')
        .next()
        .unwrap_or("")
        .split(',')
        .collect();
    assert!(
        !members.contains(&first_account.as_str()),
        "{first_account} is still in group jitgate: {members:?}"
    );
    let passwd = Command::new("getent")
        .args(["passwd", &first_account])
        .output()
        .unwrap();
    assert!(!passwd.status.success(), "{first_account} still exists");
}

#[test]
fn interactive_pty_and_window_resize() {
    let Some(env) = env_with(1) else { return };
    let Some(tmux) = which("tmux") else {
        unavailable("tmux (apt-get install tmux)");
        return;
    };
    let session = format!("jg{}", random_word(8));
    let mut ssh = vec!["ssh".to_string(), "-tt".into()];
    ssh.extend(env.opts(&env.cert, &env.key, ""));
    ssh.push("alice@web-1".into());
    let command: Vec<String> = ssh
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let tmux_run = |args: &[&str]| {
        let o = Command::new(&tmux).args(args).output().unwrap();
        assert!(o.status.success(), "tmux {args:?}: {}", err(&o));
        out(&o)
    };
    tmux_run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &command.join(" "),
    ]);
    let screen = |want: &str| {
        let start = Instant::now();
        loop {
            let pane = tmux_run(&["capture-pane", "-p", "-t", &session]);
            if pane.contains(want) {
                return pane;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never saw {want:?} on:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    tmux_run(&["send-keys", "-t", &session, "echo typed-$((6*7))", "Enter"]);
    screen("typed-42");
    tmux_run(&["send-keys", "-t", &session, "stty size", "Enter"]);
    screen("30 100");
    tmux_run(&["resize-window", "-t", &session, "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux_run(&["send-keys", "-t", &session, "clear; stty size", "Enter"]);
    screen("40 120");
    tmux_run(&["send-keys", "-t", &session, "exit", "Enter"]);
    let _ = Command::new(&tmux)
        .args(["kill-session", "-t", &session])
        .output();
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    out(&o).split_whitespace().next().unwrap().to_string()
}

#[test]
fn scp_sftp_and_rsync_move_files_intact() {
    let Some(env) = env_with(1) else { return };
    let w = env.work.path();
    let big = w.join("big.bin");
    let o = Command::new("head")
        .args(["-c", "52428800", "/dev/urandom"])
        .output()
        .unwrap();
    fs::write(&big, &o.stdout).unwrap();
    let mut scp = Command::new("scp");
    scp.args(env.opts(&env.cert, &env.key, ""))
        .arg(&big)
        .arg("alice@web-1:/tmp/jitgate-big.bin");
    let o = scp.output().unwrap();
    assert!(o.status.success(), "scp up: {}\n{}", err(&o), env.gw.log());
    let back = w.join("back.bin");
    let mut scp = Command::new("scp");
    scp.args(env.opts(&env.cert, &env.key, ""))
        .arg("alice@web-1:/tmp/jitgate-big.bin")
        .arg(&back);
    let o = scp.output().unwrap();
    assert!(o.status.success(), "scp down: {}", err(&o));
    assert_eq!(sha256(&big), sha256(&back));
    let _ = fs::remove_file("/tmp/jitgate-big.bin");

    let batch = w.join("batch");
    fs::write(w.join("note.txt"), "hello sftp\n").unwrap();
    fs::write(
        &batch,
        format!(
            "put {} note.txt\nls -l\nget note.txt {}\n",
            w.join("note.txt").display(),
            w.join("note-back.txt").display()
        ),
    )
    .unwrap();
    let mut sftp = Command::new("sftp");
    sftp.args(env.opts(&env.cert, &env.key, ""))
        .arg("-b")
        .arg(&batch)
        .arg("alice@web-1");
    let o = sftp.output().unwrap();
    assert!(o.status.success(), "sftp: {}", err(&o));
    assert!(out(&o).contains("note.txt"));
    assert_eq!(
        fs::read_to_string(w.join("note-back.txt")).unwrap(),
        "hello sftp\n"
    );

    let tree = w.join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    for (i, f) in ["one", "a/two", "a/b/three"].iter().enumerate() {
        fs::write(tree.join(f), format!("file {i}\n")).unwrap();
    }
    let ssh_cmd: Vec<String> = std::iter::once("ssh".to_string())
        .chain(
            env.opts(&env.cert, &env.key, "")
                .into_iter()
                .map(|a| format!("'{a}'")),
        )
        .collect();
    let o = Command::new("rsync")
        .args(["-a", "-e", &ssh_cmd.join(" ")])
        .arg(format!("{}/", tree.display()))
        .arg("alice@web-1:tree/")
        .output()
        .unwrap();
    assert!(o.status.success(), "rsync: {}", err(&o));
    let o = env.ssh(&["cat tree/a/b/three; find tree -type f | sort"]);
    assert_eq!(out(&o), "file 2\ntree/a/b/three\ntree/a/two\ntree/one");
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

/// A TCP echo server on loopback, for one connection at a time.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

impl Env {
    /// `ssh -N -L <free port>:127.0.0.1:<dest>` through the bastion, and a connection to that
    /// local port once ssh listens on it.
    fn forward(&self, dest: u16) -> (std::process::Child, std::net::TcpStream) {
        let local = free_port();
        let mut fwd = Command::new("ssh");
        fwd.args(self.opts(&self.cert, &self.key, ""))
            .args([
                "-N",
                "-L",
                &format!("127.0.0.1:{local}:127.0.0.1:{dest}"),
                "alice@web-1",
            ])
            .stdin(Stdio::null());
        let child = fwd.spawn().unwrap();
        let start = Instant::now();
        let conn = loop {
            if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", local)) {
                break c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "forward never listened: {}",
                self.gw.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (child, conn)
    }
}

#[test]
fn local_forwards_only_where_the_grant_allows() {
    let allowed = echo_server();
    let forbidden = echo_server();
    let Some(env) = env_with(allowed) else { return };
    let (mut child, mut conn) = env.forward(allowed);
    conn.write_all(b"ping through jitgate").unwrap();
    let mut buf = [0u8; 20];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping through jitgate");
    drop(conn);
    let _ = child.kill();
    let _ = child.wait();

    // A destination the grant does not list: ssh listens locally, but the gateway refuses
    // the channel, so the connection is closed without a byte.
    let (mut child, mut conn) = env.forward(forbidden);
    let _ = conn.write_all(b"ping");
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    assert!(reply.is_empty(), "a forbidden forward carried data");
    let _ = child.kill();
    let _ = child.wait();
    let wanted = format!("destination=\"127.0.0.1:{forbidden}\" allowed=false");
    assert!(env.gw.log().contains(&wanted), "{}", env.gw.log());
    assert!(env.gw.log().contains("ssh.port_forward"));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

#[test]
fn control_master_shares_one_account_until_exit() {
    let Some(env) = env_with(1) else { return };
    let control = env.work.path().join("cm");
    let cm = |extra: &[&str]| {
        let mut c = Command::new("ssh");
        c.args(env.opts(&env.cert, &env.key, ""))
            .args(["-o", &format!("ControlPath={}", control.display())])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let o = cm(&[
        "-o",
        "ControlMaster=yes",
        "-o",
        "ControlPersist=yes",
        "-f",
        "-N",
        "alice@web-1",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "master: {}\n{}", err(&o), env.gw.log());
    let runs: Vec<_> = (0..10)
        .map(|i| {
            cm(&["-v", "alice@web-1", &format!("echo {i} $(id -un)")])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut accounts = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        let o = run.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "run {i}: {:?} {}\n{}",
            o.status,
            out(&o),
            err(&o)
        );
        let line = out(&o);
        let (n, account) = line.split_once(' ').unwrap();
        assert_eq!(n, i.to_string());
        accounts.push(account.to_string());
    }
    accounts.dedup();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(
        env.sshd.own_accounts(),
        accounts,
        "the account stands while the master lives"
    );
    let o = cm(&["-O", "exit", "alice@web-1"]).output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

#[test]
fn persistent_home_outlives_the_account_and_ephemeral_does_not() {
    let Some(env) = env_with(1) else { return };
    let f = env.work.path().join("keep.txt");
    fs::write(&f, "kept across connections\n").unwrap();
    let mut scp = Command::new("scp");
    scp.args(env.opts(&env.cert, &env.key, ""))
        .arg(&f)
        .arg("alice@web-1:");
    let o = scp.output().unwrap();
    assert!(o.status.success(), "{}\n{}", err(&o), env.gw.log());
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
    let home = fs::metadata(env.person_home("alice")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (0, 0, 0o700),
        "locked away between connections"
    );
    let o = env.ssh(&["cat keep.txt; id -un"]);
    let text = out(&o);
    assert!(
        text.starts_with("kept across connections\njit-alice-"),
        "{text}"
    );

    let (eph_crt, eph_key) = env.gw.issue("eph", &[]);
    let o = env.ssh_as(&eph_crt, &eph_key, "eph", &["echo scratch > f; pwd"]);
    assert!(o.status.success(), "{}", err(&o));
    let eph_home = PathBuf::from(out(&o));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
    assert!(
        !eph_home.exists(),
        "ephemeral home {} should be gone",
        eph_home.display()
    );
    let o = env.ssh_as(&eph_crt, &eph_key, "eph", &["cat f"]);
    assert!(!o.status.success());
}

#[test]
fn processes_go_with_the_account() {
    let Some(env) = env_with(1) else { return };
    // Digits enough that no unrelated `sleep` on the machine matches.
    let marker = format!("sleep 4{}{:05}", std::process::id(), rand_digits());
    // Detached from the session (its own session, no terminal, stdio closed), so only the
    // removal can end it; `pgrep` proves it runs before the connection closes.
    let o = env.ssh(&[&format!(
        "id -u; (setsid nohup {marker}00 >/dev/null 2>&1 &); sleep 0.3; pgrep -u $(id -u) -f '{marker}00' >/dev/null && echo running"
    )]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let (uid, running) = text.split_once('\n').unwrap();
    assert_eq!(running, "running", "the detached process never started");
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
    let ps = Command::new("ps")
        .args(["-eo", "uid=,stat=,args="])
        .output()
        .unwrap();
    // Zombies are dead already (they wait for init to reap them): only live processes count.
    let left: Vec<String> = out(&ps)
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            let (owner, state) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            !state.starts_with('Z') && (owner == uid || l.contains(&format!("{marker}00")))
        })
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "processes of uid {uid} survived: {left:?}");
}

#[test]
fn refusals_reach_the_user_and_create_nothing() {
    let Some(env) = env_with(1) else { return };
    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let dir = other.path().join("certs");
    jitgate(&["certs", "init", "--dir", dir.to_str().unwrap()]);
    jitgate(&[
        "certs",
        "issue",
        "--dir",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--group",
        "ops",
    ]);
    let o = env.ssh_as(
        &dir.join("alice.crt"),
        &dir.join("alice.key"),
        "alice",
        &["true"],
    );
    assert_eq!(o.status.code(), Some(255));
    assert!(
        err(&o).contains("client certificate rejected"),
        "{}",
        err(&o)
    );

    // No grant for this person.
    let (crt, key) = env.gw.issue("mallory", &["sales"]);
    let o = env.ssh_as(&crt, &key, "mallory", &["true"]);
    let existing = err(&o);
    assert!(
        existing.contains(
            "no grant gives mallory access to target \"web-1\"; you have no grant for any ssh \
             target here"
        ),
        "{existing}"
    );
    // A target that does not exist: word for word the same (but for the name she typed).
    let o = Command::new("ssh")
        .args(env.opts(&crt, &key, ""))
        .args(["mallory@web-9", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(err(&o).replace("web-9", "web-1"), existing);

    // A grant that needs a reason, without and with one.
    let (crt, key) = env.gw.issue("tess", &[]);
    let o = env.ssh_as(&crt, &key, "tess", &["true"]);
    assert!(!o.status.success());
    assert!(err(&o).contains("requires a reason"), "{}", err(&o));
    let o = Command::new("ssh")
        .args(env.opts(&crt, &key, "--reason INC-77"))
        .args(["tess@web-1", "id -un"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(env.gw.log().contains("INC-77"));

    // A grant name that is not this person's, and one that does not exist: the same words,
    // and what alice can use instead.
    let o = env.ssh_as(&env.cert, &env.key, "web-scratch", &["true"]);
    let foreign = err(&o);
    assert!(
        foreign.contains(
            "no grant gives alice access to target \"web-1\" as \"web-scratch\"; grants you \
             can use: web-ops on web-1"
        ),
        "{foreign}"
    );
    // Many times over: a refusal at auth_succeeded reaches ssh while it is already writing
    // its channel open; the message was lost about once in 30 (ssh died of EPIPE on the
    // tunnel's pipe, silently under LogLevel=ERROR) until the tunnel kept stdin open.
    for i in 0..100 {
        let o = env.ssh_as(&env.cert, &env.key, "web-invented", &["true"]);
        assert_eq!(
            err(&o).replace("web-invented", "web-scratch"),
            foreign,
            "attempt {i}"
        );
    }

    // An unknown target.
    let mut c = Command::new("ssh");
    c.args(env.opts(&env.cert, &env.key, ""))
        .args(["alice@web-9", "true"]);
    let o = c.output().unwrap();
    assert!(
        err(&o).contains(
            "no grant gives alice access to target \"web-9\"; grants you can use: web-ops on \
             web-1"
        ),
        "{}",
        err(&o)
    );

    // No certificate at all (a TLS client without one).
    let line = no_certificate_answer(&env);
    assert!(
        line.contains("ERROR jitgate requires a client certificate"),
        "{line}"
    );

    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

fn no_certificate_answer(env: &Env) -> String {
    let config = jitgate::tls::upstream_client_config(Some(&env.gw.path("certs/ca.crt"))).unwrap();
    let port = env.gw.ssh_port;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut tls = raw_tunnel(config, port, "localhost").await;
            jitgate::ssh::preamble::read_line(&mut tls).await.unwrap()
        })
}

/// What `jitgate tunnel` does up to the preamble, by hand: TLS to the bastion with `sni`, then
/// the hello line; the answer is left for the caller to read.
async fn raw_tunnel(
    config: std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    sni: &'static str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(jitgate::ssh::preamble::hello(None).as_bytes())
        .await
        .unwrap();
    tls
}

#[test]
fn wrong_pinned_host_key_is_a_refusal() {
    let Some(sshd) = Sshd::start() else { return };
    let other_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMsy6ZRjqCgYvP+9IcO1W6JZmUSjxmxUBmjMBHS0Aio6 other";
    let gw = Gateway::start_edited(None, Some(&sshd), &policy(1), |config| {
        config.replace(&sshd.host_key_line, other_key)
    });
    let env = Env::new(sshd, gw, &["ops"]);
    let o = env.ssh(&["true"]);
    assert_eq!(o.status.code(), Some(255));
    // The user gets a reference; the operator's log says it was the host key.
    assert!(
        err(&o).contains("jitgate could not create your account on target web-1"),
        "{}",
        err(&o)
    );
    assert!(!err(&o).contains("host key"), "{}", err(&o));
    assert!(env.gw.log().contains("host key"), "{}", env.gw.log());
    assert!(
        env.sshd.own_accounts().is_empty(),
        "an account was created despite the wrong key"
    );
}

#[test]
fn ephemeral_key_never_leaves_the_gateway() {
    let Some(env) = env_with(1) else { return };
    let o = env.ssh(&["id -un; ls -la ~/.ssh; cat ~/.ssh/authorized_keys"]);
    assert!(o.status.success(), "{}", err(&o));
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
    let keys = env.gw.minted_credentials();
    assert!(
        !keys.is_empty(),
        "the gateway recorded no credential for the leak test"
    );
    let log = env.gw.log().replace(['\n', '\r'], "");
    let seen_flat = seen.replace(['\n', '\r'], "");
    for key in &keys {
        assert!(key.len() > 40);
        assert!(
            !seen_flat.contains(key.as_str()),
            "the client saw the private key"
        );
        assert!(
            !log.contains(key.as_str()),
            "the gateway log has the private key"
        );
    }
}

#[test]
fn a_slow_client_holds_back_a_fast_upstream() {
    let Some(env) = env_with(1) else { return };
    const TOTAL: u64 = 256 * 1024 * 1024;
    let mut ssh = Command::new("ssh");
    ssh.args(env.opts(&env.cert, &env.key, ""))
        .args(["alice@web-1", &format!("head -c {TOTAL} /dev/zero")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = ssh.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Nobody reads for a while: the target could produce all 256 MiB in that time.
    let before = env.gw.rss_kib();
    let mut peak = before;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(env.gw.rss_kib());
    }
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
        if got % (16 << 20) < n as u64 {
            peak = peak.max(env.gw.rss_kib());
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(got, TOTAL);
    eprintln!("gateway RSS: {before} KiB before, {peak} KiB peak while streaming {TOTAL} bytes");
    // Windows and bounded queues: the gateway holds a few MiB per channel, not the stream.
    assert!(
        peak < before + 64 * 1024,
        "gateway memory grew from {before} KiB to {peak} KiB behind a slow reader"
    );
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

#[test]
fn clients_that_skip_none_auth_get_in_with_any_key() {
    let Some(env) = env_with(1) else { return };
    let key = env.work.path().join("any_ed25519");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut ssh = Command::new("ssh");
    ssh.args(env.opts(&env.cert, &env.key, ""))
        .args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&key)
        .args(["alice@web-1", "id -un"]);
    let o = ssh.output().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("jit-alice-"));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

#[test]
fn gateway_shutdown_ends_sessions_and_removes_accounts() {
    let Some(mut env) = env_with(1) else { return };
    let mut ssh = Command::new("ssh");
    ssh.args(env.opts(&env.cert, &env.key, ""))
        .args(["alice@web-1", "sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = ssh.spawn().unwrap();
    let start = Instant::now();
    while env.sshd.own_accounts().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no account appeared: {}",
            env.gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.gw.stop();
    assert_eq!(
        env.sshd.own_accounts(),
        Vec::<String>::new(),
        "{}",
        env.gw.log()
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(255));
    assert!(
        err(&o).contains("the gateway is shutting down"),
        "{}",
        err(&o)
    );
}

/// A grant without an `ssh:` section opens no shell, even where its glob matches the host.
#[test]
fn a_postgres_only_grant_opens_no_shell() {
    let Some(env) = env_with(1) else { return };
    let (crt, key) = env.gw.issue("pete", &[]);
    for user in ["pete", "db-everywhere"] {
        let o = env.ssh_as(&crt, &key, user, &["id -un"]);
        assert_eq!(o.status.code(), Some(255), "{user}: {}", out(&o));
        assert!(
            err(&o).contains("no grant gives pete access to target \"web-1\""),
            "{user}: {}",
            err(&o)
        );
        assert!(
            err(&o).contains("you have no grant for any ssh target here"),
            "{}",
            err(&o)
        );
    }
    assert_eq!(env.sshd.own_accounts(), Vec::<String>::new());
}

/// A failed mint tells the user which target and a reference; the target's script output
/// goes to the log under that reference, never to the user.
#[test]
fn a_mint_failure_shows_a_reference_not_the_targets_stderr() {
    let Some(env) = env_with(1) else { return };
    let (crt, key) = env.gw.issue("gus", &[]);
    let o = env.ssh_as(&crt, &key, "gus", &["true"]);
    assert_eq!(o.status.code(), Some(255));
    let said = err(&o);
    assert!(
        said.contains(
            "jitgate could not create your account on target web-1; ask the operator (reference "
        ),
        "{said}"
    );
    assert!(!said.contains("no-such-group"), "{said}");
    assert!(!said.contains("exit status"), "{said}");
    let reference = said
        .split("(reference ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_string();
    let log = env.gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("mint failed") && l.contains(&reference))
        .unwrap_or_else(|| panic!("no log line for {reference}:\n{log}"));
    assert!(line.contains("no-such-group-jitgate"), "{line}");
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

/// An exec command with a newline and a terminal escape is one escaped log line.
#[test]
fn a_hostile_exec_command_cannot_forge_log_lines() {
    let Some(env) = env_with(1) else { return };
    let command =
        "echo one\n2030-01-01T00:00:00.000000Z  INFO jitgate: event=\"access.granted\"\x1b[31m";
    // The second line runs as a (missing) command on the target; only the log matters here.
    let o = env.ssh(&[command]);
    assert_eq!(out(&o), "one", "{}", err(&o));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
    let log = env.gw.log();
    assert!(!log.contains('\x1b'), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("2030-")), "{log}");
    let exec: Vec<&str> = log.lines().filter(|l| l.contains("ssh.exec")).collect();
    assert_eq!(exec.len(), 1, "{log}");
    assert!(
        exec[0].contains(
            "command=\"echo one\\n2030-01-01T00:00:00.000000Z  INFO jitgate: \
             event=\\\"access.granted\\\"\\x1b[31m\" allowed=true"
        ),
        "{}",
        exec[0]
    );
}

/// `max_session` ends a connection that is still in use, and its account with it.
#[test]
fn max_session_ends_a_running_connection() {
    let Some(sshd) = Sshd::start() else { return };
    let policy = "grants:\n  - name: brief\n    subjects: { users: [alice] }\n    targets: [web-1]\n    ssh: {}\n    max_session: 1m\n";
    let gw = Gateway::start_with(None, Some(&sshd), policy);
    let env = Env::new(sshd, gw, &[]);
    let o = env.ssh(&["sleep 150; echo outlived"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(!out(&o).contains("outlived"));
    assert!(err(&o).contains("reached the max_session"), "{}", err(&o));
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

/// A client that passes TLS and the preamble, then sends half an SSH version line and goes
/// silent, is not held: handshake_timeout (3 s here) covers the SSH handshake too
/// (issue 7 item 4).
#[test]
fn a_client_silent_inside_the_ssh_handshake_is_let_go() {
    let Some(env) = env_with(1) else { return };
    let config = jitgate::tls::tunnel_client_config(
        &env.gw.path("certs/ca.crt"),
        &env.cert,
        &env.key,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let port = env.gw.ssh_port;
    let held = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tls = raw_tunnel(config, port, "web-1").await;
            let answer = jitgate::ssh::preamble::read_line(&mut tls).await.unwrap();
            assert!(answer.contains("OK"), "{answer}");
            tls.write_all(b"SSH-2.0-half").await.unwrap();
            tls.flush().await.unwrap();
            let start = Instant::now();
            let mut buf = vec![0u8; 4096];
            // Read what the gateway says (its version line) until it hangs up.
            loop {
                match tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                    Ok(Ok(_)) => continue,
                }
            }
        });
    assert!(
        held.is_some(),
        "the gateway still holds a silent client after 30 s: {}",
        env.gw.log()
    );
    // The gateway logs once it has let go, which may be just after the client saw the end.
    let logged = Instant::now();
    while !env
        .gw
        .log()
        .contains("SSH handshake did not finish within handshake_timeout")
        && logged.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        env.gw
            .log()
            .contains("SSH handshake did not finish within handshake_timeout"),
        "{}",
        env.gw.log()
    );
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

/// kill -9 of the gateway under a live `ssh … sleep 60`: the tunnel exits, and ssh with it,
/// instead of freezing (issue 7 item 5). The restarted gateway reaps the account.
#[test]
fn the_tunnel_exits_when_the_gateway_dies() {
    let Some(mut env) = env_with(1) else { return };
    let mut child = Command::new("ssh")
        .args(env.opts(&env.cert, &env.key, ""))
        .args(["alice@web-1", "sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while env.sshd.own_accounts().is_empty() || !env.gw.log().contains("session started") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no session: {}",
            env.gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.gw.kill_hard();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if killed.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr_text = {
        let mut s = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    };
    assert!(
        status.is_some(),
        "ssh still runs 20 s after the gateway died"
    );
    assert_ne!(status.unwrap().code(), Some(0), "{stderr_text}");
    env.gw.restart();
    assert_eq!(
        env.wait_no_accounts(),
        Vec::<String>::new(),
        "{}",
        env.gw.log()
    );
}

/// `scp f web-1:` then at once `ssh web-1 cat f`, ten times: the second connection waits for
/// the first one's account to give the persistent home back, and finds the file
/// (issue 7 item 8).
#[test]
fn back_to_back_connections_keep_the_persistent_home() {
    let Some(env) = env_with(1) else { return };
    for round in 0..10 {
        let name = format!("b2b-{round}.txt");
        let local = env.work.path().join(&name);
        fs::write(&local, format!("round {round}\n")).unwrap();
        let o = Command::new("scp")
            .args(env.opts(&env.cert, &env.key, ""))
            .arg(&local)
            .arg(format!("alice@web-1:{name}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "scp: {}", err(&o));
        let o = env.ssh(&["cat", &name]);
        assert_eq!(
            out(&o),
            format!("round {round}"),
            "round {round}: {}\n{}",
            err(&o),
            env.gw.log()
        );
    }
    assert!(
        !env.gw
            .log()
            .contains("this connection gets an ephemeral home"),
        "{}",
        env.gw.log()
    );
    assert_eq!(env.wait_no_accounts(), Vec::<String>::new());
}

/// Five random digits (for names no other process on the machine carries).
fn rand_digits() -> u32 {
    random_word(12)
        .bytes()
        .fold(0u32, |n, b| n.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 100_000
}
