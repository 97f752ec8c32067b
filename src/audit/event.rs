//! The audit event schema, version 1 (`docs/audit-events.md` documents every field).
//!
//! A line is one JSON object: the envelope (`v`, `seq`, `time`, `instance`), the session's
//! fields when the event belongs to one ([`SessionMeta`]: session id, identity, client,
//! target, grant, reason, JIT account), the event's own fields (`event` names it), and last
//! `prev`, the chain link (`audit::log`). The session's fields are serialised once per
//! session, not once per event, so a busy session's events cost one small serialisation each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::identity::{Identity, SubjectKind};
use crate::policy::TargetKind;

/// The schema version every line carries as `"v"`.
pub const SCHEMA_VERSION: u32 = 1;

/// Who and where a session is, as every one of its events repeats it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionMeta {
    /// The session id: the lease id (one session, one account, one id).
    pub session: String,
    pub protocol: &'static str,
    pub user: String,
    pub subject_kind: &'static str,
    pub groups: Vec<String>,
    pub serial: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    pub client: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl SessionMeta {
    pub fn new(
        session: &str,
        protocol: TargetKind,
        identity: &Identity,
        client: SocketAddr,
        target: &str,
    ) -> SessionMeta {
        SessionMeta {
            session: session.to_string(),
            protocol: protocol_name(protocol),
            user: identity.user.clone(),
            subject_kind: match identity.kind {
                SubjectKind::Person => "person",
                SubjectKind::Workload => "workload",
            },
            groups: identity.groups.clone(),
            serial: identity.serial.clone(),
            spiffe_id: identity.spiffe_id.clone(),
            client: client.to_string(),
            target: target.to_string(),
            grant: None,
            reason: None,
            account: None,
        }
    }

    pub fn grant(mut self, grant: &str, reason: Option<&str>) -> Self {
        self.grant = Some(grant.to_string());
        self.reason = reason.map(str::to_string);
        self
    }

    pub fn account(mut self, account: &str) -> Self {
        self.account = Some(account.to_string());
        self
    }

    /// The fields as a JSON object body without its braces, for the writer to splice into
    /// each line. Serialising a struct of strings does not fail; if it ever did, the fields
    /// are left out rather than the event.
    pub fn fragment(&self) -> Arc<str> {
        let json = serde_json::to_string(self).unwrap_or_default();
        Arc::from(strip_braces(&json))
    }
}

pub fn protocol_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Postgres => "postgres",
        TargetKind::Ssh => "ssh",
    }
}

/// How a JIT account's drop went.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DropOutcome {
    Dropped,
    /// Tried and failed; the reaper retries.
    Failed,
    /// Not done within the drop deadline; the reaper retries.
    TimedOut,
}

/// The events of the session spine and the SSH channels (the Postgres and SFTP decoders
/// have their own: [`super::pg::PgEvent`], [`super::sftp::SftpEvent`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event")]
pub enum Event {
    /// The writer started (first line of each run): the chain continues across restarts.
    #[serde(rename = "audit.start")]
    AuditStart { version: &'static str },
    /// Events the writer could not take (its queue was full) since the last line.
    #[serde(rename = "audit.lost")]
    AuditLost { count: u64 },
    /// A partial last line (a crash in mid-write) was cut off when the file was reopened.
    #[serde(rename = "audit.repaired")]
    AuditRepaired { file: String, bytes_removed: u64 },
    #[serde(rename = "access.denied")]
    AccessDenied {
        protocol: &'static str,
        client: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requested: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sqlstate: Option<String>,
        /// The operator's version of why (what the user was told may say less).
        why: String,
    },
    #[serde(rename = "jit.account.created")]
    AccountCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        mint_ms: u64,
        expires_at: String,
    },
    #[serde(rename = "jit.account.dropped")]
    AccountDropped {
        outcome: DropOutcome,
        drop_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The reaper removed an account its session did not (a crash, a failed drop).
    #[serde(rename = "jit.account.reaped")]
    AccountReaped {
        target: String,
        account: String,
        lease: String,
        owner_instance: String,
        why: String,
    },
    #[serde(rename = "session.start")]
    SessionStart {
        /// What the client asked for: psql `user=`, the SSH user name.
        requested: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        /// When the session ends at the latest (max_session or certificate expiry).
        deadline: String,
    },
    #[serde(rename = "session.warning")]
    SessionWarning { message: String },
    #[serde(rename = "session.end")]
    SessionEnd {
        duration_ms: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
        /// `closed` (either side), `failed`, `not_started`, or the gateway's reason
        /// (`max_session`, `certificate_revoked`, `policy_changed`, `audit_unavailable`, …).
        ended: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    #[serde(rename = "ssh.shell")]
    SshShell {
        channel: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        term: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recording: Option<String>,
    },
    #[serde(rename = "ssh.exec")]
    SshExec {
        channel: u32,
        command: String,
        allowed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        recording: Option<String>,
    },
    #[serde(rename = "ssh.subsystem")]
    SshSubsystem {
        channel: u32,
        name: String,
        allowed: bool,
    },
    #[serde(rename = "ssh.port_forward")]
    SshPortForward {
        host: String,
        port: u32,
        allowed: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_from_client: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_to_client: Option<u64>,
    },
    #[serde(rename = "ssh.exit")]
    SshExit {
        channel: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        bytes_from_client: u64,
        bytes_to_client: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recording: Option<String>,
        /// SHA-256 of the finished recording file, so a changed recording is detected by
        /// `jitgate audit verify` through the chained line that names it.
        #[serde(skip_serializing_if = "Option::is_none")]
        recording_sha256: Option<String>,
    },
}

/// Anything the writer can put on a line: the spine's events and the decoders'.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    Core(Event),
    Pg(super::pg::PgEvent),
    Sftp(super::sftp::SftpEvent),
}

impl From<Event> for Body {
    fn from(e: Event) -> Body {
        Body::Core(e)
    }
}

impl From<super::pg::PgEvent> for Body {
    fn from(e: super::pg::PgEvent) -> Body {
        Body::Pg(e)
    }
}

impl From<super::sftp::SftpEvent> for Body {
    fn from(e: super::sftp::SftpEvent) -> Body {
        Body::Sftp(e)
    }
}

/// One event on its way to the writer.
#[derive(Debug)]
pub struct Record {
    pub time: SystemTime,
    /// The session's fields, pre-serialised ([`SessionMeta::fragment`]).
    pub session: Option<Arc<str>>,
    pub body: Body,
}

/// RFC 3339 in UTC with microseconds, as every `time` field is written.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// `{…}` → `…` (an empty object gives an empty string).
pub fn strip_braces(json: &str) -> &str {
    json.strip_prefix('{')
        .and_then(|j| j.strip_suffix('}'))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_fragment_is_the_object_without_braces() {
        let identity = Identity::person("alice", &["dba".to_string()]);
        let meta = SessionMeta::new(
            "l1",
            TargetKind::Postgres,
            &identity,
            "127.0.0.1:5".parse().unwrap(),
            "orders",
        )
        .grant("orders-read", Some("INC-1"))
        .account("jit_alice_1");
        let fragment = meta.fragment();
        let v: serde_json::Value = serde_json::from_str(&format!("{{{fragment}}}")).unwrap();
        assert_eq!(v["user"], "alice");
        assert_eq!(v["groups"][0], "dba");
        assert_eq!(v["grant"], "orders-read");
        assert_eq!(v["account"], "jit_alice_1");
        assert_eq!(v["protocol"], "postgres");
    }

    #[test]
    fn times_are_utc_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_000);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500000Z");
    }
}
