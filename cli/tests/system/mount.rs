//! The cluster through a real FUSE mount, used with std::fs as any program would.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::*;

fn errno_of(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("operation must fail")
        .raw_os_error()
        .expect("an errno")
}

/// Mounts `cluster` at a new directory, runs `body` on a blocking thread with the mount
/// point, and unmounts.
async fn with_mount(
    cluster: &cairn_cli::devcluster::DevCluster,
    body: impl FnOnce(&Path) + Send + 'static,
) {
    let client = cluster.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().to_path_buf();
    let mounted = cairn_fuse::mount(
        client,
        tokio::runtime::Handle::current(),
        &mountpoint,
        &cairn_fuse::MountOptions::default(),
    )
    .expect("mount (needs root and /dev/fuse)");
    let result = tokio::task::spawn_blocking(move || body(&mountpoint)).await;
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await
        .unwrap()
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_directories_through_the_mount() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    with_mount(&cluster, |m| {
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
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_closed_on_one_mount_is_read_whole_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let client = cluster.client().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let second = cairn_fuse::mount(
        client,
        tokio::runtime::Handle::current(),
        other.path(),
        &cairn_fuse::MountOptions::default(),
    )
    .unwrap();
    let second_path = other.path().to_path_buf();
    with_mount(&cluster, move |m| {
        let data = random_bytes(9 << 20, 22);
        fs::write(m.join("shared"), &data).unwrap();
        assert!(fs::read(second_path.join("shared")).unwrap() == data);
        let more = random_bytes(1 << 20, 23);
        fs::write(m.join("shared"), &more).unwrap();
        assert!(fs::read(second_path.join("shared")).unwrap() == more);
    })
    .await;
    tokio::task::spawn_blocking(move || second.unmount())
        .await
        .unwrap()
        .unwrap();
    cluster.stop().await.unwrap();
}
