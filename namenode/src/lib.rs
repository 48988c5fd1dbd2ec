//! The Cairn namenode: owns the namespace (inodes, directory entries, file chunk maps, block
//! refcounts) in RocksDB, knows which datanodes are alive and which blocks they hold, and
//! places new blocks. It never sees file bytes.

pub mod authz;
pub mod balance;
pub mod blockmap;
pub mod check;
pub mod config;
pub mod emptier;
pub mod engine;
pub mod feed;
pub mod gc;
pub mod group;
pub mod inopool;
pub mod keys;
pub mod known;
pub use cairn_common::locks;
pub mod meta_health;
pub mod opens;
pub mod ops;
pub mod perm;
pub mod repair;
pub mod safemode;
pub mod sessions;
pub mod store;
pub mod subtree;
pub mod trash;
pub mod walsync;

use std::sync::Arc;

use cairn_common::attr::Caller;
use cairn_common::attr::FileKind;
use cairn_common::cert::Role;
use cairn_common::proto::{
    AllocateBlock, Changed, ChangedDir, ChunkMap, Copied, CreateReply, DatanodeAddr,
    DatanodeCommand, FsStats, HeartbeatReply, MountStatus, NamenodeEnvelope, NamenodeRequest,
    Opened, Placement, RegisterReply, Removed, Renamed,
};
use cairn_common::proto::{
    Create, Delegation, Granted, InoRange, Queued, QueuedDone, QueuedOp, Rmdir, Unlink,
    DELEGATION_MAX_NAMES,
};
use cairn_common::transport::{self, Exchange, Peer, Service};
use cairn_common::{BlockId, FsError, FsResult, Ino};
use known::Tells;
use quinn::Endpoint;
use serde::Serialize;
use store::BlockRecord;
use subtree::{Inos, Subtree};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use config::NamenodeConfig;
use engine::MetaEngine;
use group::runner::Seat;
use ops::{MetaOpKind, MetaReply};

/// How often the namenode logs repair progress while blocks are below their replication.
const REPAIR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the repair pass runs.
const REPAIR_PASS: std::time::Duration = std::time::Duration::from_secs(1);
/// Most chunks one `ReadChunks` returns (4 GiB of file).
const MAX_CHUNKS_PER_READ: u32 = 64;
/// How long a commit waits for a datanode's report of a block its client says is stored.
const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a reader's map waits, just after a start, for a block no datanode has
/// reported yet (datanodes register within a second or two of a namenode's start).
const UNREPORTED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// The answer to a client's change is kept until the client says it has it, and at most
/// this long (far past any client's retries, seconds): then a client that vanished leaves
/// nothing behind.
const ANSWERS_KEPT: std::time::Duration = std::time::Duration::from_secs(600);

pub struct Namenode {
    config: NamenodeConfig,
    engine: MetaEngine,
    blocks: blockmap::BlockMap,
    locks: locks::LockTable,
    /// Files each client session holds open.
    opens: Arc<opens::OpenTable>,
    /// Copies and deletions that bring blocks back to their replication.
    repair: repair::Repair,
    /// Deletion of blocks nothing references.
    gc: Arc<gc::Gc>,
    safe_mode: safemode::SafeMode,
    /// Lock sessions seen on each client connection: when the connection ends, so do their
    /// locks, or a crashed mount would hold them for ever.
    lock_sessions: std::sync::Mutex<std::collections::HashMap<u64, std::collections::HashSet<u64>>>,
    /// The certificate each client session belongs to.
    session_owners: sessions::SessionOwners,
    /// Who may send what, and as whom requests act (the export rules).
    authz: authz::Authz,
    /// Signs the block access tokens datanodes serve blocks by.
    tokens: cairn_common::token::Signer,
    /// Cancelled at shutdown: requests held back waiting (for the change feed) answer at once.
    stopping: CancellationToken,
    /// The mounts reading the change feed, by connection.
    mounts: std::sync::Mutex<std::collections::HashMap<u64, MountSeen>>,
    /// Wakes the trash's emptier: a write found no space, or the trash may be over its bound.
    trash_wake: tokio::sync::Notify,
    trash_gauge: trash::Gauge,
}

/// A mount as its reads of the change feed show it.
struct MountSeen {
    info: cairn_common::proto::MountInfo,
    client: String,
    addr: std::net::SocketAddr,
    since: std::time::Instant,
    read_at: std::time::Instant,
}

/// Runs a namenode serving on `endpoint` until `shutdown` is cancelled.
pub async fn run(
    config: NamenodeConfig,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    info!(addr = %endpoint.local_addr()?, meta = %config.meta_dir.display(), "namenode starting");
    std::fs::create_dir_all(&config.meta_dir)?;
    // Clients may hold files open from before a restart, and claim them again within a
    // lease; a namespace made just now has none to wait for.
    let fresh = !config.meta_dir.join("CURRENT").exists();
    let grace = if fresh {
        std::time::Duration::ZERO
    } else {
        config.open_lease()
    };
    let opens = Arc::new(opens::OpenTable::new(config.open_lease(), grace));
    let gc = Arc::new(gc::Gc::new(config.gc_grace(), config.open_lease()));
    let seat = match config.member_id() {
        None => Seat::alone(),
        Some(id) => {
            let identity = config.tls.load()?;
            let opts = config.transport_options();
            let pool = transport::ConnectionPool::new(endpoint.clone(), &identity, &opts)?;
            info!(member = id, group = ?config.group, "namenode group member");
            Seat {
                id,
                addr: config.advertised().to_string(),
                links: Some(Arc::new(pool)),
                // The first member founds the group; the others join it.
                joining: id != 1,
            }
        }
    };
    let engine = MetaEngine::open_in_group(
        &config.meta_dir,
        config.default_replication,
        config.durability(),
        opens.clone(),
        gc.clone(),
        seat,
    )?;
    engine.keep_free(config.meta_reserve_mb << 20);
    // Blocks condemned before a restart go on being deleted.
    gc.restore(engine.tombstones()?);
    info!(
        inodes = engine.inode_count()?,
        blocks = engine.block_count()?,
        "namespace open; waiting for datanodes to report their blocks"
    );
    let blocks =
        blockmap::BlockMap::new(config.dead_timeout()).with_stale_timeout(config.stale_timeout());
    // Decommissions and maintenance set before a restart hold on.
    blocks.restore_admin(engine.node_admin_states()?);
    blocks.restore_known(engine.known_datanodes()?);
    let namenode = Arc::new(Namenode {
        blocks,
        safe_mode: safemode::SafeMode::new(
            config.safemode_threshold,
            std::time::Duration::from_millis(config.safemode_extension_ms),
        ),
        locks: locks::LockTable::default(),
        repair: repair::Repair::new(config.repair_copies_per_node),
        opens,
        gc,
        lock_sessions: Default::default(),
        session_owners: Default::default(),
        authz: authz::Authz::new(config.exports.clone(), config.revoked()?),
        tokens: config.token_signer()?,
        mounts: Default::default(),
        trash_wake: tokio::sync::Notify::new(),
        trash_gauge: trash::Gauge::default(),
        stopping: shutdown.clone(),
        config,
        engine,
    });
    // In a group, the member that comes to lead records them (see `take_the_lead`): one
    // that does not know yet whether it leads must answer the others first.
    if namenode.config.group.is_empty() {
        record_trash_settings(&namenode).await;
    }
    tokio::spawn(grow_group(namenode.clone(), shutdown.clone()));
    tokio::spawn(take_the_lead(namenode.clone(), shutdown.clone()));
    let reaper = tokio::spawn(reap_orphans(namenode.clone(), shutdown.clone()));
    let emptier = tokio::spawn(emptier::empty_trash(namenode.clone(), shutdown.clone()));
    let repairer = tokio::spawn(repair_loop(namenode.clone(), shutdown.clone()));
    if let Some(path) = namenode.config.source.clone() {
        tokio::spawn(reload_on_sighup(namenode.clone(), path, shutdown.clone()));
    }
    transport::serve(endpoint.clone(), namenode.clone(), shutdown).await;
    let _ = reaper.await;
    let _ = repairer.await;
    let _ = emptier.await;
    info!("namenode stopping");
    // The metadata database closes (releasing its lock) once the last request ends.
    transport::drain(namenode, &endpoint).await;
    info!("namenode stopped");
    Ok(())
}

/// Reads the export rules and the revocation list again from `path` at each SIGHUP (the
/// rest of the configuration takes a restart). A file that does not load leaves those in
/// force as they were.
async fn reload_on_sighup(
    namenode: Arc<Namenode>,
    path: std::path::PathBuf,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("export rules cannot be reloaded on SIGHUP: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        let loaded = NamenodeConfig::load(&path).and_then(|c| Ok((c.revoked()?, c)));
        match loaded {
            Ok((revoked, config)) => {
                info!(
                    rules = config.exports.len(),
                    revoked = revoked.len(),
                    file = %path.display(),
                    "export rules and revocation list reloaded"
                );
                namenode.authz.reload(config.exports, revoked);
            }
            Err(e) => warn!(
                file = %path.display(),
                "export rules and revocation list not reloaded, those in force hold: {e:#}"
            ),
        }
    }
}

impl Namenode {
    async fn mutate(&self, who: &Who, kind: MetaOpKind) -> FsResult<MetaReply> {
        let request = who.request.clone().map(|id| ops::Request {
            id,
            holder: who.holder.clone(),
        });
        let room = who.room.as_deref();
        self.engine
            .submit_named(who.origin, who.caller.clone(), kind, request, room)
            .await
    }

    async fn mutate_attr(
        &self,
        who: &Who,
        kind: MetaOpKind,
    ) -> FsResult<cairn_common::attr::InodeAttr> {
        match self.mutate(who, kind).await? {
            MetaReply::Attr(a) | MetaReply::Copied { attr: a, .. } => Ok(a),
            MetaReply::Created(c) => Ok(c.attr),
            MetaReply::Removed { .. }
            | MetaReply::Renamed { .. }
            | MetaReply::Inos { .. }
            | MetaReply::Done => Err(FsError::protocol("operation returned no attributes")),
        }
    }

    /// An unlink or rmdir, answered with what it removed.
    async fn mutate_removing(
        &self,
        who: &Who,
        kind: MetaOpKind,
        dirs: &[cairn_common::Ino],
    ) -> FsResult<Changed<Removed>> {
        match self.mutate(who, kind).await? {
            MetaReply::Removed { ino, trash } => self.trashed(trash).changed(
                Ok(Removed {
                    ino,
                    trash: trash.map(|t| t.dir),
                }),
                &accounted(dirs, trash),
            ),
            _ => Err(FsError::protocol("removal returned no removed inode")),
        }
    }

    /// A file went to the trash: the emptier looks if the trash may be over its bound.
    fn trashed(&self, trash: Option<trash::Moved>) -> &Namenode {
        if trash.is_some_and(|t| self.trash_gauge.added(t.bytes)) {
            self.trash_wake.notify_one();
        }
        self
    }

    async fn mutate_unit(&self, who: &Who, kind: MetaOpKind) -> FsResult<()> {
        self.mutate(who, kind).await.map(|_| ())
    }

    /// `res` of a change to the entries of `dirs`, with their attributes as they are now.
    fn changed<T>(&self, res: FsResult<T>, dirs: &[cairn_common::Ino]) -> FsResult<Changed<T>> {
        let reply = res?;
        let mut changed = Vec::with_capacity(dirs.len());
        for (i, dir) in dirs.iter().enumerate() {
            if dirs[..i].contains(dir) {
                continue;
            }
            // Read after the attributes: a change between the two shows as a version the
            // client did not expect, never as one it did.
            let Ok(attr) = self.engine.getattr(*dir) else {
                // Removed meanwhile by another change: nothing to tell.
                continue;
            };
            let versions = self.engine.versions();
            changed.push(ChangedDir {
                attr,
                version: versions.get(*dir),
                epoch: versions.epoch,
            });
        }
        Ok(Changed {
            reply,
            dirs: changed,
        })
    }

    /// The map of chunks `first..first + count` of file `ino`, with a read token for each of
    /// its blocks for the certificate `holder`.
    fn read_chunks(
        &self,
        holder: &[u8],
        ino: cairn_common::Ino,
        first: u32,
        count: u32,
    ) -> FsResult<ChunkMap> {
        let attr = self.engine.getattr(ino)?;
        let chunks = self
            .engine
            .chunks(ino, first, count.min(MAX_CHUNKS_PER_READ))?;
        let mut locations = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, slices) in &chunks {
            for s in slices {
                if seen.insert(s.block) {
                    locations.push((s.block, self.blocks.locations(&s.block)));
                }
            }
        }
        let corrupt = self.repair.corrupt_among(locations.iter().map(|(b, _)| *b));
        let read = cairn_common::token::Access::Read;
        let tokens = locations
            .iter()
            .map(|(b, _)| self.tokens.sign(read, Some(*b), holder))
            .collect();
        Ok(ChunkMap {
            attr,
            chunks,
            locations,
            corrupt,
            lease: None,
            tokens,
        })
    }

    /// [`Self::read_chunks`], for a reader: just after a start, while the datanodes'
    /// reports are still coming in, a block no report has named yet is waited for (up to
    /// [`UNREPORTED_WAIT`]) rather than answered with no replica, which the reader would
    /// have to take for data lost.
    async fn read_chunks_located(
        &self,
        holder: &[u8],
        ino: cairn_common::Ino,
        first: u32,
        count: u32,
    ) -> FsResult<ChunkMap> {
        let deadline = tokio::time::Instant::now() + UNREPORTED_WAIT;
        loop {
            let map = self.read_chunks(holder, ino, first, count)?;
            let unreported = map.locations.iter().any(|(_, at)| at.is_empty());
            if !unreported
                || !self.safe_mode.is_starting()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(map);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn allocate(&self, a: &AllocateBlock) -> FsResult<Placement> {
        let replication = match (self.engine.getattr(a.ino), a.replication) {
            (Ok(attr), _) => attr.replication,
            // A file whose create is still queued at its client.
            (Err(FsError::NotFound), Some(r)) if r > 0 => r,
            (Err(e), _) => return Err(e),
        };
        // Not collected for a grace period from now (and refused while it is being deleted).
        self.gc.allocating(&a.block)?;
        // Replicas on disk are verified, committed or not: they count.
        let holders = self.blocks.locations(&a.block);
        let holder_ids: Vec<_> = holders.iter().map(|h| h.id).collect();
        if holders.len() >= replication as usize {
            return Ok(Placement {
                targets: Vec::new(),
                holders: holder_ids,
                holders_at: holders,
                already_stored: true,
                replication,
            });
        }
        let want = if a.count == 0 { replication } else { a.count } as usize;
        let mut exclude = a.exclude.clone();
        exclude.extend(holders.iter().map(|h| h.id));
        let targets = self.blocks.place(want, a.len as u64, &exclude, &holder_ids);
        if targets.is_empty() && holders.is_empty() {
            let live = self.blocks.statuses().iter().filter(|s| s.alive).count();
            return Err(if live == 0 {
                FsError::unavailable("no live datanodes")
            } else {
                self.trash_wake.notify_one();
                FsError::NoSpace(format!(
                    "no live datanode outside the {} excluded has {} bytes free",
                    exclude.len(),
                    a.len
                ))
            });
        }
        Ok(Placement {
            targets,
            holders: holder_ids,
            holders_at: holders,
            already_stored: false,
            replication,
        })
    }

    /// Where a new file's first block would go if it is small.
    fn first_placement(&self, attr: &cairn_common::attr::InodeAttr) -> Vec<DatanodeAddr> {
        let len = cairn_common::proto::PLACED_BLOCK_MAX as u64;
        self.blocks.offer(attr.replication as usize, len)
    }

    fn statfs(&self) -> FsResult<FsStats> {
        let mut stats = FsStats {
            inodes: self.engine.inode_count()?,
            ..FsStats::default()
        };
        for s in self.blocks.statuses().iter().filter(|s| s.alive) {
            stats.capacity += s.capacity;
            stats.used += s.used;
            stats.available += s.available;
            stats.live_datanodes += 1;
        }
        Ok(stats)
    }
}

impl Namenode {
    /// The directories `req` looks into, and those it changes (and the directories it
    /// removes or replaces), for delegations.
    fn touches(&self, req: &NamenodeRequest) -> (Vec<Ino>, Vec<Ino>) {
        use NamenodeRequest as R;
        let dir_named = |parent: Ino, name: &[u8]| {
            self.engine.entry(parent, name).filter(|ino| {
                self.engine
                    .getattr(*ino)
                    .is_ok_and(|a| a.kind == FileKind::Dir)
            })
        };
        match req {
            R::Lookup(r) => (vec![r.parent], vec![]),
            R::GetAttr(r) => (vec![r.ino], vec![]),
            R::ReadDir(r) => (vec![r.ino], vec![]),
            R::ListDir(r) => (vec![r.ino], vec![]),
            R::SetAttrReq(r) => (vec![], vec![r.ino]),
            R::SetXattr(r) => (vec![], vec![r.ino]),
            R::RemoveXattr(r) => (vec![], vec![r.ino]),
            R::Mkdir(r) => (vec![], vec![r.parent]),
            R::Create(r) => (vec![], vec![r.parent]),
            R::Mknod(r) => (vec![], vec![r.parent]),
            R::Symlink(r) => (vec![], vec![r.parent]),
            R::Link(r) => (vec![], vec![r.new_parent]),
            R::Unlink(r) => (vec![], vec![r.parent]),
            R::Rmdir(r) => {
                let mut dirs = vec![r.parent];
                dirs.extend(dir_named(r.parent, &r.name));
                (vec![], dirs)
            }
            R::Rename(r) => {
                let mut dirs = vec![r.parent, r.new_parent];
                dirs.extend(dir_named(r.parent, &r.name));
                dirs.extend(dir_named(r.new_parent, &r.new_name));
                (vec![], dirs)
            }
            _ => (vec![], vec![]),
        }
    }

    /// A create; `replay`: queued under a previous run's delegation (see `queued`).
    async fn create(&self, who: &Who, r: Create, replay: bool) -> FsResult<Changed<CreateReply>> {
        let parent = r.parent;
        let queued = r.ino.is_some();
        // Sent again after a lost answer: the create finds its own file there, made under
        // the delegation (which may have ended since).
        let again = r.ino.is_some() && self.engine.entry(parent, &r.name) == r.ino;
        if let (Some(ino), false, false) = (r.ino, replay, again) {
            let feed = self.engine.feed();
            if !feed.may_act(who.origin, who.session, parent) {
                return Err(delegation_lost(parent));
            }
            if !feed.take_ino(who.origin, who.session, ino) {
                return Err(FsError::invalid(format!(
                    "inode number {ino} was not reserved for this connection"
                )));
            }
        }
        if let (Some(ino), true) = (r.ino, replay) {
            // A number of the previous run's, given back and handed out again since: the
            // new holder's.
            if self.engine.feed().is_reserved(ino) {
                return Err(FsError::invalid(format!(
                    "inode number {ino} is reserved for another connection"
                )));
            }
        }
        // A queued create's file is written already: no offer for its first block.
        let offer = |attr: &cairn_common::attr::InodeAttr| match queued {
            true => Vec::new(),
            false => self.first_placement(attr),
        };
        let res = match self.mutate(who, MetaOpKind::Create(r)).await {
            Ok(MetaReply::Created(c)) if c.created => Ok(CreateReply {
                place: offer(&c.attr),
                ..c
            }),
            Ok(MetaReply::Created(c)) => Ok(c),
            Ok(MetaReply::Attr(attr)) => Ok(CreateReply {
                place: offer(&attr),
                attr,
                created: true,
                shared: false,
            }),
            Ok(_) => Err(FsError::protocol("create returned nothing")),
            Err(e) => Err(e),
        };
        self.changed(res, &[parent])
    }

    /// An unlink; `queued` under a delegation of this run (checked), or of the previous
    /// one (replayed as it comes).
    async fn unlink(&self, who: &Who, r: Unlink, queued: bool) -> FsResult<Changed<Removed>> {
        if queued
            && !self
                .engine
                .feed()
                .may_act(who.origin, who.session, r.parent)
        {
            return Err(delegation_lost(r.parent));
        }
        let parent = [r.parent];
        self.mutate_removing(who, MetaOpKind::Unlink(r), &parent)
            .await
    }

    /// An rmdir; `queued` as for unlinks. The directory's delegation ends with it.
    async fn rmdir(&self, who: &Who, r: Rmdir, queued: bool) -> FsResult<Changed<Removed>> {
        let feed = self.engine.feed();
        if queued && !feed.may_act(who.origin, who.session, r.parent) {
            return Err(delegation_lost(r.parent));
        }
        let parent = [r.parent];
        let removed = self
            .mutate_removing(who, MetaOpKind::Rmdir(r), &parent)
            .await?;
        feed.undelegate(who.origin, removed.reply.ino);
        Ok(removed)
    }

    /// A file's new slices, answered with its map (and a lease on it) if it is small.
    async fn commit(&self, who: &Who, r: cairn_common::proto::CommitSlices) -> FsResult<ChunkMap> {
        let ino = r.ino;
        // Taken before the commit: a change the map read after it misses waits.
        let lease = (r.size <= cairn_common::layout::CHUNK_SIZE)
            .then(|| self.engine.feed().lease(who.origin, ino))
            .flatten();
        self.check_stored(&r).await?;
        let attr = self.mutate_attr(who, MetaOpKind::CommitSlices(r)).await?;
        let whole = lease.is_some() && attr.size <= cairn_common::layout::CHUNK_SIZE;
        // Removed meanwhile: committed all the same, only the map is not given.
        Ok(
            match whole.then(|| self.read_chunks(&who.holder, ino, 0, 1)) {
                Some(Ok(map)) => ChunkMap { lease, ..map },
                _ => ChunkMap::attributes_only(attr),
            },
        )
    }

    /// The commit of a file made under the delegation of `dir`; `replay` as for creates.
    async fn commit_queued(
        &self,
        who: &Who,
        dir: Ino,
        commit: cairn_common::proto::CommitSlices,
        replay: bool,
    ) -> FsResult<ChunkMap> {
        if !replay && !self.engine.feed().may_act(who.origin, who.session, dir) {
            return Err(delegation_lost(dir));
        }
        self.commit(who, commit).await
    }

    /// A queued change of the mode, owner or times of a file made under `dir`'s delegation.
    async fn setattr_queued(
        &self,
        who: &Who,
        dir: Ino,
        ino: Ino,
        set: cairn_common::attr::SetAttr,
        replay: bool,
    ) -> FsResult<cairn_common::attr::InodeAttr> {
        if !replay && !self.engine.feed().may_act(who.origin, who.session, dir) {
            return Err(delegation_lost(dir));
        }
        if set.size.is_some() {
            return Err(FsError::invalid("a queued attribute change sets no size"));
        }
        let set_attr = MetaOpKind::SetAttr {
            ino,
            set,
            open_for_write: false,
        };
        self.mutate_attr(who, set_attr).await
    }

    /// A delegation holder's queued changes, applied in order (submitted together, so the
    /// metadata writer commits them in few groups).
    async fn queued(&self, peer: &Peer, who: &Who, q: Queued) -> Vec<QueuedDone> {
        // Commits wait for their blocks' reports first, so that each op below is submitted
        // at its first poll, in order (a commit that waited would fall behind what follows).
        for change in &q.ops {
            if let QueuedOp::Commit { commit, .. } = &change.op {
                let _ = self.check_stored(commit).await;
            }
        }
        let feed = self.engine.feed();
        let replaying = feed.replaying();
        // Their places in the writer's queue first, all of them: then each op below goes
        // to the queue at its first poll, in order.
        let room = match self.engine.reserve(q.ops.len()).await {
            Ok(room) => Some(Arc::new(room)),
            Err(e) => {
                return q
                    .ops
                    .iter()
                    .map(|c| refused_queued(&c.op, e.clone()))
                    .collect()
            }
        };
        let ops = q.ops.into_iter().map(|change| {
            // Each acts as its own caller, within the holder's export rule (which its holder
            // applied before it answered, unless the rule changed meanwhile).
            let caller = self.authz.admit_queued(peer, change.caller);
            let who = caller.map(|caller| Who {
                caller,
                origin: who.origin,
                holder: who.holder.clone(),
                request: None,
                room: room.clone(),
                session: Some(q.session),
            });
            // Queued under the previous run's delegation, which this run never knew.
            let replay = change.epoch != feed.epoch && replaying;
            async move {
                let who = match who {
                    Ok(who) => who,
                    Err(e) => return refused_queued(&change.op, e),
                };
                match change.op {
                    QueuedOp::Create(c) if c.ino.is_none() => QueuedDone::Created(Err(
                        FsError::invalid("a queued create names its inode number"),
                    )),
                    QueuedOp::Create(c) => QueuedDone::Created(self.create(&who, c, replay).await),
                    QueuedOp::Unlink(u) => QueuedDone::Removed(self.unlink(&who, u, !replay).await),
                    QueuedOp::Rmdir(r) => QueuedDone::Removed(self.rmdir(&who, r, !replay).await),
                    QueuedOp::Commit { dir, commit } => {
                        QueuedDone::Committed(self.commit_queued(&who, dir, commit, replay).await)
                    }
                    QueuedOp::SetAttr { dir, ino, set } => {
                        QueuedDone::Attr(self.setattr_queued(&who, dir, ino, set, replay).await)
                    }
                }
            }
        });
        // Each op is submitted at its first poll, in order.
        futures::future::join_all(ops).await
    }

    /// Delegates `dir` to the asking connection, with its names, if nobody else uses it.
    async fn delegate(&self, who: &Who, dir: Ino, session: u64) -> FsResult<Delegation> {
        let refused = Delegation { granted: None };
        let attr = self.engine.getattr(dir)?;
        if attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        crate::perm::require(&who.caller, &attr, crate::perm::READ | crate::perm::EXEC)?;
        // The namenode itself empties the trash.
        if self.engine.is_trash(dir)? {
            return Ok(refused);
        }
        let feed = self.engine.feed();
        let Some(from) = feed.delegate(who.origin, session, dir) else {
            return Ok(refused);
        };
        // Nobody else keeps names of the directory past this (a recall of it meanwhile
        // voids the grant at the holder: it reads the recall at `from` or later).
        feed.until_heard(feed.announce_delegation(who.origin, dir))
            .await;
        let limit = DELEGATION_MAX_NAMES as u32 + 1;
        match self.engine.list_dir(&who.caller, dir, limit, false) {
            Ok(l) if l.whole.is_some() && l.entries.len() <= DELEGATION_MAX_NAMES => {
                let attr = l.whole.map(|w| w.attr).unwrap_or(attr);
                Ok(Delegation {
                    granted: Some(Granted {
                        attr,
                        names: l.entries,
                        holder: who.origin,
                        epoch: feed.epoch,
                        from,
                    }),
                })
            }
            other => {
                feed.undelegate(who.origin, dir);
                other.map(|_| refused)
            }
        }
    }

    /// Reads an answer for `who`, which names `named` and what it holds: its connection may
    /// keep them from now on, so their changes wait for it (`known.rs`).
    async fn answer<T: Tells>(
        &self,
        who: &Who,
        named: &[Ino],
        read: impl std::future::Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        let reading = self.engine.feed().reading(who.origin);
        let res = read.await;
        reading.told(told(named, &res));
        res
    }

    async fn reserve_inos(&self, who: &Who, count: u32, session: u64) -> FsResult<InoRange> {
        let count = count.clamp(1, 4096);
        match self.mutate(who, MetaOpKind::ReserveInos { count }).await? {
            MetaReply::Inos { first, count } => {
                debug!(first, count, "inode numbers reserved");
                self.engine
                    .feed()
                    .reserved(who.origin, session, first, count);
                // As many as a file there may want; each takes its replication's worth.
                let len = cairn_common::proto::PLACED_BLOCK_MAX as u64;
                let place = self.blocks.offer(8, len);
                Ok(InoRange {
                    first,
                    count,
                    place,
                })
            }
            _ => Err(FsError::protocol("reserving inode numbers returned none")),
        }
    }
}

/// The client sessions a request acts for.
fn sessions_named(req: &NamenodeRequest) -> Vec<u64> {
    use NamenodeRequest as R;
    match req {
        R::Open(r) => vec![r.claim.session],
        R::Create(r) => r.open.iter().map(|o| o.session).collect(),
        R::Queued(q) => q
            .ops
            .iter()
            .filter_map(|c| match &c.op {
                QueuedOp::Create(r) => r.open.as_ref().map(|o| o.session),
                _ => None,
            })
            .chain([q.session])
            .collect(),
        R::KeepOpen(r) => vec![r.session],
        R::SetLock(r) => vec![r.owner.session],
        R::GetLock(r) => vec![r.owner.session],
        R::ReleaseLocks(r) => vec![r.owner.session],
        R::Changes(r) => r.mount.iter().map(|m| m.session).collect(),
        R::Delegate(r) => vec![r.session],
        R::ReserveInos(r) => vec![r.session],
        _ => Vec::new(),
    }
}

/// The inodes the request names and those its answer names: what its client may keep.
fn told<T: Tells>(named: &[Ino], res: &FsResult<T>) -> Vec<Ino> {
    let mut inos = named.to_vec();
    if let Ok(answer) = res {
        answer.tells(&mut inos);
    }
    inos
}

/// What a queued change that may not be made comes to.
fn refused_queued(op: &QueuedOp, e: FsError) -> QueuedDone {
    match op {
        QueuedOp::Create(_) => QueuedDone::Created(Err(e)),
        QueuedOp::Unlink(_) | QueuedOp::Rmdir(_) => QueuedDone::Removed(Err(e)),
        QueuedOp::Commit { .. } => QueuedDone::Committed(Err(e)),
        QueuedOp::SetAttr { .. } => QueuedDone::Attr(Err(e)),
    }
}

fn delegation_lost(dir: Ino) -> FsError {
    FsError::io(format!(
        "the delegation of directory {dir} ended before this queued change reached the namenode"
    ))
}

/// Writes `res` as the answer, in the numbers of the subtree the peer is confined to.
async fn respond<T: Serialize + Inos + Clone>(
    ex: &mut Exchange,
    subtree: Option<Subtree>,
    res: &FsResult<T>,
) -> FsResult<()> {
    match (subtree, res) {
        (Some(subtree), Ok(answer)) => {
            let mut answer = answer.clone();
            subtree.leave(&mut answer);
            ex.respond(&Ok::<T, FsError>(answer)).await
        }
        _ => ex.respond(res).await,
    }
}

/// Who asks for a change: the caller, and the connection it came through.
struct Who {
    caller: Caller,
    origin: u64,
    /// The serial of the certificate the request came with, as block tokens name it.
    holder: Vec<u8>,
    /// The client's name for the one change this request asks for (see
    /// [`NamenodeRequest::once_by_id`]); `None` for every other request.
    request: Option<cairn_common::proto::RequestId>,
    /// Places in the metadata writer's queue held for this request's changes (a batch of
    /// queued changes, which must reach the writer in order); `None`: each change waits
    /// for its own.
    room: Option<Arc<engine::Room>>,
    /// The client session a batch of queued changes was made in (see `feed::may_act`).
    session: Option<u64>,
}

impl Service for Namenode {
    type Request = NamenodeEnvelope;

    fn refuses(&self, peer: &Peer) -> Option<String> {
        self.authz.refuses(peer)
    }

    fn disconnected(&self, peer: &Peer) {
        self.authz.forget(peer);
        self.drop_session_locks(peer);
        self.mounts().remove(&peer.serial);
        self.engine.feed().disconnected(peer.serial);
    }

    async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        envelope: NamenodeEnvelope,
        ex: &mut Exchange,
    ) -> FsResult<()> {
        use NamenodeRequest as R;
        let NamenodeEnvelope {
            caller,
            mut req,
            request,
        } = envelope;
        let caller = self.authz.admit(&peer, &req, caller)?;
        // The leader alone serves the namespace: what a follower holds may be behind.
        if !matches!(req, R::Raft(_)) {
            self.engine.group().serving().await?;
        }
        req.check()?;
        let subtree = self.subtree(&peer)?;
        if let Some(subtree) = subtree {
            self.confine(&peer, subtree, &mut req)?;
        }
        let request = request.filter(|_| req.once_by_id());
        let who = Who {
            caller,
            origin: peer.serial,
            holder: peer.cert_serial.clone(),
            request,
            room: None,
            session: None,
        };
        let caller = &who.caller;
        let named = who.request.as_ref().map(|r| r.session);
        for session in sessions_named(&req).into_iter().chain(named) {
            self.session_owners.claim(session, &peer.name)?;
        }
        // Before it looks into or changes a directory delegated to another client, that
        // client sends what it queued there.
        let (reads, changes) = self.touches(&req);
        let _changing = self.engine.feed().changing(&changes);
        let feed = self.engine.feed();
        if feed.any_delegated() {
            let dirs: Vec<_> = reads.iter().chain(&changes).copied().collect();
            let breaks = feed.recall(who.origin, &dirs);
            if !breaks.is_empty() {
                feed.until_heard(breaks).await;
            }
        }
        match req {
            R::Lookup(r) => {
                let res = self
                    .answer(&who, &[r.parent], async {
                        self.engine.lookup(caller, r.parent, &r.name)
                    })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::GetAttr(r) => {
                let res = self
                    .answer(&who, &[r.ino], async { self.engine.getattr(r.ino) })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::Accessed(r) => {
                let res = self.mutate_attr(&who, MetaOpKind::Accessed(r)).await;
                respond(ex, subtree, &res).await
            }
            R::SetAttrReq(r) => {
                let res = self
                    .mutate_attr(
                        &who,
                        MetaOpKind::SetAttr {
                            ino: r.ino,
                            set: r.set,
                            open_for_write: r.open_for_write,
                        },
                    )
                    .await;
                respond(ex, subtree, &res).await
            }
            R::Mkdir(r) => {
                let parent = r.parent;
                let res = self.mutate_attr(&who, MetaOpKind::Mkdir(r)).await;
                // The new directory too: at version 0 it is known to be empty.
                let new = res.as_ref().map(|a| a.ino).unwrap_or(parent);
                respond(ex, subtree, &self.changed(res, &[parent, new])).await
            }
            R::Create(r) if r.ino.is_some() => {
                let e = FsError::invalid("a create naming its inode number comes queued");
                ex.respond::<Changed<CreateReply>>(&Err(e)).await
            }
            R::Create(r) => respond(ex, subtree, &self.create(&who, r, false).await).await,
            R::Mknod(r) => {
                let parent = r.parent;
                let res = self.mutate_attr(&who, MetaOpKind::Mknod(r)).await;
                respond(ex, subtree, &self.changed(res, &[parent])).await
            }
            R::Unlink(r) => respond(ex, subtree, &self.unlink(&who, r, false).await).await,
            R::Queued(q) => respond(ex, subtree, &Ok(self.queued(&peer, &who, q).await)).await,
            R::Delegate(r) => {
                let res = self
                    .answer(&who, &[r.dir], self.delegate(&who, r.dir, r.session))
                    .await;
                respond(ex, subtree, &res).await
            }
            R::ReserveInos(r) => {
                respond(
                    ex,
                    subtree,
                    &self.reserve_inos(&who, r.count, r.session).await,
                )
                .await
            }
            R::Rmdir(r) => respond(ex, subtree, &self.rmdir(&who, r, false).await).await,
            R::Rename(r) => {
                let dirs = [r.parent, r.new_parent];
                let res = match self.mutate(&who, MetaOpKind::Rename(r)).await {
                    Ok(MetaReply::Renamed {
                        moved,
                        replaced,
                        trash,
                    }) => self.trashed(trash).changed(
                        Ok(Renamed {
                            moved,
                            replaced,
                            trash: trash.map(|t| t.dir),
                        }),
                        &accounted(&dirs, trash),
                    ),
                    Ok(_) => Err(FsError::protocol("rename returned nothing it moved")),
                    Err(e) => Err(e),
                };
                respond(ex, subtree, &res).await
            }
            R::Symlink(r) => {
                let parent = r.parent;
                let res = self.mutate_attr(&who, MetaOpKind::Symlink(r)).await;
                respond(ex, subtree, &self.changed(res, &[parent])).await
            }
            R::Readlink(r) => {
                let res = self
                    .answer(&who, &[r.ino], async { self.engine.readlink(r.ino) })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::Link(r) => {
                let parent = r.new_parent;
                let res = self.mutate_attr(&who, MetaOpKind::Link(r)).await;
                respond(ex, subtree, &self.changed(res, &[parent])).await
            }
            R::ReadDir(r) => {
                let res = self
                    .answer(&who, &[r.ino], async {
                        self.engine
                            .readdir(caller, r.ino, r.after.as_deref(), r.limit, r.attrs)
                    })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::StatFs(_) => respond(ex, subtree, &self.statfs()).await,
            R::SetXattr(r) => {
                respond(
                    ex,
                    subtree,
                    &self.mutate_unit(&who, MetaOpKind::SetXattr(r)).await,
                )
                .await
            }
            R::GetXattr(r) => {
                let res = self
                    .answer(&who, &[r.ino], async {
                        self.engine.get_xattr(r.ino, &r.name)
                    })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::ListXattr(r) => {
                let res = self
                    .answer(&who, &[r.ino], async { self.engine.list_xattr(r.ino) })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::RemoveXattr(r) => {
                respond(
                    ex,
                    subtree,
                    &self.mutate_unit(&who, MetaOpKind::RemoveXattr(r)).await,
                )
                .await
            }
            R::SetReplication(r) => {
                respond(
                    ex,
                    subtree,
                    &self.mutate_attr(&who, MetaOpKind::SetReplication(r)).await,
                )
                .await
            }
            R::ReadChunks(r) => {
                self.may_use(&peer, caller, r.ino, crate::perm::READ)?;
                let map = self
                    .answer(
                        &who,
                        &[r.ino],
                        self.read_chunks_located(&who.holder, r.ino, r.first, r.count),
                    )
                    .await;
                respond(ex, subtree, &map).await
            }
            R::AllocateBlock(r) => respond(ex, subtree, &self.allocate(&r)).await,
            R::GrantWrite(_) => {
                let write = cairn_common::token::Access::Write;
                let token = self.tokens.sign(write, None, &peer.cert_serial);
                respond(ex, subtree, &Ok(token)).await
            }
            R::SyncMetadata(_) => respond(ex, subtree, &self.engine.sync().await).await,
            R::Raft(rpc) => ex.respond(&self.engine.group().answer(rpc).await).await,
            R::ListNamenodes(_) => ex.respond(&Ok(self.engine.group().status())).await,
            R::ChangeNamenodes(change) => {
                use cairn_common::proto::ChangeNamenodes as C;
                let group = self.engine.group();
                let changed = match change {
                    C::Add { addr } => group.add_namenode(addr, ADD_MEMBER_TIMEOUT).await,
                    C::Remove { id } => group.remove_member(id).await,
                    C::TransferLeader { to } => group.transfer_lead(to).await.map(|_| ()),
                };
                ex.respond(&changed.map(|()| group.status())).await
            }
            R::CommitSlices(r) => {
                self.may_use(&peer, caller, r.ino, crate::perm::WRITE)?;
                respond(ex, subtree, &self.commit(&who, r).await).await
            }
            R::CopyRange(r) => {
                self.may_use(&peer, caller, r.src, crate::perm::READ)?;
                self.may_use(&peer, caller, r.dst, crate::perm::WRITE)?;
                let res = match self.mutate(&who, MetaOpKind::CopyRange(r)).await {
                    Ok(MetaReply::Copied { attr, len }) => Ok(Copied { attr, len }),
                    Ok(_) => Err(FsError::protocol("copy returned no count")),
                    Err(e) => Err(e),
                };
                respond(ex, subtree, &res).await
            }
            R::Seek(r) => {
                self.may_use(&peer, caller, r.ino, crate::perm::READ)?;
                let res = self
                    .answer(&who, &[r.ino], async {
                        self.engine.seek(r.ino, r.offset, r.hole)
                    })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::Punch(r) => {
                self.may_use(&peer, caller, r.ino, crate::perm::WRITE)?;
                respond(
                    ex,
                    subtree,
                    &self.mutate_attr(&who, MetaOpKind::Punch(r)).await,
                )
                .await
            }
            R::ReportBadReplica(r) => {
                warn!(block = %r.block, datanode = %r.datanode, reason = %r.reason, reporter = %peer.name, "bad replica reported");
                if peer.role == Role::Datanode && self.speaks_for(&peer, r.datanode).is_ok() {
                    // Its own replica, found bad by its scrubber and quarantined.
                    self.blocks.drop_replica(&r.block, r.datanode);
                    self.repair.corrupt_replica(r.block, r.datanode);
                } else {
                    // A reader's word, which any certificate could give about any block:
                    // the replica stays listed until its datanode has checked it and
                    // reports what it finds (readers verify every byte meanwhile).
                    self.repair.verify(r.block, r.datanode);
                }
                respond(ex, subtree, &Ok(())).await
            }
            R::ListDatanodes(_) => respond(ex, subtree, &Ok(self.blocks.statuses())).await,
            R::GetLock(r) => {
                let tested = self
                    .locks_settled()
                    .map(|()| self.locks.test(r.ino, r.owner, &r.range));
                respond(ex, subtree, &tested).await
            }
            R::SetLock(r) => {
                self.lock_sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(peer.serial)
                    .or_default()
                    .insert(r.owner.session);
                let set = if r.reclaim {
                    self.reclaim_lock(r.ino, r.owner, r.range)
                } else if r.range.kind == cairn_common::proto::LockKind::Unlock {
                    self.locks.set(r.ino, r.owner, r.range)
                } else {
                    self.locks_settled()
                        .and_then(|()| self.locks.set(r.ino, r.owner, r.range))
                };
                respond(ex, subtree, &set).await
            }
            R::ReleaseLocks(r) => {
                self.locks.release(r.ino, r.owner);
                respond(ex, subtree, &Ok(())).await
            }
            R::Register(r) => {
                peer.require(Role::Datanode)?;
                let cluster = self.engine.cluster_id();
                // A datanode is its certificate: its name is the certificate's, and an id
                // registered under another name is another's.
                let own = if r.name != peer.name {
                    let why = format!(
                        "datanode certificate {:?} cannot register as datanode {:?}: a \
                         datanode's name (`name` in its configuration) is its certificate's",
                        peer.name, r.name
                    );
                    warn!(addr = %peer.addr, "refused: {why}");
                    Err(FsError::WrongRole(why))
                } else {
                    self.speaks_for(&peer, r.id)
                };
                let res = match (own, r.cluster) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Some(theirs)) if theirs != cluster => {
                        let why = foreign_datanode(&r.name, theirs, cluster);
                        warn!(datanode = %r.id, name = %r.name, "{why}");
                        Err(FsError::invalid(why))
                    }
                    (Ok(()), _) => {
                        info!(datanode = %r.id, name = %r.name, addr = %r.addr, "datanode registered");
                        self.blocks.register(&r);
                        self.record_datanodes(Some(r.id)).await;
                        Ok(RegisterReply {
                            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                            keys: self.tokens.keys(),
                            revoked: self.authz.revoked(),
                            cluster,
                        })
                    }
                };
                respond(ex, subtree, &res).await
            }
            R::BlockReport(r) => {
                peer.require(Role::Datanode)?;
                self.speaks_for(&peer, r.id)?;
                if r.last {
                    info!(datanode = %r.id, "full block report received");
                }
                let known = self.blocks.block_report(r.id, &r.blocks, r.first, r.last);
                respond(ex, subtree, &known_or_register(known)).await
            }
            R::BlockReceived(r) => {
                peer.require(Role::Datanode)?;
                self.speaks_for(&peer, r.id)?;
                let known = self.blocks.blocks_changed(r.id, &r.added, &r.removed);
                respond(ex, subtree, &known_or_register(known)).await
            }
            R::Heartbeat(r) => {
                peer.require(Role::Datanode)?;
                self.speaks_for(&peer, r.id)?;
                let known = self.blocks.heartbeat(&r);
                self.repair.copies_failed(r.id, &r.copies_failed);
                let mut commands = Vec::new();
                if known {
                    commands = self.repair.take_commands(r.id, &self.blocks);
                    for command in &mut commands {
                        if let DatanodeCommand::Replicate { block, token, .. } = command {
                            let write = cairn_common::token::Access::Write;
                            *token = Some(self.tokens.sign(write, Some(*block), &peer.cert_serial));
                        }
                    }
                    if !self.safe_mode.is_on() {
                        let garbage = self.gc.orders_for(r.id, |b| self.blocks.holds(r.id, b));
                        // A block's tombstone is on disk before any replica of it goes
                        // (otherwise these orders are sent again later).
                        if !garbage.is_empty() && self.engine.sync().await.is_ok() {
                            commands.push(DatanodeCommand::Delete { blocks: garbage });
                        }
                    }
                }
                respond(
                    ex,
                    subtree,
                    &Ok(HeartbeatReply {
                        reregister: !known,
                        commands,
                        revoked: self.authz.revoked(),
                        keys: self.tokens.keys(),
                    }),
                )
                .await
            }
            R::Open(r) => {
                // Opened as POSIX says, for the identity the certificate gives: reads and
                // writes through the handle follow from it.
                let want = if r.write {
                    crate::perm::WRITE
                } else {
                    crate::perm::READ
                };
                if let Err(e) = self
                    .engine
                    .getattr(r.ino)
                    .and_then(|attr| crate::perm::require(caller, &attr, want))
                {
                    return ex.respond::<Opened>(&Err(e)).await;
                }
                let reading = self.engine.feed().reading(who.origin);
                let claimed = self
                    .opens
                    .claim(r.claim.session, r.ino, r.claim.gen, r.write);
                let res = match claimed {
                    // A regular file comes with the map of its first chunks: a small file's
                    // first read then asks the namenode nothing more. With a lease taken
                    // first, the map is the file's until the client hears of a change.
                    Some(shared) => match self.engine.getattr(r.ino) {
                        Ok(attr) if attr.kind == cairn_common::attr::FileKind::File => {
                            let lease = self.engine.feed().lease(who.origin, r.ino);
                            let first = cairn_common::proto::OPEN_MAP_CHUNKS;
                            self.read_chunks_located(&who.holder, r.ino, 0, first)
                                .await
                                .map(|map| Opened {
                                    map: ChunkMap { lease, ..map },
                                    shared,
                                })
                        }
                        Ok(attr) => Ok(Opened {
                            map: ChunkMap::attributes_only(attr),
                            shared: false,
                        }),
                        Err(e) => Err(e),
                    },
                    // Its last name went and nobody held it: the open came too late.
                    None => Err(FsError::NotFound),
                };
                reading.told(told(&[r.ino], &res));
                respond(ex, subtree, &res).await
            }
            R::GetRepairStatus(_) => {
                let mut status = self.repair.status();
                self.gc.report(&mut status);
                respond(ex, subtree, &Ok(status)).await
            }
            R::CheckNamespace(_) => {
                respond(ex, subtree, &self.engine.check_namespace().await).await
            }
            R::WhoAmI(_) => {
                let peer_map = self.authz.map(&peer);
                let id = cairn_common::proto::Identity {
                    role: peer.role,
                    name: peer.name.clone(),
                    map: peer_map.map.clone(),
                    rule: peer_map.rule.clone(),
                    exports: self.authz.generation(),
                };
                respond(ex, subtree, &Ok(id)).await
            }
            R::ListExports(_) => respond(ex, subtree, &Ok(self.authz.rules().to_vec())).await,
            R::GetMetaHealth(_) => {
                let health = cairn_common::proto::MetaHealth {
                    cluster: self.engine.cluster_id(),
                    refusing: self.engine.refusing(),
                };
                respond(ex, subtree, &Ok(health)).await
            }
            R::SafeMode(r) => respond(ex, subtree, &Ok(self.safe_mode.act(r.action))).await,
            R::SetAdminState(r) => respond(ex, subtree, &self.set_admin_state(&who, r).await).await,
            R::ForgetDatanode(r) => {
                respond(ex, subtree, &self.forget_datanode(&who, r).await).await
            }
            R::ListTrash(r) => respond(ex, subtree, &self.list_trash(caller, r)).await,
            R::Restore(r) => {
                respond(
                    ex,
                    subtree,
                    &self.mutate_attr(&who, MetaOpKind::Restore(r)).await,
                )
                .await
            }
            R::Balance(r) => {
                use cairn_common::proto::BalanceAction;
                let res = match r.action {
                    BalanceAction::Get => Ok(()),
                    BalanceAction::Start { threshold_pct }
                        if !(threshold_pct > 0.0 && threshold_pct <= 100.0) =>
                    {
                        Err(FsError::invalid(format!(
                            "threshold must be above 0 and at most 100 percent, not {threshold_pct}"
                        )))
                    }
                    BalanceAction::Start { threshold_pct } => {
                        info!(threshold_pct, "balancer started");
                        Ok(())
                    }
                    BalanceAction::Stop => {
                        info!("balancer stopped by an operator");
                        Ok(())
                    }
                };
                let res = res.map(|()| self.repair.balancer(r.action, &self.blocks));
                respond(ex, subtree, &res).await
            }
            R::ListDir(r) => {
                let res = self
                    .answer(&who, &[r.ino], async {
                        self.engine.list_dir(caller, r.ino, r.limit, r.attrs)
                    })
                    .await;
                respond(ex, subtree, &res).await
            }
            R::Changes(r) => {
                if let Some(info) = r.mount {
                    let now = std::time::Instant::now();
                    let mut mounts = self.mounts();
                    let seen = mounts.entry(peer.serial).or_insert_with(|| MountSeen {
                        info: info.clone(),
                        client: peer.name.clone(),
                        addr: peer.addr,
                        since: now,
                        read_at: now,
                    });
                    seen.info = info;
                    seen.read_at = now;
                }
                let wait = r.wait_ms.min(cairn_common::proto::MAX_FEED_WAIT_MS);
                let mut reply = self
                    .engine
                    .feed()
                    .wait_since(
                        who.origin,
                        r.epoch,
                        r.since,
                        std::time::Duration::from_millis(wait.into()),
                        &self.stopping,
                    )
                    .await;
                reply.exports = self.authz.generation();
                respond(ex, subtree, &Ok(reply)).await
            }
            R::ListMounts(_) => {
                let mut list: Vec<MountStatus> = self
                    .mounts()
                    .values()
                    .map(|m| MountStatus {
                        // A session's number acts for it: never shown to others.
                        info: cairn_common::proto::MountInfo {
                            session: 0,
                            ..m.info.clone()
                        },
                        client: m.client.clone(),
                        addr: m.addr,
                        open_files: self.opens.held_by(m.info.session) as u64,
                        feed_read_ms_ago: m.read_at.elapsed().as_millis() as u64,
                        connected_secs: m.since.elapsed().as_secs(),
                    })
                    .collect();
                list.sort_by(|a, b| {
                    (&a.info.host, &a.info.mountpoint).cmp(&(&b.info.host, &b.info.mountpoint))
                });
                respond(ex, subtree, &Ok(list)).await
            }
            R::KeepOpen(r) => {
                let released = self.opens.renew(r.session, r.gen, &r.open, &r.writing);
                self.gc.uploading(r.session, &r.uploads);
                self.purge_if_orphans(released);
                respond(ex, subtree, &Ok(())).await
            }
        }
    }
}

impl Namenode {
    /// Refuses (`Busy`, which clients wait out) to grant or test a lock while the clients
    /// may still be taking back those they held before this namenode started or came to
    /// lead: until then its table lacks them, and could give one to two owners.
    fn locks_settled(&self) -> FsResult<()> {
        if self.opens.in_grace() {
            return Err(FsError::Busy(
                "locks held before this namenode came to lead are being taken back (a \
                 lease's grace); new ones wait until then"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Takes back a lock a client held before this namenode started or came to lead: in
    /// the grace period, as it was (unless it conflicts with one taken back already); after
    /// it, only if it is still held (a client whose connection changed), since another may
    /// have taken and released it meanwhile.
    fn reclaim_lock(
        &self,
        ino: Ino,
        owner: cairn_common::proto::LockOwnerId,
        range: cairn_common::proto::LockRange,
    ) -> FsResult<()> {
        if self.opens.in_grace() {
            return self.locks.set(ino, owner, range);
        }
        if self.locks.holds(ino, owner, &range) {
            return Ok(());
        }
        Err(FsError::invalid(
            "lock lost: it was not taken back within the grace after the namenode changed",
        ))
    }

    /// Refuses to commit a slice of a block the namespace does not know and no live datanode
    /// holds: such a block was never stored, or was collected as an abandoned upload while
    /// its client was silent. A datanode reports a block as it acknowledges it, so the
    /// report may still be on its way: it is waited for, briefly.
    /// (Skipped in safe mode, while datanodes may still be reporting.)
    async fn check_stored(&self, c: &cairn_common::proto::CommitSlices) -> FsResult<()> {
        if self.safe_mode.is_on() {
            return Ok(());
        }
        let missing = || -> FsResult<Option<BlockId>> {
            for (_, s) in &c.slices {
                if self.engine.block(&s.block)?.is_none()
                    && self.blocks.locations(&s.block).is_empty()
                {
                    return Ok(Some(s.block));
                }
            }
            Ok(None)
        };
        let deadline = tokio::time::Instant::now() + REPORT_WAIT;
        match self.blocks.await_reported(deadline, missing).await? {
            None => Ok(()),
            Some(block) => Err(FsError::io(format!(
                "block {block} is on no live datanode: the write is lost (was it left \
                 uncommitted past the garbage-collection grace period?)"
            ))),
        }
    }

    /// The files in `caller`'s trash, or in everyone's (`all`, root only), with where each
    /// came from.
    fn list_trash(
        &self,
        caller: &Caller,
        r: cairn_common::proto::ListTrash,
    ) -> FsResult<cairn_common::proto::TrashPage> {
        use cairn_common::proto::{TrashEntry, TrashOrigin, TRASH_ORIGIN_XATTR, TRASH_PAGE_MAX};
        let owner = (!r.all).then_some(caller.uid);
        let after = r.after.as_ref().map(|(dir, name)| (*dir, name.as_slice()));
        let limit = r.limit.clamp(1, TRASH_PAGE_MAX) as usize;
        let (page, more) = self.engine.trash_page(owner, after, limit)?;
        // Files of a page mostly come from a few directories.
        let mut paths: std::collections::HashMap<cairn_common::Ino, Option<String>> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        for (dir, name, ino) in page {
            let Ok(attr) = self.engine.getattr(ino) else {
                continue;
            };
            let origin = self
                .engine
                .get_xattr(ino, TRASH_ORIGIN_XATTR)
                .ok()
                .and_then(|v| TrashOrigin::decode(&v));
            let from = match &origin {
                Some(o) => {
                    let dir = match paths.get(&o.parent) {
                        Some(p) => p.clone(),
                        None => {
                            let p = self.engine.path_of(o.parent)?;
                            paths.insert(o.parent, p.clone());
                            p
                        }
                    };
                    dir.map(|dir| {
                        let name = String::from_utf8_lossy(&o.name);
                        if dir == "/" {
                            format!("/{name}")
                        } else {
                            format!("{dir}/{name}")
                        }
                    })
                }
                None => None,
            };
            out.push(TrashEntry {
                dir,
                name,
                size: attr.size,
                from,
                origin,
            });
        }
        Ok(cairn_common::proto::TrashPage { entries: out, more })
    }

    /// The subtree `peer`'s export confines it to, if any: its root directory, found by
    /// name once per connection and load of the rules.
    fn subtree(&self, peer: &Peer) -> FsResult<Option<Subtree>> {
        if !matches!(peer.role, Role::Mount | Role::User) {
            return Ok(None);
        }
        let map = self.authz.map(peer);
        if map.root.is_empty() {
            return Ok(None);
        }
        if let Some(&root) = map.root_ino.get() {
            return Ok(Some(Subtree { root }));
        }
        let mut dir = Ino::ROOT;
        for name in &map.root {
            dir = match self.engine.entry(dir, name) {
                Some(ino) if self.engine.getattr(ino)?.kind == FileKind::Dir => ino,
                _ => {
                    let path = map.root.iter().fold(String::new(), |path, name| {
                        path + "/" + &String::from_utf8_lossy(name)
                    });
                    warn!(peer = %peer.name, %path, "refused: the root of its export is not a directory");
                    return Err(FsError::invalid(format!(
                        "the export of {:?} is confined to {path}, which is not a directory \
                         of the namespace",
                        peer.name
                    )));
                }
            };
        }
        let _ = map.root_ino.set(dir);
        Ok(Some(Subtree { root: dir }))
    }

    /// Translates the inode numbers of `req` from `peer`'s subtree into the namespace's, and
    /// refuses it unless every inode it names lies inside the subtree, or is a file a session
    /// of the same certificate holds open (unlinked, or moved to the trash, while open).
    fn confine(&self, peer: &Peer, subtree: Subtree, req: &mut NamenodeRequest) -> FsResult<()> {
        if matches!(
            req,
            NamenodeRequest::ListTrash(_) | NamenodeRequest::Restore(_)
        ) {
            return Err(FsError::invalid(
                "the trash lies outside the subtree this certificate's export is confined to",
            ));
        }
        for ino in subtree.enter(req) {
            if self.engine.within(ino, subtree.root)?
                || self
                    .opens
                    .holding(ino, false)
                    .into_iter()
                    .any(|session| self.session_owners.is_of(session, &peer.name))
            {
                continue;
            }
            warn!(
                peer = %peer.name, addr = %peer.addr, %ino,
                "refused: a request naming an inode outside the subtree its export is confined to"
            );
            return Err(FsError::AccessDenied);
        }
        Ok(())
    }

    /// Refuses a request for the data of `ino` (`want` READ or WRITE) unless its caller may
    /// do that as the mode bits say, or a session of the same certificate holds the file
    /// open so (a file opened, then made unreadable, reads on through the open handle).
    fn may_use(&self, peer: &Peer, caller: &Caller, ino: Ino, want: u16) -> FsResult<()> {
        let attr = self.engine.getattr(ino)?;
        if crate::perm::allowed(caller, &attr, want) {
            return Ok(());
        }
        let write = want & crate::perm::WRITE != 0;
        let held = self
            .opens
            .holding(ino, write)
            .into_iter()
            .any(|session| self.session_owners.is_of(session, &peer.name));
        if held {
            return Ok(());
        }
        warn!(
            peer = %peer.name, uid = caller.uid, %ino, write,
            "refused: the data of a file neither its mode nor an open of it allows"
        );
        Err(FsError::AccessDenied)
    }

    /// Refuses a datanode's request about datanode `id` unless `id` is its own: registered
    /// under its certificate's name (or not known at all, so that it registers).
    fn speaks_for(&self, peer: &Peer, id: cairn_common::DatanodeId) -> FsResult<()> {
        match self.blocks.name_of(id) {
            Some(name) if name != peer.name => {
                let why = format!(
                    "datanode certificate {:?} cannot speak for datanode {id}, which is {name:?}",
                    peer.name
                );
                warn!(addr = %peer.addr, "refused: {why}");
                Err(FsError::WrongRole(why))
            }
            _ => Ok(()),
        }
    }

    /// The datanode an operator names by its name, address or id.
    fn operators_datanode(&self, node: &str) -> FsResult<cairn_common::DatanodeId> {
        self.blocks
            .find(node)
            .ok_or_else(|| FsError::invalid(format!("no datanode named {node}")))
    }

    /// Decommission, maintenance or normal service for a datanode, recorded durably first so
    /// that it outlives a namenode restart.
    async fn set_admin_state(
        &self,
        who: &Who,
        r: cairn_common::proto::SetAdminState,
    ) -> FsResult<cairn_common::proto::DatanodeStatus> {
        let id = self.operators_datanode(&r.node)?;
        let op = MetaOpKind::SetNodeAdmin {
            node: id,
            state: r.state,
        };
        self.mutate(who, op).await?;
        self.blocks.set_admin_of(id, r.state);
        info!(datanode = %r.node, state = %r.state, "set by an operator");
        self.blocks.status_of(id).ok_or(FsError::NotFound)
    }

    /// Records the datanodes heard from (or just `only`) with when, for a restart to list.
    async fn record_datanodes(&self, only: Option<cairn_common::DatanodeId>) {
        let known = self.blocks.known(only);
        if known.is_empty() {
            return;
        }
        let op = MetaOpKind::RecordDatanodes(known);
        if let Err(e) = self.engine.submit(Caller::ROOT, op).await {
            warn!("recording the datanodes seen failed: {e}");
        }
    }

    /// Drops a dead datanode from the list and from what is recorded (root only).
    async fn forget_datanode(
        &self,
        who: &Who,
        r: cairn_common::proto::ForgetDatanode,
    ) -> FsResult<cairn_common::proto::DatanodeStatus> {
        let id = self.operators_datanode(&r.node)?;
        if self
            .blocks
            .status_of(id)
            .is_some_and(|s| s.state != cairn_common::proto::DatanodeState::Dead)
        {
            return Err(FsError::invalid(format!(
                "datanode {} is not dead: stop it first (decommission it first to keep its \
                 blocks' replicas)",
                r.node
            )));
        }
        self.mutate(who, MetaOpKind::ForgetDatanode(id)).await?;
        let status = self.blocks.forget(id).ok_or(FsError::NotFound)?;
        info!(datanode = %status.name, addr = %status.addr, "forgotten by an operator");
        Ok(status)
    }

    /// Drops the datanodes dead for `forget_dead_datanode_secs`.
    async fn forget_long_dead(&self) {
        let after = self.config.forget_dead_datanode_secs;
        if after == 0 {
            return;
        }
        for id in self.blocks.dead_for(std::time::Duration::from_secs(after)) {
            match self
                .engine
                .submit(Caller::ROOT, MetaOpKind::ForgetDatanode(id))
                .await
            {
                Ok(_) => {
                    if let Some(s) = self.blocks.forget(id) {
                        info!(datanode = %s.name, addr = %s.addr, dead_secs = after, "dead datanode forgotten");
                    }
                }
                Err(e) => warn!(datanode = %id, "forgetting a long-dead datanode failed: {e}"),
            }
        }
    }

    /// Frees those of `inos` that are orphans nobody holds open any more, in the background.
    fn purge_if_orphans(self: &Arc<Self>, inos: Vec<cairn_common::Ino>) {
        if inos.is_empty() {
            return;
        }
        let nn = self.clone();
        tokio::spawn(async move { nn.purge(inos).await });
    }

    /// One op for all of `inos`: a renewal lets go of every file closed since the last one,
    /// and the writer need not wake for each.
    async fn purge(&self, inos: Vec<cairn_common::Ino>) {
        let files = inos.len();
        match self
            .engine
            .submit(Caller::ROOT, MetaOpKind::Purge { inos })
            .await
        {
            Ok(_) => {}
            Err(e) => warn!(files, "freeing files with no name left failed: {e}"),
        }
    }

    fn mounts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, MountSeen>> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_session_locks(&self, peer: &Peer) {
        let sessions = self
            .lock_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer.serial);
        for session in sessions.into_iter().flatten() {
            let dropped = self.locks.release_session(session);
            if dropped > 0 {
                info!(client = %peer.name, addr = %peer.addr, dropped, "client gone: its locks are released");
            }
        }
    }
}

/// Every [`REPAIR_PASS`], compares blocks with their replication and orders what is missing.
/// The founder of a namenode group adds the members its configuration names, each as it
/// comes up, until all are in. A group that has grown before is left as it is: a member an
/// operator removed stays removed.
async fn grow_group(nn: Arc<Namenode>, shutdown: CancellationToken) {
    if nn.config.member_id() != Some(1) {
        return;
    }
    let members = |nn: &Namenode| -> std::collections::BTreeSet<u64> {
        let metrics = nn.engine.group().metrics();
        let voters = metrics.membership_config.membership().voter_ids().collect();
        voters
    };
    match nn.engine.group().grown() {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            warn!("namenode group: whether it has grown is not known, so it is left as it is: {e}");
            return;
        }
    }
    let wanted: Vec<(u64, String)> = (1..)
        .zip(nn.config.group.iter().map(|a| a.to_string()))
        .collect();
    loop {
        let have = members(&nn);
        if wanted.iter().all(|(id, _)| have.contains(id)) {
            info!(
                members = wanted.len(),
                "the namenode group has every member it names"
            );
            if let Err(e) = nn.engine.group().mark_grown() {
                warn!("namenode group: recording that it has grown: {e}");
            }
            return;
        }
        for (id, addr) in wanted.iter().filter(|(id, _)| !have.contains(id)) {
            let group = nn.engine.group();
            if let Err(e) = group.add_member(*id, addr.clone(), GROW_TIMEOUT).await {
                info!("namenode group: {e}; trying again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(GROW_AGAIN) => {}
        }
    }
}

/// When this namenode comes to lead its group after another did, it starts over what only
/// the leader keeps, as at a start: safe mode until the datanodes have reported, and a
/// grace of a lease in which clients claim again the files they hold open.
async fn take_the_lead(nn: Arc<Namenode>, shutdown: CancellationToken) {
    if nn.config.group.is_empty() {
        return;
    }
    let mut metrics = nn.engine.group().watch();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let (now, term) = {
            let m = metrics.borrow();
            (m.state == openraft::ServerState::Leader, m.current_term)
        };
        if now && !leading {
            info!(
                term,
                "this namenode leads its group now: safe mode until the datanodes report"
            );
            nn.opens.restart_grace();
            // Locks granted in an earlier lead are stale: the clients take theirs back.
            nn.locks.clear();
            // Another led before (the founder's first lead is term 1): its leases and
            // delegations, as a restarted namenode's previous run's.
            if term > 1 {
                let quiet = nn.engine.group().previous_leader_quiet();
                nn.engine.feed().lead_taken(quiet);
            }
            nn.safe_mode.restart();
            record_trash_settings(&nn).await;
        } else if leading && !now {
            info!(term, "this namenode no longer leads its group");
        }
        leading = now;
    }
}

/// Records the trash settings of this namenode's configuration in the namespace (where
/// every member reads them from).
async fn record_trash_settings(nn: &Namenode) {
    let retention_secs = nn.config.trash_retention_secs;
    let set_trash = MetaOpKind::SetTrash {
        retention_secs,
        replaced: nn.config.trash_replaced,
    };
    if let Err(e) = nn.engine.submit(Caller::ROOT, set_trash).await {
        // A full metadata disk: serve reads all the same (changes are refused, and say why).
        warn!("trash_retention_secs = {retention_secs} not recorded, the last one recorded holds: {e}");
    }
}

/// How long `cairn admin namenodes add` waits for the new member to catch up (asked
/// again, it goes on from where it was).
const ADD_MEMBER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long the founder waits for a new member to catch up before it tries the next.
const GROW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How soon it tries again for members not in yet.
const GROW_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

async fn repair_loop(nn: Arc<Namenode>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REPAIR_PASS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<cairn_common::proto::RepairStatus> = None;
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut last_record = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if nn.engine.group().leading().is_err() {
            continue;
        }
        let blocks = match nn.engine.blocks() {
            Ok(b) => b,
            Err(e) => {
                warn!("listing blocks for repair failed: {e}");
                continue;
            }
        };
        // Safe mode decides from the counts of a pass that orders nothing, and once it ends
        // the same pass's decisions are made on the next tick.
        let act = !nn.safe_mode.is_on();
        for node in nn.repair.pass(&blocks, &nn.blocks, act) {
            let op = MetaOpKind::SetNodeAdmin {
                node,
                state: cairn_common::proto::AdminState::Decommissioned,
            };
            if let Err(e) = nn.engine.submit(Caller::ROOT, op).await {
                warn!(datanode = %node, "recording the end of a decommission failed: {e}");
            }
        }
        if act && !nn.opens.in_grace() {
            collect_garbage(&nn, &blocks).await;
        }
        if last_record.elapsed() >= RECORD_DATANODES_EVERY {
            last_record = tokio::time::Instant::now();
            nn.record_datanodes(None).await;
            nn.forget_long_dead().await;
        }
        let now = nn.repair.status();
        nn.safe_mode.observe(&now);
        // Told when it starts, every few seconds while it lasts, and when it is over.
        let below = now.under_replicated + now.missing;
        let was_below = last.map_or(0, |s| s.under_replicated + s.missing);
        let due = last_log.is_none_or(|t| t.elapsed() >= REPAIR_LOG_EVERY);
        if below > 0 && (was_below == 0 || due) {
            warn!(
                under_replicated = now.under_replicated,
                one_replica = now.one_replica,
                missing = now.missing,
                copies_in_flight = now.copies_in_flight,
                copied_mib = now.bytes_copied >> 20,
                "blocks below their replication"
            );
            if now.unrepairable > 0 {
                warn!(
                    blocks = now.unrepairable,
                    live_datanodes = now.live_datanodes,
                    "blocks that cannot be repaired now: every live datanode in service holds \
                     them already; add datanodes or lower their replication"
                );
            }
            last_log = Some(tokio::time::Instant::now());
        } else if below == 0 && was_below > 0 {
            info!(
                copies_done = now.copies_done,
                copied_mib = now.bytes_copied >> 20,
                "every block has its replicas"
            );
            last_log = None;
        }
        last = Some(now);
    }
}

/// How often the namenode records when it last heard from each datanode (for a restart to
/// say how long a dead one has been silent).
const RECORD_DATANODES_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Most blocks condemned, or forgotten, by one metadata write.
const GC_BATCH: usize = 4096;

/// The garbage collector's turn in a repair pass (not in safe mode, nor while clients may
/// still be claiming their uploads after a start): marks the unreferenced blocks — records
/// at refcount zero and blocks live datanodes hold that have no record (those only a dead
/// one holds wait for it to return) — condemns those past
/// their grace, and drops the tombstones of blocks no live datanode holds any more.
async fn collect_garbage(nn: &Arc<Namenode>, records: &[(BlockId, BlockRecord)]) {
    let recorded: std::collections::HashSet<BlockId> = records.iter().map(|(b, _)| *b).collect();
    let mut unreferenced: Vec<BlockId> = records
        .iter()
        .filter(|(_, r)| r.refs == 0)
        .map(|(b, _)| *b)
        .collect();
    unreferenced.extend(
        nn.blocks
            .held_blocks()
            .into_iter()
            .filter(|b| !recorded.contains(b)),
    );
    let mut due = nn.gc.mark(unreferenced);
    // A record's count can be wrong (a bug, a bad disk): before anything is deleted the
    // references are counted again from the chunk maps, and a block one names stays. The
    // candidates due wait for the next count.
    if !due.is_empty() && !nn.gc.recount_due() {
        due.clear();
    }
    if !due.is_empty() {
        let started = std::time::Instant::now();
        let candidates: std::collections::HashSet<BlockId> = due.iter().copied().collect();
        let reader = nn.clone();
        let named =
            tokio::task::spawn_blocking(move || reader.engine.named_by_slices(&candidates)).await;
        match named {
            Ok(Ok(named)) => {
                nn.gc.recounted(started.elapsed(), &named);
                for block in &named {
                    error!(
                        block = %block,
                        "metadata corruption: a file's chunk map names a block whose record \
                         counts no reference (or is missing); it is not deleted (`cairn admin \
                         fsck` shows the counts)"
                    );
                }
                due.retain(|b| !named.contains(b));
            }
            Ok(Err(e)) => {
                warn!("counting references before collecting garbage failed: {e}");
                due.clear();
            }
            Err(e) => {
                warn!("counting references before collecting garbage failed: {e}");
                due.clear();
            }
        }
    }
    for batch in due.chunks(GC_BATCH) {
        let op = MetaOpKind::CollectBlocks {
            blocks: batch.to_vec(),
        };
        if let Err(e) = nn.engine.submit(Caller::ROOT, op).await {
            warn!("condemning {} garbage blocks failed: {e}", batch.len());
        }
    }
    let deleted = nn.gc.deleted(|b| !nn.blocks.locations(b).is_empty());
    for batch in deleted.chunks(GC_BATCH) {
        let op = MetaOpKind::ForgetCollected {
            blocks: batch.to_vec(),
        };
        match nn.engine.submit(Caller::ROOT, op).await {
            Ok(_) => nn.gc.forget(batch),
            Err(e) => warn!("clearing {} tombstones failed: {e}", batch.len()),
        }
    }
}

/// Forgets clients that stopped renewing their open files, and frees orphans nobody holds:
/// those a vanished client held, and (one lease after a start, once clients had the time to
/// claim theirs again) those left from before the start.
async fn reap_orphans(nn: Arc<Namenode>, shutdown: CancellationToken) {
    let lease = nn.opens.lease();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep: Option<tokio::time::Instant> = None;
    let mut answers_swept = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if nn.engine.group().leading().is_err() {
            continue;
        }
        give_back_inos(&nn).await;
        if answers_swept.elapsed() >= ANSWERS_KEPT {
            answers_swept = tokio::time::Instant::now();
            forget_old_answers(&nn, ANSWERS_KEPT).await;
        }
        let released = nn.opens.expire();
        if !released.is_empty() {
            info!(
                files = released.len(),
                "clients gone: the files they held open are let go"
            );
        }
        // Orphans are few: a sweep once a lease catches every kind of leftover (a purge that
        // failed, orphans from before a restart), and one follows clients going away.
        let due = last_sweep.is_none_or(|t| t.elapsed() >= lease) || !released.is_empty();
        if nn.opens.in_grace() || !due {
            continue;
        }
        last_sweep = Some(tokio::time::Instant::now());
        match nn.engine.orphans() {
            Ok(orphans) => {
                let free: Vec<_> = orphans
                    .into_iter()
                    .filter(|ino| !nn.opens.is_open(*ino))
                    .collect();
                if !free.is_empty() {
                    nn.purge(free).await;
                }
            }
            Err(e) => warn!("listing files with no name left failed: {e}"),
        }
    }
}

/// Forgets the answers to clients' changes kept longer than `kept`.
async fn forget_old_answers(nn: &Namenode, kept: std::time::Duration) {
    let now = cairn_common::attr::Timestamp::now();
    let before = cairn_common::attr::Timestamp {
        secs: now.secs.saturating_sub(kept.as_secs() as i64),
        nanos: now.nanos,
    };
    loop {
        let old = match nn.engine.answers_before(before, GC_BATCH) {
            Ok(old) if old.is_empty() => return,
            Ok(old) => old,
            Err(e) => return warn!("listing the answers kept to clients' changes failed: {e}"),
        };
        let count = old.len();
        let forget = MetaOpKind::ForgetAnswers(old);
        if let Err(e) = nn.engine.submit(Caller::ROOT, forget).await {
            return warn!(count, "forgetting answers kept past any retry failed: {e}");
        }
        debug!(count, "answers kept past any retry forgotten");
        if count < GC_BATCH {
            return;
        }
    }
}

/// Gives back the inode numbers reserved for connections that ended without using them.
async fn give_back_inos(nn: &Namenode) {
    let inos = nn.engine.feed().take_returned();
    if inos.is_empty() {
        return;
    }
    let count = inos.len();
    match nn
        .engine
        .submit(Caller::ROOT, MetaOpKind::ReturnInos(inos))
        .await
    {
        Ok(_) => debug!(count, "inode numbers reserved and not used are given back"),
        // They stay unused: numbers are not scarce.
        Err(e) => warn!(count, "giving back unused inode numbers failed: {e}"),
    }
}

/// The directories an answer to a removal accounts for: not `/` when the op also made
/// `/.trash` there, an entry the client cannot know of (without `/` in the answer it stops
/// following `/`'s names).
fn accounted(
    dirs: &[cairn_common::Ino],
    trash: Option<crate::trash::Moved>,
) -> Vec<cairn_common::Ino> {
    let made_root_entry = trash.is_some_and(|t| t.made_root_entry);
    dirs.iter()
        .copied()
        .filter(|d| !(made_root_entry && *d == cairn_common::Ino::ROOT))
        .collect()
}

fn known_or_register(known: bool) -> FsResult<()> {
    if known {
        Ok(())
    } else {
        Err(FsError::unavailable("datanode is not registered"))
    }
}

/// Why a datanode holding blocks of namespace `theirs` is refused by a namenode of `ours`.
fn foreign_datanode(name: &str, theirs: u64, ours: u64) -> String {
    format!(
        "datanode {name} holds blocks of cluster {theirs:016x}, and this namenode's namespace \
         is cluster {ours:016x}: refused, so that its blocks are not taken for garbage. Was \
         the namenode's meta_dir formatted anew (a disk that did not mount, a wrong path)? \
         Point the namenode at its own meta_dir; or, to give the datanode to this cluster, \
         empty its data directory"
    )
}
