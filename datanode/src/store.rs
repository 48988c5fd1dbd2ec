//! Blocks on local disk. A block is one file, `blocks/<aa>/<bb>/<id hex>`: two levels of 256
//! directories keep every directory small with millions of blocks. A block becomes visible
//! only after its bytes hashed to its id, by write-temp → fsync → rename → fsync-dir, so a
//! crash leaves either the whole verified block or nothing (temp files are swept at start).
//!
//! A block longer than `verified::WHOLE_BLOCK_MAX` has its outboard beside it,
//! `<id hex>.obao`: the inner hashes of its BLAKE3 tree, which prove any range of it
//! (`cairn_common::verified`); a shorter one's is built in memory when a range is asked.
//! It is computed with the id as the block comes in and renamed into place just before the
//! block. One that is missing (a block stored before outboards existed, or a crash between
//! the two renames), short or wrong is built again from the block's bytes when a range read
//! or the scrubber needs it, once those bytes are checked against the id.
//!
//! Large blocks are written past the page cache (`crate::direct`).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use cairn_common::layout::MAX_BLOCK_SIZE;
use cairn_common::{verified, BlockId, DatanodeId, FsError, FsResult};
use tracing::{info, warn};

use crate::direct::BlockWriter;

const ID_FILE: &str = "datanode-id";
/// The namespace whose blocks this directory holds (see `proto::Register::cluster`).
const CLUSTER_FILE: &str = "cluster-id";
/// Where replicas found bad wait until the namenode has the block copied from a good one.
const QUARANTINE: &str = "quarantine";
/// What a block's outboard file adds to its name.
const OUTBOARD_SUFFIX: &str = ".obao";
/// Of a block (or outboard) being written: `.<id hex>.<n>.tmp` beside where it goes.
const TEMP_SUFFIX: &str = ".tmp";
const ID_MAGIC: &str = "cairn-datanode-v1";

pub struct BlockStore {
    root: PathBuf,
    id: DatanodeId,
    cluster: Mutex<Option<u64>>,
    /// Bytes kept free on the file system for everything else.
    reserve: u64,
    /// Most bytes of blocks to hold, if less than the disk.
    capacity_limit: Option<u64>,
    blocks: Mutex<HashMap<BlockId, u32>>,
    /// Blocks lately read by range, open, with their outboards: a random reader's next
    /// range of one costs no open and no outboard read.
    open_blocks: Mutex<lru::LruCache<BlockId, std::sync::Arc<OpenBlock>>>,
    used: AtomicU64,
    temp_seq: AtomicU64,
    writer: BlockWriter,
    /// Block directories made by writes that were not synced: the next sync makes their
    /// names durable too (in their parents).
    unsynced_dirs: Mutex<std::collections::BTreeSet<PathBuf>>,
    /// Held (locked) while the store is open: one datanode per data directory.
    _lock: fs::File,
}

/// How many blocks [`BlockStore::read_range`] keeps open (with their outboards, at most
/// 16 KiB each).
const OPEN_BLOCKS: usize = 1024;

/// A block file open for range reads, and its outboard.
struct OpenBlock {
    file: File,
    outboard: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
pub struct SpaceReport {
    pub capacity: u64,
    pub used: u64,
    pub available: u64,
}

impl BlockStore {
    /// Opens the data directory, formatting it if new, and indexes the blocks it holds.
    pub fn open(
        root: &Path,
        reserve: u64,
        capacity_limit: Option<u64>,
    ) -> anyhow::Result<BlockStore> {
        fs::create_dir_all(root.join("blocks"))
            .with_context(|| format!("creating {}", root.display()))?;
        // Before anything is cleaned: a second datanode here would delete the first's
        // blocks being written, and both would answer for one identity.
        let lock = lock_data_dir(root)?;
        let tmp = root.join("tmp");
        // Temp files are blocks whose write never finished: nobody was acknowledged.
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("cleaning {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp)?;
        fs::create_dir_all(root.join(QUARANTINE))?;
        let id = load_or_create_id(root)?;
        let cluster = load_cluster(root)?;
        let mut blocks = HashMap::new();
        let mut used = 0u64;
        let mut outboards = Vec::new();
        for a in read_dir_sorted(&root.join("blocks"))? {
            for b in read_dir_sorted(&a)? {
                for f in read_dir_sorted(&b)? {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                        // A block whose write never finished: nobody was acknowledged.
                        fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
                        continue;
                    }
                    if let Some(block) = name.strip_suffix(OUTBOARD_SUFFIX) {
                        outboards.push((BlockId::from_hex(block), f.clone()));
                        continue;
                    }
                    let Some(block) = BlockId::from_hex(name) else {
                        warn!(path = %f.display(), "ignoring a file that is not a block");
                        continue;
                    };
                    let len = fs::metadata(&f)?.len();
                    if len > MAX_BLOCK_SIZE as u64 {
                        warn!(path = %f.display(), "ignoring an oversized block file");
                        continue;
                    }
                    used += len;
                    blocks.insert(block, len as u32);
                }
            }
        }
        // An outboard whose block never arrived (a crash between the renames) or is gone.
        for (block, path) in outboards {
            if !block.is_some_and(|b| blocks.contains_key(&b)) {
                let _ = fs::remove_file(&path);
            }
        }
        info!(datanode = %id, blocks = blocks.len(), used, "block store open");
        Ok(BlockStore {
            root: root.to_path_buf(),
            id,
            cluster: Mutex::new(cluster),
            reserve,
            capacity_limit,
            blocks: Mutex::new(blocks),
            open_blocks: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(OPEN_BLOCKS).expect("not zero"),
            )),
            used: AtomicU64::new(used),
            temp_seq: AtomicU64::new(0),
            writer: BlockWriter::new(),
            unsynced_dirs: Mutex::default(),
            _lock: lock,
        })
    }

    pub fn id(&self) -> DatanodeId {
        self.id
    }

    /// The namespace whose blocks this directory holds, once a namenode named it.
    pub fn cluster(&self) -> Option<u64> {
        *self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records, at the first registration, the namespace the blocks from now on belong to.
    pub fn join_cluster(&self, cluster: u64) -> anyhow::Result<()> {
        let mut held = self.cluster.lock().unwrap_or_else(|e| e.into_inner());
        match *held {
            Some(c) if c == cluster => Ok(()),
            Some(c) => anyhow::bail!(
                "this data directory holds blocks of cluster {c:016x}, not {cluster:016x}"
            ),
            None => {
                write_durably(&self.root, CLUSTER_FILE, &format!("{cluster:016x}\n"))?;
                info!(cluster = %format!("{cluster:016x}"), "joined the namenode's cluster");
                *held = Some(cluster);
                Ok(())
            }
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, u32>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn block_path(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.root
            .join("blocks")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    fn outboard_path(&self, id: &BlockId) -> PathBuf {
        let mut path = self.block_path(id).into_os_string();
        path.push(OUTBOARD_SUFFIX);
        path.into()
    }

    /// A new temp file name for `id`.
    /// In the block's own directory, which must exist: a temp file made in a directory of
    /// its own had ext4 (without a journal) search for each one's inode, twice the CPU of a
    /// new cluster's first `tar x` (docs/BENCHMARKS.md).
    fn temp_path(&self, id: &BlockId) -> PathBuf {
        let path = self.block_path(id);
        path.with_file_name(format!(
            ".{}.{}{TEMP_SUFFIX}",
            id.to_hex(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Makes directory `dir` of blocks if it is missing: its name durable at once with
    /// `sync`, else at the next [`BlockStore::sync`].
    fn make_block_dir(&self, dir: &Path, sync: bool) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir)?;
        if sync {
            // Its name, and its parent's, must survive a crash as the block's own does
            // (`blocks/ab/cd/…`).
            for made in dir.ancestors().skip(1).take(2) {
                File::open(made)?.sync_all()?;
            }
        } else {
            self.unsynced_dirs_now().insert(dir.to_path_buf());
        }
        Ok(())
    }

    pub fn contains(&self, id: &BlockId) -> bool {
        self.index().contains_key(id)
    }

    pub fn list(&self) -> Vec<BlockId> {
        self.index().keys().copied().collect()
    }

    /// The length of a held block (0 if not held).
    pub fn len_of(&self, id: &BlockId) -> u64 {
        self.index().get(id).copied().unwrap_or(0) as u64
    }

    pub fn count(&self) -> u64 {
        self.index().len() as u64
    }

    pub fn space(&self) -> SpaceReport {
        let used = self.used.load(Ordering::Relaxed);
        let (fs_total, fs_free) = cairn_common::disk::space(&self.root).unwrap_or((0, 0));
        let mut available = fs_free.saturating_sub(self.reserve);
        let mut capacity = fs_total.saturating_sub(self.reserve);
        if let Some(limit) = self.capacity_limit {
            capacity = capacity.min(limit);
            available = available.min(limit.saturating_sub(used));
        }
        SpaceReport {
            capacity,
            used,
            available,
        }
    }

    /// Verifies that `parts`, concatenated, hash to `id` and stores them as that block. With
    /// `sync`, the block is on stable storage when this returns. Storing a block already held
    /// is a no-op.
    pub fn put(&self, id: &BlockId, parts: &[Bytes], sync: bool) -> FsResult<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_BLOCK_SIZE as usize {
            return Err(FsError::invalid(format!(
                "block of {len} bytes exceeds {MAX_BLOCK_SIZE}"
            )));
        }
        // The tree hash gives the id and, on the way, the outboard that proves any range.
        let (hashed, outboard) = verified::outboard(parts);
        if hashed != *id {
            return Err(FsError::io(format!(
                "block {id} failed verification: its bytes hash to something else"
            )));
        }
        if self.contains(id) {
            return Ok(());
        }
        if self.space().available < len as u64 {
            return Err(FsError::NoSpace(format!(
                "datanode {} has fewer than {len} bytes free above its reserve",
                self.id
            )));
        }
        let path = self.block_path(id);
        let dir = path.parent().unwrap_or(&self.root);
        self.make_block_dir(dir, sync)
            .map_err(|e| FsError::io(format!("making {}: {e}", dir.display())))?;
        let tmp = self.temp_path(id);
        let tmp_outboard = keeps_outboard(len as u32).then(|| self.temp_path(id));
        let write = || -> std::io::Result<()> {
            let f = self.writer.create(&tmp, parts, len)?;
            if sync {
                // The bytes must be on disk before the name points at them.
                f.sync_all()?;
            }
            if let Some(tmp_outboard) = &tmp_outboard {
                let mut f = File::create(tmp_outboard)?;
                f.write_all(&outboard)?;
                if sync {
                    f.sync_all()?;
                }
            }
            // The outboard first: a block is seldom seen without it (it would be rebuilt).
            if let Some(tmp_outboard) = &tmp_outboard {
                fs::rename(tmp_outboard, self.outboard_path(id))?;
            }
            fs::rename(&tmp, &path)?;
            if sync {
                // The rename itself must survive a crash, or the block vanishes on reboot.
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            if let Some(tmp_outboard) = &tmp_outboard {
                let _ = fs::remove_file(tmp_outboard);
            }
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) => {
                    FsError::NoSpace(format!("datanode {} disk is full", self.id))
                }
                _ => FsError::io(format!("storing block {id}: {e}")),
            });
        }
        if self.index().insert(*id, len as u32).is_none() {
            self.used.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Puts the blocks of `ids` this datanode holds on stable storage (their files and
    /// directories); returns those it does not hold.
    pub fn sync(&self, ids: &[BlockId]) -> FsResult<Vec<BlockId>> {
        let mut missing = Vec::new();
        let mut dirs = std::collections::BTreeSet::new();
        for id in ids {
            if !self.contains(id) {
                missing.push(*id);
                continue;
            }
            let path = self.block_path(id);
            match File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {
                    dirs.insert(path.parent().unwrap_or(&self.root).to_path_buf());
                }
                // Deleted since (collected): not held any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(*id),
                Err(e) => return Err(FsError::io(format!("syncing block {id}: {e}"))),
            }
        }
        // Directories made since the last sync, and their parents (which name them).
        let made = std::mem::take(&mut *self.unsynced_dirs_now());
        for dir in &made {
            dirs.extend(dir.ancestors().take(3).map(Path::to_path_buf));
        }
        for dir in &dirs {
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                // Left for the next sync to try again.
                self.unsynced_dirs_now().extend(made);
                return Err(FsError::io(format!("syncing {}: {e}", dir.display())));
            }
        }
        Ok(missing)
    }

    fn unsynced_dirs_now(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<PathBuf>> {
        self.unsynced_dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads a block and checks it against its id: `Ok(true)` when it is intact. A block
    /// that cannot be read at all is as bad as one that reads wrong: `Ok(false)` too. The
    /// outboard of an intact block is checked too, and written again if it is missing or
    /// differs (its bytes are what a range read's proof is made from).
    pub fn verify(&self, id: &BlockId) -> FsResult<bool> {
        match self.read(id, 0, None) {
            Ok(data) => {
                let len = data.len() as u32;
                let (hashed, outboard) = verified::outboard(&[data]);
                if hashed != *id {
                    return Ok(false);
                }
                if keeps_outboard(len) {
                    match fs::read(self.outboard_path(id)) {
                        Ok(stored) if stored == outboard => {}
                        stored => {
                            if stored.is_ok() {
                                warn!(block = %id, "outboard does not match its block; written again");
                            }
                            self.store_outboard(id, &outboard)?;
                        }
                    }
                }
                Ok(true)
            }
            Err(FsError::NotFound) => Err(FsError::NotFound),
            Err(e) => {
                warn!(block = %id, "unreadable replica: {e}");
                Ok(false)
            }
        }
    }

    /// Takes a bad replica out of service: it is no longer held (a good copy can be stored
    /// here again) and its file waits in `quarantine/` until the namenode says the block has
    /// its replicas elsewhere ([`BlockStore::drop_quarantined`]).
    pub fn quarantine(&self, id: &BlockId) -> FsResult<()> {
        if let Some(len) = self.index().remove(id) {
            self.used.fetch_sub(len as u64, Ordering::Relaxed);
        }
        self.remove_outboard(id)?;
        let to = self.root.join(QUARANTINE).join(id.to_hex());
        match fs::rename(self.block_path(id), &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(format!("quarantining block {id}: {e}"))),
        }
    }

    /// Deletes a quarantined replica.
    pub fn drop_quarantined(&self, id: &BlockId) -> FsResult<()> {
        match fs::remove_file(self.root.join(QUARANTINE).join(id.to_hex())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(format!("deleting quarantined block {id}: {e}"))),
        }
    }

    /// Reads a whole block and checks it against its id: what is copied to another datanode
    /// must be what was stored.
    pub fn read_verified(&self, id: &BlockId) -> FsResult<Bytes> {
        let data = self.read(id, 0, None)?;
        if BlockId::of(&data) != *id {
            return Err(FsError::io(format!(
                "replica of block {id} on datanode {} does not hash to its id",
                self.id
            )));
        }
        Ok(data)
    }

    /// Removes a replica; removing one not held is a no-op.
    pub fn delete(&self, id: &BlockId) -> FsResult<()> {
        let Some(len) = self.index().remove(id) else {
            return Ok(());
        };
        self.used.fetch_sub(len as u64, Ordering::Relaxed);
        self.remove_outboard(id)?;
        match fs::remove_file(self.block_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(format!("deleting block {id}: {e}"))),
        }
    }

    fn remove_outboard(&self, id: &BlockId) -> FsResult<()> {
        self.close_block(id);
        match fs::remove_file(self.outboard_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(format!("deleting the outboard of {id}: {e}"))),
        }
    }

    /// Writes the outboard of `id` (temp → rename: a reader sees all of it or none).
    fn store_outboard(&self, id: &BlockId, outboard: &[u8]) -> FsResult<()> {
        self.close_block(id);
        let tmp = self.temp_path(id);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(outboard)?;
            f.sync_all()?;
            fs::rename(&tmp, self.outboard_path(id))
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            FsError::io(format!("writing the outboard of {id}: {e}"))
        })
    }

    /// The outboard of held block `id` (`block_len` bytes), from its file, or built again
    /// from the block's bytes if that is missing or of the wrong length (or, for a block that
    /// keeps none, built in memory).
    fn outboard(&self, id: &BlockId, block_len: u32) -> FsResult<Vec<u8>> {
        if !keeps_outboard(block_len) {
            return self.outboard_of_bytes(id);
        }
        match fs::read(self.outboard_path(id)) {
            Ok(stored) if stored.len() as u64 == verified::outboard_len(block_len as u64) => {
                Ok(stored)
            }
            Ok(_) => {
                warn!(block = %id, "outboard of the wrong length; built again");
                self.rebuild_outboard(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.rebuild_outboard(id),
            Err(e) => Err(FsError::io(format!("reading the outboard of {id}: {e}"))),
        }
    }

    /// Builds the outboard of `id` from its bytes, which must hash to the id, and keeps it
    /// if the block keeps one.
    fn rebuild_outboard(&self, id: &BlockId) -> FsResult<Vec<u8>> {
        let outboard = self.outboard_of_bytes(id)?;
        if keeps_outboard(self.len_of(id) as u32) {
            self.store_outboard(id, &outboard)?;
        }
        Ok(outboard)
    }

    /// The outboard of `id` computed from its bytes, which must hash to the id.
    fn outboard_of_bytes(&self, id: &BlockId) -> FsResult<Vec<u8>> {
        let data = self.read(id, 0, None)?;
        let (hashed, outboard) = verified::outboard(&[data]);
        if hashed != *id {
            return Err(FsError::io(format!(
                "replica of block {id} on datanode {} does not hash to its id",
                self.id
            )));
        }
        Ok(outboard)
    }

    /// The bytes `[offset, offset + len)` of block `id` with their proof (see
    /// [`verified::encode`]), and the block's length. Bytes that fail their outboard are
    /// checked whole: a bad outboard is built again, a bad replica is an I/O error.
    pub fn read_range(&self, id: &BlockId, offset: u32, len: u32) -> FsResult<(u32, Vec<u8>)> {
        let Some(block_len) = self.index().get(id).copied() else {
            return Err(FsError::NotFound);
        };
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > block_len) {
            return Err(FsError::invalid(format!(
                "range {offset}+{len} is not inside block {id} ({block_len} bytes)"
            )));
        }
        let encode = |block: &OpenBlock| {
            verified::encode(
                id,
                block_len as u64,
                &block.file,
                &block.outboard[..],
                offset as u64,
                len as u64,
            )
        };
        let block = self.open_block(id, block_len)?;
        match encode(&block) {
            Ok(encoded) => Ok((block_len, encoded)),
            Err(e) if !block.outboard.is_empty() => {
                warn!(block = %id, "{e}; checking the whole replica");
                self.close_block(id);
                let outboard = self.rebuild_outboard(id)?;
                let file = self.open_file(id)?;
                encode(&OpenBlock { file, outboard }).map(|e| (block_len, e))
            }
            Err(e) => Err(e),
        }
    }

    fn open_file(&self, id: &BlockId) -> FsResult<File> {
        File::open(self.block_path(id)).map_err(|e| FsError::io(format!("reading block {id}: {e}")))
    }

    /// Held block `id` (`block_len` bytes) open with its outboard, kept for the next range.
    fn open_block(&self, id: &BlockId, block_len: u32) -> FsResult<std::sync::Arc<OpenBlock>> {
        let lock = || self.open_blocks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = lock().get(id) {
            return Ok(open.clone());
        }
        let file = self.open_file(id)?;
        let outboard = match verified::outboard_len(block_len as u64) {
            0 => Vec::new(),
            _ => self.outboard(id, block_len)?,
        };
        let open = std::sync::Arc::new(OpenBlock { file, outboard });
        lock().put(*id, open.clone());
        Ok(open)
    }

    /// Forgets what [`BlockStore::open_block`] kept of `id`: it is gone or changed.
    fn close_block(&self, id: &BlockId) {
        self.open_blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(id);
    }

    /// Reads `len` bytes (`None`: to the end) of a block from `offset`.
    pub fn read(&self, id: &BlockId, offset: u32, len: Option<u32>) -> FsResult<Bytes> {
        let Some(block_len) = self.index().get(id).copied() else {
            return Err(FsError::NotFound);
        };
        if offset > block_len {
            return Err(FsError::invalid(format!(
                "offset {offset} is past the end of block {id} ({block_len} bytes)"
            )));
        }
        let len = len.unwrap_or(block_len - offset).min(block_len - offset);
        let path = self.block_path(id);
        let read = || -> std::io::Result<Bytes> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(offset as u64))?;
            // Read into spare capacity: no zeroing of what is about to be overwritten.
            let mut buf = Vec::with_capacity(len as usize);
            f.take(len as u64).read_to_end(&mut buf)?;
            if buf.len() < len as usize {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(Bytes::from(buf))
        };
        read().map_err(|e| FsError::io(format!("reading block {id}: {e}")))
    }
}

/// Whether a block of `block_len` bytes keeps its outboard in a file.
fn keeps_outboard(block_len: u32) -> bool {
    block_len as u64 > verified::WHOLE_BLOCK_MAX
}

fn read_dir_sorted(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        out.push(entry?.path());
    }
    out.sort();
    Ok(out)
}

/// How long a datanode waits for the lock of its data directory: a datanode restarted in
/// the same process may still be letting go of it.
#[cfg(not(test))]
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
#[cfg(test)]
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Locks `root` for this datanode (`flock` on `root/lock`, released when the process ends
/// however it ends), with this process's id in it for whoever finds it taken.
fn lock_data_dir(root: &Path) -> anyhow::Result<fs::File> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let path = root.join("lock");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: the descriptor is open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
        if std::time::Instant::now() >= deadline {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "data directory {} is in use by another datanode (pid {}); one datanode per \
                 data directory",
                root.display(),
                holder.trim()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn load_or_create_id(root: &Path) -> anyhow::Result<DatanodeId> {
    let path = root.join(ID_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        let mut lines = text.lines();
        anyhow::ensure!(
            lines.next() == Some(ID_MAGIC),
            "{} is not a Cairn datanode id file (or from a newer version)",
            path.display()
        );
        let id = lines
            .next()
            .and_then(|l| u64::from_str_radix(l.trim(), 16).ok())
            .with_context(|| format!("{} holds no datanode id", path.display()))?;
        return Ok(DatanodeId(id));
    }
    let id = DatanodeId(rand::random());
    write_durably(root, ID_FILE, &format!("{ID_MAGIC}\n{id}\n"))?;
    Ok(id)
}

fn load_cluster(root: &Path) -> anyhow::Result<Option<u64>> {
    let path = root.join(CLUSTER_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map(Some)
            .with_context(|| format!("{} holds no cluster id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `root/name` whole or not at all, and durably.
fn write_durably(root: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let tmp = root.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, root.join(name))?;
    File::open(root)?.sync_all()?;
    Ok(())
}

/// Writes `parts` one after another, as the network delivered them, with few writev(2)
/// calls and no copy into a buffer of its own.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_datanode_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = BlockStore::open(dir.path(), 0, None).unwrap();
        let refused = BlockStore::open(dir.path(), 0, None)
            .err()
            .expect("a second is refused");
        let why = format!("{refused:#}");
        assert!(
            why.contains("in use by another datanode")
                && why.contains(&format!("pid {}", std::process::id())),
            "{why}"
        );
        // Let go of it (a datanode restarting in one process): the next open waits for that.
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        BlockStore::open(dir.path(), 0, None).unwrap();
        releasing.join().unwrap();
    }

    #[test]
    fn blocks_survive_reopen_and_bad_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"some block bytes".to_vec();
        let id = BlockId::of(&data);
        let first_id;
        {
            let store = BlockStore::open(dir.path(), 0, None).unwrap();
            first_id = store.id();
            assert!(matches!(
                store.put(&BlockId::of(b"other"), &[Bytes::from(data.clone())], false),
                Err(FsError::Io(_))
            ));
            // Parts are hashed and written as one block.
            let parts = [
                Bytes::from(data[..4].to_vec()),
                Bytes::from(data[4..].to_vec()),
            ];
            store.put(&id, &parts, true).unwrap();
            assert_eq!(store.read(&id, 5, Some(5)).unwrap(), &b"block"[..]);
        }
        let store = BlockStore::open(dir.path(), 0, None).unwrap();
        assert_eq!(store.id(), first_id);
        assert_eq!(store.list(), vec![id]);
        assert_eq!(store.read(&id, 0, None).unwrap(), data);
        assert_eq!(store.space().used, data.len() as u64);
        // A write that never finished leaves its temp file beside the blocks: swept at open.
        let leftover = store.temp_path(&id);
        fs::write(&leftover, b"half a block").unwrap();
        drop(store);
        let store = BlockStore::open(dir.path(), 0, None).unwrap();
        assert!(!leftover.exists());
        assert_eq!(store.list(), vec![id]);
        // Stored without an fsync, synced later; what it does not hold, it says.
        let later = b"stored without an fsync".to_vec();
        let later_id = BlockId::of(&later);
        store.put(&later_id, &[Bytes::from(later)], false).unwrap();
        let unknown = BlockId::of(b"never stored");
        assert_eq!(
            store.unsynced_dirs_now().len(),
            1,
            "a directory made unsynced"
        );
        assert_eq!(store.sync(&[id, later_id, unknown]).unwrap(), vec![unknown]);
        assert!(
            store.unsynced_dirs_now().is_empty(),
            "synced with its parents"
        );
    }

    #[test]
    fn a_full_store_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0, Some(10)).unwrap();
        let data = vec![7u8; 11];
        assert!(matches!(
            store.put(&BlockId::of(&data), &[Bytes::from(data.clone())], false),
            Err(FsError::NoSpace(_))
        ));
        let small = vec![1u8; 10];
        store
            .put(&BlockId::of(&small), &[Bytes::from(small.clone())], false)
            .unwrap();
        assert_eq!(store.space().available, 0);
    }

    #[test]
    fn ranges_come_with_proofs_and_outboards_mend_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path(), 0, None).unwrap();
        let data: Vec<u8> = (0..300_000).map(|_| rand::random()).collect();
        let id = BlockId::of(&data);
        store.put(&id, &[Bytes::from(data.clone())], false).unwrap();
        let outboard = store.outboard_path(&id);
        let good = fs::read(&outboard).expect("stored with its block");
        let serves = |store: &BlockStore| {
            let (len, encoded) = store.read_range(&id, 40_000, 4096).unwrap();
            let (start, got) = verified::decode(&id, len as u64, 40_000, 4096, &encoded).unwrap();
            assert_eq!(&got[..], &data[start as usize..start as usize + got.len()]);
        };
        serves(&store);

        // Stored before outboards existed: built at the first range read. (Each case on a
        // datanode started anew: a running one keeps the outboards of blocks it reads.)
        let reopen = |store: BlockStore| {
            drop(store);
            BlockStore::open(dir.path(), 0, None).unwrap()
        };
        fs::remove_file(&outboard).unwrap();
        let store = reopen(store);
        serves(&store);
        assert_eq!(fs::read(&outboard).unwrap(), good);
        // Cut short, or wrong: built again from the block's bytes, once they check out.
        fs::write(&outboard, &good[..10]).unwrap();
        let store = reopen(store);
        serves(&store);
        assert_eq!(fs::read(&outboard).unwrap(), good);
        let bad: Vec<u8> = good.iter().map(|b| b ^ 0x5a).collect();
        fs::write(&outboard, &bad).unwrap();
        let store = reopen(store);
        serves(&store);
        assert_eq!(fs::read(&outboard).unwrap(), good);
        // The scrubber mends them too, even where no range read looked.
        let mut bad = good.clone();
        bad[5] ^= 1;
        fs::write(&outboard, &bad).unwrap();
        assert!(store.verify(&id).unwrap());
        assert_eq!(fs::read(&outboard).unwrap(), good);
        fs::remove_file(&outboard).unwrap();
        assert!(store.verify(&id).unwrap());
        assert_eq!(fs::read(&outboard).unwrap(), good);

        // Bytes gone bad fail a range over them, not one elsewhere; the scrubber finds them.
        let mut rotten = data.clone();
        rotten[41_000] ^= 1;
        fs::write(store.block_path(&id), &rotten).unwrap();
        assert!(matches!(
            store.read_range(&id, 40_000, 4096),
            Err(FsError::Io(_))
        ));
        assert!(store.read_range(&id, 80_000, 4096).is_ok());
        assert!(!store.verify(&id).unwrap());
        // Ranges outside the block, or empty, are refused.
        for (offset, len) in [(299_999, 2), (0, 0), (u32::MAX, 2)] {
            let res = store.read_range(&id, offset, len);
            assert!(
                matches!(res, Err(FsError::Invalid(_))),
                "{offset}+{len}: {res:?}"
            );
        }

        // A block goes with its outboard; an outboard left without its block, at the next open.
        store.delete(&id).unwrap();
        assert!(!outboard.exists());
        // A small block keeps no outboard file; its ranges are proven all the same.
        let small: Vec<u8> = (0..100_000).map(|_| rand::random()).collect();
        let small_id = BlockId::of(&small);
        store
            .put(&small_id, &[Bytes::from(small.clone())], false)
            .unwrap();
        assert!(!store.outboard_path(&small_id).exists());
        let (len, encoded) = store.read_range(&small_id, 70_000, 5).unwrap();
        let (start, got) = verified::decode(&small_id, len as u64, 70_000, 5, &encoded).unwrap();
        assert_eq!(&got[..], &small[start as usize..start as usize + got.len()]);
        assert!(store.verify(&small_id).unwrap());
        assert!(!store.outboard_path(&small_id).exists());
        fs::write(&outboard, &good).unwrap();
        drop(store);
        let store = BlockStore::open(dir.path(), 0, None).unwrap();
        assert!(!outboard.exists());
        assert_eq!(store.list(), vec![small_id]);
    }
}

/// Block and outboard files damaged at random (bits flipped, cut short, grown) never make
/// the store panic or serve other bytes than the block's: a range it serves checks out
/// against the block's id, and the scrubber's verdict is the bytes' own.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Damage {
        Flip(usize, u8),
        Cut(usize),
        Grow(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Damage::Flip(at, bits)),
            any::<usize>().prop_map(Damage::Cut),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Grow),
        ]
    }

    fn apply(path: &Path, damage: &Damage) {
        let Ok(mut bytes) = fs::read(path) else {
            return;
        };
        match damage {
            Damage::Flip(at, bits) if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= bits;
            }
            Damage::Flip(..) => {}
            Damage::Cut(at) => bytes.truncate(at % (bytes.len() + 1)),
            Damage::Grow(more) => bytes.extend_from_slice(more),
        }
        fs::write(path, bytes).unwrap();
    }

    /// A block that keeps an outboard file, the same in every case.
    fn block() -> &'static (BlockId, Vec<u8>) {
        static BLOCK: std::sync::OnceLock<(BlockId, Vec<u8>)> = std::sync::OnceLock::new();
        BLOCK.get_or_init(|| {
            let data: Vec<u8> = (0..300_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            (BlockId::of(&data), data)
        })
    }

    proptest! {
        // A few dozen cases in the suite; `CAIRN_FUZZ_CASES=N` runs it longer by hand.
        #![proptest_config(ProptestConfig::with_cases(cairn_common::fuzz_cases(48)))]

        #[test]
        fn damaged_block_and_outboard_files_are_errors_never_wrong_bytes(
            to_block in proptest::option::of(damage()),
            to_outboard in proptest::option::of(damage()),
            offset in 0u32..300_000,
            len in 1u32..70_000,
        ) {
            let (id, data) = block();
            let dir = tempfile::tempdir().unwrap();
            {
                let store = BlockStore::open(dir.path(), 0, None).unwrap();
                store.put(id, &[Bytes::from(data.clone())], false).unwrap();
                if let Some(d) = &to_outboard {
                    apply(&store.outboard_path(id), d);
                }
                if let Some(d) = &to_block {
                    apply(&store.block_path(id), d);
                }
            }
            // A datanode started on the damaged files.
            let store = BlockStore::open(dir.path(), 0, None).unwrap();
            let intact = fs::read(store.block_path(id)).ok().as_ref() == Some(data);
            if let Ok((block_len, encoded)) = store.read_range(id, offset, len) {
                let got = verified::decode(id, block_len as u64, offset as u64, len as u64, &encoded);
                let (start, bytes) = got.expect("a served range checks out");
                prop_assert_eq!(&bytes[..], &data[start as usize..start as usize + bytes.len()]);
            }
            if let Ok(whole) = store.read_verified(id) {
                prop_assert!(whole[..] == data[..], "verified bytes are the block's");
            }
            match store.verify(id) {
                Ok(good) => prop_assert_eq!(good, intact),
                Err(_) => prop_assert!(!intact),
            }
        }
    }
}
