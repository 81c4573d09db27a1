//! Loading a role's TOML configuration (`exchange.toml`, `insurer.toml`): one error type and
//! one rule for the key file's path, relative to the configuration's folder.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// A role's configuration file.
pub trait RoleConfig: DeserializeOwned {
    /// The key file's path, as written (made absolute by [`load`]).
    fn key_file_mut(&mut self) -> &mut PathBuf;
    /// The checks past parsing; the error names the key.
    fn check(&self) -> Result<(), String>;
}

/// Reads, parses and checks the configuration at `path`.
pub fn load<C: RoleConfig>(path: &Path) -> Result<C, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut c: C = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let key = c.key_file_mut();
    if key.is_relative() {
        *key = path.parent().unwrap_or(Path::new(".")).join(&*key);
    }
    c.check().map_err(|reason| ConfigError::Invalid {
        path: shown,
        reason,
    })?;
    Ok(c)
}
