//! The gateway's own SSH host key: the identity its SSH listener shows to `ssh` inside the TLS
//! tunnel. It must persist across restarts, or every client's `known_hosts` entry would break.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("SSH host key {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("SSH host key {} is not an unencrypted OpenSSH private key: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error(
        "SSH host key {} is accessible by group or others (mode {mode:o}); run chmod 600 on it",
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot generate an SSH host key: {0}")]
    Generate(String),
}

/// Loads the host key at `path`, or creates an Ed25519 one there (mode 0600, OpenSSH format,
/// plus `<path>.pub` for operators' `known_hosts`) if the file does not exist. Like sshd, it
/// refuses a key file that group or others can access.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io = |error| HostKeyError::Io {
        path: path.to_path_buf(),
        error,
    };
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(HostKeyError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            load(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(io(e)),
    }
}

fn load(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let text = fs::read_to_string(path).map_err(|error| HostKeyError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    russh::keys::decode_secret_key(&text, None).map_err(|e| HostKeyError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let io = |error| HostKeyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    key.set_comment("jitgate gateway host key");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    // create_new: two gateways starting at once must not overwrite each other's key; the
    // loser reads the winner's.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return load(path),
        Err(e) => return Err(io(e)),
    };
    file.write_all(pem.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fs::write(&pub_path, format!("{public}\n")).map_err(|error| HostKeyError::Io {
        path: PathBuf::from(pub_path),
        error,
    })?;
    tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(russh::keys::HashAlg::Sha256), "created the gateway's SSH host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_loads_the_same_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ssh_host_ed25519_key");
        let created = load_or_create_host_key(&path)?;
        assert_eq!(created.algorithm(), Algorithm::Ed25519);
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        // The file is in OpenSSH's own format (what sshd and ssh-keygen read) and holds this key.
        let text = fs::read_to_string(&path)?;
        let parsed = PrivateKey::from_openssh(&text)?;
        assert_eq!(
            parsed.public_key().key_data(),
            created.public_key().key_data()
        );
        let public = fs::read_to_string(dir.path().join("ssh_host_ed25519_key.pub"))?;
        assert!(public.starts_with("ssh-ed25519 "), "{public}");

        let loaded = load_or_create_host_key(&path)?;
        assert_eq!(
            loaded.public_key().key_data(),
            created.public_key().key_data()
        );
        Ok(())
    }

    #[test]
    fn refuses_open_permissions_and_garbage() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key");
        fs::write(&path, "not a key")?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            load_or_create_host_key(&path),
            Err(HostKeyError::TooOpen { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        assert!(matches!(
            load_or_create_host_key(&path),
            Err(HostKeyError::Parse { .. })
        ));
        let missing_dir = dir.path().join("absent/key");
        assert!(matches!(
            load_or_create_host_key(&missing_dir),
            Err(HostKeyError::Io { .. })
        ));
        Ok(())
    }
}
