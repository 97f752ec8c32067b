//! The Postgres side of the gateway: front door, upstream login, splice and cancel routing.
//! `session::handle` walks one client connection through all of them.

pub mod cancel;
pub mod message;
pub mod options;
pub mod relay;
pub mod session;
pub mod startup;
pub mod upstream;
