//! Throwaway targets for `jitgate demo` and the tests: a PostgreSQL cluster and an OpenSSH
//! sshd, each in a directory of its own on a loopback port, stopped when dropped.

pub mod postgres;
pub mod sshd;

use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} not found: {hint}")]
    Missing {
        what: &'static str,
        hint: &'static str,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// Runs a command; its combined output on failure.
pub(crate) fn run(cmd: &mut Command) -> Result<String, SandboxError> {
    let out = cmd
        .output()
        .map_err(io_err(format!("running {:?}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            command: format!("{cmd:?}"),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, SandboxError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("binding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("reading a free port"))?
        .port())
}

/// Letters and digits from the OS's randomness.
pub fn random_word(len: usize) -> String {
    crate::jit::lease::random_suffix(len)
}
