//! Files in and out: replication on disk, overwrites, restarts, failures, corruption.

use cairn_client::Owner;
use cairn_common::layout::MAX_BLOCK_SIZE;
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

/// A new small file's block goes where its create said, while the namenode is asked; the
/// same bytes written again through other placements end up stored once, at replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_file_goes_where_its_create_placed_it_and_its_copies_are_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = quick_cluster(dir.path(), 6).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(64 << 10, 60);
    let new_file = |name: &'static [u8]| cairn_client::NewFile {
        parent: Ino::ROOT,
        name,
        perm: 0o644,
        exclusive: true,
        truncate: false,
        owner: Owner::current(),
    };

    let (created, mut f) = client.create_open(new_file(b"first")).await.unwrap();
    assert_eq!(created.place.len(), 3, "three of six datanodes offered");
    f.write(0, &data).await.unwrap();
    f.close().await.unwrap();
    let ino = created.attr.ino;
    let placed: Vec<_> = created.place.iter().map(|d| d.id).collect();
    // A close waits for two copies (`min_replicas`); the third may come later or, on a
    // loaded machine, fail and be made elsewhere by healing. None goes elsewhere first.
    let at = replicas(&client, ino).await.into_values().next().unwrap();
    assert!(
        at.len() >= 2 && at.iter().all(|d| placed.contains(d)),
        "stored where the create placed it: {at:?}, placed {placed:?}"
    );

    tracing::info!("--- the same bytes in more files: each may go elsewhere first");
    let names: [&[u8]; 6] = [b"c1", b"c2", b"c3", b"c4", b"c5", b"c6"];
    let mut copies = Vec::new();
    for name in names {
        let (created, mut f) = client.create_open(new_file(name)).await.unwrap();
        f.write(0, &data).await.unwrap();
        f.close().await.unwrap();
        copies.push(created.attr.ino);
    }
    // Six placements of three among six datanodes all on the first three: one in 20^6.
    wait_for_replicas(&client, ino, "surplus copies", |m| {
        m.values().any(|v| v.len() > 3)
    })
    .await;
    wait_for_replicas(&client, ino, "trimmed to three", every_block(1, 3)).await;
    for copy in copies {
        assert_eq!(replicas(&client, copy).await.len(), 1, "one block");
        assert!(get(&client, copy, 1 << 20).await == data);
    }
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_overwrites_match_a_local_file() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();

    tracing::info!("--- a 70 MiB file spanning two chunks");
    let mut model = random_bytes(70 << 20, 2);
    let attr = put(&client, "f", &model, 3 << 20).await;

    tracing::info!("--- overwrite at unaligned offsets, some across block and chunk edges");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut f = client.open(attr.ino).await.unwrap();
    let mut edits = vec![
        ((4 << 20) - 7, 100),        // across a block boundary
        ((64 << 20) - 5000, 10_000), // across the chunk boundary
        ((70 << 20) - 10, 10),       // the very end
    ];
    for _ in 0..40 {
        let len = rng.gen_range(1..300_000);
        let at = rng.gen_range(0..(model.len() - len) as u64);
        edits.push((at, len));
    }
    for (i, (at, len)) in edits.into_iter().enumerate() {
        let bytes = random_bytes(len, 100 + i as u64);
        model[at as usize..at as usize + len].copy_from_slice(&bytes);
        f.write(at, &bytes).await.unwrap();
        if i % 7 == 0 {
            // Interleave reads: a handle sees its own writes.
            let back = f.read(at, len).await.unwrap();
            assert!(back == bytes, "read-back of edit {i}");
        }
    }
    f.close().await.unwrap();

    tracing::info!("--- extend past the end with a gap, which reads as zeros");
    let mut f = client.open(attr.ino).await.unwrap();
    let tail = random_bytes(1000, 9);
    let at = model.len() as u64 + 12_345;
    f.write(at, &tail).await.unwrap();
    f.close().await.unwrap();
    model.resize(at as usize, 0);
    model.extend_from_slice(&tail);

    tracing::info!("--- truncate inside, then grow: the cut bytes come back as zeros");
    let mut f = client.open(attr.ino).await.unwrap();
    f.truncate(50 << 20).await.unwrap();
    f.truncate((50 << 20) + 4096).await.unwrap();
    f.close().await.unwrap();
    model.truncate(50 << 20);
    model.resize((50 << 20) + 4096, 0);

    let back = get(&client, attr.ino, 8 << 20).await;
    assert_eq!(back.len(), model.len());
    assert!(back == model, "file differs from the local model");

    tracing::info!("--- reads answered from memory alone match too");
    let mut f = client.open(attr.ino).await.unwrap();
    let end = model.len() as u64;
    let mut ranges = vec![
        ((50 << 20) - 100, 5000), // the truncated bytes' zeros, past the last block
        ((4 << 20) - 7, 100),     // across a block boundary
        ((64 << 20) - 5000, 10_000), // across the chunk boundary (after the cut: none)
        (end - 10, 100),          // past the end
        (end + 10, 100),          // wholly past it
    ];
    for _ in 0..30 {
        let len = rng.gen_range(1..300_000);
        ranges.push((rng.gen_range(0..end), len));
    }
    for (at, len) in ranges {
        let read = f.read(at, len).await.unwrap();
        let cached = f.read_cached(at, len).expect("all of it in memory");
        let want = &model[(at.min(end) as usize)..((at + len as u64).min(end) as usize)];
        assert!(read == want && cached == want, "{len} bytes at {at}");
    }
    let other = cluster.client().await.unwrap();
    let mut fresh = other.open(attr.ino).await.unwrap();
    let (at, len) = (2 << 20, 1000);
    assert!(
        fresh.read_cached(at, len).is_none(),
        "nothing in that client's memory"
    );
    assert!(fresh.read(at, len).await.unwrap() == model[at as usize..at as usize + len]);

    tracing::info!("--- random reads: chunk groups with their proofs, not blocks");
    // As if stored before outboards existed: the datanodes build them at the first range.
    let outboards = remove_outboards(cluster.dir());
    assert!(
        outboards > 0,
        "blocks of more than one group have outboards"
    );
    let reader = cluster.client().await.unwrap();
    let mut f = reader.open(attr.ino).await.unwrap();
    let (block, group) = (MAX_BLOCK_SIZE as i64, 16 << 10);
    let mut offsets: Vec<u64> = Vec::new();
    for edge in [block, 5 * block, 12 * block] {
        for d in [
            -group - 1,
            -group,
            -4096,
            -1,
            0,
            1,
            group - 1,
            group,
            group + 1,
        ] {
            offsets.push((edge + d) as u64);
        }
    }
    // The first and last bytes, and the zeros of the grown end, which no block holds.
    offsets.extend([0, 1, end - 1, (50 << 20) + 100, (4 << 20) - 7]);
    let before = reader.fetched_bytes();
    let (mut reads, mut last_end) = (0, 0);
    for at in offsets {
        for len in [1usize, 4096, 16 << 10, 40_000] {
            // Never where the last read ended: each is a random read.
            let at = if at == last_end { at + 3 } else { at };
            last_end = at + len as u64;
            let read = f.read(at, len).await.unwrap();
            let want = &model[(at.min(end) as usize)..((at + len as u64).min(end) as usize)];
            assert!(read == want, "{len} bytes at {at}");
            reads += 1;
        }
    }
    let fetched = reader.fetched_bytes() - before;
    assert!(
        fetched < reads * (80 << 10),
        "{reads} random reads moved {fetched} bytes"
    );
    cluster.stop().await.unwrap();
}

/// Deletes every block outboard under `dir`; returns how many there were.
fn remove_outboards(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            removed += remove_outboards(&path);
        } else if path.extension().is_some_and(|e| e == "obao") {
            std::fs::remove_file(&path).unwrap();
            removed += 1;
        }
    }
    removed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_keep_the_namespace_and_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(20 << 20, 4);
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o750, Owner::current())
        .await
        .unwrap();
    let created = client
        .create(docs.ino, b"report", 0o600, true, false, Owner::current())
        .await
        .unwrap();
    let mut f = client.open(created.attr.ino).await.unwrap();
    f.write(0, &data).await.unwrap();
    f.close().await.unwrap();

    tracing::info!("--- restart the namenode");
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(3).await.unwrap();
    let client = cluster.client().await.unwrap();
    let docs2 = client.resolve("/docs").await.unwrap();
    assert_eq!(docs2.perm, 0o750);
    let report = client.resolve("/docs/report").await.unwrap();
    assert_eq!(report.ino, created.attr.ino);
    assert_eq!(report.size, data.len() as u64);
    assert!(get(&client, report.ino, 4 << 20).await == data);

    tracing::info!("--- restart a datanode: its blocks are reported again");
    let blocks = file_blocks(&client, report.ino).await;
    cluster.stop_datanode(1).await.unwrap();
    cluster.start_datanode(1).await.unwrap();
    let dn_addr = cluster.datanodes[1].addr.unwrap();
    // Wait until the namenode lists the restarted node as a holder of every block again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let map = chunk_map(&client, report.ino).await;
        let on_dn = map
            .locations
            .iter()
            .filter(|(_, locs)| locs.iter().any(|l| l.addr == dn_addr))
            .count();
        if on_dn == blocks.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted datanode reported {on_dn} of {} blocks",
            blocks.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = client.datanodes().await.unwrap();
    let dn = status.iter().find(|s| s.addr == dn_addr).unwrap();
    assert_eq!(dn.blocks, blocks.len() as u64);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datanode_killed_during_a_put_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    assert_eq!(client.config().min_replicas, 2);
    let data = random_bytes(120 << 20, 5);
    let created = client
        .create(Ino::ROOT, b"big", 0o644, true, false, Owner::current())
        .await
        .unwrap();
    let mut f = client.open(created.attr.ino).await.unwrap();

    tracing::info!("--- write the first third, then kill datanode 3 mid-put");
    let third = data.len() / 3;
    for (i, part) in data[..third].chunks(1 << 20).enumerate() {
        f.write((i << 20) as u64, part).await.unwrap();
    }
    cluster.stop_datanode(2).await.unwrap();
    for (i, part) in data[third..].chunks(1 << 20).enumerate() {
        f.write((third + (i << 20)) as u64, part).await.unwrap();
    }
    f.close()
        .await
        .expect("close succeeds with 2 of 3 datanodes");

    tracing::info!("--- every block is on both survivors' disks and the file reads back");
    for b in file_blocks(&client, created.attr.ino).await {
        let on = holders(&cluster, &b);
        assert!(
            on.contains(&0) && on.contains(&1),
            "block {b} is on datanodes {on:?}"
        );
    }
    assert!(get(&client, created.attr.ino, 16 << 20).await == data);

    tracing::info!("--- small blocks, sent to each datanode at once: on both survivors too");
    let small = random_bytes(200 << 10, 7);
    let attr = put(&client, "small", &small, 64 << 10).await;
    let blocks = file_blocks(&client, attr.ino).await;
    assert!(!blocks.is_empty());
    for b in blocks {
        let on = holders(&cluster, &b);
        assert!(on.contains(&0) && on.contains(&1), "block {b} is on {on:?}");
    }
    assert!(get(&client, attr.ino, 64 << 10).await == small);
    let mut later = client.open(attr.ino).await.unwrap();
    later.fsync().await.expect("an fsync with two datanodes up");

    tracing::info!("--- with one datanode left, writes fail instead of pretending");
    // Stored and closed while two datanodes were up, not yet on stable storage: an fsync
    // through another handle needs them on two.
    let unsynced = random_bytes(300 << 10, 8);
    let attr = put(&client, "unsynced", &unsynced, 64 << 10).await;
    let mut again = client.open(attr.ino).await.unwrap();
    cluster.stop_datanode(1).await.unwrap();
    let created = client
        .create(Ino::ROOT, b"doomed", 0o644, true, false, Owner::current())
        .await
        .unwrap();
    let mut f = client.open(created.attr.ino).await.unwrap();
    let _ = f.write(0, &random_bytes(1 << 20, 6)).await;
    let err = f
        .close()
        .await
        .expect_err("close must fail below min_replicas");
    assert_eq!(err.errno(), libc_eio(), "{err}");
    let err = again
        .fsync()
        .await
        .expect_err("fsync must fail when one datanode can sync");
    assert_eq!(err.errno(), libc_eio(), "{err}");
    assert!(err.to_string().contains("stable storage"), "{err}");
    cluster.stop().await.unwrap();
}

fn libc_eio() -> i32 {
    cairn_common::FsError::io("").errno()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_replica_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let data = random_bytes(6 << 20, 7);
    let attr = put(&client, "c", &data, 1 << 20).await;

    tracing::info!("--- flip bytes in the replica a reader tries first");
    // The order it tries them in is its map's, best first, as the open gave it.
    let ranged = cluster.client().await.unwrap();
    let mut f = ranged.open(attr.ino).await.unwrap();
    let map = chunk_map(&ranged, attr.ino).await;
    let (block, locations) = map.locations[0].clone();
    let victim = locations[0].clone();
    let index = cluster
        .datanodes
        .iter()
        .position(|dn| dn.addr == Some(victim.addr))
        .unwrap();
    let path = block_path(&cluster, index, &block);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    bytes[2000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    tracing::info!("--- a random read away from them is served by that replica");
    // Where the block's first byte is in the file (one chunk: slices' positions are).
    let base = map.chunks[0]
        .1
        .iter()
        .find(|s| s.block == block)
        .map(|s| (s.pos - s.block_off) as usize)
        .unwrap();
    let far = base + (1 << 20);
    assert!(f.read(far as u64, 4096).await.unwrap() == data[far..far + 4096]);
    let listed = |map: &cairn_common::proto::ChunkMap| {
        let (_, holders) = map.locations.iter().find(|(b, _)| *b == block).unwrap();
        holders.iter().map(|l| l.id).collect::<Vec<_>>()
    };
    assert!(listed(&chunk_map(&client, attr.ino).await).contains(&victim.id));
    tracing::info!("--- one over them fails its proof there and is read from another replica");
    let near = base + 500;
    assert!(f.read(near as u64, 4096).await.unwrap() == data[near..near + 4096]);
    // The reader's report has the datanode check the replica, which then reports it.
    let mut unlisted = false;
    for _ in 0..150 {
        if !listed(&chunk_map(&client, attr.ino).await).contains(&victim.id) {
            unlisted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(unlisted, "the corrupt replica was never dropped");

    tracing::info!("--- a fresh client still reads the right bytes");
    let fresh = cluster.client().await.unwrap();
    assert!(get(&fresh, attr.ino, 16 << 20).await == data);

    tracing::info!("--- and the namenode no longer offers the corrupt replica");
    let map = chunk_map(&client, attr.ino).await;
    let now: Vec<_> = map
        .locations
        .iter()
        .find(|(b, _)| *b == block)
        .unwrap()
        .1
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(!now.contains(&victim.id), "corrupt replica still listed");
    assert_eq!(now.len(), 2);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_datanode_refuses_blocks_and_writes_go_elsewhere() {
    use cairn_cli::devcluster::{DevCluster, DevOptions};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let opts = DevOptions::new(dir.path(), 3);
    let mut cluster = DevCluster::start(opts).await.unwrap();
    cluster.opts.datanode_capacity = Some(8 << 20);
    let small = cluster.add_datanode().await.unwrap();
    cluster.wait_for_datanodes(4).await.unwrap();
    let client = cluster.client().await.unwrap();

    tracing::info!("--- 60 MiB at R=4 over four datanodes, one with room for two blocks");
    client.set_replication(Ino::ROOT, 4).await.unwrap();
    let data = random_bytes(60 << 20, 12);
    let attr = put(&client, "f", &data, 1 << 20).await;
    let blocks = file_blocks(&client, attr.ino).await;
    let on_small = blocks
        .iter()
        .filter(|b| holders(&cluster, b).contains(&small))
        .count();
    assert_eq!(on_small, 2, "the small datanode holds {on_small} blocks");
    for b in &blocks {
        let on = holders(&cluster, b);
        assert!(
            on.len() >= 3 && on.contains(&0) && on.contains(&1) && on.contains(&2),
            "block {b} on {on:?}"
        );
    }
    assert!(get(&client, attr.ino, 16 << 20).await == data);

    tracing::info!("--- asked directly, the full datanode refuses with ENOSPC");
    let conn = raw_connection(
        &cluster,
        cluster.datanodes[small].addr.unwrap(),
        cairn_common::cert::Role::Datanode,
    )
    .await;
    let block = random_bytes(1 << 20, 13);
    let token = client.namenode(cairn_common::proto::GrantWrite {}).await;
    let err = cairn_common::transport::call_with_body(
        &conn,
        cairn_common::proto::PutBlock {
            block: cairn_common::BlockId::of(&block),
            len: block.len() as u32,
            downstream: Vec::new(),
            sync: false,
            token: Some(token.unwrap()),
        },
        bytes::Bytes::from(block),
    )
    .await
    .unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");

    tracing::info!("--- the namenode sees it full after its next heartbeat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = client.datanodes().await.unwrap();
        let full = status
            .iter()
            .find(|s| Some(s.addr) == cluster.datanodes[small].addr)
            .unwrap();
        if full.used == 8 << 20 {
            assert_eq!(full.available, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "used {}", full.used);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["admin", "report", "--config"])
        .arg(cluster.dir().join("cairn-client.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = format!("datanode-{} ", small + 1);
    let row = text
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_default();
    assert!(row.contains("100.0%"), "admin report shows it full: {text}");
    cluster.stop().await.unwrap();
}

#[test]
fn a_bad_runtime_thread_count_is_refused_with_its_name() {
    for bad in ["0", "many", "-1"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["fs", "df"])
            .env("CAIRN_RUNTIME_THREADS", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(
            err.contains("CAIRN_RUNTIME_THREADS") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_example_configs_parse() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let nn = cairn_namenode::NamenodeConfig::load(&examples.join("namenode.toml")).unwrap();
    assert_eq!(nn.default_replication, 3);
    assert_eq!(
        nn.durability(),
        cairn_namenode::walsync::Durability::Window(std::time::Duration::from_millis(5))
    );
    assert_eq!(nn.exports.len(), 1);
    assert!(nn.exports[0].matches("web1") && nn.exports[0].root_squash);
    assert_eq!(nn.exports[0].uids[0].to_string(), "1000-60000");
    let dn = cairn_datanode::DatanodeConfig::load(&examples.join("datanode.toml")).unwrap();
    assert_eq!(dn.name, "dn1");
    let client = cairn_client::ClientConfig::load(&examples.join("cairn-client.toml")).unwrap();
    assert_eq!(client.min_replicas, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_disk_cache_serves_blocks_across_clients_and_drops_rotten_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let cache_dir = dir.path().join("block-cache");
    let config_path = cluster.client_config_path.clone();
    let cached_client = || {
        let mut config = cairn_client::ClientConfig::load(&config_path).unwrap();
        config.block_cache_dir = Some(cache_dir.clone());
        config.block_cache_disk_mib = 64;
        cairn_client::Client::connect(config)
    };
    let data = random_bytes(20 << 20, 41);
    let attr = put(&cluster.client().await.unwrap(), "cached", &data, 1 << 20).await;

    tracing::info!("--- a read fills the disk cache");
    let first = cached_client().await.unwrap();
    assert!(get(&first, attr.ino, 4 << 20).await == data);
    let blocks = file_blocks(&first, attr.ino).await;
    let on_disk = |b: &cairn_common::BlockId| cache_dir.join(b.to_hex());
    for _ in 0..100 {
        if blocks.iter().all(|b| on_disk(b).exists()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        blocks.iter().all(|b| on_disk(b).exists()),
        "every block cached"
    );

    tracing::info!("--- a rotten cached block is refetched from a datanode and rewritten");
    let victim = on_disk(&blocks[0]);
    let mut rotten = std::fs::read(&victim).unwrap();
    rotten[7] ^= 0x55;
    std::fs::write(&victim, &rotten).unwrap();
    let second = cached_client().await.unwrap();
    assert!(get(&second, attr.ino, 4 << 20).await == data);
    drop(second);

    tracing::info!("--- with every datanode down, a new client reads from the disk cache");
    for _ in 0..100 {
        if std::fs::read(&victim).is_ok_and(|b| b != rotten) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        cluster.stop_datanode(i).await.unwrap();
    }
    let third = cached_client().await.unwrap();
    assert!(get(&third, attr.ino, 4 << 20).await == data);
    // A random read too (it would ask a datanode for a range otherwise).
    let fourth = cached_client().await.unwrap();
    let mut f = fourth.open(attr.ino).await.unwrap();
    let at = 9 << 20;
    assert!(f.read(at as u64, 4096).await.unwrap() == data[at..at + 4096]);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_appender_flushing_every_line_leaves_few_slices() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let attr = put(&client, "log", b"", 1 << 20).await;

    tracing::info!("--- 1,500 lines, each flushed (a log with fsync per line)");
    let mut f = client.open(attr.ino).await.unwrap();
    let mut model = Vec::new();
    for i in 0..1500 {
        let line = format!("line {i:05} of the log, flushed at once\n");
        f.write(model.len() as u64, line.as_bytes()).await.unwrap();
        model.extend_from_slice(line.as_bytes());
        f.flush().await.unwrap();
    }
    // Each flush stored the short block at the end again, whole, and the new slice hid the
    // last: one slice, not 1,500 for every commit to rewrite.
    let map = chunk_map(&client, attr.ino).await;
    assert_eq!(map.chunks.len(), 1);
    assert_eq!(map.chunks[0].1.len(), 1, "slices of the log's chunk");

    tracing::info!("--- another handle's write inside that end block is not stored over");
    let mut other = client.open(attr.ino).await.unwrap();
    other.write(10, b"OTHER").await.unwrap();
    other.close().await.unwrap();
    model[10..15].copy_from_slice(b"OTHER");
    f.write(model.len() as u64, b"last line\n").await.unwrap();
    model.extend_from_slice(b"last line\n");
    f.close().await.unwrap();
    assert!(get(&client, attr.ino, 1 << 20).await == model);
    cluster.stop().await.unwrap();
}
