//! Whether the metadata store takes writes. The writer refuses changes itself while the
//! store's disk has less free than a reserve (`meta_reserve_mb`), as HDFS's namenode stops
//! taking edits under `dfs.namenode.resource.du.reserved`: RocksDB must not run out of space
//! in the middle of a write. After a write of its own fails (the disk filled by someone else
//! between two checks, an I/O error), RocksDB refuses every write until it recovers: from a
//! full disk by itself once a memtable's worth (64 MiB) is free, from other errors only by a
//! restart (this build of RocksDB may even abort the namenode on the way: it checks its own
//! assertions). Meanwhile every change fails and reads go on. The writer says so here: once
//! in the log when it begins (with what to do), a reminder a minute, once when it ends, and
//! to `cairn admin report` throughout.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::MetaRefusal;
use cairn_common::{FsError, FsResult};
use tracing::{error, info, warn};

/// How often the log is reminded of a refusal that goes on.
const REMIND_EVERY: Duration = Duration::from_secs(60);

pub struct WriteHealth {
    dir: PathBuf,
    /// Bytes the disk keeps free (0: not checked).
    reserve: AtomicU64,
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
            reserve: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            refusal: Mutex::new(None),
        }
    }

    pub fn keep_free(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Ok while the disk has more free than the reserve (or its space cannot be read: the
    /// write itself will tell).
    pub fn room(&self) -> FsResult<()> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        match cairn_common::disk::space(&self.dir) {
            Ok((_, free)) if free < reserve => Err(FsError::NoSpace(format!(
                "the namenode's metadata disk is full: {} MiB free, less than the {} MiB \
                 kept free (meta_reserve_mb)",
                free >> 20,
                reserve >> 20
            ))),
            _ => Ok(()),
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
                        "free space on the disk of {}: changes are taken again by themselves \
                         once it has room",
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

    /// The refusal going on, if any.
    pub fn refusing(&self) -> Option<MetaRefusal> {
        self.refusal().as_ref().map(|r| MetaRefusal {
            for_secs: r.since.elapsed().as_secs(),
            refused: r.refused,
            error: r.error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_from_its_first_failure_to_the_next_write() {
        let health = WriteHealth::new(Path::new("/meta"));
        assert!(health.refusing().is_none());
        health.written();
        health.failed(&FsError::NoSpace("disk full".into()), 3);
        health.failed(&FsError::NoSpace("disk full".into()), 2);
        let refusing = health.refusing().expect("refusing");
        assert_eq!(refusing.refused, 5);
        assert!(
            refusing.error.contains("free space on the disk of /meta"),
            "{}",
            refusing.error
        );
        health.written();
        assert!(health.refusing().is_none());
        health.failed(&FsError::io("bad sector"), 1);
        let refusing = health.refusing().expect("refusing again");
        assert!(
            refusing.error.contains("restart the namenode"),
            "{}",
            refusing.error
        );
    }
}
