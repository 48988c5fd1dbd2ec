//! Self-healing: the cluster brings blocks back to their replication by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_cli::devcluster::{DevCluster, DevOptions};
use cairn_client::Client;
use cairn_common::{BlockId, DatanodeId, Ino};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_datanode_is_replaced_by_itself_and_a_returning_one_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(40 << 20, 50);
    let attr = put(&client, "big", &data, 1 << 20).await;
    let all_three = every_block(10, 3);
    wait_for_replicas(&client, attr.ino, "written", all_three).await;

    tracing::info!("--- the datanode holding most blocks stops: every block gets 3 again");
    let before = replicas(&client, attr.ino).await;
    let mut held: HashMap<DatanodeId, usize> = HashMap::new();
    for holders in before.values() {
        for h in holders {
            *held.entry(*h).or_default() += 1;
        }
    }
    let statuses = client.datanodes().await.unwrap();
    let (lost, _) = held.iter().max_by_key(|(_, n)| **n).unwrap();
    let lost_index = statuses
        .iter()
        .position(|s| s.id == *lost)
        .expect("the lost datanode is listed");
    let lost_name = statuses[lost_index].name.clone();
    let index = cluster_index(&lost_name);
    cluster.stop_datanode(index).await.unwrap();
    let lost = *lost;
    let took = wait_for_replicas(&client, attr.ino, "healed", |m| {
        all_three(m) && m.values().all(|v| !v.contains(&lost))
    })
    .await;
    tracing::info!("healed {took:?} after the stop");
    assert!(get(&client, attr.ino, 3 << 20).await == data);

    tracing::info!("--- it comes back with its blocks: the surplus copies are deleted");
    cluster.start_datanode(index).await.unwrap();
    wait_for_replicas(&client, attr.ino, "returned", |m| {
        m.values().any(|v| v.contains(&lost))
    })
    .await;
    wait_for_replicas(&client, attr.ino, "trimmed", all_three).await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    cluster.stop().await.unwrap();
}

/// Waits for the repair pass to count `blocks` under-replicated blocks that no datanode can
/// take a copy of (every live one holds them), and checks that `report`, `repair-status` and
/// their text say so.
async fn assert_unrepairable(cluster: &DevCluster, blocks: u64) {
    for _ in 0..50 {
        if admin(cluster, &["repair-status"]).1["unrepairable"] == blocks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, status) = admin(cluster, &["repair-status"]);
    assert_eq!(status["under_replicated"], blocks, "{status}");
    assert_eq!(status["unrepairable"], blocks, "{status}");
    let (_, report) = admin(cluster, &["report"]);
    assert_eq!(report["repair"]["under_replicated"], blocks, "{report}");
    for command in ["report", "repair-status"] {
        let text = admin_text(cluster, &[command]);
        assert!(
            text.contains(&format!("Cannot repair {blocks} blocks now")),
            "{command}: {text}"
        );
    }
}

/// `cairn dev` names datanodes `datanode-1`, `datanode-2`…: index 0, 1…
fn cluster_index(name: &str) -> usize {
    let n: usize = name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a dev datanode name");
    n - 1
}

/// Waits until `cairn admin report` counts `dead` dead datanodes.
async fn wait_for_dead(cluster: &DevCluster, dead: u64) {
    for _ in 0..100 {
        let (_, report) = admin(cluster, &["report"]);
        if report["totals"]["dead"] == dead {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{dead} datanodes never reported dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_report_and_fsck_tell_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(10 << 20, 60);
    put(&client, "kept", &data, 1 << 20).await;

    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    assert_eq!(fsck["summary"]["healthy"], true);
    assert_eq!(fsck["summary"]["files"], 1);
    let blocks = fsck["summary"]["blocks"].as_u64().unwrap();
    assert!(blocks >= 3, "{fsck}");
    let (_, report) = admin(&cluster, &["report"]);
    assert_eq!(report["totals"]["live"], 3, "{report}");
    assert_eq!(report["datanodes"].as_array().unwrap().len(), 3);

    tracing::info!(
        "--- one of three datanodes gone at replication 3: under-replicated, nothing missing"
    );
    cluster.stop_datanode(0).await.unwrap();
    wait_for_dead(&cluster, 1).await;
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(
        code, 3,
        "under-replicated has an exit status of its own: {fsck}"
    );
    assert_eq!(fsck["summary"]["status"], "under-replicated");
    assert_eq!(fsck["summary"]["healthy"], false);
    assert_eq!(fsck["summary"]["under_replicated"], blocks);
    assert_eq!(fsck["files"][0]["path"], "/kept");
    assert_unrepairable(&cluster, blocks).await;

    tracing::info!("--- all gone: fsck names the file, its blocks are missing, exit 1");
    cluster.stop_datanode(1).await.unwrap();
    cluster.stop_datanode(2).await.unwrap();
    wait_for_dead(&cluster, 3).await;
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 1, "{fsck}");
    assert_eq!(fsck["summary"]["missing"], blocks);
    assert_eq!(fsck["files"][0]["path"], "/kept");
    assert_eq!(fsck["files"][0]["blocks"][0]["problem"], "missing");
    // The repair pass runs once a second: its counts catch up.
    for _ in 0..50 {
        let (_, report) = admin(&cluster, &["report"]);
        if report["repair"]["missing"] == blocks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, report) = admin(&cluster, &["report"]);
    assert_eq!(report["repair"]["missing"], blocks, "{report}");

    tracing::info!("--- safe mode: held by an operator until let go");
    let (code, sm) = admin(&cluster, &["safemode", "enter"]);
    assert_eq!(
        (code, &sm["on"], &sm["manual"]),
        (0, &true.into(), &true.into())
    );
    let (_, sm) = admin(&cluster, &["safemode", "get"]);
    assert_eq!(sm["on"], true);
    let (_, sm) = admin(&cluster, &["safemode", "leave"]);
    assert_eq!(sm["on"], false);
    cluster.stop().await.unwrap();
}

/// Block files on datanode `index`'s disk.
fn blocks_on_disk(cluster: &DevCluster, index: usize) -> usize {
    walkdir(
        &cluster
            .dir()
            .join(format!("datanode-{}", index + 1))
            .join("blocks"),
    )
}

fn walkdir(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_namenode_waits_in_safe_mode_and_copies_nothing_needlessly() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DevOptions::new(dir.path(), 4);
    opts.heartbeat_interval_ms = 300;
    opts.dead_timeout_ms = 2_000;
    // Long enough for the late datanodes below to report within it on a loaded machine.
    opts.safemode_extension_ms = 10_000;
    let mut cluster = DevCluster::start(opts).await.unwrap();
    let client = cluster.client().await.unwrap();
    let data = random_bytes(24 << 20, 70);
    let attr = put(&client, "kept", &data, 1 << 20).await;
    let on_disk: Vec<usize> = (0..4).map(|i| blocks_on_disk(&cluster, i)).collect();

    tracing::info!(
        "--- restart with half the datanodes: every block is reported, not all replicas"
    );
    cluster.stop_datanode(2).await.unwrap();
    cluster.stop_datanode(3).await.unwrap();
    cluster.restart_namenode().await.unwrap();
    let (_, sm) = admin(&cluster, &["safemode", "get"]);
    assert_eq!(sm["on"], true, "{sm}");
    cluster.wait_for_datanodes(2).await.unwrap();
    // Passes run meanwhile, seeing blocks with fewer live replicas than wanted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, sm) = admin(&cluster, &["safemode", "get"]);
    assert_eq!(sm["on"], true, "the extension holds it: {sm}");
    assert_eq!(sm["blocks_reported"], sm["blocks"], "{sm}");

    tracing::info!("--- the rest report; safe mode ends; nothing was copied or deleted");
    cluster.start_datanode(2).await.unwrap();
    cluster.start_datanode(3).await.unwrap();
    for _ in 0..150 {
        if admin(&cluster, &["safemode", "get"]).1["on"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, sm) = admin(&cluster, &["safemode", "get"]);
    assert_eq!(sm["on"], false, "safe mode ends by itself: {sm}");
    // A few passes after safe mode.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert_eq!(status["copies_done"], 0, "{status}");
    assert_eq!(status["copies_in_flight"], 0, "{status}");
    assert_eq!(status["surplus_deleted"], 0, "{status}");
    assert_eq!(status["under_replicated"], 0, "{status}");
    let after: Vec<usize> = (0..4).map(|i| blocks_on_disk(&cluster, i)).collect();
    assert_eq!(after, on_disk, "no block file was added or removed");
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setrep_adds_and_removes_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(12 << 20, 80);
    let attr = put(&client, "file", &data, 1 << 20).await;
    let each = |n: usize| every_block(3, n);
    wait_for_replicas(&client, attr.ino, "written", each(3)).await;
    let (code, _) = admin(&cluster, &["setrep", "2", "/file"]);
    assert_eq!(code, 0);
    wait_for_replicas(&client, attr.ino, "down to 2", each(2)).await;
    let (code, _) = admin(&cluster, &["setrep", "4", "/file"]);
    assert_eq!(code, 0);
    wait_for_replicas(&client, attr.ino, "up to 4", each(4)).await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_keep_within_the_repair_bandwidth() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DevOptions::new(dir.path(), 1);
    opts.min_replicas = 1;
    opts.heartbeat_interval_ms = 300;
    opts.repair_bytes_per_sec = Some(1 << 20);
    let mut cluster = DevCluster::start(opts).await.unwrap();
    let client = cluster.client().await.unwrap();
    let data = random_bytes(8 << 20, 90);
    let attr = put(&client, "file", &data, 4 << 20).await;
    let blocks = replicas(&client, attr.ino).await.len();
    assert!(
        blocks >= 2,
        "two blocks, so the second copy must wait for the first"
    );

    tracing::info!("--- a second datanode joins: both blocks are copied to it, 1 MiB/s");
    cluster.add_datanode().await.unwrap();
    // When each block got its second replica.
    let mut done: HashMap<BlockId, Instant> = HashMap::new();
    let started = Instant::now();
    while done.len() < blocks {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "copies never finished"
        );
        for (block, holders) in replicas(&client, attr.ino).await {
            if holders.len() == 2 {
                done.entry(block).or_insert_with(Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first copy goes at once; each later one waits for the 4 MiB before it to have
    // had their 4 s. Unthrottled, the copies run side by side.
    let spread = *done.values().max().unwrap() - *done.values().min().unwrap();
    let least = Duration::from_secs_f64(4.0 * (blocks - 1) as f64 * 0.9);
    assert!(
        spread >= least,
        "copies spread over {spread:?}, less than the bandwidth allows"
    );
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    cluster.stop().await.unwrap();
}

/// Flips bytes in the middle of datanode `index`'s replica of `block`.
fn rot(cluster: &DevCluster, index: usize, block: &BlockId) {
    let path = block_path(cluster, index, block);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Each block of `ino` with the file offset it starts at.
async fn blocks_by_offset(client: &Client, ino: Ino) -> Vec<(u64, BlockId)> {
    let map = chunk_map(client, ino).await;
    let mut out: Vec<(u64, BlockId)> = map
        .chunks
        .iter()
        .flat_map(|(index, slices)| {
            slices.iter().map(move |s| {
                (
                    *index as u64 * cairn_common::layout::CHUNK_SIZE + s.pos as u64,
                    s.block,
                )
            })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scrubber_replaces_rotten_replicas_and_fsck_names_lost_blocks() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DevOptions::new(dir.path(), 4);
    opts.heartbeat_interval_ms = 300;
    opts.dead_timeout_ms = 2_000;
    opts.scrub = Some((1 << 30, 1));
    let cluster = DevCluster::start(opts).await.unwrap();
    let client = cluster.client().await.unwrap();
    let data = random_bytes(12 << 20, 100);
    let attr = put(&client, "file", &data, 4 << 20).await;
    let blocks = blocks_by_offset(&client, attr.ino).await;
    assert!(blocks.len() >= 3, "{blocks:?}");
    let all_three = every_block(blocks.len(), 3);
    wait_for_replicas(&client, attr.ino, "written", all_three).await;

    tracing::info!("--- one rotten replica: found, replaced from a good copy, then deleted");
    let (_, first) = blocks[0];
    let bad = holders(&cluster, &first)[0];
    rot(&cluster, bad, &first);
    let quarantine = cluster
        .dir()
        .join(format!("datanode-{}", bad + 1))
        .join("quarantine");
    let all_good = || {
        holders(&cluster, &first).iter().all(|i| {
            let bytes = std::fs::read(block_path(&cluster, *i, &first)).unwrap_or_default();
            BlockId::of(&bytes) == first
        })
    };
    let quarantined = || std::fs::read_dir(&quarantine).map_or(0, |d| d.count());
    wait_for_replicas(&client, attr.ino, "replaced", |m| {
        // The end state: three good replicas, the bad one gone from disk.
        all_three(m) && all_good() && quarantined() == 0
    })
    .await;
    for i in holders(&cluster, &first) {
        let bytes = std::fs::read(block_path(&cluster, i, &first)).unwrap();
        assert_eq!(BlockId::of(&bytes), first, "every replica on disk is good");
    }
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    assert!(get(&client, attr.ino, 3 << 20).await == data);

    tracing::info!("--- every replica of one block rotten: fsck names it, its range fails");
    let (offset, second) = blocks[1];
    for i in holders(&cluster, &second) {
        rot(&cluster, i, &second);
    }
    let mut fsck = serde_json::Value::Null;
    for _ in 0..100 {
        let (code, out) = admin(&cluster, &["fsck", "/"]);
        fsck = out;
        if code == 1 && fsck["summary"]["corrupt"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fsck["summary"]["corrupt"], 1, "{fsck}");
    assert_eq!(fsck["summary"]["healthy"], false);
    assert_eq!(fsck["files"][0]["path"], "/file");
    let named: Vec<&serde_json::Value> = fsck["files"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["problem"] == "corrupt")
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["block"], second.to_hex());
    let reader = cluster.client().await.unwrap();
    let mut f = reader.open(attr.ino).await.unwrap();
    assert!(f.read(offset, 4096).await.is_err(), "the lost range fails");
    let (other, _) = blocks[2];
    let got = f.read(other, 4096).await.unwrap();
    assert!(
        got[..] == data[other as usize..other as usize + 4096],
        "the rest reads"
    );
    let got = f.read(0, 4096).await.unwrap();
    assert!(got[..] == data[..4096]);
    drop(f);
    cluster.stop().await.unwrap();
}

/// The admin state `cairn admin report` shows for datanode `name`.
fn admin_state(cluster: &DevCluster, name: &str) -> String {
    let (_, report) = admin(cluster, &["report"]);
    report["datanodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .map(|d| d["admin"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decommissioned_datanode_is_drained_without_ever_losing_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(40 << 20, 110);
    let attr = put(&client, "big", &data, 1 << 20).await;
    wait_for_replicas(&client, attr.ino, "written", every_block(10, 3)).await;
    let (code, _) = admin(&cluster, &["decommission", "datanode-2"]);
    assert_eq!(code, 0);
    let statuses = client.datanodes().await.unwrap();
    let leaving = statuses.iter().find(|s| s.name == "datanode-2").unwrap().id;

    tracing::info!("--- drain under load: a writer goes on; no block ever has fewer than 3");
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let more = random_bytes(16 << 20, 111);
            put(&client, "written-meanwhile", &more, 1 << 20).await;
            more
        })
    };
    let started = Instant::now();
    loop {
        let now = replicas(&client, attr.ino).await;
        assert!(
            now.values().all(|v| v.len() >= 3),
            "a block fell below 3 readable replicas: {now:?}"
        );
        if admin_state(&cluster, "datanode-2") == "decommissioned" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "drain never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let more = writer.await.unwrap();
    let now = replicas(&client, attr.ino).await;
    assert!(
        now.values()
            .all(|v| v.iter().filter(|d| **d != leaving).count() >= 3),
        "every block has 3 replicas besides the drained node: {now:?}"
    );

    tracing::info!("--- switched off: nothing is under-replicated, everything reads");
    cluster.stop_datanode(1).await.unwrap();
    wait_for_dead(&cluster, 1).await;
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    assert_eq!(fsck["summary"]["under_replicated"], 0, "{fsck}");
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    let meanwhile = client.resolve("/written-meanwhile").await.unwrap();
    assert!(get(&client, meanwhile.ino, 3 << 20).await == more);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datanode_in_maintenance_is_not_replaced_while_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(20 << 20, 120);
    let attr = put(&client, "file", &data, 1 << 20).await;
    wait_for_replicas(&client, attr.ino, "written", every_block(5, 3)).await;
    let (code, _) = admin(&cluster, &["maintenance", "datanode-3"]);
    assert_eq!(code, 0);
    assert_eq!(admin_state(&cluster, "datanode-3"), "maintenance");
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(4).await.unwrap();
    assert_eq!(
        admin_state(&cluster, "datanode-3"),
        "maintenance",
        "it outlives a namenode restart"
    );

    tracing::info!("--- it goes down past the dead timeout: nothing is copied");
    cluster.stop_datanode(2).await.unwrap();
    wait_for_dead(&cluster, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert_eq!(status["copies_done"], 0, "{status}");
    assert_eq!(status["copies_in_flight"], 0, "{status}");
    assert_eq!(status["under_replicated"], 0, "{status}");
    assert!(
        get(&client, attr.ino, 3 << 20).await == data,
        "the others serve reads"
    );

    tracing::info!("--- back, and out of maintenance: as before");
    cluster.start_datanode(2).await.unwrap();
    let (code, _) = admin(&cluster, &["maintenance", "datanode-3", "--end"]);
    assert_eq!(code, 0);
    assert_eq!(admin_state(&cluster, "datanode-3"), "normal");
    wait_for_replicas(&client, attr.ino, "back", every_block(5, 3)).await;
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert_eq!(status["copies_done"], 0, "{status}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_left_with_one_replica_are_repaired_first() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 4);
    // One copy at a time per datanode, and slow ones: the order shows.
    opts.repair_copies_per_node = 1;
    opts.repair_bytes_per_sec = Some(16 << 20);
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let blocks = 24;
    let data = random_bytes(blocks * (4 << 20), 130);
    let attr = put(&client, "file", &data, 1 << 20).await;
    wait_for_replicas(&client, attr.ino, "written", every_block(blocks, 3)).await;

    tracing::info!("--- two datanodes die: blocks they both held keep one replica");
    // Each block is on three of the four datanodes. The one-replica blocks are those
    // missing a survivor, copied from the other survivor only: survivors missing as many
    // blocks as each other have as many to send, so a survivor that runs out of them early
    // (and rightly moves on to two-replica blocks) does not blur the order.
    let statuses = client.datanodes().await.unwrap();
    let before = replicas(&client, attr.ino).await;
    let missing = |id: DatanodeId| before.values().filter(|at| !at.contains(&id)).count();
    let nodes: Vec<(usize, DatanodeId, usize)> = statuses
        .iter()
        .map(|s| (missing(s.id), s.id, cluster_index(&s.name)))
        .collect();
    // Survivors (i, j): closest in blocks missing, then one- and two-replica blocks even.
    let pairs = (0..4).flat_map(|i| (i + 1..4).map(move |j| (i, j)));
    let (i, j) = pairs
        .min_by_key(|&(i, j)| {
            let one = nodes[i].0 + nodes[j].0;
            (nodes[i].0.abs_diff(nodes[j].0), one.abs_diff(blocks - one))
        })
        .unwrap();
    let skew = nodes[i].0.abs_diff(nodes[j].0);
    let dying: Vec<(DatanodeId, usize)> = (0..4)
        .filter(|k| *k != i && *k != j)
        .map(|k| (nodes[k].1, nodes[k].2))
        .collect();
    let killed: Vec<DatanodeId> = dying.iter().map(|(id, _)| *id).collect();
    let left = |at: &Vec<DatanodeId>| at.iter().filter(|d| !killed.contains(d)).count();
    let one: Vec<BlockId> = before
        .iter()
        .filter(|(_, at)| left(at) == 1)
        .map(|(b, _)| *b)
        .collect();
    let two: Vec<BlockId> = before
        .iter()
        .filter(|(_, at)| left(at) == 2)
        .map(|(b, _)| *b)
        .collect();
    assert!(
        one.len() >= 3 && two.len() >= 3 && skew * 2 < two.len(),
        "placement gave {} one-replica blocks ({skew} more from one survivor than the \
         other) and {} two-replica blocks",
        one.len(),
        two.len()
    );
    for (_, index) in &dying {
        cluster.stop_datanode(*index).await.unwrap();
    }
    tracing::info!("--- new datanodes join before the two are declared dead");
    cluster.add_datanode().await.unwrap();
    cluster.add_datanode().await.unwrap();

    // When each one-replica block got its second replica, and each two-replica block its third.
    let mut second: HashMap<BlockId, Instant> = HashMap::new();
    let mut third: HashMap<BlockId, Instant> = HashMap::new();
    let started = Instant::now();
    while second.len() < one.len() || third.len() < two.len() {
        assert!(
            started.elapsed() < REPLICAS_WITHIN * 2,
            "repair stalled: {} of {} one-replica blocks at 2, {} of {} two-replica blocks at 3",
            second.len(),
            one.len(),
            third.len(),
            two.len()
        );
        let now = replicas(&client, attr.ino).await;
        let at = Instant::now();
        for b in &one {
            if left(&now[b]) >= 2 {
                second.entry(*b).or_insert(at);
            }
        }
        for b in &two {
            if left(&now[b]) >= 3 {
                third.entry(*b).or_insert(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_second = *second.values().max().unwrap();
    let overtaken = third.values().filter(|t| **t < last_second).count();
    tracing::info!(
        "one-replica blocks safe after {:?}; {overtaken} of {} two-replica blocks finished before",
        last_second - started,
        two.len()
    );
    // Reversed, every two-replica block would finish first.
    assert!(
        overtaken * 2 <= two.len() + skew * 2,
        "{overtaken} of {} two-replica blocks got their third replica before the last \
         one-replica block got its second (one survivor had {skew} more to send)",
        two.len()
    );
    wait_for_replicas(&client, attr.ino, "healed", |m| {
        m.len() == blocks && m.values().all(|at| left(at) >= 3)
    })
    .await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_balancer_fills_an_empty_datanode_without_losing_a_replica() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 3);
    opts.datanode_capacity = Some(256 << 20);
    // Every copy counts for an fsync: one moved away must be synced where it went.
    opts.min_replicas = 3;
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let blocks = 24;
    let data = random_bytes(blocks * (4 << 20), 140);
    let attr = put(&client, "file", &data, 1 << 20).await;
    wait_for_replicas(&client, attr.ino, "written", every_block(blocks, 3)).await;
    let (code, _) = admin(&cluster, &["balance", "--threshold", "0"]);
    assert_ne!(code, 0, "a threshold of 0 is refused");

    tracing::info!("--- an empty datanode joins; the balancer moves replicas to it");
    let added = cluster.add_datanode().await.unwrap();
    cluster.wait_for_datanodes(4).await.unwrap();
    // The heartbeats after the join carry its usage.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let config = cluster.dir().join("cairn-client.toml");
    let balancing = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "admin",
                "balance",
                "--threshold",
                "10",
                "--json",
                "--config",
            ])
            .arg(config)
            .output()
            .expect("run cairn")
    });
    let mut fewest = usize::MAX;
    while !balancing.is_finished() {
        let now = replicas(&client, attr.ino).await;
        fewest = fewest.min(now.values().map(Vec::len).min().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = balancing.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fewest >= 3,
        "a block fell to {fewest} replicas while balancing"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "balanced", "{status}");
    assert!(status["moves_done"].as_u64().unwrap() >= 8, "{status}");
    let average = status["average_pct"].as_f64().unwrap();
    for node in status["nodes"].as_array().unwrap() {
        let used = node["used_pct"].as_f64().unwrap();
        assert!(
            (used - average).abs() <= 10.5,
            "{node} vs {average}%: {status}"
        );
    }
    let on_new = holders_count(&cluster, added, &file_blocks(&client, attr.ino).await);
    assert!(on_new >= 8, "the new datanode holds {on_new} blocks");
    wait_for_replicas(&client, attr.ino, "trimmed", every_block(blocks, 3)).await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    // The blocks written above were not synced yet, and some are no longer where they were
    // written: an fsync syncs them where they are now.
    let mut f = client.open(attr.ino).await.unwrap();
    f.fsync().await.expect("fsync of a file whose blocks moved");
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    cluster.stop().await.unwrap();
}

/// How many of `blocks` datanode `index` has on its disk.
fn holders_count(cluster: &DevCluster, index: usize, blocks: &[BlockId]) -> usize {
    blocks
        .iter()
        .filter(|b| holders(cluster, b).contains(&index))
        .count()
}

/// A datanode running as a process of its own, killed with SIGKILL when dropped.
struct ChildDatanode(std::process::Child);

impl ChildDatanode {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildDatanode {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datanode_killed_under_a_gigabyte_is_replaced_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();

    tracing::info!("--- datanode-4 runs as a process of its own, to be killed with -9");
    cluster.stop_datanode(3).await.unwrap();
    wait_for_dead(&cluster, 1).await;
    let mut victim = ChildDatanode(
        std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .arg("datanode")
            .arg("--config")
            .arg(cluster.dir().join("datanode-4.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start cairn datanode"),
    );
    cluster.wait_for_datanodes(4).await.unwrap();
    wait_for_dead(&cluster, 0).await;
    let victim_id = client
        .datanodes()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "datanode-4")
        .expect("datanode-4 listed")
        .id;

    let blocks = 256;
    let data = std::sync::Arc::new(random_bytes(blocks * (4 << 20), 150));
    let attr = put(&client, "gigabyte", &data, 4 << 20).await;
    wait_for_replicas(&client, attr.ino, "written", every_block(blocks, 3)).await;
    let held = replicas(&client, attr.ino)
        .await
        .values()
        .filter(|at| at.contains(&victim_id))
        .count();
    assert!(held > blocks / 2, "datanode-4 holds {held} blocks");

    tracing::info!("--- a reader goes over the file again and again while datanode-4 dies");
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (client, data, reading) = (client.clone(), data.clone(), reading.clone());
        tokio::spawn(async move {
            let mut passes = 0;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = client.open(attr.ino).await.expect("open");
                let mut at = 0;
                while at < data.len() {
                    let got = f.read(at as u64, 32 << 20).await.expect("read");
                    assert!(!got.is_empty(), "pass {passes}: short read at {at}");
                    assert!(
                        got[..] == data[at..at + got.len()],
                        "pass {passes}: bytes differ at {at}"
                    );
                    at += got.len();
                }
                passes += 1;
            }
            passes
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    victim.kill();
    let started = Instant::now();
    loop {
        let now = replicas(&client, attr.ino).await;
        let healed = now.len() == blocks
            && now
                .values()
                .all(|at| at.len() >= 3 && !at.contains(&victim_id));
        if healed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "not healed in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::info!("healed {:?} after the kill", started.elapsed());
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let passes = reader.await.expect("every read matched");
    assert!(passes >= 1, "the reader finished {passes} passes");
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    assert_eq!(fsck["summary"]["under_replicated"], 0, "{fsck}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_datanode_does_not_scrub_everything_again() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 1);
    opts.replication = 1;
    opts.min_replicas = 1;
    // Full speed, a pass an hour: the one at the first start is the only one due.
    opts.scrub = Some((1 << 30, 3600));
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    put(&client, "file", &random_bytes(8 << 20, 160), 1 << 20).await;
    let scrub = |client: &Client| {
        let client = client.clone();
        async move { client.datanodes().await.unwrap()[0].scrub }
    };
    let state = cluster.datanodes[0].config.data_dir.join("scrub-state");
    let started = Instant::now();
    while !state.exists() || scrub(&client).await.passes == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no first pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("--- restarted within the period: no new pass");
    cluster.stop_datanode(0).await.unwrap();
    cluster.start_datanode(0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = scrub(&client).await;
    assert_eq!((after.passes, after.bytes_this_pass), (0, 0), "{after:?}");

    tracing::info!("--- without its scrub state, a pass over everything starts at once");
    cluster.stop_datanode(0).await.unwrap();
    std::fs::remove_file(&state).unwrap();
    cluster.start_datanode(0).await.unwrap();
    let started = Instant::now();
    loop {
        let p = scrub(&client).await;
        if p.passes == 1 && p.last_pass_bytes == 8 << 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_replication_nothing_can_repair_is_told_and_cleared_by_a_new_datanode() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(6 << 20, 61);
    let attr = put(&client, "kept", &data, 1 << 20).await;
    let blocks = admin(&cluster, &["fsck", "/"]).1["summary"]["blocks"]
        .as_u64()
        .unwrap();

    tracing::info!("--- replication 3 on 3 datanodes, one dies: short, and nowhere to copy");
    cluster.stop_datanode(1).await.unwrap();
    wait_for_dead(&cluster, 1).await;
    assert_unrepairable(&cluster, blocks).await;
    let text = admin_text(&cluster, &["fsck", "/"]);
    assert!(text.contains("Status: UNDER-REPLICATED"), "{text}");
    assert!(text.contains("Cannot repair"), "{text}");

    tracing::info!("--- a fourth datanode joins: the blocks are copied to it and it clears");
    cluster.add_datanode().await.unwrap();
    wait_for_replicas(
        &client,
        attr.ino,
        "repaired",
        every_block(blocks as usize, 3),
    )
    .await;
    for _ in 0..50 {
        if admin(&cluster, &["repair-status"]).1["under_replicated"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert_eq!(
        (&status["under_replicated"], &status["unrepairable"]),
        (&0.into(), &0.into()),
        "{status}"
    );
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!((code, &fsck["summary"]["status"]), (0, &"healthy".into()));
    cluster.stop().await.unwrap();
}

/// The state `cairn admin report` shows for each datanode, by name.
fn states(cluster: &DevCluster) -> Vec<(String, String)> {
    let (_, report) = admin(cluster, &["report"]);
    report["datanodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let field = |f: &str| d[f].as_str().unwrap().to_string();
            (field("name"), field("state"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_datanode_stays_listed_across_restarts_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 3).await;
    cluster.stop_datanode(2).await.unwrap();
    wait_for_dead(&cluster, 1).await;

    tracing::info!("--- the namenode restarts: the dead one is still listed, dead");
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(2).await.unwrap();
    let listed = states(&cluster);
    assert!(
        listed.contains(&("datanode-3".into(), "dead".into())),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 3, "{listed:?}");
    let text = admin_text(&cluster, &["report"]);
    assert!(text.contains("datanode-3"), "{text}");

    tracing::info!("--- forgetting a live one is refused; the dead one goes");
    let out = admin_text(&cluster, &["forget", "datanode-1"]);
    assert!(out.contains("not dead"), "{out}");
    let out = admin_text(&cluster, &["forget", "datanode-3"]);
    assert!(out.contains("forgotten"), "{out}");
    assert_eq!(states(&cluster).len(), 2);
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(2).await.unwrap();
    // Past the dead timeout, a datanode not heard since the restart would show.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(states(&cluster).len(), 2, "{:?}", states(&cluster));

    tracing::info!("--- it comes back after all: listed again");
    cluster.start_datanode(2).await.unwrap();
    cluster.wait_for_datanodes(3).await.unwrap();
    assert!(states(&cluster).contains(&("datanode-3".into(), "live".into())));
    cluster.stop().await.unwrap();
}
