//! The user's side of a connection to the gateway (`jitgate tunnel`, and tests): presents the
//! user's certificate and verifies the gateway's.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::files::{load_certs, load_key, provider, root_store, rustls_err, VERSIONS};
use super::TlsError;

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
