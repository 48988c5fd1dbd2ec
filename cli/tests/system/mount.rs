//! The cluster through a real FUSE mount, used with std::fs as any program would.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn errno_of(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("operation must fail")
        .raw_os_error()
        .expect("an errno")
}

/// Whether `p` exists: false only for ENOENT.
fn exists(p: &Path) -> bool {
    match fs::metadata(p) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => panic!("stat {}: {e}", p.display()),
    }
}

pub(crate) async fn mount_at(
    cluster: &cairn_cli::devcluster::DevCluster,
    dir: &Path,
) -> cairn_fuse::Mount {
    mount_with(cluster, dir, &cairn_fuse::MountOptions::default()).await
}

/// Mounts `cluster` on `dir` with a client of its own and `opts`.
pub(crate) async fn mount_with(
    cluster: &cairn_cli::devcluster::DevCluster,
    dir: &Path,
    opts: &cairn_fuse::MountOptions,
) -> cairn_fuse::Mount {
    let client = cluster.mount_client().await.unwrap();
    cairn_fuse::admitted(&client, opts).await.unwrap();
    cairn_fuse::mount(client, tokio::runtime::Handle::current(), dir, opts)
        .expect("mount (needs root and /dev/fuse)")
}

/// Mounts `cluster` on a new directory; the directory lives as long as the returned guard.
async fn mount_new(
    cluster: &cairn_cli::devcluster::DevCluster,
) -> (tempfile::TempDir, std::path::PathBuf, cairn_fuse::Mount) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mounted = mount_at(cluster, &path).await;
    (dir, path, mounted)
}

/// Unmounts, off the async runtime (unmounting waits for the session to end).
pub(crate) async fn unmount(mounted: cairn_fuse::Mount) {
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await
        .unwrap()
        .expect("unmount");
}

/// Two mounts of `cluster`, as on two machines: `body` gets both mount points.
async fn with_two_mounts(
    cluster: &cairn_cli::devcluster::DevCluster,
    body: impl FnOnce(&Path, &Path) + Send + 'static,
) {
    let other = tempfile::tempdir().unwrap();
    let second = mount_at(cluster, other.path()).await;
    let b = other.path().to_path_buf();
    with_mount(cluster, move |a| body(a, &b)).await;
    unmount(second).await;
}

/// Mounts `cluster` at a new directory, runs `body` on a blocking thread with the mount
/// point, and unmounts.
async fn with_mount(
    cluster: &cairn_cli::devcluster::DevCluster,
    body: impl FnOnce(&Path) + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().to_path_buf();
    let mounted = mount_at(cluster, &mountpoint).await;
    let result = tokio::task::spawn_blocking(move || body(&mountpoint)).await;
    unmount(mounted).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs `body` on a mount of a new three-datanode cluster, then stops the cluster.
async fn on_a_mounted_cluster(body: impl FnOnce(&Path) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    with_mount(&cluster, body).await;
    cluster.stop().await.unwrap();
}

/// Runs `body` on two mounts of a new three-datanode cluster, then stops the cluster.
async fn on_a_cluster_mounted_twice(body: impl FnOnce(&Path, &Path) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    with_two_mounts(&cluster, body).await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_directories_through_the_mount() {
    on_a_mounted_cluster(|m| {
        tracing::info!("--- a 20 MiB file written in odd pieces reads back whole");
        let data = random_bytes(20 << 20, 21);
        let mut f = fs::File::create(m.join("big")).unwrap();
        for piece in data.chunks(333_333) {
            f.write_all(piece).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(
            fs::metadata(m.join("big")).unwrap().len(),
            data.len() as u64
        );
        assert!(fs::read(m.join("big")).unwrap() == data);

        tracing::info!("--- overwrite in the middle, read at an offset");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(m.join("big"))
            .unwrap();
        f.seek(SeekFrom::Start(5_000_000)).unwrap();
        f.write_all(b"cairn was here").unwrap();
        f.seek(SeekFrom::Start(4_999_998)).unwrap();
        let mut buf = [0u8; 18];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[2..16], b"cairn was here");
        assert_eq!(&buf[..2], &data[4_999_998..5_000_000]);
        drop(f);

        tracing::info!("--- directories, rename, links, symlinks");
        fs::create_dir_all(m.join("a/b/c")).unwrap();
        fs::write(m.join("a/b/c/note"), b"hello").unwrap();
        fs::rename(m.join("a/b/c/note"), m.join("a/note2")).unwrap();
        assert_eq!(fs::read(m.join("a/note2")).unwrap(), b"hello");
        let mut names: Vec<_> = fs::read_dir(m.join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["b", "note2"]);
        fs::hard_link(m.join("a/note2"), m.join("a/hard")).unwrap();
        assert_eq!(fs::metadata(m.join("a/note2")).unwrap().nlink(), 2);
        std::os::unix::fs::symlink("note2", m.join("a/sym")).unwrap();
        assert_eq!(fs::read_link(m.join("a/sym")).unwrap(), Path::new("note2"));
        assert_eq!(fs::read(m.join("a/sym")).unwrap(), b"hello");

        tracing::info!("--- attributes: chmod, truncate, times");
        fs::set_permissions(m.join("a/note2"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            fs::metadata(m.join("a/note2")).unwrap().mode() & 0o7777,
            0o600
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("a/note2"))
            .unwrap();
        f.set_len(2).unwrap();
        f.set_len(10).unwrap();
        drop(f);
        assert_eq!(fs::read(m.join("a/note2")).unwrap(), b"he\0\0\0\0\0\0\0\0");

        tracing::info!("--- errors carry their errno");
        assert_eq!(errno_of(fs::create_dir(m.join("a"))), libc::EEXIST);
        assert_eq!(errno_of(fs::remove_dir(m.join("a"))), libc::ENOTEMPTY);
        assert_eq!(errno_of(fs::read(m.join("missing"))), libc::ENOENT);
        assert_eq!(errno_of(fs::remove_file(m.join("a/b"))), libc::EISDIR);
        let long = "x".repeat(256);
        assert_eq!(errno_of(fs::write(m.join(&long), b"")), libc::ENAMETOOLONG);
        fs::write(m.join("x".repeat(255)), b"ok").unwrap();
        let excl = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("big"));
        assert_eq!(errno_of(excl), libc::EEXIST);

        tracing::info!("--- removal");
        fs::remove_dir_all(m.join("a")).unwrap();
        assert!(!m.join("a").exists());
        fs::remove_file(m.join("big")).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_closed_on_one_mount_is_read_whole_on_another() {
    on_a_cluster_mounted_twice(move |m, second_path| {
        let data = random_bytes(9 << 20, 22);
        fs::write(m.join("shared"), &data).unwrap();
        assert!(fs::read(second_path.join("shared")).unwrap() == data);
        let more = random_bytes(1 << 20, 23);
        fs::write(m.join("shared"), &more).unwrap();
        assert!(fs::read(second_path.join("shared")).unwrap() == more);
    })
    .await;
}

/// The kernel reads a block ahead on a mount, not its 128 KiB default, unless told
/// otherwise (`-o read_ahead_kb=0`); and what it reads ahead is the file's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kernel_reads_a_block_ahead_on_a_mount() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 2).await;
    let (_a, a, first) = mount_new(&cluster).await;
    let other = tempfile::tempdir().unwrap();
    let kernel_default = cairn_fuse::MountOptions {
        read_ahead_kb: 0,
        ..cairn_fuse::MountOptions::default()
    };
    let second = mount_with(&cluster, other.path(), &kernel_default).await;
    let b = other.path().to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        // The setting lives in the mount's backing device, named by its device number.
        let read_ahead = |p: &Path| {
            let dev = fs::metadata(p).unwrap().dev();
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            fs::read_to_string(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
                .unwrap()
                .trim()
                .to_string()
        };
        wait_until("the read-ahead set", || read_ahead(&a) == "4096");
        assert_eq!(read_ahead(&b), "128");
        let data = random_bytes(9 << 20, 31);
        fs::write(a.join("f"), &data).unwrap();
        assert!(fs::read(a.join("f")).unwrap() == data);
        assert!(fs::read(b.join("f")).unwrap() == data);
    })
    .await;
    unmount(second).await;
    unmount(first).await;
    cluster.stop().await.unwrap();
    if let Err(e) = checked {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_absent_from_a_directory_this_mount_made_are_known_without_asking() {
    on_a_cluster_mounted_twice(move |a, b| {
        tracing::info!("--- made and filled on one mount: its own changes are followed");
        let d = a.join("made");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("a"), b"a").unwrap();
        fs::rename(d.join("a"), d.join("c")).unwrap();
        assert!(!exists(&d.join("a")) && exists(&d.join("c")));
        fs::remove_file(d.join("c")).unwrap();
        assert!(!exists(&d.join("c")));
        let long = "n".repeat(cairn_common::attr::NAME_MAX + 1);
        assert_eq!(errno_of(fs::metadata(d.join(long))), libc::ENAMETOOLONG);

        tracing::info!("--- a name another mount adds shows within the TTL");
        fs::write(b.join("made/x"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(exists(&d.join("x")), "another mount's file, a TTL later");

        tracing::info!("--- once another mount changed it, this mount asks again");
        fs::write(d.join("y"), b"y").unwrap();
        fs::write(b.join("made/z"), b"z").unwrap();
        fs::write(d.join("w"), b"w").unwrap();
        assert!(
            exists(&d.join("z")),
            "the change count moved by two: no longer followed"
        );
    })
    .await;
}

/// A mount of `cluster` at a new directory, with its client kept to count what it asks the
/// namenode (`Client::sent`).
async fn mount_counting(
    cluster: &cairn_cli::devcluster::DevCluster,
) -> (
    cairn_client::Client,
    tempfile::TempDir,
    std::path::PathBuf,
    cairn_fuse::Mount,
) {
    let client = cluster.client().await.unwrap();
    let here = tempfile::tempdir().unwrap();
    let at = here.path().to_path_buf();
    let mounted = cairn_fuse::mount(
        client.clone(),
        tokio::runtime::Handle::current(),
        &at,
        &cairn_fuse::MountOptions::default(),
    )
    .unwrap();
    (client, here, at, mounted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_in_a_directory_this_mount_did_not_make_are_learnt_and_cost_no_lookups() {
    use cairn_common::proto::Lookup;
    on_two_mounts_one_counting(move |client, a, b| {
        let within_ttl = || std::thread::sleep(Duration::from_millis(1100));
        tracing::info!("--- made and filled on the other mount");
        fs::create_dir_all(b.join("filled/listed")).unwrap();
        for name in ["f0", "f1"] {
            fs::write(b.join("filled").join(name), name).unwrap();
            fs::write(b.join("filled/listed").join(name), name).unwrap();
        }
        let d = a.join("filled");
        // The feed tells this mount of those changes first (a change of anyone's heard
        // while a listing is read keeps it from being followed: it may predate it).
        until_feed_read(client);

        tracing::info!("--- names made here one after another: learnt after two misses");
        fs::write(d.join("n0"), b"n").unwrap();
        fs::write(d.join("n1"), b"n").unwrap();
        let dir = cairn_common::Ino(fs::metadata(&d).unwrap().ino());
        wait_until("the names learnt in the background", || {
            client
                .known_absent(dir, b"n2", Duration::from_secs(1))
                .is_some()
        });
        let lookups = client.sent::<Lookup>();
        for i in 2..12 {
            fs::write(d.join(format!("n{i}")), b"n").unwrap();
        }
        assert_eq!(
            client.sent::<Lookup>(),
            lookups,
            "lookups of names known absent"
        );
        assert!(exists(&d.join("f0")) && exists(&d.join("n11")) && !exists(&d.join("x")));

        tracing::info!("--- a directory listed here: its files' lookups are answered here");
        let mut names: Vec<_> = fs::read_dir(d.join("listed"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["f0", "f1"]);
        within_ttl();
        // The way there, again: the root's names are not followed (it was never listed).
        assert!(exists(&d.join("listed")));
        let lookups = client.sent::<Lookup>();
        assert_eq!(fs::metadata(d.join("listed/f1")).unwrap().len(), 2);
        assert!(!exists(&d.join("listed/f2")));
        assert_eq!(
            client.sent::<Lookup>(),
            lookups,
            "lookups of a listed directory"
        );

        tracing::info!("--- the other mount's changes there still show within the TTL");
        fs::write(b.join("filled/n5"), b"longer").unwrap();
        fs::remove_file(b.join("filled/n6")).unwrap();
        fs::write(b.join("filled/new"), b"new").unwrap();
        within_ttl();
        assert_eq!(fs::read(d.join("n5")).unwrap(), b"longer");
        assert!(!exists(&d.join("n6")) && exists(&d.join("new")));
    })
    .await;
}

/// Creates and closes are answered before the namenode syncs them (its window does);
/// `fsync` of a file and of a directory each wait for one sync of the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_of_a_file_or_a_directory_is_one_barrier_at_the_namenode() {
    use cairn_common::proto::SyncMetadata;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (client, _here, at, mounted) = mount_counting(&cluster).await;
    let result = tokio::task::spawn_blocking(move || {
        let barriers = || client.sent::<SyncMetadata>();
        fs::create_dir(at.join("d")).unwrap();
        fs::write(at.join("d/plain"), b"written, closed").unwrap();
        fs::rename(at.join("d/plain"), at.join("d/renamed")).unwrap();
        assert_eq!(barriers(), 0, "no barrier without an fsync");
        let mut f = fs::File::create(at.join("d/synced")).unwrap();
        f.write_all(b"synced").unwrap();
        f.sync_all().unwrap();
        assert_eq!(barriers(), 1, "fsync");
        f.write_all(b" again").unwrap();
        f.sync_data().unwrap();
        assert_eq!(barriers(), 2, "fdatasync");
        fs::File::open(at.join("d")).unwrap().sync_all().unwrap();
        assert_eq!(barriers(), 3, "fsync of the directory");
        assert_eq!(fs::read(at.join("d/synced")).unwrap(), b"synced again");
    })
    .await;
    unmount(mounted).await;
    cluster.stop().await.unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A cluster mounted twice, the first mount's client counting its requests to the namenode;
/// `body` runs once the first mount reads the change feed.
async fn on_two_mounts_one_counting(
    body: impl FnOnce(&cairn_client::Client, &Path, &Path) + Send + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (client, _here, a, mounted) = mount_counting(&cluster).await;
    with_mount(&cluster, move |b| {
        until_feed_read(&client);
        body(&client, &a, b);
    })
    .await;
    unmount(mounted).await;
    cluster.stop().await.unwrap();
}

/// Waits until `client` follows the change feed (leases are given to a client that reads
/// it, and used while it does) and has applied a read of it sent after this call, so that
/// what happened before the call is known to it (it sends its next read once it applied one).
fn until_feed_read(client: &cairn_client::Client) {
    use cairn_common::proto::Changes;
    let sent = client.sent::<Changes>();
    wait_until("a read of the change feed", || {
        client.follows_feed() && client.sent::<Changes>() >= sent + 2
    });
}

/// Waits, for 10 s at most, until `done`.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens `path` for reading and writing.
fn open_rw(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Sets `path`'s size with `ftruncate` through a handle of its own, opened for it.
fn truncate_through_a_handle(path: &Path, size: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(size)
        .unwrap();
}

/// `file`, open, is still written and read back after `unlink` removed its last name.
fn outlives_its_unlink(mut file: fs::File, unlink: impl FnOnce()) {
    unlink();
    std::thread::sleep(Duration::from_millis(300));
    file.write_all(b"still").unwrap();
    file.sync_all().unwrap();
    let mut back = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_read_here_opens_again_without_asking_until_another_mount_changes_it() {
    use cairn_common::proto::Open;
    // The feed is being read when the body runs: a lease is given only to a mount that does.
    on_two_mounts_one_counting(move |client, a, b| {
        tracing::info!("--- written here: opened again by the map its commit came with");
        fs::write(a.join("mine"), b"v1").unwrap();
        let opens = client.sent::<Open>();
        for _ in 0..3 {
            assert_eq!(fs::read(a.join("mine")).unwrap(), b"v1");
        }
        assert_eq!(client.sent::<Open>(), opens, "opens of a file written here");

        tracing::info!("--- written on the other mount: asked once, then opened by the lease");
        fs::write(b.join("theirs"), b"one").unwrap();
        assert_eq!(fs::read(a.join("theirs")).unwrap(), b"one");
        let opens = client.sent::<Open>();
        assert_eq!(fs::read(a.join("theirs")).unwrap(), b"one");
        assert_eq!(
            client.sent::<Open>(),
            opens,
            "a second open of the same file"
        );

        tracing::info!("--- close-to-open: closed there, read whole here at once");
        // Same sizes each round: what the kernel keeps of sizes for its TTL is not at stake.
        for round in 0..20u8 {
            let small = [b'a' + round, b'b', b'c'];
            fs::write(b.join("theirs"), small).unwrap();
            assert_eq!(fs::read(a.join("theirs")).unwrap(), small, "round {round}");
            let big = random_bytes(1 << 20, 100 + round as u64);
            fs::write(b.join("mine"), &big).unwrap();
            assert!(fs::read(a.join("mine")).unwrap() == big, "round {round}");
            // The other way: written here, read there.
            fs::write(a.join("theirs"), [round; 3]).unwrap();
            assert_eq!(fs::read(b.join("theirs")).unwrap(), [round; 3]);
        }
        assert!(
            client.sent::<Open>() >= opens + 40,
            "each change ended the lease"
        );

        tracing::info!("--- grown there: read whole here, though the kernel kept its size");
        for round in 1..10u64 {
            assert_eq!(fs::metadata(a.join("theirs")).unwrap().len(), 3 * round);
            let longer = vec![round as u8; 3 * (round + 1) as usize];
            fs::write(b.join("theirs"), &longer).unwrap();
            assert_eq!(fs::read(a.join("theirs")).unwrap(), longer, "round {round}");
        }

        tracing::info!("--- unlinked on the other mount while open here by the lease");
        fs::write(b.join("gone"), b"kept").unwrap();
        assert_eq!(fs::read(a.join("gone")).unwrap(), b"kept");
        let open_here = open_rw(&a.join("gone"));
        outlives_its_unlink(open_here, || fs::remove_file(b.join("gone")).unwrap());

        tracing::info!("--- unlinked here while open here by the lease");
        fs::write(a.join("own"), b"kept").unwrap();
        // The namenode heard of the close: the open below is known here alone.
        std::thread::sleep(Duration::from_millis(500));
        let opens = client.sent::<Open>();
        let mut open_here = fs::File::open(a.join("own")).unwrap();
        assert_eq!(client.sent::<Open>(), opens, "opened by the lease");
        fs::remove_file(a.join("own")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut back = String::new();
        open_here.read_to_string(&mut back).unwrap();
        assert_eq!(back, "kept", "outlives its unlink");

        tracing::info!("--- opened for writing: always asked, so two writers know of each other");
        let opens = client.sent::<Open>();
        drop(open_rw(&a.join("mine")));
        assert_eq!(client.sent::<Open>(), opens + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_open_here_shows_another_mounts_truncate() {
    on_a_cluster_mounted_twice(move |a, b| {
        fs::write(a.join("t"), vec![7u8; 100]).unwrap();
        let reading = fs::File::open(a.join("t")).unwrap();
        let mut writing = fs::OpenOptions::new()
            .write(true)
            .open(a.join("t"))
            .unwrap();
        truncate_through_a_handle(&b.join("t"), 10);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            fs::metadata(a.join("t")).unwrap().len(),
            10,
            "handles open here"
        );
        // What this mount writes and has not flushed yet still counts.
        writing.seek(SeekFrom::Start(40)).unwrap();
        writing.write_all(b"x").unwrap();
        assert_eq!(fs::metadata(a.join("t")).unwrap().len(), 41);
        drop((reading, writing));
        assert_eq!(fs::metadata(b.join("t")).unwrap().len(), 41);
    })
    .await;
}

/// Reads `len` bytes of `file` at `offset` as one `pread`, however many it returns.
fn pread(file: &fs::File, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, offset).unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_handle_reads_what_other_handles_and_mounts_committed_since() {
    on_a_cluster_mounted_twice(move |a, b| {
        use std::os::unix::fs::FileExt;
        tracing::info!("--- one mount: a write committed through one handle, read through another");
        fs::write(a.join("f"), b"0123456789").unwrap();
        let reader = fs::File::open(a.join("f")).unwrap();
        assert_eq!(pread(&reader, 0, 100), b"0123456789");
        // Pages the write covers only in part are not kept by the kernel: the reads below
        // reach the mount, through the reader's handle.
        let writer = open_rw(&a.join("f"));
        let bytes = random_bytes(5000, 3);
        writer.write_all_at(&bytes, 6000).unwrap();
        writer.sync_all().unwrap();
        assert_eq!(pread(&reader, 8192, 100), bytes[2192..2292]);
        assert_eq!(reader.metadata().unwrap().len(), 11_000);
        tracing::info!("--- ... and a truncate through a third handle");
        truncate_through_a_handle(&a.join("f"), 7000);
        assert_eq!(pread(&reader, 6990, 100), bytes[990..1000]);
        // SQLite's write-ahead log: every connection maps the index file (`-shm`) that
        // another grew with writes; the page beyond what one connection first saw faulted
        // in with SIGBUS when its handle read by its old size.
        tracing::info!("--- a page another handle wrote, mapped");
        let shm = a.join("shm");
        let first = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&shm)
            .unwrap();
        let second = open_rw(&shm);
        assert_eq!(pread(&second, 0, 10), b"");
        first.set_len(3).unwrap();
        for page in 0..8u64 {
            first
                .write_all_at(&[page as u8 + 1], page * 4096 + 4095)
                .unwrap();
        }
        first.sync_all().unwrap();
        assert_eq!(pread(&second, 5 * 4096 + 4090, 6), [0, 0, 0, 0, 0, 6]);

        tracing::info!(
            "--- another mount appends and closes: read here through a handle open since"
        );
        let log = a.join("log");
        fs::write(&log, b"first line\n").unwrap();
        let tail = fs::File::open(&log).unwrap();
        assert_eq!(pread(&tail, 0, 100), b"first line\n");
        fs::OpenOptions::new()
            .append(true)
            .open(b.join("log"))
            .unwrap()
            .write_all(b"second line\n")
            .unwrap();
        wait_until("the append shows here", || {
            tail.metadata().unwrap().len() == 23
        });
        assert_eq!(pread(&tail, 11, 100), b"second line\n");
    })
    .await;
}

/// copy_file_range(2) from `from` at `from_off` to `to` at `to_off`: the bytes copied.
fn copy_range(
    from: &fs::File,
    from_off: u64,
    to: &fs::File,
    to_off: u64,
    len: usize,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let (mut from_off, mut to_off) = (from_off as i64, to_off as i64);
    // SAFETY: both descriptors are open for the call; the offsets are locals it may move.
    let n = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut from_off,
            to.as_raw_fd(),
            &mut to_off,
            len,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// lseek(2) of `file` to `offset` with `whence`: the offset it answers.
fn seek(file: &fs::File, offset: u64, whence: i32) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the call.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

/// `cp` and copy_file_range(2) copy by reference: new slices name the source's blocks, so
/// nothing is stored, and what reads back is what a copy of the bytes would give. (`cp`
/// reads and writes the data of a file `st_blocks` shows sparse, as on a local disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_share_blocks_and_keep_holes() {
    use cairn_common::proto::{AllocateBlock, CopyRange};
    use std::os::unix::fs::FileExt;
    on_two_mounts_one_counting(move |client, a, b| {
        const MIB: usize = 1 << 20;
        tracing::info!("--- cp copies by reference: nothing stored");
        let dense = random_bytes(5 * MIB, 39);
        fs::write(a.join("dense"), &dense).unwrap();
        let (stored, copies) = (client.sent::<AllocateBlock>(), client.sent::<CopyRange>());
        sh(&format!("cp {0}/dense {0}/dense-copy", a.display()));
        assert!(
            client.sent::<CopyRange>() > copies,
            "cp copied by copy_file_range"
        );
        assert_eq!(
            client.sent::<AllocateBlock>(),
            stored,
            "a copy stores nothing"
        );
        assert!(fs::read(b.join("dense-copy")).unwrap() == dense);

        tracing::info!("--- a file with a hole, its data across a chunk boundary, copied whole");
        let src = a.join("src");
        let mut want = vec![0u8; 66 * MIB];
        want[..9 * MIB].copy_from_slice(&random_bytes(9 * MIB, 40));
        want[63 * MIB..].copy_from_slice(&random_bytes(3 * MIB, 41));
        {
            let f = fs::File::create(&src).unwrap();
            f.write_all_at(&want[..9 * MIB], 0).unwrap();
            f.write_all_at(&want[63 * MIB..], 63 * MIB as u64).unwrap();
        }
        let (stored, copies) = (client.sent::<AllocateBlock>(), client.sent::<CopyRange>());
        {
            let (from, to) = (
                fs::File::open(&src).unwrap(),
                fs::File::create(a.join("dst")).unwrap(),
            );
            let mut at = 0;
            while at < want.len() {
                let n = copy_range(&from, at as u64, &to, at as u64, want.len() - at).unwrap();
                assert!(n > 0, "copy_file_range stopped at {at}");
                at += n;
            }
        }
        assert!(client.sent::<CopyRange>() > copies);
        assert_eq!(
            client.sent::<AllocateBlock>(),
            stored,
            "a copy stores nothing"
        );
        assert!(fs::read(a.join("dst")).unwrap() == want);
        assert!(
            fs::read(b.join("dst")).unwrap() == want,
            "read whole on another mount"
        );
        tracing::info!("--- the copy's holes are holes: SEEK_DATA and SEEK_HOLE find them");
        let copy = fs::File::open(a.join("dst")).unwrap();
        let at = |offset: usize, whence| seek(&copy, offset as u64, whence).map(|o| o as usize);
        assert_eq!(at(0, libc::SEEK_DATA).unwrap(), 0);
        assert_eq!(at(0, libc::SEEK_HOLE).unwrap(), 9 * MIB);
        assert_eq!(at(10 * MIB, libc::SEEK_HOLE).unwrap(), 10 * MIB);
        assert_eq!(at(9 * MIB, libc::SEEK_DATA).unwrap(), 63 * MIB);
        assert_eq!(at(65 * MIB, libc::SEEK_DATA).unwrap(), 65 * MIB);
        assert_eq!(
            at(63 * MIB, libc::SEEK_HOLE).unwrap(),
            66 * MIB,
            "the end is a hole"
        );
        assert_eq!(errno_of(at(66 * MIB, libc::SEEK_DATA)), libc::ENXIO);
        assert_eq!(copy.metadata().unwrap().blocks(), (12 * MIB / 512) as u64);

        tracing::info!("--- cp sees from st_blocks that the file is sparse, and keeps its hole");
        sh(&format!("cp {0}/src {0}/cp-of-src", a.display()));
        let copy = fs::File::open(a.join("cp-of-src")).unwrap();
        assert_eq!(seek(&copy, 0, libc::SEEK_HOLE).unwrap(), 9 * MIB as u64);
        assert_eq!(copy.metadata().unwrap().blocks(), (12 * MIB / 512) as u64);
        assert!(fs::read(b.join("cp-of-src")).unwrap() == want);

        tracing::info!("--- a range with a hole in it, over a file with data, unaligned");
        let target = a.join("target");
        let mut expect = random_bytes(12 * MIB, 42);
        fs::write(&target, &expect).unwrap();
        let (s, t) = (fs::File::open(&src).unwrap(), open_rw(&target));
        assert_eq!(
            copy_range(&s, 8 * MIB as u64, &t, 777, 3 * MIB).unwrap(),
            3 * MIB
        );
        expect[777..777 + 3 * MIB].copy_from_slice(&want[8 * MIB..11 * MIB]);
        assert!(fs::read(&target).unwrap() == expect);

        tracing::info!("--- from the source's end: short, then nothing");
        let end = want.len() as u64;
        assert_eq!(copy_range(&s, end - 10, &t, 0, 100).unwrap(), 10);
        assert_eq!(copy_range(&s, end, &t, 0, 100).unwrap(), 0);
        expect[..10].copy_from_slice(&want[want.len() - 10..]);

        tracing::info!("--- within one file: apart, past its end; overlapping is EINVAL");
        assert_eq!(copy_range(&t, 0, &t, 20 * MIB as u64, 1000).unwrap(), 1000);
        expect.resize(20 * MIB, 0);
        expect.extend_from_within(..1000);
        assert_eq!(errno_of(copy_range(&t, 0, &t, 500, 1000)), libc::EINVAL);
        assert!(fs::read(&target).unwrap() == expect);
        assert!(fs::read(b.join("target")).unwrap() == expect);
        tracing::info!("--- a hole punched here reads as one on the other mount");
        sh(&format!("fallocate -p -o 4096 -l 1M {}", target.display()));
        expect[4096..4096 + MIB].fill(0);
        assert!(fs::read(b.join("target")).unwrap() == expect);
        assert!(fs::read(&target).unwrap() == expect);

        tracing::info!("--- writes still buffered in the source's handle are copied");
        let held = fs::File::create(a.join("held")).unwrap();
        held.write_all_at(b"not yet flushed", 0).unwrap();
        let reader = fs::File::open(a.join("held")).unwrap();
        assert_eq!(seek(&reader, 0, libc::SEEK_HOLE).unwrap(), 15);
        let out = fs::File::create(a.join("held-copy")).unwrap();
        assert_eq!(
            copy_range(&fs::File::open(a.join("held")).unwrap(), 0, &out, 0, 100).unwrap(),
            15
        );
        assert_eq!(fs::read(a.join("held-copy")).unwrap(), b"not yet flushed");
        drop(held);

        tracing::info!("--- the source removed: the copies read on");
        fs::remove_file(&src).unwrap();
        assert!(fs::read(b.join("dst")).unwrap() == want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_left_buffered_are_stored_within_seconds_and_seen_elsewhere() {
    on_a_cluster_mounted_twice(move |a, b| {
        use std::io::BufRead;
        // The writer is a process of its own: a file this process held open would be
        // flushed whenever another test's child closed its inherited copy at exec.
        /// Ends the writer however the test ends: it holds the mount busy while it lives.
        struct Writer(std::process::Child);
        impl Drop for Writer {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut writer = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import os, sys, time\n\
                 fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n\
                 os.write(fd, b'one\\n'); print('written', flush=True); time.sleep(60)",
            )
            .arg(a.join("log"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = writer.stdout.take().unwrap();
        let writer = Writer(writer);
        let mut said = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said, "written\n");
        let written = std::time::Instant::now();
        let tail = fs::File::open(b.join("log")).unwrap();
        // Neither closed nor synced: stored by the write-back 5 s after the write.
        while pread(&tail, 0, 100) != b"one\n" {
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "the other mount never saw the write"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            written.elapsed() >= Duration::from_secs(3),
            "seen {:?} after the write: not by the write-back",
            written.elapsed()
        );
        drop(writer);
        assert_eq!(fs::read(b.join("log")).unwrap(), b"one\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_this_mount_listed_is_followed_until_another_mount_changes_it() {
    on_a_cluster_mounted_twice(move |a, b| {
        let within_ttl = || std::thread::sleep(Duration::from_millis(1100));
        // What a mount keeps before it has a position in the feed is not vouched for.
        std::thread::sleep(Duration::from_millis(300));
        tracing::info!("--- made and filled on the other mount, listed on this one");
        fs::create_dir(b.join("theirs")).unwrap();
        for name in ["x", "y"] {
            fs::write(b.join("theirs").join(name), name).unwrap();
        }
        let d = a.join("theirs");
        let listed = |d: &Path| sorted_names(d);
        assert_eq!(listed(&d), ["x", "y"]);
        within_ttl();
        assert!(exists(&d.join("x")) && !exists(&d.join("n")));
        assert_eq!(fs::read(d.join("y")).unwrap(), b"y");

        tracing::info!("--- this mount's own changes there show at once");
        fs::write(d.join("n"), b"n").unwrap();
        fs::remove_file(d.join("x")).unwrap();
        fs::rename(d.join("y"), d.join("w")).unwrap();
        assert!(exists(&d.join("n")) && !exists(&d.join("x")) && !exists(&d.join("y")));
        within_ttl();
        assert!(exists(&d.join("n")) && exists(&d.join("w")) && !exists(&d.join("x")));
        assert_eq!(listed(&d), ["n", "w"]);

        tracing::info!("--- the other mount's changes there show within the TTL");
        fs::write(b.join("theirs/z"), b"z").unwrap();
        fs::remove_file(b.join("theirs/n")).unwrap();
        fs::set_permissions(b.join("theirs/w"), fs::Permissions::from_mode(0o600)).unwrap();
        within_ttl();
        assert!(exists(&d.join("z")), "a name the other mount added");
        assert!(!exists(&d.join("n")), "a name the other mount removed");
        assert_eq!(fs::metadata(d.join("w")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(listed(&d), ["w", "z"]);
        within_ttl();
        fs::write(d.join("m"), b"m").unwrap();
        assert!(exists(&d.join("m")) && exists(&d.join("z")) && !exists(&d.join("n")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_this_mount_keeps_past_the_ttl_follows_the_other_mounts_changes() {
    on_a_cluster_mounted_twice(move |a, b| {
        // A TTL for the kernel, then what this mount answers it from its own knowledge
        // (kept past the TTL while the change feed says nobody changed it), then another
        // mount's change and a TTL for it to show.
        let past_ttl = || std::thread::sleep(Duration::from_millis(1500));
        let within_ttl = || std::thread::sleep(Duration::from_millis(1100));
        // What a mount keeps before it has a position in the feed is not vouched for.
        std::thread::sleep(Duration::from_millis(300));
        let d = a.join("kept");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), b"one").unwrap();
        fs::write(d.join("g"), b"gg").unwrap();
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        let f_ino = fs::metadata(d.join("f")).unwrap().ino();
        past_ttl();
        assert_eq!(fs::metadata(d.join("f")).unwrap().mode() & 0o777, 0o644);

        tracing::info!("--- another mount's chmod and write");
        fs::set_permissions(b.join("kept/f"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(b.join("kept/g"), b"longer").unwrap();
        within_ttl();
        assert_eq!(fs::metadata(d.join("f")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(d.join("g")).unwrap().len(), 6);
        assert_eq!(fs::read(d.join("g")).unwrap(), b"longer");

        tracing::info!("--- another mount's rename over a name this mount made");
        past_ttl();
        assert_eq!(fs::metadata(d.join("f")).unwrap().ino(), f_ino);
        fs::rename(b.join("kept/g"), b.join("kept/f")).unwrap();
        within_ttl();
        assert_ne!(fs::metadata(d.join("f")).unwrap().ino(), f_ino);
        assert_eq!(fs::read(d.join("f")).unwrap(), b"longer");
        assert_eq!(errno_of(fs::metadata(d.join("g"))), libc::ENOENT);

        tracing::info!("--- this mount's own link and unlink show at once");
        fs::hard_link(d.join("f"), d.join("h")).unwrap();
        assert_eq!(fs::metadata(d.join("f")).unwrap().nlink(), 2);
        fs::remove_file(d.join("f")).unwrap();
        assert_eq!(fs::metadata(d.join("h")).unwrap().nlink(), 1);
        // The other name in a directory this mount does not follow.
        fs::write(b.join("elsewhere"), b"e").unwrap();
        within_ttl();
        fs::hard_link(a.join("elsewhere"), d.join("e")).unwrap();
        assert_eq!(fs::metadata(a.join("elsewhere")).unwrap().nlink(), 2);
        fs::remove_file(a.join("elsewhere")).unwrap();
        assert_eq!(fs::metadata(d.join("e")).unwrap().nlink(), 1);

        tracing::info!("--- ... and still past the TTL, when this mount answers");
        // (In a directory nobody else changed: this mount follows its names.)
        let own = a.join("own");
        fs::create_dir(&own).unwrap();
        fs::write(own.join("p"), b"p").unwrap();
        fs::hard_link(own.join("p"), own.join("q")).unwrap();
        within_ttl();
        assert_eq!(fs::metadata(own.join("q")).unwrap().nlink(), 2);
        // Opening keeps the attributes the namenode answers with (nlink 2).
        assert_eq!(fs::read(own.join("p")).unwrap(), b"p");
        fs::remove_file(own.join("q")).unwrap();
        assert_eq!(fs::metadata(own.join("p")).unwrap().nlink(), 1);
        within_ttl();
        assert_eq!(fs::metadata(own.join("p")).unwrap().nlink(), 1);
    })
    .await;
}

/// Runs a shell command line, panicking with its output if it fails; returns its stdout.
fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small source tree with files of several sizes, a symlink and old timestamps.
fn make_tree(root: &Path) {
    for (i, size) in [0usize, 1, 100, 4096, 70_000, 5 << 20].iter().enumerate() {
        let dir = root.join(format!("d{}", i % 3));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i}")),
            random_bytes(*size, 30 + i as u64),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("d0/f0", root.join("link")).unwrap();
    // The same mode as the directory it is extracted into, so that "." compares equal.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    sh(&format!(
        "find {} -exec touch -h -d '2021-03-04 05:06:07' {{}} +",
        root.display()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_programs_work_on_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let local = local.keep();
    with_mount(&cluster, move |m| {
        let l = local.display();
        let mm = m.display();

        tracing::info!("--- tar in and out: identical archives, so bytes, modes and times kept");
        sh(&format!("mkdir {mm}/tree && tar -C {l} -cf - . | tar -C {mm}/tree -xf -"));
        let want = sh(&format!("tar -C {l} --sort=name -cf - . | md5sum"));
        let got = sh(&format!("tar -C {mm}/tree --sort=name -cf - . | md5sum"));
        if got != want {
            let list = |d: &str| sh(&format!("tar -C {d} --sort=name -cvvf /dev/null . 2>&1"));
            panic!(
                "tar of the mounted copy differs:\n{}\nvs\n{}",
                list(&l.to_string()),
                list(&format!("{mm}/tree"))
            );
        }

        tracing::info!("--- cp -a keeps every mode (it writes ACLs, refused, then chmods)");
        sh(&format!("chmod 0640 {l}/d1/f1 && chmod 0750 {l}/d2"));
        sh(&format!("cp -a {l} {mm}/cpa"));
        let modes = |d: &str| sh(&format!("cd {d} && find . -printf '%m %p\\n' | sort"));
        assert_eq!(modes(&format!("{mm}/cpa")), modes(&l.to_string()));
        assert!(modes(&l.to_string()).contains("644 ./d0/f0"));

        tracing::info!("--- rsync -a, then a second rsync transfers nothing");
        sh(&format!("rsync -a {l}/ {mm}/rs/"));
        let second = sh(&format!("rsync -a --stats {l}/ {mm}/rs/"));
        assert!(
            second.contains("Number of regular files transferred: 0"),
            "{second}"
        );

        tracing::info!("--- git init, commit, fsck");
        sh(&format!(
            "cd {mm} && git init -q repo && cd repo && cp -r {l}/. . && git add -A && \
             git -c user.email=t@cairn -c user.name=t commit -qm one && \
             echo more >> d0/f0 && git -c user.email=t@cairn -c user.name=t commit -qam two && \
             git fsck --full --strict"
        ));
        assert_eq!(sh(&format!("cd {mm}/repo && git log --oneline | wc -l")).trim(), "2");

        tracing::info!("--- SQLite with transactions passes its integrity check");
        let out = sh(&format!(
            "sqlite3 {mm}/db.sqlite \"create table t(a integer primary key, b text); \
             begin; insert into t(b) select hex(randomblob(200)) from \
             (with recursive c(x) as (select 1 union all select x+1 from c where x<3000) select x from c); \
             commit; begin; update t set b = 'x' where a % 7 = 0; delete from t where a % 11 = 0; commit; \
             pragma integrity_check; select count(*) from t;\""
        ));
        assert_eq!(out.lines().collect::<Vec<_>>(), vec!["ok", "2728"]);

        tracing::info!("--- SQLite's write-ahead log, three processes writing at once");
        sh(&format!(
            "sqlite3 {mm}/wal.sqlite 'pragma journal_mode=wal; create table t(a integer primary key, b text);'"
        ));
        sh(&format!(
            "pids=; for p in 1 2 3; do (for i in $(seq 1 100); do echo \"insert into t(b) values('$p-$i');\"; \
             done | sed '1i pragma busy_timeout=20000;' | sqlite3 -bail {mm}/wal.sqlite >/dev/null) & \
             pids=\"$pids $!\"; done; for pid in $pids; do wait $pid || exit 1; done"
        ));
        let out = sh(&format!(
            "sqlite3 {mm}/wal.sqlite 'pragma integrity_check; select count(*) from t;'"
        ));
        assert_eq!(out.lines().collect::<Vec<_>>(), vec!["ok", "300"]);
    })
    .await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_datanode_dying_under_a_writing_program() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let (_mountdir, m, mounted) = mount_new(&cluster).await;

    tracing::info!("--- kill one of three datanodes mid-write: min_replicas = 2 still holds");
    let data = random_bytes(40 << 20, 24);
    let path = m.join("survivor");
    let (half, rest) = data.split_at(data.len() / 2);
    let mut f = fs::File::create(&path).unwrap();
    let first = half.to_vec();
    let mut f = tokio::task::spawn_blocking(move || {
        f.write_all(&first).unwrap();
        f
    })
    .await
    .unwrap();
    cluster.stop_datanode(2).await.unwrap();
    let rest = rest.to_vec();
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        f.write_all(&rest).unwrap();
        f.sync_all().expect("fsync succeeds with two datanodes");
        drop(f);
        assert!(fs::read(&p).unwrap() == data, "file reads back intact");
    })
    .await
    .unwrap();

    tracing::info!("--- kill another: one datanode left, write or fsync reports EIO");
    cluster.stop_datanode(1).await.unwrap();
    let doomed = m.join("doomed");
    let outcome = tokio::task::spawn_blocking(move || {
        let mut f = fs::File::create(&doomed).unwrap();
        // A failed upload may surface on a later write already, or at the latest on fsync.
        f.write_all(&random_bytes(8 << 20, 25))?;
        f.sync_all()
    })
    .await
    .unwrap();
    assert_eq!(errno_of(outcome), libc::EIO);

    unmount(mounted).await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unlinked_open_file_lives_until_its_last_close() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    with_mount(&cluster, move |m| {
        let path = m.join("tmpfile");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(b"before unlink ").unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(errno_of(fs::metadata(&path)), libc::ENOENT);
        assert_eq!(fs::read_dir(m).unwrap().count(), 0, "no name is listed");
        f.write_all(b"and after").unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0);
        let mut back = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "before unlink and after");
        drop(f);
    })
    .await;
    tracing::info!("--- after the last close nothing is left in the namespace");
    assert!(client
        .readdir(cairn_common::Ino::ROOT)
        .await
        .unwrap()
        .is_empty());
    cluster.stop().await.unwrap();
}

/// Waits (up to 20 s) until the namenode has freed `ino`.
async fn wait_until_freed(client: &cairn_client::Client, ino: cairn_common::Ino) {
    for _ in 0..200 {
        match client.getattr(ino).await {
            Err(cairn_common::FsError::NotFound) => return,
            Ok(a) => assert_eq!(a.nlink, 0, "only an orphan may linger"),
            Err(e) => panic!("getattr: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{ino} was not freed after its last close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_unlinked_on_another_mount_lives_while_open_even_across_a_namenode_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = cairn_cli::devcluster::DevOptions::new(dir.path(), 3);
    // The shortest lease allowed, so that the sweep after the restart comes soon.
    opts.open_lease_ms = 15_000;
    let lease = std::time::Duration::from_millis(opts.open_lease_ms);
    let mut cluster = cairn_cli::devcluster::DevCluster::start(opts)
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let (_da, a, mount_a) = mount_new(&cluster).await;
    let (_db, b, mount_b) = mount_new(&cluster).await;

    tracing::info!("--- open on A, unlink on B: A reads and writes on, B sees no name");
    let (pa, pb) = (a.clone(), b.clone());
    let (f, ino) = tokio::task::spawn_blocking(move || {
        let first = random_bytes(3 << 20, 40);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(pa.join("shared"))
            .unwrap();
        f.write_all(&first).unwrap();
        f.sync_all().unwrap();
        let ino = f.metadata().unwrap().ino();
        fs::remove_file(pb.join("shared")).unwrap();
        assert_eq!(errno_of(fs::metadata(pb.join("shared"))), libc::ENOENT);
        let more = random_bytes(1 << 20, 41);
        f.write_all(&more).unwrap();
        f.sync_all().unwrap();
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut back).unwrap();
        assert!(
            back == [first, more].concat(),
            "A reads what it wrote, before and after"
        );
        (f, cairn_common::Ino(ino))
    })
    .await
    .unwrap();
    assert_eq!(client.getattr(ino).await.unwrap().nlink, 0);

    tracing::info!("--- the last close frees it");
    tokio::task::spawn_blocking(move || drop(f)).await.unwrap();
    wait_until_freed(&client, ino).await;

    tracing::info!("--- open on A, unlink on B, namenode restart: still there a lease later");
    let (pa, pb) = (a.clone(), b.clone());
    let data = random_bytes(2 << 20, 42);
    let expected = data.clone();
    let (f, ino) = tokio::task::spawn_blocking(move || {
        fs::write(pa.join("kept-open"), &data).unwrap();
        let f = fs::File::open(pa.join("kept-open")).unwrap();
        let ino = f.metadata().unwrap().ino();
        fs::remove_file(pb.join("kept-open")).unwrap();
        (f, cairn_common::Ino(ino))
    })
    .await
    .unwrap();
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(3).await.unwrap();
    // Past the grace after the start, when orphans nobody claimed are freed.
    tokio::time::sleep(lease + std::time::Duration::from_secs(3)).await;
    assert_eq!(client.getattr(ino).await.unwrap().nlink, 0);
    tokio::task::spawn_blocking(move || {
        let mut f = f;
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert!(back == expected, "the open file outlived the restart");
    })
    .await
    .unwrap();
    wait_until_freed(&client, ino).await;

    unmount(mount_a).await;
    unmount(mount_b).await;
    cluster.stop().await.unwrap();
}

/// Runs `cmd` with sh as `uid`/`gid` with no supplementary groups (util-linux `setpriv`);
/// returns whether it succeeded, and its stderr.
fn sh_as(uid: u32, gid: u32, cmd: &str) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
        ])
        .args(["sh", "-c", cmd])
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_users_get_exactly_their_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let client = cluster.client().await.unwrap();
    client
        .set_replication(cairn_common::Ino::ROOT, 1)
        .await
        .unwrap();
    with_mount(&cluster, |m| {
        let mm = m.display().to_string();
        sh(&format!(
            "mkdir {mm}/private {mm}/shared {mm}/team && chmod 0755 {mm}/private && \
             chmod 1777 {mm}/shared && chown 0:2000 {mm}/team && chmod 2775 {mm}/team && \
             echo secret > {mm}/private/root-file && chmod 0600 {mm}/private/root-file"
        ));
        let (alice, bob) = (1000, 1001);

        tracing::info!("--- a user cannot write where only root may, nor read root's 0600 file");
        let (ok, err) = sh_as(alice, alice, &format!("touch {mm}/private/x"));
        assert!(!ok && err.contains("Permission denied"), "{err}");
        let (ok, err) = sh_as(alice, alice, &format!("cat {mm}/private/root-file"));
        assert!(!ok && err.contains("Permission denied"), "{err}");
        let (ok, _) = sh_as(alice, alice, &format!("ls {mm}/private"));
        assert!(ok, "0755 lets others list");

        tracing::info!(
            "--- files belong to their creator; only the owner may chmod, only root chown"
        );
        let (ok, err) = sh_as(
            alice,
            alice,
            &format!("echo hi > {mm}/shared/a && chmod 0644 {mm}/shared/a"),
        );
        assert!(ok, "{err}");
        let meta = fs::metadata(m.join("shared/a")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (alice, alice));
        let (ok, err) = sh_as(bob, bob, &format!("chmod 0666 {mm}/shared/a"));
        assert!(!ok && err.contains("not permitted"), "{err}");
        let (ok, err) = sh_as(alice, alice, &format!("chown {bob} {mm}/shared/a"));
        assert!(!ok && err.contains("not permitted"), "{err}");
        let (ok, _) = sh_as(bob, bob, &format!("echo more >> {mm}/shared/a"));
        assert!(!ok, "0644 keeps others from writing");

        tracing::info!("--- an open for writing is the right to write, whatever the mode says");
        let (ok, err) = sh_as(
            alice,
            alice,
            &format!(
                "python3 -c \"import os; fd = os.open('{mm}/shared/ro', os.O_CREAT | os.O_RDWR, 0); \
                 os.ftruncate(fd, 10); os.posix_fallocate(fd, 0, 20); os.write(fd, b'x')\""
            ),
        );
        assert!(ok, "ftruncate and fallocate through the open that made it: {err}");
        let meta = fs::metadata(m.join("shared/ro")).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o7777), (20, 0));
        let (ok, err) = sh_as(alice, alice, &format!("truncate -s 0 {mm}/shared/ro"));
        assert!(!ok && err.contains("Permission denied"), "{err}");

        tracing::info!("--- the sticky bit: bob may not remove alice's file in a 1777 directory");
        let (ok, err) = sh_as(bob, bob, &format!("rm -f {mm}/shared/a"));
        assert!(!ok && err.contains("not permitted"), "{err}");
        let (ok, err) = sh_as(alice, alice, &format!("rm {mm}/shared/a"));
        assert!(ok, "{err}");

        tracing::info!("--- a setgid directory hands its group to new files and subdirectories");
        sh(&format!("chmod 2777 {mm}/team"));
        let (ok, err) = sh_as(
            alice,
            alice,
            &format!("touch {mm}/team/f && mkdir {mm}/team/sub"),
        );
        assert!(ok, "{err}");
        assert_eq!(fs::metadata(m.join("team/f")).unwrap().gid(), 2000);
        let sub = fs::metadata(m.join("team/sub")).unwrap();
        assert_eq!(sub.gid(), 2000);
        assert_ne!(sub.mode() & 0o2000, 0, "subdirectory inherits setgid");
    })
    .await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mount_reports_a_missing_namenode_and_recovers_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path(), 3).await;
    let (_mountdir, m, mounted) = mount_new(&cluster).await;
    let p = m.clone();
    tokio::task::spawn_blocking(move || fs::write(p.join("kept"), b"still here").unwrap())
        .await
        .unwrap();

    tracing::info!("--- namenode down: operations fail with ENOTCONN after bounded retries");
    cluster.stop_namenode().await.unwrap();
    let p = m.clone();
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || fs::create_dir(p.join("new-dir")))
        .await
        .unwrap();
    assert_eq!(errno_of(outcome), libc::ENOTCONN);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "no hang"
    );

    tracing::info!("--- namenode back: the same mount works again by itself");
    cluster.start_namenode().await.unwrap();
    cluster.wait_for_datanodes(3).await.unwrap();
    let p = m.clone();
    tokio::task::spawn_blocking(move || {
        fs::create_dir(p.join("new-dir")).unwrap();
        assert_eq!(fs::read(p.join("kept")).unwrap(), b"still here");
    })
    .await
    .unwrap();
    unmount(mounted).await;
    cluster.stop().await.unwrap();
}

/// The mounts the namenode lists, once `ready` holds of them (within bounds).
async fn listed_mounts(
    admin: &cairn_client::Client,
    ready: impl Fn(&[cairn_common::proto::MountStatus]) -> bool,
) -> Vec<cairn_common::proto::MountStatus> {
    for _ in 0..100 {
        let list = admin
            .namenode(cairn_common::proto::ListMounts)
            .await
            .unwrap();
        if ready(&list) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("the mounts listed never became what was expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_namenode_lists_its_mounts_and_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (_first_dir, a, first) = mount_new(&cluster).await;
    let (_second_dir, b, second) = mount_new(&cluster).await;
    let admin = cluster.client().await.unwrap();
    let path = a.join("held");
    let held = tokio::task::spawn_blocking(move || fs::File::create(path).unwrap())
        .await
        .unwrap();
    let list = listed_mounts(&admin, |l| l.len() == 2).await;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for m in &list {
        assert_eq!(m.info.pid, std::process::id());
        assert_eq!(m.info.host, host.trim());
        assert_eq!(m.info.version, env!("CARGO_PKG_VERSION"));
        assert!(
            m.feed_read_ms_ago < 2_000,
            "a live mount reads the feed: {m:?}"
        );
    }
    let on = |p: &Path| {
        list.iter()
            .find(|m| m.info.mountpoint == p.display().to_string())
            .unwrap_or_else(|| panic!("{} not listed in {list:?}", p.display()))
    };
    assert_eq!(on(&a).open_files, 1, "the file held open there");
    assert_eq!(on(&b).open_files, 0);
    drop(held);
    unmount(second).await;
    let left = listed_mounts(&admin, |l| l.len() == 1).await;
    assert_eq!(left[0].info.mountpoint, a.display().to_string());
    unmount(first).await;
    cluster.stop().await.unwrap();
}

/// Cuts the FUSE connection of the mount on `dir`, as the kernel does when the process
/// serving it ends: everything under `dir` then fails with ENOTCONN.
fn abort_connection(dir: &Path) {
    // The connection is named by the device number of the mount.
    let minor = libc::minor(fs::metadata(dir).unwrap().dev());
    let control = Path::new("/sys/fs/fuse/connections");
    if !control.join(minor.to_string()).exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(control)
            .status();
    }
    fs::write(control.join(minor.to_string()).join("abort"), "1").expect("abort the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_mount_point_is_refused_and_a_dead_mount_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (_guard, point, first) = mount_new(&cluster).await;
    fs::write(point.join("kept"), b"still here").unwrap();

    // A second mount would hide the first: refused, with the way out.
    let client = cluster.client().await.unwrap();
    let refused = cairn_fuse::mount(
        client,
        tokio::runtime::Handle::current(),
        &point,
        &cairn_fuse::MountOptions::default(),
    )
    .err()
    .expect("a second mount on one directory is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(refused.to_string().contains("already mounted"), "{refused}");
    assert_eq!(cairn_fuse::cairn_mounts_on(&point).unwrap(), 1);
    assert_eq!(fs::read(point.join("kept")).unwrap(), b"still here");

    // The mount's process dies: its connection is cut and nothing cleans up after it.
    abort_connection(&point);
    assert_eq!(errno_of(fs::read(point.join("kept"))), libc::ENOTCONN);
    // What a process that died leaves: no unmount.
    std::mem::forget(first);

    // Mounting again takes the dead mount off first.
    let again = mount_at(&cluster, &point).await;
    assert_eq!(cairn_fuse::cairn_mounts_on(&point).unwrap(), 1);
    let read = point.clone();
    let kept = tokio::task::spawn_blocking(move || fs::read(read.join("kept")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept, b"still here");
    unmount(again).await;
    assert_eq!(cairn_fuse::cairn_mounts_on(&point).unwrap(), 0);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_taken_on_one_mount_blocks_the_other() {
    on_a_cluster_mounted_twice(move |a, b| {
        let (aa, bb) = (a.display(), b.display());
        fs::write(a.join("lockfile"), b"x").unwrap();
        for (kind, hold, try_) in [
            (
                "flock",
                format!("flock {aa}/lockfile sh -c 'touch {aa}/held; sleep 2'"),
                format!("flock -n {bb}/lockfile true"),
            ),
            (
                "fcntl",
                format!(
                    "python3 -c \"import fcntl,os,time; f=open('{aa}/lockfile','r+'); \
                     fcntl.lockf(f, fcntl.LOCK_EX); open('{aa}/held','w').close(); time.sleep(2)\""
                ),
                format!(
                    "python3 -c \"import fcntl; f=open('{bb}/lockfile','r+'); \
                     fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\""
                ),
            ),
        ] {
            tracing::info!("--- {kind}: held on mount A, refused on mount B, then granted");
            let _ = fs::remove_file(a.join("held"));
            let mut holder = std::process::Command::new("sh")
                .args(["-c", &hold])
                .spawn()
                .unwrap();
            while !a.join("held").exists() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let refused = std::process::Command::new("sh")
                .args(["-c", &try_])
                .output()
                .unwrap();
            assert!(!refused.status.success(), "{kind}: mount B got a held lock");
            assert!(holder.wait().unwrap().success());
            let granted = std::process::Command::new("sh")
                .args(["-c", &try_])
                .output()
                .unwrap();
            assert!(
                granted.status.success(),
                "{kind}: lock not granted after release: {}",
                String::from_utf8_lossy(&granted.stderr)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mmap_sparse_files_append_and_timestamps() {
    on_a_mounted_cluster(|m| {
        let mm = m.display();

        tracing::info!("--- mmap: writes through a shared mapping reach the file, reads see it");
        let out = sh(&format!(
            "python3 -c \"
import mmap, os
p = '{mm}/mapped'
with open(p, 'wb') as f: f.write(b'a' * 8192)
with open(p, 'r+b') as f:
    m = mmap.mmap(f.fileno(), 0)
    assert m[:4] == b'aaaa'
    m[100:105] = b'hello'
    m.flush(); m.close()
print(open(p, 'rb').read()[98:107])
\""
        ));
        assert_eq!(out.trim(), "b'aahelloaa'");

        tracing::info!("--- a sparse file past 4 GiB reads zeros in its hole");
        let mut f = fs::File::create(m.join("sparse")).unwrap();
        f.seek(SeekFrom::Start((5u64 << 30) + 7)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let mut f = fs::File::open(m.join("sparse")).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (5u64 << 30) + 11);
        let mut buf = vec![1u8; 4096];
        f.seek(SeekFrom::Start(3 << 30)).unwrap();
        f.read_exact(&mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        f.seek(SeekFrom::Start((5u64 << 30) + 5)).unwrap();
        let mut end = Vec::new();
        f.read_to_end(&mut end).unwrap();
        assert_eq!(end, b"\0\0tail");
        tracing::info!("--- its holes take no space, and copies of it keep them");
        assert_eq!(f.metadata().unwrap().blocks(), 1, "4 bytes stored");
        assert_eq!(
            sh(&format!("du -B1 {mm}/sparse")).split('\t').next(),
            Some("512")
        );
        let local = tempfile::tempdir().unwrap();
        sh(&format!("cp {mm}/sparse {}/sparse", local.path().display()));
        let copied = fs::File::open(local.path().join("sparse")).unwrap();
        assert_eq!(copied.metadata().unwrap().len(), (5u64 << 30) + 11);
        assert!(
            copied.metadata().unwrap().blocks() <= 64,
            "cp found the holes and wrote none of them"
        );
        assert_eq!(pread(&copied, (5u64 << 30) + 5, 6), b"\0\0tail");

        tracing::info!(
            "--- fallocate grows a file, KEEP_SIZE leaves it, punched and zeroed ranges read \
             as zeros, collapsing is refused"
        );
        sh(&format!("fallocate -l 1M {mm}/alloc"));
        assert_eq!(fs::metadata(m.join("alloc")).unwrap().len(), 1 << 20);
        sh(&format!("fallocate -n -l 8M {mm}/alloc"));
        assert_eq!(fs::metadata(m.join("alloc")).unwrap().len(), 1 << 20);
        fs::write(m.join("alloc"), vec![0xabu8; 3 << 20]).unwrap();
        sh(&format!("fallocate -p -o 4096 -l 8192 {mm}/alloc"));
        sh(&format!("fallocate -p -o 3M -l 1M {mm}/alloc"));
        let punched = fs::read(m.join("alloc")).unwrap();
        assert_eq!(punched.len(), 3 << 20, "punching keeps the size");
        assert!(punched[..4096].iter().all(|b| *b == 0xab));
        assert!(punched[4096..12288].iter().all(|b| *b == 0));
        assert!(punched[12288..].iter().all(|b| *b == 0xab));
        sh(&format!("fallocate -z -o 2M -l 2M {mm}/alloc"));
        let zeroed = fs::read(m.join("alloc")).unwrap();
        assert_eq!(zeroed.len(), 4 << 20, "zeroing past the end grows the file");
        assert!(zeroed[12288..2 << 20].iter().all(|b| *b == 0xab));
        assert!(zeroed[2 << 20..].iter().all(|b| *b == 0));
        let blocks = fs::metadata(m.join("alloc")).unwrap().blocks();
        assert_eq!(
            blocks,
            ((2 << 20) - 8192) / 512,
            "holes punched and zeroed take no space"
        );
        // A hole across half the largest file there may be: only chunks that exist are cut.
        let huge = m.join("huge");
        let f = fs::File::create(&huge).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 1 << 49).unwrap();
        drop(f);
        sh(&format!(
            "fallocate -p -o 0 -l {} {mm}/huge",
            (1u64 << 49) + 4
        ));
        let f = fs::File::open(&huge).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (1 << 49) + 4);
        assert_eq!(pread(&f, 0, 4), [0; 4]);
        assert_eq!(pread(&f, 1 << 49, 4), [0; 4]);
        assert_eq!(f.metadata().unwrap().blocks(), 0);
        let collapse = std::process::Command::new("fallocate")
            .args(["-c", "-o", "0", "-l", "1M"])
            .arg(m.join("alloc"))
            .output()
            .unwrap();
        assert!(
            !collapse.status.success(),
            "collapsing ranges is not supported"
        );

        tracing::info!("--- O_APPEND from two writers: every record lands, none overwritten");
        let log = m.join("log");
        let mut w1 = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut w2 = fs::OpenOptions::new().append(true).open(&log).unwrap();
        for i in 0..50 {
            w1.write_all(format!("one {i:03}\n").as_bytes()).unwrap();
            w2.write_all(format!("two {i:03}\n").as_bytes()).unwrap();
        }
        drop((w1, w2));
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 100, "{text}");
        assert_eq!(text.len(), 100 * 8);

        tracing::info!("--- timestamps: a write moves mtime and ctime, chmod only ctime");
        let p = m.join("times");
        fs::write(&p, b"1").unwrap();
        sh(&format!("touch -d '2020-01-01 00:00:00' {}", p.display()));
        let before = fs::metadata(&p).unwrap();
        assert_eq!(before.mtime(), 1_577_836_800);
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"2")
            .unwrap();
        let written = fs::metadata(&p).unwrap();
        assert!(written.mtime() > before.mtime() && written.ctime() >= before.ctime());
        sh(&format!(
            "touch -m -d '2020-01-01 00:00:00' {}",
            p.display()
        ));
        let reset = fs::metadata(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let chmodded = fs::metadata(&p).unwrap();
        assert_eq!(chmodded.mtime(), reset.mtime(), "chmod leaves mtime");
        assert!(chmodded.ctime() >= reset.ctime());

        tracing::info!("--- a directory shows each change of its entries at once");
        let d = m.join("changing");
        fs::create_dir(&d).unwrap();
        let stamp = |p: &Path| {
            let md = fs::metadata(p).unwrap();
            (md.mtime(), md.mtime_nsec(), md.nlink(), md.mode() & 0o7777)
        };
        let old = "touch -d '2020-01-01 00:00:00'";
        let steps: [(&str, i64); 6] = [
            ("touch changing/a", 0),
            ("mkdir changing/sub", 1),
            ("mv changing/a changing/b", 0),
            ("ln changing/b changing/c", 0),
            ("rm changing/c", 0),
            ("rmdir changing/sub", -1),
        ];
        // One after another: each must show its own change, not what the last one left.
        sh(&format!("{old} {}", d.display()));
        let mut before = stamp(&d);
        assert_eq!(before.0, 1_577_836_800);
        for (step, links) in steps {
            sh(&format!("cd {mm} && {step}"));
            let after = stamp(&d);
            assert!(
                (after.0, after.1) > (before.0, before.1),
                "{step}: mtime stayed {before:?} → {after:?}"
            );
            assert_eq!(after.2 as i64, before.2 as i64 + links, "{step}: nlink");
            before = after;
        }
        // A change of the directory itself, then of its entries: both show.
        sh(&format!(
            "chmod 700 {} && touch {}/e",
            d.display(),
            d.display()
        ));
        assert_eq!(stamp(&d).3, 0o700);
        sh(&format!("{old} {mm}"));
        sh(&format!("mv {}/e {mm}/e", d.display()));
        assert!(
            stamp(m).0 > 1_577_836_800,
            "a rename moves its target's mtime"
        );
        let left: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["b"]);

        tracing::info!("--- a file shows each change this mount makes, right after it");
        let f = m.join("fresh");
        let size_links = |p: &Path| {
            let md = fs::metadata(p).unwrap();
            (md.len(), md.nlink())
        };
        fs::write(&f, b"abc").unwrap();
        assert_eq!(size_links(&f), (3, 1), "written and closed");
        let mut appender = fs::OpenOptions::new().append(true).open(&f).unwrap();
        assert_eq!(appender.metadata().unwrap().len(), 3, "fstat after open");
        appender.write_all(b"de").unwrap();
        drop(appender);
        assert_eq!(size_links(&f), (5, 1), "appended and closed");
        sh(&format!("cd {mm} && ln fresh fresh2"));
        assert_eq!(size_links(&f), (5, 2), "linked");
        drop(fs::File::open(&f).unwrap());
        fs::remove_file(m.join("fresh2")).unwrap();
        assert_eq!(size_links(&f), (5, 1), "the other name removed");
        // A new file has no extended attributes, until one is set.
        let new = m.join("fresh-x");
        drop(fs::File::create(&new).unwrap());
        let (path, name) = (c_path(&new), std::ffi::CString::new("user.k").unwrap());
        let mut buf = [0u8; 8];
        // SAFETY: valid C strings and a buffer of the length passed.
        let got =
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(rc_errno(got as i32), libc::ENODATA);
        // SAFETY: as above.
        let set =
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        assert_eq!(set, 0);
        // SAFETY: as above.
        let got =
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!((got, buf[0]), (1, b'v'));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_ten_thousand_entries_while_more_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 1).await;
    let client = cluster.client().await.unwrap();
    let big = client
        .mkdir(
            cairn_common::Ino::ROOT,
            b"big",
            0o755,
            cairn_client::Owner::current(),
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in (t..10_000).step_by(8) {
                    let name = format!("entry-{i:05}");
                    client
                        .create(
                            big.ino,
                            name.as_bytes(),
                            0o644,
                            true,
                            false,
                            cairn_client::Owner::current(),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    with_mount(&cluster, |m| {
        let adder = {
            let d = m.join("big");
            std::thread::spawn(move || {
                for i in 0..300 {
                    fs::write(d.join(format!("added-{i:03}")), b"").unwrap();
                }
            })
        };
        let mut seen: Vec<String> = fs::read_dir(m.join("big"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        adder.join().unwrap();
        let listed = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), listed, "a name was listed twice");
        let originals = seen.iter().filter(|n| n.starts_with("entry-")).count();
        assert_eq!(
            originals, 10_000,
            "every entry present throughout is listed"
        );
        assert_eq!(fs::read_dir(m.join("big")).unwrap().count(), 10_300);
    })
    .await;
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_carry_attributes_and_symlink_loops_fail() {
    use std::os::unix::fs::{DirEntryExt, OpenOptionsExt};
    on_a_mounted_cluster(|m| {
        let expire = || std::thread::sleep(std::time::Duration::from_millis(1100));
        tracing::info!("--- every kind of entry is listed with the attributes stat gives");
        let d = m.join("kinds");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("file"), vec![7u8; 12345]).unwrap();
        fs::set_permissions(d.join("file"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("file", d.join("link")).unwrap();
        sh(&format!("mkfifo {}", d.join("fifo").display()));
        // Once the kernel's cached attributes expire, the listing is what supplies them.
        expire();
        let listed: Vec<(String, u64, fs::Metadata)> = fs::read_dir(&d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                (name, e.ino(), e.metadata().unwrap())
            })
            .collect();
        assert_eq!(listed.len(), 4, "{listed:?}");
        expire();
        for (name, ino, listed) in &listed {
            let fresh = fs::symlink_metadata(d.join(name)).unwrap();
            assert_eq!(*ino, fresh.ino(), "{name}: d_ino");
            assert_eq!(listed.ino(), fresh.ino(), "{name}: ino");
            assert_eq!(listed.mode(), fresh.mode(), "{name}: mode");
            assert_eq!(listed.len(), fresh.len(), "{name}: size");
            assert_eq!(listed.nlink(), fresh.nlink(), "{name}: nlink");
            assert_eq!(listed.mtime(), fresh.mtime(), "{name}: mtime");
            let expected = match name.as_str() {
                "file" => (libc::S_IFREG | 0o640, 12345),
                "link" => (libc::S_IFLNK | 0o777, 4),
                "sub" => (libc::S_IFDIR | 0o755, listed.len()),
                "fifo" => (libc::S_IFIFO | 0o644, 0),
                other => panic!("unexpected entry {other}"),
            };
            assert_eq!((listed.mode(), listed.len()), expected, "{name}");
        }

        tracing::info!("--- a file being written is listed with the size written so far");
        let mut w = fs::File::create(d.join("growing")).unwrap();
        w.write_all(&[1u8; 5000]).unwrap();
        expire();
        let growing = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name() == "growing")
            .unwrap();
        assert_eq!(growing.metadata().unwrap().len(), 5000);
        expire();
        assert_eq!(fs::metadata(d.join("growing")).unwrap().len(), 5000);
        drop(w);

        tracing::info!("--- rewinddir shows the directory as it is now, as POSIX asks");
        let names = |d: *mut libc::DIR| {
            let mut n = 0;
            // SAFETY: `d` is an open directory stream; readdir's entries are not kept.
            while !unsafe { libc::readdir(d) }.is_null() {
                n += 1;
            }
            n
        };
        let cd = c_path(&d);
        // SAFETY: a NUL-terminated path; the stream is closed below.
        let stream = unsafe { libc::opendir(cd.as_ptr()) };
        assert!(!stream.is_null());
        let before = names(stream);
        fs::write(d.join("late"), b"").unwrap();
        // SAFETY: `stream` is open.
        unsafe { libc::rewinddir(stream) };
        assert_eq!(
            names(stream),
            before + 1,
            "the new entry is listed after a rewind"
        );
        // SAFETY: `stream` is open and not used after.
        unsafe { libc::closedir(stream) };

        tracing::info!("--- symbolic link loops end in ELOOP; the links themselves are fine");
        std::os::unix::fs::symlink("loop-b", d.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
        std::os::unix::fs::symlink("self", d.join("self")).unwrap();
        assert_eq!(errno_of(fs::read(d.join("loop-a"))), libc::ELOOP);
        assert_eq!(errno_of(fs::metadata(d.join("self"))), libc::ELOOP);
        assert_eq!(errno_of(fs::write(d.join("loop-b"), b"x")), libc::ELOOP);
        assert_eq!(
            errno_of(fs::read_dir(d.join("self").join("x"))),
            libc::ELOOP
        );
        assert!(fs::symlink_metadata(d.join("loop-a"))
            .unwrap()
            .file_type()
            .is_symlink());
        let nofollow = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(d.join("link"));
        assert_eq!(errno_of(nofollow), libc::ELOOP);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_move_the_access_time_as_relatime_does_unless_noatime() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let (quiet_dir, ro_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (q, r) = (quiet_dir.path().to_path_buf(), ro_dir.path().to_path_buf());
    let opts = |atime, read_only| cairn_fuse::MountOptions {
        atime,
        read_only,
        ..cairn_fuse::MountOptions::default()
    };
    let quiet = mount_with(&cluster, &q, &opts(false, false)).await;
    let read_only = mount_with(&cluster, &r, &opts(true, true)).await;
    let remounted_dir = tempfile::tempdir().unwrap();
    let rem = remounted_dir.path().to_path_buf();
    let remounted = mount_with(&cluster, &rem, &opts(true, false)).await;
    with_mount(&cluster, move |m| {
        let expire = || std::thread::sleep(std::time::Duration::from_millis(1100));
        let p = m.join("read-me");
        fs::write(&p, b"content").unwrap();
        sh(&format!(
            "touch -a -d '2020-01-01 00:00:00' {}",
            p.display()
        ));
        let old = fs::metadata(&p).unwrap();
        assert_eq!(old.atime(), 1_577_836_800);

        tracing::info!("--- on a noatime mount a read leaves the access time alone");
        assert_eq!(fs::read(q.join("read-me")).unwrap(), b"content");
        expire();
        assert_eq!(fs::metadata(&p).unwrap().atime(), 1_577_836_800);

        tracing::info!("--- a read-only mount reads, changes nothing, and refuses every change");
        assert_eq!(fs::read(r.join("read-me")).unwrap(), b"content");
        let erofs = libc::EROFS;
        refused(&[
            (fs::write(r.join("read-me"), b"x"), erofs),
            (fs::write(r.join("new"), b"x"), erofs),
            (fs::create_dir(r.join("dir")), erofs),
            (fs::remove_file(r.join("read-me")), erofs),
            (fs::rename(r.join("read-me"), r.join("moved")), erofs),
            (
                fs::set_permissions(r.join("read-me"), fs::Permissions::from_mode(0o600)),
                erofs,
            ),
        ]);
        expire();
        assert_eq!(fs::metadata(&p).unwrap().atime(), 1_577_836_800);

        tracing::info!("--- `mount -o remount,ro` makes a mount read-only, then `rw` again");
        use cairn_cli::mount_cmd::remount;
        remount(&rem, true).unwrap();
        assert_eq!(fs::read(rem.join("read-me")).unwrap(), b"content");
        refused(&[
            (fs::write(rem.join("new"), b"x"), libc::EROFS),
            (fs::remove_file(rem.join("read-me")), libc::EROFS),
        ]);
        expire();
        assert_eq!(
            fs::metadata(&p).unwrap().atime(),
            1_577_836_800,
            "a read-only mount records no access time"
        );
        remount(&rem, false).unwrap();
        fs::write(rem.join("new"), b"x").unwrap();
        fs::remove_file(rem.join("new")).unwrap();
        let not_ours = remount(&m.join("read-me"), true).unwrap_err().to_string();
        assert!(not_ours.contains("is not a Cairn mount"), "{not_ours}");

        tracing::info!("--- a read records itself in atime; mtime and ctime stay");
        assert_eq!(fs::read(&p).unwrap(), b"content");
        // Recorded in the background: wait for it, within bounds.
        let mut read = fs::metadata(&p).unwrap();
        for _ in 0..20 {
            if read.atime() != 1_577_836_800 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
            read = fs::metadata(&p).unwrap();
        }
        assert!(read.atime() >= old.ctime(), "atime moved to the read");
        assert_eq!(
            (
                read.mtime(),
                read.mtime_nsec(),
                read.ctime(),
                read.ctime_nsec()
            ),
            (old.mtime(), old.mtime_nsec(), old.ctime(), old.ctime_nsec())
        );

        tracing::info!("--- relatime: a second read, with nothing changed since, leaves it");
        fs::read(&p).unwrap();
        expire();
        let again = fs::metadata(&p).unwrap();
        assert_eq!(
            (again.atime(), again.atime_nsec()),
            (read.atime(), read.atime_nsec())
        );
    })
    .await;
    unmount(quiet).await;
    unmount(read_only).await;
    unmount(remounted).await;
    cluster.stop().await.unwrap();
}

/// Each operation failed with its errno.
#[track_caller]
fn refused(results: &[(std::io::Result<()>, i32)]) {
    for (i, (r, want)) in results.iter().enumerate() {
        let got = r.as_ref().err().and_then(|e| e.raw_os_error());
        assert_eq!(got, Some(*want), "operation {i} of the list");
    }
}

/// A C string of `p`, for calls std does not offer.
fn c_path(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of a libc call that returned `rc`, or 0 when it succeeded.
fn rc_errno(rc: i32) -> i32 {
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn rename2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (from, to) = (c_path(from), c_path(to));
    // SAFETY: both paths are NUL-terminated and outlive the call.
    rc_errno(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_conformance_of_renames_links_nodes_times_and_xattrs() {
    on_a_mounted_cluster(|m| {
        tracing::info!("--- rename: over a file, over directories, into its own subtree");
        fs::write(m.join("src"), b"source").unwrap();
        fs::write(m.join("dst"), b"target").unwrap();
        let replaced = fs::metadata(m.join("dst")).unwrap().ino();
        fs::rename(m.join("src"), m.join("dst")).unwrap();
        assert_eq!(fs::read(m.join("dst")).unwrap(), b"source");
        assert_ne!(fs::metadata(m.join("dst")).unwrap().ino(), replaced);
        assert!(!m.join("src").exists());
        fs::create_dir_all(m.join("full/inner")).unwrap();
        fs::create_dir(m.join("empty")).unwrap();
        refused(&[
            (fs::rename(m.join("dst"), m.join("empty")), libc::EISDIR),
            (fs::rename(m.join("empty"), m.join("dst")), libc::ENOTDIR),
            (
                fs::rename(m.join("full"), m.join("full/inner/down")),
                libc::EINVAL,
            ),
            (fs::rename(m.join("missing"), m.join("x")), libc::ENOENT),
        ]);
        let over_full = errno_of(fs::rename(m.join("empty"), m.join("full")));
        assert!(over_full == libc::ENOTEMPTY || over_full == libc::EEXIST);
        fs::create_dir(m.join("empty2")).unwrap();
        fs::rename(m.join("empty2"), m.join("empty")).unwrap();
        assert!(!m.join("empty2").exists() && m.join("empty").is_dir());

        tracing::info!("--- renameat2: NOREPLACE refuses, EXCHANGE swaps");
        fs::write(m.join("keep"), b"keep").unwrap();
        assert_eq!(
            rename2(&m.join("dst"), &m.join("keep"), libc::RENAME_NOREPLACE),
            libc::EEXIST
        );
        assert_eq!(fs::read(m.join("keep")).unwrap(), b"keep");
        assert_eq!(
            rename2(&m.join("dst"), &m.join("fresh"), libc::RENAME_NOREPLACE),
            0
        );
        assert_eq!(
            rename2(&m.join("fresh"), &m.join("full"), libc::RENAME_EXCHANGE),
            0
        );
        assert!(m.join("fresh/inner").is_dir());
        assert_eq!(fs::read(m.join("full")).unwrap(), b"source");
        assert_eq!(
            rename2(&m.join("full"), &m.join("nothing"), libc::RENAME_EXCHANGE),
            libc::ENOENT
        );

        tracing::info!("--- hard links count; directories cannot be linked");
        fs::hard_link(m.join("keep"), m.join("keep2")).unwrap();
        fs::hard_link(m.join("keep"), m.join("fresh/keep3")).unwrap();
        assert_eq!(fs::metadata(m.join("keep")).unwrap().nlink(), 3);
        fs::remove_file(m.join("keep")).unwrap();
        assert_eq!(fs::metadata(m.join("keep2")).unwrap().nlink(), 2);
        assert_eq!(fs::read(m.join("fresh/keep3")).unwrap(), b"keep");
        refused(&[
            (
                fs::hard_link(m.join("fresh"), m.join("dirlink")),
                libc::EPERM,
            ),
            (
                fs::hard_link(m.join("keep2"), m.join("keep2")),
                libc::EEXIST,
            ),
        ]);
        let dir_links = fs::metadata(m.join("fresh")).unwrap().nlink();
        fs::create_dir(m.join("fresh/sub")).unwrap();
        assert_eq!(
            fs::metadata(m.join("fresh")).unwrap().nlink(),
            dir_links + 1
        );

        tracing::info!("--- mknod: every file type, devices as metadata");
        let nodes = [
            ("fifo", libc::S_IFIFO, 0),
            ("sock", libc::S_IFSOCK, 0),
            ("chr", libc::S_IFCHR, libc::makedev(1, 3)),
            ("blk", libc::S_IFBLK, libc::makedev(8, 1)),
            ("reg", libc::S_IFREG, 0),
        ];
        for (name, kind, rdev) in nodes {
            let p = c_path(&m.join(name));
            // SAFETY: a NUL-terminated path that outlives the call.
            let rc = unsafe { libc::mknod(p.as_ptr(), kind | 0o640, rdev) };
            assert_eq!(rc_errno(rc), 0, "mknod {name}");
            let meta = fs::symlink_metadata(m.join(name)).unwrap();
            assert_eq!(meta.mode(), kind | 0o640, "{name}");
            assert_eq!(meta.rdev(), rdev, "{name}");
        }
        let again = c_path(&m.join("fifo"));
        // SAFETY: as above.
        let rc = unsafe { libc::mknod(again.as_ptr(), libc::S_IFIFO | 0o600, 0) };
        assert_eq!(rc_errno(rc), libc::EEXIST);

        tracing::info!("--- utimensat: explicit times, UTIME_OMIT and UTIME_NOW");
        let p = m.join("keep2");
        let cp = c_path(&p);
        let times = [
            libc::timespec {
                tv_sec: 1_000_000_000,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        let before = fs::metadata(&p).unwrap();
        // SAFETY: a NUL-terminated path and two timespecs, all outliving the call.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(rc_errno(rc), 0);
        let set = fs::metadata(&p).unwrap();
        assert_eq!((set.atime(), set.atime_nsec()), (1_000_000_000, 5));
        assert_eq!(
            (set.mtime(), set.mtime_nsec()),
            (before.mtime(), before.mtime_nsec()),
            "UTIME_OMIT leaves mtime"
        );
        let now = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        ];
        // SAFETY: as above.
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), now.as_ptr(), 0) };
        assert_eq!(rc_errno(rc), 0);
        let touched = fs::metadata(&p).unwrap();
        assert_eq!(touched.atime(), 1_000_000_000, "UTIME_OMIT leaves atime");
        assert!(touched.mtime() >= before.mtime() && touched.mtime() > 1_000_000_000);

        tracing::info!("--- truncate grows with zeros and shrinks");
        let t = m.join("trunc");
        fs::write(&t, b"0123456789").unwrap();
        let f = fs::OpenOptions::new().write(true).open(&t).unwrap();
        f.set_len(20).unwrap();
        f.set_len(4).unwrap();
        f.set_len(8).unwrap();
        drop(f);
        assert_eq!(fs::read(&t).unwrap(), b"0123\0\0\0\0");

        tracing::info!("--- xattrs: set, get, list, CREATE/REPLACE flags, remove");
        let x = c_path(&t);
        let set = |name: &str, value: &[u8], flags: i32| {
            let n = std::ffi::CString::new(name).unwrap();
            // SAFETY: NUL-terminated path and name, and a value slice, outliving the call.
            rc_errno(unsafe {
                libc::setxattr(
                    x.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
        };
        let get = |name: &str| -> Result<Vec<u8>, i32> {
            let n = std::ffi::CString::new(name).unwrap();
            let mut buf = vec![0u8; 256];
            // SAFETY: the buffer is 256 bytes long and outlives the call.
            let len = unsafe {
                libc::getxattr(x.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            if len < 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
            }
            buf.truncate(len as usize);
            Ok(buf)
        };
        assert_eq!(set("user.colour", b"blue", 0), 0);
        assert_eq!(get("user.colour"), Ok(b"blue".to_vec()));
        assert_eq!(set("user.colour", b"red", libc::XATTR_CREATE), libc::EEXIST);
        assert_eq!(
            set("user.shape", b"round", libc::XATTR_REPLACE),
            libc::ENODATA
        );
        assert_eq!(set("user.colour", b"red", libc::XATTR_REPLACE), 0);
        assert_eq!(get("user.colour"), Ok(b"red".to_vec()));
        assert_eq!(get("user.absent"), Err(libc::ENODATA));
        let mut names = vec![0u8; 256];
        // SAFETY: the buffer is 256 bytes long and outlives the call.
        let len = unsafe { libc::listxattr(x.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        assert!(len > 0);
        names.truncate(len as usize);
        assert_eq!(names, b"user.colour\0");
        let n = std::ffi::CString::new("user.colour").unwrap();
        // SAFETY: NUL-terminated path and name.
        let rc = unsafe { libc::removexattr(x.as_ptr(), n.as_ptr()) };
        assert_eq!(rc_errno(rc), 0);
        assert_eq!(get("user.colour"), Err(libc::ENODATA));
        // No ACLs, as a local disk mounted `noacl`: the mode is the whole permission.
        let minimal_acl = b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff\x04\0\x04\0\xff\xff\xff\xff\x20\0\x04\0\xff\xff\xff\xff";
        assert_eq!(set("system.posix_acl_access", minimal_acl, 0), libc::EOPNOTSUPP);
        assert_eq!(get("system.posix_acl_access"), Err(libc::EOPNOTSUPP));

        tracing::info!("--- statfs, fsync of a file and of a directory");
        let stats = statvfs_of(m);
        assert!(stats.f_blocks > 0 && stats.f_bsize > 0);
        fs::File::open(&t).unwrap().sync_all().unwrap();
        fs::File::open(m).unwrap().sync_all().unwrap();
    })
    .await;
}

/// statvfs(3) of `p`.
fn statvfs_of(p: &Path) -> libc::statvfs {
    let cp = c_path(p);
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(cp.as_ptr(), &mut s), 0);
        s
    }
}
