//! Attributes as this client's latest calls to the namenode left them.
//!
//! The kernel voids what it knows of an inode whenever this mount changes it — a directory
//! whose entries change, a file written — and asks again at the next look: a path walk
//! through the directory, the `fstat` after an `open`. The answers to those calls carry the
//! attributes: kept here for as long as the kernel could have kept them itself, they answer
//! the question without another call. Staleness is that of a kernel's attribute cache: what
//! another client changed in the meantime may not show.
//!
//! - A change of directory entries answers with its directories (`Changed<T>`); an `Open`
//!   with the file; a create with the new file, which then has no extended attributes either
//!   (the kernel asks for `security.capability` before the first write of every file).
//! - Every other change of an inode's attributes by this client forgets it; a change of
//!   entries that may reach files it cannot name (unlink, rename, link change `nlink` and
//!   `ctime`) forgets every file.
//! - An answer recorded while such a change was under way could predate it, so it is not
//!   kept: forgetting bumps a sequence number, and a recording made across a bump of what it
//!   records is dropped (forgetting one inode bumps it for that inode, forgetting every file
//!   for all).
//!
//! It also knows the names in directories this client made and has been alone to change:
//! the namenode counts each directory's entry changes, a directory made at count 0 is
//! empty, and while each change of this client moves the count by exactly one, the names
//! it added and removed are all there are. So the lookup the kernel makes before every
//! create (of a name that is not there) needs no call — for less than the TTL since the
//! last count seen, as with the kernel's own negative entries. A directory this client
//! listed whole (`ls`, the kernel's readdir) is followed the same way from the count the
//! listing came with, unless something that may predate the listing came in while it was
//! read: another client's change, or a change of this client's in a directory it does not
//! follow (its count may not show in the listing's yet).
//!
//! And it keeps the maps of files it holds leases on (`ChunkMap::lease`): an open of such a
//! file needs no call while the feed is read (within [`LEASE_TRUST`] of the last complete
//! read asked for) and told of no change of the file that the map does not hold. A change
//! of the file's map by this client (a commit, a truncate) forgets it, as does an answer to
//! an open that raced with one (each such change moves the file's generation; a map is kept
//! only by a call that saw the generation stand still). Another client's change forgets it
//! when the feed tells of it at a position the lease was given at or after: one before is
//! in the map already (the feed read that tells of it may well arrive after the open).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::attr::{FileKind, InodeAttr};
use cairn_common::proto::{Change, ChangedDir, ChunkMap, Lease, LEASE_MAP_KEEP, LEASE_TRUST};
use cairn_common::Ino;

/// More inodes than this and the memory starts afresh.
const MAX_INODES: usize = 65_536;
/// Names known in all directories; a directory that would pass it is no longer followed.
const MAX_NAMES: usize = 200_000;
/// Inodes forgotten one by one that are remembered; past it, the oldest count as a
/// forgetting of all.
const MAX_FORGOTTEN: usize = 1024;

/// What a change did to one directory's names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Edit<'a> {
    Add(&'a [u8]),
    Remove(&'a [u8]),
    /// Entries changed, names did not (an exchange).
    Same,
    /// Nothing changed (a create that found the file there).
    Nothing,
}

#[derive(Default)]
pub(crate) struct FreshAttrs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<Ino, Fresh>,
    /// Moves with every forgetting.
    seq: u64,
    /// The inodes forgotten one by one since `floor`, with the `seq` each forgetting took.
    forgotten: std::collections::VecDeque<(u64, Ino)>,
    /// The `seq` of the last forgetting of all: answers to calls begun before it are not kept.
    floor: u64,
    listings: HashMap<Ino, Listing>,
    names: usize,
    /// When the current position in the namenode's change feed was taken: what was kept
    /// before may have changed earlier, unseen.
    feed_from: Option<Instant>,
    /// When the last complete read of the feed was asked for: nothing kept since
    /// `feed_from` was changed by anyone else before then, or it would have been forgotten.
    synced: Option<Instant>,
    /// The connection the feed was last read through: the leases it holds are the ones
    /// the namenode waits on.
    reader: Option<u64>,
    /// Directories whose names are being listed to be followed, with this client's own
    /// changes to them answered meanwhile (replayed onto the listing).
    learning: HashMap<Ino, Learning>,
    /// Files' maps held by leases, and files whose maps are changing.
    maps: HashMap<Ino, Kept>,
    map_gen: u64,
    /// Extended attributes found absent, by inode, with when: `ls -l` asks every file for
    /// `security.selinux`, and the answer is kept as an absent name is.
    absent_xattrs: HashMap<Ino, AbsentXattrs>,
}

/// A call about to fetch or change a file's map: the file's generation then, and when the
/// call was sent (a map it answers with is used for [`LEASE_MAP_KEEP`] from then, never
/// longer than the namenode keeps the lease).
#[derive(Clone, Copy)]
pub(crate) struct MapAsk {
    gen: u64,
    asked: Instant,
}

/// A file's map as a lease keeps it.
#[derive(Default)]
struct Kept {
    /// Moves with every change of the file's map this client makes or hears of.
    gen: u64,
    /// This client's changes of the map under way.
    changing: u32,
    map: Option<(ChunkMap, Instant)>,
    /// The feed's run and position up to which it told of the latest change of the file
    /// by another client: a map is kept only from a lease given there or later.
    heard: Option<(u64, u64)>,
}

impl Kept {
    /// Is `map` one to keep: leased, of the whole file, holding every change heard of?
    fn keeps(&self, map: &ChunkMap) -> bool {
        covers_file(map)
            && map
                .lease
                .as_ref()
                .is_some_and(|lease| self.holds_news(lease))
    }

    /// May a map with `lease` be kept, as far as other clients' changes go?
    fn holds_news(&self, lease: &Lease) -> bool {
        self.heard
            .is_none_or(|(epoch, next)| lease.epoch == epoch && lease.from >= next)
    }
}

impl State {
    /// Forgets `ino`: answers to calls under way are not kept for it.
    fn forget_one(&mut self, ino: Ino) {
        self.seq += 1;
        self.inodes.remove(&ino);
        self.absent_xattrs.remove(&ino);
        self.forgotten.push_back((self.seq, ino));
        if self.forgotten.len() > MAX_FORGOTTEN {
            if let Some((seq, _)) = self.forgotten.pop_front() {
                self.floor = self.floor.max(seq);
            }
        }
    }

    /// Answers to calls under way are not kept, whatever they are of.
    fn forget_all_answers(&mut self) {
        self.seq += 1;
        self.floor = self.seq;
        self.forgotten.clear();
        self.absent_xattrs.clear();
    }

    /// Was `ino` forgotten since a call begun at `seq`?
    fn forgotten_since(&self, seq: u64, ino: Ino) -> bool {
        self.floor > seq
            || self
                .forgotten
                .iter()
                .rev()
                .take_while(|(at, _)| *at > seq)
                .any(|(_, i)| *i == ino)
    }

    fn in_sync(&self) -> bool {
        self.synced.is_some_and(|t| t.elapsed() < LEASE_TRUST)
    }

    /// How long ago what was kept at `at` was last known to be true.
    fn age(&self, at: Instant) -> Duration {
        match (self.feed_from, self.synced) {
            (Some(from), Some(synced)) if from < at && at < synced => synced.elapsed(),
            _ => at.elapsed(),
        }
    }

    /// `ino`'s map changed or may have: forget it, and void maps being fetched.
    fn map_moved(&mut self, ino: Ino) {
        self.map_gen += 1;
        let gen = self.map_gen;
        match self.maps.get_mut(&ino) {
            Some(k) if k.changing > 0 => {
                k.gen = gen;
                k.map = None;
                // Only calls begun from now on are kept: none saw a change heard before.
                k.heard = None;
            }
            _ => {
                self.maps.remove(&ino);
            }
        }
    }

    /// The feed of run `epoch` told, in a read up to `next`, of another client's change of
    /// `ino`: a map whose lease was given before `next` may not hold it.
    fn map_heard(&mut self, ino: Ino, epoch: u64, next: u64) {
        let Some(k) = self.maps.get_mut(&ino) else {
            // No map kept, none being fetched.
            return;
        };
        k.heard = Some((epoch, next));
        if !k.map.as_ref().is_some_and(|(map, _)| k.keeps(map)) {
            k.map = None;
        }
    }

    fn drop_listing(&mut self, dir: Ino) {
        if let Some(old) = self.listings.remove(&dir) {
            self.names -= old.names.len();
        }
    }
}

/// A listing that is all of a directory: the directory with its change count, and each
/// name with the inode it names.
pub(crate) type Listed<'a> = (&'a ChangedDir, &'a [(&'a [u8], Ino)]);

/// Where this client stood when it asked for a listing of `dir` (see
/// [`FreshAttrs::adopt`]). While it lives, this client's changes to `dir` are kept for it.
pub(crate) struct ListingStart<'a> {
    fresh: &'a FreshAttrs,
    pub seq: u64,
    dir: Ino,
    asked: Instant,
}

impl Drop for ListingStart<'_> {
    fn drop(&mut self) {
        let mut s = self.fresh.state();
        if let Some(learning) = s.learning.get_mut(&self.dir) {
            learning.learners -= 1;
            if learning.learners == 0 {
                s.learning.remove(&self.dir);
            }
        }
    }
}

/// A directory being listed to be followed.
#[derive(Default, Clone)]
struct Learning {
    /// Listings of it under way.
    learners: usize,
    /// This client's changes to it answered meanwhile.
    changes: Vec<OwnChange>,
    /// A change of it went unanswered: no listing taken meanwhile can be followed.
    broken: bool,
}

/// One of this client's changes to a directory's entries, as its answer told it.
#[derive(Clone)]
struct OwnChange {
    epoch: u64,
    version: u64,
    edits: Vec<OwnedEdit>,
    added: Option<Ino>,
}

#[derive(Clone)]
enum OwnedEdit {
    Add(Vec<u8>),
    Remove(Vec<u8>),
    Same,
    Nothing,
}

impl OwnedEdit {
    fn of(edit: &Edit<'_>) -> OwnedEdit {
        match edit {
            Edit::Add(name) => OwnedEdit::Add(name.to_vec()),
            Edit::Remove(name) => OwnedEdit::Remove(name.to_vec()),
            Edit::Same => OwnedEdit::Same,
            Edit::Nothing => OwnedEdit::Nothing,
        }
    }
}

/// Every name in a directory, as of its `version`-th change in namenode run `epoch`.
struct Listing {
    epoch: u64,
    version: u64,
    /// Each name, with the inode it names when this client learnt it.
    names: HashMap<Vec<u8>, Option<Ino>>,
    /// When the namenode last confirmed the count.
    at: Instant,
}

/// The extended attributes of an inode found absent, and when last.
type AbsentXattrs = (Instant, Vec<Box<[u8]>>);

struct Fresh {
    attr: InodeAttr,
    at: Instant,
    /// Known to have no extended attributes (created by this client).
    bare: bool,
    /// A directory's change count (epoch, count) when the attributes were read: of two
    /// answers to changes under way at once, the later change's wins whatever the order
    /// they arrive in.
    version: Option<(u64, u64)>,
}

impl FreshAttrs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before sending a call whose answer will be recorded.
    pub fn begin(&self) -> u64 {
        self.state().seq
    }

    /// Attributes the answer to a call begun at `seq` gave.
    pub fn record(&self, seq: u64, attrs: impl IntoIterator<Item = InodeAttr>) {
        self.record_with(seq, attrs, false);
    }

    /// A file this client created with a call begun at `seq`: no extended attributes yet.
    pub fn record_new(&self, seq: u64, attr: InodeAttr) {
        self.record_with(seq, [attr], true);
    }

    /// The directories a change begun at `seq` answered with.
    pub fn record_dirs(&self, seq: u64, dirs: &[ChangedDir]) {
        let versioned = dirs
            .iter()
            .map(|d| (d.attr.clone(), Some((d.epoch, d.version))));
        self.record_versioned(seq, versioned, false);
    }

    fn record_with(&self, seq: u64, attrs: impl IntoIterator<Item = InodeAttr>, bare: bool) {
        self.record_versioned(seq, attrs.into_iter().map(|a| (a, None)), bare);
    }

    fn record_versioned(
        &self,
        seq: u64,
        attrs: impl IntoIterator<Item = (InodeAttr, Option<(u64, u64)>)>,
        bare: bool,
    ) {
        let mut s = self.state();
        if s.inodes.len() >= MAX_INODES {
            s.inodes.clear();
        }
        let at = Instant::now();
        for (attr, version) in attrs {
            if s.forgotten_since(seq, attr.ino) {
                // Not kept, and what was kept of it is older still: forget that too.
                s.inodes.remove(&attr.ino);
                continue;
            }
            let newer_kept = match (s.inodes.get(&attr.ino).and_then(|f| f.version), version) {
                (Some((epoch, kept)), Some((e, v))) => epoch == e && kept > v,
                _ => false,
            };
            if !newer_kept {
                let fresh = Fresh {
                    attr,
                    at,
                    bare,
                    version,
                };
                s.inodes.insert(fresh.attr.ino, fresh);
            }
        }
    }

    /// The attributes a change begun at `seq` answered with, kept only if nothing else was
    /// forgotten since (another change under way could have come after it at the namenode);
    /// else forgotten.
    pub fn record_alone(&self, seq: u64, attr: InodeAttr) {
        let mut s = self.state();
        if s.forgotten_since(seq, attr.ino) {
            s.forget_one(attr.ino);
            return;
        }
        if s.inodes.len() >= MAX_INODES {
            s.inodes.clear();
        }
        let fresh = Fresh {
            attr,
            at: Instant::now(),
            bare: false,
            version: None,
        };
        s.inodes.insert(fresh.attr.ino, fresh);
    }

    /// `ino`'s attributes are changing some other way: forget them, and drop the answers of
    /// calls still under way.
    pub fn forget(&self, ino: Ino) {
        self.state().forget_one(ino);
    }

    /// Forgets `ino`'s attributes and its kept map: a lock on it was taken, and what
    /// another client wrote under the lock before must be read (NFS's rule).
    pub fn drop_file(&self, ino: Ino) {
        let mut s = self.state();
        s.forget_one(ino);
        s.map_moved(ino);
    }

    /// A change of `dir`'s entries went unanswered: forget its attributes and its names.
    pub fn unknown_change(&self, dir: Ino) {
        self.forget(dir);
        let mut s = self.state();
        s.drop_listing(dir);
        if let Some(learning) = s.learning.get_mut(&dir) {
            learning.broken = true;
        }
    }

    /// Other clients' changes, read from the change feed of namenode run `epoch` up to
    /// position `next`. A directory whose names this client knows as of the change's count
    /// or later keeps them: they hold it already (a listing taken after it); likewise a
    /// file's map leased at `next` or later.
    pub fn others_changed(&self, epoch: u64, next: u64, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut s = self.state();
        // A listing under way may predate any of them (see `adopt`).
        s.seq += 1;
        for change in changes {
            match change {
                Change::Inode(ino) => {
                    s.forget_one(*ino);
                    s.map_heard(*ino, epoch, next);
                }
                // (A change of the directory's attributes is told apart, as `Inode`.)
                Change::Entries(dir, count) => {
                    let held = s
                        .listings
                        .get(dir)
                        .is_some_and(|l| l.epoch == epoch && l.version >= *count);
                    if !held {
                        s.drop_listing(*dir);
                    }
                }
                // Delegated to another client, which answers changes there itself
                // from now on: nothing kept of its names holds.
                Change::Recall(_) => {}
                Change::Delegated(dir) => {
                    s.forget_one(*dir);
                    s.drop_listing(*dir);
                }
            }
        }
    }

    /// The change feed was read to its end; the read was asked for at `asked`.
    pub fn synced(&self, asked: Instant) {
        self.state().synced = Some(asked);
    }

    /// A new position in the change feed (the first, or after a namenode restart or
    /// falling behind): what was kept before is trusted only for its TTL, and answers to
    /// calls begun before are not kept.
    pub fn feed_restarted(&self) {
        let mut s = self.state();
        s.forget_all_answers();
        let moved: Vec<Ino> = s.maps.keys().copied().collect();
        for ino in moved {
            s.map_moved(ino);
        }
        s.feed_from = Some(Instant::now());
        s.synced = None;
    }

    /// The inodes `names` (directory, name) point at, if this client knows them all; a
    /// name known to be absent points at none.
    pub fn named(&self, names: &[(Ino, &[u8])]) -> Option<Vec<Ino>> {
        let s = self.state();
        let mut inos = Vec::new();
        for (dir, name) in names {
            match s.listings.get(dir)?.names.get(*name) {
                Some(Some(ino)) => inos.push(*ino),
                Some(None) => return None,
                None => {}
            }
        }
        Some(inos)
    }

    /// A change of entries may have changed files it does not name: forget every file.
    pub fn forget_files(&self) {
        let mut s = self.state();
        s.forget_all_answers();
        s.inodes.retain(|_, f| f.attr.kind == FileKind::Dir);
    }

    fn fresh(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration, bool)> {
        let s = self.state();
        let f = s.inodes.get(&ino)?;
        let age = s.age(f.at);
        (age < within).then(|| (f.attr.clone(), age, f.bare))
    }

    /// Follows the names of the directories a change of this client answered with: `edits`
    /// is what it did to each (by inode), `added` the inode a name it added points at; a
    /// directory it made has none.
    pub fn entries_changed(
        &self,
        dirs: &[ChangedDir],
        edits: &[(Ino, Edit<'_>)],
        added: Option<Ino>,
    ) {
        let mut guard = self.state();
        let s: &mut State = &mut guard;
        let now = Instant::now();
        // A directory changed but not answered for (gone meanwhile): no longer followed.
        for (ino, _) in edits {
            if !dirs.iter().any(|d| d.attr.ino == *ino) {
                s.drop_listing(*ino);
                if let Some(learning) = s.learning.get_mut(ino) {
                    learning.broken = true;
                }
            }
        }
        for dir in dirs {
            let ino = dir.attr.ino;
            let mine: Vec<Edit<'_>> = edits
                .iter()
                .filter(|(d, _)| *d == ino)
                .map(|(_, e)| *e)
                .collect();
            if mine.is_empty() {
                // Not one it changed: the one it made.
                if dir.version == 0 && dir.attr.kind == FileKind::Dir {
                    let listing = Listing {
                        epoch: dir.epoch,
                        version: 0,
                        names: HashMap::new(),
                        at: now,
                    };
                    if let Some(old) = s.listings.insert(ino, listing) {
                        s.names -= old.names.len();
                    }
                }
                continue;
            }
            let Some(listing) = s.listings.get_mut(&ino) else {
                // Being listed: the listing may predate this change; it is replayed.
                if let Some(learning) = s.learning.get_mut(&ino) {
                    learning.changes.push(OwnChange {
                        epoch: dir.epoch,
                        version: dir.version,
                        edits: mine.iter().map(OwnedEdit::of).collect(),
                        added,
                    });
                }
                continue;
            };
            let before = listing.names.len();
            let changes = mine.iter().any(|e| !matches!(e, Edit::Nothing));
            let follows = listing.epoch == dir.epoch
                && (dir.version == listing.version
                    || (dir.version == listing.version + 1 && changes));
            if follows && dir.version == listing.version + 1 {
                for e in mine {
                    match e {
                        Edit::Add(name) => {
                            listing.names.insert(name.to_vec(), added);
                        }
                        Edit::Remove(name) => {
                            listing.names.remove(name);
                        }
                        Edit::Same | Edit::Nothing => {}
                    }
                }
                listing.version = dir.version;
            }
            listing.at = now;
            let after = listing.names.len();
            s.names = s.names + after - before;
            if !follows || s.names > MAX_NAMES {
                // Someone else changed it (or it is too big to follow): ask from now on.
                s.names -= after;
                s.listings.remove(&ino);
            }
        }
    }

    /// Does this client follow `dir`'s names?
    pub fn follows(&self, dir: Ino) -> bool {
        self.state().listings.contains_key(&dir)
    }

    /// Taken before asking for a listing of `dir` that may be adopted; given to
    /// [`FreshAttrs::adopt`] with the listing, or dropped.
    pub fn begin_listing(&self, dir: Ino) -> ListingStart<'_> {
        let mut s = self.state();
        s.learning.entry(dir).or_default().learners += 1;
        ListingStart {
            fresh: self,
            seq: s.seq,
            dir,
            asked: Instant::now(),
        }
    }

    /// `listed`, all of the directory's names as of its change count, read by a call begun
    /// at `start`: from now on they are followed as those of a directory this client made,
    /// and the lookups of names there need no call while nobody else changes it. This
    /// client's own changes to it answered meanwhile are replayed onto it (the
    /// listing may or may not hold them: the count says). Not adopted when something that
    /// may predate the listing came in meanwhile: another client's change, a change that
    /// went unanswered, a change counted between the listing's and this client's. Says
    /// whether it was adopted.
    pub fn adopt(&self, start: ListingStart<'_>, listed: Listed<'_>) -> bool {
        let (dir, names) = listed;
        // (`start` is dropped after the lock is let go: it takes it again.)
        let mut guard = self.state();
        let s: &mut State = &mut guard;
        let Some(learning) = s.learning.get(&start.dir).cloned() else {
            return false;
        };
        if s.seq != start.seq
            || learning.broken
            || dir.attr.kind != FileKind::Dir
            || dir.attr.ino != start.dir
            || s.listings.contains_key(&start.dir)
            || s.names + names.len() > MAX_NAMES
        {
            return false;
        }
        let mut listing = Listing {
            epoch: dir.epoch,
            version: dir.version,
            names: names
                .iter()
                .map(|(name, ino)| (name.to_vec(), Some(*ino)))
                .collect(),
            at: start.asked,
        };
        let mut changes = learning.changes;
        changes.sort_by_key(|c| c.version);
        for change in changes {
            let changed = change
                .edits
                .iter()
                .any(|e| !matches!(e, OwnedEdit::Nothing));
            if change.epoch != listing.epoch
                || change.version > listing.version + 1
                || (change.version == listing.version + 1 && !changed)
            {
                // Another run's count, or another client's change between.
                return false;
            }
            if change.version <= listing.version {
                // Counted in the listing's count: in its names too.
                continue;
            }
            for edit in change.edits {
                match edit {
                    OwnedEdit::Add(name) => {
                        listing.names.insert(name, change.added);
                    }
                    OwnedEdit::Remove(name) => {
                        listing.names.remove(&name);
                    }
                    OwnedEdit::Same | OwnedEdit::Nothing => {}
                }
            }
            listing.version = change.version;
        }
        s.names += listing.names.len();
        s.listings.insert(start.dir, listing);
        true
    }

    /// Is `name` known to be absent from `dir`, as the namenode confirmed less than
    /// `within` ago? With how long ago.
    pub fn absent(&self, dir: Ino, name: &[u8], within: Duration) -> Option<Duration> {
        let s = self.state();
        let listing = s.listings.get(&dir)?;
        let age = s.age(listing.at);
        (age < within && !listing.names.contains_key(name)).then_some(age)
    }

    /// What `name` in `dir` names, if the namenode confirmed both the name and the
    /// attributes less than `within` ago. With how long ago (the older of the two).
    pub fn entry(&self, dir: Ino, name: &[u8], within: Duration) -> Option<(InodeAttr, Duration)> {
        let s = self.state();
        let listing = s.listings.get(&dir)?;
        let ino = (*listing.names.get(name)?)?;
        let f = s.inodes.get(&ino)?;
        let age = s.age(listing.at).max(s.age(f.at));
        (age < within).then(|| (f.attr.clone(), age))
    }

    /// Taken before asking for `ino`'s map: what [`FreshAttrs::keep_map`] needs.
    pub fn map_ask(&self, ino: Ino) -> MapAsk {
        let asked = Instant::now();
        let mut s = self.state();
        if s.maps.len() >= MAX_INODES {
            s.maps.retain(|_, k| k.changing > 0);
        }
        s.map_gen += 1;
        let fresh = s.map_gen;
        let gen = s
            .maps
            .entry(ino)
            .or_insert_with(|| Kept {
                gen: fresh,
                ..Kept::default()
            })
            .gen;
        MapAsk { gen, asked }
    }

    /// Keeps the map of a file an open answered with (asked for as `ask` says), if
    /// it is leased, covers the whole file, and nothing moved the file's map meanwhile.
    pub fn keep_map(&self, ask: MapAsk, map: &ChunkMap) {
        let mut s = self.state();
        if let Some(k) = s.maps.get_mut(&map.attr.ino) {
            if k.gen == ask.gen && k.changing == 0 && k.keeps(map) {
                k.map = Some((map.clone(), ask.asked));
            }
        }
    }

    /// The feed was last read through connection `reader`.
    pub fn read_through(&self, reader: u64) {
        self.state().reader = Some(reader);
    }

    /// The connection the feed is read through, while it is read (see `in_sync`).
    pub fn reading_through(&self) -> Option<u64> {
        let s = self.state();
        s.reader.filter(|_| s.in_sync())
    }

    /// The connection the feed was last read through.
    pub fn reader(&self) -> Option<u64> {
        self.state().reader
    }

    /// Was the last complete read of the feed asked for less than [`LEASE_TRUST`] ago?
    pub fn in_sync(&self) -> bool {
        self.state().in_sync()
    }

    /// The map a lease keeps for `ino`, while the lease can be trusted: the feed is read,
    /// through the connection that holds the lease.
    pub fn kept_map(&self, ino: Ino) -> Option<ChunkMap> {
        let s = self.state();
        let (map, at) = s.maps.get(&ino)?.map.as_ref()?;
        let trusted = s.in_sync()
            && map
                .lease
                .is_some_and(|lease| s.reader == Some(lease.holder));
        // Replica locations move (a datanode lost, a balancer): a read that fails on them
        // asks again, but an old map is not kept for long.
        (trusted && at.elapsed() < LEASE_MAP_KEEP).then(|| map.clone())
    }

    /// This client is changing `ino`'s map (a commit, a truncate): until
    /// [`FreshAttrs::map_changed`], no answer keeps a map of it. Returns the generation
    /// the change's own answer needs to be kept.
    pub fn map_changing(&self, ino: Ino) -> MapAsk {
        let asked = Instant::now();
        let mut s = self.state();
        s.map_moved(ino);
        let gen = s.map_gen;
        let k = s.maps.entry(ino).or_default();
        k.changing += 1;
        k.gen = gen;
        MapAsk { gen, asked }
    }

    /// The change `ask` began was answered, with the file's map if `map`: kept when it
    /// is leased and nothing else moved the map meanwhile.
    pub fn map_changed(&self, ino: Ino, ask: MapAsk, map: Option<&ChunkMap>) {
        let mut s = self.state();
        let Some(k) = s.maps.get_mut(&ino) else {
            return;
        };
        k.changing = k.changing.saturating_sub(1);
        match map {
            Some(map) if k.gen == ask.gen && k.changing == 0 && k.keeps(map) => {
                k.map = Some((map.clone(), ask.asked));
            }
            _ => s.map_moved(ino),
        }
    }

    /// This client recorded a read in `attr.ino`'s access time: a kept map says so too, or
    /// each open by it would record the read again.
    pub fn accessed(&self, attr: &InodeAttr) {
        let mut s = self.state();
        if let Some((map, _)) = s.maps.get_mut(&attr.ino).and_then(|k| k.map.as_mut()) {
            map.attr.atime = attr.atime;
        }
    }

    /// `ino`'s attributes if recorded less than `within` ago, with how long ago.
    pub fn get(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration)> {
        self.fresh(ino, within).map(|(attr, age, _)| (attr, age))
    }

    /// A call begun at `seq` found `ino` without the extended attribute `name`.
    pub fn record_absent_xattr(&self, seq: u64, ino: Ino, name: &[u8]) {
        let mut s = self.state();
        if s.forgotten_since(seq, ino) {
            return;
        }
        if s.absent_xattrs.len() >= MAX_INODES {
            s.absent_xattrs.clear();
        }
        let (at, names) = s
            .absent_xattrs
            .entry(ino)
            .or_insert_with(|| (Instant::now(), Vec::new()));
        *at = Instant::now();
        if !names.iter().any(|n| **n == *name) {
            names.push(name.into());
        }
    }

    /// Is `ino` known, as of less than `within` ago, to lack the extended attribute `name`?
    pub fn absent_xattr(&self, ino: Ino, name: &[u8], within: Duration) -> bool {
        let s = self.state();
        s.absent_xattrs
            .get(&ino)
            .is_some_and(|(at, names)| s.age(*at) < within && names.iter().any(|n| **n == *name))
    }

    /// Is `ino` known, as of less than `within` ago, to have no extended attributes?
    pub fn bare(&self, ino: Ino, within: Duration) -> bool {
        self.fresh(ino, within).is_some_and(|(_, _, bare)| bare)
    }
}

/// Does `map` hold every chunk of its file?
fn covers_file(map: &ChunkMap) -> bool {
    let chunks = map.attr.size.div_ceil(cairn_common::layout::CHUNK_SIZE);
    chunks <= cairn_common::proto::OPEN_MAP_CHUNKS as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64, kind: FileKind, size: u64) -> InodeAttr {
        InodeAttr {
            ino: Ino(ino),
            kind,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size,
            nlink: 2,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            rdev: 0,
            replication: 3,
            stored: 0,
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    /// The feed position the maps' leases are given at, in run 1.
    const LEASED_AT: u64 = 10;

    fn map(ino: u64, size: u64, leased: bool) -> ChunkMap {
        ChunkMap {
            attr: attr(ino, FileKind::File, size),
            chunks: Vec::new(),
            locations: Vec::new(),
            corrupt: Vec::new(),
            tokens: Vec::new(),
            lease: leased.then_some(Lease {
                holder: 3,
                epoch: 1,
                from: LEASED_AT,
            }),
        }
    }

    #[test]
    fn a_leased_map_is_used_while_the_feed_is_read_and_nothing_moved_it() {
        let fresh = FreshAttrs::default();
        let f = Ino(5);
        let kept = |fresh: &FreshAttrs| fresh.kept_map(f).is_some();
        let small = map(5, 10, true);
        fresh.keep_map(fresh.map_ask(f), &small);
        assert!(!kept(&fresh), "not before the feed is read");
        fresh.synced(Instant::now());
        fresh.read_through(3);
        assert!(kept(&fresh));
        fresh.read_through(4);
        assert!(
            !kept(&fresh),
            "not once the feed is read through another connection"
        );
        fresh.read_through(3);
        fresh.synced(Instant::now() - LEASE_TRUST);
        assert!(
            !kept(&fresh),
            "not once the feed was not read for the lease's trust"
        );
        fresh.synced(Instant::now());

        // Another client's change the map holds: a feed read up to the lease's position.
        fresh.others_changed(1, LEASED_AT, &[Change::Inode(f)]);
        assert!(kept(&fresh), "a change from before the lease");
        fresh.others_changed(2, LEASED_AT, &[Change::Inode(f)]);
        assert!(!kept(&fresh), "a change told by another run");
        fresh.keep_map(fresh.map_ask(f), &small);
        assert!(!kept(&fresh), "still not the map of the run that told it");
        fresh.feed_restarted();
        fresh.synced(Instant::now());
        fresh.keep_map(fresh.map_ask(f), &small);
        assert!(kept(&fresh), "the feed is read from the map's run again");
        fresh.others_changed(1, LEASED_AT + 1, &[Change::Inode(f)]);
        assert!(!kept(&fresh), "another client changed it");

        // Not leased, or more than the map covers: not kept.
        fresh.keep_map(fresh.map_ask(f), &map(5, 10, false));
        let huge = 100 * cairn_common::layout::CHUNK_SIZE;
        fresh.keep_map(fresh.map_ask(f), &map(5, huge, true));
        assert!(!kept(&fresh));

        // An answer to an open that raced with another client's change: kept if the lease
        // came after it.
        let gen = fresh.map_ask(f);
        fresh.others_changed(1, LEASED_AT + 1, &[Change::Inode(f)]);
        fresh.keep_map(gen, &small);
        assert!(!kept(&fresh));
        let gen = fresh.map_ask(f);
        fresh.others_changed(1, LEASED_AT - 1, &[Change::Inode(f)]);
        fresh.keep_map(gen, &small);
        assert!(kept(&fresh), "a change from before the lease");

        // This client's commit answers with the map: kept. Two at once: neither.
        let g = fresh.map_changing(f);
        fresh.map_changed(f, g, Some(&small));
        assert!(kept(&fresh));
        let (g1, g2) = (fresh.map_changing(f), fresh.map_changing(f));
        assert!(!kept(&fresh), "a change under way");
        fresh.map_changed(f, g2, Some(&small));
        fresh.map_changed(f, g1, Some(&small));
        assert!(!kept(&fresh));
        // An open answered while a commit was under way; a truncate (no map).
        let gen = fresh.map_ask(f);
        let g = fresh.map_changing(f);
        fresh.keep_map(gen, &small);
        fresh.map_changed(f, g, None);
        assert!(!kept(&fresh));
        // A change heard of while a commit was under way.
        let g = fresh.map_changing(f);
        fresh.others_changed(1, LEASED_AT + 1, &[Change::Inode(f)]);
        fresh.map_changed(f, g, Some(&small));
        assert!(!kept(&fresh));

        // This client's read recorded in the access time shows in the kept map.
        fresh.keep_map(fresh.map_ask(f), &small);
        let mut read = small.attr.clone();
        read.atime = cairn_common::attr::Timestamp { secs: 77, nanos: 0 };
        fresh.accessed(&read);
        assert_eq!(fresh.kept_map(f).unwrap().attr.atime.secs, 77);
        // Another namenode run: nothing kept is vouched for.
        fresh.feed_restarted();
        fresh.synced(Instant::now());
        assert!(!kept(&fresh));
    }

    #[test]
    fn answers_are_kept_for_a_while_and_the_newest_wins() {
        let fresh = FreshAttrs::default();
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 1)]);
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 2)]);
        let (a, age) = fresh.get(Ino(2), SEC).unwrap();
        assert_eq!(a.size, 2);
        assert!(age < SEC);
        assert!(fresh.get(Ino(3), SEC).is_none());
        std::thread::sleep(Duration::from_millis(20));
        assert!(fresh.get(Ino(2), Duration::from_millis(10)).is_none());
    }

    #[test]
    fn another_change_voids_them_and_answers_begun_before_it() {
        let fresh = FreshAttrs::default();
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 1)]);
        // A create in 2 is sent; meanwhile a chmod of 2 is answered.
        let create = fresh.begin();
        fresh.forget(Ino(2));
        assert!(fresh.get(Ino(2), SEC).is_none());
        // The create's answer may predate the chmod: not kept.
        fresh.record(create, [attr(2, FileKind::Dir, 2)]);
        assert!(fresh.get(Ino(2), SEC).is_none());
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 3)]);
        assert_eq!(fresh.get(Ino(2), SEC).unwrap().0.size, 3);
        // Two changes under way at once, answered out of order: the later change's stays.
        let (first, second) = (fresh.begin(), fresh.begin());
        let at = |version, size| ChangedDir {
            attr: attr(2, FileKind::Dir, size),
            version,
            epoch: 7,
        };
        fresh.record_dirs(second, &[at(9, 9)]);
        fresh.record_dirs(first, &[at(8, 8)]);
        assert_eq!(fresh.get(Ino(2), SEC).unwrap().0.size, 9);
        // A change of another inode under way leaves an answer's others standing.
        let mkdir = fresh.begin();
        fresh.forget(Ino(40));
        fresh.record(
            mkdir,
            [attr(2, FileKind::Dir, 4), attr(40, FileKind::File, 1)],
        );
        assert_eq!(fresh.get(Ino(2), SEC).unwrap().0.size, 4);
        assert!(fresh.get(Ino(40), SEC).is_none());
        // A change that may reach any file voids every answer under way; one dropped leaves
        // nothing older behind.
        let open = fresh.begin();
        fresh.forget_files();
        fresh.record(open, [attr(2, FileKind::Dir, 5)]);
        assert!(fresh.get(Ino(2), SEC).is_none());
        // Too many inodes forgotten one by one to remember: as if all were.
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 6)]);
        let mkdir = fresh.begin();
        for ino in 100..100 + MAX_FORGOTTEN as u64 + 1 {
            fresh.forget(Ino(ino));
        }
        fresh.record(mkdir, [attr(2, FileKind::Dir, 7)]);
        assert!(fresh.get(Ino(2), SEC).is_none());
    }

    fn changed(ino: u64, version: u64, epoch: u64) -> ChangedDir {
        ChangedDir {
            attr: attr(ino, FileKind::Dir, 0),
            version,
            epoch,
        }
    }

    #[test]
    fn a_directory_made_here_is_followed_while_only_this_client_changes_it() {
        let fresh = FreshAttrs::default();
        let (parent, made) = (Ino(1), Ino(9));
        // mkdir: the parent gains a name; the new directory comes back at version 0.
        fresh.entries_changed(
            &[changed(1, 5, 7), changed(9, 0, 7)],
            &[(parent, Edit::Add(b"d"))],
            None,
        );
        assert!(
            fresh.absent(parent, b"x", SEC).is_none(),
            "parent never known"
        );
        assert!(fresh.absent(made, b"a", SEC).is_some());
        fresh.entries_changed(&[changed(9, 1, 7)], &[(made, Edit::Add(b"a"))], None);
        assert!(fresh.absent(made, b"a", SEC).is_none());
        assert!(fresh.absent(made, b"b", SEC).is_some());
        // A rename within it: one change, a name out and one in.
        fresh.entries_changed(
            &[changed(9, 2, 7)],
            &[(made, Edit::Remove(b"a")), (made, Edit::Add(b"c"))],
            None,
        );
        assert!(fresh.absent(made, b"a", SEC).is_some());
        assert!(fresh.absent(made, b"c", SEC).is_none());
        // A create that found the file there: nothing changed, still followed.
        fresh.entries_changed(&[changed(9, 2, 7)], &[(made, Edit::Nothing)], None);
        assert!(fresh.absent(made, b"b", SEC).is_some());
        // ... unless the count moved: that was somebody else.
        let other = FreshAttrs::default();
        other.entries_changed(&[changed(9, 0, 7)], &[], None);
        other.entries_changed(&[changed(9, 1, 7)], &[(made, Edit::Nothing)], None);
        assert!(other.absent(made, b"b", SEC).is_none());
        // Somebody else's change came between: no longer followed.
        fresh.entries_changed(&[changed(9, 4, 7)], &[(made, Edit::Add(b"e"))], None);
        assert!(fresh.absent(made, b"b", SEC).is_none());
        // Nor is one a change did not answer for.
        fresh.entries_changed(&[changed(12, 0, 7)], &[], None);
        fresh.entries_changed(&[], &[(Ino(12), Edit::Add(b"a"))], None);
        assert!(fresh.absent(Ino(12), b"b", SEC).is_none());
    }

    #[test]
    fn a_directory_listed_whole_is_followed_with_this_clients_changes_replayed() {
        let listed = Ino(20);
        let names: [(&[u8], Ino); 2] = [(b"a", Ino(21)), (b"b", Ino(22))];
        let whole = |version| changed(20, version, 7);
        let fresh = FreshAttrs::default();
        let start = fresh.begin_listing(listed);
        fresh.record(start.seq, [attr(21, FileKind::File, 3)]);
        fresh.adopt(start, (&whole(6), &names));
        assert!(fresh.absent(listed, b"c", SEC).is_some());
        assert!(fresh.absent(listed, b"a", SEC).is_none());
        assert_eq!(fresh.entry(listed, b"a", SEC).unwrap().0.size, 3);
        assert!(
            fresh.entry(listed, b"b", SEC).is_none(),
            "its attributes are not known"
        );
        // This client's next change moves the count by one: still followed.
        fresh.entries_changed(&[whole(7)], &[(listed, Edit::Add(b"c"))], None);
        assert!(fresh.absent(listed, b"c", SEC).is_none());
        assert!(fresh.absent(listed, b"d", SEC).is_some());
        assert!(fresh.state().learning.is_empty());

        // A listing whose count is behind the names it holds: found out at the next change.
        let behind = FreshAttrs::default();
        let start = behind.begin_listing(listed);
        behind.adopt(start, (&whole(5), &names));
        behind.entries_changed(&[whole(7)], &[(listed, Edit::Add(b"c"))], None);
        assert!(behind.absent(listed, b"d", SEC).is_none());

        // This client's own changes answered while the listing was read are replayed onto
        // it, in count order, the ones its count holds skipped.
        let own = FreshAttrs::default();
        let start = own.begin_listing(listed);
        let create = |name, version| (whole(version), Edit::Add(name));
        for (dir, edit) in [create(b"d", 8), create(b"a", 6), create(b"c", 7)] {
            own.entries_changed(&[dir], &[(listed, edit)], Some(Ino(23)));
        }
        own.adopt(start, (&whole(6), &names));
        assert!(own.absent(listed, b"c", SEC).is_none());
        assert!(own.absent(listed, b"d", SEC).is_none());
        assert!(own.absent(listed, b"e", SEC).is_some());
        own.entries_changed(&[whole(9)], &[(listed, Edit::Remove(b"a"))], None);
        assert!(
            own.absent(listed, b"a", SEC).is_some(),
            "followed on from 8"
        );

        // Not adopted: another client's change counted between the listing's and this
        // client's own; another client's change read from the feed meanwhile; a change
        // of this client's that went unanswered.
        let not_adopted = |between: &dyn Fn(&FreshAttrs)| {
            let fresh = FreshAttrs::default();
            let start = fresh.begin_listing(listed);
            between(&fresh);
            fresh.adopt(start, (&whole(6), &names));
            assert!(fresh.absent(listed, b"x", SEC).is_none());
            assert!(fresh.state().learning.is_empty());
        };
        not_adopted(&|f| f.entries_changed(&[whole(8)], &[(listed, Edit::Add(b"c"))], None));
        not_adopted(&|f| f.others_changed(7, 0, &[Change::Entries(listed, 3)]));
        not_adopted(&|f| f.unknown_change(listed));
        // Two listings under way: each ends on its own.
        let two = FreshAttrs::default();
        let (first, second) = (two.begin_listing(listed), two.begin_listing(listed));
        two.entries_changed(&[whole(7)], &[(listed, Edit::Add(b"c"))], None);
        drop(first);
        assert!(!two.state().learning.is_empty(), "the second is under way");
        two.adopt(second, (&whole(6), &names));
        assert!(two.state().learning.is_empty());
        assert!(two.absent(listed, b"c", SEC).is_none());
        assert!(two.absent(listed, b"x", SEC).is_some());
    }

    #[test]
    fn a_namenode_restart_or_a_made_directory_not_at_zero_is_not_followed() {
        let fresh = FreshAttrs::default();
        fresh.entries_changed(&[changed(9, 0, 7)], &[], None);
        fresh.entries_changed(&[changed(9, 1, 8)], &[(Ino(9), Edit::Add(b"a"))], None);
        assert!(
            fresh.absent(Ino(9), b"b", SEC).is_none(),
            "another run's counts"
        );
        // Made, then changed by someone else before the answer was read.
        fresh.entries_changed(&[changed(10, 1, 7)], &[], None);
        assert!(fresh.absent(Ino(10), b"b", SEC).is_none());
        fresh.entries_changed(&[changed(11, 0, 7)], &[], None);
        std::thread::sleep(Duration::from_millis(20));
        assert!(fresh
            .absent(Ino(11), b"b", Duration::from_millis(10))
            .is_none());
    }

    #[test]
    fn new_files_are_bare_until_changed_and_entry_changes_forget_files() {
        let fresh = FreshAttrs::default();
        fresh.record_new(fresh.begin(), attr(7, FileKind::File, 0));
        fresh.record(fresh.begin(), [attr(8, FileKind::File, 5)]);
        fresh.record(fresh.begin(), [attr(2, FileKind::Dir, 1)]);
        assert!(fresh.bare(Ino(7), SEC));
        assert!(
            !fresh.bare(Ino(8), SEC),
            "opened, not created: may have some"
        );
        fresh.forget(Ino(7));
        assert!(!fresh.bare(Ino(7), SEC));
        fresh.forget_files();
        assert!(fresh.get(Ino(8), SEC).is_none());
        assert!(
            fresh.get(Ino(2), SEC).is_some(),
            "directories answered for themselves"
        );
    }

    #[test]
    fn the_change_feed_keeps_what_nobody_else_changed_true_for_longer() {
        let fresh = FreshAttrs::default();
        let short = Duration::from_millis(30);
        let dir = Ino(9);
        fresh.feed_restarted();
        fresh.entries_changed(&[changed(9, 0, 7)], &[], None);
        fresh.record_new(fresh.begin(), attr(20, FileKind::File, 0));
        fresh.entries_changed(
            &[changed(9, 1, 7)],
            &[(dir, Edit::Add(b"a"))],
            Some(Ino(20)),
        );
        assert_eq!(fresh.entry(dir, b"a", short).unwrap().0.ino, Ino(20));
        assert_eq!(
            fresh.named(&[(dir, b"a"), (dir, b"absent")]),
            Some(vec![Ino(20)])
        );
        assert_eq!(fresh.named(&[(Ino(10), b"a")]), None, "not followed");
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            fresh.entry(dir, b"a", short).is_none(),
            "aged, with no feed"
        );
        fresh.synced(Instant::now());
        assert!(
            fresh.entry(dir, b"a", short).is_some(),
            "the feed says nobody changed them since"
        );
        assert!(fresh.absent(dir, b"b", short).is_some());
        // Another client changed the file: forgotten; its name is still known.
        fresh.others_changed(7, 0, &[Change::Inode(Ino(20))]);
        assert!(fresh.entry(dir, b"a", short).is_none());
        assert!(fresh.absent(dir, b"b", short).is_some());
        // A change of the directory's entries its names already hold (counted at or before
        // the count they are as of): still followed.
        fresh.others_changed(7, 0, &[Change::Entries(dir, 1)]);
        assert!(fresh.absent(dir, b"b", short).is_some());
        // A later one, or one of another namenode run: no longer followed.
        let again = FreshAttrs::default();
        again.entries_changed(&[changed(9, 0, 7)], &[], None);
        again.others_changed(8, 0, &[Change::Entries(dir, 0)]);
        assert!(again.absent(dir, b"b", short).is_none());
        fresh.others_changed(7, 0, &[Change::Entries(dir, 2)]);
        assert!(fresh.absent(dir, b"b", short).is_none());
        // The feed lost track: what was kept is trusted for its TTL only.
        fresh.record(fresh.begin(), [attr(21, FileKind::File, 1)]);
        std::thread::sleep(Duration::from_millis(40));
        fresh.synced(Instant::now());
        assert!(fresh.get(Ino(21), short).is_some());
        fresh.feed_restarted();
        assert!(fresh.get(Ino(21), short).is_none());
        assert!(fresh.get(Ino(21), SEC).is_some());
        // Nor is what was kept before the position in the feed was taken.
        fresh.feed_restarted();
        fresh.record(fresh.begin(), [attr(22, FileKind::File, 1)]);
        std::thread::sleep(Duration::from_millis(40));
        fresh.synced(Instant::now());
        assert!(fresh.get(Ino(21), short).is_none());
        assert!(fresh.get(Ino(22), short).is_some());
    }

    #[test]
    fn an_attribute_change_keeps_its_answer_only_when_it_was_alone() {
        let fresh = FreshAttrs::default();
        fresh.forget(Ino(5));
        fresh.record_alone(fresh.begin(), attr(5, FileKind::File, 3));
        assert_eq!(fresh.get(Ino(5), SEC).unwrap().0.size, 3);
        // Two under way at once may be applied in either order: neither answer is kept.
        fresh.forget(Ino(5));
        let first = fresh.begin();
        fresh.forget(Ino(5));
        let second = fresh.begin();
        fresh.record_alone(first, attr(5, FileKind::File, 4));
        fresh.record_alone(second, attr(5, FileKind::File, 5));
        assert!(fresh.get(Ino(5), SEC).is_none());
    }
}
