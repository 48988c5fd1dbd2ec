use std::sync::Arc;

use cairn_common::attr::{Caller, Timestamp};
use cairn_common::Ino;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

use super::log::LogStore;
use super::machine::{Machine, StateMachine};
use super::{Proposal, StorageError, TypeConfig};
use crate::ops::{MetaOp, MetaOpKind, MetaReply};
use crate::store::Store;

/// A member's storage over a fresh directory.
struct Fresh;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Fresh {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (log, machine, _) = open(dir.path());
        Ok((dir, log, machine))
    }
}

fn open(dir: &std::path::Path) -> (LogStore, StateMachine, Arc<Store>) {
    let store = Arc::new(Store::open(&dir.join("meta")).unwrap());
    let machine = Machine::open(store.clone(), &dir.join("snapshots")).unwrap();
    (
        LogStore::new(store.clone(), true),
        StateMachine::new(machine),
        store,
    )
}

#[test]
fn the_log_and_the_namespace_keep_what_raft_needs() {
    Suite::test_all(Fresh).unwrap();
}

fn op(kind: MetaOpKind) -> MetaOp {
    MetaOp {
        now: Timestamp::now(),
        caller: Caller::ROOT,
        kind,
        request: None,
        free: Vec::new(),
    }
}

fn entry(index: u64, ops: Vec<MetaOp>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { ops }),
    }
}

/// A namespace of a few files and directories, applied as entries 1 to 3 (the third
/// holds an op that fails).
async fn populate(machine: &mut StateMachine) -> Vec<super::Answer> {
    let format = op(MetaOpKind::Format { replication: 3 });
    let mut ops = vec![format];
    for name in ["a", "b", "c"] {
        ops.push(op(MetaOpKind::new_file(Ino::ROOT, name.into())));
    }
    let mkdir = op(MetaOpKind::Mkdir(cairn_common::proto::Mkdir {
        parent: Ino::ROOT,
        name: b"d".to_vec(),
        perm: 0o755,
        uid: 0,
        gid: 0,
    }));
    let again = op(MetaOpKind::new_file(Ino::ROOT, "a".into()));
    let last = op(MetaOpKind::new_file(Ino::ROOT, "e".into()));
    machine
        .apply([
            entry(1, ops),
            entry(2, vec![mkdir]),
            entry(3, vec![again, last]),
        ])
        .await
        .unwrap()
}

#[tokio::test]
async fn an_entry_answers_each_of_its_ops_and_a_failed_op_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut machine, store) = open(dir.path());
    let answers = populate(&mut machine).await;
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].applied.len(), 4);
    assert!(matches!(
        answers[1].applied[0].reply,
        Ok(MetaReply::Attr(_))
    ));
    let third = &answers[2].applied;
    assert_eq!(
        third[0].reply.as_ref().unwrap_err(),
        &cairn_common::FsError::Exists
    );
    assert!(third[0].changes.is_empty());
    assert!(matches!(third[1].reply, Ok(MetaReply::Created(_))));
    let names: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .filter(|n| store.dentry(Ino::ROOT, n.as_bytes()).unwrap().is_some())
        .collect();
    assert_eq!(names.len(), 5);
    let (applied, _) = machine.applied_state().await.unwrap();
    assert_eq!(applied.map(|a| a.index), Some(3));
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_gives_the_same_namespace() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut leader, leader_store) = open(a.path());
    let (_, mut follower, follower_store) = open(b.path());
    populate(&mut leader).await;
    // The follower had a namespace of its own, which the snapshot replaces whole.
    follower
        .apply([entry(1, vec![op(MetaOpKind::Format { replication: 2 })])])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    let mut from = tokio::fs::File::open(a.path().join("snapshots/current.snap"))
        .await
        .unwrap();
    tokio::io::copy(&mut from, &mut *received).await.unwrap();
    follower
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap();
    assert_eq!(follower_store.dump(), leader_store.dump());
    assert_eq!(
        follower.applied_state().await.unwrap(),
        leader.applied_state().await.unwrap()
    );
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_the_namespace_kept() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut leader, _) = open(a.path());
    let (_, mut follower, follower_store) = open(b.path());
    populate(&mut leader).await;
    follower
        .apply([entry(1, vec![op(MetaOpKind::Format { replication: 2 })])])
        .await
        .unwrap();
    let before = follower_store.dump();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let good = std::fs::read(a.path().join("snapshots/current.snap")).unwrap();
    // A flipped bit the records' framing cannot see (in the hash itself), and one it may.
    for (at, says) in [(good.len() - 1, "checksum"), (good.len() / 2, "refused")] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x40;
        let mut received = follower.begin_receiving_snapshot().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut *received, &bytes)
            .await
            .unwrap();
        let refused = follower.install_snapshot(&snapshot.meta, received).await;
        let error = format!("{:?}", refused.unwrap_err());
        assert!(error.contains(says), "{error}");
    }
    assert_eq!(follower_store.dump(), before);
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

#[tokio::test]
async fn an_installation_cut_short_is_finished_at_the_next_start() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, mut leader, leader_store) = open(a.path());
    populate(&mut leader).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    {
        // What a follower killed half-way through loading it leaves: the snapshot in
        // place, the mark set, a namespace part old and part new.
        let (_, mut follower, store) = open(b.path());
        follower
            .apply([entry(1, vec![op(MetaOpKind::Format { replication: 2 })])])
            .await
            .unwrap();
        std::fs::copy(
            a.path().join("snapshots/current.snap"),
            b.path().join("snapshots/current.snap"),
        )
        .unwrap();
        let mut txn = store.txn();
        txn.put_raw(crate::store::Cf::RaftState, b"installing".to_vec(), vec![1]);
        store.commit(txn, true).unwrap();
    }
    let (_, _, store) = open(b.path());
    assert_eq!(store.dump(), leader_store.dump());
}

#[tokio::test]
async fn the_log_keeps_entries_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _, _) = open(dir.path());
        let entries = (1..=5).map(|i| entry(i, vec![op(MetaOpKind::Format { replication: 3 })]));
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
            .await
            .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
    }
    let (mut log, _, _) = open(dir.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
    let kept = openraft::RaftLogReader::try_get_log_entries(&mut log, 0..10)
        .await
        .unwrap();
    let kept: Vec<_> = kept.iter().map(|e| e.log_id.index).collect();
    assert_eq!(kept, vec![3, 4, 5]);
}
