//! Which files each client has open, so that a file unlinked while open somewhere stays
//! readable and writable there until its last close, whichever mount removed its name.
//!
//! Soft state, renewed by leases: every client sends its whole open set every few seconds
//! (`KeepOpen`), and a session not heard from within the lease is forgotten. After a namenode
//! restart the table is empty; files unlinked while open wait (as orphans in the store) one
//! lease for their clients to say they still hold them.
//!
//! Each registration carries the client's open-set generation: a renewal built from an older
//! snapshot (generation below the registration's) does not drop it, so an open racing with a
//! renewal is never lost.
//!
//! The table also knows which sessions hold a file open for writing. An open of a file that
//! another session writes (or a writing open of a file another session holds) is told so:
//! its mount then reads and writes that file past the kernel's page cache, which cannot be
//! kept coherent between machines for shared memory mappings. SQLite's WAL index is such a
//! mapping: on a second mount it fails loudly instead of corrupting the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::Ino;

struct Session {
    open: HashMap<Ino, Claim>,
    renewed: Instant,
}

/// A session's hold on an open file.
#[derive(Clone, Copy)]
struct Claim {
    /// The generation at which it was last claimed.
    gen: u64,
    /// Held open for writing.
    write: bool,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<u64, Session>,
    /// How many sessions hold each inode open.
    holders: HashMap<Ino, u32>,
    /// How many sessions hold each inode open for writing.
    writers: HashMap<Ino, u32>,
    /// Inodes being purged: an open of one of them fails as if it came after the unlink.
    purging: HashMap<Ino, u32>,
}

pub struct OpenTable {
    lease: Duration,
    /// Nothing is purged until this long after the start: clients first claim again what
    /// they held before a restart.
    grace_until: Mutex<Instant>,
    inner: Mutex<Table>,
}

impl Table {
    /// `session` holds `ino` as of generation `gen`, for writing if `write`. A claim only
    /// adds (`renewal` false); a renewal says how the file is held, except that it does not
    /// undo a claim made after it was built.
    fn add(&mut self, session: u64, ino: Ino, gen: u64, write: bool, renewal: bool) {
        let s = self.sessions.entry(session).or_insert_with(|| Session {
            open: HashMap::new(),
            renewed: Instant::now(),
        });
        let (was_writing, writing) = match s.open.get_mut(&ino) {
            Some(c) => {
                let was = c.write;
                if c.gen > gen || !renewal {
                    c.write |= write;
                } else {
                    c.write = write;
                }
                c.gen = c.gen.max(gen);
                (was, c.write)
            }
            None => {
                s.open.insert(ino, Claim { gen, write });
                *self.holders.entry(ino).or_default() += 1;
                (false, write)
            }
        };
        match (was_writing, writing) {
            (false, true) => *self.writers.entry(ino).or_default() += 1,
            (true, false) => {
                Self::less(&mut self.writers, ino);
            }
            _ => {}
        }
    }

    /// Whether an open of `ino` by `session` (for writing if `write`) shares the file with
    /// another session's writes.
    fn shared(&self, session: u64, ino: Ino, write: bool) -> bool {
        let own = self.sessions.get(&session).and_then(|s| s.open.get(&ino));
        let others = |counts: &HashMap<Ino, u32>, mine: bool| {
            counts.get(&ino).copied().unwrap_or(0) > u32::from(mine)
        };
        others(&self.writers, own.is_some_and(|c| c.write))
            || (write && others(&self.holders, own.is_some()))
    }

    /// Forgets `session`'s hold `claim` of `ino`; true when nobody holds it any more.
    fn drop_holder(&mut self, ino: Ino, claim: Claim) -> bool {
        if claim.write {
            Self::less(&mut self.writers, ino);
        }
        Self::less(&mut self.holders, ino)
    }

    /// One fewer in `counts` for `ino`; true when none are left.
    fn less(counts: &mut HashMap<Ino, u32>, ino: Ino) -> bool {
        match counts.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                counts.remove(&ino);
                true
            }
        }
    }
}

impl OpenTable {
    pub fn new(lease: Duration, grace: Duration) -> OpenTable {
        OpenTable {
            lease,
            grace_until: Mutex::new(Instant::now() + grace),
            inner: Mutex::default(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Still within the grace after the start, when no file is purged.
    pub fn in_grace(&self) -> bool {
        Instant::now() < *self.grace_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A grace of a lease from now: this namenode has just come to lead its group, and
    /// clients claim again what they held open through the leader before it.
    pub fn restart_grace(&self) {
        *self.grace_until.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + self.lease;
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `session` opened `ino` (claimed at generation `gen`), for writing if `write`. `None`
    /// when the file is being purged: its last name is gone and nobody held it, so the open
    /// comes too late. Otherwise whether the file is shared with another session's writes:
    /// another session writes it, or this open writes and another session holds it.
    pub fn claim(&self, session: u64, ino: Ino, gen: u64, write: bool) -> Option<bool> {
        let mut t = self.table();
        if t.purging.contains_key(&ino) {
            return None;
        }
        let shared = t.shared(session, ino, write);
        t.add(session, ino, gen, write, false);
        Some(shared)
    }

    /// A renewal: `session` holds exactly `open`, those in `writing` for writing, as of its
    /// generation `gen`. Returns the inodes nobody holds any more.
    pub fn renew(&self, session: u64, gen: u64, open: &[Ino], writing: &[Ino]) -> Vec<Ino> {
        let mut t = self.table();
        let keep: std::collections::HashSet<Ino> = open.iter().copied().collect();
        let writing: std::collections::HashSet<Ino> = writing.iter().copied().collect();
        let mut released = Vec::new();
        if let Some(s) = t.sessions.get_mut(&session) {
            s.renewed = Instant::now();
            let gone: Vec<Ino> = s
                .open
                .iter()
                .filter(|(ino, claim)| !keep.contains(ino) && claim.gen <= gen)
                .map(|(ino, _)| *ino)
                .collect();
            let gone: Vec<(Ino, Claim)> = gone
                .into_iter()
                .filter_map(|ino| s.open.remove(&ino).map(|claim| (ino, claim)))
                .collect();
            for (ino, claim) in gone {
                if t.drop_holder(ino, claim) {
                    released.push(ino);
                }
            }
        }
        for ino in keep {
            let write = writing.contains(&ino);
            t.add(session, ino, gen, write, true);
        }
        if let Some(s) = t.sessions.get_mut(&session) {
            s.renewed = Instant::now();
            if s.open.is_empty() {
                t.sessions.remove(&session);
            }
        }
        released
    }

    /// How many files `session` holds open.
    pub fn held_by(&self, session: u64) -> usize {
        self.table()
            .sessions
            .get(&session)
            .map_or(0, |s| s.open.len())
    }

    /// Forgets sessions not renewed within the lease (their clients died or lost us).
    /// Returns the inodes nobody holds any more.
    pub fn expire(&self) -> Vec<Ino> {
        let mut t = self.table();
        let lease = self.lease;
        let dead: Vec<u64> = t
            .sessions
            .iter()
            .filter(|(_, s)| s.renewed.elapsed() > lease)
            .map(|(id, _)| *id)
            .collect();
        let mut released = Vec::new();
        for id in dead {
            let Some(s) = t.sessions.remove(&id) else {
                continue;
            };
            for (ino, claim) in s.open {
                if t.drop_holder(ino, claim) {
                    released.push(ino);
                }
            }
        }
        released
    }

    /// The sessions holding `ino` open (for writing, if `write`).
    pub fn holding(&self, ino: Ino, write: bool) -> Vec<u64> {
        let t = self.table();
        if !t.holders.contains_key(&ino) {
            return Vec::new();
        }
        t.sessions
            .iter()
            .filter(|(_, s)| s.open.get(&ino).is_some_and(|c| c.write || !write))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn is_open(&self, ino: Ino) -> bool {
        self.table().holders.contains_key(&ino)
    }

    /// Starts purging `ino` unless someone holds it open; opens of it fail until
    /// `purged` is called. Returns whether the purge may go ahead.
    pub fn begin_purge(&self, ino: Ino) -> bool {
        if self.in_grace() {
            return false;
        }
        let mut t = self.table();
        if t.holders.contains_key(&ino) {
            return false;
        }
        *t.purging.entry(ino).or_default() += 1;
        true
    }

    pub fn purged(&self, ino: Ino) {
        let mut t = self.table();
        match t.purging.get_mut(&ino) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                t.purging.remove(&ino);
            }
        }
    }

    /// Sessions holding files open, and files held.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.table();
        (t.sessions.len(), t.holders.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_held_until_every_session_lets_go() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert!(t.claim(1, Ino(10), 1, false).is_some());
        assert!(t.claim(2, Ino(10), 1, false).is_some());
        assert_eq!(t.renew(1, 2, &[], &[]), vec![]);
        assert!(t.is_open(Ino(10)));
        assert_eq!(t.renew(2, 5, &[], &[]), vec![Ino(10)]);
        assert!(!t.is_open(Ino(10)));
        assert_eq!(t.counts(), (0, 0));
    }

    #[test]
    fn a_renewal_older_than_a_claim_keeps_it() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert!(t.claim(1, Ino(10), 7, false).is_some());
        // Snapshot taken at generation 6, before the open: the open stands.
        assert_eq!(t.renew(1, 6, &[], &[]), vec![]);
        assert!(t.is_open(Ino(10)));
        assert_eq!(t.renew(1, 7, &[], &[]), vec![Ino(10)]);
    }

    #[test]
    fn a_renewal_restores_what_a_restart_forgot() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert_eq!(t.renew(3, 1, &[Ino(5), Ino(6)], &[]), vec![]);
        assert!(t.is_open(Ino(5)) && t.is_open(Ino(6)));
        assert_eq!(t.counts(), (1, 2));
    }

    #[test]
    fn a_silent_session_expires() {
        let t = OpenTable::new(Duration::from_millis(20), Duration::ZERO);
        assert!(t.claim(1, Ino(10), 1, false).is_some());
        assert_eq!(t.expire(), vec![]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.expire(), vec![Ino(10)]);
        assert!(!t.is_open(Ino(10)));
    }

    #[test]
    fn opens_fail_while_a_purge_runs_and_purges_wait_for_opens() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert!(t.begin_purge(Ino(10)));
        assert!(t.claim(1, Ino(10), 1, false).is_none());
        t.purged(Ino(10));
        assert!(t.claim(1, Ino(10), 1, false).is_some());
        assert!(!t.begin_purge(Ino(10)));
    }

    #[test]
    fn nothing_is_purged_during_the_grace_after_a_start() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::from_millis(30));
        assert!(t.in_grace());
        assert!(!t.begin_purge(Ino(10)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.begin_purge(Ino(10)));
    }

    #[test]
    fn an_open_is_told_when_another_session_writes_the_file() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        let (reader, writer, other) = (1, 2, 3);
        assert_eq!(t.claim(reader, Ino(10), 1, false), Some(false));
        assert_eq!(
            t.claim(reader, Ino(10), 2, false),
            Some(false),
            "its own opens"
        );
        // Writing a file another session holds: shared. Its own other write opens are not.
        assert_eq!(t.claim(writer, Ino(10), 1, true), Some(true));
        assert_eq!(
            t.claim(writer, Ino(10), 2, true),
            Some(true),
            "the reader still holds it"
        );
        assert_eq!(
            t.claim(other, Ino(10), 1, false),
            Some(true),
            "reading what one writes"
        );
        // The reader and the other let go; the writer's next write open is alone.
        t.renew(reader, 3, &[], &[]);
        t.renew(other, 2, &[], &[]);
        assert_eq!(t.claim(writer, Ino(10), 3, true), Some(false));
        // A renewal that says the file is held for reading only ends the writing…
        t.renew(writer, 4, &[Ino(10)], &[]);
        assert_eq!(t.claim(other, Ino(10), 3, false), Some(false));
        // …but not a write claim made after the renewal was built.
        assert_eq!(t.claim(writer, Ino(11), 6, true), Some(false));
        t.renew(writer, 5, &[Ino(10), Ino(11)], &[]);
        assert_eq!(t.claim(other, Ino(11), 4, false), Some(true));
        // A silent writer's session expires with its writing.
        let t = OpenTable::new(Duration::from_millis(20), Duration::ZERO);
        assert_eq!(t.claim(writer, Ino(10), 1, true), Some(false));
        std::thread::sleep(Duration::from_millis(40));
        t.expire();
        assert_eq!(t.claim(other, Ino(10), 1, true), Some(false));
    }
}
