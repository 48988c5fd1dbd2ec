//! Directory delegations through real mounts: the creates and unlinks a mount answers
//! itself and sends later, what another mount sees of them, and what is left after a mount
//! is killed with changes queued or the namenode restarts under them.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_common::proto;

use crate::mount::{mount_at, unmount};
use crate::support::*;

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("must fail").raw_os_error().expect("an errno")
}

use crate::support::sorted_names as names;

/// Mounts `cluster` on a new directory with `client`, kept to count its requests.
async fn mount_client(
    client: &cairn_client::Client,
    opts: &cairn_fuse::MountOptions,
) -> (tempfile::TempDir, PathBuf, cairn_fuse::Mount) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mounted = cairn_fuse::mount(
        client.clone(),
        tokio::runtime::Handle::current(),
        &path,
        opts,
    )
    .expect("mount (needs root and /dev/fuse)");
    // Delegations go to a mount that reads the change feed: from its second read on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (dir, path, mounted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_alone_in_a_directory_answers_creates_and_unlinks_and_another_sees_them() {
    on_two_mounts(|counted, a, b| {
        tracing::info!("--- A fills a directory it made: the mount answers, in batches later");
        fs::create_dir(a.join("d")).unwrap();
        // B knows the directory empty, and its kernel that f1 is not there: given to A,
        // the delegation makes B forget both.
        assert!(names(&b.join("d")).is_empty());
        assert!(!b.join("d/f1").exists());
        let creates = counted.sent::<proto::Create>();
        let unlinks = counted.sent::<proto::Unlink>();
        for i in 0..300 {
            fs::write(a.join(format!("d/f{i}")), format!("{i}")).unwrap();
        }
        for i in (0..300).step_by(2) {
            fs::remove_file(a.join(format!("d/f{i}"))).unwrap();
        }
        let one_by_one = counted.sent::<proto::Create>() - creates;
        assert!(
            one_by_one < 30,
            "{one_by_one} creates went to the namenode one by one"
        );
        assert!(counted.sent::<proto::Unlink>() - unlinks < 30);
        assert!(counted.sent::<proto::Queued>() > 0);
        // The directory's own attributes, answered from the delegation, follow A's changes.
        let set = std::process::Command::new("touch")
            .args(["-m", "-d", "@1000000000"])
            .arg(a.join("d"))
            .status()
            .unwrap();
        assert!(set.success());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(fs::metadata(a.join("d")).unwrap().mtime(), 1_000_000_000);
        // Read back after the kernel forgot them: names, attributes and maps are all
        // known here (the queued commits' answers brought them).
        std::thread::sleep(Duration::from_millis(300));
        fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        let (getattrs, opens) = (
            counted.sent::<proto::GetAttr>(),
            counted.sent::<proto::Open>(),
        );
        for i in (1..300).step_by(2) {
            assert_eq!(
                fs::read(a.join(format!("d/f{i}"))).unwrap(),
                format!("{i}").as_bytes()
            );
        }
        // (Kept for the TTL past the last read of the change feed: a loaded machine may let
        // some age out. Without them every one of the 150 asks.)
        assert!(
            counted.sent::<proto::GetAttr>() - getattrs < 75,
            "stats of files made here"
        );
        assert!(
            counted.sent::<proto::Open>() - opens < 75,
            "opens of files made here"
        );
        // Answered from the delegation's names, as a local file system would.
        let exclusive = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(a.join("d/f1"));
        assert_eq!(errno_of(exclusive), libc::EEXIST);
        assert_eq!(errno_of(fs::remove_file(a.join("d/f0"))), libc::ENOENT);
        assert_eq!(fs::read(a.join("d/f7")).unwrap(), b"7");

        tracing::info!("--- B looks: it sees exactly what A's program was told");
        assert!(b.join("d/f1").exists(), "B's kernel kept f1 absent");
        let odd: Vec<String> = {
            let mut v: Vec<String> = (1..300).step_by(2).map(|i| format!("f{i}")).collect();
            v.sort();
            v
        };
        assert_eq!(names(&b.join("d")), odd);
        for i in (1..300).step_by(2) {
            let p = b.join(format!("d/f{i}"));
            assert_eq!(fs::read(&p).unwrap(), format!("{i}").as_bytes());
            assert_eq!(fs::metadata(&p).unwrap().nlink(), 1);
        }

        tracing::info!("--- B changes the directory; A sees it, and goes on there");
        fs::write(b.join("d/from_b"), b"b").unwrap();
        assert_eq!(fs::read(a.join("d/from_b")).unwrap(), b"b");
        fs::rename(b.join("d/f1"), b.join("d/renamed")).unwrap();
        assert!(!a.join("d/f1").exists());
        assert_eq!(fs::read(a.join("d/renamed")).unwrap(), b"1");
        fs::write(a.join("d/late"), b"late").unwrap();
        fs::remove_file(a.join("d/f3")).unwrap();
        assert_eq!(fs::read(b.join("d/late")).unwrap(), b"late");
        assert!(!b.join("d/f3").exists());
        // B makes a name A then creates exclusively: refused, whoever answers.
        fs::write(b.join("d/both"), b"b").unwrap();
        let exclusive = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(a.join("d/both"));
        assert_eq!(errno_of(exclusive), libc::EEXIST);
        // Nothing queued failed: the directory's fsync says so.
        fs::File::open(a.join("d")).unwrap().sync_all().unwrap();
    })
    .await;
}

/// A cluster mounted twice, as on two machines: `body` runs on a blocking thread with
/// mount A's client (kept to count its requests) and both mount points; then both are
/// unmounted, and fsck must find the cluster clean.
async fn on_two_mounts(body: impl FnOnce(&cairn_client::Client, &Path, &Path) + Send + 'static) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let (_da, a, mount_a) = mount_client(&client, &Default::default()).await;
    let db = tempfile::tempdir().unwrap();
    let mount_b = mount_at(&cluster, db.path()).await;
    let b = db.path().to_path_buf();
    let result = tokio::task::spawn_blocking(move || body(&client, &a, &b)).await;
    unmount(mount_b).await;
    unmount(mount_a).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    assert_fsck_clean(&cluster);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_wsync_every_create_and_unlink_goes_to_the_namenode() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let path = cluster.dir().join("cairn-client.toml");
    let mut config = cairn_client::ClientConfig::load(&path).unwrap();
    config.wsync = true;
    let client = cairn_client::Client::connect(config).await.unwrap();
    let (_d, m, mounted) = mount_client(&client, &Default::default()).await;
    let counted = client.clone();
    let body = tokio::task::spawn_blocking(move || {
        fs::create_dir(m.join("d")).unwrap();
        for i in 0..20 {
            fs::write(m.join(format!("d/f{i}")), b"x").unwrap();
            fs::remove_file(m.join(format!("d/f{i}"))).unwrap();
        }
        assert!(counted.sent::<proto::Create>() >= 20);
        assert!(counted.sent::<proto::Unlink>() >= 20);
        assert_eq!(counted.sent::<proto::Delegate>(), 0);
        assert_eq!(counted.sent::<proto::Queued>(), 0);
    });
    let result = body.await;
    unmount(mounted).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    cluster.stop().await.unwrap();
}

/// `cairn mount` as its own process, serving from the background: its pid.
fn mount_process(cluster: &cairn_cli::devcluster::DevCluster, at: &Path) -> u32 {
    let out = cairn(cluster, &["mount", "--daemon", at.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let pid = said
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {said:?}"));
    pid
}

/// A `cairn mount` process on a directory of its own, reading the change feed (so taking
/// delegations) once started.
pub(crate) struct Victim {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    pid: u32,
    killed: std::sync::atomic::AtomicBool,
}

impl Victim {
    async fn start(cluster: &cairn_cli::devcluster::DevCluster) -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let pid = mount_process(cluster, &path);
        tokio::time::sleep(Duration::from_secs(1)).await;
        Victim {
            _dir: dir,
            path,
            pid,
            killed: Default::default(),
        }
    }

    fn kill(&self) {
        // Once: the number may be another process's after this one is reaped.
        if !self.killed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }

    /// Stops the mount dead (`SIGSTOP`): it reads the change feed no more, nor answers.
    pub(crate) fn pause(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGSTOP) };
    }

    pub(crate) fn resume(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
    }

    /// Lets go of the dead mount's mount point.
    fn unmount(&self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A test that fails before its kill leaves no mount process behind.
impl Drop for Victim {
    fn drop(&mut self) {
        self.kill();
        self.unmount();
    }
}

/// A new cluster with a `cairn mount` process on it.
pub(crate) async fn cluster_with_victim(
) -> (tempfile::TempDir, cairn_cli::devcluster::DevCluster, Victim) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let victim = Victim::start(&cluster).await;
    (dir, cluster, victim)
}

/// Runs `program` on a blocking thread with directory `d` made on `victim`'s mount.
fn in_victims_dir<T: Send + 'static>(
    victim: &Victim,
    program: impl FnOnce(&Path) -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let d = victim.path.join("d");
    tokio::task::spawn_blocking(move || {
        fs::create_dir(&d).unwrap();
        program(&d)
    })
}

/// A new mount of `cluster` in this process, reading the change feed.
async fn fresh_mount(
    cluster: &cairn_cli::devcluster::DevCluster,
) -> (tempfile::TempDir, PathBuf, cairn_fuse::Mount) {
    let db = tempfile::tempdir().unwrap();
    let path = db.path().to_path_buf();
    let m = mount_at(cluster, &path).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (db, path, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_killed_with_changes_queued_loses_at_most_those_and_never_their_order() {
    let (_dir, cluster, mounted) = cluster_with_victim().await;
    // Created in order, and some removed again, as fast as the mount answers, until it dies.
    let writer = in_victims_dir(&mounted, |d| {
        let mut made = 0;
        for i in 0..100_000 {
            if fs::write(d.join(format!("f{i}")), b"").is_err() {
                break;
            }
            made = i + 1;
            if i % 10 == 9 && fs::remove_file(d.join(format!("f{}", i - 1))).is_err() {
                break;
            }
        }
        made
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mounted.kill();
    let made = writer.await.unwrap();
    mounted.unmount();
    assert!(made > 100, "the writer made {made} files before the kill");

    tracing::info!("--- what the namenode has is a prefix of what the program was told");
    let (_db, b, mounted) = fresh_mount(&cluster).await;
    let check = tokio::task::spawn_blocking(move || {
        let present = names(&b.join("d"));
        let last = present
            .iter()
            .filter_map(|n| n.strip_prefix('f')?.parse::<usize>().ok())
            .max()
            .expect("some of what the mount queued reached the namenode");
        // The write that failed (the mount died under it) may have made its file.
        assert!(last <= made, "f{last} was never made");
        // The program's changes in order: create f{i}, and after each tenth, unlink the
        // one before it. The namenode holds every change up to the create of f{last}.
        for i in 0..last {
            let here = present.binary_search(&format!("f{i}")).is_ok();
            let removed = i % 10 == 8;
            if removed && i + 1 < last {
                assert!(
                    !here,
                    "f{i} was removed before f{last} was made, yet it is there"
                );
            } else if !removed {
                assert!(here, "f{i} was made before f{last}, yet it is missing");
            }
        }
        for n in &present {
            let meta = fs::metadata(b.join("d").join(n)).unwrap();
            assert_eq!(meta.nlink(), 1, "{n}");
        }
        (present.len(), last)
    });
    let (present, last) = check.await.unwrap();
    tracing::info!(made, present, last, "kept after the kill");
    unmount(mounted).await;
    assert_fsck_clean(&cluster);
    cluster.stop().await.unwrap();
}

/// Inode numbers reserved at the namenode and not used yet, by `cairn admin fsck /`.
fn free_inos(cluster: &cairn_cli::devcluster::DevCluster) -> u64 {
    let (code, fsck) = admin(cluster, &["fsck", "/"]);
    assert_eq!(code, 0, "{fsck}");
    fsck["summary"]["namespace"]["free_inos"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count of free inode numbers in {fsck}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inode_numbers_a_killed_mount_did_not_use_go_to_the_next() {
    let (_dir, cluster, victim) = cluster_with_victim().await;
    let made = in_victims_dir(&victim, |d| {
        (0..5)
            .map(|i| {
                let f = d.join(format!("f{i}"));
                fs::write(&f, b"").unwrap();
                fs::metadata(f).unwrap().ino()
            })
            .max()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(free_inos(&cluster), 0, "the mount holds what it reserved");
    victim.kill();
    victim.unmount();

    tracing::info!("--- the namenode takes back what the dead mount did not use");
    let mut free = 0;
    for _ in 0..120 {
        free = free_inos(&cluster);
        if free > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(free > 0, "no inode number came back after the mount died");

    tracing::info!("--- and the next mount's creates use them");
    let (_db, b, mounted) = fresh_mount(&cluster).await;
    let (e, made_after) = tokio::task::spawn_blocking(move || {
        fs::create_dir(b.join("e")).unwrap();
        let e = fs::metadata(b.join("e")).unwrap().ino();
        let inos: Vec<u64> = (0..5)
            .map(|i| {
                let g = b.join(format!("e/g{i}"));
                fs::write(&g, b"").unwrap();
                fs::metadata(g).unwrap().ino()
            })
            .collect();
        (e, inos)
    })
    .await
    .unwrap();
    for ino in &made_after {
        // Numbers handed out after `e`'s would be above it.
        assert!(
            *ino > made && *ino < e,
            "file {ino} made after the dead mount's last file {made}, in directory {e}"
        );
    }
    assert!(free_inos(&cluster) < free);
    unmount(mounted).await;
    assert_fsck_clean(&cluster);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namenode_restart_under_a_delegation_splits_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let (_da, a, mount_a) = mount_client(&client, &Default::default()).await;
    let (a1, a2) = (a.clone(), a.clone());
    tokio::task::spawn_blocking(move || {
        fs::create_dir(a1.join("d")).unwrap();
        for i in 0..50 {
            fs::write(a1.join(format!("d/f{i}")), b"x").unwrap();
        }
        fs::File::open(a1.join("d")).unwrap().sync_all().unwrap();
    })
    .await
    .unwrap();
    assert!(client.sent::<proto::Queued>() > 0);
    cluster.restart_namenode().await.unwrap();
    tokio::task::spawn_blocking(move || {
        // The delegation is gone with the namenode's run: what follows asks it again.
        for i in 50..100 {
            fs::write(a2.join(format!("d/f{i}")), b"x").unwrap();
        }
        for i in 0..100 {
            if i % 3 == 0 {
                fs::remove_file(a2.join(format!("d/f{i}"))).unwrap();
            }
        }
        fs::File::open(a2.join("d")).unwrap().sync_all().unwrap();
    })
    .await
    .unwrap();
    let db = tempfile::tempdir().unwrap();
    let mount_b = mount_at(&cluster, db.path()).await;
    let b = db.path().to_path_buf();
    let seen = tokio::task::spawn_blocking(move || names(&b.join("d")))
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..100)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("f{i}"))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    unmount(mount_b).await;
    unmount(mount_a).await;
    assert_fsck_clean(&cluster);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tar_extracted_in_a_delegated_directory_keeps_modes_owners_and_times_unasked() {
    // A tree of files with modes, owners and times of their own, tarred.
    let src = tempfile::tempdir().unwrap();
    let files = 120;
    for i in 0..files {
        let p = src.path().join(format!("f{i}"));
        fs::write(&p, random_bytes(i * 997 % 70_000, i as u64)).unwrap();
        let mode = [0o600, 0o644, 0o755, 0o640][i % 4];
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(1000 + (i % 3) as u32), Some(100 + (i % 2) as u32))
            .unwrap();
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i as u64 * 3_600);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let tarball = out.path().join("tree.tar");
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(tarred.success());

    on_two_mounts(move |counted, a, b| {
        fs::create_dir(a.join("t")).unwrap();
        // The delegation is asked for at the first create there.
        fs::write(a.join("t/first"), b"").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let setattrs = counted.sent::<proto::SetAttrReq>();
        let queued = counted.sent::<proto::Queued>();
        // As root, tar sets each file's times, owner and mode on its open descriptor.
        let untar = std::process::Command::new("tar")
            .arg("-C")
            .arg(a.join("t"))
            .arg("-xf")
            .arg(&tarball)
            .status()
            .unwrap();
        assert!(untar.success());
        let asked = counted.sent::<proto::SetAttrReq>() - setattrs;
        assert!(
            asked < 5,
            "{asked} attribute changes of {files} new files went to the namenode"
        );
        assert!(counted.sent::<proto::Queued>() > queued);
        // Every name there was made here: A lists it without asking.
        let lists = counted.sent::<proto::ListDir>();
        assert_eq!(names(&a.join("t")).len(), files + 1);
        assert_eq!(
            counted.sent::<proto::ListDir>(),
            lists,
            "listed by the namenode"
        );

        // A file made here, open, then unlinked (through the namenode, being open): its
        // link count is the namenode's, not what was kept of it here.
        let held = fs::File::create(a.join("t/held")).unwrap();
        held.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        fs::remove_file(a.join("t/held")).unwrap();
        assert_eq!(held.metadata().unwrap().nlink(), 0);
        drop(held);

        tracing::info!("--- the other mount finds the tree as tar made it, and so does A");
        tar_compare(&b.join("t"), &tarball);
        tar_compare(&a.join("t"), &tarball);
        drop((src, out));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rm_rf_of_a_tree_made_here_is_answered_by_the_mount() {
    on_two_mounts(|counted, a, b| {
        let t = a.join("t");
        for i in 0..4 {
            let d = t.join(format!("d{i}"));
            fs::create_dir_all(d.join("inner")).unwrap();
            for j in 0..10 {
                fs::write(d.join(format!("f{j}")), random_bytes(100 + j, j as u64)).unwrap();
            }
            fs::write(d.join("inner/g"), b"g").unwrap();
        }
        fs::create_dir(t.join("full")).unwrap();
        fs::write(t.join("full/kept"), b"kept").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let rmdirs = counted.sent::<proto::Rmdir>();
        let queued = counted.sent::<proto::Queued>();
        assert_eq!(
            errno_of(fs::remove_dir(t.join("full"))),
            libc::ENOTEMPTY,
            "known here to have names"
        );
        let rm = std::process::Command::new("rm")
            .arg("-rf")
            .args((0..4).map(|i| t.join(format!("d{i}"))))
            .status()
            .unwrap();
        assert!(rm.success());
        assert_eq!(
            counted.sent::<proto::Rmdir>(),
            rmdirs,
            "an rmdir went to the namenode"
        );
        assert!(counted.sent::<proto::Queued>() > queued);
        assert_eq!(names(&t), ["full"]);
        assert_eq!(fs::metadata(&t).unwrap().nlink(), 3);

        tracing::info!("--- the other mount finds the directories gone");
        assert_eq!(names(&b.join("t")), ["full"]);
        assert_eq!(fs::metadata(b.join("t")).unwrap().nlink(), 3);
        assert_eq!(fs::read(b.join("t/full/kept")).unwrap(), b"kept");
        assert_eq!(errno_of(fs::metadata(b.join("t/d0"))), libc::ENOENT);
        // And the name is free for a new directory there, from either side.
        fs::create_dir(b.join("t/d0")).unwrap();
        fs::write(b.join("t/d0/new"), b"new").unwrap();
        assert_eq!(fs::read(a.join("t/d0/new")).unwrap(), b"new");
    })
    .await;
}

/// `tar --compare` finds `dir` as `tarball` has it: modes, owners, times, sizes, bytes.
fn tar_compare(dir: &Path, tarball: &Path) {
    let compare = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("--compare")
        .arg("-f")
        .arg(tarball)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "tar --compare in {dir:?}: {}{}",
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
}
