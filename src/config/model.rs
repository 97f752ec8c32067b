//! The validated configuration: what the rest of the gateway reads (`Config` and its parts),
//! and the errors of this layer. Nothing here is checked again after `load`.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;
use crate::yaml::MessageList;

use super::peers;
use super::LocatedMessage;

/// The whole gateway configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from, as given.
    pub path: PathBuf,
    /// Written into each JIT account's comment: the reaper only touches its own.
    pub instance_id: String,
    /// SPIFFE trust domain of issued certificates (`spiffe://<trust_domain>/user/<name>`).
    pub trust_domain: String,
    pub tls: TlsFiles,
    pub listen: Listen,
    pub handshake_timeout: Duration,
    pub policy_dir: PathBuf,
    /// The audit log and recordings (`audit:`; `audit.dir` defaults to `audit` beside the
    /// config).
    pub audit: crate::audit::AuditConfig,
    pub reap_interval: Duration,
    /// How long an SSH target's watchdog waits after this gateway's connection ended before
    /// it removes this instance's accounts itself (`watchdog_grace:`, default 30s): a gateway
    /// that reconnects within it takes its liveness lock back and nothing is removed.
    pub watchdog_grace: Duration,
    /// How long before a session's end (max_session or certificate expiry) its user is
    /// warned, longest first; `session_warnings: []` warns never. Default 5m and 1m.
    pub session_warnings: Vec<Duration>,
    /// The gateway's own persistent SSH host key (OpenSSH private key file), resolved against
    /// the config's directory; created on first use by `ssh::hostkey::load_or_create_host_key`.
    pub ssh_host_key: PathBuf,
    /// The gateway's own state on this host (`state_dir:`; default: the config's directory):
    /// the operators' locks (`locks.json`). Not a target's `state_dir`, which is on the target.
    pub state_dir: PathBuf,
    /// The control socket `jitgate sessions` and `jitgate lock` talk to (`control_socket:`;
    /// default `jitgate.sock` in `state_dir`).
    pub control_socket: PathBuf,
    /// `limits:` — sessions in total and per identity, handshakes per source, TCP keepalive,
    /// concurrent mints per target.
    pub limits: crate::limits::LimitsConfig,
    /// `peer_id:` and `peers:`: the replicas a CancelRequest for another's session goes to.
    pub peering: Option<peers::Peering>,
    /// `telemetry:`: the OTLP endpoint, if any (OpenTelemetry is off without one).
    pub telemetry: super::telemetry::TelemetryConfig,
    pub targets: BTreeMap<String, Target>,
}

/// The gateway's TLS material; relative paths are already resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that signs user (client) certificates.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listen {
    pub postgres: Option<SocketAddr>,
    pub ssh: Option<SocketAddr>,
}

/// A configured database or host; exactly one kind per target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Postgres(PgTarget),
    Ssh(SshTarget),
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Postgres(pg) => &pg.name,
            Target::Ssh(ssh) => &ssh.name,
        }
    }
}

/// A Linux host reached over SSH; JIT accounts are created on it with `useradd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The target's pinned host key: any other key is a refusal, never a prompt.
    pub host_key: HostKeySource,
    pub admin: SshAdmin,
    /// Absolute path on the target: persistent homes (`<state_dir>/home/<person>`), ephemeral
    /// homes (`<state_dir>/tmp-home/<account>`), the UID counter and the provisioning lock.
    pub state_dir: String,
    /// Inclusive range JIT UIDs are taken from.
    pub uid_range: (u32, u32),
}

/// Where the pinned host key comes from: `host_key` (inline) or `host_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeySource {
    /// An OpenSSH public key line, `ssh-ed25519 AAAA… [comment]` (checked at load).
    Inline(String),
    /// A `.pub` file in OpenSSH format, read when the key is needed.
    File(PathBuf),
}

/// The account jitgate provisions JIT accounts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAdmin {
    /// `root`, or an account whose every provisioning script runs through `sudo -n`.
    pub user: String,
    /// OpenSSH private key file (unencrypted), used only for provisioning.
    pub key_file: PathBuf,
}

impl SshTarget {
    /// The pinned host key, parsed (the file, if any, is read now). The comment is ignored when
    /// keys are compared.
    pub fn pinned_key(&self) -> Result<russh::keys::PublicKey, ConfigError> {
        match &self.host_key {
            HostKeySource::Inline(line) => {
                parse_public_key_line(line).map_err(|reason| ConfigError::PinnedKey {
                    target: self.name.clone(),
                    source_name: "host_key".to_string(),
                    reason,
                })
            }
            HostKeySource::File(path) => {
                let source_name = format!("host_key_file {}", path.display());
                let text = fs::read_to_string(path).map_err(|e| ConfigError::PinnedKey {
                    target: self.name.clone(),
                    source_name: source_name.clone(),
                    reason: e.to_string(),
                })?;
                // The first line that is not blank or a `#` comment.
                let line = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .unwrap_or_default();
                parse_public_key_line(line).map_err(|reason| ConfigError::PinnedKey {
                    target: self.name.clone(),
                    source_name,
                    reason,
                })
            }
        }
    }
}

/// One OpenSSH public key line (`<algorithm> <base64> [comment]`).
pub(super) fn parse_public_key_line(line: &str) -> Result<russh::keys::PublicKey, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("no key found".to_string());
    }
    russh::keys::PublicKey::from_openssh(line)
        .map_err(|e| format!("not an OpenSSH public key (`ssh-ed25519 AAAA... comment`): {e}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// At least one; the first is the default database.
    pub databases: Vec<String>,
    pub tls: UpstreamTls,
    pub admin: PgAdmin,
}

/// How the gateway's connections to the upstream server are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    Require,
    VerifyFull { ca: PathBuf },
}

/// The account jitgate mints JIT roles with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgAdmin {
    pub user: String,
    pub database: String,
    pub password: PasswordSource,
}

/// Where the admin password is read from; the config holds the source, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    /// Reads the password now. One trailing newline (`\n` or `\r\n`) is removed; an empty
    /// password is an error. Errors name the file or variable, never the content.
    pub fn read(&self) -> Result<Secret<String>, ConfigError> {
        match self {
            PasswordSource::File(path) => {
                let mut text =
                    fs::read_to_string(path).map_err(|error| ConfigError::PasswordFile {
                        path: path.clone(),
                        error,
                    })?;
                trim_one_newline(&mut text);
                if text.is_empty() {
                    return Err(ConfigError::PasswordEmpty {
                        source_name: format!("password file {}", path.display()),
                    });
                }
                Ok(Secret::new(text))
            }
            PasswordSource::Env(var) => match std::env::var(var) {
                Ok(mut text) => {
                    trim_one_newline(&mut text);
                    if text.is_empty() {
                        return Err(ConfigError::PasswordEmpty {
                            source_name: format!("environment variable {var}"),
                        });
                    }
                    Ok(Secret::new(text))
                }
                Err(std::env::VarError::NotPresent) => {
                    Err(ConfigError::PasswordEnvUnset { var: var.clone() })
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(ConfigError::PasswordEnvNotUnicode { var: var.clone() })
                }
            },
        }
    }
}

fn trim_one_newline(text: &mut String) {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
}

/// Errors of the configuration layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// One `file:line:col: message` per problem.
    #[error("{}", MessageList(.0))]
    Invalid(Vec<LocatedMessage>),
    #[error("cannot read password file {}: {error}", path.display())]
    PasswordFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("password environment variable {var} is not set")]
    PasswordEnvUnset { var: String },
    #[error("password environment variable {var} is not valid UTF-8")]
    PasswordEnvNotUnicode { var: String },
    #[error("the password in {source_name} is empty")]
    PasswordEmpty { source_name: String },
    #[error("target {target}: cannot use the pinned host key from {source_name}: {reason}")]
    PinnedKey {
        target: String,
        source_name: String,
        reason: String,
    },
}
