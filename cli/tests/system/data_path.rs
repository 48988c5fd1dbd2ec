//! Files in and out: replication on disk, overwrites, restarts, failures, corruption.

use cairn_common::Ino;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_mib_file_round_trips_with_three_replicas_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();

    tracing::info!("--- put 200 MiB");
    let data = random_bytes(200 << 20, 1);
    let attr = put(&client, "big", &data, 1 << 20).await;
    assert_eq!(attr.size, data.len() as u64);

    tracing::info!("--- get it back");
    let back = get(&client, attr.ino, 16 << 20).await;
    assert!(back == data, "bytes differ");

    tracing::info!("--- every block is on three datanodes' disks");
    let blocks = file_blocks(&client, attr.ino).await;
    assert_eq!(blocks.len(), 50);
    for b in &blocks {
        assert_eq!(holders(&cluster, b).len(), 3, "block {b} replicas on disk");
    }
    let _ = Ino::ROOT;
    cluster.stop().await.unwrap();
}
