//! The gateway's server side: `ServerTls` hands out an acceptor per connection (client
//! certificate required) and checks the presented chain, CA, validity and CRL, in `verify_client`.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::DistinguishedName;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tokio_rustls::TlsAcceptor;

use super::crl::{FileStamp, CRL_CHECK_INTERVAL};
use super::files::{load_certs, load_key, provider, root_store, rustls_err, VERSIONS};
use super::{ClientCertError, TlsError};

/// Accepts any client certificate during the handshake — still checking the handshake
/// signature, so the peer must hold the certificate's private key — and leaves the chain,
/// validity and CRL checks to `ServerTls::verify_client` right after. A bad certificate is
/// then refused with a Postgres error psql shows ("it has expired"), not a bare TLS alert.
/// Nothing is read from a connection before `verify_client` has passed.
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Files for the gateway's server side.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// CA(s) that sign client certificates (PEM, one or more).
    pub ca: PathBuf,
    /// The gateway's certificate chain (PEM, end-entity first).
    pub cert: PathBuf,
    /// The gateway's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CRL(s) issued by `ca` (PEM); watched and reloaded when it changes.
    pub crl: Option<PathBuf>,
}

/// The gateway's server-side TLS: hands out an acceptor per connection and swaps in a new
/// `ServerConfig` when the CRL file changes. Shared across tasks in an `Arc`.
pub struct ServerTls {
    pub(super) material: Material,
    pub(super) crl_path: Option<PathBuf>,
    pub(super) current: RwLock<Current>,
    pub(super) last_check: Mutex<Instant>,
    pub(super) check_interval: Duration,
    /// How many CRLs were installed after the first (see `refresh_crl`).
    pub(super) crl_generation: AtomicU64,
}

/// Everything a `ServerConfig` is built from, except the CRL.
pub(super) struct Material {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// The CA certificates again, to check a CRL's signature before trusting it.
    pub(super) ca_certs: Vec<CertificateDer<'static>>,
    pub(super) ca_path: PathBuf,
    cert_resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
}

pub(super) struct Current {
    pub(super) acceptor: TlsAcceptor,
    /// The real (webpki + CRL) verifier behind the acceptor's deferring one.
    pub(super) verifier: Arc<dyn ClientCertVerifier>,
    /// The CRL file as last seen (whether or not loading it worked): `None` = missing.
    pub(super) crl_seen: Option<FileStamp>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("ca", &self.material.ca_path)
            .field("crl", &self.crl_path)
            .field("alpn", &self.material.alpn)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// alpn: protocols to offer, e.g. `vec![b"postgresql".to_vec()]` (PostgreSQL 17 direct TLS
    /// needs it).
    pub fn load(files: ServerTlsFiles, alpn: Vec<Vec<u8>>) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let ca_certs = load_certs(&files.ca)?;
        let roots = Arc::new(root_store(&files.ca, &ca_certs)?);
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Rustls {
                context: format!(
                    "server certificate {} with key {}",
                    files.cert.display(),
                    files.key.display()
                ),
                source,
            })?;

        let material = Material {
            provider,
            roots,
            ca_certs,
            ca_path: files.ca,
            cert_resolver: Arc::new(SingleCertAndKey::from(certified)),
            alpn,
        };
        let (crl_seen, crls) = match &files.crl {
            Some(path) => {
                let stamp = FileStamp::of(path).map_err(|e| TlsError::BadFile {
                    path: path.clone(),
                    reason: format!("cannot read the CRL: {e}"),
                })?;
                (Some(stamp), material.load_crls(path)?)
            }
            None => (None, Vec::new()),
        };
        let (acceptor, verifier) = material.build(crls)?;
        Ok(ServerTls {
            material,
            crl_path: files.crl,
            current: RwLock::new(Current {
                acceptor,
                verifier,
                crl_seen,
            }),
            last_check: Mutex::new(Instant::now()),
            check_interval: CRL_CHECK_INTERVAL,
            crl_generation: AtomicU64::new(0),
        })
    }

    /// The acceptor to use for the next connection. If the CRL file's mtime/len changed since
    /// the last build (checked at most about once per second), the `ServerConfig` is rebuilt
    /// with the new CRL and swapped in; if the new CRL is invalid, a warning is logged and the
    /// old config kept.
    ///
    /// The check is a `stat` (and, on change, a small file read) on the calling thread; cheap
    /// enough for an accept loop.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.reload_crl_if_changed();
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .acceptor
            .clone()
    }

    /// Checks a client's certificate chain (as presented in the handshake) against the CA,
    /// its validity period and the current CRL. Must pass before anything else happens on
    /// the connection.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), ClientCertError> {
        self.reload_crl_if_changed();
        let verifier = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .verifier
            .clone();
        let (end_entity, intermediates) = chain.split_first().ok_or(ClientCertError::Missing)?;
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(ClientCertError::from)
    }
}

impl Material {
    pub(super) fn build(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(TlsAcceptor, Arc<dyn ClientCertVerifier>), TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .with_crls(crls)
                // Certificates of a CA that publishes no CRL here are not rejected for that.
                .allow_unknown_revocation_status()
                .build()
                .map_err(|source| TlsError::Verifier {
                    context: format!(
                        "client certificate verifier for CA {}",
                        self.ca_path.display()
                    ),
                    source,
                })?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(rustls_err("server TLS versions"))?
            .with_client_cert_verifier(Arc::new(DeferredClientVerifier {
                inner: verifier.clone(),
            }))
            .with_cert_resolver(self.cert_resolver.clone());
        config.alpn_protocols = self.alpn.clone();
        // No resumption: a resumed session skips client certificate verification, so a
        // revoked or expired certificate could keep logging in. Every login here is a full
        // handshake anyway.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok((TlsAcceptor::from(Arc::new(config)), verifier))
    }
}
