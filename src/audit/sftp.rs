//! PLACEHOLDER (replaced by the sftp branch).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename = "ssh.sftp")]
pub struct SftpEvent {
    pub path: String,
}
