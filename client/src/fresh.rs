//! Attributes of directories as this client's own changes left them.
//!
//! A change to a directory's entries (create, unlink, rename…) makes the kernel void what it
//! knows of the directory, and its next path walk there asks for the attributes again before
//! anything else. The namenode sends them with the change's answer; kept here for as long as
//! the kernel could have kept them itself, they answer that question without another call.
//!
//! An answer recorded while some other change of attributes by this client was under way
//! could be older than that change, so it is not kept: every such change bumps a sequence
//! number, and a recording made across a bump is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::attr::InodeAttr;
use cairn_common::Ino;

/// More directories than this and the oldest are forgotten.
const MAX_DIRS: usize = 4096;

#[derive(Default)]
pub(crate) struct FreshDirs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    dirs: HashMap<Ino, (InodeAttr, Instant)>,
    seq: u64,
}

impl FreshDirs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before sending a change; [`FreshDirs::record`] needs it.
    pub fn begin(&self) -> u64 {
        self.state().seq
    }

    /// The directories a change begun at `seq` left, as its answer gave them.
    pub fn record(&self, seq: u64, dirs: Vec<InodeAttr>) {
        let mut s = self.state();
        if s.seq != seq {
            return;
        }
        let now = Instant::now();
        if s.dirs.len() + dirs.len() > MAX_DIRS {
            s.dirs.clear();
        }
        for attr in dirs {
            s.dirs.insert(attr.ino, (attr, now));
        }
    }

    /// `ino`'s attributes are changing some other way (or may have): forget them, and drop
    /// the answers of changes still under way.
    pub fn forget(&self, ino: Ino) {
        let mut s = self.state();
        s.seq += 1;
        s.dirs.remove(&ino);
    }

    /// `ino`'s attributes if a change of this client left them less than `within` ago, with
    /// how long ago.
    pub fn get(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration)> {
        let s = self.state();
        let (attr, at) = s.dirs.get(&ino)?;
        let age = at.elapsed();
        (age < within).then(|| (attr.clone(), age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::attr::FileKind;

    fn dir(ino: u64, size: u64) -> InodeAttr {
        InodeAttr {
            ino: Ino(ino),
            kind: FileKind::Dir,
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
        }
    }

    #[test]
    fn answers_are_kept_for_a_while_and_the_newest_wins() {
        let fresh = FreshDirs::default();
        let seq = fresh.begin();
        fresh.record(seq, vec![dir(2, 1)]);
        fresh.record(fresh.begin(), vec![dir(2, 2)]);
        let (attr, age) = fresh.get(Ino(2), Duration::from_secs(1)).unwrap();
        assert_eq!(attr.size, 2);
        assert!(age < Duration::from_secs(1));
        assert!(fresh.get(Ino(3), Duration::from_secs(1)).is_none());
        std::thread::sleep(Duration::from_millis(20));
        assert!(fresh.get(Ino(2), Duration::from_millis(10)).is_none());
    }

    #[test]
    fn another_change_voids_them_and_answers_begun_before_it() {
        let fresh = FreshDirs::default();
        fresh.record(fresh.begin(), vec![dir(2, 1)]);
        // A create in 2 is sent; meanwhile a chmod of 2 is answered.
        let create = fresh.begin();
        fresh.forget(Ino(2));
        assert!(fresh.get(Ino(2), Duration::from_secs(1)).is_none());
        // The create's answer may predate the chmod: not kept.
        fresh.record(create, vec![dir(2, 2)]);
        assert!(fresh.get(Ino(2), Duration::from_secs(1)).is_none());
        fresh.record(fresh.begin(), vec![dir(2, 3)]);
        assert_eq!(fresh.get(Ino(2), Duration::from_secs(1)).unwrap().0.size, 3);
    }
}
