//! The CA directory and what every command shares: its file names and modes, the issuer
//! loaded from it, atomic writes (the gateway watches the CRL), random serial numbers.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rcgen::{Issuer, KeyPair, SerialNumber};

use crate::secret::Secret;

use super::error::io_err;
use super::CertError;

/// File names inside the CA directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const CRL: &str = "crl.pem";
pub const CRL_NUMBER: &str = "crl.number";
pub const REVOKED: &str = "revoked.txt";

pub(super) const KEY_MODE: u32 = 0o600;
pub(super) const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// A random positive 16-byte serial (RFC 5280 §4.1.2.2: positive, at most 20 octets). The
/// first byte is kept in 0x01..=0x7f so the DER INTEGER is exactly 16 bytes, without a sign pad.
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    SerialNumber::from_slice(&bytes)
}
pub(super) fn read_ca_file(ca_dir: &Path, name: &str) -> Result<Secret<String>, CertError> {
    let path = ca_dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Secret::new(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CertError::CaMissing {
            path,
            dir: ca_dir.to_owned(),
        }),
        Err(e) => Err(io_err(&path, "read")(e)),
    }
}

pub(super) fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_pem = read_ca_file(ca_dir, CA_CERT)?;
    let key_pem = read_ca_file(ca_dir, CA_KEY)?;
    let key = KeyPair::from_pem(key_pem.expose()).map_err(|e| CertError::BadFile {
        path: ca_dir.join(CA_KEY),
        reason: format!("not a PKCS#8 PEM private key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(cert_pem.expose(), key).map_err(|e| CertError::BadFile {
        path: ca_dir.join(CA_CERT),
        reason: format!("not a usable CA certificate: {e}"),
    })
}

pub(super) fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err(dir, "create directory"))
}

/// Write via a temporary file in the same directory, created with `mode` from the start (no
/// moment where a key is readable by others), then rename over `path`: readers such as the
/// gateway's CRL watcher see the old file or the new one, never half of one.
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or(CertError::Internal("output path has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.write_all(contents).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "sync"))?;
        fs::rename(&tmp, path).map_err(io_err(path, "replace"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here loses nothing already visible.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
