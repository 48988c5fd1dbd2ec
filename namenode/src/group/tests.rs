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
    let machine = Machine::open(store.clone(), &dir.join("snapshots"), Arc::default()).unwrap();
    (
        LogStore::new(store.clone(), synced(&store)),
        StateMachine::new(machine),
        store,
    )
}

/// A syncer that syncs each write with it.
fn synced(store: &Arc<Store>) -> Arc<crate::walsync::WalSync> {
    let always = crate::walsync::Durability::Always;
    crate::walsync::WalSync::start(store.clone(), always)
        .unwrap()
        .0
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

/// A leader's namespace (see [`populate`]) with a snapshot of it built, and a follower
/// with a namespace of its own (which a snapshot replaces whole), in `a` and `b`.
struct Pair {
    leader: StateMachine,
    leader_store: Arc<Store>,
    follower: StateMachine,
    follower_store: Arc<Store>,
    snapshot: openraft::storage::Snapshot<TypeConfig>,
}

async fn pair(a: &std::path::Path, b: &std::path::Path) -> Pair {
    let (_, mut leader, leader_store) = open(a);
    let (_, mut follower, follower_store) = open(b);
    populate(&mut leader).await;
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
    Pair {
        leader,
        leader_store,
        follower,
        follower_store,
        snapshot,
    }
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_gives_the_same_namespace() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Pair {
        mut leader,
        leader_store,
        mut follower,
        follower_store,
        snapshot,
    } = pair(a.path(), b.path()).await;
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
    let Pair {
        mut follower,
        follower_store,
        snapshot,
        ..
    } = pair(a.path(), b.path()).await;
    let before = follower_store.dump();
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
    // What a follower killed half-way through loading a snapshot leaves: the snapshot in
    // place, the mark set, a namespace part old and part new.
    let Pair {
        leader_store,
        follower,
        follower_store,
        ..
    } = pair(a.path(), b.path()).await;
    std::fs::copy(
        a.path().join("snapshots/current.snap"),
        b.path().join("snapshots/current.snap"),
    )
    .unwrap();
    let mut txn = follower_store.txn();
    txn.put_raw(crate::store::Cf::RaftState, b"installing".to_vec(), vec![1]);
    follower_store.commit(txn, true).unwrap();
    drop((follower, follower_store));
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

/// Three members over real QUIC with namenode certificates.
mod three {
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use cairn_common::cert::{self, Role};
    use cairn_common::proto::{NamenodeEnvelope, NamenodeRequest, RaftKind, RaftRpc};
    use cairn_common::transport::{
        self, ConnectionPool, Exchange, Peer, Service, TlsIdentity, TransportOptions,
    };
    use cairn_common::{FsError, FsResult, Ino};
    use openraft::error::RaftError;
    use openraft::raft::{VoteRequest, VoteResponse};
    use openraft::Vote;
    use tokio_util::sync::CancellationToken;

    use super::op;
    use crate::group::net::ClusterId;
    use crate::group::runner::{Group, Seat};
    use crate::group::Proposal;
    use crate::ops::MetaOpKind;
    use crate::store::Store;
    use crate::walsync::{Durability, WalSync};

    /// What a namenode serves of the group: Raft's messages, to the member once it runs.
    struct Members {
        group: OnceLock<Arc<Group>>,
    }

    impl Service for Members {
        type Request = NamenodeEnvelope;

        async fn handle(
            self: Arc<Self>,
            peer: Arc<Peer>,
            req: NamenodeEnvelope,
            exchange: &mut Exchange,
        ) -> FsResult<()> {
            peer.require(Role::Namenode)?;
            let NamenodeRequest::Raft(rpc) = req.req else {
                return Err(FsError::invalid("only Raft here"));
            };
            let group = self
                .group
                .get()
                .ok_or_else(|| FsError::unavailable("starting"))?;
            let answer = group.answer(rpc).await;
            exchange.respond(&answer).await
        }
    }

    struct Namenode {
        dir: tempfile::TempDir,
        store: Arc<Store>,
        wal: Arc<WalSync>,
        addr: String,
        members: Arc<Members>,
        stop: CancellationToken,
    }

    fn tls(ca: &std::path::Path, name: &str) -> TlsIdentity {
        let issued = cert::issue(ca, Role::Namenode, name, &ca.join(name), 30).unwrap();
        TlsIdentity::load(&ca.join("ca.pem"), &issued.cert, &issued.key).unwrap()
    }

    /// A namenode's store and endpoint, serving its member once it is started.
    fn namenode(
        ca: &std::path::Path,
        name: &str,
    ) -> (Namenode, Arc<ConnectionPool>, Arc<ClusterId>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("meta")).unwrap());
        // The window syncs after the test: what is synced during it, a barrier synced.
        let window = Durability::Window(Duration::from_secs(600));
        let (wal, _) = WalSync::start(store.clone(), window).unwrap();
        let identity = tls(ca, name);
        let opts = TransportOptions::default();
        let endpoint =
            transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, &opts).unwrap();
        let addr = endpoint.local_addr().unwrap().to_string();
        let pool = Arc::new(ConnectionPool::new(endpoint.clone(), &identity, &opts).unwrap());
        let members = Arc::new(Members {
            group: OnceLock::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(transport::serve(endpoint, members.clone(), stop.clone()));
        let cluster = Arc::new(ClusterId::default());
        (
            Namenode {
                dir,
                store,
                wal,
                addr,
                members,
                stop,
            },
            pool,
            cluster,
        )
    }

    fn start(
        n: &Namenode,
        id: u64,
        links: Arc<ConnectionPool>,
        cluster: Arc<ClusterId>,
        joining: bool,
    ) -> Arc<Group> {
        let seat = Seat {
            id,
            addr: n.addr.clone(),
            links: Some(links),
            joining,
        };
        let group = Arc::new(
            Group::start(
                n.store.clone(),
                &n.dir.path().join("snapshots"),
                cluster,
                n.wal.clone(),
                seat,
            )
            .unwrap(),
        );
        let _ = n.members.group.set(group.clone());
        group
    }

    fn names(store: &Store) -> Vec<Vec<u8>> {
        store
            .scan_raw(
                crate::store::Cf::Dentries,
                &Ino::ROOT.0.to_be_bytes(),
                None,
                usize::MAX,
            )
            .unwrap()
            .into_iter()
            .map(|(k, _)| crate::keys::dentry_name(&k).to_vec())
            .collect()
    }

    /// Waits until every one of `stores` holds the same namespace, applied to the same
    /// entry.
    async fn agree(stores: &[&Arc<Store>]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let dumps: Vec<_> = stores.iter().map(|s| s.dump()).collect();
            if dumps.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the members still disagree: {:?}",
                stores.iter().map(|s| names(s)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Formats a namespace of cluster 0x5eed in `n`'s store, before it founds a group.
    fn format(n: &Namenode, cluster: &ClusterId) {
        let mut txn = n.store.txn();
        crate::ops::apply(&mut txn, &op(MetaOpKind::Format { replication: 3 })).unwrap();
        txn.put_meta_u64(crate::keys::META_CLUSTER_ID, 0x5eed);
        n.store.commit(txn, true).unwrap();
        cluster.set(0x5eed);
    }

    /// Proposes creates of `names` on whichever member leads (blocking: the writer's way).
    async fn create(group: &Arc<Group>, names: &[&str]) -> FsResult<()> {
        let ops = names
            .iter()
            .map(|n| op(MetaOpKind::new_file(Ino::ROOT, (*n).into())))
            .collect();
        let group = group.clone();
        let answer = tokio::task::spawn_blocking(move || group.propose(Proposal { ops }))
            .await
            .unwrap()?;
        for applied in answer.applied {
            applied.reply?;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_added_the_moment_the_group_is_founded_takes_its_namespace() {
        let ca = tempfile::tempdir().unwrap();
        cert::init_ca(ca.path(), 30).unwrap();
        let (a, net_a, cluster_a) = namenode(ca.path(), "nn-a");
        let (b, net_b, cluster_b) = namenode(ca.path(), "nn-b");
        format(&a, &cluster_a);
        // The namespace is in no entry: it reaches b only in a snapshot, even one asked
        // for before the founder has applied anything.
        let leader = start(&a, 1, net_a, cluster_a, false);
        let _member_b = start(&b, 2, net_b, cluster_b.clone(), true);
        leader
            .add_member(2, b.addr.clone(), Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(cluster_b.get(), 0x5eed, "b took no snapshot");
        agree(&[&a.store, &b.store]).await;
        create(&leader, &["after-b"]).await.unwrap();
        agree(&[&a.store, &b.store]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_members_keep_one_namespace_and_elect_a_new_leader_when_it_goes() {
        let ca = tempfile::tempdir().unwrap();
        cert::init_ca(ca.path(), 30).unwrap();
        let (a, net_a, cluster_a) = namenode(ca.path(), "nn-a");
        let (b, net_b, cluster_b) = namenode(ca.path(), "nn-b");
        let (c, net_c, cluster_c) = namenode(ca.path(), "nn-c");

        tracing::info!("--- a founds the group with a namespace of its own, b and c join");
        format(&a, &cluster_a);
        let leader = start(&a, 1, net_a, cluster_a, false);
        create(&leader, &["before-b", "before-c"]).await.unwrap();
        let member_b = start(&b, 2, net_b, cluster_b.clone(), true);
        let member_c = start(&c, 3, net_c, cluster_c.clone(), true);
        let timeout = Duration::from_secs(20);
        leader.add_member(2, b.addr.clone(), timeout).await.unwrap();
        create(&leader, &["with-b"]).await.unwrap();
        leader.add_member(3, c.addr.clone(), timeout).await.unwrap();
        create(&leader, &["with-b-and-c", "more"]).await.unwrap();
        let want = names(&a.store);
        assert_eq!(want.len(), 5, "{want:?}");
        // Raft's metrics may lag its answers: what each store holds is what counts.
        agree(&[&a.store, &b.store, &c.store]).await;
        assert_eq!(
            cluster_b.get(),
            0x5eed,
            "b learned the cluster from the snapshot"
        );

        tracing::info!("--- a barrier has a majority sync the log at once");
        let synced = || b.wal.syncs() + c.wal.syncs();
        let before = synced();
        create(&leader, &["synced"]).await.unwrap();
        leader.sync_quorum().await.unwrap();
        assert!(synced() > before, "no follower synced its log");

        tracing::info!("--- a follower refuses to propose, naming the leader");
        let refused = create(&member_b, &["on-b"]).await.unwrap_err();
        assert!(matches!(refused, FsError::Unavailable(_)), "{refused}");
        assert!(refused.to_string().contains(&a.addr), "{refused}");
        assert_eq!(
            member_b.leading(),
            Err(FsError::NotLeader(a.addr.parse().ok()))
        );

        tracing::info!("--- the leader goes: b or c leads within seconds, with everything");
        a.stop.cancel();
        drop(leader);
        drop(a);
        let mut new_leader = None;
        for member in [&member_b, &member_c] {
            if member
                .wait_for(
                    Duration::from_secs(10),
                    |m| m.current_leader.is_some_and(|l| l != 1),
                    "a new leader",
                )
                .await
                .is_ok()
            {
                let id = member.metrics().current_leader.unwrap();
                new_leader = Some(if id == 2 {
                    member_b.clone()
                } else {
                    member_c.clone()
                });
                break;
            }
        }
        let new_leader = new_leader.expect("no new leader");
        create(&new_leader, &["after-a"]).await.unwrap();
        agree(&[&b.store, &c.store]).await;
        assert_eq!(names(&b.store).len(), 7);

        tracing::info!("--- bad messages are refused and the group goes on");
        let stranger = RaftRpc {
            cluster: 0xbad,
            kind: RaftKind::Vote,
            body: Vec::new(),
        };
        let refused = new_leader.answer(stranger).await.unwrap_err();
        assert!(refused.to_string().contains("cluster"), "{refused}");
        let garbage = RaftRpc {
            cluster: 0x5eed,
            kind: RaftKind::Append,
            body: vec![0xff; 7],
        };
        let refused = new_leader.answer(garbage).await.unwrap_err();
        assert!(matches!(refused, FsError::Protocol(_)), "{refused}");
        // A candidate of a term long gone gets no vote.
        let stale = VoteRequest::new(Vote::new(0, 9), None);
        let stale = RaftRpc {
            cluster: 0x5eed,
            kind: RaftKind::Vote,
            body: postcard::to_stdvec(&stale).unwrap(),
        };
        let answer = new_leader.answer(stale).await.unwrap();
        let answer: Result<VoteResponse<u64>, RaftError<u64>> =
            postcard::from_bytes(&answer).unwrap();
        assert!(!answer.unwrap().vote_granted);
        create(&new_leader, &["still-serving"]).await.unwrap();
        new_leader.sync_quorum().await.unwrap();

        tracing::info!("--- with the last other member gone, a barrier fails, and says why");
        if Arc::ptr_eq(&new_leader, &member_b) {
            c.stop.cancel();
        } else {
            b.stop.cancel();
        }
        let refused = new_leader.sync_quorum().await.unwrap_err();
        assert!(
            refused.to_string().contains("did not sync its log"),
            "{refused}"
        );
    }
}
