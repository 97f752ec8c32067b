//! `jitgate certs init|issue|revoke`: a small file-based CA for the gateway (rcgen; x509-cert
//! rebuilds the client subject, which rcgen cannot hold).
//!
//! `init` makes the user CA, the gateway's server certificate and an empty CRL; `issue` signs
//! client certificates that `identity` reads back; `revoke` rewrites the CRL that `tls` watches.
//! One file per command (`init`, `issue`, `revoke`); `ca` is the CA directory they share,
//! `subject` the subject with one OU per group.

mod ca;
mod error;
mod init;
mod issue;
mod revoke;
mod subject;
#[cfg(test)]
mod tests;

pub use ca::{CA_CERT, CA_KEY, CRL, CRL_NUMBER, REVOKED, SERVER_CERT, SERVER_KEY};
pub use error::CertError;
pub use init::{init, InitOptions};
pub use issue::{issue, parse_ttl, IssueOptions, Issued, DEFAULT_TRUST_DOMAIN};
pub use revoke::revoke;
