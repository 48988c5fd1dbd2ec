//! The namenode group: namenodes that keep one namespace by replicating the metadata
//! writer's ops through Raft ([openraft]). The ops are the log's entries; every member
//! applies them, in order, with [`crate::ops::apply`] to its own store, so what one member
//! holds after an entry every member holds after it.
//!
//! - [`log`]: the Raft log and vote, in the store's own column families, synced before
//!   Raft counts an entry as written.
//! - [`machine`]: the state machine (the namespace), which records the point of the log it
//!   was built to in the same write as the entry's changes, and its snapshots (a
//!   consistent view of the namespace's families, checksummed).
//! - [`net`]: Raft's messages between members, over the cluster's QUIC transport.
//! - [`runner`]: the member itself, Raft on a thread of its own, through which the
//!   metadata writer proposes its groups of ops.

// Raft's storage traits return openraft's error type, large as it is.
#![allow(clippy::result_large_err)]

pub mod log;
pub mod machine;
pub mod net;
pub mod runner;

use cairn_common::proto::Change;
use cairn_common::{FsResult, Ino};
use serde::{Deserialize, Serialize};

use crate::ops::{MetaOp, MetaReply};

/// A member of the group, by its number (drawn when it joins, never reused).
pub type NodeId = u64;

/// One entry of the log: ops the leader's writer took together, applied in order, each
/// one all or nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Proposal {
    pub ops: Vec<MetaOp>,
}

/// What applying one op gave, as the leader's writer needs it to answer its client and
/// tell the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub reply: FsResult<MetaReply>,
    /// The records it changed (see [`crate::store::Txn::changes`]).
    pub changes: Vec<Change>,
    /// The inodes it deleted.
    pub removed: Vec<Ino>,
    /// The files it left without a name.
    pub orphaned: Vec<Ino>,
}

/// What applying one entry gave: one [`Applied`] per op of its proposal (none for Raft's
/// own entries).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answer {
    pub applied: Vec<Applied>,
}

/// Where a member listens for the others.
pub type Member = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The types the namenode group's Raft runs on.
    pub TypeConfig:
        D = Proposal,
        R = Answer,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type StorageError = openraft::StorageError<NodeId>;

/// A storage error for Raft: reading or writing `subject` failed with `e`.
fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    let source = openraft::AnyError::error(e.to_string());
    openraft::StorageIOError::new(subject, verb, source).into()
}

/// Postcard bytes of a value kept for Raft.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    crate::store::encode(value)
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    subject: openraft::ErrorSubject<NodeId>,
    bytes: &[u8],
) -> Result<T, StorageError> {
    crate::store::decode(what, bytes).map_err(|e| io_error(subject, openraft::ErrorVerb::Read, e))
}

#[cfg(test)]
mod tests;
