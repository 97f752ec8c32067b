//! The operator's kill switch and live view: `jitgate serve` answers on a Unix socket
//! (`control_socket`, mode 0600, root or the gateway's own uid only) and `jitgate sessions`,
//! `sessions end`, `lock`, `unlock` and `locks` talk to it. One JSON request line, one JSON
//! response line, then the connection closes. `socket` is the gateway's side, `locks` the
//! locks it keeps; this module holds the messages and the client.

pub mod locks;
pub mod socket;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use locks::{Lock, Locks, Scope};

use crate::session::SessionInfo;

/// The longest request or response line either side reads.
pub const MAX_LINE: usize = 1 << 20;

/// How long the client waits for the gateway's answer (ending sessions takes no longer than
/// flipping their switches; the sessions end on their own tasks).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reason an operator may give (it is shown to users, in one line).
pub const MAX_REASON: usize = 200;

/// Which live sessions `sessions end` ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// One session, by its id (the lease id `jitgate sessions` shows).
    Id(String),
    User(String),
    Target(String),
}

impl Selector {
    pub fn matches(&self, s: &SessionInfo) -> bool {
        match self {
            Selector::Id(id) => s.id.as_str() == id,
            Selector::User(user) => &s.identity.user == user,
            Selector::Target(target) => &s.target == target,
        }
    }
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Sessions,
    End {
        which: Selector,
        reason: Option<String>,
    },
    Lock {
        scope: Scope,
        /// Seconds; none: until unlocked.
        for_secs: Option<u64>,
        reason: Option<String>,
    },
    Unlock {
        id: String,
    },
    Locks,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Sessions { sessions: Vec<SessionRow> },
    Ended { ended: Vec<SessionRow> },
    Locked { lock: Lock, ended: Vec<SessionRow> },
    Unlocked { lock: Lock },
    Locks { locks: Vec<Lock> },
    Error { error: String },
}

/// One live session as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub protocol: String,
    pub user: String,
    pub target: String,
    pub grant: String,
    pub account: String,
    /// RFC 3339.
    pub since: String,
    pub client: String,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

impl SessionRow {
    pub fn of(s: &SessionInfo) -> SessionRow {
        let (from_client, to_client) = s.bytes.get();
        SessionRow {
            id: s.id.to_string(),
            protocol: s.protocol.to_string(),
            user: s.identity.user.clone(),
            target: s.target.clone(),
            grant: s.grant.clone(),
            account: s.account.clone(),
            since: crate::audit::event::rfc3339(s.since),
            client: s.client.to_string(),
            bytes_from_client: from_client,
            bytes_to_client: to_client,
        }
    }
}

/// Why the client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no gateway answers on {0} (is `jitgate serve` running with this config? its \
         control_socket setting names the path)"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: only root or the user the gateway runs as may use its \
         control socket"
    )]
    PermissionDenied(PathBuf),
    #[error("talking to the gateway on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the gateway's answer is not understood: {0}")]
    Protocol(String),
    /// The gateway answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the gateway at `path` and returns its answer; the gateway's own
/// `Response::Error` comes back as `ControlError::Refused`.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ControlError::NotRunning(path.to_path_buf())
                }
                std::io::ErrorKind::PermissionDenied => {
                    ControlError::PermissionDenied(path.to_path_buf())
                }
                _ => ControlError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (read, mut write) = stream.into_split();
        let mut line =
            serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push('\n');
        // A gateway that refuses us (SO_PEERCRED) answers and closes without reading: the
        // write may fail then, and the answer is still there to read.
        let sent = write.write_all(line.as_bytes()).await;
        let answer = read_line(&mut BufReader::new(read)).await;
        let answer = match (answer, sent) {
            (Ok(Some(answer)), _) => Some(answer),
            (Ok(None), Err(e)) | (Err(_), Err(e)) => return Err(io(e)),
            (Ok(None), Ok(())) => None,
            (Err(e), Ok(())) => return Err(io(e)),
        };
        match answer {
            None => Err(ControlError::Protocol(
                "the gateway closed the connection without an answer".into(),
            )),
            Some(answer) => match serde_json::from_str(&answer) {
                Ok(Response::Error { error }) => Err(ControlError::Refused(error)),
                Ok(response) => Ok(response),
                Err(e) => Err(ControlError::Protocol(e.to_string())),
            },
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout(CLIENT_TIMEOUT))?
}

/// One line of at most `MAX_LINE` bytes, without its newline; None at a clean end of input.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let n = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if line.len() > MAX_LINE {
                "line too long"
            } else {
                "line not terminated"
            },
        ));
    }
    line.pop();
    String::from_utf8(line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// `jitgate sessions`: one line per live session, oldest first. Bytes are what the relay has
/// passed so far, from the client / to the client.
pub fn sessions_table(rows: &[SessionRow], now: SystemTime) -> String {
    if rows.is_empty() {
        return "no live sessions\n".to_string();
    }
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| a.since.cmp(&b.since).then(a.id.cmp(&b.id)));
    let header = [
        "ID",
        "PROTO",
        "USER",
        "TARGET",
        "GRANT",
        "ACCOUNT",
        "SINCE",
        "BYTES IN/OUT",
        "CLIENT",
    ]
    .map(str::to_string);
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.protocol.clone(),
                r.user.clone(),
                r.target.clone(),
                r.grant.clone(),
                r.account.clone(),
                since(&r.since, now),
                format!("{}/{}", r.bytes_from_client, r.bytes_to_client),
                r.client.clone(),
            ]
        })
        .collect();
    table(&header, &cells)
}

/// `jitgate locks`.
pub fn locks_table(locks: &[Lock]) -> String {
    if locks.is_empty() {
        return "no locks\n".to_string();
    }
    let header = ["ID", "LOCKS", "SINCE", "UNTIL", "BY", "REASON"].map(str::to_string);
    let cells: Vec<[String; 6]> = locks
        .iter()
        .map(|l| {
            [
                l.id.clone(),
                l.scope.to_string(),
                locks::seconds(l.created_at),
                l.expires_at
                    .map_or_else(|| "unlocked".to_string(), locks::seconds),
                l.created_by.clone(),
                l.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&header, &cells)
}

/// `2026-12-02T07:30:00Z (5m ago)`.
fn since(rfc3339: &str, now: SystemTime) -> String {
    let parsed =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from);
    match parsed {
        Ok(t) => {
            let ago = now.duration_since(t).unwrap_or(Duration::ZERO);
            format!(
                "{} ({} ago)",
                locks::seconds(t),
                humantime::format_duration(Duration::from_secs(ago.as_secs()))
            )
        }
        Err(_) => rfc3339.to_string(),
    }
}

fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The operator's reason, as the gateway accepts it: printable, one line, not too long.
pub fn check_reason(reason: Option<String>) -> Result<Option<String>, String> {
    let Some(reason) = reason.map(|r| r.trim().to_string()) else {
        return Ok(None);
    };
    if reason.is_empty() {
        return Ok(None);
    }
    if reason.chars().count() > MAX_REASON {
        return Err(format!("--reason is longer than {MAX_REASON} characters"));
    }
    if reason.chars().any(char::is_control) {
        return Err("--reason must be one line of printable text".to_string());
    }
    Ok(Some(reason))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_one_json_line_each() {
        let end = Request::End {
            which: Selector::User("alice".into()),
            reason: Some("left".into()),
        };
        let text = serde_json::to_string(&end).unwrap();
        assert_eq!(
            text,
            r#"{"op":"end","which":{"user":"alice"},"reason":"left"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), end);
        let lock: Request = serde_json::from_str(
            r#"{"op":"lock","scope":{"grant":"db"},"for_secs":60,"reason":null}"#,
        )
        .unwrap();
        assert!(
            matches!(lock, Request::Lock { scope: Scope::Grant(g), for_secs: Some(60), .. } if g == "db")
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_tables"}"#).is_err());
    }

    #[test]
    fn reasons_are_one_printable_line() {
        assert_eq!(
            check_reason(Some("  INC-7 ".into())),
            Ok(Some("INC-7".into()))
        );
        assert_eq!(check_reason(Some(" ".into())), Ok(None));
        assert!(check_reason(Some("a\nb".into())).is_err());
        assert!(check_reason(Some("x".repeat(MAX_REASON + 1))).is_err());
    }

    #[test]
    fn the_sessions_table_lines_up() {
        let row = SessionRow {
            id: "0123456789abcdef".into(),
            protocol: "postgres".into(),
            user: "alice".into(),
            target: "orders".into(),
            grant: "db".into(),
            account: "jit_alice_x".into(),
            since: "2026-12-02T07:00:00.000000Z".into(),
            client: "127.0.0.1:5555".into(),
            bytes_from_client: 10,
            bytes_to_client: 2000,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_849_500);
        let text = sessions_table(&[row], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("ID  "), "{text}");
        assert!(
            lines[1].contains("2026-12-02T07:00:00Z (")
                && lines[1].contains("10/2000")
                && lines[1].ends_with("127.0.0.1:5555"),
            "{text}"
        );
        assert_eq!(sessions_table(&[], now), "no live sessions\n");
    }
}
