//! The balancer's arithmetic: how full each datanode is against the cluster's average, and
//! which datanode should give a replica to which next. Repair (`repair.rs`) turns its
//! choices into copies; the surplus replica each copy leaves is then trimmed from the
//! fullest holder, as any surplus is, which completes the move.
//!
//! As in HDFS, usage is the used share of each datanode's capacity, and the cluster is
//! balanced when every datanode is within the threshold (percentage points) of the
//! average. A move goes from a datanode above the average to one below it, and at least one
//! of them must be beyond the threshold, so moves stop once nothing is.

use std::collections::HashMap;
use std::time::Instant;

use cairn_common::proto::{BalanceNode, BalanceStatus, BalancerState, DatanodeStatus};
use cairn_common::DatanodeId;

/// What the balancer was asked and has done.
#[derive(Default)]
pub struct Balancer {
    state: BalancerState,
    /// In percentage points.
    threshold_pct: f64,
    started: Option<Instant>,
    ended: Option<Instant>,
    pub moves_done: u64,
    pub bytes_moved: u64,
    /// The last figures, for status requests between passes.
    last: Option<Usage>,
    /// Moves finished since the last pass counted what datanodes hold: (from, to, bytes).
    recent: Vec<(DatanodeId, DatanodeId, u64)>,
}

impl Balancer {
    pub fn start(&mut self, threshold_pct: f64) {
        *self = Balancer {
            state: BalancerState::Running,
            threshold_pct,
            started: Some(Instant::now()),
            ..Balancer::default()
        };
    }

    pub fn stop(&mut self) {
        if self.state == BalancerState::Running {
            self.state = BalancerState::Stopped;
            self.ended = Some(Instant::now());
        }
    }

    /// A move from `from` to `to` finished.
    pub fn moved(&mut self, from: DatanodeId, to: DatanodeId, len: u64) {
        self.moves_done += 1;
        self.bytes_moved += len;
        self.recent.push((from, to, len));
    }

    /// A pass has counted what every datanode holds, finished moves included.
    pub fn counted(&mut self) {
        self.recent.clear();
    }

    /// The moves finished since the last count.
    pub fn since_counted(&self) -> Vec<(DatanodeId, DatanodeId, u64)> {
        self.recent.clone()
    }

    pub fn is_running(&self) -> bool {
        self.state == BalancerState::Running
    }

    pub fn threshold_pct(&self) -> f64 {
        self.threshold_pct
    }

    /// Every datanode is within the threshold and no move is under way: done.
    pub fn finished(&mut self) {
        self.state = BalancerState::Balanced;
        self.ended = Some(Instant::now());
    }

    pub fn observed(&mut self, usage: Usage) {
        self.last = Some(usage);
    }

    pub fn status(&self, moves_in_flight: u64) -> BalanceStatus {
        let mut status = BalanceStatus {
            state: self.state,
            threshold_pct: self.threshold_pct,
            moves_in_flight,
            moves_done: self.moves_done,
            bytes_moved: self.bytes_moved,
            elapsed_secs: match (self.started, self.ended) {
                (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
                (Some(s), None) => s.elapsed().as_secs_f64(),
                _ => 0.0,
            },
            ..BalanceStatus::default()
        };
        if let Some(usage) = &self.last {
            usage.fill(&mut status);
        }
        status
    }
}

struct Node {
    id: DatanodeId,
    name: String,
    capacity: f64,
    /// Used bytes, counting moves under way as done.
    used: f64,
}

/// The datanodes that take part (live, in normal service, with a capacity) and their usage.
pub struct Usage {
    nodes: Vec<Node>,
    /// In the unit of shares (a fraction of capacity).
    threshold: f64,
}

impl Usage {
    /// Usage of `statuses`' datanodes: the bytes of referenced blocks each holds as `held`
    /// counts them, or (if nothing was counted) as their heartbeats said.
    pub fn new(
        statuses: &[DatanodeStatus],
        held: &HashMap<DatanodeId, u64>,
        threshold_pct: f64,
    ) -> Usage {
        let nodes: Vec<Node> = statuses
            .iter()
            .filter(|s| {
                s.state == cairn_common::proto::DatanodeState::Live
                    && s.admin == cairn_common::proto::AdminState::Normal
                    && s.capacity > 0
            })
            .map(|s| {
                let used = match held.get(&s.id) {
                    Some(bytes) => *bytes,
                    // Counted, and holding nothing referenced.
                    None if !held.is_empty() => 0,
                    None => s.used,
                };
                Node {
                    id: s.id,
                    name: s.name.clone(),
                    capacity: s.capacity as f64,
                    used: used as f64,
                }
            })
            .collect();
        Usage {
            threshold: threshold_pct / 100.0,
            nodes,
        }
    }

    /// The cluster's used share of its capacity (a fraction), moves and deletions counted:
    /// a move leaves it as it is, a deletion lowers it.
    fn average(&self) -> f64 {
        let capacity: f64 = self.nodes.iter().map(|n| n.capacity).sum();
        let used: f64 = self.nodes.iter().map(|n| n.used).sum();
        if capacity > 0.0 {
            used / capacity
        } else {
            0.0
        }
    }

    fn share(n: &Node) -> f64 {
        n.used / n.capacity
    }

    /// Counts `len` bytes as moved from `from` to `to`.
    pub fn moving(&mut self, from: DatanodeId, to: DatanodeId, len: u64) {
        for n in &mut self.nodes {
            if n.id == from {
                n.used -= len as f64;
            } else if n.id == to {
                n.used += len as f64;
            }
        }
    }

    /// Counts `len` bytes as leaving `node` (a replica being deleted).
    pub fn freeing(&mut self, node: DatanodeId, len: u64) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node) {
            n.used -= len as f64;
        }
    }

    /// Is every datanode within the threshold of the average?
    pub fn balanced(&self) -> bool {
        let average = self.average();
        self.nodes.iter().all(|n| {
            let share = Usage::share(n);
            share <= average + self.threshold && share >= average - self.threshold
        })
    }

    /// The next (source, target) to move a replica between, fullest source and emptiest
    /// target first, skipping pairs `skip` rules out (busy, or nothing left to move).
    pub fn next_pair(
        &self,
        skip: impl Fn(DatanodeId, DatanodeId) -> bool,
    ) -> Option<(DatanodeId, DatanodeId)> {
        let average = self.average();
        let mut above: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| Usage::share(n) > average)
            .collect();
        let mut below: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| Usage::share(n) < average)
            .collect();
        above.sort_by(|a, b| Usage::share(b).total_cmp(&Usage::share(a)));
        below.sort_by(|a, b| Usage::share(a).total_cmp(&Usage::share(b)));
        for s in &above {
            for t in &below {
                let beyond = Usage::share(s) > average + self.threshold
                    || Usage::share(t) < average - self.threshold;
                if beyond && !skip(s.id, t.id) {
                    return Some((s.id, t.id));
                }
            }
        }
        None
    }

    /// Bytes that must still leave the datanodes above the threshold, or reach those below
    /// it, whichever is more.
    fn bytes_to_move(&self) -> u64 {
        let average = self.average();
        let (mut over, mut under) = (0.0, 0.0);
        for n in &self.nodes {
            over += (n.used - (average + self.threshold) * n.capacity).max(0.0);
            under += ((average - self.threshold) * n.capacity - n.used).max(0.0);
        }
        over.max(under) as u64
    }

    fn fill(&self, status: &mut BalanceStatus) {
        status.average_pct = self.average() * 100.0;
        status.bytes_to_move = self.bytes_to_move();
        status.nodes = self
            .nodes
            .iter()
            .map(|n| BalanceNode {
                name: n.name.clone(),
                used: n.used.max(0.0) as u64,
                capacity: n.capacity as u64,
                used_pct: n.used.max(0.0) / n.capacity * 100.0,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::proto::{AdminState, DatanodeState};

    fn status(id: u64, used: u64, capacity: u64) -> DatanodeStatus {
        DatanodeStatus {
            id: DatanodeId(id),
            name: format!("dn{id}"),
            rack: String::new(),
            addr: "127.0.0.1:1".parse().unwrap(),
            alive: true,
            state: DatanodeState::Live,
            capacity,
            used,
            available: capacity - used,
            blocks: 0,
            last_heartbeat_ms: 0,
            active_transfers: 0,
            scrub: Default::default(),
            admin: AdminState::Normal,
        }
    }

    #[test]
    fn moves_go_from_the_fullest_to_the_emptiest_until_within_the_threshold() {
        let nodes = [
            status(1, 600, 1000),
            status(2, 700, 1000),
            status(3, 500, 1000),
            status(4, 0, 1000),
        ];
        let mut usage = Usage::new(&nodes, &HashMap::new(), 10.0);
        assert!((usage.average() - 0.45).abs() < 1e-9);
        assert!(!usage.balanced());
        assert_eq!(
            usage.next_pair(|_, _| false),
            Some((DatanodeId(2), DatanodeId(4)))
        );
        // Node 2 busy: the next fullest gives.
        assert_eq!(
            usage.next_pair(|s, _| s == DatanodeId(2)),
            Some((DatanodeId(1), DatanodeId(4)))
        );
        let mut moves = 0;
        while let Some((from, to)) = usage.next_pair(|_, _| false) {
            usage.moving(from, to, 10);
            moves += 1;
            assert!(moves < 1000, "moves never end");
        }
        assert!(usage.balanced());
        // Node 4 reached 35% (the average less the threshold), no more.
        assert_eq!(moves, 35);
    }

    #[test]
    fn datanodes_out_of_service_or_without_capacity_take_no_part() {
        let mut draining = status(3, 0, 1000);
        draining.admin = AdminState::Decommissioning;
        let mut stale = status(4, 0, 1000);
        stale.state = DatanodeState::Stale;
        let nodes = [status(1, 500, 1000), status(2, 500, 1000), draining, stale];
        let usage = Usage::new(&nodes, &HashMap::new(), 10.0);
        assert!(usage.balanced());
        assert_eq!(usage.next_pair(|_, _| false), None);
        assert!(Usage::new(&[status(1, 0, 0)], &HashMap::new(), 10.0).balanced());
    }
}
