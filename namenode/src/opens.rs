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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::Ino;

struct Session {
    /// Open inode → generation at which it was last claimed.
    open: HashMap<Ino, u64>,
    renewed: Instant,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<u64, Session>,
    /// How many sessions hold each inode open.
    holders: HashMap<Ino, u32>,
    /// Inodes being purged: an open of one of them fails as if it came after the unlink.
    purging: HashMap<Ino, u32>,
}

pub struct OpenTable {
    lease: Duration,
    /// Nothing is purged until this long after the start: clients first claim again what
    /// they held before a restart.
    grace_until: Instant,
    inner: Mutex<Table>,
}

impl Table {
    fn add(&mut self, session: u64, ino: Ino, gen: u64) {
        let s = self.sessions.entry(session).or_insert_with(|| Session {
            open: HashMap::new(),
            renewed: Instant::now(),
        });
        match s.open.insert(ino, gen) {
            Some(old) if old > gen => {
                s.open.insert(ino, old);
            }
            Some(_) => {}
            None => *self.holders.entry(ino).or_default() += 1,
        }
    }

    /// Forgets one holder of `ino`; true when nobody holds it any more.
    fn drop_holder(&mut self, ino: Ino) -> bool {
        match self.holders.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.holders.remove(&ino);
                true
            }
        }
    }
}

impl OpenTable {
    pub fn new(lease: Duration, grace: Duration) -> OpenTable {
        OpenTable {
            lease,
            grace_until: Instant::now() + grace,
            inner: Mutex::default(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Still within the grace after the start, when no file is purged.
    pub fn in_grace(&self) -> bool {
        Instant::now() < self.grace_until
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `session` opened `ino` (claimed at generation `gen`). Fails when the file is being
    /// purged: its last name is gone and nobody held it, so the open comes too late.
    pub fn claim(&self, session: u64, ino: Ino, gen: u64) -> bool {
        let mut t = self.table();
        if t.purging.contains_key(&ino) {
            return false;
        }
        t.add(session, ino, gen);
        true
    }

    /// A renewal: `session` holds exactly `open`, as of its generation `gen`. Returns the
    /// inodes nobody holds any more.
    pub fn renew(&self, session: u64, gen: u64, open: &[Ino]) -> Vec<Ino> {
        let mut t = self.table();
        let keep: std::collections::HashSet<Ino> = open.iter().copied().collect();
        let mut released = Vec::new();
        if let Some(s) = t.sessions.get_mut(&session) {
            s.renewed = Instant::now();
            let gone: Vec<Ino> = s
                .open
                .iter()
                .filter(|(ino, claimed)| !keep.contains(ino) && **claimed <= gen)
                .map(|(ino, _)| *ino)
                .collect();
            for ino in &gone {
                s.open.remove(ino);
            }
            for ino in gone {
                if t.drop_holder(ino) {
                    released.push(ino);
                }
            }
        }
        for ino in keep {
            t.add(session, ino, gen);
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
            for ino in s.open.into_keys() {
                if t.drop_holder(ino) {
                    released.push(ino);
                }
            }
        }
        released
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
        assert!(t.claim(1, Ino(10), 1));
        assert!(t.claim(2, Ino(10), 1));
        assert_eq!(t.renew(1, 2, &[]), vec![]);
        assert!(t.is_open(Ino(10)));
        assert_eq!(t.renew(2, 5, &[]), vec![Ino(10)]);
        assert!(!t.is_open(Ino(10)));
        assert_eq!(t.counts(), (0, 0));
    }

    #[test]
    fn a_renewal_older_than_a_claim_keeps_it() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert!(t.claim(1, Ino(10), 7));
        // Snapshot taken at generation 6, before the open: the open stands.
        assert_eq!(t.renew(1, 6, &[]), vec![]);
        assert!(t.is_open(Ino(10)));
        assert_eq!(t.renew(1, 7, &[]), vec![Ino(10)]);
    }

    #[test]
    fn a_renewal_restores_what_a_restart_forgot() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert_eq!(t.renew(3, 1, &[Ino(5), Ino(6)]), vec![]);
        assert!(t.is_open(Ino(5)) && t.is_open(Ino(6)));
        assert_eq!(t.counts(), (1, 2));
    }

    #[test]
    fn a_silent_session_expires() {
        let t = OpenTable::new(Duration::from_millis(20), Duration::ZERO);
        assert!(t.claim(1, Ino(10), 1));
        assert_eq!(t.expire(), vec![]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.expire(), vec![Ino(10)]);
        assert!(!t.is_open(Ino(10)));
    }

    #[test]
    fn opens_fail_while_a_purge_runs_and_purges_wait_for_opens() {
        let t = OpenTable::new(Duration::from_secs(30), Duration::ZERO);
        assert!(t.begin_purge(Ino(10)));
        assert!(!t.claim(1, Ino(10), 1));
        t.purged(Ino(10));
        assert!(t.claim(1, Ino(10), 1));
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
}
