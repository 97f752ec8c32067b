//! Logging in to the target as the JIT role: TLS per target config, StartupMessage, SCRAM-SHA-256
//! with the lease's password (which never leaves this module's memory), then the server's
//! ParameterStatus / BackendKeyData / ReadyForQuery, kept for the client's handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::message::{error_fields, read_tagged, Tagged, WireError, MAX_LOGIN_MESSAGE};
use crate::config::{PgTarget, UpstreamTls};
use crate::jit::PgLease;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach target {target} ({addr}): {reason}")]
    Unreachable {
        target: String,
        addr: String,
        reason: String,
    },
    #[error("target {target} does not accept TLS, but jitgate is configured to require it")]
    NoTls { target: String },
    #[error("TLS to target {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("target {target} asked for {method} authentication; jitgate logs in with SCRAM-SHA-256 (set scram-sha-256 in the target's pg_hba.conf)")]
    UnsupportedAuth { target: String, method: String },
    /// The target refused the login or the session; forwarded to the client as it came.
    #[error("target {target} refused the session: {message}")]
    Refused {
        target: String,
        code: String,
        message: String,
    },
    #[error("login to target {target} failed: {reason}")]
    Protocol { target: String, reason: String },
    #[error("login to target {target} timed out")]
    Timeout { target: String },
}

/// The upstream socket, plain or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A logged-in upstream session, ready to be spliced.
pub struct Upstream {
    pub stream: UpstreamStream,
    /// ParameterStatus and NoticeResponse messages, raw, in the order the server sent them.
    pub greeting: Vec<Tagged>,
    /// The upstream's ReadyForQuery, raw.
    pub ready: Tagged,
    pub backend_pid: i32,
    pub backend_key: i32,
}

/// Opens a socket to the target, with TLS as configured (used by login and by cancel).
pub async fn connect(target: &PgTarget) -> Result<UpstreamStream, UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    let unreachable = |reason: String| UpstreamError::Unreachable {
        target: target.name.clone(),
        addr: addr.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| unreachable("connect timed out".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;
    let ca = match &target.tls {
        UpstreamTls::Disable => return Ok(UpstreamStream::Plain(tcp)),
        UpstreamTls::Require => None,
        UpstreamTls::VerifyFull { ca } => Some(ca.as_path()),
    };
    let mut tcp = tcp;
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if answer != b'S' {
        return Err(UpstreamError::NoTls {
            target: target.name.clone(),
        });
    }
    let tls_err = |reason: String| UpstreamError::Tls {
        target: target.name.clone(),
        reason,
    };
    let config = crate::tls::upstream_client_config(ca).map_err(|e| tls_err(e.to_string()))?;
    let server_name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| tls_err(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    Ok(UpstreamStream::Tls(Box::new(stream)))
}

/// Logs in as the lease's role. `params` are the client's startup parameters to pass on
/// (never `user`/`database`, which come from the lease).
pub async fn login(
    target: &PgTarget,
    lease: &PgLease,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let timeout = UpstreamError::Timeout {
        target: target.name.clone(),
    };
    tokio::time::timeout(LOGIN_TIMEOUT, login_inner(target, lease, params))
        .await
        .map_err(|_| timeout)?
}

async fn login_inner(
    target: &PgTarget,
    lease: &PgLease,
    params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let mut stream = connect(target).await?;
    let name = target.name.as_str();
    let protocol = |reason: String| UpstreamError::Protocol {
        target: name.to_string(),
        reason,
    };
    let wire = |e: WireError| UpstreamError::Protocol {
        target: name.to_string(),
        reason: e.to_string(),
    };

    let mut startup: Vec<(&str, &str)> = vec![
        ("user", lease.role.as_str()),
        ("database", lease.database.as_str()),
    ];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut buf = BytesMut::new();
    frontend::startup_message(startup.iter().copied(), &mut buf)
        .map_err(|e| protocol(e.to_string()))?;
    send(&mut stream, &mut buf).await.map_err(wire)?;

    let mut scram: Option<ScramSha256> = None;
    loop {
        let msg = read_tagged(&mut stream, MAX_LOGIN_MESSAGE)
            .await
            .map_err(wire)?;
        match msg.tag {
            b'R' => {
                let mut body = msg.body();
                if body.len() < 4 {
                    return Err(protocol("short authentication message".into()));
                }
                let code = body.get_i32();
                match code {
                    0 => break,
                    10 => {
                        let mechanisms: Vec<&[u8]> =
                            body.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                        if !mechanisms.contains(&SCRAM_SHA_256.as_bytes()) {
                            return Err(UpstreamError::UnsupportedAuth {
                                target: name.to_string(),
                                method: "a SASL mechanism other than SCRAM-SHA-256".into(),
                            });
                        }
                        let s = ScramSha256::new(
                            lease.password.expose().as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)
                            .map_err(|e| protocol(e.to_string()))?;
                        send(&mut stream, &mut buf).await.map_err(wire)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| protocol("SASL continue before SASL start".into()))?;
                        s.update(body)
                            .map_err(|e| protocol(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(s.message(), &mut buf)
                            .map_err(|e| protocol(e.to_string()))?;
                        send(&mut stream, &mut buf).await.map_err(wire)?;
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| protocol("SASL final before SASL start".into()))?;
                        // Verifies the server's signature: the target proves it knows the verifier.
                        s.finish(body)
                            .map_err(|e| protocol(format!("SCRAM server signature: {e}")))?;
                    }
                    other => {
                        let method = match other {
                            3 => "cleartext password",
                            5 => "MD5",
                            7 => "GSSAPI",
                            9 => "SSPI",
                            _ => "an unknown",
                        };
                        return Err(UpstreamError::UnsupportedAuth {
                            target: name.to_string(),
                            method: method.into(),
                        });
                    }
                }
            }
            b'E' => return Err(refused(name, &msg)),
            b'N' | b'v' => {}
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )))
            }
        }
    }

    let mut greeting = Vec::new();
    let mut key = None;
    loop {
        let msg = read_tagged(&mut stream, MAX_LOGIN_MESSAGE)
            .await
            .map_err(wire)?;
        match msg.tag {
            b'S' | b'N' => greeting.push(msg),
            b'K' => {
                let mut body = msg.body();
                if body.len() < 8 {
                    return Err(protocol("short BackendKeyData".into()));
                }
                key = Some((body.get_i32(), body.get_i32()));
            }
            b'Z' => {
                let (backend_pid, backend_key) =
                    key.ok_or_else(|| protocol("no BackendKeyData".into()))?;
                return Ok(Upstream {
                    stream,
                    greeting,
                    ready: msg,
                    backend_pid,
                    backend_key,
                });
            }
            b'E' => return Err(refused(name, &msg)),
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} after authentication",
                    other as char
                )))
            }
        }
    }
}

fn refused(target: &str, msg: &Tagged) -> UpstreamError {
    let fields = error_fields(msg.body());
    let field = |f: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == f)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    UpstreamError::Refused {
        target: target.to_string(),
        code: field(b'C'),
        message: field(b'M'),
    }
}

async fn send(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), WireError> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    buf.clear();
    Ok(())
}
