//! The datanode's configuration file (TOML). Every field has a documented default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_common::config::{load_toml, resolve};
use cairn_common::transport::TlsPaths;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatanodeConfig {
    /// A name for people: logs, `cairn admin report`. Default `datanode`.
    #[serde(default = "default_name")]
    pub name: String,
    /// UDP address to serve QUIC on. Default `0.0.0.0:7071`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address clients and other datanodes use to reach this one. Default: `listen`, which
    /// must then be a specific address rather than `0.0.0.0`.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// The namenode's address.
    pub namenode: SocketAddr,
    /// The other members of the namenode group, when it has several: asked when
    /// `namenode` cannot be reached, and left for the leader any member names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namenodes: Vec<SocketAddr>,
    /// Directory holding the blocks. Default `/var/lib/cairn/datanode`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Bytes to leave free on the disk; writes are refused past it. Default 1 GiB.
    #[serde(default = "default_reserve")]
    pub reserve_bytes: u64,
    /// Most bytes of blocks to store, when less than the disk should be used. Default: no limit.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
    /// Most bytes per second this datanode sends as copies ordered by the namenode
    /// (re-replication), so repair leaves room for clients. Default: no limit.
    #[serde(default)]
    pub repair_bytes_per_sec: Option<u64>,
    /// The scrubber re-reads and re-hashes every stored block at most this fast, so that
    /// bit rot is found before the other copies are needed. 0 turns it off. Default 8 MiB/s.
    #[serde(default = "default_scrub_bytes_per_sec")]
    pub scrub_bytes_per_sec: u64,
    /// A scrub pass starts at most this often, in seconds. Default 604800 (a week).
    #[serde(default = "default_scrub_period_secs")]
    pub scrub_period_secs: u64,
    /// The failure domain this datanode is in: a rack, a power feed, a room, an availability
    /// zone. Replicas of a block go to as many different ones as there are. Default: none
    /// (all unlabelled datanodes are one domain).
    #[serde(default)]
    pub rack: String,
    /// Certificate files.
    pub tls: TlsPaths,
}

fn default_name() -> String {
    "datanode".into()
}
fn default_listen() -> SocketAddr {
    "0.0.0.0:7071".parse().expect("literal address")
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cairn/datanode")
}
/// The scrubber's default pace: a terabyte a day and a half.
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 8 << 20;

fn default_scrub_bytes_per_sec() -> u64 {
    DEFAULT_SCRUB_BYTES_PER_SEC
}
fn default_scrub_period_secs() -> u64 {
    7 * 24 * 3600
}
fn default_reserve() -> u64 {
    1 << 30
}

impl DatanodeConfig {
    pub fn new(
        name: &str,
        namenode: SocketAddr,
        data_dir: PathBuf,
        tls: TlsPaths,
    ) -> DatanodeConfig {
        DatanodeConfig {
            name: name.into(),
            listen: default_listen(),
            advertise: None,
            namenode,
            namenodes: Vec::new(),
            data_dir,
            reserve_bytes: default_reserve(),
            capacity_bytes: None,
            repair_bytes_per_sec: None,
            scrub_bytes_per_sec: default_scrub_bytes_per_sec(),
            scrub_period_secs: default_scrub_period_secs(),
            rack: String::new(),
            tls,
        }
    }

    /// Reads a TOML file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<DatanodeConfig> {
        let (mut config, base): (DatanodeConfig, _) = load_toml(path)?;
        config.tls.relative_to(&base);
        resolve(&base, &mut config.data_dir);
        config.validate()?;
        Ok(config)
    }

    /// Refuses values that would overflow a clock or a count later.
    pub fn validate(&self) -> anyhow::Result<()> {
        let most = cairn_common::config::MAX_PERIOD.as_secs();
        anyhow::ensure!(
            self.scrub_period_secs <= most,
            "scrub_period_secs ({}) is more than ten years ({most} s)",
            self.scrub_period_secs
        );
        Ok(())
    }

    /// The address to give the namenode, given the one actually bound.
    pub fn advertised(&self, bound: SocketAddr) -> anyhow::Result<SocketAddr> {
        if let Some(a) = self.advertise {
            return Ok(a);
        }
        anyhow::ensure!(
            !bound.ip().is_unspecified(),
            "listen is {bound}: set `advertise` to the address other machines reach this datanode at"
        );
        Ok(bound)
    }
}

/// Whatever a hand-edited datanode configuration says, it is refused with a message or
/// loads with values safe to use: no overflow of a clock or a count later.
#[cfg(test)]
mod fuzz {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cairn_common::fuzz_cases(256)))]

        #[test]
        fn whatever_a_config_file_says_it_is_refused_or_safe(
            edits in cairn_common::config::wild_edits(),
        ) {
            let tls = cairn_common::config::tls_stand_in("dn");
            let nn = "127.0.0.1:7070".parse().unwrap();
            let defaults = DatanodeConfig::new("dn1", nn, "data".into(), tls);
            let dir = tempfile::tempdir().unwrap();
            let loaded = cairn_common::config::load_edited(
                dir.path(), "datanode.toml", &defaults, &edits, DatanodeConfig::load,
            );
            let Some(config) = loaded else {
                return Ok(());
            };
            let period = Duration::from_secs(config.scrub_period_secs);
            prop_assert!(tokio::time::Instant::now().checked_add(period * 2).is_some());
            if let Some(rate) = config.repair_bytes_per_sec.filter(|r| *r > 0) {
                let copy = Duration::from_secs_f64(u32::MAX as f64 / rate as f64);
                prop_assert!(tokio::time::Instant::now().checked_add(copy).is_some());
            }
        }
    }
}
