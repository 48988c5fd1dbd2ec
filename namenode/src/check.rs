//! The namespace checked against itself, as `e2fsck -n` checks ext4's: every record the
//! store holds is recounted from the records that point at it, on one snapshot, while the
//! namenode serves. What it compares:
//!
//! - every name points at an inode that exists, of the kind the name says, in a directory;
//! - a directory has exactly one name (the root none), in the directory its record names
//!   as parent, and a link count of 2 plus its subdirectories;
//! - a file's link count is the number of its names (a file removed to the trash has one
//!   name there and a count of 0); one with no name and a count of 0 waits for its last
//!   close, with an orphan record saying so; every orphan record names such a file;
//! - a file's stored bytes are what its chunks' slices cover, and chunks belong to files;
//! - a block's reference count is the number of slices naming it, and every block a slice
//!   names has a record;
//! - the inode count is the number of inodes, and the next inode number is past them all;
//! - extended attributes belong to inodes that exist.
//!
//! Nothing is repaired: a problem found is reported (`cairn admin fsck`), and is a bug.

use std::collections::{HashMap, HashSet};

use cairn_common::attr::FileKind;
use cairn_common::layout::{self, Slice};
use cairn_common::proto::{NamespaceCheck, TRASH_DIR};
use cairn_common::{BlockId, FsResult, Ino};

use crate::keys;
use crate::store::{decode, decode_inode, BlockRecord, Cf, Dentry, Store};

/// Problems described in full; the rest are only counted.
const EXAMPLES: usize = 100;

/// What one inode's record says, and what the other records say about it.
struct Node {
    kind: FileKind,
    nlink: u32,
    parent: Ino,
    stored: u64,
    /// Names outside the trash; names in it; subdirectories (for a directory).
    names: u32,
    trash_names: u32,
    subdirs: u32,
    /// Names not in the links index (for a file: exactly one, in its record's `parent`).
    recorded_names: u32,
    /// Bytes its chunks' slices cover (for a file).
    covered: u64,
    orphan: bool,
}

struct Found<'a> {
    check: &'a mut NamespaceCheck,
}

impl Found<'_> {
    fn problem(&mut self, what: String) {
        self.check.problems += 1;
        if self.check.examples.len() < EXAMPLES {
            self.check.examples.push(what);
        }
    }
}

fn ino_of(key: &[u8]) -> Option<Ino> {
    Some(Ino(u64::from_be_bytes(key.get(..8)?.try_into().ok()?)))
}

/// Checks the namespace in `store` as of now (see the module's description).
pub fn check(store: &Store) -> FsResult<NamespaceCheck> {
    let snap = store.snapshot();
    let mut check = NamespaceCheck::default();
    let mut found = Found { check: &mut check };
    let mut nodes: HashMap<Ino, Node> = HashMap::new();

    snap.for_each(Cf::Inodes, |k, v| {
        let ino = match ino_of(k) {
            Some(ino) if k.len() == 8 => ino,
            _ => {
                found.problem(format!("malformed inode key {k:02x?}"));
                return Ok(());
            }
        };
        match decode_inode(v) {
            Ok(rec) => {
                if rec.attr.ino != ino {
                    found.problem(format!("inode {ino}'s record says it is {}", rec.attr.ino));
                }
                nodes.insert(
                    ino,
                    Node {
                        kind: rec.attr.kind,
                        nlink: rec.attr.nlink,
                        parent: rec.parent,
                        stored: rec.attr.stored,
                        names: 0,
                        trash_names: 0,
                        subdirs: 0,
                        recorded_names: 0,
                        covered: 0,
                        orphan: false,
                    },
                );
            }
            Err(e) => found.problem(format!("inode {ino}: {e}")),
        }
        Ok(())
    })?;

    // The trash and the users' directories in it: a removed file's entry there is no link.
    let trash_root = snap
        .get_raw(Cf::Dentries, &keys::dentry(Ino::ROOT, TRASH_DIR))?
        .and_then(|v| decode::<Dentry>("dentry", &v).ok())
        .filter(|d| d.kind == FileKind::Dir)
        .map(|d| d.ino);
    let trash: HashSet<Ino> = match trash_root {
        Some(root) => nodes
            .iter()
            .filter(|(ino, n)| **ino != Ino::ROOT && n.kind == FileKind::Dir && n.parent == root)
            .map(|(ino, _)| *ino)
            .chain([root])
            .collect(),
        None => HashSet::new(),
    };

    snap.for_each(Cf::Dentries, |k, v| {
        check_name(&mut found, &mut nodes, &trash, k, v);
        // A name of a file the links index does not hold is the one its record points at.
        if let (Some(parent), Ok(d)) = (ino_of(k), decode::<Dentry>("dentry", v)) {
            let link = keys::link(d.ino, parent, keys::dentry_name(k));
            if d.kind != FileKind::Dir && snap.get_raw(Cf::Links, &link)?.is_none() {
                if let Some(node) = nodes.get_mut(&d.ino) {
                    node.recorded_names += 1;
                    if node.parent != parent {
                        found.problem(format!(
                            "inode {} is named {:?} in {parent}, which neither its record \
                             (directory {}) nor the links index says",
                            d.ino,
                            String::from_utf8_lossy(keys::dentry_name(k)),
                            node.parent
                        ));
                    }
                }
            }
        }
        Ok(())
    })?;

    // Each entry of the links index names a name that names its inode.
    snap.for_each(Cf::Links, |k, _| {
        let (Some(ino), Some(parent)) = (ino_of(k), keys::link_parent(k)) else {
            found.problem(format!("malformed links key {k:02x?}"));
            return Ok(());
        };
        let name = &k[16..];
        let named = snap
            .get_raw(Cf::Dentries, &keys::dentry(parent, name))?
            .and_then(|v| decode::<Dentry>("dentry", &v).ok());
        if !named.is_some_and(|d| d.ino == ino && d.kind != FileKind::Dir) {
            found.problem(format!(
                "the links index names inode {ino} as {:?} in directory {parent}, which is not \
                 its name",
                String::from_utf8_lossy(name)
            ));
        }
        Ok(())
    })?;
    // Every file with names has exactly one its record points at.
    let mut recorded: Vec<_> = nodes
        .iter()
        .filter(|(_, n)| n.kind != FileKind::Dir && n.names + n.trash_names > 0)
        .filter(|(_, n)| n.recorded_names != 1)
        .map(|(ino, n)| (*ino, n.recorded_names))
        .collect();
    recorded.sort();
    for (ino, n) in recorded {
        found.problem(format!(
            "inode {ino} has {n} names outside the links index; one is the record's"
        ));
    }

    let mut refs: HashMap<BlockId, u64> = HashMap::new();
    snap.for_each(Cf::Chunks, |k, v| {
        found.check.chunks += 1;
        let (Some(ino), Some(index), 12) = (ino_of(k), keys::chunk_index(k), k.len()) else {
            found.problem(format!("malformed chunk key {k:02x?}"));
            return Ok(());
        };
        let slices: Vec<Slice> = match decode("chunk", v) {
            Ok(s) => s,
            Err(e) => {
                found.problem(format!("chunk {index} of inode {ino}: {e}"));
                return Ok(());
            }
        };
        for s in &slices {
            *refs.entry(s.block).or_default() += 1;
            found.check.block_refs += 1;
        }
        match nodes.get_mut(&ino) {
            Some(n) if n.kind == FileKind::File => n.covered += layout::covered(&slices),
            Some(n) => found.problem(format!(
                "chunk {index} belongs to inode {ino}, a {:?}",
                n.kind
            )),
            None => found.problem(format!(
                "chunk {index} belongs to inode {ino}, which does not exist"
            )),
        }
        Ok(())
    })?;

    snap.for_each(Cf::Blocks, |k, v| {
        found.check.blocks += 1;
        let Ok(id) = <[u8; 32]>::try_from(k) else {
            found.problem(format!("malformed block key {k:02x?}"));
            return Ok(());
        };
        let id = BlockId(id);
        let counted = refs.remove(&id).unwrap_or(0);
        match decode::<BlockRecord>("block", v) {
            Ok(rec) if rec.refs != counted => found.problem(format!(
                "block {id} records {} references; {counted} slices name it",
                rec.refs
            )),
            Ok(_) => {}
            Err(e) => found.problem(format!("block {id}: {e}")),
        }
        Ok(())
    })?;
    let mut unrecorded: Vec<_> = refs.into_iter().collect();
    unrecorded.sort();
    for (id, n) in unrecorded {
        found.problem(format!(
            "block {id} is named by {n} slices and has no record"
        ));
    }

    snap.for_each(Cf::Xattrs, |k, _| {
        match ino_of(k) {
            Some(ino) if nodes.contains_key(&ino) => {}
            _ => found.problem(format!(
                "extended attribute {k:02x?} of an inode that does not exist"
            )),
        }
        Ok(())
    })?;

    let mut inode_count = None;
    let mut next_ino = None;
    let mut pool = crate::inopool::InoPool::default();
    snap.for_each(Cf::Meta, |k, v| {
        if k == keys::META_INODE_COUNT {
            inode_count = decode::<u64>("meta", v).ok();
        } else if k == keys::META_NEXT_INO {
            next_ino = decode::<u64>("meta", v).ok();
        } else if k == keys::META_FREE_INOS {
            match decode::<crate::inopool::InoPool>("meta", v) {
                Ok(p) => pool = p,
                Err(e) => found.problem(format!("the pool of inode numbers is unreadable: {e}")),
            }
        } else if let Some(ino) = keys::orphan_ino(k) {
            match nodes.get_mut(&ino) {
                Some(n) => n.orphan = true,
                None => found.problem(format!("orphan record of inode {ino}, which is gone")),
            }
        }
        Ok(())
    })?;
    if inode_count != Some(nodes.len() as u64) {
        found.problem(format!(
            "the inode count says {inode_count:?}; there are {}",
            nodes.len()
        ));
    }
    let highest = nodes.keys().map(|i| i.0).max().unwrap_or(0);
    if next_ino.is_none_or(|next| next <= highest) {
        found.problem(format!(
            "the next inode number is {next_ino:?}, yet inode {highest} exists"
        ));
    }
    // Numbers given back are numbers handed out, and no inode's.
    if let Some(&(first, n)) = pool.ranges().last() {
        if next_ino.is_none_or(|next| first + n > next) {
            found.problem(format!(
                "inode numbers up to {} were given back, yet the next one is {next_ino:?}",
                first + n - 1
            ));
        }
    }
    for ino in nodes.keys().filter(|i| pool.contains(i.0)) {
        found.problem(format!(
            "inode {ino} exists, yet its number is free for reuse"
        ));
    }
    found.check.free_inos = pool.len();

    let mut inos: Vec<_> = nodes.keys().copied().collect();
    inos.sort();
    for ino in inos {
        check_counts(&mut found, &nodes, ino);
    }
    check.inodes = nodes.len() as u64;
    Ok(check)
}

/// One name: `(parent, name)` → `value`.
fn check_name(
    found: &mut Found<'_>,
    nodes: &mut HashMap<Ino, Node>,
    trash: &HashSet<Ino>,
    key: &[u8],
    value: &[u8],
) {
    found.check.names += 1;
    let Some(parent) = ino_of(key) else {
        found.problem(format!("malformed name key {key:02x?}"));
        return;
    };
    let name = String::from_utf8_lossy(keys::dentry_name(key)).into_owned();
    let d: Dentry = match decode("dentry", value) {
        Ok(d) => d,
        Err(e) => {
            found.problem(format!("name {name:?} in {parent}: {e}"));
            return;
        }
    };
    match nodes.get(&parent) {
        Some(p) if p.kind == FileKind::Dir => {}
        Some(p) => found.problem(format!("name {name:?} is in {parent}, a {:?}", p.kind)),
        None => found.problem(format!(
            "name {name:?} is in {parent}, which does not exist"
        )),
    }
    let Some(child) = nodes.get_mut(&d.ino) else {
        found.problem(format!(
            "name {name:?} in {parent} points at inode {}, which does not exist",
            d.ino
        ));
        return;
    };
    if child.kind != d.kind {
        found.problem(format!(
            "name {name:?} in {parent} says {:?}; inode {} is a {:?}",
            d.kind, d.ino, child.kind
        ));
    }
    if child.kind == FileKind::File && trash.contains(&parent) {
        child.trash_names += 1;
    } else {
        child.names += 1;
    }
    if child.kind == FileKind::Dir {
        if child.parent != parent {
            found.problem(format!(
                "directory {} is named {name:?} in {parent}, yet says its parent is {}",
                d.ino, child.parent
            ));
        }
        if let Some(p) = nodes.get_mut(&parent) {
            p.subdirs += 1;
        }
    }
}

/// One inode's counts against what pointed at it.
fn check_counts(found: &mut Found<'_>, nodes: &HashMap<Ino, Node>, ino: Ino) {
    let n = &nodes[&ino];
    if n.orphan && (n.nlink != 0 || n.names + n.trash_names != 0) {
        found.problem(format!(
            "inode {ino} is recorded as an orphan, yet has link count {} and {} names",
            n.nlink,
            n.names + n.trash_names
        ));
    }
    match n.kind {
        FileKind::Dir => {
            let names = if ino == Ino::ROOT { 0 } else { 1 };
            if n.names != names {
                found.problem(format!("directory {ino} has {} names", n.names));
            }
            if n.nlink != 2 + n.subdirs {
                found.problem(format!(
                    "directory {ino} has link count {}, and {} subdirectories",
                    n.nlink, n.subdirs
                ));
            }
        }
        _ => {
            let names = n.names + n.trash_names;
            let agrees = match n.nlink {
                // Removed to the trash, or waiting for its last close.
                0 => (n.names == 0 && n.trash_names == 1) || (names == 0 && n.orphan),
                nlink => nlink == names,
            };
            if !agrees {
                found.problem(format!(
                    "inode {ino} has link count {}, and {} names ({} in the trash){}",
                    n.nlink,
                    names,
                    n.trash_names,
                    if n.nlink == 0 && n.names == 0 {
                        "; no orphan record"
                    } else {
                        ""
                    }
                ));
            }
            if n.kind == FileKind::File && n.stored != n.covered {
                found.problem(format!(
                    "file {ino} records {} stored bytes; its slices cover {}",
                    n.stored, n.covered
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, MetaOp, MetaOpKind, MetaReply};
    use cairn_common::attr::{Caller, Timestamp};
    use cairn_common::proto::{CommitSlices, Link, Mkdir, Rename, RenameMode, Unlink};

    fn apply(store: &Store, kind: MetaOpKind) -> MetaReply {
        let mut txn = store.txn();
        let op = MetaOp {
            now: Timestamp {
                secs: 1_000,
                nanos: 0,
            },
            caller: Caller::ROOT,
            kind,
            request: None,
            free: Vec::new(),
        };
        let reply = ops::apply(&mut txn, &op).unwrap();
        store.commit(txn, false).unwrap();
        reply
    }

    fn made(reply: MetaReply) -> Ino {
        match reply {
            MetaReply::Attr(a) => a.ino,
            MetaReply::Created(c) => c.attr.ino,
            other => panic!("{other:?}"),
        }
    }

    fn slice(block: u8, pos: u32, len: u32) -> Slice {
        Slice {
            pos,
            len,
            block: BlockId([block; 32]),
            block_off: 0,
            block_len: 1 << 20,
        }
    }

    /// A namespace with a bit of everything: directories in directories, a hard link, two
    /// files sharing a block, one overwritten in part, one removed to the trash.
    /// Returns the store and (subdirectory, linked file, shared file).
    fn namespace() -> (tempfile::TempDir, Store, [Ino; 3]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        apply(&store, MetaOpKind::Format { replication: 3 });
        apply(
            &store,
            MetaOpKind::SetTrash {
                retention_secs: 3600,
                replaced: false,
            },
        );
        let mkdir = |parent, name: &str| {
            made(apply(
                &store,
                MetaOpKind::Mkdir(Mkdir {
                    parent,
                    name: name.into(),
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                }),
            ))
        };
        let d = mkdir(Ino::ROOT, "d");
        let e = mkdir(d, "e");
        let create =
            |parent, name: &str| made(apply(&store, MetaOpKind::new_file(parent, name.into())));
        let linked = create(d, "a");
        apply(
            &store,
            MetaOpKind::Link(Link {
                ino: linked,
                new_parent: e,
                new_name: b"a2".to_vec(),
            }),
        );
        let shared = create(e, "b");
        let removed = create(Ino::ROOT, "c");
        let commit = |ino, slices: Vec<(u32, Slice)>, size| {
            apply(
                &store,
                MetaOpKind::CommitSlices(CommitSlices {
                    ino,
                    slices,
                    size,
                    mtime: Timestamp::default(),
                }),
            );
        };
        commit(
            linked,
            vec![(0, slice(1, 0, 4096)), (1, slice(2, 0, 100))],
            layout::CHUNK_SIZE + 100,
        );
        commit(shared, vec![(0, slice(1, 0, 4096))], 4096);
        commit(shared, vec![(0, slice(3, 1000, 10))], 4096);
        commit(removed, vec![(0, slice(2, 0, 50))], 50);
        apply(
            &store,
            MetaOpKind::Unlink(Unlink {
                parent: Ino::ROOT,
                name: b"c".to_vec(),
            }),
        );
        (dir, store, [e, linked, shared])
    }

    /// Writes `change` straight into the store, behind the ops' back.
    fn tamper(store: &Store, change: impl FnOnce(&mut crate::store::Txn<'_>)) {
        let mut txn = store.txn();
        change(&mut txn);
        store.commit(txn, false).unwrap();
    }

    fn set_nlink(txn: &mut crate::store::Txn<'_>, ino: Ino, nlink: u32) {
        let mut rec = txn.inode(ino).unwrap().unwrap();
        rec.attr.nlink = nlink;
        txn.put_inode(&rec);
    }

    fn problems(store: &Store) -> Vec<String> {
        let found = check(store).unwrap();
        assert_eq!(found.problems as usize, found.examples.len());
        found.examples
    }

    #[test]
    fn a_namespace_made_by_ops_is_consistent() {
        let (_dir, store, _) = namespace();
        let found = check(&store).unwrap();
        assert_eq!(found.examples, Vec::<String>::new());
        // The root, /.trash, /.trash/0, d, e and three files.
        assert_eq!(found.inodes, 8);
        // d, e, a, a2, b, .trash, 0, and c's entry in the trash.
        assert_eq!(found.names, 8);
        assert_eq!(found.block_refs, 5);
        assert_eq!(found.blocks, 3);
    }

    #[test]
    fn the_links_index_follows_renames_over_names_and_exchanges() {
        let (_dir, store, [e, _, _]) = namespace();
        let rename = |parent, name: &str, new_parent, new_name: &str, mode| {
            apply(
                &store,
                MetaOpKind::Rename(Rename {
                    parent,
                    name: name.into(),
                    new_parent,
                    new_name: new_name.into(),
                    mode,
                }),
            );
        };
        let d = Ino(e.0 - 1);
        // A file over another's name (which had two), two files swapped, a file swapped
        // with a directory and back, and a file moved back to its first name.
        rename(e, "b", d, "a", RenameMode::Replace);
        rename(d, "a", e, "a2", RenameMode::Exchange);
        rename(d, "a", d, "e", RenameMode::Exchange);
        rename(d, "a", d, "e", RenameMode::Exchange);
        rename(e, "a2", e, "b", RenameMode::Replace);
        assert_eq!(problems(&store), Vec::<String>::new());
        // Every file has one name now: none is in the index.
        let links = store.scan_raw(Cf::Links, &[], None, usize::MAX).unwrap();
        assert_eq!(links, Vec::new());
        // Two names again, then the one the record points at goes: the other takes its
        // place in the record.
        let a = store.dentry(d, b"a").unwrap().unwrap().ino;
        apply(
            &store,
            MetaOpKind::Link(Link {
                ino: a,
                new_parent: Ino::ROOT,
                new_name: b"a3".to_vec(),
            }),
        );
        assert_eq!(
            store
                .scan_raw(Cf::Links, &[], None, usize::MAX)
                .unwrap()
                .len(),
            1
        );
        rename(Ino::ROOT, "a3", e, "a4", RenameMode::Replace);
        apply(
            &store,
            MetaOpKind::Unlink(Unlink {
                parent: d,
                name: b"a".to_vec(),
            }),
        );
        assert_eq!(store.inode(a).unwrap().unwrap().parent, e);
        assert_eq!(
            store.scan_raw(Cf::Links, &[], None, usize::MAX).unwrap(),
            Vec::new()
        );
        assert_eq!(problems(&store), Vec::<String>::new());
        // An entry of nothing, a name the index lost, a record pointing elsewhere.
        tamper(&store, |txn| {
            txn.put_raw(Cf::Links, keys::link(Ino(77), e, b"zz"), vec![]);
        });
        let found = problems(&store).join("\n");
        assert!(found.contains("names inode 77 as \"zz\""), "{found}");
        tamper(&store, |txn| {
            txn.delete(Cf::Links, keys::link(Ino(77), e, b"zz"));
            txn.put_dentry(
                d,
                b"a5",
                Dentry {
                    ino: a,
                    kind: FileKind::File,
                },
            );
        });
        let found = problems(&store).join("\n");
        assert!(
            found.contains(&format!("inode {a} is named \"a5\" in {d}")),
            "{found}"
        );
        assert!(
            found.contains(&format!("inode {a} has 2 names outside")),
            "{found}"
        );
    }

    #[test]
    fn a_wrong_link_count_is_found() {
        let (_dir, store, [e, linked, _]) = namespace();
        tamper(&store, |txn| {
            set_nlink(txn, linked, 1);
        });
        let found = problems(&store);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("link count 1, and 2 names"), "{found:?}");
        tamper(&store, |txn| {
            set_nlink(txn, linked, 2);
            set_nlink(txn, e, 3);
        });
        let found = problems(&store);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("0 subdirectories"), "{found:?}");
    }

    #[test]
    fn a_wrong_reference_count_and_a_block_without_record_are_found() {
        let (_dir, store, _) = namespace();
        tamper(&store, |txn| {
            let id = BlockId([1; 32]);
            let mut rec = txn.block(&id).unwrap().unwrap();
            assert_eq!(rec.refs, 2);
            rec.refs = 3;
            txn.put_block(&id, &rec);
            txn.delete(Cf::Blocks, keys::block(&BlockId([3; 32])));
        });
        let found = problems(&store);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("records 3 references; 2 slices"),
            "{found:?}"
        );
        assert!(found[1].contains("no record"), "{found:?}");
    }

    #[test]
    fn a_name_of_nothing_counters_and_stored_bytes_are_found() {
        let (_dir, store, [e, _, shared]) = namespace();
        tamper(&store, |txn| {
            txn.put_dentry(
                e,
                b"ghost",
                Dentry {
                    ino: Ino(999),
                    kind: FileKind::File,
                },
            );
            txn.put_meta_u64(keys::META_INODE_COUNT, 7);
            let mut rec = txn.inode(shared).unwrap().unwrap();
            rec.attr.stored += 1;
            txn.put_inode(&rec);
        });
        let found = problems(&store).join("\n");
        assert!(found.contains("\"ghost\" in"), "{found}");
        assert!(
            found.contains("inode count says Some(7); there are 8"),
            "{found}"
        );
        assert!(found.contains("stored bytes"), "{found}");
        assert_eq!(check(&store).unwrap().problems, 3);
    }

    #[test]
    fn a_file_with_no_name_and_no_orphan_record_is_found() {
        let (_dir, store, [e, _, shared]) = namespace();
        tamper(&store, |txn| {
            txn.delete(Cf::Dentries, keys::dentry(e, b"b"))
        });
        let found = problems(&store);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(&format!("inode {shared} has link count 1, and 0 names")));
        tamper(&store, |txn| {
            set_nlink(txn, shared, 0);
        });
        assert!(problems(&store)[0].contains("no orphan record"));
        tamper(&store, |txn| txn.orphan(shared, Vec::new()));
        assert_eq!(problems(&store), Vec::<String>::new());
    }

    #[test]
    fn an_inode_number_free_for_reuse_yet_in_use_or_never_handed_out_is_found() {
        let (_dir, store, [_, linked, _]) = namespace();
        let next = store.txn().meta_u64(keys::META_NEXT_INO).unwrap().unwrap();
        let with_pool = |inos: &[u64]| {
            tamper(&store, |txn| {
                let mut pool = crate::inopool::InoPool::default();
                pool.give(inos.iter().copied());
                txn.put_ino_pool(&pool);
            })
        };
        // A number handed out (reserved), then given back.
        tamper(&store, |txn| {
            txn.put_meta_u64(keys::META_NEXT_INO, next + 1)
        });
        with_pool(&[next]);
        let found = check(&store).unwrap();
        assert_eq!((found.problems, found.free_inos), (0, 1), "{found:?}");
        with_pool(&[linked.0, next + 1]);
        let found = problems(&store).join("\n");
        assert!(
            found.contains(&format!("inode {linked} exists, yet its number is free")),
            "{found}"
        );
        assert!(
            found.contains(&format!("up to {} were given back", next + 1)),
            "{found}"
        );
    }
}
