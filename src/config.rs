//! The gateway's own configuration (`jitgate.yaml`): identity, TLS files, listeners, targets.
//!
//! Read once at start (and on reload), fully validated here so that later steps never meet a
//! bad value; files it names are opened (and their absence reported) by the steps that use them.
//! `raw` is the file as serde reads it; `load` (the top level) and `targets` validate it into
//! the `model` types; `limits`, `peers` and `telemetry` own their sections.

mod limits;
mod load;
mod model;
pub mod peers;
mod raw;
mod targets;
pub mod telemetry;
#[cfg(test)]
mod tests;

pub use load::is_instance_id;
pub use model::{
    Config, ConfigError, HostKeySource, Listen, PasswordSource, PgAdmin, PgTarget, SshAdmin,
    SshTarget, Target, TlsFiles, UpstreamTls,
};

pub use crate::yaml::LocatedMessage;
