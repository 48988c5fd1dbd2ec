//! The client's configuration file (TOML), shared by `cairn fs`, `cairn mount` and
//! `cairn admin`. `cairn dev` writes one next to its data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_common::transport::TlsPaths;
use serde::{Deserialize, Serialize};

/// The environment variable naming a client config file.
pub const CONFIG_ENV: &str = "CAIRN_CONFIG";
/// The file name looked for in the current directory when `CAIRN_CONFIG` is not set.
pub const CONFIG_FILE: &str = "cairn-client.toml";

/// Most blocks moved at once per open file or read.
pub const MAX_CONCURRENCY: usize = 1024;
/// Largest cache, in MiB (16 TiB).
pub const MAX_CACHE_MIB: u64 = 1 << 24;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The namenode's address.
    pub namenode: SocketAddr,
    /// The other members of the namenode group, when it has several: asked when
    /// `namenode` cannot be reached, and left for the leader any member names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namenodes: Vec<SocketAddr>,
    /// A write succeeds only once every block is on at least this many datanodes (capped at
    /// the file's replication). Fewer, and the write fails with EIO. Default 2.
    #[serde(default = "default_min_replicas")]
    pub min_replicas: u8,
    /// Blocks uploaded at once per open file. Default 4.
    #[serde(default = "default_write_concurrency")]
    pub write_concurrency: usize,
    /// Blocks fetched at once per read. Default 8.
    #[serde(default = "default_read_concurrency")]
    pub read_concurrency: usize,
    /// Memory for cached blocks, in MiB. Blocks are cached by hash, so never stale. Default 256.
    #[serde(default = "default_cache_mib")]
    pub block_cache_mib: u64,
    /// A directory for blocks kept on local disk, between reads and across restarts; none
    /// by default. Blocks are verified when read back, so a damaged cache costs a refetch.
    #[serde(default)]
    pub block_cache_dir: Option<PathBuf>,
    /// Disk for cached blocks in `block_cache_dir`, in MiB. Default 4096.
    #[serde(default = "default_disk_cache_mib")]
    pub block_cache_disk_mib: u64,
    /// Ask datanodes to fsync every block before acknowledging it. Default false: a close
    /// returns once every block is on `min_replicas` datanodes, and an `fsync()` of the file
    /// has the datanodes put its blocks on stable storage first.
    #[serde(default)]
    pub sync_blocks: bool,
    /// Every create and unlink waits for the namenode (NFS's `wsync`, CephFS's): no
    /// directory delegations, no changes answered here and sent later.
    #[serde(default)]
    pub wsync: bool,
    /// Certificate files.
    pub tls: TlsPaths,
}

fn default_min_replicas() -> u8 {
    2
}
fn default_write_concurrency() -> usize {
    4
}
fn default_read_concurrency() -> usize {
    8
}
fn default_cache_mib() -> u64 {
    256
}
fn default_disk_cache_mib() -> u64 {
    4096
}

impl ClientConfig {
    pub fn new(namenode: SocketAddr, tls: TlsPaths) -> ClientConfig {
        ClientConfig {
            namenode,
            namenodes: Vec::new(),
            min_replicas: default_min_replicas(),
            write_concurrency: default_write_concurrency(),
            read_concurrency: default_read_concurrency(),
            block_cache_mib: default_cache_mib(),
            block_cache_dir: None,
            block_cache_disk_mib: default_disk_cache_mib(),
            sync_blocks: false,
            wsync: false,
            tls,
        }
    }

    /// Reads a TOML file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
        let (mut config, base): (ClientConfig, _) = cairn_common::config::load_toml(path)?;
        config
            .validate()
            .with_context(|| format!("in {}", path.display()))?;
        config.tls.relative_to(&base);
        if let Some(dir) = config.block_cache_dir.as_mut().filter(|d| d.is_relative()) {
            *dir = base.join(&*dir);
        }
        Ok(config)
    }

    /// Refuses values that would lose writes or exhaust the host: `min_replicas = 0` would
    /// acknowledge blocks no datanode holds, no concurrency would never move a block, and a
    /// cache past [`MAX_CACHE_MIB`] is a typo (its size in bytes would not even fit).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=16).contains(&self.min_replicas),
            "min_replicas must be between 1 and 16, not {}",
            self.min_replicas
        );
        for (name, n) in [
            ("write_concurrency", self.write_concurrency),
            ("read_concurrency", self.read_concurrency),
        ] {
            anyhow::ensure!(
                (1..=MAX_CONCURRENCY).contains(&n),
                "{name} must be between 1 and {MAX_CONCURRENCY}, not {n}"
            );
        }
        for (name, mib) in [
            ("block_cache_mib", self.block_cache_mib),
            ("block_cache_disk_mib", self.block_cache_disk_mib),
        ] {
            anyhow::ensure!(
                mib <= MAX_CACHE_MIB,
                "{name} must be at most {MAX_CACHE_MIB} (16 TiB), not {mib}"
            );
        }
        Ok(())
    }

    /// The config file to use: `explicit`, else `$CAIRN_CONFIG`, else `./cairn-client.toml`.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
        if let Some(p) = explicit {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV) {
            return Ok(PathBuf::from(p));
        }
        let here = PathBuf::from(CONFIG_FILE);
        if here.exists() {
            return Ok(here);
        }
        Err(format!(
            "no client configuration: pass --config, set {CONFIG_ENV}, or run from a directory \
             holding {CONFIG_FILE} (cairn dev writes one)"
        ))
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cairn_common::fuzz_cases(256)))]

        #[test]
        fn whatever_a_config_file_says_it_is_refused_or_safe(
            edits in cairn_common::config::wild_edits(),
        ) {
            let tls = cairn_common::config::tls_stand_in("me");
            let mut defaults = ClientConfig::new("127.0.0.1:7070".parse().unwrap(), tls);
            defaults.block_cache_dir = Some("cache".into());
            let dir = tempfile::tempdir().unwrap();
            let loaded = cairn_common::config::load_edited(
                dir.path(), "client.toml", &defaults, &edits, ClientConfig::load,
            );
            let Some(config) = loaded else {
                return Ok(());
            };
            // What the client does with them: a write waits for at least one replica, and
            // the caches' sizes in bytes fit.
            prop_assert!(config.min_replicas >= 1);
            prop_assert!(config.write_concurrency >= 1 && config.read_concurrency >= 1);
            prop_assert!(config.block_cache_mib.checked_mul(1 << 20).is_some());
            prop_assert!(config.block_cache_disk_mib.checked_mul(1 << 20).is_some());
        }
    }

    #[test]
    fn a_config_that_would_lose_writes_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "namenode = \"127.0.0.1:7070\"\nmin_replicas = 0\n[tls]\nca_cert = \"ca.pem\"\n\
             cert = \"me.pem\"\nkey = \"me.key\"\n",
        )
        .unwrap();
        let err = format!("{:#}", ClientConfig::load(&path).unwrap_err());
        assert!(
            err.contains("min_replicas must be between 1 and 16, not 0"),
            "{err}"
        );
        assert!(err.contains("client.toml"), "{err}");
    }
}
