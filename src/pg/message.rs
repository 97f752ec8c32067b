//! The few PostgreSQL wire messages the gateway itself reads or writes (protocol 3.0).
//!
//! Everything after login passes through untouched; these are only the front door's packets
//! (with the gateway's [`CancelKey`], as a CancelRequest carries it), the upstream login's
//! messages, and the messages jitgate writes to the client itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest startup-phase packet accepted from a client (PostgreSQL's own limit is 10,000).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Longest message accepted from the upstream during login (ParameterStatus, errors, SASL).
pub const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid packet length {0}")]
    BadLength(usize),
    #[error("malformed {0}")]
    Malformed(&'static str),
}

fn closed_or_io(e: std::io::Error) -> WireError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        WireError::Closed
    } else {
        WireError::Io(e)
    }
}

/// One untagged startup-phase packet: its 4-byte code and the body after it.
#[derive(Debug)]
pub struct StartupPacket {
    pub code: i32,
    pub body: Bytes,
}

/// Reads an untagged packet (length includes itself, then an int32 code).
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StartupPacket, WireError> {
    let len = r.read_i32().await.map_err(closed_or_io)?;
    let len = usize::try_from(len).map_err(|_| WireError::BadLength(0))?;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(WireError::BadLength(len));
    }
    let code = r.read_i32().await.map_err(closed_or_io)?;
    let mut body = vec![0u8; len - 8];
    r.read_exact(&mut body).await.map_err(closed_or_io)?;
    Ok(StartupPacket {
        code,
        body: body.into(),
    })
}

/// The key a client holds: the gateway's, never the upstream's. Sent in BackendKeyData
/// ([`backend_key_data`]) and read back from a CancelRequest ([`CancelKey::decode`]);
/// `pg::cancel` issues and routes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub key: i32,
}

impl CancelKey {
    /// The key in a CancelRequest body (what follows its code).
    pub fn decode(body: &[u8]) -> Result<CancelKey, WireError> {
        let mut body = body;
        if body.len() != 8 {
            // Protocol 3.2 allows longer keys; ours are always 4 bytes, so anything else is unknown.
            return Err(WireError::Malformed("cancel request"));
        }
        Ok(CancelKey {
            pid: body.get_i32(),
            key: body.get_i32(),
        })
    }
}

/// Name/value pairs of a StartupMessage body, in order.
pub fn parse_startup_params(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut fields = body.split(|b| *b == 0);
    let mut params = Vec::new();
    loop {
        let name = fields
            .next()
            .ok_or(WireError::Malformed("startup packet"))?;
        if name.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or(WireError::Malformed("startup packet"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| WireError::Malformed("startup parameter name"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| WireError::Malformed("startup parameter value"))?;
        params.push((name.to_string(), value.to_string()));
    }
    Ok(params)
}

/// A tagged message as read from the upstream during login; `raw` is the whole message.
#[derive(Debug)]
pub struct Tagged {
    pub tag: u8,
    pub raw: Bytes,
}

impl Tagged {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

pub async fn read_tagged<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Tagged, WireError> {
    let tag = r.read_u8().await.map_err(closed_or_io)?;
    let len = r.read_i32().await.map_err(closed_or_io)?;
    let len = usize::try_from(len).map_err(|_| WireError::BadLength(0))?;
    if !(4..=max).contains(&len) {
        return Err(WireError::BadLength(len));
    }
    let mut raw = BytesMut::with_capacity(len + 1);
    raw.put_u8(tag);
    raw.put_i32(len as i32);
    raw.resize(len + 1, 0);
    r.read_exact(&mut raw[5..]).await.map_err(closed_or_io)?;
    Ok(Tagged {
        tag,
        raw: raw.freeze(),
    })
}

/// Fields of an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

fn tagged(tag: u8, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(tag);
    buf.put_i32(0);
    body(&mut buf);
    let len = (buf.len() - 1) as i32;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf
}

/// ErrorResponse with severity FATAL, as PostgreSQL sends when it refuses a connection.
pub fn fatal(code: &str, message: &str, hint: Option<&str>) -> BytesMut {
    tagged(b'E', |b| {
        for (field, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', code),
            (b'M', message),
        ] {
            put_field(b, field, value);
        }
        if let Some(hint) = hint {
            put_field(b, b'H', hint);
        }
        b.put_u8(0);
    })
}

/// NoticeResponse with severity WARNING and SQLSTATE 01000 (`warning`): what the gateway
/// itself tells a client in a running session (psql prints `WARNING:  <message>`). WARNING,
/// not NOTICE: PostgreSQL uses it for what will affect the user, and a default
/// `client_min_messages` shows both.
pub fn warning(message: &str) -> BytesMut {
    tagged(b'N', |b| {
        for (field, value) in [
            (b'S', "WARNING"),
            (b'V', "WARNING"),
            (b'C', "01000"),
            (b'M', message),
        ] {
            put_field(b, field, value);
        }
        b.put_u8(0);
    })
}

fn put_field(b: &mut BytesMut, field: u8, value: &str) {
    b.put_u8(field);
    // A NUL inside a value would end the field early and desynchronise the client.
    b.extend(value.bytes().filter(|c| *c != 0));
    b.put_u8(0);
}

pub fn authentication_ok() -> BytesMut {
    tagged(b'R', |b| b.put_i32(0))
}

pub fn backend_key_data(pid: i32, key: i32) -> BytesMut {
    tagged(b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    })
}

/// NegotiateProtocolVersion: the newest minor version we speak (3.0) and the `_pq_.` options we
/// don't know, sent when a client asks for a newer minor version or protocol options.
pub fn negotiate_protocol_version(unsupported: &[String]) -> BytesMut {
    tagged(b'v', |b| {
        b.put_i32(0);
        b.put_i32(unsupported.len() as i32);
        for option in unsupported {
            b.extend(option.bytes().filter(|c| *c != 0));
            b.put_u8(0);
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fatal_golden_bytes() {
        let msg = fatal("28000", "no", None);
        let expected: &[u8] = b"E\0\0\0\x1eSFATAL\0VFATAL\0C28000\0Mno\0\0";
        assert_eq!(&msg[..], expected);
    }

    #[test]
    fn warning_golden_bytes() {
        let msg = warning("soon");
        let expected: &[u8] = b"N\0\0\0\x24SWARNING\0VWARNING\0C01000\0Msoon\0\0";
        assert_eq!(&msg[..], expected);
    }

    #[test]
    fn fatal_strips_nul_from_values() {
        let msg = fatal("28000", "a\0b", Some("h"));
        let fields = error_fields(&msg[5..]);
        assert!(fields.contains(&(b'M', "ab".to_string())));
        assert!(fields.contains(&(b'H', "h".to_string())));
    }

    #[test]
    fn auth_ok_and_key_data_golden_bytes() {
        assert_eq!(&authentication_ok()[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            &backend_key_data(1, 2)[..],
            b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02"
        );
    }

    #[test]
    fn cancel_key_decodes_from_golden_bytes() {
        let key = CancelKey::decode(b"\0\0\0\x01\xff\xff\xff\xfe").unwrap();
        assert_eq!(key, CancelKey { pid: 1, key: -2 });
        // A protocol 3.2 longer key, or a short body, is not one of ours.
        assert!(matches!(
            CancelKey::decode(&[0; 12]),
            Err(WireError::Malformed("cancel request"))
        ));
        assert!(CancelKey::decode(&[0; 4]).is_err());
    }

    #[test]
    fn startup_params_parse_in_order() {
        let body = b"user\0alice\0database\0orders\0\0";
        let params = parse_startup_params(body).unwrap();
        assert_eq!(
            params,
            vec![
                ("user".into(), "alice".into()),
                ("database".into(), "orders".into())
            ]
        );
        assert!(parse_startup_params(b"user\0alice").is_err());
    }

    #[tokio::test]
    async fn oversized_startup_packet_is_refused() {
        let mut bytes: &[u8] = &[0, 1, 0, 0, 0, 3, 0, 0];
        assert!(matches!(
            read_startup_packet(&mut bytes).await,
            Err(WireError::BadLength(65536))
        ));
        let mut short: &[u8] = &[0, 0, 0, 4];
        assert!(matches!(
            read_startup_packet(&mut short).await,
            Err(WireError::BadLength(4))
        ));
    }
}
