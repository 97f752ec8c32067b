//! jitgate: an access gateway for PostgreSQL and SSH that leaves zero standing privileges.
//!
//! A connection flows through the modules in this order:
//!
//! ```text
//! tls        rustls server config: client certificate required, CRL honoured
//! identity   Identity (user, groups, serial) from the verified client certificate
//! config     the gateway's targets, listeners and files, validated once at load
//! policy     YAML grants; `policy::evaluate` alone makes a `Grant`
//! pg::startup   front door: SSLRequest / direct TLS / GSSENC / cancel / startup packet
//! jit        Provisioner: mint a least-privilege account for a Grant, drop it at close
//!            (jit::postgres roles, jit::linux users over an admin SSH connection);
//!            jit::liveness: each instance's lock on every target, the SSH watchdog
//! ssh_client russh client to SSH targets: pinned host key, key login, exec (below jit and ssh)
//! ssh::hostkey  the gateway's own persistent SSH host key
//! pg::upstream  log in to the target as the JIT role (SCRAM-SHA-256, password never shown)
//! pg::relay     splice client and upstream bytes untouched
//! pg::cancel    route CancelRequests by the gateway's own keys
//! audit::sftp       file operations decoded from a copy of an sftp channel
//! audit::recording  terminal recordings (asciicast v2), written off the relay's path
//! session    one connection's Session (spine: id, identity, target, grant, account, span; every
//!            audit event goes through it); live sessions: registry, lifetime, trust rechecks
//! control    the operator's control socket: live sessions, `sessions end`, locks
//! server     accept loops, reloads and shutdown
//! telemetry  OpenTelemetry (traces, metrics, audit lines as logs), off without an endpoint
//! certs      `jitgate certs init|issue|revoke` (rcgen; x509-cert for the subject)
//! doctor     `jitgate doctor`: is each target ready, and the exact fix where it is not
//! logsafe    `Untrusted`: client-chosen text escaped and capped for logs and refusals
//! sandbox    throwaway PostgreSQL and sshd targets (for `demo` and the tests)
//! demo       `jitgate demo`: sandbox + certificates + config + the gateway, in the foreground
//! ```
//!
//! Vocabulary: **client** = the user's side, **upstream** = the target; **grant** = a policy
//! decision; **lease** = one JIT account's life; **target** = a configured database or host.

pub mod audit;
pub mod certs;
pub mod config;
pub mod control;
pub mod demo;
pub mod doctor;
pub mod identity;
pub mod jit;
pub mod limits;
pub mod logsafe;
pub mod pg;
pub mod policy;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod session;
pub mod ssh;
pub mod ssh_client;
pub mod telemetry;
pub mod tls;
mod yaml;
