//! The SSH bastion: `jitgate tunnel` and its preamble, the russh server that splices channels,
//! and the gateway's host key. The pinned russh client that reaches targets is `ssh_client`,
//! below both this module and `jit`.

pub mod audit;
pub mod channel;
pub mod hostkey;
pub mod preamble;
pub mod server;
pub mod session;
pub mod tunnel;
