//! The namespace's recent changes, in order, for mounts to drop what they cache.
//!
//! A mount hands the kernel names and attributes to keep; it may let the kernel keep them
//! for long only because it hears within a fraction of a second of every change another
//! client makes. Every op's written inodes and entries are appended here after they are
//! durable (before the op is answered); a mount asks for what came after the last change it
//! saw. The feed lives in memory and holds the latest changes only: a mount that comes from
//! another namenode run, or fell further behind, is told so and must doubt everything.
//!
//! A mount keeps one request for the feed in flight: when nothing is new for it, the
//! namenode holds the answer until something is (or a couple of seconds pass), so another
//! client's change reaches it within a round trip.
//!
//! **Leases.** A mount that follows the feed may be given a lease on a file with its map
//! (`ChunkMap::leased`): it then opens the file again without asking, for as long as it
//! keeps reading the feed and hears of no change of the file. So that a file closed on one
//! mount is still read whole by an open on another that comes after the close (close-to-
//! open), the answer to a change of a leased file waits until every other holder has read
//! the feed past the change — a round trip, with the read in flight — or, for a holder that
//! stopped reading, until it can no longer trust its lease ([`LEASE_TRUST`] after the read
//! it last asked for; the namenode counts twice that from the read's arrival). The lease
//! ends with the change: the holder asks again at its next open.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_common::proto::{LEASE_MAP_KEEP, LEASE_TRUST, RESUME_GRACE};
use tokio_util::sync::CancellationToken;

/// How long after a holder's last read of the feed arrived its leases still hold changes
/// back: it trusts them for [`LEASE_TRUST`] after asking for that read.
const LEASE_HOLD: Duration = Duration::from_secs(2 * LEASE_TRUST.as_secs());

use cairn_common::proto::{Change, ChangesReply, Lease};
use cairn_common::Ino;

use crate::known::Known;

/// Changes kept: at ~50 bytes each, a few MiB.
const KEPT: usize = 100_000;
/// Changes in one answer at most; the mount asks again for the rest.
const PER_REPLY: usize = 4096;

pub struct ChangeFeed {
    pub epoch: u64,
    inner: Mutex<Log>,
    /// Bumped whenever a follower reads the feed: what changes waiting for holders watch.
    heard: tokio::sync::watch::Sender<u64>,
    /// Changes under way, by directory they change: a directory is not delegated while
    /// one is (the grant's listing could miss it).
    busy: Mutex<HashMap<Ino, u32>>,
    run: Mutex<Run>,
}

/// Since when this namenode serves the namespace, and what it inherits from whoever
/// served it before (a run before a restart, or the group's previous leader).
struct Run {
    /// Leases the previous server gave may be trusted until then: changes wait for it.
    hold_until: Option<Instant>,
    /// When this run began to serve: changes queued under the previous server's
    /// delegations are applied for a while (see `proto::REPLAY_WINDOW`).
    started: Instant,
}

/// An answer being read for a connection ([`ChangeFeed::reading`]).
pub struct Reading<'a> {
    feed: &'a ChangeFeed,
    conn: u64,
    counted: bool,
}

impl Reading<'_> {
    /// The answer named `inos` to the connection: a change of them waits for it from now
    /// on, until it has read of the change.
    pub fn told(self, inos: impl IntoIterator<Item = Ino>) {
        if let Some(f) = self.feed.log().followers.get_mut(&self.conn) {
            for ino in inos {
                f.known.told(ino);
            }
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self.counted {
            if let Some(f) = self.feed.log().followers.get_mut(&self.conn) {
                f.known.end_reading();
            }
        }
    }
}

/// Does a change of `inos`, which a follower hears of by reading to `end`, concern what it
/// keeps? (Every inode is looked at: each it knows ends with that read.)
fn concerns(known: &mut Known, inos: &[Ino], end: u64) -> bool {
    let mut any = known.any_change_concerns();
    for ino in inos {
        any |= known.changed(*ino, end);
    }
    any
}

/// A change under way in some directories ([`ChangeFeed::changing`]).
pub struct Changing<'a> {
    feed: &'a ChangeFeed,
    dirs: Vec<Ino>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        let mut busy = self.feed.busy();
        for dir in &self.dirs {
            if let Some(n) = busy.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(dir);
                }
            }
        }
    }
}

#[derive(Default)]
struct Log {
    /// Number of `changes[0]` since the start of the run.
    first: u64,
    /// Each change with the connection that made it (0: the namenode itself).
    changes: VecDeque<(u64, Change)>,
    /// Connections reading the feed, by connection.
    followers: HashMap<u64, Follower>,
    /// Connections holding a lease on each file.
    holders: HashMap<Ino, Vec<u64>>,
    /// Reads waiting for news, by connection: woken by changes it did not make itself.
    waiting: HashMap<u64, Arc<tokio::sync::Notify>>,
    swept: Option<Instant>,
    /// Delegated directories, by directory.
    delegs: HashMap<Ino, Deleg>,
    /// When each directory's delegation was last recalled: not given again for a while,
    /// so two clients working in one directory do not pass it to and fro.
    recalled: HashMap<Ino, Instant>,
    /// Inode numbers reserved for connections that ended without using them: to be given
    /// back ([`ChangeFeed::take_returned`]).
    returned: Vec<u64>,
    /// Inode numbers reserved for connections of a client session that ended, by session:
    /// another connection of the session may use them for [`RESUME_GRACE`], then they are
    /// given back.
    parked: HashMap<u64, (Instant, std::collections::HashSet<u64>)>,
}

/// A directory's delegation: its holder, and once recalled, the position it must read the
/// feed past (it sends what it queued there first).
#[derive(Clone, Copy)]
struct Deleg {
    holder: u64,
    /// The holder's client session.
    session: u64,
    recall: Option<u64>,
    /// When the holder's connection ended, if it did: another connection of its session
    /// may take the delegation over for [`RESUME_GRACE`] (the client reconnected and sends
    /// what it queued), unless it is recalled first.
    orphaned: Option<Instant>,
}

impl Deleg {
    /// May connection `conn` of `session` take it over from its holder? One of the same
    /// session, if nobody recalled it, once the holder's connection ended or from a later
    /// connection (the client gave up the holder's before the namenode noticed: one that
    /// stalled past the idle timeout takes what was sent before for news).
    fn resumable_by(&self, conn: u64, session: Option<u64>) -> bool {
        session == Some(self.session)
            && self.recall.is_none()
            && (self.orphaned.is_some() || conn > self.holder)
    }
}

/// How long after a recall a directory is not delegated again.
const DELEGATION_BACKOFF: Duration = Duration::from_secs(5);

/// One lease: when it was given, and the position its holder must read to once a change
/// broke it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Held {
    given: Instant,
    broken: Option<u64>,
}

struct Follower {
    /// Every change before this one is read and applied (the position its last read asked
    /// from).
    heard: u64,
    /// When its last read arrived.
    read_at: Instant,
    /// Its leases: held, or broken by a change it must read to (until then it may still
    /// open the file without asking, so the file is still counted as open there).
    leased: HashMap<Ino, Held>,
    /// Broken leases, in the order of the positions they end at.
    broken: VecDeque<(Ino, u64)>,
    /// Inode numbers reserved for its queued creates and not used yet.
    inos: std::collections::HashSet<u64>,
    /// The client session it said it serves, once it asked for a delegation or numbers.
    session: Option<u64>,
    /// The inodes it may keep something of: the changes of others wait for it only there.
    known: Known,
}

impl Follower {
    fn new() -> Follower {
        Follower {
            heard: 0,
            read_at: Instant::now(),
            leased: HashMap::new(),
            broken: VecDeque::new(),
            inos: std::collections::HashSet::new(),
            session: None,
            known: Known::default(),
        }
    }

    /// May it have `ino` open without the namenode knowing? With a lease broken by a change
    /// it has not read yet; with a lease not broken yet only if `breaking` (the change at
    /// hand breaks it).
    fn may_hold(&self, ino: Ino, breaking: bool) -> bool {
        self.live()
            && match self.leased.get(&ino).map(|l| l.broken) {
                Some(None) => breaking,
                Some(Some(to)) => self.heard < to,
                None => false,
            }
    }
}

impl Follower {
    /// Still able to trust its leases.
    fn live(&self) -> bool {
        self.read_at.elapsed() < LEASE_HOLD
    }
}

/// What the answer to a change waits for: holders of leases on the files it changed to read
/// the feed past it (connection, position it must have read to).
#[derive(Debug, Default)]
pub struct Breaks {
    heard: Vec<(u64, u64)>,
    until: Option<Instant>,
}

impl Breaks {
    pub fn is_empty(&self) -> bool {
        self.heard.is_empty() && self.until.is_none()
    }
}

impl Log {
    fn end(&self) -> u64 {
        self.first + self.changes.len() as u64
    }

    /// Forgets, now and then, followers that can no longer trust their leases, and leases
    /// older than any map their holders still use ([`LEASE_MAP_KEEP`]).
    fn sweep(&mut self) {
        if self.swept.is_some_and(|t| t.elapsed() < LEASE_HOLD) {
            return;
        }
        self.swept = Some(Instant::now());
        let gone: Vec<u64> = self
            .followers
            .iter()
            .filter(|(_, f)| !f.live())
            .map(|(c, _)| *c)
            .collect();
        for c in gone {
            self.let_go(c);
        }
        let mut old = Vec::new();
        for (c, f) in &mut self.followers {
            f.leased.retain(|ino, l| {
                let keep = l.broken.is_some() || l.given.elapsed() < 2 * LEASE_MAP_KEEP;
                if !keep {
                    old.push((*ino, *c));
                }
                keep
            });
        }
        for (ino, c) in old {
            self.unlease(ino, c);
        }
    }

    /// Forgets connection `conn`'s reads of the feed: it ended, or went silent. Its
    /// delegations nobody recalled and the inode numbers it did not use wait
    /// [`RESUME_GRACE`] for its client session to come back (through it, or another
    /// connection); the rest end.
    fn let_go(&mut self, conn: u64) {
        let now = Instant::now();
        self.waiting.remove(&conn);
        self.delegs
            .retain(|_, d| d.holder != conn || d.recall.is_none());
        for (dir, d) in self.delegs.iter_mut().filter(|(_, d)| d.holder == conn) {
            tracing::debug!(
                conn,
                session = d.session,
                "the delegation of {dir} waits for its session"
            );
            d.orphaned.get_or_insert(now);
        }
        if let Some(f) = self.followers.remove(&conn) {
            match f.session {
                Some(session) => self
                    .parked
                    .entry(session)
                    .or_insert_with(|| (now, Default::default()))
                    .1
                    .extend(f.inos),
                None => self.returned.extend(f.inos),
            }
            for ino in f.leased.into_keys() {
                self.unlease(ino, conn);
            }
        }
    }

    /// Ends `dir`'s delegation if its recall is done (the holder read past it, or went
    /// silent) or its holder went silent.
    fn settle_delegation(&mut self, dir: Ino) {
        let Some(d) = self.delegs.get(&dir) else {
            return;
        };
        let over = match self.followers.get(&d.holder) {
            Some(f) if f.live() => d.recall.is_some_and(|to| f.heard >= to),
            // Its holder went silent (its connection given up at its end, say) or its
            // connection ended: kept a while for its session to come back, unless someone
            // came meanwhile.
            follower => {
                let since = d.orphaned.or(follower.map(|f| f.read_at + LEASE_HOLD));
                d.recall.is_some() || since.is_none_or(|t| t.elapsed() >= RESUME_GRACE)
            }
        };
        if over {
            tracing::debug!(holder = d.holder, recall = ?d.recall, orphaned = ?d.orphaned.map(|t| t.elapsed()), "the delegation of {dir} ends");
            self.delegs.remove(&dir);
        }
    }

    /// Wakes `conn`'s read of the feed if it is waiting for news.
    fn wake(&self, conn: u64) {
        if let Some(news) = self.waiting.get(&conn) {
            news.notify_waiters();
        }
    }

    fn unlease(&mut self, ino: Ino, conn: u64) {
        if let Some(h) = self.holders.get_mut(&ino) {
            h.retain(|c| *c != conn);
            if h.is_empty() {
                self.holders.remove(&ino);
            }
        }
    }
}

impl ChangeFeed {
    /// The feed of a run drawn as `epoch`. `restarted`: the namespace was served before, by a
    /// run whose leases may still be trusted for a while.
    pub fn new(epoch: u64, restarted: bool) -> ChangeFeed {
        ChangeFeed {
            epoch,
            inner: Mutex::default(),
            heard: tokio::sync::watch::Sender::new(0),
            busy: Mutex::default(),
            run: Mutex::new(Run {
                hold_until: restarted.then(|| Instant::now() + LEASE_HOLD),
                started: Instant::now(),
            }),
        }
    }

    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This member took the lead of its group from another, which answered last at least
    /// `quiet` ago: as after a restart, changes wait for the leases the previous leader
    /// gave (that much less long), and what its clients queued under its delegations is
    /// applied for a while.
    pub fn lead_taken(&self, quiet: Duration) {
        let mut run = self.run();
        run.started = Instant::now();
        run.hold_until = Some(run.started + LEASE_HOLD.saturating_sub(quiet));
    }

    /// Are changes queued under a previous run's delegations still applied? For a while
    /// after a restart or a change of leader (see `proto::REPLAY_WINDOW`).
    pub fn replaying(&self) -> bool {
        let run = self.run();
        run.hold_until.is_some() && run.started.elapsed() < cairn_common::proto::REPLAY_WINDOW
    }

    /// Gives connection `conn` a lease on `ino`, if it follows the feed. Taken before the
    /// map it covers is read: a change the map misses then waits for `conn`, and one the
    /// feed had before is in the map.
    pub fn lease(&self, conn: u64, ino: Ino) -> Option<Lease> {
        let mut log = self.log();
        let from = log.end();
        let f = log.followers.get_mut(&conn).filter(|f| f.live())?;
        let held = Held {
            given: Instant::now(),
            broken: None,
        };
        if f.leased.insert(ino, held).is_none() {
            log.holders.entry(ino).or_default().push(conn);
        }
        Some(Lease {
            holder: conn,
            epoch: self.epoch,
            from,
        })
    }

    /// Waits until everything `breaks` names is done: each holder read the feed far enough
    /// or can no longer trust its lease.
    pub async fn until_heard(&self, breaks: Breaks) {
        if let Some(until) = breaks.until {
            tokio::time::sleep_until(until.into()).await;
        }
        let mut heard = self.heard.subscribe();
        let mut waiting = breaks.heard;
        loop {
            heard.borrow_and_update();
            {
                let log = self.log();
                waiting.retain(|(conn, to)| {
                    log.followers
                        .get(conn)
                        .is_some_and(|f| f.live() && f.heard < *to)
                });
            }
            if waiting.is_empty() {
                return;
            }
            // A holder that stops reading is given up on by the clock, not by a read.
            let _ = tokio::time::timeout(Duration::from_millis(100), heard.changed()).await;
        }
    }

    /// May a connection other than `conn` have `ino` open by a lease without the namenode
    /// knowing yet? One whose lease a change broke may until it has read of the change (it
    /// tells the namenode of its opens before it reads on). With `breaking`, the change at
    /// hand is about to break the leases not broken yet: those count too. A lease given
    /// since does not: it came with an open the namenode knows of.
    pub fn may_be_open_elsewhere(&self, ino: Ino, conn: u64, breaking: bool) -> bool {
        let log = self.log();
        log.holders.get(&ino).is_some_and(|h| {
            h.iter().any(|c| {
                *c != conn
                    && log
                        .followers
                        .get(c)
                        .is_some_and(|f| f.may_hold(ino, breaking))
            })
        })
    }

    /// Inodes that no longer exist: their leases end, and nobody keeps them.
    pub fn removed(&self, inos: &[Ino]) {
        let mut log = self.log();
        for f in log.followers.values_mut() {
            for ino in inos {
                f.known.forget(*ino);
            }
        }
        for ino in inos {
            if let Some(holders) = log.holders.remove(ino) {
                for conn in holders {
                    if let Some(f) = log.followers.get_mut(&conn) {
                        f.leased.remove(ino);
                    }
                }
            }
        }
    }

    /// Connection `conn` ended: it reads the feed no more, and no change waits for it.
    pub fn disconnected(&self, conn: u64) {
        self.log().let_go(conn);
        self.heard.send_modify(|n| *n += 1);
    }

    /// An answer for connection `conn` is about to be read from the namespace: until it says
    /// what the answer named ([`Reading::told`]), every change waits for `conn`.
    pub fn reading(&self, conn: u64) -> Reading<'_> {
        let counted = match self.log().followers.get_mut(&conn) {
            Some(f) => {
                f.known.begin_reading();
                true
            }
            None => false,
        };
        Reading {
            feed: self,
            conn,
            counted,
        }
    }

    /// How many inodes connection `conn` is known to keep something of (`None`: too many
    /// to follow, or it does not read the feed).
    pub fn known(&self, conn: u64) -> Option<usize> {
        self.log()
            .followers
            .get(&conn)
            .and_then(|f| f.known.count())
    }

    /// Files connection `conn` holds leases on (for tests and the dashboard).
    pub fn leases(&self, conn: u64) -> usize {
        self.log().followers.get(&conn).map_or(0, |f| {
            f.leased.values().filter(|l| l.broken.is_none()).count()
        })
    }

    /// Delegates directory `dir` to connection `conn` (see [`cairn_common::proto::Delegate`])
    /// unless another live connection holds it or it was recalled lately; the feed's end
    /// then. `conn` must read the feed: the recall comes that way.
    pub fn delegate(&self, conn: u64, session: u64, dir: Ino) -> Option<u64> {
        let busy = self.busy();
        if busy.contains_key(&dir) {
            return None;
        }
        let mut log = self.log();
        log.settle_delegation(dir);
        match log.followers.get_mut(&conn) {
            Some(f) if f.live() => f.session = Some(session),
            _ => return None,
        }
        if log
            .recalled
            .get(&dir)
            .is_some_and(|t| t.elapsed() < DELEGATION_BACKOFF)
        {
            return None;
        }
        match log.delegs.get_mut(&dir) {
            Some(d) if d.holder == conn && d.recall.is_none() => {}
            // Its session's, through a connection that ended.
            Some(d) if d.resumable_by(conn, Some(session)) => {
                d.holder = conn;
                d.orphaned = None;
            }
            Some(_) => return None,
            None => {
                log.delegs.insert(
                    dir,
                    Deleg {
                        holder: conn,
                        session,
                        recall: None,
                        orphaned: None,
                    },
                );
            }
        }
        Some(log.end())
    }

    /// A delegation of `dir` was just given to `conn`: every other client must forget
    /// what it keeps of `dir`'s names — in its memory and in its kernel — before the holder
    /// answers anything there itself, since it no longer hears of changes there until they
    /// reach the namenode. Told as a recall (which is news to no one's delegation); the
    /// grant waits for what is returned.
    pub fn announce_delegation(&self, conn: u64, dir: Ino) -> Breaks {
        let mut log = self.log();
        log.changes.push_back((conn, Change::Delegated(dir)));
        let end = log.end();
        let mut breaks = Breaks::default();
        for (c, f) in &mut log.followers {
            if *c != conn && f.live() && f.heard < end && concerns(&mut f.known, &[dir], end) {
                breaks.heard.push((*c, end));
            }
        }
        for (c, _) in &breaks.heard {
            log.wake(*c);
        }
        breaks
    }

    /// Takes back a delegation given a moment ago (the directory could not be listed).
    pub fn undelegate(&self, conn: u64, dir: Ino) {
        let mut log = self.log();
        if log.delegs.get(&dir).is_some_and(|d| d.holder == conn) {
            log.delegs.remove(&dir);
        }
    }

    /// May `conn`, of client `session`, still send changes queued in `dir`? While it holds
    /// the delegation, and once recalled, until it has read past the recall (it sends them
    /// before). A connection of the holder's session takes over one that nobody recalled:
    /// its client reconnected, and sends what it queued before.
    pub fn may_act(&self, conn: u64, session: Option<u64>, dir: Ino) -> bool {
        let mut log = self.log();
        log.settle_delegation(dir);
        match log.delegs.get_mut(&dir) {
            Some(d) if d.holder == conn => true,
            Some(d) if d.resumable_by(conn, session) => {
                d.holder = conn;
                d.orphaned = None;
                true
            }
            d => {
                tracing::debug!(
                    conn,
                    ?session,
                    holder = d.as_ref().map(|d| d.holder),
                    held_by = d.as_ref().map(|d| d.session),
                    recall = ?d.as_ref().map(|d| d.recall),
                    "a queued change in {dir} after its delegation"
                );
                false
            }
        }
    }

    /// Whether any directory is delegated: requests need not look for recalls otherwise.
    pub fn any_delegated(&self) -> bool {
        !self.log().delegs.is_empty()
    }

    /// Connection `conn` is about to look into or change `dirs`: recalls their delegations
    /// held by other connections. The request waits for what is returned: each holder
    /// reading the feed past the recall, which it does only once it has sent all it queued
    /// there (or its going silent, after which its late changes are refused).
    pub fn recall(&self, conn: u64, dirs: &[Ino]) -> Breaks {
        let mut log = self.log();
        let mut breaks = Breaks::default();
        for dir in dirs {
            log.settle_delegation(*dir);
            let Some(d) = log.delegs.get(dir).copied() else {
                continue;
            };
            if d.holder == conn {
                continue;
            }
            let to = match d.recall {
                Some(to) => to,
                None => {
                    let to = log.end() + 1;
                    log.changes.push_back((0, Change::Recall(*dir)));
                    log.delegs.insert(
                        *dir,
                        Deleg {
                            recall: Some(to),
                            ..d
                        },
                    );
                    log.recalled.insert(*dir, Instant::now());
                    log.wake(d.holder);
                    to
                }
            };
            // A holder gone silent, or whose connection ended, is not waited for: over at
            // once.
            if log.followers.get(&d.holder).is_some_and(Follower::live) {
                breaks.heard.push((d.holder, to));
            } else {
                log.settle_delegation(*dir);
            }
        }
        if log.recalled.len() > 4096 {
            log.recalled.retain(|_, t| t.elapsed() < DELEGATION_BACKOFF);
        }
        breaks
    }

    /// Inode numbers `first..first + count` are `conn`'s for its queued creates.
    pub fn reserved(&self, conn: u64, session: u64, first: u64, count: u32) {
        let inos = first..first + u64::from(count);
        let mut log = self.log();
        match log.followers.get_mut(&conn) {
            Some(f) => {
                f.session = Some(session);
                f.inos.extend(inos);
            }
            None => log.returned.extend(inos),
        }
    }

    /// Is `ino` reserved for some connection's queued creates?
    pub fn is_reserved(&self, ino: Ino) -> bool {
        let log = self.log();
        log.followers.values().any(|f| f.inos.contains(&ino.0))
            || log.parked.values().any(|(_, inos)| inos.contains(&ino.0))
    }

    /// Inode numbers reserved for connections that have ended, unused (and that no other
    /// connection of their session used within [`RESUME_GRACE`]): the namenode gives them
    /// back ([`crate::ops::MetaOpKind::ReturnInos`]).
    pub fn take_returned(&self) -> Vec<u64> {
        let mut log = self.log();
        let mut returned = std::mem::take(&mut log.returned);
        log.parked.retain(|_, (since, inos)| {
            let keep = since.elapsed() < RESUME_GRACE;
            if !keep {
                returned.extend(inos.drain());
            }
            keep
        });
        returned
    }

    /// `conn`, of client `session`, uses inode number `ino`, if it was reserved for it or
    /// for an ended connection of its session (once).
    pub fn take_ino(&self, conn: u64, session: Option<u64>, ino: Ino) -> bool {
        let mut log = self.log();
        if let Some(f) = log.followers.get_mut(&conn) {
            if f.inos.remove(&ino.0) {
                return true;
            }
        }
        session
            .and_then(|s| log.parked.get_mut(&s))
            .is_some_and(|(_, inos)| inos.remove(&ino.0))
    }

    /// A change of `dirs` begins; it ends when the guard drops. Taken before the change
    /// looks for delegations to recall: a delegation given after that is recalled by it.
    pub fn changing(&self, dirs: &[Ino]) -> Changing<'_> {
        let mut busy = self.busy();
        for dir in dirs {
            *busy.entry(*dir).or_default() += 1;
        }
        Changing {
            feed: self,
            dirs: dirs.to_vec(),
        }
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, u32>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the changes one op made through connection `origin`, whose answer told it
    /// the new state of the inodes `answered` (and of those directories' entries): only the
    /// others hear of those. Everyone hears of the rest.
    ///
    /// Returns what the answer to the op must wait for: other connections' leases on the
    /// files it changed, which end here.
    pub fn push(
        &self,
        origin: u64,
        answered: &[Ino],
        changes: impl IntoIterator<Item = Change>,
    ) -> Breaks {
        let mut log = self.log();
        let mut breaks = Breaks {
            heard: Vec::new(),
            until: self.run().hold_until.filter(|t| *t > Instant::now()),
        };
        // Whether some change is news to the connection that made them too.
        let mut news_to_origin = false;
        let position_before = log.end();
        for change in changes {
            let position = log.end();
            let known = match &change {
                Change::Inode(ino) => {
                    let holders = log.holders.get(ino).cloned().unwrap_or_default();
                    for conn in holders.into_iter().filter(|c| *c != origin) {
                        let Some(f) = log.followers.get_mut(&conn) else {
                            continue;
                        };
                        // Broken by the first change it has not read: that read ends it.
                        let to = match f.leased.get_mut(ino) {
                            Some(Held {
                                broken: Some(to), ..
                            }) => *to,
                            Some(lease) => {
                                lease.broken = Some(position + 1);
                                f.broken.push_back((*ino, position + 1));
                                position + 1
                            }
                            None => continue,
                        };
                        breaks.heard.push((conn, to));
                    }
                    answered.contains(ino)
                }
                Change::Entries(dir, _) => answered.contains(dir),
                Change::Recall(_) | Change::Delegated(_) => false,
            };
            news_to_origin |= !known;
            log.changes
                .push_back((if known { origin } else { 0 }, change));
        }
        // Coherence: once the change is answered, every other mount has dropped what it
        // kept of it (names, attributes, pages, in its kernel too), so an operation that
        // starts there afterwards sees it. Each live follower that may keep something of
        // it must read past the change.
        let end = log.end();
        let touched: Vec<Ino> = log
            .changes
            .range((position_before - log.first) as usize..)
            .filter_map(|(_, change)| change.inode())
            .collect();
        for (conn, f) in &mut log.followers {
            if *conn == origin {
                // What its answer and its own change told it, it keeps.
                for ino in answered.iter().chain(&touched) {
                    f.known.told(*ino);
                }
            } else if f.live() && f.heard < end && concerns(&mut f.known, &touched, end) {
                breaks.heard.push((*conn, end));
            }
        }
        // Woken at once: those that must read the change before it is answered (the rest
        // hear of it at their next read, within `FEED_WAIT`: it concerns nothing they keep).
        if news_to_origin {
            log.wake(origin);
        }
        for (conn, _) in &breaks.heard {
            log.wake(*conn);
        }
        let excess = log.changes.len().saturating_sub(KEPT);
        if excess > 0 {
            log.changes.drain(..excess);
            log.first += excess as u64;
        }
        breaks
    }

    /// As [`ChangeFeed::since`], but when nothing is new for `origin`, waits for something
    /// that is, for at most `wait` or until `stop`.
    pub async fn wait_since(
        &self,
        origin: u64,
        epoch: u64,
        since: u64,
        wait: Duration,
        stop: &CancellationToken,
    ) -> ChangesReply {
        let deadline = tokio::time::Instant::now() + wait;
        let news = self
            .log()
            .waiting
            .entry(origin)
            .or_insert_with(|| Arc::new(tokio::sync::Notify::new()))
            .clone();
        let mut at = since;
        loop {
            // Waited on before the log is read: an append after the read wakes it.
            let woken = news.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let reply = self.since(origin, epoch, at);
            if !reply.complete || reply.more || !reply.changes.is_empty() {
                return reply;
            }
            // Only this client's own changes (or none): wait on from past them.
            at = reply.next;
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep_until(deadline) => return reply,
                _ = stop.cancelled() => return reply,
            }
        }
    }

    /// The changes after the `since`-th of run `epoch`, except those `origin` made itself.
    /// Reading says `origin` applied every change before `since`.
    pub fn since(&self, origin: u64, epoch: u64, since: u64) -> ChangesReply {
        let mut log = self.log();
        let end = log.end();
        let follower = log.followers.entry(origin).or_insert_with(Follower::new);
        follower.read_at = Instant::now();
        if epoch == self.epoch && since <= end {
            follower.heard = follower.heard.max(since);
        }
        follower.known.read_to(follower.heard);
        // Broken leases it has now read of end.
        let mut ended = Vec::new();
        while let Some(&(ino, to)) = follower.broken.front() {
            if to > follower.heard {
                break;
            }
            follower.broken.pop_front();
            if follower.leased.get(&ino).and_then(|l| l.broken) == Some(to) {
                follower.leased.remove(&ino);
                ended.push(ino);
            }
        }
        for ino in ended {
            log.unlease(ino, origin);
        }
        log.sweep();
        self.heard.send_modify(|n| *n += 1);
        if epoch != self.epoch || since < log.first || since > end {
            return ChangesReply {
                epoch: self.epoch,
                next: end,
                more: false,
                complete: false,
                changes: Vec::new(),
                reader: origin,
                exports: 0,
            };
        }
        let start = (since - log.first) as usize;
        let taken = (log.changes.len() - start).min(PER_REPLY);
        let changes = log
            .changes
            .range(start..start + taken)
            .filter(|(by, _)| *by != origin)
            .map(|(_, change)| change.clone())
            .collect();
        let next = since + taken as u64;
        ChangesReply {
            epoch: self.epoch,
            next,
            more: next < end,
            complete: true,
            changes,
            reader: origin,
            exports: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waits_for_another_clients_change_or_its_time() {
        let feed = Arc::new(ChangeFeed::new(7, false));
        let stop = CancellationToken::new();
        let at = feed.since(1, 7, 0).next;
        let quiet = feed
            .wait_since(1, 7, at, Duration::from_millis(50), &stop)
            .await;
        assert!(quiet.complete && quiet.changes.is_empty());
        let wait = |since| {
            let (feed, stop) = (feed.clone(), stop.clone());
            tokio::spawn(async move {
                feed.wait_since(1, 7, since, Duration::from_secs(60), &stop)
                    .await
            })
        };
        feed.reading(1).told([Ino(6)]);
        let waiting = wait(at);
        feed.push(1, &[Ino(5)], [Change::Inode(Ino(5))]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "its own change is no news to it");
        // Another's change of what it keeps nothing of can wait for its next read.
        feed.push(2, &[], [Change::Inode(Ino(7))]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "woken for what it keeps nothing of");
        feed.push(2, &[], [Change::Inode(Ino(6))]);
        let news = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            news.changes,
            vec![Change::Inode(Ino(7)), Change::Inode(Ino(6))]
        );
        // A namenode shutting down answers at once.
        let waiting = wait(news.next);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_member_taking_the_lead_inherits_as_a_restarted_namenode_does() {
        let feed = ChangeFeed::new(7, false);
        assert!(!feed.replaying());
        assert!(feed.push(2, &[], [Change::Inode(Ino(6))]).is_empty());
        // Elected after running a while as a follower: the previous leader's clients
        // queued changes under its delegations and trust its leases.
        let quiet = Duration::from_millis(500);
        feed.lead_taken(quiet);
        assert!(
            feed.replaying(),
            "changes queued under its delegations are refused"
        );
        let breaks = feed.push(2, &[], [Change::Inode(Ino(6))]);
        let until = breaks
            .until
            .expect("a change does not wait for the old leases");
        let left = until.saturating_duration_since(Instant::now());
        // Less long than after a restart by the time the previous leader was quiet.
        assert!(
            left > LEASE_HOLD - quiet - Duration::from_millis(200),
            "{left:?}"
        );
        assert!(left <= LEASE_HOLD - quiet, "{left:?}");
    }

    #[test]
    fn a_client_hears_of_the_others_changes_in_order_and_of_a_gap() {
        let feed = ChangeFeed::new(7, false);
        let start = feed.since(1, 0, 0);
        assert!(!start.complete, "another run's position");
        assert_eq!((start.epoch, start.next), (7, 0));
        feed.push(1, &[Ino(5)], [Change::Inode(Ino(5))]);
        let entry = Change::Entries(Ino(1), 1);
        // Of a change whose answer told its client of directory 1 only, that client hears
        // of the rest.
        feed.push(2, &[Ino(1)], [entry.clone(), Change::Inode(Ino(6))]);
        let seen = feed.since(1, 7, 0);
        assert!(seen.complete);
        assert_eq!(seen.changes, vec![entry, Change::Inode(Ino(6))]);
        assert_eq!(seen.next, 3);
        assert_eq!(
            feed.since(2, 7, 0).changes,
            vec![Change::Inode(Ino(5)), Change::Inode(Ino(6))]
        );
        assert!(feed.since(1, 7, 3).changes.is_empty());
        // Long answers come in parts.
        for i in 0..PER_REPLY as u64 + 10 {
            feed.push(2, &[], [Change::Inode(Ino(100 + i))]);
        }
        let part = feed.since(1, 7, 3);
        assert_eq!(part.changes.len(), PER_REPLY);
        assert!(part.more);
        let rest = feed.since(1, 7, part.next);
        assert_eq!(rest.changes.len(), 10);
        assert!(!rest.more);
        // Fallen behind what is kept: a gap, not a partial answer.
        for i in 0..KEPT as u64 {
            feed.push(2, &[], [Change::Inode(Ino(i))]);
        }
        let behind = feed.since(1, 7, 3);
        assert!(!behind.complete);
        assert!(feed.since(1, 7, behind.next).complete);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delegation_is_recalled_by_another_client_and_ends_once_its_holder_read_past() {
        let feed = Arc::new(ChangeFeed::new(7, false));
        let dir = Ino(9);
        // Only a client that reads the feed gets one.
        assert_eq!(feed.delegate(1, 11, dir), None);
        let at = feed.since(1, 7, 0).next;
        feed.since(2, 7, 0);
        assert!(feed.delegate(1, 11, dir).is_some());
        assert!(feed.may_act(1, Some(11), dir) && !feed.may_act(2, Some(22), dir));
        // Nobody else gets it meanwhile; its holder asks again for nothing.
        assert_eq!(feed.delegate(2, 22, dir), None);
        assert!(feed.delegate(1, 11, dir).is_some());
        // Its own requests recall nothing.
        assert!(feed.recall(1, &[dir]).is_empty());

        // Another client comes: the holder is told, may still send what it queued, and the
        // other client's request waits until the holder has read past the recall.
        let breaks = feed.recall(2, &[dir, Ino(10)]);
        assert!(!breaks.is_empty());
        let news = feed.since(1, 7, at);
        assert_eq!(news.changes, vec![Change::Recall(dir)]);
        assert!(feed.may_act(1, Some(11), dir));
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.until_heard(breaks).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !waiting.is_finished(),
            "answered before the holder read past the recall"
        );
        feed.since(1, 7, news.next);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the recall ends once the holder read past it")
            .unwrap();
        // Over: what the holder sends now is refused, and nobody gets the directory again
        // for a while.
        assert!(!feed.may_act(1, Some(11), dir));
        assert_eq!(feed.delegate(1, 11, dir), None);
        assert_eq!(feed.delegate(2, 22, dir), None);
    }

    #[test]
    fn a_change_waits_only_for_the_followers_that_may_keep_what_it_changed() {
        let feed = ChangeFeed::new(7, false);
        let (a, b, c) = (1, 2, 3);
        let dir = Ino(9);
        let file = Ino(10);
        let mut at = [0u64; 4];
        for conn in [a, b, c] {
            at[conn as usize] = feed.since(conn, 7, 0).next;
        }
        let waits_for = |breaks: &Breaks| {
            let mut conns: Vec<u64> = breaks.heard.iter().map(|(c, _)| *c).collect();
            conns.sort();
            conns
        };
        let create = |origin| {
            feed.push(
                origin,
                &[dir, file],
                [Change::Entries(dir, 1), Change::Inode(file)],
            )
        };
        // Nobody else ever looked there.
        assert_eq!(waits_for(&create(a)), Vec::<u64>::new());
        // b lists the directory; c is reading an answer of its own just now.
        feed.reading(b).told([dir]);
        let reading = feed.reading(c);
        assert_eq!(waits_for(&create(a)), [b, c]);
        reading.told([Ino(77)]);
        // b has not read of that change yet: a second one waits for it too.
        let breaks = create(a);
        assert_eq!(waits_for(&breaks), [b]);
        // Once b read past the change, it dropped the directory and is not waited for
        // until it looks again; a's own changes kept what they told a.
        let end = breaks.heard[0].1;
        feed.since(b, 7, end);
        assert_eq!(waits_for(&create(c)), [a]);
        feed.reading(b).told([file]);
        assert_eq!(waits_for(&create(c)), [a, b]);
        // A delegation's grant waits for those that keep the directory's names.
        assert_eq!(
            waits_for(&feed.announce_delegation(c, Ino(50))),
            Vec::<u64>::new()
        );
        assert_eq!(waits_for(&feed.announce_delegation(c, dir)), [a]);
        // The removed are forgotten; how much each keeps is known.
        assert_eq!(feed.known(b), Some(1));
        feed.removed(&[file]);
        assert_eq!(feed.known(b), Some(0));
        assert_eq!(feed.known(99), None);
    }

    #[test]
    fn a_directory_being_changed_is_not_delegated_and_inode_numbers_are_used_once() {
        let feed = ChangeFeed::new(7, false);
        let dir = Ino(9);
        feed.since(1, 7, 0);
        {
            let _changing = feed.changing(&[dir]);
            assert_eq!(feed.delegate(1, 11, dir), None);
        }
        assert!(feed.delegate(1, 11, dir).is_some());
        // A holder that disconnects lets go, but for a new connection of its session.
        feed.disconnected(1);
        feed.since(2, 7, 0);
        assert!(!feed.may_act(2, Some(22), dir));
        assert!(!feed.may_act(2, None, dir));
        assert_eq!(feed.delegate(2, 22, dir), None);

        feed.since(3, 7, 0);
        feed.reserved(3, 33, 100, 2);
        assert!(feed.is_reserved(Ino(100)) && !feed.is_reserved(Ino(102)));
        assert!(
            !feed.take_ino(4, Some(44), Ino(100)),
            "another connection's number"
        );
        assert!(feed.take_ino(3, Some(33), Ino(100)));
        assert!(!feed.take_ino(3, Some(33), Ino(100)), "used twice");
        assert!(feed.take_ino(3, Some(33), Ino(101)));
        assert!(!feed.take_ino(3, Some(33), Ino(102)), "never reserved");

        // Numbers a connection did not use come back once, when it ended and no other
        // connection of its session used them for a while.
        feed.reserved(3, 33, 200, 4);
        assert!(feed.take_ino(3, Some(33), Ino(201)));
        assert_eq!(feed.take_returned(), Vec::<u64>::new());
        feed.disconnected(3);
        assert_eq!(feed.take_returned(), Vec::<u64>::new());
        assert!(feed.is_reserved(Ino(203)));
        assert!(
            !feed.take_ino(4, Some(44), Ino(203)),
            "another session's number"
        );
        assert!(feed.take_ino(5, Some(33), Ino(203)), "its session's number");
        feed.log().parked.get_mut(&33).unwrap().0 -= RESUME_GRACE;
        let mut back = feed.take_returned();
        back.sort();
        assert_eq!(back, [200, 202]);
        assert!(feed.take_returned().is_empty());
        assert!(!feed.take_ino(5, Some(33), Ino(202)), "given back");
        // A reservation answered after its connection ended comes back at once.
        feed.reserved(3, 33, 300, 1);
        assert_eq!(feed.take_returned(), [300]);
    }

    #[test]
    fn a_client_that_reconnects_sends_what_it_queued_under_its_delegation() {
        let feed = ChangeFeed::new(7, false);
        let (dir, other_dir) = (Ino(9), Ino(10));
        feed.since(1, 7, 0);
        assert!(feed.delegate(1, 11, dir).is_some());
        assert!(feed.delegate(1, 11, other_dir).is_some());
        feed.disconnected(1);
        // Its session's next connection sends what was queued: it holds the delegation
        // from then on, and its first connection's requests are refused.
        feed.since(2, 7, 0);
        assert!(feed.may_act(2, Some(11), dir));
        assert!(!feed.may_act(1, Some(11), dir));
        assert!(feed.delegate(2, 11, other_dir).is_some(), "asked for again");
        assert!(feed.recall(2, &[dir]).is_empty(), "its own");

        // A holder gone silent, its connection not ended here: the client gave it up (the
        // namenode stalled past the idle timeout), and its next connection takes over.
        let third = Ino(11);
        feed.since(5, 7, 0);
        assert!(feed.delegate(5, 55, third).is_some());
        if let Some(f) = feed.log().followers.get_mut(&5) {
            f.read_at = f.read_at.checked_sub(LEASE_HOLD).unwrap();
        }
        feed.since(6, 7, 0);
        assert!(!feed.may_act(6, Some(11), third), "another session");
        assert!(feed.may_act(6, Some(55), third));

        // Recalled while nobody holds it: over at once, for its session too.
        feed.disconnected(2);
        feed.since(3, 7, 0);
        assert!(
            feed.recall(3, &[dir]).is_empty(),
            "waits for a connection that ended"
        );
        feed.since(4, 7, 0);
        assert!(!feed.may_act(4, Some(11), dir));
        // Not taken over past the grace.
        feed.log().delegs.get_mut(&other_dir).unwrap().orphaned =
            Instant::now().checked_sub(RESUME_GRACE);
        assert!(!feed.may_act(4, Some(11), other_dir));
        assert!(feed.delegate(3, 33, other_dir).is_some());
    }
}
