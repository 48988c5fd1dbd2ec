//! The namenode as a process of its own, killed with SIGKILL again and again under a storm
//! of creates, writes, renames and unlinks from a program on a mount that calls `fsync` at
//! random points: every change the program was told was made is there after the restarts,
//! nothing it was never told of appears, every file holds the bytes last written to it,
//! and the namespace's records agree (`cairn admin fsck`). Run with the metadata log synced
//! within a window (the default) and with every change synced.

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::mount::{mount_at, unmount};
use crate::support::*;

/// Directories the program works in.
const DIRS: usize = 4;

/// One file of the program's, by the states it may be in: one once the program was told
/// what it did last, more when a call failed (the change may or may not have been made).
/// `None` is no file; a content of `None` is any content.
#[derive(Clone, Debug, Default)]
struct Slot {
    states: Vec<Option<Named>>,
    renames: u32,
}

/// A file's path and content (`None`: any).
type Named = (PathBuf, Option<Arc<Vec<u8>>>);

impl Slot {
    fn certain(&self) -> Option<&Named> {
        match self.states.as_slice() {
            [Some(s)] => Some(s),
            _ => None,
        }
    }
}

/// Writes `data` as the whole of `path`, `fsync`s it if asked, and closes it, every
/// error reported (a close's too, which dropping a `File` ignores).
fn write_file(path: &Path, data: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(data)?;
    if sync {
        f.sync_all()?;
    }
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just taken from the file, which no longer closes it.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The program: changes at random until `stop`, keeping what it was told. Returns the
/// slots and how many calls failed.
/// Files the storm makes at least.
const MIN_FILES: usize = 20;

fn storm(root: &Path, seed: u64, stop: &AtomicBool) -> (Vec<Slot>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut slots: Vec<Slot> = Vec::new();
    let mut failed = 0;
    let dir = |i: usize| root.join(format!("d{i}"));
    // Asked to stop, it goes on until it has made a few files (after a restart the first
    // changes can wait seconds for the leases of the run before; on a loaded machine,
    // the whole storm), for a minute at most.
    let mut asked: Option<std::time::Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let since = *asked.get_or_insert_with(std::time::Instant::now);
            if slots.len() > MIN_FILES || since.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        let live: Vec<usize> = (0..slots.len())
            .filter(|k| slots[*k].certain().is_some())
            .collect();
        let pick = rng.gen_range(0..100);
        if live.is_empty() || pick < 40 {
            let k = slots.len();
            let path = dir(rng.gen_range(0..DIRS)).join(format!("s{k}"));
            let data = Arc::new(random_bytes(
                rng.gen_range(0..200_000),
                seed * 1_000_000 + k as u64,
            ));
            let sync = rng.gen_bool(0.3);
            let states = match write_file(&path, &data, sync) {
                Ok(()) => vec![Some((path, Some(data)))],
                Err(_) => {
                    failed += 1;
                    vec![None, Some((path, None))]
                }
            };
            slots.push(Slot { states, renames: 0 });
            continue;
        }
        let k = live[rng.gen_range(0..live.len())];
        let (path, _) = slots[k].certain().unwrap().clone();
        if pick < 60 {
            let slot = &mut slots[k];
            slot.renames += 1;
            let to = dir(rng.gen_range(0..DIRS)).join(format!("s{k}.{}", slot.renames));
            match fs::rename(&path, &to) {
                Ok(()) => {
                    let content = slot.certain().unwrap().1.clone();
                    slot.states = vec![Some((to, content))];
                }
                Err(_) => {
                    failed += 1;
                    let content = slot.certain().unwrap().1.clone();
                    slot.states = vec![Some((path, content.clone())), Some((to, content))];
                }
            }
        } else if pick < 75 {
            match fs::remove_file(&path) {
                Ok(()) => slots[k].states = vec![None],
                Err(_) => {
                    failed += 1;
                    slots[k].states.push(None);
                }
            }
        } else if pick < 90 {
            let data = Arc::new(random_bytes(
                rng.gen_range(0..200_000),
                seed * 1_000_000 + 500_000 + rng.gen_range(0..400_000u64),
            ));
            match write_file(&path, &data, rng.gen_bool(0.3)) {
                Ok(()) => slots[k].states = vec![Some((path, Some(data)))],
                Err(_) => {
                    failed += 1;
                    slots[k].states = vec![Some((path, None))];
                }
            }
        } else if pick < 95 {
            // A barrier alone; its failure changes nothing the program was told.
            if fsync_dir(&dir(rng.gen_range(0..DIRS))).is_err() {
                failed += 1;
            }
        } else if fs::File::open(&path).and_then(|f| f.sync_all()).is_err() {
            failed += 1;
        }
    }
    (slots, failed)
}

/// What `root` holds against what the program on the mount at `told` was told.
fn verify(root: &Path, told: &Path, slots: &[Slot]) {
    let mut seen: Vec<Vec<PathBuf>> = vec![Vec::new(); slots.len()];
    for i in 0..DIRS {
        let dir = root.join(format!("d{i}"));
        for name in sorted_names(&dir) {
            let k: usize = name
                .strip_prefix('s')
                .and_then(|r| r.split('.').next())
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("{name:?} in {dir:?} was never made"));
            assert!(k < slots.len(), "{name:?} in {dir:?} was never made");
            seen[k].push(dir.join(name));
        }
    }
    let mut uncertain = 0;
    for (k, (slot, paths)) in slots.iter().zip(&seen).enumerate() {
        let at = match paths.as_slice() {
            [] => None,
            [p] => Some(p),
            more => panic!("file {k} has {} names: {more:?}", more.len()),
        };
        uncertain += usize::from(slot.states.len() > 1);
        let fits = slot.states.iter().any(|s| match (s, at) {
            (None, None) => true,
            (Some((want, content)), Some(p))
                if p.strip_prefix(root).ok() == want.strip_prefix(told).ok() =>
            {
                match content {
                    None => true,
                    Some(data) => {
                        let got = fs::read(p).unwrap_or_else(|e| panic!("reading {p:?}: {e}"));
                        if got != **data {
                            let first = got.iter().zip(data.iter()).position(|(a, b)| a != b);
                            tracing::error!(
                                "{p:?}: {} bytes, {} written; first difference at {first:?}",
                                got.len(),
                                data.len()
                            );
                        }
                        got == **data
                    }
                }
            }
            _ => false,
        });
        assert!(
            fits,
            "file {k}: found at {at:?}, was told {:?}",
            slot.states
                .iter()
                .map(|s| s.as_ref().map(|(p, c)| (p, c.as_ref().map(|c| c.len()))))
                .collect::<Vec<_>>()
        );
    }
    tracing::info!(
        files = slots.len(),
        uncertain,
        "every file as the program was told"
    );
}

/// Moves `cluster`'s namenode into a process of its own (to be killed), syncing every
/// change if `always_synced`.
async fn namenode_of_its_own(
    cluster: &mut cairn_cli::devcluster::DevCluster,
    always_synced: bool,
) -> ChildNamenode {
    cluster.stop_namenode().await.unwrap();
    let config = cluster.dir().join("namenode.toml");
    if always_synced {
        let text = fs::read_to_string(&config).unwrap();
        assert!(text.contains("metadata_sync = \"window\""), "{text}");
        fs::write(
            &config,
            text.replace("metadata_sync = \"window\"", "metadata_sync = \"always\""),
        )
        .unwrap();
    }
    ChildNamenode::start(&config, &cluster.dir().join("namenode.log"))
}

async fn namenode_killed_under_a_storm(always_synced: bool, seed: u64) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let mut namenode = namenode_of_its_own(&mut cluster, always_synced).await;
    cluster.wait_for_datanodes(3).await.unwrap();

    let ma = tempfile::tempdir().unwrap();
    let mount = mount_at(&cluster, ma.path()).await;
    let root = ma.path().to_path_buf();
    for i in 0..DIRS {
        fs::create_dir(root.join(format!("d{i}"))).unwrap();
    }
    // Delegations come from the mount's second read of the change feed on.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let program = {
        let (root, stop) = (root.clone(), stop.clone());
        tokio::task::spawn_blocking(move || storm(&root, seed, &stop))
    };
    // The kills keep to their schedule on a thread of their own, whatever the runtime the
    // mount shares with this test is busy with.
    let killer = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = std::time::Instant::now();
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(800..2_500)));
            eprintln!(
                "{:?}: kill -9 of the namenode, round {round}",
                start.elapsed()
            );
            namenode.kill();
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..800)));
            namenode.restart();
            eprintln!("{:?}: namenode started again", start.elapsed());
        }
        namenode
    });
    let mut namenode = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, Ordering::Relaxed);
    let (slots, failed) = program.await.unwrap();
    tracing::info!(files = slots.len(), failed, "the program stopped");
    assert!(
        slots.len() > MIN_FILES,
        "the program made only {} files",
        slots.len()
    );

    tracing::info!("--- a last barrier on every directory, then kill -9 once more");
    {
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..DIRS {
                fsync_dir(&root.join(format!("d{i}"))).expect("fsync of a directory");
            }
        })
        .await
        .unwrap();
    }
    namenode.kill();
    namenode.restart();

    tracing::info!("--- what the program was told, through its own mount and a new one");
    let mb = tempfile::tempdir().unwrap();
    let other = mount_at(&cluster, mb.path()).await;
    let other_root = mb.path().to_path_buf();
    let slots = Arc::new(slots);
    let checked = {
        let slots = slots.clone();
        tokio::task::spawn_blocking(move || {
            verify(&other_root, &root, &slots);
            verify(&root, &root, &slots);
        })
        .await
    };
    unmount(other).await;
    unmount(mount).await;
    if let Err(e) = checked {
        std::panic::resume_unwind(e.into_panic());
    }
    // Blocks written while the namenode was away may have reached only `min_replicas`
    // datanodes, and repair copies them once the namenode is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, fsck) = admin(&cluster, &["fsck", "/"]);
        assert_eq!(fsck["summary"]["namespace"]["problems"], 0, "{fsck}");
        if code == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{fsck}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    namenode.kill();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_namenode_killed_under_a_storm_of_changes_loses_none_it_acknowledged() {
    namenode_killed_under_a_storm(false, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_namenode_killed_with_every_change_synced_loses_none_either() {
    namenode_killed_under_a_storm(true, 8).await;
}

/// A change is made once however often it is asked for: the namenode killed (SIGKILL) and
/// started again under creates, renames and unlinks from the client library, each in
/// flight at some kill, every call is answered as if nothing had happened — no error, and
/// no `EEXIST` or `ENOENT` from a change asked for again after the namenode made it — and
/// the directory holds exactly the names the calls said. Every change is synced, so none
/// that was answered can be lost with a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_asked_for_again_across_a_namenode_restart_is_made_once() {
    use cairn_client::Owner;
    use cairn_common::proto::RenameMode;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 1).await;
    let mut namenode = namenode_of_its_own(&mut cluster, true).await;
    let client = cluster.client().await.unwrap();
    let root = cairn_common::Ino::ROOT;
    let work = client
        .mkdir(root, b"w", 0o755, Owner::current())
        .await
        .unwrap()
        .ino;

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for k in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("{k}-{i}");
                let moved = format!("{name}.moved");
                client
                    .create(work, name.as_bytes(), 0o644, true, false, Owner::current())
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                client
                    .rename(
                        work,
                        name.as_bytes(),
                        work,
                        moved.as_bytes(),
                        RenameMode::NoReplace,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("rename {name}: {e}"));
                if i % 3 == 0 {
                    client
                        .unlink(work, moved.as_bytes())
                        .await
                        .unwrap_or_else(|e| panic!("unlink {moved}: {e}"));
                } else {
                    kept.push(moved);
                }
                i += 1;
            }
            kept
        }));
    }
    let killer = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..1_500)));
            eprintln!("kill -9 of the namenode, round {round}");
            namenode.kill();
            std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
            namenode.restart();
        }
        namenode
    });
    let mut namenode = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut kept = Vec::new();
    for worker in workers {
        kept.extend(
            worker
                .await
                .expect("every change answered without an error"),
        );
    }
    assert!(kept.len() > 20, "only {} files made", kept.len());
    kept.sort();
    let mut found = names_in(&client, work).await;
    found.sort();
    assert_eq!(found, kept);
    let (_, fsck) = admin(&cluster, &["fsck", "/"]);
    assert_eq!(fsck["summary"]["namespace"]["problems"], 0, "{fsck}");
    namenode.kill();
    cluster.stop().await.unwrap();
}
