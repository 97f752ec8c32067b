//! The `jitgate` command line: `serve`, `demo`, `tunnel`, `ssh-config`, `certs`, `policy`,
//! `doctor`, `reap`, `audit`, and the control socket's `sessions`, `lock`, `unlock`, `locks`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Access gateway for PostgreSQL with just-in-time accounts: users authenticate with a client
/// certificate, jitgate creates a least-privilege role for the session and drops it at the end.
#[derive(Parser)]
#[command(name = "jitgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (Postgres listener, reaper); SIGHUP reloads policies, SIGTERM/SIGINT stop
    /// it after ending sessions and dropping their accounts.
    Serve {
        /// Gateway config file.
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
    },
    /// Try jitgate on this machine: throwaway targets, certificates, the gateway in the foreground.
    ///
    /// Starts a throwaway PostgreSQL and (as root) a loopback sshd as targets, issues
    /// certificates for alice (group dba) and bob (group analyst), writes a config and policies
    /// into DIR, runs the gateway in the foreground and prints commands to paste. Ctrl-C (or
    /// SIGTERM) ends every session, drops every account it created and stops the targets; DIR
    /// stays, for its logs. Without root there is no SSH target (it creates Linux users).
    Demo {
        /// Sandbox directory for certificates, config, policies and logs; emptied first if it
        /// is a previous demo's (never another directory).
        #[arg(long, default_value = "./jitgate-demo")]
        dir: PathBuf,
        /// The gateway's PostgreSQL listener port on 127.0.0.1.
        #[arg(long, default_value_t = 6432)]
        pg_port: u16,
        /// The gateway's SSH listener port on 127.0.0.1.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
    },
    /// Connect stdin/stdout to an SSH target through the jitgate bastion; for ssh's ProxyCommand:
    /// `ssh -o ProxyCommand='jitgate tunnel --gateway GW:2222 --cert alice.crt --key alice.key --ca ca.crt %h' alice@web-1`
    Tunnel {
        /// The target's name as in the gateway config (ssh's %h).
        target: String,
        #[command(flatten)]
        via: Bastion,
        /// Why you connect (ticket id), for grants that require a reason.
        #[arg(long, env = "JITGATE_REASON")]
        reason: Option<String>,
    },
    /// Print a ~/.ssh/config block so that plain `ssh <host>` goes through the bastion.
    SshConfig {
        /// Host names or patterns the block applies to (repeatable), e.g. --host web-1 --host 'db-*'.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[command(flatten)]
        via: Bastion,
        /// SSH user name to use (a grant name or your own name); default: ssh's own default.
        #[arg(long)]
        user: Option<String>,
        /// known_hosts file for the bastion's host key.
        #[arg(long, default_value = "~/.ssh/jitgate_known_hosts")]
        known_hosts: String,
    },
    /// Create the certificate authority, issue and revoke client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Validate policies and explain decisions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Health check: exit 0 if something accepts TCP connections at ADDR (for HEALTHCHECK).
    Probe {
        /// host:port of a jitgate listener.
        addr: String,
    },
    /// Check that every target (or the one named) is ready for jitgate: one line per check,
    /// ✓ or ✗ with the command or SQL that fixes it; exits 1 if any check fails.
    ///
    /// Connects with each target's admin credential, checks what jitgate needs there
    /// (reachability, TLS, version, the admin's privileges, the roles and groups the grants
    /// name, ...) and proves it with a dry run: a throwaway account is created, logged in as
    /// and removed. Without --target the policies are checked too.
    Doctor {
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
        /// Check only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Review the audit log: sessions, a session's timeline, its terminal replay, exports,
    /// and verification of the hash chain.
    Audit {
        #[command(flatten)]
        log: AuditLog,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The live sessions of the running gateway (through its control socket), or end some:
    /// `jitgate sessions end ID | --user U | --target T [--reason R]`.
    Sessions {
        #[arg(long, short, default_value = "jitgate.yaml", global = true)]
        config: PathBuf,
        /// One JSON object per session instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<SessionsCommand>,
    },
    /// Lock a user, a grant or a target: the gateway refuses their new sessions (before any
    /// account is made) and ends their live ones now. Locks survive restarts (state_dir).
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["user", "grant", "target"])))]
    Lock {
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
        /// A person's user name (the certificate's).
        #[arg(long)]
        user: Option<String>,
        /// A grant (policy entry) name.
        #[arg(long)]
        grant: Option<String>,
        /// A target name.
        #[arg(long)]
        target: Option<String>,
        /// How long the lock holds (1h, 30m, 2d); without it, until `jitgate unlock`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Why, in one line: the users it refuses are shown it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a lock (its id as `jitgate lock` or `jitgate locks` printed it).
    Unlock {
        id: String,
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
    },
    /// The locks in force.
    Locks {
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
        /// One JSON object per lock instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove JIT accounts that have no live session (expired ones of any instance, and this
    /// instance's that have no backend on the target), then exit.
    Reap {
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// End live sessions now: psql gets the target's own FATAL after a notice saying an
    /// operator ended it, ssh a disconnect message; their accounts are dropped. Prints how
    /// many ended; exits 1 if none matched.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "user", "target"])))]
    End {
        /// A session id, as `jitgate sessions` shows it.
        id: Option<String>,
        /// Every live session of this user.
        #[arg(long)]
        user: Option<String>,
        /// Every live session to this target.
        #[arg(long)]
        target: Option<String>,
        /// Why, in one line: the user is shown it.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Where the audit log is: the config's `audit.dir`, or a directory given directly.
#[derive(clap::Args)]
struct AuditLog {
    #[arg(long, short, default_value = "jitgate.yaml", global = true)]
    config: PathBuf,
    /// The audit directory (instead of the config's `audit.dir`).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Sessions in the log, newest first.
    Sessions {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Sessions active at or after: RFC 3339, a date, or a duration ago (2h).
        #[arg(long)]
        since: Option<String>,
        /// Sessions started at or before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only sessions with a query or command containing TEXT.
        #[arg(long)]
        grep: Option<String>,
        /// One JSON object per session instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A session's timeline: who, where, every event in order.
    Show {
        /// Session id (a unique prefix will do).
        id: String,
    },
    /// Play a session's terminal recording with its real timing.
    Replay {
        id: String,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Cap pauses at this many seconds.
        #[arg(long)]
        idle_limit: Option<f64>,
    },
    /// Write a session's events (json) or recording (cast, asciicast v2) to stdout.
    Export {
        id: String,
        #[arg(long, value_enum, default_value = "json")]
        format: ExportFormat,
    },
    /// Check every hash chain (and the recordings the chain names); exits 1 on any break.
    Verify,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Json,
    Cast,
}

/// How to reach the bastion, and as whom.
#[derive(clap::Args)]
struct Bastion {
    /// The gateway's SSH listener, host:port.
    #[arg(long, env = "JITGATE_GATEWAY")]
    gateway: String,
    /// Your client certificate.
    #[arg(long, env = "JITGATE_CERT")]
    cert: PathBuf,
    /// Its private key.
    #[arg(long, env = "JITGATE_KEY")]
    key: PathBuf,
    /// The CA that signed the gateway's certificate.
    #[arg(long, env = "JITGATE_CA")]
    ca: PathBuf,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a user CA, the gateway's server certificate and an empty CRL in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Host names and IP addresses the gateway is reached at (repeatable).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        /// Replace an existing CA (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate: CN = user, one OU per group, SPIFFE URI SAN.
    Issue {
        /// Directory holding ca.crt and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        user: String,
        /// Group (certificate OU), repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Validity, e.g. 8h, 30m, 2d.
        #[arg(long, default_value = "8h")]
        ttl: String,
        /// Where to write <user>.crt and <user>.key (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = jitgate::certs::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// Revoke a client certificate: adds it to DIR/crl.pem, which the gateway reloads by itself.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The certificate file to revoke.
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate every policy file in DIR; prints file:line:col for each problem.
    Check {
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
    /// Show which grant applies to a user (and groups) or a workload for a target, and why.
    Explain {
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// A person's user name (the certificate's SPIFFE user or CN).
        #[arg(
            long,
            required_unless_present = "workload",
            conflicts_with = "workload"
        )]
        user: Option<String>,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A workload's name (spiffe://<trust domain>/workload/<name>).
        #[arg(long)]
        workload: Option<String>,
        #[arg(long)]
        target: String,
        /// What the target is; without it, the target's entry in --config says (and without
        /// that file, both kinds are explained).
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// The gateway config to look the target's kind up in (when --kind is not given).
        #[arg(long, short, default_value = "jitgate.yaml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Postgres,
    Ssh,
}

impl From<KindArg> for jitgate::policy::TargetKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Postgres => jitgate::policy::TargetKind::Postgres,
            KindArg::Ssh => jitgate::policy::TargetKind::Ssh,
        }
    }
}

/// The kind of `target` as the config file declares it.
fn configured_kind(
    config: &std::path::Path,
    target: &str,
) -> anyhow::Result<jitgate::policy::TargetKind> {
    use jitgate::config::Target;
    let config = jitgate::config::Config::load(config).with_context(|| {
        format!(
            "reading {} to learn what target {target} is (or pass --kind postgres|ssh)",
            config.display()
        )
    })?;
    match config.targets.get(target) {
        Some(Target::Postgres(_)) => Ok(jitgate::policy::TargetKind::Postgres),
        Some(Target::Ssh(_)) => Ok(jitgate::policy::TargetKind::Ssh),
        None => anyhow::bail!(
            "the config has no target {target}; pass --kind postgres|ssh to explain it anyway"
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jitgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::filter::{self, FilterExt as _};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let env = tracing_subscriber::EnvFilter::try_from_env("JITGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The log lines stay as they were: spans exist for OpenTelemetry's traces only.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(filter::filter_fn(|m| !m.is_span()).and(env));
    // jitgate's own spans, and its events at info and above (span events in the trace), go
    // to the exporter `jitgate::telemetry::start` puts in the slot; nothing else is enabled
    // for it, so the relay's debug and trace call sites stay off.
    let (traces, handle) = tracing_subscriber::reload::Layer::new(None);
    jitgate::telemetry::set_trace_layer_handle(handle);
    // A `Targets` filter, not a closure: it decides per call site once, so the call sites of
    // other crates (russh's per-packet debug lines) stay off for good instead of being asked
    // at every event (a closure filter made every call site in the process "sometimes").
    let traces =
        traces.with_filter(filter::Targets::new().with_target("jitgate", tracing::Level::INFO));
    tracing_subscriber::registry().with(traces).with(fmt).init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Probe { addr } => {
            use std::net::ToSocketAddrs;
            let target = addr
                .to_socket_addrs()
                .with_context(|| format!("resolving {addr}"))?
                .next();
            let target = target.with_context(|| format!("{addr} resolves to no address"))?;
            std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3))
                .with_context(|| format!("nothing accepts connections at {addr}"))?;
        }
        Command::Serve { config } => {
            let config = jitgate::config::Config::load(&config)?;
            runtime()?.block_on(jitgate::server::serve(config))?;
        }
        Command::Demo {
            dir,
            pg_port,
            ssh_port,
        } => {
            let opts = jitgate::demo::DemoOptions {
                dir,
                pg_port,
                ssh_port,
            };
            if let Err(e) = runtime()?.block_on(jitgate::demo::run(opts)) {
                eprintln!("jitgate: {e}");
                return Ok(ExitCode::from(match e {
                    jitgate::demo::DemoError::Interrupted => 130,
                    _ => 1,
                }));
            }
        }
        Command::Doctor { config, target } => {
            let config = jitgate::config::Config::load(&config)?;
            let policies = jitgate::policy::PolicySet::load_dir(&config.policy_dir)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string());
            let report = runtime()?.block_on(jitgate::doctor::run(
                &config,
                policies,
                target.as_deref(),
                jitgate::doctor::Mode::Full,
            ))?;
            print!("{report}");
            if report.failures() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Audit { log, command } => return audit(log, command),
        Command::Sessions {
            config,
            json,
            command,
        } => return sessions(&config, json, command),
        Command::Lock {
            config,
            user,
            grant,
            target,
            duration,
            reason,
        } => {
            use jitgate::control::Scope;
            let scope = match (user, grant, target) {
                (Some(u), _, _) => Scope::User(u),
                (None, Some(g), _) => Scope::Grant(g),
                (None, None, Some(t)) => Scope::Target(t),
                (None, None, None) => anyhow::bail!("give --user, --grant or --target"),
            };
            let for_secs = duration
                .map(|d| {
                    humantime::parse_duration(&d)
                        .map(|d| d.as_secs().max(1))
                        .with_context(|| format!("--for {d}: give a duration such as 30m, 1h, 2d"))
                })
                .transpose()?;
            let answer = control(
                &config,
                &jitgate::control::Request::Lock {
                    scope,
                    for_secs,
                    reason,
                },
            )?;
            let jitgate::control::Response::Locked { lock, ended } = answer else {
                anyhow::bail!("the gateway answered something else: {answer:?}");
            };
            let until = lock.expires_at.map_or("until unlocked".to_string(), |t| {
                format!("until {}", jitgate::control::locks::seconds(t))
            });
            println!("{} locks {} {until}", lock.id, lock.scope);
            println!("ended {} live session(s)", ended.len());
        }
        Command::Unlock { id, config } => {
            let answer = control(&config, &jitgate::control::Request::Unlock { id })?;
            let jitgate::control::Response::Unlocked { lock } = answer else {
                anyhow::bail!("the gateway answered something else: {answer:?}");
            };
            println!("removed {} ({})", lock.id, lock.scope);
        }
        Command::Locks { config, json } => {
            let answer = control(&config, &jitgate::control::Request::Locks)?;
            let jitgate::control::Response::Locks { locks } = answer else {
                anyhow::bail!("the gateway answered something else: {answer:?}");
            };
            if json {
                for lock in &locks {
                    println!("{}", serde_json::to_string(lock)?);
                }
            } else {
                print!("{}", jitgate::control::locks_table(&locks));
            }
        }
        Command::Reap { config } => {
            let config = jitgate::config::Config::load(&config)?;
            let failed = runtime()?.block_on(reap(config))?;
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Tunnel {
            target,
            via,
            reason,
        } => {
            let opts = jitgate::ssh::tunnel::TunnelOptions {
                gateway: via.gateway,
                cert: via.cert,
                key: via.key,
                ca: via.ca,
                target,
                reason,
            };
            let runtime = runtime()?;
            let result = runtime.block_on(jitgate::ssh::tunnel::run(opts));
            // tokio reads stdin on a blocking thread that only returns once ssh writes or
            // closes stdin, and dropping a runtime waits for its blocking threads: once the
            // gateway side has ended, leave that thread behind (the process exits) so ssh
            // sees the connection close at once instead of hanging.
            runtime.shutdown_background();
            if let Err(e) = result {
                // One line for ssh to show on stderr; exit non-zero so ssh reports failure.
                eprintln!("jitgate: {e}");
                return Ok(ExitCode::from(1));
            }
        }
        Command::SshConfig {
            hosts,
            via,
            user,
            known_hosts,
        } => {
            print!(
                "{}",
                ssh_config_block(&hosts, &via, user.as_deref(), &known_hosts)?
            );
        }
        Command::Certs(CertsCommand::Init { dir, hosts, force }) => {
            let written = jitgate::certs::init(&jitgate::certs::InitOptions { dir, hosts, force })?;
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        Command::Certs(CertsCommand::Issue {
            dir,
            user,
            groups,
            ttl,
            out,
            trust_domain,
        }) => {
            let ttl = jitgate::certs::parse_ttl(&ttl)?;
            let now = time::OffsetDateTime::now_utc();
            let issued = jitgate::certs::issue(&jitgate::certs::IssueOptions {
                out_dir: out.unwrap_or_else(|| dir.clone()),
                ca_dir: dir,
                user,
                groups,
                trust_domain,
                not_before: now - time::Duration::minutes(5),
                not_after: now + ttl,
            })?;
            println!(
                "wrote {} and {} (serial {})",
                issued.cert.display(),
                issued.key.display(),
                issued.serial
            );
        }
        Command::Certs(CertsCommand::Revoke { dir, cert }) => {
            let serial = jitgate::certs::revoke(&dir, &cert)?;
            println!(
                "revoked serial {serial}; {} updated",
                dir.join("crl.pem").display()
            );
        }
        Command::Policy(PolicyCommand::Check { dir }) => {
            match jitgate::policy::PolicySet::load_dir(&dir) {
                Ok(set) => {
                    for warning in set.warnings() {
                        eprintln!("warning: {warning}");
                    }
                    println!("{}: {} grants, all valid", dir.display(), set.len())
                }
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Policy(PolicyCommand::Explain {
            policies,
            user,
            groups,
            workload,
            target,
            kind,
            config,
        }) => {
            let set = jitgate::policy::PolicySet::load_dir(&policies)?;
            // Without --kind, the config says what the target is; without a config either,
            // both kinds are explained (a grant's sections decide which it applies to).
            let kinds = match kind {
                Some(kind) => vec![kind.into()],
                None if config.exists() => vec![configured_kind(&config, &target)?],
                None => vec![
                    jitgate::policy::TargetKind::Postgres,
                    jitgate::policy::TargetKind::Ssh,
                ],
            };
            let identity = match (user, workload) {
                (_, Some(workload)) => jitgate::identity::Identity {
                    kind: jitgate::identity::SubjectKind::Workload,
                    ..jitgate::identity::Identity::person(&workload, &groups)
                },
                (Some(user), None) => jitgate::identity::Identity::person(&user, &groups),
                (None, None) => anyhow::bail!("give --user or --workload"),
            };
            for (i, kind) in kinds.iter().enumerate() {
                if kinds.len() > 1 {
                    if i > 0 {
                        println!();
                    }
                    println!(
                        "== as a {kind} target (there is no {} to say; --kind picks one)",
                        config.display()
                    );
                }
                print!(
                    "{}",
                    jitgate::policy::explain_identity(&set, &identity, &target, *kind)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request to the running gateway named by `config`'s control_socket.
fn control(
    config: &std::path::Path,
    request: &jitgate::control::Request,
) -> anyhow::Result<jitgate::control::Response> {
    let config = jitgate::config::Config::load(config)?;
    let socket = config.control_socket;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(jitgate::control::request(&socket, request))?)
}

fn sessions(
    config: &std::path::Path,
    json: bool,
    command: Option<SessionsCommand>,
) -> anyhow::Result<ExitCode> {
    use jitgate::control::{Request, Response, Selector};
    match command {
        None => {
            let answer = control(config, &Request::Sessions)?;
            let Response::Sessions { sessions } = answer else {
                anyhow::bail!("the gateway answered something else: {answer:?}");
            };
            if json {
                for row in &sessions {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                print!(
                    "{}",
                    jitgate::control::sessions_table(&sessions, std::time::SystemTime::now())
                );
            }
        }
        Some(SessionsCommand::End {
            id,
            user,
            target,
            reason,
        }) => {
            let which = match (id, user, target) {
                (Some(id), _, _) => Selector::Id(id),
                (None, Some(u), _) => Selector::User(u),
                (None, None, Some(t)) => Selector::Target(t),
                (None, None, None) => anyhow::bail!("give a session id, --user or --target"),
            };
            let answer = control(config, &Request::End { which, reason })?;
            let Response::Ended { ended } = answer else {
                anyhow::bail!("the gateway answered something else: {answer:?}");
            };
            if json {
                for row in &ended {
                    println!("{}", serde_json::to_string(row)?);
                }
            }
            println!("ended {} session(s)", ended.len());
            if ended.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(log: AuditLog, command: AuditCommand) -> anyhow::Result<ExitCode> {
    // Output piped into `head` or `less` that stops reading is an ordinary end, not an error.
    match audit_to(log, command, &mut std::io::stdout().lock()) {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn audit_to(
    log: AuditLog,
    command: AuditCommand,
    out: &mut impl std::io::Write,
) -> anyhow::Result<ExitCode> {
    use jitgate::audit::{recording, review, store, verify};
    // With `audit.postgres` configured, review reads every replica's chain from the store,
    // written out as a directory first; `--dir` reads files instead.
    let (dir, store_copy) = match log.dir {
        Some(dir) => (dir, None),
        None => {
            let audit = jitgate::config::Config::load(&log.config)?.audit;
            match audit.postgres {
                None => (audit.dir, None),
                Some(target) => {
                    let copy = tempfile::Builder::new()
                        .prefix("jitgate-audit-store-")
                        .tempdir()?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime
                        .block_on(async {
                            let db = store::connect(&target).await?;
                            store::materialise(&db, copy.path()).await
                        })
                        .map_err(anyhow::Error::msg)?;
                    (copy.path().to_path_buf(), Some(copy))
                }
            }
        }
    };
    // Problems found in the store are named by instance and row, not by the copy's files.
    let place = |text: String| match &store_copy {
        None => text,
        Some(copy) => {
            let prefix = format!("{}/audit-", copy.path().display());
            let day = format!("-{}.jsonl:", store::MATERIALISED_DAY);
            match text.strip_prefix(&prefix).and_then(|t| t.split_once(&day)) {
                Some((instance, rest)) => {
                    format!("audit store, instance {instance}, row {rest}").replacen(": ", ": ", 1)
                }
                None => text,
            }
        }
    };
    let lines = || {
        review::load(&dir).with_context(|| format!("reading the audit log in {}", dir.display()))
    };
    match command {
        AuditCommand::Sessions {
            user,
            target,
            since,
            until,
            grep,
            json,
        } => {
            let now = std::time::SystemTime::now();
            let when = |t: Option<String>| {
                t.map(|t| review::parse_when(&t, now))
                    .transpose()
                    .map_err(anyhow::Error::msg)
            };
            let filter = review::Filter {
                user,
                target,
                since: when(since)?,
                until: when(until)?,
                grep,
            };
            let rows = review::sessions(&lines()?, &filter);
            if json {
                for row in &rows {
                    writeln!(out, "{}", serde_json::to_string(row)?)?;
                }
            } else {
                write!(out, "{}", review::sessions_table(&rows))?;
            }
        }
        AuditCommand::Show { id } => {
            let all = lines()?;
            let session = review::session_lines(&all, &id).map_err(anyhow::Error::msg)?;
            write!(out, "{}", review::timeline(&session))?;
        }
        AuditCommand::Replay {
            id,
            speed,
            idle_limit,
        } => {
            anyhow::ensure!(speed > 0.0, "--speed must be above 0");
            let all = lines()?;
            let session = review::session_lines(&all, &id).map_err(anyhow::Error::msg)?;
            let casts = review::recordings(&dir, &session);
            anyhow::ensure!(!casts.is_empty(), "session {id} has no terminal recording");
            for path in casts {
                let mut cast = recording::read_cast(&path)?;
                if idle_limit.is_some() {
                    cast.header.idle_time_limit = idle_limit;
                }
                recording::replay(&cast, speed, &mut *out)?;
            }
        }
        AuditCommand::Export { id, format } => {
            let all = lines()?;
            let session = review::session_lines(&all, &id).map_err(anyhow::Error::msg)?;
            match format {
                ExportFormat::Json => {
                    let full = session
                        .first()
                        .and_then(|v| v["session"].as_str())
                        .unwrap_or(&id);
                    for line in review::raw_session_lines(&dir, full)? {
                        writeln!(out, "{line}")?;
                    }
                }
                ExportFormat::Cast => {
                    let casts = review::recordings(&dir, &session);
                    anyhow::ensure!(!casts.is_empty(), "session {id} has no terminal recording");
                    for path in casts {
                        write!(
                            out,
                            "{}",
                            recording::to_cast_string(&recording::read_cast(&path)?)?
                        )?;
                    }
                }
            }
        }
        AuditCommand::Verify => {
            let report = verify::verify_dir(&dir)
                .with_context(|| format!("reading the audit log in {}", dir.display()))?;
            for problem in &report.problems {
                writeln!(out, "✗ {}", place(problem.to_string()))?;
            }
            if report.problem_count > report.problems.len() {
                writeln!(
                    out,
                    "… and {} more",
                    report.problem_count - report.problems.len()
                )?;
            }
            for (instance, files, lines) in &report.chains {
                if store_copy.is_some() {
                    writeln!(out, "chain {instance} (audit store): {lines} line(s)")?;
                } else {
                    writeln!(out, "chain {instance}: {files} file(s), {lines} line(s)")?;
                }
            }
            writeln!(out, "recordings checked: {}", report.recordings)?;
            if !report.ok() {
                writeln!(
                    out,
                    "audit log NOT intact: {} problem(s)",
                    report.problem_count
                )?;
                return Ok(ExitCode::from(1));
            }
            writeln!(out, "audit log intact")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Single-quotes a word for the shell ssh runs ProxyCommand with.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn absolute(path: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    if !abs.exists() {
        anyhow::bail!("{} does not exist", abs.display());
    }
    Ok(abs.display().to_string())
}

fn ssh_config_block(
    hosts: &[String],
    via: &Bastion,
    user: Option<&str>,
    known_hosts: &str,
) -> anyhow::Result<String> {
    let Bastion {
        gateway,
        cert,
        key,
        ca,
    } = via;
    let exe = std::env::current_exe().context("finding the jitgate binary")?;
    let alias: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut block = format!(
        "# jitgate: ssh to these hosts goes through the bastion at {gateway}, as your client certificate.\n\
         Host {hosts}\n\
         \x20   ProxyCommand {exe} tunnel --gateway {gw} --cert {cert} --key {key} --ca {ca} %n\n\
         \x20   # Every target is reached through the bastion, which shows one host key for all of them.\n\
         \x20   # That key is only reachable inside the TLS tunnel, whose certificate `jitgate tunnel`\n\
         \x20   # verifies, so it is learned on first use and pinned in a file of its own.\n\
         \x20   HostKeyAlias jitgate-{alias}\n\
         \x20   UserKnownHostsFile {known_hosts}\n\
         \x20   StrictHostKeyChecking accept-new\n",
        hosts = hosts.join(" "),
        exe = shell_quote(&exe.display().to_string()),
        gw = shell_quote(gateway),
        cert = shell_quote(&absolute(cert)?),
        key = shell_quote(&absolute(key)?),
        ca = shell_quote(&absolute(ca)?),
    );
    if let Some(user) = user {
        block.push_str(&format!("    User {user}\n"));
    }
    Ok(block)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// One reaper pass over every target; true if some account could not be removed.
async fn reap(config: jitgate::config::Config) -> anyhow::Result<bool> {
    use jitgate::config::Target;
    use jitgate::jit::reaper::ReapReport;
    let mut failed = false;
    for target in config.targets.values() {
        // No session of this process is live; an account still in use (a backend, a process)
        // may belong to a gateway running with this instance id, so it stays.
        let report: ReapReport = match target {
            Target::Postgres(t) => {
                let provisioner = jitgate::jit::postgres::PgProvisioner::new(
                    t.clone(),
                    config.instance_id.clone(),
                );
                let busy = provisioner.roles_with_backends().await?;
                jitgate::jit::reaper::reap(&*provisioner, &config.instance_id, |r| {
                    busy.contains(&r.role)
                })
                .await?
            }
            Target::Ssh(t) => {
                let provisioner = jitgate::jit::linux::LinuxProvisioner::new(
                    t.clone(),
                    config.instance_id.clone(),
                )?;
                jitgate::jit::reaper::reap(&*provisioner, &config.instance_id, |a| a.has_processes)
                    .await?
            }
        };
        for account in &report.dropped {
            println!("{}: dropped {account}", target.name());
        }
        for account in &report.failed {
            eprintln!("{}: could not drop {account}", target.name());
        }
        failed |= !report.failed.is_empty();
    }
    Ok(failed)
}
