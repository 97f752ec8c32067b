//! `jitgate tunnel`: the ProxyCommand half of the SSH path. TLS to the gateway with the
//! user's client certificate and the target name as SNI, the one-line preamble, then
//! stdin/stdout piped to and from the SSH server inside.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::preamble;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const PIPE_BUFFER: usize = 64 * 1024;
/// How long stdin stays open after the gateway side has ended (see `run`).
const LINGER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// `host:port` of the gateway's SSH listener.
    pub gateway: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub target: String,
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("--gateway must be host:port, got {0:?}")]
    BadGateway(String),
    /// Longer than any policy accepts, and than the preamble line the gateway reads: it would
    /// close the connection without a word.
    #[error(
        "the reason given is {0} characters long; at most {MAX_REASON_CHARS} are allowed",
        MAX_REASON_CHARS = crate::policy::MAX_REASON_CHARS
    )]
    ReasonTooLong(usize),
    #[error("target name {0:?} cannot be sent as a TLS server name; use the target's name from the gateway config")]
    BadTarget(String),
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("TLS to the gateway failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Setup(#[from] crate::tls::TlsError),
    /// The gateway refused; its message is for the user as is.
    #[error("{0}")]
    Refused(String),
    #[error("the gateway did not answer as a jitgate bastion: {0}")]
    Protocol(#[from] preamble::PreambleError),
    #[error("the gateway did not answer in time")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn split_host_port(gateway: &str) -> Option<(String, u16)> {
    let (host, port) = gateway.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host.to_string(), port.parse().ok()?))
}

/// Runs the tunnel until either side closes.
pub async fn run(opts: TunnelOptions) -> Result<(), TunnelError> {
    // Percent-encoded, a reason the policy accepts always fits in the preamble's MAX_LINE.
    let chars = opts.reason.as_deref().map_or(0, |r| r.chars().count());
    if chars > crate::policy::MAX_REASON_CHARS {
        return Err(TunnelError::ReasonTooLong(chars));
    }
    let (host, port) = split_host_port(&opts.gateway)
        .ok_or_else(|| TunnelError::BadGateway(opts.gateway.clone()))?;
    let gateway_name = ServerName::try_from(host.clone())
        .map_err(|_| TunnelError::BadGateway(opts.gateway.clone()))?;
    let sni = match ServerName::try_from(opts.target.clone()) {
        Ok(name @ ServerName::DnsName(_)) => name,
        _ => return Err(TunnelError::BadTarget(opts.target.clone())),
    };
    let config = crate::tls::tunnel_client_config(&opts.ca, &opts.cert, &opts.key, gateway_name)?;
    let unreachable = |reason: String| TunnelError::Unreachable {
        addr: opts.gateway.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(sni, tcp)
        .await
        .map_err(|e| TunnelError::Tls(e.to_string()))?;

    tls.write_all(preamble::hello(opts.reason.as_deref()).as_bytes())
        .await?;
    tls.flush().await?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, preamble::read_line(&mut tls))
        .await
        .map_err(|_| TunnelError::Timeout)??;
    preamble::parse_answer(&answer)?.map_err(TunnelError::Refused)?;

    let (mut from_gateway, mut to_gateway) = tokio::io::split(tls);
    let upload = async {
        let mut stdin = BufReader::with_capacity(PIPE_BUFFER, tokio::io::stdin());
        let mut gateway_open = true;
        let mut copied = 0u64;
        loop {
            let chunk = stdin.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            // Once the gateway can take no more, what ssh still writes is read and dropped:
            // ssh must not get EPIPE before it has read the gateway's last words.
            if gateway_open {
                match to_gateway.write_all(chunk).await {
                    Ok(()) => copied += n as u64,
                    Err(_) => gateway_open = false,
                }
            }
            stdin.consume(n);
        }
        // SSH clients close stdin when they are done; pass the half-close on.
        let _ = to_gateway.shutdown().await;
        Ok::<_, std::io::Error>(copied)
    };
    let download = async {
        let mut stdout = tokio::io::stdout();
        let mut from_gateway = BufReader::with_capacity(PIPE_BUFFER, &mut from_gateway);
        let copied = tokio::io::copy_buf(&mut from_gateway, &mut stdout).await;
        let _ = stdout.flush().await;
        copied
    };
    // The session is over when the gateway side ends (stdin may never reach EOF); if stdin
    // closes first, keep delivering what the gateway still sends.
    tokio::pin!(upload);
    tokio::pin!(download);
    tokio::select! {
        result = &mut download => {
            // The gateway's last packets (a refusal's SSH disconnect message) are in ssh's
            // pipe now, but ssh may be writing before it reads them (after a refusal at
            // auth_succeeded it is already opening its channel): if this process left, that
            // write would fail with EPIPE and ssh would die without showing the message.
            // So stdin stays open until ssh closes it, which it does once it has read the
            // end, or LINGER at most.
            let _ = tokio::time::timeout(LINGER, &mut upload).await;
            ended(result)?;
        }
        result = &mut upload => {
            ended(result)?;
            ended(download.await)?;
        }
    }
    Ok(())
}

/// The bastion ends the SSH session by closing the connection, without a TLS close_notify
/// (russh owns the stream); that is the normal end of a session, not an error.
fn ended(result: std::io::Result<u64>) -> std::io::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seen while writing `fuzz/`'s `ssh_preamble` target: a reason over ~1,365 bytes made a
    /// hello line longer than the gateway reads, and the gateway closed without an answer
    /// ("the peer closed the connection"). The tunnel now refuses it first, in the policy's words.
    #[tokio::test]
    async fn a_reason_too_long_is_refused_before_connecting() {
        let opts = TunnelOptions {
            gateway: "not-an-address".into(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            ca: PathBuf::new(),
            target: "web-1".into(),
            reason: Some(" ".repeat(1400)),
        };
        let refused = run(opts).await.map_err(|e| e.to_string());
        assert_eq!(
            refused,
            Err("the reason given is 1400 characters long; at most 200 are allowed".to_string())
        );
        assert!(
            preamble::hello(Some(&"é ".repeat(crate::policy::MAX_REASON_CHARS / 2))).len()
                <= preamble::MAX_LINE
        );
    }

    #[test]
    fn gateway_addresses_parse() {
        assert_eq!(
            split_host_port("127.0.0.1:2222"),
            Some(("127.0.0.1".into(), 2222))
        );
        assert_eq!(split_host_port("[::1]:22"), Some(("::1".into(), 22)));
        assert_eq!(
            split_host_port("gw.example.com:2222"),
            Some(("gw.example.com".into(), 2222))
        );
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port("h:notaport"), None);
    }
}
