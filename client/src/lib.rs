//! The Cairn client library: the one Rust API the CLI and the FUSE mount use. Namespace
//! operations go to the namenode; file bytes go straight to and from datanodes, verified
//! against their BLAKE3 ids on the way in and on the way out.

pub mod config;
mod data;
mod deleg;
mod disk_cache;
mod file;
mod fresh;
mod opens;
mod requests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_common::attr::{Caller, DirEntry, FileKind, InodeAttr, SetAttr};
use cairn_common::cert::Role;
use cairn_common::namenodes::Namenodes;
use cairn_common::proto::{self, CreateReply, DatanodeStatus, FsStats, RenameMode, Rpc, XattrMode};
use cairn_common::transport::{self, ConnectionPool, TlsIdentity, TransportOptions};
use cairn_common::{FsError, FsResult, Ino};
use fresh::Edit;
use quinn::Endpoint;

pub use config::ClientConfig;
pub use deleg::Found;
pub use file::FileHandle;

/// How often a waiting lock request asks again.
const LOCK_RETRY: Duration = Duration::from_millis(50);
/// How often a lock waiting out a namenode's grace period asks again.
const LOCK_GRACE_RETRY: Duration = Duration::from_millis(250);
/// How long a lock being taken back is asked for again while the namenodes elect a leader.
const RECLAIM_FOR: Duration = Duration::from_secs(30);
/// How long a request keeps trying to reach the namenode before it fails.
const NAMENODE_RETRY_FOR: Duration = Duration::from_secs(10);
/// Entries asked for per readdir page.
const READDIR_PAGE: u32 = 1024;
/// A second name found missing in a directory within this long of the first: names are
/// being made there one after another, and learning the directory's names saves a call
/// per name.
const MISSES_TOGETHER: Duration = Duration::from_secs(1);
/// At most one try to learn a directory's names this often (a directory larger than one
/// listing page cannot be learnt).
const LEARN_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// This process's user, group and supplementary groups.
pub fn current_caller() -> Caller {
    let owner = Owner::current();
    // SAFETY: with a zero count getgroups only reports how many groups there are; then it
    // writes at most `n` gids into a buffer of exactly that many.
    let groups = unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut buf = vec![0 as libc::gid_t; n.max(0) as usize];
        let got = libc::getgroups(n, buf.as_mut_ptr());
        buf.truncate(got.max(0) as usize);
        buf
    };
    Caller {
        uid: owner.uid,
        gid: owner.gid,
        groups,
    }
}

/// A regular file to create, as `open(2)` with `O_CREAT` describes it.
#[derive(Clone, Copy, Debug)]
pub struct NewFile<'a> {
    pub parent: Ino,
    pub name: &'a [u8],
    pub perm: u16,
    /// `O_EXCL`: fail with `EEXIST` when the name exists.
    pub exclusive: bool,
    /// `O_TRUNC`: an existing file is truncated to zero.
    pub truncate: bool,
    pub owner: Owner,
}

impl NewFile<'_> {
    fn edits(&self) -> [(Ino, Edit<'_>); 1] {
        [(self.parent, Edit::Add(self.name))]
    }

    /// The namenode's request; `open` claims the file for this client's session.
    fn request(&self, open: Option<proto::OpenClaim>) -> proto::Create {
        proto::Create {
            parent: self.parent,
            name: self.name.to_vec(),
            perm: self.perm,
            uid: self.owner.uid,
            gid: self.owner.gid,
            exclusive: self.exclusive,
            truncate: self.truncate,
            open,
            ino: None,
            at: None,
        }
    }
}

/// Does the answer to a change say it changed directory entries? A create that found the
/// file there (and opened it) did not.
trait ChangedEntries {
    fn changed_entries(&self) -> bool {
        true
    }

    /// The inode a name the change added points at, when the answer says.
    fn added(&self) -> Option<Ino> {
        None
    }

    /// The kind of the inode [`ChangedEntries::added`] names.
    fn added_kind(&self) -> Option<FileKind> {
        None
    }
}

impl ChangedEntries for () {}

impl ChangedEntries for proto::Removed {}

impl ChangedEntries for proto::Renamed {}

/// The attributes an answer to a change gives, if it does.
pub(crate) trait AttrAnswer {
    fn attr(&self) -> Option<&InodeAttr>;
}

impl AttrAnswer for () {
    fn attr(&self) -> Option<&InodeAttr> {
        None
    }
}

impl AttrAnswer for InodeAttr {
    fn attr(&self) -> Option<&InodeAttr> {
        Some(self)
    }
}

impl AttrAnswer for proto::Copied {
    fn attr(&self) -> Option<&InodeAttr> {
        Some(&self.attr)
    }
}

impl AttrAnswer for proto::ChunkMap {
    fn attr(&self) -> Option<&InodeAttr> {
        Some(&self.attr)
    }
}

impl ChangedEntries for InodeAttr {
    fn added(&self) -> Option<Ino> {
        Some(self.ino)
    }

    fn added_kind(&self) -> Option<FileKind> {
        Some(self.kind)
    }
}

impl ChangedEntries for CreateReply {
    fn changed_entries(&self) -> bool {
        self.created
    }

    fn added(&self) -> Option<Ino> {
        Some(self.attr.ino)
    }

    fn added_kind(&self) -> Option<FileKind> {
        Some(self.attr.kind)
    }
}

/// Who owns a new file, directory, node or symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// This process's user and group.
    pub fn current() -> Owner {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        unsafe {
            Owner {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        }
    }
}

/// A connection to one Cairn cluster. Cheap to clone; clones share connections and cache.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// On whose behalf namespace requests are made; the namenode checks permissions with it.
    caller: Arc<Caller>,
}

struct Inner {
    config: ClientConfig,
    pool: ConnectionPool,
    /// The namenodes to ask, and the one asked now (the group's leader, if it has several).
    namenodes: Namenodes,
    cache: data::BlockCache,
    /// Blocks on local disk (`block_cache_dir`), if configured.
    disk_cache: Option<Arc<disk_cache::DiskCache>>,
    /// Datanodes that failed a write recently; new blocks avoid them for a while, so one
    /// dead node costs one failed attempt, not one per block until the namenode notices.
    suspects: data::Suspects,
    /// The write token datanodes take blocks with (see `cairn_common::token`).
    write_token: data::WriteToken,
    /// Blocks stored without an fsync, by file, until an `fsync()` of the file.
    unsynced: data::Unsynced,
    /// This client's identity in lock ownership: locks of different mounts never mix.
    session: u64,
    /// The locks this client holds, as the namenode granted them: taken back from a
    /// namenode that started or came to lead since (see [`reclaim_locks`]).
    locks: cairn_common::locks::LockTable,
    /// The numbers of its changes (see `requests.rs`).
    requests: Arc<requests::Requests>,
    /// Block transfers under way, so a block is fetched once however many want it.
    inflight: Mutex<HashMap<cairn_common::BlockId, data::Transfer>>,
    /// The files this client holds open, as the namenode knows them.
    opens: Arc<opens::OpenSet>,
    /// Attributes as this client's latest calls left them.
    fresh: fresh::FreshAttrs,
    /// Directories delegated to this client, and the changes it answered itself.
    deleg: deleg::Delegations,
    /// Names found missing from directories this client does not follow, and tries to
    /// learn their names: (last miss, last try).
    misses: Mutex<HashMap<Ino, (std::time::Instant, Option<std::time::Instant>)>>,
    /// Requests sent to the namenode, by kind (what a test or a debugger counts).
    sent: Mutex<HashMap<&'static str, u64>>,
    /// Bytes received from datanodes: blocks, and ranges with their proofs.
    fetched: std::sync::atomic::AtomicU64,
    /// Told of other clients' changes, before the feed is read on.
    on_changed: Mutex<Option<ChangedHook>>,
    /// Who this client is, when it serves a mount (see [`Client::serve_mount`]).
    mount: Mutex<Option<proto::MountInfo>>,
    /// How the namenode takes this client's requests (its certificate's export rule), as
    /// last asked; callers are mapped with it before anything is answered here.
    identity: std::sync::RwLock<Option<Arc<proto::Identity>>>,
    /// This process's own user, what its upkeep (feed reads, renewals) is sent as.
    own: Caller,
}

/// What [`Client::on_others_changes`] installs.
type ChangedHook = Arc<dyn Fn(ChangeNews<'_>) + Send + Sync>;

/// What a mount's kernel must forget: what other clients changed, as the change feed tells
/// it, or a side effect of this client's own change that its answer did not cover.
#[derive(Debug, Clone, Copy)]
pub enum ChangeNews<'a> {
    /// Others made these changes, in order.
    Others(&'a [proto::Change]),
    /// Others may have changed anything: the feed was restarted or fell behind.
    Anything,
    /// This client's own change made these (a removed file's trash directory got an entry):
    /// nothing it answered meanwhile is stale, only what the kernel kept of them.
    Own(&'a [proto::Change]),
}

impl Inner {
    fn opens_handle(&self) -> Arc<opens::OpenSet> {
        self.opens.clone()
    }

    fn identity(&self) -> Option<Arc<proto::Identity>> {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `caller` as the namenode will take it.
    fn acting_as(&self, caller: Caller) -> Caller {
        match &*self.identity.read().unwrap_or_else(|e| e.into_inner()) {
            Some(id) => id.map.apply(caller),
            None => caller,
        }
    }
}

impl Client {
    /// Connects with the certificates named in `config`.
    pub async fn connect(config: ClientConfig) -> anyhow::Result<Client> {
        let identity = config.tls.load()?;
        Client::with_identity(config, &identity)
    }

    pub fn with_identity(config: ClientConfig, identity: &TlsIdentity) -> anyhow::Result<Client> {
        let opts = TransportOptions::default();
        let endpoint = transport::client_endpoint(identity, &opts)?;
        Client::with_endpoint(config, endpoint, identity, &opts)
    }

    /// Uses an existing endpoint (tests share one with a daemon, or set transport options).
    pub fn with_endpoint(
        config: ClientConfig,
        endpoint: Endpoint,
        identity: &TlsIdentity,
        opts: &TransportOptions,
    ) -> anyhow::Result<Client> {
        let cache = data::BlockCache::new(config.block_cache_mib << 20);
        let disk_cache = match &config.block_cache_dir {
            Some(dir) => Some(
                disk_cache::DiskCache::open(dir, config.block_cache_disk_mib << 20).map_err(
                    |e| anyhow::anyhow!("cannot open the block cache in {}: {e}", dir.display()),
                )?,
            ),
            None => None,
        };
        let session = rand::random();
        Ok(Client {
            caller: Arc::new(current_caller()),
            inner: Arc::new(Inner {
                pool: ConnectionPool::new(endpoint, identity, opts)?,
                namenodes: Namenodes::new(config.namenode, &config.namenodes),
                config,
                cache,
                disk_cache,
                suspects: data::Suspects::default(),
                write_token: data::WriteToken::default(),
                unsynced: data::Unsynced::default(),
                inflight: Mutex::default(),
                opens: Arc::new(opens::OpenSet::new(session)),
                fresh: fresh::FreshAttrs::default(),
                deleg: deleg::Delegations::default(),
                misses: Mutex::default(),
                sent: Mutex::default(),
                fetched: Default::default(),
                on_changed: Mutex::default(),
                mount: Mutex::default(),
                identity: Default::default(),
                own: current_caller(),
                requests: requests::Requests::new(session),
                session,
                locks: Default::default(),
            }),
        })
    }

    fn from_inner(inner: Arc<Inner>) -> Client {
        let caller = inner.acting_as(inner.own.clone());
        Client {
            inner,
            caller: Arc::new(caller),
        }
    }

    pub(crate) fn released(&self, ino: Ino, writer: bool) {
        self.inner.opens.release(ino, writer);
    }

    /// Starts the task that keeps the namenode told which files this client holds open.
    fn start_renewals(&self) {
        tokio::spawn(opens::renew(Arc::downgrade(&self.inner)));
    }

    /// The same client, acting for another user (the FUSE mount acts for each caller), as
    /// the namenode will take that user (see [`Client::identify`]).
    pub fn as_user(&self, caller: Caller) -> Client {
        Client {
            caller: Arc::new(self.inner.acting_as(caller)),
            inner: self.inner.clone(),
        }
    }

    /// Asks the namenode who this client's certificate makes it, and maps callers so from
    /// now on: a mount whose root is squashed then answers nothing itself as root.
    pub async fn identify(&self) -> FsResult<Arc<proto::Identity>> {
        let id = Arc::new(self.namenode_now(proto::WhoAmI {}).await?);
        *self
            .inner
            .identity
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
        Ok(id)
    }

    /// Who the namenode took this client for, when it last asked.
    pub fn identity(&self) -> Option<Arc<proto::Identity>> {
        self.inner.identity()
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Who a new entry made for `owner` belongs to, as the namenode decides it: its
    /// maker, unless the maker is root (who may give it to anyone).
    fn owner_of(&self, owner: Owner) -> Owner {
        if self.caller.uid == 0 {
            owner
        } else {
            Owner {
                uid: self.caller.uid,
                gid: self.caller.gid,
            }
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends a change of directory entries; keeps the directories it answers with.
    /// `edits` is what the change does to each directory's names.
    async fn change<R, T: ChangedEntries>(&self, req: R, edits: &[(Ino, Edit<'_>)]) -> FsResult<T>
    where
        R: Rpc<Service = proto::NamenodeRequest, Response = proto::Changed<T>>,
    {
        let seq = self.inner.fresh.begin();
        let proto::Changed { reply, dirs } = match self.namenode(req).await {
            Ok(changed) => changed,
            Err(e) => {
                // Refused, or lost on the way back after it was done: forget what it
                // would have changed.
                for (dir, _) in edits {
                    self.inner.fresh.unknown_change(*dir);
                    self.inner.deleg.forget_dir(*dir);
                }
                return Err(e);
            }
        };
        self.follow_own_change(edits, &reply, &dirs);
        if reply.changed_entries() {
            self.inner
                .fresh
                .entries_changed(&dirs, edits, reply.added());
        } else {
            let none: Vec<_> = edits.iter().map(|(d, _)| (*d, Edit::Nothing)).collect();
            self.inner.fresh.entries_changed(&dirs, &none, None);
        }
        self.inner.fresh.record_dirs(seq, &dirs);
        Ok(reply)
    }

    /// Keeps the names of directories delegated here true past this client's own change
    /// made through the namenode.
    fn follow_own_change<T: ChangedEntries>(
        &self,
        edits: &[(Ino, Edit<'_>)],
        reply: &T,
        dirs: &[proto::ChangedDir],
    ) {
        let deleg = &self.inner.deleg;
        for (dir, edit) in edits {
            match edit {
                Edit::Nothing => {}
                _ if !reply.changed_entries() => {}
                Edit::Add(name) => match (reply.added(), reply.added_kind()) {
                    (Some(ino), Some(kind)) => deleg.own_change(*dir, name, Some((ino, kind))),
                    _ => deleg.forget_dir(*dir),
                },
                Edit::Remove(name) => deleg.own_change(*dir, name, None),
                Edit::Same => deleg.forget_dir(*dir),
            }
        }
        for d in dirs {
            deleg.own_dir_attr(&d.attr);
        }
    }

    /// Sends a change of `ino`'s attributes other than through its entries. What this
    /// client kept of `ino` is forgotten, and so are the answers of entry changes under way
    /// meanwhile: they may predate this one. The attributes it answers with are kept, unless
    /// another change was under way meanwhile.
    pub(crate) async fn change_attrs<R>(&self, ino: Ino, req: R) -> FsResult<R::Response>
    where
        R: Rpc<Service = proto::NamenodeRequest>,
        R::Response: AttrAnswer,
    {
        let fresh = &self.inner.fresh;
        fresh.forget(ino);
        self.inner.deleg.unborn(ino);
        let seq = fresh.begin();
        let res = self.namenode(req).await;
        match res.as_ref().ok().and_then(AttrAnswer::attr) {
            Some(attr) if attr.ino == ino => {
                // A delegated directory's attributes are answered from its delegation.
                self.inner.deleg.own_dir_attr(attr);
                fresh.record_alone(seq, attr.clone())
            }
            _ => {
                if res.is_ok() {
                    self.inner.deleg.forget_dir(ino);
                }
                fresh.forget(ino)
            }
        }
        res
    }

    /// Sends a change of directory entries that also changes the files it reaches (their
    /// `nlink` and `ctime`): those `names` (directory, name) point at, and `inos`. What is
    /// kept of them is forgotten — of every file, if this client does not know what the
    /// names point at.
    async fn change_reaching_files<R, T: ChangedEntries>(
        &self,
        req: R,
        edits: &[(Ino, Edit<'_>)],
        names: &[(Ino, &[u8])],
        inos: &[Ino],
    ) -> FsResult<T>
    where
        R: Rpc<Service = proto::NamenodeRequest, Response = proto::Changed<T>>,
    {
        let fresh = &self.inner.fresh;
        let reached = fresh.named(names);
        let forget = || match &reached {
            Some(named) => named.iter().chain(inos).for_each(|ino| fresh.forget(*ino)),
            None => fresh.forget_files(),
        };
        forget();
        // What it removes the last name of is kept while open here: the namenode must know.
        opens::tell_unheard(self, reached.as_deref()).await?;
        let res = self.change(req, edits).await;
        forget();
        res
    }

    /// Calls `hook` with what other clients changed, as the change feed tells of it and
    /// before it is read on — so before the other client's change is answered there (the
    /// namenode waits for every mount reading the feed to read past it): a mount voids
    /// what its kernel keeps of it, names, attributes and pages.
    pub fn on_others_changes(&self, hook: impl Fn(ChangeNews<'_>) + Send + Sync + 'static) {
        *self
            .inner
            .on_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// Keeps what this client knows of the namespace true while it changes elsewhere: reads
    /// the namenode's feed of other clients' changes as they come and forgets what they
    /// changed. Until this runs, what is kept is trusted for the TTL it is asked about;
    /// with it, for that long after the last read of the feed.
    pub fn follow_changes(&self) {
        tokio::spawn(follow_changes(Arc::downgrade(&self.inner)));
    }

    /// Says that this client serves the mount on `mountpoint`: its reads of the change
    /// feed then tell the namenode so (`cairn admin mounts` lists it).
    pub fn serve_mount(&self, mountpoint: &std::path::Path) {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        *self.inner.mount.lock().unwrap_or_else(|e| e.into_inner()) = Some(proto::MountInfo {
            host,
            mountpoint: mountpoint.display().to_string(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            session: self.inner.session,
        });
    }

    /// Is this client following the change feed: its last complete read asked for less
    /// than [`proto::LEASE_TRUST`] ago? Only then does it open files by their leases.
    pub fn follows_feed(&self) -> bool {
        self.inner.fresh.in_sync()
    }

    /// Keeps what a create begun at `seq` answered: a new file has no extended attributes.
    fn fresh_file(&self, seq: u64, created: &CreateReply) {
        if created.created {
            self.inner.fresh.record_new(seq, created.attr.clone());
        } else {
            self.inner.fresh.record(seq, [created.attr.clone()]);
        }
    }

    /// Is `name` known to be absent from `dir` (a directory this client made and alone
    /// changed), as the namenode confirmed less than `within` ago? With how long ago.
    pub fn known_absent(&self, dir: Ino, name: &[u8], within: Duration) -> Option<Duration> {
        self.inner.fresh.absent(dir, name, within)
    }

    /// What `name` in `dir` (a directory this client made and alone changed) names, with
    /// its attributes, as the namenode confirmed less than `within` ago; with how long ago.
    pub fn known_entry(
        &self,
        dir: Ino,
        name: &[u8],
        within: Duration,
    ) -> Option<(InodeAttr, Duration)> {
        self.inner.fresh.entry(dir, name, within)
    }

    /// `ino`'s attributes if an answer to this client's own calls gave them less than
    /// `within` ago (and nothing of this client changed them since), with how long ago.
    /// What another client did since may not show, as in a kernel's attribute cache.
    pub fn fresh_attr(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration)> {
        self.inner.fresh.get(ino, within)
    }

    /// Did this client create `ino` less than `within` ago, and set no extended attribute
    /// on it since?
    pub fn fresh_and_bare(&self, ino: Ino, within: Duration) -> bool {
        self.inner.deleg.created(ino).is_some()
            || self.inner.deleg.is_born(ino)
            || self.inner.fresh.bare(ino, within)
    }

    /// Sends one request to the namenode, once every change this client queued
    /// (`deleg.rs`) is answered: nothing overtakes them.
    pub async fn namenode<R: Rpc<Service = proto::NamenodeRequest>>(
        &self,
        req: R,
    ) -> FsResult<R::Response> {
        if self.inner.deleg.busy() && !passes_queue::<R>() {
            self.inner.deleg.drained().await;
        }
        self.namenode_now(req).await
    }

    /// Queues the commit of a file created here under a delegation still held (see
    /// `deleg.rs`): its attributes after it; the commit back if it must be sent.
    #[allow(clippy::type_complexity)]
    pub(crate) fn commit_queued(
        &self,
        attr: &InodeAttr,
        commit: proto::CommitSlices,
        keep: Box<dyn Send>,
        ask: fresh::MapAsk,
    ) -> Result<InodeAttr, (proto::CommitSlices, Box<dyn Send>)> {
        if self.inner.config.wsync {
            return Err((commit, keep));
        }
        let reader = self.inner.fresh.reading_through();
        let ino = commit.ino;
        let after = self
            .inner
            .deleg
            .commit(reader, &self.caller, attr, commit, keep, ask)
            .inspect_err(|_| self.inner.deleg.unborn(ino))?;
        self.inner.fresh.forget(ino);
        if self.inner.deleg.start_sender() {
            tokio::spawn(send_queued(Arc::downgrade(&self.inner)));
        }
        Ok(after)
    }

    /// The replication of `ino` if its create is queued here, not yet answered.
    fn queued_replication(&self, ino: Ino) -> Option<u8> {
        self.inner.deleg.created(ino).map(|a| a.replication)
    }

    /// Sends one request to the namenode at once, queued changes or not.
    pub(crate) async fn namenode_now<R: Rpc<Service = proto::NamenodeRequest>>(
        &self,
        req: R,
    ) -> FsResult<R::Response> {
        // A namenode that is restarting, or slow to answer on a loaded machine, gets a few
        // more tries; the request has not been sent, so retrying cannot apply it twice. In a
        // group of namenodes, the request goes to the one that leads.
        let req = req.into_service();
        let mut pending = req.once_by_id().then(|| self.inner.requests.begin());
        let deadline = tokio::time::Instant::now() + NAMENODE_RETRY_FOR;
        *self
            .inner
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(std::any::type_name::<R>())
            .or_default() += 1;
        let envelope = proto::NamenodeEnvelope {
            caller: (*self.caller).clone(),
            req,
            request: pending.as_ref().map(|p| p.id.clone()),
        };
        let namenodes = &self.inner.namenodes;
        loop {
            let addr = namenodes.current();
            let conn = match self.inner.pool.get(addr, Role::Namenode).await {
                Ok(conn) => conn,
                // A refused certificate stays refused: said at once.
                Err(e @ FsError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("namenode {addr} not reachable yet: {e}");
                    self.inner.pool.clear_unreachable(addr);
                    namenodes.moved_on(addr, &e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let res = transport::call_enveloped(&conn, &envelope).await;
            if let Err(e @ FsError::NotLeader(_)) = &res {
                // Refused before anything was done: asked again of the leader it names, or
                // of the next member while the group elects one.
                if tokio::time::Instant::now() < deadline {
                    if let Some(pause) = namenodes.moved_on(addr, e) {
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
            }
            if let Err(e @ FsError::Unavailable(_)) = &res {
                namenodes.moved_on(addr, e);
            }
            if let Err(FsError::Unavailable(e)) = &res {
                // Said by a namenode whose connection lives (no datanode yet, no majority
                // heard): the connection is kept — what this client holds through it, its
                // delegations, with it — and the request asked again after a pause.
                // Otherwise the next request dials again instead of reusing a dead
                // connection.
                let answered = conn.close_reason().is_none();
                if !answered {
                    self.inner.pool.forget_lost(addr, &conn);
                }
                // One that only reads, whose change happens once however often it is
                // asked for, or that names its change (the namenode answers it again as
                // the first time), is asked again: a namenode killed and started again is
                // then a pause, not an error.
                let again = envelope.req.retry_safe() || envelope.request.is_some();
                if again && tokio::time::Instant::now() < deadline {
                    if answered {
                        tracing::debug!("namenode {addr} cannot answer yet: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else {
                        tracing::debug!("namenode {addr} lost under a request; asking again: {e}");
                    }
                    continue;
                }
            } else if let Some(pending) = &mut pending {
                pending.answered(res.is_ok());
            }
            return res;
        }
    }

    /// How many requests of kind `R` this client (and its clones) sent to the namenode.
    /// Bytes this client has received from datanodes (blocks, and ranges with their proofs).
    pub fn fetched_bytes(&self) -> u64 {
        self.inner
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn sent<R: Rpc<Service = proto::NamenodeRequest>>(&self) -> u64 {
        let sent = self.inner.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(std::any::type_name::<R>()).copied().unwrap_or(0)
    }

    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<InodeAttr> {
        let res = self
            .namenode(proto::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await;
        if let Err(FsError::NotFound) = res {
            self.missed(parent);
        }
        res
    }

    /// The namenode said a name is not in `dir`. A second miss there soon after the first,
    /// in a directory this client does not follow, looks like names being made one after
    /// another (an untar, a copy, a program filling a directory it did not make): the
    /// directory's names are then learnt in the background, and the lookups before the
    /// next creates there need no call.
    fn missed(&self, dir: Ino) {
        if self.inner.fresh.follows(dir) {
            return;
        }
        let now = std::time::Instant::now();
        let learn = {
            let mut misses = self.inner.misses.lock().unwrap_or_else(|e| e.into_inner());
            if misses.len() >= 1024 {
                misses.clear();
            }
            let (last, tried) = misses.entry(dir).or_insert((now, None));
            let together = *last != now && now.duration_since(*last) < MISSES_TOGETHER;
            *last = now;
            let due = tried.is_none_or(|t| now.duration_since(t) >= LEARN_AGAIN_AFTER);
            if together && due {
                *tried = Some(now);
            }
            together && due
        };
        if learn {
            let client = self.clone();
            tokio::spawn(async move { client.learn_names(dir).await });
        }
    }

    /// Lists `dir` to follow its names (see [`Client::missed`]).
    async fn learn_names(&self, dir: Ino) {
        let start = self.inner.fresh.begin_listing(dir);
        let listed = self
            .namenode(proto::ListDir {
                ino: dir,
                limit: READDIR_PAGE,
                attrs: false,
            })
            .await;
        let listing = match listed {
            Ok(listing) => listing,
            Err(e) => {
                tracing::debug!(%dir, "learning the names of a directory: {e}");
                return;
            }
        };
        let small = listing.entries.len() < READDIR_PAGE as usize;
        if !self.adopt(start, &listing) && small {
            // Changed while it was read: the next miss there tries again.
            let mut misses = self.inner.misses.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, tried)) = misses.get_mut(&dir) {
                *tried = None;
            }
        }
    }

    /// Follows the names of the directory `listing` (asked for at `start`) is of, if it
    /// is all of it; says whether it does.
    fn adopt(&self, start: fresh::ListingStart<'_>, listing: &proto::DirListing) -> bool {
        let fresh = &self.inner.fresh;
        let Some(dir) = &listing.whole else {
            return false;
        };
        fresh.record(
            start.seq,
            listing.entries.iter().filter_map(|e| e.attr.clone()),
        );
        fresh.record_dirs(start.seq, std::slice::from_ref(dir));
        let names: Vec<_> = listing
            .entries
            .iter()
            .map(|e| (e.name.as_slice(), e.ino))
            .collect();
        fresh.adopt(start, (dir, &names))
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<InodeAttr> {
        self.namenode(proto::GetAttr { ino }).await
    }

    /// Records a read of `ino` in its access time, where relatime says it is due.
    pub async fn accessed(&self, ino: Ino) -> FsResult<InodeAttr> {
        let attr = self.change_attrs(ino, proto::Accessed { ino }).await?;
        self.inner.fresh.accessed(&attr);
        Ok(attr)
    }

    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<InodeAttr> {
        self.set_attr(ino, set, false).await
    }

    /// [`Client::setattr`]; `open_for_write` when a handle the caller opened sets the size
    /// (see [`proto::SetAttrReq::open_for_write`]).
    pub(crate) async fn set_attr(
        &self,
        ino: Ino,
        set: SetAttr,
        open_for_write: bool,
    ) -> FsResult<InodeAttr> {
        let fresh = &self.inner.fresh;
        // A file made here under a delegation still held: answered here, sent later.
        if !self.inner.config.wsync {
            let reader = fresh.reading_through();
            if let Some(after) = self.inner.deleg.setattr(reader, &self.caller, ino, &set) {
                fresh.forget(ino);
                if self.inner.deleg.start_sender() {
                    tokio::spawn(send_queued(Arc::downgrade(&self.inner)));
                }
                return Ok(after);
            }
        }
        let ask = fresh.map_changing(ino);
        let req = proto::SetAttrReq {
            ino,
            set,
            open_for_write,
        };
        let sized = req.set.size.is_some();
        let res = self.change_attrs(ino, req).await;
        fresh.map_changed(ino, ask, None);
        if sized {
            self.inner.opens.map_changed(ino);
        }
        res
    }

    /// Makes `len` bytes of file `ino` at `offset` a hole (see [`proto::Punch`]). Writes
    /// still buffered in handles of the file are flushed first by the caller.
    pub async fn punch(
        &self,
        ino: Ino,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> FsResult<InodeAttr> {
        let req = proto::Punch {
            ino,
            offset,
            len,
            keep_size,
        };
        self.change_map(ino, req).await
    }

    /// Where the data (or with `hole`, the hole) of file `ino` at or after `offset` begins
    /// (see [`proto::Seek`]), as the namenode has it: writes buffered in handles of the file
    /// are flushed first by the caller.
    pub async fn seek(&self, ino: Ino, offset: u64, hole: bool) -> FsResult<Option<u64>> {
        self.namenode(proto::Seek { ino, offset, hole }).await
    }

    /// Sends a change of `ino`'s map: the handles of it here read by a fresh one after.
    async fn change_map<R>(&self, ino: Ino, req: R) -> FsResult<R::Response>
    where
        R: Rpc<Service = proto::NamenodeRequest>,
        R::Response: AttrAnswer,
    {
        let fresh = &self.inner.fresh;
        let ask = fresh.map_changing(ino);
        let res = self.change_attrs(ino, req).await;
        fresh.map_changed(ino, ask, None);
        if res.is_ok() {
            self.inner.opens.map_changed(ino);
        }
        res
    }

    /// Copies `len` bytes of file `src` at `src_off` over file `dst` at `dst_off` by
    /// reference (see [`proto::CopyRange`]): no byte is read or stored. Copies what the
    /// namenode has: writes still buffered in handles of either file are flushed first by
    /// the caller. Answers `dst`'s attributes and the bytes copied, fewer than `len` at
    /// `src`'s end and at most [`proto::COPY_MAX`].
    pub async fn copy_range(
        &self,
        src: Ino,
        src_off: u64,
        dst: Ino,
        dst_off: u64,
        len: u64,
    ) -> FsResult<proto::Copied> {
        let req = proto::CopyRange {
            src,
            src_off,
            dst,
            dst_off,
            len,
        };
        self.change_map(dst, req).await
    }

    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        owner: Owner,
    ) -> FsResult<InodeAttr> {
        let owner = self.owner_of(owner);
        self.change(
            proto::Mkdir {
                parent,
                name: name.to_vec(),
                perm,
                uid: owner.uid,
                gid: owner.gid,
            },
            &[(parent, Edit::Add(name))],
        )
        .await
    }

    /// Creates (or with `exclusive` false, opens) a regular file.
    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        exclusive: bool,
        truncate: bool,
        owner: Owner,
    ) -> FsResult<CreateReply> {
        let owner = self.owner_of(owner);
        let file = NewFile {
            parent,
            name,
            perm,
            exclusive,
            truncate,
            owner,
        };
        let seq = self.inner.fresh.begin();
        let created: CreateReply = self.change(file.request(None), &file.edits()).await?;
        self.fresh_file(seq, &created);
        Ok(created)
    }

    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        owner: Owner,
    ) -> FsResult<InodeAttr> {
        let owner = self.owner_of(owner);
        self.change(
            proto::Mknod {
                parent,
                name: name.to_vec(),
                kind,
                perm,
                rdev,
                uid: owner.uid,
                gid: owner.gid,
            },
            &[(parent, Edit::Add(name))],
        )
        .await
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        let req = proto::Unlink {
            parent,
            name: name.to_vec(),
        };
        self.remove_name(req, parent, name).await
    }

    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        let req = proto::Rmdir {
            parent,
            name: name.to_vec(),
        };
        self.remove_name(req, parent, name).await
    }

    /// Sends `req`, which removes `name` from `parent` and so reaches what it named: what
    /// this client kept of that is forgotten (of every file, if it cannot tell which it
    /// was), and then what the answer says it removed, which the change feed does not tell.
    async fn remove_name<R>(&self, req: R, parent: Ino, name: &[u8]) -> FsResult<()>
    where
        R: Rpc<Service = proto::NamenodeRequest, Response = proto::Changed<proto::Removed>>,
    {
        let edits = [(parent, Edit::Remove(name))];
        let removed = self
            .change_reaching_files(req, &edits, &[(parent, name)], &[])
            .await?;
        self.inner.fresh.forget(removed.ino);
        self.forget_trash(removed.trash).await;
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        let edits = match mode {
            RenameMode::Exchange => [(parent, Edit::Same), (new_parent, Edit::Same)],
            _ => [
                (parent, Edit::Remove(name)),
                (new_parent, Edit::Add(new_name)),
            ],
        };
        let renamed: proto::Renamed = self
            .change_reaching_files(
                proto::Rename {
                    parent,
                    name: name.to_vec(),
                    new_parent,
                    new_name: new_name.to_vec(),
                    mode,
                },
                &edits,
                &[(parent, name), (new_parent, new_name)],
                &[],
            )
            .await?;
        // The change feed does not tell this client of what its rename reached.
        for ino in std::iter::once(renamed.moved).chain(renamed.replaced) {
            self.inner.fresh.forget(ino);
        }
        self.forget_trash(renamed.trash).await;
        Ok(())
    }

    /// A file this client removed went to `trash`: the change feed does not tell it of the
    /// name the file got there, so what it and its kernel keep of that directory goes.
    ///
    /// The kernel forgets it in the background: the removal need not wait for that (the
    /// kernel's names there are only those the mount handed out, for its TTL).
    async fn forget_trash(&self, trash: Option<Ino>) {
        if let Some(trash) = trash {
            self.inner.fresh.unknown_change(trash);
            let hook = self.inner.changed_hook();
            if let Some(hook) = hook {
                tokio::task::spawn_blocking(move || {
                    let changed = [
                        proto::Change::Inode(trash),
                        proto::Change::Entries(trash, 0),
                    ];
                    hook(ChangeNews::Own(&changed))
                });
            }
        }
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        owner: Owner,
    ) -> FsResult<InodeAttr> {
        let owner = self.owner_of(owner);
        self.change(
            proto::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                uid: owner.uid,
                gid: owner.gid,
            },
            &[(parent, Edit::Add(name))],
        )
        .await
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.namenode(proto::Readlink { ino }).await
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> FsResult<InodeAttr> {
        self.inner.deleg.unborn(ino);
        self.change_reaching_files(
            proto::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
            },
            &[(new_parent, Edit::Add(new_name))],
            &[],
            &[ino],
        )
        .await
    }

    /// One page of a directory, after the name `after`.
    pub async fn readdir_page(
        &self,
        ino: Ino,
        after: Option<&[u8]>,
        limit: u32,
        attrs: bool,
    ) -> FsResult<Vec<DirEntry>> {
        self.namenode(proto::ReadDir {
            ino,
            after: after.map(|a| a.to_vec()),
            limit,
            attrs,
        })
        .await
    }

    /// The whole directory, page by page.
    pub async fn readdir(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        self.readdir_all(ino, false).await
    }

    /// The whole directory with every entry's attributes. An entry removed while the
    /// directory was listed may come without them.
    pub async fn readdir_plus(&self, ino: Ino) -> FsResult<Vec<DirEntry>> {
        self.readdir_all(ino, true).await
    }

    async fn readdir_all(&self, ino: Ino, attrs: bool) -> FsResult<Vec<DirEntry>> {
        let mut out: Vec<DirEntry> = Vec::new();
        if attrs && !self.inner.config.wsync {
            // A directory delegated here whose every name this client knows the attributes of.
            let reader = self.inner.fresh.reading_through();
            if let Some(listing) = self.inner.deleg.listing(reader, &self.caller, ino) {
                return Ok(listing);
            }
        }
        if attrs {
            // The first page comes with the directory's change count when it is all of it:
            // this client then knows its names (and their attributes) as it knows those
            // of directories it made.
            let start = self.inner.fresh.begin_listing(ino);
            let listing = self
                .namenode(proto::ListDir {
                    ino,
                    limit: READDIR_PAGE,
                    attrs: true,
                })
                .await?;
            self.adopt(start, &listing);
            if listing.entries.len() < READDIR_PAGE as usize {
                return Ok(listing.entries);
            }
            out = listing.entries;
        }
        loop {
            let after = out.last().map(|e| e.name.clone());
            let page = self
                .readdir_page(ino, after.as_deref(), READDIR_PAGE, attrs)
                .await?;
            let done = page.len() < READDIR_PAGE as usize;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    pub async fn statfs(&self) -> FsResult<FsStats> {
        self.namenode(proto::StatFs).await
    }

    /// A barrier for the namespace: returns once every change this client (and anyone)
    /// was answered for before the call is on the namenode's stable storage. File data is
    /// [`FileHandle::fsync`]'s.
    pub async fn sync(&self) -> FsResult<()> {
        self.namenode(proto::SyncMetadata {}).await
    }

    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> FsResult<()> {
        self.change_attrs(
            ino,
            proto::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                mode,
            },
        )
        .await
    }

    /// The extended attribute `name` of `ino`. One found absent is known absent without a
    /// call for `within`, as long as the change feed tells of no change of `ino` (as an
    /// absent name is).
    pub async fn get_xattr(&self, ino: Ino, name: &[u8], within: Duration) -> FsResult<Vec<u8>> {
        let fresh = &self.inner.fresh;
        if fresh.absent_xattr(ino, name, within) {
            return Err(FsError::NoAttr);
        }
        let seq = fresh.begin();
        let got = self
            .namenode(proto::GetXattr {
                ino,
                name: name.to_vec(),
            })
            .await;
        if matches!(got, Err(FsError::NoAttr)) {
            fresh.record_absent_xattr(seq, ino, name);
        }
        got
    }

    pub async fn list_xattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.namenode(proto::ListXattr { ino }).await
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.change_attrs(
            ino,
            proto::RemoveXattr {
                ino,
                name: name.to_vec(),
            },
        )
        .await
    }

    pub async fn set_replication(&self, ino: Ino, replication: u8) -> FsResult<InodeAttr> {
        self.change_attrs(ino, proto::SetReplication { ino, replication })
            .await
    }

    /// The lock owner id of `owner` (a kernel lock owner) in this client's session.
    pub fn lock_owner(&self, owner: u64) -> proto::LockOwnerId {
        proto::LockOwnerId {
            session: self.inner.session,
            owner,
        }
    }

    /// A lock another owner holds that conflicts with `range`, if any.
    pub async fn get_lock(
        &self,
        ino: Ino,
        owner: u64,
        range: proto::LockRange,
    ) -> FsResult<Option<proto::LockRange>> {
        let owner = self.lock_owner(owner);
        loop {
            match self.namenode(proto::GetLock { ino, owner, range }).await {
                // The namenode is taking back the locks held before it led.
                Err(FsError::Busy(_)) => tokio::time::sleep(LOCK_GRACE_RETRY).await,
                other => return other,
            }
        }
    }

    /// Takes or drops a lock; with `wait`, tries until it is granted.
    pub async fn set_lock(
        &self,
        ino: Ino,
        owner: u64,
        range: proto::LockRange,
        wait: bool,
    ) -> FsResult<()> {
        let owner = self.lock_owner(owner);
        loop {
            let set = proto::SetLock {
                ino,
                owner,
                range,
                reclaim: false,
            };
            match self.namenode(set).await {
                Err(FsError::WouldBlock) if wait => {
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err(FsError::Busy(_)) => tokio::time::sleep(LOCK_GRACE_RETRY).await,
                Ok(()) => {
                    // As the namenode's table has it: the same call on the same locks.
                    let _ = self.inner.locks.set(ino, owner, range);
                    return Ok(());
                }
                other => return other,
            }
        }
    }

    /// Drops every lock `owner` holds on `ino`.
    pub async fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        let owner = self.lock_owner(owner);
        self.inner.locks.release(ino, owner);
        self.namenode(proto::ReleaseLocks { ino, owner }).await
    }

    /// Forgets what this client keeps of `ino` (attributes, map; every handle reads by a
    /// fresh map next): a lock on it was just taken, and what another client wrote under
    /// the lock before must be what is read now.
    pub fn drop_cached(&self, ino: Ino) {
        self.inner.fresh.drop_file(ino);
        self.inner.opens.maps_changed_elsewhere(Some(&[ino]));
    }

    pub async fn datanodes(&self) -> FsResult<Vec<DatanodeStatus>> {
        self.namenode(proto::ListDatanodes).await
    }

    /// The attributes of the file at an absolute `path` (symlinks are not followed).
    pub async fn resolve(&self, path: &str) -> FsResult<InodeAttr> {
        let mut attr = self.getattr(Ino::ROOT).await?;
        for part in components(path)? {
            attr = self.lookup(attr.ino, part.as_bytes()).await?;
        }
        Ok(attr)
    }

    /// The directory holding `path` and the last component's name.
    pub async fn resolve_parent<'p>(&self, path: &'p str) -> FsResult<(InodeAttr, &'p str)> {
        let parts = components(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(FsError::invalid("the root directory has no parent"));
        };
        let mut attr = self.getattr(Ino::ROOT).await?;
        for part in dirs {
            attr = self.lookup(attr.ino, part.as_bytes()).await?;
        }
        if attr.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok((attr, name))
    }

    /// Opens a regular file for reading and writing. Until the handle is dropped the file
    /// outlives the removal of its last name, by this client or any other.
    pub async fn open(&self, ino: Ino) -> FsResult<FileHandle> {
        Ok(self.open_as(ino, false).await?.0)
    }

    /// Opens a file, for writing if `write`: the handle, and whether the file is shared with
    /// another client's writes ([`proto::Opened::shared`]). An open for writing always asks
    /// the namenode, so that two clients writing one file both know it.
    pub async fn open_as(&self, ino: Ino, write: bool) -> FsResult<(FileHandle, bool)> {
        if !write {
            if let Some(file) = self.open_leased(ino) {
                return Ok((file, false));
            }
            // A file whose commit is queued here: its answer brings the map and a lease.
            if self.inner.deleg.committing(ino) {
                self.inner.deleg.drained().await;
                if let Some(file) = self.open_leased(ino) {
                    return Ok((file, false));
                }
            }
        }
        let (claim, start) = self.inner.opens.hold(ino, write);
        if start {
            self.start_renewals();
        }
        let map_seen = self.inner.opens.map_version(ino);
        let seq = self.inner.fresh.begin();
        let ask = self.inner.fresh.map_ask(ino);
        let opened = self.namenode(proto::Open { ino, claim, write }).await;
        if let Ok(opened) = &opened {
            self.inner.fresh.record(seq, [opened.map.attr.clone()]);
            self.inner.fresh.keep_map(ask, &opened.map);
        }
        let opened = match opened {
            Ok(opened) if opened.map.attr.kind == FileKind::File => opened,
            Ok(opened) => {
                self.inner.opens.release(ino, write);
                return Err(match opened.map.attr.kind {
                    FileKind::Dir => FsError::IsDir,
                    _ => FsError::invalid("not a regular file"),
                });
            }
            Err(e) => {
                self.inner.opens.release(ino, write);
                return Err(e);
            }
        };
        let file = FileHandle::opened(self.clone(), opened.map, map_seen, write);
        Ok((file, opened.shared))
    }

    /// Opens a file this client holds a lease on, by the map the lease keeps, without a
    /// call (`None` without one). The namenode hears of the open with the next renewal of
    /// the open set. Call within the client's runtime.
    pub fn open_leased(&self, ino: Ino) -> Option<FileHandle> {
        let map = self.inner.fresh.kept_map(ino)?;
        // The kernel checked the mode bits as the local user; the namenode checks them as
        // the user this mount's export makes of it (root squashed), and so does this.
        if !self.caller.may(&map.attr, 4) {
            return None;
        }
        if self.inner.opens.hold_unclaimed(ino) {
            self.start_renewals();
        }
        // A kept map holds every change of this client's (a commit forgets it).
        let map_seen = self.inner.opens.map_version(ino);
        Some(FileHandle::opened(self.clone(), map, map_seen, false))
    }

    /// Creates a new file and opens it without asking the namenode, when `file.parent` is
    /// delegated to this client (see `deleg.rs`): the create is queued and sent later.
    /// `None` when the namenode must be asked (`create_open`); an error the delegation's
    /// names answer (`EEXIST` for an exclusive create of a name there) otherwise.
    pub fn create_queued(&self, file: &NewFile<'_>) -> Option<FsResult<(InodeAttr, FileHandle)>> {
        let file = &NewFile {
            owner: self.owner_of(file.owner),
            ..*file
        };
        if self.inner.config.wsync {
            return None;
        }
        let reader = self.inner.fresh.reading_through();
        let opens = &self.inner.opens;
        let mut claim = None;
        let created = self.inner.deleg.create(
            reader,
            &self.caller,
            file.parent,
            file.name,
            file.perm,
            file.owner.uid,
            file.owner.gid,
            file.exclusive,
            || *claim.insert(opens.creating()),
        );
        let created = created?;
        self.want_inos();
        let attr = match created {
            Ok(attr) => attr,
            Err(e) => return Some(Err(e)),
        };
        if let Some(claim) = claim {
            if opens.created(claim, Some(attr.ino)) {
                self.start_renewals();
            }
        }
        if self.inner.deleg.start_sender() {
            tokio::spawn(send_queued(Arc::downgrade(&self.inner)));
        }
        let mut file = FileHandle::new(self.clone(), attr.clone(), true);
        file.place_first_block(self.inner.deleg.offer(attr.replication));
        Some(Ok((attr, file)))
    }

    /// Unlinks `name` from `parent` without asking the namenode, when `parent` is
    /// delegated to this client and the name is no directory's nor a file open here: the
    /// unlink is queued and sent later. `None` when the namenode must be asked.
    pub fn unlink_queued(&self, parent: Ino, name: &[u8]) -> Option<FsResult<()>> {
        if self.inner.config.wsync {
            return None;
        }
        let reader = self.inner.fresh.reading_through();
        let opens = &self.inner.opens;
        let held = |ino| opens.handles(ino) > 0 || opens.unheard(Some(&[ino]));
        let removed = self
            .inner
            .deleg
            .unlink(reader, &self.caller, parent, name, held)?;
        if self.inner.deleg.start_sender() {
            tokio::spawn(send_queued(Arc::downgrade(&self.inner)));
        }
        Some(removed.map(|ino| self.inner.fresh.forget(ino)))
    }

    /// Removes directory `name` from `parent` without asking the namenode, when both are
    /// delegated to this client (it knows the directory is empty): the rmdir is queued
    /// and sent later. `None` when the namenode must be asked.
    pub fn rmdir_queued(&self, parent: Ino, name: &[u8]) -> Option<FsResult<()>> {
        if self.inner.config.wsync {
            return None;
        }
        let reader = self.inner.fresh.reading_through();
        let removed = self.inner.deleg.rmdir(reader, &self.caller, parent, name)?;
        if self.inner.deleg.start_sender() {
            tokio::spawn(send_queued(Arc::downgrade(&self.inner)));
        }
        Some(removed.map(|ino| self.inner.fresh.forget(ino)))
    }

    /// What `name` in `parent` is, when `parent` is delegated to this client (`None`
    /// otherwise): its names are all known here.
    pub fn delegated_lookup(&self, parent: Ino, name: &[u8]) -> Option<Found> {
        let reader = self.inner.fresh.reading_through();
        self.inner.deleg.lookup(reader, parent, name)
    }

    /// `ino`'s attributes when this client answers for them: a file it created whose
    /// create is still queued, or a directory delegated to it.
    pub fn delegated_attr(&self, ino: Ino) -> Option<InodeAttr> {
        let reader = self.inner.fresh.reading_through();
        self.inner.deleg.attr(reader, ino)
    }

    /// Waits until the namenode has answered every change this client queued, and returns
    /// the error one of them concerning `ino` (a file created, a directory changed) met,
    /// once: what the next `fsync` of it reports.
    pub async fn queued_failure(&self, ino: Ino) -> Option<FsError> {
        self.inner.deleg.drained().await;
        self.inner.deleg.take_failure(ino)
    }

    /// Did the queued create of `ino` fail at the namenode? Its I/O fails then.
    pub fn create_failed(&self, ino: Ino) -> bool {
        self.inner.deleg.failed(ino)
    }

    /// Asks for `dir`'s delegation (and inode numbers for creates there, if few are left),
    /// if this client reads the change feed and has not asked lately; whether it holds
    /// it then. Asked before the change that would go to the namenode otherwise, so that
    /// no change of this client's there is under way (the namenode refuses the delegation
    /// of a directory being changed).
    pub async fn delegate(&self, dir: Ino) -> bool {
        if self.inner.config.wsync
            || self.inner.fresh.reading_through().is_none()
            || !self.inner.deleg.should_ask(dir)
        {
            return false;
        }
        let reserve = async {
            if let Some(count) = self.inner.deleg.should_reserve() {
                let session = self.inner.session;
                let range = self
                    .namenode_now(proto::ReserveInos { count, session })
                    .await;
                if let Err(e) = &range {
                    tracing::debug!("no inode numbers reserved: {e}");
                }
                self.inner.deleg.reserved(range.ok());
            }
        };
        let (asked, ()) = tokio::join!(
            self.namenode_now(proto::Delegate {
                dir,
                session: self.inner.session,
            }),
            reserve
        );
        match asked {
            Ok(proto::Delegation { granted: Some(g) }) => {
                let granted = self.inner.deleg.granted(dir, g);
                if granted {
                    // Followed by the delegation now; afterwards, asked again.
                    self.inner.fresh.unknown_change(dir);
                    tracing::debug!("directory {dir} delegated here");
                }
                granted
            }
            Ok(_) => {
                tracing::debug!("no delegation of {dir}: refused");
                false
            }
            Err(e) => {
                tracing::debug!("no delegation of {dir}: {e}");
                false
            }
        }
    }

    /// Asks for inode numbers for queued creates in the background, when few are left.
    fn want_inos(&self) {
        let Some(count) = self.inner.deleg.should_reserve() else {
            return;
        };
        let client = self.clone();
        tokio::spawn(async move {
            let session = client.inner.session;
            let range = client
                .namenode_now(proto::ReserveInos { count, session })
                .await;
            if let Err(e) = &range {
                tracing::debug!("no inode numbers reserved: {e}");
            }
            client.inner.deleg.reserved(range.ok());
        });
    }

    /// Creates a file (or opens an existing one, as `open(2)` with `O_CREAT` does) and opens
    /// it, in one round trip.
    pub async fn create_open(&self, file: NewFile<'_>) -> FsResult<(CreateReply, FileHandle)> {
        let file = NewFile {
            owner: self.owner_of(file.owner),
            ..file
        };
        let claim = self.inner.opens.creating();
        let seq = self.inner.fresh.begin();
        let created = self.change(file.request(Some(claim)), &file.edits()).await;
        if let Ok(c) = &created {
            self.fresh_file(seq, c);
        }
        let ino = match &created {
            Ok(c) if c.attr.kind == FileKind::File => Some(c.attr.ino),
            _ => None,
        };
        if self.inner.opens.created(claim, ino) {
            self.start_renewals();
        }
        let created = created?;
        match created.attr.kind {
            FileKind::File => {
                let mut file = FileHandle::new(self.clone(), created.attr.clone(), true);
                file.place_first_block(created.place.clone());
                Ok((created, file))
            }
            FileKind::Dir => Err(FsError::IsDir),
            _ => Err(FsError::invalid("not a regular file")),
        }
    }

    /// Reads up to `len` bytes of a file at `offset` (fewer at the end of the file).
    pub async fn read(&self, ino: Ino, offset: u64, len: usize) -> FsResult<bytes::Bytes> {
        self.open(ino).await?.read(offset, len).await
    }
}

/// The components of an absolute path; `.` is skipped, `..` refused.
impl Inner {
    fn changed_hook(&self) -> Option<ChangedHook> {
        self.on_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Has the mount's kernel forget what it keeps of what others `changed` (the hook of
    /// [`Client::on_others_changes`]).
    ///
    /// On a thread of its own: the kernel drops a page only once a read of it is answered,
    /// and the task answering it may be queued behind this one on the runtime's worker.
    async fn void_in_kernel(&self, changes: Option<Vec<proto::Change>>) {
        if changes.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        if let Some(hook) = self.changed_hook() {
            let voided = tokio::task::spawn_blocking(move || match &changes {
                Some(changes) => hook(ChangeNews::Others(changes)),
                None => hook(ChangeNews::Anything),
            });
            if let Err(e) = voided.await {
                tracing::warn!("the kernel's caches could not be voided: {e}");
            }
        }
    }
}

/// Requests that go to the namenode ahead of the changes this client queued: they do not
/// look at the namespace, or are how the queue is sent.
fn passes_queue<R: 'static>() -> bool {
    use std::any::TypeId;
    let kind = TypeId::of::<R>();
    [
        TypeId::of::<proto::Changes>(),
        TypeId::of::<proto::KeepOpen>(),
        TypeId::of::<proto::Delegate>(),
        TypeId::of::<proto::ReserveInos>(),
        TypeId::of::<proto::Queued>(),
        TypeId::of::<proto::StatFs>(),
        TypeId::of::<proto::ListMounts>(),
        TypeId::of::<proto::GetMetaHealth>(),
    ]
    .contains(&kind)
}

/// How long a batch of queued changes is sent again while the namenode is out of reach.
const QUEUED_RETRY_FOR: Duration = Duration::from_secs(60);

/// Sends what `client` queued (`deleg.rs`), a batch at a time. Ends when the client is
/// dropped.
async fn send_queued(client: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let (batch, last) = tokio::select! {
            batch = inner.deleg.next_batch() => batch,
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
        };
        let sender = Client::from_inner(inner);
        let seq = sender.inner.fresh.begin();
        // A namenode out of reach (restarting): the batch is sent again; what of it was
        // done already is found done (a create finds its file, an unlink no name).
        let deadline = tokio::time::Instant::now() + QUEUED_RETRY_FOR;
        let done = loop {
            let done = sender
                .namenode_now(proto::Queued {
                    ops: batch.clone(),
                    session: sender.inner.session,
                })
                .await;
            match done {
                Err(FsError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("queued changes not sent yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                done => break done,
            }
        };
        if let Ok(done) = &done {
            for d in done {
                match d {
                    // A file whose commit is queued is as the namenode will say after it.
                    proto::QueuedDone::Created(Ok(c))
                        if sender.inner.deleg.committing(c.reply.attr.ino) =>
                    {
                        for dir in &c.dirs {
                            sender.inner.fresh.unknown_change(dir.attr.ino);
                        }
                    }
                    proto::QueuedDone::Created(Ok(c)) => {
                        sender.fresh_file(seq, &c.reply);
                        for dir in &c.dirs {
                            sender.inner.fresh.unknown_change(dir.attr.ino);
                        }
                    }
                    // As a commit's own answer is kept: a stat after needs no call.
                    // (Unless another commit of it follows.)
                    proto::QueuedDone::Committed(Ok(map))
                        if sender.inner.deleg.commits_pending(map.attr.ino) == 1 =>
                    {
                        sender.inner.fresh.record(seq, [map.attr.clone()]);
                    }
                    proto::QueuedDone::Attr(Ok(attr))
                        if sender.inner.deleg.commits_pending(attr.ino) == 1 =>
                    {
                        sender.inner.fresh.record(seq, [attr.clone()]);
                    }
                    proto::QueuedDone::Removed(Ok(r)) => {
                        sender.inner.fresh.forget(r.reply.ino);
                        for dir in &r.dirs {
                            sender.inner.fresh.unknown_change(dir.attr.ino);
                        }
                        sender.forget_trash(r.reply.trash).await;
                    }
                    _ => {}
                }
            }
        }
        // The maps queued commits answered with are kept as a commit's own answer's are.
        let maps = match &done {
            Ok(done) => done
                .iter()
                .filter_map(|d| match d {
                    proto::QueuedDone::Committed(r) => Some(r.as_ref().ok()),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let asks = sender.inner.deleg.answered_asks(last);
        for (i, (ino, ask)) in asks.into_iter().enumerate() {
            // Not when a change of its attributes follows: the map's are older.
            let map = maps
                .get(i)
                .copied()
                .flatten()
                .filter(|_| sender.inner.deleg.commits_pending(ino) <= 1);
            sender.inner.fresh.map_changed(ino, ask, map);
        }
        sender.inner.deleg.answered(&batch, last, &done);
    }
}

fn components(path: &str) -> FsResult<Vec<&str>> {
    if !path.starts_with('/') {
        return Err(FsError::invalid(format!(
            "{path:?} is not an absolute path"
        )));
    }
    let mut out = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(FsError::invalid("'..' is not supported in cluster paths"));
        }
        out.push(part);
    }
    Ok(out)
}

/// How long the namenode may hold a read of the change feed back for news. The feed is read
/// again at once after each answer, so a change reaches this client within a round trip;
/// a quiet feed is still answered this often, which bounds how old what is kept can be
/// (see `fresh.rs`).
const FEED_WAIT: Duration = Duration::from_millis(200);
/// After a failed read of the feed, the next one waits this long.
const FEED_RETRY: Duration = Duration::from_millis(200);

/// See [`Client::follow_changes`]. Ends when the client is dropped.
async fn follow_changes(client: std::sync::Weak<Inner>) {
    // (namenode run, next change to read); unknown until the first answer.
    let mut at = (0, 0);
    // The first read takes a position at once (nothing kept before it is vouched for);
    // after that the namenode answers when there is news.
    let mut wait = Duration::ZERO;
    loop {
        let Some(inner) = client.upgrade() else {
            return;
        };
        let asked = std::time::Instant::now();
        let req = proto::Changes {
            epoch: at.0,
            since: at.1,
            wait_ms: wait.as_millis() as u32,
            mount: inner
                .mount
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        let reader = Client::from_inner(inner);
        let answer = tokio::select! {
            answer = reader.namenode(req) => answer,
            // Everyone else let go of the client while the read waited for news.
            _ = let_go(&client) => return,
        };
        let Some(inner) = client.upgrade() else {
            return;
        };
        let reply = match answer {
            Ok(reply) => reply,
            Err(e) => {
                // What is kept ages as if there were no feed until it is read again.
                tracing::debug!("reading the namenode's change feed failed: {e}");
                tokio::time::sleep(FEED_RETRY).await;
                continue;
            }
        };
        if reply.complete {
            // A delegation recalled: what was queued goes first, then the feed is read on
            // (which is what the recalling request waits for).
            // (At `reply.next` or before: a grant given before that is taken for void.)
            let mut recalled = false;
            for c in &reply.changes {
                match c {
                    proto::Change::Recall(dir) => {
                        inner.deleg.recalled(*dir, reply.epoch, reply.next);
                        recalled = true;
                    }
                    // Another's now: any of ours there is over.
                    proto::Change::Delegated(dir) => {
                        inner.deleg.recalled(*dir, reply.epoch, reply.next)
                    }
                    _ => {}
                }
            }
            if recalled {
                inner.deleg.drained().await;
            }
            inner
                .fresh
                .others_changed(reply.epoch, reply.next, &reply.changes);
            let files: Vec<Ino> = reply
                .changes
                .iter()
                .filter_map(|c| match c {
                    proto::Change::Inode(ino) => Some(*ino),
                    proto::Change::Entries(..)
                    | proto::Change::Recall(_)
                    | proto::Change::Delegated(_) => None,
                })
                .collect();
            inner.void_in_kernel(Some(reply.changes.clone())).await;
            inner.opens.maps_changed_elsewhere(Some(&files));
            opens::renew_if_held(&Client::from_inner(inner.clone()), &files).await;
        } else {
            inner.deleg.drop_all();
            inner.fresh.feed_restarted();
            inner.void_in_kernel(None).await;
            inner.opens.maps_changed_elsewhere(None);
            // Another namenode run: its lock table starts empty.
            tokio::spawn(reclaim_locks(Client::from_inner(inner.clone())));
        }
        if inner
            .identity()
            .is_none_or(|id| id.exports != reply.exports)
        {
            // The namenode's export rules were loaded again (or it restarted): callers
            // map as the rules in force say.
            if let Err(e) = Client::from_inner(inner.clone()).identify().await {
                tracing::warn!("cannot learn how the namenode takes this mount's callers: {e}");
            }
        }
        at = (reply.epoch, reply.next);
        wait = if reply.more {
            Duration::ZERO
        } else {
            FEED_WAIT
        };
        if reply.complete && !reply.more {
            // The connection first: a lease of another connection is not trusted on the
            // strength of this read.
            match inner.fresh.reader() {
                Some(reader) if reader != reply.reader => {
                    // The namenode knows this client by another connection now, and knows
                    // nothing of what it kept through the one before: changes there no
                    // longer wait for it, so what it kept goes.
                    inner.deleg.drop_all();
                    inner.fresh.feed_restarted();
                    inner.void_in_kernel(None).await;
                    inner.opens.maps_changed_elsewhere(None);
                    tokio::spawn(reclaim_locks(Client::from_inner(inner.clone())));
                }
                Some(_) => {}
                None => inner.deleg.drop_all(),
            }
            inner.fresh.read_through(reply.reader);
            inner.fresh.synced(asked);
        }
    }
}

/// Takes back every lock `client` holds from a namenode that may not know them: one that
/// started, or came to lead its group, since they were granted (its feed says so). A lock
/// the namenode no longer grants (taken back too late) is lost: said, and dropped here.
async fn reclaim_locks(client: Client) {
    let held = client.inner.locks.held();
    if held.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + RECLAIM_FOR;
    let mut kept = 0;
    for (ino, owner, range) in held {
        let reclaim = proto::SetLock {
            ino,
            owner,
            range,
            reclaim: true,
        };
        let taken = loop {
            match client.namenode(reclaim.clone()).await {
                // Asked again: taking back is the same however often it is asked.
                Err(FsError::Unavailable(_) | FsError::NotLeader(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(LOCK_GRACE_RETRY).await
                }
                other => break other,
            }
        };
        match taken {
            Ok(()) => kept += 1,
            Err(e) => {
                tracing::error!(
                    %ino,
                    start = range.start,
                    end = range.end,
                    "a lock held by this mount is lost: {e}"
                );
                let unlock = proto::LockRange {
                    kind: proto::LockKind::Unlock,
                    ..range
                };
                let _ = client.inner.locks.set(ino, owner, unlock);
            }
        }
    }
    tracing::info!(
        locks = kept,
        "locks taken back from the namenode now serving"
    );
}

/// Resolves once the feed's own read (which holds one reference) is all that holds `client`.
async fn let_go(client: &std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client.strong_count() <= 1 {
            return;
        }
    }
}
