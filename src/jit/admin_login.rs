//! jitgate's admin login to a Postgres target must not trust a server that has not proved
//! itself: tokio-postgres answers AuthenticationCleartextPassword and MD5 with the admin password
//! and takes AuthenticationOk before any SCRAM exchange, and has no option to refuse either.
//! `AuthGuard` sits between tokio-postgres and the socket (above TLS), reads the server's
//! messages up to the first ReadyForQuery and fails the read, before tokio-postgres sees the
//! message, unless the login is a complete SCRAM exchange. `AdminTls` does the TLS handshake for
//! tokio-postgres and puts the guard on top, with the tls-server-end-point binding for
//! SCRAM-SHA-256-PLUS.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

// Authentication request codes (PostgreSQL protocol, "Message Formats": AuthenticationXXX).
const AUTH_OK: i32 = 0;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Why the guard ended an admin login. It travels inside the `io::Error` the read fails with, so
/// `connect_admin` can tell it from a network error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    #[error("the server asked for {0} authentication; jitgate's admin login only uses SCRAM-SHA-256 and never sends the password")]
    Method(String),
    #[error("AuthenticationOk before a complete SCRAM exchange (the server did not prove it holds the admin's verifier)")]
    OkWithoutScram,
    #[error("SASL message (code {0}) out of order")]
    SaslOutOfOrder(i32),
    #[error("unexpected message {0:?} during the admin login")]
    Unexpected(char),
    #[error("malformed message during the admin login")]
    Malformed,
}

impl LoginRefusal {
    /// The guard's refusal inside a tokio-postgres error, if that is what ended the login.
    pub fn find(e: &tokio_postgres::Error) -> Option<&LoginRefusal> {
        std::error::Error::source(e)?
            .downcast_ref::<io::Error>()?
            .get_ref()?
            .downcast_ref::<LoginRefusal>()
    }
}

/// Where the login stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for AuthenticationSASL, the first authentication request.
    Start,
    /// AuthenticationSASL came; the client-first-message goes out.
    SaslStarted,
    /// AuthenticationSASLContinue came (server-first-message).
    SaslContinued,
    /// AuthenticationSASLFinal came. tokio-postgres checks its server signature and ends the
    /// login itself if it is wrong, so it only ever reads the AuthenticationOk that follows
    /// after a verified one.
    SaslFinal,
    /// AuthenticationOk after SASLFinal: ParameterStatus, BackendKeyData and notices until
    /// ReadyForQuery.
    Authenticated,
    /// ReadyForQuery came: the login is over and bytes pass unread.
    Done,
}

/// The state machine over the server's bytes, fed in whatever pieces they arrive.
#[derive(Debug)]
pub struct LoginCheck {
    phase: Phase,
    /// The current message's tag, length and, for `R`, authentication code, as far as read.
    head: [u8; 9],
    have: usize,
    /// Body bytes of the current message still to pass before the next message starts.
    skip: usize,
    refused: Option<LoginRefusal>,
}

impl Default for LoginCheck {
    fn default() -> Self {
        LoginCheck {
            phase: Phase::Start,
            head: [0; 9],
            have: 0,
            skip: 0,
            refused: None,
        }
    }
}

impl LoginCheck {
    /// Whether the login is over (nothing more is checked).
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Checks the next bytes the server sent. Once it refuses, it refuses for good.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), LoginRefusal> {
        if let Some(refusal) = &self.refused {
            return Err(refusal.clone());
        }
        while !bytes.is_empty() && self.phase != Phase::Done {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // Tag and length; an authentication request's code too, as it decides.
            let want = if self.have > 0 && self.head[0] == b'R' {
                9
            } else {
                5
            };
            let n = (want - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < want {
                continue;
            }
            if let Err(refusal) = self.message() {
                self.refused = Some(refusal.clone());
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Decides on the message whose head is complete in `head[..have]`.
    fn message(&mut self) -> Result<(), LoginRefusal> {
        let tag = self.head[0];
        let len = i32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
        let min = if tag == b'R' { 8 } else { 4 };
        if len < min {
            return Err(LoginRefusal::Malformed);
        }
        if tag == b'R' && self.have < 9 {
            // Read the code next.
            return Ok(());
        }
        let code = i32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]]);
        // The length counts itself; the code (when read) is part of the body.
        self.skip = usize::try_from(len).map_err(|_| LoginRefusal::Malformed)? + 1 - self.have;
        self.have = 0;
        self.phase = match (self.phase, tag) {
            (Phase::Start, b'R') if code == AUTH_SASL => Phase::SaslStarted,
            (Phase::SaslStarted, b'R') if code == AUTH_SASL_CONTINUE => Phase::SaslContinued,
            (Phase::SaslContinued, b'R') if code == AUTH_SASL_FINAL => Phase::SaslFinal,
            (Phase::SaslFinal, b'R') if code == AUTH_OK => Phase::Authenticated,
            (Phase::Start | Phase::SaslStarted | Phase::SaslContinued, b'R') if code == AUTH_OK => {
                return Err(LoginRefusal::OkWithoutScram)
            }
            (
                Phase::Start
                | Phase::SaslStarted
                | Phase::SaslContinued
                | Phase::SaslFinal
                | Phase::Authenticated,
                b'R',
            ) => return Err(refusal_for(code)),
            // ErrorResponse ends the login with the server's own refusal (tokio-postgres
            // reports it); NoticeResponse may come at any time; NegotiateProtocolVersion
            // before authentication.
            (phase, b'E' | b'N') => phase,
            (Phase::Start, b'v') => Phase::Start,
            (Phase::Authenticated, b'Z') => Phase::Done,
            // What a logged-in server says before ReadyForQuery.
            (Phase::Authenticated, b'S' | b'K') => Phase::Authenticated,
            (
                Phase::Start
                | Phase::SaslStarted
                | Phase::SaslContinued
                | Phase::SaslFinal
                | Phase::Authenticated
                | Phase::Done,
                other,
            ) => return Err(LoginRefusal::Unexpected(other as char)),
        };
        Ok(())
    }
}

/// An authentication request that is not the next step of SCRAM.
fn refusal_for(code: i32) -> LoginRefusal {
    let method = match code {
        AUTH_OK | AUTH_SASL | AUTH_SASL_CONTINUE | AUTH_SASL_FINAL => {
            return LoginRefusal::SaslOutOfOrder(code)
        }
        2 => "Kerberos V5",
        3 => "cleartext password",
        5 => "MD5",
        6 => "SCM credential",
        7 | 8 => "GSSAPI",
        9 => "SSPI",
        _ => return LoginRefusal::Method(format!("an unknown (code {code})")),
    };
    LoginRefusal::Method(method.to_string())
}

/// A stream whose reads go through a `LoginCheck` until the login is over.
pub struct AuthGuard<S> {
    inner: S,
    check: LoginCheck,
}

impl<S> AuthGuard<S> {
    pub fn new(inner: S) -> Self {
        AuthGuard {
            inner,
            check: LoginCheck::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check.done() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => match this.check.feed(&buf.filled()[before..]) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(refusal) => {
                    // Take the bytes back: not even the refused message reaches tokio-postgres.
                    buf.filled_mut()[before..].fill(0);
                    buf.set_filled(before);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, refusal)))
                }
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type AdminTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl TlsStream for AuthGuard<AdminTlsStream> {
    /// tls-server-end-point (RFC 5929 §4.1), computed as for the JIT login. A certificate
    /// without a hash for it gives none, and with channel binding required tokio-postgres
    /// then refuses to log in.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.inner.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::pg::upstream::tls_server_end_point(cert.as_ref()).ok())
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// TLS for tokio-postgres's admin login (after its SSLRequest), with the guard on top.
pub struct AdminTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsConnect<TcpStream> for AdminTls {
    type Stream = AuthGuard<AdminTlsStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        let connect =
            tokio_rustls::TlsConnector::from(self.config).connect(self.server_name, stream);
        Box::pin(async move { connect.await.map(AuthGuard::new) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        msg(b'R', &body)
    }

    /// A real server's SCRAM login, up to and past ReadyForQuery.
    fn scram_login() -> Vec<u8> {
        let mut v = auth(AUTH_SASL, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        v.extend(auth(AUTH_SASL_CONTINUE, b"r=abc,s=c2FsdA==,i=4096"));
        v.extend(auth(AUTH_SASL_FINAL, b"v=c2lnbmF0dXJl"));
        v.extend(auth(AUTH_OK, b""));
        v.extend(msg(b'S', b"server_version\x0015.0\0"));
        v.extend(msg(b'N', b"SNOTICE\0\0"));
        v.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        v.extend(msg(b'Z', b"I"));
        v
    }

    fn feed_all(bytes: &[u8], piece: usize) -> Result<LoginCheck, LoginRefusal> {
        let mut check = LoginCheck::default();
        for chunk in bytes.chunks(piece) {
            check.feed(chunk)?;
        }
        Ok(check)
    }

    #[test]
    fn a_complete_scram_login_passes_in_any_pieces() {
        let login = scram_login();
        for piece in [1, 2, 3, 5, 8, 13, login.len()] {
            let check = feed_all(&login, piece).unwrap();
            assert!(check.done(), "piece {piece}");
        }
        // After ReadyForQuery nothing is read: query results (even `R`-looking) pass.
        let mut check = feed_all(&login, 7).unwrap();
        check.feed(&auth(3, b"")).unwrap();
        check.feed(b"\xff\xff garbage").unwrap();
    }

    #[test]
    fn password_requests_are_refused() {
        for (code, method) in [
            (3, "cleartext password"),
            (5, "MD5"),
            (2, "Kerberos V5"),
            (7, "GSSAPI"),
            (9, "SSPI"),
        ] {
            let request = auth(code, if code == 5 { b"salt" } else { b"" });
            for piece in [1, request.len()] {
                assert_eq!(
                    feed_all(&request, piece).unwrap_err(),
                    LoginRefusal::Method(method.to_string())
                );
            }
        }
    }

    #[test]
    fn ok_without_a_finished_exchange_is_refused() {
        assert_eq!(
            feed_all(&auth(AUTH_OK, b""), 1).unwrap_err(),
            LoginRefusal::OkWithoutScram
        );
        let mut v = auth(AUTH_SASL, b"SCRAM-SHA-256\0\0");
        v.extend(auth(AUTH_SASL_CONTINUE, b"r=abc,s=c2FsdA==,i=4096"));
        v.extend(auth(AUTH_OK, b""));
        assert_eq!(feed_all(&v, 4).unwrap_err(), LoginRefusal::OkWithoutScram);
    }

    #[test]
    fn sasl_steps_out_of_order_are_refused() {
        let mut v = auth(AUTH_SASL, b"SCRAM-SHA-256\0\0");
        v.extend(auth(AUTH_SASL_FINAL, b"v=c2lnbmF0dXJl"));
        assert_eq!(
            feed_all(&v, 3).unwrap_err(),
            LoginRefusal::SaslOutOfOrder(AUTH_SASL_FINAL)
        );
        // A second authentication round after AuthenticationOk.
        let mut login = scram_login();
        login.truncate(login.len() - 6);
        login.extend(auth(3, b""));
        assert_eq!(
            feed_all(&login, 100).unwrap_err(),
            LoginRefusal::Method("cleartext password".into())
        );
    }

    #[test]
    fn session_messages_before_authentication_are_refused() {
        // A fake that skips authentication and says ReadyForQuery.
        assert_eq!(
            feed_all(&msg(b'Z', b"I"), 2).unwrap_err(),
            LoginRefusal::Unexpected('Z')
        );
        assert_eq!(
            feed_all(&msg(b'K', &[0; 8]), 9).unwrap_err(),
            LoginRefusal::Unexpected('K')
        );
    }

    #[test]
    fn errors_and_notices_pass_during_authentication() {
        let mut v = msg(b'N', b"SNOTICE\0\0");
        v.extend(msg(
            b'E',
            b"SFATAL\0C28P01\0Mpassword authentication failed\0\0",
        ));
        let check = feed_all(&v, 5).unwrap();
        assert!(!check.done());
    }

    #[test]
    fn malformed_lengths_are_refused_and_refusal_sticks() {
        let mut check = LoginCheck::default();
        assert_eq!(
            check.feed(&[b'R', 0, 0, 0, 4, 0, 0, 0, 0]).unwrap_err(),
            LoginRefusal::Malformed
        );
        // Whatever follows, the login stays refused.
        assert!(check.feed(&scram_login()).is_err());
        assert_eq!(
            feed_all(&[b'N', 0xff, 0xff, 0xff, 0xff], 5).unwrap_err(),
            LoginRefusal::Malformed
        );
    }

    #[tokio::test]
    async fn the_guard_fails_the_read_and_hands_nothing_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server, client) = tokio::io::duplex(64);
        let mut guard = AuthGuard::new(client);
        server.write_all(&auth(3, b"")).await.unwrap();
        let mut buf = [0u8; 64];
        let e = guard.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let refusal = e.get_ref().unwrap().downcast_ref::<LoginRefusal>();
        assert_eq!(
            refusal,
            Some(&LoginRefusal::Method("cleartext password".into()))
        );
        assert_eq!(
            buf, [0u8; 64],
            "bytes of the refused message were handed on"
        );
    }
}
