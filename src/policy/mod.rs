//! Policies: YAML grants (`policies/*.yaml`) and the access decision, deny by default.
//!
//! Comes after `identity` and before `jit`: `load` validates the files into a [`PolicySet`],
//! [`evaluate`] alone turns an identity + target + `user=` into a [`Grant`] or a [`Denial`].

mod eval;
mod load;
mod model;
#[cfg(test)]
mod tests;

pub use eval::{
    evaluate, explain, explain_identity, AccessRequest, Denial, Grant, MAX_REASON_CHARS,
};
pub use load::PolicyError;
pub use model::{HomeMode, PolicySet};

pub use crate::yaml::LocatedMessage;
