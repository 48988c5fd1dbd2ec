//! Raft's messages between the members of a namenode group, over the cluster's QUIC
//! transport: each one a `NamenodeRequest::Raft` from one namenode to another, both sides
//! with namenode certificates (mutual TLS, as every connection in the cluster), the body
//! openraft's own request and answer in postcard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_common::attr::Caller;
use cairn_common::cert::Role;
use cairn_common::proto::{NamenodeEnvelope, NamenodeRequest, RaftKind, RaftRpc};
use cairn_common::transport::{self, ConnectionPool};
use cairn_common::{FsError, FsResult};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use super::{Member, NodeId, TypeConfig};

/// The namespace a group keeps, by its cluster id (0 until a member joining has received
/// one): a member of another cluster is refused either way.
#[derive(Default)]
pub struct ClusterId(AtomicU64);

impl ClusterId {
    pub fn new(id: u64) -> ClusterId {
        ClusterId(AtomicU64::new(id))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, id: u64) {
        self.0.store(id, Ordering::Relaxed);
    }
}

/// Opens links to the other members.
pub struct Network {
    pool: Arc<ConnectionPool>,
    cluster: Arc<ClusterId>,
}

impl Network {
    pub fn new(pool: Arc<ConnectionPool>, cluster: Arc<ClusterId>) -> Network {
        Network { pool, cluster }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Link {
        Link {
            pool: self.pool.clone(),
            cluster: self.cluster.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// Raft's link to one other member.
pub struct Link {
    pool: Arc<ConnectionPool>,
    cluster: Arc<ClusterId>,
    target: NodeId,
    addr: String,
}

/// An error the sender of a Raft message sees.
type SendError<E> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(why: impl std::fmt::Display) -> SendError<E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why.to_string())))
}

impl Link {
    /// A link to the namenode at `addr`, member or not yet.
    pub fn to(network: &Network, addr: SocketAddr) -> Link {
        Link {
            pool: network.pool.clone(),
            cluster: network.cluster.clone(),
            target: 0,
            addr: addr.to_string(),
        }
    }

    /// Sends `req` as a message of `kind` and returns the member's answer.
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, SendError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = postcard::to_stdvec(req).map_err(|e| unreachable(e))?;
        let reply = self
            .send(kind, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let answer: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply)
            .map_err(|e| unreachable(format!("member {}'s answer: {e}", self.target)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends a message of Cairn's own (not Raft's: [`RaftKind::Identify`] and the lead's
    /// handing over) and returns the answer.
    pub async fn ask<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RaftKind,
        req: &Req,
    ) -> FsResult<Resp> {
        let body = postcard::to_stdvec(req)
            .map_err(|e| FsError::io(format!("encoding a {kind:?} message: {e}")))?;
        let reply = self
            .send(kind, body, ASK_TIMEOUT)
            .await
            .map_err(FsError::Unavailable)?;
        postcard::from_bytes(&reply).map_err(|e| {
            FsError::protocol(format!("the answer of the namenode at {}: {e}", self.addr))
        })
    }

    /// Sends one message and returns the answer's bytes, or why none came.
    async fn send(
        &self,
        kind: RaftKind,
        body: Vec<u8>,
        within: std::time::Duration,
    ) -> Result<Vec<u8>, String> {
        let addr: SocketAddr = self.addr.parse().map_err(|e| {
            format!(
                "member {} has no address ({:?}): {e}",
                self.target, self.addr
            )
        })?;
        let envelope = NamenodeEnvelope {
            caller: Caller::ROOT,
            req: NamenodeRequest::Raft(RaftRpc {
                cluster: self.cluster.get(),
                kind,
                body,
            }),
            request: None,
        };
        let sent = async {
            let conn = self.pool.get(addr, Role::Namenode).await?;
            let reply: FsResult<Vec<u8>> = transport::call_enveloped(&conn, &envelope).await;
            if reply.is_err() {
                // The next message dials again rather than reuse a connection gone bad.
                self.pool.forget(addr);
            }
            reply
        };
        match tokio::time::timeout(within, sent).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(format!("member {} at {addr}: {e}", self.target)),
            Err(_) => {
                self.pool.forget(addr);
                Err(format!(
                    "member {} at {addr}: no answer within {within:?}",
                    self.target
                ))
            }
        }
    }
}

/// How long a message of Cairn's own may take to be answered.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, SendError<openraft::error::Infallible>> {
        self.call(RaftKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, SendError<InstallSnapshotError>> {
        self.call(RaftKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, SendError<openraft::error::Infallible>> {
        self.call(RaftKind::Vote, &rpc, &option).await
    }
}

/// Refuses a message from a member of a group keeping another namespace.
pub fn check_cluster(cluster: &ClusterId, rpc: &RaftRpc) -> FsResult<()> {
    let ours = cluster.get();
    if ours != 0 && rpc.cluster != ours {
        warn!(
            theirs = %format!("{:016x}", rpc.cluster),
            ours = %format!("{ours:016x}"),
            "refused a Raft message from a member of another cluster"
        );
        return Err(FsError::invalid(format!(
            "this namenode keeps cluster {ours:016x}, not {:016x}",
            rpc.cluster
        )));
    }
    Ok(())
}

/// Answers a Raft message another member sent: refused if it comes from a group keeping
/// another namespace, or does not decode.
pub async fn answer(
    raft: &Raft<TypeConfig>,
    cluster: &ClusterId,
    rpc: RaftRpc,
) -> FsResult<Vec<u8>> {
    check_cluster(cluster, &rpc)?;
    let ours = cluster.get();
    fn decode<T: DeserializeOwned>(kind: RaftKind, body: &[u8]) -> FsResult<T> {
        postcard::from_bytes(body).map_err(|e| {
            FsError::protocol(format!("a Raft {kind:?} message that does not decode: {e}"))
        })
    }
    fn encode<T: Serialize>(answer: &T) -> FsResult<Vec<u8>> {
        postcard::to_stdvec(answer).map_err(|e| FsError::io(format!("encoding a Raft answer: {e}")))
    }
    match rpc.kind {
        RaftKind::Append => {
            let req: AppendEntriesRequest<TypeConfig> = decode(rpc.kind, &rpc.body)?;
            encode(&raft.append_entries(req).await)
        }
        RaftKind::Vote => {
            let req: VoteRequest<NodeId> = decode(rpc.kind, &rpc.body)?;
            encode(&raft.vote(req).await)
        }
        RaftKind::Snapshot => {
            let req: InstallSnapshotRequest<TypeConfig> = decode(rpc.kind, &rpc.body)?;
            encode(&raft.install_snapshot(req).await)
        }
        RaftKind::Identify => {
            let id = raft.metrics().borrow().id;
            encode(&(id, ours))
        }
        RaftKind::Sync | RaftKind::Elect => Err(FsError::invalid(format!(
            "a {:?} message is the group's to answer",
            rpc.kind
        ))),
        RaftKind::HoldElections => {
            let ms: u64 = decode(rpc.kind, &rpc.body)?;
            let ms = ms.min(HOLD_AT_MOST_MS);
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                raft.runtime_config().elect(true);
            });
            encode(&())
        }
    }
}

/// The longest a member holds its elections when asked: the leader handing over the lead
/// asks for less, and a member must not stay out of elections for long on any message.
const HOLD_AT_MOST_MS: u64 = 10_000;
