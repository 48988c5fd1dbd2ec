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
        let addr: SocketAddr = self.addr.parse().map_err(|e| {
            unreachable(format!(
                "member {} has no address ({:?}): {e}",
                self.target, self.addr
            ))
        })?;
        let body = postcard::to_stdvec(req).map_err(|e| unreachable(e))?;
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
        let reply = match tokio::time::timeout(option.hard_ttl(), sent).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                return Err(unreachable(format!(
                    "member {} at {addr}: {e}",
                    self.target
                )))
            }
            Err(_) => {
                self.pool.forget(addr);
                return Err(unreachable(format!(
                    "member {} at {addr}: no answer within {:?}",
                    self.target,
                    option.hard_ttl()
                )));
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&reply)
            .map_err(|e| unreachable(format!("member {}'s answer: {e}", self.target)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

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

/// Answers a Raft message another member sent: refused if it comes from a group keeping
/// another namespace, or does not decode.
pub async fn answer(
    raft: &Raft<TypeConfig>,
    cluster: &ClusterId,
    rpc: RaftRpc,
) -> FsResult<Vec<u8>> {
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
    }
}
