//! Re-replication: every pass compares each referenced block's live replicas with its
//! replication factor, orders copies for blocks below it (those with the fewest live replicas
//! first) and deletions for blocks above it, and hands the orders to datanodes with their
//! heartbeat replies. Soft state, like the block map it works from.
//!
//! A copy is datanode to datanode: the source reads its replica, verifies it against the
//! block id and streams it down a pipeline of targets, each of which verifies it again and
//! reports it. An order is done when the block map shows the targets holding the block, or
//! forgotten after [`ORDER_TIMEOUT`] (or when the source says it failed) and planned afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{DatanodeAddr, DatanodeCommand};
use cairn_common::{BlockId, DatanodeId};
use serde::{Deserialize, Serialize};

use crate::blockmap::BlockMap;
use crate::store::BlockRecord;

/// An order not seen done within this long is planned again.
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most entries kept in the log of ordered copies.
const ORDER_LOG_MAX: usize = 100_000;

struct Copy {
    source: DatanodeId,
    targets: Vec<DatanodeId>,
    len: u32,
    ordered: Instant,
}

struct Delete {
    node: DatanodeId,
    ordered: Instant,
}

/// What the last pass found, and what repair has done since the namenode started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RepairStatus {
    /// Referenced blocks with fewer live replicas than wanted (at least one).
    pub under_replicated: u64,
    /// Of those, blocks with a single live replica.
    pub one_replica: u64,
    /// Referenced blocks with no live replica at all.
    pub missing: u64,
    /// Blocks with more live replicas than wanted.
    pub over_replicated: u64,
    /// Copies ordered and not yet seen done.
    pub copies_in_flight: u64,
    /// Copies seen done, and their bytes, since the namenode started.
    pub copies_done: u64,
    pub bytes_copied: u64,
    /// Replicas deleted as surplus since the namenode started.
    pub surplus_deleted: u64,
}

#[derive(Default)]
struct State {
    copies: HashMap<BlockId, Copy>,
    deletes: HashMap<BlockId, Delete>,
    outbox: HashMap<DatanodeId, Vec<DatanodeCommand>>,
    status: RepairStatus,
    /// Blocks copied in the order their copies were ordered (tests check the priority).
    order_log: Vec<BlockId>,
}

pub struct Repair {
    /// Most copies one datanode sends, or receives, at a time.
    max_copies_per_node: usize,
    state: Mutex<State>,
}

/// One block below its replication, as a pass sees it.
struct Need {
    block: BlockId,
    len: u32,
    live: Vec<DatanodeAddr>,
    want: usize,
}

impl Repair {
    pub fn new(max_copies_per_node: usize) -> Repair {
        Repair {
            max_copies_per_node: max_copies_per_node.max(1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The orders waiting for `node`, taken by its heartbeat.
    pub fn take_commands(&self, node: DatanodeId) -> Vec<DatanodeCommand> {
        self.state().outbox.remove(&node).unwrap_or_default()
    }

    /// `node` could not copy these blocks: plan them again at once.
    pub fn copies_failed(&self, node: DatanodeId, blocks: &[BlockId]) {
        let mut s = self.state();
        for b in blocks {
            if s.copies.get(b).is_some_and(|c| c.source == node) {
                s.copies.remove(b);
            }
        }
    }

    pub fn status(&self) -> RepairStatus {
        let s = self.state();
        let mut status = s.status.clone();
        status.copies_in_flight = s.copies.len() as u64;
        status
    }

    /// Blocks in the order their first copy was ordered.
    pub fn order_log(&self) -> Vec<BlockId> {
        self.state().order_log.clone()
    }

    /// One pass over `blocks` (every referenced block with its record): settles finished
    /// orders, then orders copies (fewest live replicas first) and deletions of surplus.
    pub fn pass(&self, blocks: &[(BlockId, BlockRecord)], map: &BlockMap) {
        let live_nodes = map.live_nodes();
        let now = Instant::now();
        let mut needs = Vec::new();
        let mut status = RepairStatus::default();
        let mut s = self.state();
        for (block, rec) in blocks {
            if rec.refs == 0 {
                continue;
            }
            let live = map.locations(block);
            let holds = |id: &DatanodeId| live.iter().any(|l| l.id == *id);
            if let Some(c) = s.copies.get(block) {
                if c.targets.iter().all(holds) {
                    let len = c.len as u64;
                    s.copies.remove(block);
                    s.status.copies_done += 1;
                    s.status.bytes_copied += len;
                } else if now.duration_since(c.ordered) > ORDER_TIMEOUT {
                    s.copies.remove(block);
                }
            }
            if let Some(d) = s.deletes.get(block) {
                if !holds(&d.node) {
                    s.deletes.remove(block);
                    s.status.surplus_deleted += 1;
                } else if now.duration_since(d.ordered) > ORDER_TIMEOUT {
                    s.deletes.remove(block);
                }
            }
            let want = (rec.replication as usize).min(live_nodes);
            if live.is_empty() {
                status.missing += 1;
            } else if live.len() < want {
                status.under_replicated += 1;
                if live.len() == 1 {
                    status.one_replica += 1;
                }
                if !s.copies.contains_key(block) {
                    needs.push(Need {
                        block: *block,
                        len: rec.len,
                        live,
                        want,
                    });
                }
            } else if live.len() > rec.replication as usize {
                status.over_replicated += 1;
                if !s.copies.contains_key(block) && !s.deletes.contains_key(block) {
                    // The fullest holder gives its replica up. `live` is sorted by free
                    // space, most first, and has more than `replication` (≥ 1) entries.
                    let node = live[live.len() - 1].id;
                    s.deletes.insert(*block, Delete { node, ordered: now });
                    push_command(&mut s, node, |cmds| {
                        match cmds.iter_mut().find_map(|c| match c {
                            DatanodeCommand::Delete { blocks } => Some(blocks),
                            _ => None,
                        }) {
                            Some(blocks) => blocks.push(*block),
                            None => cmds.push(DatanodeCommand::Delete {
                                blocks: vec![*block],
                            }),
                        }
                    });
                }
            }
        }
        // The blocks closest to being lost first, then those furthest below their target.
        needs.sort_by_key(|n| (n.live.len(), std::cmp::Reverse(n.want - n.live.len())));
        let mut sending: HashMap<DatanodeId, usize> = HashMap::new();
        let mut receiving: HashMap<DatanodeId, usize> = HashMap::new();
        for c in s.copies.values() {
            *sending.entry(c.source).or_default() += 1;
            for t in &c.targets {
                *receiving.entry(*t).or_default() += 1;
            }
        }
        let max = self.max_copies_per_node;
        for need in needs {
            let Some(source) = need
                .live
                .iter()
                .filter(|l| sending.get(&l.id).copied().unwrap_or(0) < max)
                .min_by_key(|l| sending.get(&l.id).copied().unwrap_or(0))
                .map(|l| l.id)
            else {
                continue;
            };
            let mut exclude: Vec<DatanodeId> = need.live.iter().map(|l| l.id).collect();
            exclude.extend(
                receiving
                    .iter()
                    .filter(|(_, n)| **n >= max)
                    .map(|(id, _)| *id),
            );
            let targets = map.place(need.want - need.live.len(), need.len as u64, &exclude);
            if targets.is_empty() {
                continue;
            }
            *sending.entry(source).or_default() += 1;
            for t in &targets {
                *receiving.entry(t.id).or_default() += 1;
            }
            s.copies.insert(
                need.block,
                Copy {
                    source,
                    targets: targets.iter().map(|t| t.id).collect(),
                    len: need.len,
                    ordered: now,
                },
            );
            if s.order_log.len() < ORDER_LOG_MAX {
                s.order_log.push(need.block);
            }
            push_command(&mut s, source, |cmds| {
                cmds.push(DatanodeCommand::Replicate {
                    block: need.block,
                    len: need.len,
                    targets,
                })
            });
        }
        status.copies_done = s.status.copies_done;
        status.bytes_copied = s.status.bytes_copied;
        status.surplus_deleted = s.status.surplus_deleted;
        s.status = status;
    }
}

fn push_command(s: &mut State, node: DatanodeId, f: impl FnOnce(&mut Vec<DatanodeCommand>)) {
    f(s.outbox.entry(node).or_default());
}
