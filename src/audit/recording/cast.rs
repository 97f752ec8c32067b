//! The asciicast v2 file itself: a JSON header line, then one `[time, code, data]` line per
//! event (<https://docs.asciinema.org/manual/asciicast/v2/>). Reading (with errors that name
//! the line), writing the exact same bytes back (`export --format cast`), and replay.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header line. Fields asciinema defines come first; jitgate's own go under `jitgate`
/// (players ignore keys they do not know: asciinema 2.x reads the header as a dict and only
/// `.get`s its keys, asciinema 3's serde header struct does not deny unknown fields); keys
/// neither knows are kept in `other`, so reading a foreign file loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CastHeader {
    pub version: u8,
    pub width: u16,
    pub height: u16,
    /// Unix time of the start, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_time_limit: Option<f64>,
    /// The exec command, for exec sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// TERM from the pty-req; asciinema allows null values (SHELL is unknown to a gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, Option<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitgate: Option<RecordingMeta>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Who and what the recording is of, under the header's `jitgate` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMeta {
    pub session_id: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jit_account: Option<String>,
}

impl CastHeader {
    /// A version-2 header for a terminal of this size (from the pty-req).
    pub fn new(width: u16, height: u16) -> Self {
        CastHeader {
            version: 2,
            width,
            height,
            timestamp: None,
            duration: None,
            idle_time_limit: None,
            command: None,
            title: None,
            env: None,
            jitgate: None,
            other: serde_json::Map::new(),
        }
    }

    /// The header as one JSON line, without the newline.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// One event. `Other` keeps codes this reader does not know (a later asciinema's), so they
/// survive an export.
#[derive(Debug, Clone, PartialEq)]
pub enum CastEvent {
    /// "o": what the terminal showed.
    Output(String),
    /// "i": what the user typed.
    Input(String),
    /// "r": the terminal's new size, written "COLSxROWS".
    Resize {
        cols: u16,
        rows: u16,
    },
    /// "m": a marker; jitgate writes one where the recording has a gap.
    Marker(String),
    Other {
        code: String,
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// Seconds since the start of the recording.
    pub time: f64,
    pub event: CastEvent,
}

impl TimedEvent {
    /// Appends the event's line, newline included.
    pub fn write_line(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let resize;
        let (code, data) = match &self.event {
            CastEvent::Output(s) => ("o", s.as_str()),
            CastEvent::Input(s) => ("i", s.as_str()),
            CastEvent::Resize { cols, rows } => {
                resize = format!("{cols}x{rows}");
                ("r", resize.as_str())
            }
            CastEvent::Marker(s) => ("m", s.as_str()),
            CastEvent::Other { code, data } => (code.as_str(), data.as_str()),
        };
        serde_json::to_writer(&mut *buf, &(self.time, code, data))?;
        buf.push(b'\n');
        Ok(())
    }

    fn parse(line: &str) -> Result<TimedEvent, String> {
        let (time, code, data): (f64, String, String) = serde_json::from_str(line)
            .map_err(|e| format!("not a [time, code, data] event: {e}"))?;
        if !time.is_finite() || time < 0.0 {
            return Err(format!("event time {time} is not a time since the start"));
        }
        let event = match code.as_str() {
            "o" => CastEvent::Output(data),
            "i" => CastEvent::Input(data),
            "r" => {
                let size = data
                    .split_once('x')
                    .and_then(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)));
                let Some((cols, rows)) = size else {
                    return Err(format!("resize {data:?} is not COLSxROWS"));
                };
                CastEvent::Resize { cols, rows }
            }
            "m" => CastEvent::Marker(data),
            "" => return Err("event without a code".into()),
            _ => CastEvent::Other { code, data },
        };
        Ok(TimedEvent { time, event })
    }
}

/// A whole recording in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    pub header: CastHeader,
    pub events: Vec<TimedEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{origin}:{line}: {message}")]
    Line {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: empty, no asciicast header")]
    Empty { origin: String },
}

impl Cast {
    /// Parses a recording; `origin` names it in errors (a path, or a session id).
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Cast, CastError> {
        let fail = |line: usize, message: String| CastError::Line {
            origin: origin.to_owned(),
            line,
            message,
        };
        let mut lines = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, raw)| (i + 1, raw))
            .filter(|(_, raw)| !raw.iter().all(u8::is_ascii_whitespace));
        let Some((n, first)) = lines.next() else {
            return Err(CastError::Empty {
                origin: origin.to_owned(),
            });
        };
        let text = |n: usize, raw: &[u8]| {
            std::str::from_utf8(raw)
                .map(str::to_owned)
                .map_err(|e| fail(n, format!("not UTF-8: {e}")))
        };
        let header_text = text(n, first)?;
        let version = serde_json::from_str::<serde_json::Value>(&header_text)
            .map_err(|e| fail(n, format!("header is not JSON: {e}")))?
            .get("version")
            .cloned();
        if version != Some(serde_json::Value::from(2)) {
            let seen = version.map_or("no version".to_owned(), |v| format!("version {v}"));
            return Err(fail(n, format!("not asciicast v2 ({seen})")));
        }
        let header: CastHeader = serde_json::from_str(&header_text)
            .map_err(|e| fail(n, format!("bad asciicast v2 header: {e}")))?;
        let mut events = Vec::new();
        for (n, raw) in lines {
            let line = text(n, raw)?;
            events.push(TimedEvent::parse(&line).map_err(|m| fail(n, m))?);
        }
        Ok(Cast { header, events })
    }

    /// Seconds from the start to the last event.
    pub fn duration(&self) -> f64 {
        self.events.last().map_or(0.0, |e| e.time)
    }
}

/// Reads a `.cast` file; errors name the file and the line.
pub fn read_cast(path: impl AsRef<Path>) -> Result<Cast, CastError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CastError::Io {
        path: origin.clone(),
        source,
    })?;
    Cast::parse(&bytes, &origin)
}

/// The recording as asciicast v2 text: for a file jitgate wrote, the same bytes.
pub fn to_cast_string(cast: &Cast) -> Result<String, serde_json::Error> {
    let mut buf = cast.header.to_line()?.into_bytes();
    buf.push(b'\n');
    for event in &cast.events {
        event.write_line(&mut buf)?;
    }
    // Every piece came from serde_json, which writes UTF-8: the lossy path is never taken.
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// How to replay: `speed` divides every delay; `idle_time_limit` caps each pause (seconds),
/// as asciinema's `--idle-time-limit`; unset, the header's `idle_time_limit` applies.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    pub speed: f64,
    pub idle_time_limit: Option<f64>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            idle_time_limit: None,
        }
    }
}

/// Where replay waits: the real clock, or a test's.
pub trait ReplayClock {
    /// Returns once `offset` has passed since the replay started.
    fn wait_until(&mut self, offset: Duration);
}

/// Sleeps on the system clock, against the start (so write time does not add up as drift).
struct SystemClock(std::time::Instant);

impl ReplayClock for SystemClock {
    fn wait_until(&mut self, offset: Duration) {
        let elapsed = self.0.elapsed();
        if offset > elapsed {
            std::thread::sleep(offset - elapsed);
        }
    }
}

/// Writes the recording's output to `out` with its real timing divided by `speed`.
pub fn replay(cast: &Cast, speed: f64, out: impl Write) -> io::Result<()> {
    let options = ReplayOptions {
        speed,
        idle_time_limit: None,
    };
    replay_with(
        cast,
        &options,
        out,
        &mut SystemClock(std::time::Instant::now()),
    )
}

/// `replay` with options and a clock of the caller's choosing. Only "o" events are written,
/// as asciinema plays them; input, resizes and markers only take their place in time.
pub fn replay_with(
    cast: &Cast,
    options: &ReplayOptions,
    mut out: impl Write,
    clock: &mut impl ReplayClock,
) -> io::Result<()> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if !(options.speed.is_finite() && options.speed > 0.0) {
        return Err(invalid(format!(
            "speed {} is not a positive number",
            options.speed
        )));
    }
    let limit = options
        .idle_time_limit
        .or(cast.header.idle_time_limit)
        .filter(|l| l.is_finite() && *l > 0.0);
    let (mut previous, mut at) = (0.0f64, 0.0f64);
    for event in &cast.events {
        let pause = (event.time - previous).max(0.0);
        previous = previous.max(event.time);
        at += limit.map_or(pause, |l| pause.min(l));
        match &event.event {
            CastEvent::Output(text) => {
                let offset = Duration::try_from_secs_f64(at / options.speed)
                    .map_err(|e| invalid(format!("replay time {at}s / {}: {e}", options.speed)))?;
                clock.wait_until(offset);
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            CastEvent::Input(_)
            | CastEvent::Resize { .. }
            | CastEvent::Marker(_)
            | CastEvent::Other { .. } => {}
        }
    }
    Ok(())
}
