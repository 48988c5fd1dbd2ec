//! Failure domains: a block's replicas go to as many racks as there are, and come back to
//! them after a rack is lost.

use std::collections::{HashMap, HashSet};

use cairn_cli::devcluster::DevCluster;
use cairn_common::{BlockId, DatanodeId};

use crate::support::*;

/// Every block has `copies` live replicas, in `racks` distinct racks.
fn spread(
    rack: &HashMap<DatanodeId, String>,
    blocks: usize,
    copies: usize,
    racks: usize,
) -> impl Fn(&HashMap<BlockId, Vec<DatanodeId>>) -> bool + '_ {
    move |m| {
        m.len() == blocks
            && m.values().all(|at| {
                let domains: HashSet<&String> = at.iter().filter_map(|d| rack.get(d)).collect();
                at.len() == copies && domains.len() == racks
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_span_racks_and_return_to_them_after_a_rack_is_lost() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 4);
    // datanode-1 and -3 in rack a, -2 and -4 in rack b.
    opts.racks = vec!["a".into(), "b".into()];
    opts.replication = 2;
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let blocks = 12;
    let data = random_bytes(blocks * (4 << 20), 400);
    let attr = put(&client, "file", &data, 1 << 20).await;
    let racks = || async {
        client
            .datanodes()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.rack))
            .collect::<HashMap<_, _>>()
    };
    let rack = racks().await;
    assert_eq!(rack.values().filter(|r| *r == "a").count(), 2);
    wait_for_replicas(&client, attr.ino, "written", spread(&rack, blocks, 2, 2)).await;

    tracing::info!("--- rack b goes dark: the blocks get their second replica in rack a");
    cluster.stop_datanode(1).await.unwrap();
    cluster.stop_datanode(3).await.unwrap();
    wait_for_replicas(
        &client,
        attr.ino,
        "healed in rack a",
        spread(&rack, blocks, 2, 1),
    )
    .await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);

    tracing::info!("--- new datanodes join, one in each rack: every block spans both again");
    cluster.add_datanode().await.unwrap();
    cluster.add_datanode().await.unwrap();
    cluster.wait_for_datanodes(4).await.unwrap();
    let rack = racks().await;
    assert_eq!(rack.len(), 6);
    wait_for_replicas(
        &client,
        attr.ino,
        "back in two racks",
        spread(&rack, blocks, 2, 2),
    )
    .await;
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert_eq!(status["misplaced"], 0, "{status}");

    tracing::info!("--- the old rack b returns with its replicas: the surplus keeps both racks");
    cluster.start_datanode(1).await.unwrap();
    cluster.start_datanode(3).await.unwrap();
    cluster.wait_for_datanodes(6).await.unwrap();
    wait_for_replicas(&client, attr.ino, "trimmed", spread(&rack, blocks, 2, 2)).await;
    assert!(get(&client, attr.ino, 3 << 20).await == data);
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    let (_, report) = admin(&cluster, &["report"]);
    assert_eq!(report["datanodes"][0]["rack"], "a", "{report}");
    cluster.stop().await.unwrap();
}
