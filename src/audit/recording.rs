//! PLACEHOLDER (replaced by the recording branch).
pub const DIR: &str = "recordings";
