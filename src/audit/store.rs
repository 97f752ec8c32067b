//! The shared store (`audit.postgres`): the log's lines and recordings copied into PostgreSQL,
//! so that `jitgate audit` on any replica reviews and verifies every replica's chain.
//!
//! The files stay the source: a shipper task reads what the writer appended to this instance's
//! files (from where it left off, so a restart or an outage catches up by itself) and inserts
//! the lines byte for byte, in chain order, with the recordings their `ssh.exit` lines hash.
//! Rows are never updated; `verify` walks each instance's rows in insertion order and checks
//! the same links as in the files, so an edited, deleted, inserted or reordered row is named.
//!
//! The connection is an admin session as for targets (`jit::postgres::admin_session`):
//! SCRAM-SHA-256 only, channel binding over TLS, the password from a file or the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::log::{instance_files, Health};
use crate::config::PgTarget;

/// How often the shipper looks for new lines.
const SHIP_INTERVAL: Duration = Duration::from_millis(500);
/// Lines inserted per statement.
const BATCH: usize = 1000;

/// Tables, created at the first connection if they do not exist (so the store's role needs
/// no CREATE once another role has made them, and may hold only SELECT and INSERT).
const MIGRATION: &str = "\
DO $$ BEGIN
IF to_regclass('jitgate_audit_lines') IS NULL THEN
    CREATE TABLE jitgate_audit_lines (
        id bigserial PRIMARY KEY,
        instance text NOT NULL,
        seq bigint NOT NULL,
        line text NOT NULL,
        UNIQUE (instance, seq)
    );
END IF;
IF to_regclass('jitgate_audit_recordings') IS NULL THEN
    CREATE TABLE jitgate_audit_recordings (
        name text PRIMARY KEY,
        content bytea NOT NULL
    );
END IF;
END $$;";

/// Opens a session to the store and makes sure its tables exist.
pub async fn connect(target: &PgTarget) -> Result<Client, String> {
    let password = target.admin.password.read().map_err(|e| e.to_string())?;
    let database = target
        .databases
        .first()
        .map_or("jitgate_audit", String::as_str);
    use crate::jit::postgres::AdminConnect;
    let client = crate::jit::postgres::admin_session(target, database, &password, "jitgate-audit")
        .await
        .map_err(|e| {
            let why = match e {
                AdminConnect::Unreachable(why) | AdminConnect::Tls(why) => why,
                AdminConnect::Postgres(e) => e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_string()),
            };
            format!("audit store {}:{}: {why}", target.host, target.port)
        })?;
    client
        .batch_execute(MIGRATION)
        .await
        .map_err(|e| format!("audit store: creating its tables: {e}"))?;
    Ok(client)
}

/// Where the shipper stands in this instance's files.
struct Cursor {
    file: Option<PathBuf>,
    offset: u64,
    /// The next seq the store does not have.
    next_seq: u64,
}

/// Copies this instance's new lines (and their recordings) into the store until the process
/// ends, reporting on `health` whether the store takes them.
pub async fn ship(target: PgTarget, dir: PathBuf, instance: String, health: watch::Sender<Health>) {
    let mut client: Option<Client> = None;
    let mut cursor: Option<Cursor> = None;
    let mut tick = tokio::time::interval(SHIP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                client = Some(connect(&target).await?);
                cursor = None;
            }
            let Some(db) = client.as_ref() else {
                return Ok(());
            };
            if cursor.is_none() {
                let row = db
                    .query_one(
                        "SELECT coalesce(max(seq) + 1, 0) FROM jitgate_audit_lines WHERE instance = $1",
                        &[&instance],
                    )
                    .await
                    .map_err(|e| format!("audit store: {e}"))?;
                let next: i64 = row.get(0);
                cursor = Some(Cursor {
                    file: None,
                    offset: 0,
                    next_seq: u64::try_from(next).unwrap_or(0),
                });
            }
            let Some(at) = cursor.as_mut() else {
                return Ok(());
            };
            ship_new(db, &dir, &instance, at).await
        }
        .await;
        let now = match result {
            Ok(()) => Health::Ok,
            Err(why) => {
                client = None;
                Health::Failing(why)
            }
        };
        health.send_if_modified(|h| {
            if *h == now {
                return false;
            }
            match &now {
                Health::Ok => tracing::warn!("audit store takes events again"),
                Health::Failing(why) => {
                    tracing::error!(error = %why, "audit store cannot be written")
                }
            }
            *h = now;
            true
        });
    }
}

/// Reads whole lines appended since `at` and inserts those the store does not have.
async fn ship_new(db: &Client, dir: &Path, instance: &str, at: &mut Cursor) -> Result<(), String> {
    let files = instance_files(dir, instance).map_err(|e| format!("audit files: {e}"))?;
    // Files sort by day; continue in the current one, then the ones after it.
    let start = match &at.file {
        Some(f) => files.iter().position(|p| p == f).unwrap_or(0),
        None => 0,
    };
    for file in files.iter().skip(start) {
        if at.file.as_ref() != Some(file) {
            at.file = Some(file.clone());
            at.offset = 0;
        }
        // Only what was appended since the last look is read, not the whole day's file.
        let new = read_from(file, at.offset)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let Some(new) = new else {
            // The file is shorter than what was read of it: start it over.
            at.offset = 0;
            continue;
        };
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut batch: Vec<(i64, String)> = Vec::new();
        for line in new[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let text = String::from_utf8_lossy(line).into_owned();
            let seq = super::log::seq_of(line);
            if let Some(seq) = seq.filter(|s| *s >= at.next_seq) {
                if let Some(name) = recording_named(&text) {
                    ship_recording(db, dir, &name).await?;
                }
                batch.push((i64::try_from(seq).unwrap_or(i64::MAX), text));
                at.next_seq = seq + 1;
            }
            if batch.len() >= BATCH {
                insert(db, instance, &std::mem::take(&mut batch)).await?;
            }
        }
        insert(db, instance, &batch).await?;
        at.offset += whole as u64;
    }
    Ok(())
}

/// The bytes of `file` from `offset` on; None if the file is shorter than that.
async fn read_from(file: &Path, offset: u64) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(file).await?;
    if f.metadata().await?.len() < offset {
        return Ok(None);
    }
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).await?;
    Ok(Some(bytes))
}

async fn insert(db: &Client, instance: &str, batch: &[(i64, String)]) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = batch.iter().map(|(s, _)| *s).collect();
    let lines: Vec<&str> = batch.iter().map(|(_, l)| l.as_str()).collect();
    db.execute(
        "INSERT INTO jitgate_audit_lines (instance, seq, line) \
         SELECT $1, s, l FROM unnest($2::bigint[], $3::text[]) WITH ORDINALITY AS t(s, l, n) \
         ORDER BY n ON CONFLICT (instance, seq) DO NOTHING",
        &[&instance, &seqs, &lines],
    )
    .await
    .map_err(|e| format!("audit store: inserting lines: {e}"))?;
    Ok(())
}

/// The recording a line hashes (`ssh.exit`), if any.
fn recording_named(line: &str) -> Option<String> {
    if !line.contains("\"recording_sha256\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("recording")?.as_str().map(str::to_string)
}

async fn ship_recording(db: &Client, dir: &Path, name: &str) -> Result<(), String> {
    if name.contains("..") || name.starts_with('/') {
        return Ok(());
    }
    let content = match tokio::fs::read(dir.join(name)).await {
        Ok(c) => c,
        // verify reports a missing recording; the line still goes in.
        Err(e) => {
            tracing::warn!(recording = %name, error = %e, "audit store: recording not found");
            return Ok(());
        }
    };
    db.execute(
        "INSERT INTO jitgate_audit_recordings (name, content) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING",
        &[&name, &content],
    )
    .await
    .map_err(|e| format!("audit store: inserting recording {name}: {e}"))?;
    Ok(())
}

/// Every instance's lines, each chain in insertion order: (instance, lines).
pub async fn chains(db: &Client) -> Result<Vec<(String, Vec<String>)>, String> {
    let rows = db
        .query(
            "SELECT instance, line FROM jitgate_audit_lines ORDER BY instance, id",
            &[],
        )
        .await
        .map_err(|e| format!("audit store: {e}"))?;
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let instance: String = row.get(0);
        let line: String = row.get(1);
        match chains.last_mut() {
            Some((i, lines)) if *i == instance => lines.push(line),
            _ => chains.push((instance, vec![line])),
        }
    }
    Ok(chains)
}

/// A recording's bytes as shipped.
pub async fn recording(db: &Client, name: &str) -> Result<Option<Vec<u8>>, String> {
    let row = db
        .query_opt(
            "SELECT content FROM jitgate_audit_recordings WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(|e| format!("audit store: {e}"))?;
    Ok(row.map(|r| r.get(0)))
}

/// The day a materialised chain's file is named after: not a real day, so it cannot be taken
/// for a file the gateway wrote.
pub const MATERIALISED_DAY: &str = "0000-00-00";

/// Writes the store's chains into `dir` as the files the gateway writes
/// (`audit-<instance>-0000-00-00.jsonl`, one per instance, rows in insertion order) and the
/// recordings they hash into `dir/recordings`, so review and verify read them as a directory.
pub async fn materialise(db: &Client, dir: &Path) -> Result<Vec<String>, String> {
    let io = |e: std::io::Error| format!("writing {}: {e}", dir.display());
    std::fs::create_dir_all(dir.join(super::recording::DIR)).map_err(io)?;
    let mut instances = Vec::new();
    for (instance, lines) in chains(db).await? {
        // The store is read as data, not trusted: an instance name becomes a file name here,
        // so one that is not an instance_id (`../x`) is refused rather than written anywhere.
        if !crate::config::is_instance_id(&instance) {
            return Err(format!(
                "audit store: instance {instance:?} is not an instance_id; the store holds rows \
                 no gateway wrote (check jitgate_audit_lines)"
            ));
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let file = dir.join(format!("audit-{instance}-{MATERIALISED_DAY}.jsonl"));
        std::fs::write(&file, text).map_err(io)?;
        for line in &lines {
            let Some(name) = recording_named(line) else {
                continue;
            };
            if name.contains("..") || name.starts_with('/') {
                continue;
            }
            if let Some(content) = recording(db, &name).await? {
                std::fs::write(dir.join(&name), content).map_err(io)?;
            }
        }
        instances.push(instance);
    }
    Ok(instances)
}
