//! Policies: YAML grants (`policies/*.yaml`) and the access decision, deny by default.
//!
//! Comes after `identity` and before `jit`: `load` validates the files into a [`PolicySet`],
//! [`evaluate`] alone turns an identity + target + `user=` into a [`Grant`] or a [`Denial`];
//! [`PolicyStore`] holds the set in force and swaps it whole on a reload.

mod eval;
mod load;
mod model;
mod store;
#[cfg(test)]
mod tests;

pub use eval::{
    applicable_grants, evaluate, explain, explain_identity, no_access, offer, AccessRequest,
    Denial, Grant, Offer, MAX_REASON_CHARS, SHELL_BYPASS_NOTE,
};
pub use load::PolicyError;
pub use model::{GrantInfo, HomeMode, PolicySet, TargetKind};
pub use store::PolicyStore;

pub use crate::yaml::LocatedMessage;
