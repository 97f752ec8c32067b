//! rustls configuration, the first step of every connection: the gateway's server side
//! (client certificate required, CRL honoured and reloaded when the file changes) and the
//! client side towards upstream targets. Always the ring provider, never the process default.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    NoServerSessionStorage, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DistinguishedName};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use tokio_rustls::TlsAcceptor;

/// How often `ServerTls::acceptor` looks at the CRL file's metadata.
const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Both versions: TLS 1.2 for older clients (libpq before OpenSSL 1.1.1), 1.3 for the rest.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Rustls {
        context: String,
        source: rustls::Error,
    },
    #[error("{context}: {source}")]
    Verifier {
        context: String,
        source: VerifierBuilderError,
    },
}

/// Why a client certificate was refused, in words for the person holding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCertError {
    #[error("no client certificate was presented")]
    Missing,
    #[error("it has expired")]
    Expired,
    #[error("it is not valid yet")]
    NotValidYet,
    #[error("it has been revoked")]
    Revoked,
    #[error("it was not issued by this gateway's certificate authority")]
    UnknownIssuer,
    #[error("it is not a client certificate (extended key usage clientAuth missing)")]
    NotForClients,
    #[error("{0}")]
    Other(String),
}

impl From<rustls::Error> for ClientCertError {
    fn from(e: rustls::Error) -> Self {
        match &e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    ClientCertError::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    ClientCertError::NotValidYet
                }
                CertificateError::Revoked => ClientCertError::Revoked,
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    ClientCertError::UnknownIssuer
                }
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => ClientCertError::NotForClients,
                // CertificateError is non-exhaustive: anything new is reported as rustls words it.
                _ => ClientCertError::Other(e.to_string()),
            },
            _ => ClientCertError::Other(e.to_string()),
        }
    }
}

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
    material: Material,
    crl_path: Option<PathBuf>,
    current: RwLock<Current>,
    last_check: Mutex<Instant>,
    check_interval: Duration,
    /// How many CRLs were installed after the first (see `refresh_crl`).
    crl_generation: AtomicU64,
}

/// Everything a `ServerConfig` is built from, except the CRL.
struct Material {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    /// The CA certificates again, to check a CRL's signature before trusting it.
    ca_certs: Vec<CertificateDer<'static>>,
    ca_path: PathBuf,
    cert_resolver: Arc<dyn ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
}

struct Current {
    acceptor: TlsAcceptor,
    /// The real (webpki + CRL) verifier behind the acceptor's deferring one.
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CRL file as last seen (whether or not loading it worked): `None` = missing.
    crl_seen: Option<FileStamp>,
}

/// What tells us the CRL file changed. The inode catches an atomic rename even when mtime
/// and length happen to be equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = fs::metadata(path)?;
        Ok(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        })
    }
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

    fn reload_crl_if_changed(&self) {
        self.check_crl(false);
    }

    /// Looks at the CRL file now (not throttled to once a second as the accept path is),
    /// installs it if it changed, and returns the CRL generation: it grows by one each time a
    /// new CRL takes effect, whoever loaded it (this call or an accept), so a caller that saw
    /// it change must check every live session's certificate again (`session::trust`). The
    /// gateway's trust watcher calls this a few times a second, so a revocation reaches live
    /// sessions within 1 s.
    pub fn refresh_crl(&self) -> u64 {
        self.check_crl(true);
        self.crl_generation.load(Ordering::Acquire)
    }

    fn check_crl(&self, now: bool) -> bool {
        let Some(path) = &self.crl_path else {
            return false;
        };
        // One caller checks; the others take the current config instead of queueing.
        let mut last_check = match self.last_check.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if !now && last_check.elapsed() < self.check_interval {
            return false;
        }
        *last_check = Instant::now();

        let seen = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_seen;
        let stamp = match FileStamp::of(path) {
            Ok(stamp) => Some(stamp),
            Err(e) => {
                if seen.is_some() {
                    tracing::warn!(
                        crl = %path.display(), error = %e,
                        "CRL file unreadable; keeping the CRL loaded before"
                    );
                }
                None
            }
        };
        if stamp == seen {
            return false;
        }
        if stamp.is_none() {
            self.set_seen(None);
            return false;
        }
        let rebuilt = self
            .material
            .load_crls(path)
            .and_then(|crls| self.material.build(crls));
        match rebuilt {
            Ok((acceptor, verifier)) => {
                tracing::info!(crl = %path.display(), "CRL changed; new connections use it and live sessions are checked against it");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current {
                    acceptor,
                    verifier,
                    crl_seen: stamp,
                };
                self.crl_generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                tracing::warn!(
                    crl = %path.display(), error = %e,
                    "new CRL is not usable; keeping the CRL loaded before"
                );
                // Remember this version so the warning is not repeated every second; the next
                // change to the file is tried again.
                self.set_seen(stamp);
                false
            }
        }
    }

    fn set_seen(&self, stamp: Option<FileStamp>) {
        self.current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_seen = stamp;
    }
}

impl Material {
    /// Every CRL in `path`, each checked to be signed by one of our CAs: webpki would otherwise
    /// only find a bad signature during a handshake and then reject every client of that CA.
    fn load_crls(
        &self,
        path: &Path,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let pem_err = |source| TlsError::Pem {
            path: path.to_owned(),
            source,
        };
        let crls = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(pem_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err)?;
        let bad = |reason: String| TlsError::BadFile {
            path: path.to_owned(),
            reason,
        };
        if crls.is_empty() {
            return Err(bad("no `X509 CRL` PEM block in the file".into()));
        }
        let cas = self
            .ca_certs
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, ca)| ca)
            .collect::<Vec<_>>();
        for crl in &crls {
            let (_, crl) = x509_parser::parse_x509_crl(crl)
                .map_err(|e| bad(format!("cannot parse the CRL: {e}")))?;
            let ca = cas
                .iter()
                .find(|ca| ca.subject() == crl.issuer())
                .ok_or_else(|| {
                    bad(format!(
                        "CRL issuer `{}` is not a CA in {}",
                        crl.issuer(),
                        self.ca_path.display()
                    ))
                })?;
            crl.verify_signature(ca.public_key()).map_err(|_| {
                bad(format!(
                    "CRL signature does not verify with the CA in {}",
                    self.ca_path.display()
                ))
            })?;
            if let Some(next) = crl.next_update() {
                if next.timestamp() < time::OffsetDateTime::now_utc().unix_timestamp() {
                    tracing::warn!(
                        crl = %path.display(), next_update = %next,
                        "CRL is past its nextUpdate (any `jitgate certs revoke` re-signs it)"
                    );
                }
            }
        }
        Ok(crls)
    }

    fn build(
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

/// Upstream client config (gateway → target). `verify_ca: None` = encrypt but don't verify
/// (libpq `sslmode=require`: any certificate is accepted, but handshake signatures are still
/// checked with the provider's algorithms). `Some(ca)` = verify-full against that CA: the
/// name given to `connect` must match the target's certificate.
pub fn upstream_client_config(verify_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(rustls_err("client TLS versions"))?;
    let config = match verify_ca {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
            .with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(root_store(ca, &load_certs(ca)?)?);
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        context: format!("target certificate verifier for CA {}", ca.display()),
                        source,
                    })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TargetCa {
                    inner,
                    ca: ca.to_path_buf(),
                }))
                .with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// Client config presenting a client certificate (for tests and the future `jitgate tunnel`),
/// verifying the server against `ca`.
pub fn client_config_with_cert(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(ca, &load_certs(ca)?)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(rustls_err("client TLS versions"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| TlsError::Rustls {
            context: format!(
                "client certificate {} with key {}",
                cert.display(),
                key.display()
            ),
            source,
        })?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// Client config for `jitgate tunnel`: presents the user's certificate, sends the *target*
/// name as SNI (the gateway routes by it), but verifies the gateway's certificate against
/// `gateway_name` — the name the gateway was reached at — since the target name is not
/// (and need not be) in the gateway's certificate.
pub fn tunnel_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    gateway_name: ServerName<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = Arc::new(root_store(ca, &load_certs(ca)?)?);
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            context: format!("gateway certificate verifier for CA {}", ca.display()),
            source,
        })?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(rustls_err("client TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GatewayNameVerifier {
            inner,
            gateway_name,
        }))
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| TlsError::Rustls {
            context: format!(
                "client certificate {} with key {}",
                cert.display(),
                key.display()
            ),
            source,
        })?;
    Ok(Arc::new(config))
}

/// Full WebPKI verification of the gateway's certificate, for a fixed name.
#[derive(Debug)]
struct GatewayNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    gateway_name: ServerName<'static>,
}

impl ServerCertVerifier for GatewayNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            &self.gateway_name,
            ocsp_response,
            now,
        )
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_err(context: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls {
        context: context.to_owned(),
        source,
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::BadFile {
            path: path.to_owned(),
            reason: "no `CERTIFICATE` PEM block in the file".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::BadFile {
            path: path.to_owned(),
            reason: "no private key PEM block (PKCS#8, PKCS#1 or SEC1) in the file".into(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

fn root_store(path: &Path, certs: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert.clone()).map_err(|source| TlsError::Rustls {
            context: format!("CA certificate in {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// `sslmode=require`: the target's certificate is not checked, but the handshake signature
/// is, so the session key is at least bound to whoever holds that certificate's key.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-full` against a target's `tls_ca`: webpki decides; its refusals are reworded for
/// the operator, whose log would otherwise say only `UnknownIssuer`, or `BadSignature` when the
/// target's certificate names an issuer with the same subject as the CA in `tls_ca` (two CAs
/// from `jitgate certs init`, say), or a bare name mismatch. Both the admin connection and the
/// JIT login go through here, so both log the same reason.
#[derive(Debug)]
struct TargetCa {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    ca: PathBuf,
}

impl ServerCertVerifier for TargetCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(problem) => {
                    match TargetCertificateError::explain(&problem, &self.ca, server_name) {
                        Some(explained) => rustls::Error::InvalidCertificate(
                            CertificateError::Other(rustls::OtherError(Arc::new(explained))),
                        ),
                        None => rustls::Error::InvalidCertificate(problem),
                    }
                }
                other => other,
            })
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

/// Why a target's certificate failed `verify-full`, in the operator's terms. rustls shows it
/// with `Debug` (`CertificateError::Other`), so `Debug` prints the message too.
#[derive(thiserror::Error)]
enum TargetCertificateError {
    #[error("the target's certificate is not signed by the CA in tls_ca {} (webpki: {problem:?})", ca.display())]
    NotFromCa {
        ca: PathBuf,
        problem: CertificateError,
    },
    #[error("the target's certificate does not name its configured host {host:?} (webpki: {problem}); set host to a name in the certificate, or reissue it")]
    WrongName {
        host: String,
        problem: CertificateError,
    },
}

impl TargetCertificateError {
    fn explain(problem: &CertificateError, ca: &Path, host: &ServerName<'_>) -> Option<Self> {
        match problem {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Some(TargetCertificateError::NotFromCa {
                    ca: ca.to_path_buf(),
                    problem: problem.clone(),
                })
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Some(TargetCertificateError::WrongName {
                    host: host.to_str().into_owned(),
                    problem: problem.clone(),
                })
            }
            // Expiry, revocation, usage and the rest: rustls's own words say it already.
            _ => None,
        }
    }
}

impl fmt::Debug for TargetCertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
