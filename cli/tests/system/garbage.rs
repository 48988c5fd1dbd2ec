//! Garbage collection: blocks nothing references leave the datanodes after the grace period,
//! and live blocks never do, whoever is unreachable meanwhile.

use std::time::{Duration, Instant};

use cairn_cli::devcluster::DevCluster;
use cairn_client::{Client, ClientConfig, NewFile, Owner};
use cairn_common::attr::Timestamp;
use cairn_common::layout::{Slice, MAX_BLOCK_SIZE};
use cairn_common::proto::{CommitSlices, GetMetaHealth};
use cairn_common::{BlockId, FsError, Ino};

use crate::support::*;

/// The grace period of these tests: the least the namenode accepts.
const GRACE: Duration = Duration::from_secs(10);
/// How long a silent client keeps its session (and so its uploads).
const LEASE: Duration = Duration::from_secs(15);

/// The blocks a client makes of `data` written from offset 0 in one go.
fn blocks_of(data: &[u8]) -> Vec<BlockId> {
    data.chunks(MAX_BLOCK_SIZE as usize)
        .map(BlockId::of)
        .collect()
}

/// Waits (up to `within`) until `done` holds for the disks of `cluster`.
async fn wait_for_disks(
    cluster: &DevCluster,
    what: &str,
    within: Duration,
    done: impl Fn(&DevCluster) -> bool,
) -> Duration {
    let started = Instant::now();
    while !done(cluster) {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

fn nowhere(blocks: &[BlockId]) -> impl Fn(&DevCluster) -> bool + '_ {
    move |c| blocks.iter().all(|b| holders(c, b).is_empty())
}

fn everywhere(blocks: &[BlockId], copies: usize) -> impl Fn(&DevCluster) -> bool + '_ {
    move |c| blocks.iter().all(|b| holders(c, b).len() >= copies)
}

/// A client in a runtime of its own stores whole blocks of a new file, then dies (its
/// runtime stops, with its renewals) before committing them.
fn die_mid_upload(config: std::path::PathBuf, data: Vec<u8>, cluster_blocks: impl Fn() -> bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = Client::connect(ClientConfig::load(&config).unwrap())
            .await
            .unwrap();
        let (_, mut file) = client
            .create_open(NewFile {
                parent: Ino::ROOT,
                name: b"partial",
                perm: 0o644,
                exclusive: true,
                truncate: false,
                owner: Owner::current(),
            })
            .await
            .unwrap();
        // One byte past the whole blocks: they go out, the byte stays buffered.
        file.write(0, &data).await.unwrap();
        file.write(data.len() as u64, b"!").await.unwrap();
        let started = Instant::now();
        while !cluster_blocks() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "uploads stored"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Never closed, never committed.
        std::mem::forget(file);
        std::mem::forget(client);
    });
    runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_goes_after_its_grace_and_live_blocks_never_do() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 4);
    opts.gc_grace_ms = GRACE.as_millis() as u64;
    opts.open_lease_ms = LEASE.as_millis() as u64;
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let live_data = random_bytes(3 * MAX_BLOCK_SIZE as usize, 200);
    let live = put(&client, "live", &live_data, 1 << 20).await;
    let live_blocks = blocks_of(&live_data);
    assert_eq!(file_blocks(&client, live.ino).await.len(), 3);
    let doomed_data = random_bytes(2 * MAX_BLOCK_SIZE as usize, 201);
    put(&client, "doomed", &doomed_data, 1 << 20).await;
    let doomed_blocks = blocks_of(&doomed_data);
    wait_for_disks(
        &cluster,
        "written",
        Duration::from_secs(30),
        everywhere(&live_blocks, 3),
    )
    .await;

    tracing::info!("--- out of safe mode, a slice of a block no datanode holds is refused");
    let started = Instant::now();
    while admin(&cluster, &["safemode"]).1["on"] != false {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "safe mode lasts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ghost = BlockId::of(b"never stored");
    let res = client
        .namenode(CommitSlices {
            ino: live.ino,
            slices: vec![(
                0,
                Slice {
                    pos: 3 * MAX_BLOCK_SIZE,
                    len: 12,
                    block: ghost,
                    block_off: 0,
                    block_len: 12,
                },
            )],
            size: 3 * MAX_BLOCK_SIZE as u64 + 12,
            mtime: Timestamp::now(),
        })
        .await;
    assert!(matches!(res, Err(FsError::Io(_))), "{res:?}");
    assert_eq!(client.getattr(live.ino).await.unwrap().size, live.size);

    tracing::info!("--- a client dies mid-upload, and a file is removed");
    let partial_data = random_bytes(3 * MAX_BLOCK_SIZE as usize, 202);
    let partial_blocks = blocks_of(&partial_data);
    let uploaded = {
        let holders: Vec<Vec<std::path::PathBuf>> = partial_blocks
            .iter()
            .map(|b| (0..4).map(|i| block_path(&cluster, i, b)).collect())
            .collect();
        move || holders.iter().all(|paths| paths.iter().any(|p| p.exists()))
    };
    let config = cluster.client_config_path.clone();
    let died = Instant::now();
    std::thread::spawn(move || die_mid_upload(config, partial_data, uploaded))
        .join()
        .expect("the client ran");
    client.unlink(Ino::ROOT, b"doomed").await.unwrap();
    let removed = Instant::now();
    assert!(
        everywhere(&doomed_blocks, 1)(&cluster) && everywhere(&partial_blocks, 1)(&cluster),
        "nothing is deleted at once"
    );
    wait_for_disks(
        &cluster,
        "removed file's blocks collected",
        GRACE * 6,
        nowhere(&doomed_blocks),
    )
    .await;
    assert!(
        removed.elapsed() >= GRACE,
        "collected {:?} after the removal, within the grace period",
        removed.elapsed()
    );
    wait_for_disks(
        &cluster,
        "dead client's uploads collected",
        (LEASE + GRACE) * 4,
        nowhere(&partial_blocks),
    )
    .await;
    assert!(
        died.elapsed() >= GRACE,
        "uploads collected {:?} after the client died",
        died.elapsed()
    );
    assert!(everywhere(&live_blocks, 3)(&cluster), "live blocks stay");
    let (_, status) = admin(&cluster, &["repair-status"]);
    assert!(
        status["garbage_collected"].as_u64().unwrap() >= 5,
        "{status}"
    );

    tracing::info!("--- a datanode is away while a file's blocks are collected");
    let again_data = random_bytes(2 * MAX_BLOCK_SIZE as usize, 203);
    let again_blocks = blocks_of(&again_data);
    put(&client, "again", &again_data, 1 << 20).await;
    wait_for_disks(
        &cluster,
        "written",
        Duration::from_secs(30),
        everywhere(&again_blocks, 3),
    )
    .await;
    let away = holders(&cluster, &again_blocks[0])[0];
    cluster.stop_datanode(away).await.unwrap();
    client.unlink(Ino::ROOT, b"again").await.unwrap();
    wait_for_disks(
        &cluster,
        "collected on the datanodes still there",
        GRACE * 6,
        |c| {
            again_blocks
                .iter()
                .all(|b| holders(c, b).iter().all(|i| *i == away))
        },
    )
    .await;
    assert!(
        !holders(&cluster, &again_blocks[0]).is_empty(),
        "the absent datanode still has its copy"
    );
    let started = Instant::now();
    loop {
        let (_, status) = admin(&cluster, &["repair-status"]);
        if status["garbage_deleting"] == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    tracing::info!("--- the same bytes are stored again, then the datanode returns");
    let back = put(&client, "again-2", &again_data, 1 << 20).await;
    cluster.start_datanode(away).await.unwrap();
    cluster.wait_for_datanodes(4).await.unwrap();
    // Its old copies are the same bytes: they count, and at most the surplus goes.
    tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
    let map = chunk_map(&client, back.ino).await;
    for (block, at) in &map.locations {
        assert!(at.len() >= 3, "block {block} has {} replicas", at.len());
    }
    assert!(get(&client, back.ino, 3 << 20).await == again_data);
    assert!(get(&client, live.ino, 3 << 20).await == live_data);
    assert!(everywhere(&live_blocks, 3)(&cluster), "live blocks stay");
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    cluster.stop().await.unwrap();
}

/// A copy by reference (`copy_file_range`) holds the blocks it names: they outlive the
/// source past the grace period, and go once no copy names them, removed or punched out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copied_blocks_live_as_long_as_a_slice_names_them() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 3);
    opts.gc_grace_ms = GRACE.as_millis() as u64;
    let cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let data = random_bytes(2 * MAX_BLOCK_SIZE as usize + 1000, 210);
    let orig = put(&client, "orig", &data, 1 << 20).await;
    let blocks = blocks_of(&data);
    let whole = put(&client, "whole", &[], 1).await.ino;
    let part = put(&client, "part", &[], 1).await.ino;
    let copied = client
        .copy_range(orig.ino, 0, whole, 0, u64::MAX)
        .await
        .unwrap();
    assert_eq!((copied.len, copied.attr.size), (orig.size, orig.size));
    // Unaligned at both ends: its slices start and end inside the blocks.
    let copied = client
        .copy_range(orig.ino, 1000, part, 5, 5 << 20)
        .await
        .unwrap();
    assert_eq!((copied.len, copied.attr.size), (5 << 20, 5 + (5 << 20)));
    let mut part_data = [&[0u8; 5][..], &data[1000..1000 + (5 << 20)]].concat();
    assert_eq!(file_blocks(&client, part).await.len(), 2);
    // A hole inside the slice of the first block: the slice is cut in two.
    client.punch(part, 1 << 20, 4096, true).await.unwrap();
    part_data[1 << 20..(1 << 20) + 4096].fill(0);

    tracing::info!("--- the source removed: its blocks stay past the grace period");
    client.unlink(Ino::ROOT, b"orig").await.unwrap();
    tokio::time::sleep(GRACE + Duration::from_secs(5)).await;
    assert!(
        everywhere(&blocks, 3)(&cluster),
        "copied blocks were collected"
    );
    assert!(get(&client, whole, 3 << 20).await == data);
    assert!(get(&client, part, 3 << 20).await == part_data);

    tracing::info!("--- one copy removed, the other's first piece punched: the rest stays");
    client.unlink(Ino::ROOT, b"whole").await.unwrap();
    client.punch(part, 0, 1 << 20, true).await.unwrap();
    part_data[..1 << 20].fill(0);
    tokio::time::sleep(GRACE + Duration::from_secs(5)).await;
    assert!(
        everywhere(&blocks[..2], 3)(&cluster),
        "blocks still named by a copy were collected"
    );
    assert!(get(&client, part, 3 << 20).await == part_data);

    tracing::info!("--- the last copy punched whole: a hole of the same size, the blocks go");
    let punched = client.punch(part, 0, u64::MAX >> 20, true).await.unwrap();
    assert_eq!(punched.size, part_data.len() as u64);
    assert!(file_blocks(&client, part).await.is_empty());
    wait_for_disks(
        &cluster,
        "punched blocks collected",
        GRACE * 6,
        nowhere(&blocks),
    )
    .await;
    assert!(get(&client, part, 3 << 20).await.iter().all(|b| *b == 0));
    client.unlink(Ino::ROOT, b"part").await.unwrap();
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    cluster.stop().await.unwrap();
}

/// The namenode comes back on an empty metadata directory (a disk that did not mount, a
/// wrong path): it formats a new namespace, and the datanodes, which hold the blocks of the
/// old one, refuse to join it, so it never takes their blocks for garbage. Back on its own
/// directory, the namenode has them again, data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namenode_formatted_anew_does_not_collect_the_old_namespaces_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 2);
    opts.gc_grace_ms = GRACE.as_millis() as u64;
    opts.replication = 2;
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let data = random_bytes(6 << 20, 77);
    let file = put(&client, "kept", &data, 1 << 20).await;
    let blocks = file_blocks(&client, file.ino).await;
    assert!(blocks.iter().all(|b| holders(&cluster, b).len() == 2));
    let cluster_id = |c: Client| async move { c.namenode(GetMetaHealth).await.unwrap().cluster };
    let ours = cluster_id(client).await;

    tracing::info!("--- the namenode restarts on an empty metadata directory");
    cluster.stop_namenode().await.unwrap();
    let meta = cluster.namenodes[0].config.meta_dir.clone();
    let aside = dir.path().join("namenode-aside");
    std::fs::rename(&meta, &aside).unwrap();
    cluster.start_namenode().await.unwrap();
    let client = cluster.client().await.unwrap();
    assert!(
        client.readdir(Ino::ROOT).await.unwrap().is_empty(),
        "a new namespace"
    );
    assert_ne!(cluster_id(client.clone()).await, ours);
    // Past the grace period: had the datanodes joined, their blocks would be garbage now.
    let waited = Instant::now();
    while waited.elapsed() < GRACE + Duration::from_secs(5) {
        let joined = client.datanodes().await.unwrap();
        assert!(
            joined.is_empty(),
            "a datanode joined a namespace not its own: {joined:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for b in &blocks {
        assert_eq!(holders(&cluster, b).len(), 2, "block {b} was deleted");
    }
    drop(client);

    tracing::info!("--- back on its own directory: the datanodes join, the file reads whole");
    cluster.stop_namenode().await.unwrap();
    std::fs::remove_dir_all(&meta).unwrap();
    std::fs::rename(&aside, &meta).unwrap();
    cluster.start_namenode().await.unwrap();
    cluster.wait_for_datanodes(2).await.unwrap();
    let client = cluster.client().await.unwrap();
    assert_eq!(cluster_id(client.clone()).await, ours);
    let back = client.resolve("/kept").await.unwrap();
    assert!(get(&client, back.ino, 1 << 20).await == data);
    cluster.stop().await.unwrap();
}

/// A block's record that lost its count of references (a bug, a bad disk) does not get the
/// block deleted: before garbage goes, the namenode reads the chunk maps for it, keeps a
/// block one names, and `cairn admin fsck` shows the wrong count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_whose_record_lost_its_count_is_not_collected() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 3);
    opts.gc_grace_ms = GRACE.as_millis() as u64;
    let mut cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let data = random_bytes(300_000, 230);
    let file = put(&client, "kept", &data, 1 << 20).await.ino;
    let blocks = blocks_of(&data);
    let garbage = random_bytes(200_000, 231);
    put(&client, "gone", &garbage, 1 << 20).await;
    let garbage = blocks_of(&garbage);
    wait_for_disks(&cluster, "stored", GRACE, everywhere(&blocks, 3)).await;

    tracing::info!("--- the namenode stopped, the block's record made to count no reference");
    cluster.stop_namenode().await.unwrap();
    {
        let store =
            cairn_namenode::store::Store::open(&cluster.namenodes[0].config.meta_dir).unwrap();
        let mut record = store.block(&blocks[0]).unwrap().expect("recorded");
        assert_eq!(record.refs, 1);
        record.refs = 0;
        let mut txn = store.txn();
        txn.put_block(&blocks[0], &record);
        store.commit(txn, true).unwrap();
    }
    cluster.start_namenode().await.unwrap();
    cluster.wait_for_datanodes(3).await.unwrap();
    // Real garbage beside it: once that is gone, the collector has decided on the other.
    client.unlink(Ino::ROOT, b"gone").await.unwrap();
    wait_for_disks(&cluster, "garbage collected", GRACE * 6, nowhere(&garbage)).await;
    assert!(
        everywhere(&blocks, 3)(&cluster),
        "a block a file names was deleted"
    );
    assert!(get(&client, file, 1 << 20).await == data);
    let (code, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_ne!(code, 0, "{fsck}");
    assert!(fsck.to_string().contains("reference"), "{fsck}");
    cluster.stop().await.unwrap();
}
