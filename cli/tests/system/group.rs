//! The namenode group: three namenode processes keep one namespace. The leader killed with
//! SIGKILL, another leads within seconds with every change that was acknowledged, and a
//! client that knows the members follows the leader without an error.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_cli::devcluster::DevCluster;
use cairn_client::{Client, ClientConfig, Owner};
use cairn_common::cert::{self, Role};
use cairn_common::transport::TlsPaths;
use cairn_common::Ino;
use cairn_namenode::NamenodeConfig;

use crate::support::*;

/// A loopback address with a UDP port free now.
fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

/// Member `i` of a group at `addrs`: its configuration, written beside the cluster's.
fn member_config(
    dir: &Path,
    base: &NamenodeConfig,
    addrs: &[SocketAddr],
    i: usize,
) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let name = format!("namenode-{}", i + 1);
    let issued = cert::issue(&certs, Role::Namenode, &name, &certs, 30).unwrap();
    let mut config = base.clone();
    config.listen = addrs[i];
    config.group = addrs.to_vec();
    config.meta_dir = dir.join(&name);
    config.tls = TlsPaths {
        ca_cert: certs.join(cert::CA_CERT_FILE),
        cert: issued.cert,
        key: issued.key,
        crl: None,
    };
    config.source = None;
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, toml::to_string_pretty(&config).unwrap()).unwrap();
    path
}

/// Waits until `log` says `what`.
fn wait_for_log(log: &Path, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !fs::read_to_string(log).unwrap_or_default().contains(what) {
        assert!(
            Instant::now() < deadline,
            "{} does not say {what:?} after {within:?}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_namenodes_keep_the_namespace_when_the_leader_is_killed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 1).await;
    cluster.stop_namenode().await.unwrap();
    let base = NamenodeConfig::load(&cluster.dir().join("namenode.toml")).unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut members: Vec<ChildNamenode> = (0..3)
        .map(|i| {
            let config = member_config(cluster.dir(), &base, &addrs, i);
            ChildNamenode::start(
                &config,
                &cluster.dir().join(format!("namenode-{}.log", i + 1)),
            )
        })
        .collect();
    let log = |i: usize| cluster.dir().join(format!("namenode-{}.log", i + 1));
    wait_for_log(
        &log(0),
        "the namenode group has every member it names",
        Duration::from_secs(60),
    );

    // A client that knows every member, first of them one that does not lead.
    let mut config = ClientConfig::load(&cluster.client_config_path).unwrap();
    config.namenode = addrs[1];
    config.namenodes = addrs.clone();
    let client = Client::connect(config).await.unwrap();
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o755, Owner::current())
        .await
        .unwrap();
    for i in 0..50 {
        let name = format!("d{i}");
        client
            .mkdir(docs.ino, name.as_bytes(), 0o755, Owner::current())
            .await
            .unwrap();
    }

    tracing::info!("--- cairn admin namenodes shows the three, from any of them");
    let mut admin_config = ClientConfig::load(&cluster.client_config_path).unwrap();
    admin_config.namenode = addrs[2];
    let admin_path = cluster.dir().join("group-admin.toml");
    fs::write(&admin_path, toml::to_string_pretty(&admin_config).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["admin", "namenodes", "--json", "--config"])
        .arg(&admin_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let group: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(group["leader"], 1, "{group}");
    let listed = group["members"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{group}");
    assert!(listed.iter().all(|m| m["voter"] == true), "{group}");
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["admin", "namenodes", "--config"])
        .arg(&admin_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("3 member(s); member 1 leads"), "{text}");
    assert!(
        text.contains(&format!("  3  {}  voter  at ", addrs[2])),
        "{text}"
    );

    tracing::info!("--- a client that knows only a follower is sent to the leader");
    let mut lone = ClientConfig::load(&cluster.client_config_path).unwrap();
    lone.namenode = addrs[2];
    let lone = Client::connect(lone).await.unwrap();
    let root = lone.readdir(Ino::ROOT).await.unwrap();
    assert!(root.iter().any(|e| e.name == b"docs"));

    tracing::info!("--- the leader is killed: the client goes on with another");
    members[0].kill();
    let killed = Instant::now();
    client
        .mkdir(docs.ino, b"after", 0o755, Owner::current())
        .await
        .unwrap();
    let failover = killed.elapsed();
    tracing::info!(?failover, "first change on the new leader");
    let names = names_in(&client, docs.ino).await;
    assert_eq!(names.len(), 51, "{names:?}");

    tracing::info!("--- the old leader comes back and follows: never an old namespace");
    members[0].restart();
    let mut back = ClientConfig::load(&cluster.client_config_path).unwrap();
    back.namenode = addrs[0];
    let back = Client::connect(back).await.unwrap();
    let seen = back.readdir(docs.ino).await.unwrap();
    assert!(seen.iter().any(|e| e.name == b"after"), "a stale read");
    for member in &mut members {
        member.kill();
    }
    cluster.stop().await.unwrap();
}

/// Waits until every member the leader lists holds its whole log, and returns the group.
fn wait_until_caught_up(cluster: &DevCluster) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, group) = admin(cluster, &["namenodes"]);
        let caught_up = code == 0
            && group["members"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["id"] == group["leader"] || m["matched"] == group["last_log"]);
        if caught_up {
            return group;
        }
        assert!(Instant::now() < deadline, "members not caught up: {group}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_added_removed_and_handed_the_lead_under_load() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 1).await;
    cluster.stop_namenode().await.unwrap();
    let base = NamenodeConfig::load(&cluster.dir().join("namenode.toml")).unwrap();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let log = |i: usize| cluster.dir().join(format!("namenode-{}.log", i + 1));
    // Three found the group; the fourth, started later, lists them and itself last.
    let mut members: Vec<ChildNamenode> = (0..3)
        .map(|i| {
            ChildNamenode::start(
                &member_config(cluster.dir(), &base, &addrs[..3], i),
                &log(i),
            )
        })
        .collect();
    wait_for_log(
        &log(0),
        "the namenode group has every member it names",
        Duration::from_secs(60),
    );
    // `cairn` and the clients know every address, the fourth's too.
    let mut config = ClientConfig::load(&cluster.client_config_path).unwrap();
    config.namenodes = addrs.clone();
    fs::write(
        &cluster.client_config_path,
        toml::to_string_pretty(&config).unwrap(),
    )
    .unwrap();

    tracing::info!("--- a client makes directories all along");
    let client = Client::connect(config).await.unwrap();
    let work = client
        .mkdir(Ino::ROOT, b"work", 0o755, Owner::current())
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("d{}", acked.len());
                match client
                    .mkdir(work.ino, name.as_bytes(), 0o755, Owner::current())
                    .await
                {
                    Ok(_) => acked.push(name),
                    Err(e) => return Err(format!("mkdir {name}: {e}")),
                }
            }
            Ok(acked)
        })
    };

    tracing::info!("--- a fourth member is added");
    let fourth = member_config(cluster.dir(), &base, &addrs, 3);
    members.push(ChildNamenode::start(&fourth, &log(3)));
    let (code, group) = admin(&cluster, &["namenodes", "add", &addrs[3].to_string()]);
    assert_eq!(code, 0, "{group}");
    let voters = group["members"].as_array().unwrap();
    assert_eq!(voters.len(), 4, "{group}");
    assert!(voters.iter().all(|m| m["voter"] == true), "{group}");

    tracing::info!("--- the lead is handed to it");
    let (code, group) = admin(&cluster, &["namenodes", "transfer-leader", "--to", "4"]);
    assert_eq!(code, 0, "{group}");
    assert_eq!(group["leader"], 4, "{group}");

    tracing::info!("--- the founder is removed");
    let (code, group) = admin(&cluster, &["namenodes", "remove", "1"]);
    assert_eq!(code, 0, "{group}");
    let ids: Vec<u64> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [2, 3, 4], "{group}");
    let out = admin_text(&cluster, &["namenodes", "remove", "9"]);
    assert!(out.contains("the group has no member 9"), "{out}");

    tracing::info!("--- handed on again, with no member named");
    let (code, group) = admin(&cluster, &["namenodes", "transfer-leader"]);
    assert_eq!(code, 0, "{group}");
    assert_ne!(group["leader"], 4, "{group}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await.unwrap().expect("no change refused");
    assert!(acked.len() > 10, "only {} changes made", acked.len());
    let names = names_in(&client, work.ino).await;
    for name in &acked {
        assert!(names.contains(name), "{name} was acknowledged and is gone");
    }

    tracing::info!("--- every member holds the same namespace");
    wait_until_caught_up(&cluster);
    // Followers apply what they hold once a later message says it is committed: one more
    // change, and heartbeats, carry that.
    client
        .mkdir(work.ino, b"last", 0o755, Owner::current())
        .await
        .unwrap();
    wait_until_caught_up(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for member in &mut members {
        member.kill();
    }
    let dump = |i: usize| {
        let meta = cluster.dir().join(format!("namenode-{}", i + 1));
        cairn_namenode::store::Store::open(&meta).unwrap().dump()
    };
    let leader_view = dump(1);
    assert!(!leader_view.is_empty());
    for i in [2, 3] {
        let view = dump(i);
        if view != leader_view {
            let differs: Vec<_> = view
                .iter()
                .filter(|r| !leader_view.contains(r))
                .chain(leader_view.iter().filter(|r| !view.contains(r)))
                .take(6)
                .map(|(cf, k, v)| format!("{cf:?} {k:02x?} = {} bytes", v.len()))
                .collect();
            panic!("member {} differs from member 2: {differs:#?}", i + 1);
        }
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dev_cluster_of_three_namenodes_serves_files_after_its_leader_stops() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 3);
    opts.namenodes = 3;
    let mut cluster = DevCluster::start(opts.clone()).await.unwrap();
    let (code, group) = admin(&cluster, &["namenodes"]);
    assert_eq!(code, 0, "{group}");
    assert_eq!(group["members"].as_array().unwrap().len(), 3, "{group}");
    let client = cluster.mount_client().await.unwrap();
    let data = random_bytes(3 << 20, 23);
    let before = put(&client, "before", &data, 1 << 20).await;

    tracing::info!("--- the leader stops: the next leader serves reads and writes");
    let leader = group["leader"].as_u64().unwrap() as usize - 1;
    cluster.stop_member(leader).await.unwrap();
    assert_eq!(get(&client, before.ino, 1 << 20).await, data);
    let more = random_bytes(1 << 20, 24);
    let after = put(&client, "after", &more, 1 << 20).await;
    assert_eq!(get(&client, after.ino, 1 << 20).await, more);
    drop(client);
    cluster.stop().await.unwrap();

    tracing::info!("--- started again as a group, with everything; alone, refused");
    let mut alone = opts.clone();
    alone.namenodes = 1;
    let refused = DevCluster::start(alone).await.err().expect("refused");
    assert!(
        format!("{refused:#}").contains("start it with --namenodes 3"),
        "{refused:#}"
    );
    let cluster = DevCluster::start(opts).await.unwrap();
    let client = cluster.mount_client().await.unwrap();
    assert_eq!(get(&client, before.ino, 1 << 20).await, data);
    assert_eq!(get(&client, after.ino, 1 << 20).await, more);
    drop(client);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_are_taken_back_from_a_new_leader_and_refused_to_others_meanwhile() {
    use cairn_common::proto::{LockKind, LockRange};
    use cairn_common::FsError;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 1);
    opts.namenodes = 3;
    opts.replication = 1;
    opts.min_replicas = 1;
    // The grace after a change of leader: the shortest a lease may be.
    opts.open_lease_ms = 15_000;
    let mut cluster = DevCluster::start(opts).await.unwrap();
    let holder = cluster.mount_client().await.unwrap();
    holder.follow_changes();
    let other = cluster.mount_client().await.unwrap();
    other.follow_changes();
    let file = holder
        .create(Ino::ROOT, b"locked", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr
        .ino;
    let range = |kind| LockRange {
        start: 0,
        end: 99,
        kind,
        pid: 1,
    };
    holder
        .set_lock(file, 1, range(LockKind::Write), false)
        .await
        .unwrap();
    assert_eq!(
        other.set_lock(file, 1, range(LockKind::Write), false).await,
        Err(FsError::WouldBlock)
    );

    tracing::info!("--- the leader stops: the holder takes its lock back from the next");
    let (_, group) = admin(&cluster, &["namenodes"]);
    let leader = group["leader"].as_u64().unwrap() as usize - 1;
    cluster.stop_member(leader).await.unwrap();
    let asked = Instant::now();
    // The other's try waits out the grace, then finds the lock held still.
    assert_eq!(
        other.set_lock(file, 1, range(LockKind::Write), false).await,
        Err(FsError::WouldBlock)
    );
    tracing::info!(waited = ?asked.elapsed(), "the other was refused after the grace");
    assert_eq!(
        other
            .get_lock(file, 1, range(LockKind::Read))
            .await
            .unwrap(),
        Some(range(LockKind::Write)),
        "the new leader knows who holds it"
    );

    tracing::info!("--- released, it goes to the other");
    holder
        .set_lock(file, 1, range(LockKind::Unlock), false)
        .await
        .unwrap();
    other
        .set_lock(file, 1, range(LockKind::Write), false)
        .await
        .unwrap();
    drop((holder, other));
    cluster.stop().await.unwrap();
}
