//! `cairn mount`: the cluster as a local file system, over FUSE (fuser 0.18).
//!
//! Every kernel request is answered from a task on the tokio runtime, so slow operations
//! (a block fetch, a durable commit) never hold up the others. All cluster access goes
//! through `cairn_client`; this layer only translates between the kernel's requests and
//! the client's calls, and maps every error to one errno (`FsError::errno`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_client::{Client, Found, Owner};
use cairn_common::attr::{Caller, DirEntry, FileKind, InodeAttr, SetAttr, TimeSet, Timestamp};
use cairn_common::proto::{LockKind, LockRange, RenameMode, XattrMode};
use cairn_common::{FsError, FsResult, Ino};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::info;

mod kernel_cache;
mod lock_order;
mod mountpoint;
use kernel_cache::{KernelCache, TTL};
use mountpoint::FS_NAME;
pub use mountpoint::{cairn_mounts_on, mount_flags_of, prepare_mountpoint};

/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;
/// Longest wait at unmount for files closed just before to be released.
const UNMOUNT_DRAIN: Duration = Duration::from_secs(10);
/// How long an unmount that finds the mount busy tries again.
const UNMOUNT_BUSY: Duration = Duration::from_secs(5);
/// The kernel's read-ahead on a mount by default, in KiB: a block. With the kernel's own
/// 128 KiB a sequential reader's stream reached the mount as 128 KiB requests, 8,192 per
/// GiB, each a round of wake-ups; with a block's worth the kernel asks for 1 MiB at a
/// time (the largest request: `MAX_WRITE`) several ahead, and sequential reads gained a
/// fifth (docs/BENCHMARKS.md).
const READ_AHEAD_KB: u32 = 4096;
/// Block size reported by stat(2): programs size their buffers by it.
const BLKSIZE: u32 = 1 << 20;
/// Writes still buffered this long are stored and committed in the background, as a local
/// file system commits its journal every few seconds: other mounts see them (`tail -f` of
/// a log a program writes without `fsync`), and a machine that fails loses no more.
const WRITE_BACK_AFTER: Duration = Duration::from_secs(5);

/// Options of one mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let every local user in (each with their own permissions), as `allow_other`.
    pub allow_other: bool,
    /// Threads reading kernel requests.
    pub threads: usize,
    /// Record reads in access times, as Linux's relatime does; off is `noatime`.
    pub atime: bool,
    /// Refuse every change with EROFS, and record no access times.
    pub read_only: bool,
    /// Every create and unlink waits for the namenode (see `ClientConfig::wsync`).
    pub wsync: bool,
    /// Honour set-user-id and set-group-id bits when a program is run (`suid`). Off by
    /// default (`nosuid`): a file another client of the cluster made setuid root does not
    /// make a local user root.
    pub suid: bool,
    /// Open device nodes as the devices they name (`dev`). Off by default (`nodev`): a
    /// device node another client made does not open this host's disks or memory.
    pub dev: bool,
    /// Run programs stored on the mount (`exec`, the default; `noexec` refuses).
    pub exec: bool,
    /// The kernel's read-ahead for the mount, in KiB (`read_ahead_kb`, as in sysfs); 0
    /// leaves the kernel's (128 KiB). Set only where the mount runs as root.
    pub read_ahead_kb: u32,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            threads: 4,
            atime: true,
            read_only: false,
            wsync: false,
            suid: false,
            dev: false,
            exec: true,
            read_ahead_kb: READ_AHEAD_KB,
        }
    }
}

struct OpenFile {
    append: bool,
    /// The first read through this handle is to be recorded in the access time.
    atime_due: bool,
    file: cairn_client::FileHandle,
}

impl OpenFile {
    fn new(file: cairn_client::FileHandle, append: bool, atime: bool) -> OpenFile {
        let attr = file.attr();
        OpenFile {
            append,
            atime_due: atime && attr.kind == FileKind::File && attr.atime_due(Timestamp::now()),
            file,
        }
    }
}

type Shared<T> = Arc<tokio::sync::Mutex<T>>;
/// Open files by handle, with their inode and whether they were opened for writing.
type FileTable = Arc<Files>;
type Files = Mutex<HashMap<u64, (Ino, bool, Shared<OpenFile>)>>;
/// Directory snapshots by handle.
type DirTable = Arc<Mutex<HashMap<u64, DirListing>>>;

/// What an open directory handle lists: a snapshot, so offsets stay valid however the
/// directory changes, retaken when the handle is read from the start again (rewinddir).
struct DirListing {
    entries: Arc<Vec<DirEntry>>,
    /// Has the handle been read? A later read from offset 0 is a rewind.
    read: bool,
}

pub struct CairnFs {
    client: Client,
    rt: Handle,
    files: FileTable,
    dirs: DirTable,
    next_handle: AtomicU64,
    /// Releases still flushing.
    releasing: Arc<AtomicU64>,
    /// Held by an O_APPEND write while it finds the end of the file and writes there.
    append_lock: Arc<tokio::sync::Mutex<()>>,
    /// Inodes this mount has taken locks on.
    locked_inodes: Mutex<std::collections::HashSet<Ino>>,
    /// Each lock owner's requests reach the namenode in the kernel's order.
    lock_order: lock_order::LockOrder,
    groups: GroupsCache,
    /// Record reads in access times (relatime).
    atime: bool,
    ended: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// Where this is mounted (absolute), to tell a read-only remount.
    mountpoint: Arc<std::path::PathBuf>,
    /// What the kernel keeps, and the means to make it forget.
    kernel: Arc<KernelCache>,
}

/// A mounted file system. Dropping it unmounts.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    ended: std::sync::mpsc::Receiver<()>,
    files: FileTable,
    releasing: Arc<AtomicU64>,
    mountpoint: Arc<std::path::PathBuf>,
}

/// Counts a release in progress (its flush) until dropped.
struct Releasing(Arc<AtomicU64>);

impl Releasing {
    fn start(count: &Arc<AtomicU64>) -> Releasing {
        count.fetch_add(1, Ordering::SeqCst);
        Releasing(count.clone())
    }
}

impl Drop for Releasing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Mount {
    /// Unmounts and waits for the session to end. Files closed just before are released
    /// first (the kernel sends releases after close returns; unmounting under them fails
    /// with EBUSY).
    pub fn unmount(mut self) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + UNMOUNT_DRAIN;
        let busy = |m: &Mount| {
            !m.files.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                || m.releasing.load(Ordering::SeqCst) > 0
        };
        while busy(&self) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // A process forked elsewhere in this process (a test's, a helper's) holds what it
        // inherited of the mount until it execs: EBUSY for that moment. `MNT_EXPIRE` asks
        // whether the mount is busy without unmounting it (EAGAIN: it is not); fuser
        // unmounts once it is not, or past the deadline (and then says why it could not).
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())?;
        let busy_until = std::time::Instant::now() + UNMOUNT_BUSY;
        loop {
            // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
            let probed = unsafe { libc::umount2(path.as_ptr(), libc::MNT_EXPIRE) };
            if probed == 0 {
                // Marked expired before and untouched since: that unmounted it.
                return session.join();
            }
            let busy = std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
            if !busy || std::time::Instant::now() >= busy_until {
                return session.umount_and_join();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Blocks until the file system is unmounted from outside (`umount`).
    pub fn wait(&self) {
        let _ = self.ended.recv();
    }

    /// Has the file system been unmounted from outside?
    pub fn is_ended(&self) -> bool {
        !matches!(
            self.ended.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Empty)
        )
    }
}

/// Refuses `-o suid` and `-o dev` unless the export rule of `client`'s certificate allows
/// them (an admin certificate's always does): what another client of the cluster wrote must
/// not make anyone root on this host unless the cluster's administrator said it may.
pub async fn admitted(client: &Client, opts: &MountOptions) -> std::io::Result<()> {
    if !opts.suid && !opts.dev {
        return Ok(());
    }
    let id = client
        .identify()
        .await
        .map_err(|e| std::io::Error::other(format!("asking the namenode who this is: {e}")))?;
    id.map
        .allows_mount(&id.name, opts.suid, opts.dev)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why))
}

/// Mounts the cluster `client` talks to at `mountpoint`. Requests are served on `rt`.
pub fn mount(
    client: Client,
    rt: Handle,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<Mount> {
    prepare_mountpoint(mountpoint)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (follower, follower_rt) = (client.clone(), rt.clone());
    let files = FileTable::default();
    let releasing = Arc::new(AtomicU64::new(0));
    let kernel = Arc::new(KernelCache::default());
    let fs = CairnFs {
        releasing: releasing.clone(),
        client,
        rt,
        files: files.clone(),
        dirs: Arc::default(),
        next_handle: AtomicU64::new(1),
        locked_inodes: Mutex::default(),
        lock_order: lock_order::LockOrder::default(),
        groups: GroupsCache::default(),
        // A read-only mount changes nothing, access times included.
        atime: opts.atime && !opts.read_only,
        append_lock: Arc::default(),
        ended: Mutex::new(Some(tx)),
        mountpoint: Arc::new(mountpoint::absolute(mountpoint)?),
        kernel: kernel.clone(),
    };
    follower.serve_mount(&fs.mountpoint);
    let absolute = fs.mountpoint.clone();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(FS_NAME.into()),
        fuser::MountOption::Subtype(FS_NAME.into()),
        // The kernel checks owner/group/other bits against the caller, as on a local disk.
        fuser::MountOption::DefaultPermissions,
        match opts.dev {
            true => fuser::MountOption::Dev,
            false => fuser::MountOption::NoDev,
        },
        match opts.suid {
            true => fuser::MountOption::Suid,
            false => fuser::MountOption::NoSuid,
        },
        match opts.exec {
            true => fuser::MountOption::Exec,
            false => fuser::MountOption::NoExec,
        },
    ];
    if opts.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let session = fuser::Session::new(fs, mountpoint, &config)?.spawn()?;
    // What another client changed, the kernel forgets too (names, attributes, pages)
    // before the change is answered there: an operation that starts here afterwards sees it.
    kernel.set_notifier(session.notifier());
    follower.on_others_changes(move |news| kernel.changed(news));
    {
        let _runtime = follower_rt.enter();
        follower.follow_changes();
    }
    follower_rt.spawn(write_back(Arc::downgrade(&files)));
    if opts.read_ahead_kb > 0 {
        read_ahead_once_answering(&absolute, opts.read_ahead_kb);
    }
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Mount {
        session: Some(session),
        ended: rx,
        files,
        releasing,
        mountpoint: absolute,
    })
}

/// Sets the mount's kernel read-ahead to `kib` from a thread of its own, once the mount has
/// answered a first request (the kernel holds requests until the mount's start is done,
/// and that start would undo the setting). A mount that cannot (not root) reads on with
/// the kernel's default.
fn read_ahead_once_answering(mountpoint: &Path, kib: u32) {
    let mountpoint = mountpoint.to_path_buf();
    let set = move || {
        if let Err(e) = std::fs::metadata(&mountpoint) {
            tracing::debug!("read-ahead not set: the mount did not answer: {e}");
            return;
        }
        match mountpoint::set_read_ahead(&mountpoint, kib) {
            Ok(()) => tracing::debug!(kib, "kernel read-ahead set"),
            Err(e) => info!("kernel read-ahead left at its default: {e}"),
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(set)
    {
        info!("kernel read-ahead left at its default: {e}");
    }
}

/// Is `name` one of the POSIX ACL attributes? Cairn has no ACLs: like a local file system
/// mounted `noacl`, it answers them `EOPNOTSUPP`, so `cp -a`, `tar --acls` and `rsync -A`
/// set the mode with `chmod` instead (stored as a plain attribute, the ACL `cp -a` writes
/// for every file took the place of the mode it copies: the copy came out `0600`).
fn is_acl(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

fn errno(e: &FsError) -> Errno {
    // What an application sees only as EIO (or, for a datanode refusing a fresh block
    // token, EACCES): the log says why.
    match e {
        FsError::Io(_) | FsError::Protocol(_) => tracing::warn!("answering EIO: {e}"),
        FsError::Token(_) => tracing::warn!("answering EACCES: {e}"),
        _ => {}
    }
    Errno::from_i32(e.errno())
}

/// `t` as the kernel takes it; one no `SystemTime` holds (the namenode refuses to store
/// such) is the epoch rather than a panic.
fn to_system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(t.nanos.min(999_999_999).into());
    let time = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
    };
    time.and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

fn to_timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = 0;
            if d.subsec_nanos() > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - d.subsec_nanos();
            }
            Timestamp { secs, nanos }
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &InodeAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.stored.div_ceil(512),
        atime: to_system_time(a.atime),
        mtime: to_system_time(a.mtime),
        ctime: to_system_time(a.ctime),
        crtime: to_system_time(a.ctime),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// Attributes for a reply that carries none (a negative entry).
/// A negative entry: the name is absent.
fn absent_entry() -> FileAttr {
    let mut absent = file_attr(&placeholder_attr());
    absent.ino = INodeNo(0);
    absent
}

fn placeholder_attr() -> InodeAttr {
    InodeAttr {
        ino: Ino(0),
        kind: FileKind::File,
        perm: 0,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        rdev: 0,
        replication: 0,
        stored: 0,
    }
}

/// How long the supplementary groups read for a process are reused: a process rarely changes
/// its groups, and reading /proc for every request costs as much as a name lookup.
const GROUPS_TTL: Duration = Duration::from_secs(1);
/// Processes whose groups are remembered at once; past this the memory starts afresh.
const GROUPS_CACHED: usize = 4096;

/// A caller as the kernel names it: pid, uid, gid.
type CallerKey = (u32, u32, u32);

/// Supplementary groups of recent callers, with when they were read.
#[derive(Default)]
struct GroupsCache(Mutex<HashMap<CallerKey, (Vec<u32>, std::time::Instant)>>);

impl GroupsCache {
    /// Who is making `req`: its uid and gid, and the supplementary groups of its process.
    fn caller(&self, req: &Request) -> Caller {
        let key = (req.pid(), req.uid(), req.gid());
        let now = std::time::Instant::now();
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let groups = match cache.get(&key) {
            Some((groups, at)) if now.duration_since(*at) < GROUPS_TTL => groups.clone(),
            _ => {
                let groups = process_groups(req.pid());
                if cache.len() >= GROUPS_CACHED {
                    cache.clear();
                }
                cache.insert(key, (groups.clone(), now));
                groups
            }
        };
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            groups,
        }
    }
}

/// The supplementary groups of process `pid` (FUSE does not pass them; /proc has them while
/// the process waits for the reply).
fn process_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(to_timestamp(t)),
    }
}

impl CairnFs {
    /// Runs `op` on the runtime and hands its result to `done`.
    /// Answers a lookup in a directory delegated here from what the delegation knows.
    fn reply_delegated_entry(&self, dir: Ino, name: Vec<u8>, found: Found, reply: ReplyEntry) {
        let (kernel, start) = (self.kernel.clone(), self.kernel.start());
        let known = match found {
            Found::Absent => {
                let ttl = kernel.ttl(start);
                kernel.handed(dir, &name, ttl);
                return reply.entry(&ttl, &absent_entry(), Generation(0));
            }
            Found::Present(ino, attr) => attr
                .or_else(|| self.client.fresh_attr(ino, TTL).map(|(a, _)| a))
                .ok_or(ino),
        };
        if let Ok(attr) = &known {
            if settled(attr, &self.files) {
                let ttl = kernel.ttl(start);
                kernel.handed(dir, &name, ttl);
                return reply.entry(&ttl, &file_attr(attr), Generation(0));
            }
        }
        let (client, files) = (self.client.clone(), self.files_handle());
        self.run(
            async move {
                let attr = match known {
                    Ok(attr) => attr,
                    Err(ino) => client.getattr(ino).await?,
                };
                Ok(with_pending(attr, &files).await)
            },
            move |r| match r {
                Ok(a) => {
                    let ttl = kernel.ttl(start);
                    kernel.handed(dir, &name, ttl);
                    reply.entry(&ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn run<T, F>(&self, op: F, done: impl FnOnce(FsResult<T>) + Send + 'static)
    where
        T: Send + 'static,
        F: std::future::Future<Output = FsResult<T>> + Send + 'static,
    {
        self.rt.spawn(async move { done(op.await) });
    }

    /// Replies with the entry `op` makes as `name` in `parent`.
    fn reply_entry(
        &self,
        parent: INodeNo,
        name: &[u8],
        op: impl std::future::Future<Output = FsResult<InodeAttr>> + Send + 'static,
        reply: ReplyEntry,
    ) {
        let (kernel, start, name) = (self.kernel.clone(), self.kernel.start(), name.to_vec());
        self.run(op, move |r| match r {
            Ok(a) => {
                let ttl = kernel.ttl(start);
                kernel.handed(Ino(parent.0), &name, ttl);
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    /// An unlink, or an rmdir (`dir`): answered by the mount under the directory's
    /// delegation (asked for first if it is not held), else by the namenode.
    fn remove(&self, req: &Request, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let (client, name) = (self.client_for(req), name_of(name));
        let queued = move |client: &Client, parent: Ino, name: &[u8]| match dir {
            true => client.rmdir_queued(parent, name),
            false => client.unlink_queued(parent, name),
        };
        let answered = {
            let _runtime = self.rt.enter();
            queued(&client, Ino(parent.0), &name)
        };
        match answered {
            Some(Ok(())) => return reply.ok(),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        self.reply_empty(
            async move {
                let parent = Ino(parent.0);
                if client.delegate(parent).await {
                    if let Some(done) = queued(&client, parent, &name) {
                        return done;
                    }
                }
                match dir {
                    true => client.rmdir(parent, &name).await,
                    false => client.unlink(parent, &name).await,
                }
            },
            reply,
        );
    }

    fn reply_empty(
        &self,
        op: impl std::future::Future<Output = FsResult<()>> + Send + 'static,
        reply: ReplyEmpty,
    ) {
        self.run(op, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn file(&self, fh: FileHandle) -> FsResult<Shared<OpenFile>> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .map(|(_, _, f)| f.clone())
            .ok_or_else(|| FsError::invalid("unknown file handle"))
    }

    /// Open handles of `ino` in this mount: their unflushed writes count for its size.
    fn open_handles(&self, ino: Ino) -> Vec<Shared<OpenFile>> {
        handles_of(&self.files, ino)
    }

    fn files_handle(&self) -> FileTable {
        self.files.clone()
    }

    fn dirs_handle(&self) -> DirTable {
        self.dirs.clone()
    }

    /// Has this mount ever locked `ino`? Only then does a close need to drop locks.
    fn ever_locked(&self, ino: Ino) -> bool {
        self.locked_inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&ino)
    }

    /// The client acting for the process behind `req`: the namenode checks its permissions.
    fn client_for(&self, req: &Request) -> Client {
        self.client.as_user(self.groups.caller(req))
    }

    /// The listing to serve a read of directory handle `fh` at `offset` from: the snapshot,
    /// or after a rewind the directory as it is now, as POSIX asks of rewinddir.
    fn dir_listing(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
    ) -> impl std::future::Future<Output = Result<Arc<Vec<DirEntry>>, Errno>> + Send + 'static {
        let dirs = self.dirs_handle();
        let client = self.client_for(req);
        async move {
            let (entries, rewound) = {
                let mut table = dirs.lock().unwrap_or_else(|e| e.into_inner());
                let listing = table.get_mut(&fh.0).ok_or(Errno::EBADF)?;
                let rewound = offset == 0 && listing.read;
                listing.read = true;
                (listing.entries.clone(), rewound)
            };
            if !rewound {
                return Ok(entries);
            }
            let fresh = Arc::new(
                client
                    .readdir_plus(Ino(ino.0))
                    .await
                    .map_err(|e| errno(&e))?,
            );
            if let Some(listing) = dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&fh.0)
            {
                listing.entries = fresh.clone();
            }
            Ok(fresh)
        }
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

fn handles_of(files: &FileTable, ino: Ino) -> Vec<Shared<OpenFile>> {
    files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|(i, _, _)| *i == ino)
        .map(|(_, _, f)| f.clone())
        .collect()
}

/// Flushes, every second until the mount ends, the handles holding writes older than
/// [`WRITE_BACK_AFTER`]. A handle in use is left for the next round; a failure stays with
/// the handle and reaches the program at its next write, `fsync` or `close`.
async fn write_back(files: std::sync::Weak<Files>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(files) = files.upgrade() else {
            return;
        };
        let writable: Vec<Shared<OpenFile>> = files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, writable, _)| *writable)
            .map(|(_, _, f)| f.clone())
            .collect();
        drop(files);
        for f in writable {
            let Ok(mut f) = f.try_lock() else {
                continue;
            };
            if f.file.dirty_for().is_some_and(|d| d >= WRITE_BACK_AFTER) {
                if let Err(e) = f.file.flush().await {
                    tracing::debug!(ino = %f.file.attr().ino, "write-back failed: {e}");
                }
            }
        }
    }
}

/// Flushes the writes buffered in `handles`: for an op the namenode answers from what it has.
async fn flush_all(handles: Vec<Shared<OpenFile>>) -> FsResult<()> {
    for h in handles {
        let mut h = h.lock().await;
        if h.file.is_dirty() {
            h.file.flush().await?;
        }
    }
    Ok(())
}

/// `attr` as this mount sees it: writes still buffered in its open handles count for the
/// size. Every attribute reply goes through here, or the kernel would shrink a file that is
/// being written back to what the namenode has committed. So does what a handle committed
/// while this waited for it (a read through it flushes it): `attr` may predate that.
async fn with_pending(mut attr: InodeAttr, files: &FileTable) -> InodeAttr {
    if attr.kind == FileKind::File {
        for f in handles_of(files, attr.ino) {
            let f = f.lock().await;
            let known = f.file.known_size().unwrap_or(0);
            attr.size = attr.size.max(f.file.unflushed_end()).max(known);
            if f.file.is_dirty() {
                // Bytes written and not yet stored: counted as if the whole file held data,
                // so that no program takes it for sparse and skips them.
                attr.stored = attr.size;
            }
        }
    }
    attr
}

/// Is `attr` as this mount sees it already: not a file with a handle open for writing here
/// (whose buffered writes would count)? Then a reply needs no trip through the runtime.
fn settled(attr: &InodeAttr, files: &FileTable) -> bool {
    attr.kind != FileKind::File
        || !files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|(ino, writable, _)| *ino == attr.ino && *writable)
}

/// What a directory handle lists from `offset` on, with the offset of the entry after each:
/// 1 is ".", 2 is "..", 3 + i is entry i of the snapshot.
fn listing_from(
    entries: &[DirEntry],
    dir: Ino,
    offset: u64,
) -> impl Iterator<Item = (u64, Cow<'_, DirEntry>)> {
    let dot = |name: &[u8]| DirEntry {
        name: name.to_vec(),
        ino: dir,
        kind: FileKind::Dir,
        attr: None,
    };
    let dots = [(1, Cow::Owned(dot(b"."))), (2, Cow::Owned(dot(b"..")))];
    let rest = entries
        .iter()
        .enumerate()
        .skip(offset.saturating_sub(2) as usize)
        .map(|(i, e)| (3 + i as u64, Cow::Borrowed(e)));
    dots.into_iter()
        .filter(move |(next, _)| offset < *next)
        .chain(rest)
}

/// Has `file` nothing to flush or report, as far as can be seen without waiting for it?
fn is_settled(file: &Shared<OpenFile>) -> bool {
    file.try_lock().is_ok_and(|f| f.file.is_settled())
}

fn name_of(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        // fcntl and flock locks go to the namenode, so they hold across mounts; without
        // these the kernel would keep them local to this machine.
        let locks = fuser::InitFlags::FUSE_POSIX_LOCKS | fuser::InitFlags::FUSE_FLOCK_LOCKS;
        if let Err(unsupported) = config.add_capabilities(locks) {
            tracing::warn!("kernel lacks {unsupported:?}: locks stay local to this mount");
        }
        // Listings carry attributes; the kernel picks plain or plus listings as it sees fit.
        let plus = fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(unsupported) = config.add_capabilities(plus) {
            tracing::warn!("kernel lacks {unsupported:?}: listings come without attributes");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        info!("unmounted");
        if let Some(tx) = self.ended.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // The kernel looks a name up before creating it: in a directory this mount made and
        // alone changed, it knows the name is not there.
        // Every name handed out is remembered, so another client's change of the directory
        // makes the kernel forget it (`kernel_cache`).
        let (kernel, start) = (self.kernel.clone(), self.kernel.start());
        let dir = Ino(parent.0);
        // In a directory delegated here, every name is known here.
        if let Some(found) = self.client.delegated_lookup(dir, name.as_bytes()) {
            return self.reply_delegated_entry(dir, name_of(name), found, reply);
        }
        if name.len() <= cairn_common::attr::NAME_MAX {
            if let Some(age) = self.client.known_absent(dir, name.as_bytes(), TTL) {
                let ttl = kernel.ttl_left(start, TTL - age);
                kernel.handed(dir, name.as_bytes(), ttl);
                return reply.entry(&ttl, &absent_entry(), Generation(0));
            }
        }
        // There, it also knows what the names it made point at, for as long as the change
        // feed says nobody else changed them.
        let known = self.client.known_entry(dir, name.as_bytes(), TTL);
        let name = name_of(name);
        if let Some((attr, age)) = known {
            if settled(&attr, &self.files) {
                let ttl = kernel.ttl_left(start, TTL - age);
                kernel.handed(dir, &name, ttl);
                return reply.entry(&ttl, &file_attr(&attr), Generation(0));
            }
            let files = self.files_handle();
            return self.run(
                async move { Ok(with_pending(attr, &files).await) },
                move |r| match r {
                    Ok(a) => {
                        let ttl = kernel.ttl_left(start, TTL - age);
                        kernel.handed(dir, &name, ttl);
                        reply.entry(&ttl, &file_attr(&a), Generation(0))
                    }
                    Err(e) => reply.error(errno(&e)),
                },
            );
        }
        let client = self.client_for(req);
        let files = self.files_handle();
        self.run(
            {
                let name = name.clone();
                async move {
                    let attr = client.lookup(dir, &name).await?;
                    Ok(with_pending(attr, &files).await)
                }
            },
            move |r| {
                let ttl = kernel.ttl(start);
                match r {
                    Ok(a) => {
                        kernel.handed(dir, &name, ttl);
                        reply.entry(&ttl, &file_attr(&a), Generation(0))
                    }
                    // An entry with inode 0 is a negative entry: the kernel remembers the
                    // name is absent for the TTL, so a create right after costs no second
                    // lookup. This mount's own creates replace it at once.
                    Err(FsError::NotFound) => {
                        kernel.handed(dir, &name, ttl);
                        reply.entry(&ttl, &absent_entry(), Generation(0))
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // Asked right after this mount changed the inode (the kernel voids its attributes
        // then: a directory's entries changed, a file was written) or opened it (`fstat`
        // after `open`): the answer to that call has them. Kept no longer in all than the
        // kernel would have kept them itself.
        // A file made here whose create is queued, a directory delegated here.
        let fresh = match self.client.delegated_attr(Ino(ino.0)) {
            Some(attr) => Some((attr, Duration::ZERO)),
            None => self.client.fresh_attr(Ino(ino.0), TTL),
        };
        if let Some((attr, age)) = &fresh {
            if settled(attr, &self.files) {
                return reply.attr(&(TTL - *age), &file_attr(attr));
            }
        }
        let client = self.client.clone();
        let files = self.files_handle();
        let (kernel, start) = (self.kernel.clone(), self.kernel.start());
        self.run(
            async move {
                let (attr, ttl) = match fresh {
                    Some((attr, age)) => (attr, TTL - age),
                    None => (client.getattr(Ino(ino.0)).await?, TTL),
                };
                Ok((with_pending(attr, &files).await, ttl))
            },
            move |r| match r {
                Ok((a, ttl)) => reply.attr(&kernel.ttl_left(start, ttl), &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let client = self.client_for(req);
        let ino = Ino(ino.0);
        let open = self.open_handles(ino);
        tracing::debug!(%ino, ?fh, open = open.len(), ?size, ?mtime, "setattr");
        let via = fh.and_then(|fh| self.file(fh).ok());
        let mut set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size: None,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        if size.is_some() && set.mtime == Some(TimeSet::Now) {
            // The kernel's "now" beside a truncate: the size change sets it, and asking for
            // it apart would need a right to write that a handle's truncate does not.
            set.mtime = None;
        }
        self.run(
            async move {
                // Writes still buffered in this mount land first: a truncate cuts them, and
                // times set now (tar, rsync, cp -p set them before close) are not overwritten
                // by the commit of earlier writes at close.
                for f in &open {
                    f.lock().await.file.flush().await?;
                }
                let mut sized = None;
                if let Some(size) = size {
                    sized = Some(match via {
                        Some(f) => {
                            let mut f = f.lock().await;
                            f.file.truncate(size).await?;
                            f.file.attr().clone()
                        }
                        None => {
                            let set = SetAttr {
                                size: Some(size),
                                ..SetAttr::default()
                            };
                            client.setattr(ino, set).await?
                        }
                    });
                }
                let attr = match sized {
                    _ if set != SetAttr::default() => client.setattr(ino, set).await?,
                    Some(attr) => attr,
                    None => client.getattr(ino).await?,
                };
                tracing::debug!(%ino, size = attr.size, mtime = attr.mtime.secs, "setattr done");
                Ok(attr)
            },
            move |r| match r {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let client = self.client.clone();
        self.run(async move { client.readlink(Ino(ino.0)).await }, move |r| {
            reply_data(r, reply)
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = FileKind::from_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (client, name, who) = (self.client_for(req), name_of(name), owner(req));
        let perm = (mode & !umask & 0o7777) as u16;
        self.reply_entry(
            parent,
            &name.clone(),
            async move {
                if kind == FileKind::File {
                    let c = client
                        .create(Ino(parent.0), &name, perm, true, false, who)
                        .await?;
                    return Ok(c.attr);
                }
                client
                    .mknod(Ino(parent.0), &name, kind, perm, rdev, who)
                    .await
            },
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (client, name, who) = (self.client_for(req), name_of(name), owner(req));
        let perm = (mode & !umask & 0o7777) as u16;
        self.reply_entry(
            parent,
            &name.clone(),
            async move { client.mkdir(Ino(parent.0), &name, perm, who).await },
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // A file open anywhere outlives its last name: the namenode keeps it until then.
        self.remove(req, parent, name, false, reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(req, parent, name, true, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (client, name, who) = (self.client_for(req), name_of(link_name), owner(req));
        let target = target.as_os_str().as_bytes().to_vec();
        self.reply_entry(
            parent,
            &name.clone(),
            async move { client.symlink(Ino(parent.0), &name, &target, who).await },
            reply,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            reply.error(Errno::EINVAL);
            return;
        };
        let (client, name, newname) = (self.client_for(req), name_of(name), name_of(newname));
        self.reply_empty(
            async move {
                client
                    .rename(Ino(parent.0), &name, Ino(newparent.0), &newname, mode)
                    .await
            },
            reply,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (client, name) = (self.client_for(req), name_of(newname));
        self.reply_entry(
            newparent,
            &name.clone(),
            async move { client.link(Ino(ino.0), Ino(newparent.0), &name).await },
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let client = self.client.clone();
        let fh = self.new_handle();
        let ino = Ino(ino.0);
        let append = flags.0 & libc::O_APPEND != 0;
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let files = self.files_handle();
        let atime = self.atime;
        // Opened by a lease's map: no call, so no trip through the runtime either. An open
        // for writing asks the namenode, which tells it whether another mount writes too.
        let leased = (!writable).then(|| {
            let _runtime = self.rt.enter();
            client.open_leased(ino)
        });
        if let Some(file) = leased.flatten() {
            register(
                &files,
                fh,
                ino,
                writable,
                OpenFile::new(file, append, atime),
            );
            return reply_opened(Ok(false), fh, reply);
        }
        self.run(
            async move {
                let (file, shared) = client.open_as(ino, writable).await?;
                let file = OpenFile::new(file, append, atime);
                register(&files, fh, ino, writable, file);
                Ok(shared)
            },
            move |r| reply_opened(r, fh, reply),
        );
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let others: Vec<_> = self
            .open_handles(Ino(ino.0))
            .into_iter()
            .filter(|f| !Arc::ptr_eq(f, &file))
            .collect();
        let reader = self.client_for(req);
        // Answered here when memory holds it all and no other handle of the file is open
        // (one could hold writes this read must see): no trip through the runtime.
        if others.is_empty() {
            if let Ok(mut f) = file.try_lock() {
                if let Some(data) = f.file.read_cached(offset, size as usize) {
                    if std::mem::take(&mut f.atime_due) {
                        record_access(&self.rt, reader, Ino(ino.0), self.mountpoint.clone());
                    }
                    return reply.data(&data);
                }
            }
        }
        let (rt, mountpoint) = (self.rt.clone(), self.mountpoint.clone());
        self.run(
            async move {
                // Full POSIX within one mount: a read sees what other handles wrote before it.
                let mut flushed = false;
                for other in others {
                    let mut other = other.lock().await;
                    if other.file.is_dirty() {
                        other.file.flush().await?;
                        flushed = true;
                    }
                }
                let mut f = file.lock().await;
                if flushed {
                    f.file.forget_map();
                }
                if std::mem::take(&mut f.atime_due) {
                    record_access(&rt, reader, Ino(ino.0), mountpoint);
                }
                f.file.read(offset, size as usize).await
            },
            move |r| reply_data(r, reply),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let data = data.to_vec();
        let others: Vec<_> = self
            .open_handles(Ino(ino.0))
            .into_iter()
            .filter(|f| !Arc::ptr_eq(f, &file))
            .collect();
        let append_lock = self.append_lock.clone();
        self.run(
            async move {
                if !file.lock().await.append {
                    file.lock().await.file.write(offset, &data).await?;
                    return Ok(data.len() as u32);
                }
                // O_APPEND writes go to the end this mount knows of, whatever the offset:
                // past what every open handle has written. One append at a time, so two
                // appenders never pick the same end.
                let _serial = append_lock.lock().await;
                let mut end = 0;
                for other in others {
                    end = end.max(other.lock().await.file.size());
                }
                let mut f = file.lock().await;
                // Past what other handles of this mount committed and closed, too.
                f.file.refresh().await?;
                let at = end.max(f.file.size());
                f.file.write(at, &data).await?;
                Ok(data.len() as u32)
            },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let client = self.client.clone();
        if client.create_failed(Ino(ino.0)) {
            return reply.error(Errno::EIO);
        }
        let ever_locked = self.ever_locked(Ino(ino.0));
        if !ever_locked && is_settled(&file) {
            // Most closes: nothing written, nothing locked. No trip through the runtime.
            return reply.ok();
        }
        // close(2) returns what this returns: a write that could not be stored shows here.
        // A close also drops the closing process's POSIX locks on the file.
        // What was written under a lock reaches the namenode before the lock is let go,
        // through whichever handle of this mount it was written.
        let (others, ticket) = if ever_locked {
            let ticket = self.lock_order.ticket(Ino(ino.0), lock_owner.0);
            (self.open_handles(Ino(ino.0)), Some(ticket))
        } else {
            (Vec::new(), None)
        };
        self.reply_empty(
            async move {
                let flushed = file.lock().await.file.flush().await;
                if let Some(ticket) = ticket {
                    let flushed_all = flush_all(others).await;
                    ticket.turn().await;
                    client.release_locks(Ino(ino.0), lock_owner.0).await?;
                    flushed_all?;
                }
                flushed
            },
            reply,
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let removed = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        let Some((ino, _, file)) = removed else {
            return reply.ok();
        };
        let client = self.client.clone();
        let ever_locked = self.ever_locked(ino);
        if !ever_locked && is_settled(&file) {
            return reply.ok();
        }
        let releasing = Releasing::start(&self.releasing);
        let (others, ticket) = match lock_owner.filter(|_| ever_locked) {
            Some(owner) => (
                self.open_handles(ino),
                Some(self.lock_order.ticket(ino, owner.0)),
            ),
            None => (Vec::new(), None),
        };
        self.reply_empty(
            async move {
                let _releasing = releasing;
                let flushed = file.lock().await.file.flush().await;
                // The last close of a file drops the flock lock taken through it, once what
                // was written under it is committed.
                if let (Some(owner), Some(ticket)) = (lock_owner, ticket) {
                    let flushed_all = flush_all(others).await;
                    ticket.turn().await;
                    client.release_locks(ino, owner.0).await?;
                    flushed_all?;
                }
                flushed
            },
            reply,
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let client = self.client.clone();
        self.reply_empty(
            async move {
                let synced = file.lock().await.file.fsync().await;
                // A create answered here and refused by the namenode since shows now.
                match client.queued_failure(Ino(ino.0)).await {
                    Some(e) => Err(FsError::io(format!("the file's create failed: {e}"))),
                    None => synced,
                }
            },
            reply,
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let client = self.client_for(req);
        let fh = self.new_handle();
        let dirs = self.dirs_handle();
        self.run(
            async move {
                let entries = Arc::new(client.readdir_plus(Ino(ino.0)).await?);
                dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    fh,
                    DirListing {
                        entries,
                        read: false,
                    },
                );
                Ok(false)
            },
            move |r| reply_opened(r, fh, reply),
        );
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = self.dir_listing(req, ino, fh, offset);
        self.rt.spawn(async move {
            let entries = match listing.await {
                Ok(entries) => entries,
                Err(e) => return reply.error(e),
            };
            for (next, e) in listing_from(&entries, Ino(ino.0), offset) {
                if reply.add(
                    INodeNo(e.ino.0),
                    next,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// A listing with each entry's attributes, so `ls -l` needs no lookup per entry.
    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let listing = self.dir_listing(req, ino, fh, offset);
        let files = self.files_handle();
        let (kernel, start) = (self.kernel.clone(), self.kernel.start());
        self.rt.spawn(async move {
            let entries = match listing.await {
                Ok(entries) => entries,
                Err(e) => return reply.error(e),
            };
            for (next, e) in listing_from(&entries, Ino(ino.0), offset) {
                // The kernel ignores the attributes of "." and ".."; an entry removed while
                // the directory was read has none and is left out.
                let attr = match &e.attr {
                    Some(a) => file_attr(&with_pending(a.clone(), &files).await),
                    None if e.name == b"." || e.name == b".." => {
                        let mut a = file_attr(&placeholder_attr());
                        (a.ino, a.kind) = (INodeNo(e.ino.0), FileType::Directory);
                        a
                    }
                    None => continue,
                };
                let name = OsStr::from_bytes(&e.name);
                let ttl = kernel.ttl(start);
                kernel.handed(Ino(ino.0), &e.name, ttl);
                if reply.add(INodeNo(e.ino.0), next, name, &ttl, &attr, Generation(0)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The directory's entries, and every other change made before: one barrier. A
        // queued change there that the namenode refused shows now.
        let client = self.client.clone();
        self.reply_empty(
            async move {
                client.sync().await?;
                match client.queued_failure(Ino(ino.0)).await {
                    Some(e) => Err(FsError::io(format!(
                        "a change answered here failed at the namenode: {e}"
                    ))),
                    None => Ok(()),
                }
            },
            reply,
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let client = self.client.clone();
        self.run(async move { client.statfs().await }, move |r| match r {
            Ok(s) => {
                let bsize = 4096u64;
                let free_inodes = u32::MAX as u64;
                reply.statfs(
                    s.capacity / bsize,
                    s.available / bsize,
                    s.available / bsize,
                    s.inodes + free_inodes,
                    free_inodes,
                    bsize as u32,
                    cairn_common::attr::NAME_MAX as u32,
                    bsize as u32,
                )
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if is_acl(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::Replace
        } else {
            XattrMode::Any
        };
        let (client, name, value) = (self.client_for(req), name_of(name), value.to_vec());
        self.reply_empty(
            async move { client.set_xattr(Ino(ino.0), &name, &value, mode).await },
            reply,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if is_acl(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        // The kernel asks for `security.capability` before the first write to every file.
        if self.client.fresh_and_bare(Ino(ino.0), TTL) {
            return reply.error(errno(&FsError::NoAttr));
        }
        let (client, name) = (self.client_for(req), name_of(name));
        self.run(
            async move { client.get_xattr(Ino(ino.0), &name, TTL).await },
            move |r| reply_xattr(r, size, reply),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let client = self.client_for(req);
        self.run(
            async move {
                let names = client.list_xattr(Ino(ino.0)).await?;
                let mut out = Vec::new();
                for n in names {
                    if is_acl(OsStr::from_bytes(&n)) {
                        continue;
                    }
                    out.extend_from_slice(&n);
                    out.push(0);
                }
                Ok(out)
            },
            move |r| reply_xattr(r, size, reply),
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if is_acl(name) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let (client, name) = (self.client_for(req), name_of(name));
        self.reply_empty(
            async move { client.remove_xattr(Ino(ino.0), &name).await },
            reply,
        );
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let Some(range) = lock_range(typ, start, end, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let client = self.client.clone();
        self.run(
            async move { client.get_lock(Ino(ino.0), lock_owner.0, range).await },
            move |r| match r {
                Ok(Some(held)) => {
                    let typ = match held.kind {
                        LockKind::Read => libc::F_RDLCK,
                        _ => libc::F_WRLCK,
                    };
                    reply.locked(held.start, held.end, typ, held.pid)
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(range) = lock_range(typ, start, end, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let ino = Ino(ino.0);
        let unlock = range.kind == LockKind::Unlock;
        if !unlock {
            self.locked_inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(ino);
        }
        // NFS's rules, which SQLite and every lock-based tool rely on across machines: what
        // was written under a lock is committed before the lock is let go, and taking a
        // lock drops every cached byte and attribute of the file, the kernel's included.
        let written = if unlock {
            self.open_handles(ino)
        } else {
            Vec::new()
        };
        let (client, kernel) = (self.client.clone(), self.kernel.clone());
        let ticket = self.lock_order.ticket(ino, lock_owner.0);
        self.reply_empty(
            async move {
                let flushed = flush_all(written).await;
                ticket.turn().await;
                match client.set_lock(ino, lock_owner.0, range, false).await {
                    // A wait holds up none of the owner's later requests (another thread's).
                    Err(FsError::WouldBlock) if sleep => {
                        drop(ticket);
                        client.set_lock(ino, lock_owner.0, range, true).await?;
                    }
                    other => other?,
                }
                if !unlock {
                    client.drop_cached(ino);
                    // Off the runtime's workers: the kernel waits for reads of the file's
                    // pages in flight, which tasks on them answer.
                    let dropped = tokio::task::spawn_blocking(move || kernel.drop_file(ino));
                    dropped.await.map_err(|e| FsError::io(e.to_string()))?;
                }
                flushed
            },
            reply,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Blocks are stored when written, so there is nothing to reserve: plain fallocate
        // only grows the file, KEEP_SIZE does nothing. Punched and zeroed ranges become
        // holes at the namenode (their blocks' references go). Collapsing and inserting
        // ranges are not supported, and say so.
        tracing::debug!(mode, offset, length, "fallocate");
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let handles = self.open_handles(Ino(ino.0));
        let client = self.client.clone();
        self.reply_empty(
            async move {
                let end = offset.checked_add(length).ok_or(FsError::TooLarge)?;
                if zero {
                    // Writes buffered in this mount would otherwise land after the hole.
                    flush_all(handles).await?;
                    client.punch(Ino(ino.0), offset, length, keep_size).await?;
                    return Ok(());
                }
                let mut f = file.lock().await;
                f.file.refresh().await?;
                let size = f.file.size();
                if !keep_size && end > size {
                    f.file.truncate(end).await?;
                }
                Ok(())
            },
            reply,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers the other kinds of seek itself.
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return reply.error(Errno::EINVAL),
        };
        if let Err(e) = self.file(fh) {
            return reply.error(errno(&e));
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let handles = self.open_handles(Ino(ino.0));
        let client = self.client.clone();
        self.run(
            async move {
                // Where the data is includes what this mount has written and not flushed.
                flush_all(handles).await?;
                client.seek(Ino(ino.0), offset, hole).await
            },
            move |r| match r {
                Ok(Some(at)) => reply.offset(at as i64),
                Ok(None) => reply.error(Errno::ENXIO),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Blocks are named by their content, so a copy is new slices naming the source's
        // blocks: `cp` of a large file is one namenode call, and the copy takes no space.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        if let Err(e) = self.file(fh_in).and(self.file(fh_out)) {
            return reply.error(errno(&e));
        }
        let (src, dst) = (Ino(ino_in.0), Ino(ino_out.0));
        let mut handles = self.open_handles(src);
        if dst != src {
            handles.extend(self.open_handles(dst));
        }
        let client = self.client_for(req);
        self.run(
            async move {
                // The copy takes what the namenode has; writes buffered in the target would
                // otherwise land after it.
                flush_all(handles).await?;
                let len = len.min(u32::MAX as u64);
                let copied = client
                    .copy_range(src, offset_in, dst, offset_out, len)
                    .await?;
                Ok(copied.len as u32)
            },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // What a local file system says to terminal ioctls probing a regular file.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel has already checked the mode bits.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (client, name, who) = (self.client_for(req), name_of(name), owner(req));
        let perm = (mode & !umask & 0o7777) as u16;
        let append = flags & libc::O_APPEND != 0;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = self.new_handle();
        let files = self.files_handle();
        let atime = self.atime;
        let (kernel, start, handed) = (self.kernel.clone(), self.kernel.start(), name.clone());
        // In a directory delegated here: answered at once, sent to the namenode later.
        let file = new_file(parent, &name, perm, flags, who);
        let queued = {
            let _runtime = self.rt.enter();
            client.create_queued(&file)
        };
        let queued = match queued {
            Some(Ok((attr, file))) => Some((attr, file)),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => None,
        };
        self.run(
            async move {
                let file = new_file(parent, &name, perm, flags, who);
                let made = match queued {
                    Some(made) => Some(made),
                    // Not delegated: asked for first (once in a while), for this create
                    // and the next ones.
                    None if client.delegate(file.parent).await => {
                        client.create_queued(&file).transpose()?
                    }
                    None => None,
                };
                let (attr, shared, file) = match made {
                    Some((attr, file)) => (attr, false, file),
                    None => {
                        let (created, file) = client.create_open(file).await?;
                        (created.attr, created.shared, file)
                    }
                };
                let file = OpenFile::new(file, append, atime);
                register(&files, fh, attr.ino, writable, file);
                Ok((attr, shared))
            },
            move |r| match r {
                Ok((a, shared)) => {
                    let ttl = kernel.ttl(start);
                    kernel.handed(Ino(parent.0), &handed, ttl);
                    // See `reply_opened`.
                    let flags = match shared {
                        true => FopenFlags::FOPEN_DIRECT_IO,
                        false => FopenFlags::empty(),
                    };
                    reply.created(&ttl, &file_attr(&a), Generation(0), FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }
}

/// What a `create` of `name` in `parent` with `open(2)`'s `flags` makes.
fn new_file(
    parent: INodeNo,
    name: &[u8],
    perm: u16,
    flags: i32,
    owner: Owner,
) -> cairn_client::NewFile<'_> {
    cairn_client::NewFile {
        parent: Ino(parent.0),
        name,
        perm,
        exclusive: flags & libc::O_EXCL != 0,
        truncate: flags & libc::O_TRUNC != 0,
        owner,
    }
}

/// Records a read of `ino` in its access time, in the background: the read does not wait
/// for a durable write.
/// Not once the mount on `mountpoint` is remounted read-only (`mount -o remount,ro`).
fn record_access(rt: &Handle, reader: Client, ino: Ino, mountpoint: Arc<std::path::PathBuf>) {
    rt.spawn(async move {
        let read_only = mount_flags_of(&mountpoint)
            .ok()
            .flatten()
            .is_some_and(|flags| flags.iter().any(|f| f == "ro"));
        if read_only {
            return;
        }
        if let Err(e) = reader.accessed(ino).await {
            tracing::debug!("access time of {ino} not recorded: {e}");
        }
    });
}

/// Files open `ino` under handle `fh`.
fn register(files: &FileTable, fh: u64, ino: Ino, writable: bool, file: OpenFile) {
    let open = Arc::new(tokio::sync::Mutex::new(file));
    files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(fh, (ino, writable, open));
}

fn reply_data(r: FsResult<impl AsRef<[u8]>>, reply: ReplyData) {
    match r {
        Ok(data) => reply.data(data.as_ref()),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Answers an open; a file `shared` with another mount's writes is read and written past
/// the kernel's page cache (which cannot follow changes made on other machines to pages
/// mapped into memory), so shared mappings of it are refused (`ENODEV`): SQLite's WAL index
/// on a second mount fails loudly rather than corrupting the database.
fn reply_opened(r: FsResult<bool>, fh: u64, reply: ReplyOpen) {
    match r {
        Ok(false) => reply.opened(FileHandle(fh), FopenFlags::empty()),
        Ok(true) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
        Err(e) => reply.error(errno(&e)),
    }
}

/// The lock a kernel request describes; `None` for an unknown lock type.
fn lock_range(typ: i32, start: u64, end: u64, pid: u32) -> Option<LockRange> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    Some(LockRange {
        start,
        end,
        kind,
        pid,
    })
}

fn reply_xattr(r: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}
