//! One Postgres client connection, start to end: front door → policy → mint → upstream login →
//! the client's handshake → splice → drop. Every refusal reaches the client as a FATAL with a
//! SQLSTATE, and every minted role is dropped on every path out of `run_login`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::cancel::CancelRegistry;
use super::message::{authentication_ok, backend_key_data, fatal, negotiate_protocol_version};
use super::options::take_reason;
use super::relay::{splice, End};
use super::startup::{accept, Arrival, ClientStream, FrontDoorError, Login};
use super::upstream::{self, UpstreamError};
use crate::config::PgTarget;
use crate::jit::postgres::{JitError, PgProvisioner};
use crate::jit::reaper::LiveLeases;
use crate::jit::{LeaseId, PgLease};
use crate::policy::{self, AccessRequest, PolicySet};
use crate::tls::ServerTls;

/// Everything a Postgres session needs from the gateway, shared by all sessions.
pub struct PgContext {
    pub instance_id: String,
    pub trust_domain: String,
    pub handshake_timeout: Duration,
    pub tls: Arc<ServerTls>,
    pub policies: Arc<dyn Fn() -> Arc<PolicySet> + Send + Sync>,
    pub targets: HashMap<String, (Arc<PgTarget>, Arc<PgProvisioner>)>,
    pub cancels: CancelRegistry,
    pub live: LiveLeases,
    pub shutdown: CancellationToken,
}

/// A refusal to send the client: SQLSTATE, message, optional hint.
struct Refusal {
    code: String,
    message: String,
    hint: Option<String>,
}

impl Refusal {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Refusal {
            code: code.into(),
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Serves one accepted TCP connection.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, ctx: Arc<PgContext>) {
    let _ = tcp.set_nodelay(true);
    let arrival = tokio::time::timeout(
        ctx.handshake_timeout,
        accept(tcp, &ctx.tls, &ctx.trust_domain),
    )
    .await;
    match arrival {
        Err(_) => tracing::info!(client = %peer, "handshake timed out"),
        Ok(Err(FrontDoorError::Refused { code, message })) => {
            tracing::info!(event = "access.denied", client = %peer, sqlstate = code, reason = %message, "connection refused");
        }
        // Port probes and health checks land here: not worth an info line each.
        Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "connection closed before login"),
        Ok(Ok(Arrival::Cancel(key))) => ctx.cancels.cancel(key).await,
        Ok(Ok(Arrival::Login(login))) => run_login(*login, peer, &ctx).await,
    }
}

/// What the client asked for in its StartupMessage, sorted out.
struct Requested {
    user: String,
    target: String,
    database: Option<String>,
    reason: Option<String>,
    forward: Vec<(String, String)>,
    unsupported: Vec<String>,
}

fn sort_params(params: Vec<(String, String)>) -> Result<Requested, Refusal> {
    let mut user = None;
    let mut database = None;
    let mut reason = None;
    let mut app_reason = None;
    let mut forward = Vec::new();
    let mut unsupported = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "options" => {
                let (r, rest) = take_reason(&value);
                reason = r.or(reason);
                if let Some(rest) = rest {
                    forward.push((name, rest));
                }
            }
            "replication" => {
                if !matches!(value.as_str(), "false" | "off" | "no" | "0") {
                    return Err(Refusal::new(
                        "0A000",
                        "replication connections are not supported through jitgate",
                    ));
                }
            }
            "application_name" => {
                app_reason = value.strip_prefix("reason:").map(|r| r.trim().to_string());
                forward.push((name, value));
            }
            n if n.starts_with("_pq_.") => unsupported.push(name),
            _ => forward.push((name, value)),
        }
    }
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        Refusal::new("28000", "no user name given")
            .hint("connect with user=<grant name> or user=<your name>")
    })?;
    // libpq sends no database when it defaults to the user name.
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let (target, database) = match database.split_once('/') {
        Some((t, d)) => (t.to_string(), Some(d.to_string())),
        None => (database, None),
    };
    Ok(Requested {
        user,
        target,
        database,
        reason: reason.or(app_reason),
        forward,
        unsupported,
    })
}

async fn run_login(login: Login, peer: SocketAddr, ctx: &PgContext) {
    let Login {
        mut stream,
        identity,
        minor_version,
        params,
    } = login;
    let started = StdInstant::now();
    let requested = match sort_params(params) {
        Ok(r) => r,
        Err(refusal) => return refuse(&mut stream, peer, &identity.user, refusal).await,
    };
    if minor_version > 0 || !requested.unsupported.is_empty() {
        // We speak 3.0; say so before authentication, as PostgreSQL does.
        if stream
            .write_all(&negotiate_protocol_version(&requested.unsupported))
            .await
            .is_err()
        {
            return;
        }
    }
    let Some((target, provisioner)) = ctx.targets.get(&requested.target) else {
        let refusal = Refusal::new(
            "3D000",
            format!("jitgate has no target named \"{}\"", requested.target),
        )
        .hint("connect with dbname=<target> or dbname=<target>/<database>");
        return refuse(&mut stream, peer, &identity.user, refusal).await;
    };
    let database = match &requested.database {
        None => target.databases[0].clone(),
        Some(db) if target.databases.contains(db) => db.clone(),
        Some(db) => {
            let refusal = Refusal::new(
                "3D000",
                format!(
                    "target {} has no database \"{db}\"; allowed: {}",
                    target.name,
                    target.databases.join(", ")
                ),
            );
            return refuse(&mut stream, peer, &identity.user, refusal).await;
        }
    };
    let policies = (ctx.policies)();
    let request = AccessRequest {
        identity: &identity,
        target: &target.name,
        requested: &requested.user,
        reason: requested.reason.as_deref(),
    };
    let grant = match policy::evaluate(&policies, &request) {
        Ok(grant) => grant,
        Err(denial) => {
            return refuse(
                &mut stream,
                peer,
                &identity.user,
                Refusal::new("28000", denial.to_string()),
            )
            .await
        }
    };

    let lease_id = LeaseId::random();
    ctx.live.insert(&lease_id);
    let lease = match provisioner
        .mint(lease_id.clone(), &grant, &identity, &database)
        .await
    {
        Ok(lease) => lease,
        Err(e) => {
            ctx.live.remove(&lease_id);
            tracing::error!(target_name = %target.name, user = %identity.user, error = %e, "mint failed");
            return refuse(&mut stream, peer, &identity.user, jit_refusal(&e)).await;
        }
    };
    tracing::info!(
        event = "jit.account.created", lease = %lease.id, role = %lease.role, target_name = %target.name,
        database = %database, grant = grant.name(), user = %identity.user, serial = %identity.serial,
        reason = grant.reason().unwrap_or(""), mint_ms = started.elapsed().as_millis() as u64,
        "account created"
    );

    let end = serve(
        &mut stream,
        peer,
        ctx,
        target,
        provisioner,
        &lease,
        &identity.user,
        &requested.forward,
    )
    .await;
    let _ = stream.shutdown().await;
    drop(stream);

    match provisioner.drop_with_retry(&lease).await {
        Ok(()) => {
            tracing::info!(event = "jit.account.dropped", lease = %lease.id, role = %lease.role, target_name = %target.name, "account dropped")
        }
        Err(e) => {
            tracing::error!(event = "jit.account.drop_failed", lease = %lease.id, role = %lease.role, target_name = %target.name, error = %e, "account NOT dropped; the reaper will retry")
        }
    }
    ctx.live.remove(&lease.id);
    tracing::info!(event = "session.end", lease = %lease.id, user = %identity.user, target_name = %target.name, end = ?end, seconds = started.elapsed().as_secs(), "session ended");
}

/// Logs in upstream, completes the client's handshake, and relays. Returns how it ended.
#[allow(clippy::too_many_arguments)]
async fn serve(
    stream: &mut ClientStream,
    peer: SocketAddr,
    ctx: &PgContext,
    target: &Arc<PgTarget>,
    provisioner: &Arc<PgProvisioner>,
    lease: &PgLease,
    user: &str,
    forward: &[(String, String)],
) -> Option<End> {
    let mut upstream = match upstream::login(target, lease, forward).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(target_name = %target.name, role = %lease.role, error = %e, "upstream login failed");
            refuse(stream, peer, user, upstream_refusal(&e)).await;
            return None;
        }
    };
    let key = ctx
        .cancels
        .register(target.clone(), upstream.backend_pid, upstream.backend_key);
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&authentication_ok());
    for msg in &upstream.greeting {
        hello.extend_from_slice(&msg.raw);
    }
    hello.extend_from_slice(&backend_key_data(key.pid, key.key));
    hello.extend_from_slice(&upstream.ready.raw);
    let end = if stream.write_all(&hello).await.is_ok() {
        tracing::info!(event = "session.start", client = %peer, lease = %lease.id, role = %lease.role, user = %user, target_name = %target.name, "session started");
        let deadline = tokio::time::Instant::from_std(StdInstant::now())
            + lease
                .expires_at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
        let terminate = || async {
            if let Err(e) = provisioner.terminate_backends(lease).await {
                tracing::warn!(role = %lease.role, error = %e, "could not terminate the upstream backend");
            }
        };
        Some(
            splice(
                stream,
                &mut upstream.stream,
                deadline,
                &ctx.shutdown,
                terminate,
            )
            .await,
        )
    } else {
        None
    };
    ctx.cancels.unregister(key);
    let _ = upstream.stream.shutdown().await;
    end
}

fn jit_refusal(e: &JitError) -> Refusal {
    match e {
        JitError::Unreachable { .. } => Refusal::new("08006", e.to_string()),
        JitError::AdminRejected { target, .. } | JitError::AdminCredential { target, .. } | JitError::Tls { target, .. } => {
            Refusal::new("08006", format!("jitgate cannot create your account on target {target}: its admin access is misconfigured"))
                .hint("ask the jitgate operator to check the target's admin credential; details are in the gateway log")
        }
        // Short for the user, as for the JIT login: what the server sent is in the gateway log.
        JitError::AdminUnauthenticated { target, .. } => Refusal::new(
            "08006",
            format!("jitgate cannot create your account on target {target}: the server did not prove it is the real target"),
        )
        .hint("ask the jitgate operator; details are in the gateway log"),
        JitError::Sql { target, reason, sqlstate, .. } => Refusal::new(
            sqlstate.as_deref().unwrap_or("08006"),
            format!("jitgate could not create your account on target {target}: {reason}"),
        ),
        JitError::NotOurs { .. } => Refusal::new("08006", e.to_string()),
    }
}

fn upstream_refusal(e: &UpstreamError) -> Refusal {
    match e {
        UpstreamError::Refused {
            target,
            code,
            message,
        } => Refusal::new(code, format!("target {target}: {message}")),
        // Short for the user: the detail (what the server sent) is in the gateway log.
        UpstreamError::Unauthenticated { target, .. } => Refusal::new(
            "08006",
            format!("jitgate refused to log in to target {target}: the server did not prove it is the real target"),
        )
        .hint("this can be a man in the middle or a misconfigured proxy; details are in the gateway log"),
        UpstreamError::UnsupportedAuth { target, .. } => Refusal::new(
            "08006",
            format!("jitgate refused to log in to target {target}: it asked for an authentication method other than SCRAM-SHA-256"),
        )
        .hint("jitgate sends no password for other methods; details are in the gateway log"),
        UpstreamError::Unreachable { .. }
        | UpstreamError::NoTls { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Protocol { .. }
        | UpstreamError::Timeout { .. } => Refusal::new("08006", e.to_string()),
    }
}

async fn refuse(stream: &mut ClientStream, peer: SocketAddr, user: &str, refusal: Refusal) {
    tracing::info!(event = "access.denied", client = %peer, user = %user, sqlstate = %refusal.code, reason = %refusal.message, "login refused");
    let packet = fatal(&refusal.code, &refusal.message, refusal.hint.as_deref());
    let _ = stream.write_all(&packet).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_params_are_sorted_out() {
        let r = sort_params(params(&[
            ("user", "alice"),
            ("database", "orders/archive"),
            ("options", "-c jitgate.reason=INC-1 -c work_mem=1MB"),
            ("application_name", "psql"),
            ("_pq_.compression", "on"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(
            (r.user.as_str(), r.target.as_str(), r.database.as_deref()),
            ("alice", "orders", Some("archive"))
        );
        assert_eq!(r.reason.as_deref(), Some("INC-1"));
        assert_eq!(
            r.forward,
            params(&[("options", "-c work_mem=1MB"), ("application_name", "psql")])
        );
        assert_eq!(r.unsupported, vec!["_pq_.compression".to_string()]);
    }

    #[test]
    fn reason_from_application_name_and_default_database() {
        let r = sort_params(params(&[
            ("user", "orders"),
            ("application_name", "reason: CHG-9"),
        ]))
        .ok()
        .unwrap();
        assert_eq!(r.reason.as_deref(), Some("CHG-9"));
        assert_eq!(r.target, "orders");
        assert!(sort_params(params(&[("database", "orders")])).is_err());
        assert!(sort_params(params(&[("user", "a"), ("replication", "database")])).is_err());
    }
}
