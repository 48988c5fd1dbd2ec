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

/// The longest period any setting may name: past it, adding it to a clock could overflow.
pub const MAX_PERIOD: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Values a hand-edited file may hold where a number goes, as the fuzz tests of each
/// configuration write them in.
pub const WILD_VALUES: &[&str] = &[
    "0",
    "-1",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "nan",
    "0.5",
    "\"\"",
    "[]",
    "true",
];

/// What the fuzz test of each configuration writes into a valid file: one to three values,
/// each a number of any size or something else a hand may write where a number goes.
#[cfg(any(test, feature = "fuzzing"))]
pub fn wild_edits() -> impl proptest::strategy::Strategy<Value = Vec<(usize, String)>> {
    use proptest::prelude::*;
    let value = prop_oneof![
        prop::sample::select(WILD_VALUES).prop_map(str::to_string),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
    ];
    proptest::collection::vec((any::<usize>(), value), 1..4)
}

/// Certificate paths named after `name` (never read), for configurations made in tests.
#[cfg(any(test, feature = "fuzzing"))]
pub fn tls_stand_in(name: &str) -> crate::transport::TlsPaths {
    crate::transport::TlsPaths {
        ca_cert: "ca.pem".into(),
        cert: format!("{name}.pem").into(),
        key: format!("{name}.key").into(),
        crl: None,
    }
}

/// `toml_text` with the values of some of its `key = value` lines replaced: each edit
/// names a line by its index among those lines (taken modulo their count) and the value
/// to write there. How the fuzz tests of each configuration edit a valid file.
pub fn edit_values(toml_text: &str, edits: &[(usize, String)]) -> String {
    let mut lines: Vec<String> = toml_text.lines().map(str::to_string).collect();
    let settable: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].contains(" = ") && !lines[*i].starts_with('['))
        .collect();
    if settable.is_empty() {
        return toml_text.to_string();
    }
    for (at, value) in edits {
        let i = settable[at % settable.len()];
        let key = lines[i].split(" = ").next().unwrap_or_default().to_string();
        lines[i] = format!("{key} = {value}");
    }
    lines.join("\n")
}

/// Writes `defaults` with `edits` made (see [`edit_values`]) to the file `name` in `dir`,
/// and loads it with `load`: how the fuzz test of each configuration reads a hand-edited
/// file. `None` when `load` refuses it.
pub fn load_edited<T>(
    dir: &Path,
    name: &str,
    defaults: &impl serde::Serialize,
    edits: &[(usize, String)],
    load: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> Option<T> {
    let path = dir.join(name);
    let text = toml::to_string(defaults).expect("a configuration serializes");
    std::fs::write(&path, edit_values(&text, edits)).expect("writing a configuration");
    load(&path).ok()
}
