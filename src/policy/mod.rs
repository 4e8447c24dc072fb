//! Daemon configuration and the auditor-facing policy files.
//!
//! The config file (`palisade.toml`, read with figment so `PALISADE_*` environment
//! variables can override it) says *where* things are. The policy directory says *what is
//! allowed*: one concern per TOML file, every key known, every problem reported at once
//! with file, line, column and key.
//!
//! Architecture invariant: nothing here opens a socket or the database; loading returns
//! either a fully checked [`Policy`] or every problem found.
#![forbid(unsafe_code)]

mod files;
pub mod render;

pub use files::*;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The daemon's config file: locations only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding the policy TOML files.
    pub policy_dir: PathBuf,
    /// Private state directory (database); must be 0700.
    pub state_dir: PathBuf,
    /// 32-byte data key (raw, or 64 hex characters): a path or `credential:NAME`.
    pub data_key: String,
    /// argon2id hash (PHC string) of the server-wide authentication string: a path or
    /// `credential:NAME`.
    pub auth_string_hash: String,
    /// Where the rendered systemd drop-ins are installed (e.g. `/etc/systemd/system`);
    /// `check` compares them with the policy.
    #[serde(default)]
    pub rendered_systemd_dir: Option<PathBuf>,
    /// Where the rendered nftables ruleset is installed; `check` compares it.
    #[serde(default)]
    pub rendered_nftables: Option<PathBuf>,
    /// Where the config file itself was read from (filled in by [`Config::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        if !path.exists() {
            return Err(format!("{}: config file not found", path.display()));
        }
        let mut cfg: Config = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("PALISADE_").only(&["policy_dir", "state_dir"]))
            .extract()
            .map_err(|e| format!("{}: {}", path.display(), e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.policy_dir = absolutise(base, &cfg.policy_dir);
        cfg.state_dir = absolutise(base, &cfg.state_dir);
        cfg.rendered_systemd_dir = cfg.rendered_systemd_dir.map(|p| absolutise(base, &p));
        cfg.rendered_nftables = cfg.rendered_nftables.map(|p| absolutise(base, &p));
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }

    /// Resolve a secret location (`credential:NAME` or a path relative to the config).
    pub fn resolve_secret_path(&self, spec: &str) -> Result<PathBuf, String> {
        resolve_location(self.path.parent().unwrap_or(Path::new(".")), spec)
    }
}

fn absolutise(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `credential:NAME` → `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`);
/// anything else is a path, relative to `base` unless absolute.
pub fn resolve_location(base: &Path, spec: &str) -> Result<PathBuf, String> {
    if let Some(name) = spec.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("invalid credential name {name:?}"));
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            format!("{spec}: CREDENTIALS_DIRECTORY is not set (not started by systemd with LoadCredential=)")
        })?;
        Ok(PathBuf::from(dir).join(name))
    } else {
        Ok(absolutise(base, Path::new(spec)))
    }
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.key, self.message
        )
    }
}

/// Every problem found while loading a policy directory.
#[derive(Debug, Clone)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}
