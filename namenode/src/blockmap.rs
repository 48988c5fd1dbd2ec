//! Soft state: which datanodes are alive, how full they are, and which of them hold each
//! block. Datanodes rebuild it with their registrations and block reports after a namenode
//! restart, as in HDFS; only the list of datanodes seen is kept (see [`KnownDatanode`]), so
//! that one that died is still shown dead after a restart, not forgotten.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{
    AdminState, DatanodeAddr, DatanodeState, DatanodeStatus, Heartbeat, Register,
};
use cairn_common::{BlockId, DatanodeId, FsResult};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// What the namenode records of a datanode it has seen, to list it after a restart until it
/// registers again, is forgotten by an operator, or has been dead for
/// `forget_dead_datanode_secs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownDatanode {
    pub name: String,
    pub rack: String,
    pub addr: SocketAddr,
    pub capacity: u64,
    pub used: u64,
    /// When it was last heard from, in milliseconds since the Unix epoch.
    pub heard_ms: u64,
}

struct Datanode {
    name: String,
    /// Its failure domain ("" when none was given: all such are one).
    rack: String,
    addr: SocketAddr,
    capacity: u64,
    used: u64,
    available: u64,
    last_heartbeat: Instant,
    /// Known from before a restart and not registered since: dead, silent this long before
    /// `last_heartbeat` (the restart).
    restored: Option<Duration>,
    active_transfers: u32,
    scrub: cairn_common::proto::ScrubProgress,
    admin: AdminState,
    blocks: HashSet<BlockId>,
    /// Blocks of a full report still being received.
    report: Option<HashSet<BlockId>>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<DatanodeId, Datanode>,
    /// Operators' states recorded before a restart, for datanodes yet to register.
    remembered_admin: HashMap<DatanodeId, AdminState>,
    replicas: HashMap<BlockId, Vec<DatanodeId>>,
}

pub struct BlockMap {
    stale_timeout: Duration,
    dead_timeout: Duration,
    inner: Mutex<Inner>,
    /// Woken whenever a datanode reports new replicas.
    added: tokio::sync::Notify,
}

impl BlockMap {
    /// A datanode silent for `dead_timeout` is dead; for a third of that, stale.
    pub fn new(dead_timeout: Duration) -> BlockMap {
        BlockMap {
            stale_timeout: dead_timeout / 3,
            dead_timeout,
            inner: Mutex::default(),
            added: tokio::sync::Notify::new(),
        }
    }

    /// Silent this long (less than the dead timeout), a datanode is stale.
    pub fn with_stale_timeout(mut self, stale: Duration) -> BlockMap {
        self.stale_timeout = stale.min(self.dead_timeout);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a datanode's registration. A datanode registering again keeps its replicas
    /// until its next full report replaces them.
    pub fn register(&self, r: &Register) {
        let mut inner = self.lock();
        let admin = inner
            .remembered_admin
            .get(&r.id)
            .copied()
            .unwrap_or_default();
        let node = inner.nodes.entry(r.id).or_insert_with(|| Datanode {
            name: r.name.clone(),
            rack: r.rack.clone(),
            addr: r.addr,
            capacity: 0,
            used: 0,
            available: 0,
            last_heartbeat: Instant::now(),
            restored: None,
            active_transfers: 0,
            scrub: Default::default(),
            admin,
            blocks: HashSet::new(),
            report: None,
        });
        node.restored = None;
        node.name = r.name.clone();
        node.rack = r.rack.clone();
        node.addr = r.addr;
        node.capacity = r.capacity;
        node.used = r.used;
        node.available = r.available;
        node.last_heartbeat = Instant::now();
    }

    /// Updates a datanode's figures; false when the datanode is unknown (it must register).
    pub fn heartbeat(&self, h: &Heartbeat) -> bool {
        let mut inner = self.lock();
        match inner.nodes.get_mut(&h.id) {
            Some(node) if node.restored.is_none() => {
                node.capacity = h.capacity;
                node.used = h.used;
                node.available = h.available;
                node.last_heartbeat = Instant::now();
                node.active_transfers = h.active_transfers;
                node.scrub = h.scrub;
                true
            }
            _ => false,
        }
    }

    /// Takes one part of a full block report; the last part replaces the node's replicas.
    pub fn block_report(
        &self,
        id: DatanodeId,
        blocks: &[BlockId],
        first: bool,
        last: bool,
    ) -> bool {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(&id).filter(|n| n.restored.is_none()) else {
            return false;
        };
        if first || node.report.is_none() {
            node.report = Some(HashSet::new());
        }
        if let Some(report) = node.report.as_mut() {
            report.extend(blocks.iter().copied());
        }
        if !last {
            return true;
        }
        let reported = node.report.take().unwrap_or_default();
        let old = std::mem::replace(&mut node.blocks, reported.clone());
        for gone in old.difference(&reported) {
            remove_replica(&mut inner.replicas, gone, id);
        }
        for new in reported.difference(&old) {
            add_replica(&mut inner.replicas, *new, id);
        }
        true
    }

    /// An incremental report: blocks stored or removed since the last one.
    pub fn blocks_changed(&self, id: DatanodeId, added: &[BlockId], removed: &[BlockId]) -> bool {
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(&id).filter(|n| n.restored.is_none()) else {
            return false;
        };
        for b in added {
            node.blocks.insert(*b);
        }
        for b in removed {
            node.blocks.remove(b);
        }
        for b in added {
            add_replica(&mut inner.replicas, *b, id);
        }
        for b in removed {
            remove_replica(&mut inner.replicas, b, id);
        }
        drop(inner);
        if !added.is_empty() {
            self.added.notify_waiters();
        }
        true
    }

    /// Waits until no block `missing` names is missing any more, or `deadline`; returns the
    /// first still missing then.
    pub async fn await_reported(
        &self,
        deadline: tokio::time::Instant,
        missing: impl Fn() -> FsResult<Option<BlockId>>,
    ) -> FsResult<Option<BlockId>> {
        loop {
            // Registered before looking, so a report in between is not missed.
            let added = self.added.notified();
            let Some(block) = missing()? else {
                return Ok(None);
            };
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return Ok(Some(block));
            }
        }
    }

    /// Does datanode `id` hold `block`, as far as its reports say?
    pub fn holds(&self, id: DatanodeId, block: &BlockId) -> bool {
        self.lock()
            .nodes
            .get(&id)
            .is_some_and(|n| n.blocks.contains(block))
    }

    /// Up to `limit` blocks datanode `id` holds that `wanted` accepts.
    pub fn blocks_held(
        &self,
        id: DatanodeId,
        limit: usize,
        wanted: impl Fn(&BlockId) -> bool,
    ) -> Vec<BlockId> {
        self.lock().nodes.get(&id).map_or_else(Vec::new, |n| {
            n.blocks
                .iter()
                .filter(|b| wanted(b))
                .take(limit)
                .copied()
                .collect()
        })
    }

    /// How many failure domains (racks) `ids` span.
    pub fn domains(&self, ids: &[DatanodeId]) -> usize {
        let inner = self.lock();
        ids.iter()
            .filter_map(|id| inner.nodes.get(id).map(|n| n.rack.as_str()))
            .collect::<HashSet<_>>()
            .len()
    }

    /// How many failure domains have a live datanode in normal service.
    pub fn live_domains(&self) -> usize {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .nodes
            .values()
            .filter(|n| self.state(n, now) == DatanodeState::Live && n.admin == AdminState::Normal)
            .map(|n| n.rack.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Would moving `block`'s replica from `from` to `to` leave it in as many failure
    /// domains as before?
    pub fn keeps_domains(&self, block: &BlockId, from: DatanodeId, to: DatanodeId) -> bool {
        let inner = self.lock();
        let rack = |id: &DatanodeId| inner.nodes.get(id).map(|n| n.rack.as_str());
        let holders = inner.replicas.get(block).cloned().unwrap_or_default();
        let before: HashSet<_> = holders.iter().filter_map(rack).collect();
        let after: HashSet<_> = holders
            .iter()
            .filter(|h| **h != from)
            .chain(std::iter::once(&to))
            .filter_map(rack)
            .collect();
        after.len() >= before.len()
    }

    /// Of `holders`, the ones whose replica can go without the block leaving a failure
    /// domain (another holder shares it); all of them when none shares.
    pub fn spare_holders(&self, holders: &[DatanodeId]) -> Vec<DatanodeId> {
        let inner = self.lock();
        let rack = |id: &DatanodeId| inner.nodes.get(id).map(|n| n.rack.clone());
        let shared: Vec<DatanodeId> = holders
            .iter()
            .filter(|h| {
                let r = rack(h);
                holders.iter().any(|o| o != *h && rack(o) == r)
            })
            .copied()
            .collect();
        if shared.is_empty() {
            holders.to_vec()
        } else {
            shared
        }
    }

    /// Every block some datanode that is not dead holds.
    pub fn held_blocks(&self) -> Vec<BlockId> {
        let inner = self.lock();
        let now = Instant::now();
        let alive: HashSet<DatanodeId> = inner
            .nodes
            .iter()
            .filter(|(_, n)| self.alive(n, now))
            .map(|(id, _)| *id)
            .collect();
        inner
            .replicas
            .iter()
            .filter(|(_, at)| at.iter().any(|id| alive.contains(id)))
            .map(|(b, _)| *b)
            .collect()
    }

    /// Forgets one replica, reported bad by a reader.
    pub fn drop_replica(&self, block: &BlockId, id: DatanodeId) {
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get_mut(&id) {
            node.blocks.remove(block);
        }
        remove_replica(&mut inner.replicas, block, id);
    }

    fn alive(&self, node: &Datanode, now: Instant) -> bool {
        node.restored.is_none() && now.duration_since(node.last_heartbeat) < self.dead_timeout
    }

    fn state(&self, node: &Datanode, now: Instant) -> DatanodeState {
        let silent = now.duration_since(node.last_heartbeat);
        if node.restored.is_some() || silent >= self.dead_timeout {
            DatanodeState::Dead
        } else if silent >= self.stale_timeout {
            DatanodeState::Stale
        } else {
            DatanodeState::Live
        }
    }

    /// Datanodes in normal service that have missed heartbeats but are not yet dead: likely
    /// gone, so not to be counted on as the source of a copy.
    pub fn silent(&self) -> HashSet<DatanodeId> {
        self.ids_where(|n, now| {
            n.admin == AdminState::Normal && self.state(n, now) == DatanodeState::Stale
        })
    }

    /// The datanodes for which `keep(node, now)` holds.
    fn ids_where<C: FromIterator<DatanodeId>>(
        &self,
        keep: impl Fn(&Datanode, Instant) -> bool,
    ) -> C {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .nodes
            .iter()
            .filter(|(_, n)| keep(n, now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many datanodes can take replicas: alive and in normal service.
    pub fn live_nodes(&self) -> usize {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .nodes
            .values()
            .filter(|n| self.alive(n, now) && n.admin == AdminState::Normal)
            .count()
    }

    /// The replicas of `block` that count toward its replication: on live datanodes in
    /// normal service, and on datanodes in maintenance even while they are away. Those on
    /// decommissioning (or decommissioned) datanodes do not count.
    pub fn counted(&self, block: &BlockId) -> Vec<DatanodeId> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .replicas
            .get(block)
            .into_iter()
            .flatten()
            .filter(|id| {
                inner.nodes.get(id).is_some_and(|n| match n.admin {
                    AdminState::Maintenance => true,
                    AdminState::Normal => self.alive(n, now),
                    AdminState::Decommissioning | AdminState::Decommissioned => false,
                })
            })
            .copied()
            .collect()
    }

    /// The datanode named `node` (its name, address or id).
    /// The name datanode `id` registered with (its certificate's), if it is known.
    pub fn name_of(&self, id: DatanodeId) -> Option<String> {
        self.lock().nodes.get(&id).map(|n| n.name.clone())
    }

    pub fn find(&self, node: &str) -> Option<DatanodeId> {
        self.lock()
            .nodes
            .iter()
            .find(|(id, n)| n.name == node || n.addr.to_string() == node || id.to_string() == node)
            .map(|(id, _)| *id)
    }

    /// The datanodes recorded before a restart, listed dead until they register.
    pub fn restore_known(&self, known: Vec<(DatanodeId, KnownDatanode)>) {
        let mut inner = self.lock();
        let now = Instant::now();
        let now_ms = unix_ms();
        for (id, k) in known {
            let admin = inner.remembered_admin.get(&id).copied().unwrap_or_default();
            inner.nodes.entry(id).or_insert_with(|| Datanode {
                name: k.name,
                rack: k.rack,
                addr: k.addr,
                capacity: k.capacity,
                used: k.used,
                available: 0,
                last_heartbeat: now,
                restored: Some(Duration::from_millis(now_ms.saturating_sub(k.heard_ms))),
                active_transfers: 0,
                scrub: Default::default(),
                admin,
                blocks: HashSet::new(),
                report: None,
            });
        }
    }

    /// What to record of the datanodes heard from since the restart (`only`: just that one).
    pub fn known(&self, only: Option<DatanodeId>) -> Vec<(DatanodeId, KnownDatanode)> {
        let inner = self.lock();
        let now = Instant::now();
        let now_ms = unix_ms();
        inner
            .nodes
            .iter()
            .filter(|(id, n)| n.restored.is_none() && only.is_none_or(|o| o == **id))
            .map(|(id, n)| {
                let silent = now.duration_since(n.last_heartbeat).as_millis() as u64;
                let known = KnownDatanode {
                    name: n.name.clone(),
                    rack: n.rack.clone(),
                    addr: n.addr,
                    capacity: n.capacity,
                    used: n.used,
                    heard_ms: now_ms.saturating_sub(silent),
                };
                (*id, known)
            })
            .collect()
    }

    /// Datanodes dead for at least `after`.
    pub fn dead_for(&self, after: Duration) -> Vec<DatanodeId> {
        self.ids_where(|n, now| {
            let silent = now.duration_since(n.last_heartbeat) + n.restored.unwrap_or_default();
            self.state(n, now) == DatanodeState::Dead && silent >= after.max(self.dead_timeout)
        })
    }

    /// Drops a datanode and the replicas it was said to hold; its status as it was.
    pub fn forget(&self, id: DatanodeId) -> Option<DatanodeStatus> {
        let status = self.status_of(id)?;
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.remove(&id) {
            for b in &node.blocks {
                remove_replica(&mut inner.replicas, b, id);
            }
        }
        inner.remembered_admin.remove(&id);
        Some(status)
    }

    /// Operators' states recorded before a restart: applied as the datanodes register.
    pub fn restore_admin(&self, states: Vec<(DatanodeId, AdminState)>) {
        let mut inner = self.lock();
        for (id, state) in states {
            inner.remembered_admin.insert(id, state);
            if let Some(n) = inner.nodes.get_mut(&id) {
                n.admin = state;
            }
        }
    }

    pub fn set_admin_of(&self, id: DatanodeId, state: AdminState) {
        let mut inner = self.lock();
        inner.remembered_admin.insert(id, state);
        if let Some(n) = inner.nodes.get_mut(&id) {
            n.admin = state;
        }
    }

    pub fn is_normal(&self, id: DatanodeId) -> bool {
        self.lock()
            .nodes
            .get(&id)
            .is_some_and(|n| n.admin == AdminState::Normal)
    }

    /// The status of one datanode.
    pub fn status_of(&self, id: DatanodeId) -> Option<DatanodeStatus> {
        self.statuses().into_iter().find(|s| s.id == id)
    }

    /// Datanodes being decommissioned, with the blocks they hold.
    pub fn decommissioning(&self) -> Vec<(DatanodeId, Vec<BlockId>)> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, n)| n.admin == AdminState::Decommissioning)
            .map(|(id, n)| (*id, n.blocks.iter().copied().collect()))
            .collect()
    }

    /// Live replicas of `block` (stale ones count): those on live nodes first, then by most
    /// free space.
    pub fn locations(&self, block: &BlockId) -> Vec<DatanodeAddr> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out: Vec<(bool, u64, DatanodeAddr)> = inner
            .replicas
            .get(block)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let node = inner.nodes.get(id)?;
                let state = self.state(node, now);
                // Stale and draining nodes are read from last.
                let last = state == DatanodeState::Stale || node.admin != AdminState::Normal;
                (state != DatanodeState::Dead).then_some((
                    last,
                    node.available,
                    DatanodeAddr {
                        id: *id,
                        addr: node.addr,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(stale, available, _)| (*stale, std::cmp::Reverse(*available)));
        out.into_iter().map(|(_, _, a)| a).collect()
    }

    /// Chooses up to `count` distinct live datanodes with room for `len` bytes, none of them
    /// in `exclude`, each in a failure domain (rack) that neither `holders` (the block's
    /// replicas so far) nor the others chosen are in, as long as such domains have room.
    /// Within that, nodes are drawn at random, weighted by free space, so new blocks spread
    /// over the cluster and emptier nodes fill faster.
    /// The space is counted as taken until the next heartbeat.
    pub fn place(
        &self,
        count: usize,
        len: u64,
        exclude: &[DatanodeId],
        holders: &[DatanodeId],
    ) -> Vec<DatanodeAddr> {
        self.choose(count, len, exclude, holders, true)
    }

    /// Chooses as [`BlockMap::place`] does, taking no space: for an offer that a placement
    /// which does take it follows (`CreateReply::place`), or not at all.
    pub fn offer(&self, count: usize, len: u64) -> Vec<DatanodeAddr> {
        self.choose(count, len, &[], &[], false)
    }

    fn choose(
        &self,
        count: usize,
        len: u64,
        exclude: &[DatanodeId],
        holders: &[DatanodeId],
        take: bool,
    ) -> Vec<DatanodeAddr> {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut taken: HashSet<String> = holders
            .iter()
            .filter_map(|id| inner.nodes.get(id).map(|n| n.rack.clone()))
            .collect();
        let mut candidates: Vec<(DatanodeId, u64, String)> = inner
            .nodes
            .iter()
            .filter(|(id, n)| {
                !exclude.contains(id)
                    && !holders.contains(id)
                    && self.state(n, now) == DatanodeState::Live
                    && n.admin == AdminState::Normal
                    && n.available >= len.max(1)
            })
            .map(|(id, n)| (*id, n.available, n.rack.clone()))
            .collect();
        let mut rng = rand::thread_rng();
        let mut chosen = Vec::new();
        while chosen.len() < count && !candidates.is_empty() {
            // Only nodes in a domain no replica is in yet, if there are any.
            let fresh = candidates.iter().any(|(_, _, r)| !taken.contains(r));
            let eligible = |r: &String| !fresh || !taken.contains(r);
            let total: u128 = candidates
                .iter()
                .filter(|(_, _, r)| eligible(r))
                .map(|(_, a, _)| *a as u128)
                .sum();
            let mut pick = rng.gen_range(0..total.max(1));
            let mut index = candidates
                .iter()
                .position(|(_, _, r)| eligible(r))
                .unwrap_or(0);
            for (i, (_, a, r)) in candidates.iter().enumerate() {
                if !eligible(r) {
                    continue;
                }
                if pick < *a as u128 {
                    index = i;
                    break;
                }
                pick -= *a as u128;
            }
            taken.insert(candidates[index].2.clone());
            chosen.push(candidates.swap_remove(index).0);
        }
        chosen
            .into_iter()
            .filter_map(|id| {
                let node = inner.nodes.get_mut(&id)?;
                if take {
                    node.available = node.available.saturating_sub(len);
                }
                Some(DatanodeAddr {
                    id,
                    addr: node.addr,
                })
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<DatanodeStatus> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out: Vec<DatanodeStatus> = inner
            .nodes
            .iter()
            // One alive when the namenode stopped is not listed until it registers, or
            // until it would have been dead had the namenode run on.
            .filter(|(_, n)| {
                n.restored.is_none_or(|before| {
                    before + now.duration_since(n.last_heartbeat) >= self.dead_timeout
                })
            })
            .map(|(id, n)| DatanodeStatus {
                id: *id,
                name: n.name.clone(),
                rack: n.rack.clone(),
                addr: n.addr,
                alive: self.alive(n, now),
                state: self.state(n, now),
                active_transfers: n.active_transfers,
                scrub: n.scrub,
                admin: n.admin,
                capacity: n.capacity,
                used: n.used,
                available: n.available,
                blocks: n.blocks.len() as u64,
                last_heartbeat_ms: (now.duration_since(n.last_heartbeat)
                    + n.restored.unwrap_or_default())
                .as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn add_replica(replicas: &mut HashMap<BlockId, Vec<DatanodeId>>, block: BlockId, id: DatanodeId) {
    let holders = replicas.entry(block).or_default();
    if !holders.contains(&id) {
        holders.push(id);
    }
}

fn remove_replica(
    replicas: &mut HashMap<BlockId, Vec<DatanodeId>>,
    block: &BlockId,
    id: DatanodeId,
) {
    if let Some(holders) = replicas.get_mut(block) {
        holders.retain(|h| *h != id);
        if holders.is_empty() {
            replicas.remove(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(map: &BlockMap, id: u64, available: u64) {
        register_in(map, id, available, "");
    }

    fn register_in(map: &BlockMap, id: u64, available: u64, rack: &str) {
        map.register(&Register {
            id: DatanodeId(id),
            cluster: None,
            name: format!("dn{id}"),
            rack: rack.into(),
            addr: format!("127.0.0.1:{}", 1000 + id).parse().unwrap(),
            capacity: available,
            used: 0,
            available,
        });
    }

    #[tokio::test]
    async fn a_wait_for_reports_ends_with_the_report_or_the_deadline() {
        let map = std::sync::Arc::new(BlockMap::new(Duration::from_secs(60)));
        register(&map, 1, 100 << 20);
        let block = BlockId::of(b"reported late");
        let missing = |map: &BlockMap| map.locations(&block).is_empty().then_some(block);
        let reporter = {
            let map = map.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(map.blocks_changed(DatanodeId(1), &[block], &[]));
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let waited = map.await_reported(deadline, || Ok(missing(&map))).await;
        assert_eq!(waited.unwrap(), None, "the report ends the wait");
        reporter.await.unwrap();

        let never = BlockId::of(b"never reported");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let still = || Ok(map.locations(&never).is_empty().then_some(never));
        assert_eq!(
            map.await_reported(deadline, still).await.unwrap(),
            Some(never)
        );
    }

    #[test]
    fn an_offer_takes_no_space_and_a_placement_does() {
        let map = BlockMap::new(Duration::from_secs(60));
        register(&map, 1, 4 << 20);
        for _ in 0..10 {
            assert_eq!(map.offer(1, 1 << 20).len(), 1);
        }
        for _ in 0..4 {
            assert_eq!(map.place(1, 1 << 20, &[], &[]).len(), 1);
        }
        assert!(
            map.offer(1, 1 << 20).is_empty(),
            "four placements took the room"
        );
    }

    #[test]
    fn placement_picks_distinct_nodes_with_room() {
        let map = BlockMap::new(Duration::from_secs(60));
        register(&map, 1, 100 << 20);
        register(&map, 2, 100 << 20);
        register(&map, 3, 1 << 10);
        let chosen = map.place(3, 4 << 20, &[], &[]);
        assert_eq!(chosen.len(), 2, "the full node is skipped");
        assert_ne!(chosen[0].id, chosen[1].id);
        assert!(map
            .place(3, 4 << 20, &[DatanodeId(1), DatanodeId(2)], &[])
            .is_empty());
    }

    #[test]
    fn replicas_go_to_distinct_racks_while_there_are_any() {
        let map = BlockMap::new(Duration::from_secs(60));
        // Rack a has most of the space: without racks it would get most replicas.
        register_in(&map, 1, 100 << 30, "a");
        register_in(&map, 2, 100 << 30, "a");
        register_in(&map, 3, 1 << 30, "b");
        register_in(&map, 4, 1 << 30, "c");
        let rack = |id: DatanodeId| {
            if id.0 <= 2 {
                "a"
            } else if id.0 == 3 {
                "b"
            } else {
                "c"
            }
        };
        for _ in 0..50 {
            let chosen = map.place(3, 4 << 20, &[], &[]);
            let racks: HashSet<&str> = chosen.iter().map(|c| rack(c.id)).collect();
            assert_eq!(racks.len(), 3, "{chosen:?}");
            // One more for a block on racks a and b: c.
            let more = map.place(1, 4 << 20, &[], &[DatanodeId(1), DatanodeId(3)]);
            assert_eq!(more[0].id, DatanodeId(4));
        }
        // Four replicas on three racks: one rack takes two.
        assert_eq!(map.place(4, 4 << 20, &[], &[]).len(), 4);
        let ids: Vec<DatanodeId> = (1..=4).map(DatanodeId).collect();
        assert_eq!(map.domains(&ids), 3);
        assert_eq!(map.live_domains(), 3);
        assert_eq!(
            map.spare_holders(&[DatanodeId(1), DatanodeId(2), DatanodeId(3)]),
            vec![DatanodeId(1), DatanodeId(2)]
        );
        let block = BlockId([5; 32]);
        map.blocks_changed(DatanodeId(1), &[block], &[]);
        map.blocks_changed(DatanodeId(3), &[block], &[]);
        assert!(map.keeps_domains(&block, DatanodeId(1), DatanodeId(2)));
        assert!(!map.keeps_domains(&block, DatanodeId(1), DatanodeId(3)));
    }

    #[test]
    fn full_report_replaces_replicas() {
        let map = BlockMap::new(Duration::from_secs(60));
        register(&map, 1, 1 << 30);
        let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
        map.blocks_changed(DatanodeId(1), &[a], &[]);
        assert_eq!(map.locations(&a).len(), 1);
        map.block_report(DatanodeId(1), &[b], true, false);
        map.block_report(DatanodeId(1), &[], false, true);
        assert!(map.locations(&a).is_empty());
        assert_eq!(map.locations(&b)[0].id, DatanodeId(1));
    }

    #[test]
    fn datanodes_seen_before_a_restart_are_listed_dead_until_they_register() {
        let before = BlockMap::new(Duration::from_secs(60));
        register(&before, 1, 1 << 30);
        let mut known = before.known(None);
        assert_eq!(known.len(), 1);
        // A second one, silent for an hour when the namenode stopped.
        let mut gone = known[0].1.clone();
        gone.name = "dn2".into();
        gone.heard_ms -= 3_600_000;
        known.push((DatanodeId(2), gone));

        let after = BlockMap::new(Duration::from_secs(60));
        after.restore_known(known);
        let listed = after.statuses();
        assert_eq!(
            listed.len(),
            1,
            "one alive at the stop waits for its dead timeout"
        );
        assert_eq!(listed[0].name, "dn2");
        assert_eq!(listed[0].state, DatanodeState::Dead);
        assert!(!listed[0].alive);
        assert!(listed[0].last_heartbeat_ms >= 3_600_000);
        assert!(
            after.place(1, 1, &[], &[]).is_empty(),
            "nothing placed on them"
        );
        assert_eq!(
            after.dead_for(Duration::from_secs(1800)),
            vec![DatanodeId(2)]
        );
        assert!(
            !after.heartbeat(&Heartbeat {
                id: DatanodeId(2),
                capacity: 1 << 30,
                used: 0,
                available: 1 << 30,
                blocks: 0,
                active_transfers: 0,
                copies_failed: Vec::new(),
                scrub: Default::default(),
            }),
            "a heartbeat does not stand for a registration"
        );

        register(&after, 2, 1 << 30);
        assert!(after.status_of(DatanodeId(2)).unwrap().alive);
        assert!(after.dead_for(Duration::ZERO).is_empty());
        assert_eq!(after.forget(DatanodeId(2)).unwrap().name, "dn2");
        assert!(after.status_of(DatanodeId(2)).is_none());
        assert!(after.known(None).is_empty(), "dn1 has not registered since");
    }
}
