//! rustls configuration, the first step of every connection: the gateway's server side
//! (client certificate required, CRL honoured and reloaded when the file changes) and the
//! client side towards upstream targets. Always the ring provider, never the process default.
//!
//! `server` (the gateway's listener) and `crl` (its revocation list), `upstream` (towards
//! targets), `client` (the user's side, `jitgate tunnel`); `files` reads the PEM they all use.

mod client;
mod crl;
mod error;
mod files;
mod server;
#[cfg(test)]
mod tests;
mod upstream;

pub use client::{client_config_with_cert, tunnel_client_config};
pub use error::{ClientCertError, TlsError};
pub use server::{ServerTls, ServerTlsFiles};
pub use upstream::upstream_client_config;
