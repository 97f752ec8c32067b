//! The gateway's own configuration (`jitgate.yaml`): identity, TLS files, listeners, targets.
//!
//! Read once at start (and on reload), fully validated here so that later steps never meet a
//! bad value; files it names are opened (and their absence reported) by the steps that use them.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::secret::Secret;
use crate::yaml::{self, MessageList, Problems, SpannedMap};

pub use crate::yaml::LocatedMessage;

const DEFAULT_TRUST_DOMAIN: &str = "jitgate.local";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_POLICY_DIR: &str = "policies";
const DEFAULT_AUDIT_DIR: &str = "audit";
const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_SSH_PORT: u16 = 22;
const DEFAULT_SSH_HOST_KEY: &str = "ssh_host_ed25519_key";
const DEFAULT_STATE_DIR: &str = "/var/lib/jitgate";
const DEFAULT_CONTROL_SOCKET: &str = "jitgate.sock";
/// sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included.
const SUN_PATH_MAX: usize = 108;
const DEFAULT_UID_RANGE: (u32, u32) = (200_000, 299_999);
/// Below this are system and ordinary login accounts (Debian's UID_MIN is 1000).
const UID_RANGE_MIN: u32 = 1000;
/// Some tools still treat UIDs as signed 32-bit values; (uid_t)-1 means "no change".
const UID_RANGE_MAX: u32 = 2_147_483_646;
/// Longest user name `useradd` accepts (and the longest JIT account name).
const POSIX_NAME_MAX: usize = 32;
const STATE_DIR_MAX: usize = 200;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const PG_NAME_MAX: usize = 63;
const INSTANCE_ID_MAX: usize = 32;

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
    pub telemetry: telemetry::TelemetryConfig,
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
fn parse_public_key_line(line: &str) -> Result<russh::keys::PublicKey, String> {
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

impl Config {
    /// Reads and validates `path`. All problems found are reported, each as `path:line:col: …`
    /// (serde stops at the first unknown field or wrong type, so those come one at a time).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_yaml(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its directory).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = match yaml::parse::<RawConfig>(path, text) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(ConfigError::Invalid(vec![LocatedMessage {
                    file: path.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: "the configuration is empty (instance_id, tls are required)"
                        .to_string(),
                }]))
            }
            Err(located) => return Err(ConfigError::Invalid(vec![located])),
        };
        let mut problems = Problems::new(path);
        match validate(path, raw, &mut problems) {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                let mut found = problems.into_vec();
                if found.is_empty() {
                    // Every rejection above records why; this only guards that invariant.
                    found.push(LocatedMessage {
                        file: path.to_path_buf(),
                        line: 0,
                        column: 0,
                        message: "invalid configuration".to_string(),
                    });
                }
                Err(ConfigError::Invalid(found))
            }
        }
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.get(name)
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance_id: Spanned<String>,
    trust_domain: Option<Spanned<String>>,
    tls: RawTlsFiles,
    listen: Option<RawListen>,
    handshake_timeout: Option<Spanned<String>>,
    policy_dir: Option<Spanned<String>>,
    audit: Option<RawAudit>,
    reap_interval: Option<Spanned<String>>,
    watchdog_grace: Option<Spanned<String>>,
    session_warnings: Option<Vec<Spanned<String>>>,
    ssh_host_key: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    limits: Option<limits::RawLimits>,
    telemetry: Option<telemetry::RawTelemetry>,
    peer_id: Option<Spanned<String>>,
    peers: Option<SpannedMap<Spanned<String>>>,
    targets: Option<SpannedMap<Spanned<RawTarget>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    dir: Option<Spanned<String>>,
    on_failure: Option<Spanned<String>>,
    /// The shared store: the same keys as a target's `postgres:`.
    postgres: Option<Spanned<RawPgTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsFiles {
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    crl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    postgres: Option<Spanned<String>>,
    ssh: Option<Spanned<String>>,
}

/// One optional field per kind; validation insists on exactly one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    postgres: Option<Spanned<RawPgTarget>>,
    ssh: Option<Spanned<RawSshTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshTarget {
    host: Spanned<String>,
    port: Option<Spanned<String>>,
    host_key: Option<Spanned<String>>,
    host_key_file: Option<Spanned<String>>,
    admin: Spanned<RawSshAdmin>,
    state_dir: Option<Spanned<String>>,
    uid_range: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSshAdmin {
    user: Spanned<String>,
    key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgTarget {
    host: Spanned<String>,
    port: Option<Spanned<String>>,
    databases: Spanned<Vec<Spanned<String>>>,
    tls: Spanned<String>,
    tls_ca: Option<Spanned<String>>,
    admin: Spanned<RawPgAdmin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPgAdmin {
    user: Spanned<String>,
    database: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
}

// ---- validation ----------------------------------------------------------------------------

/// An `instance_id`: 1 to 32 of a-z, 0-9 and `-` (it names files and markers, so never a path).
pub fn is_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= INSTANCE_ID_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn validate(path: &Path, raw: RawConfig, problems: &mut Problems<'_>) -> Option<Config> {
    let base = path.parent().unwrap_or(Path::new(""));

    let instance_id = problems.check(&raw.instance_id, |id| {
        if !is_instance_id(id) {
            Err(format!(
                "instance_id `{}` must be 1 to {INSTANCE_ID_MAX} characters of a-z, 0-9 and `-`",
                yaml::printable(id)
            ))
        } else {
            Ok(id.clone())
        }
    });

    let trust_domain = match &raw.trust_domain {
        None => Some(DEFAULT_TRUST_DOMAIN.to_string()),
        Some(td) => problems.check(td, |td| {
            // SPIFFE trust domain names: lowercase letters, digits, `.`, `-`, `_`.
            let ok_chars = td.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
            if td.is_empty() || td.len() > 255 || !ok_chars {
                Err(format!(
                    "trust_domain `{}` must be a SPIFFE trust domain (a-z, 0-9, `.`, `-`, `_`)",
                    yaml::printable(td)
                ))
            } else {
                Ok(td.clone())
            }
        }),
    };

    let tls = {
        let ca = file_path(base, "tls.ca", &raw.tls.ca, problems);
        let cert = file_path(base, "tls.cert", &raw.tls.cert, problems);
        let key = file_path(base, "tls.key", &raw.tls.key, problems);
        let crl = match &raw.tls.crl {
            None => Some(None),
            Some(crl) => file_path(base, "tls.crl", crl, problems).map(Some),
        };
        match (ca, cert, key, crl) {
            (Some(ca), Some(cert), Some(key), Some(crl)) => Some(TlsFiles { ca, cert, key, crl }),
            _ => None,
        }
    };

    let listen = {
        let postgres = listen_addr(
            "listen.postgres",
            "127.0.0.1:6432",
            raw.listen.as_ref().and_then(|l| l.postgres.as_ref()),
            problems,
        );
        let ssh = listen_addr(
            "listen.ssh",
            "127.0.0.1:2222",
            raw.listen.as_ref().and_then(|l| l.ssh.as_ref()),
            problems,
        );
        match (postgres, ssh) {
            (Some(postgres), Some(ssh)) => Some(Listen { postgres, ssh }),
            _ => None,
        }
    };
    let ssh_host_key = match &raw.ssh_host_key {
        None => Some(resolve(base, DEFAULT_SSH_HOST_KEY)),
        Some(path) => file_path(base, "ssh_host_key", path, problems),
    };

    let gateway_state_dir = match &raw.state_dir {
        // `--config jitgate.yaml`: the current directory.
        None if base.as_os_str().is_empty() => Some(PathBuf::from(".")),
        None => Some(base.to_path_buf()),
        Some(dir) => file_path(base, "state_dir", dir, problems),
    };
    let control_socket = match (&raw.control_socket, &gateway_state_dir) {
        (None, Some(dir)) => Some(dir.join(DEFAULT_CONTROL_SOCKET)),
        (None, None) => None,
        (Some(path), _) => file_path(base, "control_socket", path, problems),
    };
    // A Unix socket's path must fit sun_path (108 bytes with its NUL on Linux).
    let control_socket = control_socket.and_then(|p| {
        if p.as_os_str().len() >= SUN_PATH_MAX {
            let message = format!(
                "control_socket {} is {} bytes long; a Unix socket path must be shorter than \
                 {SUN_PATH_MAX} (set control_socket to a shorter path)",
                p.display(),
                p.as_os_str().len()
            );
            let at = match (&raw.control_socket, &raw.state_dir) {
                (Some(at), _) | (None, Some(at)) => at,
                (None, None) => &raw.instance_id,
            };
            problems.check(at, |_| Err::<PathBuf, _>(message))
        } else {
            Some(p)
        }
    });

    let handshake_timeout = duration(
        "handshake_timeout",
        raw.handshake_timeout.as_ref(),
        DEFAULT_HANDSHAKE_TIMEOUT,
        problems,
    );
    let reap_interval = duration(
        "reap_interval",
        raw.reap_interval.as_ref(),
        DEFAULT_REAP_INTERVAL,
        problems,
    );
    let watchdog_grace = duration(
        "watchdog_grace",
        raw.watchdog_grace.as_ref(),
        crate::jit::liveness::DEFAULT_WATCHDOG_GRACE,
        problems,
    );
    let session_warnings = match &raw.session_warnings {
        None => Some(crate::session::lifetime::DEFAULT_WARNINGS.to_vec()),
        Some(leads) => leads
            .iter()
            .map(|lead| duration("session_warnings", Some(lead), Duration::ZERO, problems))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Option<Vec<_>>>(),
    };
    let policy_dir = dir_path(
        base,
        "policy_dir",
        raw.policy_dir.as_ref(),
        DEFAULT_POLICY_DIR,
        problems,
    );
    let audit = validate_audit(base, raw.audit.as_ref(), problems);
    let limits = limits::validate(raw.limits.as_ref(), problems);
    let peering = peers::validate(raw.peer_id.as_ref(), raw.peers.as_ref(), problems);
    let telemetry = telemetry::validate(raw.telemetry.as_ref(), problems);

    let mut targets = BTreeMap::new();
    let raw_targets = raw.targets.as_ref().map_or(&[][..], |t| &t.0);
    for (name, target) in raw_targets {
        let name_ok = problems
            .check(name, |n| yaml::simple_name("target name", n, PG_NAME_MAX))
            .is_some();
        if let Some(target) = validate_target(base, &name.value, target, problems) {
            if name_ok {
                targets.insert(name.value.clone(), target);
            }
        }
    }

    Some(Config {
        path: path.to_path_buf(),
        instance_id: instance_id?,
        trust_domain: trust_domain?,
        tls: tls?,
        listen: listen?,
        handshake_timeout: handshake_timeout?,
        policy_dir: policy_dir?,
        audit: audit?,
        reap_interval: reap_interval?,
        watchdog_grace: watchdog_grace?,
        session_warnings: session_warnings?,
        ssh_host_key: ssh_host_key?,
        state_dir: gateway_state_dir?,
        control_socket: control_socket?,
        limits: limits?,
        peering: peering?,
        telemetry: telemetry?,
        targets,
    })
}

fn validate_audit(
    base: &Path,
    raw: Option<&RawAudit>,
    problems: &mut Problems<'_>,
) -> Option<crate::audit::AuditConfig> {
    use crate::audit::OnFailure;
    let dir = dir_path(
        base,
        "audit.dir",
        raw.and_then(|a| a.dir.as_ref()),
        DEFAULT_AUDIT_DIR,
        problems,
    );
    let on_failure = match raw.and_then(|a| a.on_failure.as_ref()) {
        None => Some(OnFailure::FailClosed),
        Some(mode) => problems.check(mode, |m| match m.as_str() {
            "fail_closed" => Ok(OnFailure::FailClosed),
            "fail_open" => Ok(OnFailure::FailOpen),
            other => Err(format!(
                "audit.on_failure must be fail_closed (refuse sessions while events cannot be \
                 written) or fail_open, not `{}`",
                yaml::printable(other)
            )),
        }),
    };
    let postgres = match raw.and_then(|a| a.postgres.as_ref()) {
        None => Some(None),
        Some(store) => validate_pg(base, "audit.postgres", store, problems).map(Some),
    };
    Some(crate::audit::AuditConfig {
        dir: dir?,
        on_failure: on_failure?,
        postgres: postgres?,
    })
}

/// An optional `IP:port` listener address.
fn listen_addr(
    field: &str,
    example: &str,
    raw: Option<&Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Option<Option<SocketAddr>> {
    match raw {
        None => Some(None),
        Some(addr) => problems
            .check(addr, |addr| {
                addr.trim().parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "{field} `{}` must be IP:port, e.g. {example}",
                        yaml::printable(addr)
                    )
                })
            })
            .map(Some),
    }
}

fn validate_target(
    base: &Path,
    name: &str,
    raw: &Spanned<RawTarget>,
    problems: &mut Problems<'_>,
) -> Option<Target> {
    // Exhaustive destructuring: a new kind must be added to this check.
    let RawTarget { postgres, ssh } = &raw.value;
    match (postgres, ssh) {
        (Some(pg), None) => validate_pg(base, name, pg, problems).map(Target::Postgres),
        (None, Some(ssh)) => validate_ssh(base, name, ssh, problems).map(Target::Ssh),
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                format!(
                    "target `{}` needs exactly one kind: postgres, ssh (both are given)",
                    yaml::printable(name)
                ),
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                format!(
                    "target `{}` needs exactly one kind: postgres, ssh",
                    yaml::printable(name)
                ),
            );
            None
        }
    }
}

fn validate_host(raw: &Spanned<String>, problems: &mut Problems<'_>) -> Option<String> {
    problems.check(raw, |h| {
        if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!(
                "host `{}` must be a host name or IP address",
                yaml::printable(h)
            ))
        } else {
            Ok(h.clone())
        }
    })
}

fn validate_port(
    raw: Option<&Spanned<String>>,
    default: u16,
    problems: &mut Problems<'_>,
) -> Option<u16> {
    match raw {
        None => Some(default),
        Some(port) => problems.check(port, |p| {
            yaml::integer_in("port", p, 1, u32::from(u16::MAX))
                .and_then(|p| u16::try_from(p).map_err(|_| "port is out of range".to_string()))
        }),
    }
}

fn validate_ssh(
    base: &Path,
    name: &str,
    raw: &Spanned<RawSshTarget>,
    problems: &mut Problems<'_>,
) -> Option<SshTarget> {
    let ssh = &raw.value;
    let host = validate_host(&ssh.host, problems);
    let port = validate_port(ssh.port.as_ref(), DEFAULT_SSH_PORT, problems);
    let host_key = match (&ssh.host_key, &ssh.host_key_file) {
        (Some(line), None) => problems.check(line, |l| {
            parse_public_key_line(l)
                .map(|_| HostKeySource::Inline(l.trim().to_string()))
                .map_err(|reason| format!("host_key: {reason}"))
        }),
        (None, Some(file)) => {
            file_path(base, "host_key_file", file, problems).map(HostKeySource::File)
        }
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                "ssh target needs exactly one of host_key, host_key_file (both are given)",
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                "ssh target needs exactly one of host_key, host_key_file: the target's host key \
                 is pinned (e.g. the content of /etc/ssh/ssh_host_ed25519_key.pub)",
            );
            None
        }
    };
    let admin = {
        let admin = &ssh.admin.value;
        let user = problems.check(&admin.user, |u| {
            posix_name("admin.user", u).map(|()| u.clone())
        });
        let key_file = file_path(base, "admin.key_file", &admin.key_file, problems);
        match (user, key_file) {
            (Some(user), Some(key_file)) => Some(SshAdmin { user, key_file }),
            _ => None,
        }
    };
    let state_dir = match &ssh.state_dir {
        None => Some(DEFAULT_STATE_DIR.to_string()),
        Some(dir) => problems.check(dir, |d| state_dir(d)),
    };
    let uid_range = match &ssh.uid_range {
        None => Some(DEFAULT_UID_RANGE),
        Some(range) => problems.check(range, |r| uid_range(r)),
    };
    Some(SshTarget {
        name: name.to_string(),
        host: host?,
        port: port?,
        host_key: host_key?,
        admin: admin?,
        state_dir: state_dir?,
        uid_range: uid_range?,
    })
}

/// A name `useradd` accepts everywhere: `[a-z_][a-z0-9_.-]*`, at most 32 characters.
fn posix_name(what: &str, text: &str) -> Result<(), String> {
    let mut chars = text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || text.len() > POSIX_NAME_MAX {
        return Err(format!(
            "{what} `{}` must be a Linux user name ([a-z_][a-z0-9_.-]*, at most \
             {POSIX_NAME_MAX} characters)",
            yaml::printable(text)
        ));
    }
    Ok(())
}

/// An absolute path of plain characters (it is used in shell scripts on the target, escaped,
/// and in sshd's StrictModes checks); a trailing `/` is dropped.
fn state_dir(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let plain = trimmed
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    // `split` yields "" before the leading `/`; any later empty part is a `//`.
    let dotted = trimmed
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..");
    if !text.starts_with('/')
        || trimmed.is_empty()
        || trimmed.len() > STATE_DIR_MAX
        || !plain
        || dotted
    {
        return Err(format!(
            "state_dir `{}` must be an absolute path below / of A-Z, a-z, 0-9, `_`, `.`, `-` \
             (no `.` or `..` parts, at most {STATE_DIR_MAX} characters)",
            yaml::printable(text)
        ));
    }
    Ok(trimmed.to_string())
}

/// `FIRST-LAST`, inclusive, within 1000..=2147483646.
pub(crate) fn uid_range(text: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "uid_range `{}` must be FIRST-LAST with {UID_RANGE_MIN} <= FIRST <= LAST <= \
             {UID_RANGE_MAX}, e.g. 200000-299999",
            yaml::printable(text)
        )
    };
    let (first, last) = text.trim().split_once('-').ok_or_else(bad)?;
    let parse = |s: &str| -> Result<u32, String> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u32>().map_err(|_| bad())
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first < UID_RANGE_MIN || last > UID_RANGE_MAX || first > last {
        return Err(bad());
    }
    Ok((first, last))
}

fn validate_pg(
    base: &Path,
    name: &str,
    raw: &Spanned<RawPgTarget>,
    problems: &mut Problems<'_>,
) -> Option<PgTarget> {
    let pg = &raw.value;
    let host = validate_host(&pg.host, problems);
    let port = validate_port(pg.port.as_ref(), DEFAULT_PG_PORT, problems);

    let mut databases = Vec::new();
    let mut databases_ok = true;
    if pg.databases.value.is_empty() {
        problems.at(
            pg.databases.referenced,
            "databases must list at least one database",
        );
        databases_ok = false;
    }
    for db in &pg.databases.value {
        let checked = problems.check(db, |d| {
            yaml::plain_text("database", d, PG_NAME_MAX)?;
            // `dbname=target/database` is split at the first `/`.
            if d.contains('/') {
                return Err(format!(
                    "database `{}` must not contain `/`",
                    yaml::printable(d)
                ));
            }
            Ok(d.clone())
        });
        match checked {
            Some(d) if databases.contains(&d) => {
                problems.at(
                    db.referenced,
                    format!("database `{}` is listed twice", yaml::printable(&d)),
                );
                databases_ok = false;
            }
            Some(d) => databases.push(d),
            None => databases_ok = false,
        }
    }

    let tls = problems
        .check(&pg.tls, |t| match t.as_str() {
            "disable" => Ok(TlsMode::Disable),
            "require" => Ok(TlsMode::Require),
            "verify-full" => Ok(TlsMode::VerifyFull),
            _ => Err(format!(
                "tls must be one of disable, require, verify-full (got `{}`)",
                yaml::printable(t)
            )),
        })
        .and_then(|mode| match (mode, &pg.tls_ca) {
            (TlsMode::VerifyFull, Some(ca)) => {
                file_path(base, "tls_ca", ca, problems).map(|ca| UpstreamTls::VerifyFull { ca })
            }
            (TlsMode::VerifyFull, None) => {
                problems.at(
                    pg.tls.referenced,
                    "tls_ca is required when tls is verify-full",
                );
                None
            }
            (TlsMode::Disable | TlsMode::Require, Some(ca)) => {
                problems.at(ca.referenced, "tls_ca is only used when tls is verify-full");
                None
            }
            (TlsMode::Disable, None) => Some(UpstreamTls::Disable),
            (TlsMode::Require, None) => Some(UpstreamTls::Require),
        });

    let admin = validate_admin(base, &pg.admin, databases.first(), problems);

    if !databases_ok {
        return None;
    }
    Some(PgTarget {
        name: name.to_string(),
        host: host?,
        port: port?,
        databases,
        tls: tls?,
        admin: admin?,
    })
}

#[derive(Debug, Clone, Copy)]
enum TlsMode {
    Disable,
    Require,
    VerifyFull,
}

fn validate_admin(
    base: &Path,
    raw: &Spanned<RawPgAdmin>,
    first_database: Option<&String>,
    problems: &mut Problems<'_>,
) -> Option<PgAdmin> {
    let admin = &raw.value;
    let user = problems.check(&admin.user, |u| {
        yaml::plain_text("admin.user", u, PG_NAME_MAX).map(|()| u.clone())
    });
    let database = match &admin.database {
        Some(db) => problems.check(db, |d| {
            yaml::plain_text("admin.database", d, PG_NAME_MAX).map(|()| d.clone())
        }),
        // When `databases` is empty that is reported already.
        None => first_database.cloned(),
    };
    let password = match (&admin.password_file, &admin.password_env) {
        (Some(file), None) => {
            file_path(base, "password_file", file, problems).map(PasswordSource::File)
        }
        (None, Some(var)) => problems.check(var, |v| {
            let mut chars = v.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Ok(PasswordSource::Env(v.clone()))
            } else {
                Err(format!(
                    "password_env `{}` must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                    yaml::printable(v)
                ))
            }
        }),
        (Some(_), Some(_)) => {
            problems.at(
                raw.referenced,
                "admin needs exactly one of password_file, password_env (both are given)",
            );
            None
        }
        (None, None) => {
            problems.at(
                raw.referenced,
                "admin needs exactly one of password_file, password_env",
            );
            None
        }
    };
    Some(PgAdmin {
        user: user?,
        database: database?,
        password: password?,
    })
}

fn duration(
    field: &str,
    raw: Option<&Spanned<String>>,
    default: Duration,
    problems: &mut Problems<'_>,
) -> Option<Duration> {
    match raw {
        None => Some(default),
        Some(value) => problems.check(value, |text| {
            yaml::duration_in(
                field,
                text,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )
        }),
    }
}

fn file_path(
    base: &Path,
    field: &str,
    raw: &Spanned<String>,
    problems: &mut Problems<'_>,
) -> Option<PathBuf> {
    problems.check(raw, |p| {
        if p.trim().is_empty() {
            Err(format!("{field} must not be empty"))
        } else {
            Ok(resolve(base, p))
        }
    })
}

fn dir_path(
    base: &Path,
    field: &str,
    raw: Option<&Spanned<String>>,
    default: &str,
    problems: &mut Problems<'_>,
) -> Option<PathBuf> {
    match raw {
        None => Some(resolve(base, default)),
        Some(raw) => file_path(base, field, raw, problems),
    }
}

fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

mod limits;
pub mod peers;
pub mod telemetry;
#[cfg(test)]
mod tests;
