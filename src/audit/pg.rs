//! PLACEHOLDER (replaced by the decoder branch).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event")]
pub enum PgEvent {
    #[serde(rename = "pg.query")]
    Query { query: String },
}
#[derive(Debug, Clone, Copy, Default)]
pub struct PgAuditOptions {
    pub redact_parameters: bool,
}
pub struct PgDecoder;
impl PgDecoder {
    pub fn new(_o: PgAuditOptions) -> Self {
        PgDecoder
    }
    pub fn client(&mut self, _c: &[u8], _out: &mut Vec<PgEvent>) {}
    pub fn upstream(&mut self, _c: &[u8], _out: &mut Vec<PgEvent>) {}
}
