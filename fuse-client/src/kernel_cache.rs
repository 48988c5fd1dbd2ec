//! What the kernel keeps for this mount, and how it is made to forget it.
//!
//! The kernel keeps names (dentries, positive and negative) and attributes for the TTL each
//! reply gives, and a file's pages for as long as it likes. When another client changes
//! something, the change feed tells this mount before the namenode answers that client (it
//! waits for every mount reading the feed), and this module has the kernel drop what it
//! kept of it: the attributes and pages of each changed inode, and each name this mount
//! handed out in a changed directory within the TTL. The feed names no entries, so those
//! names are remembered here, for the TTL only: past it the kernel asks again anyway.
//!
//! A reply computed from what the namenode said before a change, but sent after the feed
//! told of it, must not be kept by the kernel: it would outlive the invalidation that came
//! before it. Every reply's TTL is therefore taken from a [`Ttl`] captured when the request
//! began, which is zero if others' changes were heard meanwhile.
//!
//! Taking a lock drops the file's attributes and pages too (NFS's rule, which SQLite and
//! every lock-based tool rely on): see `setlk`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_client::ChangeNews;
use cairn_common::proto::Change;
use cairn_common::Ino;
use fuser::{INodeNo, Notifier};

/// How long the kernel may keep names and attributes this mount hands it.
pub const TTL: Duration = Duration::from_secs(1);

/// Names remembered before the old ones are swept (they expire after [`TTL`] anyway).
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct KernelCache {
    notifier: OnceLock<Notifier>,
    /// Counts the feed's reports of others' changes.
    heard: AtomicU64,
    /// Names handed to the kernel within the TTL, by directory, with when.
    names: Mutex<Names>,
}

#[derive(Default)]
struct Names {
    by_dir: HashMap<Ino, HashMap<Box<[u8]>, Instant>>,
    count: usize,
}

/// The TTL a reply may give, as of when its request began.
#[derive(Clone, Copy)]
pub struct Ttl {
    heard: u64,
}

impl KernelCache {
    /// The notifier of the session, once it runs: invalidations need it.
    pub fn set_notifier(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Taken when a request begins; see [`KernelCache::ttl`].
    pub fn start(&self) -> Ttl {
        Ttl {
            heard: self.heard.load(Ordering::SeqCst),
        }
    }

    /// The TTL for a reply to a request begun at `start`: none if others' changes were
    /// heard since (the reply may predate them, and their invalidations came before it).
    pub fn ttl(&self, start: Ttl) -> Duration {
        self.ttl_left(start, TTL)
    }

    /// As [`KernelCache::ttl`], for what is left of a TTL.
    pub fn ttl_left(&self, start: Ttl, left: Duration) -> Duration {
        if self.heard.load(Ordering::SeqCst) == start.heard {
            left
        } else {
            Duration::ZERO
        }
    }

    /// `name` in `parent` is being handed to the kernel (found, absent, or made), for
    /// `ttl`: remember it so another client's change of `parent` makes the kernel forget it.
    pub fn handed(&self, parent: Ino, name: &[u8], ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.count >= SWEEP_AT {
            names.by_dir.retain(|_, dir| {
                dir.retain(|_, at| now.duration_since(*at) < TTL);
                !dir.is_empty()
            });
            names.count = names.by_dir.values().map(HashMap::len).sum();
        }
        if names
            .by_dir
            .entry(parent)
            .or_default()
            .insert(name.into(), now)
            .is_none()
        {
            names.count += 1;
        }
    }

    /// Other clients changed things (the kernel forgets them before the feed is read on), or
    /// this one's change had side effects its answer did not cover.
    pub fn changed(&self, news: ChangeNews<'_>) {
        // First: a reply begun before others' changes is kept by the kernel no longer.
        if !matches!(news, ChangeNews::Own(_)) {
            self.heard.fetch_add(1, Ordering::SeqCst);
        }
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        match news {
            ChangeNews::Others(changes) | ChangeNews::Own(changes) => {
                for change in changes {
                    match change {
                        // Attributes and every page: the data may have changed. An inode the
                        // kernel does not have (ENOENT) is the common case.
                        Change::Inode(ino) => {
                            let _ = notifier.inval_inode(INodeNo(ino.0), 0, 0);
                        }
                        Change::Entries(dir, _) => {
                            for name in self.take(*dir) {
                                let _ =
                                    notifier.inval_entry(INodeNo(dir.0), OsStr::from_bytes(&name));
                            }
                        }
                        // Delegated elsewhere: the kernel forgets what it was handed
                        // there, attributes and names.
                        Change::Recall(_) => {}
                        Change::Delegated(dir) => {
                            let _ = notifier.inval_inode(INodeNo(dir.0), 0, 0);
                            for name in self.take(*dir) {
                                let _ =
                                    notifier.inval_entry(INodeNo(dir.0), OsStr::from_bytes(&name));
                            }
                        }
                    }
                }
            }
            ChangeNews::Anything => {
                let all: Vec<Ino> = self.dirs();
                for dir in all {
                    for name in self.take(dir) {
                        let _ = notifier.inval_entry(INodeNo(dir.0), OsStr::from_bytes(&name));
                    }
                }
            }
        }
    }

    /// The kernel forgets `ino`'s attributes and pages (a lock on it was taken).
    pub fn drop_file(&self, ino: Ino) {
        if let Some(notifier) = self.notifier.get() {
            let _ = notifier.inval_inode(INodeNo(ino.0), 0, 0);
        }
    }

    /// The names handed out in `dir` within the TTL; forgotten here.
    fn take(&self, dir: Ino) -> Vec<Box<[u8]>> {
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let Some(handed) = names.by_dir.remove(&dir) else {
            return Vec::new();
        };
        names.count -= handed.len();
        handed
            .into_iter()
            .filter(|(_, at)| now.duration_since(*at) < TTL)
            .map(|(name, _)| name)
            .collect()
    }

    fn dirs(&self) -> Vec<Ino> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.by_dir.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_begun_before_others_changes_is_not_kept() {
        let cache = KernelCache::default();
        let before = cache.start();
        assert_eq!(cache.ttl(before), TTL);
        cache.changed(ChangeNews::Own(&[]));
        assert_eq!(
            cache.ttl(before),
            TTL,
            "its own changes are no news to a mount"
        );
        cache.changed(ChangeNews::Others(&[]));
        assert_eq!(cache.ttl(before), Duration::ZERO);
        assert_eq!(cache.ttl(cache.start()), TTL);
    }

    #[test]
    fn names_handed_out_are_taken_once_per_change_of_their_directory() {
        let cache = KernelCache::default();
        cache.handed(Ino(1), b"a", TTL);
        cache.handed(Ino(1), b"b", TTL);
        cache.handed(Ino(2), b"c", TTL);
        cache.handed(Ino(2), b"kept by nobody", Duration::ZERO);
        let mut taken = cache.take(Ino(1));
        taken.sort();
        assert_eq!(taken, vec![Box::from(&b"a"[..]), Box::from(&b"b"[..])]);
        assert!(cache.take(Ino(1)).is_empty());
        assert_eq!(cache.take(Ino(2)), vec![Box::from(&b"c"[..])]);
        assert_eq!(cache.names.lock().unwrap().count, 0);
    }
}
