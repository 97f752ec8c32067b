//! Logging in to the target as the JIT role: TLS per target config, StartupMessage, SCRAM-SHA-256
//! with the lease's password (which never leaves this module's memory), then the server's
//! ParameterStatus / BackendKeyData / ReadyForQuery, kept for the client's handshake.
//! The target is taken for real only once SCRAM's server signature verified (and, over TLS, the
//! exchange was bound to this TLS connection with SCRAM-SHA-256-PLUS).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
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
    /// The target did not prove it is the server that holds the JIT role's SCRAM verifier (or,
    /// over TLS, that the exchange ran over this very TLS connection): a fake server or a man in
    /// the middle. Nothing is spliced, and SCRAM never put the password itself on the wire.
    #[error("target {target} did not authenticate itself, login abandoned: {reason}")]
    Unauthenticated { target: String, reason: String },
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
    // Up front: a server certificate we cannot bind to ends the login before the password is used.
    let binding = channel_binding(&stream).map_err(|reason| UpstreamError::Unauthenticated {
        target: target.name.clone(),
        reason,
    })?;
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

    authenticate(&mut stream, name, lease, binding, &mut buf).await?;

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

// Authentication request codes (PostgreSQL protocol, "Message Formats": AuthenticationXXX).
const AUTH_OK: i32 = 0;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Where the SCRAM exchange stands. The server has proved itself only in `Verified`; an
/// AuthenticationOk in any other state comes from a server that skipped the proof.
enum Scram {
    /// Waiting for AuthenticationSASL (the mechanism list).
    Start,
    /// client-first-message sent; waiting for AuthenticationSASLContinue (server-first-message).
    SentFirst(ScramSha256),
    /// client-final-message sent; waiting for AuthenticationSASLFinal (the server signature).
    SentFinal(ScramSha256),
    /// The server signature verified (RFC 5802 §3: only a holder of ServerKey can make it).
    Verified,
}

/// Runs SCRAM-SHA-256 to the end and returns at AuthenticationOk after a verified
/// server-final-message. Every other path is a refusal, and the password is only ever used as
/// SCRAM input: a server asking for cleartext, MD5 or anything else gets nothing.
///
/// `binding` is the tls-server-end-point hash when the link is TLS. Then SCRAM-SHA-256-PLUS is
/// required, and a server offering only SCRAM-SHA-256 over TLS is refused, whether the target is
/// `require` or `verify-full`. A TLS-terminating relay is exactly what looks like that, and with
/// `require` it can be anyone; PostgreSQL (11+, built with OpenSSL) always offers -PLUS over TLS,
/// so only a middlebox ever hits this. Downgrading to the `y` flag would leave the check to
/// the relay's upstream, which the relay chooses.
async fn authenticate(
    stream: &mut UpstreamStream,
    name: &str,
    lease: &PgLease,
    mut binding: Option<Vec<u8>>,
    buf: &mut BytesMut,
) -> Result<(), UpstreamError> {
    let protocol = |reason: String| UpstreamError::Protocol {
        target: name.to_string(),
        reason,
    };
    let wire = |e: WireError| UpstreamError::Protocol {
        target: name.to_string(),
        reason: e.to_string(),
    };
    let unauthenticated = |reason: String| UpstreamError::Unauthenticated {
        target: name.to_string(),
        reason,
    };
    let mut state = Scram::Start;
    loop {
        let msg = read_tagged(stream, MAX_LOGIN_MESSAGE).await.map_err(wire)?;
        match msg.tag {
            b'R' => {}
            b'E' => return Err(refused(name, &msg)),
            // NoticeResponse may come at any time, NegotiateProtocolVersion before authentication.
            b'N' | b'v' => continue,
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )))
            }
        }
        let mut body = msg.body();
        if body.len() < 4 {
            return Err(protocol("short authentication message".into()));
        }
        let code = body.get_i32();
        state = match (code, state) {
            (AUTH_OK, Scram::Verified) => return Ok(()),
            (AUTH_OK, Scram::Start | Scram::SentFirst(_) | Scram::SentFinal(_)) => {
                return Err(unauthenticated(
                    "AuthenticationOk before SCRAM's server signature was verified".into(),
                ))
            }
            (AUTH_SASL, Scram::Start) => {
                let mechanisms: Vec<&[u8]> =
                    body.split(|b| *b == 0).filter(|m| !m.is_empty()).collect();
                let (mechanism, channel_binding) = match binding.take() {
                    Some(hash) => {
                        if !mechanisms.contains(&SCRAM_SHA_256_PLUS.as_bytes()) {
                            return Err(unauthenticated(format!(
                                "no SCRAM-SHA-256-PLUS over TLS (offered: {}): a TLS-terminating proxy or a man in the middle; jitgate binds the login to the TLS connection",
                                mechanism_list(&mechanisms)
                            )));
                        }
                        (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash),
                        )
                    }
                    None => {
                        if !mechanisms.contains(&SCRAM_SHA_256.as_bytes()) {
                            return Err(UpstreamError::UnsupportedAuth {
                                target: name.to_string(),
                                method: format!("SASL ({})", mechanism_list(&mechanisms)),
                            });
                        }
                        // No TLS, nothing to bind to: the `n` flag says so (RFC 5802 §6).
                        (SCRAM_SHA_256, ChannelBinding::unsupported())
                    }
                };
                tracing::debug!(target_name = %name, mechanism, "upstream SASL login");
                let s = ScramSha256::new(lease.password.expose().as_bytes(), channel_binding);
                frontend::sasl_initial_response(mechanism, s.message(), buf)
                    .map_err(|e| protocol(e.to_string()))?;
                send(stream, buf).await.map_err(wire)?;
                Scram::SentFirst(s)
            }
            (AUTH_SASL_CONTINUE, Scram::SentFirst(mut s)) => {
                s.update(body)
                    .map_err(|e| unauthenticated(format!("SCRAM server-first-message: {e}")))?;
                frontend::sasl_response(s.message(), buf).map_err(|e| protocol(e.to_string()))?;
                send(stream, buf).await.map_err(wire)?;
                Scram::SentFinal(s)
            }
            (AUTH_SASL_FINAL, Scram::SentFinal(mut s)) => {
                // The server signature: proof that the target holds the role's verifier (and,
                // with -PLUS, saw the same TLS server certificate we did).
                s.finish(body)
                    .map_err(|e| unauthenticated(format!("SCRAM server signature: {e}")))?;
                Scram::Verified
            }
            (
                AUTH_SASL | AUTH_SASL_CONTINUE | AUTH_SASL_FINAL,
                Scram::Start | Scram::SentFirst(_) | Scram::SentFinal(_) | Scram::Verified,
            ) => {
                return Err(unauthenticated(format!(
                    "SASL message (code {code}) out of order"
                )))
            }
            (other, _) => {
                let method = match other {
                    2 => "Kerberos V5".to_string(),
                    3 => "cleartext password".to_string(),
                    5 => "MD5".to_string(),
                    7 | 8 => "GSSAPI".to_string(),
                    9 => "SSPI".to_string(),
                    _ => format!("unknown (code {other})"),
                };
                return Err(UpstreamError::UnsupportedAuth {
                    target: name.to_string(),
                    method,
                });
            }
        };
    }
}

fn mechanism_list(mechanisms: &[&[u8]]) -> String {
    let names: Vec<String> = mechanisms
        .iter()
        .map(|m| String::from_utf8_lossy(m).escape_default().to_string())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The tls-server-end-point channel binding data for this link, or `None` for plain TCP.
fn channel_binding(stream: &UpstreamStream) -> Result<Option<Vec<u8>>, String> {
    match stream {
        UpstreamStream::Plain(_) => Ok(None),
        UpstreamStream::Tls(tls) => {
            let (_, connection) = tls.get_ref();
            // rustls puts the end-entity certificate first.
            let cert = connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or_else(|| "the server presented no TLS certificate".to_string())?;
            tls_server_end_point(cert.as_ref()).map(Some)
        }
    }
}

/// RFC 5929 §4.1: the hash of the server's end-entity certificate (DER), with the hash of its
/// signature algorithm, SHA-256 for MD5 and SHA-1. PostgreSQL computes the same on its side
/// (`be_tls_get_certificate_hash`) and refuses certificates whose signature has no single hash
/// (Ed25519, RSA-PSS): so do we, as no login with -PLUS could succeed anyway.
pub(crate) fn tls_server_end_point(der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_parser::oid_registry as oid;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot read the server certificate: {e}"))?;
    let sig = &cert.signature_algorithm.algorithm;
    let algorithm = if [
        oid::OID_PKCS1_MD5WITHRSAENC,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_SIG_DSA_WITH_SHA1,
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_SIG_ECDSA_WITH_SHA256,
    ]
    .contains(sig)
    {
        &ring::digest::SHA256
    } else if [oid::OID_PKCS1_SHA384WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA384].contains(sig) {
        &ring::digest::SHA384
    } else if [oid::OID_PKCS1_SHA512WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA512].contains(sig) {
        &ring::digest::SHA512
    } else {
        return Err(format!(
            "the server certificate's signature algorithm ({sig}) has no hash for channel binding (RFC 5929 §4.1); use an RSA or ECDSA certificate with SHA-256/384/512"
        ));
    };
    Ok(ring::digest::digest(algorithm, der).as_ref().to_vec())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert_der(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["db.example".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let der = cert_der(&rcgen::PKCS_ECDSA_P256_SHA256);
        let hash = tls_server_end_point(&der).unwrap();
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
        );
        let der = cert_der(&rcgen::PKCS_ECDSA_P384_SHA384);
        let hash = tls_server_end_point(&der).unwrap();
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA384, &der).as_ref()
        );
    }

    #[test]
    fn end_point_hash_refuses_a_signature_without_hash() {
        let der = cert_der(&rcgen::PKCS_ED25519);
        let e = tls_server_end_point(&der).unwrap_err();
        assert!(e.contains("no hash for channel binding"), "{e}");
        assert!(tls_server_end_point(b"not a certificate").is_err());
    }
}
