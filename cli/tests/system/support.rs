//! Helpers shared by the system tests.

use cairn_client::Owner;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_cli::devcluster::{DevCluster, DevOptions};
use cairn_client::Client;
use cairn_common::attr::InodeAttr;
use cairn_common::cert::Role;
use cairn_common::proto::{ChunkMap, ReadChunks};
use cairn_common::transport::{self, TlsIdentity, TransportOptions};
use cairn_common::{BlockId, DatanodeId, Ino};
use rand::{Rng, SeedableRng};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn cluster(dir: &Path, datanodes: usize) -> DevCluster {
    init_tracing();
    DevCluster::start(DevOptions::new(dir, datanodes))
        .await
        .expect("cluster starts")
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes `data` to a new file `/name` in pieces of `piece` bytes and closes it.
pub async fn put(client: &Client, name: &str, data: &[u8], piece: usize) -> InodeAttr {
    let created = client
        .create(
            Ino::ROOT,
            name.as_bytes(),
            0o644,
            true,
            false,
            Owner::current(),
        )
        .await
        .expect("create");
    let mut f = client.open(created.attr.ino).await.expect("open");
    for (i, part) in data.chunks(piece).enumerate() {
        f.write((i * piece) as u64, part).await.expect("write");
    }
    f.close().await.expect("close");
    client.getattr(created.attr.ino).await.expect("getattr")
}

/// Reads a whole file in pieces of `piece` bytes.
pub async fn get(client: &Client, ino: Ino, piece: usize) -> Vec<u8> {
    let mut f = client.open(ino).await.expect("open");
    let size = f.attr().size;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let part = f.read(out.len() as u64, piece).await.expect("read");
        assert!(!part.is_empty(), "short read at {}", out.len());
        out.extend_from_slice(&part);
    }
    out
}

/// Where datanode `index` keeps block `id` on its disk.
pub fn block_path(cluster: &DevCluster, index: usize, id: &BlockId) -> std::path::PathBuf {
    let hex = id.to_hex();
    cluster.datanodes[index]
        .config
        .data_dir
        .join("blocks")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex)
}

/// The datanodes (by index) whose disks hold block `id`.
pub fn holders(cluster: &DevCluster, id: &BlockId) -> Vec<usize> {
    (0..cluster.datanodes.len())
        .filter(|i| block_path(cluster, *i, id).exists())
        .collect()
}

/// The namenode's map of a file's first 64 chunks, with replica locations.
pub async fn chunk_map(client: &Client, ino: Ino) -> ChunkMap {
    client
        .namenode(ReadChunks {
            ino,
            first: 0,
            count: 64,
        })
        .await
        .expect("read chunks")
}

/// Every block id a file's slices reference.
pub async fn file_blocks(client: &Client, ino: Ino) -> Vec<BlockId> {
    let map = chunk_map(client, ino).await;
    let mut out: Vec<BlockId> = map
        .chunks
        .iter()
        .flat_map(|(_, slices)| slices.iter().map(|s| s.block))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The certificate `cairn dev` issued for its CLI (an administrator's).
pub fn client_identity(cluster: &DevCluster) -> TlsIdentity {
    let certs = cluster.dir().join("certs");
    TlsIdentity::load(
        &certs.join("ca.pem"),
        &certs.join("admin.pem"),
        &certs.join("admin.key"),
    )
    .expect("client certificate")
}

/// A bare QUIC connection to one daemon, for speaking the protocol by hand.
pub async fn raw_connection(
    cluster: &DevCluster,
    addr: std::net::SocketAddr,
    role: Role,
) -> quinn::Connection {
    let opts = TransportOptions::default();
    let endpoint = transport::client_endpoint(&client_identity(cluster), &opts).unwrap();
    transport::connect(&endpoint, addr, role, opts.protocol_version)
        .await
        .expect("connect")
}

/// Options for a cluster of `datanodes` that notices a silent datanode within a few seconds.
pub fn quick_options(dir: &Path, datanodes: usize) -> DevOptions {
    let mut opts = DevOptions::new(dir, datanodes);
    opts.heartbeat_interval_ms = 300;
    opts.dead_timeout_ms = 2_000;
    opts
}

/// A cluster of `datanodes` that notices a silent datanode within a few seconds.
pub async fn quick_cluster(dir: &Path, datanodes: usize) -> DevCluster {
    init_tracing();
    DevCluster::start(quick_options(dir, datanodes))
        .await
        .expect("cluster starts")
}

/// Runs `cairn ARGS` with the client configuration of `cluster`.
pub fn cairn(cluster: &DevCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--config")
        .arg(cluster.dir().join("cairn-client.toml"))
        .output()
        .expect("run cairn")
}

/// What `cairn admin ARGS` prints for people, on either stream.
pub fn admin_text(cluster: &DevCluster, args: &[&str]) -> String {
    let out = cairn(cluster, &[&["admin"], args].concat());
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `cairn admin ARGS --json` against `cluster`: its exit code and parsed output.
pub fn admin(cluster: &DevCluster, args: &[&str]) -> (i32, serde_json::Value) {
    let out = cairn(cluster, &[&["admin"], args, &["--json"]].concat());
    if out.stdout.is_empty() {
        return (out.status.code().unwrap_or(-1), serde_json::Value::Null);
    }
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cairn admin {args:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// Live replica holders of each block of `ino`, by the namenode's map.
pub async fn replicas(client: &Client, ino: Ino) -> HashMap<BlockId, Vec<DatanodeId>> {
    let map = chunk_map(client, ino).await;
    map.locations
        .into_iter()
        .map(|(block, at)| (block, at.into_iter().map(|a| a.id).collect()))
        .collect()
}

/// A replica map with `blocks` blocks of `replicas` live replicas each.
pub fn every_block(
    blocks: usize,
    replicas: usize,
) -> impl Fn(&HashMap<BlockId, Vec<DatanodeId>>) -> bool + Copy {
    move |m| m.len() == blocks && m.values().all(|v| v.len() == replicas)
}

/// How long any replica change a test waits for may take: a ceiling for a loaded machine.
pub const REPLICAS_WITHIN: Duration = Duration::from_secs(60);

/// Waits until `done` holds for the replica map of `ino` (up to [`REPLICAS_WITHIN`]);
/// returns how long it took.
pub async fn wait_for_replicas(
    client: &Client,
    ino: Ino,
    what: &str,
    done: impl Fn(&HashMap<BlockId, Vec<DatanodeId>>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = replicas(client, ino).await;
        if done(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < REPLICAS_WITHIN,
            "{what}: not reached after {REPLICAS_WITHIN:?}; replicas: {:?}",
            now.values().map(|v| v.len()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names in `dir`, sorted.
/// The names in directory `dir` as `client` lists them, without `.` and `..`.
pub async fn names_in(client: &Client, dir: Ino) -> Vec<String> {
    client
        .readdir(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect()
}

pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// `cairn admin fsck /` finds `cluster` healthy.
pub fn assert_fsck_clean(cluster: &DevCluster) {
    let (code, fsck) = admin(cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
}

/// `cairn namenode` run from a `cairn dev` directory's config, killed with SIGKILL when
/// told or dropped.
///
/// Each run is started by a launcher process made when this is: a process this test forks
/// later inherits, until it execs, every file the test has open, including files on a
/// mount served by the test itself; its exec closes them, and each close is a FUSE flush
/// the mount may answer only once the namenode is back. A namenode started so would wait
/// for itself (until the mount gives up). The launcher holds none of those files.
pub struct ChildNamenode {
    launcher: std::process::Child,
    orders: std::process::ChildStdin,
    pids: std::io::BufReader<std::process::ChildStdout>,
    pid: Option<libc::pid_t>,
    log: PathBuf,
}

impl ChildNamenode {
    pub fn start(config: &Path, log: &Path) -> ChildNamenode {
        Self::start_in(None, config, log)
    }

    /// [`ChildNamenode::start`] in the network namespace `netns` (by `ip netns exec`, which
    /// becomes the namenode: the pid is the namenode's).
    pub fn start_in(netns: Option<&str>, config: &Path, log: &Path) -> ChildNamenode {
        let script = r#"while read -r _; do $3 "$0" namenode --config "$1" >/dev/null 2>>"$2" & echo $!; done"#;
        let mut launcher = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_cairn"))
            .arg(config)
            .arg(log)
            .arg(
                netns
                    .map(|ns| format!("ip netns exec {ns}"))
                    .unwrap_or_default(),
            )
            // More with CAIRN_LOG set for the test (`info,cairn_namenode::feed=debug`).
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the namenode's launcher");
        let mut n = ChildNamenode {
            orders: launcher.stdin.take().unwrap(),
            pids: std::io::BufReader::new(launcher.stdout.take().unwrap()),
            launcher,
            pid: None,
            log: log.to_path_buf(),
        };
        n.restart();
        n
    }

    /// Starts it again, and returns once it has said so in its log: a start that fails or
    /// hangs before its first line is reported here, with what the log holds.
    pub fn restart(&mut self) {
        use std::io::{BufRead, Write};
        let starts = |log: &Path| {
            fs::read_to_string(log)
                .unwrap_or_default()
                .matches("namenode starting")
                .count()
        };
        let before = starts(&self.log);
        writeln!(self.orders, "start").expect("order the launcher");
        let mut line = String::new();
        self.pids.read_line(&mut line).expect("the namenode's pid");
        let pid: libc::pid_t = line.trim().parse().expect("a pid");
        self.pid = Some(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while starts(&self.log) == before {
            let log = || fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                !exited(pid),
                "namenode {pid} exited before it started:\n{}",
                log()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "namenode {pid} has not started after 30 s (threads: {:?}):\n{}",
                fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.count())
                    .ok(),
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Asks it to read its export rules again.
    pub fn hangup(&self) {
        let pid = self.pid.expect("running");
        // SAFETY: sends a signal to a process this test started; touches no memory.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    }

    /// Stops it dead (`SIGSTOP`), as a stalled machine: it answers nothing, nor says
    /// goodbye, until [`ChildNamenode::thaw`].
    pub fn freeze(&self) {
        let pid = self.pid.expect("running");
        // SAFETY: as in `hangup`.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    }

    /// Lets it run again after [`ChildNamenode::freeze`].
    pub fn thaw(&self) {
        let pid = self.pid.expect("running");
        // SAFETY: as in `hangup`.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }

    /// Kills it, and returns once it has exited (its ports free again).
    pub fn kill(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        // SAFETY: as in `hangup`.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if exited(pid) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "namenode {pid} still running a minute after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Whether process `pid` has exited: gone, or a zombie the launcher has not reaped yet whose
/// every thread has ended. (A killed process's first thread turns zombie before the others
/// have ended, and those still hold its files: its database's lock, its socket.)
fn exited(pid: libc::pid_t) -> bool {
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit_once(')')
        .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
    let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    zombie && threads <= 1
}

impl Drop for ChildNamenode {
    fn drop(&mut self) {
        self.kill();
        let _ = self.launcher.kill();
        let _ = self.launcher.wait();
        if std::thread::panicking() {
            // The cluster's directory goes with the test: say what the namenode said first.
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!("--- last lines of the namenode's log\n{}", tail.join("\n"));
        }
    }
}

/// Issues a certificate for `who` and writes a client configuration with it; its path.
pub fn config_for(cluster: &DevCluster, who: &cairn_common::cert::CertIdentity) -> PathBuf {
    let certs = cluster.dir().join("certs");
    let paths = cairn_common::cert::issue_as(&certs, who, &certs, 1).unwrap();
    let config = cairn_client::ClientConfig::new(
        cluster.namenode_addr(),
        cairn_common::transport::TlsPaths {
            ca_cert: certs.join(cairn_common::cert::CA_CERT_FILE),
            cert: paths.cert,
            key: paths.key,
            crl: None,
        },
    );
    let path = cluster.dir().join(format!("{}.toml", who.name));
    fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

pub async fn client_for(cluster: &DevCluster, who: &cairn_common::cert::CertIdentity) -> Client {
    let config = cairn_client::ClientConfig::load(&config_for(cluster, who)).unwrap();
    Client::connect(config).await.unwrap()
}

/// A bare QUIC connection to the namenode with the certificate `certs/<name>.pem` of
/// `cluster`'s CA directory, for speaking the protocol by hand as that certificate.
pub async fn namenode_connection_as(cluster: &DevCluster, name: &str) -> quinn::Connection {
    connection_as(cluster, name, cluster.namenode_addr(), Role::Namenode)
        .await
        .expect("connect")
}

/// A bare QUIC connection to the `role` server at `addr` with the certificate
/// `certs/<name>.pem` of `cluster`'s CA directory.
pub async fn connection_as(
    cluster: &DevCluster,
    name: &str,
    addr: std::net::SocketAddr,
    role: Role,
) -> Result<quinn::Connection, cairn_common::FsError> {
    let certs = cluster.dir().join("certs");
    let identity = TlsIdentity::load(
        &certs.join(cairn_common::cert::CA_CERT_FILE),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )
    .expect("certificate");
    let endpoint = transport::client_endpoint(&identity, &TransportOptions::default()).unwrap();
    transport::connect(&endpoint, addr, role, transport::PROTOCOL_VERSION).await
}
