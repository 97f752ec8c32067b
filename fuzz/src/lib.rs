//! What each fuzz target checks, one function per target (`fuzz_targets/<name>.rs` only calls
//! it). Every function takes any bytes, must never panic, and asserts the properties the
//! gateway relies on: what one side writes the other reads back, the decoders give the same
//! events however a stream is cut into reads, and no message shows a control character.
//!
//! `cargo test --manifest-path fuzz/Cargo.toml --lib` runs every function over its committed
//! corpus (`fuzz/corpus/<name>/`) without libFuzzer: that is what CI does.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use jitgate::audit::pg::{PgAuditOptions, PgDecoder, PgEvent, MAX_PARAMETER, MAX_QUERY};
use jitgate::audit::sftp::{fuzz_sftp, SftpDecoder, SftpEvent, SftpStats};
use jitgate::config::{Config, ConfigError};
use jitgate::identity::{Identity, SubjectKind};
use jitgate::pg::message::{
    error_fields, fatal, negotiate_protocol_version, parse_startup_params, read_startup_packet,
    read_tagged, warning, MAX_LOGIN_MESSAGE, MAX_STARTUP_PACKET,
};
use jitgate::pg::options::take_reason;
use jitgate::policy::{self, AccessRequest, LocatedMessage, PolicyError, PolicySet, TargetKind};
use jitgate::ssh::preamble::{self, PreambleError, MAX_LINE};

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("pg_startup", pg_startup),
    ("pg_options", pg_options),
    ("ssh_preamble", ssh_preamble),
    ("config", config),
    ("policy", policy),
    ("audit_pg", audit_pg),
    ("audit_sftp", audit_sftp),
];

/// Runs a future that reads from a byte slice: such reads never wait, so one poll finishes it.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from a byte slice waited"),
    }
}

/// Splits `text` in two at a character boundary near the byte `at`.
fn split_text(text: &str, at: usize) -> (&str, &str) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.split_at(at)
}

fn without_nul(s: &str) -> String {
    s.chars().filter(|c| *c != '\0').collect()
}

// ---- the Postgres front door ---------------------------------------------------------------

/// The front door's packets (`pg::message`, as `pg::startup::accept` reads them), the upstream
/// login's tagged messages, and the messages the gateway writes from client-chosen text.
pub fn pg_startup(data: &[u8]) {
    let mut rest = data;
    while let Ok(packet) = ready(read_startup_packet(&mut rest)) {
        assert!(packet.body.len() + 8 <= MAX_STARTUP_PACKET);
        if let Ok(params) = parse_startup_params(&packet.body) {
            // What parsed is what a client would have sent: encoding it again parses the same.
            let mut body = Vec::new();
            for (name, value) in &params {
                assert!(!name.is_empty() && !name.contains('\0') && !value.contains('\0'));
                body.extend_from_slice(name.as_bytes());
                body.push(0);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
                if name == "options" {
                    let _ = take_reason(value);
                }
            }
            body.push(0);
            assert_eq!(parse_startup_params(&body).ok().as_ref(), Some(&params));
        }
    }

    let mut rest = data;
    while let Ok(message) = ready(read_tagged(&mut rest, MAX_LOGIN_MESSAGE)) {
        let declared = i32::from_be_bytes([
            message.raw[1],
            message.raw[2],
            message.raw[3],
            message.raw[4],
        ]);
        assert_eq!(usize::try_from(declared).ok(), Some(message.raw.len() - 1));
        let _ = error_fields(message.body());
    }

    // FATAL and WARNING carry client-chosen text (target and user names): whatever it is, the
    // message stays framed and its fields read back, NULs dropped.
    let text = String::from_utf8_lossy(data);
    let (message, hint) = split_text(&text, data.first().map_or(0, |b| usize::from(*b)));
    for (built, tag, hint) in [
        (fatal("28000", message, Some(hint)), b'E', Some(hint)),
        (warning(message), b'N', None),
    ] {
        let mut wire = &built[..];
        let read = ready(read_tagged(&mut wire, usize::MAX)).expect("our own message frames");
        assert!(wire.is_empty());
        assert_eq!(read.tag, tag);
        let fields = error_fields(read.body());
        assert!(fields.contains(&(b'M', without_nul(message))));
        if let Some(hint) = hint {
            assert!(fields.contains(&(b'H', without_nul(hint))));
        }
    }
    let options = [message.to_string(), hint.to_string()];
    let negotiate = negotiate_protocol_version(&options);
    let mut wire = &negotiate[..];
    let read = ready(read_tagged(&mut wire, usize::MAX)).expect("our own message frames");
    assert!(wire.is_empty() && read.tag == b'v');
    // minor version, count, then one NUL-terminated name per option
    let names = read.body()[8..].iter().filter(|b| **b == 0).count();
    assert_eq!(names, 2);
}

// ---- the startup `options` parameter -------------------------------------------------------

/// PostgreSQL's `pg_split_opts` (src/backend/utils/init/postinit.c), byte for byte: words end
/// at `isspace()` (the C locale's six ASCII spaces), a backslash makes the next byte literal.
fn pg_split_opts(options: &[u8]) -> Vec<Vec<u8>> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < options.len() && space(options[i]) {
            i += 1;
        }
        if i == options.len() {
            break;
        }
        let mut word = Vec::new();
        let mut escaped = false;
        while i < options.len() {
            let b = options[i];
            if space(b) && !escaped {
                break;
            }
            if !escaped && b == b'\\' {
                escaped = true;
            } else {
                escaped = false;
                word.push(b);
            }
            i += 1;
        }
        words.push(word);
    }
    words
}

/// `take_reason` against a model built on PostgreSQL's own split: the same reason, and the
/// options forwarded split (as the target will split them) into exactly the other words.
pub fn pg_options(data: &[u8]) {
    let Ok(options) = std::str::from_utf8(data) else {
        return;
    };
    let words = pg_split_opts(data);
    let mut reason = None;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i][..];
        let (setting, consumed) = if word == b"-c" {
            (words.get(i + 1).map(Vec::as_slice), 2)
        } else if let Some(rest) = word.strip_prefix(b"-c") {
            (Some(rest), 1)
        } else if let Some(rest) = word.strip_prefix(b"--") {
            (Some(rest), 1)
        } else {
            (None, 1)
        };
        let pair = setting.and_then(|s| {
            let eq = s.iter().position(|b| *b == b'=')?;
            Some((&s[..eq], &s[eq + 1..]))
        });
        match pair {
            Some((name, value)) if name.eq_ignore_ascii_case(b"jitgate.reason") => {
                reason = Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => kept.extend(words[i..(i + consumed).min(words.len())].iter().cloned()),
        }
        i += consumed;
    }

    let (got_reason, forwarded) = take_reason(options);
    assert_eq!(got_reason, reason, "reason of {options:?}");
    let forwarded_words = pg_split_opts(forwarded.as_deref().unwrap_or("").as_bytes());
    assert_eq!(
        forwarded_words, kept,
        "{options:?} forwarded as {forwarded:?}"
    );
    // Forwarding again changes nothing.
    if let Some(forwarded) = &forwarded {
        assert_eq!(take_reason(forwarded), (None, Some(forwarded.clone())));
    }
}

// ---- the tunnel preamble -------------------------------------------------------------------

/// The gateway reading a tunnel's line (any bytes), and each side reading back what the other
/// writes: any reason the tunnel sends, any refusal the gateway sends.
pub fn ssh_preamble(data: &[u8]) {
    let mut rest = data;
    while let Ok(line) = ready(preamble::read_line(&mut rest)) {
        assert!(line.len() <= MAX_LINE && !line.contains('\n'));
        let _ = preamble::parse_hello(&line);
        let _ = preamble::parse_answer(&line);
    }

    let text = String::from_utf8_lossy(data);
    let hello = preamble::hello(Some(&text));
    let mut wire = hello.as_bytes();
    match ready(preamble::read_line(&mut wire)) {
        Ok(line) => {
            assert!(wire.is_empty());
            let reason = preamble::parse_hello(&line).expect("the gateway reads our hello");
            assert_eq!(
                reason.as_deref(),
                (!text.trim().is_empty()).then_some(&*text)
            );
        }
        Err(PreambleError::TooLong) => {
            // Only past the longest reason a policy accepts (200 characters, at most 2,400
            // bytes percent-encoded) does the line outgrow what the gateway reads; the tunnel
            // refuses such a reason before it connects (`TunnelError::ReasonTooLong`).
            assert!(text.chars().count() > policy::MAX_REASON_CHARS, "{text:?}");
        }
        Err(e) => panic!("the gateway cannot read the tunnel's hello: {e}"),
    }

    let refusal = preamble::error(&text);
    let mut wire = refusal.as_bytes();
    let line = ready(preamble::read_line(&mut wire));
    // The gateway's messages are its own and short; a line too long is the tunnel's to refuse.
    if let Ok(line) = line {
        assert!(wire.is_empty());
        let flat: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        assert_eq!(preamble::parse_answer(&line).ok(), Some(Err(flat)));
    }
    let ok = preamble::ok();
    let line = ready(preamble::read_line(&mut ok.as_bytes())).expect("OK reads");
    assert_eq!(preamble::parse_answer(&line).ok(), Some(Ok(())));
}

// ---- the config and policy loaders ---------------------------------------------------------

/// A problem report is one line per problem: a control character in one (an escape sequence
/// from a crafted file) would reach the operator's terminal from `jitgate policy check`.
fn assert_printable(found: &[LocatedMessage]) {
    assert!(!found.is_empty());
    for message in found {
        assert!(
            !message.message.chars().any(char::is_control),
            "{:?}",
            message.message
        );
    }
}

/// `Config::from_yaml` on any text: a config or a list of located, printable problems.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(Path::new("/etc/jitgate/jitgate.yaml"), text) {
        Ok(config) => {
            for name in config.targets.keys() {
                assert!(config.target(name).is_some());
            }
        }
        Err(ConfigError::Invalid(found)) => assert_printable(&found),
        Err(e) => panic!("from_yaml reads no file, yet: {e}"),
    }
}

/// `PolicySet::from_sources` on up to four files (the input cut at NUL bytes, which YAML text
/// cannot contain); a set that loads is then asked a few questions.
pub fn policy(data: &[u8]) {
    let texts: Vec<&str> = data
        .split(|b| *b == 0)
        .take(4)
        .filter_map(|t| std::str::from_utf8(t).ok())
        .collect();
    let paths: Vec<String> = (0..texts.len())
        .map(|i| format!("/etc/jitgate/policies/{i}.yaml"))
        .collect();
    let sources = paths.iter().map(|p| Path::new(p.as_str())).zip(texts);
    match PolicySet::from_sources(sources) {
        Ok(policies) => {
            let identity = Identity {
                user: "alice".into(),
                groups: vec!["dba".into(), "analyst".into()],
                spiffe_id: None,
                serial: "01".into(),
                kind: SubjectKind::Person,
            };
            for kind in [TargetKind::Postgres, TargetKind::Ssh] {
                for target in ["orders", "web-1"] {
                    let _ = policy::applicable_grants(&policies, &identity, target, kind);
                    for requested in ["alice", "orders-dba", "web"] {
                        let request = AccessRequest {
                            identity: &identity,
                            target,
                            kind,
                            requested,
                            reason: Some("INC-1"),
                        };
                        let _ = policy::evaluate(&policies, &request);
                    }
                }
            }
        }
        Err(PolicyError::Invalid(found)) => assert_printable(&found),
        Err(e) => panic!("from_sources reads no file, yet: {e}"),
    }
}

// ---- the audit decoders --------------------------------------------------------------------

/// The input as a script of chunks, as `audit::sftp::fuzz_sftp` reads it: each control byte's
/// low bit picks the side (0 client, 1 server), the rest is the chunk's length.
fn script(data: &[u8]) -> Vec<(bool, &[u8])> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(control >> 1).min(tail.len()));
        chunks.push((control & 1 == 1, chunk));
        rest = tail;
    }
    chunks
}

/// Ways to cut each chunk into reads: whole, byte by byte, and sizes from a small generator.
fn cuts(seed: u8) -> [Box<dyn FnMut() -> usize>; 3] {
    let mut state = u32::from(seed) | 0x100;
    [
        Box::new(|| usize::MAX),
        Box::new(|| 1),
        Box::new(move || {
            // xorshift32: any sequence will do, as long as it mixes small and larger reads.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            1 + (state % 23) as usize
        }),
    ]
}

fn feed_cut(chunk: &[u8], cut: &mut dyn FnMut() -> usize, mut feed: impl FnMut(&[u8])) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (read, tail) = rest.split_at(cut().min(rest.len()));
        feed(read);
        rest = tail;
    }
}

/// `PgDecoder`: never panics, and cutting the same session into different reads gives the
/// same events. The first byte picks the grant's options (small caps reach the cut paths).
pub fn audit_pg(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let options = PgAuditOptions {
        redact_parameters: choice & 1 == 1,
        max_query: [MAX_QUERY, 0, 1, 5, 64][usize::from(choice >> 1) % 5],
        max_parameter: [MAX_PARAMETER, 0, 3][usize::from(choice >> 4) % 3],
    };
    let chunks = script(rest);
    let runs: Vec<Vec<PgEvent>> = cuts(choice)
        .iter_mut()
        .map(|cut| {
            let mut decoder = PgDecoder::new(options);
            let mut events = Vec::new();
            for (server, chunk) in &chunks {
                feed_cut(chunk, cut.as_mut(), |read| {
                    if *server {
                        decoder.upstream(read, &mut events)
                    } else {
                        decoder.client(read, &mut events)
                    }
                });
            }
            events
        })
        .collect();
    for event in &runs[0] {
        let line = serde_json::to_string(event).expect("an event serializes");
        assert!(!line.contains('\n'));
    }
    assert_eq!(runs[0], runs[1], "whole chunks vs byte by byte");
    assert_eq!(runs[0], runs[2], "whole chunks vs cut into small reads");
}

/// `SftpDecoder`: never panics, stays within its memory caps (`fuzz_sftp`, checked with debug
/// assertions on), and cutting the channel into different reads gives the same events and
/// counters.
pub fn audit_sftp(data: &[u8]) {
    fuzz_sftp(data);
    let chunks = script(data);
    let runs: Vec<(Vec<SftpEvent>, SftpStats)> = cuts(data.first().copied().unwrap_or(0))
        .iter_mut()
        .map(|cut| {
            let mut decoder = SftpDecoder::new();
            let mut events = Vec::new();
            for (server, chunk) in &chunks {
                feed_cut(chunk, cut.as_mut(), |read| {
                    if *server {
                        decoder.server(read, &mut events)
                    } else {
                        decoder.client(read, &mut events)
                    }
                });
            }
            decoder.finish(&mut events);
            (events, decoder.stats())
        })
        .collect();
    for event in &runs[0].0 {
        serde_json::to_string(event).expect("an event serializes");
    }
    assert_eq!(runs[0], runs[1], "whole chunks vs byte by byte");
    assert_eq!(runs[0], runs[2], "whole chunks vs cut into small reads");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed corpus file through its target: what CI runs instead of libFuzzer.
    #[test]
    fn every_target_passes_its_corpus() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("a corpus entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{} has no seeds", dir.display());
            for file in files {
                let data = std::fs::read(&file).expect("a corpus file reads");
                println!("{}", file.display());
                target(&data);
            }
        }
    }
}
