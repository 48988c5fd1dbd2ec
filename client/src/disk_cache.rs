//! Blocks kept on local disk between reads and across restarts of the client.
//!
//! Blocks are named by their BLAKE3 hash, so a cached block never goes stale; it can only
//! rot. Every block read from here is verified against its name, and one that fails is
//! deleted and fetched again. Nothing here is fsynced: losing the cache loses nothing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_common::BlockId;
use lru::LruCache;
use tracing::{debug, warn};

/// Where new blocks are written before they are renamed into place.
const TMP_DIR: &str = "tmp";

pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    /// Cached blocks, least recently used first, with their sizes; and the bytes they hold.
    index: Mutex<(LruCache<BlockId, u64>, u64)>,
    temp_seq: AtomicU64,
}

impl DiskCache {
    /// Opens (or creates) the cache in `dir`, holding at most `budget` bytes. Blocks left by
    /// an earlier run are kept, up to the budget.
    pub fn open(dir: &Path, budget: u64) -> std::io::Result<Arc<DiskCache>> {
        fs::create_dir_all(dir.join(TMP_DIR))?;
        for leftover in fs::read_dir(dir.join(TMP_DIR))? {
            let _ = fs::remove_file(leftover?.path());
        }
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            budget,
            index: Mutex::new((LruCache::unbounded(), 0)),
            temp_seq: AtomicU64::new(0),
        };
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(BlockId::from_hex) else {
                continue;
            };
            let len = entry.metadata()?.len();
            let mut index = cache.lock();
            index.0.put(id, len);
            index.1 += len;
        }
        cache.evict();
        Ok(Arc::new(cache))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (LruCache<BlockId, u64>, u64)> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// Whether block `id` is cached (it may still turn out unreadable: see `get`).
    pub fn contains(&self, id: &BlockId) -> bool {
        self.lock().0.contains(id)
    }

    /// The bytes of block `id`, if cached and intact. Blocking: call off the runtime.
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.lock().0.get(id)?;
        let data = match fs::read(self.path(id)) {
            Ok(data) => data,
            Err(e) => {
                debug!(block = %id, "cached block unreadable: {e}");
                self.forget(id);
                return None;
            }
        };
        if BlockId::of(&data) != *id {
            warn!(block = %id, "cached block is corrupt; dropping it");
            self.forget(id);
            return None;
        }
        Some(Bytes::from(data))
    }

    /// Keeps block `id`. Blocking: call off the runtime. A failure only means it is not
    /// cached.
    pub fn put(&self, id: &BlockId, data: &[u8]) {
        let len = data.len() as u64;
        if len > self.budget || self.lock().0.contains(id) {
            return;
        }
        let tmp = self.dir.join(TMP_DIR).join(format!(
            "{}.{}",
            id.to_hex(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(data))
            .and_then(|()| fs::rename(&tmp, self.path(id)));
        if let Err(e) = written {
            debug!(block = %id, "cannot cache block on disk: {e}");
            let _ = fs::remove_file(&tmp);
            return;
        }
        {
            let mut index = self.lock();
            if index.0.put(*id, len).is_none() {
                index.1 += len;
            }
        }
        self.evict();
    }

    fn forget(&self, id: &BlockId) {
        let mut index = self.lock();
        if let Some(len) = index.0.pop(id) {
            index.1 -= len;
        }
        let _ = fs::remove_file(self.path(id));
    }

    /// Deletes least recently used blocks until the cache fits its budget.
    fn evict(&self) {
        let mut index = self.lock();
        while index.1 > self.budget {
            let Some((id, len)) = index.0.pop_lru() else {
                break;
            };
            index.1 -= len;
            let _ = fs::remove_file(self.path(&id));
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8, len: usize) -> (BlockId, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        (BlockId::of(&data), data)
    }

    #[test]
    fn blocks_survive_a_reopen_and_the_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3000).unwrap();
        let (a, a_bytes) = block(3, 1000);
        let (b, b_bytes) = block(5, 1000);
        let (c, c_bytes) = block(7, 1000);
        cache.put(&a, &a_bytes);
        cache.put(&b, &b_bytes);
        assert_eq!(cache.get(&a).unwrap(), a_bytes);
        cache.put(&c, &c_bytes);
        cache.put(&block(9, 1000).0, &block(9, 1000).1);
        // b was the least recently used.
        assert!(cache.get(&b).is_none());
        assert_eq!(cache.used(), 3000);
        drop(cache);
        let reopened = DiskCache::open(dir.path(), 3000).unwrap();
        assert_eq!(reopened.get(&a).unwrap(), a_bytes);
        assert_eq!(reopened.get(&c).unwrap(), c_bytes);
        let smaller = DiskCache::open(dir.path(), 1000).unwrap();
        assert_eq!(smaller.used(), 1000);
    }

    #[test]
    fn a_rotten_block_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let (id, data) = block(11, 4096);
        cache.put(&id, &data);
        let path = dir.path().join(id.to_hex());
        let mut rotten = fs::read(&path).unwrap();
        rotten[100] ^= 0xff;
        fs::write(&path, rotten).unwrap();
        assert!(cache.get(&id).is_none());
        assert!(!path.exists());
        assert_eq!(cache.used(), 0);
        cache.put(&id, &data);
        assert_eq!(cache.get(&id).unwrap(), data);
    }
}
