//! The client's configuration file (TOML), shared by `cairn fs`, `cairn mount` and
//! `cairn admin`. `cairn dev` writes one next to its data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_common::transport::TlsPaths;
use serde::{Deserialize, Serialize};

/// The environment variable naming a client config file.
pub const CONFIG_ENV: &str = "CAIRN_CONFIG";
/// The file name looked for in the current directory when `CAIRN_CONFIG` is not set.
pub const CONFIG_FILE: &str = "cairn-client.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The namenode's address.
    pub namenode: SocketAddr,
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
        config.tls.relative_to(&base);
        if let Some(dir) = config.block_cache_dir.as_mut().filter(|d| d.is_relative()) {
            *dir = base.join(&*dir);
        }
        Ok(config)
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
