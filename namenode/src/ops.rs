//! Every namespace mutation is one [`MetaOp`], applied by [`apply`] — a deterministic
//! function of the op and the current state — to a transaction. The op carries its own
//! timestamp, so replaying the same ops on the same state gives the same bytes: this is the
//! seam where a replicated log (Raft) plugs in.

use cairn_common::attr::{
    check_name, Caller, FileKind, InodeAttr, SetAttr, TimeSet, Timestamp, SYMLINK_MAX,
    XATTR_NAME_MAX, XATTR_VALUE_MAX,
};
use cairn_common::layout::{self, Segment, Slice, CHUNK_SIZE, MAX_FILE_SIZE};
use cairn_common::proto::{
    Accessed, CommitSlices, CopyRange, Create, CreateReply, Link, Mkdir, Mknod, Punch, RemoveXattr,
    Rename, RenameMode, RequestId, Rmdir, SetReplication, SetXattr, Symlink, Unlink, XattrMode,
};
use cairn_common::{BlockId, FsError, FsResult, Ino};
use serde::{Deserialize, Serialize};

use crate::keys::{self, META_FORMAT, META_INODE_COUNT, META_NEXT_INO};
use crate::perm::{self, EXEC, READ, WRITE};
use crate::store::{BlockRecord, Cf, Dentry, InodeRecord, Txn, FORMAT_VERSION};
use crate::trash::{move_in, Moved};

/// Most hard links one inode may have.
const LINK_MAX: u32 = 65_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaOp {
    /// The time the op happened; every timestamp it sets is this one.
    pub now: Timestamp,
    /// On whose behalf: permissions are checked against it.
    pub caller: Caller,
    pub kind: MetaOpKind,
    /// The client's name for this change, when it gave one: made once, and answered as the
    /// first time when asked for again.
    pub request: Option<Request>,
    /// Files this op frees at once if it leaves them without a name: the writer found that
    /// nobody holds them (see the engine's `decide`). Any other file it orphans waits for
    /// its last close, or the orphan sweep.
    pub free: Vec<Ino>,
}

/// A change a client named ([`RequestId`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    /// The serial of the certificate it came with: the answer is given again to it alone.
    pub holder: Vec<u8>,
}

/// The answer kept for a named change.
#[derive(Serialize, Deserialize)]
struct Answered {
    holder: Vec<u8>,
    /// When the change was made: an answer kept past any client's retries is forgotten
    /// (`ForgetAnswers`).
    at: Timestamp,
    reply: MetaReply,
}

/// When the change whose kept answer is `bytes` was made.
pub fn answered_at(bytes: &[u8]) -> FsResult<Timestamp> {
    Ok(crate::store::decode::<Answered>("kept answer", bytes)?.at)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaOpKind {
    /// Creates the root directory of an empty namespace.
    Format {
        replication: u8,
    },
    Mkdir(Mkdir),
    Create(Create),
    Mknod(Mknod),
    Symlink(Symlink),
    Link(Link),
    Unlink(Unlink),
    Rmdir(Rmdir),
    Rename(Rename),
    SetAttr {
        ino: Ino,
        set: SetAttr,
        /// See [`cairn_common::proto::SetAttrReq::open_for_write`].
        open_for_write: bool,
    },
    SetXattr(SetXattr),
    RemoveXattr(RemoveXattr),
    SetReplication(SetReplication),
    CommitSlices(CommitSlices),
    CopyRange(CopyRange),
    Punch(Punch),
    Accessed(Accessed),
    /// Frees those of `inos` that are orphans (files whose last name is gone); does nothing to
    /// a file that is not one. Which files nobody holds open is the engine's to decide before
    /// the op is applied (see `engine.rs`): `inos` lists only those.
    Purge {
        inos: Vec<Ino>,
    },
    /// Condemns unreferenced blocks as garbage: their records go and tombstones come. The
    /// engine decides which blocks are due before the op is applied (see `gc.rs`); one
    /// referenced again by then is not condemned.
    CollectBlocks {
        blocks: Vec<BlockId>,
    },
    /// Removes the tombstones of condemned blocks no datanode holds any more.
    ForgetCollected {
        blocks: Vec<BlockId>,
    },
    /// How long removed files stay in the trash (0: they are removed at once), and whether
    /// files replaced by a rename go there too.
    SetTrash {
        retention_secs: u64,
        replaced: bool,
    },
    Restore(cairn_common::proto::Restore),
    /// Records an operator's state for a datanode, so that it outlives a namenode restart
    /// (`Normal` removes the record).
    SetNodeAdmin {
        node: cairn_common::DatanodeId,
        state: cairn_common::proto::AdminState,
    },
    /// Records datanodes as seen, so that they are listed after a restart.
    RecordDatanodes(Vec<(cairn_common::DatanodeId, crate::blockmap::KnownDatanode)>),
    /// Drops what is recorded of a datanode: its sighting and its operator's state.
    ForgetDatanode(cairn_common::DatanodeId),
    /// Hands out up to `count` consecutive inode numbers ahead, for a delegation holder's
    /// creates: given back ones first.
    ReserveInos {
        count: u32,
    },
    /// Numbers reserved for a connection that ended without using them: for the next
    /// reservations (`inopool.rs`). Numbers an inode has, or that were never handed out,
    /// are ignored.
    ReturnInos(Vec<u64>),
    /// Forgets the kept answers to these changes, by session and number: answers their
    /// clients never said they had, kept past any retry (a client that vanished).
    ForgetAnswers(Vec<(u64, u64)>),
}

impl MetaOpKind {
    /// An exclusive create of an empty regular file, mode 0644, owned by root: what the
    /// engine's tests and benchmark submit.
    pub fn new_file(parent: Ino, name: Vec<u8>) -> MetaOpKind {
        MetaOpKind::Create(Create::file(parent, name))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaReply {
    Attr(InodeAttr),
    Created(CreateReply),
    /// A name removed: what it named, and the trash directory the file went to instead of
    /// going (when it did).
    Removed {
        ino: Ino,
        trash: Option<Moved>,
    },
    /// A rename: the inode it moved, the one its new name named before (exchanged or
    /// removed), and the trash directory a removed file went to.
    Renamed {
        moved: Ino,
        replaced: Option<Ino>,
        trash: Option<Moved>,
    },
    /// A copy by reference: the target's attributes after it, and the bytes copied.
    Copied {
        attr: InodeAttr,
        len: u64,
    },
    /// Inode numbers reserved: `first..first + count`.
    Inos {
        first: u64,
        count: u32,
    },
    Done,
}

/// Applies `op`; a change its client named is made once (see [`MetaOp::request`]), and
/// the files it orphans that it may free are freed (see [`MetaOp::free`]).
pub fn apply(txn: &mut Txn<'_>, op: &MetaOp) -> FsResult<MetaReply> {
    let reply = apply_once(txn, op)?;
    for &ino in &op.free {
        if txn.take_orphan(ino) {
            purge(txn, ino)?;
        }
    }
    Ok(reply)
}

fn apply_once(txn: &mut Txn<'_>, op: &MetaOp) -> FsResult<MetaReply> {
    let Some(request) = &op.request else {
        return apply_kind(txn, op);
    };
    let id = &request.id;
    for seq in id.forget.iter().take(RequestId::FORGET_MAX) {
        txn.delete(Cf::Meta, keys::request(id.session, *seq));
    }
    let key = keys::request(id.session, id.seq);
    // Asked for again, or the first request overtaken by the second (the first waited
    // before its op while the second came on a new connection).
    if let Some(bytes) = txn.get_raw(Cf::Meta, &key)? {
        let answered: Answered = crate::store::decode("kept answer", &bytes)?;
        if answered.holder != request.holder {
            return Err(FsError::invalid(format!(
                "change {} of session {:016x} was asked for by another certificate",
                id.seq, id.session
            )));
        }
        return Ok(answered.reply);
    }
    let reply = apply_kind(txn, op)?;
    let answered = Answered {
        holder: request.holder.clone(),
        at: op.now,
        reply,
    };
    txn.put_raw(Cf::Meta, key, crate::store::encode(&answered));
    Ok(answered.reply)
}

fn apply_kind(txn: &mut Txn<'_>, op: &MetaOp) -> FsResult<MetaReply> {
    let now = op.now;
    let who = &op.caller;
    match &op.kind {
        MetaOpKind::Format { replication } => format(txn, *replication, now),
        MetaOpKind::Mkdir(m) => {
            let attr = make_node(
                txn,
                who,
                m.parent,
                &m.name,
                NewNode {
                    kind: FileKind::Dir,
                    perm: m.perm,
                    uid: m.uid,
                    gid: m.gid,
                    rdev: 0,
                    target: None,
                    ino: None,
                },
                now,
            )?;
            Ok(MetaReply::Attr(attr))
        }
        MetaOpKind::Create(c) => create(txn, who, c, now),
        MetaOpKind::ReserveInos { count } => reserve_inos(txn, *count),
        MetaOpKind::ReturnInos(inos) => return_inos(txn, inos),
        MetaOpKind::ForgetAnswers(changes) => {
            for (session, seq) in changes {
                txn.delete(Cf::Meta, keys::request(*session, *seq));
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::Mknod(m) => {
            if m.kind == FileKind::Dir || m.kind == FileKind::Symlink {
                return Err(FsError::invalid(
                    "mknod cannot make directories or symlinks",
                ));
            }
            let attr = make_node(
                txn,
                who,
                m.parent,
                &m.name,
                NewNode {
                    kind: m.kind,
                    perm: m.perm,
                    uid: m.uid,
                    gid: m.gid,
                    rdev: m.rdev,
                    target: None,
                    ino: None,
                },
                now,
            )?;
            Ok(MetaReply::Attr(attr))
        }
        MetaOpKind::Symlink(s) => {
            if s.target.is_empty() || s.target.len() > SYMLINK_MAX {
                return Err(if s.target.is_empty() {
                    FsError::NotFound
                } else {
                    FsError::NameTooLong
                });
            }
            let attr = make_node(
                txn,
                who,
                s.parent,
                &s.name,
                NewNode {
                    kind: FileKind::Symlink,
                    perm: 0o777,
                    uid: s.uid,
                    gid: s.gid,
                    rdev: 0,
                    target: Some(s.target.clone()),
                    ino: None,
                },
                now,
            )?;
            Ok(MetaReply::Attr(attr))
        }
        MetaOpKind::Link(l) => link(txn, who, l, now),
        MetaOpKind::Unlink(u) => remove_entry(txn, who, u.parent, &u.name, false, false, now),
        MetaOpKind::Rmdir(r) => remove_entry(txn, who, r.parent, &r.name, true, false, now),
        MetaOpKind::Rename(r) => rename(txn, who, r, now),
        MetaOpKind::SetAttr {
            ino,
            set,
            open_for_write,
        } => setattr(txn, who, *ino, set, *open_for_write, now),
        MetaOpKind::Accessed(a) => {
            let mut rec = load(txn, a.ino)?;
            perm::require(who, &rec.attr, READ)?;
            if rec.attr.atime_due(now) {
                rec.attr.atime = now;
                txn.put_inode(&rec);
            }
            Ok(MetaReply::Attr(rec.attr))
        }
        MetaOpKind::SetXattr(x) => {
            set_xattr(txn, who, x, now)?;
            Ok(MetaReply::Done)
        }
        MetaOpKind::RemoveXattr(x) => {
            let mut rec = load(txn, x.ino)?;
            check_xattr_write(who, &rec.attr, &x.name)?;
            let key = keys::xattr(x.ino, &x.name);
            if txn.get_raw(Cf::Xattrs, &key)?.is_none() {
                return Err(FsError::NoAttr);
            }
            txn.delete(Cf::Xattrs, key);
            rec.attr.ctime = now;
            txn.put_inode(&rec);
            Ok(MetaReply::Done)
        }
        MetaOpKind::SetReplication(s) => {
            if s.replication == 0 {
                return Err(FsError::invalid("replication must be at least 1"));
            }
            let mut rec = load(txn, s.ino)?;
            perm::require_owner(who, &rec.attr)?;
            rec.attr.replication = s.replication;
            rec.attr.ctime = now;
            txn.put_inode(&rec);
            if rec.attr.kind == FileKind::File {
                set_block_replication(txn, s.ino, s.replication)?;
            }
            Ok(MetaReply::Attr(rec.attr))
        }
        MetaOpKind::CommitSlices(c) => commit_slices(txn, c, now),
        MetaOpKind::CopyRange(c) => copy_range(txn, c, now),
        MetaOpKind::Punch(p) => punch(txn, p, now),
        MetaOpKind::Purge { inos } => {
            for ino in inos {
                purge(txn, *ino)?;
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::SetTrash {
            retention_secs,
            replaced,
        } => {
            txn.put_meta_u64(crate::trash::META_TRASH_RETENTION, *retention_secs);
            txn.put_meta_u64(crate::trash::META_TRASH_REPLACED, u64::from(*replaced));
            Ok(MetaReply::Done)
        }
        MetaOpKind::Restore(r) => Ok(MetaReply::Attr(crate::trash::restore(txn, who, r, now)?)),
        MetaOpKind::CollectBlocks { blocks } => {
            for block in blocks {
                // Referenced again since it was chosen: it stays.
                if !is_referenced(txn, block)? {
                    condemn(txn, block)?;
                }
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::ForgetCollected { blocks } => {
            for block in blocks {
                txn.delete(Cf::Meta, keys::tombstone(block));
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::SetNodeAdmin { node, state } => {
            let key = keys::node_admin(*node);
            match state {
                cairn_common::proto::AdminState::Normal => txn.delete(Cf::Meta, key),
                _ => txn.put_raw(Cf::Meta, key, crate::store::encode(state)),
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::RecordDatanodes(nodes) => {
            for (id, known) in nodes {
                txn.put_raw(Cf::Meta, keys::node(*id), crate::store::encode(known));
            }
            Ok(MetaReply::Done)
        }
        MetaOpKind::ForgetDatanode(id) => {
            txn.delete(Cf::Meta, keys::node(*id));
            txn.delete(Cf::Meta, keys::node_admin(*id));
            Ok(MetaReply::Done)
        }
    }
}

/// Whether `block` is referenced by some slice, as of this transaction.
pub fn is_referenced(txn: &Txn<'_>, block: &BlockId) -> FsResult<bool> {
    Ok(txn.block(block)?.is_some_and(|b| b.refs > 0))
}

/// Replaces an unreferenced block's record with a tombstone.
pub fn condemn(txn: &mut Txn<'_>, block: &BlockId) -> FsResult<()> {
    if is_referenced(txn, block)? {
        return Err(FsError::io(format!(
            "block {block} is referenced; it cannot be collected"
        )));
    }
    txn.delete(Cf::Blocks, keys::block(block));
    txn.put_raw(Cf::Meta, keys::tombstone(block), Vec::new());
    Ok(())
}

/// Whether `block` is condemned: its tombstone is there until no datanode holds it.
pub fn is_condemned(txn: &Txn<'_>, block: &BlockId) -> FsResult<bool> {
    Ok(txn.get_raw(Cf::Meta, &keys::tombstone(block))?.is_some())
}

/// Whether `ino` is an orphan: a file whose last name is gone, waiting for its last close.
pub fn is_orphan(txn: &Txn<'_>, ino: Ino) -> FsResult<bool> {
    Ok(txn.get_raw(Cf::Meta, &keys::orphan(ino))?.is_some())
}

/// Frees orphan `ino` (see [`MetaOpKind::Purge`]).
pub fn purge(txn: &mut Txn<'_>, ino: Ino) -> FsResult<()> {
    if !is_orphan(txn, ino)? {
        return Ok(());
    }
    txn.delete(Cf::Meta, keys::orphan(ino));
    match txn.inode(ino)? {
        Some(rec) if rec.attr.nlink == 0 => free_inode(txn, rec),
        _ => Ok(()),
    }
}

fn format(txn: &mut Txn<'_>, replication: u8, now: Timestamp) -> FsResult<MetaReply> {
    if let Some(root) = txn.inode(Ino::ROOT)? {
        return Ok(MetaReply::Attr(root.attr));
    }
    let root = InodeRecord {
        attr: InodeAttr {
            ino: Ino::ROOT,
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            replication: replication.max(1),
            stored: 0,
        },
        parent: Ino::ROOT,
        target: None,
    };
    txn.put_inode(&root);
    txn.put_meta_u64(META_NEXT_INO, Ino::ROOT.0 + 1);
    txn.put_meta_u64(META_INODE_COUNT, 1);
    txn.put_meta_u64(META_FORMAT, FORMAT_VERSION);
    Ok(MetaReply::Attr(root.attr))
}

pub(crate) fn load(txn: &Txn<'_>, ino: Ino) -> FsResult<InodeRecord> {
    txn.inode(ino)?.ok_or(FsError::NotFound)
}

pub(crate) fn load_dir(txn: &Txn<'_>, ino: Ino) -> FsResult<InodeRecord> {
    let rec = load(txn, ino)?;
    if rec.attr.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    Ok(rec)
}

pub(crate) struct NewNode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<Vec<u8>>,
    /// The number a delegation holder gave it (see [`Create::ino`]); otherwise the next.
    pub ino: Option<Ino>,
}

/// Creates an inode and its entry `name` in `parent`.
pub(crate) fn make_node(
    txn: &mut Txn<'_>,
    who: &Caller,
    parent: Ino,
    name: &[u8],
    node: NewNode,
    now: Timestamp,
) -> FsResult<InodeAttr> {
    check_name(name)?;
    let mut dir = load_dir(txn, parent)?;
    perm::require(who, &dir.attr, WRITE | EXEC)?;
    if txn.dentry(parent, name)?.is_some() {
        return Err(FsError::Exists);
    }
    let ino = match node.ino {
        Some(ino) => take_reserved_ino(txn, ino)?,
        None => alloc_ino(txn)?,
    };
    let mut perm = node.perm & 0o7777;
    // A new entry is its maker's: the identity the certificate and export give, not what
    // the request names (only root, who may chown anyway, may name another owner).
    let (uid, mut gid) = if who.uid == 0 {
        (node.uid, node.gid)
    } else {
        (who.uid, who.gid)
    };
    // A setgid directory hands its group to new entries, and its setgid bit to new
    // subdirectories (as ext4 does).
    if dir.attr.perm & 0o2000 != 0 {
        gid = dir.attr.gid;
        if node.kind == FileKind::Dir {
            perm |= 0o2000;
        }
    }
    let size = node.target.as_ref().map_or(0, |t| t.len() as u64);
    let rec = InodeRecord {
        attr: InodeAttr {
            ino,
            kind: node.kind,
            perm,
            uid,
            gid,
            size,
            nlink: if node.kind == FileKind::Dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            rdev: node.rdev,
            replication: dir.attr.replication,
            stored: 0,
        },
        parent,
        target: node.target,
    };
    txn.put_inode(&rec);
    txn.put_dentry(
        parent,
        name,
        Dentry {
            ino,
            kind: node.kind,
        },
    );
    if node.kind == FileKind::Dir {
        dir.attr.nlink += 1;
    }
    dir.attr.mtime = now;
    dir.attr.ctime = now;
    txn.put_inode(&dir);
    Ok(rec.attr)
}

fn alloc_ino(txn: &mut Txn<'_>) -> FsResult<Ino> {
    let next = txn
        .meta_u64(META_NEXT_INO)?
        .ok_or_else(|| FsError::io("namespace is not formatted"))?;
    txn.put_meta_u64(META_NEXT_INO, next + 1);
    let count = txn.meta_u64(META_INODE_COUNT)?.unwrap_or(0);
    txn.put_meta_u64(META_INODE_COUNT, count + 1);
    Ok(Ino(next))
}

/// An inode number handed out ahead ([`MetaOpKind::ReserveInos`]) that a create now uses.
fn take_reserved_ino(txn: &mut Txn<'_>, ino: Ino) -> FsResult<Ino> {
    let next = txn
        .meta_u64(META_NEXT_INO)?
        .ok_or_else(|| FsError::io("namespace is not formatted"))?;
    if ino.0 <= Ino::ROOT.0 || ino.0 >= next || txn.inode(ino)?.is_some() {
        return Err(FsError::invalid(format!(
            "inode number {ino} was not reserved or is taken"
        )));
    }
    // Replayed after a restart, a create may take a number its connection had before the
    // restart and another connection of that run gave back.
    let mut pool = txn.ino_pool()?;
    if pool.remove(ino.0) {
        txn.put_ino_pool(&pool);
    }
    let count = txn.meta_u64(META_INODE_COUNT)?.unwrap_or(0);
    txn.put_meta_u64(META_INODE_COUNT, count + 1);
    Ok(ino)
}

/// Hands out up to `count` consecutive inode numbers.
fn reserve_inos(txn: &mut Txn<'_>, count: u32) -> FsResult<MetaReply> {
    let mut pool = txn.ino_pool()?;
    while let Some((first, n)) = pool.take(count.into()) {
        // Only numbers no inode has come back; a range that says otherwise is dropped.
        let mut had = None;
        for ino in first..first + n {
            if txn.inode(Ino(ino))?.is_some() {
                had = Some(ino);
                break;
            }
        }
        txn.put_ino_pool(&pool);
        match had {
            None => {
                return Ok(MetaReply::Inos {
                    first,
                    count: n as u32,
                })
            }
            Some(ino) => tracing::error!(
                ino,
                "inode number pool holds a number in use: range {first}+{n} dropped"
            ),
        }
    }
    let next = txn
        .meta_u64(META_NEXT_INO)?
        .ok_or_else(|| FsError::io("namespace is not formatted"))?;
    txn.put_meta_u64(META_NEXT_INO, next + u64::from(count));
    Ok(MetaReply::Inos { first: next, count })
}

/// Takes back reserved numbers a connection did not use.
fn return_inos(txn: &mut Txn<'_>, inos: &[u64]) -> FsResult<MetaReply> {
    let next = txn
        .meta_u64(META_NEXT_INO)?
        .ok_or_else(|| FsError::io("namespace is not formatted"))?;
    let mut unused = Vec::with_capacity(inos.len());
    for &ino in inos {
        if ino > Ino::ROOT.0 && ino < next && txn.inode(Ino(ino))?.is_none() {
            unused.push(ino);
        }
    }
    if !unused.is_empty() {
        let mut pool = txn.ino_pool()?;
        pool.give(unused);
        txn.put_ino_pool(&pool);
    }
    Ok(MetaReply::Done)
}

fn create(txn: &mut Txn<'_>, who: &Caller, c: &Create, now: Timestamp) -> FsResult<MetaReply> {
    check_name(&c.name)?;
    // A create its delegation holder answered happened when the holder said.
    let now = c.at.unwrap_or(now);
    let dir = load_dir(txn, c.parent)?;
    perm::require(who, &dir.attr, EXEC)?;
    if let Some(existing) = txn.dentry(c.parent, &c.name)? {
        if c.ino == Some(existing.ino) {
            // A queued create sent again (its answer was lost): done already.
            return Ok(MetaReply::Created(CreateReply {
                attr: load(txn, existing.ino)?.attr,
                created: true,
                shared: false,
                place: Vec::new(),
            }));
        }
        if c.exclusive {
            return Err(FsError::Exists);
        }
        let mut rec = load(txn, existing.ino)?;
        if rec.attr.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        if c.truncate && rec.attr.kind == FileKind::File {
            perm::require(who, &rec.attr, WRITE)?;
            truncate(txn, &mut rec, 0)?;
            rec.attr.mtime = now;
            rec.attr.ctime = now;
            txn.put_inode(&rec);
        }
        return Ok(MetaReply::Created(CreateReply {
            attr: rec.attr,
            created: false,
            shared: false,
            place: Vec::new(),
        }));
    }
    let attr = make_node(
        txn,
        who,
        c.parent,
        &c.name,
        NewNode {
            kind: FileKind::File,
            perm: c.perm,
            uid: c.uid,
            gid: c.gid,
            rdev: 0,
            target: None,
            ino: c.ino,
        },
        now,
    )?;
    Ok(MetaReply::Created(CreateReply {
        attr,
        created: true,
        shared: false,
        place: Vec::new(),
    }))
}

fn link(txn: &mut Txn<'_>, who: &Caller, l: &Link, now: Timestamp) -> FsResult<MetaReply> {
    check_name(&l.new_name)?;
    let mut rec = load(txn, l.ino)?;
    if rec.attr.kind == FileKind::Dir {
        return Err(FsError::NotPermitted);
    }
    if rec.attr.nlink == 0 {
        // Removed (open somewhere, or in the trash): as Linux, no new name for it.
        return Err(FsError::NotFound);
    }
    let mut dir = load_dir(txn, l.new_parent)?;
    perm::require(who, &dir.attr, WRITE | EXEC)?;
    if txn.dentry(l.new_parent, &l.new_name)?.is_some() {
        return Err(FsError::Exists);
    }
    if rec.attr.nlink >= LINK_MAX {
        return Err(FsError::TooManyLinks);
    }
    rec.attr.nlink += 1;
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    if rec.attr.kind != FileKind::Dir {
        txn.put_raw(
            Cf::Links,
            keys::link(rec.attr.ino, l.new_parent, &l.new_name),
            Vec::new(),
        );
    }
    txn.put_dentry(
        l.new_parent,
        &l.new_name,
        Dentry {
            ino: rec.attr.ino,
            kind: rec.attr.kind,
        },
    );
    dir.attr.mtime = now;
    dir.attr.ctime = now;
    txn.put_inode(&dir);
    Ok(MetaReply::Attr(rec.attr))
}

/// `unlink` (`want_dir` false) or `rmdir` (`want_dir` true); `replacing`: for a rename
/// over the name.
fn remove_entry(
    txn: &mut Txn<'_>,
    who: &Caller,
    parent: Ino,
    name: &[u8],
    want_dir: bool,
    replacing: bool,
    now: Timestamp,
) -> FsResult<MetaReply> {
    if name.len() > cairn_common::attr::NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if want_dir && name == b"." {
        return Err(FsError::invalid("cannot remove '.'"));
    }
    if want_dir && name == b".." {
        return Err(FsError::NotEmpty);
    }
    let mut dir = load_dir(txn, parent)?;
    perm::require(who, &dir.attr, WRITE | EXEC)?;
    let entry = txn.dentry(parent, name)?.ok_or(FsError::NotFound)?;
    let rec = load(txn, entry.ino)?;
    perm::require_sticky(who, &dir.attr, &rec.attr)?;
    match (want_dir, rec.attr.kind == FileKind::Dir) {
        (false, true) => return Err(FsError::IsDir),
        (true, false) => return Err(FsError::NotDir),
        (true, true) => {
            if txn.has_prefix(Cf::Dentries, &keys::dentry_prefix(entry.ino))? {
                return Err(FsError::NotEmpty);
            }
            dir.attr.nlink = dir.attr.nlink.saturating_sub(1);
        }
        (false, false) => {
            if crate::trash::takes(txn, &dir, &rec, replacing)? {
                dir.attr.mtime = now;
                dir.attr.ctime = now;
                txn.put_inode(&dir);
                let ino = rec.attr.ino;
                let trash = move_in(txn, who, parent, name, rec, now)?;
                return Ok(MetaReply::Removed {
                    ino,
                    trash: Some(trash),
                });
            }
        }
    }
    txn.delete(Cf::Dentries, keys::dentry(parent, name));
    dir.attr.mtime = now;
    dir.attr.ctime = now;
    txn.put_inode(&dir);
    let ino = rec.attr.ino;
    let mut rec = rec;
    name_moved(txn, &mut rec, parent, name, None)?;
    drop_link(txn, rec, now)?;
    Ok(MetaReply::Removed { ino, trash: None })
}

/// Keeps where the names of `rec` are (its record's `parent`, and the `links` family for a
/// file with more than one) as its name `name` in `parent` moves to `to`, or goes (`None`,
/// before `nlink` counts it gone). The caller writes `rec`.
fn name_moved(
    txn: &mut Txn<'_>,
    rec: &mut InodeRecord,
    parent: Ino,
    name: &[u8],
    to: Option<(Ino, &[u8])>,
) -> FsResult<()> {
    if rec.attr.kind == FileKind::Dir {
        return Ok(());
    }
    let ino = rec.attr.ino;
    let key = keys::link(ino, parent, name);
    if rec.attr.nlink > 1 && txn.get_raw(Cf::Links, &key)?.is_some() {
        // One of its other names.
        txn.delete(Cf::Links, key);
        if let Some((p, n)) = to {
            txn.put_raw(Cf::Links, keys::link(ino, p, n), Vec::new());
        }
        return Ok(());
    }
    match to {
        Some((p, _)) => rec.parent = p,
        None if rec.attr.nlink > 1 => {
            // The name its record points at goes: another takes its place.
            let others = txn.scan_raw(Cf::Links, &keys::inode(ino))?;
            if let Some((k, _)) = others.into_iter().next() {
                if let Some(p) = keys::link_parent(&k) {
                    rec.parent = p;
                }
                txn.delete(Cf::Links, k);
            }
        }
        None => {}
    }
    Ok(())
}

/// Removes one name of `rec`. The last name of a regular file makes it an orphan: it lives
/// on with `nlink` 0 for whoever has it open, and the engine purges it when nobody does.
/// Anything else (a directory's only name, a symlink's last) frees it at once.
fn drop_link(txn: &mut Txn<'_>, mut rec: InodeRecord, now: Timestamp) -> FsResult<()> {
    let last = rec.attr.kind == FileKind::Dir || rec.attr.nlink <= 1;
    if !last || rec.attr.kind == FileKind::File {
        rec.attr.nlink = rec.attr.nlink.saturating_sub(1);
        rec.attr.ctime = now;
        txn.put_inode(&rec);
        if last {
            txn.orphan(rec.attr.ino, crate::store::encode(&now));
        }
        return Ok(());
    }
    free_inode(txn, rec)
}

/// Drops an inode with everything it references.
fn free_inode(txn: &mut Txn<'_>, mut rec: InodeRecord) -> FsResult<()> {
    let ino = rec.attr.ino;
    truncate(txn, &mut rec, 0)?;
    for (k, _) in txn.scan_raw(Cf::Xattrs, &keys::xattr_prefix(ino))? {
        txn.delete(Cf::Xattrs, k);
    }
    txn.delete(Cf::Inodes, keys::inode(ino));
    let count = txn.meta_u64(META_INODE_COUNT)?.unwrap_or(1);
    txn.put_meta_u64(META_INODE_COUNT, count.saturating_sub(1));
    Ok(())
}

fn rename(txn: &mut Txn<'_>, who: &Caller, r: &Rename, now: Timestamp) -> FsResult<MetaReply> {
    check_name(&r.name)?;
    check_name(&r.new_name)?;
    let src_dir = load_dir(txn, r.parent)?;
    let dst_dir = load_dir(txn, r.new_parent)?;
    perm::require(who, &src_dir.attr, WRITE | EXEC)?;
    perm::require(who, &dst_dir.attr, WRITE | EXEC)?;
    let src = txn.dentry(r.parent, &r.name)?.ok_or(FsError::NotFound)?;
    let dst = txn.dentry(r.new_parent, &r.new_name)?;
    let moved = load(txn, src.ino)?;
    perm::require_sticky(who, &src_dir.attr, &moved.attr)?;
    if let Some(d) = dst {
        perm::require_sticky(who, &dst_dir.attr, &load(txn, d.ino)?.attr)?;
    }
    if src.kind == FileKind::Dir && r.parent != r.new_parent {
        // Its ".." changes: that needs write permission on the directory itself.
        perm::require(who, &moved.attr, WRITE)?;
    }

    if src.kind == FileKind::Dir && is_ancestor_or_self(txn, src.ino, r.new_parent)? {
        return Err(FsError::invalid(
            "cannot move a directory into its own subtree",
        ));
    }
    let answer = |trash| MetaReply::Renamed {
        moved: src.ino,
        replaced: dst.map(|d| d.ino),
        trash,
    };
    if r.mode == RenameMode::Exchange {
        let dst = dst.ok_or(FsError::NotFound)?;
        if dst.kind == FileKind::Dir && is_ancestor_or_self(txn, dst.ino, r.parent)? {
            return Err(FsError::invalid(
                "cannot move a directory into its own subtree",
            ));
        }
        exchange(txn, r, src, dst, now)?;
        return Ok(answer(None));
    }
    let mut trash = None;
    if let Some(dst) = dst {
        if r.mode == RenameMode::NoReplace {
            return Err(FsError::Exists);
        }
        if dst.ino == src.ino {
            // Two names of one inode: POSIX says rename does nothing.
            return Ok(answer(None));
        }
        match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
            (true, false) => return Err(FsError::NotDir),
            (false, true) => return Err(FsError::IsDir),
            _ => {}
        }
        // Remove the target as unlink/rmdir would (emptiness checked there).
        let removed = remove_entry(
            txn,
            who,
            r.new_parent,
            &r.new_name,
            dst.kind == FileKind::Dir,
            true,
            now,
        )?;
        if let MetaReply::Removed { trash: to, .. } = removed {
            trash = to;
        }
    }

    txn.delete(Cf::Dentries, keys::dentry(r.parent, &r.name));
    txn.put_dentry(r.new_parent, &r.new_name, src);
    let mut moved = load(txn, src.ino)?;
    moved.attr.ctime = now;
    if src.kind == FileKind::Dir && r.parent != r.new_parent {
        moved.parent = r.new_parent;
    }
    name_moved(
        txn,
        &mut moved,
        r.parent,
        &r.name,
        Some((r.new_parent, &r.new_name)),
    )?;
    crate::trash::moving(txn, &mut moved, &src_dir, &dst_dir)?;
    txn.put_inode(&moved);
    // Reload: removing the target may have changed the parents.
    let mut src_dir = load(txn, src_dir.attr.ino)?;
    src_dir.attr.mtime = now;
    src_dir.attr.ctime = now;
    if src.kind == FileKind::Dir && r.parent != r.new_parent {
        src_dir.attr.nlink = src_dir.attr.nlink.saturating_sub(1);
    }
    txn.put_inode(&src_dir);
    if r.parent != r.new_parent {
        let mut dst_dir = load(txn, dst_dir.attr.ino)?;
        dst_dir.attr.mtime = now;
        dst_dir.attr.ctime = now;
        if src.kind == FileKind::Dir {
            dst_dir.attr.nlink += 1;
        }
        txn.put_inode(&dst_dir);
    }
    Ok(answer(trash))
}

fn exchange(
    txn: &mut Txn<'_>,
    r: &Rename,
    src: Dentry,
    dst: Dentry,
    now: Timestamp,
) -> FsResult<()> {
    txn.put_dentry(r.parent, &r.name, dst);
    txn.put_dentry(r.new_parent, &r.new_name, src);
    let src_dir = load(txn, r.parent)?;
    let dst_dir = load(txn, r.new_parent)?;
    let names = [
        (r.parent, &r.name[..], r.new_parent, &r.new_name[..]),
        (r.new_parent, &r.new_name[..], r.parent, &r.name[..]),
    ];
    for ((d, from, to), (was_in, was, now_in, now_named)) in
        [(src, &src_dir, &dst_dir), (dst, &dst_dir, &src_dir)]
            .into_iter()
            .zip(names)
    {
        let mut rec = load(txn, d.ino)?;
        rec.attr.ctime = now;
        if d.kind == FileKind::Dir {
            rec.parent = to.attr.ino;
        }
        // Two names of one file swapped: where its names are does not change.
        if src.ino != dst.ino {
            name_moved(txn, &mut rec, was_in, was, Some((now_in, now_named)))?;
        }
        crate::trash::moving(txn, &mut rec, from, to)?;
        txn.put_inode(&rec);
    }
    let moved_dirs = |into_src_side: bool| -> i64 {
        // Directory count change of the source parent: loses src, gains dst.
        let s = (src.kind == FileKind::Dir) as i64;
        let d = (dst.kind == FileKind::Dir) as i64;
        if into_src_side {
            d - s
        } else {
            s - d
        }
    };
    for (dir, delta) in [
        (r.parent, moved_dirs(true)),
        (r.new_parent, moved_dirs(false)),
    ] {
        let mut rec = load(txn, dir)?;
        rec.attr.mtime = now;
        rec.attr.ctime = now;
        if r.parent != r.new_parent {
            rec.attr.nlink = (rec.attr.nlink as i64 + delta).max(2) as u32;
        }
        txn.put_inode(&rec);
    }
    Ok(())
}

/// Is `dir` the directory `ino` or one of its ancestors?
fn is_ancestor_or_self(txn: &Txn<'_>, dir: Ino, mut ino: Ino) -> FsResult<bool> {
    // Depth bound: a corrupt parent chain must not loop forever.
    for _ in 0..100_000 {
        if ino == dir {
            return Ok(true);
        }
        if ino == Ino::ROOT {
            return Ok(false);
        }
        ino = load(txn, ino)?.parent;
    }
    Err(FsError::io(format!(
        "directory {dir} has a parent chain that loops"
    )))
}

fn setattr(
    txn: &mut Txn<'_>,
    who: &Caller,
    ino: Ino,
    set: &SetAttr,
    open_for_write: bool,
    now: Timestamp,
) -> FsResult<MetaReply> {
    let mut rec = load(txn, ino)?;
    if let Some(uid) = set.uid {
        // Only root gives a file away.
        if uid != rec.attr.uid && who.uid != 0 {
            return Err(FsError::NotPermitted);
        }
    }
    if let Some(gid) = set.gid {
        // The owner may pick one of their own groups; root any.
        let allowed = who.uid == 0 || (who.uid == rec.attr.uid && perm::in_group(who, gid));
        if gid != rec.attr.gid && !allowed {
            return Err(FsError::NotPermitted);
        }
    }
    if set.perm.is_some() {
        perm::require_owner(who, &rec.attr)?;
    }
    for t in [set.atime, set.mtime].into_iter().flatten() {
        match t {
            // Setting a time of one's choosing is the owner's right.
            TimeSet::At(_) => perm::require_owner(who, &rec.attr)?,
            // "Now" is allowed to anyone who may write the file.
            TimeSet::Now if !perm::is_owner_or_root(who, &rec.attr) => {
                perm::require(who, &rec.attr, WRITE)?
            }
            TimeSet::Now => {}
        }
    }
    if set.size.is_some() && rec.attr.kind == FileKind::File && !open_for_write {
        perm::require(who, &rec.attr, WRITE)?;
    }
    if let Some(perm) = set.perm {
        let mut perm = perm & 0o7777;
        // A non-root owner outside the file's group cannot keep it setgid (as Linux does).
        if who.uid != 0 && !perm::in_group(who, rec.attr.gid) && rec.attr.kind != FileKind::Dir {
            perm &= !0o2000;
        }
        rec.attr.perm = perm;
    }
    if let Some(uid) = set.uid {
        rec.attr.uid = uid;
    }
    if let Some(gid) = set.gid {
        rec.attr.gid = gid;
    }
    if let Some(size) = set.size {
        match rec.attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::invalid("only regular files have a size to set")),
        }
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooLarge);
        }
        truncate(txn, &mut rec, size)?;
        rec.attr.mtime = now;
    }
    let resolve = |t: TimeSet| match t {
        TimeSet::Now => now,
        TimeSet::At(t) => t,
    };
    if let Some(t) = set.atime {
        rec.attr.atime = resolve(t);
    }
    if let Some(t) = set.mtime {
        rec.attr.mtime = resolve(t);
    }
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    Ok(MetaReply::Attr(rec.attr))
}

/// Sets the size of a file, dropping or trimming the slices past it. Growing a file needs
/// no slices: bytes no slice covers read as zeros.
fn truncate(txn: &mut Txn<'_>, rec: &mut InodeRecord, size: u64) -> FsResult<()> {
    let ino = rec.attr.ino;
    if size < rec.attr.size {
        for (key, value) in txn.scan_raw(Cf::Chunks, &keys::chunk_prefix(ino))? {
            let Some(index) = keys::chunk_index(&key) else {
                continue;
            };
            let start = index as u64 * CHUNK_SIZE;
            if start + CHUNK_SIZE <= size {
                continue;
            }
            let slices: Vec<Slice> = crate::store::decode("chunk", &value)?;
            let limit = size.saturating_sub(start);
            let (kept, dropped) = layout::compact(slices, limit);
            for block in dropped {
                unref_block(txn, &block)?;
            }
            set_chunk(txn, &mut rec.attr, index, &kept)?;
        }
    }
    rec.attr.size = size;
    Ok(())
}

/// Gives the blocks of file `ino` its new replication factor, which repair then meets. A
/// block other files share too (deduplicated) keeps the highest factor any of them asked for:
/// without a reverse index, only a block this file alone references may go down.
fn set_block_replication(txn: &mut Txn<'_>, ino: Ino, replication: u8) -> FsResult<()> {
    let mut seen = std::collections::HashSet::new();
    for (_, value) in txn.scan_raw(Cf::Chunks, &keys::chunk_prefix(ino))? {
        let slices: Vec<Slice> = crate::store::decode("chunk", &value)?;
        for s in slices {
            if !seen.insert(s.block) {
                continue;
            }
            if let Some(mut b) = txn.block(&s.block)? {
                let new = if b.refs <= 1 {
                    replication
                } else {
                    b.replication.max(replication)
                };
                if new != b.replication {
                    b.replication = new;
                    txn.put_block(&s.block, &b);
                }
            }
        }
    }
    Ok(())
}

/// A slice of block `id` goes. A record that counts no reference (or is missing) is a
/// corruption of the namespace: said, and the count stays at zero — garbage collection
/// counts a block's references again from the chunk maps before it deletes it.
fn unref_block(txn: &mut Txn<'_>, id: &BlockId) -> FsResult<()> {
    match txn.block(id)? {
        Some(mut rec) if rec.refs > 0 => {
            rec.refs -= 1;
            txn.put_block(id, &rec);
        }
        Some(_) => tracing::error!(
            block = %id,
            "metadata corruption: a slice of a block whose record counts no reference went \
             (`cairn admin fsck` recounts)"
        ),
        None => tracing::error!(
            block = %id,
            "metadata corruption: a slice of a block with no record went \
             (`cairn admin fsck` recounts)"
        ),
    }
    Ok(())
}

fn commit_slices(txn: &mut Txn<'_>, c: &CommitSlices, now: Timestamp) -> FsResult<MetaReply> {
    let mut rec = load(txn, c.ino)?;
    match rec.attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(FsError::IsDir),
        _ => return Err(FsError::invalid("only regular files hold data")),
    }
    if c.size > MAX_FILE_SIZE {
        return Err(FsError::TooLarge);
    }
    for (index, slice) in &c.slices {
        if !slice.is_valid() {
            return Err(FsError::invalid(format!("malformed slice {slice:?}")));
        }
        if *index as u64 * CHUNK_SIZE + slice.end() > c.size.max(rec.attr.size) {
            return Err(FsError::invalid(format!(
                "slice at chunk {index} ends past the file size {}",
                c.size
            )));
        }
    }
    for (_, slice) in &c.slices {
        if is_condemned(txn, &slice.block)? {
            return Err(FsError::io(format!(
                "block {} was deleted as garbage before this write committed it \
                 (its upload was left uncommitted past the grace period)",
                slice.block
            )));
        }
    }
    rec.attr.size = rec.attr.size.max(c.size);
    let mut touched: Vec<u32> = Vec::new();
    for (index, slice) in &c.slices {
        match txn.block(&slice.block)? {
            Some(mut b) => {
                if b.len != slice.block_len {
                    return Err(FsError::invalid(format!(
                        "block {} has length {}, not {}",
                        slice.block, b.len, slice.block_len
                    )));
                }
                b.refs += 1;
                b.replication = b.replication.max(rec.attr.replication);
                txn.put_block(&slice.block, &b);
            }
            None => txn.put_block(
                &slice.block,
                &BlockRecord {
                    len: slice.block_len,
                    refs: 1,
                    replication: rec.attr.replication,
                },
            ),
        }
        let mut slices = txn.chunk(c.ino, *index)?;
        slices.push(*slice);
        set_chunk(txn, &mut rec.attr, *index, &slices)?;
        if !touched.contains(index) {
            touched.push(*index);
        }
    }
    // Drop what the new slices hide, so overwritten data stops costing space and reads.
    for index in touched {
        let slices = txn.chunk(c.ino, index)?;
        let limit = rec.attr.size.saturating_sub(index as u64 * CHUNK_SIZE);
        let (kept, dropped) = layout::compact(slices, limit);
        if !dropped.is_empty() {
            for block in &dropped {
                unref_block(txn, block)?;
            }
            set_chunk(txn, &mut rec.attr, index, &kept)?;
        }
    }
    rec.attr.mtime = c.mtime;
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    Ok(MetaReply::Attr(rec.attr))
}

/// Copies a range of one file over another by reference (see [`CopyRange`]). Like a commit,
/// it trusts the handles the client opened the files with: the permissions were checked
/// when they were opened.
fn copy_range(txn: &mut Txn<'_>, c: &CopyRange, now: Timestamp) -> FsResult<MetaReply> {
    let src = load_file(txn, c.src)?;
    let mut dst = load_file(txn, c.dst)?;
    let len = c
        .len
        .min(cairn_common::proto::COPY_MAX)
        .min(src.attr.size.saturating_sub(c.src_off));
    if len == 0 {
        return Ok(MetaReply::Copied {
            attr: dst.attr,
            len,
        });
    }
    let dst_end = c
        .dst_off
        .checked_add(len)
        .filter(|end| *end <= MAX_FILE_SIZE)
        .ok_or(FsError::TooLarge)?;
    if c.src == c.dst && c.src_off < dst_end && c.dst_off < c.src_off + len {
        return Err(FsError::invalid(
            "source and target ranges of one file overlap",
        ));
    }
    // What the source's bytes are, read before the target changes (it may be the same file):
    // (target offset, length, block, offset in the block, block length).
    let mut pieces = Vec::new();
    for (index, from, to) in chunk_spans(c.src_off, c.src_off + len) {
        let base = index as u64 * CHUNK_SIZE;
        for seg in layout::resolve(&txn.chunk(c.src, index)?, from, to) {
            if let Segment::Data {
                pos,
                len,
                block,
                block_off,
                block_len,
            } = seg
            {
                let at = c.dst_off + (base + pos - c.src_off);
                pieces.push((at, len, block, block_off, block_len));
            }
        }
    }
    // The target range becomes a hole, then the source's data is laid over it.
    let mut chunks = punch_range(txn, &dst.attr, c.dst_off, dst_end)?;
    for (at, len, block, block_off, block_len) in pieces {
        for (index, from, to) in chunk_spans(at, at + len) {
            let slice = Slice {
                pos: from as u32,
                len: (to - from) as u32,
                block,
                block_off: (block_off + (index as u64 * CHUNK_SIZE + from - at)) as u32,
                block_len,
            };
            add_ref(txn, &block, dst.attr.replication)?;
            chunks.entry(index).or_default().push(slice);
        }
    }
    for (index, slices) in chunks {
        set_chunk(txn, &mut dst.attr, index, &slices)?;
    }
    dst.attr.size = dst.attr.size.max(dst_end);
    dst.attr.mtime = now;
    dst.attr.ctime = now;
    txn.put_inode(&dst);
    Ok(MetaReply::Copied {
        attr: dst.attr,
        len,
    })
}

/// Cuts `[start, end)` out of the slices of file `attr`, counting the references that
/// changes: the chunks the range spans, as they are now (not yet written).
fn punch_range(
    txn: &mut Txn<'_>,
    attr: &InodeAttr,
    start: u64,
    end: u64,
) -> FsResult<std::collections::BTreeMap<u32, Vec<Slice>>> {
    // A range of many chunks (a hole punched in a large sparse file) visits only those
    // that exist: one read per chunk of the range could be millions.
    const LOOK_UP_AT_MOST: usize = 64;
    let mut spans: Vec<(u32, u64, u64)> =
        chunk_spans(start, end).take(LOOK_UP_AT_MOST + 1).collect();
    if spans.len() > LOOK_UP_AT_MOST {
        let (first, last) = (start / CHUNK_SIZE, (end - 1) / CHUNK_SIZE);
        spans = txn
            .scan_raw(Cf::Chunks, &keys::chunk_prefix(attr.ino))?
            .iter()
            .filter_map(|(key, _)| keys::chunk_index(key))
            .filter(|index| (first..=last).contains(&(*index as u64)))
            .map(|index| {
                let base = index as u64 * CHUNK_SIZE;
                let (from, to) = (start.max(base), end.min(base + CHUNK_SIZE));
                (index, from - base, to - base)
            })
            .collect();
    }
    let mut chunks = std::collections::BTreeMap::new();
    for (index, from, to) in spans {
        let punched = layout::punch(txn.chunk(attr.ino, index)?, from, to);
        for block in &punched.added {
            add_ref(txn, block, attr.replication)?;
        }
        for block in &punched.dropped {
            unref_block(txn, block)?;
        }
        chunks.insert(index, punched.slices);
    }
    Ok(chunks)
}

/// Makes a range of a file a hole (see [`Punch`]). Like a commit, it trusts the handle the
/// client opened the file with.
fn punch(txn: &mut Txn<'_>, p: &Punch, now: Timestamp) -> FsResult<MetaReply> {
    let mut rec = load_file(txn, p.ino)?;
    let end = p
        .offset
        .checked_add(p.len)
        .filter(|end| *end <= MAX_FILE_SIZE)
        .ok_or(FsError::TooLarge)?;
    // Past the end there are no slices to cut.
    let chunks = punch_range(txn, &rec.attr, p.offset, end.min(rec.attr.size))?;
    for (index, slices) in chunks {
        set_chunk(txn, &mut rec.attr, index, &slices)?;
    }
    if !p.keep_size {
        rec.attr.size = rec.attr.size.max(end);
    }
    rec.attr.mtime = now;
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    Ok(MetaReply::Attr(rec.attr))
}

/// Sets chunk `index` of file `attr`, keeping its count of stored bytes.
fn set_chunk(
    txn: &mut Txn<'_>,
    attr: &mut InodeAttr,
    index: u32,
    slices: &[Slice],
) -> FsResult<()> {
    let change = txn.put_chunk(attr.ino, index, slices)?;
    attr.stored = attr.stored.saturating_add_signed(change);
    Ok(())
}

/// The chunks `[start, end)` of a file spans: (chunk index, start and end inside it).
fn chunk_spans(start: u64, end: u64) -> impl Iterator<Item = (u32, u64, u64)> {
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let index = at / CHUNK_SIZE;
        let base = index * CHUNK_SIZE;
        let to = end.min(base + CHUNK_SIZE);
        let span = (index as u32, at - base, to - base);
        at = to;
        Some(span)
    })
}

/// A regular file's record.
fn load_file(txn: &Txn<'_>, ino: Ino) -> FsResult<InodeRecord> {
    let rec = load(txn, ino)?;
    match rec.attr.kind {
        FileKind::File => Ok(rec),
        FileKind::Dir => Err(FsError::IsDir),
        _ => Err(FsError::invalid("only regular files hold data")),
    }
}

/// One more reference to a block the namespace knows (one a file's slice names), which
/// is then kept at least at `replication`.
fn add_ref(txn: &mut Txn<'_>, id: &BlockId, replication: u8) -> FsResult<()> {
    let mut rec = txn
        .block(id)?
        .ok_or_else(|| FsError::io(format!("block {id} is named by a file but not recorded")))?;
    rec.refs += 1;
    rec.replication = rec.replication.max(replication);
    txn.put_block(id, &rec);
    Ok(())
}

/// user.* attributes follow the file's write permission; the other namespaces
/// (trusted., security., system.) are for the owner and root.
fn check_xattr_write(who: &Caller, attr: &InodeAttr, name: &[u8]) -> FsResult<()> {
    if name.starts_with(b"user.") {
        perm::require(who, attr, WRITE)
    } else {
        perm::require_owner(who, attr)
    }
}

fn set_xattr(txn: &mut Txn<'_>, who: &Caller, x: &SetXattr, now: Timestamp) -> FsResult<()> {
    if x.name.is_empty() || x.name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    if x.value.len() > XATTR_VALUE_MAX {
        return Err(FsError::NoSpace(format!(
            "extended attribute value of {} bytes exceeds {XATTR_VALUE_MAX}",
            x.value.len()
        )));
    }
    let mut rec = load(txn, x.ino)?;
    check_xattr_write(who, &rec.attr, &x.name)?;
    let key = keys::xattr(x.ino, &x.name);
    let exists = txn.get_raw(Cf::Xattrs, &key)?.is_some();
    match x.mode {
        XattrMode::Create if exists => return Err(FsError::Exists),
        XattrMode::Replace if !exists => return Err(FsError::NoAttr),
        _ => {}
    }
    txn.put_raw(Cf::Xattrs, key, x.value.clone());
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    Ok(())
}
