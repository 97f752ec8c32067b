//! The Postgres front door: what arrives on the listener before any login. SSLRequest → TLS,
//! PostgreSQL 17 direct TLS (ALPN `postgresql`), GSSENCRequest → `N`, CancelRequest (plain or
//! inside TLS, as libpq 17 sends it), and the StartupMessage, which must come over TLS with a
//! valid client certificate. Refusals are sent as FATAL ErrorResponses the user can act on.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::message::{
    fatal, parse_startup_params, read_startup_packet, CancelKey, WireError, CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
};
use crate::identity::Identity;
use crate::tls::ServerTls;

pub type ClientStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The first byte of a TLS ClientHello record: a PG17 client using `sslnegotiation=direct`.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What a new connection turned out to be.
pub enum Arrival {
    Login(Box<Login>),
    /// A CancelRequest; `tls`: it came inside TLS (libpq 17's `PQcancelBlocking` and friends),
    /// not as the bare 16-byte packet (`PQcancel`, which psql's Ctrl-C still uses).
    Cancel {
        key: CancelKey,
        tls: bool,
    },
}

/// A login attempt over TLS from a verified client certificate.
pub struct Login {
    pub stream: ClientStream,
    pub identity: Identity,
    /// Protocol minor version the client asked for (3.x).
    pub minor_version: u16,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    /// Refused with a FATAL already sent to the client.
    #[error("refused ({code}): {message}")]
    Refused { code: &'static str, message: String },
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// Reads what the client sends until it is a login or a cancel. The caller applies the timeout.
pub async fn accept(
    mut tcp: TcpStream,
    tls: &ServerTls,
    trust_domain: &str,
) -> Result<Arrival, FrontDoorError> {
    let mut first = [0u8; 1];
    let direct_tls =
        tcp.peek(&mut first).await.map_err(WireError::Io)? == 1 && first[0] == TLS_HANDSHAKE_RECORD;
    if direct_tls {
        let mut stream = tls
            .acceptor()
            .accept(tcp)
            .await
            .map_err(FrontDoorError::Tls)?;
        // PostgreSQL 17 refuses direct TLS without ALPN `postgresql` (protects against
        // cross-protocol attacks); so do we.
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return refuse(
                &mut stream,
                "08P01",
                "direct TLS connection without ALPN \"postgresql\"",
                None,
            )
            .await;
        }
        return after_tls(stream, tls, trust_domain).await;
    }

    let mut gssenc_answered = false;
    loop {
        let packet = read_startup_packet(&mut tcp).await?;
        match packet.code {
            SSL_REQUEST_CODE => {
                tcp.write_all(b"S").await.map_err(WireError::Io)?;
                let stream = tls
                    .acceptor()
                    .accept(tcp)
                    .await
                    .map_err(FrontDoorError::Tls)?;
                return after_tls(stream, tls, trust_domain).await;
            }
            GSSENC_REQUEST_CODE if !gssenc_answered => {
                // No GSSAPI here; libpq then falls back to SSLRequest or a plain startup.
                tcp.write_all(b"N").await.map_err(WireError::Io)?;
                gssenc_answered = true;
            }
            CANCEL_REQUEST_CODE => {
                return Ok(Arrival::Cancel {
                    key: CancelKey::decode(&packet.body)?,
                    tls: false,
                })
            }
            code if code >> 16 == 3 => {
                return refuse(
                    &mut tcp,
                    "28000",
                    "jitgate requires TLS with a client certificate (sslmode=verify-full sslcert=… sslkey=…)",
                    Some("connect with sslmode=verify-full sslrootcert=<gateway CA> sslcert=<your certificate> sslkey=<your key>"),
                )
                .await;
            }
            code => {
                let message = format!(
                    "unsupported frontend protocol {}.{}",
                    code >> 16,
                    code & 0xffff
                );
                return refuse(&mut tcp, "08P01", &message, None).await;
            }
        }
    }
}

async fn after_tls(
    mut stream: ClientStream,
    tls: &ServerTls,
    trust_domain: &str,
) -> Result<Arrival, FrontDoorError> {
    let packet = read_startup_packet(&mut stream).await?;
    match packet.code {
        CANCEL_REQUEST_CODE => Ok(Arrival::Cancel {
            key: CancelKey::decode(&packet.body)?,
            tls: true,
        }),
        code if code >> 16 == 3 => {
            let params = match parse_startup_params(&packet.body) {
                Ok(params) => params,
                Err(e) => {
                    return refuse(
                        &mut stream,
                        "08P01",
                        &format!("invalid startup packet: {e}"),
                        None,
                    )
                    .await
                }
            };
            let identity = match verified_identity(&stream, tls, trust_domain) {
                Ok(identity) => identity,
                Err((message, hint)) => {
                    return refuse(&mut stream, "28000", &message, Some(&hint)).await
                }
            };
            Ok(Arrival::Login(Box::new(Login {
                stream,
                identity,
                minor_version: (code & 0xffff) as u16,
                params,
            })))
        }
        code => {
            let message = format!("unexpected packet {code} after TLS");
            refuse(&mut stream, "08P01", &message, None).await
        }
    }
}

/// The identity of the TLS peer, after checking its certificate against the CA and the CRL.
/// The handshake accepts any certificate (proving possession of its key) so that a bad one
/// can be refused here, with a message psql shows, instead of with a bare TLS alert.
fn verified_identity(
    stream: &ClientStream,
    tls: &ServerTls,
    trust_domain: &str,
) -> Result<Identity, (String, String)> {
    let hint = "get a client certificate from your jitgate operator (jitgate certs issue) and pass it with sslcert=/sslkey=";
    let chain = stream.get_ref().1.peer_certificates().unwrap_or(&[]);
    if chain.is_empty() {
        return Err((
            "jitgate requires a client certificate; none was presented".into(),
            hint.into(),
        ));
    }
    tls.verify_client(chain).map_err(|e| {
        (
            format!("client certificate rejected: {e}"),
            hint.to_string(),
        )
    })?;
    Identity::from_der(&chain[0], trust_domain).map_err(|e| {
        (
            format!("client certificate rejected: {e}"),
            hint.to_string(),
        )
    })
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin, T>(
    stream: &mut S,
    code: &'static str,
    message: &str,
    hint: Option<&str>,
) -> Result<T, FrontDoorError> {
    let packet = fatal(code, message, hint);
    // The client may already be gone; the refusal is logged by the caller either way.
    let _ = stream.write_all(&packet).await;
    let _ = stream.shutdown().await;
    Err(FrontDoorError::Refused {
        code,
        message: message.to_string(),
    })
}
