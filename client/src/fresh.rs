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
//!   kept: forgetting bumps a sequence number, and a recording made across a bump is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::attr::{FileKind, InodeAttr};
use cairn_common::Ino;

/// More inodes than this and the memory starts afresh.
const MAX_INODES: usize = 4096;

#[derive(Default)]
pub(crate) struct FreshAttrs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<Ino, Fresh>,
    seq: u64,
}

struct Fresh {
    attr: InodeAttr,
    at: Instant,
    /// Known to have no extended attributes (created by this client).
    bare: bool,
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

    fn record_with(&self, seq: u64, attrs: impl IntoIterator<Item = InodeAttr>, bare: bool) {
        let mut s = self.state();
        if s.seq != seq {
            return;
        }
        if s.inodes.len() >= MAX_INODES {
            s.inodes.clear();
        }
        let at = Instant::now();
        for attr in attrs {
            s.inodes.insert(attr.ino, Fresh { attr, at, bare });
        }
    }

    /// `ino`'s attributes are changing some other way: forget them, and drop the answers of
    /// calls still under way.
    pub fn forget(&self, ino: Ino) {
        let mut s = self.state();
        s.seq += 1;
        s.inodes.remove(&ino);
    }

    /// A change of entries may have changed files it does not name: forget every file.
    pub fn forget_files(&self) {
        let mut s = self.state();
        s.seq += 1;
        s.inodes.retain(|_, f| f.attr.kind == FileKind::Dir);
    }

    fn fresh(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration, bool)> {
        let s = self.state();
        let f = s.inodes.get(&ino)?;
        let age = f.at.elapsed();
        (age < within).then(|| (f.attr.clone(), age, f.bare))
    }

    /// `ino`'s attributes if recorded less than `within` ago, with how long ago.
    pub fn get(&self, ino: Ino, within: Duration) -> Option<(InodeAttr, Duration)> {
        self.fresh(ino, within).map(|(attr, age, _)| (attr, age))
    }

    /// Is `ino` known, as of less than `within` ago, to have no extended attributes?
    pub fn bare(&self, ino: Ino, within: Duration) -> bool {
        self.fresh(ino, within).is_some_and(|(_, _, bare)| bare)
    }
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
        }
    }

    const SEC: Duration = Duration::from_secs(1);

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
}
