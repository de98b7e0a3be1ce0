//! Reloading the configuration file (SIGHUP and `POST /reload`): read, validate, apply
//! the command-line overrides again, and swap the snapshot; on any error the running
//! configuration stays.

use crate::config::{self, LoadError};
use crate::proxy::Shared;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (sluice was started without --config)")]
    NoFile,
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("applying the command-line flags")]
    Override(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Unsupported(#[from] crate::proxy::server::BindError),
}

/// Reloads the config file into `shared`.
pub fn reload(shared: &Shared) -> Result<(), ReloadError> {
    let _edit = shared.edits.lock().unwrap_or_else(|p| p.into_inner());
    let path = shared.config_path.as_deref().ok_or(ReloadError::NoFile)?;
    let mut config = config::load(path)?;
    if let Some(overrides) = &shared.overrides {
        overrides(&mut config).map_err(ReloadError::Override)?;
    }
    crate::proxy::server::check_supported(&config)?;
    let old = shared.config.load();
    if old.listeners != config.listeners
        || old.admin.as_ref().map(|a| a.address) != config.admin.as_ref().map(|a| a.address)
    {
        tracing::warn!("listener and admin address changes take effect at the next restart");
    }
    shared.apply(config);
    tracing::info!(path = %path.display(), "configuration reloaded");
    Ok(())
}
