//! placeholder: filled in by its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub spiffe_id: Option<String>,
    pub serial: String,
}
