//! The HTTP client the OTLP exporters send with: one HTTP/1.1 POST per export over a fresh
//! loopback-or-LAN TCP connection, on hyper, run on the gateway's tokio runtime.
//!
//! The SDK's batch processors and metric reader call the exporter from threads of their own,
//! outside any tokio runtime; the request is spawned onto the runtime whose handle the client
//! holds and its result awaited from there. This replaces the SDK's reqwest clients and
//! their dependency tree; only `http://` endpoints exist (`config::telemetry::endpoint`).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};

/// A collector's answer is a small protobuf; anything larger is not one.
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Client {
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl Client {
    pub fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Client {
        Client { runtime, timeout }
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let timeout = self.timeout;
        let sent = self
            .runtime
            .spawn(async move {
                match tokio::time::timeout(timeout, post(request)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {}s", timeout.as_secs()).into()),
                }
            })
            .await;
        sent.map_err(|e| Box::new(e) as HttpError)?
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let uri = parts.uri.clone();
    let host = uri.host().ok_or("the OTLP endpoint has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "OTLP connection ended");
        }
    });
    // Origin form on the wire, the authority in Host (hyper's connection API adds neither).
    if let Some(authority) = uri.authority() {
        parts.headers.insert(
            header::HOST,
            header::HeaderValue::from_str(authority.as_str())?,
        );
    }
    parts.uri = uri
        .path_and_query()
        .map_or_else(|| Ok(Uri::from_static("/")), |p| p.as_str().parse::<Uri>())?;
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
