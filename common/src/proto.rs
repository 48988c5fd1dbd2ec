//! The wire protocol: one request enum per service, each request type tied to its response
//! type by [`Rpc`]. A stream carries one request header, optionally followed by raw block
//! bytes; the response is a `Result<Response, FsError>` header, optionally followed by raw
//! block bytes. Block data never travels inside a serde body.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::attr::{Caller, DirEntry, FileKind, InodeAttr, SetAttr, Timestamp};
use crate::ids::{BlockId, DatanodeId, Ino};
use crate::layout::Slice;
use crate::token::{BlockKey, BlockToken};

/// A request of some service, whose answer is `Response`.
pub trait Rpc: Serialize + Send + 'static {
    type Response: Serialize + DeserializeOwned + Send + 'static;
    type Service: Serialize + DeserializeOwned + Send + 'static;
    fn into_service(self) -> Self::Service;
}

macro_rules! service {
    ($(#[$meta:meta])* $service:ident { $($variant:ident($req:ident) -> $resp:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Serialize, Deserialize)]
        pub enum $service {
            $($variant($req),)*
        }
        $(
            impl Rpc for $req {
                type Response = $resp;
                type Service = $service;
                fn into_service(self) -> $service {
                    $service::$variant(self)
                }
            }
        )*
    };
}

service! {
    /// Everything the namenode answers: namespace, file maps, placement, datanode reports.
    NamenodeRequest {
        Lookup(Lookup) -> InodeAttr,
        GetAttr(GetAttr) -> InodeAttr,
        Accessed(Accessed) -> InodeAttr,
        SetAttrReq(SetAttrReq) -> InodeAttr,
        Mkdir(Mkdir) -> Changed<InodeAttr>,
        Create(Create) -> Changed<CreateReply>,
        Mknod(Mknod) -> Changed<InodeAttr>,
        Unlink(Unlink) -> Changed<Removed>,
        Rmdir(Rmdir) -> Changed<Removed>,
        Rename(Rename) -> Changed<Renamed>,
        Symlink(Symlink) -> Changed<InodeAttr>,
        Readlink(Readlink) -> Vec<u8>,
        Link(Link) -> Changed<InodeAttr>,
        ReadDir(ReadDir) -> Vec<DirEntry>,
        StatFs(StatFs) -> FsStats,
        SetXattr(SetXattr) -> (),
        GetXattr(GetXattr) -> Vec<u8>,
        ListXattr(ListXattr) -> Vec<Vec<u8>>,
        RemoveXattr(RemoveXattr) -> (),
        SetReplication(SetReplication) -> InodeAttr,
        ReadChunks(ReadChunks) -> ChunkMap,
        AllocateBlock(AllocateBlock) -> Placement,
        CommitSlices(CommitSlices) -> ChunkMap,
        CopyRange(CopyRange) -> Copied,
        Punch(Punch) -> InodeAttr,
        Seek(Seek) -> Option<u64>,
        ReportBadReplica(ReportBadReplica) -> (),
        ListDatanodes(ListDatanodes) -> Vec<DatanodeStatus>,
        GetLock(GetLock) -> Option<LockRange>,
        SetLock(SetLock) -> (),
        ReleaseLocks(ReleaseLocks) -> (),
        Register(Register) -> RegisterReply,
        BlockReport(BlockReport) -> (),
        BlockReceived(BlockReceived) -> (),
        Heartbeat(Heartbeat) -> HeartbeatReply,
        Open(Open) -> Opened,
        KeepOpen(KeepOpen) -> (),
        GetRepairStatus(GetRepairStatus) -> RepairStatus,
        SafeMode(SafeMode) -> SafeModeStatus,
        Balance(Balance) -> BalanceStatus,
        Restore(Restore) -> InodeAttr,
        ListTrash(ListTrash) -> TrashPage,
        SetAdminState(SetAdminState) -> DatanodeStatus,
        Changes(Changes) -> ChangesReply,
        ListDir(ListDir) -> DirListing,
        GetMetaHealth(GetMetaHealth) -> MetaHealth,
        ListMounts(ListMounts) -> Vec<MountStatus>,
        ForgetDatanode(ForgetDatanode) -> DatanodeStatus,
        SyncMetadata(SyncMetadata) -> (),
        Delegate(Delegate) -> Delegation,
        ReserveInos(ReserveInos) -> InoRange,
        Queued(Queued) -> Vec<QueuedDone>,
        CheckNamespace(CheckNamespace) -> NamespaceCheck,
        WhoAmI(WhoAmI) -> Identity,
        ListExports(ListExports) -> Vec<crate::exports::ExportRule>,
        GrantWrite(GrantWrite) -> BlockToken,
        Raft(RaftRpc) -> Vec<u8>,
        ListNamenodes(ListNamenodes) -> GroupStatus,
        ChangeNamenodes(ChangeNamenodes) -> GroupStatus,
    }
}

impl NamenodeRequest {
    /// Refuses (`EINVAL`) values no file system holds, before they are stored where other
    /// clients would read them: timestamps out of range.
    pub fn check(&self) -> Result<(), crate::FsError> {
        use NamenodeRequest as R;
        let at = |t: &Option<Timestamp>| t.as_ref().map_or(Ok(()), Timestamp::check);
        match self {
            R::SetAttrReq(r) => r.set.check(),
            R::Create(r) => at(&r.at),
            R::CommitSlices(r) => r.mtime.check(),
            R::Queued(q) => q.ops.iter().try_for_each(|c| match &c.op {
                QueuedOp::Create(r) => at(&r.at),
                QueuedOp::SetAttr { set, .. } => set.check(),
                QueuedOp::Commit { commit, .. } => commit.mtime.check(),
                QueuedOp::Unlink(_) | QueuedOp::Rmdir(_) => Ok(()),
            }),
            _ => Ok(()),
        }
    }

    /// Whether this request is one change of the namespace (one op in the namenode), made
    /// once per [`RequestId`]: sent again with its id when its connection was lost before
    /// the answer came, it is answered as the first time.
    pub fn once_by_id(&self) -> bool {
        use NamenodeRequest as R;
        matches!(
            self,
            R::Mkdir(_)
                | R::Create(_)
                | R::Mknod(_)
                | R::Unlink(_)
                | R::Rmdir(_)
                | R::Rename(_)
                | R::Symlink(_)
                | R::Link(_)
                | R::SetAttrReq(_)
                | R::SetXattr(_)
                | R::RemoveXattr(_)
                | R::SetReplication(_)
                | R::CommitSlices(_)
                | R::CopyRange(_)
                | R::Punch(_)
                | R::Restore(_)
        )
    }

    /// Whether this request may be sent again when its connection was lost before the
    /// answer came (the namenode restarted): it changes nothing, or asking twice makes the
    /// change once. A change of the namespace is not: the namenode may have made it before
    /// it went, and the second try would fail (EEXIST, ENOENT) or make it twice.
    pub fn retry_safe(&self) -> bool {
        use NamenodeRequest as R;
        matches!(
            self,
            R::Lookup(_)
                | R::GetAttr(_)
                | R::Readlink(_)
                | R::ReadDir(_)
                | R::StatFs(_)
                | R::GetXattr(_)
                | R::ListXattr(_)
                | R::ReadChunks(_)
                | R::AllocateBlock(_)
                | R::GrantWrite(_)
                | R::Seek(_)
                | R::ReportBadReplica(_)
                | R::ListDatanodes(_)
                | R::GetLock(_)
                | R::Open(_)
                | R::KeepOpen(_)
                | R::GetRepairStatus(_)
                | R::ListTrash(_)
                | R::Changes(_)
                | R::ListDir(_)
                | R::GetMetaHealth(_)
                | R::ListMounts(_)
                | R::ListNamenodes(_)
                | R::SyncMetadata(_)
                | R::Delegate(_)
                | R::ReserveInos(_)
                | R::CheckNamespace(_)
                | R::WhoAmI(_)
                | R::ListExports(_)
        )
    }
}

/// Asks for a delegation of directory `dir`: while this connection holds it, nobody else
/// looks in the directory or changes it before the holder has sent every change it queued
/// there (the namenode recalls it first, through the change feed: [`Change::Recall`]), so
/// the holder answers creates and unlinks there itself and sends them later, in order, in
/// batches ([`Queued`]). Given only to a connection that reads the change feed, for a
/// directory nobody else holds or had recalled from them lately.
///
/// The delegation is the client session's too: if the holder's connection ends, another
/// connection of the same session (the client reconnected) may send what was queued under
/// it, unless it was recalled meanwhile or [`RESUME_GRACE`] passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delegate {
    pub dir: Ino,
    /// The client's session (as its opens and locks name it).
    pub session: u64,
}

/// How long after a connection ends its session's delegations and unused inode numbers
/// wait for the client to come back through another connection.
pub const RESUME_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The answer to a [`Delegate`]: `None` when refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delegation {
    pub granted: Option<Granted>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Granted {
    /// The directory's attributes and every name in it, as of the grant.
    pub attr: InodeAttr,
    pub names: Vec<DirEntry>,
    /// The connection that holds it, and the change feed's run and end when it was given:
    /// a recall read from the feed at that position or later came after the grant.
    pub holder: u64,
    pub epoch: u64,
    pub from: u64,
}

/// Most names a delegated directory may have: the grant lists them all.
pub const DELEGATION_MAX_NAMES: usize = 4096;

/// Inode numbers for this connection's queued creates, handed out ahead. Numbers it does
/// not use are never handed out again (there are 2^64).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveInos {
    pub count: u32,
    /// The client's session: another connection of it may use the numbers (see
    /// [`Delegate`]).
    pub session: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InoRange {
    pub first: u64,
    pub count: u32,
    /// Datanodes for the first small block of the files made with them, as
    /// [`CreateReply::place`] offers.
    pub place: Vec<DatanodeAddr>,
}

/// Changes a delegation holder answered itself, in the order it answered them; each is done
/// on behalf of its own caller, in the delegated directory it names, and refused (EIO) if
/// the delegation ended before it arrived — unless the namenode restarted since it was given
/// (or, in a group, another member took the lead) less than [`REPLAY_WINDOW`] ago: what a
/// holder queued under the previous run is then applied as it comes (CephFS's client
/// replay).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    pub ops: Vec<QueuedChange>,
    /// The client's session, whose delegations and inode numbers they were made under.
    pub session: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedChange {
    pub caller: Caller,
    /// The namenode run that gave the delegation it was answered under.
    pub epoch: u64,
    pub op: QueuedOp,
}

/// How long after a start the namenode applies changes queued under its previous run's
/// delegations.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueuedOp {
    /// With [`Create::ino`] and [`Create::at`] set.
    Create(Create),
    Unlink(Unlink),
    /// Of a directory delegated to the holder too, that it knew empty.
    Rmdir(Rmdir),
    /// The slices of a file created under the delegation of `dir` (nobody else can reach
    /// it before the directory is recalled).
    Commit {
        dir: Ino,
        commit: CommitSlices,
    },
    /// A change of the mode, owner or times (never the size) of a file created under the
    /// delegation of `dir`; times are given, not "now", so that the namenode sets the ones
    /// the holder answered with.
    SetAttr {
        dir: Ino,
        ino: Ino,
        set: SetAttr,
    },
}

/// What each of a [`Queued`]'s ops came to, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueuedDone {
    Created(Result<Changed<CreateReply>, crate::FsError>),
    Removed(Result<Changed<Removed>, crate::FsError>),
    /// With the file's map, as [`CommitSlices`] answers.
    Committed(Result<ChunkMap, crate::FsError>),
    Attr(Result<InodeAttr, crate::FsError>),
}

/// A barrier: answered once every namespace change acknowledged before it is on the
/// namenode's stable storage (`fsync` of a file or a directory; see `metadata_sync`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncMetadata {}

/// Recounts the namespace's links, references and counters from its records and compares
/// them with those stored (root only; a full scan of the metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckNamespace {}

/// What [`CheckNamespace`] went through and found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceCheck {
    pub inodes: u64,
    pub names: u64,
    pub chunks: u64,
    pub blocks: u64,
    /// Slices naming blocks (the sum of every block's reference count).
    pub block_refs: u64,
    /// Inode numbers reserved for a mount, given back unused and not reserved again yet.
    pub free_inos: u64,
    /// Records that do not agree with the others; 0 in a consistent namespace.
    pub problems: u64,
    /// The first problems, described.
    pub examples: Vec<String>,
}

/// Who the namenode takes the caller's certificate for, and how its requests act.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub role: crate::cert::Role,
    pub name: String,
    pub map: crate::exports::IdMap,
    /// The export rule's name pattern, when one names this certificate.
    pub rule: Option<String>,
    /// The load of the export rules `map` follows ([`ChangesReply::exports`]).
    pub exports: u64,
}

/// The namenode's export rules, in the order it tries them (admin only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListExports {}

/// What goes to the namenode: a request and on whose behalf it is made. The namenode
/// checks POSIX permissions against `caller`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NamenodeEnvelope {
    pub caller: Caller,
    pub req: NamenodeRequest,
    /// Names a change ([`NamenodeRequest::once_by_id`]) so that asking for it again, when
    /// the answer was lost with its connection, does not make it twice.
    pub request: Option<RequestId>,
}

/// One change a client asked for: the namenode makes it once, and answers a request that
/// names it again with the first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    /// The client's session (as its opens and locks name it).
    pub session: u64,
    /// The change's number in its session, from 1 up.
    pub seq: u64,
    /// Earlier changes of the session whose answers the client has: the namenode forgets
    /// them (at most [`RequestId::FORGET_MAX`]).
    pub forget: Vec<u64>,
}

impl RequestId {
    /// Most answers one request tells the namenode to forget.
    pub const FORGET_MAX: usize = 256;
}

service! {
    /// Everything a datanode answers: block writes down a pipeline, block reads.
    DatanodeRequest {
        PutBlock(PutBlock) -> PutReply,
        GetBlock(GetBlock) -> BlockData,
        GetRange(GetRange) -> RangeData,
        SyncBlocks(SyncBlocks) -> SyncReply,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lookup {
    pub parent: Ino,
    pub name: Vec<u8>,
}

/// A file was read: its access time moves to now where relatime says so
/// (`InodeAttr::atime_due`). Needs read permission, not ownership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accessed {
    pub ino: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetAttr {
    pub ino: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAttrReq {
    pub ino: Ino,
    pub set: SetAttr,
    /// The size is set through a file the caller opened for writing (`ftruncate`,
    /// `fallocate`): the open checked the right to write, and the file's mode since does not
    /// take it away, as on a local file system.
    pub open_for_write: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mkdir {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Create {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// `O_EXCL`: fail with `EEXIST` when the name exists.
    pub exclusive: bool,
    /// `O_TRUNC`: an existing file is truncated to zero.
    pub truncate: bool,
    /// The caller opens the file it creates: the namenode counts it open at once.
    pub open: Option<OpenClaim>,
    /// A create a delegation holder answered itself ([`Queued`]): the inode number it gave
    /// the file, from those reserved for it ([`ReserveInos`]), and when.
    pub ino: Option<Ino>,
    pub at: Option<Timestamp>,
}

impl Create {
    /// An exclusive create of an empty regular file, mode 0644, owned by root, not opened:
    /// what tests, benchmarks and hand-made requests send.
    pub fn file(parent: Ino, name: Vec<u8>) -> Create {
        Create {
            parent,
            name,
            perm: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
            truncate: false,
            open: None,
            ino: None,
            at: None,
        }
    }
}

/// A client session holding a file open, as of the session's open-set generation (see
/// [`KeepOpen`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OpenClaim {
    pub session: u64,
    pub gen: u64,
}

/// Opens a file: its attributes, and the namenode counts it open by `claim.session`, so it
/// outlives the removal of its last name until the session lets go of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Open {
    pub ino: Ino,
    pub claim: OpenClaim,
    /// Opened for writing.
    pub write: bool,
}

/// The answer to an [`Open`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    pub map: ChunkMap,
    /// Another session holds the file open for writing, or this open writes and another
    /// session holds it open: what this mount keeps of its bytes can change under it, so it
    /// reads and writes them uncached (shared memory mappings of it are refused: they
    /// cannot be kept coherent between machines).
    pub shared: bool,
}

/// Chunks whose map an `Open` of a regular file returns with its attributes, so that a
/// small file's first read needs no `ReadChunks`.
pub const OPEN_MAP_CHUNKS: u32 = 16;

/// How often a client renews its open files ([`KeepOpen`]) while it holds any.
pub const OPEN_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Every file `session` holds open, sent every few seconds and soon after a last close: it
/// replaces what the namenode knew of the session (except files claimed at a later
/// generation than `gen`), and keeps the session's lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepOpen {
    pub session: u64,
    pub gen: u64,
    pub open: Vec<Ino>,
    /// Those of `open` held open for writing.
    pub writing: Vec<Ino>,
    /// Blocks the session has stored and not yet committed: they are not garbage.
    pub uploads: Vec<BlockId>,
}

/// The answer to a change of directory entries, with the directories it changed as they
/// are after it. The kernel voids what it knows of a directory whose entries change and asks
/// again before its next lookup there; a mount answers that from these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changed<T> {
    pub reply: T,
    pub dirs: Vec<ChangedDir>,
}

/// What an unlink or rmdir removed, which the remover must forget: the change feed does
/// not tell it of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    /// The inode the name named.
    pub ino: Ino,
    /// The trash directory the file was moved to (`trash_retention_secs`), whose entries
    /// and attributes the remover must forget too.
    pub trash: Option<Ino>,
}

/// What a rename reached beside its two directories, which the renamer must forget: the
/// change feed does not tell it of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renamed {
    /// The inode the old name named.
    pub moved: Ino,
    /// The inode the new name named before, exchanged or removed.
    pub replaced: Option<Ino>,
    /// The trash directory a removed file went to.
    pub trash: Option<Ino>,
}

/// A directory after a change of its entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangedDir {
    pub attr: InodeAttr,
    /// How many changes of its entries the namenode has made since it started (`epoch`
    /// names the run), this one included. A client whose own changes are all that moved it
    /// knows the directory's names as well as the namenode does.
    pub version: u64,
    pub epoch: u64,
}

/// The namespace's changes made through other connections since change `since` of namenode
/// run `epoch`: what a mount must stop believing of what it and its kernel cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Changes {
    pub epoch: u64,
    pub since: u64,
    /// When there is nothing new for this client, the namenode holds the answer back until
    /// there is, or this long (capped at [`MAX_FEED_WAIT_MS`]): the feed comes as it
    /// happens, one request in flight at a time.
    pub wait_ms: u32,
    /// Sent by mounts: who they are, for `cairn admin mounts`.
    pub mount: Option<MountInfo>,
}

/// Who a mount is. A mount reads the change feed as long as it lives, so its reads carry
/// this, and the namenode lists the mounts reading its feed from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub host: String,
    pub mountpoint: String,
    pub pid: u32,
    pub version: String,
    /// The client's session, under which its open files and locks are held.
    pub session: u64,
}

/// The namenode group as its leader sees it (`cairn admin namenodes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListNamenodes;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The member that answered: the leader.
    pub leader: u64,
    pub term: u64,
    /// The last entry of the leader's log, the last applied to its namespace, and the last
    /// its snapshot holds.
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// Changes the namenode group through Raft (`cairn admin namenodes add|remove|
/// transfer-leader`), from the leader; answered with the group as it is after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChangeNamenodes {
    /// Adds the namenode listening at `addr` (started with this group's members in its
    /// `group` list): it takes a snapshot, catches up, then votes.
    Add { addr: std::net::SocketAddr },
    /// Removes member `id`: it no longer counts towards the majority, nor gets the log.
    Remove { id: u64 },
    /// Hands the lead to member `to` (by default the voter most caught up): changes pause
    /// for an election timeout while the others stop expecting the leader.
    TransferLeader { to: Option<u64> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// A voter counts towards the majority; a learner is still catching up.
    pub voter: bool,
    /// The last entry the leader knows the member holds (none: not heard from yet).
    pub matched: Option<u64>,
}

/// The mounts connected to the namenode, as `cairn admin mounts` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListMounts;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountStatus {
    pub info: MountInfo,
    /// The name in the mount's certificate.
    pub client: String,
    pub addr: SocketAddr,
    /// Files the mount holds open (as its last renewal said).
    pub open_files: u64,
    /// How long ago the mount last read the change feed: one that stopped reading it for
    /// over twice [`LEASE_TRUST`] makes changes of files it read wait for it.
    pub feed_read_ms_ago: u64,
    /// How long the mount has been connected.
    pub connected_secs: u64,
}

/// The longest a [`Changes`] request is held back waiting for a change.
pub const MAX_FEED_WAIT_MS: u32 = 2_000;

/// How long after it asked for its latest complete read of the change feed a client may
/// still open a file by the map a lease gave it (see [`ChunkMap::leased`]) without asking.
/// The namenode waits for a client that holds a lease on a changed file to read the change,
/// or for twice this since its last read, before it answers the change.
pub const LEASE_TRUST: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after a lease was given a client may open by its map at most (replica locations
/// in it age); the namenode forgets leases twice as old.
pub const LEASE_MAP_KEEP: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesReply {
    pub epoch: u64,
    /// Where the next request continues.
    pub next: u64,
    /// Not every change up to now fitted in this answer: ask again at once.
    pub more: bool,
    /// False when the namenode no longer holds every change since `since` (another run, or
    /// too far behind): everything cached is in doubt.
    pub complete: bool,
    pub changes: Vec<Change>,
    /// The connection this read came through, as leases name it ([`ChunkMap::holder`]).
    pub reader: u64,
    /// Counts the namenode's loads of its export rules: when it changes, a mount asks
    /// [`WhoAmI`] again.
    pub exports: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// An inode's attributes (or its data, or its removal).
    Inode(Ino),
    /// A directory's entries: a name added, removed or pointed elsewhere, and the count of
    /// the directory's entry changes it made (see [`ChangedDir::version`]): a client that
    /// knows the names as of that count or later already has this change. Which name is
    /// not said: the feed goes to every client, whatever it may read.
    Entries(Ino, u64),
    /// The delegation of this directory ends (see [`Delegate`]): its holder sends what it
    /// queued there before it reads the feed on. Other clients ignore it.
    Recall(Ino),
    /// This directory was just delegated to another client, which answers changes there
    /// itself from now on: what is kept of its names (here and in the kernel) must go.
    Delegated(Ino),
}

impl Change {
    /// The inode whose attributes, data or entries changed (none for news of delegations).
    pub fn inode(&self) -> Option<Ino> {
        match self {
            Change::Inode(ino) | Change::Entries(ino, _) => Some(*ino),
            Change::Recall(_) | Change::Delegated(_) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateReply {
    pub attr: InodeAttr,
    /// False when an existing file was opened.
    pub created: bool,
    /// An existing file opened is shared with another session's writes (see
    /// [`Opened::shared`]).
    pub shared: bool,
    /// For a file just made: datanodes for its first block, if that is at most
    /// [`PLACED_BLOCK_MAX`] bytes. The client sends the block there while it asks for a
    /// placement as usual (which still decides), so a small file's block is not held up
    /// by that question.
    pub place: Vec<DatanodeAddr>,
}

/// Largest first block that goes where [`CreateReply::place`] says.
pub const PLACED_BLOCK_MAX: u32 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mknod {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub perm: u16,
    pub rdev: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unlink {
    pub parent: Ino,
    pub name: Vec<u8>,
}

/// The directory in the root that holds each user's trash, `/.trash/<uid>`.
pub const TRASH_DIR: &[u8] = b".trash";
/// The extended attribute of a file in the trash that says where it came from.
pub const TRASH_ORIGIN_XATTR: &[u8] = b"trusted.cairn.origin";

/// Where a file in the trash was removed from, and when and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashOrigin {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub removed: Timestamp,
    pub by: u32,
}

impl TrashOrigin {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a plain struct always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Option<TrashOrigin> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The files in the caller's trash, or (root only) in every user's (`all`), a page at a
/// time: up to `limit` (at most [`TRASH_PAGE_MAX`]) after the entry `after` names (a trash
/// directory and a name in it; from the start if none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListTrash {
    pub all: bool,
    pub after: Option<(Ino, Vec<u8>)>,
    pub limit: u32,
}

/// The largest page of [`ListTrash`]: entries of up to 4 KiB paths fit in a header.
pub const TRASH_PAGE_MAX: u32 = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrashPage {
    pub entries: Vec<TrashEntry>,
    /// More entries follow the last one.
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrashEntry {
    /// The trash directory (`/.trash/<uid>`) and the file's name in it.
    pub dir: Ino,
    pub name: Vec<u8>,
    pub size: u64,
    /// Where it was removed from, if that directory still exists.
    pub from: Option<String>,
    pub origin: Option<TrashOrigin>,
}

/// Puts the file `name` of a trash directory (`parent`) back where it was removed from, or
/// at `to` (a directory and a name) instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restore {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub to: Option<(Ino, Vec<u8>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rmdir {
    pub parent: Ino,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target if it exists (a file, or an empty directory).
    #[default]
    Replace,
    /// `RENAME_NOREPLACE`: fail with `EEXIST` if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap source and target atomically; both must exist.
    Exchange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rename {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub new_parent: Ino,
    pub new_name: Vec<u8>,
    pub mode: RenameMode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Symlink {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub target: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readlink {
    pub ino: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Link {
    pub ino: Ino,
    pub new_parent: Ino,
    pub new_name: Vec<u8>,
}

/// One page of a directory, in name order, starting after `after`. Paging by name keeps a
/// listing stable while entries are added: every entry present throughout appears once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadDir {
    pub ino: Ino,
    pub after: Option<Vec<u8>>,
    pub limit: u32,
    /// Return each entry's attributes too.
    pub attrs: bool,
}

/// The first page of a directory (a [`ReadDir`] from the start), and the directory's
/// change count when that page is all of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListDir {
    pub ino: Ino,
    pub limit: u32,
    /// Return each entry's attributes too.
    pub attrs: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirListing {
    pub entries: Vec<DirEntry>,
    /// Set when `entries` are all the directory's names and no change of its entries was
    /// counted while they were read: the directory with its change count, which they are
    /// the names of (or, when changes being written meanwhile were read but not yet
    /// counted, a count behind them, which a client following the count finds out at its
    /// next change). A client may then follow its names as it follows those of directories
    /// it made.
    pub whole: Option<ChangedDir>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatFs;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FsStats {
    /// Raw capacity of all live datanodes, in bytes.
    pub capacity: u64,
    /// Bytes used by blocks on all live datanodes.
    pub used: u64,
    /// Bytes still free for blocks on all live datanodes.
    pub available: u64,
    pub inodes: u64,
    pub live_datanodes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Any,
    /// `XATTR_CREATE`: fail with `EEXIST` if it exists.
    Create,
    /// `XATTR_REPLACE`: fail with `ENODATA` if it does not exist.
    Replace,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetXattr {
    pub ino: Ino,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    pub mode: XattrMode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetXattr {
    pub ino: Ino,
    pub name: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListXattr {
    pub ino: Ino,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveXattr {
    pub ino: Ino,
    pub name: Vec<u8>,
}

/// Sets the replication factor of a file, or the default a directory passes to new children.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetReplication {
    pub ino: Ino,
    pub replication: u8,
}

/// Asks for the slices of chunks `[first, first + count)` of a file and where their blocks are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadChunks {
    pub ino: Ino,
    pub first: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkMap {
    pub attr: InodeAttr,
    /// Each requested chunk that has slices, with its slices oldest first.
    pub chunks: Vec<(u32, Vec<Slice>)>,
    /// Live replicas of every block the slices reference, best first.
    pub locations: Vec<(BlockId, Vec<DatanodeAddr>)>,
    /// Blocks among those with replicas found corrupt (by a scrubber or a reader) that are
    /// not yet replaced.
    pub corrupt: Vec<BlockId>,
    /// A read token for each block of `locations`, for the certificate that asked.
    pub tokens: Vec<BlockToken>,
    /// A lease: until this client reads of a change of the file in the change feed, the
    /// namenode answers no other client's change of it. While it reads the feed, the client
    /// may open the file again by this map (when it covers the whole file) without asking.
    pub lease: Option<Lease>,
}

/// A lease on a file, given with its map (see [`ChunkMap::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The connection the lease is held by: only while the client reads the feed through
    /// that connection (a client that dialled again holds the lease no more).
    pub holder: u64,
    /// The namenode run whose change feed `from` counts in.
    pub epoch: u64,
    /// The change feed's end when the lease was given: the map holds every change before
    /// it, so a change read from the feed before `from` is no news to the map.
    pub from: u64,
}

impl ChunkMap {
    /// An answer with the file's attributes only: no chunks, no lease.
    pub fn attributes_only(attr: InodeAttr) -> ChunkMap {
        ChunkMap {
            attr,
            chunks: Vec::new(),
            locations: Vec::new(),
            corrupt: Vec::new(),
            lease: None,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatanodeAddr {
    pub id: DatanodeId,
    pub addr: SocketAddr,
}

/// Asks where to store a new block of `len` bytes with id `block`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocateBlock {
    pub ino: Ino,
    pub block: BlockId,
    pub len: u32,
    /// Datanodes not to choose: they already hold the block or just failed.
    pub exclude: Vec<DatanodeId>,
    /// How many targets to return; 0 means the file's replication factor.
    pub count: u8,
    /// The file's replication, when its create is still queued at the client (see
    /// [`Queued`]): the namenode may not know the file yet.
    pub replication: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// The pipeline, head first. Empty when `already_stored`.
    pub targets: Vec<DatanodeAddr>,
    /// Live datanodes that already hold the block (an earlier attempt, or the same bytes
    /// written before): they count as replicas.
    pub holders: Vec<DatanodeId>,
    /// Where `holders` are (an `fsync()` asks them to put the block on stable storage).
    pub holders_at: Vec<DatanodeAddr>,
    /// The cluster already holds this block with full replication: nothing to send.
    pub already_stored: bool,
    /// Replicas the file wants.
    pub replication: u8,
}

/// A write token for any block, for the asking certificate: what datanodes take blocks
/// with (see `cairn_common::token`). Refused to read-only exports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantWrite {}

/// A message of Raft from one member of the namenode group to another (both namenodes):
/// openraft's request, whose answer comes back as openraft's answer, both in postcard.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftRpc {
    /// The namespace the sender's group keeps: a member of another cluster is refused.
    pub cluster: u64,
    pub kind: RaftKind,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftKind {
    Append,
    Vote,
    Snapshot,
    /// Who are you: answered with the member's number and the cluster it keeps.
    Identify,
    /// Stand for election now (the leader hands over the lead).
    Elect,
    /// Do not stand for election for the milliseconds the body says (another is about to).
    HoldElections,
    /// Sync your log up to the entry the body says (a barrier: `fsync` on a mount).
    Sync,
}

/// Records slices a client has stored; the file grows to at least `size`. Answered with
/// the file's attributes, and, for a file of one chunk, its whole map under a lease (see
/// [`ChunkMap::leased`]): the writer opens it again without asking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommitSlices {
    pub ino: Ino,
    pub slices: Vec<(u32, Slice)>,
    pub size: u64,
    pub mtime: Timestamp,
}

/// Where the data (or with `hole`, the hole) of file `ino` at or after `offset` begins, as
/// `lseek`'s SEEK_DATA and SEEK_HOLE answer; `None` when there is no data from `offset` to
/// the end of the file, or `offset` is past it (ENXIO). The end of the file is a hole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seek {
    pub ino: Ino,
    pub offset: u64,
    pub hole: bool,
}

/// Makes `len` bytes of file `ino` at `offset` a hole: they read as zeros and take no
/// space (`fallocate` with `PUNCH_HOLE` or `ZERO_RANGE`). The file grows to the range's end
/// unless `keep_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Punch {
    pub ino: Ino,
    pub offset: u64,
    pub len: u64,
    pub keep_size: bool,
}

/// Copies `len` bytes of file `src` at `src_off` over file `dst` at `dst_off` by reference:
/// `dst`'s new slices name the blocks `src`'s bytes are stored in, so no byte is read or
/// stored again, and holes stay holes. At most [`COPY_MAX`] bytes per call, and none past
/// `src`'s end; the answer says how many.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRange {
    pub src: Ino,
    pub src_off: u64,
    pub dst: Ino,
    pub dst_off: u64,
    pub len: u64,
}

/// The most one [`CopyRange`] copies: 16 chunks. Callers loop, as they do over short writes.
pub const COPY_MAX: u64 = 1 << 30;

/// What a [`CopyRange`] did: `dst`'s attributes after it, and the bytes copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Copied {
    pub attr: InodeAttr,
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportBadReplica {
    pub block: BlockId,
    pub datanode: DatanodeId,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListDatanodes;

/// Who holds a lock: one client session (a mount) and the kernel's owner within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockOwnerId {
    pub session: u64,
    pub owner: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A byte range lock; `end` is inclusive (`u64::MAX`: to the end of the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
    pub pid: u32,
}

/// The first lock held by another owner that would conflict with `range`, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetLock {
    pub ino: Ino,
    pub owner: LockOwnerId,
    pub range: LockRange,
}

/// Takes, changes or drops (`LockKind::Unlock`) a lock; `WouldBlock` if another owner holds a
/// conflicting one. Locks are namenode memory: they do not survive its restart (as NFS).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetLock {
    pub ino: Ino,
    pub owner: LockOwnerId,
    pub range: LockRange,
    /// Taking back a lock held before the namenode started or came to lead: granted in its
    /// grace period (when new locks wait, `Busy`), refused after it unless still held.
    pub reclaim: bool,
}

/// Drops every lock `owner` holds on `ino` (a close).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseLocks {
    pub ino: Ino,
    pub owner: LockOwnerId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatanodeStatus {
    pub id: DatanodeId,
    pub name: String,
    pub rack: String,
    pub addr: SocketAddr,
    /// Live or stale: its replicas count and are read. Dead ones' do not.
    pub alive: bool,
    pub state: DatanodeState,
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
    pub blocks: u64,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Block transfers it was serving at its last heartbeat.
    pub active_transfers: u32,
    pub scrub: ScrubProgress,
    pub admin: AdminState,
}

/// What an operator asked of a datanode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Normal,
    /// Being drained: no new blocks, its replicas no longer count, every block it holds is
    /// copied elsewhere; it still serves reads and copies meanwhile.
    Decommissioning,
    /// Drained: every block it held has its replicas elsewhere; it may be switched off.
    Decommissioned,
    /// Down for planned work: no new blocks, and while it is away its replicas still count,
    /// so nothing is copied for its absence.
    Maintenance,
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdminState::Normal => "normal",
            AdminState::Decommissioning => "decommissioning",
            AdminState::Decommissioned => "decommissioned",
            AdminState::Maintenance => "maintenance",
        })
    }
}

/// Decommission a datanode, put it in maintenance, or back to normal (root only). `node` is
/// its name, its address or its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAdminState {
    pub node: String,
    pub state: AdminState,
}

/// Drop a dead datanode from the namenode's list for good (root only): one that will not
/// come back. `node` as in [`SetAdminState`]. A datanode that registers again later is
/// listed again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgetDatanode {
    pub node: String,
}

/// How a datanode is doing, by its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatanodeState {
    /// Heartbeats arrive.
    Live,
    /// Missed a few heartbeats: no new blocks are placed on it and its replicas are read
    /// last, but they still count; it may just be busy.
    Stale,
    /// Silent past the dead timeout: its replicas no longer count and are copied elsewhere.
    Dead,
}

impl std::fmt::Display for DatanodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatanodeState::Live => "live",
            DatanodeState::Stale => "stale",
            DatanodeState::Dead => "dead",
        })
    }
}

/// How far the cluster is from every block having its replicas, and what repair has done.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RepairStatus {
    /// Referenced blocks with fewer live replicas than their replication (at least one),
    /// whether or not there is a datanode to copy them to.
    pub under_replicated: u64,
    /// Of those, blocks repair cannot bring up now: every live datanode in service holds
    /// one already (fewer live datanodes than the replication).
    pub unrepairable: u64,
    /// Live datanodes in service, for saying why (`unrepairable`).
    pub live_datanodes: u64,
    /// Of those, blocks with a single live replica.
    pub one_replica: u64,
    /// Referenced blocks with no live replica at all.
    pub missing: u64,
    /// Blocks with more live replicas than wanted.
    pub over_replicated: u64,
    /// Replica copies still to make, and their bytes.
    pub copies_needed: u64,
    pub bytes_needed: u64,
    /// Copies ordered and not yet seen done.
    pub copies_in_flight: u64,
    /// Copies seen done, and their bytes, since the namenode started.
    pub copies_done: u64,
    pub bytes_copied: u64,
    /// Bytes copied per second over the last minute.
    pub rate_bytes_per_sec: u64,
    /// Replicas deleted as surplus since the namenode started.
    pub surplus_deleted: u64,
    /// Replicas found corrupt and not yet replaced, and the blocks whose every replica is.
    pub corrupt_replicas: u64,
    pub corrupt_blocks: u64,
    /// Blocks whose replicas share a failure domain (rack) while another one could take a
    /// copy: each gets a copy in a new domain, then the surplus goes from a shared one.
    pub misplaced: u64,
    /// Referenced blocks, and those with at least one live replica.
    pub blocks: u64,
    pub blocks_reported: u64,
    /// Unreferenced blocks waiting out the garbage-collection grace period.
    pub garbage_waiting: u64,
    /// Blocks condemned as garbage that some live datanode still holds.
    pub garbage_deleting: u64,
    /// Blocks condemned as garbage since the namenode started.
    pub garbage_collected: u64,
}

/// The repair status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRepairStatus;

/// Whether the namenode's metadata store takes writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMetaHealth;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaHealth {
    /// The namespace's cluster id (see [`Register::cluster`]).
    pub cluster: u64,
    /// The store refuses writes (its disk is full or failing): every change fails until it
    /// takes them again. None while it takes them.
    pub refusing: Option<MetaRefusal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaRefusal {
    /// Since how long, in seconds.
    pub for_secs: u64,
    /// Changes refused since.
    pub refused: u64,
    /// The store's error, with the advice the namenode has for it.
    pub error: String,
}

/// Safe mode: after a start the namenode makes no replication or deletion decisions until
/// enough of the blocks it knows have been reported by datanodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SafeModeAction {
    Get,
    /// Stay in safe mode until told to leave (root only).
    Enter,
    /// Leave now, whatever has been reported (root only).
    Leave,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafeMode {
    pub action: SafeModeAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafeModeStatus {
    pub on: bool,
    /// Entered by an operator: only an operator ends it.
    pub manual: bool,
    pub blocks: u64,
    pub blocks_reported: u64,
    /// Fraction of blocks that must be reported before it ends by itself.
    pub threshold: f64,
}

/// The balancer: moves replicas from the fullest datanodes to the emptiest until every
/// datanode's usage is within a threshold of the cluster's average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BalanceAction {
    Get,
    /// Start (or retarget) balancing; `threshold_pct` in percentage points (root only).
    Start {
        threshold_pct: f64,
    },
    /// Stop moving replicas; moves under way finish (root only).
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Balance {
    pub action: BalanceAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BalancerState {
    /// Never started since the namenode started.
    #[default]
    Idle,
    Running,
    /// Every datanode is within the threshold: it stopped by itself.
    Balanced,
    /// Stopped by an operator.
    Stopped,
}

/// One datanode as the balancer sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalanceNode {
    pub name: String,
    pub used: u64,
    pub capacity: u64,
    /// Used share of its capacity, in percent.
    pub used_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BalanceStatus {
    pub state: BalancerState,
    pub threshold_pct: f64,
    /// The cluster's used share of its capacity, in percent: every datanode's target.
    pub average_pct: f64,
    /// Live datanodes in normal service, the ones balanced.
    pub nodes: Vec<BalanceNode>,
    /// Bytes still to leave the datanodes above the threshold.
    pub bytes_to_move: u64,
    pub moves_in_flight: u64,
    /// Replicas moved, and their bytes, since this balancing started.
    pub moves_done: u64,
    pub bytes_moved: u64,
    /// Seconds since this balancing started (until it ended).
    pub elapsed_secs: f64,
}

/// A datanode introduces itself: at start, and again whenever the namenode forgot it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    pub id: DatanodeId,
    /// The namespace whose blocks it holds, learnt at its first registration (None: none
    /// yet). A namenode of another namespace refuses it, and so never takes its blocks for
    /// garbage: a namenode formatted anew on an empty directory (a disk that did not mount)
    /// must not delete a cluster's data.
    pub cluster: Option<u64>,
    pub name: String,
    /// Its failure domain (`rack` in its configuration; empty: none given).
    pub rack: String,
    /// Where clients and other datanodes reach it.
    pub addr: SocketAddr,
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterReply {
    pub heartbeat_interval_ms: u64,
    /// The keys block access tokens are signed with now (see `cairn_common::token`).
    pub keys: Vec<BlockKey>,
    /// Serials of revoked certificates, as in [`HeartbeatReply::revoked`]: a datanode
    /// learns them with its first keys, before it serves anyone.
    pub revoked: Vec<Vec<u8>>,
    /// The namenode's namespace: the datanode keeps it and gives it at every registration.
    pub cluster: u64,
}

/// Part of a full block report; `last` closes it, and any replica the namenode had listed
/// for this datanode but that no part named is dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockReport {
    pub id: DatanodeId,
    pub blocks: Vec<BlockId>,
    pub first: bool,
    pub last: bool,
}

/// An incremental block report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockReceived {
    pub id: DatanodeId,
    pub added: Vec<BlockId>,
    pub removed: Vec<BlockId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: DatanodeId,
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
    pub blocks: u64,
    pub active_transfers: u32,
    /// Copies ordered by the namenode ([`DatanodeCommand::Replicate`]) that failed since
    /// the last heartbeat; successful ones show up as the targets' block reports.
    pub copies_failed: Vec<BlockId>,
    pub scrub: ScrubProgress,
}

/// What a datanode's scrubber has done since the datanode started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrubProgress {
    /// Passes finished.
    pub passes: u64,
    /// Bytes re-hashed in the pass under way.
    pub bytes_this_pass: u64,
    /// Bytes and seconds of the last finished pass.
    pub last_pass_bytes: u64,
    pub last_pass_secs: f64,
    /// Corrupt replicas found since the start.
    pub corrupt_found: u64,
}

/// Work the namenode hands a datanode with a heartbeat reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DatanodeCommand {
    /// Copy a block this datanode holds to `targets` (a pipeline), verified on the way.
    Replicate {
        block: BlockId,
        len: u32,
        targets: Vec<DatanodeAddr>,
        /// Lets the targets take the block (the namenode signs it as it sends the command).
        token: Option<BlockToken>,
    },
    /// Delete these replicas: other datanodes hold enough copies.
    Delete { blocks: Vec<BlockId> },
    /// Re-hash these replicas now (a reader found one bad): quarantine and report those that
    /// are, report the others as held again.
    Verify { blocks: Vec<BlockId> },
    /// Delete these quarantined replicas: the blocks have their replicas elsewhere.
    DropQuarantined { blocks: Vec<BlockId> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The namenode does not know this datanode (it restarted): register and report again.
    pub reregister: bool,
    pub commands: Vec<DatanodeCommand>,
    /// Serials of the certificates the cluster CA revoked: the datanode serves none of them.
    pub revoked: Vec<Vec<u8>>,
    /// The keys block access tokens are signed with now.
    pub keys: Vec<BlockKey>,
}

/// Stores a block: `len` raw bytes follow the header. The datanode forwards them to the
/// first of `downstream`, which forwards to the rest, and answers once the tail has answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutBlock {
    pub block: BlockId,
    pub len: u32,
    pub downstream: Vec<DatanodeAddr>,
    /// fsync the block file and its directory before answering.
    pub sync: bool,
    /// A write token (see `cairn_common::token`), passed on down the pipeline.
    pub token: Option<BlockToken>,
}

/// Puts blocks this datanode holds on stable storage (a client's `fsync()` of a file whose
/// blocks were stored without it); answered once they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncBlocks {
    pub blocks: Vec<BlockId>,
    /// A write token.
    pub token: Option<BlockToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReply {
    /// Blocks asked for that this datanode does not hold: not synced.
    pub missing: Vec<BlockId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutReply {
    /// Datanodes of the pipeline (this one included) that stored the verified block.
    pub stored_on: Vec<DatanodeId>,
    /// Datanodes of the pipeline that did not, with the reason.
    pub failed: Vec<(DatanodeId, String)>,
}

/// Reads `len` bytes of a block from `offset` (`None`: to the end); the bytes follow the
/// response header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetBlock {
    pub block: BlockId,
    pub offset: u32,
    pub len: Option<u32>,
    /// A read token for the block.
    pub token: Option<BlockToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockData {
    /// Number of raw bytes after the header.
    pub len: u32,
}

/// Reads the bytes `[offset, offset + len)` of a block with their proof: the answer carries
/// the chunk groups the range touches, in Bao's encoding against the block's id
/// (`cairn_common::verified`), which the reader checks before it uses a byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRange {
    pub block: BlockId,
    pub offset: u32,
    pub len: u32,
    /// A read token for the block.
    pub token: Option<BlockToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeData {
    /// The length of the whole block, which the proof's shape depends on.
    pub block_len: u32,
    /// Bytes of the encoding after the header.
    pub len: u32,
}
