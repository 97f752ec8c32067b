//! Postgres roles as JIT accounts: `mint` creates `jit_<user>_<random>` with exactly what the
//! grant gives, `drop_lease` terminates its backend and drops it. Both run over a small pool of
//! admin connections per database (tokio-postgres). `liveness` holds this instance's
//! advisory lock on the target and asks about other instances' locks.

mod liveness;
pub mod verifier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::Client;

use super::admin_login::{AdminTls, AuthGuard, LoginRefusal};
use super::lease::{random_password, random_suffix, LeaseId, Marker, PgLease};
use super::liveness::{Liveness, Owner};
use super::provisioner::{Managed, ProvisionError, Provisioner};
use crate::config::{PgTarget, UpstreamTls};
use crate::identity::Identity;
use crate::policy::{Grant, TargetKind};
use crate::secret::Secret;

/// PostgreSQL's NAMEDATALEN - 1.
const MAX_ROLE_NAME: usize = 63;
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshake and authentication of an admin connection, after the TCP connect.
const ADMIN_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin statements are small (one CREATE ROLE, one DROP, a catalogue lookup): one that runs
/// longer is stuck. Longer than the 5 s `pg_terminate_backend` waits for a backend to exit.
const ADMIN_STATEMENT_TIMEOUT: &str = "10s";
/// A lock someone else holds on a JIT role or an object it owns must not stall a drop forever
/// (`DROP OWNED` / `DROP ROLE` wait for it): the statement fails with SQLSTATE 55P03, and the
/// drop is tried again later. Shorter than the statement timeout, so a lock wait says so.
const ADMIN_LOCK_TIMEOUT: &str = "5s";
const IDLE_ADMIN_CONNECTIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("cannot reach target {target} ({addr}): {reason}")]
    Unreachable {
        target: String,
        addr: String,
        reason: String,
    },
    #[error("target {target} rejected jitgate's admin login: {reason}")]
    AdminRejected {
        target: String,
        reason: String,
        sqlstate: Option<String>,
    },
    /// The server answering the admin login did not prove it is the target (see
    /// `connect_admin`): a fake server, a man in the middle, or a pg_hba.conf method other than
    /// scram-sha-256. The admin password was not sent.
    #[error("target {target} did not authenticate itself to jitgate's admin login, login abandoned: {reason}")]
    AdminUnauthenticated { target: String, reason: String },
    #[error("cannot read the admin password of target {target}: {reason}")]
    AdminCredential { target: String, reason: String },
    #[error("target {target}: {statement} failed: {reason}")]
    Sql {
        target: String,
        statement: &'static str,
        reason: String,
        sqlstate: Option<String>,
    },
    #[error("role {role} on target {target} is not marked as this lease's; left untouched")]
    NotOurs { target: String, role: String },
    #[error("TLS setup for target {target}: {reason}")]
    Tls { target: String, reason: String },
}

impl ProvisionError for JitError {
    fn is_transient(&self) -> bool {
        match self {
            JitError::Unreachable { .. } => true,
            JitError::Sql { sqlstate, .. } => sqlstate.is_none(),
            // The server is there but not taking logins right now: shutting down, starting up,
            // in recovery (57P03), restarting after a crash (57P01/02), or full (53300).
            JitError::AdminRejected { sqlstate, .. } => matches!(
                sqlstate.as_deref(),
                Some("57P01" | "57P02" | "57P03" | "53300")
            ),
            JitError::AdminUnauthenticated { .. }
            | JitError::AdminCredential { .. }
            | JitError::NotOurs { .. }
            | JitError::Tls { .. } => false,
        }
    }
}

/// A role this gateway instance manages, as found on the target.
#[derive(Debug, Clone)]
pub struct ManagedRole {
    pub role: String,
    pub marker: Marker,
}

/// Mints and drops roles on one Postgres target.
pub struct PgProvisioner {
    target: PgTarget,
    instance_id: String,
    idle: Mutex<HashMap<String, Vec<Client>>>,
    /// This instance's liveness lock on the target, when a holder task keeps one (`serve`).
    liveness: std::sync::OnceLock<Liveness>,
    /// One per admin statement sequence in flight (mint, drop, reap): a burst of logins
    /// waits here instead of opening a connection each (`limits.max_mints_per_target`).
    slots: Arc<tokio::sync::Semaphore>,
}

/// An admin connection, holding one of the provisioner's slots until it is put back or dropped.
pub(crate) struct Admin {
    client: Client,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Admin {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Longest a mint waits for the first attempt to take this instance's liveness lock on the
/// target (the gateway just started) before it goes on without; a lock that is down (lost,
/// being taken again) is not waited for. Until the lock is held, another instance may take
/// this instance for dead and reap the new role.
const MINT_WAITS_FOR_LIVENESS: Duration = Duration::from_secs(5);

impl PgProvisioner {
    pub fn new(target: PgTarget, instance_id: String) -> Arc<Self> {
        let concurrent = crate::limits::LimitsConfig::default().max_mints_per_target;
        Self::with_concurrency(target, instance_id, concurrent)
    }

    /// `new`, with at most `concurrent` admin operations against the target at once.
    pub fn with_concurrency(target: PgTarget, instance_id: String, concurrent: usize) -> Arc<Self> {
        Arc::new(PgProvisioner {
            target,
            instance_id,
            idle: Mutex::new(HashMap::new()),
            liveness: std::sync::OnceLock::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
        })
    }

    /// From now on roles are marked `live=1` (this instance holds a liveness lock, so
    /// another instance that finds it free reaps them at once) and a mint waits a little for
    /// the lock when it is not held. Set once, by `serve`, with its holder task's state.
    pub fn attach_liveness(&self, liveness: Liveness) {
        let _ = self.liveness.set(liveness);
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// Creates the role for `grant`, to be used in `database`. Nothing is created on error.
    /// `id` must already be registered as live, so the reaper cannot race the mint.
    pub async fn mint(
        &self,
        id: LeaseId,
        grant: &Grant,
        identity: &Identity,
        database: &str,
    ) -> Result<PgLease, JitError> {
        let role = role_name(&identity.account_stem());
        let password = random_password();
        super::lease::record_for_leak_tests(&password);
        // Waiting for the liveness lock (only while its first attempt runs) goes alongside
        // the admin connection, so it adds nothing to a mint's time unless the lock is slower
        // than the connection — nor to a failure's (a silent target).
        let live = self.liveness.get();
        let waiting = async {
            if let Some(live) = live {
                if !live.wait_held(MINT_WAITS_FOR_LIVENESS).await {
                    tracing::warn!(target_name = %self.target.name, lease = %id, "minting while this instance's liveness lock on the target is not held: another instance may take the role for a dead gateway's and reap it");
                }
            }
        };
        let (admin, ()) = tokio::join!(self.admin(database), waiting);
        let admin = admin?;
        let expires_at = SystemTime::now() + grant.max_session();
        // The server only ever sees the SCRAM verifier: the plaintext cannot land in its logs.
        let verifier = verifier::scram_verifier(password.expose().as_bytes());
        let marker = Marker::render(
            &self.instance_id,
            &id,
            expires_at,
            live.is_some(),
            grant.name(),
            &identity.user,
        );
        let (version, valid_until) = login_window(&admin)
            .await
            .map_err(|e| self.sql("SHOW server_version_num", e))?;
        let sql = create_role_sql(&role, &verifier, grant, &valid_until, version, &marker);
        // One simple-query string runs as one implicit transaction: no unmarked role can exist.
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| self.sql("CREATE ROLE", e))?;
        self.put_back(database, admin);
        Ok(PgLease {
            id,
            role,
            password,
            database: database.to_string(),
            expires_at,
        })
    }

    /// Ends the lease's sessions on the target (used when its time is up); the role stays
    /// until `drop_lease`.
    pub async fn terminate_backends(&self, lease: &PgLease) -> Result<(), JitError> {
        let admin = self.admin(&lease.database).await?;
        admin
            .query(
                "SELECT pg_terminate_backend(a.pid, 5000) FROM pg_stat_activity a \
                 JOIN pg_roles r ON r.oid = a.usesysid WHERE r.rolname = $1",
                &[&lease.role],
            )
            .await
            .map_err(|e| self.sql("pg_terminate_backend", e))?;
        self.put_back(&lease.database, admin);
        Ok(())
    }

    /// Roles that currently have a backend on the target.
    pub async fn roles_with_backends(&self) -> Result<Vec<String>, JitError> {
        let db = self.target.admin.database.clone();
        let admin = self.admin(&db).await?;
        let rows = admin
            .query(
                "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE usename IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| self.sql("SELECT pg_stat_activity", e))?;
        self.put_back(&db, admin);
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Locks the role out, ends every backend it has, drops it, and checks that none is left.
    /// The order matters: a role can give itself a password (`ALTER ROLE CURRENT_USER
    /// PASSWORD`), and DROP ROLE ends no session, so NOLOGIN comes first, then every backend
    /// of the role's oid is terminated (after a drop `usename` is NULL, the oid stays), so no
    /// login made outside the gateway survives.
    async fn terminate_and_drop(&self, admin: &Client, role: &str) -> Result<(), JitError> {
        let oid: Option<u32> = admin
            .query_opt("SELECT oid FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(|e| self.sql("SELECT pg_roles", e))?
            .map(|row| row.get(0));
        let Some(oid) = oid else {
            return Ok(());
        };
        let r = escape_identifier(role);
        admin
            .batch_execute(&format!("ALTER ROLE {r} NOLOGIN PASSWORD NULL"))
            .await
            .map_err(|e| self.sql("ALTER ROLE NOLOGIN", e))?;
        self.terminate_oid(admin, oid).await?;
        // DROP OWNED BY needs the role's privileges. The admin gets them only here, in the
        // same implicit transaction as the drop that ends them (so on failure it keeps
        // nothing): during the session it holds no membership in the role, and so none of the
        // data privileges the role inherits. INHERIT without SET where the server can say so.
        let version = server_version(admin)
            .await
            .map_err(|e| self.sql("SHOW server_version_num", e))?;
        let admin_role = escape_identifier(&self.target.admin.user);
        let membership = if version >= 160_000 {
            format!("GRANT {r} TO {admin_role} WITH INHERIT TRUE, SET FALSE")
        } else {
            format!("GRANT {r} TO {admin_role}")
        };
        admin
            .batch_execute(&format!("{membership}; DROP OWNED BY {r}; DROP ROLE {r}"))
            .await
            .map_err(|e| self.sql("DROP ROLE", e))?;
        // A backend that passed its login check just before NOLOGIN committed may have
        // registered after the terminate above.
        let left = self.terminate_oid(admin, oid).await?;
        if left > 0 {
            tracing::warn!(target_name = %self.target.name, role, backends = left, "backends of a dropped role were still running; terminated");
        }
        Ok(())
    }

    /// Terminates (and waits up to 5 s for) every backend whose session user is `oid`;
    /// returns how many there were.
    async fn terminate_oid(&self, admin: &Client, oid: u32) -> Result<usize, JitError> {
        admin
            .query(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usesysid = $1",
                &[&oid],
            )
            .await
            .map(|rows| rows.len())
            .map_err(|e| self.sql("pg_terminate_backend", e))
    }

    fn sql(&self, statement: &'static str, e: tokio_postgres::Error) -> JitError {
        let sqlstate = e.code().map(|c| c.code().to_string());
        let reason = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        };
        JitError::Sql {
            target: self.target.name.clone(),
            statement,
            reason,
            sqlstate,
        }
    }

    /// An idle admin connection to `database`, or a new one.
    async fn admin(&self, database: &str) -> Result<Admin, JitError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            // The semaphore is never closed; should it be, say so as a retryable fault.
            .map_err(|_| JitError::Unreachable {
                target: self.target.name.clone(),
                addr: format!("{}:{}", self.target.host, self.target.port),
                reason: "the admin connection slots were closed".to_string(),
            })?;
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(database.to_string()).or_default();
            list.retain(|c| !c.is_closed());
            list.pop()
        };
        let client = match pooled {
            Some(client) => client,
            None => self.connect_admin(database).await?,
        };
        Ok(Admin {
            client,
            _slot: slot,
        })
    }

    fn put_back(&self, database: &str, admin: Admin) {
        let client = admin.client;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(database.to_string()).or_default();
        if list.len() < IDLE_ADMIN_CONNECTIONS && !client.is_closed() {
            list.push(client);
        }
    }

    /// A new admin session ([`admin_session`]), its failure told as a `JitError`.
    async fn connect_admin(&self, database: &str) -> Result<Client, JitError> {
        self.connect_admin_as(database, "jitgate").await
    }

    /// `connect_admin` with its own `application_name` (what pg_stat_activity shows).
    async fn connect_admin_as(
        &self,
        database: &str,
        application_name: &str,
    ) -> Result<Client, JitError> {
        let t = &self.target;
        let password = t
            .admin
            .password
            .read()
            .map_err(|e| JitError::AdminCredential {
                target: t.name.clone(),
                reason: e.to_string(),
            })?;
        match admin_session(t, database, &password, application_name).await {
            Ok(client) => Ok(client),
            Err(AdminConnect::Unreachable(reason)) => Err(JitError::Unreachable {
                target: t.name.clone(),
                addr: format!("{}:{}", t.host, t.port),
                reason,
            }),
            Err(AdminConnect::Tls(reason)) => Err(JitError::Tls {
                target: t.name.clone(),
                reason,
            }),
            Err(AdminConnect::Postgres(e)) => Err(self.connect_error(e)),
        }
    }

    fn connect_error(&self, e: tokio_postgres::Error) -> JitError {
        let t = &self.target;
        if let Some(db) = e.as_db_error() {
            return JitError::AdminRejected {
                target: t.name.clone(),
                reason: db.message().to_string(),
                sqlstate: Some(db.code().code().to_string()),
            };
        }
        let reason = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        // tokio-postgres's own authentication failures (no channel binding over TLS, a server
        // signature that does not verify) only show as its "authentication error" kind, which
        // it does not expose otherwise. Should that text change, such a login still fails, only
        // reported as unreachable.
        if LoginRefusal::find(&e).is_some() || e.to_string() == "authentication error" {
            return JitError::AdminUnauthenticated {
                target: t.name.clone(),
                reason,
            };
        }
        // A certificate the TLS check refused is not a target that is down: retrying cannot
        // help, and "cannot reach" would send the operator looking at the network.
        if let Some(reason) = tls_refusal(&e) {
            return JitError::Tls {
                target: t.name.clone(),
                reason,
            };
        }
        JitError::Unreachable {
            target: t.name.clone(),
            addr: format!("{}:{}", t.host, t.port),
            reason,
        }
    }
}

impl Managed for ManagedRole {
    fn marker(&self) -> &Marker {
        &self.marker
    }

    fn name(&self) -> &str {
        &self.role
    }
}

impl Provisioner for PgProvisioner {
    type Error = JitError;
    type Lease = PgLease;
    type Account = ManagedRole;
    const KIND: TargetKind = TargetKind::Postgres;

    fn target_name(&self) -> &str {
        &self.target.name
    }

    /// Terminates the role's backends and drops it (objects it owns in the lease's database
    /// first). A role that is already gone is success; one not marked as this lease's is refused.
    async fn drop_lease(&self, lease: &PgLease) -> Result<(), JitError> {
        let admin = self.admin(&lease.database).await?;
        let comment = admin
            .query_opt(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[&lease.role],
            )
            .await
            .map_err(|e| self.sql("SELECT pg_roles", e))?;
        let Some(row) = comment else {
            self.put_back(&lease.database, admin);
            return Ok(());
        };
        let comment: Option<String> = row.get(0);
        let ours = comment
            .as_deref()
            .and_then(Marker::parse)
            .is_some_and(|m| m.instance == self.instance_id && m.lease == lease.id.as_str());
        if !ours {
            return Err(JitError::NotOurs {
                target: self.target.name.clone(),
                role: lease.role.clone(),
            });
        }
        self.terminate_and_drop(&admin, &lease.role).await?;
        self.put_back(&lease.database, admin);
        Ok(())
    }

    fn describe_drop(&self, lease: &PgLease) -> String {
        format!("dropping {} on {}", lease.role, self.target.name)
    }

    /// Every role on the target carrying a jitgate marker (any instance).
    async fn managed(&self) -> Result<Vec<ManagedRole>, JitError> {
        let db = self.target.admin.database.clone();
        let admin = self.admin(&db).await?;
        let rows = admin
            .query(
                "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles \
                 WHERE shobj_description(oid, 'pg_authid') LIKE 'jitgate:managed %'",
                &[],
            )
            .await
            .map_err(|e| self.sql("SELECT pg_roles", e))?;
        self.put_back(&db, admin);
        Ok(rows
            .iter()
            .filter_map(|row| {
                let role: String = row.get(0);
                let comment: Option<String> = row.get(1);
                comment
                    .as_deref()
                    .and_then(Marker::parse)
                    .map(|marker| ManagedRole { role, marker })
            })
            .collect())
    }

    /// Drops a managed role found by the reaper. The caller decided it has no live session.
    async fn reap(&self, role: &ManagedRole) -> Result<(), JitError> {
        let db = self.target.admin.database.clone();
        let admin = self.admin(&db).await?;
        self.terminate_and_drop(&admin, &role.role).await?;
        self.put_back(&db, admin);
        Ok(())
    }

    fn probe_instances(
        &self,
        instances: &[&str],
    ) -> impl std::future::Future<Output = HashMap<String, Owner>> + Send {
        self.probe_locks(instances)
    }
}

/// The rustls error somewhere in `e`'s sources (tokio-rustls hands it over inside an
/// `io::Error`), worded for the operator: our own certificate checks' text as it is, not
/// wrapped in rustls's `Other(OtherError(…))`.
fn tls_refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let found = s.downcast_ref::<rustls::Error>().or_else(|| {
            s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = found {
            return Some(match tls {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                    other.to_string()
                }
                other => other.to_string(),
            });
        }
        source = s.source();
    }
    None
}

/// Why an admin session could not be had: the server never answered in time, the TLS set-up
/// failed, or PostgreSQL (or the login check) refused; the last keeps tokio-postgres's error,
/// whose SQLSTATE `jitgate doctor` turns into a fix.
pub enum AdminConnect {
    Unreachable(String),
    Tls(String),
    Postgres(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for AdminConnect {
    fn from(e: tokio_postgres::Error) -> Self {
        AdminConnect::Postgres(e)
    }
}

/// Logs in as the target's admin, on `database`: the one way jitgate (the provisioner and
/// `jitgate doctor`) opens an admin session. The login must be a complete SCRAM-SHA-256
/// exchange whose server signature verifies (`admin_login::AuthGuard`: a server asking for the
/// password in cleartext or MD5, or saying AuthenticationOk without SCRAM, gets nothing), and
/// over TLS it must be SCRAM-SHA-256-PLUS, bound to this TLS connection, so that a relay
/// terminating TLS with its own certificate (which `tls: require` does not check) cannot pass
/// the exchange on to the real server. Otherwise whoever answers would get the admin's
/// session, and with it the verifier of every JIT role minted over it. Every session carries
/// the statement and lock timeouts of [`admin_options`].
pub(crate) async fn admin_session(
    t: &PgTarget,
    database: &str,
    password: &Secret<String>,
    application_name: &str,
) -> Result<Client, AdminConnect> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(&t.admin.user)
        .password(password.expose().as_bytes())
        .dbname(database)
        .application_name(application_name)
        .options(admin_options())
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let tcp = tokio::time::timeout(
        ADMIN_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((t.host.as_str(), t.port)),
    )
    .await
    .map_err(|_| AdminConnect::Unreachable("connect timed out".into()))?
    .map_err(|e| AdminConnect::Unreachable(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| AdminConnect::Unreachable(e.to_string()))?;
    // `connect_raw` applies no timeout of its own: a server that stalls the login must not
    // stall the mint or drop waiting on it.
    let login = async {
        match &t.tls {
            UpstreamTls::Disable => {
                // Nothing to bind SCRAM to without TLS; tokio-postgres must not insist.
                config
                    .ssl_mode(tokio_postgres::config::SslMode::Disable)
                    .channel_binding(tokio_postgres::config::ChannelBinding::Disable);
                let (client, conn) = config
                    .connect_raw(AuthGuard::new(tcp), tokio_postgres::NoTls)
                    .await?;
                spawn_connection(conn);
                Ok(client)
            }
            UpstreamTls::Require | UpstreamTls::VerifyFull { .. } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, conn) = config.connect_raw(tcp, admin_tls(t)?).await?;
                spawn_connection(conn);
                Ok::<_, AdminConnect>(client)
            }
        }
    };
    tokio::time::timeout(ADMIN_LOGIN_TIMEOUT, login)
        .await
        .unwrap_or_else(|_| Err(AdminConnect::Unreachable("admin login timed out".into())))
}

fn admin_tls(t: &PgTarget) -> Result<AdminTls, AdminConnect> {
    let ca = match &t.tls {
        UpstreamTls::VerifyFull { ca } => Some(ca.as_path()),
        UpstreamTls::Require | UpstreamTls::Disable => None,
    };
    let config =
        crate::tls::upstream_client_config(ca).map_err(|e| AdminConnect::Tls(e.to_string()))?;
    let server_name = rustls_pki_types::ServerName::try_from(t.host.clone())
        .map_err(|e| AdminConnect::Tls(e.to_string()))?;
    Ok(AdminTls {
        config,
        server_name,
    })
}

/// `-c` options for every admin session: no admin statement can hang (issue 7 item 10), and
/// its commits do not wait for the WAL flush (`synchronous_commit=off`; a committed CREATE
/// ROLE is visible to the gateway's login at once either way). What that risks is a server
/// crash within the WAL writer's delay (a fraction of a second) forgetting a commit: a role
/// created then is gone (its session had not started), and a drop forgotten then brings the
/// role back unused, its password known to no one and expiring two minutes after its
/// creation, for the reaper to drop on its next pass like any account without a live lease.
fn admin_options() -> String {
    format!(
        "-c statement_timeout={ADMIN_STATEMENT_TIMEOUT} -c lock_timeout={ADMIN_LOCK_TIMEOUT} \
         -c synchronous_commit=off"
    )
}

fn spawn_connection<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
}

/// How long after its creation a role's password is accepted (`VALID UNTIL`, by the target's
/// own clock): long enough for the gateway's one login (connect and login time out after 15
/// s), after which a password, even one the role gave itself, logs nobody in. The lease's
/// own expiry is in the role's comment, for the reaper.
const PASSWORD_VALID_FOR: &str = "2 minutes";

/// The server's version and the end of a new role's login window, from one round trip.
async fn login_window(admin: &Client) -> Result<(i32, String), tokio_postgres::Error> {
    let row = admin
        .query_one(
            &format!(
                "SELECT current_setting('server_version_num')::int, \
                 to_char((now() + interval '{PASSWORD_VALID_FOR}') AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn server_version(admin: &Client) -> Result<i32, tokio_postgres::Error> {
    let row = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?;
    Ok(row.get(0))
}

/// `jit_<sanitised user>_<10 random>`: only `[a-z0-9_]`, at most 63 bytes, whatever the user is.
pub fn role_name(user: &str) -> String {
    const SUFFIX: usize = 10;
    let budget = MAX_ROLE_NAME - "jit_".len() - 1 - SUFFIX;
    let clean = super::sanitise_user(user, budget);
    format!("jit_{clean}_{}", random_suffix(SUFFIX))
}

fn create_role_sql(
    role: &str,
    verifier: &str,
    grant: &Grant,
    until: &str,
    server_version: i32,
    marker: &str,
) -> String {
    let r = escape_identifier(role);
    // CONNECTION LIMIT 1: each gateway connection has a role of its own, so a second
    // connection can only be one made outside the gateway.
    let mut sql = format!(
        "CREATE ROLE {r} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT \
         CONNECTION LIMIT 1 VALID UNTIL {until} PASSWORD {verifier}",
        until = escape_literal(until),
        verifier = escape_literal(verifier),
    );
    let roles: Vec<String> = grant
        .pg_roles()
        .iter()
        .map(|g| escape_identifier(g))
        .collect();
    if server_version < 160_000 {
        // Membership on 15 always carries SET: the JIT role can `SET ROLE` to a granted role
        // and create objects owned by it, which outlive the JIT role (README: security model).
        if !roles.is_empty() {
            sql.push_str(&format!(" IN ROLE {}", roles.join(", ")));
        }
        sql.push(';');
    } else {
        // 16+: the granted privileges are inherited, but without `set_role` the JIT role
        // cannot become a granted role, so it cannot create objects (a SECURITY DEFINER
        // function, say) that the granted role owns and that `DROP OWNED` would leave behind.
        sql.push(';');
        if !roles.is_empty() {
            let set = if grant.pg_set_role() { "TRUE" } else { "FALSE" };
            sql.push_str(&format!(
                " GRANT {} TO {r} WITH INHERIT TRUE, SET {set};",
                roles.join(", ")
            ));
        }
    }
    sql.push_str(&format!(
        " COMMENT ON ROLE {r} IS {};",
        escape_literal(marker)
    ));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_safe_and_bounded() {
        let hostile = role_name("a\"; DROP ROLE x; --");
        assert!(hostile.starts_with("jit_a_drop_role_x_"), "{hostile}");
        assert!(hostile
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        let long = role_name(&"é".repeat(200));
        assert!(long.starts_with("jit_user_"), "{long}");
        let long = role_name(&"x".repeat(200));
        assert_eq!(long.len(), 63);
        assert_ne!(role_name("alice"), role_name("alice"));
    }

    #[test]
    fn a_server_not_taking_logins_yet_is_worth_retrying() {
        let rejected = |code: &str| JitError::AdminRejected {
            target: "t".into(),
            reason: "the database system is shutting down".into(),
            sqlstate: Some(code.into()),
        };
        for code in ["57P01", "57P02", "57P03", "53300"] {
            assert!(rejected(code).is_transient(), "{code}");
        }
        for code in ["28P01", "28000", "3D000"] {
            assert!(!rejected(code).is_transient(), "{code}");
        }
    }
}
