//! Reading `jitgate.yaml`: `Config::load`, the top-level validation (identity, TLS files,
//! listeners, audit, timers) and the path and duration helpers the target checks share.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::yaml::{self, Problems};

use super::model::{Config, ConfigError, Listen, Target, TlsFiles};
use super::raw::{RawAudit, RawConfig};
use super::targets::{validate_pg, validate_target, PG_NAME_MAX};
use super::{limits, peers, LocatedMessage};

const DEFAULT_TRUST_DOMAIN: &str = "jitgate.local";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_POLICY_DIR: &str = "policies";
const DEFAULT_AUDIT_DIR: &str = "audit";
const DEFAULT_SSH_HOST_KEY: &str = "ssh_host_ed25519_key";
const DEFAULT_CONTROL_SOCKET: &str = "jitgate.sock";
/// sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included.
const SUN_PATH_MAX: usize = 108;
const INSTANCE_ID_MAX: usize = 32;

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
    let telemetry = super::telemetry::validate(raw.telemetry.as_ref(), problems);

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

pub(super) fn file_path(
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
