//! Verified range reads: any byte range of a block, proven to belong to the block's id.
//!
//! A block's id is the BLAKE3 hash of its bytes, and BLAKE3 is a tree hash: the hashes of the
//! tree's inner nodes (the *outboard*, stored with the block) prove any run of its leaves
//! against the root. Leaves are grouped by [`GROUP_BYTES`] (16 KiB, so the outboard is 64
//! bytes per group, 0.4% of the block, and none at all for a block of one group). A range is
//! served as Bao's encoding of the groups it touches — their bytes and the sibling hashes on
//! their way to the root — and checked against the id before a byte of it is used.
//!
//! The tree and its encodings are `bao-tree`'s: this module fixes the geometry and turns
//! their errors into Cairn's.

use std::io::Read;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{
    encode_ranges_validated, outboard_post_order, DecodeResponseIter, ReadAt,
};
use bao_tree::io::BaoContentItem;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use bytes::{Bytes, BytesMut};

use crate::{BlockId, FsError, FsResult};

/// Chunk groups of 2⁴ BLAKE3 chunks of 1 KiB.
const GROUP_LOG: u8 = 4;

/// The bytes of a chunk group: the smallest run of a block a range read moves.
pub const GROUP_BYTES: u64 = 1024 << GROUP_LOG;

/// Blocks up to this long are read whole, even by a random reader, and a datanode keeps no
/// outboard file for them (it builds their outboard in memory if asked for a range): their
/// bytes cost little more to move than a proof, and a second file per small block would
/// cost every small file's write an inode.
pub const WHOLE_BLOCK_MAX: u64 = 256 << 10;

fn tree(block_len: u64) -> BaoTree {
    BaoTree::new(block_len, BlockSize::from_chunk_log(GROUP_LOG))
}

/// The length of the outboard of a block of `block_len` bytes.
pub fn outboard_len(block_len: u64) -> u64 {
    tree(block_len).outboard_size()
}

/// The length of the block whose bytes and outboard, one after the other, take
/// `stored_len` bytes; `None` if no block's do.
pub fn block_len_of(stored_len: u64) -> Option<u64> {
    // The outboard takes 64 bytes for each group after the first.
    let groups = stored_len.div_ceil(GROUP_BYTES + 64).max(1);
    (groups.saturating_sub(1)..=groups + 1)
        .filter(|g| *g >= 1)
        .filter_map(|g| stored_len.checked_sub(64 * (g - 1)))
        .find(|len| len + outboard_len(*len) == stored_len)
}

/// The outboard of a block given as `parts` (concatenated), and the id its bytes hash to.
pub fn outboard(parts: &[Bytes]) -> (BlockId, Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(outboard_len(len as u64) as usize);
    let reader = Parts {
        parts,
        at: 0,
        off: 0,
    };
    let root = outboard_post_order(reader, tree(len as u64), &mut out)
        .expect("reading memory and writing a vector do not fail");
    (BlockId::from_hash(root), out)
}

/// Reads a run of byte buffers as one stream, without gathering them.
struct Parts<'a> {
    parts: &'a [Bytes],
    at: usize,
    off: usize,
}

impl Read for Parts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(part) = self.parts.get(self.at) {
            let rest = &part[self.off..];
            if rest.is_empty() {
                self.at += 1;
                self.off = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.off += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// The chunk groups of a block of `block_len` bytes that `[offset, offset + len)` touches, as
/// a byte range: what a range read moves.
pub fn covering(block_len: u64, offset: u64, len: u64) -> (u64, u64) {
    let end = offset.saturating_add(len).min(block_len);
    let start = offset.min(end) / GROUP_BYTES * GROUP_BYTES;
    let end = end.div_ceil(GROUP_BYTES) * GROUP_BYTES;
    (start, end.min(block_len))
}

/// The chunks of the groups `[offset, offset + len)` touches; an empty range is refused.
fn chunk_ranges(block_len: u64, offset: u64, len: u64) -> FsResult<ChunkRanges> {
    let (start, end) = covering(block_len, offset, len);
    if end <= start || offset >= block_len {
        return Err(FsError::invalid(format!(
            "no bytes at {offset}..{} of a block of {block_len}",
            offset.saturating_add(len)
        )));
    }
    Ok(ChunkRanges::from(
        ChunkNum::full_chunks(start)..ChunkNum::chunks(end),
    ))
}

/// Bao's encoding of the groups of block `id` that `[offset, offset + len)` touches, from the
/// block's bytes and outboard (`data` and `outboard` read at their own offsets). Each group is
/// checked against the outboard on the way: a replica that went bad fails here.
pub fn encode(
    id: &BlockId,
    block_len: u64,
    data: impl ReadAt,
    outboard: impl ReadAt,
    offset: u64,
    len: u64,
) -> FsResult<Vec<u8>> {
    let outboard = PostOrderOutboard {
        root: blake3::Hash::from(id.0),
        tree: tree(block_len),
        data: outboard,
    };
    let ranges = chunk_ranges(block_len, offset, len)?;
    let mut out = Vec::new();
    encode_ranges_validated(data, outboard, &ranges, &mut out)
        .map_err(|e| FsError::io(format!("block {id} fails its outboard: {e}")))?;
    Ok(out)
}

/// Checks `encoded` (see [`encode`]) against block `id`, `block_len` bytes long, and returns
/// the groups it carries: where they start in the block, and their bytes. Anything but the
/// encoding of exactly those groups of exactly that block is an error.
pub fn decode(
    id: &BlockId,
    block_len: u64,
    offset: u64,
    len: u64,
    encoded: &[u8],
) -> FsResult<(u64, Bytes)> {
    let ranges = chunk_ranges(block_len, offset, len)?;
    let (start, end) = covering(block_len, offset, len);
    let mut reader = encoded;
    let items = DecodeResponseIter::new(
        blake3::Hash::from(id.0),
        tree(block_len),
        &mut reader,
        &ranges,
    );
    let mut data = BytesMut::with_capacity((end - start) as usize);
    for item in items {
        match item {
            Ok(BaoContentItem::Parent(_)) => {}
            Ok(BaoContentItem::Leaf(leaf)) => {
                if leaf.offset != start + data.len() as u64 {
                    return Err(FsError::io(format!(
                        "range of block {id}: a group at {} out of order",
                        leaf.offset
                    )));
                }
                data.extend_from_slice(&leaf.data);
            }
            Err(e) => {
                return Err(FsError::io(format!(
                    "range of block {id} does not verify: {e}"
                )))
            }
        }
    }
    if !reader.is_empty() {
        return Err(FsError::io(format!(
            "range of block {id}: {} bytes more than its proof",
            reader.len()
        )));
    }
    if data.len() as u64 != end - start {
        return Err(FsError::io(format!(
            "range of block {id}: {} bytes of {}",
            data.len(),
            end - start
        )));
    }
    Ok((start, data.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn stored_lengths_give_back_the_block_length() {
        for len in (0..300_000u64)
            .step_by(97)
            .chain([16384, 16385, 32768, 4 << 20])
        {
            let stored = len + outboard_len(len);
            assert_eq!(block_len_of(stored), Some(len), "{len}");
        }
        assert_eq!(outboard_len(GROUP_BYTES), 0, "one group needs no outboard");
        assert_eq!(outboard_len(4 << 20), 255 * 64);
        // A length no block with its outboard can take.
        assert_eq!(block_len_of(16384 + 1 + 32), None);
    }

    #[test]
    fn the_outboard_root_is_the_block_id_whatever_the_parts() {
        let data = random(300_001, 1);
        let parts: Vec<Bytes> = data.chunks(1200).map(Bytes::copy_from_slice).collect();
        let (id, outboard) = outboard(&parts);
        assert_eq!(id, BlockId::of(&data));
        assert_eq!(outboard.len() as u64, outboard_len(data.len() as u64));
        assert_eq!(super::outboard(&[Bytes::from(data)]).1, outboard);
    }

    #[test]
    fn every_range_reads_back_verified() {
        for len in [0usize, 1, 1000, 16384, 16385, 100_000, 262_144] {
            let data = random(len, len as u64);
            let (id, ob) = outboard(&[Bytes::from(data.clone())]);
            let len = len as u64;
            let edges = [
                0,
                1,
                4095,
                16383,
                16384,
                16385,
                50_000,
                len.saturating_sub(1),
                len,
            ];
            for &offset in edges.iter().filter(|o| **o < len) {
                for want in [1u64, 4096, 16384, 40_000, len] {
                    let enc = encode(&id, len, &data[..], &ob[..], offset, want).unwrap();
                    let (start, got) = decode(&id, len, offset, want, &enc).unwrap();
                    let (s, e) = covering(len, offset, want);
                    assert_eq!(start, s);
                    assert_eq!(
                        &got[..],
                        &data[s as usize..e as usize],
                        "{len} {offset} {want}"
                    );
                }
            }
            assert!(
                encode(&id, len, &data[..], &ob[..], len, 10).is_err(),
                "past the end"
            );
            assert!(
                encode(&id, len, &data[..], &ob[..], 0, 0).is_err(),
                "nothing"
            );
        }
    }

    #[test]
    fn wrong_bytes_wrong_proofs_and_wrong_lengths_fail() {
        let data = random(100_000, 7);
        let (id, ob) = outboard(&[Bytes::from(data.clone())]);
        let len = data.len() as u64;
        let enc = encode(&id, len, &data[..], &ob[..], 40_000, 4096).unwrap();
        // A flipped bit anywhere in the answer.
        for at in [0, 10, enc.len() / 2, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[at] ^= 1;
            assert!(decode(&id, len, 40_000, 4096, &bad).is_err(), "bit at {at}");
        }
        // Cut short, or with more after it.
        assert!(decode(&id, len, 40_000, 4096, &enc[..enc.len() - 1]).is_err());
        let mut longer = enc.clone();
        longer.push(0);
        assert!(decode(&id, len, 40_000, 4096, &longer).is_err());
        // The proof of other bytes of the block, or of the same bytes of another block.
        let other = encode(&id, len, &data[..], &ob[..], 70_000, 4096).unwrap();
        assert!(decode(&id, len, 40_000, 4096, &other).is_err());
        let another = random(100_000, 8);
        let (id2, ob2) = outboard(&[Bytes::from(another.clone())]);
        let theirs = encode(&id2, len, &another[..], &ob2[..], 40_000, 4096).unwrap();
        assert!(decode(&id, len, 40_000, 4096, &theirs).is_err());
        // A block served whole where a range was asked.
        assert!(decode(&id, len, 40_000, 4096, &data).is_err());
        // A replica whose bytes went bad fails when encoded, inside the range only.
        let mut rotten = data.clone();
        rotten[41_000] ^= 1;
        assert!(encode(&id, len, &rotten[..], &ob[..], 40_000, 4096).is_err());
        assert!(encode(&id, len, &rotten[..], &ob[..], 70_000, 4096).is_ok());
        // And a bad outboard.
        let mut bad_ob = ob.clone();
        bad_ob[3] ^= 1;
        let enc = encode(&id, len, &data[..], &bad_ob[..], 0, 100_000);
        assert!(enc.is_err() || decode(&id, len, 0, 100_000, &enc.unwrap()).is_err());
    }
}
