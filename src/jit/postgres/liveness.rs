//! This instance's liveness lock on a PostgreSQL target: a session-level advisory lock,
//! `pg_try_advisory_lock(PG_LOCK_CLASS, <hash of the instance id>)`, on an admin session of
//! its own (`application_name` `jitgate liveness <instance>`) in the target's admin database, kept open
//! while the gateway runs and taken again with backoff whenever it drops. PostgreSQL releases
//! a session-level advisory lock when the session ends, however it ends ("Advisory Locks",
//! PostgreSQL docs §13.3.5): the gateway killed, or its host lost once the server notices the
//! connection is gone. That is how other instances learn this one is gone. No watchdog can run
//! on PostgreSQL (the README says what keeps a dead gateway's roles inert until reaped).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::PgProvisioner;
use crate::jit::liveness::{
    hold, pg_lock_key, LivenessSender, LockHolder, Owner, Release, PROBE_TIMEOUT,
};

/// How often the holder checks that its session still lives (a cheap local flag), and how
/// often it asks the server (`SELECT 1`, which also finds a connection that went silent).
const CLOSED_CHECK: Duration = Duration::from_millis(250);
const PING_EVERY: Duration = Duration::from_secs(5);
/// TCP keepalives on the server's end of the holder's session (idle 10 s, then 3 probes 5 s
/// apart), and at most 20 s for sent data to be acknowledged (`tcp_user_timeout`, PostgreSQL
/// 12+): a lost gateway host's lock is released within about half a minute.
const SERVER_KEEPALIVES: &str = "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
     SET tcp_keepalives_count = 3; SET tcp_user_timeout = 20000";

impl PgProvisioner {
    /// Holds this instance's liveness lock on the target until `release` says stop, and tells
    /// `held` whenever that changes. Runs for the gateway's life (`serve` spawns it).
    pub async fn hold_liveness(self: Arc<Self>, held: LivenessSender, release: Release) {
        hold(&AdvisoryLock(&self), held, release).await;
    }

    /// A new admin session holding the lock, or why not.
    async fn take_liveness_lock(&self) -> Result<Client, String> {
        let db = self.target.admin.database.clone();
        let client = self
            .connect_admin_as(&db, &format!("jitgate liveness {}", self.instance_id))
            .await
            .map_err(|e| e.to_string())?;
        // The server's side of this session's socket finds a vanished gateway host (no FIN)
        // in about 25 s rather than the kernel's two hours, and so releases the lock: each of
        // these is settable by any user, for its own session (PostgreSQL docs §19.3.1).
        tokio::time::timeout(PROBE_TIMEOUT, client.batch_execute(SERVER_KEEPALIVES))
            .await
            .map_err(|_| {
                format!(
                    "setting keepalives did not answer within {}s",
                    PROBE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("setting keepalives failed: {e}"))?;
        let (class, key) = pg_lock_key(&self.instance_id);
        let row = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.query_one(
                "SELECT pg_try_advisory_lock($1::int4, $2::int4)",
                &[&class, &key],
            ),
        )
        .await
        .map_err(|_| {
            format!(
                "pg_try_advisory_lock did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("pg_try_advisory_lock failed: {e}"))?;
        let locked: bool = row.get(0);
        if locked {
            Ok(client)
        } else {
            Err(format!(
                "another session holds advisory lock ({class}, {key}) of instance {}: another \
                 gateway runs with this instance_id, or this instance's previous session has \
                 not ended on the server yet (pg_locks and pg_stat_activity show which session)",
                self.instance_id
            ))
        }
    }

    /// Asks the target, for each of `instances` (never this instance's own), whether its
    /// liveness lock is free. A lock that is free is taken and released in the same statement,
    /// so the prober never keeps it; a statement that fails or times out costs its session
    /// (closed, not pooled), so an interrupted probe cannot keep a lock either.
    pub(super) async fn probe_locks(&self, instances: &[&str]) -> HashMap<String, Owner> {
        let mut answers: HashMap<String, Owner> = instances
            .iter()
            .map(|i| (i.to_string(), Owner::Unknown))
            .collect();
        let db = self.target.admin.database.clone();
        let admin = match tokio::time::timeout(PROBE_TIMEOUT, self.admin(&db)).await {
            Ok(Ok(admin)) => admin,
            Ok(Err(e)) => {
                tracing::warn!(target_name = %self.target.name, error = %crate::logsafe::diagnostic(&e.to_string()), "cannot ask the target about other instances' liveness locks");
                return answers;
            }
            Err(_) => {
                tracing::warn!(target_name = %self.target.name, "no admin session within {}s to ask about other instances' liveness locks", PROBE_TIMEOUT.as_secs());
                return answers;
            }
        };
        for instance in instances {
            if *instance == self.instance_id {
                continue;
            }
            let (class, key) = pg_lock_key(instance);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&class, &key];
            let probe = admin.query_one(
                "SELECT CASE WHEN pg_try_advisory_lock($1::int4, $2::int4) \
                 THEN pg_advisory_unlock($1::int4, $2::int4) ELSE false END",
                &params,
            );
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(row)) => {
                    let free: bool = row.get(0);
                    let owner = if free { Owner::Gone } else { Owner::Alive };
                    answers.insert(instance.to_string(), owner);
                }
                Ok(Err(e)) => {
                    tracing::warn!(target_name = %self.target.name, instance, error = %e, "liveness probe failed");
                    return answers;
                }
                Err(_) => {
                    tracing::warn!(target_name = %self.target.name, instance, "liveness probe did not answer within {}s", PROBE_TIMEOUT.as_secs());
                    return answers;
                }
            }
        }
        self.put_back(&db, admin);
        answers
    }
}

/// The lock as a session-level advisory lock, held by one admin session of its own.
struct AdvisoryLock<'a>(&'a PgProvisioner);

impl LockHolder for AdvisoryLock<'_> {
    type Held = Client;

    fn target_name(&self) -> &str {
        &self.0.target.name
    }

    fn take(&self) -> impl Future<Output = Result<Client, String>> + Send {
        self.0.take_liveness_lock()
    }

    fn watch(client: &mut Client) -> impl Future<Output = String> + Send {
        watch_session(client)
    }

    /// Dropping the client ends the session, which releases the lock.
    async fn let_go(&self, client: Client, _: &Release) {
        drop(client);
    }

    fn log_lost(&self, why: &str) {
        tracing::warn!(target_name = %self.0.target.name, reason = %crate::logsafe::diagnostic(why), "liveness lock lost (its admin session ended); taking it again — meanwhile other instances may reap this instance's accounts on the target");
    }
}

/// Waits until the holder's session ends or stops answering; why.
async fn watch_session(client: &Client) -> String {
    let mut tick = tokio::time::interval(CLOSED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    loop {
        tick.tick().await;
        if client.is_closed() {
            return "the connection closed".to_string();
        }
        if last_ping.elapsed() >= PING_EVERY {
            last_ping = Instant::now();
            match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return e.to_string(),
                Err(_) => {
                    return format!(
                        "the server did not answer a ping within {}s",
                        PROBE_TIMEOUT.as_secs()
                    )
                }
            }
        }
    }
}
