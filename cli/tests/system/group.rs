//! The namenode group: three namenode processes keep one namespace. The leader killed with
//! SIGKILL, another leads within seconds with every change that was acknowledged, and a
//! client that knows the members follows the leader without an error.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_cli::devcluster::DevCluster;
use cairn_client::{Client, ClientConfig, Owner};
use cairn_common::cert::{self, Role};
use cairn_common::proto::XattrMode;
use cairn_common::transport::TlsPaths;
use cairn_common::{FsError, Ino};
use cairn_namenode::NamenodeConfig;

use crate::history;
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

/// A mount's connection given up under changes it answered in a delegated directory (its
/// namenode stalled past a group's idle timeout): it sends them again through a new
/// connection, and the namenode takes them from it, none refused or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_queued_under_a_delegation_outlive_the_connection_they_were_sent_on() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addrs = [free_addr()];
    let (cluster, mut members, _) = start_group(dir.path(), None, &addrs).await;
    let client = Client::connect(config_for(&cluster, &addrs, 0))
        .await
        .unwrap();
    let at = tempfile::tempdir().unwrap();
    let m = at.path().to_path_buf();
    let opts = cairn_fuse::MountOptions::default();
    let handle = tokio::runtime::Handle::current();
    let mounted = cairn_fuse::mount(client.clone(), handle, &m, &opts).expect("mount");
    // Delegations go to a mount that reads the change feed: from its second read on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Empty files: the group's namenodes have no datanodes here.
    let in_d = |m: &Path, prefix: &str, n: usize| {
        for i in 0..n {
            fs::File::create(m.join(format!("d/{prefix}{i}"))).unwrap();
        }
    };
    let m1 = m.clone();
    tokio::task::spawn_blocking(move || {
        fs::create_dir(m1.join("d")).unwrap();
        in_d(&m1, "f", 50);
        fs::File::open(m1.join("d")).unwrap().sync_all().unwrap();
    })
    .await
    .unwrap();
    let queued = client.sent::<cairn_common::proto::Queued>();
    assert!(queued > 0, "the directory was not delegated");

    tracing::info!("--- the namenode stalls while the mount answers creates itself");
    members[0].freeze();
    let m2 = m.clone();
    let writer = tokio::task::spawn_blocking(move || in_d(&m2, "g", 20));
    let idle = cairn_namenode::config::GROUP_IDLE_TIMEOUT;
    tokio::time::sleep(idle * 2 + Duration::from_secs(1)).await;
    members[0].thaw();
    writer.await.unwrap();

    tracing::info!("--- every change answered reached the namenode");
    let m3 = m.clone();
    let synced = tokio::task::spawn_blocking(move || fs::File::open(m3.join("d"))?.sync_all());
    if let Err(e) = synced.await.unwrap() {
        let log = fs::read_to_string(cluster.dir().join("namenode-1.log")).unwrap_or_default();
        panic!("a queued change was refused: {e}; the namenode's log:\n{log}");
    }
    assert!(client.sent::<cairn_common::proto::Queued>() > queued);
    let other = Client::connect(config_for(&cluster, &addrs, 0))
        .await
        .unwrap();
    let d = other.lookup(Ino::ROOT, b"d").await.unwrap();
    let names = names_in(&other, d.ino).await;
    assert_eq!(names.len(), 70, "{names:?}");
    crate::mount::unmount(mounted).await;
    members[0].kill();
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

/// Which member leads (its place in `addrs`), as the members say through
/// `cairn admin namenodes` with `config` (a client configuration naming them all).
fn leader(config: &Path) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["admin", "namenodes", "--json", "--config"])
            .arg(config)
            .output()
            .unwrap();
        let group: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(id) = group["leader"].as_u64() {
            return id as usize - 1;
        }
        assert!(
            Instant::now() < deadline,
            "no leader after 30 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one client recorded: calls on the registers (by register), and on the names.
#[derive(Default)]
struct Recorded {
    registers: Vec<(usize, history::Call<history::Register>)>,
    names: Vec<history::Call<history::Names>>,
    failed: usize,
}

/// A client calling at random until `stop`: registers (an extended attribute of each of
/// `registers`, written with values no other call writes, read) and the names `n0`–`n3` of
/// `dir` (made exclusively, removed, listed), each call recorded with when it was asked
/// and answered (since `start`). A client that only `reads` registers stays with a leader
/// as long as it answers: one cut off from the others must stop answering.
async fn record(
    client: Client,
    me: u64,
    reads: bool,
    registers: Vec<Ino>,
    dir: Ino,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Recorded {
    use history::{Call, NamesOp, NamesRet, RegisterOp};
    use rand::Rng;
    const XATTR: &[u8] = b"user.value";
    const PATIENCE: Duration = Duration::from_secs(30);
    let mut recorded = Recorded::default();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (pick, key, name) = {
            let mut rng = rand::thread_rng();
            // 0–2 write a register, 3–5 read one, 6–8 make or remove a name, 9 lists them;
            // a reader reads registers (a listing may change a directory's access time).
            let pick = match rng.gen_range(0..10) {
                _ if reads => 3,
                pick => pick,
            };
            (
                pick,
                rng.gen_range(0..registers.len()),
                rng.gen_range(0..4u8),
            )
        };
        let file = format!("n{name}").into_bytes();
        let asked = start.elapsed();
        let failed;
        if pick < 6 {
            let ino = registers[key];
            let (op, ret) = if pick < 3 {
                written += 1;
                let value = (me << 32) | written;
                let bytes = value.to_le_bytes();
                let set = client.set_xattr(ino, XATTR, &bytes, XattrMode::Any);
                let ret = match tokio::time::timeout(PATIENCE, set).await {
                    Ok(Ok(())) => Some(None),
                    _ => None,
                };
                (RegisterOp::Write(value), ret)
            } else {
                let get = client.get_xattr(ino, XATTR, Duration::ZERO);
                let ret = match tokio::time::timeout(PATIENCE, get).await {
                    Ok(Ok(bytes)) => Some(Some(u64::from_le_bytes(bytes[..8].try_into().unwrap()))),
                    Ok(Err(FsError::NoAttr)) => Some(None),
                    _ => None,
                };
                (RegisterOp::Read, ret)
            };
            failed = ret.is_none();
            let answered = ret.as_ref().map(|_| start.elapsed());
            let call = Call {
                op,
                ret,
                asked,
                answered,
            };
            recorded.registers.push((key, call));
        } else {
            let (op, ret) = match pick {
                6 | 7 => {
                    let make = client.create(dir, &file, 0o644, true, false, Owner::current());
                    let ret = match tokio::time::timeout(PATIENCE, make).await {
                        Ok(Ok(_)) => Some(NamesRet::Done),
                        Ok(Err(FsError::Exists)) => Some(NamesRet::Refused),
                        _ => None,
                    };
                    (NamesOp::Make(name), ret)
                }
                8 => {
                    let remove = client.unlink(dir, &file);
                    let ret = match tokio::time::timeout(PATIENCE, remove).await {
                        Ok(Ok(())) => Some(NamesRet::Done),
                        Ok(Err(FsError::NotFound)) => Some(NamesRet::Refused),
                        _ => None,
                    };
                    (NamesOp::Remove(name), ret)
                }
                _ => {
                    let list = client.readdir(dir);
                    let ret = match tokio::time::timeout(PATIENCE, list).await {
                        Ok(Ok(entries)) => Some(NamesRet::Listed(
                            entries
                                .iter()
                                .filter_map(|e| e.name.strip_prefix(b"n"))
                                .map(|n| std::str::from_utf8(n).unwrap().parse().unwrap())
                                .collect(),
                        )),
                        _ => None,
                    };
                    (NamesOp::List, ret)
                }
            };
            failed = ret.is_none();
            let answered = ret.as_ref().map(|_| start.elapsed());
            recorded.names.push(Call {
                op,
                ret,
                asked,
                answered,
            });
        }
        recorded.failed += usize::from(failed);
        let pause = rand::thread_rng().gen_range(2..20);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    recorded
}

/// Clients calling at random (see [`record`]), their calls recorded.
struct Workload {
    start: Instant,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Recorded>>,
}

impl Workload {
    /// Makes the registers and the directory of names, and starts four clients, each
    /// from configuration `config(i)`, the last one that only reads.
    async fn start(config: impl Fn(usize) -> ClientConfig) -> Workload {
        let setup = Client::connect(config(0)).await.unwrap();
        let top = setup
            .mkdir(Ino::ROOT, b"history", 0o755, Owner::current())
            .await
            .unwrap();
        let names = setup
            .mkdir(top.ino, b"names", 0o777, Owner::current())
            .await
            .unwrap();
        let mut registers = Vec::new();
        for k in 0..3 {
            let name = format!("register-{k}");
            let made = setup
                .create(
                    top.ino,
                    name.as_bytes(),
                    0o666,
                    true,
                    false,
                    Owner::current(),
                )
                .await
                .unwrap();
            registers.push(made.attr.ino);
        }
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for me in 0..4 {
            let client = Client::connect(config(me)).await.unwrap();
            let (registers, stop) = (registers.clone(), stop.clone());
            let reads = me == 3;
            clients.push(tokio::spawn(record(
                client, me as u64, reads, registers, names.ino, start, stop,
            )));
        }
        Workload {
            start,
            stop,
            clients,
        }
    }

    /// Stops the clients and checks what they saw: linearizable, and calls answered
    /// after each of `events` (times since the start) once a second has passed.
    async fn check(self, events: &[Duration]) {
        self.stop.store(true, Ordering::Relaxed);
        let mut registers: Vec<Vec<history::Call<history::Register>>> = Vec::new();
        let mut names = Vec::new();
        let mut failed = 0;
        for client in self.clients {
            let recorded = client.await.unwrap();
            for (key, call) in recorded.registers {
                registers.resize_with(registers.len().max(key + 1), Vec::new);
                registers[key].push(call);
            }
            names.extend(recorded.names);
            failed += recorded.failed;
        }
        let answered_after = |since: Duration| {
            let on_registers = registers.iter().flatten().map(|c| c.answered);
            on_registers
                .chain(names.iter().map(|c| c.answered))
                .filter(|a| a.is_some_and(|a| a > since))
                .count()
        };
        let total = registers.iter().map(Vec::len).sum::<usize>() + names.len();
        let mut per_second = Vec::new();
        let answers = registers.iter().flatten().map(|c| c.answered);
        for answered in answers.chain(names.iter().map(|c| c.answered)).flatten() {
            let second = answered.as_secs() as usize;
            per_second.resize(per_second.len().max(second + 1), 0);
            per_second[second] += 1;
        }
        tracing::info!(?per_second, "calls answered in each second");
        tracing::info!(total, failed, ?events, "calls recorded");
        assert!(total >= 200, "too few calls to tell: {total}");
        for event in events {
            let after = answered_after(*event + Duration::from_secs(1));
            assert!(after >= 20, "{after} calls answered after {event:?}");
        }
        for (key, calls) in registers.iter().enumerate() {
            if let Err(e) = history::check(history::Register::default(), calls) {
                panic!("register {key}: {e}");
            }
        }
        if let Err(e) = history::check(history::Names::default(), &names) {
            panic!("the names of a directory: {e}");
        }
    }
}

/// A client configuration naming every member of `addrs`, first member `i`.
fn config_for(cluster: &DevCluster, addrs: &[SocketAddr], i: usize) -> ClientConfig {
    let mut config = ClientConfig::load(&cluster.client_config_path).unwrap();
    config.namenode = addrs[i % addrs.len()];
    config.namenodes = addrs.to_vec();
    config
}

/// Three namenode processes of a group at `addrs` (each in its namespace of `hosts`, if
/// given), the rest of a cluster in `dir`, and the path of a client configuration that
/// names them all, once the group has formed.
async fn start_group(
    dir: &Path,
    hosts: Option<&Hosts>,
    addrs: &[SocketAddr],
) -> (DevCluster, Vec<ChildNamenode>, std::path::PathBuf) {
    let mut cluster = cluster(dir, 1).await;
    cluster.stop_namenode().await.unwrap();
    let base = NamenodeConfig::load(&cluster.dir().join("namenode.toml")).unwrap();
    let log = |i: usize| cluster.dir().join(format!("namenode-{}.log", i + 1));
    let members: Vec<ChildNamenode> = (0..addrs.len())
        .map(|i| {
            let config = member_config(cluster.dir(), &base, addrs, i);
            let netns = hosts.map(|h| h.netns(i));
            ChildNamenode::start_in(netns.as_deref(), &config, &log(i))
        })
        .collect();
    wait_for_log(
        &log(0),
        "the namenode group has every member it names",
        Duration::from_secs(60),
    );
    let admin_path = cluster.dir().join("group-admin.toml");
    let admin_config = config_for(&cluster, addrs, 0);
    fs::write(&admin_path, toml::to_string_pretty(&admin_config).unwrap()).unwrap();
    (cluster, members, admin_path)
}

/// Kills the leader with SIGKILL under `workload` (the moment in `events`), and starts it
/// again 4 s later.
async fn kill_leader(
    members: &mut [ChildNamenode],
    admin: &Path,
    workload: &Workload,
    events: &mut Vec<Duration>,
) {
    let victim = tokio::task::block_in_place(|| leader(admin));
    tracing::info!(member = victim + 1, "--- the leader is killed");
    events.push(workload.start.elapsed());
    tokio::task::block_in_place(|| members[victim].kill());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| members[victim].restart());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_clients_see_is_linearizable_while_leaders_are_killed() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let (cluster, mut members, admin) = start_group(dir.path(), None, &addrs).await;

    tracing::info!("--- four clients call at random while the leader is killed twice");
    let workload = Workload::start(|i| config_for(&cluster, &addrs, i)).await;
    let mut kills = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        kill_leader(&mut members, &admin, &workload, &mut kills).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    workload.check(&kills).await;
    for member in &mut members {
        member.kill();
    }
    cluster.stop().await.unwrap();
}

/// Hosts for three namenodes: a network namespace each, on a bridge with the test's own
/// (10.78.0.1–3; the test is 10.78.0.254). Removed when dropped.
struct Hosts {
    tag: String,
}

impl Hosts {
    fn new() -> Hosts {
        let hosts = Hosts {
            tag: format!("h{}", std::process::id() % 100_000),
        };
        let t = &hosts.tag;
        hosts.ip(&format!("link add {t}br type bridge"));
        hosts.ip(&format!("addr add 10.78.0.254/24 dev {t}br"));
        hosts.ip(&format!("link set {t}br up"));
        for i in 1..=3 {
            hosts.ip(&format!("netns add {t}-{i}"));
            hosts.ip(&format!("link add {t}h{i} type veth peer name {t}n{i}"));
            hosts.ip(&format!("link set {t}h{i} master {t}br up"));
            hosts.ip(&format!("link set {t}n{i} netns {t}-{i}"));
            hosts.ip(&format!("-n {t}-{i} addr add 10.78.0.{i}/24 dev {t}n{i}"));
            hosts.ip(&format!("-n {t}-{i} link set {t}n{i} up"));
            hosts.ip(&format!("-n {t}-{i} link set lo up"));
        }
        hosts
    }

    fn ip(&self, args: &str) {
        let out = std::process::Command::new("ip")
            .args(args.split(' '))
            .output()
            .expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The namespace of host `i` (from 0).
    fn netns(&self, i: usize) -> String {
        format!("{}-{}", self.tag, i + 1)
    }

    fn addr(i: usize) -> SocketAddr {
        format!("10.78.0.{}:7070", i + 1).parse().unwrap()
    }

    /// Cuts host `i` off from the other two, both ways, or joins it again: the test
    /// still reaches every host.
    fn cut(&self, i: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for j in (0..3).filter(|j| *j != i) {
            let (ns_i, ns_j) = (self.netns(i), self.netns(j));
            self.ip(&format!(
                "-n {ns_i} route {verb} blackhole 10.78.0.{}/32",
                j + 1
            ));
            self.ip(&format!(
                "-n {ns_j} route {verb} blackhole 10.78.0.{}/32",
                i + 1
            ));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &format!("{}br", self.tag)])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_clients_see_is_linearizable_while_the_leader_is_cut_off_from_the_others() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new();
    let addrs: Vec<SocketAddr> = (0..3).map(Hosts::addr).collect();
    let (cluster, mut members, admin) = start_group(dir.path(), Some(&hosts), &addrs).await;

    tracing::info!("--- four clients call at random; the leader is cut off, then killed");
    let workload = Workload::start(|i| config_for(&cluster, &addrs, i)).await;
    let mut events = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = tokio::task::block_in_place(|| leader(&admin));
    tracing::info!(
        member = old + 1,
        "--- the leader is cut off from the others, not from clients"
    );
    hosts.cut(old, true);
    events.push(workload.start.elapsed());
    tokio::time::sleep(Duration::from_secs(8)).await;
    tracing::info!("--- joined again: it follows, the others having moved on");
    hosts.cut(old, false);
    events.push(workload.start.elapsed());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let now = tokio::task::block_in_place(|| leader(&admin));
    assert_ne!(
        now, old,
        "the member cut off leads again: did the others elect none?"
    );
    kill_leader(&mut members, &admin, &workload, &mut events).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    workload.check(&events).await;
    for member in &mut members {
        member.kill();
    }
    cluster.stop().await.unwrap();
}
