//! The fixed geometry of file data: 64 MiB chunks made of slices that point into blocks of at
//! most 4 MiB, and the overlay rule that resolves a chunk's slices into bytes.

use serde::{Deserialize, Serialize};

use crate::ids::BlockId;

/// Size of a logical chunk. A slice never crosses a chunk boundary.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// Largest block. Writers cut their buffers into blocks of this size.
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;
/// Largest file: 2^63 - 1 would overflow offset arithmetic in too many places; 1 PiB is
/// beyond any test and any file this cluster will hold.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// A run of bytes in a chunk, backed by a range of one block. Newer slices overlay older
/// ones; stored bytes are never modified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Offset of the slice's first byte inside its chunk.
    pub pos: u32,
    /// Number of bytes.
    pub len: u32,
    pub block: BlockId,
    /// Offset inside the block of the slice's first byte.
    pub block_off: u32,
    /// Length of the whole block, so a reader can verify it without asking the namenode.
    pub block_len: u32,
}

impl Slice {
    pub fn end(&self) -> u64 {
        self.pos as u64 + self.len as u64
    }

    /// Is this slice well formed: inside its chunk and inside its block?
    pub fn is_valid(&self) -> bool {
        self.len > 0
            && self.end() <= CHUNK_SIZE
            && self.block_len <= MAX_BLOCK_SIZE
            && self.block_off as u64 + self.len as u64 <= self.block_len as u64
    }
}

/// One piece of a resolved chunk range: either bytes from a block or a hole (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// `len` bytes at chunk offset `pos`, read from `block` at `block_off`.
    Data {
        pos: u64,
        len: u64,
        block: BlockId,
        block_off: u64,
        block_len: u32,
    },
    Hole {
        pos: u64,
        len: u64,
    },
}

/// Resolves the bytes `[start, end)` of a chunk whose slices are `slices`, oldest first:
/// each byte comes from the newest slice covering it, or is a hole.
/// The result is ordered by position and covers the range exactly.
pub fn resolve(slices: &[Slice], start: u64, end: u64) -> Vec<Segment> {
    // Intervals still unclaimed, walked from the newest slice to the oldest.
    let mut uncovered = vec![(start, end)];
    let mut out = Vec::new();
    for s in slices.iter().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (s_start, s_end) = (s.pos as u64, s.end());
        let mut next = Vec::with_capacity(uncovered.len() + 1);
        for (a, b) in uncovered {
            let lo = a.max(s_start);
            let hi = b.min(s_end);
            if lo >= hi {
                next.push((a, b));
                continue;
            }
            out.push(Segment::Data {
                pos: lo,
                len: hi - lo,
                block: s.block,
                block_off: s.block_off as u64 + (lo - s_start),
                block_len: s.block_len,
            });
            if a < lo {
                next.push((a, lo));
            }
            if hi < b {
                next.push((hi, b));
            }
        }
        uncovered = next;
    }
    out.extend(
        uncovered
            .into_iter()
            .map(|(a, b)| Segment::Hole { pos: a, len: b - a }),
    );
    out.sort_by_key(|seg| match seg {
        Segment::Data { pos, .. } | Segment::Hole { pos, .. } => *pos,
    });
    out
}

/// How many bytes of a chunk its slices hold data for: the rest of the chunk is holes.
pub fn covered(slices: &[Slice]) -> u64 {
    let mut spans: Vec<(u64, u64)> = slices.iter().map(|s| (s.pos as u64, s.end())).collect();
    spans.sort_unstable();
    let (mut total, mut reached) = (0, 0);
    for (start, end) in spans {
        let start = start.max(reached);
        if end > start {
            total += end - start;
            reached = end;
        }
    }
    total
}

/// Drops the slices that newer slices hide completely, and trims everything at or past
/// `limit` (a truncation point inside the chunk). Returns the slices kept, oldest first, and
/// the blocks whose references were dropped (one entry per dropped slice).
pub fn compact(slices: Vec<Slice>, limit: u64) -> (Vec<Slice>, Vec<BlockId>) {
    let mut dropped = Vec::new();
    let mut kept: Vec<Slice> = Vec::with_capacity(slices.len());
    for s in slices {
        if (s.pos as u64) >= limit {
            dropped.push(s.block);
            continue;
        }
        let mut s = s;
        if s.end() > limit {
            s.len = (limit - s.pos as u64) as u32;
        }
        kept.push(s);
    }
    // A slice is hidden when no byte of it survives the newer ones.
    let mut visible = vec![false; kept.len()];
    let end = kept.iter().map(|s| s.end()).max().unwrap_or(0);
    let mut uncovered = vec![(0u64, end)];
    for (i, s) in kept.iter().enumerate().rev() {
        let (s_start, s_end) = (s.pos as u64, s.end());
        let mut next = Vec::with_capacity(uncovered.len() + 1);
        for (a, b) in uncovered {
            let lo = a.max(s_start);
            let hi = b.min(s_end);
            if lo >= hi {
                next.push((a, b));
                continue;
            }
            visible[i] = true;
            if a < lo {
                next.push((a, lo));
            }
            if hi < b {
                next.push((hi, b));
            }
        }
        uncovered = next;
    }
    let mut out = Vec::with_capacity(kept.len());
    for (s, v) in kept.into_iter().zip(visible) {
        if v {
            out.push(s);
        } else {
            dropped.push(s.block);
        }
    }
    (out, dropped)
}

/// A chunk's slices with a range cut out of them: see [`punch`].
#[derive(Debug, Default)]
pub struct Punched {
    /// The slices, oldest first.
    pub slices: Vec<Slice>,
    /// One entry per new reference: a slice cut in two keeps its reference in one part and
    /// takes another for the other.
    pub added: Vec<BlockId>,
    /// One entry per reference dropped: slices wholly inside the range.
    pub dropped: Vec<BlockId>,
}

/// Cuts `[start, end)` out of every slice of a chunk, so that the range reads as a hole
/// (slices cannot say "zeros": a hole is where no slice is). Everything else reads as before.
pub fn punch(slices: Vec<Slice>, start: u64, end: u64) -> Punched {
    let mut out = Punched {
        slices: Vec::with_capacity(slices.len() + 1),
        ..Punched::default()
    };
    for s in slices {
        let (s_start, s_end) = (s.pos as u64, s.end());
        if s_end <= start || end <= s_start {
            out.slices.push(s);
            continue;
        }
        let before = (s_start < start).then(|| Slice {
            len: (start - s_start) as u32,
            ..s
        });
        let after = (end < s_end).then(|| Slice {
            pos: end as u32,
            len: (s_end - end) as u32,
            block_off: s.block_off + (end - s_start) as u32,
            ..s
        });
        match (before, after) {
            (None, None) => out.dropped.push(s.block),
            (Some(one), None) | (None, Some(one)) => out.slices.push(one),
            (Some(before), Some(after)) => {
                out.slices.extend([before, after]);
                out.added.push(s.block);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(pos: u32, len: u32, tag: u8) -> Slice {
        Slice {
            pos,
            len,
            block: BlockId([tag; 32]),
            block_off: 0,
            block_len: len,
        }
    }

    /// Paints the slices into a byte array the slow, obvious way.
    fn paint(slices: &[Slice], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        for s in slices {
            let end = (s.end() as usize).min(size);
            out[s.pos as usize..end].fill(s.block.0[0]);
        }
        out
    }

    fn render(segments: &[Segment], size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size];
        for seg in segments {
            if let Segment::Data {
                pos, len, block, ..
            } = seg
            {
                out[*pos as usize..(pos + len) as usize].fill(block.0[0]);
            }
        }
        out
    }

    #[test]
    fn newest_slice_wins_and_gaps_are_holes() {
        let slices = vec![slice(0, 100, 1), slice(50, 10, 2), slice(200, 10, 3)];
        let segs = resolve(&slices, 0, 300);
        assert_eq!(render(&segs, 300), paint(&slices, 300));
        let covered: u64 = segs
            .iter()
            .map(|s| match s {
                Segment::Data { len, .. } | Segment::Hole { len, .. } => *len,
            })
            .sum();
        assert_eq!(covered, 300);
    }

    #[test]
    fn block_offsets_follow_the_overlay() {
        let segs = resolve(&[slice(10, 100, 1)], 50, 60);
        assert_eq!(
            segs,
            vec![Segment::Data {
                pos: 50,
                len: 10,
                block: BlockId([1; 32]),
                block_off: 40,
                block_len: 100
            }]
        );
    }

    #[test]
    fn compact_keeps_bytes_and_drops_hidden_slices() {
        let slices = vec![
            slice(0, 100, 1),
            slice(0, 50, 2),
            slice(50, 50, 3),
            slice(10, 5, 4),
        ];
        let before = paint(&slices, 120);
        let (kept, dropped) = compact(slices, u64::MAX);
        assert_eq!(paint(&kept, 120), before);
        assert_eq!(dropped, vec![BlockId([1; 32])]);
        let (kept, dropped) = compact(kept, 40);
        assert_eq!(dropped, vec![BlockId([3; 32])]);
        assert!(kept.iter().all(|s| s.end() <= 40));
    }

    #[test]
    fn punch_splits_drops_and_keeps_block_offsets() {
        let slices = vec![slice(0, 100, 1), slice(120, 10, 2), slice(200, 50, 3)];
        let p = punch(slices, 40, 210);
        assert_eq!(p.added, vec![]);
        assert_eq!(p.dropped, vec![BlockId([2; 32])]);
        assert_eq!(
            p.slices[0],
            Slice {
                len: 40,
                ..slice(0, 100, 1)
            }
        );
        assert_eq!((p.slices[1].pos, p.slices[1].len), (210, 40));
        assert_eq!(p.slices[1].block_off, 10);
        let p = punch(vec![slice(0, 100, 1)], 10, 20);
        assert_eq!(p.added, vec![BlockId([1; 32])]);
        assert_eq!(
            paint(&p.slices, 100)[5..25],
            [&[1; 5][..], &[0; 10], &[1; 5]].concat()
        );
        assert!(p.slices.iter().all(Slice::is_valid));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn arb_slice() -> impl Strategy<Value = Slice> {
        (0u32..2000, 1u32..500, 1u8..=255).prop_map(|(pos, len, tag)| Slice {
            pos,
            len,
            block: BlockId([tag; 32]),
            block_off: 0,
            block_len: len,
        })
    }

    /// Byte `i` of the chunk, by brute force: the newest slice covering it, or a hole (0).
    fn byte_at(slices: &[Slice], i: u64) -> u8 {
        source_at(slices, i).map_or(0, |(tag, _)| tag)
    }

    /// Where byte `i` of the chunk is read from: the newest slice covering it (its block's
    /// tag and the offset in the block), or nothing (a hole).
    fn source_at(slices: &[Slice], i: u64) -> Option<(u8, u64)> {
        slices
            .iter()
            .rev()
            .find(|s| (s.pos as u64) <= i && i < s.end())
            .map(|s| (s.block.0[0], s.block_off as u64 + i - s.pos as u64))
    }

    proptest! {
        #[test]
        fn resolve_matches_brute_force(
            slices in proptest::collection::vec(arb_slice(), 0..12),
            start in 0u64..2600,
            len in 0u64..2600,
        ) {
            let end = start + len;
            let segments = resolve(&slices, start, end);
            let mut at = start;
            for seg in &segments {
                let (pos, seg_len, tag) = match seg {
                    Segment::Data { pos, len, block, .. } => (*pos, *len, block.0[0]),
                    Segment::Hole { pos, len } => (*pos, *len, 0),
                };
                prop_assert_eq!(pos, at, "segments are contiguous");
                for i in pos..pos + seg_len {
                    prop_assert_eq!(tag, byte_at(&slices, i));
                }
                at += seg_len;
            }
            prop_assert_eq!(at, end);
        }

        #[test]
        fn punch_makes_a_hole_and_keeps_every_other_byte(
            slices in proptest::collection::vec(arb_slice(), 0..12),
            start in 0u64..2600,
            len in 0u64..600,
        ) {
            let end = start + len;
            let p = punch(slices.clone(), start, end);
            prop_assert_eq!(
                p.slices.len(),
                slices.len() + p.added.len() - p.dropped.len()
            );
            for i in 0..2600u64 {
                let want = if (start..end).contains(&i) { None } else { source_at(&slices, i) };
                prop_assert_eq!(source_at(&p.slices, i), want, "byte {}", i);
            }
        }

        #[test]
        fn covered_counts_each_byte_some_slice_holds_once(
            slices in proptest::collection::vec(arb_slice(), 0..12),
        ) {
            let held = (0..2600u64).filter(|i| source_at(&slices, *i).is_some()).count();
            prop_assert_eq!(covered(&slices), held as u64);
        }

        #[test]
        fn compact_keeps_every_visible_byte(
            slices in proptest::collection::vec(arb_slice(), 0..12),
            limit in 0u64..2600,
        ) {
            let (kept, dropped) = compact(slices.clone(), limit);
            prop_assert_eq!(kept.len() + dropped.len(), slices.len());
            for i in 0..2600u64 {
                let want = if i < limit { byte_at(&slices, i) } else { 0 };
                prop_assert_eq!(byte_at(&kept, i), want, "byte {}", i);
            }
        }
    }
}
