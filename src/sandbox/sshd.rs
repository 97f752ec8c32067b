//! A throwaway OpenSSH `sshd` on a loopback port, with its own config, host key and an admin
//! key for root, as the SSH target of `jitgate demo` and the tests. Needs root: jitgate's
//! provisioner logs in as root to create real Linux users.
//!
//! Its directory must sit outside /tmp (e.g. under /run): with `StrictModes yes`, sshd refuses
//! authorized_keys below a world-writable directory. Dropping it stops sshd and removes the
//! directory; the accounts jitgate made through it are the provisioner's to remove.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, run, which, SandboxError};

pub const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ThrowawaySshd {
    pub dir: PathBuf,
    pub port: u16,
    /// The host's public key as an OpenSSH line (`ssh-ed25519 AAAA… comment`), to pin.
    pub host_key_line: String,
    /// Private key whose public half is root's authorized key.
    pub admin_key: PathBuf,
    child: Option<Child>,
}

/// Generates an unencrypted Ed25519 key pair at `path` (+ `.pub`); the public line.
fn keygen(path: &Path, comment: &str) -> Result<String, SandboxError> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path))?;
    let public = path.with_extension("pub");
    Ok(fs::read_to_string(&public)
        .map_err(io_err(format!("reading {}", public.display())))?
        .trim()
        .to_string())
}

fn mkdir_mode(dir: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

impl ThrowawaySshd {
    /// Creates `dir` (which must not exist yet, outside any world-writable directory), writes
    /// keys and config into it, and starts sshd on 127.0.0.1:`port`; returns once it listens.
    pub fn start(dir: &Path, port: u16) -> Result<Self, SandboxError> {
        if !Path::new(SSHD).is_file() {
            return Err(SandboxError::Missing {
                what: "OpenSSH server (/usr/sbin/sshd)",
                hint: "apt-get install openssh-server",
            });
        }
        if which("ssh-keygen").is_none() {
            return Err(SandboxError::Missing {
                what: "ssh-keygen",
                hint: "apt-get install openssh-client",
            });
        }
        fs::create_dir(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        // From here on, a failure removes the directory (and stops sshd) through Drop.
        let mut sshd = ThrowawaySshd {
            dir: dir.to_path_buf(),
            port,
            host_key_line: String::new(),
            admin_key: dir.join("admin_ed25519"),
            child: None,
        };
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
        // sshd's privilege separation directory (Debian's sshd wants it; systemd normally makes it).
        mkdir_mode(Path::new("/run/sshd"), 0o755)?;

        let host_key = dir.join("ssh_host_ed25519_key");
        sshd.host_key_line = keygen(&host_key, "jitgate-sandbox-host")?;
        let admin_pub = keygen(&sshd.admin_key, "jitgate-sandbox-admin")?;
        let keys_dir = dir.join("authorized_keys");
        mkdir_mode(&keys_dir, 0o755)?;
        let root_keys = keys_dir.join("root");
        fs::write(&root_keys, format!("{admin_pub}\n"))
            .and_then(|()| fs::set_permissions(&root_keys, fs::Permissions::from_mode(0o600)))
            .map_err(io_err(format!("writing {}", root_keys.display())))?;

        let config = dir.join("sshd_config");
        // `%u` files for root only; JIT accounts get `.ssh/authorized_keys` in their home,
        // written by the provisioner. UsePAM no: a stock sshd without PAM still checks the
        // account (locked, expired) itself, and nothing here needs PAM sessions.
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
        .map_err(io_err(format!("writing {}", config.display())))?;
        sshd.spawn()?;
        Ok(sshd)
    }

    /// Starts the listening sshd again after `stop` (same keys, config and port), as a
    /// `systemctl restart ssh` does: connections already made are not touched by either.
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.child.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), SandboxError> {
        let config = self.dir.join("sshd_config");
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A process group of its own: a Ctrl-C on the terminal reaches only jitgate, which
            // still needs this sshd to remove the accounts it made before stopping it.
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {SSHD}")))?;
        self.child = Some(child);
        self.wait_listening()
    }

    fn wait_listening(&mut self) -> Result<(), SandboxError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = match self.child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .map_err(io_err("waiting for sshd"))?
                    .map(|status| status.to_string()),
                None => Some("not started".to_string()),
            };
            if let Some(status) = exited {
                return Err(SandboxError::Command {
                    command: format!("{SSHD} -D -p {}", self.port),
                    output: format!("exited early ({status}):\n{}", self.log()),
                });
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(SandboxError::Command {
                    command: format!("{SSHD} -D -p {}", self.port),
                    output: format!(
                        "did not listen within {}s:\n{}",
                        START_TIMEOUT.as_secs(),
                        self.log()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A `targets:` entry (indented for a `targets:` mapping) for this sshd, JIT accounts taking
    /// UIDs from `uid_range` and keeping homes and counters in `state_dir` (an absolute path
    /// outside /tmp, for StrictModes).
    pub fn target_yaml(&self, name: &str, state_dir: &Path, uid_range: (u32, u32)) -> String {
        format!(
            "  {name}:\n    ssh:\n      host: 127.0.0.1\n      port: {port}\n      \
             host_key: \"{key}\"\n      admin:\n        user: root\n        key_file: {admin}\n      \
             state_dir: {state}\n      uid_range: {lo}-{hi}\n",
            port = self.port,
            key = self.host_key_line,
            admin = self.admin_key.display(),
            state = state_dir.display(),
            lo = uid_range.0,
            hi = uid_range.1,
        )
    }

    /// Stops the listening sshd (connections it already handed to a child end when their
    /// accounts' processes are killed). Idempotent; the directory stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL is as good as SIGTERM for a throwaway, and cannot be ignored.
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                tracing::warn!(error = %e, "stopping the throwaway sshd failed");
            }
        }
    }
}

impl Drop for ThrowawaySshd {
    /// Stops sshd and removes its directory (keys, config, log).
    fn drop(&mut self) {
        self.stop();
        if self.dir.exists() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "removing the throwaway sshd's directory failed");
            }
        }
    }
}
