//! The upstream login must authenticate the target: a fake server in front of a real
//! PostgreSQL passes jitgate's admin connection through but answers the JIT role's login itself
//! (AuthenticationOk at once, a forged SCRAM signature, cleartext/MD5 requests, a TLS relay).
//! psql through the real gateway must get a FATAL, and the fake must never see a query or the
//! minted password. Over TLS the login uses SCRAM-SHA-256-PLUS against a real PostgreSQL.
//! The admin login is held to the same: a fake answering it (cleartext request, AuthenticationOk
//! at once, a TLS relay to the real server) gets neither the admin password nor a statement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MARKER: &str = "marker_reached_the_fake";
const SSL_REQUEST: i32 = 80877103;

/// What the fake does with a `jit_*` login.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `R 0` straight after the StartupMessage.
    OkAtOnce,
    /// SASL start and continue, then `R 0` without SASLFinal.
    OkWithoutFinal,
    /// The whole SCRAM exchange, with a server signature the fake made up.
    ForgedFinal,
    /// AuthenticationCleartextPassword (`R 3`).
    Cleartext,
    /// AuthenticationMD5Password (`R 5`).
    Md5,
    /// Terminates TLS with its own certificate and relays the JIT login to the real server,
    /// over TLS (`true`: the server offers -PLUS for its own certificate) or plain (`false`:
    /// only SCRAM-SHA-256 reaches the gateway). Connections before `Fake::intercept_from_now`
    /// (the start-up reaper's admin connection, later reused from the pool, and the start-up
    /// checks') are passed through untouched, TLS and all: the gateway binds its admin login
    /// to the TLS connection, so a relay that terminates TLS cannot carry it (see
    /// `AdminTlsRelay`).
    TlsRelay(bool),
    /// Answers the admin login with AuthenticationCleartextPassword, and should a password come,
    /// plays a logged-in server.
    AdminCleartext,
    /// Answers the admin login with AuthenticationOk at once and plays a logged-in server.
    AdminOkAtOnce,
    /// Terminates TLS with its own certificate and relays the admin login plain to the real
    /// server (which then offers SCRAM-SHA-256 only), recording what the gateway sends.
    AdminTlsRelay,
}

/// The fake upstream; `received` is everything the gateway sent on JIT logins.
/// In the admin modes, `received` is what the gateway sent on its admin logins.
struct Fake {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    jit_logins: Arc<Mutex<usize>>,
    admin_startups: Arc<Mutex<Vec<Vec<u8>>>>,
    intercept: Arc<AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl Fake {
    fn start(pg_port: u16, mode: Mode) -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let jit_logins = Arc::new(Mutex::new(0));
        let admin_startups = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(relay_tls_config());
        let intercept = Arc::new(AtomicBool::new(!matches!(mode, Mode::TlsRelay(_))));
        let record = Record {
            received: received.clone(),
            jit_logins: jit_logins.clone(),
            admin_startups: admin_startups.clone(),
            intercept: intercept.clone(),
        };
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (record, acceptor) = (record.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, pg_port, mode, acceptor, record).await;
                });
            }
        });
        Fake {
            port,
            received,
            jit_logins,
            admin_startups,
            intercept,
            _rt: rt,
        }
    }

    /// From now on the relay modes play their part (until now they passed connections through).
    /// Called once the gateway's start-up (reaper pass, start-up checks) is over.
    fn intercept_from_now(&self, gw: &Gateway) {
        let start = std::time::Instant::now();
        while !gw.log().contains("doctor: ") {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "the start-up checks did not finish: {}",
                gw.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.intercept.store(true, Ordering::SeqCst);
    }

    fn admin_startups(&self) -> Vec<Vec<u8>> {
        self.admin_startups.lock().unwrap().clone()
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    fn jit_logins(&self) -> usize {
        *self.jit_logins.lock().unwrap()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the fake keeps for the test to look at.
#[derive(Clone)]
struct Record {
    received: Arc<Mutex<Vec<u8>>>,
    jit_logins: Arc<Mutex<usize>>,
    admin_startups: Arc<Mutex<Vec<Vec<u8>>>>,
    intercept: Arc<AtomicBool>,
}

async fn serve(
    mut sock: TcpStream,
    pg_port: u16,
    mode: Mode,
    acceptor: tokio_rustls::TlsAcceptor,
    record: Record,
) -> std::io::Result<()> {
    let Record {
        received,
        jit_logins,
        admin_startups,
        intercept,
    } = record;
    if !intercept.load(Ordering::SeqCst) {
        let mut pg = TcpStream::connect(("127.0.0.1", pg_port)).await?;
        tokio::io::copy_bidirectional(&mut sock, &mut pg).await?;
        return Ok(());
    }
    let mut startup = read_startup(&mut sock).await?;
    let mut client: Box<dyn Io> = if code(&startup) == SSL_REQUEST {
        if let Mode::TlsRelay(_) | Mode::AdminTlsRelay = mode {
            sock.write_all(b"S").await?;
            let mut tls = acceptor.accept(sock).await?;
            startup = read_startup(&mut tls).await?;
            Box::new(tls)
        } else {
            sock.write_all(b"N").await?;
            startup = read_startup(&mut sock).await?;
            Box::new(sock)
        }
    } else {
        Box::new(sock)
    };
    let user = startup_user(&startup);
    if !user.starts_with("jit_") {
        admin_startups.lock().unwrap().push(startup.clone());
        match mode {
            Mode::AdminCleartext => {
                client.write_all(&auth(3, b"")).await?;
                // A PasswordMessage is recorded; then the gateway gets what it expects next.
                if read_record(&mut client, &received).await.is_ok() {
                    session(&mut client, &received).await;
                }
                return Ok(());
            }
            Mode::AdminOkAtOnce => {
                session(&mut client, &received).await;
                return Ok(());
            }
            Mode::AdminTlsRelay => {
                let pg = TcpStream::connect(("127.0.0.1", pg_port)).await?;
                return relay_recording(client, pg, &startup, &received).await;
            }
            Mode::OkAtOnce
            | Mode::OkWithoutFinal
            | Mode::ForgedFinal
            | Mode::Cleartext
            | Mode::Md5
            | Mode::TlsRelay(_) => {
                // The admin connection goes to the real server as it came, plain.
                let mut pg = TcpStream::connect(("127.0.0.1", pg_port)).await?;
                pg.write_all(&startup).await?;
                tokio::io::copy_bidirectional(&mut client, &mut pg).await?;
                return Ok(());
            }
        }
    }
    *jit_logins.lock().unwrap() += 1;
    match mode {
        // Only reached if the admin login went through the fake (which it must not).
        Mode::AdminCleartext | Mode::AdminOkAtOnce => Ok(()),
        Mode::AdminTlsRelay => {
            let mut pg = TcpStream::connect(("127.0.0.1", pg_port)).await?;
            pg.write_all(&startup).await?;
            tokio::io::copy_bidirectional(&mut client, &mut pg).await?;
            Ok(())
        }
        Mode::TlsRelay(upstream_tls) => {
            let mut pg = TcpStream::connect(("127.0.0.1", pg_port)).await?;
            let mut pg: Box<dyn Io> = if upstream_tls {
                let mut req = Vec::new();
                req.extend_from_slice(&8i32.to_be_bytes());
                req.extend_from_slice(&SSL_REQUEST.to_be_bytes());
                pg.write_all(&req).await?;
                assert_eq!(pg.read_u8().await?, b'S', "the real server has no TLS");
                let config = jitgate::tls::upstream_client_config(None).unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                Box::new(
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, pg)
                        .await?,
                )
            } else {
                Box::new(pg)
            };
            pg.write_all(&startup).await?;
            tokio::io::copy_bidirectional(&mut client, &mut pg).await?;
            Ok(())
        }
        Mode::OkAtOnce => {
            session(&mut client, &received).await;
            Ok(())
        }
        Mode::OkWithoutFinal | Mode::ForgedFinal => {
            client.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
            let (_, first) = read_record(&mut client, &received).await?;
            // SASLInitialResponse: mechanism\0, i32 length, client-first-message.
            let nul = first.iter().position(|b| *b == 0).unwrap();
            let client_first = String::from_utf8_lossy(&first[nul + 5..]).to_string();
            let nonce = client_first.split("r=").nth(1).unwrap().to_string();
            let server_first = format!("r={nonce}fake,s=c2FsdHNhbHRzYWx0,i=4096");
            client.write_all(&auth(11, server_first.as_bytes())).await?;
            read_record(&mut client, &received).await?;
            if let Mode::ForgedFinal = mode {
                let forged = format!("v={}=", "A".repeat(43));
                client.write_all(&auth(12, forged.as_bytes())).await?;
            }
            session(&mut client, &received).await;
            Ok(())
        }
        Mode::Cleartext | Mode::Md5 => {
            let request = match mode {
                Mode::Cleartext => auth(3, b""),
                _ => auth(5, b"salt"),
            };
            client.write_all(&request).await?;
            // Whatever comes back (it must be nothing) is recorded.
            while read_record(&mut client, &received).await.is_ok() {}
            Ok(())
        }
    }
}

/// Plays a logged-in server: `R 0`, BackendKeyData, ReadyForQuery, then answers every query
/// with one row, recording what it gets.
async fn session(client: &mut Box<dyn Io>, received: &Arc<Mutex<Vec<u8>>>) {
    let mut hello = auth(0, b"");
    hello.extend(msg(b'S', b"server_version\x0015.0\0"));
    hello.extend(msg(b'S', b"client_encoding\0UTF8\0"));
    hello.extend(msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    hello.extend(msg(b'Z', b"I"));
    if client.write_all(&hello).await.is_err() {
        return;
    }
    let mut row = msg(
        b'T',
        b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    );
    row.extend(msg(b'D', b"\0\x01\0\0\0\x04fake"));
    row.extend(msg(b'C', b"SELECT 1\0"));
    row.extend(msg(b'Z', b"I"));
    while let Ok((tag, _)) = read_record(client, received).await {
        if tag == b'X' || client.write_all(&row).await.is_err() {
            return;
        }
    }
}

/// Relays `client` to `pg` (after sending `startup`), appending what the client sends to
/// `received`.
async fn relay_recording(
    client: Box<dyn Io>,
    mut pg: TcpStream,
    startup: &[u8],
    received: &Arc<Mutex<Vec<u8>>>,
) -> std::io::Result<()> {
    pg.write_all(startup).await?;
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_pg, mut to_pg) = pg.into_split();
    let down = tokio::spawn(async move { tokio::io::copy(&mut from_pg, &mut to_client).await });
    let mut buf = vec![0; 8192];
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received.lock().unwrap().extend_from_slice(&buf[..n]);
        to_pg.write_all(&buf[..n]).await?;
    }
    down.abort();
    Ok(())
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    msg(b'R', &body)
}

/// Reads one tagged message, appends it raw to `received`, returns its tag and body.
async fn read_record(
    client: &mut Box<dyn Io>,
    received: &Arc<Mutex<Vec<u8>>>,
) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = client.read_u8().await?;
    let len = client.read_i32().await?;
    let mut body = vec![0; (len.max(4) - 4) as usize];
    client.read_exact(&mut body).await?;
    let mut r = received.lock().unwrap();
    r.push(tag);
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(&body);
    Ok((tag, body))
}

/// An untagged startup packet, raw (length included).
async fn read_startup<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let len = s.read_i32().await?;
    let mut packet = len.to_be_bytes().to_vec();
    let mut body = vec![0; (len.max(8) - 4) as usize];
    s.read_exact(&mut body).await?;
    packet.extend(body);
    Ok(packet)
}

fn code(startup: &[u8]) -> i32 {
    i32::from_be_bytes(startup[4..8].try_into().unwrap())
}

fn startup_user(startup: &[u8]) -> String {
    let fields: Vec<&[u8]> = startup[8..].split(|b| *b == 0).collect();
    fields
        .chunks(2)
        .find(|kv| kv[0] == b"user")
        .map(|kv| String::from_utf8_lossy(kv.get(1).copied().unwrap_or_default()).into_owned())
        .unwrap_or_default()
}

/// The relay's own certificate: what a man in the middle would present.
fn relay_tls_config() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    Arc::new(config)
}

/// A gateway whose target `orders` is reached through the fake on `port`, with `tls` mode.
fn gateway_via(pg: &Postgres, port: u16, tls: &str) -> Gateway {
    Gateway::start_edited(Some(pg), None, DEFAULT_POLICY, |c| {
        c.replace(&format!("port: {}", pg.port), &format!("port: {port}"))
            .replace("tls: disable", tls)
    })
}

/// Runs the marker query as alice through `gw`; returns psql's stderr after checking it failed.
fn refused_login(gw: &Gateway) -> String {
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(
        &gw.conninfo("alice", Some((&crt, &key)), ""),
        &format!("SELECT '{MARKER}'"),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "psql got a session: {}\n{err}\n{}",
        stdout(&out),
        gw.log()
    );
    assert!(err.contains("FATAL"), "{err}");
    err
}

fn check_fake_got_nothing(fake: &Fake, gw: &Gateway) {
    assert_eq!(fake.jit_logins(), 1, "{}", gw.log());
    let received = fake.received();
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains(MARKER), "the fake got the query: {text:?}");
    let minted = gw.minted_credentials();
    assert!(!minted.is_empty(), "no credential was recorded");
    for credential in minted {
        assert!(
            !text.contains(&credential),
            "the fake got the password: {text:?}"
        );
    }
}

fn fake_env(mode: Mode, tls: &str) -> Option<(Postgres, Fake, Gateway)> {
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)")?;
    }
    let pg = Postgres::start()?;
    let fake = Fake::start(pg.port, mode);
    let gw = gateway_via(&pg, fake.port, tls);
    Some((pg, fake, gw))
}

#[test]
fn authentication_ok_at_once_is_refused() {
    let Some((pg, fake, gw)) = fake_env(Mode::OkAtOnce, "tls: disable") else {
        return;
    };
    let err = refused_login(&gw);
    assert!(
        err.contains("jitgate could not log in to target orders with your account"),
        "{err}"
    );
    check_fake_got_nothing(&fake, &gw);
    assert!(
        gw.log()
            .contains("AuthenticationOk before SCRAM's server signature was verified"),
        "{}",
        gw.log()
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new());
}

#[test]
fn authentication_ok_without_sasl_final_is_refused() {
    let Some((_pg, fake, gw)) = fake_env(Mode::OkWithoutFinal, "tls: disable") else {
        return;
    };
    let err = refused_login(&gw);
    assert!(
        err.contains("jitgate could not log in to target orders with your account"),
        "{err}"
    );
    check_fake_got_nothing(&fake, &gw);
}

#[test]
fn forged_server_signature_is_refused() {
    let Some((_pg, fake, gw)) = fake_env(Mode::ForgedFinal, "tls: disable") else {
        return;
    };
    let err = refused_login(&gw);
    assert!(
        err.contains("jitgate could not log in to target orders with your account"),
        "{err}"
    );
    check_fake_got_nothing(&fake, &gw);
    assert!(gw.log().contains("SCRAM server signature"), "{}", gw.log());
}

#[test]
fn cleartext_and_md5_requests_get_no_password() {
    for mode in [Mode::Cleartext, Mode::Md5] {
        let Some((_pg, fake, gw)) = fake_env(mode, "tls: disable") else {
            return;
        };
        let err = refused_login(&gw);
        assert!(
            err.contains("jitgate could not log in to target orders with your account"),
            "{mode:?}: {err}"
        );
        assert!(
            gw.log().contains("jitgate logs in with SCRAM-SHA-256"),
            "{mode:?}: {}",
            gw.log()
        );
        check_fake_got_nothing(&fake, &gw);
        assert!(
            fake.received().is_empty(),
            "{mode:?}: the fake got {:?}",
            String::from_utf8_lossy(&fake.received())
        );
    }
}

/// TLS on in the running `Postgres`, with a certificate for 127.0.0.1; returns its CA file.
fn enable_ssl(pg: &Postgres) -> PathBuf {
    pg.enable_ssl(&[])
}

#[test]
fn tls_login_uses_scram_sha_256_plus() {
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    let ca = enable_ssl(&pg);

    let tls = format!("tls: verify-full\n      tls_ca: {}", ca.display());
    let gw = Gateway::start_edited(Some(&pg), None, DEFAULT_POLICY, |c| {
        c.replace("tls: disable", &tls)
    });
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(
        &gw.conninfo("alice", Some((&crt, &key)), ""),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    let row = stdout(&out);
    assert!(
        row.starts_with("jit_alice_") && row.ends_with("|t"),
        "{row}"
    );
    assert!(
        gw.log().contains("mechanism=\"SCRAM-SHA-256-PLUS\""),
        "{}",
        gw.log()
    );
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}

#[test]
fn tls_relay_with_its_own_certificate_fails_the_binding() {
    // A relay with its own certificate that re-encrypts to the real server (a man in the middle
    // under `tls: require`): the server checks the binding against its own certificate and
    // refuses, which it can only do because the gateway sent -PLUS binding data.
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    enable_ssl(&pg);
    let fake = Fake::start(pg.port, Mode::TlsRelay(true));
    let relayed = gateway_via(&pg, fake.port, "tls: require");
    fake.intercept_from_now(&relayed);
    let err = refused_login(&relayed);
    assert!(
        err.contains("jitgate could not log in to target orders with your account"),
        "{err}"
    );
    assert!(
        relayed.log().contains("channel binding"),
        "{}",
        relayed.log()
    );
    assert!(
        pg.server_log()
            .contains("SCRAM channel binding check failed"),
        "{}",
        pg.server_log()
    );
    assert_eq!(fake.jit_logins(), 1);
    assert_eq!(pg.jit_backends(), Vec::<String>::new());
}

#[test]
fn tls_without_channel_binding_is_refused() {
    // The relay terminates TLS and talks plain to the server: the gateway sees TLS but only
    // SCRAM-SHA-256, as from a TLS-terminating proxy or a man in the middle. The server has
    // TLS for the admin connection, which the relay passes through untouched.
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    enable_ssl(&pg);
    let fake = Fake::start(pg.port, Mode::TlsRelay(false));
    let gw = gateway_via(&pg, fake.port, "tls: require");
    fake.intercept_from_now(&gw);
    let err = refused_login(&gw);
    assert!(
        err.contains("jitgate could not log in to target orders with your account"),
        "{err}"
    );
    assert!(
        gw.log().contains("no SCRAM-SHA-256-PLUS over TLS"),
        "{}",
        gw.log()
    );
    assert_eq!(fake.jit_logins(), 1);
}

/// Checks that the admin login to the fake was abandoned before it sent anything (no password,
/// no statement), and that psql was told its account could not be created.
fn check_admin_refused(pg: &Postgres, fake: &Fake, gw: &Gateway) {
    let err = refused_login(gw);
    assert!(
        !fake.admin_startups().is_empty(),
        "the fake saw no admin login"
    );
    let received = fake.received();
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains(&pg.admin_password),
        "the fake got the admin password: {text:?}"
    );
    assert!(
        received.is_empty(),
        "the admin connection sent the fake {text:?}"
    );
    assert!(
        err.contains("jitgate could not create your account on target orders"),
        "{err}\n{}",
        gw.log()
    );
    assert_eq!(fake.jit_logins(), 0, "{}", gw.log());
    assert!(
        gw.log()
            .contains("did not authenticate itself to jitgate's admin login"),
        "{}",
        gw.log()
    );
    assert_eq!(pg.jit_roles(), Vec::<String>::new());
}

#[test]
fn admin_login_sends_no_cleartext_password() {
    let Some((pg, fake, gw)) = fake_env(Mode::AdminCleartext, "tls: disable") else {
        return;
    };
    check_admin_refused(&pg, &fake, &gw);
    assert!(gw.log().contains("cleartext password"), "{}", gw.log());
}

#[test]
fn admin_login_refuses_authentication_ok_at_once() {
    let Some((pg, fake, gw)) = fake_env(Mode::AdminOkAtOnce, "tls: disable") else {
        return;
    };
    check_admin_refused(&pg, &fake, &gw);
    assert!(
        gw.log()
            .contains("AuthenticationOk before a complete SCRAM exchange"),
        "{}",
        gw.log()
    );
}

#[test]
fn admin_login_over_tls_requires_channel_binding() {
    // `tls: require` checks no certificate: a relay with its own certificate that talks plain
    // to the real server would pass the admin's SCRAM through (SCRAM-SHA-256 with the `y` flag)
    // and then read every CREATE ROLE, verifiers included, unless the login is bound to TLS.
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    enable_ssl(&pg);
    let fake = Fake::start(pg.port, Mode::AdminTlsRelay);
    let gw = gateway_via(&pg, fake.port, "tls: require");
    check_admin_refused(&pg, &fake, &gw);
    assert!(
        gw.log().contains("server did not use channel binding"),
        "{}",
        gw.log()
    );
}

#[test]
fn admin_login_over_tls_require_works_with_real_postgres() {
    // The other side of the test above: a real server with TLS offers SCRAM-SHA-256-PLUS, and
    // channel binding required still logs in (under `require`, with no CA).
    if which("psql").is_none() {
        unavailable("psql (apt-get install postgresql-client)");
        return;
    }
    let Some(pg) = Postgres::start() else {
        return;
    };
    enable_ssl(&pg);
    let gw = Gateway::start_edited(Some(&pg), None, DEFAULT_POLICY, |c| {
        c.replace("tls: disable", "tls: require")
    });
    let (crt, key) = gw.issue("alice", &["dba"]);
    let out = psql(&gw.conninfo("alice", Some((&crt, &key)), ""), "SELECT 1");
    assert!(out.status.success(), "{}\n{}", stderr(&out), gw.log());
    let admin_ssl = pg.superuser_sql(
        "postgres",
        &format!(
            "SELECT DISTINCT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = '{ADMIN_USER}'"
        ),
    );
    assert_eq!(admin_ssl, "t", "{}", gw.log());
    assert_eq!(pg.wait_no_jit_roles(), Vec::<String>::new(), "{}", gw.log());
}

#[test]
fn admin_sessions_start_with_statement_and_lock_timeouts() {
    // (And with synchronous_commit off: a mint's commit does not wait for the WAL flush.)
    // The start-up reaper's admin login passes through the fake, which keeps its StartupMessage.
    let Some((_pg, fake, gw)) = fake_env(Mode::OkAtOnce, "tls: disable") else {
        return;
    };
    let startups = fake.admin_startups();
    assert!(!startups.is_empty(), "{}", gw.log());
    for startup in startups {
        let text = String::from_utf8_lossy(&startup);
        assert!(
            text.contains(
                "options\0-c statement_timeout=10s -c lock_timeout=5s -c synchronous_commit=off\0"
            ),
            "{text:?}"
        );
    }
}
