//! Identifiers: inode numbers, content-addressed block ids, datanode ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An inode number. The root directory is [`Ino::ROOT`]; 0 is never a valid inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of an immutable block: the BLAKE3 hash of its bytes. Two blocks with the same id
/// hold the same bytes, which is what makes verification, caching and dedup free.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> BlockId {
        BlockId(*blake3::hash(data).as_bytes())
    }

    /// `pieces` joined into one buffer, and the id of what they hold: the bytes are hashed
    /// right after they are copied, while they are still in the processor's cache.
    pub fn join_pieces<P: AsRef<[u8]>>(pieces: &[P]) -> (Vec<u8>, BlockId) {
        // Hashed in whole spans: BLAKE3 hashes a span's 1 KiB chunks side by side, but a
        // piece's ragged ends (pieces are datagrams' payloads) one 64-byte block at a time.
        const SPAN: usize = 64 << 10;
        let len = pieces.iter().map(|p| p.as_ref().len()).sum();
        let mut joined = Vec::with_capacity(len);
        let mut hasher = blake3::Hasher::new();
        let mut hashed = 0;
        for piece in pieces {
            joined.extend_from_slice(piece.as_ref());
            let whole = joined.len() / SPAN * SPAN;
            if whole > hashed {
                hasher.update(&joined[hashed..whole]);
                hashed = whole;
            }
        }
        hasher.update(&joined[hashed..]);
        (joined, BlockId::from_hash(hasher.finalize()))
    }

    pub fn from_hash(hash: blake3::Hash) -> BlockId {
        BlockId(*hash.as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    pub fn from_hex(s: &str) -> Option<BlockId> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| BlockId(*h.as_bytes()))
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve hex digits identify a block in logs without drowning them.
        write!(f, "BlockId({})", &self.to_hex()[..12])
    }
}

/// A datanode's identity, chosen at random when its data directory is first formatted and
/// kept there, so it survives restarts and address changes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatanodeId(pub u64);

impl fmt::Display for DatanodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for DatanodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatanodeId({:016x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_id_hex_round_trips() {
        let id = BlockId::of(b"cairn");
        assert_eq!(BlockId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlockId::from_hex("not hex"), None);
    }

    #[test]
    fn joined_pieces_are_the_bytes_and_their_id() {
        // Every way of cutting ~200 KiB: nothing, one piece, datagram-like pieces that
        // straddle the hashing spans, pieces of one byte, empty ones.
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for cut in [0, 1, 7, 1_024, 55_000, 65_536, 65_537, 199_999, 200_000] {
            let mut pieces: Vec<&[u8]> = data.chunks(cut.max(1)).collect();
            if cut == 0 {
                pieces = vec![&[], &data, &[]];
            }
            let (joined, id) = BlockId::join_pieces(&pieces);
            assert!(joined == data, "cut {cut}");
            assert_eq!(id, BlockId::of(&data), "cut {cut}");
        }
        let none: [&[u8]; 0] = [];
        assert_eq!(BlockId::join_pieces(&none), (Vec::new(), BlockId::of(b"")));
    }
}
