//! Unit tests of `audit::recording`: the writer on a paused clock, the file format, replay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn header() -> CastHeader {
    let mut h = CastHeader::new(80, 24);
    h.env = Some([("TERM".to_owned(), Some("xterm-256color".to_owned()))].into());
    h.title = Some("alice@web-1".into());
    h.jitgate = Some(RecordingMeta {
        session_id: "s-42".into(),
        user: "alice".into(),
        groups: vec!["ops".into()],
        target: "web-1".into(),
        jit_account: Some("jit_alice_1".into()),
    });
    h
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn record(
    dir: &tempfile::TempDir,
    config: RecorderConfig,
    script: impl FnOnce(RecordingHandle),
) -> (RecordingSummary, Vec<serde_json::Value>) {
    let path = dir.path().join("s.cast");
    let recorder = Recorder::create(&path, header(), config).await.unwrap();
    script(recorder.handle());
    let summary = recorder.finish().await.unwrap();
    (summary, lines(&path))
}

#[tokio::test(start_paused = true)]
async fn the_header_carries_size_term_time_and_who() {
    let dir = tempfile::tempdir().unwrap();
    let (_, lines) = record(&dir, RecorderConfig::default(), |_| {}).await;
    let h = &lines[0];
    assert_eq!(h["version"], 2);
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(h["env"], serde_json::json!({"TERM": "xterm-256color"}));
    assert_eq!(h["title"], "alice@web-1");
    assert_eq!(
        h["jitgate"],
        serde_json::json!({"session_id": "s-42", "user": "alice", "groups": ["ops"],
            "target": "web-1", "jit_account": "jit_alice_1"})
    );
    // asciinema 3 reads the timestamp as an unsigned integer.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(h["timestamp"].as_u64().unwrap().abs_diff(now) < 60);
    assert_eq!(lines.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn events_are_timed_when_the_relay_hands_them_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let recorder = Recorder::create(&path, header(), RecorderConfig::default())
        .await
        .unwrap();
    let handle = recorder.handle();
    handle.output(Bytes::from_static(b"$ "));
    tokio::time::advance(Duration::from_millis(1500)).await;
    handle.input(Bytes::from_static(b"ls\r"));
    tokio::time::advance(Duration::from_micros(250)).await;
    handle.output(Bytes::from_static(b"ls\r\n\x1b[1mfile\x1b[0m \"q\"\r\n"));
    handle.resize(120, 40);
    let summary = recorder.finish().await.unwrap();
    assert_eq!(
        lines(&path)[1..],
        [
            serde_json::json!([0.0, "o", "$ "]),
            serde_json::json!([1.5, "i", "ls\r"]),
            serde_json::json!([1.50025, "o", "ls\r\n\u{1b}[1mfile\u{1b}[0m \"q\"\r\n"]),
            serde_json::json!([1.50025, "r", "120x40"]),
        ]
    );
    assert_eq!((summary.bytes_in, summary.bytes_out), (3, 24));
    assert_eq!(summary.dropped, Dropped::default());
    assert_eq!(summary.path, path);
}

#[test]
fn utf8_split_anywhere_is_carried_to_the_next_chunk() {
    let text = "héllo → 世界 🦀!";
    let bytes = text.as_bytes();
    for cut in 0..=bytes.len() {
        let mut carry = Utf8Carry::default();
        let first = carry.decode(&bytes[..cut]);
        let second = carry.decode(&bytes[cut..]);
        assert!(!first.contains('\u{FFFD}') && !second.contains('\u{FFFD}'));
        assert_eq!(first + &second, text, "cut at {cut}");
        assert!(carry.flush().is_empty());
    }
    // One byte at a time.
    let mut carry = Utf8Carry::default();
    let joined: String = bytes.iter().map(|b| carry.decode(&[*b])).collect();
    assert_eq!(joined, text);
    // Invalid bytes are replaced, and a sequence that never completes is flushed as U+FFFD.
    let mut carry = Utf8Carry::default();
    assert_eq!(carry.decode(b"a\xffb\xe4"), "a\u{FFFD}b");
    assert_eq!(carry.flush(), "\u{FFFD}");
}

#[tokio::test(start_paused = true)]
async fn a_character_split_across_chunks_is_one_event_of_whole_text() {
    let dir = tempfile::tempdir().unwrap();
    let (_, lines) = record(&dir, RecorderConfig::default(), |h| {
        let euro = "€".as_bytes();
        h.output(Bytes::copy_from_slice(&euro[..1]));
        h.output(Bytes::copy_from_slice(&euro[1..]));
        h.output(Bytes::from_static(b"x\xc3"));
    })
    .await;
    let data: Vec<&str> = lines[1..].iter().map(|l| l[2].as_str().unwrap()).collect();
    // The first chunk has no whole character: no event; the dangling \xc3 is flushed at close.
    assert_eq!(data, ["€", "x", "\u{FFFD}"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_chunks_and_marks_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let config = RecorderConfig {
        capacity: 2,
        ..RecorderConfig::default()
    };
    let path = dir.path().join("s.cast");
    let recorder = Recorder::create(&path, header(), config).await.unwrap();
    let h = recorder.handle();
    // The writer cannot run until this task yields: two chunks fit, the rest are dropped.
    h.output(Bytes::from_static(b"one "));
    h.output(Bytes::from_static(b"two "));
    tokio::time::advance(Duration::from_secs(2)).await;
    // The writer has drained the queue by now; these find it full again.
    for _ in 0..4 {
        h.output(Bytes::from_static(b"0123456789"));
    }
    h.input(Bytes::from_static(b"q"));
    h.resize(100, 30);
    assert!(!h.is_closed());
    let summary = recorder.finish().await.unwrap();
    assert_eq!(
        summary.dropped,
        Dropped {
            bytes_in: 1,
            bytes_out: 20,
            resizes: 1
        }
    );
    let lines = lines(&path);
    assert_eq!(
        lines[1..],
        [
            serde_json::json!([0.0, "o", "one "]),
            serde_json::json!([0.0, "o", "two "]),
            serde_json::json!([2.0, "o", "0123456789"]),
            serde_json::json!([2.0, "o", "0123456789"]),
            serde_json::json!([
                2.0,
                "m",
                "gap: 20 output bytes, 1 input bytes, 1 resizes dropped"
            ]),
        ]
    );
    assert_eq!(summary.bytes_out, 28);
}

#[tokio::test(start_paused = true)]
async fn the_byte_cap_drops_big_chunks_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = RecorderConfig {
        max_queued_bytes: 16,
        ..RecorderConfig::default()
    };
    let (summary, lines) = record(&dir, config, |h| {
        h.output(Bytes::from(vec![b'a'; 10]));
        h.output(Bytes::from(vec![b'b'; 10]));
        h.output(Bytes::from(vec![b'c'; 6]));
    })
    .await;
    assert_eq!(summary.dropped.bytes_out, 10);
    assert_eq!(lines.len(), 1 + 3);
    // The marker sits where the lost chunk was: between the a's and the c's.
    assert_eq!(lines[2][1], "m");
    assert_eq!(lines[3][2], "cccccc");
}

#[tokio::test]
async fn an_existing_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    std::fs::write(&path, "keep").unwrap();
    let err = Recorder::create(&path, header(), RecorderConfig::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("s.cast"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
}

#[tokio::test(start_paused = true)]
async fn reading_and_exporting_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let recorder = Recorder::create(&path, header(), RecorderConfig::default())
        .await
        .unwrap();
    let h = recorder.handle();
    for (i, chunk) in ["a\u{7}\t\"\\", "é\u{1b}[31m", "\r\n", "🦀"]
        .iter()
        .enumerate()
    {
        tokio::time::advance(Duration::from_micros(123_457 * i as u64 + 1)).await;
        h.output(Bytes::copy_from_slice(chunk.as_bytes()));
        h.input(Bytes::copy_from_slice(b"k"));
    }
    h.resize(90, 33);
    recorder.finish().await.unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    let cast = read_cast(&path).unwrap();
    assert_eq!(cast.header, header_with_timestamp(cast.header.timestamp));
    assert_eq!(cast.events.len(), 9);
    assert_eq!(to_cast_string(&cast).unwrap(), written);
}

fn header_with_timestamp(timestamp: Option<u64>) -> CastHeader {
    CastHeader {
        timestamp,
        ..header()
    }
}

#[test]
fn foreign_files_keep_unknown_keys_and_codes() {
    let text = concat!(
        r##"{"version": 2, "width": 80, "height": 24, "timestamp": 1504467315, "theme": {"fg": "#d0d0d0"}, "env": {"SHELL": null, "TERM": "xterm"}}"##,
        "\n",
        r#"[0.248848, "o", "hi"]"#,
        "\n\n",
        r#"[1.5, "x", "0"]"#,
        "\n"
    );
    let cast = Cast::parse(text.as_bytes(), "demo.cast").unwrap();
    assert_eq!(cast.header.other["theme"]["fg"], "#d0d0d0");
    assert_eq!(cast.header.env.as_ref().unwrap()["SHELL"], None);
    assert_eq!(
        cast.events[1].event,
        CastEvent::Other {
            code: "x".into(),
            data: "0".into()
        }
    );
    assert_eq!(cast.duration(), 1.5);
    let again = Cast::parse(to_cast_string(&cast).unwrap().as_bytes(), "again").unwrap();
    assert_eq!(again, cast);
}

#[test]
fn errors_name_the_file_and_the_line() {
    let err = |text: &[u8]| Cast::parse(text, "rec.cast").unwrap_err().to_string();
    let good_header = br#"{"version":2,"width":80,"height":24}"#;
    let with = |rest: &[u8]| [&good_header[..], b"\n", rest].concat();
    assert_eq!(err(b""), "rec.cast: empty, no asciicast header");
    assert!(err(b"{\"version\":1,\"stdout\":[]}")
        .starts_with("rec.cast:1: not asciicast v2 (version 1)"));
    assert!(err(b"not json").starts_with("rec.cast:1: header is not JSON"));
    assert!(err(br#"{"version":2,"width":"wide","height":24}"#)
        .starts_with("rec.cast:1: bad asciicast v2 header"));
    let e = err(&with(b"[0.1,\"o\",\"a\"]\n[0.2,\"o\"]\n"));
    assert!(
        e.starts_with("rec.cast:3: not a [time, code, data] event"),
        "{e}"
    );
    let e = err(&with(b"[0.1,\"r\",\"80-24\"]\n"));
    assert_eq!(e, "rec.cast:2: resize \"80-24\" is not COLSxROWS");
    let e = err(&with(b"[-1,\"o\",\"a\"]\n"));
    assert!(e.starts_with("rec.cast:2: event time -1"), "{e}");
    let e = err(&with(b"[0.1,\"o\",\"\xff\"]\n"));
    assert!(e.starts_with("rec.cast:2: not UTF-8"), "{e}");
    let e = read_cast("/nonexistent/x.cast").unwrap_err().to_string();
    assert!(e.starts_with("cannot read /nonexistent/x.cast:"), "{e}");
}

/// A clock that only records when replay asked to wait.
#[derive(Default)]
struct Waits(Vec<Duration>);

impl ReplayClock for Waits {
    fn wait_until(&mut self, offset: Duration) {
        self.0.push(offset);
    }
}

fn timed(time: f64, event: CastEvent) -> TimedEvent {
    TimedEvent { time, event }
}

fn sample() -> Cast {
    Cast {
        header: CastHeader::new(80, 24),
        events: vec![
            timed(0.5, CastEvent::Output("a".into())),
            timed(1.0, CastEvent::Input("k".into())),
            timed(1.25, CastEvent::Resize { cols: 1, rows: 1 }),
            timed(4.0, CastEvent::Output("b".into())),
            timed(4.0, CastEvent::Marker(String::new())),
            timed(4.5, CastEvent::Output("c".into())),
        ],
    }
}

fn replayed(cast: &Cast, options: ReplayOptions) -> (String, Vec<f64>) {
    let mut out = Vec::new();
    let mut clock = Waits::default();
    replay_with(cast, &options, &mut out, &mut clock).unwrap();
    let waits = clock.0.iter().map(Duration::as_secs_f64).collect();
    (String::from_utf8(out).unwrap(), waits)
}

#[test]
fn replay_writes_output_at_its_times_divided_by_speed() {
    let (out, waits) = replayed(&sample(), ReplayOptions::default());
    assert_eq!(out, "abc");
    assert_eq!(waits, [0.5, 4.0, 4.5]);
    let (_, waits) = replayed(
        &sample(),
        ReplayOptions {
            speed: 2.0,
            idle_time_limit: None,
        },
    );
    assert_eq!(waits, [0.25, 2.0, 2.25]);
}

#[test]
fn replay_caps_idle_gaps_from_the_options_or_the_header() {
    let capped = ReplayOptions {
        speed: 1.0,
        idle_time_limit: Some(1.0),
    };
    // Pauses 0.5, 0.5, 0.25, 2.75→1, 0, 0.5.
    assert_eq!(replayed(&sample(), capped).1, [0.5, 2.25, 2.75]);
    let mut cast = sample();
    cast.header.idle_time_limit = Some(1.0);
    assert_eq!(
        replayed(&cast, ReplayOptions::default()).1,
        [0.5, 2.25, 2.75]
    );
}

#[test]
fn replay_refuses_a_speed_that_is_not_positive() {
    for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let options = ReplayOptions {
            speed,
            idle_time_limit: None,
        };
        let mut clock = Waits::default();
        let err = replay_with(&sample(), &options, Vec::new(), &mut clock).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
    // A speed so small the times overflow a Duration is an error too, not a panic.
    let options = ReplayOptions {
        speed: 1e-300,
        idle_time_limit: None,
    };
    assert!(replay_with(&sample(), &options, Vec::new(), &mut Waits::default()).is_err());
}

#[test]
fn replay_on_the_real_clock_takes_about_the_scaled_time() {
    let cast = Cast {
        header: CastHeader::new(80, 24),
        events: vec![
            timed(0.0, CastEvent::Output("x".into())),
            timed(0.2, CastEvent::Output("y".into())),
        ],
    };
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    replay(&cast, 2.0, &mut out).unwrap();
    let took = start.elapsed();
    assert_eq!(out, b"xy");
    // 0.1 s expected; only loose bounds on a shared machine.
    assert!(took >= Duration::from_millis(90), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// asciinema's own reader accepts what the Recorder writes. `asciinema` 2.x is pure Python
/// (`pip install 'asciinema>=2.4,<3'`); JITGATE_ASCIINEMA may name the binary.
#[tokio::test]
async fn asciinema_cat_accepts_a_recording() {
    let bin = std::env::var_os("JITGATE_ASCIINEMA")
        .map(PathBuf::from)
        .or_else(|| crate::sandbox::which("asciinema"));
    let Some(bin) = bin else {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(!ci, "asciinema is required under CI=true");
        eprintln!("SKIPPED: asciinema not available");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cast");
    let recorder = Recorder::create(&path, header(), RecorderConfig::default())
        .await
        .unwrap();
    let h = recorder.handle();
    let euro = "€".as_bytes();
    h.output(Bytes::from_static(b"$ echo hi\r\n"));
    h.input(Bytes::from_static(b"echo hi\r"));
    h.output(Bytes::copy_from_slice(&euro[..2]));
    h.output(Bytes::copy_from_slice(&euro[2..]));
    h.resize(100, 30);
    recorder.finish().await.unwrap();
    // asciinema 2 opens /dev/tty even for `cat`: script(1) gives it one.
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("{} cat '{}'", bin.display(), path.display()))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "$ echo hi\r\n€");
}
