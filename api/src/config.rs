//! Loading a role's TOML configuration (`exchange.toml`, `insurer.toml`, `gateway.toml`;
//! the host's and the miner's use [`parse_with_env`] too): one error type, one rule for
//! the key file's path, relative to the configuration's folder, and one for environment
//! overrides: `MSPACE_<ROLE>__<KEY>` sets `key` (`MSPACE_HOST__LISTEN=0.0.0.0:7400`),
//! `MSPACE_<ROLE>__<TABLE>__<KEY>` a key of a table (`MSPACE_HOST__ALERTS__WEBHOOK=...`).
//! A value is read as TOML if it parses as a TOML value (`25`, `true`, `["a", "b"]`),
//! else taken as a string. The double underscore keeps them apart from the other
//! `MSPACE_*` variables (`MSPACE_HOST_TOKEN`, `MSPACE_LOG`, ...).

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

/// Parses `text`, with the overrides `vars` holds for `role` (see the module's
/// documentation); the error says which variables were applied.
pub fn parse_with<C: DeserializeOwned>(
    text: &str,
    role: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<C, String> {
    let prefix = format!("MSPACE_{}__", role.to_ascii_uppercase());
    let overrides: Vec<(String, String)> = vars.filter(|(k, _)| k.starts_with(&prefix)).collect();
    if overrides.is_empty() {
        return toml::from_str(text).map_err(|e| e.to_string());
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for (k, v) in &overrides {
        let path: Vec<String> = k[prefix.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) || path.len() > 2 {
            return Err(format!(
                "{k}: name a key (MSPACE_{}__KEY) or a table's key (MSPACE_{}__TABLE__KEY)",
                role.to_ascii_uppercase(),
                role.to_ascii_uppercase()
            ));
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        let mut at = &mut table;
        for p in &path[..path.len() - 1] {
            let entry = at
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = match entry {
                toml::Value::Table(t) => t,
                _ => return Err(format!("{k}: {p} is not a table")),
            };
        }
        at.insert(path[path.len() - 1].clone(), value);
        names.push(k.clone());
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            format!("{e} (with {} from the environment)", names.join(", "))
        })
}

/// [`parse_with`] this process's environment.
pub fn parse_with_env<C: DeserializeOwned>(text: &str, role: &str) -> Result<C, String> {
    parse_with(text, role, std::env::vars())
}

/// A role's configuration file.
pub trait RoleConfig: DeserializeOwned {
    /// Its name in environment overrides (`MSPACE_<ROLE>__KEY`).
    const ROLE: &'static str;
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
    let mut c: C = parse_with_env(&text, C::ROLE).map_err(|reason| ConfigError::Invalid {
        path: shown.clone(),
        reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct C {
        listen: String,
        port: u16,
        #[serde(default)]
        list: Vec<String>,
        #[serde(default)]
        t: T,
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(default)]
        hook: Option<String>,
    }

    fn vars(v: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_environment_overrides_keys_and_table_keys() {
        let text = "listen = \"a:1\"\nport = 5\n";
        let c: C = parse_with(
            text,
            "host",
            vars(&[
                ("MSPACE_HOST__LISTEN", "0.0.0.0:7400"),
                ("MSPACE_HOST__PORT", "7"),
                ("MSPACE_HOST__LIST", "[\"x\", \"y\"]"),
                ("MSPACE_HOST__T__HOOK", "http://h/x"),
                // Other variables, and other roles', are left alone.
                ("MSPACE_HOST_TOKEN", "abc"),
                ("MSPACE_MINER__PORT", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c,
            C {
                listen: "0.0.0.0:7400".into(),
                port: 7,
                list: vec!["x".into(), "y".into()],
                t: T {
                    hook: Some("http://h/x".into())
                },
            }
        );
        let e = parse_with::<C>(text, "host", vars(&[("MSPACE_HOST__LSTEN", "x")])).unwrap_err();
        assert!(
            e.contains("lsten") && e.contains("MSPACE_HOST__LSTEN"),
            "{e}"
        );
        let e = parse_with::<C>(text, "host", vars(&[("MSPACE_HOST__PORT", "many")])).unwrap_err();
        assert!(e.contains("MSPACE_HOST__PORT"), "{e}");
        let e = parse_with::<C>(text, "host", vars(&[("MSPACE_HOST__", "x")])).unwrap_err();
        assert!(e.contains("name a key"), "{e}");
        let e =
            parse_with::<C>(text, "host", vars(&[("MSPACE_HOST__LISTEN__X", "x")])).unwrap_err();
        assert!(e.contains("listen is not a table"), "{e}");
    }
}
