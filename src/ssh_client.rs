//! The gateway as an SSH client of its targets (russh): connect with the target's pinned host
//! key, log in with a key, run a command. Below `jit` and `ssh`, which both use it: `jit::linux`
//! (the admin connection that provisions accounts, and its liveness watchdog), `ssh::server`
//! (the upstream login as the JIT account) and `doctor::ssh`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::net::TcpStream;

use crate::config::SshTarget;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Key exchange plus authentication; a target that accepts TCP and then stalls is unreachable.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Keepalives find a dead target (or a dead NAT mapping) on long-lived connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Output of one `exec` kept in memory at most (provisioning scripts print a few lines).
const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// Errors of the SSH client layer; all of them are on the upstream (target) side.
#[derive(Debug, thiserror::Error)]
pub enum SshClientError {
    #[error("cannot reach SSH target {target} ({addr}): {reason}")]
    Unreachable {
        target: String,
        addr: String,
        reason: String,
    },
    #[error(
        "SSH target {target} presented host {presented}, but {expected} is pinned in the \
         config: refusing to connect (if the target's key really changed, update host_key)"
    )]
    HostKeyMismatch {
        target: String,
        expected: String,
        presented: String,
    },
    #[error("cannot use the pinned host key of SSH target {target}: {reason}")]
    PinnedKey { target: String, reason: String },
    #[error("SSH target {target} rejected the key of user {user}")]
    AuthRejected { target: String, user: String },
    #[error("SSH connection to target {target} failed: {reason}")]
    Protocol { target: String, reason: String },
    /// No channel could be opened (the connection is gone): the command has not run.
    /// `exec` does not know the target's name: callers say which target it was.
    #[error("cannot open an SSH channel: {reason}")]
    ChannelOpen { reason: String },
    /// The command may or may not have run.
    #[error("running a command over SSH failed: {reason}")]
    Exec { reason: String },
}

impl SshClientError {
    /// Worth retrying later (the target may come back), as opposed to a refusal that repeats.
    pub fn is_transient(&self) -> bool {
        match self {
            SshClientError::Unreachable { .. }
            | SshClientError::Protocol { .. }
            | SshClientError::ChannelOpen { .. } => true,
            SshClientError::HostKeyMismatch { .. }
            | SshClientError::PinnedKey { .. }
            | SshClientError::AuthRejected { .. }
            | SshClientError::Exec { .. } => false,
        }
    }
}

/// The error type of [`PinnedHost`] as a russh handler: russh's own errors, or the host key
/// check's refusal (which `connect_pinned` turns into [`SshClientError::HostKeyMismatch`]).
#[derive(Debug)]
pub enum PinnedHostError {
    Ssh(russh::Error),
    KeyMismatch { presented: String },
}

impl From<russh::Error> for PinnedHostError {
    fn from(e: russh::Error) -> Self {
        PinnedHostError::Ssh(e)
    }
}

/// A russh client handler that accepts exactly one host key: the target's pinned one.
/// An unknown or changed key ends the handshake (OpenSSH's `StrictHostKeyChecking yes`).
pub struct PinnedHost {
    expected: PublicKey,
    /// What the server presented, kept for the error message.
    presented: Arc<Mutex<Option<String>>>,
}

impl PinnedHost {
    pub fn new(expected: PublicKey) -> Self {
        PinnedHost {
            expected,
            presented: Arc::new(Mutex::new(None)),
        }
    }
}

impl client::Handler for PinnedHost {
    type Error = PinnedHostError;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Only a plain key can match the pin; a host certificate is not what was pinned.
        let (key, what) = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => (key.key_data(), "key"),
            PublicKeyOrCertificate::Certificate(cert) => (cert.public_key(), "certificate for"),
        };
        let presented = key.fingerprint(HashAlg::Sha256).to_string();
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented.clone());
        let matches = matches!(server_public_key, PublicKeyOrCertificate::PublicKey { .. })
            && key == self.expected.key_data();
        if matches {
            Ok(true)
        } else {
            Err(PinnedHostError::KeyMismatch {
                presented: format!("{what} {presented}"),
            })
        }
    }
}

/// AES-GCM first on the hop to the target: with AES instructions (ring uses them) it costs a
/// fraction of ChaCha20-Poly1305's CPU, and the gateway carries two encrypted hops per session.
/// The target still chooses among these by its own configuration.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_128_CTR,
];

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..Default::default()
        },
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    })
}

/// Connects to `target` (TCP with TCP_NODELAY and a 5 s timeout), checks its host key against
/// the pinned one and logs in as `user` with `key`.
pub async fn connect_pinned(
    target: &SshTarget,
    user: &str,
    key: &PrivateKey,
) -> Result<Handle<PinnedHost>, SshClientError> {
    let expected = target.pinned_key().map_err(|e| SshClientError::PinnedKey {
        target: target.name.clone(),
        reason: e.to_string(),
    })?;
    let expected_fp = expected.fingerprint(HashAlg::Sha256).to_string();
    let addr = format!("{}:{}", target.host, target.port);
    let unreachable = |reason: String| SshClientError::Unreachable {
        target: target.name.clone(),
        addr: addr.clone(),
        reason,
    };
    let socket = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "no TCP connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    // russh's connect_stream does not set it; interactive sessions need it.
    socket
        .set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;

    let handler = PinnedHost::new(expected);
    let presented = handler.presented.clone();
    let login = async {
        let mut handle = client::connect_stream(client_config(), socket, handler)
            .await
            .map_err(|e| match e {
                PinnedHostError::KeyMismatch { presented } => SshClientError::HostKeyMismatch {
                    target: target.name.clone(),
                    expected: format!("key {expected_fp}"),
                    presented,
                },
                PinnedHostError::Ssh(e) => {
                    // russh may report the refusal as a plain disconnect; the handler saw why.
                    let seen = presented.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    match seen {
                        Some(fp) if fp != expected_fp => SshClientError::HostKeyMismatch {
                            target: target.name.clone(),
                            expected: format!("key {expected_fp}"),
                            presented: format!("key {fp}"),
                        },
                        Some(_) | None => SshClientError::Protocol {
                            target: target.name.clone(),
                            reason: e.to_string(),
                        },
                    }
                }
            })?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
        let auth = handle
            .authenticate_publickey(user, key)
            .await
            .map_err(|e| SshClientError::Protocol {
                target: target.name.clone(),
                reason: e.to_string(),
            })?;
        if auth.success() {
            Ok(handle)
        } else {
            Err(SshClientError::AuthRejected {
                target: target.name.clone(),
                user: user.to_string(),
            })
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, login).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "SSH handshake and login did not finish within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        ))),
    }
}

/// What a command printed and how it ended. A command killed by a signal gets status
/// 128 + the signal number (as a shell reports it), 255 if the signal is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Stdout as text, lossily.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as one printable line (for error messages).
    pub fn stderr_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let words: Vec<&str> = text.split_whitespace().collect();
        crate::yaml::printable(&words.join(" "))
    }
}

/// Runs `command` in a new session channel, sends `stdin` (then EOF), and collects the output
/// until the channel closes. Output beyond 16 MiB is an error.
pub async fn exec(
    handle: &Handle<PinnedHost>,
    command: &str,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput, SshClientError> {
    let fail = |reason: String| SshClientError::Exec { reason };
    let mut channel =
        handle
            .channel_open_session()
            .await
            .map_err(|e| SshClientError::ChannelOpen {
                reason: e.to_string(),
            })?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| fail(format!("exec request: {e}")))?;
    // Wait for the reply to the exec request before sending input.
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => return Err(fail("exec request refused".to_string())),
            Some(ChannelMsg::WindowAdjusted { .. }) => continue,
            Some(other) => {
                return Err(fail(format!(
                    "unexpected reply to the exec request: {other:?}"
                )))
            }
            None => return Err(fail("channel closed before exec was accepted".to_string())),
        }
    }
    if let Some(input) = stdin {
        channel
            .data(input)
            .await
            .map_err(|e| fail(format!("sending input: {e}")))?;
    }
    channel
        .eof()
        .await
        .map_err(|e| fail(format!("sending EOF: {e}")))?;

    let mut out = ExecOutput {
        status: 255,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
            // Extended data type 1 is stderr (RFC 4254 section 5.2); others are dropped.
            ChannelMsg::ExtendedData { data, ext } => {
                if ext == 1 {
                    out.stderr.extend_from_slice(&data);
                }
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                status = Some(128 + signal_number(&signal_name).unwrap_or(127))
            }
            ChannelMsg::Eof | ChannelMsg::WindowAdjusted { .. } => {}
            ChannelMsg::Close => break,
            other => tracing::debug!(msg = ?other, "ignored channel message during exec"),
        }
        if out.stdout.len() + out.stderr.len() > MAX_EXEC_OUTPUT {
            return Err(fail(format!(
                "the command printed more than {} MiB",
                MAX_EXEC_OUTPUT / (1024 * 1024)
            )));
        }
    }
    match status {
        Some(status) => out.status = status,
        None => return Err(fail("the command ended without an exit status".to_string())),
    }
    Ok(out)
}

/// Linux signal numbers of the names RFC 4254 section 6.10 defines.
fn signal_number(sig: &Sig) -> Option<u32> {
    Some(match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => 12,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_shell_statuses() {
        assert_eq!(signal_number(&Sig::KILL), Some(9));
        assert_eq!(signal_number(&Sig::TERM), Some(15));
        assert_eq!(signal_number(&Sig::Custom("USR2".into())), Some(12));
        assert_eq!(signal_number(&Sig::Custom("WINCH".into())), None);
    }

    #[test]
    fn stderr_line_is_one_printable_line() {
        let out = ExecOutput {
            status: 1,
            stdout: Vec::new(),
            stderr: b"useradd: group 'x' does not exist\n\x1b[31mboom\n".to_vec(),
        };
        assert_eq!(
            out.stderr_line(),
            "useradd: group 'x' does not exist \\u{1b}[31mboom"
        );
    }
}
