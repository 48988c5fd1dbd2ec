//! The one module that owns RocksDB. The rest of the namenode reads typed records through
//! [`Store`] and writes only through a [`Txn`], which [`Store::commit`] turns into one
//! atomic, synced write batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cairn_common::attr::{FileKind, InodeAttr, Timestamp};
use cairn_common::layout::Slice;
use cairn_common::{BlockId, FsError, FsResult, Ino};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keys::{self, ALL_CFS};

/// Version byte in front of every record value; a reader refuses a version it does not know.
const RECORD_VERSION: u8 = 1;
/// Version byte of inode records: 2 added the bytes a file stores (`InodeAttr::stored`).
const INODE_RECORD_VERSION: u8 = 2;
/// Format of the whole database, in `meta/format`: 2 counts each file's stored bytes, 3
/// keeps where every name of a file is (`InodeRecord::parent`, `links`). A namenode upgrades an older database when it
/// opens it (see `MetaEngine::open`).
pub const FORMAT_VERSION: u64 = 3;

/// What the `inodes` family holds for one inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    pub attr: InodeAttr,
    /// The directory a directory lives in (directories have exactly one); for anything
    /// else, the directory of one of its names (the others are in the `links` family, see
    /// [`keys::link`]), or of its last one.
    pub parent: Ino,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
}

/// What the `dentries` family holds for one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: Ino,
    pub kind: FileKind,
}

/// What the `blocks` family holds for one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub len: u32,
    /// Slices that reference the block. At zero the block awaits garbage collection.
    pub refs: u64,
    /// Replicas wanted: the largest replication of the files that reference it.
    pub replication: u8,
}

/// A column family, by index into [`ALL_CFS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cf {
    Inodes = 0,
    Dentries = 1,
    Chunks = 2,
    Blocks = 3,
    Xattrs = 4,
    Meta = 5,
    Links = 6,
    RaftLog = 7,
    RaftState = 8,
}

/// The families that hold the namespace, the state the group's log builds (with the point
/// of the log it was built to, in `meta`): what a snapshot carries.
pub const NAMESPACE_CFS: [Cf; 7] = [
    Cf::Inodes,
    Cf::Dentries,
    Cf::Chunks,
    Cf::Blocks,
    Cf::Xattrs,
    Cf::Meta,
    Cf::Links,
];

impl Cf {
    fn name(self) -> &'static str {
        ALL_CFS[self as usize]
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec has no failure mode.
    postcard::to_extend(value, vec![RECORD_VERSION]).expect("records always serialize")
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> FsResult<T> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| FsError::io(format!("corrupt {what} record in metadata: {e}"))),
        Some((v, _)) => Err(FsError::io(format!(
            "{what} record has unknown version {v}; is this namenode older than its data?"
        ))),
        None => Err(FsError::io(format!("empty {what} record in metadata"))),
    }
}

fn encode_inode(rec: &InodeRecord) -> Vec<u8> {
    postcard::to_extend(rec, vec![INODE_RECORD_VERSION]).expect("records always serialize")
}

/// Reads an inode record of either version. A version-1 record (format 1) counts a file's
/// bytes as all stored, as `st_blocks` did then, until the upgrade counts them.
pub fn decode_inode(bytes: &[u8]) -> FsResult<InodeRecord> {
    let corrupt =
        |e: postcard::Error| FsError::io(format!("corrupt inode record in metadata: {e}"));
    match bytes.split_first() {
        Some((&INODE_RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(corrupt),
        Some((1, body)) => postcard::from_bytes::<InodeRecordV1>(body)
            .map(from_v1)
            .map_err(corrupt),
        _ => decode("inode", bytes),
    }
}

/// An inode record as format 1 wrote it: the attributes as they were before `stored` (ino,
/// kind, perm, uid, gid, size, nlink, atime, mtime, ctime, rdev, replication), the parent,
/// the symlink target.
pub(crate) type InodeRecordV1 = (
    (
        Ino,
        FileKind,
        u16,
        u32,
        u32,
        u64,
        u32,
        Timestamp,
        Timestamp,
        Timestamp,
        u32,
        u8,
    ),
    Ino,
    Option<Vec<u8>>,
);

fn from_v1(old: InodeRecordV1) -> InodeRecord {
    let (
        (ino, kind, perm, uid, gid, size, nlink, atime, mtime, ctime, rdev, replication),
        parent,
        target,
    ) = old;
    InodeRecord {
        attr: InodeAttr {
            ino,
            kind,
            perm,
            uid,
            gid,
            size,
            nlink,
            atime,
            mtime,
            ctime,
            rdev,
            replication,
            stored: if kind == FileKind::File { size } else { 0 },
        },
        parent,
        target,
    }
}

fn db_error(e: rocksdb::Error) -> FsError {
    let text = e.into_string();
    if text.contains("No space left on device") {
        // A local file system says ENOSPC when its disk is full; so does the namespace.
        FsError::NoSpace(format!("the namenode's metadata disk is full ({text})"))
    } else {
        FsError::io(format!("metadata store: {text}"))
    }
}

pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (creating if needed) the metadata database in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)
            .map_err(|e| anyhow::anyhow!("making the metadata block cache: {e}"))?;
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, family_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            // Another process (or this one) has it open: RocksDB holds `LOCK` while open.
            if e.to_string().contains("/LOCK") {
                anyhow::anyhow!(
                    "metadata directory {} is in use by another namenode ({e})",
                    dir.display()
                )
            } else {
                anyhow::anyhow!("opening metadata store {}: {e}", dir.display())
            }
        })?;
        Ok(Store { db: Arc::new(db) })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family in ALL_CFS is created at open.
        self.db
            .cf_handle(cf.name())
            .expect("column family created at open")
    }

    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(db_error)
    }

    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after`.
    pub fn scan_raw(
        &self,
        cf: Cf,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = match after {
            Some(after) => {
                let mut k = after.to_vec();
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        self.scan_from(cf, prefix, &start, limit)
    }

    /// Up to `limit` entries whose key starts with `prefix`, from `start` on.
    pub fn scan_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(db_error)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    pub fn inode(&self, ino: Ino) -> FsResult<Option<InodeRecord>> {
        self.get_raw(Cf::Inodes, &keys::inode(ino))?
            .map(|v| decode_inode(&v))
            .transpose()
    }

    pub fn dentry(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Dentry>> {
        self.get_raw(Cf::Dentries, &keys::dentry(parent, name))?
            .map(|v| decode("dentry", &v))
            .transpose()
    }

    pub fn chunk(&self, ino: Ino, index: u32) -> FsResult<Vec<Slice>> {
        Ok(self
            .get_raw(Cf::Chunks, &keys::chunk(ino, index))?
            .map(|v| decode("chunk", &v))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn block(&self, id: &BlockId) -> FsResult<Option<BlockRecord>> {
        self.get_raw(Cf::Blocks, &keys::block(id))?
            .map(|v| decode("block", &v))
            .transpose()
    }

    pub fn meta_u64(&self, key: &[u8]) -> FsResult<Option<u64>> {
        self.get_raw(Cf::Meta, key)?
            .map(|v| decode("meta", &v))
            .transpose()
    }

    /// Every file waiting for its last close with no name left.
    pub fn orphans(&self) -> FsResult<Vec<Ino>> {
        Ok(self
            .scan_raw(Cf::Meta, keys::META_ORPHAN_PREFIX, None, usize::MAX)?
            .iter()
            .filter_map(|(k, _)| keys::orphan_ino(k))
            .collect())
    }

    /// Blocks condemned as garbage whose deletion is not known to be over.
    pub fn tombstones(&self) -> FsResult<Vec<BlockId>> {
        Ok(self
            .scan_raw(Cf::Meta, keys::META_GC_PREFIX, None, usize::MAX)?
            .iter()
            .filter_map(|(k, _)| keys::tombstone_block(k))
            .collect())
    }

    /// Operators' states for datanodes (those not in normal service).
    pub fn node_admin_states(
        &self,
    ) -> FsResult<Vec<(cairn_common::DatanodeId, cairn_common::proto::AdminState)>> {
        self.per_datanode(keys::META_NODE_ADMIN_PREFIX, "node admin state")
    }

    /// The datanodes recorded as seen.
    pub fn known_datanodes(
        &self,
    ) -> FsResult<Vec<(cairn_common::DatanodeId, crate::blockmap::KnownDatanode)>> {
        self.per_datanode(keys::META_NODE_PREFIX, "known datanode")
    }

    /// Every `meta` record under `prefix` keyed by datanode, decoded as `what`.
    fn per_datanode<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
    ) -> FsResult<Vec<(cairn_common::DatanodeId, T)>> {
        self.scan_raw(Cf::Meta, prefix, None, usize::MAX)?
            .iter()
            .filter_map(|(k, v)| Some((keys::datanode_of(prefix, k)?, v)))
            .map(|(id, v)| Ok((id, decode(what, v)?)))
            .collect()
    }

    /// Every block with its record.
    pub fn blocks(&self) -> FsResult<Vec<(BlockId, BlockRecord)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Blocks), IteratorMode::Start)
        {
            let (k, v) = item.map_err(db_error)?;
            let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                return Err(FsError::io("malformed block key in metadata"));
            };
            out.push((BlockId(id), decode("block", &v)?));
        }
        Ok(out)
    }

    /// Every block id in the `blocks` family, for the namenode's start-up block count.
    pub fn count_blocks(&self) -> FsResult<u64> {
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Blocks), IteratorMode::Start)
        {
            item.map_err(db_error)?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes a transaction's changes as one atomic batch. With `sync`, the WAL is fsynced
    /// before this returns, so what was written survives a crash of the machine.
    pub fn commit(&self, txn: Txn<'_>, sync: bool) -> FsResult<()> {
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in txn.writes {
            match value {
                Some(v) => batch.put_cf(self.cf(cf), key, v),
                None => batch.delete_cf(self.cf(cf), key),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(db_error)
    }

    /// The last record of `cf` in key order.
    pub fn last(&self, cf: Cf) -> FsResult<Option<(Vec<u8>, Vec<u8>)>> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            Some(item) => {
                let (k, v) = item.map_err(db_error)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Deletes the records of `cf` from `from` up to (without) `to` in one write.
    pub fn delete_range(&self, cf: Cf, from: &[u8], to: &[u8], sync: bool) -> FsResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(cf), from, to);
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(db_error)
    }

    /// Deletes every record of `cf` (not synced).
    pub fn clear(&self, cf: Cf) -> FsResult<()> {
        let first = self.scan_raw(cf, &[], None, 1)?;
        let (Some((first, _)), Some((last, _))) = (first.into_iter().next(), self.last(cf)?) else {
            return Ok(());
        };
        let mut end = last;
        end.push(0);
        self.delete_range(cf, &first, &end, false)
    }

    /// Every record of the namespace, column family by column family, in key order: what
    /// two members of a group that applied the same log hold alike.
    pub fn dump(&self) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        NAMESPACE_CFS
            .into_iter()
            .flat_map(|cf| {
                let records = self.scan_raw(cf, &[], None, usize::MAX).unwrap();
                records.into_iter().map(move |(k, v)| (cf, k, v))
            })
            .collect()
    }

    /// Puts everything written so far to the write-ahead log on stable storage.
    pub fn sync_wal(&self) -> FsResult<()> {
        self.db.flush_wal(true).map_err(db_error)
    }

    /// A view of the whole store as of now, which later writes do not change: every op
    /// commits as one batch, so the view is of a namespace between ops.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            store: self,
            snap: self.db.snapshot(),
        }
    }

    pub fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            writes: BTreeMap::new(),
            undo: Vec::new(),
            orphaned: Vec::new(),
        }
    }
}

/// See [`Store::snapshot`].
pub struct Snapshot<'a> {
    store: &'a Store,
    snap: rocksdb::Snapshot<'a>,
}

impl Snapshot<'_> {
    /// Calls `f` with every key and value of family `cf`, in key order.
    pub fn for_each(
        &self,
        cf: Cf,
        mut f: impl FnMut(&[u8], &[u8]) -> FsResult<()>,
    ) -> FsResult<()> {
        for item in self
            .snap
            .iterator_cf(self.store.cf(cf), IteratorMode::Start)
        {
            let (k, v) = item.map_err(db_error)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        self.snap.get_cf(self.store.cf(cf), key).map_err(db_error)
    }
}

type Key = (Cf, Vec<u8>);

/// Pending writes over the store: reads see them, nothing reaches RocksDB until commit.
/// Several operations share one transaction (group commit); [`Txn::savepoint`] and
/// [`Txn::rollback`] undo one that failed half-way.
pub struct Txn<'a> {
    store: &'a Store,
    writes: BTreeMap<Key, Option<Vec<u8>>>,
    undo: Vec<(Key, Option<Option<Vec<u8>>>)>,
    /// Files the current operation left without a name (see [`Txn::orphan`]).
    orphaned: Vec<Ino>,
}

impl Txn<'_> {
    pub fn get_raw(&self, cf: Cf, key: &[u8]) -> FsResult<Option<Vec<u8>>> {
        match self.writes.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.store.get_raw(cf, key),
        }
    }

    pub fn put_raw(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.set(cf, key, Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.set(cf, key, None);
    }

    fn set(&mut self, cf: Cf, key: Vec<u8>, value: Option<Vec<u8>>) {
        let k = (cf, key);
        let old = self.writes.insert(k.clone(), value);
        self.undo.push((k, old));
    }

    /// Marks the start of one operation.
    pub fn savepoint(&mut self) {
        self.undo.clear();
        self.orphaned.clear();
    }

    /// A point inside the current operation that [`Txn::rollback_to`] undoes back to.
    pub fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Undoes the current operation's writes since `mark`, keeping those before it.
    pub fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            self.undo_last();
        }
    }

    /// Records that the current operation removed the last name of `ino`, which stays
    /// (with `nlink` 0) until whoever has it open lets go; see [`Txn::take_orphans`].
    pub fn orphan(&mut self, ino: Ino, value: Vec<u8>) {
        self.put_raw(Cf::Meta, keys::orphan(ino), value);
        self.orphaned.push(ino);
    }

    /// The inodes the current operation removed.
    pub fn inodes_removed(&self) -> Vec<Ino> {
        let mut inos: Vec<Ino> = self
            .undo
            .iter()
            .filter(|((cf, key), _)| {
                *cf == Cf::Inodes
                    && key.len() == 8
                    && matches!(self.writes.get(&(*cf, key.clone())), Some(None))
            })
            .map(|((_, key), _)| {
                let mut ino = [0u8; 8];
                ino.copy_from_slice(key);
                Ino(u64::from_be_bytes(ino))
            })
            .collect();
        inos.sort_unstable();
        inos.dedup();
        inos
    }

    /// The inodes and entries the current operation wrote, for the change feed.
    pub fn changes(&self) -> Vec<cairn_common::proto::Change> {
        use cairn_common::proto::Change;
        let mut changes: Vec<Change> = self
            .undo
            .iter()
            .filter_map(|((cf, key), _)| match cf {
                Cf::Inodes => Some(Change::Inode(Ino(u64::from_be_bytes(
                    key.as_slice().try_into().ok()?,
                )))),
                // Ops that change these rewrite the inode too; a file's xattrs and data are
                // its own all the same, whatever an op forgets.
                Cf::Xattrs | Cf::Chunks if key.len() > 8 => Some(Change::Inode(Ino(
                    u64::from_be_bytes(key[..8].try_into().ok()?),
                ))),
                // The count is the engine's to fill in when the op is counted.
                Cf::Dentries if key.len() > 8 => Some(Change::Entries(
                    Ino(u64::from_be_bytes(key[..8].try_into().ok()?)),
                    0,
                )),
                _ => None,
            })
            .collect();
        // An op may write one record twice, or several names of one directory.
        let mut seen = std::collections::HashSet::new();
        changes.retain(|c| seen.insert(c.clone()));
        changes
    }

    /// Whether the current operation orphaned `ino`; if so, it is no longer listed as
    /// orphaned by it.
    pub fn take_orphan(&mut self, ino: Ino) -> bool {
        let before = self.orphaned.len();
        self.orphaned.retain(|&i| i != ino);
        self.orphaned.len() != before
    }

    /// The files the current operation orphaned.
    pub fn take_orphans(&mut self) -> Vec<Ino> {
        std::mem::take(&mut self.orphaned)
    }

    /// Undoes every write since the last savepoint.
    pub fn rollback(&mut self) {
        self.orphaned.clear();
        while !self.undo.is_empty() {
            self.undo_last();
        }
    }

    fn undo_last(&mut self) {
        if let Some((k, old)) = self.undo.pop() {
            match old {
                Some(v) => self.writes.insert(k, v),
                None => self.writes.remove(&k),
            };
        }
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Keys (with values) under `prefix`, merging pending writes over the store.
    pub fn scan_raw(&self, cf: Cf, prefix: &[u8]) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .store
            .scan_raw(cf, prefix, None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for ((c, k), v) in self.writes.range((cf, prefix.to_vec())..) {
            if *c != cf || !k.starts_with(prefix) {
                break;
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// Is there any key under `prefix`?
    pub fn has_prefix(&self, cf: Cf, prefix: &[u8]) -> FsResult<bool> {
        for ((c, k), v) in self.writes.range((cf, prefix.to_vec())..) {
            if *c != cf || !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                return Ok(true);
            }
        }
        // Keys the store holds may all be deleted here; look until one is not.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan_raw(cf, prefix, after.as_deref(), 64)?;
            if page.is_empty() {
                return Ok(false);
            }
            for (k, _) in &page {
                if !matches!(self.writes.get(&(cf, k.clone())), Some(None)) {
                    return Ok(true);
                }
            }
            after = page.last().map(|(k, _)| k.clone());
        }
    }

    pub fn inode(&self, ino: Ino) -> FsResult<Option<InodeRecord>> {
        self.get_raw(Cf::Inodes, &keys::inode(ino))?
            .map(|v| decode_inode(&v))
            .transpose()
    }

    pub fn put_inode(&mut self, rec: &InodeRecord) {
        self.put_raw(Cf::Inodes, keys::inode(rec.attr.ino), encode_inode(rec));
    }

    pub fn dentry(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Dentry>> {
        self.get_raw(Cf::Dentries, &keys::dentry(parent, name))?
            .map(|v| decode("dentry", &v))
            .transpose()
    }

    pub fn put_dentry(&mut self, parent: Ino, name: &[u8], d: Dentry) {
        self.put_raw(Cf::Dentries, keys::dentry(parent, name), encode(&d));
    }

    pub fn chunk(&self, ino: Ino, index: u32) -> FsResult<Vec<Slice>> {
        Ok(self
            .get_raw(Cf::Chunks, &keys::chunk(ino, index))?
            .map(|v| decode("chunk", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Sets chunk `index` of `ino`; returns how the bytes the file stores changed (for
    /// [`InodeAttr::stored`], which the caller keeps).
    #[must_use = "the file's stored bytes change with its chunks"]
    pub fn put_chunk(&mut self, ino: Ino, index: u32, slices: &[Slice]) -> FsResult<i64> {
        let before = cairn_common::layout::covered(&self.chunk(ino, index)?);
        let key = keys::chunk(ino, index);
        if slices.is_empty() {
            self.delete(Cf::Chunks, key);
        } else {
            self.put_raw(Cf::Chunks, key, encode(&slices));
        }
        Ok(cairn_common::layout::covered(slices) as i64 - before as i64)
    }

    pub fn block(&self, id: &BlockId) -> FsResult<Option<BlockRecord>> {
        self.get_raw(Cf::Blocks, &keys::block(id))?
            .map(|v| decode("block", &v))
            .transpose()
    }

    pub fn put_block(&mut self, id: &BlockId, rec: &BlockRecord) {
        self.put_raw(Cf::Blocks, keys::block(id), encode(rec));
    }

    pub fn meta_u64(&self, key: &[u8]) -> FsResult<Option<u64>> {
        self.get_raw(Cf::Meta, key)?
            .map(|v| decode("meta", &v))
            .transpose()
    }

    pub fn put_meta_u64(&mut self, key: &[u8], value: u64) {
        self.put_raw(Cf::Meta, key.to_vec(), encode(&value));
    }

    /// Inode numbers given back unused (see `inopool.rs`).
    pub fn ino_pool(&self) -> FsResult<crate::inopool::InoPool> {
        Ok(self
            .get_raw(Cf::Meta, keys::META_FREE_INOS)?
            .map(|v| decode("inode number pool", &v))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn put_ino_pool(&mut self, pool: &crate::inopool::InoPool) {
        let key = keys::META_FREE_INOS.to_vec();
        match pool.is_empty() {
            true => self.delete(Cf::Meta, key),
            false => self.put_raw(Cf::Meta, key, encode(pool)),
        }
    }
}

/// The block cache every column family shares: table blocks, their indexes and their bloom
/// filters. Each family had RocksDB's default of its own, 8 MiB: past a few hundred thousand
/// files the filters alone outgrew it, and every point read fetched its table's filter from
/// the file again (seen filling a trash of a million files: most of the metadata writer's
/// time in page faults and copies of filter blocks).
const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// Every lookup is a point read, and many miss (a create looks its name up first): bloom
/// filters let a miss skip the table files instead of searching each one. Filters and
/// indexes live in the shared cache, those of the newest tables pinned.
fn family_options(cache: &rocksdb::Cache) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    // Most point reads look for keys the memtable does not hold (a new name, an inode
    // written before the last flush): a filter lets them skip its skip list.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.05);
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        // `CAIRN_FUZZ_CASES=N` runs it longer by hand.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            cairn_common::fuzz_cases(256)
        ))]
        /// A corrupt record or key in the metadata database is an error, never a panic.
        #[test]
        fn corrupt_records_and_keys_are_errors(
            version in 0u8..4,
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let mut record = vec![version];
            record.extend_from_slice(&bytes);
            for b in [&bytes[..], &record[..]] {
                let _ = decode_inode(b);
                let _ = decode::<Dentry>("dentry", b);
                let _ = decode::<Vec<cairn_common::layout::Slice>>("chunk", b);
                let _ = decode::<BlockRecord>("block", b);
                let _ = decode::<u64>("meta", b);
                let _ = decode::<crate::inopool::InoPool>("meta", b);
                let _ = decode::<crate::blockmap::KnownDatanode>("datanode", b);
                let _ = decode::<cairn_common::proto::AdminState>("admin", b);
                let _ = crate::keys::tombstone_block(b);
                let _ = crate::keys::node_admin_id(b);
                let _ = crate::keys::node_id(b);
                let _ = crate::keys::datanode_of(&bytes[..bytes.len().min(3)], b);
                let _ = crate::keys::orphan_ino(b);
                let _ = crate::keys::dentry_name(b);
                let _ = crate::keys::chunk_index(b);
            }
        }
    }

    #[test]
    fn records_round_trip_and_unknown_versions_are_refused() {
        let rec = BlockRecord {
            len: 7,
            refs: 2,
            replication: 3,
        };
        let bytes = encode(&rec);
        assert_eq!(decode::<BlockRecord>("block", &bytes).unwrap(), rec);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<BlockRecord>("block", &future),
            Err(FsError::Io(_))
        ));
        assert!(decode::<BlockRecord>("block", &[]).is_err());
    }

    #[test]
    fn one_namenode_per_metadata_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let refused = Store::open(dir.path()).err().expect("a second is refused");
        assert!(
            refused.to_string().contains("in use by another namenode"),
            "{refused}"
        );
    }

    #[test]
    fn txn_reads_its_own_writes_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.txn();
        txn.put_raw(Cf::Meta, b"a".to_vec(), b"1".to_vec());
        txn.savepoint();
        txn.put_raw(Cf::Meta, b"a".to_vec(), b"2".to_vec());
        txn.put_raw(Cf::Meta, b"b".to_vec(), b"3".to_vec());
        assert_eq!(txn.get_raw(Cf::Meta, b"a").unwrap(), Some(b"2".to_vec()));
        txn.rollback();
        assert_eq!(txn.get_raw(Cf::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(txn.get_raw(Cf::Meta, b"b").unwrap(), None);
        store.commit(txn, true).unwrap();
        assert_eq!(store.get_raw(Cf::Meta, b"a").unwrap(), Some(b"1".to_vec()));

        let mut txn = store.txn();
        txn.put_raw(Cf::Dentries, keys::dentry(Ino(2), b"x"), vec![1]);
        assert!(txn
            .has_prefix(Cf::Dentries, &keys::dentry_prefix(Ino(2)))
            .unwrap());
        store.commit(txn, false).unwrap();
        let mut txn = store.txn();
        txn.delete(Cf::Dentries, keys::dentry(Ino(2), b"x"));
        assert!(!txn
            .has_prefix(Cf::Dentries, &keys::dentry_prefix(Ino(2)))
            .unwrap());
        assert!(txn
            .scan_raw(Cf::Dentries, &keys::dentry_prefix(Ino(2)))
            .unwrap()
            .is_empty());
    }
}
