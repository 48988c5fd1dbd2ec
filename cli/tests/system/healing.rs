//! Self-healing: the cluster brings blocks back to their replication by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_cli::devcluster::{DevCluster, DevOptions};
use cairn_client::Client;
use cairn_common::{BlockId, DatanodeId, Ino};

use crate::support::*;

/// A cluster of `datanodes` that notices a silent datanode within a few seconds.
async fn quick_cluster(dir: &std::path::Path, datanodes: usize) -> DevCluster {
    init_tracing();
    let mut opts = DevOptions::new(dir, datanodes);
    opts.heartbeat_interval_ms = 300;
    opts.dead_timeout_ms = 2_000;
    DevCluster::start(opts).await.expect("cluster starts")
}

/// Live replica holders of each block of `ino`, by the namenode's map.
async fn replicas(client: &Client, ino: Ino) -> HashMap<BlockId, Vec<DatanodeId>> {
    let map = chunk_map(client, ino).await;
    map.locations
        .into_iter()
        .map(|(block, at)| (block, at.into_iter().map(|a| a.id).collect()))
        .collect()
}

/// Waits until `done` holds for the replica map of `ino`, up to `limit`; returns how long.
async fn wait_for_replicas(
    client: &Client,
    ino: Ino,
    limit: Duration,
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
            started.elapsed() < limit,
            "{what}: not reached after {limit:?}; replicas: {:?}",
            now.values().map(|v| v.len()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_datanode_is_replaced_by_itself_and_a_returning_one_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = quick_cluster(dir.path(), 4).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(40 << 20, 50);
    let attr = put(&client, "big", &data, 1 << 20).await;
    let all_three =
        |m: &HashMap<BlockId, Vec<DatanodeId>>| m.len() == 10 && m.values().all(|v| v.len() == 3);
    wait_for_replicas(
        &client,
        attr.ino,
        Duration::from_secs(10),
        "written",
        all_three,
    )
    .await;

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
    let took = wait_for_replicas(&client, attr.ino, Duration::from_secs(60), "healed", |m| {
        all_three(m) && m.values().all(|v| !v.contains(&lost))
    })
    .await;
    tracing::info!("healed {took:?} after the stop");
    assert!(get(&client, attr.ino, 3 << 20).await == data);

    tracing::info!("--- it comes back with its blocks: the surplus copies are deleted");
    cluster.start_datanode(index).await.unwrap();
    wait_for_replicas(
        &client,
        attr.ino,
        Duration::from_secs(30),
        "returned",
        |m| m.values().any(|v| v.contains(&lost)),
    )
    .await;
    wait_for_replicas(
        &client,
        attr.ino,
        Duration::from_secs(30),
        "trimmed",
        all_three,
    )
    .await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    cluster.stop().await.unwrap();
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
