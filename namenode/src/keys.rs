//! Every RocksDB key the namenode writes is built here. Integers are big-endian so that byte
//! order is logical order: a directory's entries are one contiguous, name-sorted range, and a
//! file's chunks one index-sorted range.

use cairn_common::{BlockId, Ino};

pub const CF_INODES: &str = "inodes";
pub const CF_DENTRIES: &str = "dentries";
pub const CF_CHUNKS: &str = "chunks";
pub const CF_BLOCKS: &str = "blocks";
pub const CF_XATTRS: &str = "xattrs";
pub const CF_META: &str = "meta";
pub const CF_LINKS: &str = "links";
/// The namenode group's replicated log: entries by index (see `group::log`).
pub const CF_RAFT_LOG: &str = "raft_log";
/// What the group's Raft keeps beside its log: vote, purge point, applied point.
pub const CF_RAFT_STATE: &str = "raft_state";
pub const ALL_CFS: [&str; 9] = [
    CF_INODES,
    CF_DENTRIES,
    CF_CHUNKS,
    CF_BLOCKS,
    CF_XATTRS,
    CF_META,
    CF_LINKS,
    CF_RAFT_LOG,
    CF_RAFT_STATE,
];

/// Keys of the `meta` family.
pub const META_FORMAT: &[u8] = b"format";
pub const META_NEXT_INO: &[u8] = b"next_ino";
pub const META_INODE_COUNT: &[u8] = b"inode_count";
pub const META_CLUSTER_ID: &[u8] = b"cluster_id";
/// Inode numbers reserved for a delegation holder and given back unused (`inopool.rs`).
pub const META_FREE_INOS: &[u8] = b"free_inos";
/// The last entry of the group's log the namespace was built to (`group::machine`).
pub const META_RAFT_APPLIED: &[u8] = b"raft_applied";
/// The group's membership as of that entry.
pub const META_RAFT_MEMBERSHIP: &[u8] = b"raft_membership";
/// Prefix of the `meta` keys naming orphans: files with no name left, kept while open.
pub const META_ORPHAN_PREFIX: &[u8] = b"orphan/";

/// Prefix of the `meta` keys holding an operator's state for a datanode.
pub const META_NODE_ADMIN_PREFIX: &[u8] = b"node-admin/";

/// Prefix of the `meta` keys recording the datanodes seen, so that one that dies is still
/// listed after a restart.
pub const META_NODE_PREFIX: &[u8] = b"node/";

/// Prefix of the `meta` keys naming condemned blocks (see `gc.rs`).
pub const META_GC_PREFIX: &[u8] = b"gc/";

/// Prefix of the `meta` keys holding the answers to clients' named changes
/// (`ops::apply`): `req/<session><seq>`.
pub const META_REQUEST_PREFIX: &[u8] = b"req/";
/// `req/<session><seq>`: the answer to that change of that client session.
pub fn request(session: u64, seq: u64) -> Vec<u8> {
    let mut k = META_REQUEST_PREFIX.to_vec();
    k.extend_from_slice(&session.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The session and change number a `req/` key names, if it is well formed.
pub fn request_of(key: &[u8]) -> Option<(u64, u64)> {
    let rest = key.strip_prefix(META_REQUEST_PREFIX)?;
    let (session, seq) = (rest.get(..8)?, rest.get(8..)?);
    Some((
        u64::from_be_bytes(session.try_into().ok()?),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// `gc/<block id>`: the block is garbage and being deleted from the datanodes.
pub fn tombstone(id: &BlockId) -> Vec<u8> {
    let mut k = META_GC_PREFIX.to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// The block a tombstone key names, if the key is well formed.
pub fn tombstone_block(key: &[u8]) -> Option<BlockId> {
    let rest = key.strip_prefix(META_GC_PREFIX)?;
    Some(BlockId(rest.try_into().ok()?))
}

/// `node-admin/<datanode id>`: decommissioning, decommissioned or maintenance.
pub fn node_admin(id: cairn_common::DatanodeId) -> Vec<u8> {
    per_datanode(META_NODE_ADMIN_PREFIX, id)
}

/// The datanode a node-admin key names, if the key is well formed.
pub fn node_admin_id(key: &[u8]) -> Option<cairn_common::DatanodeId> {
    datanode_of(META_NODE_ADMIN_PREFIX, key)
}

/// `node/<datanode id>`: a datanode seen, where and when.
pub fn node(id: cairn_common::DatanodeId) -> Vec<u8> {
    per_datanode(META_NODE_PREFIX, id)
}

/// The datanode a `node/` key names, if the key is well formed.
pub fn node_id(key: &[u8]) -> Option<cairn_common::DatanodeId> {
    datanode_of(META_NODE_PREFIX, key)
}

/// `<prefix><datanode id>`, the id big-endian.
fn per_datanode(prefix: &[u8], id: cairn_common::DatanodeId) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

/// The datanode a `<prefix><datanode id>` key names, if it is one.
pub fn datanode_of(prefix: &[u8], key: &[u8]) -> Option<cairn_common::DatanodeId> {
    let rest = key.strip_prefix(prefix)?;
    Some(cairn_common::DatanodeId(u64::from_be_bytes(
        rest.try_into().ok()?,
    )))
}

/// `orphan/<ino>`: the file has no name left and waits for its last close.
pub fn orphan(ino: Ino) -> Vec<u8> {
    let mut k = META_ORPHAN_PREFIX.to_vec();
    k.extend_from_slice(&ino.0.to_be_bytes());
    k
}

/// The inode an orphan key names, if the key is well formed.
pub fn orphan_ino(key: &[u8]) -> Option<Ino> {
    let rest = key.strip_prefix(META_ORPHAN_PREFIX)?;
    Some(Ino(u64::from_be_bytes(rest.try_into().ok()?)))
}

pub fn inode(ino: Ino) -> Vec<u8> {
    ino.0.to_be_bytes().to_vec()
}

/// `(parent, name)`; the prefix `parent` alone selects a directory's entries.
pub fn dentry(parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.0.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn dentry_prefix(parent: Ino) -> Vec<u8> {
    parent.0.to_be_bytes().to_vec()
}

/// `(ino, parent, name)`: the `links` family holds, for each inode that is not a directory
/// and has more than one name, every name but the one its record's `parent` is the
/// directory of, so that where a file's names are (is it inside a subtree?) is known
/// without a scan. A file with one name, nearly every one, has no entry.
pub fn link(ino: Ino, parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&ino.0.to_be_bytes());
    k.extend_from_slice(&parent.0.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// The directory a `links` key names, if the key is well formed.
pub fn link_parent(key: &[u8]) -> Option<Ino> {
    Some(Ino(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?)))
}

/// The name part of a dentry key.
pub fn dentry_name(key: &[u8]) -> &[u8] {
    &key[8.min(key.len())..]
}

/// `(ino, chunk index)`.
pub fn chunk(ino: Ino, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&ino.0.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn chunk_prefix(ino: Ino) -> Vec<u8> {
    ino.0.to_be_bytes().to_vec()
}

/// The chunk index of a chunk key, if the key is well formed.
pub fn chunk_index(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(8..12)?.try_into().ok()?))
}

pub fn block(id: &BlockId) -> Vec<u8> {
    id.0.to_vec()
}

/// `(ino, name)`.
pub fn xattr(ino: Ino, name: &[u8]) -> Vec<u8> {
    dentry(ino, name)
}

pub fn xattr_prefix(ino: Ino) -> Vec<u8> {
    ino.0.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_logical_order() {
        let inos = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX];
        for w in inos.windows(2) {
            assert!(inode(Ino(w[0])) < inode(Ino(w[1])));
            assert!(chunk(Ino(w[0]), u32::MAX) < chunk(Ino(w[1]), 0));
            assert!(dentry(Ino(w[0]), b"\xff\xff") < dentry(Ino(w[1]), b""));
        }
        for w in [0u32, 1, 255, 256, 1 << 20, u32::MAX].windows(2) {
            assert!(chunk(Ino(7), w[0]) < chunk(Ino(7), w[1]));
            assert_eq!(chunk_index(&chunk(Ino(7), w[1])), Some(w[1]));
        }
    }

    #[test]
    fn directory_entries_sort_by_name_within_their_parent() {
        assert!(dentry(Ino(5), b"a") < dentry(Ino(5), b"ab"));
        assert!(dentry(Ino(5), b"ab") < dentry(Ino(5), b"b"));
        assert!(dentry(Ino(5), b"zzz").starts_with(&dentry_prefix(Ino(5))));
        assert!(!dentry(Ino(6), b"a").starts_with(&dentry_prefix(Ino(5))));
        assert_eq!(dentry_name(&dentry(Ino(5), b"name")), b"name");
    }

    #[test]
    fn node_admin_keys_name_their_datanode() {
        let id = cairn_common::DatanodeId(0xfeed_beef);
        assert_eq!(node_admin_id(&node_admin(id)), Some(id));
        assert_eq!(node_id(&node(id)), Some(id));
        assert_eq!(node_id(&node_admin(id)), None);
        assert_eq!(node_admin_id(&orphan(Ino(1))), None);
    }

    #[test]
    fn tombstones_name_their_block() {
        let id = BlockId::of(b"garbage");
        assert_eq!(tombstone_block(&tombstone(&id)), Some(id));
        assert_eq!(tombstone_block(b"gc/short"), None);
        assert_eq!(tombstone_block(&orphan(Ino(1))), None);
    }

    #[test]
    fn orphan_keys_name_their_inode() {
        assert_eq!(orphan_ino(&orphan(Ino(1 << 40))), Some(Ino(1 << 40)));
        assert!(orphan(Ino(3)).starts_with(META_ORPHAN_PREFIX));
        assert_eq!(orphan_ino(b"orphan/short"), None);
        assert_eq!(orphan_ino(META_INODE_COUNT), None);
    }
}
