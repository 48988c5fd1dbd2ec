//! What one mount changes, the others see: real programs on three mounts of one cluster,
//! as on three machines. A change is answered only once every other mount has dropped what
//! it kept of it, its kernel's caches included; locks publish what was written under them.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use cairn_client::Owner;
use cairn_common::Ino;

use crate::delegation::cluster_with_victim;
use crate::mount::{mount_at, unmount};
use crate::support::*;

/// Runs `body` on `count` mounts of a new three-datanode cluster (each with a client,
/// connection and session of its own), then unmounts them and stops the cluster.
async fn on_mounts(count: usize, body: impl FnOnce(&[PathBuf]) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3).await;
    let points: Vec<tempfile::TempDir> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut mounts = Vec::new();
    for point in &points {
        mounts.push(mount_at(&cluster, point.path()).await);
    }
    let paths: Vec<PathBuf> = points.iter().map(|p| p.path().to_path_buf()).collect();
    let result = tokio::task::spawn_blocking(move || body(&paths)).await;
    for mounted in mounts {
        unmount(mounted).await;
    }
    cluster.stop().await.unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Writes one of the Python programs beside the tests into a new directory (kept as long
/// as the guard); returns the guard and the program's path.
fn program(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs `python3 script args…` on each of `runs` at once; returns what each printed, and
/// fails the test with its error output if one fails.
fn run_together(script: &Path, runs: &[Vec<String>]) -> Vec<String> {
    let children: Vec<_> = runs
        .iter()
        .map(|args| {
            Command::new("python3")
                .arg(script)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("python3 runs")
        })
        .collect();
    children
        .into_iter()
        .zip(runs)
        .map(|(child, args)| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// The SQLite writer program (see `programs/sqlite_writer.py`).
fn sqlite_writer() -> (tempfile::TempDir, PathBuf) {
    program(
        "sqlite_writer.py",
        include_str!("programs/sqlite_writer.py"),
    )
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_written_from_three_mounts_keeps_every_committed_row() {
    const EACH: usize = 150;
    on_mounts(3, |m| {
        let (_dir, writer) = sqlite_writer();
        for mode in ["delete", "truncate", "persist"] {
            tracing::info!("--- journal_mode={mode}: a writer on each mount, one database");
            let db = format!("{mode}.db");
            let runs: Vec<Vec<String>> = m
                .iter()
                .enumerate()
                .map(|(i, mount)| {
                    let path = mount.join(&db).display().to_string();
                    vec![path, format!("w{i}"), EACH.to_string(), mode.to_string()]
                })
                .collect();
            let committed = run_together(&writer, &runs);
            assert!(
                committed.iter().all(|c| *c == EACH.to_string()),
                "{committed:?}"
            );
            // Read on another mount than any writer's last: every row each one committed.
            let counts = sqlite(&m[1].join(&db), "SELECT tag, count(*) FROM t GROUP BY tag");
            assert_eq!(counts, format!("w0|{EACH}\nw1|{EACH}\nw2|{EACH}"), "{mode}");
            assert_eq!(sqlite(&m[2].join(&db), "PRAGMA integrity_check"), "ok");
        }
    })
    .await;
}

/// Holds a connection to a WAL database open: inserts a row, says "ready", waits for its
/// input to close, inserts another and closes.
const HOLD_WAL: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60)
db.execute("PRAGMA journal_mode=wal")
db.execute("INSERT INTO t VALUES('held', 0)")
db.commit()
print("ready", flush=True)
sys.stdin.read()
db.execute("INSERT INTO t VALUES('held', 1)")
db.commit()
db.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_wal_mode_is_shared_within_a_mount_and_refused_on_a_second_one() {
    const EACH: usize = 100;
    on_mounts(2, |m| {
        use std::io::BufRead;
        let (_dir, writer) = sqlite_writer();
        // Two processes on one mount share WAL's index in memory, as on a local disk.
        let on_a = m[0].join("wal.db");
        let runs: Vec<Vec<String>> = ["w0", "w1"]
            .iter()
            .map(|tag| {
                let db = on_a.display().to_string();
                vec![db, tag.to_string(), EACH.to_string(), "wal".into()]
            })
            .collect();
        let committed = run_together(&writer, &runs);
        assert_eq!(committed, [EACH.to_string(), EACH.to_string()]);

        // While a connection on mount A holds it, a process on mount B cannot map the index
        // (it would not see A's changes to it): an error, not a corrupt database.
        let mut holder = Command::new("python3")
            .args(["-c", HOLD_WAL])
            .arg(&on_a)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        let on_b = m[1].join("wal.db");
        let refused = Command::new("sqlite3")
            .arg(&on_b)
            .arg("INSERT INTO t VALUES('b', 0)")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && said.contains("disk I/O error"),
            "a second mount used a WAL database another holds: {refused:?}"
        );
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());

        // Once A let go, B writes; every committed row is there.
        sqlite(&on_b, "INSERT INTO t VALUES('b', 1)");
        let counts = sqlite(&on_b, "SELECT tag, count(*) FROM t GROUP BY tag");
        assert_eq!(counts, format!("b|1\nheld|2\nw0|{EACH}\nw1|{EACH}"));
        assert_eq!(sqlite(&on_a, "PRAGMA integrity_check"), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_under_locks_on_three_mounts_is_exact() {
    const EACH: usize = 200;
    on_mounts(3, |m| {
        let (_dir, counter) = program(
            "locked_counter.py",
            include_str!("programs/locked_counter.py"),
        );
        for kind in ["fcntl", "flock"] {
            for how in ["reopen", "kept"] {
                tracing::info!("--- {kind} locks, a descriptor {how}: one process per mount");
                let name = format!("count-{kind}-{how}");
                fs::write(m[0].join(&name), b"0").unwrap();
                let mut runs: Vec<Vec<String>> = m
                    .iter()
                    .map(|mount| {
                        let path = mount.join(&name).display().to_string();
                        vec![path, EACH.to_string(), kind.into(), how.into()]
                    })
                    .collect();
                // Two processes on one mount too: their locks conflict there as well.
                runs.push(runs[0].clone());
                run_together(&counter, &runs);
                let total = fs::read_to_string(m[2].join(&name)).unwrap();
                assert_eq!(
                    total.trim(),
                    (EACH * runs.len()).to_string(),
                    "{kind}, {how}"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_mount_changed_the_next_operation_on_another_sees() {
    const ROUNDS: usize = 400;
    on_mounts(2, |m| {
        let (a, b) = (&m[0], &m[1]);
        fs::write(a.join("held"), [b'x'; 64]).unwrap();
        // Open on B throughout, its pages in B's kernel: an overwrite on A must reach it.
        let held = fs::File::open(b.join("held")).unwrap();
        let mut page = [0u8; 64];
        held.read_exact_at(&mut page, 0).unwrap();
        let mut log_len = 0;
        for i in 0..ROUNDS {
            // An editor's save: a new file renamed over the old one.
            fs::write(a.join("k.new"), format!("v{i}")).unwrap();
            fs::rename(a.join("k.new"), a.join("k")).unwrap();
            assert_eq!(
                fs::read_to_string(b.join("k")).unwrap(),
                format!("v{i}"),
                "mv over"
            );

            fs::write(a.join("r"), b"r").unwrap();
            assert!(b.join("r").exists(), "round {i}: a new name");
            fs::remove_file(a.join("r")).unwrap();
            assert!(!b.join("r").exists(), "round {i}: a removed name");

            let value = format!("{i:064}");
            let writer = fs::OpenOptions::new()
                .write(true)
                .open(a.join("held"))
                .unwrap();
            writer.write_all_at(value.as_bytes(), 0).unwrap();
            drop(writer);
            held.read_exact_at(&mut page, 0).unwrap();
            assert_eq!(
                &page[..],
                value.as_bytes(),
                "round {i}: an in-place overwrite"
            );

            let line = b"a line\n";
            let mut log = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(a.join("log"))
                .unwrap();
            std::io::Write::write_all(&mut log, line).unwrap();
            drop(log);
            log_len += line.len() as u64;
            assert_eq!(
                fs::metadata(b.join("log")).unwrap().len(),
                log_len,
                "round {i}"
            );
        }
    })
    .await;
}

/// A change waits only for the mounts that may keep something of what it changed: a mount
/// stopped dead holds up a change of a directory it looked into (until it can no longer
/// trust what it kept), and not a change of one it never looked into.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_mount_holds_up_only_the_changes_of_what_it_kept() {
    let (_dir, cluster, victim) = cluster_with_victim().await;
    let client = cluster.client().await.unwrap();
    let me = Owner::current();
    let kept = client.mkdir(Ino::ROOT, b"kept", 0o755, me).await.unwrap();
    let unseen = client.mkdir(Ino::ROOT, b"unseen", 0o755, me).await.unwrap();
    let looked = victim.path.join("kept");
    tokio::task::spawn_blocking(move || fs::read_dir(looked).unwrap().count())
        .await
        .unwrap();
    // News for the mount (it knows `/`): answered once it has read it, so its next read of
    // the feed has just arrived when it stops.
    client
        .create(Ino::ROOT, b"news", 0o644, true, false, me)
        .await
        .unwrap();
    victim.pause();
    let timed = |dir: Ino, name: &'static [u8]| {
        let client = client.clone();
        async move {
            let start = Instant::now();
            client
                .create(dir, name, 0o644, true, false, me)
                .await
                .unwrap();
            start.elapsed()
        }
    };
    let elsewhere = timed(unseen.ino, b"f").await;
    let there = timed(kept.ino, b"f").await;
    victim.resume();
    assert!(
        elsewhere < cairn_common::proto::LEASE_TRUST,
        "a change of a directory the stopped mount never looked into waited {elsewhere:?}"
    );
    assert!(
        there > elsewhere + Duration::from_millis(300),
        "a change of a directory the stopped mount listed waited {there:?} only \
         (one it never looked into {elsewhere:?})"
    );
    cluster.stop().await.unwrap();
}
