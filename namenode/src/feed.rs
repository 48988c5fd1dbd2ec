//! The namespace's recent changes, in order, for mounts to drop what they cache.
//!
//! A mount hands the kernel names and attributes to keep; it may let the kernel keep them
//! for long only because it hears within a fraction of a second of every change another
//! client makes. Every op's written inodes and entries are appended here after they are
//! durable (before the op is answered); a mount asks for what came after the last change it
//! saw. The feed lives in memory and holds the latest changes only: a mount that comes from
//! another namenode run, or fell further behind, is told so and must doubt everything.

use std::collections::VecDeque;
use std::sync::Mutex;

use cairn_common::proto::{Change, ChangesReply};
use cairn_common::Ino;

/// Changes kept: at ~50 bytes each, a few MiB.
const KEPT: usize = 100_000;
/// Changes in one answer at most; the mount asks again for the rest.
const PER_REPLY: usize = 4096;

pub struct ChangeFeed {
    pub epoch: u64,
    inner: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Number of `changes[0]` since the start of the run.
    first: u64,
    /// Each change with the connection that made it (0: the namenode itself).
    changes: VecDeque<(u64, Change)>,
}

impl ChangeFeed {
    pub fn new(epoch: u64) -> ChangeFeed {
        ChangeFeed {
            epoch,
            inner: Mutex::default(),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the changes one op made through connection `origin`, whose answer told it
    /// the new state of the inodes `answered` (and of those directories' entries): only the
    /// others hear of those. Everyone hears of the rest.
    pub fn push(&self, origin: u64, answered: &[Ino], changes: impl IntoIterator<Item = Change>) {
        let mut log = self.log();
        log.changes.extend(changes.into_iter().map(|change| {
            let known = match &change {
                Change::Inode(ino) => answered.contains(ino),
                Change::Entries(dir, _) => answered.contains(dir),
            };
            (if known { origin } else { 0 }, change)
        }));
        let excess = log.changes.len().saturating_sub(KEPT);
        if excess > 0 {
            log.changes.drain(..excess);
            log.first += excess as u64;
        }
    }

    /// The changes after the `since`-th of run `epoch`, except those `origin` made itself.
    pub fn since(&self, origin: u64, epoch: u64, since: u64) -> ChangesReply {
        let log = self.log();
        let end = log.first + log.changes.len() as u64;
        if epoch != self.epoch || since < log.first || since > end {
            return ChangesReply {
                epoch: self.epoch,
                next: end,
                more: false,
                complete: false,
                changes: Vec::new(),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hears_of_the_others_changes_in_order_and_of_a_gap() {
        let feed = ChangeFeed::new(7);
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
}
