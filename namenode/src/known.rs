//! What a mount may keep: the inodes the namenode's answers named to it.
//!
//! A change is answered once every other mount that may keep something of what it changed
//! has dropped it ("Coherence across mounts", ARCHITECTURE.md). A mount keeps only what an
//! answer told it — attributes, names of a directory, a file's map — or what it changed
//! itself, so the namenode remembers, for each connection that follows the feed, the inodes
//! its answers named, and a change waits only for the connections that know one of the
//! inodes it changed. A mount that never looked into a directory does not hold up the
//! changes there: a second, idle mount no longer halves the first one's create rate.
//!
//! - An inode is known from the answer that named it until the connection has read the
//!   feed past a change of it (then it dropped what it kept, and must ask again, which
//!   names the inode anew). An answer that names it again meanwhile keeps it known: it may
//!   carry the new state, which the connection keeps.
//! - An answer is read from the namespace before it is recorded here, so a change made in
//!   between would not see it: while a connection has an answer being read, every change
//!   waits for it, whatever it changed.
//! - Past [`KNOWN_MAX`] inodes a connection counts as knowing everything (every change
//!   waits for it, as when nothing was recorded): memory stays bounded for a mount that
//!   walks a whole large namespace.

use std::collections::{HashMap, VecDeque};

use cairn_common::attr::{DirEntry, InodeAttr};
use cairn_common::proto::{ChunkMap, Delegation, DirListing, Opened};
use cairn_common::Ino;

/// Inodes remembered for one connection at most (~40 bytes each).
pub const KNOWN_MAX: usize = 1_000_000;

#[derive(Default)]
pub struct Known {
    /// Each inode named to it, with the feed position it must read to for a change of it to
    /// end it (`None`: no change since it was last named).
    inos: HashMap<Ino, Option<u64>>,
    /// Inodes whose change it has not read yet, in the order of the positions that end them.
    ending: VecDeque<(Ino, u64)>,
    /// Answers being read for it now.
    reading: u32,
    /// It was told more than [`KNOWN_MAX`] inodes: every change concerns it.
    everything: bool,
}

impl Known {
    /// An answer (or its own change) names `ino` to it.
    pub fn told(&mut self, ino: Ino) {
        if self.everything {
            return;
        }
        self.inos.insert(ino, None);
        if self.inos.len() > KNOWN_MAX {
            self.everything = true;
            self.inos = HashMap::new();
            self.ending = VecDeque::new();
        }
    }

    /// Does a change of `ino`, which it must read the feed to `end` to hear of, concern it?
    /// If so, that read ends what it knows of `ino`.
    pub fn changed(&mut self, ino: Ino, end: u64) -> bool {
        if self.everything {
            return true;
        }
        match self.inos.get_mut(&ino) {
            // Not read yet: the first change's read ends it, and this one waits as well.
            Some(Some(_)) => true,
            Some(told) => {
                *told = Some(end);
                self.ending.push_back((ino, end));
                true
            }
            None => false,
        }
    }

    /// Does every change concern it, whatever it changed: an answer is being read for it?
    pub fn any_change_concerns(&self) -> bool {
        self.everything || self.reading > 0
    }

    /// It has read the feed up to `heard`: what changed before is no longer kept there.
    pub fn read_to(&mut self, heard: u64) {
        while let Some(&(ino, end)) = self.ending.front() {
            if end > heard {
                break;
            }
            self.ending.pop_front();
            if self.inos.get(&ino) == Some(&Some(end)) {
                self.inos.remove(&ino);
            }
        }
    }

    /// `ino` no longer exists.
    pub fn forget(&mut self, ino: Ino) {
        self.inos.remove(&ino);
    }

    pub fn begin_reading(&mut self) {
        self.reading += 1;
    }

    pub fn end_reading(&mut self) {
        self.reading = self.reading.saturating_sub(1);
    }

    /// How many inodes it is known to keep (`None`: it counts as keeping everything).
    pub fn count(&self) -> Option<usize> {
        (!self.everything).then_some(self.inos.len())
    }
}

/// The inodes an answer names to its client: what the client may keep of it.
pub trait Tells {
    fn tells(&self, inos: &mut Vec<Ino>);
}

impl Tells for InodeAttr {
    fn tells(&self, inos: &mut Vec<Ino>) {
        inos.push(self.ino);
    }
}

impl Tells for Vec<DirEntry> {
    fn tells(&self, inos: &mut Vec<Ino>) {
        inos.extend(self.iter().map(|e| e.ino));
    }
}

impl Tells for DirListing {
    fn tells(&self, inos: &mut Vec<Ino>) {
        self.entries.tells(inos);
        if let Some(whole) = &self.whole {
            whole.attr.tells(inos);
        }
    }
}

impl Tells for ChunkMap {
    fn tells(&self, inos: &mut Vec<Ino>) {
        self.attr.tells(inos);
    }
}

impl Tells for Opened {
    fn tells(&self, inos: &mut Vec<Ino>) {
        self.map.tells(inos);
    }
}

impl Tells for Delegation {
    fn tells(&self, inos: &mut Vec<Ino>) {
        if let Some(granted) = &self.granted {
            granted.attr.tells(inos);
            granted.names.tells(inos);
        }
    }
}

/// Answers about an inode the request names: they name nothing more.
macro_rules! tells_nothing_more {
    ($($t:ty),*) => {
        $(impl Tells for $t {
            fn tells(&self, _: &mut Vec<Ino>) {}
        })*
    };
}

tells_nothing_more!(Vec<u8>, Vec<Vec<u8>>, Option<u64>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_is_known_until_a_change_of_it_is_read() {
        let mut known = Known::default();
        assert!(!known.changed(Ino(5), 3), "never named");
        known.told(Ino(5));
        assert!(known.changed(Ino(5), 3));
        assert!(
            known.changed(Ino(5), 7),
            "a second change before the first is read"
        );
        known.read_to(2);
        assert!(known.changed(Ino(5), 9), "not read yet");
        known.read_to(3);
        assert!(!known.changed(Ino(5), 10), "dropped with the change read");

        // Named again after the change: the new state is kept, so it stays known.
        known.told(Ino(6));
        assert!(known.changed(Ino(6), 12));
        known.told(Ino(6));
        known.read_to(12);
        assert!(known.changed(Ino(6), 13));
        known.forget(Ino(6));
        assert!(!known.changed(Ino(6), 14));
    }

    #[test]
    fn an_answer_being_read_or_too_much_told_makes_every_change_concern_it() {
        let mut known = Known::default();
        assert!(!known.any_change_concerns());
        known.begin_reading();
        assert!(known.any_change_concerns());
        known.end_reading();
        assert!(!known.any_change_concerns());
        for i in 0..=KNOWN_MAX as u64 {
            known.told(Ino(i + 100));
        }
        assert_eq!(known.count(), None);
        assert!(known.any_change_concerns() && known.changed(Ino(1), 1));
    }
}
