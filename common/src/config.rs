//! Reading the TOML configuration files every daemon and client takes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Parses the TOML file at `path`. Returns it with the directory that relative paths in it
/// are relative to: the file's own.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> anyhow::Result<(T, PathBuf)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    Ok((value, base))
}

/// `path`, resolved against `base` when relative.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}
