//! Moving blocks: upload down a datanode pipeline until enough replicas hold the block,
//! download from the first replica that serves bytes matching the block's hash — a whole
//! block, or a range of it with its proof — and a cache keyed by hash (so it can never be
//! stale) of whole blocks and of the verified chunk groups of ranges.

use std::collections::{HashMap, HashSet};

use futures::future::{BoxFuture, FutureExt, Shared};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_common::cert::Role;
use cairn_common::layout::CHUNK_SIZE;
use cairn_common::proto::{
    AllocateBlock, DatanodeAddr, GetBlock, GetRange, GrantWrite, PutBlock, PutReply, ReadChunks,
    ReportBadReplica, Rpc, SyncBlocks, SyncReply, PLACED_BLOCK_MAX,
};
use cairn_common::token::{self, BlockToken};
use cairn_common::transport;
use cairn_common::verified::{self, GROUP_BYTES};
use cairn_common::{BlockId, DatanodeId, FsError, FsResult, Ino};
use lru::LruCache;
use tracing::{debug, warn};

use crate::Client;

/// Pipelines tried per block before giving up on full replication.
const MAX_PLACEMENT_ROUNDS: usize = 5;
/// How long a block short of its required replicas is tried again, for datanodes to come
/// back (see [`Client::upload_block`]).
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(15);

/// A block stored on fewer datanodes than required, and why.
struct Shortfall(FsError);
/// How long a write waits for the namenode to finish deleting a block it stores again (the
/// same bytes as garbage being collected): a few heartbeats normally.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// Largest written block kept in the cache for reading back.
const KEEP_WRITTEN_MAX: usize = 1 << 20;
/// Blocks up to this size are hashed on the task's own thread: handing them to the blocking
/// pool and back costs more than the hash.
const HASH_INLINE_MAX: usize = 128 << 10;
/// Blocks up to this size go to each of their datanodes at once rather than down a
/// pipeline: for them the pipeline's hops, each receiving the whole block before its
/// successor has it, are most of the time, and sending them several times costs little.
const FAN_OUT_MAX: usize = 1 << 20;
/// Chunks of a file's map asked for at a time when an fsync looks for blocks that moved.
const SYNC_MAP_CHUNKS: u32 = 16;
/// A block transfer that several readers may wait on.
pub type Transfer = Shared<BoxFuture<'static, FsResult<Bytes>>>;

/// How long a datanode that failed a write is left out of new pipelines.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// How long blocks stored without an fsync are remembered for one: the datanodes' kernels
/// write dirty pages back within half a minute by themselves.
const UNSYNCED_KEEP: Duration = Duration::from_secs(60);

/// The blocks this client stored without an fsync, by file, with where each is: an
/// `fsync()` of the file, through any handle, has them put on stable storage.
#[derive(Default)]
pub struct Unsynced {
    inner: Mutex<UnsyncedFiles>,
}

/// A file's blocks stored without an fsync: where each is, and since when.
type FileBlocks = HashMap<BlockId, (Instant, Vec<DatanodeAddr>)>;

#[derive(Default)]
struct UnsyncedFiles {
    files: HashMap<Ino, FileBlocks>,
    swept: Option<Instant>,
}

impl Unsynced {
    fn lock(&self) -> std::sync::MutexGuard<'_, UnsyncedFiles> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, ino: Ino, block: BlockId, on: Vec<DatanodeAddr>) {
        let mut u = self.lock();
        let now = Instant::now();
        if u.swept
            .is_none_or(|at| now.duration_since(at) > UNSYNCED_KEEP / 10)
        {
            for blocks in u.files.values_mut() {
                blocks.retain(|_, (at, _)| now.duration_since(*at) < UNSYNCED_KEEP);
            }
            u.files.retain(|_, blocks| !blocks.is_empty());
            u.swept = Some(now);
        }
        u.files.entry(ino).or_default().insert(block, (now, on));
    }

    /// The blocks of `ino` to sync; [`Unsynced::restore`] them if that fails.
    fn take(&self, ino: Ino) -> Option<FileBlocks> {
        self.lock().files.remove(&ino)
    }

    fn restore(&self, ino: Ino, taken: FileBlocks) {
        self.lock().files.entry(ino).or_default().extend(taken);
    }
}

/// What the datanodes asked to sync blocks answered: which of them has each block on stable
/// storage, and why those that did not answer failed.
#[derive(Default)]
struct Tally {
    synced: HashMap<BlockId, HashSet<DatanodeId>>,
    unreachable: HashSet<DatanodeId>,
    failed: Vec<String>,
}

impl Tally {
    fn synced_on(&self, block: &BlockId) -> usize {
        self.synced.get(block).map_or(0, HashSet::len)
    }

    /// Has `node` synced `block` already, or failed to answer at all?
    fn asked(&self, block: &BlockId, node: DatanodeId) -> bool {
        self.unreachable.contains(&node)
            || self.synced.get(block).is_some_and(|on| on.contains(&node))
    }
}

#[derive(Default)]
pub struct Suspects {
    inner: Mutex<HashMap<DatanodeId, Instant>>,
}

impl Suspects {
    fn add(&self, id: DatanodeId) {
        self.lock().insert(id, Instant::now());
    }

    fn current(&self) -> Vec<DatanodeId> {
        let mut inner = self.lock();
        inner.retain(|_, since| since.elapsed() < SUSPECT_FOR);
        inner.keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DatanodeId, Instant>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Verified bytes by block id: whole blocks, and the chunk groups of blocks read by range
/// (keyed by where each starts), sharing one budget, least recently used out first.
pub struct BlockCache {
    budget: u64,
    /// The entries, and the bytes they hold.
    inner: Mutex<(Entries, u64)>,
}

/// Cached bytes by block and the offset of their group ([`WHOLE`] for the whole block).
type Entries = LruCache<(BlockId, u32), Bytes>;

/// The key of a whole block in the cache (groups are keyed by their offset).
const WHOLE: u32 = u32::MAX;

impl BlockCache {
    pub fn new(budget: u64) -> BlockCache {
        BlockCache {
            budget,
            inner: Mutex::new((LruCache::unbounded(), 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Entries, u64)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.lock().0.get(&(*id, WHOLE)).cloned()
    }

    /// The bytes `[offset, offset + len)` of block `id`, if the whole block or every group
    /// they lie in is here.
    pub fn get_range(&self, id: &BlockId, offset: u64, len: u64) -> Option<Bytes> {
        let end = offset + len;
        let mut guard = self.lock();
        let lru = &mut guard.0;
        if let Some(whole) = lru.get(&(*id, WHOLE)) {
            let (from, to) = (offset as usize, end as usize);
            return whole.get(from..to).map(|_| whole.slice(from..to));
        }
        let first = offset / GROUP_BYTES * GROUP_BYTES;
        let group = lru.get(&(*id, first as u32))?.clone();
        if end <= first + group.len() as u64 {
            return Some(group.slice((offset - first) as usize..(end - first) as usize));
        }
        // Across groups: gathered.
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < end {
            let start = at / GROUP_BYTES * GROUP_BYTES;
            let group = lru.get(&(*id, start as u32))?;
            let upto = end.min(start + group.len() as u64);
            out.extend_from_slice(group.get((at - start) as usize..(upto - start) as usize)?);
            at = upto;
        }
        Some(Bytes::from(out))
    }

    pub fn insert(&self, id: BlockId, data: Bytes) {
        self.put((id, WHOLE), data);
    }

    /// Keeps the verified groups `data` of block `id`, the first starting at `start`.
    pub fn insert_groups(&self, id: BlockId, start: u64, data: &Bytes) {
        for (i, at) in (0..data.len()).step_by(GROUP_BYTES as usize).enumerate() {
            let to = (at + GROUP_BYTES as usize).min(data.len());
            let key = start + i as u64 * GROUP_BYTES;
            self.put((id, key as u32), data.slice(at..to));
        }
    }

    fn put(&self, key: (BlockId, u32), data: Bytes) {
        if data.len() as u64 > self.budget {
            return;
        }
        let mut guard = self.lock();
        let (lru, used) = &mut *guard;
        if let Some(old) = lru.put(key, data.clone()) {
            *used -= old.len() as u64;
        }
        *used += data.len() as u64;
        while *used > self.budget {
            match lru.pop_lru() {
                Some((_, evicted)) => *used -= evicted.len() as u64,
                None => break,
            }
        }
    }
}

/// Where a block's replicas are, best first, and the token that reads it there.
#[derive(Clone, Debug, Default)]
pub(crate) struct Source {
    pub at: Vec<DatanodeAddr>,
    pub token: Option<BlockToken>,
}

impl Source {
    /// Refuses, without asking a datanode, a read whose token has expired by this clock.
    fn unexpired(&self) -> FsResult<()> {
        match &self.token {
            Some(t) if t.expires < token::now() => {
                Err(FsError::Token("the token has expired".to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// The write token of this client, from the namenode, kept until it is about to expire.
#[derive(Default)]
pub(crate) struct WriteToken(tokio::sync::Mutex<Option<BlockToken>>);

impl Client {
    /// A write token for the datanodes: the one kept, or a new one when it is about to
    /// expire or `stale` (a datanode refused it).
    async fn write_token(&self, stale: Option<&BlockToken>) -> FsResult<BlockToken> {
        let mut kept = self.inner.write_token.0.lock().await;
        let fresh = |t: &BlockToken| t.expires > token::now() + 1 && Some(t) != stale;
        if let Some(t) = kept.as_ref().filter(|t| fresh(t)) {
            return Ok(t.clone());
        }
        let t = self.namenode(GrantWrite {}).await?;
        *kept = Some(t.clone());
        Ok(t)
    }

    /// `call` with the write token, and once more with a new one if a datanode refused it
    /// (it expired, or the namenode's keys changed).
    async fn with_write_token<T, F, Fut>(&self, call: F) -> FsResult<T>
    where
        F: Fn(BlockToken) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let token = self.write_token(None).await?;
        match call(token.clone()).await {
            Err(FsError::Token(why)) => {
                debug!("write token refused, asking for a new one: {why}");
                call(self.write_token(Some(&token)).await?).await
            }
            other => other,
        }
    }

    /// Asks where to store a block, waiting while the namenode deletes an earlier copy of
    /// the same bytes as garbage.
    /// One `AllocateBlock`. For a file whose create is still queued here it goes ahead of
    /// the queue, with the replication the namenode does not know yet.
    async fn allocate_once(
        &self,
        mut request: AllocateBlock,
    ) -> FsResult<cairn_common::proto::Placement> {
        request.replication = self.queued_replication(request.ino);
        match request.replication {
            Some(_) => self.namenode_now(request).await,
            None => self.namenode(request).await,
        }
    }

    async fn allocate(&self, request: AllocateBlock) -> FsResult<cairn_common::proto::Placement> {
        let deadline = Instant::now() + BUSY_WAIT;
        loop {
            match self.allocate_once(request.clone()).await {
                Err(FsError::Busy(why)) if Instant::now() < deadline => {
                    debug!(block = %request.block, "{why}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(FsError::Busy(why)) => {
                    return Err(FsError::io(format!("gave up after {BUSY_WAIT:?}: {why}")))
                }
                other => return other,
            }
        }
    }

    /// Stores `data` as a block of file `ino` and returns its id once at least
    /// `min_replicas` datanodes (capped at the file's replication) hold it, with the
    /// datanodes that do.
    ///
    /// A small block with datanodes `placed` (see `CreateReply::place`) is sent there while
    /// the namenode is asked for a placement, which still decides: what it says is stored
    /// already, or is being deleted (then the early copies do not count), wins.
    ///
    /// Too few datanodes to reach `min_replicas` is a pause of up to [`PLACEMENT_PATIENCE`],
    /// not an error at once: after a namenode's start or a change of leader, datanodes
    /// register again one by one, and the first placements know only those already back.
    pub(crate) async fn upload_block(
        &self,
        ino: Ino,
        data: Bytes,
        placed: Vec<DatanodeAddr>,
    ) -> FsResult<(BlockId, Vec<DatanodeAddr>)> {
        let (data, id) = hashed(data).await?;
        let patience = Instant::now() + PLACEMENT_PATIENCE;
        let mut placed = placed;
        loop {
            let placed = std::mem::take(&mut placed);
            match self.store_block(ino, id, data.clone(), placed).await {
                Err(Shortfall(e)) if Instant::now() < patience => {
                    debug!(block = %id, "waiting for more datanodes: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(Shortfall(e)) => return Err(e),
                Ok(stored) => return stored,
            }
        }
    }

    /// [`Client::upload_block`] of a block hashed: `Err` when it fell short of the
    /// replicas required (which waiting may mend), `Ok` with the rest.
    async fn store_block(
        &self,
        ino: Ino,
        id: BlockId,
        data: Bytes,
        placed: Vec<DatanodeAddr>,
    ) -> Result<FsResult<(BlockId, Vec<DatanodeAddr>)>, Shortfall> {
        let len = data.len() as u32;
        // Where each datanode heard of is, to tell where the block ended up.
        let mut known: HashMap<DatanodeId, DatanodeAddr> = HashMap::new();
        let on = |stored: &[DatanodeId], known: &HashMap<DatanodeId, DatanodeAddr>| {
            stored
                .iter()
                .filter_map(|d| known.get(d).cloned())
                .collect()
        };
        let mut stored: Vec<DatanodeId> = Vec::new();
        let mut failed: Vec<(DatanodeId, String)> = Vec::new();
        let mut want = 0usize;
        let mut avoid_suspects = true;
        let mut answered = None;
        if !placed.is_empty() && len <= PLACED_BLOCK_MAX {
            let request = AllocateBlock {
                ino,
                block: id,
                len,
                exclude: Vec::new(),
                count: 0,
                replication: None,
            };
            let (placement, early) = tokio::join!(
                self.allocate_once(request),
                self.put_each(&placed, id, &data)
            );
            // A block being deleted as garbage may have been "stored" where it is going.
            if !matches!(placement, Err(FsError::Busy(_))) {
                for node in &placed {
                    known.insert(node.id, node.clone());
                }
                stored.extend(early.stored_on);
                for (id, _) in &early.failed {
                    self.inner.suspects.add(*id);
                }
                failed.extend(early.failed);
                answered = Some(placement);
            }
        }
        for round in 0..MAX_PLACEMENT_ROUNDS {
            let mut exclude = stored.clone();
            exclude.extend(failed.iter().map(|(id, _)| *id));
            let suspects = if avoid_suspects {
                self.inner.suspects.current()
            } else {
                Vec::new()
            };
            let had_suspects = !suspects.is_empty();
            exclude.extend(suspects);
            exclude.sort();
            exclude.dedup();
            let request = AllocateBlock {
                ino,
                block: id,
                len,
                exclude,
                count: if round == 0 {
                    0
                } else {
                    want.saturating_sub(stored.len()) as u8
                },
                replication: None,
            };
            let allocated = match answered.take() {
                Some(placement) => placement,
                None => self.allocate(request).await,
            };
            let mut placement = match allocated {
                Ok(p) => p,
                // Only suspects are left: they may have recovered, try them.
                Err(FsError::NoSpace(_)) if had_suspects => {
                    avoid_suspects = false;
                    continue;
                }
                // No more datanodes to try: judge what we have.
                Err(FsError::NoSpace(reason)) if round > 0 => {
                    failed.push((DatanodeId(0), reason));
                    break;
                }
                Err(e) => return Ok(Err(e)),
            };
            for node in placement.targets.iter().chain(&placement.holders_at) {
                known.insert(node.id, node.clone());
            }
            if placement.already_stored {
                self.keep_written(id, data);
                return Ok(Ok((id, placement.holders_at)));
            }
            want = placement.replication as usize;
            stored.extend(placement.holders.iter().copied());
            stored.sort();
            stored.dedup();
            if stored.len() >= want {
                break;
            }
            placement.targets.retain(|t| !stored.contains(&t.id));
            let Some((head, rest)) = placement.targets.split_first() else {
                break;
            };
            let reply = if data.len() <= FAN_OUT_MAX {
                self.put_each(&placement.targets, id, &data).await
            } else {
                self.put_pipeline(head, rest, id, data.clone())
                    .await
                    // The head is gone; the rest never saw the block.
                    .unwrap_or_else(|e| PutReply {
                        stored_on: Vec::new(),
                        failed: vec![(head.id, e.to_string())],
                    })
            };
            stored.extend(reply.stored_on);
            for (id, _) in &reply.failed {
                self.inner.suspects.add(*id);
            }
            failed.extend(reply.failed);
            stored.sort();
            stored.dedup();
            if stored.len() >= want {
                break;
            }
            debug!(block = %id, stored = stored.len(), want, "pipeline fell short; trying more datanodes");
        }
        let need = (self.inner.config.min_replicas as usize).min(want.max(1));
        if stored.len() >= need {
            if stored.len() < want {
                warn!(block = %id, stored = stored.len(), want, "block is under-replicated");
            }
            self.keep_written(id, data);
            return Ok(Ok((id, on(&stored, &known))));
        }
        let mut reasons: Vec<String> = failed
            .iter()
            .map(|(node, why)| format!("{node}: {why}"))
            .collect();
        if reasons.is_empty() {
            reasons.push("no other datanode was offered: the rest are full or down".into());
        }
        Err(Shortfall(FsError::io(format!(
            "block {id} reached {} of the {need} datanodes required ({})",
            stored.len(),
            reasons.join("; ")
        ))))
    }

    /// Keeps a block just written for reads soon after, if it is small (a small file read
    /// back, as compilers and editors do). Whole streamed blocks are not kept: they would
    /// push out what readers use, and holding them makes every new block fresh memory.
    fn keep_written(&self, id: BlockId, data: Bytes) {
        if data.len() <= KEEP_WRITTEN_MAX {
            self.inner.cache.insert(id, data);
        }
    }

    /// Puts the blocks of `ino` this client stored without an fsync on stable storage, each
    /// on at least `min_replicas` of its datanodes (capped at how many it was stored on).
    pub(crate) async fn sync_file(&self, ino: Ino) -> FsResult<()> {
        let Some(taken) = self.inner.unsynced.take(ino) else {
            return Ok(());
        };
        let stored: HashMap<BlockId, Vec<DatanodeAddr>> = taken
            .iter()
            .map(|(block, (_, on))| (*block, on.clone()))
            .collect();
        let res = self.sync_stored(ino, &stored).await;
        if res.is_err() {
            // Tried again at the next fsync.
            self.inner.unsynced.restore(ino, taken);
        }
        res
    }

    async fn sync_stored(
        &self,
        ino: Ino,
        stored: &HashMap<BlockId, Vec<DatanodeAddr>>,
    ) -> FsResult<()> {
        let min = self.inner.config.min_replicas.max(1) as usize;
        let need = |block: &BlockId| min.min(stored[block].len()).max(1);
        let mut tally = Tally::default();
        self.sync_round(stored, &mut tally).await;
        let short: Vec<BlockId> = stored
            .keys()
            .filter(|b| tally.synced_on(b) < need(b))
            .copied()
            .collect();
        if short.is_empty() {
            return Ok(());
        }
        // Missing where it was stored: moved since (the balancer, a decommission), or no
        // longer the file's (overwritten, then collected). Where the namenode says the
        // file's blocks are now is where they must be synced.
        let now = self.current_locations(ino, &short).await?;
        let elsewhere: HashMap<BlockId, Vec<DatanodeAddr>> = now
            .iter()
            .map(|(block, on)| {
                let new = on
                    .iter()
                    .filter(|n| !tally.asked(block, n.id))
                    .cloned()
                    .collect();
                (*block, new)
            })
            .collect();
        self.sync_round(&elsewhere, &mut tally).await;
        for block in short {
            if !now.contains_key(&block) {
                continue;
            }
            let (got, need) = (tally.synced_on(&block), need(&block));
            if got < need {
                return Err(FsError::io(format!(
                    "block {block} is on stable storage on {got} of the {need} datanodes \
                     required ({})",
                    tally.failed.join("; ")
                )));
            }
        }
        Ok(())
    }

    /// Where the namenode says `blocks` are now, for those still in file `ino`.
    async fn current_locations(
        &self,
        ino: Ino,
        blocks: &[BlockId],
    ) -> FsResult<HashMap<BlockId, Vec<DatanodeAddr>>> {
        let mut found = HashMap::new();
        let mut first = 0u32;
        loop {
            let map = self
                .namenode(ReadChunks {
                    ino,
                    first,
                    count: SYNC_MAP_CHUNKS,
                })
                .await?;
            let in_file: HashSet<BlockId> = map
                .chunks
                .iter()
                .flat_map(|(_, slices)| slices.iter().map(|s| s.block))
                .collect();
            for (block, on) in map.locations {
                if in_file.contains(&block) && blocks.contains(&block) {
                    found.insert(block, on);
                }
            }
            first = first.saturating_add(SYNC_MAP_CHUNKS);
            if found.len() == blocks.len() || u64::from(first) * CHUNK_SIZE >= map.attr.size {
                return Ok(found);
            }
        }
    }

    /// Asks each datanode of `blocks` to sync its share; counts the answers in `tally`.
    async fn sync_round(&self, blocks: &HashMap<BlockId, Vec<DatanodeAddr>>, tally: &mut Tally) {
        let mut by_node: HashMap<DatanodeId, (DatanodeAddr, Vec<BlockId>)> = HashMap::new();
        for (block, on) in blocks {
            for node in on {
                by_node
                    .entry(node.id)
                    .or_insert_with(|| (node.clone(), Vec::new()))
                    .1
                    .push(*block);
            }
        }
        let syncs = by_node.into_values().map(|(node, ids)| async move {
            let res = self
                .with_write_token(|token| async {
                    let conn = self.inner.pool.get(node.addr, Role::Datanode).await?;
                    let req = SyncBlocks {
                        blocks: ids.clone(),
                        token: Some(token),
                    };
                    transport::call_enveloped::<_, SyncReply>(&conn, &req.into_service()).await
                })
                .await;
            (node, ids, res)
        });
        for (node, ids, res) in futures::future::join_all(syncs).await {
            match res {
                Ok(reply) => {
                    for id in ids.into_iter().filter(|id| !reply.missing.contains(id)) {
                        tally.synced.entry(id).or_default().insert(node.id);
                    }
                }
                Err(e) => {
                    if let FsError::Unavailable(_) = e {
                        self.inner.pool.forget(node.addr);
                    }
                    tally.unreachable.insert(node.id);
                    tally.failed.push(format!("{}: {e}", node.id));
                }
            }
        }
    }

    /// Stores the block on each of `targets` at once, each on its own.
    async fn put_each(&self, targets: &[DatanodeAddr], id: BlockId, data: &Bytes) -> PutReply {
        let puts = targets.iter().map(|target| async move {
            let res = self.put_pipeline(target, &[], id, data.clone()).await;
            (target.id, res)
        });
        let mut all = PutReply {
            stored_on: Vec::new(),
            failed: Vec::new(),
        };
        for (node, res) in futures::future::join_all(puts).await {
            match res {
                Ok(reply) => {
                    all.stored_on.extend(reply.stored_on);
                    all.failed.extend(reply.failed);
                }
                Err(e) => all.failed.push((node, e.to_string())),
            }
        }
        all
    }

    async fn put_pipeline(
        &self,
        head: &DatanodeAddr,
        rest: &[DatanodeAddr],
        id: BlockId,
        data: Bytes,
    ) -> FsResult<PutReply> {
        let res = self
            .with_write_token(|token| async {
                let conn = self.inner.pool.get(head.addr, Role::Datanode).await?;
                let req = PutBlock {
                    block: id,
                    len: data.len() as u32,
                    downstream: rest.to_vec(),
                    sync: self.inner.config.sync_blocks,
                    token: Some(token),
                };
                transport::call_with_body(&conn, req, data.clone()).await
            })
            .await;
        if let Err(FsError::Unavailable(_)) = &res {
            self.inner.pool.forget(head.addr);
        }
        res
    }

    /// The bytes of block `id` (`len` bytes long), from the cache or the first of
    /// `locations` whose bytes hash to `id`. A replica serving wrong bytes is reported.
    /// Concurrent fetches of one block (a read and the read-ahead, say) share one transfer.
    pub(crate) async fn fetch_block(
        &self,
        id: BlockId,
        len: u32,
        source: &Source,
    ) -> FsResult<Bytes> {
        if let Some(data) = self.inner.cache.get(&id) {
            return Ok(data);
        }
        let transfer = {
            let mut inflight = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match inflight.get(&id) {
                Some(t) => t.clone(),
                None => {
                    let client = self.clone();
                    let source = source.clone();
                    let t = async move { client.fetch_uncached(id, len, &source).await }
                        .boxed()
                        .shared();
                    inflight.insert(id, t.clone());
                    t
                }
            }
        };
        let result = transfer.await;
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }

    async fn fetch_uncached(&self, id: BlockId, len: u32, source: &Source) -> FsResult<Bytes> {
        if let Some(disk) = self.inner.disk_cache.clone() {
            let cached = tokio::task::spawn_blocking(move || disk.get(&id)).await;
            if let Ok(Some(data)) = cached {
                self.inner.cache.insert(id, data.clone());
                return Ok(data);
            }
        }
        source.unexpired()?;
        let data = self
            .read_any_replica(id, &source.at, |loc| {
                self.fetch_from(loc, id, len, source.token.clone())
            })
            .await?;
        self.inner.cache.insert(id, data.clone());
        if let Some(disk) = self.inner.disk_cache.clone() {
            // In the background: the reader has its bytes already.
            let kept = data.clone();
            tokio::task::spawn_blocking(move || disk.put(&id, &kept));
        }
        Ok(data)
    }

    /// The bytes `[offset, offset + len)` of block `id` (`block_len` bytes long), from the
    /// cache or the first of `locations` that serves them with a proof that checks against
    /// `id`: the chunk groups they lie in move, not the block. A replica failing its proof is
    /// reported, as one serving a wrong whole block is.
    pub(crate) async fn fetch_range(
        &self,
        (id, block_len, offset, len): (BlockId, u32, u64, u64),
        source: &Source,
    ) -> FsResult<Bytes> {
        if let Some(data) = self.inner.cache.get_range(&id, offset, len) {
            return Ok(data);
        }
        // A block this machine keeps on disk is read from there, whole.
        if let Some(disk) = self.inner.disk_cache.clone().filter(|d| d.contains(&id)) {
            if let Ok(Some(data)) = tokio::task::spawn_blocking(move || disk.get(&id)).await {
                self.inner.cache.insert(id, data.clone());
                if let Some(range) = data.get(offset as usize..(offset + len) as usize) {
                    return Ok(data.slice_ref(range));
                }
            }
        }
        source.unexpired()?;
        let token = &source.token;
        let fetch = |loc| self.fetch_range_from(loc, (id, block_len, offset, len), token.clone());
        let (start, groups) = self.read_any_replica(id, &source.at, fetch).await?;
        self.inner.cache.insert_groups(id, start, &groups);
        let from = (offset - start) as usize;
        Ok(groups.slice(from..from + len as usize))
    }

    /// The first of `locations` that `fetch` gets block `id`'s bytes from; each that serves
    /// bytes failing their hash is reported to the namenode.
    async fn read_any_replica<'a, T, F, Fut>(
        &self,
        id: BlockId,
        locations: &'a [DatanodeAddr],
        fetch: F,
    ) -> FsResult<T>
    where
        F: Fn(&'a DatanodeAddr) -> Fut,
        Fut: std::future::Future<Output = FsResult<T>>,
    {
        let mut errors = Vec::new();
        for loc in locations {
            match fetch(loc).await {
                Ok(data) => return Ok(data),
                // Every replica would refuse it alike: the reader asks for a new one.
                Err(FsError::Token(why)) => {
                    debug!(block = %id, datanode = %loc.id, "token refused: {why}");
                    return Err(FsError::Token(why));
                }
                Err(e) => {
                    warn!(block = %id, datanode = %loc.id, "replica failed: {e}");
                    if matches!(e, FsError::Io(_)) {
                        let report = ReportBadReplica {
                            block: id,
                            datanode: loc.id,
                            reason: e.to_string(),
                        };
                        if let Err(re) = self.namenode(report).await {
                            warn!(block = %id, "cannot report bad replica: {re}");
                        }
                    }
                    errors.push(format!("{}: {e}", loc.addr));
                }
            }
        }
        if errors.is_empty() {
            return Err(FsError::io(format!("block {id} has no live replica")));
        }
        Err(FsError::io(format!(
            "no replica of block {id} could be read ({})",
            errors.join("; ")
        )))
    }

    /// Groups of block `id` covering `[offset, offset + len)` from one replica, checked:
    /// where they start in the block, and their bytes.
    async fn fetch_range_from(
        &self,
        loc: &DatanodeAddr,
        (id, block_len, offset, len): (BlockId, u32, u64, u64),
        token: Option<BlockToken>,
    ) -> FsResult<(u64, Bytes)> {
        let conn = self.inner.pool.get(loc.addr, Role::Datanode).await?;
        let req = GetRange {
            block: id,
            offset: offset as u32,
            len: len as u32,
            token,
        };
        let res = async {
            let (header, mut recv) = transport::call_streaming(&conn, req).await?;
            same_length(header.block_len, block_len)?;
            // Its groups and every hash of the tree at most: a longer answer is not one.
            let (start, end) = verified::covering(block_len as u64, offset, len);
            let most = end - start + verified::outboard_len(block_len as u64);
            if header.len as u64 > most {
                return Err(FsError::io(format!(
                    "a range of {} bytes came with {} bytes",
                    end - start,
                    header.len
                )));
            }
            self.body(&mut recv, header.len).await
        }
        .await;
        let pieces = self.unless_lost(loc, res)?;
        let (block_len, offset) = (block_len as u64, offset);
        let size: usize = pieces.iter().map(Bytes::len).sum();
        let decode = move || verified::decode(&id, block_len, offset, len, &pieces.concat());
        if size <= HASH_INLINE_MAX {
            return decode();
        }
        tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| FsError::io(format!("checking a range failed: {e}")))?
    }

    /// The `len` bytes after a datanode's answer header, counted.
    async fn body(&self, recv: &mut quinn::RecvStream, len: u32) -> FsResult<Vec<Bytes>> {
        let body = transport::read_body_pieces(recv, len as usize).await?;
        let fetched = &self.inner.fetched;
        fetched.fetch_add(len as u64, Ordering::Relaxed);
        Ok(body)
    }

    /// `res` of a call to `loc`; a datanode that cannot be reached is dialled anew next time.
    fn unless_lost<T>(&self, loc: &DatanodeAddr, res: FsResult<T>) -> FsResult<T> {
        if let Err(FsError::Unavailable(_)) = &res {
            self.inner.pool.forget(loc.addr);
        }
        res
    }

    async fn fetch_from(
        &self,
        loc: &DatanodeAddr,
        id: BlockId,
        len: u32,
        token: Option<BlockToken>,
    ) -> FsResult<Bytes> {
        let conn = self.inner.pool.get(loc.addr, Role::Datanode).await?;
        let req = GetBlock {
            block: id,
            offset: 0,
            len: None,
            token,
        };
        let res = async {
            let (header, mut recv) = transport::call_streaming(&conn, req).await?;
            same_length(header.len, len)?;
            self.body(&mut recv, len).await
        }
        .await;
        let pieces = self.unless_lost(loc, res)?;
        match joined_and_hashed(pieces).await? {
            (buf, got) if got == id => Ok(Bytes::from(buf)),
            _ => Err(FsError::io(
                "replica bytes do not match the block hash (corrupt)",
            )),
        }
    }
}

/// A replica announcing another length than its block's is not that block.
fn same_length(replica: u32, block: u32) -> FsResult<()> {
    if replica != block {
        return Err(FsError::io(format!(
            "replica has {replica} bytes, the block has {block}"
        )));
    }
    Ok(())
}

/// A block received as `pieces`, joined, with its BLAKE3 id. A large one is joined and
/// hashed off the runtime's threads: the join is a copy of every byte, and the runtime's
/// threads already spend most of a transfer's time in the transport.
async fn joined_and_hashed(pieces: Vec<Bytes>) -> FsResult<(Vec<u8>, BlockId)> {
    let size: usize = pieces.iter().map(Bytes::len).sum();
    if size <= HASH_INLINE_MAX {
        return Ok(BlockId::join_pieces(&pieces));
    }
    tokio::task::spawn_blocking(move || BlockId::join_pieces(&pieces))
        .await
        .map_err(|e| FsError::io(format!("hashing failed: {e}")))
}

/// `data` with its BLAKE3 id; a large block is hashed off the runtime's threads.
async fn hashed<T: AsRef<[u8]> + Send + 'static>(data: T) -> FsResult<(T, BlockId)> {
    if data.as_ref().len() <= HASH_INLINE_MAX {
        let id = BlockId::of(data.as_ref());
        return Ok((data, id));
    }
    tokio::task::spawn_blocking(move || {
        let id = BlockId::of(data.as_ref());
        (data, id)
    })
    .await
    .map_err(|e| FsError::io(format!("hashing failed: {e}")))
}
