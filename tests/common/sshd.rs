//! A real OpenSSH `sshd` on a loopback port, with its own config, host key and admin key for
//! root, for the SSH tests. Runs as root (it creates real Linux users on this machine).
//!
//! Its files live in `/run/jitgate-test-<random>/`, not under /tmp: sshd's StrictModes refuses
//! authorized_keys below a world-writable directory. Dropping it stops sshd and removes every
//! `jit-*` account whose marker names this harness's instance id, their sudoers files, and the
//! directories it made.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, random_word, unavailable};

const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub port: u16,
    /// The host's public key as an OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub host_key_line: String,
    /// Private key whose public half is root's authorized key.
    pub admin_key: PathBuf,
    /// A state_dir for this test only (outside /tmp, for StrictModes).
    pub state_dir: PathBuf,
    /// The instance id the test's provisioner should use; the cleanup goes by it.
    pub instance_id: String,
    /// A 100-UID slice of the default range, different for each test of one binary.
    pub uid_range: (u32, u32),
    pub dir: PathBuf,
    child: Option<Child>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keygen(path: &Path, comment: &str) -> String {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
    fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl Sshd {
    /// Starts sshd, or skips (fails under CI) when sshd, ssh-keygen or root is missing.
    pub fn start() -> Option<Sshd> {
        if !Path::new(SSHD).is_file() || super::which("ssh-keygen").is_none() {
            unavailable("openssh-server (/usr/sbin/sshd) and ssh-keygen")?;
        }
        if !is_root() {
            unavailable("root (the SSH tests create Linux users through sshd)")?;
        }
        let word = random_word(10);
        let dir = PathBuf::from(format!("/run/jitgate-test-{word}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();

        let host_key = dir.join("ssh_host_ed25519_key");
        let host_key_line = keygen(&host_key, "jitgate-test-host");
        let admin_key = dir.join("admin_ed25519");
        let admin_pub = keygen(&admin_key, "jitgate-test-admin");
        let keys_dir = dir.join("authorized_keys");
        fs::create_dir(&keys_dir).unwrap();
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(keys_dir.join("root"), format!("{admin_pub}\n")).unwrap();
        fs::set_permissions(keys_dir.join("root"), fs::Permissions::from_mode(0o600)).unwrap();

        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {dir}/sshd.pid\n\
                 UsePAM no\n\
                 StrictModes yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 AuthorizedKeysFile {dir}/authorized_keys/%u .ssh/authorized_keys\n\
                 AllowTcpForwarding yes\n\
                 Subsystem sftp internal-sftp\n\
                 MaxSessions 100\n\
                 MaxStartups 100:30:200\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();

        // Tests of one binary run at once: each gets its own 100-UID slice of the default
        // range (a random start, then consecutive), so their counters do not collide.
        static NEXT_SLICE: AtomicU32 = AtomicU32::new(u32::MAX);
        let start = u32::from_str_radix(&word[..4], 36).unwrap() % 1000;
        let _ = NEXT_SLICE.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
        let slice = NEXT_SLICE.fetch_add(1, Ordering::SeqCst) % 1000;
        let base = 200_000 + slice * 100;
        let mut sshd = Sshd {
            port,
            host_key_line,
            admin_key,
            state_dir: PathBuf::from(format!("/var/lib/jitgate-test-{word}")),
            instance_id: format!("test-{word}"),
            uid_range: (base, base + 99),
            dir,
            child: Some(child),
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = sshd.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sshd exited early ({status}):\n{}", sshd.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sshd did not listen:\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(sshd)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// A `targets:` entry (indented for a `targets:` mapping) for this sshd.
    pub fn target_yaml(&self, name: &str) -> String {
        format!(
            "  {name}:\n    ssh:\n      host: 127.0.0.1\n      port: {port}\n      \
             host_key: \"{key}\"\n      admin:\n        user: root\n        key_file: {admin}\n      \
             state_dir: {state}\n      uid_range: {lo}-{hi}\n",
            port = self.port,
            key = self.host_key_line,
            admin = self.admin_key.display(),
            state = self.state_dir.display(),
            lo = self.uid_range.0,
            hi = self.uid_range.1,
        )
    }

    /// `jit-*` accounts on this machine whose marker names this harness's instance id.
    pub fn own_accounts(&self) -> Vec<String> {
        let needle = format!("jitgate-managed instance={} ", self.instance_id);
        let out = Command::new("getent").arg("passwd").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() == 7
                    && fields[0].starts_with("jit-")
                    && fields[4].starts_with(&needle))
                .then(|| fields[0].to_string())
            })
            .collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for account in self.own_accounts() {
            for _ in 0..50 {
                let _ = Command::new("pkill")
                    .args(["-KILL", "-u", &account])
                    .status();
                let alive = Command::new("pgrep")
                    .args(["-u", &account])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !alive {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("userdel").arg(&account).status();
            let _ = fs::remove_file(format!("/etc/sudoers.d/jitgate-{account}"));
        }
        let _ = fs::remove_dir_all(&self.state_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
