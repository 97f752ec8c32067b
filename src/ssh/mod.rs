//! The SSH bastion: `jitgate tunnel` and its preamble, the russh server that splices channels,
//! the pinned russh client used to reach targets, and the gateway's host key.

pub mod audit;
pub mod channel;
pub mod client;
pub mod hostkey;
pub mod preamble;
pub mod server;
pub mod session;
pub mod tunnel;
