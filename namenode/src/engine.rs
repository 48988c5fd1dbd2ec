//! The metadata engine: reads straight from the store, writes through one writer thread that
//! decides queued ops in groups and proposes each group as one entry of the namenode
//! group's log ([`crate::group`]); the ops are applied, on every member, once the entry is
//! committed. No op is acknowledged before its entry is applied here, and durable as the
//! namenode's [`Durability`] says.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_common::attr::{Caller, DirEntry, FileKind, InodeAttr, Timestamp};
use cairn_common::layout::{self, Segment, Slice, CHUNK_SIZE};
use cairn_common::proto::{Change, ChangedDir, DirListing};
use cairn_common::{BlockId, FsError, FsResult, Ino};
use tokio::sync::oneshot;
use tracing::info;

use crate::feed::{Breaks, ChangeFeed};
use crate::gc::Gc;
use crate::group::net::ClusterId;
use crate::group::runner::{Group, Seat};
use crate::group::{Answer, Proposal};
use crate::keys::{self, META_CLUSTER_ID, META_FORMAT, META_INODE_COUNT};
use crate::meta_health::WriteHealth;
use crate::opens::OpenTable;
use crate::ops::{self, MetaOp, MetaOpKind, MetaReply};
use crate::store::{decode, decode_inode, BlockRecord, Cf, Dentry, Store, Txn, FORMAT_VERSION};
use crate::walsync::{Durability, WalSync};

/// Most ops applied in one group; bounds the latency a large group adds to its first op.
const MAX_GROUP: usize = 4096;
/// Most ops waiting for the writer; those asked for beyond wait to be queued (backpressure
/// on clients, not memory growing while the disk is slow).
const MAX_QUEUED: usize = 16_384;

/// Places in the writer's queue, held until the ops they were taken for are answered (see
/// [`MetaEngine::reserve`]).
pub struct Room {
    _places: tokio::sync::OwnedSemaphorePermit,
}
/// Most entries in one readdir page.
pub const MAX_READDIR_PAGE: u32 = 4096;

struct Pending {
    op: MetaOp,
    /// The result, and what its answer waits for (see [`crate::feed`]'s leases).
    reply: oneshot::Sender<(FsResult<MetaReply>, Breaks)>,
    /// The connection the op came through (0: the namenode's own), for the change feed.
    origin: u64,
}

/// How many times each directory's entries changed since this namenode started: a client
/// that sees the count move by exactly its own changes knows nobody else's came between.
/// Kept in memory only; `epoch` (drawn at start) tells the counts of one run from another's.
pub struct DirVersions {
    pub epoch: u64,
    counts: std::sync::Mutex<std::collections::HashMap<Ino, u64>>,
}

impl DirVersions {
    fn new() -> DirVersions {
        DirVersions {
            epoch: rand::random(),
            counts: Default::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Ino, u64>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the directories each op of a group changed the entries of, op by op (one
    /// each per op: an op's changes name each directory once), writing into each
    /// `Entries` change the count it brought its directory to; then forgets `removed`
    /// (inode numbers are never reused, so nobody can follow them again).
    fn count(&self, ops: &mut [Written], removed: &[Ino]) {
        let mut counts = self.counts();
        for op in ops {
            for change in &mut op.changes {
                if let Change::Entries(dir, count) = change {
                    let counted = counts.entry(*dir).or_default();
                    *counted += 1;
                    *count = *counted;
                }
            }
        }
        for ino in removed {
            counts.remove(ino);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.counts().len()
    }

    pub fn get(&self, dir: Ino) -> u64 {
        self.counts().get(&dir).copied().unwrap_or(0)
    }
}

/// An entry of the trash: a user's trash directory, the name in it, the file.
pub type TrashRow = (Ino, Vec<u8>, Ino);

/// Trash entries [`MetaEngine::trash_census`] reads at a time.
const TRASH_CENSUS_PAGE: usize = 10_000;

pub struct MetaEngine {
    store: Arc<Store>,
    cluster: Arc<ClusterId>,
    health: Arc<WriteHealth>,
    versions: Arc<DirVersions>,
    feed: Arc<ChangeFeed>,
    queue: Option<mpsc::Sender<Pending>>,
    /// Places in the queue: an op takes one until it is answered.
    room: Arc<tokio::sync::Semaphore>,
    queue_bound: usize,
    /// The most ops the writer applied in one group.
    largest_group: Arc<std::sync::atomic::AtomicUsize>,
    writer: Option<JoinHandle<()>>,
    /// The namenode group's member on this namenode, through whose log every change goes.
    group: Option<Arc<Group>>,
    wal: Arc<WalSync>,
    syncer: Option<JoinHandle<()>>,
}

impl MetaEngine {
    /// Opens the namespace in `dir`, creating the root directory if it is new. `durability`
    /// says when a change written to the log is synced (see [`crate::walsync`]).
    /// `opens` says which files clients hold open: the writer purges an orphan only when
    /// nobody does, and counts a file created for opening as open before anyone can see it.
    /// `gc` says which blocks are due for collection and which are condemned.
    pub fn open(
        dir: &Path,
        default_replication: u8,
        durability: Durability,
        opens: Arc<OpenTable>,
        gc: Arc<Gc>,
    ) -> anyhow::Result<MetaEngine> {
        let how = Opening::default();
        Self::open_with(dir, default_replication, durability, opens, gc, how)
    }

    /// [`MetaEngine::open`] for the member `seat` of a namenode group. A member joining
    /// with no namespace of its own formats none: it takes the leader's.
    pub fn open_in_group(
        dir: &Path,
        default_replication: u8,
        durability: Durability,
        opens: Arc<OpenTable>,
        gc: Arc<Gc>,
        seat: Seat,
    ) -> anyhow::Result<MetaEngine> {
        let how = Opening {
            seat,
            ..Opening::default()
        };
        Self::open_with(dir, default_replication, durability, opens, gc, how)
    }

    /// [`MetaEngine::open`], as `how` says.
    fn open_with(
        dir: &Path,
        default_replication: u8,
        durability: Durability,
        opens: Arc<OpenTable>,
        gc: Arc<Gc>,
        how: Opening,
    ) -> anyhow::Result<MetaEngine> {
        let Opening {
            journal,
            queue,
            seat,
        } = how;
        let store = Arc::new(Store::open(dir)?);
        let restarted = store.inode(Ino::ROOT)?.is_some();
        // A new member waits for the leader's namespace.
        let waiting = !restarted && seat.joining;
        if !restarted && !waiting {
            info!("formatting a new namespace");
            let mut txn = store.txn();
            let op = MetaOp {
                now: Timestamp::now(),
                caller: Caller::ROOT,
                kind: MetaOpKind::Format {
                    replication: default_replication,
                },
                request: None,
                free: Vec::new(),
            };
            ops::apply(&mut txn, &op)?;
            store.commit(txn, true)?;
        }
        let cluster = match store.meta_u64(META_CLUSTER_ID)? {
            Some(id) => id,
            // Learned from the leader's snapshot.
            None if waiting => 0,
            None => {
                // Formatted just now, or by a version that did not name its namespaces.
                let id = rand::random::<u64>().max(1);
                let mut txn = store.txn();
                txn.put_meta_u64(META_CLUSTER_ID, id);
                store.commit(txn, true)?;
                info!(cluster = %format!("{id:016x}"), "the namespace is named");
                id
            }
        };
        match store.meta_u64(META_FORMAT)? {
            Some(FORMAT_VERSION) => {}
            None if waiting => {}
            Some(v) if v > FORMAT_VERSION => anyhow::bail!(
                "the metadata in {} is format {v}, newer than this namenode's \
                 {FORMAT_VERSION}: run the cairn that wrote it, or a newer one",
                dir.display()
            ),
            old => upgrade(&store, old.unwrap_or(1))?,
        }
        let (tx, rx) = mpsc::channel();
        let writer_store = store.clone();
        let versions = Arc::new(DirVersions::new());
        let feed = Arc::new(ChangeFeed::new(versions.epoch, restarted));
        let health = Arc::new(WriteHealth::new(dir));
        let (wal, syncer) = WalSync::start(store.clone(), durability)?;
        let cluster = Arc::new(ClusterId::new(cluster));
        let group = Arc::new(Group::start(
            store.clone(),
            &dir.join("snapshots"),
            cluster.clone(),
            wal.clone(),
            seat,
        )?);
        let largest_group = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deciders = Deciders {
            opens,
            gc,
            versions: versions.clone(),
            feed: feed.clone(),
            health: health.clone(),
            wal: wal.clone(),
            journal,
            largest_group: largest_group.clone(),
        };
        let writer_group = group.clone();
        let writer = std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || write_loop(writer_store, rx, deciders, writer_group))?;
        Ok(MetaEngine {
            store,
            cluster,
            health,
            versions,
            feed,
            queue: Some(tx),
            room: Arc::new(tokio::sync::Semaphore::new(queue)),
            queue_bound: queue,
            largest_group,
            writer: Some(writer),
            group: Some(group),
            wal,
            syncer,
        })
    }

    /// Returns once every change acknowledged before the call is durable (a barrier: the
    /// `fsync` of a file or directory).
    pub async fn sync(&self) -> FsResult<()> {
        self.wal.barrier().await?;
        self.group().sync_quorum().await
    }

    /// How many times the log was synced apart from the writes themselves.
    pub fn log_syncs(&self) -> u64 {
        self.wal.syncs()
    }

    /// Applies one op on behalf of `caller`; returns once it is durable.
    pub async fn submit(&self, caller: Caller, kind: MetaOpKind) -> FsResult<MetaReply> {
        self.submit_from(0, caller, kind).await
    }

    /// [`MetaEngine::submit`] of an op a client sent through connection `origin`.
    pub async fn submit_from(
        &self,
        origin: u64,
        caller: Caller,
        kind: MetaOpKind,
    ) -> FsResult<MetaReply> {
        self.submit_named(origin, caller, kind, None, None).await
    }

    /// Places in the writer's queue for `ops` ops (at most the whole queue), for changes
    /// that must be queued in the order they are submitted (a client's queued changes):
    /// each then goes to the queue at once.
    pub async fn reserve(&self, ops: usize) -> FsResult<Room> {
        let places = ops.clamp(1, self.queue_bound) as u32;
        let permit = self.room.clone().acquire_many_owned(places).await;
        let places = permit.map_err(|_| FsError::io("metadata engine is shutting down"))?;
        Ok(Room { _places: places })
    }

    /// The most ops the writer has applied in one group (one write).
    pub fn largest_group(&self) -> usize {
        self.largest_group
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`MetaEngine::submit_from`] of a change its client named: made once however often
    /// it is asked for, and answered as the first time. It waits for a place in the
    /// writer's queue unless `room` holds one for it.
    pub async fn submit_named(
        &self,
        origin: u64,
        caller: Caller,
        kind: MetaOpKind,
        request: Option<ops::Request>,
        room: Option<&Room>,
    ) -> FsResult<MetaReply> {
        let own = match room {
            Some(_) => None,
            None => Some(self.reserve(1).await?),
        };
        let rx = self.enqueue(origin, caller, kind, request)?;
        let (res, breaks) = rx
            .await
            .map_err(|_| FsError::io("metadata writer stopped"))?;
        drop(own);
        // Close-to-open: no other client still opens the file by the map it had when this
        // client hears its change is done. The namenode's own ops answer no client.
        if origin != 0 && !breaks.is_empty() {
            self.feed.until_heard(breaks).await;
        }
        res
    }

    fn enqueue(
        &self,
        origin: u64,
        caller: Caller,
        kind: MetaOpKind,
        request: Option<ops::Request>,
    ) -> FsResult<oneshot::Receiver<(FsResult<MetaReply>, Breaks)>> {
        let (tx, rx) = oneshot::channel();
        let op = MetaOp {
            now: Timestamp::now(),
            caller,
            kind,
            request,
            free: Vec::new(),
        };
        self.queue
            .as_ref()
            .ok_or_else(|| FsError::io("metadata engine is shutting down"))?
            .send(Pending {
                op,
                reply: tx,
                origin,
            })
            .map_err(|_| FsError::io("metadata writer stopped"))?;
        Ok(rx)
    }

    /// This namenode's member of the namenode group.
    pub fn group(&self) -> &Group {
        self.group
            .as_deref()
            .expect("the group runs until the engine is dropped")
    }

    /// The namespace's name, drawn when it was formatted: datanodes hold blocks of one.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.get()
    }

    /// Refuses changes while the store's disk has less than `bytes` free (0: never).
    pub fn keep_free(&self, bytes: u64) {
        self.health.keep_free(bytes);
    }

    /// Whether the store takes writes: the refusal going on, if any.
    pub fn refusing(&self) -> Option<cairn_common::proto::MetaRefusal> {
        self.health.refusing()
    }

    /// Changes of directory entries since this namenode started.
    pub fn versions(&self) -> &DirVersions {
        &self.versions
    }

    /// The namespace's recent changes.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    pub fn getattr(&self, ino: Ino) -> FsResult<InodeAttr> {
        Ok(self.store.inode(ino)?.ok_or(FsError::NotFound)?.attr)
    }

    /// Is `dir` the trash or a user's trash directory (which the namenode itself changes)?
    pub fn is_trash(&self, dir: Ino) -> FsResult<bool> {
        let rec = self.store.inode(dir)?.ok_or(FsError::NotFound)?;
        let root = self
            .store
            .dentry(Ino::ROOT, cairn_common::proto::TRASH_DIR)?
            .map(|d| d.ino);
        Ok(root.is_some_and(|root| dir == root || (rec.parent == root && dir != Ino::ROOT)))
    }

    /// What `name` in `parent` names, if anything (no permission check: for the namenode's
    /// own bookkeeping).
    /// Whether `ino` lies inside the subtree of directory `root`: a directory below it, or
    /// anything else with a name in such a directory (or, unlinked, whose last name was). An inode that does not exist is let
    /// through: the request that names it finds nothing.
    pub fn within(&self, ino: Ino, root: Ino) -> FsResult<bool> {
        if ino == root {
            return Ok(true);
        }
        let Some(rec) = self.store.inode(ino)? else {
            return Ok(true);
        };
        if self.dir_within(rec.parent, root)? {
            return Ok(true);
        }
        if rec.attr.kind == FileKind::Dir || rec.attr.nlink <= 1 {
            return Ok(false);
        }
        for (key, _) in self
            .store
            .scan_raw(Cf::Links, &keys::inode(ino), None, usize::MAX)?
        {
            if let Some(parent) = keys::link_parent(&key) {
                if self.dir_within(parent, root)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn dir_within(&self, mut dir: Ino, root: Ino) -> FsResult<bool> {
        // Deeper than any path the kernel can name: a cycle in corrupt records ends here.
        for _ in 0..MAX_DEPTH {
            if dir == root {
                return Ok(true);
            }
            if dir == Ino::ROOT {
                return Ok(false);
            }
            dir = match self.store.inode(dir)? {
                Some(rec) => rec.parent,
                None => return Ok(false),
            };
        }
        Ok(false)
    }

    pub fn entry(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.store
            .dentry(parent, name)
            .ok()
            .flatten()
            .map(|d| d.ino)
    }

    pub fn lookup(&self, caller: &Caller, parent: Ino, name: &[u8]) -> FsResult<InodeAttr> {
        if name.len() > cairn_common::attr::NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let dir = self.getattr(parent)?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        crate::perm::require(caller, &dir, crate::perm::EXEC)?;
        let entry = self.store.dentry(parent, name)?.ok_or(FsError::NotFound)?;
        self.getattr(entry.ino)
    }

    pub fn readdir(
        &self,
        caller: &Caller,
        ino: Ino,
        after: Option<&[u8]>,
        limit: u32,
        attrs: bool,
    ) -> FsResult<Vec<DirEntry>> {
        let dir = self.getattr(ino)?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        crate::perm::require(caller, &dir, crate::perm::READ)?;
        let prefix = keys::dentry_prefix(ino);
        let after_key = after.map(|name| keys::dentry(ino, name));
        let limit = limit.clamp(1, MAX_READDIR_PAGE) as usize;
        self.store
            .scan_raw(Cf::Dentries, &prefix, after_key.as_deref(), limit)?
            .into_iter()
            .map(|(k, v)| {
                let d: Dentry = decode("dentry", &v)?;
                let attr = if attrs {
                    // An entry removed since the scan has no attributes: the listing says so.
                    match self.getattr(d.ino) {
                        Ok(a) => Some(a),
                        Err(FsError::NotFound) => None,
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                Ok(DirEntry {
                    name: keys::dentry_name(&k).to_vec(),
                    ino: d.ino,
                    kind: d.kind,
                    attr,
                })
            })
            .collect()
    }

    /// The first `limit` entries of `dir` (with their attributes if `attrs`) and, when
    /// they are all of them and no change of its entries was counted while they were read,
    /// its change count (see [`cairn_common::proto::DirListing`]). A group being written
    /// counts its changes after they are on disk, so a listing may hold changes its count
    /// is behind.
    pub fn list_dir(
        &self,
        caller: &Caller,
        dir: Ino,
        limit: u32,
        attrs: bool,
    ) -> FsResult<DirListing> {
        let limit = limit.clamp(1, MAX_READDIR_PAGE);
        // A change counted while the names were read (a client creating names there as
        // it asks for them): read again, a few times.
        let mut tries = 3;
        loop {
            let before = self.versions.get(dir);
            let entries = self.readdir(caller, dir, None, limit, attrs)?;
            tries -= 1;
            let all = entries.len() < limit as usize;
            if all && self.versions.get(dir) == before {
                let whole = ChangedDir {
                    attr: self.getattr(dir)?,
                    version: before,
                    epoch: self.versions.epoch,
                };
                return Ok(DirListing {
                    entries,
                    whole: Some(whole),
                });
            }
            if !all || tries == 0 {
                return Ok(DirListing {
                    entries,
                    whole: None,
                });
            }
        }
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let rec = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        rec.target
            .ok_or_else(|| FsError::invalid("not a symbolic link"))
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.getattr(ino)?;
        self.store
            .get_raw(Cf::Xattrs, &keys::xattr(ino, name))?
            .ok_or(FsError::NoAttr)
    }

    pub fn list_xattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.getattr(ino)?;
        Ok(self
            .store
            .scan_raw(Cf::Xattrs, &keys::xattr_prefix(ino), None, usize::MAX)?
            .into_iter()
            .map(|(k, _)| keys::dentry_name(&k).to_vec())
            .collect())
    }

    /// The slices of chunks `[first, first + count)` that have any.
    pub fn chunks(&self, ino: Ino, first: u32, count: u32) -> FsResult<Vec<(u32, Vec<Slice>)>> {
        let mut out = Vec::new();
        let end = first.saturating_add(count);
        // From the first asked for: a large file's map is read a few chunks at a time.
        let start = keys::chunk(ino, first);
        let prefix = keys::chunk_prefix(ino);
        for (k, v) in self
            .store
            .scan_from(Cf::Chunks, &prefix, &start, count as usize)?
        {
            let Some(index) = keys::chunk_index(&k) else {
                continue;
            };
            if index >= end {
                break;
            }
            out.push((index, decode("chunk", &v)?));
        }
        Ok(out)
    }

    /// Where the data (or, with `hole`, the hole) of file `ino` at or after `offset` begins,
    /// as `lseek`'s SEEK_DATA and SEEK_HOLE answer: `None` when there is no data from
    /// `offset` to the end, or `offset` is past it. The end of the file is a hole.
    pub fn seek(&self, ino: Ino, offset: u64, hole: bool) -> FsResult<Option<u64>> {
        let size = self.getattr(ino)?.size;
        if offset >= size {
            return Ok(None);
        }
        const BATCH: usize = 64;
        let prefix = keys::chunk_prefix(ino);
        // The chunk that comes next if there is no hole between.
        let mut next = offset / CHUNK_SIZE;
        'scan: loop {
            let batch =
                self.store
                    .scan_from(Cf::Chunks, &prefix, &keys::chunk(ino, next as u32), BATCH)?;
            for (k, v) in &batch {
                let Some(index) = keys::chunk_index(k) else {
                    continue;
                };
                let base = index as u64 * CHUNK_SIZE;
                if base >= size || (hole && index as u64 > next) {
                    break 'scan;
                }
                let slices: Vec<Slice> = decode("chunk", v)?;
                let (from, to) = (offset.max(base) - base, (size - base).min(CHUNK_SIZE));
                for seg in cairn_common::layout::resolve(&slices, from, to) {
                    match seg {
                        Segment::Data { pos, .. } if !hole => return Ok(Some(base + pos)),
                        Segment::Hole { pos, .. } if hole => return Ok(Some(base + pos)),
                        _ => {}
                    }
                }
                next = index as u64 + 1;
            }
            if batch.len() < BATCH {
                break;
            }
        }
        // Past the chunks looked at: the first missing one, or the end, is the hole.
        Ok(hole.then(|| offset.max(next * CHUNK_SIZE).min(size)))
    }

    pub fn block(&self, id: &BlockId) -> FsResult<Option<BlockRecord>> {
        self.store.block(id)
    }

    /// Operators' states for datanodes, as last recorded.
    pub fn node_admin_states(
        &self,
    ) -> FsResult<Vec<(cairn_common::DatanodeId, cairn_common::proto::AdminState)>> {
        self.store.node_admin_states()
    }

    /// The datanodes recorded as seen, to list after a restart.
    pub fn known_datanodes(
        &self,
    ) -> FsResult<Vec<(cairn_common::DatanodeId, crate::blockmap::KnownDatanode)>> {
        self.store.known_datanodes()
    }

    /// Up to `limit` entries of the trash after `after` (a user's trash directory and a name
    /// in it), users' directories in inode order, names in byte order; only those of
    /// `owner`'s directory if given. Also whether more follow.
    pub fn trash_page(
        &self,
        owner: Option<u32>,
        after: Option<(Ino, &[u8])>,
        limit: usize,
    ) -> FsResult<(Vec<TrashRow>, bool)> {
        let Some(root) = self
            .store
            .dentry(Ino::ROOT, cairn_common::proto::TRASH_DIR)?
            .filter(|d| d.kind == FileKind::Dir)
        else {
            return Ok((Vec::new(), false));
        };
        let mut users: Vec<Ino> = Vec::new();
        for (_, user) in self.entries(root.ino)? {
            if user.kind != FileKind::Dir {
                continue;
            }
            if let Some(uid) = owner {
                if self.getattr(user.ino)?.uid != uid {
                    continue;
                }
            }
            users.push(user.ino);
        }
        users.sort();
        let mut out = Vec::new();
        for dir in users {
            let from = match after {
                Some((at, _)) if dir < at => continue,
                Some((at, name)) if dir == at => Some(keys::dentry(dir, name)),
                _ => None,
            };
            let want = limit + 1 - out.len();
            let rows = self.store.scan_raw(
                Cf::Dentries,
                &keys::dentry_prefix(dir),
                from.as_deref(),
                want,
            )?;
            for (k, v) in rows {
                let entry: Dentry = decode("dentry", &v)?;
                out.push((dir, keys::dentry_name(&k).to_vec(), entry.ino));
            }
            if out.len() > limit {
                out.truncate(limit);
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// What the trash holds, page by page: each file's stored bytes, counted once per
    /// replica, by the second it was removed.
    pub fn trash_census(&self) -> FsResult<crate::trash::Census> {
        let mut census = crate::trash::Census::default();
        let mut after: Option<(Ino, Vec<u8>)> = None;
        loop {
            let at = after.as_ref().map(|(dir, name)| (*dir, name.as_slice()));
            let (page, more) = self.trash_page(None, at, TRASH_CENSUS_PAGE)?;
            for (_, name, ino) in &page {
                let (Some(removed), Some(rec)) =
                    (crate::trash::removed_at(name), self.store.inode(*ino)?)
                else {
                    continue;
                };
                census.add(removed, crate::trash::weight(&rec.attr));
            }
            after = page.last().map(|(dir, name, _)| (*dir, name.clone()));
            if !more {
                return Ok(census);
            }
        }
    }

    /// Every entry of directory `dir`, by name, unpaged (for the namenode's own chores).
    fn entries(&self, dir: Ino) -> FsResult<Vec<(Vec<u8>, Dentry)>> {
        self.store
            .scan_raw(Cf::Dentries, &keys::dentry_prefix(dir), None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| Ok((keys::dentry_name(&k).to_vec(), decode("dentry", &v)?)))
            .collect()
    }

    /// The path of directory `dir`, walking up its parents (None if it is gone).
    pub fn path_of(&self, dir: Ino) -> FsResult<Option<String>> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut ino = dir;
        while ino != Ino::ROOT {
            let Some(rec) = self.store.inode(ino)? else {
                return Ok(None);
            };
            let entry = self
                .entries(rec.parent)?
                .into_iter()
                .find(|(_, d)| d.ino == ino);
            let Some((name, _)) = entry else {
                return Ok(None);
            };
            names.push(name);
            if names.len() > 4096 {
                return Err(FsError::io(format!("directory {dir} is too deep to name")));
            }
            ino = rec.parent;
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(&String::from_utf8_lossy(name));
        }
        Ok(Some(if path.is_empty() { "/".into() } else { path }))
    }

    /// Blocks condemned as garbage whose deletion is not known to be over.
    /// Those of `blocks` that a slice of some file's chunk map names, whatever their
    /// records count: read page by page from the store, off the writer (see
    /// `collect_garbage` in `lib.rs`).
    pub fn named_by_slices(
        &self,
        blocks: &std::collections::HashSet<BlockId>,
    ) -> FsResult<std::collections::HashSet<BlockId>> {
        let mut named = std::collections::HashSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_raw(Cf::Chunks, &[], after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else {
                return Ok(named);
            };
            after = Some(last.clone());
            for (_, value) in &page {
                let slices: Vec<Slice> = decode("chunk", value)?;
                named.extend(
                    slices
                        .iter()
                        .map(|s| s.block)
                        .filter(|b| blocks.contains(b)),
                );
            }
        }
    }

    /// Up to `limit` kept answers to clients' changes made before `before`, by session
    /// and number (see [`ops::apply`]).
    pub fn answers_before(&self, before: Timestamp, limit: usize) -> FsResult<Vec<(u64, u64)>> {
        let mut old = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        while old.len() < limit {
            let page =
                self.store
                    .scan_raw(Cf::Meta, keys::META_REQUEST_PREFIX, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            for (key, value) in &page {
                match (keys::request_of(key), ops::answered_at(value)) {
                    (Some(change), Ok(at)) if at < before => old.push(change),
                    (Some(_), Ok(_)) => {}
                    // Unreadable: forgotten too, it can answer nothing.
                    (Some(change), Err(_)) => old.push(change),
                    (None, _) => {}
                }
            }
        }
        old.truncate(limit);
        Ok(old)
    }

    pub fn tombstones(&self) -> FsResult<Vec<BlockId>> {
        self.store.tombstones()
    }

    /// Files with no name left, waiting for their last close.
    pub fn orphans(&self) -> FsResult<Vec<Ino>> {
        self.store.orphans()
    }

    /// The namespace recounted against itself ([`crate::check`]), off the runtime's threads.
    pub async fn check_namespace(&self) -> FsResult<cairn_common::proto::NamespaceCheck> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || crate::check::check(&store))
            .await
            .map_err(|e| FsError::io(format!("the namespace check stopped: {e}")))?
    }

    pub fn inode_count(&self) -> FsResult<u64> {
        Ok(self.store.meta_u64(META_INODE_COUNT)?.unwrap_or(0))
    }

    /// Every block with its record (refcount, replication).
    pub fn blocks(&self) -> FsResult<Vec<(BlockId, BlockRecord)>> {
        self.store.blocks()
    }

    pub fn block_count(&self) -> FsResult<u64> {
        self.store.count_blocks()
    }
}

impl Drop for MetaEngine {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has written what it holds.
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // The group's Raft stops once the writer no longer proposes.
        self.group.take();
        // The syncer holds the store: it is closed once the syncer has synced and ended.
        self.wal.stop();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

/// How [`MetaEngine::open_with`] opens an engine.
struct Opening {
    /// Where the ops of each group proposed go, in order (for tests that replay them).
    journal: Option<Journal>,
    /// The most ops waiting for the writer.
    queue: usize,
    seat: Seat,
}

impl Default for Opening {
    fn default() -> Opening {
        Opening {
            journal: None,
            queue: MAX_QUEUED,
            seat: Seat::alone(),
        }
    }
}

/// What the writer decides beside the ops: orphans it purges, blocks it condemns.
struct Deciders {
    opens: Arc<OpenTable>,
    gc: Arc<Gc>,
    versions: Arc<DirVersions>,
    feed: Arc<ChangeFeed>,
    health: Arc<WriteHealth>,
    wal: Arc<WalSync>,
    /// Where the ops of each group written go, in the order applied (for tests that replay
    /// them).
    journal: Option<Journal>,
    largest_group: Arc<std::sync::atomic::AtomicUsize>,
}

/// The ops the writer applied, as a replicated log would carry them.
type Journal = Arc<std::sync::Mutex<Vec<MetaOp>>>;

/// What one op of a group wrote, for the change counts and the feed.
struct Written {
    /// Its place in the group.
    index: usize,
    /// The connection it came through.
    origin: u64,
    /// What its answer accounts for (see [`answered`]).
    answered: Vec<Ino>,
    changes: Vec<Change>,
}

/// Decisions taken in one group, made good or undone by whether its write succeeds.
#[derive(Default)]
struct Decided {
    purging: Vec<Ino>,
    condemned: Vec<BlockId>,
}

/// More directories above one another than a path of `PATH_MAX` bytes can name.
const MAX_DEPTH: usize = 4096;

/// Brings a database of an older format to [`FORMAT_VERSION`]. Pages commit one at a
/// time and the format is recorded last, so an upgrade cut short runs again, whole, at the
/// next start.
fn upgrade(store: &Store, from: u64) -> anyhow::Result<()> {
    info!(from, to = FORMAT_VERSION, "upgrading the metadata format");
    if from < 2 {
        count_stored(store)?;
    }
    if from < 3 {
        index_links(store)?;
    }
    let mut txn = store.txn();
    txn.put_meta_u64(META_FORMAT, FORMAT_VERSION);
    store.commit(txn, true)?;
    info!("metadata upgraded to format {FORMAT_VERSION}");
    Ok(())
}

/// Runs `f` over every record of `cf`, a page at a time; each page's writes commit (synced)
/// before the next page is read.
fn each_page(
    store: &Store,
    cf: Cf,
    mut f: impl FnMut(&mut Txn<'_>, &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    const PAGE: usize = 1024;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_raw(cf, &[], after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        let mut txn = store.txn();
        f(&mut txn, &page)?;
        store.commit(txn, true)?;
    }
}

/// Format 3 keeps where every name of a file is: its record's `parent` names the directory
/// of one of them (the first in key order), the `links` family the others (see
/// [`keys::link`]).
fn index_links(store: &Store) -> anyhow::Result<()> {
    // An upgrade cut short runs again from a clean index.
    each_page(store, Cf::Links, |txn, page| {
        for (key, _) in page {
            txn.delete(Cf::Links, key.clone());
        }
        Ok(())
    })?;
    let mut named = std::collections::HashSet::new();
    let mut others = 0u64;
    each_page(store, Cf::Dentries, |txn, page| {
        for (key, value) in page {
            let d: Dentry = decode("dentry", value)?;
            if d.kind == FileKind::Dir || key.len() <= 8 {
                continue;
            }
            let parent = Ino(u64::from_be_bytes(key[..8].try_into()?));
            let Some(mut rec) = txn.inode(d.ino)? else {
                continue;
            };
            // Only files with several names need remembering which was seen first.
            if rec.attr.nlink > 1 && !named.insert(d.ino) {
                txn.put_raw(
                    Cf::Links,
                    keys::link(d.ino, parent, keys::dentry_name(key)),
                    Vec::new(),
                );
                others += 1;
            } else if rec.parent != parent {
                rec.parent = parent;
                txn.put_inode(&rec);
            }
        }
        Ok(())
    })?;
    info!(others, "where the names of files are, recorded");
    Ok(())
}

/// Format 1 did not count the bytes each file stores: every inode is rewritten with its
/// count, read from its chunks.
fn count_stored(store: &Store) -> anyhow::Result<()> {
    let mut inodes = 0u64;
    each_page(store, Cf::Inodes, |txn, page| {
        for (_, value) in page {
            let mut rec = decode_inode(value)?;
            if rec.attr.kind == FileKind::File {
                let mut stored = 0;
                let prefix = keys::chunk_prefix(rec.attr.ino);
                for (_, chunk) in store.scan_raw(Cf::Chunks, &prefix, None, usize::MAX)? {
                    let slices: Vec<Slice> = decode("chunk", &chunk)?;
                    stored += layout::covered(&slices);
                }
                rec.attr.stored = stored;
            }
            txn.put_inode(&rec);
        }
        inodes += page.len() as u64;
        Ok(())
    })?;
    info!(inodes, "stored bytes counted");
    Ok(())
}

fn write_loop(
    store: Arc<Store>,
    rx: mpsc::Receiver<Pending>,
    deciders: Deciders,
    group: Arc<Group>,
) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while pending.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        deciders
            .largest_group
            .fetch_max(pending.len(), std::sync::atomic::Ordering::Relaxed);
        write_group(&store, &group, pending, &deciders);
    }
}

/// Decides the ops of `pending` (see [`decide`]), has the group's log take them as one
/// entry, and answers each with what applying it gave, once it is applied here.
fn write_group(store: &Store, group: &Group, pending: Vec<Pending>, deciders: &Deciders) {
    // Orphans being purged in this group: opens of them fail until it is written.
    let mut decided = Decided::default();
    let mut results: Vec<Option<FsResult<MetaReply>>> = Vec::with_capacity(pending.len());
    // The ops proposed, with the place in `pending` of the one each answers.
    let mut ops = Vec::with_capacity(pending.len());
    let mut proposed = Vec::with_capacity(pending.len());
    let view = store.txn();
    for (index, p) in pending.iter().enumerate() {
        match decide(&view, p, deciders, &mut decided) {
            Ok(op) => {
                ops.push(op.into_owned());
                proposed.push(index);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    drop(view);
    let journal = deciders.journal.as_ref().map(|_| ops.clone());
    let written = if ops.is_empty() {
        Ok(Answer::default())
    } else {
        deciders
            .health
            .room()
            .and_then(|()| group.propose(Proposal { ops }))
    };
    let mut breaks: Vec<Breaks> = pending.iter().map(|_| Breaks::default()).collect();
    match written {
        Ok(answer) => {
            if !proposed.is_empty() {
                deciders.wal.wrote();
            }
            deciders.health.written();
            // Each op's changed directories: one count each per op, so two ops in one group
            // are two changes.
            let mut counted = Vec::new();
            let mut removed = Vec::new();
            for (index, applied) in proposed.iter().copied().zip(answer.applied) {
                let p = &pending[index];
                let mut reply = applied.reply;
                if let (MetaOpKind::Create(c), Ok(MetaReply::Created(created))) =
                    (&p.op.kind, &mut reply)
                {
                    if let Some(claim) = c.open {
                        // The creator writes it: another mount that opens it meanwhile is
                        // told so.
                        let shared =
                            deciders
                                .opens
                                .claim(claim.session, created.attr.ino, claim.gen, true);
                        created.shared = shared == Some(true);
                    }
                }
                if reply.is_ok() {
                    removed.extend(applied.removed);
                    counted.push(Written {
                        index,
                        origin: p.origin,
                        answered: answered(&p.op.kind, reply.as_ref().ok()),
                        changes: applied.changes,
                    });
                }
                results[index] = Some(reply);
            }
            deciders.versions.count(&mut counted, &removed);
            for op in counted {
                breaks[op.index] = deciders.feed.push(op.origin, &op.answered, op.changes);
            }
            deciders.feed.removed(&removed);
            if let (Some(to), Some(ops)) = (&deciders.journal, journal) {
                to.lock().unwrap_or_else(|e| e.into_inner()).extend(ops);
            }
        }
        Err(e) => {
            // A group that lost its leader or quorum refuses changes; its disk has not
            // failed, and the writes resume under the next leader.
            if !matches!(e, FsError::Unavailable(_) | FsError::NotLeader(_)) {
                deciders.health.failed(&e, pending.len());
            }
            deciders.gc.abandon(&decided.condemned);
            for index in proposed {
                results[index] = Some(Err(e.clone()));
            }
        }
    }
    for ino in decided.purging {
        deciders.opens.purged(ino);
    }
    for ((p, r), breaks) in pending.into_iter().zip(results).zip(breaks) {
        let r = r.unwrap_or_else(|| Err(FsError::io("metadata writer lost an op's answer")));
        let _ = p.reply.send((r, breaks));
    }
}

/// The inodes whose new state the answer to `kind` gives its client, or which its client
/// forgets on its own (see the client's `fresh.rs`): the change feed need not tell it of
/// their changes, nor of the entries of those directories. It is told of the rest (a file
/// moved to the trash, a name another op of the same group replaced).
fn answered(kind: &MetaOpKind, reply: Option<&MetaReply>) -> Vec<Ino> {
    let mut inos = match kind {
        MetaOpKind::Mkdir(r) => vec![r.parent],
        MetaOpKind::Create(r) => vec![r.parent],
        MetaOpKind::Mknod(r) => vec![r.parent],
        MetaOpKind::Symlink(r) => vec![r.parent],
        MetaOpKind::Link(r) => vec![r.new_parent],
        MetaOpKind::Unlink(r) => vec![r.parent],
        MetaOpKind::Rmdir(r) => vec![r.parent],
        MetaOpKind::Rename(r) => vec![r.parent, r.new_parent],
        MetaOpKind::SetAttr { ino, .. } => vec![*ino],
        MetaOpKind::SetXattr(r) => vec![r.ino],
        MetaOpKind::RemoveXattr(r) => vec![r.ino],
        MetaOpKind::SetReplication(r) => vec![r.ino],
        MetaOpKind::CommitSlices(r) => vec![r.ino],
        MetaOpKind::CopyRange(r) => vec![r.dst],
        MetaOpKind::Punch(r) => vec![r.ino],
        MetaOpKind::Accessed(r) => vec![r.ino],
        _ => Vec::new(),
    };
    match reply {
        Some(MetaReply::Attr(a)) | Some(MetaReply::Copied { attr: a, .. }) => inos.push(a.ino),
        Some(MetaReply::Created(c)) => inos.push(c.attr.ino),
        // The remover is told what the name named and the trash directory a file went to,
        // and forgets them: hearing of them again would only wake it.
        Some(MetaReply::Removed { ino, trash }) => {
            inos.push(*ino);
            trashed(&mut inos, trash);
        }
        // The answer names them all for the renamer to forget.
        Some(MetaReply::Renamed {
            moved,
            replaced,
            trash,
        }) => {
            inos.push(*moved);
            inos.extend(replaced);
            trashed(&mut inos, trash);
        }
        _ => {}
    }
    inos
}

/// A removed file went to the trash: its directory is answered for; `/` is not when the op
/// made `/.trash` in it (the client knows only its own change there).
fn trashed(inos: &mut Vec<Ino>, trash: &Option<crate::trash::Moved>) {
    if let Some(moved) = trash {
        inos.push(moved.dir);
        if moved.made_root_entry {
            inos.retain(|ino| *ino != Ino::ROOT);
        }
    }
}

/// The op to apply for `pending`. What only this namenode knows — which files clients hold
/// open, which garbage blocks have waited out their grace — is decided here and written
/// into the op, so that [`ops::apply`] alone, a function of the op and the stored state,
/// gives the same result on every member of the group that applies it. The ops that carry
/// such decisions name the files and blocks the writer found free to go (marked as going,
/// in `decided`, until the group is written): a purge its orphans, a collection its
/// blocks, an unlink or a rename over a name the file it may free with the name.
fn decide<'p>(
    txn: &Txn<'_>,
    pending: &'p Pending,
    deciders: &Deciders,
    decided: &mut Decided,
) -> FsResult<std::borrow::Cow<'p, MetaOp>> {
    let op = &pending.op;
    let kind = match &op.kind {
        MetaOpKind::Purge { inos } => {
            let mut free = Vec::new();
            for &ino in inos {
                // Most files let go of still have a name: nothing to do, and nothing to
                // hold up (an open of a file being purged fails). One opened again
                // meanwhile (or still) is purged by its last close.
                if ops::is_orphan(txn, ino)? && purgeable(deciders, pending.origin, ino, false) {
                    decided.purging.push(ino);
                    free.push(ino);
                }
            }
            MetaOpKind::Purge { inos: free }
        }
        MetaOpKind::CollectBlocks { blocks } => {
            let mut due = Vec::new();
            for block in blocks {
                // Referenced again since it was marked: it stays.
                if !ops::is_referenced(txn, block)? && deciders.gc.begin_collect(block) {
                    decided.condemned.push(*block);
                    due.push(*block);
                }
            }
            MetaOpKind::CollectBlocks { blocks: due }
        }
        MetaOpKind::Unlink(r) => {
            return freeing(txn, pending, deciders, decided, r.parent, &r.name, false)
        }
        MetaOpKind::Rename(r) if r.mode == cairn_common::proto::RenameMode::Replace => {
            return freeing(
                txn,
                pending,
                deciders,
                decided,
                r.new_parent,
                &r.new_name,
                true,
            )
        }
        _ => return Ok(std::borrow::Cow::Borrowed(op)),
    };
    Ok(std::borrow::Cow::Owned(MetaOp {
        now: op.now,
        caller: op.caller.clone(),
        kind,
        request: None,
        free: Vec::new(),
    }))
}

/// `pending`, an op that removes the name `name` in `parent` (replacing it with another,
/// if `replacing`), with the file the name is the last of in [`MetaOp::free`] when nobody
/// holds that file (marked as going, in `decided`, until the group is written): the op
/// then frees it with the name.
fn freeing<'p>(
    txn: &Txn<'_>,
    pending: &'p Pending,
    deciders: &Deciders,
    decided: &mut Decided,
    parent: Ino,
    name: &[u8],
    replacing: bool,
) -> FsResult<std::borrow::Cow<'p, MetaOp>> {
    let op = &pending.op;
    let Some(entry) = txn.dentry(parent, name)? else {
        return Ok(std::borrow::Cow::Borrowed(op));
    };
    let (Some(dir), Some(file)) = (txn.inode(parent)?, txn.inode(entry.ino)?) else {
        return Ok(std::borrow::Cow::Borrowed(op));
    };
    let last = file.attr.kind == FileKind::File && file.attr.nlink <= 1;
    if !last
        || crate::trash::takes(txn, &dir, &file, replacing)?
        || !purgeable(deciders, pending.origin, entry.ino, true)
    {
        return Ok(std::borrow::Cow::Borrowed(op));
    }
    decided.purging.push(entry.ino);
    Ok(std::borrow::Cow::Owned(MetaOp {
        free: vec![entry.ino],
        ..op.clone()
    }))
}

/// May orphan `ino` be freed now? Not while a client holds it open, nor while one holding
/// a lease on it (other than `origin`) may have it open without the namenode knowing yet
/// (it says so before it reads of this change): a later sweep purges it if not. With
/// `breaking`, the op at hand breaks those leases. Marks it as being purged if so.
fn purgeable(deciders: &Deciders, origin: u64, ino: Ino, breaking: bool) -> bool {
    !deciders.feed.may_be_open_elsewhere(ino, origin, breaking) && deciders.opens.begin_purge(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::attr::SetAttr;
    use cairn_common::proto::{Mkdir, Rename, RenameMode};
    use std::time::Duration;

    /// An engine (not synced) over a fresh directory, with the open table it decides with.
    fn new_engine() -> (tempfile::TempDir, Arc<OpenTable>, MetaEngine) {
        let dir = tempfile::tempdir().unwrap();
        let opens = Arc::new(OpenTable::new(Duration::from_secs(30), Duration::ZERO));
        let gc = Arc::new(Gc::new(Duration::from_secs(300), Duration::from_secs(30)));
        let engine = MetaEngine::open(dir.path(), 3, Durability::Never, opens.clone(), gc).unwrap();
        (dir, opens, engine)
    }

    fn create(parent: Ino, name: &str) -> MetaOpKind {
        MetaOpKind::new_file(parent, name.into())
    }

    /// One change a client may ask for, with numbers drawn from everywhere in their range.
    #[derive(Clone, Debug)]
    enum Wild {
        Size(u8, u64),
        Punch(u8, u64, u64, bool),
        Copy(u8, u64, u8, u64, u64),
        Commit(u8, u32, u64, Vec<(u32, u32, u32, u32, u32)>),
        Times(u8, i64, u32),
        Seek(u8, u64, bool),
        Chunks(u8, u32, u32),
    }

    fn wild() -> impl proptest::strategy::Strategy<Value = Wild> {
        use proptest::prelude::*;
        let n = || prop_oneof![any::<u64>(), 0u64..(1 << 30), Just(u64::MAX - 1)];
        prop_oneof![
            (any::<u8>(), n()).prop_map(|(f, s)| Wild::Size(f, s)),
            (any::<u8>(), n(), n(), any::<bool>()).prop_map(|(f, o, l, k)| Wild::Punch(f, o, l, k)),
            (any::<u8>(), n(), any::<u8>(), n(), n())
                .prop_map(|(a, ao, b, bo, l)| Wild::Copy(a, ao, b, bo, l)),
            (
                any::<u8>(),
                any::<u32>(),
                n(),
                proptest::collection::vec(any::<(u32, u32, u32, u32, u32)>(), 0..3)
            )
                .prop_map(|(f, c, s, sl)| Wild::Commit(f, c, s, sl)),
            (any::<u8>(), any::<i64>(), any::<u32>()).prop_map(|(f, s, n)| Wild::Times(f, s, n)),
            (any::<u8>(), n(), any::<bool>()).prop_map(|(f, o, h)| Wild::Seek(f, o, h)),
            (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(f, a, c)| Wild::Chunks(f, a, c)),
        ]
    }

    proptest::proptest! {
        // A few dozen cases in the suite; `CAIRN_FUZZ_CASES=100000` runs it for longer.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            cairn_common::fuzz_cases(24)
        ))]
        /// Whatever numbers a client sends, the engine answers (an error or not) and goes
        /// on serving: no overflow, no panic, no wedged writer.
        #[test]
        fn numbers_from_anywhere_in_their_range_never_break_the_engine(
            ops in proptest::collection::vec(wild(), 1..24)
        ) {
            use cairn_common::proto::{CommitSlices, CopyRange, Punch};
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let (_dir, _opens, engine) = new_engine();
                let mut files = Vec::new();
                for name in ["a", "b", "c"] {
                    match engine.submit(Caller::ROOT, create(Ino::ROOT, name)).await.unwrap() {
                        MetaReply::Created(c) => files.push(c.attr.ino),
                        other => panic!("{other:?}"),
                    }
                }
                let file = |i: u8| files[i as usize % files.len()];
                for op in ops {
                    let kind = match op {
                        Wild::Size(f, size) => MetaOpKind::SetAttr {
                            ino: file(f),
                            set: SetAttr { size: Some(size), ..SetAttr::default() },
                            open_for_write: true,
                        },
                        Wild::Punch(f, offset, len, keep_size) => MetaOpKind::Punch(Punch {
                            ino: file(f), offset, len, keep_size,
                        }),
                        Wild::Copy(a, src_off, b, dst_off, len) => MetaOpKind::CopyRange(CopyRange {
                            src: file(a), src_off, dst: file(b), dst_off, len,
                        }),
                        Wild::Commit(f, chunk, size, slices) => MetaOpKind::CommitSlices(CommitSlices {
                            ino: file(f),
                            slices: slices
                                .into_iter()
                                .map(|(pos, len, block_off, block_len, _)| {
                                    (chunk, cairn_common::layout::Slice {
                                        pos, len, block: cairn_common::BlockId([7; 32]), block_off, block_len,
                                    })
                                })
                                .collect(),
                            size,
                            mtime: Timestamp::now(),
                        }),
                        Wild::Times(f, secs, nanos) => MetaOpKind::SetAttr {
                            ino: file(f),
                            set: SetAttr {
                                mtime: Some(cairn_common::attr::TimeSet::At(Timestamp { secs, nanos })),
                                ..SetAttr::default()
                            },
                            open_for_write: false,
                        },
                        Wild::Seek(f, offset, hole) => {
                            let _ = engine.seek(file(f), offset, hole);
                            continue;
                        }
                        Wild::Chunks(f, first, count) => {
                            let _ = engine.chunks(file(f), first, count.min(64));
                            continue;
                        }
                    };
                    let _ = engine.submit(Caller::ROOT, kind).await;
                }
                // Still serving, and every file still readable.
                for ino in &files {
                    engine.getattr(*ino).unwrap();
                    engine.chunks(*ino, 0, 4).unwrap();
                }
                let more = engine.submit(Caller::ROOT, create(Ino::ROOT, "after")).await;
                assert!(more.is_ok(), "{more:?}");
            });
        }
    }

    async fn reserve(engine: &MetaEngine, count: u32) -> (u64, u32) {
        let reserve = MetaOpKind::ReserveInos { count };
        match engine.submit(Caller::ROOT, reserve).await.unwrap() {
            MetaReply::Inos { first, count } => (first, count),
            other => panic!("{other:?}"),
        }
    }

    fn create_with_ino(name: &str, ino: u64) -> MetaOpKind {
        let MetaOpKind::Create(mut c) = create(Ino::ROOT, name) else {
            unreachable!()
        };
        c.ino = Some(Ino(ino));
        MetaOpKind::Create(c)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reserved_numbers_given_back_unused_are_reserved_again_and_no_others() {
        let (_dir, _, engine) = new_engine();
        let (first, _) = reserve(&engine, 8).await;
        engine
            .submit(Caller::ROOT, create_with_ino("used", first + 2))
            .await
            .unwrap();
        // Given back: two unused, one used, one never handed out, the root.
        let back = vec![first, first + 1, first + 2, first + 100, 1];
        engine
            .submit(Caller::ROOT, MetaOpKind::ReturnInos(back))
            .await
            .unwrap();
        assert_eq!(engine.store.txn().ino_pool().unwrap().len(), 2);
        assert_eq!(reserve(&engine, 8).await, (first, 2), "the unused, first");
        assert_eq!(reserve(&engine, 8).await, (first + 8, 8), "then new ones");
        // A create replayed after a restart may take a number that came back meanwhile:
        // it is no longer handed out.
        engine
            .submit(
                Caller::ROOT,
                MetaOpKind::ReturnInos(vec![first + 3, first + 4]),
            )
            .await
            .unwrap();
        engine
            .submit(Caller::ROOT, create_with_ino("replayed", first + 3))
            .await
            .unwrap();
        assert_eq!(reserve(&engine, 8).await, (first + 4, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_takes_a_reserved_inode_number_once_and_no_other() {
        let (_dir, _, engine) = new_engine();
        let first = reserve(&engine, 4).await.0;
        let with_ino = |name: &str, ino: u64| {
            let MetaOpKind::Create(mut c) = create(Ino::ROOT, name) else {
                unreachable!()
            };
            c.ino = Some(Ino(ino));
            c.at = Some(cairn_common::attr::Timestamp {
                secs: 1_000,
                nanos: 7,
            });
            MetaOpKind::Create(c)
        };
        let made = match engine.submit(Caller::ROOT, with_ino("a", first + 1)).await {
            Ok(MetaReply::Created(c)) => c.attr,
            other => panic!("{other:?}"),
        };
        assert_eq!(made.ino, Ino(first + 1));
        assert_eq!(made.mtime.secs, 1_000, "made when its creator said");
        let again = engine.submit(Caller::ROOT, with_ino("b", first + 1)).await;
        assert!(matches!(again, Err(FsError::Invalid(_))), "{again:?}");
        let unreserved = engine.submit(Caller::ROOT, with_ino("c", first + 4)).await;
        assert!(
            matches!(unreserved, Err(FsError::Invalid(_))),
            "{unreserved:?}"
        );
        // The next number handed out is past those reserved.
        match engine.submit(Caller::ROOT, create(Ino::ROOT, "d")).await {
            Ok(MetaReply::Created(c)) => assert_eq!(c.attr.ino, Ino(first + 4)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_are_answered_before_the_window_syncs_them_and_a_barrier_does() {
        let dir = tempfile::tempdir().unwrap();
        let opens = Arc::new(OpenTable::new(Duration::from_secs(30), Duration::ZERO));
        let gc = Arc::new(Gc::new(Duration::from_secs(300), Duration::from_secs(30)));
        let hour = Durability::Window(Duration::from_secs(3600));
        let engine = MetaEngine::open(dir.path(), 3, hour, opens.clone(), gc.clone()).unwrap();
        for i in 0..20 {
            engine
                .submit(Caller::ROOT, create(Ino::ROOT, &format!("f{i}")))
                .await
                .unwrap();
        }
        assert_eq!(
            engine.log_syncs(),
            0,
            "answered without waiting for the window"
        );
        engine.sync().await.unwrap();
        assert_eq!(engine.log_syncs(), 1, "one barrier, one sync");
        drop(engine);
        // Reopened, everything answered is there.
        let engine = MetaEngine::open(dir.path(), 3, hour, opens, gc).unwrap();
        for i in 0..20 {
            engine
                .lookup(&Caller::ROOT, Ino::ROOT, format!("f{i}").as_bytes())
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_change_of_a_directorys_entries_counts_once_even_in_one_group() {
        let (_dir, _, engine) = new_engine();
        let engine = Arc::new(engine);
        let mkdir = |name: &str| {
            MetaOpKind::Mkdir(Mkdir {
                parent: Ino::ROOT,
                name: name.into(),
                perm: 0o755,
                uid: 0,
                gid: 0,
            })
        };
        let attr = |r: FsResult<MetaReply>| match r.unwrap() {
            MetaReply::Attr(a) => a,
            other => panic!("{other:?}"),
        };
        let a = attr(engine.submit(Caller::ROOT, mkdir("a")).await).ino;
        let b = attr(engine.submit(Caller::ROOT, mkdir("b")).await).ino;
        let v = engine.versions();
        assert_eq!((v.get(Ino::ROOT), v.get(a), v.get(b)), (2, 0, 0));
        // Queued together, written as one group or a few: still one change each.
        let queued: Vec<_> = (0..50)
            .map(|i| {
                engine
                    .enqueue(0, Caller::ROOT, create(a, &format!("f{i}")), None)
                    .unwrap()
            })
            .collect();
        for rx in queued {
            rx.await.unwrap().0.unwrap();
        }
        assert_eq!(v.get(a), 50);
        // The feed tells each change of a's entries with the count it brought a to.
        let feed = engine.feed().since(99, v.epoch, 0);
        let counts: Vec<u64> = feed
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Entries(dir, count) if *dir == a => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(counts, (1..=50).collect::<Vec<_>>());
        // A change refused changes nothing.
        assert!(engine.submit(Caller::ROOT, create(a, "f0")).await.is_err());
        assert_eq!(v.get(a), 50);
        // A rename counts in both directories, once in one.
        let rename = |from: Ino, to: Ino, name: &str, new: &str| {
            MetaOpKind::Rename(Rename {
                parent: from,
                name: name.into(),
                new_parent: to,
                new_name: new.into(),
                mode: RenameMode::Replace,
            })
        };
        engine
            .submit(Caller::ROOT, rename(a, b, "f1", "g1"))
            .await
            .unwrap();
        assert_eq!((v.get(a), v.get(b)), (51, 1));
        engine
            .submit(Caller::ROOT, rename(b, b, "g1", "h1"))
            .await
            .unwrap();
        assert_eq!(v.get(b), 2);
        // A directory removed is forgotten: its number never comes back.
        let held = v.len();
        let unlink = MetaOpKind::Unlink(cairn_common::proto::Unlink {
            parent: b,
            name: "h1".into(),
        });
        engine.submit(Caller::ROOT, unlink).await.unwrap();
        let rmdir = MetaOpKind::Rmdir(cairn_common::proto::Rmdir {
            parent: Ino::ROOT,
            name: "b".into(),
        });
        engine.submit(Caller::ROOT, rmdir).await.unwrap();
        assert_eq!(v.len(), held - 1);
        assert_eq!(v.get(Ino::ROOT), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_that_is_all_of_a_directory_comes_with_its_count() {
        let (_dir, _, engine) = new_engine();
        for name in ["a", "b", "c"] {
            engine
                .submit(Caller::ROOT, create(Ino::ROOT, name))
                .await
                .unwrap();
        }
        let listing = engine.list_dir(&Caller::ROOT, Ino::ROOT, 10, true).unwrap();
        let names: Vec<_> = listing.entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(listing.entries.iter().all(|e| e.attr.is_some()));
        let whole = listing.whole.expect("all of it");
        assert_eq!((whole.attr.ino, whole.version), (Ino::ROOT, 3));
        assert_eq!(whole.epoch, engine.versions().epoch);
        // A page that may not be all of it has no count.
        let first = engine.list_dir(&Caller::ROOT, Ino::ROOT, 3, false).unwrap();
        assert_eq!(first.entries.len(), 3);
        assert!(first.whole.is_none());
        // Listing needs read permission, as readdir does.
        let nobody = Caller {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
        };
        engine
            .submit(
                Caller::ROOT,
                MetaOpKind::SetAttr {
                    ino: Ino::ROOT,
                    set: cairn_common::attr::SetAttr {
                        perm: Some(0o711),
                        ..Default::default()
                    },
                    open_for_write: false,
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            engine.list_dir(&nobody, Ino::ROOT, 10, false),
            Err(FsError::AccessDenied)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_feed_tells_each_connection_what_its_answers_did_not() {
        use cairn_common::proto::Change;
        let (_dir, _, engine) = new_engine();
        let epoch = engine.feed().epoch;
        let file = match engine
            .submit_from(3, Caller::ROOT, create(Ino::ROOT, "f"))
            .await
        {
            Ok(MetaReply::Created(c)) => c.attr.ino,
            other => panic!("{other:?}"),
        };
        let mut made = vec![
            Change::Inode(Ino::ROOT),
            Change::Inode(file),
            Change::Entries(Ino::ROOT, 1),
        ];
        made.sort_by_key(|c| format!("{c:?}"));
        let mut seen = engine.feed().since(4, epoch, 0).changes;
        seen.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(seen, made, "another connection hears of all of it");
        let own = engine.feed().since(3, epoch, 0);
        assert!(own.complete && own.changes.is_empty(), "{own:?}");
        // An unlink's remover forgets the file by itself: it hears nothing, the others do.
        let unlink = MetaOpKind::Unlink(cairn_common::proto::Unlink {
            parent: Ino::ROOT,
            name: "f".into(),
        });
        engine.submit_from(3, Caller::ROOT, unlink).await.unwrap();
        let own = engine.feed().since(3, epoch, own.next);
        assert!(own.complete && own.changes.is_empty(), "{own:?}");
        let other = engine.feed().since(4, epoch, 0).changes;
        assert!(other.contains(&Change::Inode(file)), "{other:?}");
        // So does a renamer: the answer names what the rename moved and replaced.
        let mut made = Vec::new();
        for name in ["a", "b"] {
            match engine
                .submit_from(3, Caller::ROOT, create(Ino::ROOT, name))
                .await
            {
                Ok(MetaReply::Created(c)) => made.push(c.attr.ino),
                other => panic!("{other:?}"),
            }
        }
        let seen = engine.feed().since(3, epoch, 0).next;
        let rename = MetaOpKind::Rename(Rename {
            parent: Ino::ROOT,
            name: "a".into(),
            new_parent: Ino::ROOT,
            new_name: "b".into(),
            mode: RenameMode::Replace,
        });
        match engine.submit_from(3, Caller::ROOT, rename).await {
            Ok(MetaReply::Renamed {
                moved, replaced, ..
            }) => assert_eq!((moved, replaced), (made[0], Some(made[1]))),
            other => panic!("{other:?}"),
        }
        let own = engine.feed().since(3, epoch, seen);
        assert!(own.complete && own.changes.is_empty(), "{own:?}");
        let other = engine.feed().since(4, epoch, seen).changes;
        assert!(other.contains(&Change::Inode(made[0])), "{other:?}");
        // And an rmdir's remover.
        let mkdir = MetaOpKind::Mkdir(Mkdir {
            parent: Ino::ROOT,
            name: "d".into(),
            perm: 0o755,
            uid: 0,
            gid: 0,
        });
        engine.submit_from(3, Caller::ROOT, mkdir).await.unwrap();
        let seen = engine.feed().since(3, epoch, 0).next;
        let rmdir = MetaOpKind::Rmdir(cairn_common::proto::Rmdir {
            parent: Ino::ROOT,
            name: "d".into(),
        });
        engine.submit_from(3, Caller::ROOT, rmdir).await.unwrap();
        let own = engine.feed().since(3, epoch, seen);
        assert!(own.complete && own.changes.is_empty(), "{own:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_purge_frees_exactly_the_orphans_nobody_holds() {
        let (_dir, opens, engine) = new_engine();
        let mut files = Vec::new();
        for name in ["named", "let-go", "held"] {
            match engine.submit(Caller::ROOT, create(Ino::ROOT, name)).await {
                Ok(MetaReply::Created(c)) => files.push(c.attr.ino),
                other => panic!("{other:?}"),
            }
        }
        let [named, let_go, held] = files[..] else {
            unreachable!()
        };
        // One session has the last two open while their names go: they become orphans.
        opens.claim(7, let_go, 1, false);
        opens.claim(7, held, 1, false);
        for name in ["let-go", "held"] {
            let unlink = MetaOpKind::Unlink(cairn_common::proto::Unlink {
                parent: Ino::ROOT,
                name: name.into(),
            });
            engine.submit(Caller::ROOT, unlink).await.unwrap();
        }
        assert!(engine.getattr(let_go).is_ok(), "an open orphan is kept");
        assert_eq!(opens.renew(7, 2, &[held], &[]), vec![let_go]);
        let inos = vec![named, let_go, held];
        engine
            .submit(Caller::ROOT, MetaOpKind::Purge { inos })
            .await
            .unwrap();
        assert!(matches!(engine.getattr(let_go), Err(FsError::NotFound)));
        assert_eq!(engine.getattr(held).unwrap().nlink, 0);
        assert_eq!(engine.getattr(named).unwrap().nlink, 1);
        assert_eq!(engine.orphans().unwrap(), vec![held]);
        // Nothing was left marked as being purged: both can be opened.
        assert!(
            opens.claim(8, named, 1, false).is_some() && opens.claim(8, held, 1, false).is_some()
        );
    }

    /// What the writer decides on its own — which orphans nobody holds, which garbage is
    /// due — travels in the ops it applies: replaying them with `ops::apply` alone on the
    /// state the engine started from gives the same records byte for byte, as a replica
    /// applying a replicated log of them would hold. Ops that need those decisions are in
    /// the workload: purges with a file held and one let go, removals that leave orphans
    /// held or not, a collection with a block referenced again, a commit of a condemned
    /// block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replaying_the_ops_written_gives_the_same_records() {
        use cairn_common::proto::{Create, OpenClaim, SetXattr, Unlink, XattrMode};
        let dir = tempfile::tempdir().unwrap();
        let opens = Arc::new(OpenTable::new(Duration::from_secs(30), Duration::ZERO));
        let gc = Arc::new(Gc::new(Duration::ZERO, Duration::from_secs(30)));
        let journal = Journal::default();
        let how = Opening {
            journal: Some(journal.clone()),
            ..Opening::default()
        };
        let engine = MetaEngine::open_with(
            dir.path(),
            3,
            Durability::Never,
            opens.clone(),
            gc.clone(),
            how,
        )
        .unwrap();
        let start = engine.store.dump();
        let submit = |kind| engine.submit(Caller::ROOT, kind);
        let unlink = |name: &str| {
            MetaOpKind::Unlink(Unlink {
                parent: Ino::ROOT,
                name: name.into(),
            })
        };
        let mut ino = std::collections::HashMap::new();
        for name in ["held", "let-go", "closed", "named", "replaced", "mover"] {
            ino.insert(name, attr_after(&engine, create(Ino::ROOT, name)).await.ino);
        }
        // Created for opening: held from the start.
        let mut opened = Create::file(Ino::ROOT, b"opened".to_vec());
        opened.open = Some(OpenClaim { session: 9, gen: 1 });
        ino.insert(
            "opened",
            attr_after(&engine, MetaOpKind::Create(opened)).await.ino,
        );
        opens.claim(7, ino["held"], 1, false);
        opens.claim(7, ino["let-go"], 1, false);
        for name in ["held", "let-go", "closed", "opened"] {
            submit(unlink(name)).await.unwrap();
        }
        assert!(matches!(
            engine.getattr(ino["closed"]),
            Err(FsError::NotFound)
        ));
        assert_eq!(opens.renew(7, 2, &[ino["held"]], &[]), vec![ino["let-go"]]);
        let inos = ["named", "let-go", "held", "opened"]
            .map(|n| ino[n])
            .to_vec();
        submit(MetaOpKind::Purge { inos }).await.unwrap();
        assert!(matches!(
            engine.getattr(ino["let-go"]),
            Err(FsError::NotFound)
        ));
        assert_eq!(engine.orphans().unwrap(), vec![ino["held"], ino["opened"]]);
        // A rename over a file nobody holds frees it.
        let rename = MetaOpKind::Rename(Rename {
            parent: Ino::ROOT,
            name: b"mover".to_vec(),
            new_parent: Ino::ROOT,
            new_name: b"replaced".to_vec(),
            mode: RenameMode::Replace,
        });
        submit(rename).await.unwrap();
        assert!(matches!(
            engine.getattr(ino["replaced"]),
            Err(FsError::NotFound)
        ));
        // Garbage: two blocks go when their files are overwritten; the second is
        // referenced again before the collection.
        let (named, other) = (
            ino["named"],
            attr_after(&engine, create(Ino::ROOT, "other")).await.ino,
        );
        let (gone, back) = (BlockId([1; 32]), BlockId([3; 32]));
        for (file, tag) in [(named, 1), (named, 2), (other, 3), (other, 4)] {
            submit(commit(file, vec![(0, slice(0, 4096, tag))], 4096))
                .await
                .unwrap();
        }
        let mut due = gc.mark([gone, back]);
        due.sort_unstable_by_key(|b| b.0);
        assert_eq!(due, vec![gone, back]);
        submit(commit(other, vec![(0, slice(0, 4096, 3))], 4096))
            .await
            .unwrap();
        submit(MetaOpKind::CollectBlocks {
            blocks: vec![gone, back],
        })
        .await
        .unwrap();
        assert!(engine.block(&gone).unwrap().is_none());
        assert!(
            engine.block(&back).unwrap().is_some(),
            "a referenced block stays"
        );
        let late = submit(commit(named, vec![(0, slice(0, 4096, 1))], 4096)).await;
        assert!(
            late.is_err(),
            "a condemned block is not committed: {late:?}"
        );
        submit(MetaOpKind::ForgetCollected { blocks: vec![gone] })
            .await
            .unwrap();
        let xattr = MetaOpKind::SetXattr(SetXattr {
            ino: named,
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            mode: XattrMode::Any,
        });
        submit(xattr).await.unwrap();
        let end = engine.store.dump();

        let copy = tempfile::tempdir().unwrap();
        let replica = Store::open(copy.path()).unwrap();
        let mut txn = replica.txn();
        for (cf, key, value) in start {
            txn.put_raw(cf, key, value);
        }
        replica.commit(txn, false).unwrap();
        let ops = journal.lock().unwrap().clone();
        assert!(ops.len() > 20, "{} ops", ops.len());
        // The log holds the ops that failed too (the late commit): they fail again.
        for op in &ops {
            let mut txn = replica.txn();
            crate::group::machine::apply_ops(&mut txn, std::slice::from_ref(op));
            replica.commit(txn, false).unwrap();
        }
        // Where the group's log was applied to is the group's, not the ops'.
        let namespace = |dump: Vec<(Cf, Vec<u8>, Vec<u8>)>| {
            dump.into_iter()
                .filter(|(cf, key, _)| !(*cf == Cf::Meta && key.starts_with(b"raft_")))
                .collect::<Vec<_>>()
        };
        assert!(
            namespace(replica.dump()) == namespace(end),
            "the replay differs"
        );
    }

    /// A change named by its client is made once: asked for again (its answer lost with
    /// a connection), it is answered as the first time — a create with the same file, an
    /// unlink with what it removed — and not made again; to another certificate naming it,
    /// it is refused. The answers a client says it has are forgotten, and those kept too long.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_named_change_is_made_once_and_answered_again() {
        use cairn_common::proto::{RequestId, Unlink};
        let (_dir, _, engine) = new_engine();
        let named = |seq, forget: &[u64], holder: &[u8]| {
            Some(ops::Request {
                id: RequestId {
                    session: 42,
                    seq,
                    forget: forget.to_vec(),
                },
                holder: holder.to_vec(),
            })
        };
        let submit = |kind, request| engine.submit_named(3, Caller::ROOT, kind, request, None);
        let created = |reply| match reply {
            Ok(MetaReply::Created(c)) => c.attr.ino,
            other => panic!("{other:?}"),
        };
        let first = created(submit(create(Ino::ROOT, "f"), named(1, &[], b"me")).await);
        let again = created(submit(create(Ino::ROOT, "f"), named(1, &[], b"me")).await);
        assert_eq!(first, again, "the same file, not EEXIST");
        let other = submit(create(Ino::ROOT, "f"), named(1, &[], b"them")).await;
        assert!(matches!(other, Err(FsError::Invalid(_))), "{other:?}");
        let unlink = || {
            MetaOpKind::Unlink(Unlink {
                parent: Ino::ROOT,
                name: b"f".to_vec(),
            })
        };
        for _ in 0..2 {
            match submit(unlink(), named(2, &[], b"me")).await {
                Ok(MetaReply::Removed { ino, .. }) => assert_eq!(ino, first),
                other => panic!("{other:?}"),
            }
        }
        // Unnamed, the same change is made again: the name is gone.
        let plain = submit(unlink(), None).await;
        assert!(matches!(plain, Err(FsError::NotFound)), "{plain:?}");
        let kept = |seq| {
            engine
                .store
                .get_raw(Cf::Meta, &keys::request(42, seq))
                .unwrap()
                .is_some()
        };
        assert!(kept(1) && kept(2));
        // A refused change keeps nothing and forgets nothing.
        let refused = submit(unlink(), named(3, &[1, 2], b"me")).await;
        assert!(matches!(refused, Err(FsError::NotFound)), "{refused:?}");
        assert!(kept(1) && kept(2) && !kept(3));
        // The client has both answers: the next change forgets them.
        let next = submit(create(Ino::ROOT, "g"), named(4, &[1, 2], b"me")).await;
        created(next);
        assert!(!kept(1) && !kept(2) && kept(4));
        // Kept past any retry, the answers of a client that vanished go by age.
        let now = Timestamp::now();
        assert_eq!(engine.answers_before(now, 10).unwrap(), vec![(42, 4)]);
        let long_ago = Timestamp {
            secs: now.secs - 600,
            nanos: 0,
        };
        assert!(engine.answers_before(long_ago, 10).unwrap().is_empty());
        let old = engine.answers_before(now, 10).unwrap();
        submit(MetaOpKind::ForgetAnswers(old), None).await.unwrap();
        assert!(!kept(4) && engine.answers_before(now, 10).unwrap().is_empty());
    }

    /// A block record whose count of references is wrong (zero while a chunk map names
    /// it) is no reason to delete the block: the chunk maps are read for the candidates,
    /// and a slice of it that goes later leaves the count at zero, with an error said.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_named_by_a_chunk_map_is_found_whatever_its_record_counts() {
        use std::collections::HashSet;
        let (_dir, _, engine) = new_engine();
        let file = attr_after(&engine, create(Ino::ROOT, "f")).await.ino;
        let store_block = |tag| {
            let kind = commit(file, vec![(0, slice(0, 4096, tag))], 4096);
            engine.submit(Caller::ROOT, kind)
        };
        store_block(7).await.unwrap();
        let (named, other) = (BlockId([7; 32]), BlockId([8; 32]));
        let candidates = HashSet::from([named, other]);
        assert_eq!(
            engine.named_by_slices(&candidates).unwrap(),
            HashSet::from([named])
        );
        // The count goes wrong.
        let mut rec = engine.block(&named).unwrap().unwrap();
        assert_eq!(rec.refs, 1);
        rec.refs = 0;
        let mut txn = engine.store.txn();
        txn.put_block(&named, &rec);
        engine.store.commit(txn, false).unwrap();
        assert_eq!(
            engine.named_by_slices(&candidates).unwrap(),
            HashSet::from([named])
        );
        // Its slice goes: the change is made, and the count does not wrap below zero.
        store_block(9).await.unwrap();
        assert_eq!(engine.block(&named).unwrap().unwrap().refs, 0);
        assert!(engine.named_by_slices(&candidates).unwrap().is_empty());
    }

    /// The writer's queue is bounded: however many changes are asked for at once, no more
    /// than the bound wait for the writer (the rest wait to be queued), and all are made;
    /// a batch that reserved its places goes to the queue whole, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writers_queue_holds_at_most_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let opens = Arc::new(OpenTable::new(Duration::from_secs(30), Duration::ZERO));
        let gc = Arc::new(Gc::new(Duration::from_secs(300), Duration::from_secs(30)));
        let engine = MetaEngine::open_with(
            dir.path(),
            3,
            Durability::Never,
            opens,
            gc,
            Opening {
                queue: 4,
                ..Opening::default()
            },
        );
        let engine = Arc::new(engine.unwrap());
        let asked: Vec<_> = (0..300)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    engine
                        .submit(Caller::ROOT, create(Ino::ROOT, &format!("f{i}")))
                        .await
                })
            })
            .collect();
        for made in asked {
            made.await.unwrap().unwrap();
        }
        assert_eq!(engine.inode_count().unwrap(), 301);
        let largest = engine.largest_group();
        assert!((1..=4).contains(&largest), "a group of {largest}");
        // A batch holding its places: each op is queued at its first poll.
        let room = engine.reserve(3).await.unwrap();
        let batch = ["g0", "g1", "g2"].map(|name| {
            engine.submit_named(0, Caller::ROOT, create(Ino::ROOT, name), None, Some(&room))
        });
        for made in futures::future::join_all(batch).await {
            made.unwrap();
        }
    }

    /// Close-to-open under leases: a change of a file another connection holds a lease on
    /// is answered once that connection has read the feed past it (or can no longer trust
    /// its lease); the holder's own changes wait for nothing; a file leased elsewhere is
    /// not purged when its last name goes (it may be open there by the lease alone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_of_a_leased_file_is_answered_once_the_holder_read_of_it() {
        use cairn_common::attr::SetAttr;
        use cairn_common::proto::LEASE_TRUST;
        const HOLDER: u64 = 5;
        const OTHER: u64 = 6;
        let (_dir, _opens, engine) = new_engine();
        let engine = Arc::new(engine);
        let ino = match engine.submit(Caller::ROOT, create(Ino::ROOT, "f")).await {
            Ok(MetaReply::Created(c)) => c.attr.ino,
            other => panic!("{other:?}"),
        };
        let feed = engine.feed();
        let epoch = engine.versions().epoch;
        let chmod = |perm| MetaOpKind::SetAttr {
            ino,
            open_for_write: false,
            set: SetAttr {
                perm: Some(perm),
                ..SetAttr::default()
            },
        };
        let change_by = |origin, kind| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.submit_from(origin, Caller::ROOT, kind).await })
        };
        // The change `task` sent is answered, within `secs`.
        async fn answered(task: tokio::task::JoinHandle<FsResult<MetaReply>>, secs: u64) {
            tokio::time::timeout(Duration::from_secs(secs), task)
                .await
                .expect("answered in time")
                .unwrap()
                .unwrap();
        }

        assert!(
            feed.lease(HOLDER, ino).is_none(),
            "a lease only for a reader of the feed"
        );
        let mut at = feed.since(HOLDER, epoch, 0).next;
        let lease = feed.lease(HOLDER, ino).unwrap();
        assert_eq!(
            (lease.holder, lease.epoch, lease.from),
            (HOLDER, epoch, at),
            "given at the feed's end: the map read after holds every change before"
        );
        let own = change_by(HOLDER, chmod(0o600));
        answered(own, 5).await;
        assert_eq!(feed.leases(HOLDER), 1, "its own change keeps its lease");

        let change = change_by(OTHER, chmod(0o644));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !change.is_finished(),
            "answered before the holder heard of it"
        );
        assert_eq!(feed.leases(HOLDER), 0, "the change ends the lease");
        assert!(
            feed.may_be_open_elsewhere(ino, OTHER, false),
            "until it is read"
        );
        let read = feed.since(HOLDER, epoch, at);
        assert!(read.changes.contains(&Change::Inode(ino)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!change.is_finished(), "read, not yet applied");
        at = feed.since(HOLDER, epoch, read.next).next;
        answered(change, 5).await;
        assert!(!feed.may_be_open_elsewhere(ino, OTHER, false));

        // A holder that stops reading the feed is waited for while it may trust its lease.
        assert!(feed.lease(HOLDER, ino).is_some());
        let started = std::time::Instant::now();
        let change = change_by(OTHER, chmod(0o640));
        answered(change, 10).await;
        assert!(started.elapsed() >= LEASE_TRUST);

        // Leased elsewhere when its last name goes: an orphan, not purged.
        at = feed.since(HOLDER, epoch, at).next;
        at = feed.since(HOLDER, epoch, at).next;
        assert!(feed.lease(HOLDER, ino).is_some());
        let unlink = change_by(
            OTHER,
            MetaOpKind::Unlink(cairn_common::proto::Unlink {
                parent: Ino::ROOT,
                name: "f".into(),
            }),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = feed.since(HOLDER, epoch, at);
        feed.since(HOLDER, epoch, read.next);
        answered(unlink, 5).await;
        assert_eq!(engine.orphans().unwrap(), vec![ino]);
        assert_eq!(engine.getattr(ino).unwrap().nlink, 0);
    }

    /// Submits `kind`; the attributes it answers with.
    async fn attr_after(engine: &MetaEngine, kind: MetaOpKind) -> InodeAttr {
        match engine.submit(Caller::ROOT, kind).await.unwrap() {
            MetaReply::Attr(a) | MetaReply::Copied { attr: a, .. } => a,
            MetaReply::Created(c) => c.attr,
            other => panic!("{other:?}"),
        }
    }

    /// A slice of `len` bytes at `pos` in its chunk, all of a block of its own.
    fn slice(pos: u64, len: u32, tag: u8) -> Slice {
        Slice {
            pos: pos as u32,
            len,
            block: BlockId([tag; 32]),
            block_off: 0,
            block_len: len,
        }
    }

    fn commit(ino: Ino, slices: Vec<(u32, Slice)>, size: u64) -> MetaOpKind {
        MetaOpKind::CommitSlices(cairn_common::proto::CommitSlices {
            ino,
            slices,
            size,
            mtime: Timestamp::now(),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_counts_the_bytes_it_stores_and_not_its_holes() {
        use cairn_common::attr::SetAttr;
        use cairn_common::proto::{CopyRange, Punch};
        const MIB: u64 = 1 << 20;
        let (_dir, _, engine) = new_engine();
        let ino = attr_after(&engine, create(Ino::ROOT, "sparse")).await.ino;
        // 1 MiB at the start, 1 MiB in the second chunk: 130 MiB long, 2 MiB stored.
        let a = attr_after(
            &engine,
            commit(
                ino,
                vec![(0, slice(0, MIB as u32, 1)), (2, slice(0, MIB as u32, 2))],
                2 * CHUNK_SIZE + MIB,
            ),
        )
        .await;
        assert_eq!((a.size, a.stored), (2 * CHUNK_SIZE + MIB, 2 * MIB));
        // Overwriting stored bytes stores none more; writing past them does.
        let a = attr_after(
            &engine,
            commit(ino, vec![(0, slice(MIB / 2, MIB as u32, 3))], 0),
        )
        .await;
        assert_eq!(a.stored, 2 * MIB + MIB / 2);
        // A hole punched across both runs of data, keeping the size.
        let punch = |offset, len| {
            MetaOpKind::Punch(Punch {
                ino,
                offset,
                len,
                keep_size: true,
            })
        };
        let a = attr_after(&engine, punch(MIB, 2 * CHUNK_SIZE)).await;
        assert_eq!((a.size, a.stored), (2 * CHUNK_SIZE + MIB, MIB));
        let a = attr_after(&engine, punch(0, 3 * CHUNK_SIZE)).await;
        assert_eq!(a.stored, 0);
        // A copy by reference counts in the copy too, holes left out.
        let a = attr_after(&engine, commit(ino, vec![(1, slice(0, MIB as u32, 4))], 0)).await;
        assert_eq!(a.stored, MIB);
        let copy = attr_after(&engine, create(Ino::ROOT, "copy")).await.ino;
        let c = attr_after(
            &engine,
            MetaOpKind::CopyRange(CopyRange {
                src: ino,
                src_off: 0,
                dst: copy,
                dst_off: 0,
                len: u64::MAX,
            }),
        )
        .await;
        assert_eq!((c.size, c.stored), (2 * CHUNK_SIZE + MIB, MIB));
        // Truncating drops what is past the new end.
        let truncate = |size| MetaOpKind::SetAttr {
            ino: copy,
            set: SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
            open_for_write: false,
        };
        let c = attr_after(&engine, truncate(CHUNK_SIZE + MIB / 4)).await;
        assert_eq!((c.size, c.stored), (CHUNK_SIZE + MIB / 4, MIB / 4));
        let c = attr_after(&engine, truncate(10 * CHUNK_SIZE)).await;
        assert_eq!((c.size, c.stored), (10 * CHUNK_SIZE, MIB / 4));
        // The count is kept with the file, not only answered.
        assert_eq!(engine.getattr(copy).unwrap().stored, MIB / 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_format_1_namespace_is_upgraded_with_each_files_stored_bytes() {
        use crate::store::decode_inode;
        let (dir, opens, engine) = new_engine();
        let file = attr_after(&engine, create(Ino::ROOT, "f")).await.ino;
        let sub = attr_after(
            &engine,
            MetaOpKind::Mkdir(Mkdir {
                parent: Ino::ROOT,
                name: b"d".to_vec(),
                perm: 0o755,
                uid: 0,
                gid: 0,
            }),
        )
        .await;
        let size = 3 * CHUNK_SIZE;
        attr_after(
            &engine,
            commit(
                file,
                vec![(0, slice(100, 5000, 1)), (2, slice(7, 900, 2))],
                size,
            ),
        )
        .await;
        // A second name, in another directory.
        attr_after(
            &engine,
            MetaOpKind::Link(cairn_common::proto::Link {
                ino: file,
                new_parent: sub.ino,
                new_name: b"g".to_vec(),
            }),
        )
        .await;
        let sub = engine.getattr(sub.ino).unwrap();
        drop(engine);
        // Rewrite the records as format 1 wrote them: no count, and the format said so.
        {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.txn();
            for ino in [Ino::ROOT, file, sub.ino] {
                let rec = store.inode(ino).unwrap().unwrap();
                let a = &rec.attr;
                let old: crate::store::InodeRecordV1 = (
                    (
                        a.ino,
                        a.kind,
                        a.perm,
                        a.uid,
                        a.gid,
                        a.size,
                        a.nlink,
                        a.atime,
                        a.mtime,
                        a.ctime,
                        a.rdev,
                        a.replication,
                    ),
                    // A file's was not kept up to date before format 3.
                    if ino == file { Ino(999) } else { rec.parent },
                    rec.target.clone(),
                );
                txn.put_raw(Cf::Inodes, keys::inode(ino), crate::store::encode(&old));
            }
            // Nor the index of names (format 3).
            let links = store.scan_raw(Cf::Links, &[], None, usize::MAX).unwrap();
            assert!(!links.is_empty());
            for (k, _) in links {
                txn.delete(Cf::Links, k);
            }
            txn.put_meta_u64(META_FORMAT, 1);
            store.commit(txn, true).unwrap();
            let raw = store
                .get_raw(Cf::Inodes, &keys::inode(file))
                .unwrap()
                .unwrap();
            assert_eq!(raw[0], 1);
            // Read before the upgrade, a file counts as all stored, as it showed then.
            assert_eq!(decode_inode(&raw).unwrap().attr.stored, size);
        }
        let gc = Arc::new(Gc::new(Duration::from_secs(300), Duration::from_secs(30)));
        let engine = MetaEngine::open(dir.path(), 3, Durability::Never, opens, gc).unwrap();
        let f = engine.getattr(file).unwrap();
        assert_eq!((f.size, f.stored), (size, 5900));
        assert_eq!(engine.getattr(sub.ino).unwrap(), sub);
        assert_eq!(
            engine.store.meta_u64(META_FORMAT).unwrap(),
            Some(FORMAT_VERSION)
        );
        // Where the file's names are is known again.
        assert_eq!(
            crate::check::check(&engine.store).unwrap().examples,
            Vec::<String>::new()
        );
        assert!(engine.within(file, sub.ino).unwrap());
        assert_eq!(engine.store.inode(file).unwrap().unwrap().parent, Ino::ROOT);
        drop(engine);
        // A namespace from a newer Cairn is refused, not misread.
        {
            let store = Store::open(dir.path()).unwrap();
            let mut txn = store.txn();
            txn.put_meta_u64(META_FORMAT, FORMAT_VERSION + 1);
            store.commit(txn, true).unwrap();
        }
        let gc = Arc::new(Gc::new(Duration::from_secs(300), Duration::from_secs(30)));
        let opens = Arc::new(OpenTable::new(Duration::from_secs(30), Duration::ZERO));
        let refused = MetaEngine::open(dir.path(), 3, Durability::Never, opens, gc)
            .err()
            .expect("a newer format is refused");
        assert!(
            refused.to_string().contains("newer than this namenode"),
            "{refused}"
        );
    }
}
