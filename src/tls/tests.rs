//! Unit tests of `tls`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsAcceptor;

use super::files::{load_certs, load_key, provider, root_store, VERSIONS};
use super::*;
use crate::certs::{self, InitOptions, IssueOptions, Issued, DEFAULT_TRUST_DOMAIN};
use crate::identity::Identity;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const PG: &[u8] = b"postgresql";
const HOUR: Duration = Duration::from_secs(3600);

fn init(dir: &Path) {
    certs::init(&InitOptions {
        dir: dir.to_owned(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        force: false,
    })
    .unwrap();
}

fn issue_between(
    dir: &Path,
    user: &str,
    groups: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Issued {
    certs::issue(&IssueOptions {
        ca_dir: dir.to_owned(),
        out_dir: dir.join("users"),
        user: user.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        not_before,
        not_after,
    })
    .unwrap()
}

fn issue(dir: &Path, user: &str, groups: &[&str]) -> Issued {
    let now = OffsetDateTime::now_utc();
    issue_between(dir, user, groups, now - HOUR, now + HOUR)
}

fn files(dir: &Path) -> ServerTlsFiles {
    ServerTlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        crl: Some(dir.join("crl.pem")),
    }
}

/// The gateway's TLS for `dir`, looking at the CRL on every `acceptor()` call.
fn server(dir: &Path) -> ServerTls {
    let mut tls = ServerTls::load(files(dir), vec![PG.to_vec()]).unwrap();
    tls.check_interval = Duration::ZERO;
    tls
}

fn client(dir: &Path, who: &Issued) -> Arc<ClientConfig> {
    client_config_with_cert(&dir.join("ca.crt"), &who.cert, &who.key, vec![PG.to_vec()]).unwrap()
}

/// One handshake over an in-memory pipe. The server's view decides: the client's
/// certificate chain, or why the server refused. (In TLS 1.3 the client may finish its
/// side before the server rejects its certificate, so the client's own result says little.)
async fn handshake(
    tls: &ServerTls,
    acceptor: TlsAcceptor,
    client: Arc<ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = async move {
        let mut tls = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(PG));
        let chain = conn.peer_certificates().unwrap_or_default().to_vec();
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(chain)
    };
    let client = async move {
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let (server, client) = tokio::join!(server, client);
    match &server {
        Ok(_) => assert_eq!(&client.unwrap(), b"ok"),
        Err(_) => assert!(client.is_err(), "client got data from a refused handshake"),
    }
    // The handshake only proves key possession; the certificate is judged here.
    let chain = server?;
    tls.verify_client(&chain).map_err(|e| e.to_string())?;
    Ok(chain)
}

async fn user_of(
    tls: &ServerTls,
    acceptor: TlsAcceptor,
    client: Arc<ClientConfig>,
) -> Result<String, String> {
    let chain = handshake(tls, acceptor, client).await?;
    let id = Identity::from_der(&chain[0], DEFAULT_TRUST_DOMAIN).unwrap();
    Ok(id.user)
}

#[test]
fn server_tls_is_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<ServerTls>();
}

#[tokio::test]
async fn alice_gets_in_and_her_certificate_names_her_and_her_groups() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let tls = server(tmp.path());
    let alice = issue(tmp.path(), "alice", &["dba", "dev"]);

    let chain = handshake(&tls, tls.acceptor(), client(tmp.path(), &alice))
        .await
        .unwrap();
    let id = Identity::from_der(&chain[0], DEFAULT_TRUST_DOMAIN).unwrap();
    assert_eq!(id.user, "alice");
    assert_eq!(id.groups, ["dba", "dev"]);
    assert_eq!(id.serial, alice.serial);
    assert_eq!(
        id.spiffe_id.as_deref(),
        Some("spiffe://jitgate.local/user/alice")
    );
}

#[tokio::test]
async fn tls12_clients_are_served_too() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let tls = server(tmp.path());
    let alice = issue(tmp.path(), "alice", &[]);
    let ca = tmp.path().join("ca.crt");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root_store(&ca, &load_certs(&ca).unwrap()).unwrap())
        .with_client_auth_cert(
            load_certs(&alice.cert).unwrap(),
            load_key(&alice.key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![PG.to_vec()];
    assert_eq!(
        user_of(&tls, tls.acceptor(), Arc::new(config))
            .await
            .unwrap(),
        "alice"
    );
}

#[tokio::test]
async fn hostile_names_survive_the_handshake_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let tls = server(tmp.path());
    let name = "a\"; DROP ROLE x; --";
    let who = issue(tmp.path(), name, &["g\"; --"]);
    let chain = handshake(&tls, tls.acceptor(), client(tmp.path(), &who))
        .await
        .unwrap();
    let id = Identity::from_der(&chain[0], DEFAULT_TRUST_DOMAIN).unwrap();
    assert_eq!(id.user, name);
    assert_eq!(id.groups, ["g\"; --"]);
}

#[tokio::test]
async fn foreign_expired_and_anonymous_clients_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    init(&ours);
    init(&theirs);
    let tls = server(&ours);

    // Signed by another CA (with the very same subject name as ours).
    let mallory = issue(&theirs, "mallory", &[]);
    let config = client_config_with_cert(
        &ours.join("ca.crt"),
        &mallory.cert,
        &mallory.key,
        vec![PG.to_vec()],
    )
    .unwrap();
    let err = handshake(&tls, tls.acceptor(), config).await.unwrap_err();
    assert!(err.contains("not issued by this gateway"), "{err}");

    let now = OffsetDateTime::now_utc();
    let expired = issue_between(&ours, "late", &[], now - 2 * HOUR, now - HOUR);
    let err = handshake(&tls, tls.acceptor(), client(&ours, &expired))
        .await
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");

    let early = issue_between(&ours, "early", &[], now + HOUR, now + 2 * HOUR);
    let err = handshake(&tls, tls.acceptor(), client(&ours, &early))
        .await
        .unwrap_err();
    assert!(err.contains("not valid yet"), "{err}");

    let anonymous = upstream_client_config(Some(&ours.join("ca.crt")))
        .map(|c| {
            let mut c = (*c).clone();
            c.alpn_protocols = vec![PG.to_vec()];
            Arc::new(c)
        })
        .unwrap();
    let err = handshake(&tls, tls.acceptor(), anonymous)
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn revoked_certificate_is_refused_once_the_crl_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let tls = server(dir);
    let alice = issue(dir, "alice", &[]);
    let alice_tls = client(dir, &alice);
    assert_eq!(
        user_of(&tls, tls.acceptor(), alice_tls.clone())
            .await
            .unwrap(),
        "alice"
    );

    let before = tls.acceptor();
    assert!(
        Arc::ptr_eq(before.config(), tls.acceptor().config()),
        "an unchanged CRL must not rebuild the config"
    );

    assert_eq!(certs::revoke(dir, &alice.cert).unwrap(), alice.serial);
    let bob = issue(dir, "bob", &[]);
    let after = tls.acceptor();
    assert!(!Arc::ptr_eq(before.config(), after.config()));

    let err = handshake(&tls, after.clone(), alice_tls.clone())
        .await
        .unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    assert_eq!(
        user_of(&tls, after, client(dir, &bob)).await.unwrap(),
        "bob"
    );
    // Verification follows the newest CRL, even for a handshake begun before it changed.
    assert!(user_of(&tls, before, alice_tls).await.is_err());
}

#[tokio::test]
async fn unusable_crl_keeps_the_previous_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ours");
    let other = tmp.path().join("other");
    init(&dir);
    init(&other);
    let tls = server(&dir);
    let alice = issue(&dir, "alice", &[]);
    let bob = issue(&dir, "bob", &[]);
    certs::revoke(&dir, &bob.cert).unwrap();
    let good = tls.acceptor();
    let crl = dir.join("crl.pem");

    let garbage = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    // A CRL signed by another CA with the same issuer name: without our own signature
    // check webpki would accept it here and then refuse every client.
    let foreign = fs::read(other.join("crl.pem")).unwrap();
    for bad in [garbage.as_bytes(), b"", b"not pem at all\n", &foreign] {
        fs::write(&crl, bad).unwrap();
        let now = tls.acceptor();
        assert!(Arc::ptr_eq(good.config(), now.config()));
        assert_eq!(
            user_of(&tls, now.clone(), client(&dir, &alice))
                .await
                .unwrap(),
            "alice"
        );
        assert!(handshake(&tls, now, client(&dir, &bob)).await.is_err());
    }

    fs::remove_file(&crl).unwrap();
    assert!(Arc::ptr_eq(good.config(), tls.acceptor().config()));

    // A good CRL again is picked up.
    certs::revoke(&dir, &alice.cert).unwrap();
    let now = tls.acceptor();
    assert!(!Arc::ptr_eq(good.config(), now.config()));
    assert!(handshake(&tls, now, client(&dir, &alice)).await.is_err());
}

#[tokio::test]
async fn crl_is_looked_at_no_more_than_once_per_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let mut tls = ServerTls::load(files(dir), vec![PG.to_vec()]).unwrap();
    assert_eq!(tls.check_interval, Duration::from_secs(1));
    tls.check_interval = HOUR;
    let first = tls.acceptor();
    let alice = issue(dir, "alice", &[]);
    certs::revoke(dir, &alice.cert).unwrap();
    assert!(Arc::ptr_eq(first.config(), tls.acceptor().config()));

    tls.check_interval = Duration::ZERO;
    assert!(!Arc::ptr_eq(first.config(), tls.acceptor().config()));
}

#[tokio::test]
async fn server_without_crl_file() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let mut f = files(tmp.path());
    f.crl = None;
    let tls = ServerTls::load(f, vec![PG.to_vec()]).unwrap();
    let alice = issue(tmp.path(), "alice", &[]);
    assert_eq!(
        user_of(&tls, tls.acceptor(), client(tmp.path(), &alice))
            .await
            .unwrap(),
        "alice"
    );
}

/// A plain TLS server (no client certificates) standing in for an upstream target.
async fn upstream_handshake(
    dir: &Path,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<(), String> {
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            load_certs(&dir.join("server.crt")).unwrap(),
            load_key(&dir.join("server.key")).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let server = async move {
        let mut tls = acceptor.accept(server_io).await?;
        tls.write_all(b"ok").await?;
        tls.shutdown().await
    };
    let client = async move {
        let mut tls = TlsConnector::from(config).connect(name, client_io).await?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let (_, client) = tokio::join!(server, client);
    client.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn upstream_require_encrypts_without_verifying_and_verify_full_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let other = tmp.path().join("other");
    init(&dir);
    init(&other);

    let require = upstream_client_config(None).unwrap();
    upstream_handshake(&dir, require.clone(), "db.internal")
        .await
        .unwrap();
    upstream_handshake(&dir, require, "10.1.2.3").await.unwrap();

    let full = upstream_client_config(Some(&dir.join("ca.crt"))).unwrap();
    upstream_handshake(&dir, full.clone(), "localhost")
        .await
        .unwrap();
    upstream_handshake(&dir, full.clone(), "127.0.0.1")
        .await
        .unwrap();
    let err = upstream_handshake(&dir, full, "db.internal")
        .await
        .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    assert!(
        err.contains("the target's certificate does not name its configured host \"db.internal\""),
        "{err}"
    );

    let wrong_ca = upstream_client_config(Some(&other.join("ca.crt"))).unwrap();
    let err = upstream_handshake(&dir, wrong_ca, "localhost")
        .await
        .unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
    // The operator learns which file holds the CA that did not sign it.
    assert!(
        err.contains(&format!(
            "the target's certificate is not signed by the CA in tls_ca {}",
            other.join("ca.crt").display()
        )),
        "{err}"
    );
}

#[test]
fn load_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let alpn = || vec![PG.to_vec()];

    let mut f = files(dir);
    f.ca = dir.join("missing-ca.crt");
    let err = ServerTls::load(f, alpn()).unwrap_err().to_string();
    assert!(
        err.contains("missing-ca.crt") && err.contains("No such file"),
        "{err}"
    );

    let mut f = files(dir);
    f.key = dir.join("ca.key");
    let err = ServerTls::load(f, alpn()).unwrap_err().to_string();
    assert!(
        err.contains("server.crt") && err.contains("ca.key"),
        "{err}"
    );

    let mut f = files(dir);
    f.key = dir.join("server.crt");
    let err = ServerTls::load(f, alpn()).unwrap_err().to_string();
    assert!(err.contains("server.crt: no private key"), "{err}");

    let mut f = files(dir);
    f.cert = dir.join("crl.pem");
    let err = ServerTls::load(f, alpn()).unwrap_err().to_string();
    assert!(err.contains("crl.pem: no `CERTIFICATE`"), "{err}");

    fs::write(dir.join("crl.pem"), "junk").unwrap();
    let err = ServerTls::load(files(dir), alpn()).unwrap_err().to_string();
    assert!(err.contains("crl.pem: no `X509 CRL`"), "{err}");

    let err = upstream_client_config(Some(&dir.join("nope.crt")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.crt"), "{err}");
    let err = client_config_with_cert(
        &dir.join("ca.crt"),
        &dir.join("server.crt"),
        &dir.join("ca.key"),
        alpn(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ca.key"), "{err}");
}
