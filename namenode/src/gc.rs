//! Garbage collection of blocks nothing references: those whose last slice went (a file
//! removed or overwritten) and those uploaded by a client that never committed them.
//!
//! Two phases. **Mark**: every repair pass lists the unreferenced blocks; each becomes a
//! candidate, timed from when it was first seen so. Uploads a live client has not committed
//! yet are not candidates: clients name them in their `KeepOpen` renewals, and allocating a
//! block (deduplication may reuse an unreferenced one) restarts its time. **Sweep**: a
//! candidate unreferenced for the whole grace period is condemned by the metadata writer,
//! which deletes its record and writes a tombstone (`gc/<block>`) in one write, and only
//! once the metadata log is synced past it do datanodes get orders to delete it.
//!
//! While condemned, a block cannot come back: allocating it is refused as busy (the client
//! retries once the deletion is over) and so is committing a slice of it. The tombstone goes
//! when no live datanode holds the block. A datanode that was unreachable meanwhile keeps
//! its copy and reports it when it returns; because a block id is the hash of its bytes
//! that copy is never stale: it counts as a replica if the block is referenced again by
//! then, and is a candidate like any other otherwise. Delete orders are drawn from the
//! condemned set at each heartbeat, never queued, so no order outlives its tombstone.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::RepairStatus;
use cairn_common::{BlockId, DatanodeId, FsError, FsResult};

/// A delete order not seen done within this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(30);
/// Most blocks one datanode is told to delete per heartbeat.
const DELETES_PER_HEARTBEAT: usize = 1024;

#[derive(Default)]
struct Inner {
    /// Unreferenced blocks, since when.
    candidates: HashMap<BlockId, Instant>,
    /// Blocks being uploaded, by client session: (last renewal, blocks).
    uploads: HashMap<u64, (Instant, HashSet<BlockId>)>,
    /// Condemned blocks, with when each datanode was last told to delete it.
    condemned: HashMap<BlockId, HashMap<DatanodeId, Instant>>,
    /// Blocks condemned since the start, for the status.
    collected: u64,
    /// Blocks whose records count no reference although a chunk map names them (a
    /// corrupt count): never candidates again in this run.
    spared: HashSet<BlockId>,
    /// When the last count of references from the chunk maps ended, and how long it took.
    recounted: Option<(Instant, Duration)>,
}

pub struct Gc {
    grace: Duration,
    /// A session whose uploads were not renewed for this long is gone.
    lease: Duration,
    inner: Mutex<Inner>,
}

impl Gc {
    pub fn new(grace: Duration, lease: Duration) -> Gc {
        Gc {
            grace,
            lease,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tombstones found at the start: their deletion goes on.
    pub fn restore(&self, condemned: impl IntoIterator<Item = BlockId>) {
        let mut inner = self.inner();
        for block in condemned {
            inner.condemned.entry(block).or_default();
        }
    }

    /// A client is about to store (or reuse) `block`: it is no candidate for a grace period
    /// from now. Refused while the block is being deleted.
    pub fn allocating(&self, block: &BlockId) -> FsResult<()> {
        let mut inner = self.inner();
        if inner.condemned.contains_key(block) {
            return Err(FsError::Busy(format!(
                "block {block} is being deleted as garbage; store it again once that is done"
            )));
        }
        inner.candidates.remove(block);
        Ok(())
    }

    /// `session`'s renewal: the blocks it has uploaded and not yet committed.
    pub fn uploading(&self, session: u64, blocks: &[BlockId]) {
        let mut inner = self.inner();
        let now = Instant::now();
        for b in blocks {
            inner.candidates.remove(b);
        }
        if blocks.is_empty() {
            inner.uploads.remove(&session);
        } else {
            inner
                .uploads
                .insert(session, (now, blocks.iter().copied().collect()));
        }
    }

    /// Is `block` condemned? A slice of it cannot be committed.
    pub fn is_condemned(&self, block: &BlockId) -> bool {
        self.inner().condemned.contains_key(block)
    }

    /// The mark phase: `unreferenced` is every block without a reference as of now. Returns
    /// the candidates that have waited out the grace period, for the writer to condemn.
    pub fn mark(&self, unreferenced: impl IntoIterator<Item = BlockId>) -> Vec<BlockId> {
        let mut inner = self.inner();
        let now = Instant::now();
        let lease = self.lease;
        inner
            .uploads
            .retain(|_, (renewed, _)| now.duration_since(*renewed) < lease);
        let uploading: HashSet<BlockId> = inner
            .uploads
            .values()
            .flat_map(|(_, blocks)| blocks.iter().copied())
            .collect();
        let mut next = HashMap::new();
        for block in unreferenced {
            if uploading.contains(&block)
                || inner.condemned.contains_key(&block)
                || inner.spared.contains(&block)
            {
                continue;
            }
            let since = inner.candidates.get(&block).copied().unwrap_or(now);
            next.insert(block, since);
        }
        inner.candidates = next;
        inner
            .candidates
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.grace)
            .map(|(block, _)| *block)
            .collect()
    }

    /// In the metadata writer, with the block's record seen unreferenced: condemns `block`
    /// if it is still a candidate past its grace. From here on it cannot be allocated or
    /// committed; [`Gc::abandon`] undoes this if the write does not happen.
    pub fn begin_collect(&self, block: &BlockId) -> bool {
        let mut inner = self.inner();
        let due = inner
            .candidates
            .get(block)
            .is_some_and(|since| since.elapsed() >= self.grace);
        if !due {
            return false;
        }
        inner.candidates.remove(block);
        inner.condemned.insert(*block, HashMap::new());
        inner.collected += 1;
        true
    }

    /// May the candidates due be counted again from the chunk maps now? A count reads
    /// every chunk map, so counts take at most a tenth of the time.
    pub fn recount_due(&self) -> bool {
        self.inner()
            .recounted
            .is_none_or(|(ended, took)| ended.elapsed() >= took * 10)
    }

    /// A count of references from the chunk maps took `took`; it found `named` among the
    /// candidates due, whose records count no reference: they are kept.
    pub fn recounted(&self, took: Duration, named: &HashSet<BlockId>) {
        let mut inner = self.inner();
        inner.recounted = Some((Instant::now(), took));
        for block in named {
            inner.candidates.remove(block);
            inner.spared.insert(*block);
        }
    }

    /// The tombstones of `blocks` were not written after all.
    pub fn abandon(&self, blocks: &[BlockId]) {
        let mut inner = self.inner();
        for b in blocks {
            if inner.condemned.remove(b).is_some() {
                inner.collected = inner.collected.saturating_sub(1);
            }
        }
    }

    /// Delete orders for `node`: the condemned blocks `holds` says it has, not ordered
    /// within [`RESEND_AFTER`].
    pub fn orders_for(&self, node: DatanodeId, holds: impl Fn(&BlockId) -> bool) -> Vec<BlockId> {
        let mut inner = self.inner();
        let now = Instant::now();
        let mut orders = Vec::new();
        for (block, sent) in inner.condemned.iter_mut() {
            if orders.len() >= DELETES_PER_HEARTBEAT {
                break;
            }
            let due = sent
                .get(&node)
                .is_none_or(|at| now.duration_since(*at) >= RESEND_AFTER);
            if due && holds(block) {
                sent.insert(node, now);
                orders.push(*block);
            }
        }
        orders
    }

    /// The condemned blocks no live datanode holds any more: their tombstones can go.
    pub fn deleted(&self, held: impl Fn(&BlockId) -> bool) -> Vec<BlockId> {
        self.inner()
            .condemned
            .keys()
            .filter(|b| !held(b))
            .copied()
            .collect()
    }

    /// The tombstones of `blocks` are gone: the blocks may be stored again.
    pub fn forget(&self, blocks: &[BlockId]) {
        let mut inner = self.inner();
        for b in blocks {
            inner.condemned.remove(b);
        }
    }

    /// Adds what garbage collection is doing to `status`.
    pub fn report(&self, status: &mut RepairStatus) {
        let inner = self.inner();
        status.garbage_waiting = inner.candidates.len() as u64;
        status.garbage_deleting = inner.condemned.len() as u64;
        status.garbage_collected = inner.collected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u8) -> BlockId {
        BlockId::of(&[n])
    }

    #[test]
    fn a_candidate_is_condemned_only_after_the_grace_period() {
        let gc = Gc::new(Duration::from_millis(50), Duration::from_secs(30));
        assert!(gc.mark([block(1)]).is_empty());
        assert!(!gc.begin_collect(&block(1)), "still within its grace");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(gc.mark([block(1)]), vec![block(1)]);
        assert!(gc.begin_collect(&block(1)));
        assert!(gc.is_condemned(&block(1)));
        assert!(!gc.begin_collect(&block(1)), "condemned once");
    }

    #[test]
    fn a_block_a_chunk_map_names_is_spared_and_counts_are_paced() {
        let gc = Gc::new(Duration::ZERO, Duration::from_secs(30));
        assert!(gc.recount_due(), "the first count is due at once");
        assert_eq!(gc.mark([block(1), block(2)]).len(), 2);
        let named = HashSet::from([block(1)]);
        gc.recounted(Duration::from_secs(60), &named);
        assert_eq!(gc.mark([block(1), block(2)]), vec![block(2)]);
        assert!(!gc.begin_collect(&block(1)), "spared");
        assert!(!gc.recount_due(), "a count that took a minute waits ten");
        gc.recounted(Duration::ZERO, &HashSet::new());
        assert!(gc.recount_due());
    }

    #[test]
    fn a_block_referenced_again_stops_being_a_candidate() {
        let gc = Gc::new(Duration::from_millis(20), Duration::from_secs(30));
        gc.mark([block(1)]);
        std::thread::sleep(Duration::from_millis(30));
        assert!(gc.mark([]).is_empty());
        assert!(!gc.begin_collect(&block(1)));
        // Unreferenced again: its time starts over.
        assert!(gc.mark([block(1)]).is_empty());
    }

    #[test]
    fn allocating_restarts_the_wait_and_is_refused_while_condemned() {
        let gc = Gc::new(Duration::from_millis(20), Duration::from_secs(30));
        gc.mark([block(1), block(2)]);
        std::thread::sleep(Duration::from_millis(30));
        gc.allocating(&block(1)).unwrap();
        assert_eq!(gc.mark([block(1), block(2)]), vec![block(2)]);
        assert!(!gc.begin_collect(&block(1)), "allocated within the grace");
        assert!(gc.begin_collect(&block(2)));
        assert!(matches!(gc.allocating(&block(2)), Err(FsError::Busy(_))));
        gc.forget(&[block(2)]);
        gc.allocating(&block(2)).unwrap();
    }

    #[test]
    fn uploads_of_a_live_session_are_kept_and_those_of_a_gone_one_are_not() {
        let gc = Gc::new(Duration::ZERO, Duration::from_millis(40));
        gc.uploading(7, &[block(1)]);
        assert_eq!(gc.mark([block(1), block(2)]), vec![block(2)]);
        std::thread::sleep(Duration::from_millis(50));
        // The session stopped renewing: its upload is garbage like any other.
        assert_eq!(gc.mark([block(1)]), vec![block(1)]);
    }

    #[test]
    fn deletes_are_ordered_to_holders_once_per_resend_period() {
        let gc = Gc::new(Duration::ZERO, Duration::from_secs(30));
        gc.mark([block(1), block(2)]);
        assert!(gc.begin_collect(&block(1)));
        let node = DatanodeId(3);
        assert!(gc.orders_for(node, |_| false).is_empty());
        assert_eq!(gc.orders_for(node, |_| true), vec![block(1)]);
        assert!(gc.orders_for(node, |_| true).is_empty(), "sent already");
        assert_eq!(gc.deleted(|_| true), Vec::<BlockId>::new());
        assert_eq!(gc.deleted(|_| false), vec![block(1)]);
        gc.abandon(&[block(1)]);
        assert!(!gc.is_condemned(&block(1)));
        let mut status = RepairStatus::default();
        gc.report(&mut status);
        assert_eq!(status.garbage_collected, 0);
    }
}
