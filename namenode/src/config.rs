//! The namenode's configuration file (TOML). Every field has a documented default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_common::config::{load_toml, resolve};
use cairn_common::transport::TlsPaths;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamenodeConfig {
    /// UDP address to serve QUIC on. Default `0.0.0.0:7070`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The namenode group: the address of every member (where the others reach it), the
    /// same list in the same order on each. The first founds the group with its
    /// namespace and adds the others as they come up; each of the others, started with an
    /// empty `meta_dir`, takes the namespace from the leader. Empty, the default: a
    /// namenode alone (a group of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<SocketAddr>,
    /// This namenode's address in `group`, when `listen` is not it (a wildcard address).
    /// Default: `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Directory of the metadata database (RocksDB). Default `/var/lib/cairn/namenode`.
    #[serde(default = "default_meta_dir")]
    pub meta_dir: PathBuf,
    /// Replicas per block for files whose directory sets nothing else. Default 3.
    #[serde(default = "default_replication")]
    pub default_replication: u8,
    /// How often datanodes send heartbeats, in milliseconds. Default 3000.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// A datanode silent for this long is dead: its replicas are not handed out. Default 30000.
    #[serde(default = "default_dead_timeout_ms")]
    pub dead_timeout_ms: u64,
    /// When an acknowledged change reaches the disk. `"window"`: the metadata log is
    /// synced within `metadata_sync_window_ms` of a change, and at once by a barrier (the
    /// `fsync` of a file or directory), as ext4 and XFS do: a power loss of the namenode's
    /// host loses at most the window's changes, never one a barrier returned for; a crash
    /// of the namenode's process loses nothing. `"always"`: every change is synced before
    /// it is acknowledged. Default `"window"`.
    #[serde(default)]
    pub metadata_sync: MetadataSync,
    /// The longest a change waits to be synced, with `metadata_sync = "window"`. Default 5.
    #[serde(default = "default_metadata_sync_window_ms")]
    pub metadata_sync_window_ms: u64,
    /// `false` never syncs the metadata log: a machine crash loses acknowledged changes,
    /// barriers included; only for throwaway clusters. Default true.
    #[serde(default = "default_true")]
    pub sync_metadata: bool,
    /// A client that has not renewed its open files for this long is taken for gone, and
    /// files it held with no name left are freed. After a restart, files unlinked while open
    /// wait this long for their clients to claim them again. At least three of the clients'
    /// renewal intervals (5 s). Default 30000.
    #[serde(default = "default_open_lease_ms")]
    pub open_lease_ms: u64,
    /// Most block copies one datanode sends, or receives, at a time when blocks are brought
    /// back to their replication. Default 4.
    #[serde(default = "default_repair_copies_per_node")]
    pub repair_copies_per_node: usize,
    /// Safe mode after a start ends once this fraction of the referenced blocks has a live
    /// replica reported (and stayed so for `safemode_extension_ms`). Default 0.999.
    #[serde(default = "default_safemode_threshold")]
    pub safemode_threshold: f64,
    /// Default 3000.
    #[serde(default = "default_safemode_extension_ms")]
    pub safemode_extension_ms: u64,
    /// A block nothing references (its files removed or overwritten, or uploaded by a client
    /// that never committed it) is deleted from the datanodes once it has stayed so this
    /// long. At least two of the clients' renewal intervals (5 s). Default 300000.
    #[serde(default = "default_gc_grace_ms")]
    pub gc_grace_ms: u64,
    /// Removed files stay in their remover's trash (`/.trash/<uid>`, `cairn fs restore`)
    /// this long before they are removed for good; 0 removes them at once. Default 86400.
    #[serde(default = "default_trash_retention_secs")]
    pub trash_retention_secs: u64,
    /// Whether a file replaced by a rename (an editor's save, `mv new old`, SQLite's and
    /// git's lock files) goes to the trash too. Off by default: such files are replaced for
    /// good, as on a local disk and in HDFS, and a busy mount does not fill its trash with
    /// old versions. Default false.
    #[serde(default)]
    pub trash_replaced: bool,
    /// The most of the datanodes' capacity the trash may hold, in percent, its files
    /// counted once per replica: past it, the files removed longest ago go for good first.
    /// 0: no bound but the retention. Default 10.
    #[serde(default = "default_trash_max_percent")]
    pub trash_max_percent: u8,
    /// When the datanodes' free space falls below this share of their capacity (percent),
    /// the trash gives up its oldest files until it is back, so that a write does not fail
    /// for space the trash holds. The space comes back once the removed files' blocks are
    /// collected (`gc_grace_ms`). 0: never. Default 5.
    #[serde(default = "default_trash_keep_free_percent")]
    pub trash_keep_free_percent: u8,
    /// A datanode dead this long is dropped from the list (`cairn admin report`) and from
    /// what the namenode remembers across restarts; until then it stays listed as dead,
    /// restarts included. `cairn admin forget` drops one at once. 0: never. Default 604800
    /// (a week).
    #[serde(default = "default_forget_dead_datanode_secs")]
    pub forget_dead_datanode_secs: u64,
    /// Changes are refused (`ENOSPC`) while the disk of `meta_dir` has less than this many
    /// MiB free, so that the metadata store never runs out of space in the middle of a
    /// write; they are taken again as soon as it has more. 0: no such check. Default 100.
    #[serde(default = "default_meta_reserve_mb")]
    pub meta_reserve_mb: u64,
    /// How long a block access token is valid, in seconds: what a datanode takes a block
    /// request with, handed to a client with its file's map (see README, "Security").
    /// Clients get new ones when theirs expire. Datanodes' clocks must agree with the
    /// namenode's within a small part of it (NTP). 60 to 2592000 (30 days); default 36000
    /// (ten hours).
    #[serde(default = "default_block_token_lifetime_secs")]
    pub block_token_lifetime_secs: u64,
    /// Certificate files.
    pub tls: TlsPaths,
    /// What mount and user certificates may do, by certificate name (the first rule whose
    /// glob matches). A certificate no rule names sees everything, read-write, root
    /// squashed. Reloaded on SIGHUP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<cairn_common::exports::ExportRule>,
    /// The cluster CA's revocation list (`cairn cert revoke` writes it as `revoked.pem` in
    /// the CA directory): certificates it names are refused, here and by every datanode.
    /// Reloaded on SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
    /// The file this configuration was read from, which SIGHUP reads again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

use cairn_common::config::MAX_PERIOD;
const MIN_TOKEN_LIFETIME_SECS: u64 = 60;
const MAX_TOKEN_LIFETIME_SECS: u64 = 30 * 24 * 3600;
const MAX_COPIES_PER_NODE: usize = 1024;
/// How long a connection to or from a member of a namenode group may go without a word.
pub const GROUP_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

fn default_listen() -> SocketAddr {
    "0.0.0.0:7070".parse().expect("literal address")
}
fn default_meta_dir() -> PathBuf {
    PathBuf::from("/var/lib/cairn/namenode")
}
fn default_replication() -> u8 {
    3
}
fn default_heartbeat_interval_ms() -> u64 {
    3000
}
fn default_dead_timeout_ms() -> u64 {
    30_000
}
fn default_safemode_threshold() -> f64 {
    0.999
}
fn default_safemode_extension_ms() -> u64 {
    3000
}
fn default_repair_copies_per_node() -> usize {
    4
}
fn default_open_lease_ms() -> u64 {
    30_000
}
fn default_gc_grace_ms() -> u64 {
    300_000
}
fn default_trash_retention_secs() -> u64 {
    86_400
}
fn default_trash_max_percent() -> u8 {
    10
}
fn default_trash_keep_free_percent() -> u8 {
    5
}
fn default_forget_dead_datanode_secs() -> u64 {
    7 * 86_400
}
fn default_block_token_lifetime_secs() -> u64 {
    cairn_common::token::DEFAULT_LIFETIME_SECS
}
fn default_meta_reserve_mb() -> u64 {
    100
}
fn default_true() -> bool {
    true
}

impl NamenodeConfig {
    /// A configuration with every default, for `tls` and `meta_dir`.
    pub fn new(meta_dir: PathBuf, tls: TlsPaths) -> NamenodeConfig {
        NamenodeConfig {
            listen: default_listen(),
            group: Vec::new(),
            advertise: None,
            meta_dir,
            default_replication: default_replication(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            dead_timeout_ms: default_dead_timeout_ms(),
            metadata_sync: MetadataSync::default(),
            metadata_sync_window_ms: default_metadata_sync_window_ms(),
            sync_metadata: true,
            open_lease_ms: default_open_lease_ms(),
            repair_copies_per_node: default_repair_copies_per_node(),
            safemode_threshold: default_safemode_threshold(),
            safemode_extension_ms: default_safemode_extension_ms(),
            gc_grace_ms: default_gc_grace_ms(),
            trash_retention_secs: default_trash_retention_secs(),
            trash_replaced: false,
            trash_max_percent: default_trash_max_percent(),
            trash_keep_free_percent: default_trash_keep_free_percent(),
            forget_dead_datanode_secs: default_forget_dead_datanode_secs(),
            meta_reserve_mb: default_meta_reserve_mb(),
            block_token_lifetime_secs: default_block_token_lifetime_secs(),
            tls,
            exports: Vec::new(),
            crl: None,
            source: None,
        }
    }

    /// Reads a TOML file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<NamenodeConfig> {
        let (mut config, base): (NamenodeConfig, _) = load_toml(path)?;
        config.tls.relative_to(&base);
        resolve(&base, &mut config.meta_dir);
        if let Some(crl) = &mut config.crl {
            resolve(&base, crl);
        }
        config.validate()?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// The signer of block access tokens, its keys derived from this namenode's private key:
    /// the same across restarts, and nothing more to keep secret.
    pub fn token_signer(&self) -> anyhow::Result<cairn_common::token::Signer> {
        let key = std::fs::read(&self.tls.key).map_err(|e| {
            anyhow::anyhow!("reading the private key {}: {e}", self.tls.key.display())
        })?;
        Ok(cairn_common::token::Signer::new(
            &key,
            self.block_token_lifetime_secs,
        ))
    }

    /// The serials the revocation list names (none without one), its signature checked
    /// against the cluster CA.
    pub fn revoked(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let Some(path) = &self.crl else {
            return Ok(Vec::new());
        };
        let crl = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading the revocation list {}: {e}", path.display()))?;
        let ca = std::fs::read(&self.tls.ca_cert).map_err(|e| {
            anyhow::anyhow!(
                "reading the CA certificate {}: {e}",
                self.tls.ca_cert.display()
            )
        })?;
        cairn_common::cert::read_crl(&crl, &ca)
            .map_err(|e| anyhow::anyhow!("revocation list {}: {e:#}", path.display()))
    }

    /// The transport's knobs for this namenode's endpoint. In a group, a connection whose
    /// peer says nothing for [`GROUP_IDLE_TIMEOUT`] is given up (keep-alives go four
    /// times as often), on both sides (QUIC takes the smaller of the two ends'): a client
    /// or datanode tries the next member that much after the leader dies, not after the
    /// ten seconds of a namenode alone.
    pub fn transport_options(&self) -> cairn_common::transport::TransportOptions {
        let mut opts = cairn_common::transport::TransportOptions::default();
        if !self.group.is_empty() {
            opts.idle_timeout = GROUP_IDLE_TIMEOUT;
        }
        opts
    }

    /// Where the other members reach this namenode.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// This namenode's number in its group (1 founds it), or `None` for a namenode alone.
    pub fn member_id(&self) -> Option<u64> {
        let me = self.advertised();
        self.group
            .iter()
            .position(|a| *a == me)
            .map(|i| i as u64 + 1)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.group.is_empty() {
            let me = self.advertised();
            anyhow::ensure!(
                self.member_id().is_some(),
                "this namenode's address {me} is not in group = {:?}: set advertise to the \
                 address of the list the others reach it at",
                self.group
            );
            let mut seen = std::collections::HashSet::new();
            for addr in &self.group {
                anyhow::ensure!(seen.insert(addr), "group names {addr} twice");
            }
        }
        for rule in &self.exports {
            rule.check()?;
        }
        anyhow::ensure!(
            (1..=16).contains(&self.default_replication),
            "default_replication must be between 1 and 16, not {}",
            self.default_replication
        );
        anyhow::ensure!(
            self.dead_timeout_ms > self.heartbeat_interval_ms,
            "dead_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
            self.dead_timeout_ms,
            self.heartbeat_interval_ms
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.safemode_threshold),
            "safemode_threshold must be between 0 and 1, not {}",
            self.safemode_threshold
        );
        let min_lease = 3 * cairn_common::proto::OPEN_RENEW_INTERVAL.as_millis() as u64;
        anyhow::ensure!(
            self.open_lease_ms >= min_lease,
            "open_lease_ms ({}) must be at least {min_lease}: three of the clients' renewals",
            self.open_lease_ms
        );
        let min_grace = 2 * cairn_common::proto::OPEN_RENEW_INTERVAL.as_millis() as u64;
        anyhow::ensure!(
            self.gc_grace_ms >= min_grace,
            "gc_grace_ms ({}) must be at least {min_grace}: two of the clients' renewals, \
             which keep their uploads from being taken for garbage",
            self.gc_grace_ms
        );
        anyhow::ensure!(
            self.trash_max_percent <= 100 && self.trash_keep_free_percent <= 100,
            "trash_max_percent ({}) and trash_keep_free_percent ({}) are percentages: 0 to 100",
            self.trash_max_percent,
            self.trash_keep_free_percent
        );
        // Periods past these would overflow the clocks they are added to.
        let most_ms = MAX_PERIOD.as_millis() as u64;
        for (name, ms) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("dead_timeout_ms", self.dead_timeout_ms),
            ("metadata_sync_window_ms", self.metadata_sync_window_ms),
            ("open_lease_ms", self.open_lease_ms),
            ("safemode_extension_ms", self.safemode_extension_ms),
            ("gc_grace_ms", self.gc_grace_ms),
        ] {
            anyhow::ensure!(
                ms <= most_ms,
                "{name} ({ms}) is more than ten years ({most_ms} ms)"
            );
        }
        let most_secs = MAX_PERIOD.as_secs();
        for (name, secs) in [
            ("trash_retention_secs", self.trash_retention_secs),
            ("forget_dead_datanode_secs", self.forget_dead_datanode_secs),
        ] {
            anyhow::ensure!(
                secs <= most_secs,
                "{name} ({secs}) is more than ten years ({most_secs} s)"
            );
        }
        anyhow::ensure!(
            (MIN_TOKEN_LIFETIME_SECS..=MAX_TOKEN_LIFETIME_SECS)
                .contains(&self.block_token_lifetime_secs),
            "block_token_lifetime_secs ({}) must be between {MIN_TOKEN_LIFETIME_SECS} (copies \
             between datanodes wait for a slot with theirs) and {MAX_TOKEN_LIFETIME_SECS} \
             (30 days: a token outliving that is a key to the data nobody can take back)",
            self.block_token_lifetime_secs
        );
        anyhow::ensure!(
            (1..=MAX_COPIES_PER_NODE).contains(&self.repair_copies_per_node),
            "repair_copies_per_node ({}) must be between 1 and {MAX_COPIES_PER_NODE}",
            self.repair_copies_per_node
        );
        anyhow::ensure!(
            self.meta_reserve_mb <= u64::MAX >> 20,
            "meta_reserve_mb ({}) is more than any disk",
            self.meta_reserve_mb
        );
        Ok(())
    }

    /// A datanode that missed three heartbeats is stale (placed on no more, read last).
    pub fn stale_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.saturating_mul(3)).min(self.dead_timeout())
    }

    pub fn gc_grace(&self) -> Duration {
        Duration::from_millis(self.gc_grace_ms)
    }

    pub fn open_lease(&self) -> Duration {
        Duration::from_millis(self.open_lease_ms)
    }

    /// When the metadata log is synced, from `metadata_sync*` and `sync_metadata`.
    pub fn durability(&self) -> crate::walsync::Durability {
        use crate::walsync::Durability;
        match (self.sync_metadata, self.metadata_sync) {
            (false, _) => Durability::Never,
            (true, MetadataSync::Always) => Durability::Always,
            (true, MetadataSync::Window) => {
                Durability::Window(Duration::from_millis(self.metadata_sync_window_ms))
            }
        }
    }

    pub fn dead_timeout(&self) -> Duration {
        Duration::from_millis(self.dead_timeout_ms)
    }
}

/// See [`NamenodeConfig::metadata_sync`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataSync {
    #[default]
    Window,
    Always,
}

fn default_metadata_sync_window_ms() -> u64 {
    5
}

/// A configuration file edited by hand holds anything: whatever it says, loading it either
/// refuses it with a message or gives a configuration whose periods, token keys and sizes
/// are safe to use (no overflow, no panic, nothing unbounded later).
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
            let tls = cairn_common::config::tls_stand_in("nn");
            let defaults = NamenodeConfig::new("meta".into(), tls);
            let dir = tempfile::tempdir().unwrap();
            let loaded = cairn_common::config::load_edited(
                dir.path(), "namenode.toml", &defaults, &edits, NamenodeConfig::load,
            );
            let Some(config) = loaded else {
                return Ok(());
            };
            let now = std::time::Instant::now();
            let window = match config.durability() {
                crate::walsync::Durability::Window(w) => w,
                _ => Duration::ZERO,
            };
            for period in [
                config.stale_timeout(),
                config.gc_grace(),
                config.open_lease(),
                config.dead_timeout(),
                window,
                Duration::from_millis(config.heartbeat_interval_ms),
                Duration::from_millis(config.safemode_extension_ms),
                Duration::from_secs(config.trash_retention_secs),
                Duration::from_secs(config.forget_dead_datanode_secs),
            ] {
                prop_assert!(now.checked_add(period * 2).is_some(), "{period:?}");
            }
            let signer = cairn_common::token::Signer::new(b"key", config.block_token_lifetime_secs);
            prop_assert!(signer.keys().len() <= 24);
            let _ = signer.sign(cairn_common::token::Access::Write, None, b"holder");
        }
    }
}
