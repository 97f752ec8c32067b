//! The one-line handshake between `jitgate tunnel` and the bastion, inside TLS and before SSH.
//!
//! The tunnel sends `JITGATE/1 reason=<percent-encoded>\n`; the gateway answers
//! `JITGATE/1 OK\n` (then SSH starts) or `JITGATE/1 ERROR <message>\n` (then closes), so a
//! refusal reaches the user as one line on stderr instead of an opaque SSH failure.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAX_LINE: usize = 4096;
const MAGIC: &str = "JITGATE/1";

#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a jitgate tunnel (connect with `jitgate tunnel`)")]
    NotOurs,
    #[error("preamble line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Reads one `\n`-terminated line byte by byte (no read-ahead: SSH follows on the same stream).
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, PreambleError> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            return Err(PreambleError::Closed);
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Err(PreambleError::TooLong);
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| PreambleError::NotOurs)
}

/// The tunnel's opening line.
pub fn hello(reason: Option<&str>) -> String {
    format!("{MAGIC} reason={}\n", percent_encode(reason.unwrap_or("")))
}

/// The reason in a tunnel's opening line (`None` when empty).
pub fn parse_hello(line: &str) -> Result<Option<String>, PreambleError> {
    let rest = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(" reason="))
        .ok_or(PreambleError::NotOurs)?;
    let reason = percent_decode(rest).ok_or(PreambleError::NotOurs)?;
    Ok(if reason.trim().is_empty() {
        None
    } else {
        Some(reason)
    })
}

pub fn ok() -> String {
    format!("{MAGIC} OK\n")
}

/// An error line; newlines in the message are flattened so it stays one line.
pub fn error(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{MAGIC} ERROR {flat}\n")
}

/// The gateway's answer: `Ok(())` to go on with SSH, `Err(message)` for a refusal.
pub fn parse_answer(line: &str) -> Result<Result<(), String>, PreambleError> {
    let rest = line.strip_prefix(MAGIC).ok_or(PreambleError::NotOurs)?;
    match rest {
        " OK" => Ok(Ok(())),
        other => match other.strip_prefix(" ERROR ") {
            Some(message) => Ok(Err(message.to_string())),
            None => Err(PreambleError::NotOurs),
        },
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hello_round_trips_any_reason() {
        for reason in ["INC-42", "fix the thing: now\nplease", "ünïcode %41", ""] {
            let line = hello(Some(reason));
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let parsed = parse_hello(line.trim_end()).unwrap();
            assert_eq!(
                parsed.as_deref(),
                if reason.is_empty() {
                    None
                } else {
                    Some(reason)
                }
            );
        }
        assert!(parse_hello("SSH-2.0-OpenSSH_9.2").is_err());
        assert!(parse_hello("JITGATE/1 reason=%4").is_err());
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(ok().trim_end()).unwrap(), Ok(()));
        let e = error("no policy grants alice access to web-1\nsecond line");
        assert_eq!(
            parse_answer(e.trim_end()).unwrap(),
            Err("no policy grants alice access to web-1 second line".to_string())
        );
        assert!(parse_answer("SSH-2.0-x").is_err());
    }

    #[tokio::test]
    async fn read_line_stops_at_newline_and_bounds_length() {
        let mut input: &[u8] = b"JITGATE/1 OK\r\nSSH-2.0-rest";
        assert_eq!(read_line(&mut input).await.unwrap(), "JITGATE/1 OK");
        assert_eq!(input, b"SSH-2.0-rest");
        let long = vec![b'a'; MAX_LINE + 10];
        assert!(matches!(
            read_line(&mut &long[..]).await,
            Err(PreambleError::TooLong)
        ));
        assert!(matches!(
            read_line(&mut &b"no newline"[..]).await,
            Err(PreambleError::Closed)
        ));
    }
}
