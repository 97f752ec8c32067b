//! `jitgate demo`: jitgate's whole job on one machine, in the foreground. Builds a sandbox
//! directory (certificates, config, policies), starts a throwaway PostgreSQL and — as root — a
//! throwaway sshd as targets, runs the gateway in-process (`server::serve_until`) and prints
//! commands to paste; on Ctrl-C or SIGTERM the gateway ends every session and drops every
//! account, then the targets are stopped. The sandbox stays, for its logs.

mod instructions;
mod sandbox;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::certs::CertError;
use crate::config::{Config, ConfigError, Target};
use crate::jit::linux::{LinuxError, LinuxProvisioner};
use crate::jit::postgres::{JitError, PgProvisioner};
use crate::jit::reaper::reap;
use crate::sandbox::postgres as pg_sandbox;
use crate::sandbox::sshd::SSHD;
use crate::sandbox::{is_root, which, SandboxError};
use crate::server::{serve_until, Listening, ServeError};
use crate::ssh::hostkey::{load_or_create_host_key, HostKeyError};

pub use instructions::Instructions;
pub use sandbox::Sandbox;
use sandbox::{write_file, MACHINE_LOCK};

/// Marks a directory as the demo's own (and is locked while a demo runs in it): only a
/// directory holding it is ever emptied.
pub const MARKER: &str = ".jitgate-demo";
/// The instance id written on every account the demo creates.
pub const INSTANCE_ID: &str = "demo";
/// The SSH target's name.
pub const SSH_TARGET: &str = "web-1";
pub const PG_TARGET: &str = "orders";

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
                reap(&*provisioner, &config.instance_id, |_| false)
                    .await
                    .map_err(|e: JitError| e.to_string())
            }
            Target::Ssh(t) => match LinuxProvisioner::new(t.clone(), config.instance_id.clone()) {
                Ok(provisioner) => reap(&*provisioner, &config.instance_id, |_| false)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
}
