//! Linux JIT accounts against a real OpenSSH sshd on loopback and this machine's real user
//! database: `LinuxProvisioner` mints, logs in, drops and reaps; nothing outside group
//! `jitgate` is touched. Runs as root (skipped otherwise, failed under CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::sshd::Sshd;
use jitgate::config::{Config, HostKeySource, SshTarget, Target};
use jitgate::identity::Identity;
use jitgate::jit::lease::{LeaseId, Marker};
use jitgate::jit::linux::{LinuxError, LinuxLease, LinuxProvisioner};
use jitgate::jit::reaper::reap;
use jitgate::jit::{ProvisionError, Provisioner};
use jitgate::policy::{evaluate, AccessRequest, Grant, HomeMode, PolicySet};
use jitgate::secret::Secret;
use jitgate::ssh_client::{connect_pinned, exec, ExecOutput, SshClientError};
use russh::keys::{Algorithm, HashAlg, PrivateKey};

const POLICY: &str = "\
grants:
  - name: web-ops
    subjects: {groups: [ops]}
    targets: [web-1]
    ssh:
      groups: [adm]
  - name: web-eph
    subjects: {groups: [eph]}
    targets: [web-1]
    ssh: {home: ephemeral}
  - name: web-root
    subjects: {groups: [root-ops]}
    targets: [web-1]
    ssh: {sudo: true}
  - name: web-badgroup
    subjects: {groups: [bad]}
    targets: [web-1]
    ssh: {groups: [no-such-group-jitgate]}
";

struct Env {
    sshd: Sshd,
    target: SshTarget,
    prov: Arc<LinuxProvisioner>,
    policies: PolicySet,
    _policy_dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    let sshd = Sshd::start()?;
    let yaml = format!(
        "instance_id: {}\ntls: {{ca: a, cert: b, key: c}}\ntargets:\n{}",
        sshd.instance_id,
        sshd.target_yaml("web-1")
    );
    let config = Config::from_yaml(Path::new("/etc/jitgate/jitgate.yaml"), &yaml).unwrap();
    let Some(Target::Ssh(target)) = config.target("web-1").cloned() else {
        panic!("web-1 is not an ssh target: {config:?}")
    };
    let prov = LinuxProvisioner::new(target.clone(), sshd.instance_id.clone()).unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    fs::write(policy_dir.path().join("ssh.yaml"), POLICY).unwrap();
    let policies = PolicySet::load_dir(policy_dir.path()).unwrap();
    Some(Env {
        sshd,
        target,
        prov,
        policies,
        _policy_dir: policy_dir,
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn person(user: &str, group: &str) -> Identity {
    Identity {
        user: user.to_string(),
        groups: vec![group.to_string()],
        spiffe_id: None,
        serial: "01".to_string(),
        kind: jitgate::identity::SubjectKind::Person,
    }
}

impl Env {
    fn grant(&self, identity: &Identity, grant: &str) -> Grant {
        evaluate(
            &self.policies,
            &AccessRequest {
                identity,
                target: "web-1",
                kind: jitgate::policy::TargetKind::Ssh,
                requested: grant,
                reason: None,
            },
        )
        .unwrap()
    }

    async fn mint(&self, identity: &Identity, grant: &str) -> LinuxLease {
        let grant = self.grant(identity, grant);
        self.prov
            .mint(LeaseId::random(), &grant, identity)
            .await
            .unwrap_or_else(|e| panic!("mint failed: {e}\nsshd log:\n{}", self.sshd.log()))
    }

    /// Logs in as the lease's account with its key and runs `command`.
    async fn run_as(&self, lease: &LinuxLease, command: &str) -> ExecOutput {
        let handle = connect_pinned(&self.target, &lease.user, lease.key.expose())
            .await
            .unwrap_or_else(|e| panic!("login as {} failed: {e}\n{}", lease.user, self.sshd.log()));
        exec(&handle, command, None).await.unwrap()
    }
}

/// Runs a command on this machine; (success, stdout).
fn local(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn passwd(account: &str) -> Option<Vec<String>> {
    let (ok, line) = local("getent", &["passwd", account]);
    ok.then(|| line.split(':').map(str::to_string).collect())
}

fn jitgate_members() -> Vec<String> {
    let (_, line) = local("getent", &["group", "jitgate"]);
    line.split(':')
        .nth(3)
        .unwrap_or_default()
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether anything still runs as the account: zombies (dead, only waiting for init to reap
/// them) do not count, as in the removal script.
fn has_processes(account_or_uid: &str) -> bool {
    let uid = if account_or_uid.bytes().all(|b| b.is_ascii_digit()) {
        account_or_uid.to_string()
    } else {
        match local("id", &["-u", account_or_uid]) {
            (true, out) => out.trim().to_string(),
            (false, _) => return false,
        }
    };
    let script = format!("ps -e -o uid= -o stat= | awk '$1 == {uid} && $2 !~ /^Z/ {{ found = 1 }} END {{ exit !found }}'");
    local("sh", &["-c", &script]).0
}

/// (uid, gid, permission bits)
fn owner_mode(path: &str) -> (u32, u32, u32) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn mint_login_drop_and_the_persistent_home_outlives_the_account() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let alice = person("alice", "ops");
        let lease = env.mint(&alice, "web-ops").await;
        let user = lease.user.clone();
        assert!(user.starts_with("jit-alice-") && user.len() <= 32, "{user}");
        assert_eq!(lease.home_mode, HomeMode::Persistent);
        let home = format!("{}/home/alice", env.sshd.state_dir.display());
        assert_eq!(lease.home, home);
        let (lo, hi) = env.sshd.uid_range;
        assert!(
            (lo..=hi).contains(&lease.uid),
            "{} not in {lo}-{hi}",
            lease.uid
        );

        // The account as the target sees it.
        let entry = passwd(&user).expect("account exists");
        assert_eq!(entry[2], lease.uid.to_string());
        assert_eq!(entry[5], home);
        let marker = Marker::parse_gecos(&entry[4]).expect("marker in GECOS");
        assert_eq!(marker.instance, env.sshd.instance_id);
        assert_eq!(marker.lease, lease.id.as_str());
        let (_, groups) = local("id", &["-nG", &user]);
        let groups: Vec<&str> = groups.split_whitespace().collect();
        for g in ["jitgate", "adm", user.as_str()] {
            assert!(groups.contains(&g), "{user} not in {g}: {groups:?}");
        }
        assert!(jitgate_members().contains(&user));
        let (_, shadow) = local("getent", &["shadow", &user]);
        assert_eq!(shadow.split(':').nth(1), Some("*"), "{shadow}");
        let (_, chage) = local("chage", &["-l", &user]);
        let expires = chage
            .lines()
            .find(|l| l.starts_with("Account expires"))
            .unwrap_or_default();
        assert!(
            !expires.is_empty() && !expires.ends_with("never"),
            "{chage}"
        );
        assert_eq!(owner_mode(&home), (lease.uid, lease.uid, 0o700));
        assert_eq!(
            owner_mode(&format!("{home}/.ssh")),
            (lease.uid, lease.uid, 0o700)
        );
        assert_eq!(
            owner_mode(&format!("{home}/.ssh/authorized_keys")),
            (lease.uid, lease.uid, 0o600)
        );
        let state = env.sshd.state_dir.display().to_string();
        assert_eq!(owner_mode(&state).2, 0o711);
        assert_eq!(owner_mode(&format!("{state}/home")), (0, 0, 0o711));

        // Logging in with the lease's key works; a process it leaves behind is killed at drop.
        let out = env.run_as(&lease, "id -un; echo kept > ~/kept.txt").await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(out.stdout_text().trim(), user);
        let out = env
            .run_as(
                &lease,
                "setsid nohup sleep 1000 >/dev/null 2>&1 </dev/null & echo started",
            )
            .await;
        assert_eq!(out.stdout_text().trim(), "started");
        assert!(
            has_processes(&user),
            "the background sleep should be running"
        );

        env.prov.drop_lease(&lease).await.unwrap();
        assert!(passwd(&user).is_none(), "{user} still exists");
        assert!(
            !has_processes(&lease.uid.to_string()),
            "processes of {user} survive"
        );
        assert!(!jitgate_members().contains(&user));
        assert!(env.sshd.own_accounts().is_empty());
        assert_eq!(owner_mode(&home), (0, 0, 0o700));
        assert_eq!(owner_mode(&format!("{home}/kept.txt")).0, 0);
        assert!(!Path::new(&format!("{home}/.ssh/authorized_keys")).exists());
        // Dropping twice is fine: the account is gone already.
        env.prov.drop_lease(&lease).await.unwrap();

        // The next connection: a new account with a new UID finds the file.
        let next = env.mint(&alice, "web-ops").await;
        assert_ne!(next.user, user);
        assert!(next.uid > lease.uid, "{} then {}", lease.uid, next.uid);
        assert_eq!(next.home, home);
        let out = env
            .run_as(&next, "cat ~/kept.txt; stat -c %U ~/kept.txt")
            .await;
        assert_eq!(
            out.stdout_text(),
            format!("kept\n{}\n", next.user),
            "{out:?}"
        );
        env.prov.drop_lease(&next).await.unwrap();
        assert!(env.sshd.own_accounts().is_empty());
        assert_eq!(owner_mode(&home), (0, 0, 0o700));
    });
}

#[test]
fn ephemeral_home_goes_with_the_account() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let eve = person("eve", "eph");
        let lease = env.mint(&eve, "web-eph").await;
        assert_eq!(lease.home_mode, HomeMode::Ephemeral);
        let home = format!("{}/tmp-home/{}", env.sshd.state_dir.display(), lease.user);
        assert_eq!(lease.home, home);
        assert_eq!(owner_mode(&home), (lease.uid, lease.uid, 0o700));
        let out = env.run_as(&lease, "echo x > ~/scratch; pwd").await;
        assert_eq!(out.stdout_text().trim(), home);
        env.prov.drop_with_retry(&lease).await.unwrap();
        assert!(!Path::new(&home).exists(), "{home} survives");
        assert!(passwd(&lease.user).is_none());
        assert!(!Path::new(&format!("{}/home/eve", env.sshd.state_dir.display())).exists());
    });
}

#[test]
fn a_second_concurrent_connection_gets_an_ephemeral_home() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let bob = person("bob", "ops");
        let first = env.mint(&bob, "web-ops").await;
        let second = env.mint(&bob, "web-ops").await;
        assert_eq!(first.home_mode, HomeMode::Persistent);
        assert_eq!(second.home_mode, HomeMode::Ephemeral);
        assert!(second.home.contains("/tmp-home/"), "{}", second.home);
        let out = env.run_as(&second, "id -un").await;
        assert_eq!(out.stdout_text().trim(), second.user);
        env.prov.drop_lease(&second).await.unwrap();
        // The first still has its home.
        assert_eq!(owner_mode(&first.home).0, first.uid);
        env.prov.drop_lease(&first).await.unwrap();
        assert_eq!(owner_mode(&first.home), (0, 0, 0o700));
        assert!(env.sshd.own_accounts().is_empty());
    });
}

/// A removal run again for an account already gone (a drop retried after a lost answer, the
/// reaper) while the person's persistent home is lent to their next account: the home stays
/// with the live account. (CI saw the second of two back-to-back ssh connections refused its
/// home: "Could not chdir to home directory …: Permission denied".)
#[test]
fn a_repeated_removal_leaves_a_home_lent_to_the_next_account_alone() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let bob = person("bob", "ops");
        let first = env.mint(&bob, "web-ops").await;
        env.prov.drop_lease(&first).await.unwrap();
        let second = env.mint(&bob, "web-ops").await;
        assert_eq!(second.home_mode, HomeMode::Persistent);
        assert_eq!(second.home, first.home);
        env.prov.drop_lease(&first).await.unwrap();
        assert_eq!(owner_mode(&second.home).0, second.uid);
        let out = env.run_as(&second, "cd && pwd").await;
        assert_eq!(out.stdout_text().trim(), second.home);
        env.prov.drop_lease(&second).await.unwrap();
        assert_eq!(owner_mode(&second.home), (0, 0, 0o700));
        assert!(env.sshd.own_accounts().is_empty());
    });
}

/// Removals of one account that overlap (a retried drop, the reaper, the watchdog) both end
/// well: the one that takes the state lock second finds the account gone and says so.
#[test]
fn overlapping_removals_of_one_account_both_succeed() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let carol = person("carol", "ops");
        for _ in 0..3 {
            let lease = env.mint(&carol, "web-ops").await;
            let busy = env
                .run_as(&lease, "sleep 60 >/dev/null 2>&1 & echo started")
                .await;
            assert_eq!(busy.stdout_text().trim(), "started");
            let (a, b) = tokio::join!(env.prov.drop_lease(&lease), env.prov.drop_lease(&lease));
            a.unwrap();
            b.unwrap();
            assert!(
                passwd(&lease.user).is_none(),
                "{} is still there",
                lease.user
            );
            assert!(!has_processes(&lease.uid.to_string()));
            assert_eq!(owner_mode(&lease.home), (0, 0, 0o700));
        }
        assert!(env.sshd.own_accounts().is_empty());
    });
}

#[test]
fn a_wrong_pinned_host_key_is_refused_and_nothing_is_created() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let impostor =
            PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519).unwrap();
        let pinned_line = impostor.public_key().to_openssh().unwrap();
        let target = SshTarget {
            host_key: HostKeySource::Inline(pinned_line),
            ..env.target.clone()
        };
        let prov = LinuxProvisioner::new(target, env.sshd.instance_id.clone()).unwrap();
        let alice = person("alice", "ops");
        let grant = env.grant(&alice, "web-ops");
        let err = prov
            .mint(LeaseId::random(), &grant, &alice)
            .await
            .expect_err("mint must fail");
        let message = err.to_string();
        assert!(
            matches!(
                &err,
                LinuxError::Client(SshClientError::HostKeyMismatch { target, .. }) if target == "web-1"
            ),
            "{err:?}"
        );
        let real = russh::keys::PublicKey::from_openssh(&env.sshd.host_key_line).unwrap();
        for fp in [
            impostor.public_key().fingerprint(HashAlg::Sha256).to_string(),
            real.fingerprint(HashAlg::Sha256).to_string(),
        ] {
            assert!(message.contains(&fp), "{message} lacks {fp}");
        }
        assert!(!err.is_transient());
        assert!(env.sshd.own_accounts().is_empty());
        assert!(!env.sshd.state_dir.exists(), "the target was touched");
    });
}

/// Removes the fake user however the test ends.
struct FakeUser(&'static str);

impl Drop for FakeUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(self.0).status();
    }
}

#[test]
fn accounts_outside_the_lease_or_the_group_are_never_touched() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        const FAKE: &str = "jit-fake-xyz";
        let _ = Command::new("userdel").arg(FAKE).status();
        let guard = FakeUser(FAKE);
        // The worst case: a marker naming this very instance, but not in group jitgate.
        let id = LeaseId::random();
        let expires = SystemTime::now() + Duration::from_secs(3600);
        let marker = Marker::render_gecos(&env.sshd.instance_id, &id, expires, false, "web-ops");
        let (ok, _) = local(
            "useradd",
            &[
                "-M",
                "-d",
                "/nonexistent",
                "-s",
                "/bin/sh",
                "-c",
                &marker,
                FAKE,
            ],
        );
        assert!(ok, "useradd {FAKE}");
        let before_passwd = passwd(FAKE).unwrap();
        let before_shadow = local("getent", &["shadow", FAKE]).1;
        let uid: u32 = before_passwd[2].parse().unwrap();
        let fake_lease = |id: LeaseId, uid: u32| LinuxLease {
            id,
            user: FAKE.to_string(),
            uid,
            key: Secret::new(
                PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519).unwrap(),
            ),
            home: "/nonexistent".to_string(),
            home_mode: HomeMode::Ephemeral,
            expires_at: expires,
        };

        // A reaper pass that considers nothing live, and a drop of "its" lease.
        let report = reap(&*env.prov, &env.sshd.instance_id, |_| false)
            .await
            .unwrap();
        assert!(!report.dropped.iter().any(|a| a == FAKE), "{report:?}");
        let err = env
            .prov
            .drop_lease(&fake_lease(id.clone(), uid))
            .await
            .err();
        assert!(matches!(err, Some(LinuxError::NotOurs { .. })), "{err:?}");

        // In the group now, but the drop names another lease, or another UID.
        let (ok, _) = local("usermod", &["-aG", "jitgate", FAKE]);
        assert!(ok);
        let err = env
            .prov
            .drop_lease(&fake_lease(LeaseId::random(), uid))
            .await
            .err();
        assert!(matches!(err, Some(LinuxError::NotOurs { .. })), "{err:?}");
        let err = env.prov.drop_lease(&fake_lease(id, uid + 1)).await.err();
        assert!(matches!(err, Some(LinuxError::NotOurs { .. })), "{err:?}");

        assert_eq!(passwd(FAKE).unwrap(), before_passwd);
        assert_eq!(local("getent", &["shadow", FAKE]).1, before_shadow);
        drop(guard);
        assert!(passwd(FAKE).is_none());
    });
}

#[test]
fn sudo_grant_installs_a_valid_sudoers_file_removed_at_drop() {
    let Some(env) = env() else { return };
    if common::which("visudo").is_none() && !Path::new("/usr/sbin/visudo").exists() {
        common::unavailable("sudo (visudo)");
        return;
    }
    rt().block_on(async {
        let root_ops = person("rita", "root-ops");
        let lease = env.mint(&root_ops, "web-root").await;
        let file = format!("/etc/sudoers.d/jitgate-{}", lease.user);
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            format!("{} ALL=(ALL) NOPASSWD:ALL\n", lease.user)
        );
        assert_eq!(owner_mode(&file), (0, 0, 0o440));
        assert!(local("visudo", &["-cf", &file]).0);
        let out = env.run_as(&lease, "sudo -n id -u").await;
        assert_eq!(out.stdout_text().trim(), "0", "{out:?}");
        env.prov.drop_lease(&lease).await.unwrap();
        assert!(!Path::new(&file).exists(), "{file} survives");
        assert!(passwd(&lease.user).is_none());
    });
}

#[test]
fn a_hostile_identity_gets_a_safe_name_and_nothing_else_happens() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let canary = format!("/tmp/jitgate-canary-{}", common::random_word(8));
        let hostile = format!("a'; touch {canary} #$(touch {canary})`touch {canary}`\"");
        let identity = person(&hostile, "ops");
        let lease = env.mint(&identity, "web-ops").await;
        assert!(lease.user.starts_with("jit-a_touch_tmp_"), "{}", lease.user);
        assert!(lease.user.len() <= 32);
        assert!(lease
            .user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
        let home_dir = Path::new(&lease.home);
        assert_eq!(
            home_dir.parent().unwrap(),
            env.sshd.state_dir.join("home"),
            "{}",
            lease.home
        );
        let out = env.run_as(&lease, "id -un").await;
        assert_eq!(out.stdout_text().trim(), lease.user);
        env.prov.drop_lease(&lease).await.unwrap();
        assert!(passwd(&lease.user).is_none());
        assert!(!Path::new(&canary).exists(), "a value reached a shell");
        assert_eq!(owner_mode(&lease.home), (0, 0, 0o700));
    });
}

#[test]
fn the_reaper_removes_dead_leases_and_keeps_live_ones() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let mut carl = person("carl", "ops");
        carl.groups.push("eph".to_string());
        let live = env.mint(&carl, "web-ops").await;
        let dead = env.mint(&carl, "web-eph").await;
        let accounts = env.prov.managed().await.unwrap();
        let ours: Vec<_> = accounts
            .iter()
            .filter(|a| a.marker.instance == env.sshd.instance_id)
            .collect();
        assert_eq!(ours.len(), 2, "{accounts:?}");

        let live_id = live.id.as_str().to_string();
        let report = reap(&*env.prov, &env.sshd.instance_id, |a| {
            a.marker.lease == live_id
        })
        .await
        .unwrap();
        assert!(report.dropped.contains(&dead.user), "{report:?}");
        assert!(!report.dropped.contains(&live.user), "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(passwd(&dead.user).is_none());
        assert!(!Path::new(&dead.home).exists());
        assert!(passwd(&live.user).is_some());
        env.prov.drop_lease(&live).await.unwrap();
        assert!(env.sshd.own_accounts().is_empty());
    });
}

#[test]
fn a_missing_policy_group_fails_cleanly() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let dora = person("dora", "bad");
        let grant = env.grant(&dora, "web-badgroup");
        let err = env
            .prov
            .mint(LeaseId::random(), &grant, &dora)
            .await
            .expect_err("mint must fail");
        let message = err.to_string();
        assert!(
            message.contains("group no-such-group-jitgate (given by the policy) does not exist"),
            "{message}"
        );
        assert!(env.sshd.own_accounts().is_empty());
    });
}

/// A throwaway admin account (not root) with passwordless sudo, removed however the test ends.
struct SudoAdmin {
    name: String,
}

impl Drop for SudoAdmin {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/sudoers.d/{}", self.name));
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[test]
fn a_non_root_admin_provisions_through_sudo() {
    let Some(env) = env() else { return };
    if !Path::new("/usr/sbin/visudo").exists() {
        common::unavailable("sudo (visudo)");
        return;
    }
    let name = format!("jgadm{}", common::random_word(8));
    let (ok, _) = local(
        "useradd",
        &[
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/bin/sh",
            "-p",
            "*",
            &name,
        ],
    );
    assert!(ok, "useradd {name}");
    let admin = SudoAdmin { name: name.clone() };
    fs::write(
        format!("/etc/sudoers.d/{name}"),
        format!("{name} ALL=(root) NOPASSWD: /bin/sh -s\n"),
    )
    .unwrap();
    let admin_pub = fs::read_to_string(env.sshd.admin_key.with_extension("pub")).unwrap();
    let keys = env.sshd.dir.join("authorized_keys").join(&name);
    fs::write(&keys, admin_pub).unwrap();

    let target = SshTarget {
        admin: jitgate::config::SshAdmin {
            user: name.clone(),
            key_file: env.sshd.admin_key.clone(),
        },
        ..env.target.clone()
    };
    let prov = LinuxProvisioner::new(target, env.sshd.instance_id.clone()).unwrap();
    rt().block_on(async {
        let alice = person("alice", "ops");
        let grant = env.grant(&alice, "web-ops");
        let lease = prov.mint(LeaseId::random(), &grant, &alice).await.unwrap();
        assert!(passwd(&lease.user).is_some());
        let out = env.run_as(&lease, "id -un").await;
        assert_eq!(out.stdout_text().trim(), lease.user);
        prov.drop_lease(&lease).await.unwrap();
        assert!(passwd(&lease.user).is_none());

        // Without the sudo rule, the refusal says why.
        fs::remove_file(format!("/etc/sudoers.d/{name}")).unwrap();
        let err = prov
            .mint(LeaseId::random(), &grant, &alice)
            .await
            .expect_err("mint must fail without sudo");
        assert!(err.to_string().contains("sudo"), "{err}");
        assert!(env.sshd.own_accounts().is_empty());
    });
    drop(admin);
}

#[test]
fn uids_are_not_reused_while_files_they_own_remain() {
    let Some(env) = env() else { return };
    // Two UIDs only, so the counter wraps within the test.
    let (lo, _) = env.sshd.uid_range;
    let target = SshTarget {
        uid_range: (lo, lo + 1),
        ..env.target.clone()
    };
    let prov = LinuxProvisioner::new(target, env.sshd.instance_id.clone()).unwrap();
    let leftover = format!("/tmp/jitgate-uid-test-{}", common::random_word(8));
    rt().block_on(async {
        let alice = person("alice", "ops");
        let grant = || env.grant(&alice, "web-ops");
        let mint = || async { prov.mint(LeaseId::random(), &grant(), &alice).await };

        let a = mint().await.unwrap();
        assert_eq!(a.uid, lo);
        // A file outside the home outlives the account, owned by its UID.
        let out = env.run_as(&a, &format!("touch {leftover}")).await;
        assert_eq!(out.status, 0, "{out:?}");
        prov.drop_lease(&a).await.unwrap();
        let b = mint().await.unwrap();
        assert_eq!(b.uid, lo + 1);
        prov.drop_lease(&b).await.unwrap();

        // Wrapped: `lo` still owns the leftover, so it is skipped.
        let c = mint().await.unwrap();
        assert_eq!(c.uid, lo + 1, "a UID whose files remain was reused");
        let err = mint().await.expect_err("no UID is free");
        assert!(err.to_string().contains("no free UID left"), "{err}");
        assert_eq!(env.sshd.own_accounts(), vec![c.user.clone()]);
        prov.drop_lease(&c).await.unwrap();

        // Once the file is gone, the UID is free again.
        fs::remove_file(&leftover).unwrap();
        let d = mint().await.unwrap();
        assert_eq!(d.uid, lo);
        prov.drop_lease(&d).await.unwrap();
    });
    let _ = fs::remove_file(&leftover);
}

/// A root process (what a sudo grant can leave behind) with its working directory inside a
/// persistent home keeps swapping a directory there for a symlink to a directory outside.
/// Neither lending nor locking the home may change anything outside it: the home is not
/// walked while a process is inside (issue 7 item 1).
#[test]
fn a_process_swapping_paths_inside_the_home_changes_nothing_outside() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let dana = person("dana", "ops");
        let first = env.mint(&dana, "web-ops").await;
        let home = first.home.clone();
        let out = env
            .run_as(&first, "mkdir -p ~/d && echo mine > ~/d/f && chmod 4755 ~/d/f")
            .await;
        assert_eq!(out.status, 0, "{out:?}");

        // Outside the home: owned by nobody (65534), one file set-uid.
        let outside = tempfile::Builder::new()
            .prefix("jitgate-race-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let victim = outside.path().join("f");
        fs::write(&victim, "not yours\n").unwrap();
        std::os::unix::fs::chown(&victim, Some(65534), Some(65534)).unwrap();
        fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        let before = owner_mode(victim.to_str().unwrap());

        // d <-> symlink, as fast as rename(2) goes, from inside the home.
        let racer = "chdir $ARGV[0] or die; symlink $ARGV[1], 'lnk'; \
             while (1) { rename 'd', 'd.real'; rename 'lnk', 'd'; rename 'd', 'lnk'; rename 'd.real', 'd'; }";
        struct Racer(std::process::Child);
        impl Drop for Racer {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let racer = Racer(
            Command::new("perl")
                .args(["-e", racer, &home, outside.path().to_str().unwrap()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut leases = vec![first];
        for _ in 0..6 {
            let lease = leases.pop().unwrap();
            env.prov.drop_lease(&lease).await.unwrap();
            let next = env.mint(&dana, "web-ops").await;
            assert_eq!(
                next.home_mode,
                HomeMode::Ephemeral,
                "a home with a process inside must not be lent"
            );
            leases.push(next);
            assert_eq!(owner_mode(victim.to_str().unwrap()), before, "changed outside the home");
        }
        drop(racer);
        for lease in leases {
            env.prov.drop_lease(&lease).await.unwrap();
        }
        assert_eq!(owner_mode(victim.to_str().unwrap()), before);
        // With the racer gone (put its swap back) the home is lent again, and the account's
        // file is its own.
        for name in ["lnk", "d"] {
            let path = format!("{home}/{name}");
            if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                fs::remove_file(&path).unwrap();
            }
        }
        if Path::new(&format!("{home}/d.real")).exists() {
            fs::rename(format!("{home}/d.real"), format!("{home}/d")).unwrap();
        }
        let again = env.mint(&dana, "web-ops").await;
        assert_eq!(again.home_mode, HomeMode::Persistent);
        let (uid, _, mode) = owner_mode(&format!("{home}/d/f"));
        assert_eq!(uid, again.uid);
        assert_eq!(mode & 0o6000, 0, "the set-uid bit survived a lock and a lend");
        env.prov.drop_lease(&again).await.unwrap();
        assert!(env.sshd.own_accounts().is_empty());
    });
}

/// `chgrp <granted group> f; chmod g+s f` in /var/tmp, /dev/shm and the home, and a set-uid
/// copy: none keeps a set-id bit once the account is gone (issue 7 item 2).
#[test]
fn set_id_files_the_account_made_lose_their_bits_at_removal() {
    let Some(env) = env() else { return };
    rt().block_on(async {
        let erin = person("erin", "ops");
        let lease = env.mint(&erin, "web-ops").await;
        let tag = common::random_word(6);
        let script = format!(
            "set -e; for f in /var/tmp/sg-{tag} /dev/shm/sg-{tag} ~/sg-{tag}; do \
               cp /bin/true $f; chgrp adm $f; chmod 2755 $f; done; \
             cp /bin/true /var/tmp/su-{tag}; chmod 4755 /var/tmp/su-{tag}; \
             stat -c '%a %G' /var/tmp/sg-{tag}"
        );
        let out = env.run_as(&lease, &script).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(out.stdout_text().trim(), "2755 adm");
        env.prov.drop_lease(&lease).await.unwrap();
        for f in [
            format!("/var/tmp/sg-{tag}"),
            format!("/dev/shm/sg-{tag}"),
            format!("{}/sg-{tag}", lease.home),
            format!("/var/tmp/su-{tag}"),
        ] {
            let (_, _, mode) = owner_mode(&f);
            assert_eq!(mode & 0o6000, 0, "{f} keeps a set-id bit: {mode:o}");
            let _ = fs::remove_file(&f);
        }
    });
}

/// Processes that left the account's UID through sudo (root now, in a session of their
/// own, with their environment wiped or not) are killed at removal, and so are its at jobs
/// and SysV IPC objects (issue 7 item 3).
#[test]
fn processes_escaped_through_sudo_and_ipc_objects_go_with_the_account() {
    let Some(env) = env() else { return };
    if common::which("visudo").is_none() && !Path::new("/usr/sbin/visudo").exists() {
        common::unavailable("sudo (visudo)");
        return;
    }
    rt().block_on(async {
        let rita = person("rita", "root-ops");
        let lease = env.mint(&rita, "web-root").await;
        let secs = 1000 + (std::process::id() % 1000);
        let script = format!(
            "sudo -n setsid sleep {secs} </dev/null >/dev/null 2>&1 & \
             ipcmk -M 4096 >/dev/null; ipcmk -Q >/dev/null; sleep 0.5; echo started"
        );
        let out = env.run_as(&lease, &script).await;
        assert_eq!(out.stdout_text().trim(), "started", "{out:?}");
        let escaped = || local("pgrep", &["-f", "-u", "0", &format!("^sleep {secs}$")]).0;
        assert!(escaped(), "the sudo'ed sleep should run as root");
        let ipc_of = |uid: u32| {
            let (_, m) = local("ipcs", &["-m", "-c"]);
            let (_, q) = local("ipcs", &["-q", "-c"]);
            format!("{m}\n{q}")
                .lines()
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 6 && (f[2] == lease.user || f[2] == uid.to_string())
                })
                .count()
        };
        assert_eq!(
            ipc_of(lease.uid),
            2,
            "the account's IPC objects should exist"
        );
        env.prov.drop_lease(&lease).await.unwrap();
        assert!(
            !escaped(),
            "a process escaped through sudo survives removal"
        );
        assert_eq!(ipc_of(lease.uid), 0, "IPC objects of the account survive");
        assert!(passwd(&lease.user).is_none());
    });
}
