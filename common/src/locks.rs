//! Byte-range locks (POSIX `fcntl` and BSD `flock`, the latter as whole-file ranges), shared
//! by every mount: the namenode's table of them, and each client's of its own. Soft state,
//! as in NFS: a namenode that starts, or comes to lead its group, has none, and the clients
//! take theirs back in its grace period (`SetLock::reclaim`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::proto::{LockKind, LockOwnerId, LockRange};
use crate::{FsError, FsResult, Ino};

#[derive(Clone, Copy, Debug)]
struct Held {
    owner: LockOwnerId,
    range: LockRange,
}

#[derive(Default)]
pub struct LockTable {
    inner: Mutex<HashMap<Ino, Vec<Held>>>,
}

fn overlaps(a: &LockRange, b: &LockRange) -> bool {
    a.start <= b.end && b.start <= a.end
}

fn conflicts(a: &LockRange, b: &LockRange) -> bool {
    overlaps(a, b) && (a.kind == LockKind::Write || b.kind == LockKind::Write)
}

impl LockTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Vec<Held>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first lock of another owner that conflicts with `range`.
    pub fn test(&self, ino: Ino, owner: LockOwnerId, range: &LockRange) -> Option<LockRange> {
        let table = self.lock();
        table
            .get(&ino)?
            .iter()
            .find(|h| h.owner != owner && conflicts(&h.range, range))
            .map(|h| h.range)
    }

    /// Sets `range` for `owner` with POSIX semantics: the owner's own overlapping locks are
    /// replaced (split where they stick out), other owners' conflicting locks refuse it.
    pub fn set(&self, ino: Ino, owner: LockOwnerId, range: LockRange) -> FsResult<()> {
        if range.start > range.end {
            return Err(FsError::invalid("lock range ends before it starts"));
        }
        let mut table = self.lock();
        let held = table.entry(ino).or_default();
        if range.kind != LockKind::Unlock
            && held
                .iter()
                .any(|h| h.owner != owner && conflicts(&h.range, &range))
        {
            return Err(FsError::WouldBlock);
        }
        let mut kept = Vec::with_capacity(held.len() + 2);
        for h in held.drain(..) {
            if h.owner != owner || !overlaps(&h.range, &range) {
                kept.push(h);
                continue;
            }
            // Keep what sticks out on either side of the new range.
            if h.range.start < range.start {
                let mut left = h;
                left.range.end = range.start - 1;
                kept.push(left);
            }
            if h.range.end > range.end {
                let mut right = h;
                right.range.start = range.end + 1;
                kept.push(right);
            }
        }
        if range.kind != LockKind::Unlock {
            kept.push(Held { owner, range });
        }
        if kept.is_empty() {
            table.remove(&ino);
        } else {
            *held = kept;
        }
        Ok(())
    }

    /// Drops every lock held by any owner of `session` (a client that went away).
    pub fn release_session(&self, session: u64) -> usize {
        let mut table = self.lock();
        let mut dropped = 0;
        table.retain(|_, held| {
            let before = held.len();
            held.retain(|h| h.owner.session != session);
            dropped += before - held.len();
            !held.is_empty()
        });
        dropped
    }

    /// Every lock held, by file and owner.
    pub fn held(&self) -> Vec<(Ino, LockOwnerId, LockRange)> {
        let table = self.lock();
        let mut all: Vec<_> = table
            .iter()
            .flat_map(|(ino, held)| held.iter().map(move |h| (*ino, h.owner, h.range)))
            .collect();
        all.sort_by_key(|(ino, owner, range)| (*ino, owner.session, owner.owner, range.start));
        all
    }

    /// Whether `owner` holds `range` on `ino`, of its kind, in one lock.
    pub fn holds(&self, ino: Ino, owner: LockOwnerId, range: &LockRange) -> bool {
        let table = self.lock();
        table.get(&ino).is_some_and(|held| {
            held.iter().any(|h| {
                h.owner == owner
                    && h.range.kind == range.kind
                    && h.range.start <= range.start
                    && range.end <= h.range.end
            })
        })
    }

    /// Forgets every lock (a namenode that comes to lead anew).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Drops every lock `owner` holds on `ino`.
    pub fn release(&self, ino: Ino, owner: LockOwnerId) {
        let mut table = self.lock();
        if let Some(held) = table.get_mut(&ino) {
            held.retain(|h| h.owner != owner);
            if held.is_empty() {
                table.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, kind: LockKind) -> LockRange {
        LockRange {
            start,
            end,
            kind,
            pid: 1,
        }
    }

    #[test]
    fn posix_semantics() {
        let t = LockTable::default();
        let (a, b) = (
            LockOwnerId {
                session: 1,
                owner: 1,
            },
            LockOwnerId {
                session: 2,
                owner: 1,
            },
        );
        let f = Ino(5);
        t.set(f, a, r(0, 99, LockKind::Write)).unwrap();
        assert_eq!(
            t.set(f, b, r(50, 60, LockKind::Read)),
            Err(FsError::WouldBlock)
        );
        assert!(t.test(f, b, &r(50, 60, LockKind::Read)).is_some());
        assert!(
            t.test(f, a, &r(50, 60, LockKind::Read)).is_none(),
            "own locks never conflict"
        );
        // Unlocking the middle splits a's lock in two.
        t.set(f, a, r(40, 69, LockKind::Unlock)).unwrap();
        t.set(f, b, r(50, 60, LockKind::Write)).unwrap();
        assert_eq!(
            t.set(f, b, r(30, 45, LockKind::Read)),
            Err(FsError::WouldBlock)
        );
        // Shared locks coexist.
        t.release(f, a);
        t.release(f, b);
        t.set(f, a, r(0, u64::MAX, LockKind::Read)).unwrap();
        t.set(f, b, r(0, u64::MAX, LockKind::Read)).unwrap();
        assert_eq!(
            t.set(f, b, r(0, 0, LockKind::Write)),
            Err(FsError::WouldBlock)
        );
    }

    #[test]
    fn what_is_held_is_listed_and_found_again() {
        let t = LockTable::default();
        let a = LockOwnerId {
            session: 1,
            owner: 7,
        };
        let f = Ino(5);
        t.set(f, a, r(0, 99, LockKind::Write)).unwrap();
        t.set(f, a, r(40, 59, LockKind::Unlock)).unwrap();
        let held = t.held();
        assert_eq!(held.len(), 2, "{held:?}");
        // Taken back one by one into an empty table, they are the same locks.
        let again = LockTable::default();
        for (ino, owner, range) in &held {
            again.set(*ino, *owner, *range).unwrap();
        }
        assert_eq!(again.held(), held);
        assert!(t.holds(f, a, &r(10, 20, LockKind::Write)));
        assert!(!t.holds(f, a, &r(10, 50, LockKind::Write)), "a hole in it");
        assert!(!t.holds(f, a, &r(10, 20, LockKind::Read)), "another kind");
        t.clear();
        assert!(t.held().is_empty());
    }
}
