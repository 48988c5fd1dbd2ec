//! The trash: removed files wait in their remover's trash, come back with `cairn fs
//! restore`, and go for good after the retention period.

use std::time::{Duration, Instant};

use cairn_cli::devcluster::DevCluster;
use cairn_client::{Client, Owner};
use cairn_common::attr::{Caller, InodeAttr};
use cairn_common::proto::{ListTrash, RenameMode, TrashEntry};
use cairn_common::{FsError, Ino};

use crate::support::*;

const RETENTION_SECS: u64 = 6;

/// Runs `cairn fs ARGS` against `cluster`: exit status, stdout, stderr.
fn fs(cluster: &DevCluster, args: &[&str]) -> (bool, String, String) {
    let out = cairn(cluster, &[&["fs"], args].concat());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `data` to a new file `name` in `dir`, owned by the client's caller.
async fn put_in(client: &Client, dir: Ino, name: &str, data: &[u8]) -> InodeAttr {
    let owner = Owner {
        uid: client.caller().uid,
        gid: client.caller().gid,
    };
    let created = client
        .create(dir, name.as_bytes(), 0o644, true, false, owner)
        .await
        .expect("create");
    let mut f = client.open(created.attr.ino).await.expect("open");
    f.write(0, data).await.expect("write");
    f.close().await.expect("close");
    client.getattr(created.attr.ino).await.expect("getattr")
}

async fn trash_of(client: &Client) -> Vec<TrashEntry> {
    list_trash(client, false).await.unwrap()
}

/// Every entry of the caller's trash (everyone's with `all`), page by page.
async fn list_trash(client: &Client, all: bool) -> Result<Vec<TrashEntry>, FsError> {
    let mut out: Vec<TrashEntry> = Vec::new();
    loop {
        let after = out.last().map(|e| (e.dir, e.name.clone()));
        let page = client
            .namenode(ListTrash {
                all,
                after,
                limit: 7,
            })
            .await?;
        out.extend(page.entries);
        if !page.more {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_files_wait_in_the_trash_and_come_back() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = quick_options(dir.path(), 3);
    opts.trash_retention_secs = RETENTION_SECS;
    // The datanodes share the host's disk: however full it is, the trash keeps to its time.
    opts.trash_keep_free_percent = 0;
    opts.gc_grace_ms = 10_000;
    let cluster = DevCluster::start(opts).await.expect("cluster starts");
    let root = cluster.client().await.unwrap();
    let docs = root
        .mkdir(Ino::ROOT, b"docs", 0o777, Owner::current())
        .await
        .unwrap();
    let data = random_bytes(5 << 20, 300);
    let attr = put_in(&root, docs.ino, "report", &data).await;
    let blocks = file_blocks(&root, attr.ino).await;

    tracing::info!("--- rm moves the file to the remover's trash, data and all");
    let (ok, _, err) = fs(&cluster, &["rm", "/docs/report"]);
    assert!(ok, "{err}");
    assert!(matches!(
        root.lookup(docs.ino, b"report").await,
        Err(FsError::NotFound)
    ));
    let listed = trash_of(&root).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].from.as_deref(), Some("/docs/report"));
    assert_eq!(listed[0].size, data.len() as u64);
    let (ok, out, _) = fs(&cluster, &["trash"]);
    assert!(ok && out.contains("/docs/report"), "{out}");
    assert_eq!(
        root.getattr(attr.ino).await.unwrap().nlink,
        0,
        "a file in the trash has no name outside it"
    );
    assert!(matches!(
        root.link(attr.ino, docs.ino, b"again").await,
        Err(FsError::NotFound)
    ));

    tracing::info!("--- restore puts it back, content intact");
    let entry = String::from_utf8(listed[0].name.clone()).unwrap();
    let (ok, _, err) = fs(&cluster, &["restore", &entry]);
    assert!(ok, "{err}");
    let back = root.resolve("/docs/report").await.unwrap();
    assert_eq!(back.ino, attr.ino);
    assert_eq!(back.nlink, 1);
    assert!(get(&root, back.ino, 1 << 20).await == data);
    assert!(trash_of(&root).await.is_empty());

    tracing::info!("--- mv out of the trash is a restore too");
    root.unlink(docs.ino, b"report").await.unwrap();
    let listed = trash_of(&root).await;
    root.rename(
        listed[0].dir,
        &listed[0].name,
        docs.ino,
        b"report",
        RenameMode::Replace,
    )
    .await
    .unwrap();
    let back = root.getattr(attr.ino).await.unwrap();
    assert_eq!(back.nlink, 1);
    assert!(trash_of(&root).await.is_empty());
    assert!(matches!(
        root.get_xattr(
            attr.ino,
            cairn_common::proto::TRASH_ORIGIN_XATTR,
            Duration::ZERO
        )
        .await,
        Err(FsError::NoAttr)
    ));

    tracing::info!("--- something new in its place: restore says so, --to works");
    root.unlink(docs.ino, b"report").await.unwrap();
    put_in(&root, docs.ino, "report", b"new").await;
    let entry = String::from_utf8(trash_of(&root).await[0].name.clone()).unwrap();
    let (ok, _, err) = fs(&cluster, &["restore", &entry]);
    assert!(!ok && err.contains("--to"), "{err}");
    let (ok, _, err) = fs(&cluster, &["restore", &entry, "--to", "/docs/report.old"]);
    assert!(ok, "{err}");
    let old = root.resolve("/docs/report.old").await.unwrap();
    assert!(get(&root, old.ino, 1 << 20).await == data);
    let (ok, _, err) = fs(&cluster, &["restore", "no-such-entry"]);
    assert!(!ok && err.contains("not in the trash"), "{err}");

    tracing::info!("--- each user has a trash of their own");
    let user = |uid: u32| {
        root.as_user(Caller {
            uid,
            gid: uid,
            groups: vec![],
        })
    };
    let (alice, bob) = (user(1000), user(1001));
    let mine = put_in(&alice, docs.ino, "alice", b"alice's").await;
    alice.unlink(docs.ino, b"alice").await.unwrap();
    let hers = trash_of(&alice).await;
    assert_eq!(hers.len(), 1);
    assert_eq!(hers[0].origin.as_ref().unwrap().by, 1000);
    assert!(trash_of(&bob).await.is_empty());
    assert!(
        trash_of(&root).await.iter().all(|e| e.dir != hers[0].dir),
        "root's own trash does not hold it"
    );
    assert!(matches!(
        bob.readdir(hers[0].dir).await,
        Err(FsError::AccessDenied)
    ));
    let trash_root = root.resolve("/.trash").await.unwrap();
    assert_eq!(
        trash_root.perm, 0o711,
        "entered by all, listed by root alone"
    );
    assert!(matches!(
        bob.readdir(trash_root.ino).await,
        Err(FsError::AccessDenied)
    ));
    assert!(alice.readdir(hers[0].dir).await.is_ok(), "her own trash");

    tracing::info!("--- a file replaced by a rename is replaced for good by default");
    put_in(&alice, docs.ino, "draft.new", b"v2").await;
    put_in(&alice, docs.ino, "draft", b"v1").await;
    alice
        .rename(
            docs.ino,
            b"draft.new",
            docs.ino,
            b"draft",
            RenameMode::Replace,
        )
        .await
        .unwrap();
    assert_eq!(trash_of(&alice).await.len(), 1, "only the file she removed");
    // Everyone's trash is an administrator's to list: not a mount's, whoever calls.
    let host = client_for(
        &cluster,
        &cairn_common::cert::CertIdentity::new(cairn_common::cert::Role::Mount, "host"),
    )
    .await;
    assert!(matches!(
        list_trash(&host, true).await,
        Err(FsError::WrongRole(_))
    ));
    assert_eq!(list_trash(&root, true).await.unwrap().len(), 1);
    assert!(matches!(
        bob.namenode(cairn_common::proto::Restore {
            parent: hers[0].dir,
            name: hers[0].name.clone(),
            to: None
        })
        .await,
        Err(FsError::AccessDenied)
    ));
    let restored: cairn_common::attr::InodeAttr = alice
        .namenode(cairn_common::proto::Restore {
            parent: hers[0].dir,
            name: hers[0].name.clone(),
            to: None,
        })
        .await
        .unwrap();
    assert_eq!(restored.ino, mine.ino);

    tracing::info!("--- removed from the trash by hand: gone at once");
    alice.unlink(docs.ino, b"alice").await.unwrap();
    let hers = trash_of(&alice).await;
    alice.unlink(hers[0].dir, &hers[0].name).await.unwrap();
    assert!(trash_of(&alice).await.is_empty());

    tracing::info!("--- after the retention period the namenode empties it, then GC the blocks");
    // Timed from before the call: its answer may wait for other clients to hear of it.
    let removed = Instant::now();
    root.unlink(docs.ino, b"report.old").await.unwrap();
    while !trash_of(&root).await.is_empty() {
        assert!(
            removed.elapsed() < Duration::from_secs(RETENTION_SECS * 5),
            "the trash was never emptied"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        removed.elapsed() >= Duration::from_secs(RETENTION_SECS - 1),
        "emptied after {:?}, before its retention",
        removed.elapsed()
    );
    let started = Instant::now();
    while blocks.iter().any(|b| !holders(&cluster, b).is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "its blocks were never collected"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.stop().await.unwrap();
}

/// A cluster with the trash on (files replaced by renames too) and a client of it that
/// follows the change feed, as a mount does.
async fn following_client(dir: &std::path::Path) -> (DevCluster, Client) {
    init_tracing();
    let mut opts = quick_options(dir, 3);
    opts.trash_retention_secs = 3600;
    opts.trash_keep_free_percent = 0;
    opts.trash_replaced = true;
    let cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    client.follow_changes();
    // The feed's first read takes a position and voids the answers of calls under way:
    // the test's calls begin after it, as a mount's do long after its start.
    let started = Instant::now();
    while !client.follows_feed() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the client never followed the change feed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (cluster, client)
}

/// The change feed does not tell a client of its own unlinks, rmdirs and renames: what it
/// kept of what they reached and of the trash directory a removed file went to, it forgets
/// by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_or_rename_leaves_nothing_stale_on_the_client_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = following_client(dir.path()).await;
    let long = Duration::from_secs(600);
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o777, Owner::current())
        .await
        .unwrap();
    put_in(&client, docs.ino, "first", b"1").await;
    client.unlink(docs.ino, b"first").await.unwrap();
    let trash = trash_of(&client).await[0].dir;
    // Listed whole: the client now answers for the trash directory's names itself.
    client.readdir_plus(trash).await.unwrap();

    let second = put_in(&client, docs.ino, "second", b"2").await;
    assert!(client.known_entry(docs.ino, b"second", long).is_some());
    client.unlink(docs.ino, b"second").await.unwrap();
    let moved = trash_of(&client)
        .await
        .into_iter()
        .find(|e| e.name.ends_with(b"-second"))
        .expect("second in the trash");
    assert_eq!(
        client.known_absent(trash, &moved.name, long),
        None,
        "the trash's new name is not taken for absent"
    );
    assert!(client.known_entry(docs.ino, b"second", long).is_none());
    assert!(client.fresh_attr(second.ino, long).is_none());
    // Asked again, the trash says what it holds.
    let names: Vec<Vec<u8>> = client
        .readdir_plus(trash)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&moved.name), "{names:?}");

    // With `trash_replaced`, a rename over a file sends that file to the trash too.
    let third = put_in(&client, docs.ino, "third", b"3").await;
    put_in(&client, docs.ino, "fourth", b"4").await;
    assert!(client.fresh_attr(third.ino, long).is_some());
    client
        .rename(docs.ino, b"third", docs.ino, b"fourth", RenameMode::Replace)
        .await
        .unwrap();
    let replaced = trash_of(&client)
        .await
        .into_iter()
        .find(|e| e.name.ends_with(b"-fourth"))
        .expect("fourth in the trash");
    assert_eq!(client.known_absent(trash, &replaced.name, long), None);
    assert!(
        client.fresh_attr(third.ino, long).is_none(),
        "its ctime moved"
    );

    let sub = client
        .mkdir(docs.ino, b"sub", 0o755, Owner::current())
        .await
        .unwrap();
    assert!(client.fresh_attr(sub.ino, long).is_some());
    client.rmdir(docs.ino, b"sub").await.unwrap();
    assert!(client.fresh_attr(sub.ino, long).is_none(), "removed");
    cluster.stop().await.unwrap();
}

/// The first removal into the trash makes `/.trash`: a client removing a file of `/` while
/// it follows `/`'s names must not take `.trash` for absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trash_made_by_a_removal_in_the_root_is_seen_by_its_remover() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = following_client(dir.path()).await;
    let long = Duration::from_secs(600);
    put_in(&client, Ino::ROOT, "f", b"f").await;
    client.readdir_plus(Ino::ROOT).await.unwrap();
    assert!(client.known_absent(Ino::ROOT, b".trash", long).is_some());
    client.unlink(Ino::ROOT, b"f").await.unwrap();
    assert_eq!(client.known_absent(Ino::ROOT, b".trash", long), None);
    assert!(client.resolve("/.trash").await.is_ok());
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_trash_lists_page_by_page() {
    const FILES: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = following_client(dir.path()).await;
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o777, Owner::current())
        .await
        .unwrap();
    tracing::info!("--- {FILES} files removed");
    let owner = Owner {
        uid: client.caller().uid,
        gid: client.caller().gid,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FILES {
        let client = client.clone();
        tasks.spawn(async move {
            let name = format!("f{i:04}");
            client
                .create(docs.ino, name.as_bytes(), 0o644, true, false, owner)
                .await
                .unwrap();
            client.unlink(docs.ino, name.as_bytes()).await.unwrap();
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    tracing::info!("--- pages of 7 through the API, pages of the most through the CLI");
    let listed = trash_of(&client).await;
    assert_eq!(listed.len(), FILES);
    let mut names: Vec<&[u8]> = listed.iter().map(|e| e.name.as_slice()).collect();
    names.dedup();
    assert_eq!(names.len(), FILES, "an entry listed twice");
    let (ok, out, err) = fs(&cluster, &["trash", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON array");
    assert_eq!(json.as_array().unwrap().len(), FILES);
    let (ok, out, _) = fs(&cluster, &["trash"]);
    assert!(ok && out.contains(&format!("{FILES} files")), "{out}");
    cluster.stop().await.unwrap();
}

/// Removes the files `names` from `dir` in one second of the namenode's clock, and waits for
/// the next second to begin, so that each batch is a distinct age in the trash.
async fn remove_batch(client: &Client, dir: Ino, names: &[String]) {
    // Begun early in a second, a batch's few unlinks end within it even on a loaded machine.
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if into > 300 {
        tokio::time::sleep(Duration::from_millis(u64::from(1_020 - into))).await;
    }
    for name in names {
        client.unlink(dir, name.as_bytes()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
}

/// The names in the caller's trash that came from `names` (entries end with the file's name).
async fn still_in_trash(client: &Client, names: &[String]) -> Vec<String> {
    let listed = trash_of(client).await;
    names
        .iter()
        .filter(|n| {
            listed
                .iter()
                .any(|e| e.name.ends_with(format!("-{n}").as_bytes()))
        })
        .cloned()
        .collect()
}

/// Waits until the caller's trash holds exactly `want` of the files `names`.
async fn wait_for_trash(client: &Client, names: &[String], want: &[String], why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = still_in_trash(client, names).await;
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: the trash holds {have:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `count` files of `len` distinct bytes named `prefix<i>` in `dir`.
async fn put_files(
    client: &Client,
    dir: Ino,
    prefix: &str,
    count: usize,
    len: usize,
) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{prefix}{i}");
        // Distinct bytes in every file: equal ones would be stored once.
        let seed = name
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        put_in(client, dir, &name, &random_bytes(len, seed)).await;
        names.push(name);
    }
    names
}

/// Three datanodes of 8 MiB each, a trash kept an hour, with `tune`'s settings; a client and
/// its directory `/docs`.
async fn small_datanodes(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut cairn_cli::devcluster::DevOptions),
) -> (DevCluster, Client, InodeAttr) {
    init_tracing();
    let mut opts = quick_options(dir, 3);
    opts.trash_retention_secs = 3600;
    opts.datanode_capacity = Some(8 << 20);
    tune(&mut opts);
    let cluster = DevCluster::start(opts).await.expect("cluster starts");
    let client = cluster.client().await.unwrap();
    let docs = client
        .mkdir(Ino::ROOT, b"docs", 0o777, Owner::current())
        .await
        .unwrap();
    (cluster, client, docs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trash_past_its_share_gives_up_its_oldest_files() {
    let dir = tempfile::tempdir().unwrap();
    // 3 × 8 MiB of datanodes; the trash may hold a fifth: 4.8 MiB, replicas counted.
    let (cluster, client, docs) = small_datanodes(dir.path(), |o| o.trash_max_percent = 20).await;
    tracing::info!("--- three batches of 4 × 256 KiB (3 MiB with their replicas) removed");
    let mut batches = Vec::new();
    for prefix in ["a", "b", "c"] {
        batches.push(put_files(&client, docs.ino, prefix, 4, 256 << 10).await);
    }
    let every: Vec<String> = batches.concat();
    for batch in &batches {
        remove_batch(&client, docs.ino, batch).await;
    }
    tracing::info!("--- the two oldest batches go for good, the newest stays");
    wait_for_trash(&client, &every, &batches[2], "past its share").await;
    let held: u64 = trash_of(&client).await.iter().map(|e| e.size).sum();
    assert_eq!(held, 4 * (256 << 10));
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trash_gives_way_before_the_datanodes_fill() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, docs) = small_datanodes(dir.path(), |o| {
        o.trash_max_percent = 100;
        o.gc_grace_ms = 10_000;
    })
    .await;
    tracing::info!("--- 7 MiB of the datanodes' 8 written, then removed in two batches");
    let old = put_files(&client, docs.ino, "old", 14, 256 << 10).await;
    let newer = put_files(&client, docs.ino, "new", 14, 256 << 10).await;
    remove_batch(&client, docs.ino, &old).await;
    remove_batch(&client, docs.ino, &newer).await;
    let every = [old.clone(), newer.clone()].concat();
    assert_eq!(still_in_trash(&client, &every).await, every);

    tracing::info!("--- a write takes the free space under 5%: the oldest batch goes");
    let more = put_files(&client, docs.ino, "more", 3, 256 << 10).await;
    wait_for_trash(&client, &every, &newer, "space short").await;

    tracing::info!("--- once collected, the space is there for writes");
    // On every datanode (each holds a copy of everything): ~3.75 MiB free on each once
    // the oldest batch is gone, and no more than 7.75 MiB in all while one still has it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.statfs().await.unwrap().available < 9 << 20 {
        assert!(
            Instant::now() < deadline,
            "the trash's space never came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    put_files(&client, docs.ino, "after", 4, 256 << 10).await;
    assert_eq!(still_in_trash(&client, &every).await, newer);
    for name in more {
        client.lookup(docs.ino, name.as_bytes()).await.unwrap();
    }
    cluster.stop().await.unwrap();
}
