//! Inode numbers given back: handed out ahead to a delegation holder
//! ([`crate::ops::MetaOpKind::ReserveInos`]) and never used, because its connection ended
//! first (a mount unmounted, or died with numbers left). Reservations take from here before
//! they move the allocator on, so numbers a mount did not use are used by the next one.
//!
//! Only numbers no inode ever had come here: the namenode knows which numbers it reserved
//! for a connection and which of them that connection's creates took. A number an inode
//! had and gave up is never reused (a kernel may still know the old file by it).

use serde::{Deserialize, Serialize};

/// Ranges past this many are dropped (their numbers stay unused, as before there was a
/// pool): the pool is one record, rewritten when it changes.
const MAX_RANGES: usize = 1024;

/// Disjoint ranges `(first, count)`, sorted, none adjacent to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InoPool {
    ranges: Vec<(u64, u64)>,
}

impl InoPool {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many numbers it holds.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(_, n)| n).sum()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn contains(&self, ino: u64) -> bool {
        let at = self.ranges.partition_point(|(first, _)| *first <= ino);
        at > 0 && {
            let (first, n) = self.ranges[at - 1];
            ino < first + n
        }
    }

    /// Adds numbers (in any order; ones it holds already change nothing).
    pub fn give(&mut self, inos: impl IntoIterator<Item = u64>) {
        let mut all: Vec<(u64, u64)> = inos.into_iter().map(|i| (i, 1)).collect();
        if all.is_empty() {
            return;
        }
        all.extend_from_slice(&self.ranges);
        all.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len() + 1);
        for (first, n) in all {
            match merged.last_mut() {
                Some((f, m)) if first <= *f + *m => *m = (*m).max(first + n - *f),
                _ => merged.push((first, n)),
            }
        }
        merged.truncate(MAX_RANGES);
        self.ranges = merged;
    }

    /// Takes up to `max` consecutive numbers from the lowest range: `(first, count)`.
    pub fn take(&mut self, max: u64) -> Option<(u64, u64)> {
        let (first, n) = self.ranges.first_mut()?;
        let taken = (*first, (*n).min(max.max(1)));
        *first += taken.1;
        *n -= taken.1;
        if *n == 0 {
            self.ranges.remove(0);
        }
        Some(taken)
    }

    /// Removes one number; whether it was there.
    pub fn remove(&mut self, ino: u64) -> bool {
        if !self.contains(ino) {
            return false;
        }
        let at = self.ranges.partition_point(|(first, _)| *first <= ino) - 1;
        let (first, n) = self.ranges[at];
        let below = (first, ino - first);
        let above = (ino + 1, first + n - ino - 1);
        self.ranges
            .splice(at..=at, [below, above].into_iter().filter(|(_, n)| *n > 0));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(inos: &[u64]) -> InoPool {
        let mut p = InoPool::default();
        p.give(inos.iter().copied());
        p
    }

    #[test]
    fn numbers_given_become_ranges_and_are_taken_lowest_first() {
        let mut p = pool(&[12, 10, 11, 20, 14, 13, 21]);
        assert_eq!(p.ranges(), &[(10, 5), (20, 2)]);
        assert_eq!(p.len(), 7);
        p.give([15, 11, 19]);
        assert_eq!(p.ranges(), &[(10, 6), (19, 3)], "adjacent ranges join");
        assert_eq!(p.take(4), Some((10, 4)));
        assert_eq!(p.take(4), Some((14, 2)), "never across a gap");
        assert_eq!(p.take(0), Some((19, 1)), "at least one");
        assert_eq!(p.take(9), Some((20, 2)));
        assert_eq!(p.take(9), None);
        assert!(p.is_empty());
    }

    #[test]
    fn a_number_removed_splits_its_range() {
        let mut p = pool(&[5, 6, 7, 8, 9]);
        assert!(p.remove(7));
        assert!(!p.remove(7));
        assert!(!p.remove(4));
        assert_eq!(p.ranges(), &[(5, 2), (8, 2)]);
        assert!(p.remove(5) && p.remove(9));
        assert_eq!(p.ranges(), &[(6, 1), (8, 1)]);
        assert!(p.contains(6) && p.contains(8) && !p.contains(7) && !p.contains(9));
    }

    #[test]
    fn the_pool_stays_bounded() {
        let p = pool(
            &(0..3 * MAX_RANGES as u64)
                .map(|i| i * 2)
                .collect::<Vec<_>>(),
        );
        assert_eq!(p.ranges().len(), MAX_RANGES);
        assert_eq!(p.ranges()[0], (0, 1), "the lowest are kept");
    }
}
