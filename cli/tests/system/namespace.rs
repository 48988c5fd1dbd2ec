//! The namespace through the RPC: every operation and its POSIX errors.

use cairn_client::Client;
use cairn_client::Owner;
use cairn_common::attr::{FileKind, SetAttr};
use cairn_common::proto::{RenameMode, XattrMode};
use cairn_common::{FsError, Ino};

use crate::support::*;

fn errno(r: Result<impl std::fmt::Debug, FsError>) -> i32 {
    r.expect_err("operation must fail").errno()
}

async fn ns_cluster(dir: &std::path::Path) -> (cairn_cli::devcluster::DevCluster, Client) {
    let cluster = cluster(dir, 0).await;
    let client = cluster.client().await.unwrap();
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_lookup_and_remove_with_posix_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, c) = ns_cluster(dir.path()).await;
    let root = Ino::ROOT;

    tracing::info!("--- mkdir, create, lookup");
    let d = c.mkdir(root, b"d", 0o755, Owner::current()).await.unwrap();
    assert_eq!(d.kind, FileKind::Dir);
    assert_eq!(
        c.getattr(root).await.unwrap().nlink,
        3,
        "a subdirectory links its parent"
    );
    let f = c
        .create(d.ino, b"f", 0o640, true, false, Owner::current())
        .await
        .unwrap();
    assert!(f.created);
    assert_eq!(f.attr.perm, 0o640);
    assert_eq!(c.lookup(d.ino, b"f").await.unwrap().ino, f.attr.ino);
    assert_eq!(errno(c.lookup(d.ino, b"missing").await), libc::ENOENT);
    assert_eq!(errno(c.lookup(f.attr.ino, b"x").await), libc::ENOTDIR);
    assert_eq!(errno(c.getattr(Ino(999_999)).await), libc::ENOENT);

    tracing::info!("--- EEXIST, O_EXCL and plain O_CREAT");
    assert_eq!(
        errno(c.mkdir(root, b"d", 0o755, Owner::current()).await),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            c.create(d.ino, b"f", 0o644, true, false, Owner::current())
                .await
        ),
        libc::EEXIST
    );
    let again = c
        .create(d.ino, b"f", 0o644, false, false, Owner::current())
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.attr.ino, f.attr.ino);
    assert_eq!(
        errno(
            c.create(root, b"d", 0o644, false, false, Owner::current())
                .await
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno(c.mkdir(f.attr.ino, b"x", 0o755, Owner::current()).await),
        libc::ENOTDIR
    );

    tracing::info!("--- names: 255 bytes fine, 256 ENAMETOOLONG, '/' and '' EINVAL");
    let long = vec![b'a'; 255];
    c.create(root, &long, 0o644, true, false, Owner::current())
        .await
        .unwrap();
    assert_eq!(c.lookup(root, &long).await.unwrap().kind, FileKind::File);
    let too_long = vec![b'a'; 256];
    assert_eq!(
        errno(
            c.create(root, &too_long, 0o644, true, false, Owner::current())
                .await
        ),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(c.mkdir(root, &too_long, 0o755, Owner::current()).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(c.lookup(root, &too_long).await), libc::ENAMETOOLONG);
    assert_eq!(
        errno(c.mkdir(root, b"a/b", 0o755, Owner::current()).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.mkdir(root, b"", 0o755, Owner::current()).await),
        libc::EINVAL
    );

    tracing::info!("--- unlink, rmdir");
    assert_eq!(errno(c.rmdir(root, b"d").await), libc::ENOTEMPTY);
    assert_eq!(errno(c.unlink(root, b"d").await), libc::EISDIR);
    assert_eq!(errno(c.rmdir(d.ino, b"f").await), libc::ENOTDIR);
    assert_eq!(errno(c.unlink(d.ino, b"missing").await), libc::ENOENT);
    c.unlink(d.ino, b"f").await.unwrap();
    assert_eq!(errno(c.getattr(f.attr.ino).await), libc::ENOENT);
    c.rmdir(root, b"d").await.unwrap();
    assert_eq!(c.getattr(root).await.unwrap().nlink, 2);

    tracing::info!("--- mknod, symlinks");
    let fifo = c
        .mknod(root, b"fifo", FileKind::Fifo, 0o600, 0, Owner::current())
        .await
        .unwrap();
    assert_eq!(fifo.kind, FileKind::Fifo);
    let dev = c
        .mknod(
            root,
            b"null",
            FileKind::CharDevice,
            0o666,
            0x0103,
            Owner::current(),
        )
        .await
        .unwrap();
    assert_eq!(dev.rdev, 0x0103);
    let l = c
        .symlink(root, b"link", b"/some/where", Owner::current())
        .await
        .unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(l.size, 11);
    assert_eq!(c.readlink(l.ino).await.unwrap(), b"/some/where");
    assert_eq!(errno(c.readlink(fifo.ino).await), libc::EINVAL);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_in_all_its_forms() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, c) = ns_cluster(dir.path()).await;
    let root = Ino::ROOT;
    let a = c.mkdir(root, b"a", 0o755, Owner::current()).await.unwrap();
    let b = c.mkdir(a.ino, b"b", 0o755, Owner::current()).await.unwrap();
    let f = c
        .create(root, b"f", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr;
    let g = c
        .create(root, b"g", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr;
    let empty = c
        .mkdir(root, b"empty", 0o755, Owner::current())
        .await
        .unwrap();
    let full = c
        .mkdir(root, b"full", 0o755, Owner::current())
        .await
        .unwrap();
    c.create(full.ino, b"x", 0o644, true, false, Owner::current())
        .await
        .unwrap();
    let replace = RenameMode::Replace;

    tracing::info!("--- into its own subtree: EINVAL");
    assert_eq!(
        errno(c.rename(root, b"a", b.ino, b"a2", replace).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.rename(root, b"a", a.ino, b"self", replace).await),
        libc::EINVAL
    );

    tracing::info!("--- over a file replaces it; over a directory with a file: EISDIR/ENOTDIR");
    c.rename(root, b"f", root, b"g", replace).await.unwrap();
    assert_eq!(c.lookup(root, b"g").await.unwrap().ino, f.ino);
    assert_eq!(errno(c.getattr(g.ino).await), libc::ENOENT);
    assert_eq!(errno(c.lookup(root, b"f").await), libc::ENOENT);
    assert_eq!(
        errno(c.rename(root, b"g", root, b"empty", replace).await),
        libc::EISDIR
    );
    assert_eq!(
        errno(c.rename(root, b"empty", root, b"g", replace).await),
        libc::ENOTDIR
    );

    tracing::info!("--- a directory over an empty one replaces it; over a full one: ENOTEMPTY");
    assert_eq!(
        errno(c.rename(root, b"a", root, b"full", replace).await),
        libc::ENOTEMPTY
    );
    c.rename(root, b"a", root, b"empty", replace).await.unwrap();
    assert_eq!(c.lookup(root, b"empty").await.unwrap().ino, a.ino);
    assert_eq!(errno(c.getattr(empty.ino).await), libc::ENOENT);
    assert_eq!(c.lookup(a.ino, b"b").await.unwrap().ino, b.ino);

    tracing::info!("--- a directory moved to another parent moves its link count");
    let before = c.getattr(full.ino).await.unwrap().nlink;
    c.rename(a.ino, b"b", full.ino, b"b", replace)
        .await
        .unwrap();
    assert_eq!(c.getattr(full.ino).await.unwrap().nlink, before + 1);
    assert_eq!(c.getattr(a.ino).await.unwrap().nlink, 2);

    tracing::info!("--- RENAME_NOREPLACE");
    let noreplace = RenameMode::NoReplace;
    assert_eq!(
        errno(c.rename(root, b"g", full.ino, b"x", noreplace).await),
        libc::EEXIST
    );
    c.rename(root, b"g", root, b"g2", noreplace).await.unwrap();

    tracing::info!("--- RENAME_EXCHANGE swaps a file and a directory");
    let exchange = RenameMode::Exchange;
    c.rename(root, b"g2", root, b"full", exchange)
        .await
        .unwrap();
    assert_eq!(c.lookup(root, b"g2").await.unwrap().ino, full.ino);
    assert_eq!(c.lookup(root, b"full").await.unwrap().ino, f.ino);
    assert_eq!(
        errno(c.rename(root, b"g2", root, b"nothing", exchange).await),
        libc::ENOENT
    );
    assert_eq!(
        errno(c.rename(root, b"missing", root, b"g2", replace).await),
        libc::ENOENT
    );
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_attributes_and_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, c) = ns_cluster(dir.path()).await;
    let root = Ino::ROOT;
    let f = c
        .create(root, b"f", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr;
    let d = c.mkdir(root, b"d", 0o755, Owner::current()).await.unwrap();

    tracing::info!("--- hard links keep nlink right");
    let linked = c.link(f.ino, d.ino, b"f2").await.unwrap();
    assert_eq!(linked.nlink, 2);
    assert_eq!(errno(c.link(f.ino, d.ino, b"f2").await), libc::EEXIST);
    assert_eq!(errno(c.link(d.ino, root, b"dirlink").await), libc::EPERM);
    c.unlink(root, b"f").await.unwrap();
    assert_eq!(c.getattr(f.ino).await.unwrap().nlink, 1);
    assert_eq!(c.lookup(d.ino, b"f2").await.unwrap().ino, f.ino);

    tracing::info!("--- setattr: mode, owner, times, size");
    let set = SetAttr {
        perm: Some(0o4711),
        uid: Some(1000),
        gid: Some(100),
        mtime: Some(cairn_common::attr::TimeSet::At(
            cairn_common::attr::Timestamp {
                secs: 1_000_000,
                nanos: 5,
            },
        )),
        ..SetAttr::default()
    };
    let a = c.setattr(f.ino, set).await.unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o4711, 1000, 100));
    assert_eq!(a.mtime.secs, 1_000_000);
    assert!(a.ctime.secs > 1_000_000);
    let grown = c
        .setattr(
            f.ino,
            SetAttr {
                size: Some(1 << 40),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(grown.size, 1 << 40);
    assert_eq!(
        errno(
            c.setattr(
                d.ino,
                SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                }
            )
            .await
        ),
        libc::EISDIR
    );

    tracing::info!("--- extended attributes");
    c.set_xattr(f.ino, b"user.a", b"1", XattrMode::Any)
        .await
        .unwrap();
    c.set_xattr(f.ino, b"user.b", b"", XattrMode::Create)
        .await
        .unwrap();
    assert_eq!(
        errno(c.set_xattr(f.ino, b"user.a", b"2", XattrMode::Create).await),
        libc::EEXIST
    );
    assert_eq!(
        errno(
            c.set_xattr(f.ino, b"user.c", b"2", XattrMode::Replace)
                .await
        ),
        libc::ENODATA
    );
    c.set_xattr(f.ino, b"user.a", b"3", XattrMode::Replace)
        .await
        .unwrap();
    let long = std::time::Duration::from_secs(600);
    assert_eq!(c.get_xattr(f.ino, b"user.a", long).await.unwrap(), b"3");
    assert_eq!(c.get_xattr(f.ino, b"user.b", long).await.unwrap(), b"");
    assert_eq!(
        c.list_xattr(f.ino).await.unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    c.remove_xattr(f.ino, b"user.a").await.unwrap();
    assert_eq!(
        errno(c.get_xattr(f.ino, b"user.a", long).await),
        libc::ENODATA
    );
    assert_eq!(errno(c.remove_xattr(f.ino, b"user.a").await), libc::ENODATA);

    tracing::info!("--- an attribute found absent is known absent without asking, until set");
    let asked = c.sent::<cairn_common::proto::GetXattr>();
    for _ in 0..3 {
        assert_eq!(
            errno(c.get_xattr(f.ino, b"security.selinux", long).await),
            libc::ENODATA
        );
    }
    assert_eq!(c.sent::<cairn_common::proto::GetXattr>(), asked + 1);
    c.set_xattr(f.ino, b"security.selinux", b"label", XattrMode::Any)
        .await
        .unwrap();
    assert_eq!(
        c.get_xattr(f.ino, b"security.selinux", long).await.unwrap(),
        b"label"
    );

    tracing::info!("--- statfs counts inodes");
    let stats = c.statfs().await.unwrap();
    assert_eq!(stats.inodes, 3);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_readdir_is_stable_while_entries_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, c) = ns_cluster(dir.path()).await;
    let d = c
        .mkdir(Ino::ROOT, b"d", 0o755, Owner::current())
        .await
        .unwrap();
    let mut names: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("old-{i:04}").into_bytes())
        .collect();
    for n in &names {
        c.create(d.ino, n, 0o644, true, false, Owner::current())
            .await
            .unwrap();
    }

    tracing::info!("--- list page by page while another task adds entries");
    let adder = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                c.create(
                    d.ino,
                    format!("new-{i:04}").as_bytes(),
                    0o644,
                    true,
                    false,
                    Owner::current(),
                )
                .await
                .unwrap();
            }
        })
    };
    let mut seen: Vec<Vec<u8>> = Vec::new();
    loop {
        let after = seen.last().cloned();
        let page = c
            .readdir_page(d.ino, after.as_deref(), 37, false)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.into_iter().map(|e| e.name));
    }
    adder.await.unwrap();
    let mut sorted = seen.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an entry appeared twice");
    names.sort();
    for n in &names {
        assert!(seen.contains(n), "{} missing", String::from_utf8_lossy(n));
    }
    assert_eq!(c.readdir(d.ino).await.unwrap().len(), 1500);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namenode_checks_each_callers_permissions() {
    use cairn_common::attr::Caller;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, root) = ns_cluster(dir.path()).await;
    let user = |uid: u32, groups: Vec<u32>| {
        root.as_user(Caller {
            uid,
            gid: uid,
            groups,
        })
    };
    let (alice, bob) = (user(1000, vec![]), user(1001, vec![]));
    let me = |c: &cairn_client::Client| Owner {
        uid: c.caller().uid,
        gid: c.caller().gid,
    };
    let r = Ino::ROOT;
    let private = root
        .mkdir(r, b"private", 0o755, Owner::current())
        .await
        .unwrap();
    let closed = root
        .mkdir(r, b"closed", 0o700, Owner::current())
        .await
        .unwrap();
    let shared = root
        .mkdir(r, b"shared", 0o1777, Owner::current())
        .await
        .unwrap();
    root.create(private.ino, b"f", 0o600, true, false, Owner::current())
        .await
        .unwrap();

    tracing::info!("--- directories: w+x to create, x to look up, r to list");
    assert_eq!(
        errno(
            alice
                .create(private.ino, b"x", 0o644, true, false, me(&alice))
                .await
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(alice.mkdir(private.ino, b"x", 0o755, me(&alice)).await),
        libc::EACCES
    );
    assert!(alice.lookup(private.ino, b"f").await.is_ok());
    assert_eq!(
        errno(alice.lookup(closed.ino, b"anything").await),
        libc::EACCES
    );
    assert_eq!(errno(alice.readdir(closed.ino).await), libc::EACCES);
    assert_eq!(errno(alice.unlink(private.ino, b"f").await), libc::EACCES);

    tracing::info!("--- owner-only chmod and times, root-only chown, chgrp to own groups");
    let a = alice
        .create(shared.ino, b"a", 0o644, true, false, me(&alice))
        .await
        .unwrap()
        .attr;
    assert_eq!((a.uid, a.gid), (1000, 1000));
    let chmod = SetAttr {
        perm: Some(0o666),
        ..SetAttr::default()
    };
    assert_eq!(errno(bob.setattr(a.ino, chmod.clone()).await), libc::EPERM);
    alice.setattr(a.ino, chmod).await.unwrap();
    let give = SetAttr {
        uid: Some(1001),
        ..SetAttr::default()
    };
    assert_eq!(errno(alice.setattr(a.ino, give.clone()).await), libc::EPERM);
    root.setattr(a.ino, give).await.unwrap();
    let alice_in_team = user(1000, vec![2000]);
    let chgrp = SetAttr {
        gid: Some(2000),
        ..SetAttr::default()
    };
    let b = alice_in_team
        .create(shared.ino, b"b", 0o644, true, false, me(&alice))
        .await
        .unwrap()
        .attr;
    assert_eq!(
        errno(alice.setattr(b.ino, chgrp.clone()).await),
        libc::EPERM,
        "not in group 2000"
    );
    alice_in_team.setattr(b.ino, chgrp).await.unwrap();
    let old = SetAttr {
        mtime: Some(cairn_common::attr::TimeSet::At(
            cairn_common::attr::Timestamp { secs: 1, nanos: 0 },
        )),
        ..SetAttr::default()
    };
    assert_eq!(errno(bob.setattr(b.ino, old).await), libc::EPERM);

    tracing::info!("--- write permission for truncate and user xattrs");
    let cut = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(errno(bob.setattr(b.ino, cut).await), libc::EACCES);
    assert_eq!(
        errno(
            bob.set_xattr(b.ino, b"user.tag", b"v", XattrMode::Any)
                .await
        ),
        libc::EACCES
    );

    tracing::info!("--- the sticky bit: others may not remove or rename another's entry");
    assert_eq!(errno(bob.unlink(shared.ino, b"b").await), libc::EPERM);
    assert_eq!(
        errno(
            bob.rename(shared.ino, b"b", shared.ino, b"c", RenameMode::Replace)
                .await
        ),
        libc::EPERM
    );
    alice.unlink(shared.ino, b"b").await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locks_of_a_client_that_goes_away_are_released() {
    use cairn_common::proto::{LockKind, LockRange};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, first) = ns_cluster(dir.path()).await;
    let f = first
        .create(Ino::ROOT, b"f", 0o644, true, false, Owner::current())
        .await
        .unwrap()
        .attr;
    let whole = LockRange {
        start: 0,
        end: u64::MAX,
        kind: LockKind::Write,
        pid: 1,
    };
    first.set_lock(f.ino, 7, whole, false).await.unwrap();
    let second = cluster.client().await.unwrap();
    assert_eq!(
        second.set_lock(f.ino, 7, whole, false).await,
        Err(FsError::WouldBlock),
        "the same owner number in another session is another owner"
    );

    tracing::info!("--- the first client disappears: its lock goes with its connection");
    drop(first);
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        second.set_lock(f.ino, 7, whole, true),
    )
    .await
    .expect("lock granted once the first client is gone")
    .unwrap();
    cluster.stop().await.unwrap();
}

/// A tmpfs of `size` mounted on `dir` for as long as it lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes free on it.
    fn free(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .expect("run df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The namenode's metadata disk fills up: changes fail with ENOSPC, as on a full local disk,
/// reads go on, `cairn admin report` says why, and once space is freed changes are taken
/// again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_metadata_disk_refuses_changes_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the store (RocksDB preallocates its log) and the 100 MiB the namenode keeps
    // free (meta_reserve_mb).
    let disk = Tmpfs::mount(&dir.path().join("namenode"), "300m");
    let mut cluster = quick_cluster(dir.path(), 1).await;
    let client = cluster.client().await.unwrap();
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o755, Owner::current())
        .await
        .unwrap();
    let filler = dir.path().join("namenode/filler");
    let room = disk.free().saturating_sub(1 << 20);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();

    tracing::info!("--- changes until the disk is full: the last one fails with ENOSPC");
    let value = vec![7u8; 60 << 10];
    let mut refused = None;
    for i in 0..20_000 {
        let name = format!("user.fill{i}");
        if let Err(e) = client
            .set_xattr(docs.ino, name.as_bytes(), &value, XattrMode::Any)
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the disk never filled");
    assert!(matches!(refused, FsError::NoSpace(_)), "{refused}");
    assert_eq!(refused.errno(), libc::ENOSPC);
    assert!(matches!(
        client
            .mkdir(Ino::ROOT, b"more", 0o755, Owner::current())
            .await,
        Err(FsError::NoSpace(_))
    ));
    assert_eq!(
        client.readdir(Ino::ROOT).await.unwrap().len(),
        1,
        "reads go on"
    );
    let (code, report) = admin(&cluster, &["report"]);
    assert_eq!(code, 0);
    let why = report["metadata"]["refusing"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("metadata disk is full"), "{report}");

    tracing::info!("--- a namenode started on the full disk serves reads all the same");
    cluster.restart_namenode().await.unwrap();
    cluster.wait_for_datanodes(1).await.unwrap();
    assert_eq!(client.readdir(Ino::ROOT).await.unwrap().len(), 1);

    tracing::info!("--- space freed: changes are taken again, without a restart");
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    while let Err(e) = client
        .mkdir(Ino::ROOT, b"more", 0o755, Owner::current())
        .await
    {
        assert!(
            freed.elapsed() < std::time::Duration::from_secs(60),
            "changes still refused a minute after space was freed: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (_, report) = admin(&cluster, &["report"]);
    assert!(report["metadata"]["refusing"].is_null(), "{report}");
    cluster.stop().await.unwrap();
    drop(disk);
}
