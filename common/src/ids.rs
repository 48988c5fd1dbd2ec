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
}
