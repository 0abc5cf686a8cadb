//! The callers in force, swapped whole on reload; streams hear of each reload.

use super::*;

/// The live set of callers, replaced whole on reload.
#[derive(Debug)]
pub struct CallerRegistry {
    current: std::sync::RwLock<Arc<Callers>>,
    path: Option<std::path::PathBuf>,
    /// Counts reloads, so long-lived calls learn of each one.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl CallerRegistry {
    /// A registry that reloads from `path` (or never, without one).
    pub fn new(callers: impl Into<Arc<Callers>>, path: Option<std::path::PathBuf>) -> Self {
        let callers = callers.into();
        for w in callers.warnings() {
            tracing::warn!("{w}");
        }
        CallerRegistry {
            current: std::sync::RwLock::new(callers),
            path,
            reloads: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes each time a new set of callers comes in force.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The callers now in force.
    pub fn current(&self) -> Arc<Callers> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The file the callers come from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the callers file; on any error (or a blank file) keeps the
    /// current set and says why.
    pub fn reload(&self) -> Result<usize, CallersError> {
        let path = self.path.as_deref().ok_or(CallersError::NoFile)?;
        let callers = Callers::reload(path)?;
        for w in callers.warnings() {
            tracing::warn!("{w}");
        }
        let count = callers.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(callers);
        self.reloads.send_modify(|n| *n += 1);
        Ok(count)
    }
}
