//! The policy set the running gateway decides with: loaded from the directory at start and
//! replaced whole on a reload (SIGHUP), an invalid set refused. `server` holds the one store;
//! connections take `current()` when they decide.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{PolicyError, PolicySet};

/// The current policy set; replaced whole on a successful reload.
pub struct PolicyStore {
    dir: PathBuf,
    current: RwLock<Arc<PolicySet>>,
}

impl PolicyStore {
    pub fn load(dir: &Path) -> Result<Arc<Self>, PolicyError> {
        let set = PolicySet::load_dir(dir)?;
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(set)),
        }))
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the directory again; an invalid set is refused and the old one stays.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let set = PolicySet::load_dir(&self.dir)?;
        let n = set.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(n)
    }
}
