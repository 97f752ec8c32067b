//! `jitgate demo`: jitgate's whole job on one machine, in the foreground. Builds a sandbox
//! directory (certificates, config, policies), starts a throwaway PostgreSQL and — as root — a
//! throwaway sshd as targets, runs the gateway in-process (`server::serve_until`) and prints
//! commands to paste; on Ctrl-C or SIGTERM the gateway ends every session and drops every
//! account, then the targets are stopped. The sandbox stays, for its logs.

mod instructions;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::certs::{self, CertError, InitOptions, IssueOptions};
use crate::config::{Config, ConfigError, Target};
use crate::jit::linux::{LinuxError, LinuxProvisioner};
use crate::jit::postgres::{JitError, PgProvisioner};
use crate::jit::reaper::{reap_linux, reap_postgres};
use crate::sandbox::postgres::{self as pg_sandbox, ThrowawayPostgres, ADMIN_USER};
use crate::sandbox::sshd::{ThrowawaySshd, SSHD};
use crate::sandbox::{free_port, is_root, random_word, which, SandboxError};
use crate::server::{serve_until, Listening, ServeError};
use crate::ssh::hostkey::{load_or_create_host_key, HostKeyError};

pub use instructions::Instructions;

/// Marks a directory as the demo's own (and is locked while a demo runs in it): only a
/// directory holding it is ever emptied.
pub const MARKER: &str = ".jitgate-demo";
/// The instance id written on every account the demo creates.
pub const INSTANCE_ID: &str = "demo";
/// The SSH target's name.
pub const SSH_TARGET: &str = "web-1";
pub const PG_TARGET: &str = "orders";
/// Held while a demo with an SSH target runs: two would share one machine's accounts under
/// one instance id, and each one's reaper would remove the other's.
const MACHINE_LOCK: &str = "/run/jitgate-demo.lock";
/// On the target machine (this one): homes, the UID counter; removed when the demo stops.
const STATE_DIR: &str = "/var/lib/jitgate-demo";
/// Clear of the default range's start, where a real gateway on this machine would begin.
const UID_RANGE: (u32, u32) = (300_000, 300_999);
/// PostgreSQL puts its socket at `<dir>/.s.PGSQL.<port>`, and a socket path has 107 bytes.
const SOCKET_DIR_MAX: usize = 90;
const CERT_TTL: time::Duration = time::Duration::hours(24);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The sandbox directory; made absolute by `run`.
    pub dir: PathBuf,
    /// The gateway's Postgres listener on 127.0.0.1.
    pub pg_port: u16,
    /// The gateway's SSH listener on 127.0.0.1 (unused when not root).
    pub ssh_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("127.0.0.1:{port} is {reason}; choose another port with {flag} <port>")]
    Port {
        port: u16,
        flag: &'static str,
        reason: String,
    },
    #[error("--pg-port and --ssh-port are both {0}; choose two different ports")]
    SamePort(u16),
    #[error(
        "jitgate demo needs {list}: run `apt-get install -y {list}` as root (scripts/demo.sh does it for you)",
        list = .0.join(" ")
    )]
    MissingPackages(Vec<&'static str>),
    #[error(
        "{} is not empty and has no {MARKER} file, so it is not a jitgate demo sandbox; refusing to \
         delete it: choose another --dir",
        .0.display()
    )]
    NotASandbox(PathBuf),
    #[error("{} exists and is not a directory; choose another --dir", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "another jitgate demo is running in {}; stop it (Ctrl-C) or choose another --dir",
        .0.display()
    )]
    SandboxBusy(PathBuf),
    #[error(
        "another jitgate demo with an SSH target is running on this machine (it holds \
         {MACHINE_LOCK}); stop it first: both would manage the same Linux accounts"
    )]
    MachineBusy,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("certificates: {0}")]
    Certs(#[from] CertError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    HostKey(#[from] HostKeyError),
    #[error("gateway: {0}")]
    Serve(ServeError),
    #[error(
        "stopped, but could not remove every account it created ({}); on this machine, \
         `getent passwd | grep 'instance={INSTANCE_ID} '` lists the Linux ones (remove them with \
         userdel); the PostgreSQL ones went with its throwaway cluster",
        .0.join("; ")
    )]
    Leftovers(Vec<String>),
    #[error("interrupted during set-up; everything it had started is stopped again")]
    Interrupted,
    #[error("internal error: {0}")]
    Internal(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let context = context.into();
    move |source| DemoError::Io { context, source }
}

/// Runs the demo until SIGINT/SIGTERM; `Ok` once everything it started is stopped again.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    // From the very start, so that a Ctrl-C during set-up still stops what was started.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(io_err("signal handler"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(io_err("signal handler"))?;

    let dir = std::path::absolute(&opts.dir)
        .map_err(io_err(format!("resolving {}", opts.dir.display())))?;
    let with_ssh = is_root();
    preflight(&opts, with_ssh)?;
    if !with_ssh {
        tracing::warn!(
            "not running as root: the SSH target {SSH_TARGET} needs root (jitgate creates Linux \
             users on it), so this demo has the PostgreSQL part only; run it as root for SSH too"
        );
    }

    let setup = {
        let opts = opts.clone();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || Sandbox::create(&dir, &opts, with_ssh))
    };
    tokio::pin!(setup);
    // A signal does not stop the set-up midway (it runs initdb and friends): it is let finish,
    // then everything it started is stopped.
    let (joined, interrupted) = tokio::select! {
        joined = &mut setup => (joined, false),
        _ = interrupt.recv() => (setup.await, true),
        _ = terminate.recv() => (setup.await, true),
    };
    let created = joined.map_err(|e| DemoError::Internal(format!("set-up task: {e}")))?;
    if interrupted {
        // Whatever it got to (a terminal's Ctrl-C also fails the initdb or psql it was
        // running) is stopped by dropping it.
        drop(created);
        return Err(DemoError::Interrupted);
    }
    let mut sandbox = created?;
    let config = Config::load(&sandbox.config_path)?;
    let known_hosts = match sandbox.with_ssh() {
        true => Some(write_known_hosts(&config, &dir)?),
        false => None,
    };
    let instructions = Instructions::new(&sandbox, &opts, known_hosts.as_deref())?;

    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = tokio::sync::oneshot::channel::<Listening>();
    let mut gateway = tokio::spawn(serve_until(config.clone(), stop.clone(), move |l| {
        let _ = ready_tx.send(l);
    }));
    let mut announced = false;
    let served = loop {
        tokio::select! {
            result = &mut gateway => break result,
            listening = &mut ready_rx, if !announced => {
                announced = true;
                if listening.is_ok() {
                    println!("{instructions}");
                }
            }
            // serve_until sees these signals too once listening; before that, `stop` tells it.
            _ = interrupt.recv() => stop.cancel(),
            _ = terminate.recv() => stop.cancel(),
        }
    };

    // Sessions are over: anything of this instance still on a target is a leftover.
    let leftovers = final_reap(&config).await;
    sandbox.stop();
    if !leftovers.is_empty() {
        return Err(DemoError::Leftovers(leftovers));
    }
    match served.map_err(|e| DemoError::Internal(format!("gateway task: {e}")))? {
        Ok(()) => {
            println!(
                "jitgate demo stopped: every session ended, every account dropped, PostgreSQL{} \
                 stopped. The sandbox stays for its logs: {}",
                if with_ssh { " and sshd" } else { "" },
                dir.display()
            );
            Ok(())
        }
        Err(ServeError::Listen { addr, source })
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            // Taken between the preflight check and the gateway's bind.
            let (port, flag) = if addr == format!("127.0.0.1:{}", opts.ssh_port) {
                (opts.ssh_port, "--ssh-port")
            } else {
                (opts.pg_port, "--pg-port")
            };
            Err(DemoError::Port {
                port,
                flag,
                reason: "already in use".into(),
            })
        }
        Err(e) => Err(DemoError::Serve(e)),
    }
}

/// Makes the gateway's SSH host key now (rather than leaving it to the gateway) and writes
/// `<dir>/known_hosts` naming it for the SSH target, so that ssh checks the key instead of
/// asking to trust it on first use.
fn write_known_hosts(config: &Config, dir: &Path) -> Result<PathBuf, DemoError> {
    let host_key = load_or_create_host_key(&config.ssh_host_key)?;
    let line = host_key
        .public_key()
        .to_openssh()
        .map_err(|e| DemoError::Internal(format!("encoding the host key: {e}")))?;
    let known_hosts = dir.join("known_hosts");
    write_file(&known_hosts, &format!("{SSH_TARGET} {line}\n"))?;
    Ok(known_hosts)
}

/// What can be checked before anything is started: ports, packages.
fn preflight(opts: &DemoOptions, with_ssh: bool) -> Result<(), DemoError> {
    check_port(opts.pg_port, "--pg-port")?;
    if with_ssh {
        if opts.ssh_port == opts.pg_port {
            return Err(DemoError::SamePort(opts.pg_port));
        }
        check_port(opts.ssh_port, "--ssh-port")?;
    }
    let missing = missing_packages(with_ssh);
    if !missing.is_empty() {
        return Err(DemoError::MissingPackages(missing));
    }
    Ok(())
}

fn check_port(port: u16, flag: &'static str) -> Result<(), DemoError> {
    match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
        Ok(_) => Ok(()),
        Err(e) => Err(DemoError::Port {
            port,
            flag,
            reason: match e.kind() {
                std::io::ErrorKind::AddrInUse => "already in use".to_string(),
                _ => format!("not available ({e})"),
            },
        }),
    }
}

/// The Debian/Ubuntu packages the demo needs that are not installed.
fn missing_packages(with_ssh: bool) -> Vec<&'static str> {
    let mut missing = Vec::new();
    match pg_sandbox::bindir() {
        None => missing.push("postgresql"),
        // The demo's psql and the one it tells you to run.
        Some(bin) if !bin.join("psql").is_file() || which("psql").is_none() => {
            missing.push("postgresql-client")
        }
        Some(_) => {}
    }
    if with_ssh {
        if !Path::new(SSHD).is_file() {
            missing.push("openssh-server");
        }
        if which("ssh").is_none() || which("ssh-keygen").is_none() {
            missing.push("openssh-client");
        }
    }
    missing
}

/// One last pass over both targets after the gateway stopped: every account of this instance
/// goes, whatever its state (a normal stop has left none). What could not be removed, or
/// checked, as `target: account` lines.
async fn final_reap(config: &Config) -> Vec<String> {
    let mut leftovers = Vec::new();
    for target in config.targets.values() {
        let report = match target {
            Target::Postgres(t) => {
                let provisioner = PgProvisioner::new(t.clone(), config.instance_id.clone());
                reap_postgres(&provisioner, &config.instance_id, |_| false)
                    .await
                    .map_err(|e: JitError| e.to_string())
            }
            Target::Ssh(t) => match LinuxProvisioner::new(t.clone(), config.instance_id.clone()) {
                Ok(provisioner) => reap_linux(&provisioner, &config.instance_id, |_| false)
                    .await
                    .map_err(|e: LinuxError| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match report {
            Ok(report) => {
                for account in report.failed {
                    leftovers.push(format!("{}: {account}", target.name()));
                }
            }
            Err(e) => {
                tracing::error!(target_name = %target.name(), error = %e, "final check for leftover accounts failed");
                leftovers.push(format!("{}: (not checked: {e})", target.name()));
            }
        }
    }
    leftovers
}

/// What the demo started and wrote; `stop` (or Drop) stops the targets.
pub struct Sandbox {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub certs: PathBuf,
    /// Where PostgreSQL's files and log are (`<dir>/postgres`, or a link to a shorter path).
    pub pg_dir: PathBuf,
    pg: Option<ThrowawayPostgres>,
    sshd: Option<ThrowawaySshd>,
    state_dir: Option<PathBuf>,
    _locks: Vec<fs::File>,
}

impl Sandbox {
    /// Prepares the directory, issues certificates, starts the targets, writes config and
    /// policies. On an error, whatever was started is stopped again (Drop).
    fn create(dir: &Path, opts: &DemoOptions, with_ssh: bool) -> Result<Sandbox, DemoError> {
        let mut locks = Vec::new();
        if with_ssh {
            locks.push(lock(Path::new(MACHINE_LOCK), DemoError::MachineBusy)?);
        }
        locks.push(prepare_dir(dir)?);
        let mut sandbox = Sandbox {
            dir: dir.to_path_buf(),
            config_path: dir.join("jitgate.yaml"),
            certs: dir.join("certs"),
            pg_dir: dir.join("postgres"),
            pg: None,
            sshd: None,
            state_dir: None,
            _locks: locks,
        };

        certs::init(&InitOptions {
            dir: sandbox.certs.clone(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            force: false,
        })?;
        let now = time::OffsetDateTime::now_utc();
        for (user, group) in [("alice", "dba"), ("bob", "analyst")] {
            certs::issue(&IssueOptions {
                ca_dir: sandbox.certs.clone(),
                out_dir: sandbox.certs.clone(),
                user: user.into(),
                groups: vec![group.into()],
                trust_domain: certs::DEFAULT_TRUST_DOMAIN.into(),
                not_before: now - time::Duration::minutes(5),
                not_after: now + CERT_TTL,
            })?;
        }
        tracing::info!(dir = %sandbox.certs.display(), "certificates issued: a CA, the gateway's, alice (group dba), bob (group analyst)");

        let pg_dir = postgres_dir(dir)?;
        if pg_dir != sandbox.pg_dir {
            std::os::unix::fs::symlink(&pg_dir, &sandbox.pg_dir)
                .map_err(io_err(format!("linking {}", sandbox.pg_dir.display())))?;
            tracing::info!(dir = %pg_dir.display(), "PostgreSQL's files are outside the sandbox (the postgres user cannot reach it, or its path is too long or too odd for a socket); linked as postgres/");
        }
        let pg = ThrowawayPostgres::start(&pg_dir, free_port()?)?;
        tracing::info!(port = pg.port, log = %sandbox.pg_dir.join("postgres.log").display(), "PostgreSQL started (database orders, roles orders_read and orders_write)");
        let admin_password = dir.join("admin-password");
        write_private(&admin_password, &format!("{}\n", pg.admin_password))?;
        let mut targets = format!(
            "  {PG_TARGET}:\n    postgres:\n      host: 127.0.0.1\n      port: {port}\n      \
             databases: [orders]\n      tls: disable\n      admin:\n        user: {ADMIN_USER}\n        \
             password_file: admin-password\n",
            port = pg.port
        );
        sandbox.pg = Some(pg);

        if with_ssh {
            let sshd_dir = PathBuf::from(format!("/run/jitgate-demo-{}", random_word(10)));
            let sshd = ThrowawaySshd::start(&sshd_dir, free_port()?)?;
            tracing::info!(port = sshd.port, dir = %sshd_dir.display(), "sshd started as SSH target {SSH_TARGET}");
            targets.push_str(&sshd.target_yaml(SSH_TARGET, Path::new(STATE_DIR), UID_RANGE));
            sandbox.sshd = Some(sshd);
            sandbox.state_dir = Some(PathBuf::from(STATE_DIR));
        }

        let ssh_listen = if with_ssh {
            format!("  ssh: 127.0.0.1:{}\n", opts.ssh_port)
        } else {
            String::new()
        };
        write_file(
            &sandbox.config_path,
            &format!(
                "# Written by `jitgate demo`: the gateway for the throwaway targets it started.\n\
                 # Relative paths are resolved against this file's directory.\n\
                 instance_id: {INSTANCE_ID}\n\
                 tls:\n  ca: certs/ca.crt\n  cert: certs/server.crt\n  key: certs/server.key\n  crl: certs/crl.pem\n\
                 listen:\n  postgres: 127.0.0.1:{pg_port}\n{ssh_listen}\
                 policy_dir: policies\n\
                 targets:\n{targets}",
                pg_port = opts.pg_port,
            ),
        )?;
        let policies = dir.join("policies");
        fs::create_dir(&policies).map_err(io_err(format!("creating {}", policies.display())))?;
        write_file(&policies.join("demo.yaml"), &policy_yaml(with_ssh))?;
        Ok(sandbox)
    }

    pub fn with_ssh(&self) -> bool {
        self.sshd.is_some()
    }

    /// Stops sshd (keeping its log as `<dir>/sshd.log`) and PostgreSQL, and removes the SSH
    /// target's state directory. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            sshd.stop();
            let _ = fs::copy(sshd.log_path(), self.dir.join("sshd.log"));
            drop(sshd);
            tracing::info!("sshd stopped");
        }
        if let Some(mut pg) = self.pg.take() {
            pg.stop();
            tracing::info!("PostgreSQL stopped");
        }
        if let Some(state) = self.state_dir.take() {
            if let Err(e) = fs::remove_dir_all(&state) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %state.display(), error = %e, "could not remove the SSH target's state directory");
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The grants: alice (dba) reads and writes orders and logs in to web-1, bob (analyst) reads.
fn policy_yaml(with_ssh: bool) -> String {
    let mut yaml = format!(
        "# Written by `jitgate demo`. `jitgate policy explain --policies policies --user bob \
         --group analyst --target {PG_TARGET}` shows which grant applies, and why.\n\
         grants:\n\
         \x20 - name: orders-dba\n\
         \x20   description: DBAs read and write orders\n\
         \x20   subjects: {{ groups: [dba] }}\n\
         \x20   targets: [{PG_TARGET}]\n\
         \x20   postgres: {{ roles: [orders_read, orders_write] }}\n\
         \x20   max_session: 1h\n\
         \x20 - name: orders-analyst\n\
         \x20   description: Analysts read orders\n\
         \x20   subjects: {{ groups: [analyst] }}\n\
         \x20   targets: [{PG_TARGET}]\n\
         \x20   postgres: {{ roles: [orders_read] }}\n\
         \x20   max_session: 30m\n"
    );
    if with_ssh {
        yaml.push_str(&format!(
            "\x20 - name: web-dba\n\
             \x20   description: DBAs log in to {SSH_TARGET}, with a home directory that is gone at the end\n\
             \x20   subjects: {{ groups: [dba] }}\n\
             \x20   targets: [{SSH_TARGET}]\n\
             \x20   ssh: {{ home: ephemeral }}\n\
             \x20   max_session: 1h\n"
        ));
    }
    yaml
}

/// Takes an exclusive lock on `path` (created if missing) for as long as the file is open.
fn lock(path: &Path, busy: DemoError) -> Result<fs::File, DemoError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(busy),
        Err(fs::TryLockError::Error(e)) => Err(io_err(format!("locking {}", path.display()))(e)),
    }
}

/// Makes `dir` an empty sandbox holding only its (locked) marker. A directory that has other
/// things in it but no marker is refused: it is not ours to delete.
fn prepare_dir(dir: &Path) -> Result<fs::File, DemoError> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(DemoError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {
            let mut entries =
                fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
            if entries.next().is_some() && !dir.join(MARKER).is_file() {
                return Err(DemoError::NotASandbox(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    }
    let mut marker = lock(&dir.join(MARKER), DemoError::SandboxBusy(dir.to_path_buf()))?;
    for entry in fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
        if entry.file_name() == MARKER {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            Ok(t) if t.is_symlink() => {
                // postgres/ → a previous run's cluster outside the sandbox goes with its link;
                // a link to anything else is not followed.
                if let Some(outside) = previous_postgres_dir(&path) {
                    fs::remove_dir_all(&outside)
                        .map_err(io_err(format!("removing {}", outside.display())))?;
                }
                fs::remove_file(&path)
            }
            _ => fs::remove_file(&path),
        };
        removed.map_err(io_err(format!("removing {}", path.display())))?;
    }
    marker
        .set_len(0)
        .and_then(|()| {
            marker.write_all(
                b"This directory is a jitgate demo sandbox: `jitgate demo` empties and refills it.\n",
            )
        })
        .map_err(io_err("writing the sandbox marker"))?;
    Ok(marker)
}

const OUTSIDE_PG_PREFIX: &str = "jitgate-demo-postgres-";

/// Where a sandbox's `postgres` link points, when that is a cluster directory the demo made
/// under the temp dir (see `postgres_dir`).
fn previous_postgres_dir(link: &Path) -> Option<PathBuf> {
    if link.file_name()? != "postgres" {
        return None;
    }
    let target = fs::read_link(link).ok()?;
    let ours = target.parent() == Some(std::env::temp_dir().as_path())
        && target
            .file_name()?
            .to_str()?
            .strip_prefix(OUTSIDE_PG_PREFIX)
            .is_some_and(|word| {
                !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())
            });
    (ours && target.is_dir()).then_some(target)
}

/// `<dir>/postgres`, unless the postgres user (when root) cannot reach it, or its socket path
/// would be too long, or it has characters that postgresql.conf would need quoted: then a
/// fresh directory under /tmp.
fn postgres_dir(dir: &Path) -> Result<PathBuf, DemoError> {
    let inside = dir.join("postgres");
    let plain = inside.to_str().is_some_and(|p| {
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    });
    let reachable = !is_root()
        || Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
    if reachable && plain && inside.as_os_str().len() <= SOCKET_DIR_MAX {
        return Ok(inside);
    }
    Ok(std::env::temp_dir().join(format!("{OUTSIDE_PG_PREFIX}{}", random_word(10))))
}

fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
}

/// Writes a file only its owner can read (0600 from the start, not chmod'ed afterwards).
fn write_private(path: &Path, text: &str) -> Result<(), DemoError> {
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_foreign_directory_is_never_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
        let err = prepare_dir(tmp.path()).unwrap_err();
        assert!(matches!(err, DemoError::NotASandbox(_)), "{err}");
        assert!(err.to_string().contains("refusing to delete it"), "{err}");
        assert!(tmp.path().join("precious.txt").exists());
    }

    #[test]
    fn a_sandbox_is_emptied_but_keeps_its_marker_and_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sandbox");
        let first = prepare_dir(&dir).unwrap();
        fs::create_dir_all(dir.join("certs/x")).unwrap();
        fs::write(dir.join("jitgate.yaml"), "old").unwrap();
        // A second demo in the same directory while the first runs.
        let err = prepare_dir(&dir).unwrap_err();
        assert!(matches!(err, DemoError::SandboxBusy(_)), "{err}");
        drop(first);
        let _second = prepare_dir(&dir).unwrap();
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(MARKER)]);
    }

    #[test]
    fn only_the_demos_own_cluster_outside_goes_with_its_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sandbox");
        let _ = prepare_dir(&dir).unwrap();
        let ours = std::env::temp_dir().join(format!("{OUTSIDE_PG_PREFIX}{}", random_word(10)));
        fs::create_dir(&ours).unwrap();
        std::os::unix::fs::symlink(&ours, dir.join("postgres")).unwrap();
        let other = tmp.path().join("elsewhere");
        fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&other, dir.join("link")).unwrap();
        assert_eq!(previous_postgres_dir(&dir.join("link")), None);
        assert_eq!(
            previous_postgres_dir(&dir.join("postgres")),
            Some(ours.clone())
        );
        drop(prepare_dir(&dir).unwrap());
        assert!(!ours.exists());
        assert!(other.exists());
        assert!(!dir.join("link").exists());
    }

    #[test]
    fn a_file_in_the_way_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            prepare_dir(&file).unwrap_err(),
            DemoError::NotADirectory(_)
        ));
    }

    #[test]
    fn a_taken_port_names_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = check_port(port, "--ssh-port").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "127.0.0.1:{port} is already in use; choose another port with --ssh-port <port>"
            )
        );
    }

    #[test]
    fn missing_packages_are_one_apt_line() {
        let err = DemoError::MissingPackages(vec!["postgresql", "openssh-server"]).to_string();
        assert_eq!(
            err,
            "jitgate demo needs postgresql openssh-server: run `apt-get install -y postgresql \
             openssh-server` as root (scripts/demo.sh does it for you)"
        );
    }

    #[test]
    fn the_policies_are_valid() {
        for with_ssh in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join("demo.yaml"), policy_yaml(with_ssh)).unwrap();
            let set = crate::policy::PolicySet::load_dir(tmp.path()).unwrap();
            assert_eq!(set.len(), if with_ssh { 3 } else { 2 });
        }
    }
}
