//! The group's Raft, run on a thread and runtime of its own so that the metadata writer
//! (a thread) and whoever opens the engine (sync code, inside a runtime or not) can drive
//! it alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_common::{FsError, FsResult};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::ChangeMembers;
use openraft::{Raft, ServerState};
use tracing::{info, warn};

use super::log::LogStore;
use super::machine::{Machine, StateMachine};
use super::net::{self, ClusterId, Network};
use super::{Answer, Member, NodeId, Proposal, TypeConfig};
use crate::store::{Cf, Store};
use crate::walsync::WalSync;

/// `raft_state` key: this member's number in the group.
const MEMBER_ID: &[u8] = b"member";
/// `raft_state` key, present once the founder has added the members its configuration
/// named, or an operator has changed the members: from then on they change only by hand.
const GROWN: &[u8] = b"grown";
/// How often a leader tells the others it leads, and how long a follower that heard
/// nothing waits before it stands (drawn between the two; openraft also has a follower
/// refuse votes for another for the largest after it last heard from its leader).
const HEARTBEAT: Duration = Duration::from_millis(100);
const ELECTION_MIN: Duration = Duration::from_millis(500);
const ELECTION_MAX: Duration = Duration::from_millis(1000);
/// How long a lone member may take to lead after it starts.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change proposed may take to be committed and applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member asked to sync its log waits for the entries to reach it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long each step of handing the lead over may take.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long building a snapshot, and purging the log it replaces, may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Who a member is, and how it reaches the others.
pub struct Seat {
    /// Its number in the group, when it is new (one kept from an earlier start holds).
    pub id: NodeId,
    /// Where the other members reach it.
    pub addr: String,
    /// The connections to the other members; none for a namenode alone.
    pub links: Option<Arc<cairn_common::transport::ConnectionPool>>,
    /// Joining a group that exists: it waits for the leader to add it, and takes the
    /// namespace from the leader's snapshot. Otherwise it founds a group of one at its
    /// first start, with the namespace it has.
    pub joining: bool,
}

impl Seat {
    /// A namenode alone: a group of one that reaches nobody.
    pub fn alone() -> Seat {
        Seat {
            id: 1,
            addr: String::new(),
            links: None,
            joining: false,
        }
    }
}

/// A running member of the namenode group.
pub struct Group {
    raft: Raft<TypeConfig>,
    id: NodeId,
    cluster: Arc<ClusterId>,
    store: Arc<Store>,
    wal: Arc<WalSync>,
    /// How this member reaches the others outside Raft's own messages (none alone).
    network: Option<Network>,
    /// Set while this leader hands the lead to another: it takes no changes and answers
    /// nothing, so that the others' leases run out and one can be elected.
    handing: std::sync::atomic::AtomicBool,
    /// Since when the leader that asked this member to stand (`Elect`) has answered
    /// nothing, as this member reckons it: a lead handed over, not taken from the dead.
    handed: std::sync::Mutex<Option<Instant>>,
    /// How recently a majority confirmed this member's lead (see [`Group::serving`]).
    lease: Arc<Lease>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Group {
    /// Starts this namenode's member over `store`, keeping snapshots in `snapshots`, and
    /// returns once it leads: today a group of one, founded here at the first start (the
    /// namespace formatted before it becomes the group's first state). `sync` says
    /// whether each log write is synced before Raft counts it (see `crate::walsync`).
    pub fn start(
        store: Arc<Store>,
        snapshots: &Path,
        cluster: Arc<ClusterId>,
        wal: Arc<WalSync>,
        seat: Seat,
    ) -> anyhow::Result<Group> {
        let machine = Machine::open(store.clone(), snapshots, cluster.clone())?;
        let kept = store.clone();
        let id = match store.get_raw(Cf::RaftState, MEMBER_ID)? {
            Some(b) => crate::store::decode::<NodeId>("member id", &b)?,
            None => {
                let mut txn = store.txn();
                txn.put_raw(
                    Cf::RaftState,
                    MEMBER_ID.to_vec(),
                    crate::store::encode(&seat.id),
                );
                store.commit(txn, true)?;
                seat.id
            }
        };
        let network = seat
            .links
            .clone()
            .map(|pool| Network::new(pool, cluster.clone()));
        let links = match seat.links {
            Some(pool) => Links::Quic(Network::new(pool, cluster.clone())),
            None => Links::Alone,
        };
        let (addr, joining) = (seat.addr, seat.joining);
        let config = openraft::Config {
            cluster_name: "cairn".into(),
            // Raft also gives each append this long: a loaded machine's must fit.
            heartbeat_interval: HEARTBEAT.as_millis() as u64,
            election_timeout_min: ELECTION_MIN.as_millis() as u64,
            election_timeout_max: ELECTION_MAX.as_millis() as u64,
            // Sending the last part of a snapshot waits for the member to install it.
            install_snapshot_timeout: 600_000,
            // A snapshot writes the whole namespace: rarely, and the log it replaces is
            // kept a while for members just behind.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(50_000),
            max_in_snapshot_log_to_keep: 5_000,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let log = LogStore::new(store, wal.clone());
        let machine = StateMachine::new(machine);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meta-group".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("meta-raft")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = begin(id, addr, joining, config, links, log, machine).await;
                    let raft = match started {
                        Ok(raft) => raft,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((raft.clone(), tokio::runtime::Handle::current())));
                    let _ = stopped.await;
                    if let Err(e) = raft.shutdown().await {
                        warn!(error = %e, "the group's Raft did not stop cleanly");
                    }
                });
            })?;
        let (raft, runtime) = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the namenode group's thread ended at start"))??;
        Ok(Group {
            raft,
            id,
            cluster,
            network,
            store: kept,
            wal,
            handing: Default::default(),
            handed: Default::default(),
            lease: Default::default(),
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Appends `proposal` to the group's log and returns what applying it gave, once it
    /// is committed and applied here. For the writer's thread (it blocks). Refused with
    /// `Unavailable` on a member that does not lead, naming the one that does if known.
    pub fn propose(&self, proposal: Proposal) -> FsResult<Answer> {
        if self.handing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FsError::unavailable(
                "this namenode is handing the lead of its group to another",
            ));
        }
        if self.quorum_lost() {
            return Err(lost_majority());
        }
        let asked = Instant::now();
        let written = self.runtime.block_on(async {
            tokio::select! {
                written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(proposal)) => {
                    Some(written)
                }
                () = self.losing_majority() => None,
            }
        });
        // Cut off from the others: whether the entry is committed after all is the next
        // leader's to say, and the client asks it (see the `ForwardToLeader` case below).
        let Some(written) = written else {
            return Err(lost_majority());
        };
        let Ok(written) = written else {
            // A leader deposed without knowing it yet commits nothing, and Raft does not give
            // up on what it proposed: the writer does, and goes on.
            return Err(FsError::unavailable(format!(
                "the namenode group did not commit a change within {} s",
                PROPOSE_TIMEOUT.as_secs()
            )));
        };
        match written {
            Ok(response) => {
                // A majority took an entry sent after `asked`: the lead held then.
                self.lease.renew(asked, response.log_id.leader_id.term);
                Ok(response.data)
            }
            // Whether the entry is committed after all is the new leader's to say: the
            // client asks it again only what it may (what it named, what changes nothing).
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                let leader = match self.leading() {
                    Err(FsError::NotLeader(Some(addr))) => format!(" (the leader is at {addr})"),
                    _ => String::new(),
                };
                Err(FsError::unavailable(format!(
                    "this namenode does not lead its group, or lost the lead under a change{leader}"
                )))
            }
            Err(e) => Err(FsError::io(format!("the namenode group's log: {e}"))),
        }
    }

    /// Answers a Raft message from another member.
    pub async fn answer(&self, rpc: cairn_common::proto::RaftRpc) -> FsResult<Vec<u8>> {
        use cairn_common::proto::RaftKind;
        if rpc.kind == RaftKind::Elect {
            net::check_cluster(&self.cluster, &rpc)?;
            let quiet_ms: u64 = postcard::from_bytes(&rpc.body).map_err(|e| {
                FsError::protocol(format!("an Elect message that does not decode: {e}"))
            })?;
            let quiet = Duration::from_millis(quiet_ms).min(HAND_OVER_TIMEOUT * 3);
            info!(
                ?quiet,
                "standing for election: the leader hands over the lead"
            );
            *self.handed.lock().unwrap_or_else(|e| e.into_inner()) =
                Instant::now().checked_sub(quiet);
            self.raft
                .trigger()
                .elect()
                .await
                .map_err(|e| FsError::io(format!("standing for election: {e}")))?;
            return postcard::to_stdvec(&())
                .map_err(|e| FsError::io(format!("encoding a Raft answer: {e}")));
        }
        if rpc.kind != RaftKind::Sync {
            return net::answer(&self.raft, &self.cluster, rpc).await;
        }
        net::check_cluster(&self.cluster, &rpc)?;
        let upto: u64 = postcard::from_bytes(&rpc.body)
            .map_err(|e| FsError::protocol(format!("a Sync message that does not decode: {e}")))?;
        // A member of the majority that took the entries holds them already; another may
        // be receiving them now.
        self.wait_for(
            SYNC_TIMEOUT,
            |m| m.last_log_index >= Some(upto),
            "the entries to sync received",
        )
        .await?;
        self.wal.barrier().await?;
        postcard::to_stdvec(&()).map_err(|e| FsError::io(e.to_string()))
    }

    /// Returns once a majority of the voters has synced the log up to what this leader has
    /// applied (everything it acknowledged): a barrier of the group. This member's own log
    /// is synced by the caller; the others are asked at once, and the first of them to
    /// answer make the majority.
    pub async fn sync_quorum(&self) -> FsResult<()> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
        // A majority of the voters is half of them and one: this member, and half.
        let voters = others.len() + 1;
        let mut needed = voters / 2;
        if needed == 0 {
            return Ok(());
        }
        let network = self.network()?;
        let upto = metrics.last_applied.map_or(0, |l| l.index);
        let mut asked = tokio::task::JoinSet::new();
        for id in others {
            let Some(addr) = membership.get_node(&id).and_then(|n| n.addr.parse().ok()) else {
                continue;
            };
            let link = net::Link::to(network, addr);
            asked.spawn(async move {
                let synced: FsResult<()> =
                    link.ask(cairn_common::proto::RaftKind::Sync, &upto).await;
                (id, synced)
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = asked.join_next().await {
            match done {
                Ok((_, Ok(()))) => {
                    needed -= 1;
                    if needed == 0 {
                        return Ok(());
                    }
                }
                Ok((id, Err(e))) => failures.push(format!("member {id}: {e}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(FsError::unavailable(format!(
            "a majority of the namenode group did not sync its log: {}",
            failures.join("; ")
        )))
    }

    /// Adds member `id`, reached at `addr`, as a voter: it first receives a snapshot (the
    /// namespace may predate the log), then the log from there, and votes once it has
    /// caught up (within `timeout`; asked again, it goes on from where it stopped). From
    /// the leader.
    pub async fn add_member(&self, id: NodeId, addr: String, timeout: Duration) -> FsResult<()> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            FsError::unavailable(format!("adding member {id} at {addr}: {what}: {e}"))
        };
        let known = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if !known {
            self.snapshot_and_purge()
                .await
                .map_err(|e| failed("snapshot", &e))?;
            self.raft
                .add_learner(id, Member { addr: addr.clone() }, false)
                .await
                .map_err(|e| failed("as a learner", &e))?;
        }
        let last = self.metrics().last_log_index;
        self.wait_for(
            timeout,
            |m| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten());
                matched.map(|l| l.index) >= last
            },
            "the new member caught up",
        )
        .await
        .map_err(|e| failed("catching up", &e))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| failed("as a voter", &e))?;
        info!(member = id, %addr, "member added to the namenode group");
        Ok(())
    }

    /// Adds the namenode listening at `addr`: asks it who it is (its member number, drawn
    /// from its own `group` list, and the cluster it keeps), then adds it as
    /// [`Group::add_member`] does. From the leader.
    pub async fn add_namenode(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> FsResult<()> {
        self.leading()?;
        let network = self.network()?;
        let (id, cluster): (NodeId, u64) = net::Link::to(network, addr)
            .ask(cairn_common::proto::RaftKind::Identify, &())
            .await?;
        let ours = self.cluster.get();
        if cluster != 0 && cluster != ours {
            return Err(FsError::invalid(format!(
                "the namenode at {addr} keeps cluster {cluster:016x}, not this group's \
                 {ours:016x}: start it with an empty meta_dir to join"
            )));
        }
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if let Some(node) = membership.get_node(&id) {
            if node.addr != addr.to_string() {
                return Err(FsError::invalid(format!(
                    "the namenode at {addr} is member {id} by its group list, and the group \
                     has member {id} at {}: give the new one a place of its own at the end \
                     of its `group` list",
                    node.addr
                )));
            }
        }
        self.add_member(id, addr.to_string(), timeout).await
    }

    /// Removes member `id` (a voter or a learner still catching up); it no longer counts
    /// towards the majority nor gets the log. The last voter stays. From the leader; when
    /// it removes itself, it steps down once the change is committed.
    pub async fn remove_member(&self, id: NodeId) -> FsResult<()> {
        self.leading()?;
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(FsError::NotFound);
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if !voters.contains(&id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else if voters.len() == 1 {
            return Err(FsError::invalid(
                "the group's only voter cannot be removed: add another namenode first",
            ));
        } else {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| FsError::unavailable(format!("removing member {id}: {e}")))?;
        info!(member = id, "member removed from the namenode group");
        self.mark_grown()
    }

    /// Hands the lead to voter `to` (by default the one most caught up) and returns its
    /// number. Raft's vote is refused while a leader's lease lasts, so this leader stops
    /// taking changes and sending heartbeats, waits for `to` to hold its whole log, asks
    /// the other voters to hold their elections, waits out the lease, then asks `to` to
    /// stand. Changes pause about an election timeout; clients move on to the new leader.
    pub async fn transfer_lead(&self, to: Option<NodeId>) -> FsResult<NodeId> {
        use std::sync::atomic::Ordering;
        self.leading()?;
        let network = self.network()?;
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let others: Vec<NodeId> = membership.voter_ids().filter(|v| *v != self.id).collect();
        let matched = |id: &NodeId| {
            let replication = metrics.replication.as_ref()?;
            replication.get(id).cloned().flatten().map(|l| l.index)
        };
        let to = match to {
            Some(to) if to == self.id => return Ok(to),
            Some(to) if others.contains(&to) => to,
            Some(to) => {
                return Err(FsError::invalid(format!(
                    "member {to} is not a voter of the group (voters: {:?})",
                    membership.voter_ids().collect::<Vec<_>>()
                )))
            }
            None => *others
                .iter()
                .max_by_key(|id| matched(id))
                .ok_or_else(|| FsError::invalid("a group of one has nobody to hand the lead to"))?,
        };
        let addr_of = |id: NodeId| -> FsResult<std::net::SocketAddr> {
            let node = membership.get_node(&id).ok_or(FsError::NotFound)?;
            node.addr
                .parse()
                .map_err(|e| FsError::io(format!("member {id}'s address {:?}: {e}", node.addr)))
        };
        info!(to, "handing the lead of the namenode group over");
        self.handing.store(true, Ordering::Relaxed);
        let quiet_since = Instant::now();
        self.raft.runtime_config().heartbeat(false);
        let handed = async {
            let last = self.metrics().last_log_index;
            self.wait_for(
                HAND_OVER_TIMEOUT,
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&to).cloned().flatten());
                    matched.map(|l| l.index) >= last
                },
                "the new leader holds the whole log",
            )
            .await?;
            let hold = self.lease() + HAND_OVER_TIMEOUT;
            for other in others.iter().filter(|o| **o != to) {
                let link = net::Link::to(network, addr_of(*other)?);
                let asked: FsResult<()> = link
                    .ask(
                        cairn_common::proto::RaftKind::HoldElections,
                        &(hold.as_millis() as u64),
                    )
                    .await;
                if let Err(e) = asked {
                    // One that cannot be reached does not stand either.
                    warn!(member = other, "asking to hold elections: {e}");
                }
            }
            tokio::time::sleep(self.lease() + Duration::from_millis(200)).await;
            let link = net::Link::to(network, addr_of(to)?);
            // How long this member has answered nothing: the new leader's clients trust
            // what it told them that much less long.
            let quiet = quiet_since.elapsed().as_millis() as u64;
            let () = link
                .ask(cairn_common::proto::RaftKind::Elect, &quiet)
                .await?;
            self.wait_for(
                HAND_OVER_TIMEOUT,
                |m| m.current_leader == Some(to),
                "the new leader elected",
            )
            .await
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        self.handing.store(false, Ordering::Relaxed);
        handed?;
        info!(to, "member {to} leads the namenode group now");
        Ok(to)
    }

    /// How long the leader this member takes the lead from has answered nothing, at
    /// least: [`PREVIOUS_LEADER_QUIET`], or more if it handed the lead over (it stopped
    /// answering when it began to). Asked once, as this member takes the lead.
    pub fn previous_leader_quiet(&self) -> Duration {
        let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let since = handed.filter(|t| t.elapsed() < HAND_OVER_TIMEOUT);
        since.map_or(PREVIOUS_LEADER_QUIET, |t| {
            t.elapsed().max(PREVIOUS_LEADER_QUIET)
        })
    }

    /// Whether the group's members are the operator's to change from now on (see
    /// [`GROWN`]).
    pub fn grown(&self) -> FsResult<bool> {
        Ok(self.store.get_raw(Cf::RaftState, GROWN)?.is_some())
    }

    /// Records that the group's members are the operator's to change from now on.
    pub fn mark_grown(&self) -> FsResult<()> {
        let mut txn = self.store.txn();
        txn.put_raw(Cf::RaftState, GROWN.to_vec(), Vec::new());
        self.store.commit(txn, true)
    }

    /// How long a follower refuses to vote after it last heard from its leader.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    fn network(&self) -> FsResult<&Network> {
        self.network.as_ref().ok_or_else(|| {
            FsError::invalid(
                "this namenode is alone (no `group` in its configuration): list the group's \
                 members in `group` on each, then start them",
            )
        })
    }

    /// Builds a snapshot of the namespace as applied now and purges the log it covers, so
    /// that a member added next starts from it.
    async fn snapshot_and_purge(&self) -> FsResult<()> {
        // Just founded, a leader has applied nothing yet, and a snapshot then covers no
        // entry: it would be no snapshot to Raft, and the log would go to the new member
        // whole — without the namespace the group was founded with, which is in no entry.
        self.wait_for(
            SNAPSHOT_TIMEOUT,
            |m| m.last_applied.is_some(),
            "the leader's first entry applied",
        )
        .await?;
        let applied = self.metrics().last_applied.map(|l| l.index);
        let failed = |e: &dyn std::fmt::Display| FsError::io(e.to_string());
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| failed(&e))?;
        self.wait_for(
            SNAPSHOT_TIMEOUT,
            |m| m.snapshot.is_some_and(|l| Some(l.index) >= applied),
            "snapshot built",
        )
        .await?;
        if let Some(upto) = self.metrics().snapshot {
            self.raft
                .trigger()
                .purge_log(upto.index)
                .await
                .map_err(|e| failed(&e))?;
            self.wait_for(
                SNAPSHOT_TIMEOUT,
                |m| m.purged.map(|l| l.index) >= Some(upto.index),
                "log purged up to the snapshot",
            )
            .await?;
        }
        Ok(())
    }

    /// Whether this member leads a group of several but no majority has acknowledged it
    /// for [`QUORUM_LOST`]: cut off from the others, it may well have been replaced.
    /// It then serves nothing, and what it was asked to change it gives up on, so that
    /// clients go to the others (Raft alone would have it wait, its clients with it,
    /// until it hears of the next term).
    fn quorum_lost(&self) -> bool {
        quorum_lost(&self.raft.metrics().borrow())
    }

    /// Returns once this member has lost its majority (see [`Group::quorum_lost`]); never
    /// while it keeps it.
    async fn losing_majority(&self) {
        let mut metrics = self.raft.metrics();
        loop {
            if quorum_lost(&metrics.borrow_and_update()) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Refuses, naming the leader if it knows one, unless this member leads.
    pub fn leading(&self) -> FsResult<()> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            return Ok(());
        }
        let leader = metrics.current_leader.and_then(|id| {
            let membership = metrics.membership_config.membership();
            membership.get_node(&id)?.addr.parse().ok()
        });
        Err(FsError::NotLeader(leader))
    }

    /// Returns once this member may answer from its namespace as the group's: it leads,
    /// and (in a group of several) a quorum has just confirmed it and its namespace is
    /// applied up to what was committed then (Raft's read index), so that a leader
    /// deposed without knowing it yet never answers from an old namespace.
    ///
    /// The confirmation is a lease: for [`LEASE_READ`] after a majority confirmed the lead
    /// (the moment before the confirming message was sent), this member answers without
    /// asking again. That is safe because a follower refuses to vote for another for the
    /// largest election timeout (2 s, twice as long) after it last heard from its leader,
    /// and it heard after that moment. Past half the lease, a request still answered at
    /// once has the lease renewed behind it, so a busy leader asks a majority about once
    /// every half second, not once per request.
    pub async fn serving(&self) -> FsResult<()> {
        let (leads, term, voters) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let voters = m.membership_config.membership().voter_ids().count();
            (m.state == ServerState::Leader, m.current_term, voters)
        };
        if !leads {
            return self.leading();
        }
        if self.handing.load(std::sync::atomic::Ordering::Relaxed) {
            // Asked again of the next member, it reaches the new leader.
            return Err(FsError::NotLeader(None));
        }
        if voters <= 1 {
            return Ok(());
        }
        if self.quorum_lost() {
            // Asked again of the next member, it reaches the leader the others elected.
            return Err(FsError::NotLeader(None));
        }
        match self.lease.age(term) {
            Some(age) if age < LEASE_READ / 2 => return Ok(()),
            Some(age) if age < LEASE_READ => {
                self.lease.renew_behind(self.raft.clone(), term);
                return Ok(());
            }
            _ => {}
        }
        let asked = Instant::now();
        let confirmed = tokio::select! {
            confirmed = self.raft.ensure_linearizable() => confirmed,
            () = self.losing_majority() => return Err(FsError::NotLeader(None)),
        };
        match confirmed {
            Ok(_) => {
                self.lease.renew(asked, term);
                Ok(())
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                self.leading().and(Err(FsError::NotLeader(None)))
            }
            Err(e) => Err(FsError::unavailable(format!("the namenode group: {e}"))),
        }
    }

    /// The group as this member sees it (its leader's view when it leads).
    pub fn status(&self) -> cairn_common::proto::GroupStatus {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched = |id: &NodeId| {
            let replication = m.replication.as_ref()?;
            replication.get(id).cloned().flatten().map(|l| l.index)
        };
        let members = membership
            .nodes()
            .map(|(id, node)| cairn_common::proto::MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: matched(id),
            })
            .collect();
        cairn_common::proto::GroupStatus {
            leader: m.current_leader.unwrap_or(m.id),
            term: m.current_term,
            last_log: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            members,
        }
    }

    /// Raft's view of the group from this member, as it changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>> {
        self.raft.metrics()
    }

    /// Raft's view of the group from this member.
    pub fn metrics(&self) -> openraft::RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    /// Waits until this member's view satisfies `want`, for at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        want: impl Fn(&openraft::RaftMetrics<NodeId, Member>) -> bool + Send,
        what: &str,
    ) -> FsResult<()> {
        self.raft
            .wait(Some(timeout))
            .metrics(want, what)
            .await
            .map(|_| ())
            .map_err(|e| FsError::unavailable(format!("{what}: {e}")))
    }

    /// This member's number.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a leader answers without asking a majority again after one confirmed its lead:
/// half the time a follower refuses to vote for another (openraft's leader lease, the
/// largest election timeout), the other half a margin for clocks that run apart.
const LEASE_READ: Duration = Duration::from_millis(ELECTION_MAX.as_millis() as u64 / 2);
/// How long a leader of several goes without a majority acknowledging it before it takes
/// itself for cut off: the largest election timeout, after which the others may have
/// elected another.
const QUORUM_LOST: Duration = ELECTION_MAX;
/// How long before a member is elected the leader it replaces answered last, at the
/// latest: that leader answers only within [`LEASE_READ`] of a majority's confirmation,
/// and a member of that majority voted for the new one no sooner than [`ELECTION_MAX`]
/// after it heard that confirming message (openraft's leader lease). So the previous
/// leader's clients stopped trusting what it told them that much earlier than they would
/// after a namenode's restart.
const PREVIOUS_LEADER_QUIET: Duration =
    Duration::from_millis((ELECTION_MAX.as_millis() - LEASE_READ.as_millis()) as u64);

/// Whether, by `m`, this member leads a group of several and has not heard from a
/// majority for [`QUORUM_LOST`].
fn quorum_lost(m: &openraft::RaftMetrics<NodeId, Member>) -> bool {
    let voters = m.membership_config.membership().voter_ids().count();
    m.state == ServerState::Leader
        && voters > 1
        && m.millis_since_quorum_ack
            .is_some_and(|ms| ms > QUORUM_LOST.as_millis() as u64)
}

/// The refusal of a change by a leader cut off from its majority.
fn lost_majority() -> FsError {
    FsError::unavailable(format!(
        "this namenode has heard from no majority of its group for {} ms: another may lead",
        QUORUM_LOST.as_millis()
    ))
}

/// When a majority last confirmed this member's lead, and in which term.
#[derive(Default)]
struct Lease {
    confirmed: std::sync::Mutex<Option<(Instant, u64)>>,
    /// A renewal is under way behind the requests answered meanwhile.
    renewing: std::sync::atomic::AtomicBool,
}

impl Lease {
    /// A majority confirmed the lead of `term` with a message sent after `since`.
    fn renew(&self, since: Instant, term: u64) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        match *confirmed {
            Some((at, t)) if t == term && at >= since => {}
            _ => *confirmed = Some((since, term)),
        }
    }

    /// How long ago the lead of `term` was last confirmed (none: not in this term).
    fn age(&self, term: u64) -> Option<Duration> {
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        match *confirmed {
            Some((at, t)) if t == term => Some(at.elapsed()),
            _ => None,
        }
    }

    /// Renews the lease of `term` in the background, unless that is under way.
    fn renew_behind(self: &Arc<Self>, raft: Raft<TypeConfig>, term: u64) {
        use std::sync::atomic::Ordering;
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let lease = self.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            if raft.ensure_linearizable().await.is_ok() {
                lease.renew(asked, term);
            }
            lease.renewing.store(false, Ordering::Release);
        });
    }
}

/// Starts Raft for member `id`. Unless it is joining, it founds a group of one at its first
/// start; a member that is the group's only voter waits until it leads.
async fn begin(
    id: NodeId,
    addr: String,
    joining: bool,
    config: Arc<openraft::Config>,
    links: Links,
    log: LogStore,
    machine: StateMachine,
) -> anyhow::Result<Raft<TypeConfig>> {
    let raft = Raft::new(id, config, links, log, machine).await?;
    if !joining && !raft.is_initialized().await? {
        let members = BTreeMap::from([(id, Member { addr })]);
        raft.initialize(members).await?;
        info!(member = id, "namenode group founded");
    }
    let alone = !joining && {
        // Raft's view takes its membership a moment after `initialize`.
        let voters = |m: &openraft::RaftMetrics<NodeId, Member>| -> Vec<NodeId> {
            m.membership_config.membership().voter_ids().collect()
        };
        let known = raft
            .wait(Some(LEAD_TIMEOUT))
            .metrics(|m| !voters(m).is_empty(), "the group's members known")
            .await?;
        voters(&known) == [id]
    };
    if alone {
        raft.wait(Some(LEAD_TIMEOUT))
            .state(ServerState::Leader, "a lone member leads")
            .await?;
    }
    Ok(raft)
}

/// How a member reaches the others.
enum Links {
    Alone,
    Quic(Network),
}

enum Link {
    Alone,
    Quic(net::Link),
}

impl RaftNetworkFactory<TypeConfig> for Links {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Link {
        match self {
            Links::Alone => Link::Alone,
            Links::Quic(network) => Link::Quic(network.new_client(target, node).await),
        }
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self {
            Link::Alone => Err(nobody("to replicate to")),
            Link::Quic(link) => link.append_entries(rpc, option).await,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self {
            Link::Alone => Err(nobody("to send a snapshot to")),
            Link::Quic(link) => link.install_snapshot(rpc, option).await,
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self {
            Link::Alone => Err(nobody("to ask for a vote")),
            Link::Quic(link) => link.vote(rpc, option).await,
        }
    }
}

/// The error of a member alone asked to send something.
fn nobody<E: std::error::Error>(target: &str) -> RPCError<NodeId, Member, E> {
    let e = std::io::Error::other(format!("a group of one has no member {target} to reach"));
    RPCError::Unreachable(Unreachable::new(&e))
}
