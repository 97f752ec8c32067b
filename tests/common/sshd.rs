//! The SSH tests' target: `jitgate::sandbox::sshd::ThrowawaySshd` (a real OpenSSH `sshd` on a
//! loopback port, admin key for root) plus what a test needs around it: its own instance id,
//! state_dir and UID slice, and a cleanup that removes every `jit-*` account it made.
//!
//! Its files live in `/run/jitgate-test-<random>/`, not under /tmp: sshd's StrictModes refuses
//! authorized_keys below a world-writable directory. Dropping it stops sshd and removes every
//! `jit-*` account whose marker names this harness's instance id, their sudoers files, and the
//! directories it made.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jitgate::sandbox::sshd::{ThrowawaySshd, SSHD};

use super::{free_port, random_word, unavailable};

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
    inner: Option<ThrowawaySshd>,
}

impl Sshd {
    /// Starts sshd, or skips (fails under CI) when sshd, ssh-keygen or root is missing.
    pub fn start() -> Option<Sshd> {
        if !std::path::Path::new(SSHD).is_file() || super::which("ssh-keygen").is_none() {
            unavailable("openssh-server (/usr/sbin/sshd) and ssh-keygen")?;
        }
        if !jitgate::sandbox::is_root() {
            unavailable("root (the SSH tests create Linux users through sshd)")?;
        }
        let word = random_word(10);
        let dir = PathBuf::from(format!("/run/jitgate-test-{word}"));
        let inner = ThrowawaySshd::start(&dir, free_port()).unwrap_or_else(|e| panic!("{e}"));

        // Tests of one binary run at once: each gets its own 100-UID slice of the default
        // range (a random start, then consecutive), so their counters do not collide.
        static NEXT_SLICE: AtomicU32 = AtomicU32::new(u32::MAX);
        let start = u32::from_str_radix(&word[..4], 36).unwrap() % 1000;
        let _ = NEXT_SLICE.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
        let slice = NEXT_SLICE.fetch_add(1, Ordering::SeqCst) % 1000;
        let base = 200_000 + slice * 100;
        Some(Sshd {
            port: inner.port,
            host_key_line: inner.host_key_line.clone(),
            admin_key: inner.admin_key.clone(),
            state_dir: PathBuf::from(format!("/var/lib/jitgate-test-{word}")),
            instance_id: format!("test-{word}"),
            uid_range: (base, base + 99),
            dir,
            inner: Some(inner),
        })
    }

    /// Kills the listening sshd and starts it again, as `systemctl restart ssh` does on Debian
    /// (KillMode=process): sessions it had already handed to their own processes go on.
    pub fn restart(&mut self) {
        let inner = self.inner.as_mut().unwrap();
        inner.stop();
        inner.start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn log(&self) -> String {
        self.inner
            .as_ref()
            .map(ThrowawaySshd::log)
            .unwrap_or_default()
    }

    /// A `targets:` entry (indented for a `targets:` mapping) for this sshd.
    pub fn target_yaml(&self, name: &str) -> String {
        self.inner
            .as_ref()
            .map(|s| s.target_yaml(name, &self.state_dir, self.uid_range))
            .unwrap_or_default()
    }

    /// `jit-*` accounts on this machine whose marker names this harness's instance id.
    pub fn own_accounts(&self) -> Vec<String> {
        jit_accounts(&self.instance_id)
    }
}

/// `jit-*` accounts on this machine whose GECOS marker names `instance_id`.
pub fn jit_accounts(instance_id: &str) -> Vec<String> {
    let needle = format!("jitgate-managed instance={instance_id} ");
    let out = Command::new("getent").arg("passwd").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() == 7 && fields[0].starts_with("jit-") && fields[4].starts_with(&needle))
                .then(|| fields[0].to_string())
        })
        .collect()
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Stops sshd and removes self.dir.
        drop(self.inner.take());
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
