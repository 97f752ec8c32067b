//! The demo's sandbox: its directory (emptied only if it carries the demo's marker, locked
//! while a demo runs in it), certificates, the throwaway PostgreSQL and sshd it starts, and the
//! gateway config and policies it writes for them. Dropping it stops the targets.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, DemoError, DemoOptions, INSTANCE_ID, MARKER, PG_TARGET, SSH_TARGET};
use crate::certs::{self, InitOptions, IssueOptions};
use crate::sandbox::postgres::{ThrowawayPostgres, ADMIN_USER};
use crate::sandbox::sshd::ThrowawaySshd;
use crate::sandbox::{free_port, is_root, random_word};

/// Held while a demo with an SSH target runs: two would share one machine's accounts under
/// one instance id, and each one's reaper would remove the other's.
pub(super) const MACHINE_LOCK: &str = "/run/jitgate-demo.lock";
/// On the target machine (this one): homes, the UID counter; removed when the demo stops.
const STATE_DIR: &str = "/var/lib/jitgate-demo";
/// Clear of the default range's start, where a real gateway on this machine would begin.
const UID_RANGE: (u32, u32) = (300_000, 300_999);
/// PostgreSQL puts its socket at `<dir>/.s.PGSQL.<port>`, and a socket path has 107 bytes.
const SOCKET_DIR_MAX: usize = 90;
const CERT_TTL: time::Duration = time::Duration::hours(24);

/// What the demo started and wrote; `stop` (or Drop) stops the targets.
pub struct Sandbox {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub certs: PathBuf,
    /// Where PostgreSQL's files and log are (`<dir>/postgres`, or a link to a shorter path).
    pub pg_dir: PathBuf,
    pg: Option<ThrowawayPostgres>,
    sshd: Option<ThrowawaySshd>,
    state_dir: Option<PathBuf>,
    _locks: Vec<fs::File>,
}

impl Sandbox {
    /// Prepares the directory, issues certificates, starts the targets, writes config and
    /// policies. On an error, whatever was started is stopped again (Drop).
    pub(super) fn create(
        dir: &Path,
        opts: &DemoOptions,
        with_ssh: bool,
    ) -> Result<Sandbox, DemoError> {
        let mut locks = Vec::new();
        if with_ssh {
            locks.push(lock(Path::new(MACHINE_LOCK), DemoError::MachineBusy)?);
        }
        locks.push(prepare_dir(dir)?);
        let mut sandbox = Sandbox {
            dir: dir.to_path_buf(),
            config_path: dir.join("jitgate.yaml"),
            certs: dir.join("certs"),
            pg_dir: dir.join("postgres"),
            pg: None,
            sshd: None,
            state_dir: None,
            _locks: locks,
        };

        certs::init(&InitOptions {
            dir: sandbox.certs.clone(),
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            force: false,
        })?;
        let now = time::OffsetDateTime::now_utc();
        for (user, group) in [("alice", "dba"), ("bob", "analyst")] {
            certs::issue(&IssueOptions {
                ca_dir: sandbox.certs.clone(),
                out_dir: sandbox.certs.clone(),
                user: user.into(),
                groups: vec![group.into()],
                trust_domain: certs::DEFAULT_TRUST_DOMAIN.into(),
                not_before: now - time::Duration::minutes(5),
                not_after: now + CERT_TTL,
            })?;
        }
        tracing::info!(dir = %sandbox.certs.display(), "certificates issued: a CA, the gateway's, alice (group dba), bob (group analyst)");

        let pg_dir = postgres_dir(dir)?;
        if pg_dir != sandbox.pg_dir {
            std::os::unix::fs::symlink(&pg_dir, &sandbox.pg_dir)
                .map_err(io_err(format!("linking {}", sandbox.pg_dir.display())))?;
            tracing::info!(dir = %pg_dir.display(), "PostgreSQL's files are outside the sandbox (the postgres user cannot reach it, or its path is too long or too odd for a socket); linked as postgres/");
        }
        let pg = ThrowawayPostgres::start(&pg_dir, free_port()?)?;
        tracing::info!(port = pg.port, log = %sandbox.pg_dir.join("postgres.log").display(), "PostgreSQL started (database orders, roles orders_read and orders_write)");
        let admin_password = dir.join("admin-password");
        write_private(&admin_password, &format!("{}\n", pg.admin_password))?;
        let mut targets = format!(
            "  {PG_TARGET}:\n    postgres:\n      host: 127.0.0.1\n      port: {port}\n      \
             databases: [orders]\n      tls: disable\n      admin:\n        user: {ADMIN_USER}\n        \
             password_file: admin-password\n",
            port = pg.port
        );
        sandbox.pg = Some(pg);

        if with_ssh {
            let sshd_dir = PathBuf::from(format!("/run/jitgate-demo-{}", random_word(10)));
            let sshd = ThrowawaySshd::start(&sshd_dir, free_port()?)?;
            tracing::info!(port = sshd.port, dir = %sshd_dir.display(), "sshd started as SSH target {SSH_TARGET}");
            targets.push_str(&sshd.target_yaml(SSH_TARGET, Path::new(STATE_DIR), UID_RANGE));
            sandbox.sshd = Some(sshd);
            sandbox.state_dir = Some(PathBuf::from(STATE_DIR));
        }

        let ssh_listen = if with_ssh {
            format!("  ssh: 127.0.0.1:{}\n", opts.ssh_port)
        } else {
            String::new()
        };
        write_file(
            &sandbox.config_path,
            &format!(
                "# Written by `jitgate demo`: the gateway for the throwaway targets it started.\n\
                 # Relative paths are resolved against this file's directory.\n\
                 instance_id: {INSTANCE_ID}\n\
                 tls:\n  ca: certs/ca.crt\n  cert: certs/server.crt\n  key: certs/server.key\n  crl: certs/crl.pem\n\
                 listen:\n  postgres: 127.0.0.1:{pg_port}\n{ssh_listen}\
                 policy_dir: policies\n\
                 targets:\n{targets}",
                pg_port = opts.pg_port,
            ),
        )?;
        let policies = dir.join("policies");
        fs::create_dir(&policies).map_err(io_err(format!("creating {}", policies.display())))?;
        write_file(&policies.join("demo.yaml"), &policy_yaml(with_ssh))?;
        Ok(sandbox)
    }

    pub fn with_ssh(&self) -> bool {
        self.sshd.is_some()
    }

    /// Stops sshd (keeping its log as `<dir>/sshd.log`) and PostgreSQL, and removes the SSH
    /// target's state directory. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            sshd.stop();
            let _ = fs::copy(sshd.log_path(), self.dir.join("sshd.log"));
            drop(sshd);
            tracing::info!("sshd stopped");
        }
        if let Some(mut pg) = self.pg.take() {
            pg.stop();
            tracing::info!("PostgreSQL stopped");
        }
        if let Some(state) = self.state_dir.take() {
            if let Err(e) = fs::remove_dir_all(&state) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %state.display(), error = %e, "could not remove the SSH target's state directory");
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The grants: alice (dba) reads and writes orders and logs in to web-1, bob (analyst) reads.
fn policy_yaml(with_ssh: bool) -> String {
    let mut yaml = format!(
        "# Written by `jitgate demo`. `jitgate policy explain --policies policies --user bob \
         --group analyst --target {PG_TARGET}` shows which grant applies, and why.\n\
         grants:\n\
         \x20 - name: orders-dba\n\
         \x20   description: DBAs read and write orders\n\
         \x20   subjects: {{ groups: [dba] }}\n\
         \x20   targets: [{PG_TARGET}]\n\
         \x20   postgres: {{ roles: [orders_read, orders_write] }}\n\
         \x20   max_session: 1h\n\
         \x20 - name: orders-analyst\n\
         \x20   description: Analysts read orders\n\
         \x20   subjects: {{ groups: [analyst] }}\n\
         \x20   targets: [{PG_TARGET}]\n\
         \x20   postgres: {{ roles: [orders_read] }}\n\
         \x20   max_session: 30m\n"
    );
    if with_ssh {
        yaml.push_str(&format!(
            "\x20 - name: web-dba\n\
             \x20   description: DBAs log in to {SSH_TARGET}, with a home directory that is gone at the end\n\
             \x20   subjects: {{ groups: [dba] }}\n\
             \x20   targets: [{SSH_TARGET}]\n\
             \x20   ssh: {{ home: ephemeral }}\n\
             \x20   max_session: 1h\n"
        ));
    }
    yaml
}

/// Takes an exclusive lock on `path` (created if missing) for as long as the file is open.
fn lock(path: &Path, busy: DemoError) -> Result<fs::File, DemoError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(busy),
        Err(fs::TryLockError::Error(e)) => Err(io_err(format!("locking {}", path.display()))(e)),
    }
}

/// Makes `dir` an empty sandbox holding only its (locked) marker. A directory that has other
/// things in it but no marker is refused: it is not ours to delete.
fn prepare_dir(dir: &Path) -> Result<fs::File, DemoError> {
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(DemoError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {
            let mut entries =
                fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
            if entries.next().is_some() && !dir.join(MARKER).is_file() {
                return Err(DemoError::NotASandbox(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    }
    let mut marker = lock(&dir.join(MARKER), DemoError::SandboxBusy(dir.to_path_buf()))?;
    for entry in fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
        if entry.file_name() == MARKER {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            Ok(t) if t.is_symlink() => {
                // postgres/ → a previous run's cluster outside the sandbox goes with its link;
                // a link to anything else is not followed.
                if let Some(outside) = previous_postgres_dir(&path) {
                    fs::remove_dir_all(&outside)
                        .map_err(io_err(format!("removing {}", outside.display())))?;
                }
                fs::remove_file(&path)
            }
            _ => fs::remove_file(&path),
        };
        removed.map_err(io_err(format!("removing {}", path.display())))?;
    }
    marker
        .set_len(0)
        .and_then(|()| {
            marker.write_all(
                b"This directory is a jitgate demo sandbox: `jitgate demo` empties and refills it.\n",
            )
        })
        .map_err(io_err("writing the sandbox marker"))?;
    Ok(marker)
}

const OUTSIDE_PG_PREFIX: &str = "jitgate-demo-postgres-";

/// Where a sandbox's `postgres` link points, when that is a cluster directory the demo made
/// under the temp dir (see `postgres_dir`).
fn previous_postgres_dir(link: &Path) -> Option<PathBuf> {
    if link.file_name()? != "postgres" {
        return None;
    }
    let target = fs::read_link(link).ok()?;
    let ours = target.parent() == Some(std::env::temp_dir().as_path())
        && target
            .file_name()?
            .to_str()?
            .strip_prefix(OUTSIDE_PG_PREFIX)
            .is_some_and(|word| {
                !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())
            });
    (ours && target.is_dir()).then_some(target)
}

/// `<dir>/postgres`, unless the postgres user (when root) cannot reach it, or its socket path
/// would be too long, or it has characters that postgresql.conf would need quoted: then a
/// fresh directory under /tmp.
fn postgres_dir(dir: &Path) -> Result<PathBuf, DemoError> {
    let inside = dir.join("postgres");
    let plain = inside.to_str().is_some_and(|p| {
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    });
    let reachable = !is_root()
        || Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-x"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
    if reachable && plain && inside.as_os_str().len() <= SOCKET_DIR_MAX {
        return Ok(inside);
    }
    Ok(std::env::temp_dir().join(format!("{OUTSIDE_PG_PREFIX}{}", random_word(10))))
}

pub(super) fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
}

/// Writes a file only its owner can read (0600 from the start, not chmod'ed afterwards).
fn write_private(path: &Path, text: &str) -> Result<(), DemoError> {
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// `prepare_dir` once a lock just released is free: another test's fork may hold a copy
    /// of the descriptor (and so the lock) until its exec closes it.
    fn prepare_when_free(dir: &Path) -> fs::File {
        let start = std::time::Instant::now();
        loop {
            match prepare_dir(dir) {
                Err(DemoError::SandboxBusy(_))
                    if start.elapsed() < std::time::Duration::from_secs(5) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn a_foreign_directory_is_never_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("precious.txt"), "keep me").unwrap();
        let err = prepare_dir(tmp.path()).unwrap_err();
        assert!(matches!(err, DemoError::NotASandbox(_)), "{err}");
        assert!(err.to_string().contains("refusing to delete it"), "{err}");
        assert!(tmp.path().join("precious.txt").exists());
    }

    #[test]
    fn a_sandbox_is_emptied_but_keeps_its_marker_and_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sandbox");
        let first = prepare_dir(&dir).unwrap();
        fs::create_dir_all(dir.join("certs/x")).unwrap();
        fs::write(dir.join("jitgate.yaml"), "old").unwrap();
        // A second demo in the same directory while the first runs.
        let err = prepare_dir(&dir).unwrap_err();
        assert!(matches!(err, DemoError::SandboxBusy(_)), "{err}");
        drop(first);
        let _second = prepare_when_free(&dir);
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(MARKER)]);
    }

    #[test]
    fn only_the_demos_own_cluster_outside_goes_with_its_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sandbox");
        drop(prepare_when_free(&dir));
        let ours = std::env::temp_dir().join(format!("{OUTSIDE_PG_PREFIX}{}", random_word(10)));
        fs::create_dir(&ours).unwrap();
        std::os::unix::fs::symlink(&ours, dir.join("postgres")).unwrap();
        let other = tmp.path().join("elsewhere");
        fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&other, dir.join("link")).unwrap();
        assert_eq!(previous_postgres_dir(&dir.join("link")), None);
        assert_eq!(
            previous_postgres_dir(&dir.join("postgres")),
            Some(ours.clone())
        );
        drop(prepare_when_free(&dir));
        assert!(!ours.exists());
        assert!(other.exists());
        assert!(!dir.join("link").exists());
    }

    #[test]
    fn a_file_in_the_way_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            prepare_dir(&file).unwrap_err(),
            DemoError::NotADirectory(_)
        ));
    }

    #[test]
    fn the_policies_are_valid() {
        for with_ssh in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join("demo.yaml"), policy_yaml(with_ssh)).unwrap();
            let set = crate::policy::PolicySet::load_dir(tmp.path()).unwrap();
            assert_eq!(set.len(), if with_ssh { 3 } else { 2 });
        }
    }
}
