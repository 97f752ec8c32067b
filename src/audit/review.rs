//! Review of the event log: `jitgate audit sessions` (one row per session, newest first),
//! `show ID` (a session's timeline), `export ID --format json` (its lines as written).
//! Replay and cast export read the recording the session's events name (`recording`).
//!
//! The log is read as written: every instance's files under the directory, each line one
//! JSON object. Lines that do not parse are skipped here (`verify` is the tool that says
//! where they are).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::event::rfc3339;
use super::log::all_chains;

/// Every line of every chain in `dir`, in file order, as JSON values.
pub fn load(dir: &Path) -> std::io::Result<Vec<Value>> {
    let mut lines = Vec::new();
    for (_, files) in all_chains(dir)? {
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            lines.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
        }
    }
    Ok(lines)
}

/// The lines of session `id` (a full id) exactly as written, for export: the bytes the chain
/// hashed, so an exported session can be checked against the log.
pub fn raw_session_lines(dir: &Path, id: &str) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for (_, files) in all_chains(dir)? {
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            out.extend(
                text.lines()
                    .filter(|l| {
                        serde_json::from_str::<Value>(l)
                            .is_ok_and(|v| v.get("session").and_then(Value::as_str) == Some(id))
                    })
                    .map(str::to_string),
            );
        }
    }
    Ok(out)
}

/// One row of `jitgate audit sessions`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub protocol: String,
    pub user: String,
    pub target: String,
    pub grant: String,
    pub account: String,
    pub client: String,
    pub instance: String,
    pub start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How it ended (`session.end`'s `ended`), or `open` when no end is logged (live, or the
    /// gateway was killed: the reaper's `jit.account.reaped` then says so).
    pub status: String,
    /// Queries and commands (for `--grep`).
    #[serde(skip)]
    pub texts: Vec<String>,
}

/// What `jitgate audit sessions` filters by.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub user: Option<String>,
    pub target: Option<String>,
    /// RFC 3339 (as the log writes times); compared as text, which orders them.
    pub since: Option<String>,
    pub until: Option<String>,
    pub grep: Option<String>,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The sessions in `lines`, newest first, as `filter` lets them through.
pub fn sessions(lines: &[Value], filter: &Filter) -> Vec<SessionRow> {
    let mut rows: BTreeMap<String, SessionRow> = BTreeMap::new();
    for v in lines {
        let Some(id) = v.get("session").and_then(Value::as_str) else {
            continue;
        };
        let event = text(v, "event");
        let time = text(v, "time");
        let row = rows.entry(id.to_string()).or_insert_with(|| SessionRow {
            id: id.to_string(),
            protocol: text(v, "protocol"),
            user: text(v, "user"),
            target: text(v, "target"),
            grant: text(v, "grant"),
            account: text(v, "account"),
            client: text(v, "client"),
            instance: text(v, "instance"),
            start: time.clone(),
            end: None,
            duration_ms: None,
            status: "open".to_string(),
            texts: Vec::new(),
        });
        if row.account.is_empty() {
            row.account = text(v, "account");
        }
        match event.as_str() {
            "session.end" => {
                row.end = Some(time);
                row.duration_ms = v.get("duration_ms").and_then(Value::as_u64);
                row.status = text(v, "ended");
            }
            "pg.query" | "pg.parse" => row.texts.push(text(v, "query")),
            "ssh.exec" => row.texts.push(text(v, "command")),
            _ => {}
        }
    }
    let mut rows: Vec<SessionRow> = rows
        .into_values()
        .filter(|r| filter.user.as_ref().is_none_or(|u| &r.user == u))
        .filter(|r| filter.target.as_ref().is_none_or(|t| &r.target == t))
        .filter(|r| {
            filter
                .since
                .as_ref()
                .is_none_or(|s| r.end.as_ref().unwrap_or(&r.start) >= s)
        })
        .filter(|r| filter.until.as_ref().is_none_or(|u| &r.start <= u))
        .filter(|r| {
            filter
                .grep
                .as_ref()
                .is_none_or(|g| r.texts.iter().any(|t| t.contains(g.as_str())))
        })
        .collect();
    rows.sort_by(|a, b| b.start.cmp(&a.start).then(a.id.cmp(&b.id)));
    rows
}

/// A time given on the command line: RFC 3339 (`2026-12-02T10:00:00Z`), a date
/// (`2026-12-02`, its start), or a duration ago (`2h`, `30m`), as the log's time format.
pub fn parse_when(text: &str, now: SystemTime) -> Result<String, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(rfc3339(
            now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
    let format = time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &format) {
        return Ok(rfc3339(t.into()));
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(text, &date_format) {
        return Ok(rfc3339(d.midnight().assume_utc().into()));
    }
    Err(format!(
        "`{text}` is not a time: give RFC 3339 (2026-12-02T10:00:00Z), a date (2026-12-02) \
         or a duration ago (2h)"
    ))
}

pub fn sessions_table(rows: &[SessionRow]) -> String {
    let mut out = String::new();
    let header = [
        "SESSION", "USER", "TARGET", "ACCOUNT", "START", "DURATION", "STATUS",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.user.clone(),
                r.target.clone(),
                r.account.clone(),
                r.start.get(..19).unwrap_or(&r.start).replace('T', " "),
                r.duration_ms.map_or("-".to_string(), |ms| {
                    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
                }),
                r.status.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cols: &[&str]| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &cells {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// The lines of session `id` (a unique prefix will do), in the order written.
pub fn session_lines<'a>(lines: &'a [Value], id: &str) -> Result<Vec<&'a Value>, String> {
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|v| v.get("session").and_then(Value::as_str))
        .filter(|s| s.starts_with(id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => Err(format!("no session {id} in the audit log")),
        [one] => Ok(lines
            .iter()
            .filter(|v| v.get("session").and_then(Value::as_str) == Some(one))
            .collect()),
        many => Err(format!(
            "{id} is the start of {} session ids; give more of it",
            many.len()
        )),
    }
}

/// Fields every line of a session repeats; `show` leaves them out of the timeline.
const ENVELOPE: &[&str] = &[
    "v",
    "seq",
    "time",
    "instance",
    "event",
    "session",
    "protocol",
    "user",
    "subject_kind",
    "groups",
    "serial",
    "spiffe_id",
    "client",
    "target",
    "grant",
    "reason",
    "account",
    "prev",
];

/// `jitgate audit show`: who and where once, then one line per event with its own fields.
pub fn timeline(lines: &[&Value]) -> String {
    let mut out = String::new();
    if let Some(first) = lines.first() {
        let _ = writeln!(out, "session  {}", text(first, "session"));
        let groups = first
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "user     {} (groups {}; certificate serial {})",
            text(first, "user"),
            if groups.is_empty() { "-" } else { &groups },
            text(first, "serial")
        );
        let _ = writeln!(
            out,
            "target   {} ({}) via grant {}, from {}",
            text(first, "target"),
            text(first, "protocol"),
            text(first, "grant"),
            text(first, "client")
        );
        let reason = text(first, "reason");
        if !reason.is_empty() {
            let _ = writeln!(out, "reason   {reason}");
        }
        let account = lines
            .iter()
            .map(|v| text(v, "account"))
            .find(|a| !a.is_empty())
            .unwrap_or_default();
        let _ = writeln!(out, "account  {account}");
        out.push('\n');
    }
    for v in lines {
        let time = text(v, "time");
        let time = time.get(11..23).unwrap_or(&time);
        let mut details = String::new();
        if let Some(map) = v.as_object() {
            for (k, val) in map {
                if ENVELOPE.contains(&k.as_str()) {
                    continue;
                }
                let shown = match val {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = write!(details, " {k}={shown}");
            }
        }
        let _ = writeln!(out, "{time}  {:<20}{details}", text(v, "event"));
    }
    out
}

/// The recordings a session's events name, in order, as paths under `dir`.
pub fn recordings(dir: &Path, lines: &[&Value]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for v in lines {
        if let Some(name) = v.get("recording").and_then(Value::as_str) {
            if name.contains("..") || name.starts_with('/') {
                continue;
            }
            let path = dir.join(name);
            if !found.contains(&path) {
                found.push(path);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn lines() -> Vec<Value> {
        vec![
            json!({"session":"s1","time":"2026-12-01T10:00:00.000000Z","event":"session.start","user":"alice","target":"orders","protocol":"postgres","grant":"g","account":"jit_a"}),
            json!({"session":"s1","time":"2026-12-01T10:00:01.000000Z","event":"pg.query","user":"alice","target":"orders","query":"select 1"}),
            json!({"session":"s2","time":"2026-12-02T09:00:00.000000Z","event":"session.start","user":"bob","target":"web-1","protocol":"ssh"}),
            json!({"session":"s1","time":"2026-12-01T10:05:00.000000Z","event":"session.end","ended":"closed","duration_ms":300000,"user":"alice","target":"orders"}),
            json!({"time":"2026-12-01T10:05:00.000000Z","event":"access.denied"}),
        ]
    }

    #[test]
    fn sessions_are_listed_newest_first_and_filtered() {
        let all = sessions(&lines(), &Filter::default());
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["s2", "s1"]
        );
        assert_eq!(all[1].status, "closed");
        assert_eq!(all[0].status, "open");
        let f = Filter {
            grep: Some("select".into()),
            ..Filter::default()
        };
        assert_eq!(sessions(&lines(), &f).len(), 1);
        let f = Filter {
            since: Some("2026-12-02T00:00:00.000000Z".into()),
            ..Filter::default()
        };
        assert_eq!(sessions(&lines(), &f)[0].id, "s2");
        let f = Filter {
            user: Some("alice".into()),
            until: Some("2026-12-01T23:00:00.000000Z".into()),
            ..Filter::default()
        };
        assert_eq!(sessions(&lines(), &f).len(), 1);
        let table = sessions_table(&all);
        assert!(table.starts_with("SESSION"), "{table}");
        assert!(table.contains("5m"), "{table}");
    }

    #[test]
    fn a_prefix_picks_one_session() {
        let l = lines();
        assert_eq!(session_lines(&l, "s1").unwrap().len(), 3);
        assert!(session_lines(&l, "s").is_err());
        assert!(session_lines(&l, "zz").is_err());
        let t = timeline(&session_lines(&l, "s1").unwrap());
        assert!(
            t.contains("pg.query") && t.contains("query=select 1"),
            "{t}"
        );
    }

    #[test]
    fn times_on_the_command_line() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7200);
        assert_eq!(
            parse_when("1h", now).unwrap(),
            "1970-01-01T01:00:00.000000Z"
        );
        assert_eq!(
            parse_when("2026-12-02", now).unwrap(),
            "2026-12-02T00:00:00.000000Z"
        );
        assert_eq!(
            parse_when("2026-12-02T10:00:00+01:00", now).unwrap(),
            "2026-12-02T09:00:00.000000Z"
        );
        assert!(parse_when("yesterday", now).is_err());
    }
}
