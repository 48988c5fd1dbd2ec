//! Re-replication: every pass compares each referenced block's live replicas with its
//! replication factor, orders copies for blocks below it (those with the fewest live replicas
//! first) and deletions for blocks above it, and hands the orders to datanodes with their
//! heartbeat replies. Soft state, like the block map it works from.
//!
//! A copy is datanode to datanode: the source reads its replica, verifies it against the
//! block id and streams it down a pipeline of targets, each of which verifies it again and
//! reports it. An order is done when the block map shows the targets holding the block, or
//! forgotten after [`ORDER_TIMEOUT`] (or when the source says it failed) and planned afresh.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{
    AdminState, BalanceAction, BalanceStatus, DatanodeAddr, DatanodeCommand, RepairStatus,
};
use cairn_common::{BlockId, DatanodeId};

use crate::balance::{Balancer, Usage};
use crate::blockmap::BlockMap;
use crate::store::BlockRecord;

/// An order not seen done within this long is planned again.
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// The span the copy rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

struct Copy {
    source: DatanodeId,
    targets: Vec<DatanodeId>,
    len: u32,
    ordered: Instant,
    /// A balancer's move: the surplus it leaves is trimmed from the fullest holder.
    balance: bool,
}

struct Delete {
    node: DatanodeId,
    len: u32,
    ordered: Instant,
}

#[derive(Default)]
struct State {
    copies: HashMap<BlockId, Copy>,
    deletes: HashMap<BlockId, Delete>,
    outbox: HashMap<DatanodeId, Vec<DatanodeCommand>>,
    /// Blocks below their replication with no copy ordered, most urgent first, as the last
    /// pass found them; heartbeats draw work from it between passes.
    queue: Vec<Need>,
    /// Whether the last pass was allowed to act (not in safe mode).
    acting: bool,
    /// Replicas found corrupt (and quarantined by their datanode), until the block has its
    /// replicas from good copies and the bad ones are dropped.
    corrupt: HashMap<BlockId, Vec<DatanodeId>>,
    status: RepairStatus,
    /// (when, bytes copied so far) at each pass of the last minute, for the rate.
    progress: std::collections::VecDeque<(Instant, u64)>,
    balancer: Balancer,
    /// Blocks at exactly their replication with nothing under way, as the last pass found
    /// them (while the balancer runs): the ones it may move.
    movable: HashMap<BlockId, u32>,
    /// Bytes of referenced blocks each datanode holds, as the last pass counted them from
    /// the block map: usage without waiting for heartbeats.
    held_bytes: HashMap<DatanodeId, u64>,
}

pub struct Repair {
    /// Most copies one datanode sends, or receives, at a time.
    max_copies_per_node: usize,
    state: Mutex<State>,
}

/// One block below its replication, as a pass saw it.
struct Need {
    block: BlockId,
    len: u32,
    want: usize,
    /// The copy is for a failure domain the block is not in yet (a misplaced block): a
    /// target in one of its domains would not help.
    new_domain: bool,
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

    /// The orders for `node`, taken by its heartbeat: those waiting, and more from the
    /// queue if it has room (a datanode that finished a copy heartbeats at once, so copies
    /// follow each other without waiting for a pass).
    pub fn take_commands(&self, node: DatanodeId, map: &BlockMap) -> Vec<DatanodeCommand> {
        let mut s = self.state();
        let now = Instant::now();
        // Every copy, not only this node's: a finished copy frees its target for others.
        let ordered: Vec<BlockId> = s.copies.keys().copied().collect();
        for block in ordered {
            let live = map.locations(&block);
            settle_copy(&mut s, &block, &live, now);
        }
        if s.acting {
            self.schedule(&mut s, map, Some(node), now);
            if s.balancer.is_running() {
                self.balance(&mut s, map, now);
            }
        }
        s.outbox.remove(&node).unwrap_or_default()
    }

    /// Orders copies for queued blocks (only those `only` holds, if given), most urgent
    /// first, within the per-datanode bounds.
    fn schedule(&self, s: &mut State, map: &BlockMap, only: Option<DatanodeId>, now: Instant) {
        let mut sending: HashMap<DatanodeId, usize> = HashMap::new();
        let mut receiving: HashMap<DatanodeId, usize> = HashMap::new();
        for c in s.copies.values() {
            *sending.entry(c.source).or_default() += 1;
            for t in &c.targets {
                *receiving.entry(*t).or_default() += 1;
            }
        }
        let max = self.max_copies_per_node;
        let busy = |counts: &HashMap<DatanodeId, usize>, id: &DatanodeId| {
            counts.get(id).copied().unwrap_or(0)
        };
        if only.is_some_and(|n| busy(&sending, &n) >= max) {
            return;
        }
        let silent = map.silent();
        let mut queue = std::mem::take(&mut s.queue).into_iter();
        let mut kept = Vec::with_capacity(queue.len());
        for need in queue.by_ref() {
            if s.copies.contains_key(&need.block) {
                continue;
            }
            let live = map.locations(&need.block);
            let counted = map.counted(&need.block).len();
            if live.is_empty() || counted >= need.want {
                // Lost meanwhile, or healed: the next pass sees it afresh.
                continue;
            }
            let source = match only {
                Some(n) if live.iter().any(|l| l.id == n) && busy(&sending, &n) < max => Some(n),
                Some(_) => None,
                None => live
                    .iter()
                    .filter(|l| busy(&sending, &l.id) < max)
                    .min_by_key(|l| (silent.contains(&l.id), busy(&sending, &l.id)))
                    .map(|l| l.id),
            };
            let Some(source) = source else {
                kept.push(need);
                continue;
            };
            let mut exclude: Vec<DatanodeId> = live.iter().map(|l| l.id).collect();
            exclude.extend(
                receiving
                    .iter()
                    .filter(|(_, n)| **n >= max)
                    .map(|(id, _)| *id),
            );
            let holders: Vec<DatanodeId> = live.iter().map(|l| l.id).collect();
            let targets = map.place(need.want - counted, need.len as u64, &exclude, &holders);
            if targets.is_empty() {
                kept.push(need);
                continue;
            }
            if need.new_domain {
                let mut with: Vec<DatanodeId> = holders.clone();
                with.extend(targets.iter().map(|t| t.id));
                if map.domains(&with) <= map.domains(&holders) {
                    // No new domain has room now; the next pass looks again.
                    continue;
                }
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
                    balance: false,
                },
            );
            push_command(s, source, |cmds| {
                cmds.push(DatanodeCommand::Replicate {
                    block: need.block,
                    len: need.len,
                    targets,
                    token: None,
                })
            });
            if only.is_some_and(|n| busy(&sending, &n) >= max) {
                break;
            }
        }
        // What was not looked at (after a break) stays queued behind what was.
        kept.extend(queue);
        s.queue = kept;
    }

    /// `node` found its replica of `block` corrupt and quarantined it.
    pub fn corrupt_replica(&self, block: BlockId, node: DatanodeId) {
        let mut s = self.state();
        let nodes = s.corrupt.entry(block).or_default();
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }

    /// A reader found `node`'s replica of `block` bad: the node re-hashes it.
    pub fn verify(&self, block: BlockId, node: DatanodeId) {
        let mut s = self.state();
        push_command(&mut s, node, |cmds| {
            match cmds.iter_mut().find_map(|c| match c {
                DatanodeCommand::Verify { blocks } => Some(blocks),
                _ => None,
            }) {
                Some(blocks) => blocks.push(block),
                None => cmds.push(DatanodeCommand::Verify {
                    blocks: vec![block],
                }),
            }
        });
    }

    /// Which of `blocks` have corrupt replicas not yet replaced.
    pub fn corrupt_among(&self, blocks: impl Iterator<Item = BlockId>) -> Vec<BlockId> {
        let s = self.state();
        blocks.filter(|b| s.corrupt.contains_key(b)).collect()
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

    /// Moves replicas from the fullest datanodes to the emptiest, within the per-datanode
    /// bounds and only while no block needs repair; ends balancing once every datanode is
    /// within the threshold and no move is under way.
    fn balance(&self, s: &mut State, map: &BlockMap, now: Instant) {
        let statuses = map.statuses();
        let addrs: HashMap<DatanodeId, std::net::SocketAddr> =
            statuses.iter().map(|d| (d.id, d.addr)).collect();
        let (mut usage, moving) = usage(s, &statuses);
        let mut sending: HashMap<DatanodeId, usize> = HashMap::new();
        let mut receiving: HashMap<DatanodeId, usize> = HashMap::new();
        for c in s.copies.values() {
            *sending.entry(c.source).or_default() += 1;
            for t in &c.targets {
                *receiving.entry(*t).or_default() += 1;
            }
        }
        if usage.balanced() || !s.queue.is_empty() {
            if usage.balanced() && moving == 0 {
                s.balancer.finished();
                tracing::info!(
                    moved = s.balancer.moves_done,
                    moved_mib = s.balancer.bytes_moved >> 20,
                    "balanced: every datanode is within the threshold"
                );
            }
            s.balancer.observed(usage);
            return;
        }
        let max = self.max_copies_per_node;
        let busy = |counts: &HashMap<DatanodeId, usize>, id| counts.get(&id).copied().unwrap_or(0);
        let mut exhausted = HashSet::new();
        while let Some((from, to)) = usage.next_pair(|f, t| {
            busy(&sending, f) >= max || busy(&receiving, t) >= max || exhausted.contains(&(f, t))
        }) {
            let candidates = map.blocks_held(from, 256, |b| {
                s.movable.contains_key(b) && !s.copies.contains_key(b)
            });
            let block = candidates
                .into_iter()
                .find(|b| !map.holds(to, b) && map.keeps_domains(b, from, to));
            let (Some(block), Some(addr)) = (block, addrs.get(&to)) else {
                exhausted.insert((from, to));
                continue;
            };
            let Some(len) = s.movable.remove(&block) else {
                continue;
            };
            s.copies.insert(
                block,
                Copy {
                    source: from,
                    targets: vec![to],
                    len,
                    ordered: now,
                    balance: true,
                },
            );
            push_command(s, from, |cmds| {
                cmds.push(DatanodeCommand::Replicate {
                    block,
                    len,
                    targets: vec![DatanodeAddr {
                        id: to,
                        addr: *addr,
                    }],
                    token: None,
                })
            });
            *sending.entry(from).or_default() += 1;
            *receiving.entry(to).or_default() += 1;
            usage.moving(from, to, len as u64);
        }
        s.balancer.observed(usage);
    }

    /// Starts, stops or reports the balancer.
    pub fn balancer(&self, action: BalanceAction, map: &BlockMap) -> BalanceStatus {
        let mut s = self.state();
        match action {
            BalanceAction::Start { threshold_pct } => s.balancer.start(threshold_pct),
            BalanceAction::Stop => s.balancer.stop(),
            BalanceAction::Get => {}
        }
        if !s.balancer.is_running() || matches!(action, BalanceAction::Start { .. }) {
            // Not refreshed by the balancer's turns (or not yet): figures as of now.
            let (usage, _) = usage(&s, &map.statuses());
            s.balancer.observed(usage);
        }
        let in_flight = s.copies.values().filter(|c| c.balance).count() as u64;
        s.balancer.status(in_flight)
    }

    pub fn status(&self) -> RepairStatus {
        let s = self.state();
        let mut status = s.status;
        status.copies_in_flight = s.copies.len() as u64;
        status
    }

    /// One pass over `blocks` (every referenced block with its record): settles finished
    /// orders, counts what is below or above its replication and, when `act` (not in safe
    /// mode), orders copies (fewest live replicas first) and deletions of surplus.
    /// Returns the datanodes whose decommission it found complete.
    pub fn pass(
        &self,
        blocks: &[(BlockId, BlockRecord)],
        map: &BlockMap,
        act: bool,
    ) -> Vec<DatanodeId> {
        let live_nodes = map.live_nodes();
        let live_domains = map.live_domains();
        let silent = map.silent();
        let now = Instant::now();
        let mut needs = Vec::new();
        let mut short = HashSet::new();
        // Blocks at exactly their replication with nothing under way: the balancer's to move.
        let mut movable: HashMap<BlockId, u32> = HashMap::new();
        let mut held_bytes: HashMap<DatanodeId, u64> = HashMap::new();
        let mut status = RepairStatus {
            live_datanodes: live_nodes as u64,
            ..RepairStatus::default()
        };
        let mut s = self.state();
        for (block, rec) in blocks {
            if rec.refs == 0 {
                continue;
            }
            status.blocks += 1;
            // `live`: replicas that can be read and copied from; `counted`: those that count
            // toward the replication (not on draining datanodes; on ones in maintenance even
            // while away).
            let live = map.locations(block);
            let counted = map.counted(block);
            let holds = |id: &DatanodeId| live.iter().any(|l| l.id == *id);
            for l in &live {
                *held_bytes.entry(l.id).or_default() += rec.len as u64;
            }
            settle_copy(&mut s, block, &live, now);
            if let Some(d) = s.deletes.get(block) {
                if !holds(&d.node) {
                    s.deletes.remove(block);
                    s.status.surplus_deleted += 1;
                } else if now.duration_since(d.ordered) > ORDER_TIMEOUT {
                    s.deletes.remove(block);
                }
            }
            let want = (rec.replication as usize).min(live_nodes);
            if let Some(bad) = s.corrupt.get(block) {
                status.corrupt_replicas += bad.len() as u64;
                if live.is_empty() {
                    status.corrupt_blocks += 1;
                } else if act && counted.len() >= want {
                    // Replaced from good copies: the bad ones can go now, not before.
                    let bad = s.corrupt.remove(block).unwrap_or_default();
                    for node in bad {
                        push_command(&mut s, node, |cmds| {
                            cmds.push(DatanodeCommand::DropQuarantined {
                                blocks: vec![*block],
                            })
                        });
                    }
                }
            }
            if live.is_empty() {
                status.missing += 1;
                continue;
            }
            status.blocks_reported += 1;
            if counted.len() < rec.replication as usize {
                // Below its replication whether or not a datanode can take a copy now: an
                // operator must hear of it (add a datanode, or lower the replication).
                status.under_replicated += 1;
                if counted.len() <= 1 {
                    status.one_replica += 1;
                }
                if counted.len() >= want {
                    status.unrepairable += 1;
                }
            }
            if counted.len() < want {
                short.insert(*block);
                let missing_copies = (want - counted.len()) as u64;
                status.copies_needed += missing_copies;
                status.bytes_needed += missing_copies * rec.len as u64;
                if act && !s.copies.contains_key(block) {
                    // Replicas on datanodes gone silent are likely lost with them (two nodes
                    // die within a heartbeat of each other but are declared dead passes
                    // apart): the blocks that would be left with fewest rank first.
                    let healthy = counted.iter().filter(|id| !silent.contains(id)).count();
                    needs.push((
                        (healthy, counted.len()),
                        Need {
                            block: *block,
                            len: rec.len,
                            want,
                            new_domain: false,
                        },
                    ));
                }
            } else if counted.len() == rec.replication as usize {
                if map.domains(&counted) < live_domains.min(counted.len()) {
                    // All there, but sharing a failure domain another could take: one more
                    // copy there, then the surplus goes from a shared one.
                    status.misplaced += 1;
                    if act && !s.copies.contains_key(block) && !s.deletes.contains_key(block) {
                        needs.push((
                            (counted.len(), counted.len()),
                            Need {
                                block: *block,
                                len: rec.len,
                                want: counted.len() + 1,
                                new_domain: true,
                            },
                        ));
                    }
                } else if s.balancer.is_running()
                    && !s.copies.contains_key(block)
                    && !s.deletes.contains_key(block)
                    && !s.corrupt.contains_key(block)
                {
                    movable.insert(*block, rec.len);
                }
            } else if counted.len() > rec.replication as usize {
                status.over_replicated += 1;
                // The fullest live holder in normal service gives its replica up (`live` is
                // sorted with the most free space first), from a failure domain another
                // replica is in if there is one.
                let candidates: Vec<DatanodeId> = live
                    .iter()
                    .filter(|l| counted.contains(&l.id) && map.is_normal(l.id))
                    .map(|l| l.id)
                    .collect();
                let spare = map.spare_holders(&candidates);
                let surplus = live
                    .iter()
                    .rev()
                    .find(|l| spare.contains(&l.id))
                    .map(|l| l.id);
                if let Some(node) = surplus.filter(|_| {
                    act && !s.copies.contains_key(block) && !s.deletes.contains_key(block)
                }) {
                    s.deletes.insert(
                        *block,
                        Delete {
                            node,
                            len: rec.len,
                            ordered: now,
                        },
                    );
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
        // A draining datanode is done when no block it holds is short of replicas elsewhere.
        let mut drained = Vec::new();
        if act {
            for (node, held) in map.decommissioning() {
                if !held
                    .iter()
                    .any(|b| short.contains(b) || s.copies.contains_key(b))
                {
                    map.set_admin_of(node, AdminState::Decommissioned);
                    tracing::info!(datanode = %node, "decommissioned: its blocks have their replicas elsewhere");
                    drained.push(node);
                }
            }
        }
        // The blocks closest to being lost first, then those furthest below their target.
        needs.sort_by_key(|((healthy, counted), n)| {
            (*healthy, *counted, std::cmp::Reverse(n.want - counted))
        });
        s.queue = needs.into_iter().map(|(_, n)| n).collect();
        s.acting = act;
        self.schedule(&mut s, map, None, now);
        s.movable = movable;
        s.held_bytes = held_bytes;
        s.balancer.counted();
        if act && s.balancer.is_running() {
            self.balance(&mut s, map, now);
        }
        status.copies_done = s.status.copies_done;
        status.bytes_copied = s.status.bytes_copied;
        status.surplus_deleted = s.status.surplus_deleted;
        s.progress.push_back((now, status.bytes_copied));
        while s
            .progress
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            s.progress.pop_front();
        }
        if let Some((t0, b0)) = s.progress.front() {
            let secs = now.duration_since(*t0).as_secs_f64();
            if secs > 0.0 {
                status.rate_bytes_per_sec = ((status.bytes_copied - b0) as f64 / secs) as u64;
            }
        }
        s.status = status;
        drained
    }
}

/// Each datanode's usage as the balancer sees it: the referenced bytes the last pass counted
/// on it, with the moves finished since and those under way counted as done, and surplus
/// replicas being deleted as gone. Also how many moves are under way.
fn usage(s: &State, statuses: &[cairn_common::proto::DatanodeStatus]) -> (Usage, usize) {
    let mut usage = Usage::new(statuses, &s.held_bytes, s.balancer.threshold_pct());
    let mut moving = 0;
    for c in s.copies.values().filter(|c| c.balance) {
        moving += 1;
        if let Some(t) = c.targets.first() {
            usage.moving(c.source, *t, c.len as u64);
        }
    }
    for (from, to, len) in s.balancer.since_counted() {
        usage.moving(from, to, len);
    }
    for d in s.deletes.values() {
        usage.freeing(d.node, d.len as u64);
    }
    (usage, moving)
}

/// Ends the copy order of `block` if its targets hold it (`live`), or if it is too old.
fn settle_copy(s: &mut State, block: &BlockId, live: &[DatanodeAddr], now: Instant) {
    let Some(c) = s.copies.get(block) else {
        return;
    };
    if c.targets.iter().all(|t| live.iter().any(|l| l.id == *t)) {
        let (len, balance) = (c.len as u64, c.balance);
        let (c_source, c_target) = (c.source, c.targets.first().copied().unwrap_or(c.source));
        s.copies.remove(block);
        if balance {
            s.balancer.moved(c_source, c_target, len);
        } else {
            s.status.copies_done += 1;
            s.status.bytes_copied += len;
        }
    } else if now.duration_since(c.ordered) > ORDER_TIMEOUT {
        s.copies.remove(block);
    }
}

fn push_command(s: &mut State, node: DatanodeId, f: impl FnOnce(&mut Vec<DatanodeCommand>)) {
    f(s.outbox.entry(node).or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::proto::{Heartbeat, Register};

    fn node(map: &BlockMap, id: u64) -> DatanodeId {
        node_in(map, id, "")
    }

    fn node_in(map: &BlockMap, id: u64, rack: &str) -> DatanodeId {
        map.register(&Register {
            id: DatanodeId(id),
            cluster: None,
            name: format!("dn{id}"),
            rack: rack.into(),
            addr: format!("127.0.0.1:{}", 2000 + id).parse().unwrap(),
            capacity: 1 << 40,
            used: 0,
            available: 1 << 40,
        });
        DatanodeId(id)
    }

    fn record(replication: u8) -> BlockRecord {
        BlockRecord {
            len: 1 << 20,
            refs: 1,
            replication,
        }
    }

    fn copies(cmds: &[DatanodeCommand]) -> Vec<(BlockId, usize)> {
        cmds.iter()
            .filter_map(|c| match c {
                DatanodeCommand::Replicate { block, targets, .. } => Some((*block, targets.len())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn blocks_closest_to_loss_are_copied_first() {
        let map = BlockMap::new(Duration::from_secs(60));
        let (a, b, c) = (node(&map, 1), node(&map, 2), node(&map, 3));
        node(&map, 4);
        node(&map, 5);
        let (two, one, three) = (BlockId([1; 32]), BlockId([2; 32]), BlockId([3; 32]));
        map.blocks_changed(a, &[two, one, three], &[]);
        map.blocks_changed(b, &[two, three], &[]);
        map.blocks_changed(c, &[three], &[]);
        let blocks = vec![(two, record(3)), (one, record(3)), (three, record(3))];
        // One copy at a time from node a, which holds every block: the priority decides.
        let repair = Repair::new(1);
        repair.pass(&blocks, &map, true);
        assert_eq!(copies(&repair.take_commands(a, &map)), vec![(one, 2)]);
        assert_eq!(copies(&repair.take_commands(b, &map)), vec![(two, 1)]);
        let status = repair.status();
        assert_eq!(
            (
                status.under_replicated,
                status.one_replica,
                status.copies_needed
            ),
            (2, 1, 3)
        );
        assert_eq!(status.copies_in_flight, 2);
    }

    #[test]
    fn replicas_on_silent_datanodes_do_not_make_a_block_safe() {
        let map =
            BlockMap::new(Duration::from_secs(60)).with_stale_timeout(Duration::from_millis(50));
        let (a, b, c) = (node(&map, 1), node(&map, 2), node(&map, 3));
        // Targets enough for both copies, whichever the first takes.
        let targets = [node(&map, 4), node(&map, 5), node(&map, 6)];
        // Both blocks have two replicas, on a; `doomed`'s other one is on b, which goes
        // silent; `safe`'s on c, which keeps beating.
        let (safe, doomed) = (BlockId([1; 32]), BlockId([2; 32]));
        map.blocks_changed(a, &[safe, doomed], &[]);
        map.blocks_changed(b, &[doomed], &[]);
        map.blocks_changed(c, &[safe], &[]);
        std::thread::sleep(Duration::from_millis(100));
        for id in [a, c].into_iter().chain(targets) {
            map.heartbeat(&Heartbeat {
                id,
                capacity: 1 << 40,
                used: 0,
                available: 1 << 40,
                blocks: 0,
                active_transfers: 0,
                copies_failed: Vec::new(),
                scrub: Default::default(),
            });
        }
        assert_eq!(map.silent(), HashSet::from([b]));
        let repair = Repair::new(1);
        repair.pass(&[(safe, record(3)), (doomed, record(3))], &map, true);
        // a's one copy slot goes to the block the silent node would leave with one replica,
        // and b is asked for nothing.
        assert_eq!(copies(&repair.take_commands(a, &map)), vec![(doomed, 1)]);
        assert!(repair.take_commands(b, &map).is_empty());
        assert_eq!(copies(&repair.take_commands(c, &map)), vec![(safe, 1)]);
    }

    #[test]
    fn heartbeats_draw_the_next_copies_without_waiting_for_a_pass() {
        let map = BlockMap::new(Duration::from_secs(60));
        let (source, target) = (node(&map, 1), node(&map, 2));
        let blocks: Vec<(BlockId, BlockRecord)> =
            (1..=3).map(|i| (BlockId([i; 32]), record(2))).collect();
        let ids: Vec<BlockId> = blocks.iter().map(|(b, _)| *b).collect();
        map.blocks_changed(source, &ids, &[]);
        let repair = Repair::new(1);
        repair.pass(&blocks, &map, true);
        let mut copied = Vec::new();
        for _ in 0..3 {
            let got = copies(&repair.take_commands(source, &map));
            assert_eq!(
                got.len(),
                1,
                "one copy at a time, the next as soon as one is done"
            );
            // The target stores it and reports it, as a datanode does.
            map.blocks_changed(target, &[got[0].0], &[]);
            copied.push(got[0].0);
        }
        copied.sort();
        assert_eq!(copied, ids);
        assert!(repair.take_commands(source, &map).is_empty());
        assert_eq!(repair.status().copies_done, 3);
    }

    #[test]
    fn safe_mode_counts_but_orders_nothing() {
        let map = BlockMap::new(Duration::from_secs(60));
        let a = node(&map, 1);
        node(&map, 2);
        let block = BlockId([7; 32]);
        map.blocks_changed(a, &[block], &[]);
        let repair = Repair::new(4);
        repair.pass(&[(block, record(2))], &map, false);
        assert!(repair.take_commands(a, &map).is_empty());
        assert_eq!(repair.status().under_replicated, 1);
        repair.pass(&[(block, record(2))], &map, true);
        assert_eq!(copies(&repair.take_commands(a, &map)), vec![(block, 1)]);
    }

    #[test]
    fn a_block_in_one_rack_gets_a_copy_in_another_then_loses_one_there() {
        let map = BlockMap::new(Duration::from_secs(60));
        let (a1, a2) = (node_in(&map, 1, "a"), node_in(&map, 2, "a"));
        let b1 = node_in(&map, 3, "b");
        let block = BlockId([4; 32]);
        map.blocks_changed(a1, &[block], &[]);
        map.blocks_changed(a2, &[block], &[]);
        let repair = Repair::new(4);
        repair.pass(&[(block, record(2))], &map, true);
        assert_eq!(repair.status().misplaced, 1);
        let orders: Vec<_> = [a1, a2]
            .iter()
            .flat_map(|n| repair.take_commands(*n, &map))
            .collect();
        let targets: Vec<DatanodeId> = orders
            .iter()
            .flat_map(|c| match c {
                DatanodeCommand::Replicate { targets, .. } => {
                    targets.iter().map(|t| t.id).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(targets, vec![b1], "the copy goes to the other rack");
        map.blocks_changed(b1, &[block], &[]);
        repair.pass(&[(block, record(2))], &map, true);
        let deleted_on: Vec<DatanodeId> = [a1, a2, b1]
            .into_iter()
            .filter(|n| {
                repair
                    .take_commands(*n, &map)
                    .iter()
                    .any(|c| matches!(c, DatanodeCommand::Delete { .. }))
            })
            .collect();
        assert_eq!(deleted_on.len(), 1);
        assert_ne!(deleted_on[0], b1, "the surplus goes from the shared rack");
        assert_eq!(repair.status().misplaced, 0);
    }

    #[test]
    fn surplus_goes_but_never_below_the_factor() {
        let map = BlockMap::new(Duration::from_secs(60));
        let ids: Vec<DatanodeId> = (1..=3).map(|i| node(&map, i)).collect();
        let block = BlockId([9; 32]);
        for id in &ids {
            map.blocks_changed(*id, &[block], &[]);
        }
        let repair = Repair::new(4);
        repair.pass(&[(block, record(2))], &map, true);
        let deletes: Vec<_> = ids
            .iter()
            .flat_map(|id| repair.take_commands(*id, &map))
            .collect();
        assert_eq!(deletes.len(), 1, "one surplus replica, one deletion");
        // Until that replica is gone, no second deletion is ordered.
        repair.pass(&[(block, record(2))], &map, true);
        assert!(ids
            .iter()
            .all(|id| repair.take_commands(*id, &map).is_empty()));
        repair.pass(&[(block, record(3))], &map, true);
        assert!(ids
            .iter()
            .all(|id| repair.take_commands(*id, &map).is_empty()));
    }
}
