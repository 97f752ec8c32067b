//! Linux users as JIT accounts: `mint` creates `jit-<user>-<random>` on an SSH target with
//! exactly what the grant gives and an ephemeral Ed25519 key; `drop_lease` kills its processes,
//! removes it and locks its home away. Both run as one shell script over an admin SSH
//! connection (agentless: any stock OpenSSH host with `useradd`, `flock`, `pkill` will do).
//!
//! UIDs. JIT UIDs come from the target's `uid_range`, allocated by a counter
//! (`<state_dir>/next-uid`, under `flock`) that walks the whole range before it wraps, skipping
//! UIDs and GIDs that exist. After the first wrap (`<state_dir>/uid-wrapped`), a UID is taken
//! only if no file under `<state_dir>/home`, `<state_dir>/tmp-home`, `/tmp`, `/var/tmp` or
//! `/dev/shm` is owned by it (user or group). Why not reclaim files at removal instead: files
//! left in `/tmp` by one connection are often meant for the next (`scp f web-1:/tmp/`), and
//! deleting them would be a surprise; keeping the UID out of use means a later account can
//! never inherit them, which is what zero standing privilege needs. A range of 100 000 UIDs
//! makes the wrap (and its file search) rare.
//!
//! Homes. `persistent`: `<state_dir>/home/<person>`, root:root 0700 between connections, lent
//! to the account (chown) for one connection, locked back at removal. A second concurrent
//! connection of the same person gets an ephemeral home instead (logged). `ephemeral`:
//! `<state_dir>/tmp-home/<account>`, removed with the account.
//!
//! Liveness. `liveness` holds this instance's lock on the target (`<state_dir>/instances/`)
//! in a long-lived admin exec that is also the target's watchdog for the instance.

mod liveness;
mod names;
mod script;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::client::Handle;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};
use time::macros::format_description;
use time::OffsetDateTime;

pub use names::{account_name, is_account_name, person_dir_name};
pub use script::shell_quote;

use self::names::HomeKind;
use self::script::{output_value, output_values, Vars};
use super::lease::{LeaseId, Marker};
use super::liveness::{Liveness, Owner};
use super::provisioner::{Managed, ProvisionError, Provisioner};
use crate::config::SshTarget;
use crate::identity::Identity;
use crate::policy::{Grant, HomeMode, TargetKind};
use crate::secret::Secret;
use crate::ssh_client::{connect_pinned, exec, ExecOutput, PinnedHost, SshClientError};

/// Longest a provisioning script may take (it waits up to 60 s for the target's lock).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The managed group every JIT account is a member of; nothing outside it is ever touched.
pub const MANAGED_GROUP: &str = "jitgate";

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("{0}")]
    Client(#[from] SshClientError),
    #[error("cannot load the admin key {} of SSH target {target}: {reason}", path.display())]
    AdminKey {
        target: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("SSH target {target}: {reason}")]
    PinnedKey { target: String, reason: String },
    #[error("SSH target {target}: {operation}: the admin connection failed: {reason}")]
    Channel {
        target: String,
        operation: &'static str,
        reason: String,
    },
    #[error("SSH target {target}: {operation} did not finish within {}s", SCRIPT_TIMEOUT.as_secs())]
    Timeout {
        target: String,
        operation: &'static str,
    },
    #[error("SSH target {target}: {operation} failed (exit status {status}): {message}")]
    Script {
        target: String,
        operation: &'static str,
        status: u32,
        message: String,
    },
    #[error("SSH target {target}: {operation} printed something unexpected: {reason}")]
    BadOutput {
        target: String,
        operation: &'static str,
        reason: String,
    },
    #[error(
        "account {account} on SSH target {target} is not marked as this lease's; left untouched"
    )]
    NotOurs { target: String, account: String },
    #[error("cannot generate an Ed25519 key: {0}")]
    KeyGeneration(String),
}

impl ProvisionError for LinuxError {
    fn is_transient(&self) -> bool {
        match self {
            LinuxError::Client(e) => e.is_transient(),
            LinuxError::Channel { .. } | LinuxError::Timeout { .. } => true,
            LinuxError::AdminKey { .. }
            | LinuxError::PinnedKey { .. }
            | LinuxError::Script { .. }
            | LinuxError::BadOutput { .. }
            | LinuxError::NotOurs { .. }
            | LinuxError::KeyGeneration(_) => false,
        }
    }
}

/// One JIT Linux account, minted for one SSH connection. Only `jit::linux` makes one.
#[derive(Debug)]
pub struct LinuxLease {
    pub id: LeaseId,
    /// The account name, `jit-<user>-<random>`.
    pub user: String,
    pub uid: u32,
    /// The ephemeral key whose public half is the account's only `authorized_keys` entry.
    /// It never leaves the gateway process.
    pub key: Secret<PrivateKey>,
    pub home: String,
    /// What the account got, which is ephemeral when the grant asked for persistent but the
    /// person's home was in use by another connection.
    pub home_mode: HomeMode,
    pub expires_at: SystemTime,
}

/// A member of group `jitgate` with a valid marker, as found on the target.
#[derive(Debug, Clone)]
pub struct ManagedAccount {
    pub name: String,
    pub uid: u32,
    pub home: String,
    pub marker: Marker,
    /// Some process runs as it (so a gateway may still be serving it).
    pub has_processes: bool,
}

/// Mints and drops Linux accounts on one SSH target.
pub struct LinuxProvisioner {
    target: SshTarget,
    instance_id: String,
    admin_key: Secret<PrivateKey>,
    /// One admin connection, reused while it is up (its channels multiplex).
    admin: tokio::sync::Mutex<Option<Arc<Handle<PinnedHost>>>>,
    /// Persistent homes (by person directory) whose account is being removed right now, and
    /// how many such removals run; a mint for that person waits for them (see `mint`).
    releasing: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    released: tokio::sync::Notify,
    /// This instance's liveness lock on the target, when a holder task keeps one (`serve`).
    liveness: std::sync::OnceLock<Liveness>,
    /// One per admin script in flight (`limits.max_mints_per_target`): the scripts share one
    /// SSH connection, and sshd refuses channels past its MaxSessions (10 by default).
    slots: tokio::sync::Semaphore,
}

/// Longest a mint waits for the first attempt to take this instance's liveness lock on the
/// target (the gateway just started) before it goes on without; a lock that is down (lost,
/// being taken again) is not waited for. Until the lock is held, another instance may take
/// this instance for dead and reap the new account.
const MINT_WAITS_FOR_LIVENESS: Duration = Duration::from_secs(5);

/// While it lives, a person's persistent home counts as "being released": taken by
/// [`LinuxProvisioner::releasing`] when a connection ends, before its account's removal.
pub struct Releasing<'a> {
    prov: &'a LinuxProvisioner,
    person: Option<String>,
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        let Some(person) = self.person.take() else {
            return;
        };
        let mut map = self
            .prov
            .releasing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&person) {
            *n -= 1;
            if *n == 0 {
                map.remove(&person);
            }
        }
        drop(map);
        self.prov.released.notify_waiters();
    }
}

/// Longest a mint waits for the same person's previous account to give their persistent home
/// back; after that the new connection gets an ephemeral home (as a concurrent one does).
const RELEASE_WAIT: Duration = Duration::from_secs(30);

impl LinuxProvisioner {
    /// Loads the admin key and checks the pinned host key; connects only when first used.
    pub fn new(target: SshTarget, instance_id: String) -> Result<Arc<Self>, LinuxError> {
        let concurrent = crate::limits::LimitsConfig::default().max_mints_per_target;
        Self::with_concurrency(target, instance_id, concurrent)
    }

    /// `new`, with at most `concurrent` admin scripts running on the target at once.
    pub fn with_concurrency(
        target: SshTarget,
        instance_id: String,
        concurrent: usize,
    ) -> Result<Arc<Self>, LinuxError> {
        let admin_key =
            russh::keys::load_secret_key(&target.admin.key_file, None).map_err(|e| {
                LinuxError::AdminKey {
                    target: target.name.clone(),
                    path: target.admin.key_file.clone(),
                    reason: e.to_string(),
                }
            })?;
        target.pinned_key().map_err(|e| LinuxError::PinnedKey {
            target: target.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(LinuxProvisioner {
            target,
            instance_id,
            admin_key: Secret::new(admin_key),
            admin: tokio::sync::Mutex::new(None),
            releasing: std::sync::Mutex::new(std::collections::HashMap::new()),
            released: tokio::sync::Notify::new(),
            liveness: std::sync::OnceLock::new(),
            slots: tokio::sync::Semaphore::new(concurrent.max(1)),
        }))
    }

    /// From now on accounts are marked `live=1` (this instance holds a liveness lock, so
    /// another instance that finds it free reaps them at once) and a mint waits a little for
    /// the lock when it is not held. Set once, by `serve`, with its holder task's state.
    pub fn attach_liveness(&self, liveness: Liveness) {
        let _ = self.liveness.set(liveness);
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Marks `lease`'s persistent home as being given back, until the guard is dropped (after
    /// the removal). Taken as soon as a connection ends, so that the same person's next
    /// connection (`scp f web-1:` then `ssh web-1 cat f`) waits for its home rather than
    /// finding it still lent and getting an ephemeral one.
    pub fn releasing(&self, lease: &LinuxLease) -> Releasing<'_> {
        let person = (lease.home_mode == HomeMode::Persistent).then(|| lease.home.clone());
        if let Some(person) = &person {
            *self
                .releasing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(person.clone())
                .or_default() += 1;
        }
        Releasing { prov: self, person }
    }

    /// Waits (at most [`RELEASE_WAIT`]) until no removal holds `home`.
    async fn wait_released(&self, home: &str) {
        let until = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            let busy = self
                .releasing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(home);
            if !busy {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                tracing::warn!(target_name = %self.target.name, home, "the previous account of this person still holds the home after {}s", RELEASE_WAIT.as_secs());
                return;
            }
        }
    }

    /// Creates the account for `grant` and `identity`. Nothing is left on the target on
    /// error. `id` must already be registered as live, so the reaper cannot race the mint.
    pub async fn mint(
        &self,
        id: LeaseId,
        grant: &Grant,
        identity: &Identity,
    ) -> Result<LinuxLease, LinuxError> {
        let person = person_dir_name(&identity.home_key());
        if grant.home() == HomeMode::Persistent {
            // The same person's previous connection may still be giving the home back.
            self.wait_released(&format!("{}/home/{person}", self.target.state_dir))
                .await;
        }
        let account = account_name(&identity.account_stem());
        let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
            .map_err(|e| LinuxError::KeyGeneration(e.to_string()))?;
        key.set_comment(format!("jitgate lease {id}"));
        if let Ok(pem) = key.to_openssh(LineEnding::LF) {
            super::lease::record_text_for_leak_tests(&pem);
        }
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| LinuxError::KeyGeneration(e.to_string()))?;
        // Waiting for the liveness lock (only while its first attempt runs) goes alongside
        // the admin connection the script needs anyway, so it adds nothing to a mint's time
        // unless the lock is slower than the connection — nor to a failure's.
        let live = self.liveness.get();
        let waiting = async {
            if let Some(live) = live {
                if !live.wait_held(MINT_WAITS_FOR_LIVENESS).await {
                    tracing::warn!(target_name = %self.target.name, lease = %id, "minting while this instance's liveness lock on the target is not held: another instance may take the account for a dead gateway's and reap it");
                }
            }
        };
        let (connected, ()) = tokio::join!(self.admin_handle(false), waiting);
        drop(connected?);
        let expires_at = SystemTime::now() + grant.max_session();
        let marker = Marker::render_gecos(
            &self.instance_id,
            &id,
            expires_at,
            live.is_some(),
            grant.name(),
        );
        let groups: Vec<&str> = grant
            .ssh_groups()
            .iter()
            .map(String::as_str)
            .filter(|g| *g != MANAGED_GROUP)
            .collect();
        let (uid_lo, uid_hi) = self.target.uid_range;
        let vars = Vars::default()
            .set("state", self.target.state_dir.as_str())
            .set("account", account.as_str())
            .set("person", person)
            .set("home_mode", grant.home().as_str())
            .set("uid_lo", uid_lo.to_string())
            .set("uid_hi", uid_hi.to_string())
            .set("groups", groups.join(","))
            .set("expire", account_expiry_date(expires_at))
            .set("marker", marker)
            .set("pubkey", public)
            .set("sudo", if grant.sudo() { "1" } else { "0" });
        const OP: &str = "creating a JIT account";
        let out = self
            .run_script(OP, script::build(&vars, script::MINT))
            .await?;
        if !out.success() {
            return Err(self.script_error(OP, &out));
        }
        let stdout = out.stdout_text();
        let bad = |reason: &str| LinuxError::BadOutput {
            target: self.target.name.clone(),
            operation: OP,
            reason: format!("{reason} in {:?}", crate::yaml::printable(&stdout)),
        };
        let uid = output_value(&stdout, "uid")
            .and_then(|u| u.parse::<u32>().ok())
            .ok_or_else(|| bad("no uid"))?;
        let home = output_value(&stdout, "home")
            .ok_or_else(|| bad("no home"))?
            .to_string();
        let home_mode = match output_value(&stdout, "home_mode") {
            Some("persistent") => HomeMode::Persistent,
            Some("ephemeral") => HomeMode::Ephemeral,
            Some(_) | None => return Err(bad("no home_mode")),
        };
        if let Some(note) = output_value(&stdout, "note") {
            tracing::warn!(target_name = %self.target.name, account = %account, lease = %id, "{note}");
        }
        tracing::debug!(target_name = %self.target.name, account = %account, uid, home = %home, home_mode = %home_mode, lease = %id, grant = grant.name(), "JIT account created");
        Ok(LinuxLease {
            id,
            user: account,
            uid,
            key: Secret::new(key),
            home,
            home_mode,
            expires_at,
        })
    }

    async fn remove(
        &self,
        account: &str,
        uid: u32,
        home: &str,
        instance: &str,
        lease: &str,
    ) -> Result<(), LinuxError> {
        const OP: &str = "removing a JIT account";
        let kind = HomeKind::of(&self.target.state_dir, account, home);
        let vars = Vars::default()
            .set("state", self.target.state_dir.as_str())
            .set("account", account)
            .set("uid", uid.to_string())
            .set("home", home)
            .set("home_kind", kind.as_str())
            .set("instance", instance)
            .set("lease", lease);
        let out = self
            .run_script(OP, script::build(&vars, script::REMOVE))
            .await?;
        if out.status == script::NOT_OURS {
            tracing::error!(target_name = %self.target.name, account, reason = %out.stderr_line(), "refusing to remove an account that is not this lease's");
            return Err(LinuxError::NotOurs {
                target: self.target.name.clone(),
                account: account.to_string(),
            });
        }
        if !out.success() {
            return Err(self.script_error(OP, &out));
        }
        let stdout = out.stdout_text();
        for note in output_values(&stdout, "note") {
            tracing::warn!(target_name = %self.target.name, account, lease, "{note}");
        }
        if let Some(n) = output_value(&stdout, "setid_stripped").filter(|n| *n != "0") {
            tracing::warn!(target_name = %self.target.name, account, lease, stripped = n, "set-id bits stripped from files the account left behind");
        }
        if output_value(&stdout, "removed").is_some() {
            tracing::debug!(target_name = %self.target.name, account, lease, home_kind = kind.as_str(), "JIT account removed");
        } else {
            tracing::info!(target_name = %self.target.name, account, lease, "JIT account was already gone");
        }
        Ok(())
    }

    /// Runs one script on the admin connection (through `sudo -n` unless the admin is root).
    async fn run_script(
        &self,
        operation: &'static str,
        text: String,
    ) -> Result<ExecOutput, LinuxError> {
        let command = admin_shell(&self.target);
        // Waiting for a slot is not the script's time: the scripts holding them are bounded.
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(LinuxError::Timeout {
                target: self.target.name.clone(),
                operation,
            });
        };
        let run = async {
            // A cached connection may have died since; a fresh one is tried once, and only
            // when the channel could not even be opened (the script has not run).
            let mut fresh = false;
            loop {
                let handle = self.admin_handle(fresh).await?;
                match exec(&handle, command, Some(text.as_bytes())).await {
                    Err(SshClientError::ChannelOpen { .. }) if !fresh => fresh = true,
                    Err(
                        SshClientError::ChannelOpen { reason } | SshClientError::Exec { reason },
                    ) => {
                        self.forget_admin(&handle).await;
                        return Err(LinuxError::Channel {
                            target: self.target.name.clone(),
                            operation,
                            reason,
                        });
                    }
                    other => return other.map_err(LinuxError::from),
                }
            }
        };
        match tokio::time::timeout(SCRIPT_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(LinuxError::Timeout {
                target: self.target.name.clone(),
                operation,
            }),
        }
    }

    async fn admin_handle(&self, fresh: bool) -> Result<Arc<Handle<PinnedHost>>, LinuxError> {
        let mut cached = self.admin.lock().await;
        if let Some(handle) = cached.as_ref() {
            if !fresh && !handle.is_closed() {
                return Ok(handle.clone());
            }
        }
        let handle = Arc::new(
            connect_pinned(
                &self.target,
                &self.target.admin.user,
                self.admin_key.expose(),
            )
            .await?,
        );
        *cached = Some(handle.clone());
        Ok(handle)
    }

    async fn forget_admin(&self, handle: &Arc<Handle<PinnedHost>>) {
        let mut cached = self.admin.lock().await;
        if cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, handle)) {
            *cached = None;
        }
    }

    fn script_error(&self, operation: &'static str, out: &ExecOutput) -> LinuxError {
        let message = out.stderr_line();
        LinuxError::Script {
            target: self.target.name.clone(),
            operation,
            status: out.status,
            message: if message.is_empty() {
                "(no message)".to_string()
            } else {
                message
            },
        }
    }
}

impl Managed for ManagedAccount {
    fn marker(&self) -> &Marker {
        &self.marker
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Provisioner for LinuxProvisioner {
    type Error = LinuxError;
    type Lease = LinuxLease;
    type Account = ManagedAccount;
    const KIND: TargetKind = TargetKind::Ssh;

    fn target_name(&self) -> &str {
        &self.target.name
    }

    /// Kills the account's processes, removes it (and its sudoers file) and locks its
    /// persistent home away or deletes its ephemeral one. An account that is already gone is
    /// success; one not marked as this lease's is refused with [`LinuxError::NotOurs`].
    async fn drop_lease(&self, lease: &LinuxLease) -> Result<(), LinuxError> {
        self.remove(
            &lease.user,
            lease.uid,
            &lease.home,
            &self.instance_id,
            lease.id.as_str(),
        )
        .await
    }

    fn describe_drop(&self, lease: &LinuxLease) -> String {
        format!("removing {} on {}", lease.user, self.target.name)
    }

    /// Members of group `jitgate` whose comment carries a valid marker (any instance).
    async fn managed(&self) -> Result<Vec<ManagedAccount>, LinuxError> {
        const OP: &str = "listing JIT accounts";
        let out = self
            .run_script(OP, script::build(&Vars::default(), script::LIST))
            .await?;
        if !out.success() {
            return Err(self.script_error(OP, &out));
        }
        Ok(parse_members(&out.stdout_text()))
    }

    /// Removes a managed account found by the reaper. The caller decided it has no live session.
    /// The removal script checks the marker of the instance that owns it (another instance's,
    /// when the reaper takes a dead or long-expired replica's account).
    async fn reap(&self, account: &ManagedAccount) -> Result<(), LinuxError> {
        self.remove(
            &account.name,
            account.uid,
            &account.home,
            &account.marker.instance,
            &account.marker.lease,
        )
        .await
    }

    fn probe_instances(
        &self,
        instances: &[&str],
    ) -> impl std::future::Future<Output = HashMap<String, Owner>> + Send {
        self.probe_locks(instances)
    }
}

/// The command a provisioning script (sent on stdin) runs under on `target`: the admin's own
/// shell when it is root, else `sudo -n`. `jitgate doctor` runs its probes the same way.
pub(crate) fn admin_shell(target: &SshTarget) -> &'static str {
    if target.admin.user == "root" {
        "/bin/sh -s"
    } else {
        "sudo -n /bin/sh -s"
    }
}

/// A script of `vars` (each value shell-quoted) followed by `body`, as the provisioning
/// scripts are built; for `jitgate doctor`'s probes.
pub(crate) fn script_with(vars: &[(&'static str, &str)], body: &str) -> String {
    vars.iter()
        .fold(Vars::default(), |v, (name, value)| v.set(name, *value))
        .script(body)
}

/// The account's expiry date for `useradd -e`: the day after the lease ends (UTC), so the
/// account never expires before its lease; the lease itself is enforced by the gateway.
fn account_expiry_date(expires_at: SystemTime) -> String {
    let day = OffsetDateTime::from(expires_at).date();
    let day = day.next_day().unwrap_or(day);
    day.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_else(|_| "1970-01-02".to_string())
}

/// Lines `<busy>:<passwd entry>` → managed accounts (jit-* names with a valid marker).
fn parse_members(stdout: &str) -> Vec<ManagedAccount> {
    stdout
        .lines()
        .filter_map(|line| {
            let (busy, entry) = line.split_once(':')?;
            let fields: Vec<&str> = entry.split(':').collect();
            let [name, _, uid, _, gecos, home, _] = fields.as_slice() else {
                return None;
            };
            if !is_account_name(name) {
                return None;
            }
            Some(ManagedAccount {
                name: name.to_string(),
                uid: uid.parse().ok()?,
                home: home.to_string(),
                marker: Marker::parse_gecos(gecos)?,
                has_processes: busy == "1",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn expiry_is_the_day_after_the_lease() {
        // 2027-01-15T08:00:00Z
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(account_expiry_date(at), "2027-01-16");
        // Just before midnight stays within the next day.
        let late = UNIX_EPOCH + Duration::from_secs(1_800_057_599);
        assert_eq!(account_expiry_date(late), "2027-01-16");
    }

    #[test]
    fn members_are_parsed_and_foreign_entries_skipped() {
        let lease = "0123456789abcdef";
        let out = format!(
            "1:jit-alice-abcd1234:x:200001:200001:jitgate-managed instance=gw-1 lease={lease} \
             expires=1800000000 grant=ops:/var/lib/jitgate/home/alice:/bin/bash\n\
             0:jit-bob-abcd1234:x:200002:200002:jitgate-managed instance=gw-2 lease={lease} \
             expires=1800000000 grant=ops:/var/lib/jitgate/tmp-home/jit-bob-abcd1234:/bin/sh\n\
             0:alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
             0:jit-fake-xyz:x:1001:1001:not a marker:/home/x:/bin/sh\n\
             0:root:x:0:0:jitgate-managed instance=gw-1 lease={lease} expires=1 grant=x:/root:/bin/sh\n\
             garbage\n"
        );
        let found = parse_members(&out);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].name, "jit-alice-abcd1234");
        assert_eq!(found[0].uid, 200_001);
        assert_eq!(found[0].home, "/var/lib/jitgate/home/alice");
        assert_eq!(found[0].marker.instance, "gw-1");
        assert_eq!(found[0].marker.lease, lease);
        assert!(found[0].has_processes);
        assert_eq!(found[1].marker.instance, "gw-2");
        assert!(!found[1].has_processes);
    }
}
