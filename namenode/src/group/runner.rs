//! The group's Raft, run on a thread and runtime of its own so that the metadata writer
//! (a thread) and whoever opens the engine (sync code, inside a runtime or not) can drive
//! it alike.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_common::{FsError, FsResult};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, ServerState};
use tracing::{info, warn};

use super::log::LogStore;
use super::machine::{Machine, StateMachine};
use super::{Answer, Member, NodeId, Proposal, TypeConfig};
use crate::store::{Cf, Store};

/// `raft_state` key: this member's number in the group.
const MEMBER_ID: &[u8] = b"member";
/// How long a lone member may take to lead after it starts.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A running member of the namenode group.
pub struct Group {
    raft: Raft<TypeConfig>,
    id: NodeId,
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
        cluster: u64,
        sync: bool,
    ) -> anyhow::Result<Group> {
        let machine = Machine::open(store.clone(), snapshots)?;
        let id = match store.get_raw(Cf::RaftState, MEMBER_ID)? {
            Some(b) => crate::store::decode::<NodeId>("member id", &b)?,
            None => {
                let mut txn = store.txn();
                txn.put_raw(
                    Cf::RaftState,
                    MEMBER_ID.to_vec(),
                    crate::store::encode(&1u64),
                );
                store.commit(txn, true)?;
                1
            }
        };
        let config = openraft::Config {
            cluster_name: format!("cairn-{cluster:016x}"),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            // A snapshot writes the whole namespace: rarely, and the log it replaces is
            // kept a while for members just behind.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(50_000),
            max_in_snapshot_log_to_keep: 5_000,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let log = LogStore::new(store, sync);
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
                    let started = lead_alone(id, config, log, machine).await;
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
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Appends `proposal` to the group's log and returns what applying it gave, once it
    /// is committed and applied here. For the writer's thread (it blocks).
    pub fn propose(&self, proposal: Proposal) -> FsResult<Answer> {
        let written = self.runtime.block_on(self.raft.client_write(proposal));
        match written {
            Ok(response) => Ok(response.data),
            Err(e) => Err(FsError::io(format!("the namenode group's log: {e}"))),
        }
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

/// Starts Raft for member `id`, founding a group of one with it if there is none yet, and
/// waits until it leads.
async fn lead_alone(
    id: NodeId,
    config: Arc<openraft::Config>,
    log: LogStore,
    machine: StateMachine,
) -> anyhow::Result<Raft<TypeConfig>> {
    let raft = Raft::new(id, config, Alone, log, machine).await?;
    if !raft.is_initialized().await? {
        let members = BTreeMap::from([(id, Member::default())]);
        raft.initialize(members).await?;
        info!(member = id, "namenode group founded");
    }
    raft.wait(Some(LEAD_TIMEOUT))
        .state(ServerState::Leader, "a lone member leads")
        .await?;
    Ok(raft)
}

/// The network of a group of one: there is nobody to send to.
struct Alone;

impl RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;

    async fn new_client(&mut self, _target: NodeId, _node: &Member) -> Alone {
        Alone
    }
}

fn nobody<E: std::error::Error>(target: &str) -> RPCError<NodeId, Member, E> {
    let e = std::io::Error::other(format!("a group of one has no member {target} to reach"));
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetwork<TypeConfig> for Alone {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(nobody("to replicate to"))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(nobody("to send a snapshot to"))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(nobody("to ask for a vote"))
    }
}
