//! SSH: the gateway's host key and the russh client helpers used to reach SSH targets.

pub mod client;
pub mod hostkey;
