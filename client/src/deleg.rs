//! Directory delegations: creates and unlinks answered here, sent to the namenode later.
//!
//! A client that reads the change feed may ask the namenode for a directory's delegation
//! (`proto::Delegate`): the namenode then promises that nobody else looks into the
//! directory or changes it before this client has sent every change it made there. With
//! it, and with the directory's names (the grant lists them) and inode numbers handed out
//! ahead (`proto::ReserveInos`), a create of a new name or an unlink of a name is answered
//! here at once, as the CephFS kernel client does with its async dirops, and queued; a
//! sender sends the queue in order, in batches (`proto::Queued`), one batch in flight.
//!
//! - Every other request to the namenode waits until the queue is empty (`Client::namenode`),
//!   so nothing this client asks or changes can overtake what it answered before.
//! - When another client comes to the directory, the namenode recalls the delegation
//!   through the feed (`Change::Recall`): the feed reader drops it, waits for the queue to
//!   empty, and only then reads on — which is what the other client's request waits for.
//! - A delegation is used only while the feed is read (within [`LEASE_TRUST`] of the last
//!   complete read asked for) through the connection it was given to: a client that stops
//!   reading is given up on by the namenode after twice that, and what it sends after is
//!   refused.
//! - A queued change the namenode refuses (the delegation ended first, the disk is full…)
//!   is logged, reported by the next `fsync` of its file or directory, and a file whose
//!   create failed fails every later I/O with `EIO`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::attr::{
    Caller, DirEntry, FileKind, InodeAttr, SetAttr, TimeSet, Timestamp, NAME_MAX,
};
use cairn_common::proto::{self, QueuedDone, QueuedOp};
use cairn_common::{FsError, Ino};
use tokio::sync::Notify;

/// Changes queued and not yet answered by the namenode at most; past it, changes go to the
/// namenode directly (after the queue).
const MAX_UNANSWERED: usize = 4096;
/// Changes in one batch at most.
const MAX_BATCH: usize = 512;
/// Inode numbers asked for at a time, and the stock below which more are asked for.
const INOS_AT_ONCE: u32 = 1024;
const INOS_LOW: usize = 256;
/// A directory's delegation is asked for at most this often.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// Queued changes that failed, remembered for the next fsync, at most.
const MAX_FAILED: usize = 65_536;

/// A name's inode and kind.
type Entry = (Ino, FileKind);

#[derive(Default)]
pub(crate) struct Delegations {
    state: Mutex<State>,
    /// Wakes the sender.
    work: Notify,
    /// Wakes those waiting for the queue to empty.
    drained: Notify,
}

#[derive(Default)]
struct State {
    dirs: HashMap<Ino, Dir>,
    /// When each directory's delegation was last asked for.
    asked: HashMap<Ino, Instant>,
    /// Recalls read from the feed, by directory: (run, position). A grant given before
    /// its position is void.
    recalled: HashMap<Ino, (u64, u64)>,
    inos: VecDeque<u64>,
    reserving: bool,
    /// Datanodes for the first small block of files created here (the namenode's offer
    /// with the last inode numbers).
    offer: Vec<proto::DatanodeAddr>,
    queue: Vec<proto::QueuedChange>,
    /// Queued changes the namenode has not answered yet (queued, or in a batch on its way).
    unanswered: usize,
    sender: bool,
    /// Files created here that the namenode has not answered for yet.
    created: HashMap<Ino, InodeAttr>,
    /// Files and directories with a queued change that failed, with the error.
    failed: HashMap<Ino, FsError>,
    /// Files created under a delegation this client still holds and changed since by this
    /// client alone: the directory, and their attributes as those changes left them.
    born: HashMap<Ino, (Ino, InodeAttr)>,
    /// Queued commits and attribute changes not answered yet, by file.
    committing: HashMap<Ino, u32>,
    /// What must live until the queued change it came with is answered (the guards of
    /// uploaded blocks that keep them out of the collector's reach), by the change's number.
    keep: VecDeque<(u64, Box<dyn Send>)>,
    /// The map changes queued commits began (`FreshAttrs::map_changing`), ended when each
    /// is answered: by the change's number.
    asks: VecDeque<(u64, Ino, crate::fresh::MapAsk)>,
    /// Numbers of changes queued so far.
    pushed: u64,
}

struct Dir {
    attr: InodeAttr,
    names: HashMap<Vec<u8>, Entry>,
    /// The connection it was given to, in which namenode run.
    holder: u64,
    epoch: u64,
}

/// What a lookup in a delegated directory finds.
pub enum Found {
    Absent,
    /// The name's inode, with its attributes when they are known here.
    Present(Ino, Option<InodeAttr>),
}

impl State {
    /// `dir`'s delegation, if it may be used: the feed is read through its holder.
    fn usable(&mut self, dir: Ino, reader: Option<u64>) -> Option<&mut Dir> {
        match self.dirs.get_mut(&dir) {
            Some(d) if Some(d.holder) == reader => Some(d),
            _ => None,
        }
    }

    /// Removes `name` from delegated `dir` (a subdirectory's: one link less): the run of
    /// its delegation.
    fn drop_name(
        &mut self,
        reader: Option<u64>,
        dir: Ino,
        name: &[u8],
        subdir: bool,
    ) -> Option<u64> {
        let d = self.usable(dir, reader)?;
        d.names.remove(name);
        let now = Timestamp::now();
        if subdir {
            d.attr.nlink = d.attr.nlink.saturating_sub(1);
        }
        d.attr.mtime = now;
        d.attr.ctime = now;
        Some(d.epoch)
    }

    /// One of `ino`'s queued commits or attribute changes was answered.
    fn settled_one(&mut self, ino: Ino) {
        if let Some(n) = self.committing.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.committing.remove(&ino);
            }
        }
    }

    fn fail(&mut self, ino: Ino, e: FsError) {
        if self.failed.len() < MAX_FAILED {
            self.failed.insert(ino, e);
        }
    }
}

impl Delegations {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is any change queued or on its way?
    pub fn busy(&self) -> bool {
        self.state().unanswered > 0
    }

    /// Waits until every queued change is answered.
    pub async fn drained(&self) {
        loop {
            let woken = self.drained.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.state().unanswered == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Should a delegation of `dir` be asked for now? Marks it asked.
    pub fn should_ask(&self, dir: Ino) -> bool {
        let mut s = self.state();
        if s.dirs.contains_key(&dir) || s.asked.get(&dir).is_some_and(|t| t.elapsed() < ASK_EVERY) {
            return false;
        }
        if s.asked.len() > 4096 {
            s.asked.retain(|_, t| t.elapsed() < ASK_EVERY);
        }
        s.asked.insert(dir, Instant::now());
        true
    }

    /// Should more inode numbers be asked for now? Marks them asked for.
    pub fn should_reserve(&self) -> Option<u32> {
        let mut s = self.state();
        if s.reserving || s.inos.len() >= INOS_LOW {
            return None;
        }
        s.reserving = true;
        Some(INOS_AT_ONCE)
    }

    pub fn reserved(&self, range: Option<proto::InoRange>) {
        let mut s = self.state();
        s.reserving = false;
        if let Some(r) = range {
            s.inos.extend(r.first..r.first + u64::from(r.count));
            s.offer = r.place;
        }
    }

    /// A delegation the namenode granted, unless a recall of it was read since.
    pub fn granted(&self, dir: Ino, g: proto::Granted) -> bool {
        let mut s = self.state();
        if s.recalled
            .get(&dir)
            .is_some_and(|&(epoch, at)| epoch == g.epoch && at >= g.from)
        {
            return false;
        }
        let names = g
            .names
            .into_iter()
            .map(|e| (e.name, (e.ino, e.kind)))
            .collect();
        s.dirs.insert(
            dir,
            Dir {
                attr: g.attr,
                names,
                holder: g.holder,
                epoch: g.epoch,
            },
        );
        true
    }

    /// The namenode recalled `dir`'s delegation at `position` of run `epoch`.
    pub fn recalled(&self, dir: Ino, epoch: u64, position: u64) {
        let mut s = self.state();
        if s.dirs.remove(&dir).is_some() {
            tracing::debug!("the delegation of directory {dir} is recalled");
            s.born.retain(|_, (d, _)| *d != dir);
        }
        if s.recalled.len() > 4096 {
            s.recalled.clear();
        }
        s.recalled.insert(dir, (epoch, position));
    }

    /// The namenode forgot every delegation and reservation (it restarted, or this client
    /// reads through another connection).
    pub fn drop_all(&self) {
        let mut s = self.state();
        if !s.dirs.is_empty() {
            tracing::debug!("every delegation dropped");
        }
        s.born.clear();
        s.dirs.clear();
        s.inos.clear();
    }

    /// Answers a create of `name` in `dir` here, if `dir` is delegated and usable through
    /// `reader`: `None` when the namenode must be asked. The new file's attributes come
    /// with the queued op to send.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        dir: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
        exclusive: bool,
        claim: impl FnOnce() -> proto::OpenClaim,
    ) -> Option<Result<InodeAttr, FsError>> {
        if !plain_name(name) {
            return None;
        }
        let mut s = self.state();
        if s.unanswered >= MAX_UNANSWERED || s.inos.is_empty() {
            tracing::trace!(
                unanswered = s.unanswered,
                inos = s.inos.len(),
                "create asks the namenode"
            );
            return None;
        }
        let d = s.usable(dir, reader)?;
        if d.names.contains_key(name) {
            return exclusive.then_some(Err(FsError::Exists));
        }
        if !may_change(caller, &d.attr) {
            // The kernel checked the process's own ids; a squashed caller the namenode
            // judges (and refuses) before anything is answered.
            return None;
        }
        let now = Timestamp::now();
        let perm = perm & 0o7777;
        let mut gid = gid;
        if d.attr.perm & 0o2000 != 0 {
            gid = d.attr.gid;
        }
        let replication = d.attr.replication;
        let epoch = d.epoch;
        d.attr.mtime = now;
        d.attr.ctime = now;
        let ino = Ino(s.inos.pop_front()?);
        let attr = InodeAttr {
            ino,
            kind: FileKind::File,
            perm,
            uid,
            gid,
            size: 0,
            nlink: 1,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            replication,
            stored: 0,
        };
        if let Some(d) = s.usable(dir, reader) {
            d.names.insert(name.to_vec(), (ino, FileKind::File));
        }
        s.born.insert(ino, (dir, attr.clone()));
        s.created.insert(ino, attr.clone());
        let op = QueuedOp::Create(proto::Create {
            parent: dir,
            name: name.to_vec(),
            perm,
            uid,
            gid: attr.gid,
            exclusive: true,
            truncate: false,
            open: Some(claim()),
            ino: Some(ino),
            at: Some(now),
        });
        self.push(&mut s, caller, epoch, op);
        Some(Ok(attr))
    }

    /// Answers an unlink of `name` in `dir` here, if `dir` is delegated and usable through
    /// `reader` and the name is not a directory's nor a file `held` here: `None` when the
    /// namenode must be asked. The inode the name named comes back.
    pub fn unlink(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        dir: Ino,
        name: &[u8],
        held: impl Fn(Ino) -> bool,
    ) -> Option<Result<Ino, FsError>> {
        let (mut s, found) = self.removing(reader, caller, dir, name)?;
        let Some((ino, kind)) = found else {
            return Some(Err(FsError::NotFound));
        };
        if kind == FileKind::Dir || held(ino) {
            return None;
        }
        let epoch = s.drop_name(reader, dir, name, false)?;
        s.created.remove(&ino);
        s.born.remove(&ino);
        let op = QueuedOp::Unlink(proto::Unlink {
            parent: dir,
            name: name.to_vec(),
        });
        self.push(&mut s, caller, epoch, op);
        Some(Ok(ino))
    }

    /// Answers an rmdir of `name` in `dir` here, if `dir` and the directory `name` names
    /// are both delegated and usable through `reader` (so every name of both is known
    /// here): `None` when the namenode must be asked. The directory's delegation ends.
    pub fn rmdir(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        dir: Ino,
        name: &[u8],
    ) -> Option<Result<Ino, FsError>> {
        let (mut s, found) = self.removing(reader, caller, dir, name)?;
        let Some((ino, kind)) = found else {
            return Some(Err(FsError::NotFound));
        };
        if kind != FileKind::Dir {
            return None;
        }
        if !s.usable(ino, reader)?.names.is_empty() {
            return Some(Err(FsError::NotEmpty));
        }
        s.dirs.remove(&ino);
        s.born.retain(|_, (d, _)| *d != ino);
        let epoch = s.drop_name(reader, dir, name, true)?;
        let op = QueuedOp::Rmdir(proto::Rmdir {
            parent: dir,
            name: name.to_vec(),
        });
        self.push(&mut s, caller, epoch, op);
        Some(Ok(ino))
    }

    /// For a removal of `name` from `dir` answered here: the state, and what the name
    /// names (nothing: `ENOENT`, every name being known). `None` when the namenode must
    /// be asked: a name it judges, a full queue, `dir` not delegated and usable through
    /// `reader`, a caller that may not surely remove names there (the sticky bit's owners
    /// the namenode judges).
    fn removing(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        dir: Ino,
        name: &[u8],
    ) -> Option<(std::sync::MutexGuard<'_, State>, Option<Entry>)> {
        if !plain_name(name) {
            return None;
        }
        let mut s = self.state();
        if s.unanswered >= MAX_UNANSWERED {
            return None;
        }
        let d = s.usable(dir, reader)?;
        if !may_change(caller, &d.attr) || d.attr.perm & 0o1000 != 0 {
            return None;
        }
        let found = d.names.get(name).copied();
        Some((s, found))
    }

    fn push(&self, s: &mut State, caller: &Caller, epoch: u64, op: QueuedOp) {
        s.pushed += 1;
        s.queue.push(proto::QueuedChange {
            caller: caller.clone(),
            epoch,
            op,
        });
        s.unanswered += 1;
        self.work.notify_one();
    }

    /// Queues the commit of `commit.ino`'s slices, if the file was created here under a
    /// delegation still held and usable through `reader` (nobody else can see it): its
    /// attributes after the commit (`attr` as they were). `keep` lives until the commit is
    /// answered. The commit back when it must go to the namenode.
    #[allow(clippy::type_complexity)]
    pub fn commit(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        attr: &InodeAttr,
        commit: proto::CommitSlices,
        keep: Box<dyn Send>,
        ask: crate::fresh::MapAsk,
    ) -> Result<InodeAttr, (proto::CommitSlices, Box<dyn Send>)> {
        let mut s = self.state();
        let Some((dir, born)) = s.born.get(&commit.ino).cloned() else {
            return Err((commit, keep));
        };
        if s.unanswered >= MAX_UNANSWERED || s.failed.contains_key(&commit.ino) {
            return Err((commit, keep));
        }
        let Some(d) = s.usable(dir, reader) else {
            return Err((commit, keep));
        };
        let epoch = d.epoch;
        // What this client's earlier queued changes made of it (a handle's `attr` may
        // predate a change of mode or times made meanwhile).
        let mut after = born;
        after.size = after.size.max(attr.size).max(commit.size);
        // What the namenode will count: the bytes the new slices cover (more only where
        // they overlap), never past the size. Its answer replaces this.
        let written: u64 = commit.slices.iter().map(|(_, s)| s.len as u64).sum();
        after.stored = after.stored.saturating_add(written).min(after.size);
        after.mtime = commit.mtime;
        after.ctime = Timestamp::now();
        if let Some(created) = s.created.get_mut(&commit.ino) {
            *created = after.clone();
        }
        s.born.insert(commit.ino, (dir, after.clone()));
        *s.committing.entry(commit.ino).or_default() += 1;
        let op = QueuedOp::Commit { dir, commit };
        self.push(&mut s, caller, epoch, op);
        let number = s.pushed;
        s.keep.push_back((number, keep));
        s.asks.push_back((number, after.ino, ask));
        Ok(after)
    }

    /// Answers a change of `ino`'s mode, owner or times here, if the file was created here
    /// under a delegation still held and usable through `reader`, and `caller` surely may
    /// make the change (see [`settled`]): `None` when the namenode must be asked. The
    /// file's attributes after it.
    pub fn setattr(
        &self,
        reader: Option<u64>,
        caller: &Caller,
        ino: Ino,
        set: &SetAttr,
    ) -> Option<InodeAttr> {
        let mut s = self.state();
        if s.unanswered >= MAX_UNANSWERED || s.failed.contains_key(&ino) {
            return None;
        }
        let (dir, attr) = s.born.get(&ino).cloned()?;
        let epoch = s.usable(dir, reader)?.epoch;
        let (after, set) = settled(caller, &attr, set, Timestamp::now())?;
        s.born.insert(ino, (dir, after.clone()));
        if let Some(created) = s.created.get_mut(&ino) {
            *created = after.clone();
        }
        *s.committing.entry(ino).or_default() += 1;
        self.push(&mut s, caller, epoch, QueuedOp::SetAttr { dir, ino, set });
        Some(after)
    }

    /// `ino` changed through the namenode: what is kept here of its attributes no longer
    /// follows it, and its changes go to the namenode from now on.
    pub fn unborn(&self, ino: Ino) {
        let mut s = self.state();
        if !s.born.is_empty() {
            s.born.remove(&ino);
        }
    }

    /// The map changes begun by the queued commits up to number `last`, now answered.
    pub fn answered_asks(&self, last: u64) -> Vec<(Ino, crate::fresh::MapAsk)> {
        let mut s = self.state();
        let mut out = Vec::new();
        while s.asks.front().is_some_and(|(n, _, _)| *n <= last) {
            if let Some((_, ino, ask)) = s.asks.pop_front() {
                out.push((ino, ask));
            }
        }
        out
    }

    /// How many commits of `ino` are queued or on their way.
    pub fn commits_pending(&self, ino: Ino) -> u32 {
        self.state().committing.get(&ino).copied().unwrap_or(0)
    }

    /// Is a commit of `ino` queued or on its way?
    pub fn committing(&self, ino: Ino) -> bool {
        self.state().committing.contains_key(&ino)
    }

    /// Does the sender need starting? Marks it started.
    pub fn start_sender(&self) -> bool {
        let mut s = self.state();
        !std::mem::replace(&mut s.sender, true)
    }

    /// What `name` in `dir` is, if `dir` is delegated and usable through `reader`.
    pub fn lookup(&self, reader: Option<u64>, dir: Ino, name: &[u8]) -> Option<Found> {
        if !plain_name(name) {
            return None;
        }
        let mut s = self.state();
        let ino = match s.usable(dir, reader)?.names.get(name) {
            None => return Some(Found::Absent),
            Some(&(ino, _)) => ino,
        };
        let attr = s
            .created
            .get(&ino)
            .or(s.born.get(&ino).map(|b| &b.1))
            .cloned();
        Some(Found::Present(ino, attr))
    }

    /// `ino`'s attributes as kept here: a file created here the namenode has not answered
    /// for yet, one created under a delegation still held and changed by nobody else since,
    /// or a delegated directory.
    pub fn attr(&self, reader: Option<u64>, ino: Ino) -> Option<InodeAttr> {
        let mut s = self.state();
        if let Some(a) = s.created.get(&ino) {
            return Some(a.clone());
        }
        if let Some((dir, a)) = s.born.get(&ino).cloned() {
            if s.usable(dir, reader).is_some() {
                return Some(a);
            }
        }
        s.usable(ino, reader).map(|d| d.attr.clone())
    }

    /// `dir`'s names with their attributes, sorted by name, as a listing from the namenode
    /// would have them, if `dir` is delegated and usable through `reader`, `caller` may read
    /// it, and every name's attributes are known here (files made here and changed by
    /// nobody else, directories delegated here): `None` when the namenode must be asked.
    pub fn listing(&self, reader: Option<u64>, caller: &Caller, dir: Ino) -> Option<Vec<DirEntry>> {
        let mut s = self.state();
        let d = s.usable(dir, reader)?;
        if !may_read(caller, &d.attr) {
            return None;
        }
        let holder = d.holder;
        let names: Vec<_> = d.names.iter().map(|(n, e)| (n.clone(), *e)).collect();
        let mut out = Vec::with_capacity(names.len());
        for (name, (ino, kind)) in names {
            let attr = match s.created.get(&ino).or(s.born.get(&ino).map(|b| &b.1)) {
                Some(a) => a.clone(),
                None => match s.dirs.get(&ino) {
                    Some(sub) if sub.holder == holder => sub.attr.clone(),
                    _ => return None,
                },
            };
            out.push(DirEntry {
                name,
                ino,
                kind,
                attr: Some(attr),
            });
        }
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Some(out)
    }

    /// Is `ino` a file created under a delegation still held, changed by nobody else since?
    /// It has no extended attributes: setting one goes through the namenode, which ends
    /// this (`unborn`).
    pub fn is_born(&self, ino: Ino) -> bool {
        let s = self.state();
        !s.born.is_empty() && s.born.contains_key(&ino)
    }

    /// A change this client made in `dir` through the namenode while it held the
    /// delegation: the name now names `added`, or nothing. The files it named before and
    /// names now changed through the namenode (a name removed while the file is open here,
    /// replaced, renamed): what is kept here of their attributes no longer follows them.
    pub fn own_change(&self, dir: Ino, name: &[u8], added: Option<(Ino, FileKind)>) {
        let mut s = self.state();
        if let Some(d) = s.dirs.get_mut(&dir) {
            let before = match added {
                Some(entry) => d.names.insert(name.to_vec(), entry),
                None => d.names.remove(name),
            };
            for (ino, _) in before.into_iter().chain(added) {
                s.born.remove(&ino);
            }
        }
    }

    /// This client changed `dir` in a way its delegation here cannot follow: it is not
    /// used any more (the namenode's recall finds it dropped).
    pub fn forget_dir(&self, dir: Ino) {
        let mut s = self.state();
        if s.dirs.remove(&dir).is_some() {
            tracing::debug!("the delegation of directory {dir} is let go");
            s.born.retain(|_, (d, _)| *d != dir);
        }
    }

    /// `dir`'s attributes after this client's own change through the namenode.
    pub fn own_dir_attr(&self, attr: &InodeAttr) {
        if let Some(d) = self.state().dirs.get_mut(&attr.ino) {
            d.attr = attr.clone();
        }
    }

    /// Where the first small block of a file created here may go ahead of its placement.
    pub fn offer(&self, replication: u8) -> Vec<proto::DatanodeAddr> {
        let s = self.state();
        s.offer.iter().take(replication as usize).cloned().collect()
    }

    /// A file created here whose create the namenode has not answered yet.
    pub fn created(&self, ino: Ino) -> Option<InodeAttr> {
        self.state().created.get(&ino).cloned()
    }

    /// The error a queued change of `ino` (a file created, a directory changed) met, once.
    pub fn take_failure(&self, ino: Ino) -> Option<FsError> {
        self.state().failed.remove(&ino)
    }

    /// Did the queued create of `ino` fail? Its I/O then fails.
    pub fn failed(&self, ino: Ino) -> bool {
        let s = self.state();
        !s.failed.is_empty() && s.failed.contains_key(&ino)
    }

    /// The next batch to send, waiting for one, with the number of its last change.
    pub async fn next_batch(&self) -> (Vec<proto::QueuedChange>, u64) {
        loop {
            let woken = self.work.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut s = self.state();
                if !s.queue.is_empty() {
                    let n = s.queue.len().min(MAX_BATCH);
                    let last = s.pushed - (s.queue.len() - n) as u64;
                    return (s.queue.drain(..n).collect(), last);
                }
            }
            woken.await;
        }
    }

    /// What the namenode made of a batch (`done`, in order, or one error for all) whose
    /// last change was number `last`.
    pub fn answered(
        &self,
        sent: &[proto::QueuedChange],
        last: u64,
        done: &Result<Vec<QueuedDone>, FsError>,
    ) {
        let mut s = self.state();
        while s.keep.front().is_some_and(|(n, _)| *n <= last) {
            s.keep.pop_front();
        }
        for (i, change) in sent.iter().enumerate() {
            let op = &change.op;
            let err = match done {
                Ok(done) => match done.get(i) {
                    // Gone already, as the program was told (an unlink sent again after
                    // its answer was lost, or the name's file removed meanwhile).
                    Some(QueuedDone::Removed(Err(FsError::NotFound))) => None,
                    Some(QueuedDone::Created(Err(e)))
                    | Some(QueuedDone::Removed(Err(e)))
                    | Some(QueuedDone::Committed(Err(e)))
                    | Some(QueuedDone::Attr(Err(e))) => Some(e.clone()),
                    Some(_) => None,
                    None => Some(FsError::protocol("the namenode answered fewer changes")),
                },
                Err(e) => Some(e.clone()),
            };
            match op {
                QueuedOp::Create(c) => {
                    let ino = c.ino.unwrap_or(Ino(0));
                    s.created.remove(&ino);
                    if let Some(e) = err {
                        tracing::error!(
                            dir = %c.parent,
                            name = %String::from_utf8_lossy(&c.name),
                            "a create answered here failed at the namenode: {e}; the file's I/O fails"
                        );
                        if let Some(d) = s.dirs.get_mut(&c.parent) {
                            if d.names.get(&c.name).is_some_and(|(i, _)| *i == ino) {
                                d.names.remove(&c.name);
                            }
                        }
                        s.born.remove(&ino);
                        s.fail(ino, e.clone());
                        s.fail(c.parent, e);
                    }
                }
                QueuedOp::SetAttr { ino, .. } => {
                    s.settled_one(*ino);
                    if let Some(e) = err {
                        tracing::error!(
                            file = %ino,
                            "an attribute change answered here failed at the namenode: {e}; the file's I/O fails"
                        );
                        s.born.remove(ino);
                        s.fail(*ino, e);
                    }
                }
                QueuedOp::Commit { commit, .. } => {
                    let ino = commit.ino;
                    s.settled_one(ino);
                    if let Some(e) = err {
                        tracing::error!(
                            file = %ino,
                            "a close answered here failed to commit the file's data at the namenode: {e}; the file's I/O fails"
                        );
                        s.born.remove(&ino);
                        s.fail(ino, e);
                    }
                }
                QueuedOp::Unlink(proto::Unlink { parent, name })
                | QueuedOp::Rmdir(proto::Rmdir { parent, name }) => {
                    if let Some(e) = err {
                        tracing::error!(
                            dir = %parent,
                            name = %String::from_utf8_lossy(name),
                            "a removal answered here failed at the namenode: {e}"
                        );
                        // What the name is now, the namenode says.
                        s.dirs.remove(parent);
                        s.fail(*parent, e);
                    }
                }
            }
        }
        s.unanswered -= sent.len();
        if s.unanswered == 0 {
            self.drained.notify_waiters();
        }
    }
}

/// May `caller` add and remove names in directory `attr`? As the namenode's check. The
/// kernel checked the process's own ids (`default_permissions`), which a squashed caller's
/// are not.
fn may_change(caller: &Caller, attr: &InodeAttr) -> bool {
    caller.may(attr, 2 | 1)
}

/// May `caller` read directory `attr` (list its names)? As the namenode's check.
fn may_read(caller: &Caller, attr: &InodeAttr) -> bool {
    caller.may(attr, 4)
}

/// `attr` after `set`, and `set` with "now" made the time it is, when `caller` surely may
/// make the change: the namenode's checks (`ops::setattr`) for the owner or root. `None`
/// for anything else, which the namenode judges: a change of size, of the owner by
/// anyone but root, to a group the owner is not in, of mode or times by another user.
fn settled(
    caller: &Caller,
    attr: &InodeAttr,
    set: &SetAttr,
    now: Timestamp,
) -> Option<(InodeAttr, SetAttr)> {
    let root = caller.uid == 0;
    let owner = caller.uid == attr.uid;
    let in_group = |gid: u32| caller.gid == gid || caller.groups.contains(&gid);
    let refused = set.size.is_some()
        || !(root || owner)
        || set.uid.is_some_and(|u| u != attr.uid && !root)
        || set
            .gid
            .is_some_and(|g| g != attr.gid && !root && !in_group(g));
    if refused {
        return None;
    }
    let at = |t: TimeSet| {
        TimeSet::At(match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        })
    };
    let set = SetAttr {
        atime: set.atime.map(at),
        mtime: set.mtime.map(at),
        ..set.clone()
    };
    let mut after = attr.clone();
    if let Some(perm) = set.perm {
        let mut perm = perm & 0o7777;
        // A non-root owner outside the file's group cannot keep it setgid.
        if !root && !in_group(attr.gid) && attr.kind != FileKind::Dir {
            perm &= !0o2000;
        }
        after.perm = perm;
    }
    after.uid = set.uid.unwrap_or(after.uid);
    after.gid = set.gid.unwrap_or(after.gid);
    if let Some(TimeSet::At(t)) = set.atime {
        after.atime = t;
    }
    if let Some(TimeSet::At(t)) = set.mtime {
        after.mtime = t;
    }
    after.ctime = now;
    Some((after, set))
}

/// A name a create or unlink may be answered for here: the namenode's checks of it are
/// the same (a bad name goes to the namenode, which refuses it).
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::attr::DirEntry;

    fn dir_attr(ino: Ino, perm: u16) -> InodeAttr {
        InodeAttr {
            ino,
            kind: FileKind::Dir,
            perm,
            uid: 0,
            gid: 50,
            size: 0,
            nlink: 2,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
            replication: 2,
            stored: 0,
        }
    }

    fn granted(d: &Delegations, dir: Ino, perm: u16, names: &[(&str, u64, FileKind)]) -> bool {
        let names = names
            .iter()
            .map(|(n, ino, kind)| DirEntry {
                name: n.as_bytes().to_vec(),
                ino: Ino(*ino),
                kind: *kind,
                attr: None,
            })
            .collect();
        d.granted(
            dir,
            proto::Granted {
                attr: dir_attr(dir, perm),
                names,
                holder: 7,
                epoch: 1,
                from: 10,
            },
        )
    }

    /// Directory 5 delegated through connection 7, and four inode numbers from 100.
    fn delegated_with_inos() -> (Delegations, Ino) {
        delegated_with_mode(0o755)
    }

    /// A directory of root's with mode `perm`, delegated, and four inode numbers.
    fn delegated_with_mode(perm: u16) -> (Delegations, Ino) {
        let d = Delegations::default();
        let dir = Ino(5);
        assert!(granted(&d, dir, perm, &[]));
        d.reserved(Some(proto::InoRange {
            first: 100,
            count: 4,
            place: Vec::new(),
        }));
        (d, dir)
    }

    /// A create of `name` in `dir` by root through connection 7, for owner `uid:gid`.
    fn create_as_root(
        d: &Delegations,
        dir: Ino,
        name: &str,
        (uid, gid): (u32, u32),
        exclusive: bool,
    ) -> Option<Result<InodeAttr, FsError>> {
        let name = name.as_bytes();
        d.create(
            Some(7),
            &Caller::ROOT,
            dir,
            name,
            0o644,
            uid,
            gid,
            exclusive,
            claim,
        )
    }

    /// A new file `name` in `dir`, made by root through connection 7: answered here.
    fn made_by_root(d: &Delegations, dir: Ino, name: &str) -> InodeAttr {
        create_as_root(d, dir, name, (0, 0), true)
            .expect("answered here")
            .expect("made")
    }

    fn claim() -> proto::OpenClaim {
        proto::OpenClaim { session: 1, gen: 1 }
    }

    #[test]
    fn an_rmdir_is_answered_here_when_both_directories_are_delegated() {
        let d = Delegations::default();
        let dir = Ino(5);
        let names = [
            ("f", 40, FileKind::File),
            ("sub", 41, FileKind::Dir),
            ("other", 42, FileKind::Dir),
        ];
        assert!(granted(&d, dir, 0o755, &names));
        assert!(granted(&d, Ino(41), 0o755, &[("x", 50, FileKind::File)]));
        let rmdir = |name: &str| d.rmdir(Some(7), &Caller::ROOT, dir, name.as_bytes());
        assert!(rmdir("f").is_none(), "not a directory: the namenode says");
        assert!(rmdir("other").is_none(), "a directory not delegated here");
        assert!(d.rmdir(Some(8), &Caller::ROOT, dir, b"sub").is_none());
        assert!(matches!(rmdir("zz"), Some(Err(FsError::NotFound))));
        assert!(matches!(rmdir("sub"), Some(Err(FsError::NotEmpty))));
        assert!(d
            .unlink(Some(7), &Caller::ROOT, Ino(41), b"x", |_| false)
            .is_some());
        assert_eq!(rmdir("sub").unwrap().unwrap(), Ino(41));
        assert!(matches!(
            d.lookup(Some(7), dir, b"sub"),
            Some(Found::Absent)
        ));
        assert!(d.lookup(Some(7), Ino(41), b"x").is_none(), "no longer held");
        assert_eq!(d.attr(Some(7), dir).unwrap().nlink, 1);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (batch, _) = rt.block_on(d.next_batch());
        assert!(matches!(&batch[0].op, QueuedOp::Unlink(u) if u.parent == Ino(41)));
        assert!(matches!(&batch[1].op, QueuedOp::Rmdir(r) if r.parent == dir && r.name == b"sub"));
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn creates_and_unlinks_are_answered_from_the_names_and_queued_in_order() {
        let d = Delegations::default();
        let dir = Ino(5);
        let create = |name: &str, exclusive| create_as_root(&d, dir, name, (3, 4), exclusive);
        assert!(granted(
            &d,
            dir,
            0o2775,
            &[("old", 40, FileKind::File), ("sub", 41, FileKind::Dir)]
        ));
        // No inode numbers yet: the namenode is asked.
        assert!(create("a", true).is_none());
        d.reserved(Some(proto::InoRange {
            first: 100,
            count: 2,
            place: Vec::new(),
        }));
        // Through another connection, or with a name the namenode must judge: asked too.
        assert!(d
            .create(Some(8), &Caller::ROOT, dir, b"a", 0o644, 3, 4, true, claim)
            .is_none());
        assert!(create("..", true).is_none());
        let a = create("a", true).unwrap().unwrap();
        assert_eq!(
            (a.ino, a.uid, a.gid, a.perm, a.nlink),
            (Ino(100), 3, 50, 0o644, 1)
        );
        assert_eq!(a.replication, 2, "the directory's replication");
        assert!(matches!(create("old", true), Some(Err(FsError::Exists))));
        assert!(
            create("old", false).is_none(),
            "opening an existing file asks"
        );
        assert!(matches!(
            d.lookup(Some(7), dir, b"a"),
            Some(Found::Present(Ino(100), Some(_)))
        ));
        assert!(matches!(d.lookup(Some(7), dir, b"zz"), Some(Found::Absent)));
        assert_eq!(d.attr(Some(7), Ino(100)).unwrap().ino, Ino(100));

        // Unlinks: of a directory, or of a file held open here, the namenode is asked.
        assert!(d
            .unlink(Some(7), &Caller::ROOT, dir, b"sub", |_| false)
            .is_none());
        assert!(d
            .unlink(Some(7), &Caller::ROOT, dir, b"old", |_| true)
            .is_none());
        assert!(matches!(
            d.unlink(Some(7), &Caller::ROOT, dir, b"zz", |_| false),
            Some(Err(FsError::NotFound))
        ));
        assert_eq!(
            d.unlink(Some(7), &Caller::ROOT, dir, b"old", |_| false)
                .unwrap()
                .unwrap(),
            Ino(40)
        );
        assert!(matches!(
            d.lookup(Some(7), dir, b"old"),
            Some(Found::Absent)
        ));
        assert!(d.busy());

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (batch, last) = rt.block_on(d.next_batch());
        assert_eq!(last, 2);
        assert!(
            matches!(&batch[0].op, QueuedOp::Create(c) if c.name == b"a" && c.ino == Some(Ino(100)))
        );
        assert!(matches!(&batch[1].op, QueuedOp::Unlink(u) if u.name == b"old"));
        assert_eq!(batch[0].epoch, 1, "the run that gave the delegation");
        assert_eq!(batch.len(), 2);
        // The create refused: reported once for the file and for the directory, and the
        // name no longer answered here.
        let done = Ok(vec![
            QueuedDone::Created(Err(FsError::NoSpace("full".into()))),
            QueuedDone::Removed(Ok(proto::Changed {
                reply: proto::Removed {
                    ino: Ino(40),
                    trash: None,
                },
                dirs: vec![],
            })),
        ]);
        d.answered(&batch, last, &done);
        assert!(!d.busy());
        assert!(d.failed(Ino(100)));
        assert!(matches!(
            d.take_failure(Ino(100)),
            Some(FsError::NoSpace(_))
        ));
        assert!(d.take_failure(Ino(100)).is_none());
        assert!(d.take_failure(dir).is_some());
        assert!(matches!(d.lookup(Some(7), dir, b"a"), Some(Found::Absent)));
        assert!(d.attr(Some(7), Ino(100)).is_none());
    }

    #[test]
    fn a_new_files_commit_is_queued_behind_its_create_and_what_it_keeps_lives_until_answered() {
        let (d, dir) = delegated_with_inos();
        let made = made_by_root(&d, dir, "n");
        let fresh = crate::fresh::FreshAttrs::default();
        let commit = |ino| proto::CommitSlices {
            ino,
            slices: Vec::new(),
            size: 65536,
            mtime: Timestamp { secs: 9, nanos: 0 },
        };
        let kept = std::sync::Arc::new(());
        let after = d
            .commit(
                Some(7),
                &Caller::ROOT,
                &made,
                commit(made.ino),
                Box::new(kept.clone()),
                fresh.map_changing(made.ino),
            )
            .unwrap_or_else(|_| panic!("queued"));
        assert_eq!((after.size, after.mtime.secs), (65536, 9));
        assert_eq!(
            d.attr(Some(7), made.ino).unwrap().size,
            65536,
            "answered here"
        );
        assert!(d.committing(made.ino));
        // A file not made here, or through another connection: sent to the namenode.
        let other = InodeAttr {
            ino: Ino(40),
            ..made.clone()
        };
        let ask = fresh.map_changing(Ino(40));
        assert!(d
            .commit(
                Some(7),
                &Caller::ROOT,
                &other,
                commit(Ino(40)),
                Box::new(()),
                ask
            )
            .is_err());
        let ask = fresh.map_changing(made.ino);
        assert!(d
            .commit(
                Some(8),
                &Caller::ROOT,
                &made,
                commit(made.ino),
                Box::new(()),
                ask
            )
            .is_err());

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (batch, last) = rt.block_on(d.next_batch());
        assert!(matches!(&batch[0].op, QueuedOp::Create(_)));
        assert!(matches!(&batch[1].op, QueuedOp::Commit { dir: Ino(5), .. }));
        assert_eq!(
            std::sync::Arc::strong_count(&kept),
            2,
            "kept while on its way"
        );
        assert_eq!(d.answered_asks(last).len(), 1);
        d.answered(&batch, last, &Err(FsError::unavailable("gone")));
        assert_eq!(
            std::sync::Arc::strong_count(&kept),
            1,
            "let go once answered"
        );
        assert!(!d.committing(made.ino));
        assert!(d.failed(made.ino));
    }

    #[test]
    fn a_caller_who_may_not_change_a_directory_is_left_to_the_namenode() {
        let (d, dir) = delegated_with_inos();
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        // Root's 0755 directory: root (squashed to nobody by the mount) may not add or
        // remove names there, whatever the kernel let through.
        assert!(d
            .create(
                Some(7),
                &nobody,
                dir,
                b"n",
                0o644,
                65534,
                65534,
                true,
                claim
            )
            .is_none());
        assert!(create_as_root(&d, dir, "f", (0, 0), true).unwrap().is_ok());
        assert!(d.unlink(Some(7), &nobody, dir, b"f", |_| false).is_none());
        assert!(d.rmdir(Some(7), &nobody, dir, b"f").is_none());
        // In a sticky directory only the namenode knows whose names may go.
        let (d, dir) = delegated_with_mode(0o1777);
        assert!(create_as_root(&d, dir, "g", (1000, 1000), true)
            .unwrap()
            .is_ok());
        assert!(d.unlink(Some(7), &nobody, dir, b"g", |_| false).is_none());
        assert!(d
            .unlink(Some(7), &Caller::ROOT, dir, b"g", |_| false)
            .is_none());
    }

    #[test]
    fn a_new_files_mode_owner_and_times_are_answered_here_when_the_namenode_would_allow_them() {
        let (d, dir) = delegated_with_mode(0o777);
        let user = Caller {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        let made = d
            .create(Some(7), &user, dir, b"n", 0o600, 1000, 1000, true, claim)
            .unwrap()
            .unwrap();
        let t = Timestamp { secs: 42, nanos: 7 };
        // What tar does to each file it writes: times, owner, mode.
        let set = |f: fn(&mut SetAttr)| {
            let mut s = SetAttr::default();
            f(&mut s);
            s
        };
        let timed = d
            .setattr(
                Some(7),
                &user,
                made.ino,
                &set(|s| s.mtime = Some(TimeSet::At(Timestamp { secs: 42, nanos: 7 }))),
            )
            .expect("the owner sets times");
        assert_eq!(timed.mtime, t);
        let chowned = d
            .setattr(
                Some(7),
                &user,
                made.ino,
                &set(|s| (s.uid, s.gid) = (Some(1000), Some(27))),
            )
            .expect("the owner picks one of their groups");
        assert_eq!((chowned.uid, chowned.gid, chowned.mtime), (1000, 27, t));
        let moded = d
            .setattr(Some(7), &user, made.ino, &set(|s| s.perm = Some(0o2644)))
            .expect("the owner sets the mode");
        assert_eq!(moded.perm, 0o2644, "setgid kept: the owner is in group 27");
        assert_eq!(d.attr(Some(7), made.ino).unwrap().perm, 0o2644);
        // What the namenode must judge: another owner, a group the user is not in, a size,
        // another user's change, through another connection.
        assert!(d
            .setattr(Some(7), &user, made.ino, &set(|s| s.uid = Some(0)))
            .is_none());
        assert!(d
            .setattr(Some(7), &user, made.ino, &set(|s| s.gid = Some(5)))
            .is_none());
        assert!(d
            .setattr(Some(7), &user, made.ino, &set(|s| s.size = Some(0)))
            .is_none());
        let other = Caller {
            uid: 1001,
            gid: 1000,
            groups: Vec::new(),
        };
        assert!(d
            .setattr(Some(7), &other, made.ino, &set(|s| s.perm = Some(0o666)))
            .is_none());
        assert!(d
            .setattr(Some(8), &user, made.ino, &set(|s| s.perm = Some(0o666)))
            .is_none());
        // "Now" travels as the time answered here.
        let now = d
            .setattr(
                Some(7),
                &user,
                made.ino,
                &set(|s| s.atime = Some(TimeSet::Now)),
            )
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (batch, last) = rt.block_on(d.next_batch());
        assert_eq!(batch.len(), 5);
        match &batch[4].op {
            QueuedOp::SetAttr {
                dir: Ino(5),
                ino,
                set,
            } => {
                assert_eq!(*ino, made.ino);
                assert_eq!(set.atime, Some(TimeSet::At(now.atime)));
            }
            other => panic!("{other:?}"),
        }
        assert!(d.committing(made.ino));
        d.answered(&batch, last, &Ok(vec![]));
        assert!(!d.committing(made.ino));
        // Changed through the namenode: its changes go there from now on.
        d.unborn(made.ino);
        assert!(d
            .setattr(Some(7), &user, made.ino, &set(|s| s.perm = Some(0o600)))
            .is_none());
    }

    #[test]
    fn a_delegated_directory_is_listed_here_only_when_every_names_attributes_are_known() {
        let (d, dir) = delegated_with_inos();
        for name in ["b", "a", "c"] {
            made_by_root(&d, dir, name);
        }
        let listed = d
            .listing(Some(7), &Caller::ROOT, dir)
            .expect("all made here");
        let names: Vec<_> = listed.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(listed
            .iter()
            .all(|e| e.attr.as_ref().is_some_and(|a| a.ino == e.ino)));
        // Another connection; a user the directory (0755, root's) lets read; one it does not.
        assert!(d.listing(Some(8), &Caller::ROOT, dir).is_none());
        let user = Caller {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
        };
        assert!(d.listing(Some(7), &user, dir).is_some());
        assert!(granted(&d, Ino(6), 0o700, &[]));
        assert!(d.listing(Some(7), &user, Ino(6)).is_none());
        // A name whose attributes nobody told this client: the namenode lists.
        assert!(granted(&d, Ino(9), 0o755, &[("old", 40, FileKind::File)]));
        assert!(d.listing(Some(7), &Caller::ROOT, Ino(9)).is_none());
    }

    #[test]
    fn a_grant_older_than_a_recall_read_is_void_and_a_recall_ends_the_delegation() {
        let d = Delegations::default();
        let dir = Ino(5);
        d.recalled(dir, 1, 12);
        assert!(!granted(&d, dir, 0o755, &[]), "given before the recall");
        d.recalled(dir, 1, 9);
        assert!(granted(&d, dir, 0o755, &[]));
        assert!(d.lookup(Some(7), dir, b"x").is_some());
        d.recalled(dir, 1, 20);
        assert!(d.lookup(Some(7), dir, b"x").is_none());
        assert!(!granted(&d, dir, 0o755, &[]), "the recall read came after");
        d.drop_all();
        assert!(d.lookup(Some(7), dir, b"x").is_none());
    }
}
