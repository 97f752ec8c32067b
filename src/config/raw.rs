//! The file as written: serde's view of `jitgate.yaml`, every value still `Spanned` so that
//! validation (`load`, `targets`) can point at the line and column of a bad one.

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::yaml::SpannedMap;

use super::limits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) instance_id: Spanned<String>,
    pub(super) trust_domain: Option<Spanned<String>>,
    pub(super) tls: RawTlsFiles,
    pub(super) listen: Option<RawListen>,
    pub(super) handshake_timeout: Option<Spanned<String>>,
    pub(super) policy_dir: Option<Spanned<String>>,
    pub(super) audit: Option<RawAudit>,
    pub(super) reap_interval: Option<Spanned<String>>,
    pub(super) watchdog_grace: Option<Spanned<String>>,
    pub(super) session_warnings: Option<Vec<Spanned<String>>>,
    pub(super) ssh_host_key: Option<Spanned<String>>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) limits: Option<limits::RawLimits>,
    pub(super) peer_id: Option<Spanned<String>>,
    pub(super) peers: Option<SpannedMap<Spanned<String>>>,
    pub(super) telemetry: Option<super::telemetry::RawTelemetry>,
    pub(super) targets: Option<SpannedMap<Spanned<RawTarget>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) dir: Option<Spanned<String>>,
    pub(super) on_failure: Option<Spanned<String>>,
    /// The shared store: the same keys as a target's `postgres:`.
    pub(super) postgres: Option<Spanned<RawPgTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsFiles {
    pub(super) ca: Spanned<String>,
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
    pub(super) crl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) postgres: Option<Spanned<String>>,
    pub(super) ssh: Option<Spanned<String>>,
}

/// One optional field per kind; validation insists on exactly one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) postgres: Option<Spanned<RawPgTarget>>,
    pub(super) ssh: Option<Spanned<RawSshTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshTarget {
    pub(super) host: Spanned<String>,
    pub(super) port: Option<Spanned<String>>,
    pub(super) host_key: Option<Spanned<String>>,
    pub(super) host_key_file: Option<Spanned<String>>,
    pub(super) admin: Spanned<RawSshAdmin>,
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) uid_range: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshAdmin {
    pub(super) user: Spanned<String>,
    pub(super) key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPgTarget {
    pub(super) host: Spanned<String>,
    pub(super) port: Option<Spanned<String>>,
    pub(super) databases: Spanned<Vec<Spanned<String>>>,
    pub(super) tls: Spanned<String>,
    pub(super) tls_ca: Option<Spanned<String>>,
    pub(super) admin: Spanned<RawPgAdmin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPgAdmin {
    pub(super) user: Spanned<String>,
    pub(super) database: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
}
