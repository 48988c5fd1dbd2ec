//! An open file: writes are buffered into blocks, uploaded several at a time and committed
//! to the namenode as slices on flush/fsync/close; reads resolve the file's slices into
//! blocks and fetch them in parallel.

use std::collections::{HashMap, HashSet};

use bytes::{Bytes, BytesMut};
use cairn_common::attr::{InodeAttr, SetAttr, Timestamp};
use cairn_common::layout::{self, Segment, Slice, CHUNK_SIZE, MAX_BLOCK_SIZE, MAX_FILE_SIZE};
use cairn_common::proto::{ChunkMap, CommitSlices, DatanodeAddr, ReadChunks, PLACED_BLOCK_MAX};
use cairn_common::token::BlockToken;
use cairn_common::verified;
use cairn_common::{BlockId, FsError, FsResult};
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::task::JoinHandle;

use crate::data::Source;
use crate::opens::Uploaded;
use crate::Client;

/// Slices committed at once while a long write is still going.
const COMMIT_BATCH: usize = 512;
/// The short block a flush leaves at the end of what was written is kept up to this size,
/// and stored again, whole, with the writes that continue it (see [`FileHandle::tail`]).
const TAIL_MAX: usize = 64 << 10;
/// How far ahead of a sequential reader blocks are fetched.
const READ_AHEAD: u64 = 32 << 20;
/// Chunks asked for per `ReadChunks`.
const CHUNKS_PER_MAP: u32 = 16;

type Upload = JoinHandle<FsResult<((u32, Slice, Uploaded), Vec<DatanodeAddr>)>>;

pub struct FileHandle {
    client: Client,
    attr: InodeAttr,
    /// Bytes written but not yet cut into a block, starting at file offset `buf_start`.
    buf: BytesMut,
    buf_start: u64,
    /// The short block the last flush stored and committed, with its offset: a write that
    /// continues it takes it back into `buf`, so that the next block stored holds it too and
    /// hides it. An appender that flushes often (a log with `fsync` per line) then leaves
    /// blocks of up to [`TAIL_MAX`], not one per flush: the chunk's list of slices, which
    /// every commit rewrites, stays short.
    tail: Option<(u64, Bytes)>,
    /// Blocks being uploaded, in write order (later slices overlay earlier ones).
    uploads: FuturesOrdered<Upload>,
    /// Slices uploaded and awaiting commit, in write order.
    done: Vec<(u32, Slice, Uploaded)>,
    /// End of the furthest byte written and not yet committed.
    written_end: u64,
    /// When the oldest write not yet committed was made.
    dirty_since: Option<std::time::Instant>,
    /// A failed upload: every later write, flush and close reports it.
    error: Option<FsError>,
    /// What this handle knows of the file's chunks (close-to-open: valid while open).
    map: ChunkCache,
    /// The client's [`crate::opens::OpenSet::map_version`] of the file that `map` and the
    /// size in `attr` hold: when it moves, they are fetched anew before the next read.
    map_seen: u64,
    /// Where the last read ended: a read starting there is sequential.
    last_read_end: u64,
    /// How far read-ahead has asked for blocks.
    prefetched_to: u64,
    /// Held open for writing (see `OpenSet::hold`).
    writer: bool,
    /// Where a new file's first block may go at once (`CreateReply::place`); used once.
    placed: Vec<DatanodeAddr>,
}

#[derive(Default)]
struct ChunkCache {
    loaded: HashSet<u32>,
    chunks: HashMap<u32, Vec<Slice>>,
    /// Where each block is, with the token that reads it.
    locations: HashMap<BlockId, Source>,
}

/// The client opened the file for this handle ([`crate::Client::open`]); dropping it lets go.
impl Drop for FileHandle {
    fn drop(&mut self) {
        self.client.released(self.attr.ino, self.writer);
    }
}

impl FileHandle {
    /// Only for a file the client holds (`OpenSet::hold`, for writing if `writer`); the
    /// handle releases it when dropped.
    pub(crate) fn new(client: Client, attr: InodeAttr, writer: bool) -> FileHandle {
        let map_seen = client.inner.opens.map_version(attr.ino);
        FileHandle {
            client,
            attr,
            buf: BytesMut::new(),
            buf_start: 0,
            tail: None,
            uploads: FuturesOrdered::new(),
            done: Vec::new(),
            written_end: 0,
            dirty_since: None,
            error: None,
            map: ChunkCache::default(),
            map_seen,
            last_read_end: 0,
            prefetched_to: 0,
            writer,
            placed: Vec::new(),
        }
    }

    /// A handle on a file just opened, with the map of its first chunks that came with it,
    /// asked for at `map_seen` (see [`FileHandle::map_seen`]).
    pub(crate) fn opened(client: Client, map: ChunkMap, map_seen: u64, writer: bool) -> FileHandle {
        let mut handle = FileHandle::new(client, map.attr.clone(), writer);
        handle.map_seen = map_seen;
        handle.absorb(0, cairn_common::proto::OPEN_MAP_CHUNKS, map);
        handle
    }

    /// Where the file's first block may go (a new file's `CreateReply::place`).
    pub(crate) fn place_first_block(&mut self, place: Vec<DatanodeAddr>) {
        self.placed = place;
    }

    pub fn attr(&self) -> &InodeAttr {
        &self.attr
    }

    /// The file's size as this handle sees it, including its unflushed writes.
    pub fn size(&self) -> u64 {
        self.attr.size.max(self.written_end)
    }

    /// Where this handle's writes not yet committed end (0 when there are none): the size
    /// the namenode's answers do not count yet.
    pub fn unflushed_end(&self) -> u64 {
        self.written_end
    }

    /// The committed size this handle knows, if no change it does not hold came since
    /// (see [`FileHandle::drop_stale_map`]): its own commits' answers count, which a reply
    /// put together from attributes fetched before them would miss.
    pub fn known_size(&self) -> Option<u64> {
        let current = self.client.inner.opens.map_version(self.attr.ino) == self.map_seen;
        current.then_some(self.attr.size)
    }

    fn check(&self) -> FsResult<()> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Forgets what this handle knows of the file's chunks (another handle changed them).
    pub fn forget_map(&mut self) {
        self.map = ChunkCache::default();
    }

    /// Forgets the map and size if the file changed since they were fetched in a way they
    /// do not hold (another handle's commit, a truncate, another client's change): a read
    /// by them would miss bytes, or end early, which the kernel takes for the file's end.
    fn drop_stale_map(&mut self) {
        let now = self.client.inner.opens.map_version(self.attr.ino);
        if now != self.map_seen {
            self.map = ChunkCache::default();
            self.prefetched_to = 0;
            // Set before the fetch: a change while it is under way is fetched again.
            self.map_seen = now;
        }
    }

    /// Brings the size up to date with changes the handle does not hold yet (see
    /// [`FileHandle::drop_stale_map`]): one call if there are some, none otherwise.
    pub async fn refresh(&mut self) -> FsResult<()> {
        let stale = self.client.inner.opens.map_version(self.attr.ino) != self.map_seen;
        if stale {
            self.drop_stale_map();
            self.load_map(0).await?;
        }
        Ok(())
    }

    /// Would a flush neither store anything nor report an error? Then it can be skipped.
    pub fn is_settled(&self) -> bool {
        !self.is_dirty() && self.error.is_none()
    }

    /// How long the oldest write not yet committed has waited (`None`: there is none).
    pub fn dirty_for(&self) -> Option<std::time::Duration> {
        self.dirty_since.map(|t| t.elapsed())
    }

    /// Are there writes not yet committed?
    pub fn is_dirty(&self) -> bool {
        !self.buf.is_empty() || !self.uploads.is_empty() || !self.done.is_empty()
    }

    /// Writes `data` at `offset`. The bytes are durable only after `flush`, `fsync` or
    /// `close` succeeds; a failure to store them is reported there.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.check()?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        if data.is_empty() {
            return Ok(());
        }
        self.dirty_since.get_or_insert_with(std::time::Instant::now);
        if let Some((start, tail)) = self.tail.take() {
            // Not if the file changed since in a way the tail does not hold, nor while
            // another handle here could hold writes to its bytes not yet committed.
            let opens = &self.client.inner.opens;
            if offset == start + tail.len() as u64
                && opens.map_version(self.attr.ino) == self.map_seen
                && opens.handles(self.attr.ino) == 1
            {
                self.buf = BytesMut::from(&tail[..]);
                self.buf_start = start;
            }
        }
        if !self.buf.is_empty() && offset != self.buf_start + self.buf.len() as u64 {
            self.seal().await?;
        }
        if self.buf.is_empty() {
            self.buf_start = offset;
        }
        self.buf.extend_from_slice(data);
        self.written_end = self.written_end.max(end);
        loop {
            let cut = block_cut(self.buf_start);
            if (self.buf.len() as u64) < cut {
                break;
            }
            let block = self.buf.split_to(cut as usize).freeze();
            let at = self.buf_start;
            self.buf_start += cut;
            self.dispatch(at, block).await?;
        }
        Ok(())
    }

    /// Uploads what is buffered as a (short) block.
    async fn seal(&mut self) -> FsResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = self.buf.split().freeze();
        self.dispatch(self.buf_start, block).await
    }

    async fn dispatch(&mut self, offset: u64, data: Bytes) -> FsResult<()> {
        while self.uploads.len() >= self.client.inner.config.write_concurrency.max(1) {
            self.reap_one().await?;
        }
        let client = self.client.clone();
        let ino = self.attr.ino;
        let chunk = (offset / CHUNK_SIZE) as u32;
        let pos = (offset % CHUNK_SIZE) as u32;
        let len = data.len() as u32;
        let placed = if len <= PLACED_BLOCK_MAX {
            std::mem::take(&mut self.placed)
        } else {
            Vec::new()
        };
        self.uploads.push_back(tokio::spawn(async move {
            let (block, on) = client.upload_block(ino, data, placed).await?;
            let uploaded = client.inner.opens_handle().uploaded(block);
            let slice = Slice {
                pos,
                len,
                block,
                block_off: 0,
                block_len: len,
            };
            Ok(((chunk, slice, uploaded), on))
        }));
        if self.done.len() >= COMMIT_BATCH {
            self.commit().await?;
        }
        Ok(())
    }

    async fn reap_one(&mut self) -> FsResult<()> {
        let Some(joined) = self.uploads.next().await else {
            return Ok(());
        };
        let res = joined
            .map_err(|e| FsError::io(format!("upload task failed: {e}")))
            .and_then(|r| r);
        match res {
            Ok((slice, on)) => {
                if !self.client.inner.config.sync_blocks {
                    self.client
                        .inner
                        .unsynced
                        .add(self.attr.ino, slice.1.block, on);
                }
                self.done.push(slice);
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Records the uploaded slices with the namenode.
    async fn commit(&mut self) -> FsResult<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        // The guards keep naming the blocks in renewals until the commit is answered.
        let pending = std::mem::take(&mut self.done);
        let slices: Vec<(u32, Slice)> = pending.iter().map(|(c, s, _)| (*c, *s)).collect();
        let committed_end = slices
            .iter()
            .map(|(chunk, s)| *chunk as u64 * CHUNK_SIZE + s.end())
            .max()
            .unwrap_or(0);
        // Everything written is committed once nothing else is pending.
        let size = if self.buf.is_empty() && self.uploads.is_empty() {
            self.written_end.max(committed_end)
        } else {
            committed_end
        };
        let commit = CommitSlices {
            ino: self.attr.ino,
            slices,
            size,
            mtime: Timestamp::now(),
        };
        let fresh = &self.client.inner.fresh;
        let ask = fresh.map_changing(self.attr.ino);
        // A file made here under a delegation: the commit is queued like its create.
        // (The map change it begins ends when the namenode answers it.)
        let commit = match self
            .client
            .commit_queued(&self.attr, commit, Box::new(pending), ask)
        {
            Ok(attr) => {
                self.attr = attr;
                self.map = ChunkCache::default();
                let version = self.client.inner.opens.map_changed(self.attr.ino);
                if version == self.map_seen + 1 {
                    self.map_seen = version;
                }
                if !self.is_dirty() {
                    self.written_end = 0;
                    self.dirty_since = None;
                }
                return Ok(());
            }
            Err((commit, pending)) => (commit, pending),
        };
        let (commit, pending) = commit;
        let res = self.client.change_attrs(self.attr.ino, commit).await;
        fresh.map_changed(self.attr.ino, ask, res.as_ref().ok());
        drop(pending);
        match res {
            Ok(map) => {
                self.attr = map.attr.clone();
                self.map = ChunkCache::default();
                // The other handles of the file read by a fresh map from now on; this one's
                // is as of the commit, unless some other change came between.
                let version = self.client.inner.opens.map_changed(self.attr.ino);
                if version == self.map_seen + 1 {
                    self.map_seen = version;
                }
                if map.lease.is_some() {
                    // The whole file (one chunk) as of this commit: reads need not ask.
                    self.absorb(0, 1, map);
                }
                if !self.is_dirty() {
                    self.written_end = 0;
                    self.dirty_since = None;
                }
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Makes every write so far durable: all blocks on at least `min_replicas` datanodes and
    /// their slices committed.
    pub async fn flush(&mut self) -> FsResult<()> {
        self.check()?;
        let mut tail = None;
        if !self.buf.is_empty() {
            let block = self.buf.split().freeze();
            if block.len() < TAIL_MAX {
                tail = Some((self.buf_start, block.clone()));
            }
            self.dispatch(self.buf_start, block).await?;
        }
        while !self.uploads.is_empty() {
            self.reap_one().await?;
        }
        self.commit().await?;
        // Kept only if this commit is the file's last change known here.
        if self.client.inner.opens.map_version(self.attr.ino) == self.map_seen {
            self.tail = tail;
        }
        Ok(())
    }

    /// [`FileHandle::flush`], and every block of the file this client stored (through any
    /// handle) is on stable storage on at least `min_replicas` datanodes (uploads do not
    /// wait for that unless `sync_blocks` is set), and every namespace change made before
    /// is on the namenode's ([`crate::Client::sync`]).
    pub async fn fsync(&mut self) -> FsResult<()> {
        self.flush().await?;
        let ino = self.attr.ino;
        tokio::try_join!(self.client.sync_file(ino), self.client.sync())?;
        Ok(())
    }

    /// Flushes and closes. An error here means some written bytes are not stored.
    pub async fn close(mut self) -> FsResult<()> {
        self.flush().await
    }

    /// Sets the file's size; bytes past a new, larger size read as zeros. The handle is the
    /// right to do so, as an open file's is (`ftruncate` of a file whose mode forbids
    /// writing, opened for writing before, or made so by its own `open`).
    pub async fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.flush().await?;
        self.tail = None;
        let set = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.attr = self.client.set_attr(self.attr.ino, set, true).await?;
        self.map = ChunkCache::default();
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    pub async fn read(&mut self, offset: u64, len: usize) -> FsResult<Bytes> {
        self.check()?;
        if self.is_dirty() {
            // Full POSIX within one handle: a read sees the writes before it.
            self.flush().await?;
        }
        self.drop_stale_map();
        let data = match self.read_mapped(offset, len).await {
            Err(FsError::Io(_) | FsError::Token(_)) => {
                // Replica locations may have moved since the map was fetched, or its tokens
                // expired: refresh once.
                self.map = ChunkCache::default();
                self.read_mapped(offset, len).await
            }
            other => other,
        }?;
        let end = offset + data.len() as u64;
        if offset == self.last_read_end && end + READ_AHEAD / 2 > self.prefetched_to {
            self.read_ahead(end).await;
        }
        self.last_read_end = end;
        Ok(data)
    }

    /// Starts fetching, in the background, the blocks of the next `READ_AHEAD` bytes after a
    /// sequential read, so the reader finds them in the cache instead of waiting for each.
    async fn read_ahead(&mut self, from: u64) {
        let from = from.max(self.prefetched_to);
        let to = (from + READ_AHEAD).min(self.attr.size);
        if to <= from {
            return;
        }
        let (first, last) = ((from / CHUNK_SIZE) as u32, ((to - 1) / CHUNK_SIZE) as u32);
        for chunk in first..=last {
            if self.load_map(chunk).await.is_err() {
                // Read-ahead is a hint: the read itself will report the problem.
                return;
            }
        }
        let wanted = blocks_of(&self.segments(from, to));
        for (block, block_len) in wanted {
            let client = self.client.clone();
            let source = self.map.locations.get(&block).cloned().unwrap_or_default();
            tokio::spawn(async move {
                let _ = client.fetch_block(block, block_len, &source).await;
            });
        }
        self.prefetched_to = to;
    }

    async fn read_mapped(&mut self, offset: u64, len: usize) -> FsResult<Bytes> {
        let first = (offset / CHUNK_SIZE) as u32;
        self.load_map(first).await?;
        let end = offset.saturating_add(len as u64).min(self.attr.size);
        if end <= offset {
            return Ok(Bytes::new());
        }
        let last = ((end - 1) / CHUNK_SIZE) as u32;
        for chunk in first..=last {
            self.load_map(chunk).await?;
        }
        let segments = self.segments(offset, end);
        let concurrency = self.client.inner.config.read_concurrency.max(1);
        if offset != self.last_read_end {
            // A random read: only the chunk groups it touches move, with their proofs.
            let wanted = ranges_of(&segments)?;
            let fetched: Vec<FsResult<(Piece, Bytes)>> = futures::stream::iter(wanted)
                .map(|(block, block_len, block_off, len)| {
                    let client = self.client.clone();
                    let source = self.map.locations.get(&block).cloned().unwrap_or_default();
                    async move {
                        let data = if block_len as u64 > verified::WHOLE_BLOCK_MAX {
                            let at = (block, block_len, block_off, len);
                            client.fetch_range(at, &source).await?
                        } else {
                            let whole = client.fetch_block(block, block_len, &source).await?;
                            whole.slice(block_off as usize..(block_off + len) as usize)
                        };
                        Ok(((block, block_off, len), data))
                    }
                })
                .buffered(concurrency)
                .collect()
                .await;
            let pieces = fetched.into_iter().collect::<FsResult<HashMap<_, _>>>()?;
            return assemble(offset, end, segments, |block, block_off, len| {
                pieces.get(&(*block, block_off, len)).cloned()
            });
        }
        let wanted = blocks_of(&segments);
        let fetched: Vec<FsResult<(BlockId, Bytes)>> = futures::stream::iter(wanted)
            .map(|(block, block_len)| {
                let client = self.client.clone();
                let source = self.map.locations.get(&block).cloned().unwrap_or_default();
                async move {
                    let data = client.fetch_block(block, block_len, &source).await?;
                    Ok((block, data))
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        let blocks = fetched.into_iter().collect::<FsResult<HashMap<_, _>>>()?;
        assemble(offset, end, segments, |block, block_off, len| {
            let (from, to) = (block_off as usize, (block_off + len) as usize);
            let data = blocks.get(block)?;
            data.get(from..to).map(|_| data.slice(from..to))
        })
    }

    /// [`FileHandle::read`] when it needs nothing but memory: the maps of the chunks read
    /// are here, their blocks are in the memory cache, nothing written waits to be flushed
    /// and no read-ahead is due. `None` when something is not (then `read` does it).
    pub fn read_cached(&mut self, offset: u64, len: usize) -> Option<Bytes> {
        if self.error.is_some()
            || self.is_dirty()
            || self.client.inner.opens.map_version(self.attr.ino) != self.map_seen
        {
            return None;
        }
        let first = (offset / CHUNK_SIZE) as u32;
        if !self.map.loaded.contains(&first) {
            return None;
        }
        let end = offset.saturating_add(len as u64).min(self.attr.size);
        if end <= offset {
            return Some(Bytes::new());
        }
        let last = ((end - 1) / CHUNK_SIZE) as u32;
        if !(first..=last).all(|c| self.map.loaded.contains(&c)) {
            return None;
        }
        let segments = self.segments(offset, end);
        let cache = &self.client.inner.cache;
        let mut pieces = HashMap::new();
        for (block, _, block_off, len) in ranges_of(&segments).ok()? {
            pieces.insert(
                (block, block_off, len),
                cache.get_range(&block, block_off, len)?,
            );
        }
        if offset == self.last_read_end && end + READ_AHEAD / 2 > self.prefetched_to {
            let from = end.max(self.prefetched_to);
            if (from + READ_AHEAD).min(self.attr.size) > from {
                return None;
            }
        }
        let data = assemble(offset, end, segments, |block, block_off, len| {
            pieces.get(&(*block, block_off, len)).cloned()
        })
        .ok()?;
        self.last_read_end = end;
        Some(data)
    }

    /// The bytes `[from, to)` resolved into pieces of blocks and holes, each with the file
    /// offset of its chunk. The chunks' maps must be loaded.
    fn segments(&self, from: u64, to: u64) -> Vec<(u64, Segment)> {
        let mut out = Vec::new();
        if to <= from {
            return out;
        }
        for chunk in (from / CHUNK_SIZE) as u32..=((to - 1) / CHUNK_SIZE) as u32 {
            let base = chunk as u64 * CHUNK_SIZE;
            let (lo, hi) = (from.max(base) - base, to.min(base + CHUNK_SIZE) - base);
            let slices = self
                .map
                .chunks
                .get(&chunk)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            out.extend(
                layout::resolve(slices, lo, hi)
                    .into_iter()
                    .map(|seg| (base, seg)),
            );
        }
        out
    }

    async fn load_map(&mut self, chunk: u32) -> FsResult<()> {
        if self.map.loaded.contains(&chunk) {
            return Ok(());
        }
        let map = self
            .client
            .namenode(ReadChunks {
                ino: self.attr.ino,
                first: chunk,
                count: CHUNKS_PER_MAP,
            })
            .await?;
        self.absorb(chunk, CHUNKS_PER_MAP, map);
        Ok(())
    }

    /// Takes in the namenode's map of chunks `first..first + count`.
    fn absorb(&mut self, first: u32, count: u32, map: ChunkMap) {
        self.attr = map.attr;
        for c in first..first.saturating_add(count) {
            self.map.loaded.insert(c);
        }
        for (index, slices) in map.chunks {
            self.map.chunks.insert(index, slices);
        }
        let mut tokens: HashMap<BlockId, BlockToken> = map
            .tokens
            .into_iter()
            .filter_map(|t| Some((t.block?, t)))
            .collect();
        for (block, at) in map.locations {
            let token = tokens.remove(&block);
            self.map.locations.insert(block, Source { at, token });
        }
    }
}

/// The distinct blocks `segments` read from, with their lengths, in order of first use.
/// The bytes `[offset, end)` of a file from its `segments` and their `blocks`: a read within
/// one block is a slice of the block itself.
/// The bytes `[offset, end)` from `segments`, each piece of a block given by `piece(block,
/// offset in the block, length)` (`None`: the block is shorter than its slices say).
fn assemble(
    offset: u64,
    end: u64,
    segments: Vec<(u64, Segment)>,
    piece: impl Fn(&BlockId, u64, u64) -> Option<Bytes>,
) -> FsResult<Bytes> {
    let piece = |block: &BlockId, block_off: u64, len: u64| {
        piece(block, block_off, len)
            .filter(|p| p.len() as u64 == len)
            .ok_or_else(|| FsError::io(format!("slice reaches past the end of block {block}")))
    };
    // Most reads fall within one block: hand out the cached bytes themselves.
    if let [(
        _,
        Segment::Data {
            block,
            block_off,
            len,
            ..
        },
    )] = segments.as_slice()
    {
        return piece(block, *block_off, *len);
    }
    let mut out = vec![0u8; (end - offset) as usize];
    for (base, seg) in segments {
        if let Segment::Data {
            pos,
            len,
            block,
            block_off,
            ..
        } = seg
        {
            let at = (base + pos - offset) as usize;
            out[at..at + len as usize].copy_from_slice(&piece(&block, block_off, len)?);
        }
    }
    Ok(Bytes::from(out))
}

/// A piece of a block: the block, the offset in it, the length.
type Piece = (BlockId, u64, u64);

/// The pieces of blocks `segments` read: block, its length, offset in it and length.
fn pieces_of(segments: &[(u64, Segment)]) -> impl Iterator<Item = (BlockId, u32, u64, u64)> + '_ {
    segments.iter().filter_map(|(_, seg)| match seg {
        Segment::Data {
            block,
            block_len,
            block_off,
            len,
            ..
        } => Some((*block, *block_len, *block_off, *len)),
        Segment::Hole { .. } => None,
    })
}

/// [`pieces_of`], each checked to lie within its block (else the map and the block disagree).
fn ranges_of(segments: &[(u64, Segment)]) -> FsResult<Vec<(BlockId, u32, u64, u64)>> {
    pieces_of(segments)
        .map(|(block, block_len, block_off, len)| {
            if block_off + len > block_len as u64 {
                return Err(FsError::io(format!(
                    "slice reaches past the end of block {block}"
                )));
            }
            Ok((block, block_len, block_off, len))
        })
        .collect()
}

/// The blocks `segments` read, each once, with its length.
fn blocks_of(segments: &[(u64, Segment)]) -> Vec<(BlockId, u32)> {
    let mut out: Vec<(BlockId, u32)> = Vec::new();
    for (block, block_len, _, _) in pieces_of(segments) {
        if !out.iter().any(|(b, _)| *b == block) {
            out.push((block, block_len));
        }
    }
    out
}

/// Bytes from `offset` to the end of its block: blocks are at most `MAX_BLOCK_SIZE` and
/// never cross a chunk boundary.
fn block_cut(offset: u64) -> u64 {
    let to_chunk_end = CHUNK_SIZE - offset % CHUNK_SIZE;
    to_chunk_end.min(MAX_BLOCK_SIZE as u64)
}
