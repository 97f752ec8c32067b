//! The CRL the gateway honours: watched by metadata (at most once a second on the accept
//! path, on demand for live sessions), checked against the CA, and swapped in when it changes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;

use super::server::{Current, Material, ServerTls};
use super::TlsError;

/// How often `ServerTls::acceptor` looks at the CRL file's metadata.
pub(super) const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What tells us the CRL file changed. The inode catches an atomic rename even when mtime
/// and length happen to be equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = fs::metadata(path)?;
        Ok(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            ino: meta.ino(),
        })
    }
}

impl ServerTls {
    pub(super) fn reload_crl_if_changed(&self) {
        self.check_crl(false);
    }

    /// Looks at the CRL file now (not throttled to once a second as the accept path is),
    /// installs it if it changed, and returns the CRL generation: it grows by one each time a
    /// new CRL takes effect, whoever loaded it (this call or an accept), so a caller that saw
    /// it change must check every live session's certificate again (`session::trust`). The
    /// gateway's trust watcher calls this a few times a second, so a revocation reaches live
    /// sessions within 1 s.
    pub fn refresh_crl(&self) -> u64 {
        self.check_crl(true);
        self.crl_generation.load(Ordering::Acquire)
    }

    fn check_crl(&self, now: bool) -> bool {
        let Some(path) = &self.crl_path else {
            return false;
        };
        // One caller checks; the others take the current config instead of queueing.
        let mut last_check = match self.last_check.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if !now && last_check.elapsed() < self.check_interval {
            return false;
        }
        *last_check = Instant::now();

        let seen = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_seen;
        let stamp = match FileStamp::of(path) {
            Ok(stamp) => Some(stamp),
            Err(e) => {
                if seen.is_some() {
                    tracing::warn!(
                        crl = %path.display(), error = %e,
                        "CRL file unreadable; keeping the CRL loaded before"
                    );
                }
                None
            }
        };
        if stamp == seen {
            return false;
        }
        if stamp.is_none() {
            self.set_seen(None);
            return false;
        }
        let rebuilt = self
            .material
            .load_crls(path)
            .and_then(|crls| self.material.build(crls));
        match rebuilt {
            Ok((acceptor, verifier)) => {
                tracing::info!(crl = %path.display(), "CRL changed; new connections use it and live sessions are checked against it");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current {
                    acceptor,
                    verifier,
                    crl_seen: stamp,
                };
                self.crl_generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(e) => {
                tracing::warn!(
                    crl = %path.display(), error = %e,
                    "new CRL is not usable; keeping the CRL loaded before"
                );
                // Remember this version so the warning is not repeated every second; the next
                // change to the file is tried again.
                self.set_seen(stamp);
                false
            }
        }
    }

    fn set_seen(&self, stamp: Option<FileStamp>) {
        self.current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .crl_seen = stamp;
    }
}

impl Material {
    /// Every CRL in `path`, each checked to be signed by one of our CAs: webpki would otherwise
    /// only find a bad signature during a handshake and then reject every client of that CA.
    pub(super) fn load_crls(
        &self,
        path: &Path,
    ) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let pem_err = |source| TlsError::Pem {
            path: path.to_owned(),
            source,
        };
        let crls = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(pem_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err)?;
        let bad = |reason: String| TlsError::BadFile {
            path: path.to_owned(),
            reason,
        };
        if crls.is_empty() {
            return Err(bad("no `X509 CRL` PEM block in the file".into()));
        }
        let cas = self
            .ca_certs
            .iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, ca)| ca)
            .collect::<Vec<_>>();
        for crl in &crls {
            let (_, crl) = x509_parser::parse_x509_crl(crl)
                .map_err(|e| bad(format!("cannot parse the CRL: {e}")))?;
            let ca = cas
                .iter()
                .find(|ca| ca.subject() == crl.issuer())
                .ok_or_else(|| {
                    bad(format!(
                        "CRL issuer `{}` is not a CA in {}",
                        crl.issuer(),
                        self.ca_path.display()
                    ))
                })?;
            crl.verify_signature(ca.public_key()).map_err(|_| {
                bad(format!(
                    "CRL signature does not verify with the CA in {}",
                    self.ca_path.display()
                ))
            })?;
            if let Some(next) = crl.next_update() {
                if next.timestamp() < time::OffsetDateTime::now_utc().unix_timestamp() {
                    tracing::warn!(
                        crl = %path.display(), next_update = %next,
                        "CRL is past its nextUpdate (any `jitgate certs revoke` re-signs it)"
                    );
                }
            }
        }
        Ok(crls)
    }
}
