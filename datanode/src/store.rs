//! Blocks on local disk. A block is one file, `blocks/<aa>/<bb>/<id hex>`: two levels of 256
//! directories keep every directory small with millions of blocks. A block becomes visible
//! only after its bytes hashed to its id, by write-temp → fsync → rename → fsync-dir, so a
//! crash leaves either the whole verified block or nothing (temp files are swept at start).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use bytes::Bytes;
use cairn_common::layout::MAX_BLOCK_SIZE;
use cairn_common::{BlockId, DatanodeId, FsError, FsResult};
use tracing::{info, warn};

const ID_FILE: &str = "datanode-id";
/// The namespace whose blocks this directory holds (see `proto::Register::cluster`).
const CLUSTER_FILE: &str = "cluster-id";
/// Where replicas found bad wait until the namenode has the block copied from a good one.
const QUARANTINE: &str = "quarantine";
/// Bytes of small parts gathered before they are fed to the hasher (see `put`).
const HASH_STAGING: usize = 256 << 10;
/// Parts at least this long are hashed where they lie, without gathering.
const HASH_DIRECT: usize = 16 << 10;
/// Buffers one writev(2) takes at most.
const IOV_MAX: usize = 1024;
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
    used: AtomicU64,
    temp_seq: AtomicU64,
    /// Held (locked) while the store is open: one datanode per data directory.
    _lock: fs::File,
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
        for a in read_dir_sorted(&root.join("blocks"))? {
            for b in read_dir_sorted(&a)? {
                for f in read_dir_sorted(&b)? {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
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
        info!(datanode = %id, blocks = blocks.len(), used, "block store open");
        Ok(BlockStore {
            root: root.to_path_buf(),
            id,
            cluster: Mutex::new(cluster),
            reserve,
            capacity_limit,
            blocks: Mutex::new(blocks),
            used: AtomicU64::new(used),
            temp_seq: AtomicU64::new(0),
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
        // Parts are as small as network packets; BLAKE3 is several times faster given whole
        // runs of 1 KiB chunks at once, so hash through a staging buffer.
        let mut hasher = blake3::Hasher::new();
        let mut staging = Vec::new();
        for p in parts {
            if p.len() >= HASH_DIRECT {
                hasher.update(&staging);
                staging.clear();
                hasher.update(p);
                continue;
            }
            if staging.len() + p.len() > HASH_STAGING {
                hasher.update(&staging);
                staging.clear();
            }
            staging.extend_from_slice(p);
        }
        hasher.update(&staging);
        if BlockId::from_hash(hasher.finalize()) != *id {
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
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}",
            id.to_hex(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            write_parts(&mut f, parts)?;
            if sync {
                // The bytes must be on disk before the name points at them.
                f.sync_all()?;
            }
            let dir = path.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir)?;
            fs::rename(&tmp, &path)?;
            if sync {
                // The rename itself must survive a crash, or the block vanishes on reboot.
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
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
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| FsError::io(format!("syncing {}: {e}", dir.display())))?;
        }
        Ok(missing)
    }

    /// Re-reads a block and checks it against its id: `Ok(true)` when it is intact. A block
    /// that cannot be read at all is as bad as one that reads wrong: `Ok(false)` too.
    pub fn verify(&self, id: &BlockId) -> FsResult<bool> {
        match self.read(id, 0, None) {
            Ok(data) => Ok(BlockId::of(&data) == *id),
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
    pub fn read_verified(&self, id: &BlockId) -> FsResult<Vec<u8>> {
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
        match fs::remove_file(self.block_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(format!("deleting block {id}: {e}"))),
        }
    }

    /// Reads `len` bytes (`None`: to the end) of a block from `offset`.
    pub fn read(&self, id: &BlockId, offset: u32, len: Option<u32>) -> FsResult<Vec<u8>> {
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
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(offset as u64))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        read().map_err(|e| FsError::io(format!("reading block {id}: {e}")))
    }
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
fn write_parts(f: &mut File, parts: &[Bytes]) -> std::io::Result<()> {
    for group in parts.chunks(IOV_MAX) {
        let mut slices: Vec<std::io::IoSlice<'_>> =
            group.iter().map(|p| std::io::IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = f.write_vectored(rest)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

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
            assert_eq!(store.read(&id, 5, Some(5)).unwrap(), b"block");
        }
        let store = BlockStore::open(dir.path(), 0, None).unwrap();
        assert_eq!(store.id(), first_id);
        assert_eq!(store.list(), vec![id]);
        assert_eq!(store.read(&id, 0, None).unwrap(), data);
        assert_eq!(store.space().used, data.len() as u64);
        // Stored without an fsync, synced later; what it does not hold, it says.
        let later = b"stored without an fsync".to_vec();
        let later_id = BlockId::of(&later);
        store.put(&later_id, &[Bytes::from(later)], false).unwrap();
        let unknown = BlockId::of(b"never stored");
        assert_eq!(store.sync(&[id, later_id, unknown]).unwrap(), vec![unknown]);
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
}
