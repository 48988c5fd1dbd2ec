//! Whether the metadata store takes writes. After one write fails (its disk full, an I/O
//! error), RocksDB refuses every write until it recovers: from a full disk by itself, once
//! the disk has room for a memtable again (it checks every few seconds); from other errors
//! only by a restart. Meanwhile every change fails and reads go on. The writer says so here:
//! once in the log when it begins (with what to do), a reminder a minute, once when it ends,
//! and to `cairn admin report` throughout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{MetaHealth, MetaRefusal};
use cairn_common::FsError;
use tracing::{error, info, warn};

/// How often the log is reminded of a refusal that goes on.
const REMIND_EVERY: Duration = Duration::from_secs(60);

pub struct WriteHealth {
    dir: PathBuf,
    /// Fast path for the writer: nothing to end.
    refusing: AtomicBool,
    refusal: Mutex<Option<Refusal>>,
}

struct Refusal {
    since: Instant,
    refused: u64,
    error: String,
    reminded: Instant,
}

impl WriteHealth {
    /// For the store in `dir`.
    pub fn new(dir: &Path) -> WriteHealth {
        WriteHealth {
            dir: dir.to_path_buf(),
            refusing: AtomicBool::new(false),
            refusal: Mutex::new(None),
        }
    }

    fn refusal(&self) -> std::sync::MutexGuard<'_, Option<Refusal>> {
        self.refusal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A group of `ops` changes failed to be written with `e`.
    pub fn failed(&self, e: &FsError, ops: usize) {
        let mut refusal = self.refusal();
        let now = Instant::now();
        match &mut *refusal {
            None => {
                let advice = match e {
                    FsError::NoSpace(_) => format!(
                        "free space on the disk of {}: the store takes writes again by itself \
                         once it has room for a memtable (64 MiB), checking every 5 s",
                        self.dir.display()
                    ),
                    _ => format!(
                        "check the disk of {}; if writes do not resume by themselves, \
                         restart the namenode",
                        self.dir.display()
                    ),
                };
                let error = format!("{e}. {advice}");
                error!("metadata writes refused: every change fails until they resume: {error}");
                *refusal = Some(Refusal {
                    since: now,
                    refused: ops as u64,
                    error,
                    reminded: now,
                });
                self.refusing.store(true, Ordering::Release);
            }
            Some(r) => {
                r.refused += ops as u64;
                if now - r.reminded >= REMIND_EVERY {
                    warn!(
                        "metadata writes still refused after {} s ({} changes refused): {}",
                        r.since.elapsed().as_secs(),
                        r.refused,
                        r.error
                    );
                    r.reminded = now;
                }
            }
        }
    }

    /// A group was written: a refusal, if any, is over.
    pub fn written(&self) {
        if !self.refusing.load(Ordering::Acquire) {
            return;
        }
        if let Some(r) = self.refusal().take() {
            info!(
                "metadata writes resumed after {} s; {} changes were refused meanwhile",
                r.since.elapsed().as_secs(),
                r.refused
            );
        }
        self.refusing.store(false, Ordering::Release);
    }

    pub fn status(&self) -> MetaHealth {
        MetaHealth {
            refusing: self.refusal().as_ref().map(|r| MetaRefusal {
                for_secs: r.since.elapsed().as_secs(),
                refused: r.refused,
                error: r.error.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_from_its_first_failure_to_the_next_write() {
        let health = WriteHealth::new(Path::new("/meta"));
        assert!(health.status().refusing.is_none());
        health.written();
        health.failed(&FsError::NoSpace("disk full".into()), 3);
        health.failed(&FsError::NoSpace("disk full".into()), 2);
        let refusing = health.status().refusing.expect("refusing");
        assert_eq!(refusing.refused, 5);
        assert!(
            refusing.error.contains("free space on the disk of /meta"),
            "{}",
            refusing.error
        );
        health.written();
        assert!(health.status().refusing.is_none());
        health.failed(&FsError::io("bad sector"), 1);
        let refusing = health.status().refusing.expect("refusing again");
        assert!(
            refusing.error.contains("restart the namenode"),
            "{}",
            refusing.error
        );
    }
}
