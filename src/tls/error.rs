//! The errors of this layer: `TlsError` for files and configs that cannot be built, and
//! `ClientCertError`, why a user's certificate was refused, in words for that user.

use std::path::PathBuf;

use rustls::server::VerifierBuilderError;
use rustls::CertificateError;
use rustls_pki_types::pem;

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
