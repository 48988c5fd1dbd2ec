//! A whole cluster in one process: a namenode (or a group of them) and N datanodes on
//! loopback, certificates generated, every piece of state under one directory. `cairn dev`
//! runs it; the system tests start it and then kill, restart and corrupt its parts.
//!
//! Layout of the directory:
//! `certs/` (CA and every certificate), `namenode/` (metadata; in a group, member 1's, and
//! `namenode-<i>/` member i's), `datanode-<i>/` (blocks), `namenode.toml`,
//! `namenode-<i>.toml`, `datanode-<i>.toml` (what a standalone daemon would run with),
//! `cairn-client.toml` (what `cairn fs` and `cairn admin` use, with an admin certificate) and
//! `cairn-mount.toml` (what `--mount` uses: a mount certificate whose export rule lets root
//! be root, as on a local disk).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientConfig};
use cairn_common::cert::{self, Role};
use cairn_common::transport::{self, TlsIdentity, TlsPaths, TransportOptions};
use cairn_datanode::DatanodeConfig;
use cairn_namenode::NamenodeConfig;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub const CLIENT_CONFIG: &str = "cairn-client.toml";
pub const MOUNT_CONFIG: &str = "cairn-mount.toml";
/// The name of the dev cluster's mount certificate, which its export rule names.
const MOUNT_CERT: &str = "dev-mount";
/// Ports picked for daemons asked to listen on port 0: below Linux's ephemeral range
/// (32768 and up), so no outgoing socket takes them while a daemon restarts.
const STABLE_PORTS: std::ops::Range<u16> = 20_000..32_000;

#[derive(Clone, Debug)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub datanodes: usize,
    /// Namenodes: 1, or the members of a namenode group (3 or 5).
    pub namenodes: usize,
    /// Namenode address (a group's members take the ports after it); port 0 picks free ones.
    pub namenode_addr: SocketAddr,
    pub replication: u8,
    pub min_replicas: u8,
    /// Limit on each datanode's block bytes (tests fill disks with it).
    pub datanode_capacity: Option<u64>,
    pub heartbeat_interval_ms: u64,
    pub dead_timeout_ms: u64,
    /// How long the namenode keeps files open for a silent client (`open_lease_ms`).
    pub open_lease_ms: u64,
    /// How long safe mode lasts after enough blocks are reported (`safemode_extension_ms`).
    pub safemode_extension_ms: u64,
    /// How long unreferenced blocks wait before they are deleted (`gc_grace_ms`).
    pub gc_grace_ms: u64,
    /// How long removed files stay in the trash (`trash_retention_secs`; 0, the default
    /// here, removes them at once).
    pub trash_retention_secs: u64,
    /// Whether files replaced by a rename go to the trash too (`trash_replaced`).
    pub trash_replaced: bool,
    /// The most of the datanodes' capacity the trash may hold (`trash_max_percent`).
    pub trash_max_percent: u8,
    /// The free space under which the trash gives way (`trash_keep_free_percent`).
    pub trash_keep_free_percent: u8,
    /// Failure domains: datanode `i` is in `racks[i % racks.len()]` (none if empty).
    pub racks: Vec<String>,
    /// Most copies one datanode sends or receives at a time (`repair_copies_per_node`).
    pub repair_copies_per_node: usize,
    /// Each datanode's bandwidth for re-replication copies (`repair_bytes_per_sec`).
    pub repair_bytes_per_sec: Option<u64>,
    /// Each datanode's scrubber: (bytes per second, seconds between passes).
    pub scrub: Option<(u64, u64)>,
    /// How long block access tokens are valid (`block_token_lifetime_secs`).
    pub block_token_lifetime_secs: u64,
}

impl DevOptions {
    pub fn new(dir: &Path, datanodes: usize) -> DevOptions {
        DevOptions {
            dir: dir.to_path_buf(),
            datanodes,
            namenodes: 1,
            namenode_addr: "127.0.0.1:0".parse().expect("literal address"),
            replication: 3,
            min_replicas: 2,
            datanode_capacity: None,
            heartbeat_interval_ms: 1000,
            block_token_lifetime_secs: cairn_common::token::DEFAULT_LIFETIME_SECS,
            dead_timeout_ms: 10_000,
            open_lease_ms: 30_000,
            safemode_extension_ms: 3_000,
            gc_grace_ms: 30_000,
            trash_retention_secs: 0,
            trash_replaced: false,
            trash_max_percent: 10,
            trash_keep_free_percent: 5,
            racks: Vec::new(),
            repair_copies_per_node: 4,
            repair_bytes_per_sec: None,
            scrub: None,
        }
    }
}

struct Daemon {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Runs `daemon` (called `what`) until its token is cancelled. An error that ends it is
    /// logged as it happens: nobody may be waiting on the task to hear it.
    fn spawn(
        what: String,
        shutdown: CancellationToken,
        daemon: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Daemon {
        let task = tokio::spawn(async move {
            let ended = daemon.await;
            if let Err(e) = &ended {
                tracing::error!("{what} stopped: {e:#}");
            }
            ended
        });
        Daemon { shutdown, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("daemon task panicked")?
    }
}

pub struct DevDatanode {
    pub config: DatanodeConfig,
    pub addr: Option<SocketAddr>,
    daemon: Option<Daemon>,
}

/// A namenode of the cluster: alone, or one member of its group.
pub struct DevNamenode {
    pub config: NamenodeConfig,
    daemon: Option<Daemon>,
}

impl DevNamenode {
    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }
}

pub struct DevCluster {
    pub opts: DevOptions,
    /// The namenode, or the members of the group in order (member 1 first).
    pub namenodes: Vec<DevNamenode>,
    pub datanodes: Vec<DevDatanode>,
    pub client_config_path: PathBuf,
    pub mount_config_path: PathBuf,
}

fn certs_dir(dir: &Path) -> PathBuf {
    dir.join("certs")
}

/// Issues `name`'s certificate unless it exists; returns its paths.
fn ensure_cert(dir: &Path, role: Role, name: &str) -> anyhow::Result<TlsPaths> {
    let certs = certs_dir(dir);
    let cert = certs.join(format!("{name}.pem"));
    let key = certs.join(format!("{name}.key"));
    if !cert.exists() || !key.exists() {
        cert::issue(&certs, role, name, &certs, cert::CERT_DAYS)?;
    }
    Ok(TlsPaths {
        ca_cert: certs.join(cert::CA_CERT_FILE),
        cert,
        key,
        crl: None,
    })
}

fn write_toml<T: serde::Serialize>(path: &Path, header: &str, value: &T) -> anyhow::Result<()> {
    let body = toml::to_string_pretty(value)?;
    std::fs::write(path, format!("{header}\n{body}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Binds a server endpoint on `addr`. Port 0 picks a free port below the kernel's ephemeral
/// range, so that after a restart the port is still free to bind again: an ephemeral port
/// may meanwhile be taken by any outgoing socket on the machine.
fn bind(addr: SocketAddr, identity: &TlsIdentity) -> anyhow::Result<quinn::Endpoint> {
    let opts = TransportOptions::default();
    if addr.port() != 0 {
        // A daemon that just stopped releases its socket a moment after it returns.
        let mut tries = 0;
        loop {
            match transport::server_endpoint(addr, identity, &opts) {
                Ok(e) => return Ok(e),
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("binding {addr}: {e:#}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut last = None;
    for _ in 0..100 {
        let port = rand::thread_rng().gen_range(STABLE_PORTS);
        match transport::server_endpoint(SocketAddr::new(addr.ip(), port), identity, &opts) {
            Ok(e) => return Ok(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port")))
}

impl DevCluster {
    /// Starts (or restarts, keeping its data) a cluster in `opts.dir` and waits until every
    /// datanode has registered.
    pub async fn start(opts: DevOptions) -> anyhow::Result<DevCluster> {
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        if !certs_dir(&dir).join(cert::CA_CERT_FILE).exists() {
            info!("creating the cluster CA");
            cert::init_ca(&certs_dir(&dir), cert::CA_DAYS)?;
        }
        let configs = namenode_configs(&dir, &opts)?;
        let mut cluster = DevCluster {
            namenodes: configs
                .into_iter()
                .map(|config| DevNamenode {
                    config,
                    daemon: None,
                })
                .collect(),
            datanodes: Vec::new(),
            client_config_path: dir.join(CLIENT_CONFIG),
            mount_config_path: dir.join(MOUNT_CONFIG),
            opts: DevOptions {
                dir: dir.clone(),
                ..opts.clone()
            },
        };
        cluster.start_namenode().await?;
        for nn in &cluster.namenodes {
            let path = nn
                .config
                .source
                .clone()
                .context("a dev namenode has a file")?;
            write_toml(
                &path,
                "# Written by `cairn dev`: what `cairn namenode --config` would run with.",
                &nn.config,
            )?;
        }
        let namenodes = cluster.namenode_addrs();
        for (path, role, name, header) in [
            (
                &cluster.client_config_path,
                Role::Admin,
                "admin",
                "# Written by `cairn dev`: `cairn fs` and `cairn admin` read it from here or from\n\
                 # $CAIRN_CONFIG. Its certificate is an administrator's.",
            ),
            (
                &cluster.mount_config_path,
                Role::Mount,
                MOUNT_CERT,
                "# Written by `cairn dev`: what `cairn dev --mount` mounts with (`cairn mount --config`).\n\
                 # Its certificate is a mount's; the namenode's export rule for it lets root be root.",
            ),
        ] {
            let mut client = ClientConfig::new(namenodes[0], ensure_cert(&dir, role, name)?);
            client.min_replicas = opts.min_replicas;
            if namenodes.len() > 1 {
                client.namenodes = namenodes.clone();
            }
            write_toml(path, header, &client)?;
        }
        for _ in 0..opts.datanodes {
            cluster.add_datanode().await?;
        }
        if namenodes.len() > 1 {
            cluster.wait_for_group().await?;
        }
        cluster.wait_for_datanodes(opts.datanodes).await?;
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Where the namenode listens, or the group's first member.
    pub fn namenode_addr(&self) -> SocketAddr {
        self.namenodes[0].addr()
    }

    /// Where each namenode listens, member 1 first.
    pub fn namenode_addrs(&self) -> Vec<SocketAddr> {
        self.namenodes.iter().map(DevNamenode::addr).collect()
    }

    /// Starts every namenode not running. The endpoints are all bound first: a group's
    /// members are named by their addresses, which must be known before any starts.
    pub async fn start_namenode(&mut self) -> anyhow::Result<()> {
        let mut endpoints = Vec::new();
        for (i, nn) in self.namenodes.iter_mut().enumerate() {
            if nn.daemon.is_some() {
                continue;
            }
            let identity = nn.config.tls.load()?;
            let endpoint = bind(nn.config.listen, &identity)?;
            // Port 0 becomes a fixed port at first start: restarts must come back on it.
            nn.config.listen = endpoint.local_addr()?;
            endpoints.push((i, endpoint));
        }
        if self.namenodes.len() > 1 {
            let group = self.namenode_addrs();
            for nn in &mut self.namenodes {
                nn.config.group = group.clone();
            }
        }
        for (i, endpoint) in endpoints {
            let nn = &mut self.namenodes[i];
            let shutdown = CancellationToken::new();
            let run = cairn_namenode::run(nn.config.clone(), endpoint, shutdown.clone());
            let what = match self.opts.namenodes {
                1 => "the namenode".to_string(),
                _ => format!("namenode {}", i + 1),
            };
            nn.daemon = Some(Daemon::spawn(what, shutdown, run));
        }
        Ok(())
    }

    /// Stops every namenode.
    pub async fn stop_namenode(&mut self) -> anyhow::Result<()> {
        for i in 0..self.namenodes.len() {
            self.stop_member(i).await?;
        }
        Ok(())
    }

    /// Stops namenode `i` (member `i + 1` of a group).
    pub async fn stop_member(&mut self, i: usize) -> anyhow::Result<()> {
        let nn = self.namenodes.get_mut(i).context("no such namenode")?;
        if let Some(d) = nn.daemon.take() {
            d.stop().await?;
        }
        Ok(())
    }

    /// Waits until every member of the group votes in it.
    pub async fn wait_for_group(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let want = self.namenodes.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let voters = match client.namenode(cairn_common::proto::ListNamenodes).await {
                Ok(group) => group.members.iter().filter(|m| m.voter).count(),
                Err(_) => 0,
            };
            if voters >= want {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {voters} of {want} namenodes are in the group after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn restart_namenode(&mut self) -> anyhow::Result<()> {
        self.stop_namenode().await?;
        self.start_namenode().await
    }

    /// Adds one more datanode (index = the current count) and starts it.
    pub async fn add_datanode(&mut self) -> anyhow::Result<usize> {
        let index = self.datanodes.len();
        let name = format!("datanode-{}", index + 1);
        let dir = self.opts.dir.clone();
        let mut config = DatanodeConfig::new(
            &name,
            self.namenode_addr(),
            dir.join(&name),
            ensure_cert(&dir, Role::Datanode, &name)?,
        );
        if self.namenodes.len() > 1 {
            config.namenodes = self.namenode_addrs();
        }
        config.listen = "127.0.0.1:0".parse()?;
        config.reserve_bytes = 0;
        config.capacity_bytes = self.opts.datanode_capacity;
        config.repair_bytes_per_sec = self.opts.repair_bytes_per_sec;
        if !self.opts.racks.is_empty() {
            config.rack = self.opts.racks[index % self.opts.racks.len()].clone();
        }
        if let Some((rate, period)) = self.opts.scrub {
            config.scrub_bytes_per_sec = rate;
            config.scrub_period_secs = period;
        }
        self.datanodes.push(DevDatanode {
            config,
            addr: None,
            daemon: None,
        });
        self.start_datanode(index).await?;
        let dn = &self.datanodes[index];
        let mut written = dn.config.clone();
        written.listen = dn.addr.unwrap_or(written.listen);
        write_toml(
            &dir.join(format!("{name}.toml")),
            "# Written by `cairn dev`: what `cairn datanode --config` would run with.",
            &written,
        )?;
        Ok(index)
    }

    pub async fn start_datanode(&mut self, index: usize) -> anyhow::Result<()> {
        let dn = self.datanodes.get_mut(index).context("no such datanode")?;
        anyhow::ensure!(dn.daemon.is_none(), "datanode {index} already running");
        let identity = dn.config.tls.load()?;
        // Come back on the same port after a restart, as a real datanode would; if something
        // else took the port meanwhile, take a new one (the datanode re-registers its address).
        let endpoint = match dn.addr {
            Some(old) => match bind(old, &identity) {
                Ok(e) => e,
                Err(_) => bind(dn.config.listen, &identity)?,
            },
            None => bind(dn.config.listen, &identity)?,
        };
        dn.addr = Some(endpoint.local_addr()?);
        let shutdown = CancellationToken::new();
        let run = cairn_datanode::run(dn.config.clone(), endpoint, shutdown.clone());
        let what = format!("datanode {}", dn.config.name);
        dn.daemon = Some(Daemon::spawn(what, shutdown, run));
        Ok(())
    }

    /// Stops a datanode at once: its connections close mid-transfer.
    pub async fn stop_datanode(&mut self, index: usize) -> anyhow::Result<()> {
        let dn = self.datanodes.get_mut(index).context("no such datanode")?;
        if let Some(d) = dn.daemon.take() {
            d.stop().await?;
        }
        Ok(())
    }

    /// A client of this cluster, as `cairn fs` would make from the client config.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let config = ClientConfig::load(&self.client_config_path)?;
        Client::connect(config).await
    }

    /// A client with the dev mount's certificate, as `cairn mount` would make from the
    /// mount config.
    pub async fn mount_client(&self) -> anyhow::Result<Client> {
        let config = ClientConfig::load(&self.mount_config_path)?;
        Client::connect(config).await
    }

    /// Waits until `n` datanodes are registered and alive.
    pub async fn wait_for_datanodes(&self, n: usize) -> anyhow::Result<()> {
        let namenode_stopped = || {
            self.namenodes
                .iter()
                .any(|nn| nn.daemon.as_ref().is_some_and(|d| d.task.is_finished()))
        };
        if namenode_stopped() {
            anyhow::bail!("the namenode stopped (its error is logged above)");
        }
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let alive = match client.datanodes().await {
                Ok(list) => list.iter().filter(|d| d.alive).count(),
                Err(_) => 0,
            };
            if alive >= n {
                return Ok(());
            }
            if namenode_stopped() {
                anyhow::bail!("the namenode stopped (its error is logged above)");
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {alive} of {n} datanodes registered after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every daemon: datanodes first, so none reports to a namenode that is gone.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for i in 0..self.datanodes.len() {
            self.stop_datanode(i).await?;
        }
        self.stop_namenode().await
    }
}

/// The configuration of each namenode: one, or each member of a group. Member 1 keeps the
/// single namenode's files (`namenode/`, `namenode.toml`), so a one-namenode directory
/// becomes a group's first member with its namespace; a group started again keeps its
/// members' addresses, as Raft knows them by.
fn namenode_configs(dir: &Path, opts: &DevOptions) -> anyhow::Result<Vec<NamenodeConfig>> {
    let members = opts.namenodes;
    anyhow::ensure!(
        members >= 1,
        "a cluster needs at least one namenode (3 or 5 for a group that survives one or two)"
    );
    let earlier = (2..)
        .take_while(|i| dir.join(format!("namenode-{i}.toml")).exists())
        .count();
    anyhow::ensure!(
        earlier == 0 || earlier + 1 == members,
        "{} holds a group of {} namenodes: start it with --namenodes {}",
        dir.display(),
        earlier + 1,
        earlier + 1
    );
    let mut configs = Vec::new();
    for i in 1..=members {
        let name = match i {
            1 => "namenode".to_string(),
            i => format!("namenode-{i}"),
        };
        let file = dir.join(format!("{name}.toml"));
        let mut config =
            NamenodeConfig::new(dir.join(&name), ensure_cert(dir, Role::Namenode, &name)?);
        config.listen = match opts.namenode_addr.port() {
            0 if members > 1 => match NamenodeConfig::load(&file) {
                Ok(before) => before.listen,
                Err(_) => opts.namenode_addr,
            },
            0 => opts.namenode_addr,
            port => SocketAddr::new(opts.namenode_addr.ip(), port + i as u16 - 1),
        };
        config.default_replication = opts.replication;
        config.heartbeat_interval_ms = opts.heartbeat_interval_ms;
        config.block_token_lifetime_secs = opts.block_token_lifetime_secs;
        config.dead_timeout_ms = opts.dead_timeout_ms;
        config.open_lease_ms = opts.open_lease_ms;
        config.safemode_extension_ms = opts.safemode_extension_ms;
        config.gc_grace_ms = opts.gc_grace_ms;
        config.trash_retention_secs = opts.trash_retention_secs;
        config.trash_replaced = opts.trash_replaced;
        config.trash_max_percent = opts.trash_max_percent;
        config.trash_keep_free_percent = opts.trash_keep_free_percent;
        config.repair_copies_per_node = opts.repair_copies_per_node;
        // The dev mount's root is root: a dev cluster is one machine's own file system.
        config.exports.push(cairn_common::exports::ExportRule {
            root_squash: false,
            suid: true,
            dev: true,
            ..cairn_common::exports::ExportRule::default_for(MOUNT_CERT)
        });
        config.source = Some(file);
        configs.push(config);
    }
    Ok(configs)
}
