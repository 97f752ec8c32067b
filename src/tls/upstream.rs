//! The gateway's client side towards targets (`tls: require` or `verify-full` in a target's
//! `postgres:`): encrypt-only, or webpki against `tls_ca` with refusals the operator can act on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::CertificateError;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::files::{load_certs, provider, root_store, rustls_err, VERSIONS};
use super::TlsError;

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
