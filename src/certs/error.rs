//! `CertError`: what `jitgate certs` reports, each naming the file or input at fault.

use std::io;
use std::path::{Path, PathBuf};

use crate::identity::IdentityError;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{} not found: run `jitgate certs init --dir {}` first", path.display(), dir.display())]
    CaMissing { path: PathBuf, dir: PathBuf },
    #[error(
        "{} already exists: refusing to replace the CA, which would invalidate every certificate \
         it issued; pass --force to replace it anyway",
        path.display()
    )]
    CaExists { path: PathBuf },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("invalid {what} {value:?}: {reason}")]
    BadInput {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    BadName(#[from] IdentityError),
    #[error("cannot {what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

pub(super) fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

pub(super) fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> CertError + 'a {
    move |source| CertError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}
