//! Writing large blocks past the page cache (`O_DIRECT`).
//!
//! A buffered write copies every byte into freshly allocated page-cache pages, and on a
//! virtual machine that copy is the dearest part of a datanode's work: writing 1 GiB cost
//! 3.1 CPU seconds buffered and 0.25 direct on the machine of `docs/BENCHMARKS.md`. A datanode
//! seldom reads a block soon after writing it (clients cache what they wrote), so large
//! blocks go straight to the disk from an aligned buffer, reused from a small pool so that
//! its pages are touched once. Small blocks stay buffered: they are cheap, and a small file
//! is often read back at once.
//!
//! A file system that refuses `O_DIRECT` (`EINVAL`) gets buffered writes from then on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use cairn_common::layout::MAX_BLOCK_SIZE;

/// Alignment of the buffer, the offsets and the lengths of a direct write: the largest
/// logical block size of common disks.
const ALIGN: usize = 4096;
/// Blocks shorter than this are written through the page cache.
pub const DIRECT_MIN: usize = 256 << 10;
/// Buffers kept for reuse: as many as blocks are usually stored at once.
const POOL: usize = 4;
/// Buffers one writev(2) takes at most.
const IOV_MAX: usize = 1024;

pub struct BlockWriter {
    direct: AtomicBool,
    pool: Mutex<Vec<Vec<u8>>>,
}

impl BlockWriter {
    pub fn new() -> Self {
        BlockWriter {
            direct: AtomicBool::new(true),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Creates `path` holding the concatenation of `parts` (`len` bytes in all).
    pub fn create(&self, path: &Path, parts: &[Bytes], len: usize) -> std::io::Result<File> {
        if len >= DIRECT_MIN && self.direct.load(Ordering::Relaxed) {
            match self.create_direct(path, parts, len) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(
                        "the data directory's file system refuses O_DIRECT: writing blocks \
                         through the page cache"
                    );
                    self.direct.store(false, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        let mut f = File::create(path)?;
        write_parts(&mut f, parts)?;
        Ok(f)
    }

    fn create_direct(&self, path: &Path, parts: &[Bytes], len: usize) -> std::io::Result<File> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let padded = len.next_multiple_of(ALIGN);
        let mut buf = self.take();
        let start = buf.as_ptr().align_offset(ALIGN);
        let aligned = &mut buf[start..start + padded];
        let mut at = 0;
        for part in parts {
            aligned[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        aligned[len..].fill(0);
        let written = f.write_all(aligned);
        self.give_back(buf);
        written?;
        if padded != len {
            f.set_len(len as u64)?;
        }
        Ok(f)
    }

    fn take(&self) -> Vec<u8> {
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0; MAX_BLOCK_SIZE as usize + ALIGN])
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL {
            pool.push(buf);
        }
    }
}

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

    fn parts_of(data: &[u8], cut: usize) -> Vec<Bytes> {
        data.chunks(cut).map(Bytes::copy_from_slice).collect()
    }

    #[test]
    fn blocks_of_every_length_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BlockWriter::new();
        let data: Vec<u8> = (0..MAX_BLOCK_SIZE as usize + 1)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        for (i, len) in [
            0,
            1,
            4095,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            1 << 20,
        ]
        .into_iter()
        .chain([MAX_BLOCK_SIZE as usize - 1, MAX_BLOCK_SIZE as usize])
        .enumerate()
        {
            let path = dir.path().join(format!("b{i}"));
            let parts = parts_of(&data[..len], 1200 + i);
            writer
                .create(&path, &parts, len)
                .unwrap()
                .sync_all()
                .unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), &data[..len], "length {len}");
        }
        // Buffers came back for reuse, and reuse leaves nothing of a longer block behind.
        assert!(!writer.pool.lock().unwrap().is_empty());
        let path = dir.path().join("after");
        let short = &data[1000..1000 + DIRECT_MIN + 5];
        writer
            .create(&path, &parts_of(short, 4096), short.len())
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), short);
    }
}
