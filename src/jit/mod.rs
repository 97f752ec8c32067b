//! Just-in-time accounts: mint a least-privilege account on a target for one `Grant`, and drop it
//! when the session ends. The lease (who, until when, which gateway) is written on the account
//! itself, so a reaper can clean up after a crash without any state of the gateway's own.

pub mod lease;
pub mod linux;
pub mod postgres;
pub mod reaper;

pub use lease::{LeaseId, PgLease};
pub use linux::LinuxLease;
