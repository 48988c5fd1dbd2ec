//! The trash: while `trash_retention_secs` is not zero, removing the last name of a regular
//! file (through the mount, `cairn fs rm` or the API alike) moves it to the trash of the
//! user who removed it, `/.trash/<uid>/<removed at>-<ino>-<name>`, a directory only that
//! user (and root) can enter. The file keeps its owner, mode and data; an extended attribute
//! (`trusted.cairn.origin`) records where it came from, so `cairn fs restore` can put it
//! back. The namenode removes it for good once it has been there for the retention period;
//! removing it from the trash by hand does so at once.
//!
//! Only regular files go to the trash (directories are removed once empty, as `rm -r`
//! leaves them; symlinks and device nodes hold no data). A file with other hard links
//! loses a name, not its data, and does not go either. Renaming over a file replaces it
//! for good, as HDFS's trash does, unless `trash_replaced` is set: editors, SQLite and git
//! replace files by renames all day, and their old versions would fill the trash.
//!
//! `/.trash` itself can be entered by everyone but listed by root alone (`0711`): who else
//! removed files is nobody's business; each `/.trash/<uid>` is its owner's (`0700`).
//!
//! A file in the trash has no name outside it, and says so: its link count is 0, as that of
//! any removed file a program still holds open (`fstat` after `unlink`, `lsof +L1`). Its
//! entry in the trash is not a link: it cannot be linked again (`ENOENT`, as Linux answers
//! for any removed file); restoring it, or moving it out of the trash with `mv`, gives it
//! its one name back.

use cairn_common::attr::{check_name, Caller, FileKind, InodeAttr, Timestamp, NAME_MAX};
use cairn_common::proto::{Restore, TrashOrigin, TRASH_DIR, TRASH_ORIGIN_XATTR};
use cairn_common::{FsError, FsResult, Ino};

use crate::keys;
use crate::ops::{load, load_dir, make_node, NewNode};
use crate::perm::{self, EXEC, WRITE};
use crate::store::{Cf, Dentry, InodeRecord, Txn};

/// `meta` key: how long files stay in the trash, in seconds (absent or 0: no trash).
pub const META_TRASH_RETENTION: &[u8] = b"trash_retention_secs";
/// `meta` key: 1 if files replaced by a rename go to the trash too.
pub const META_TRASH_REPLACED: &[u8] = b"trash_replaced";

/// The mode of `/.trash`: entered by all, listed by root alone.
const TRASH_ROOT_MODE: u16 = 0o711;

pub fn retention(txn: &Txn<'_>) -> FsResult<u64> {
    Ok(txn.meta_u64(META_TRASH_RETENTION)?.unwrap_or(0))
}

/// `/.trash`, if it exists as a directory.
fn root(txn: &Txn<'_>) -> FsResult<Option<Ino>> {
    Ok(txn
        .dentry(Ino::ROOT, TRASH_DIR)?
        .filter(|d| d.kind == FileKind::Dir)
        .map(|d| d.ino))
}

/// Is `dir` the trash or a user's trash directory? What is removed there goes for good.
pub fn is_trash(txn: &Txn<'_>, dir: &InodeRecord) -> FsResult<bool> {
    let Some(root) = root(txn)? else {
        return Ok(false);
    };
    Ok(dir.attr.ino == root || (dir.parent == root && dir.attr.ino != Ino::ROOT))
}

/// Should removing the name `rec` has in `dir` move it to the trash? `replacing`: a rename
/// over the name removes it.
pub fn takes(
    txn: &Txn<'_>,
    dir: &InodeRecord,
    rec: &InodeRecord,
    replacing: bool,
) -> FsResult<bool> {
    Ok(rec.attr.kind == FileKind::File
        && rec.attr.nlink <= 1
        && retention(txn)? > 0
        && (!replacing || txn.meta_u64(META_TRASH_REPLACED)? == Some(1))
        && !is_trash(txn, dir)?)
}

/// The directory `name` in `parent`, made with `node` if missing.
fn ensure_dir(
    txn: &mut Txn<'_>,
    parent: Ino,
    name: &[u8],
    node: NewNode,
    now: Timestamp,
) -> FsResult<Ino> {
    match txn.dentry(parent, name)? {
        Some(d) if d.kind == FileKind::Dir => Ok(d.ino),
        Some(_) => Err(FsError::io(format!(
            "{} is in the way of the trash: it is not a directory",
            String::from_utf8_lossy(name)
        ))),
        None => Ok(make_node(txn, &Caller::ROOT, parent, name, node, now)?.ino),
    }
}

/// Where [`move_in`] put a file.
#[derive(Clone, Copy, Debug)]
pub struct Moved {
    /// The remover's trash directory.
    pub dir: Ino,
    /// `/.trash` was made by this move: `/` has a new entry too.
    pub made_root_entry: bool,
}

/// Moves regular file `rec`, named `name` in `parent`, to `who`'s trash. The caller has
/// checked that `who` may remove it.
pub fn move_in(
    txn: &mut Txn<'_>,
    who: &Caller,
    parent: Ino,
    name: &[u8],
    mut rec: InodeRecord,
    now: Timestamp,
) -> FsResult<Moved> {
    let dir_node = |perm, uid, gid| NewNode {
        kind: FileKind::Dir,
        perm,
        uid,
        gid,
        rdev: 0,
        target: None,
    };
    let made_root_entry = txn.dentry(Ino::ROOT, TRASH_DIR)?.is_none();
    let root = ensure_dir(
        txn,
        Ino::ROOT,
        TRASH_DIR,
        dir_node(TRASH_ROOT_MODE, 0, 0),
        now,
    )?;
    // Made listable by everyone before the mode was tightened.
    let mut root_rec = load_dir(txn, root)?;
    if root_rec.attr.perm != TRASH_ROOT_MODE {
        root_rec.attr.perm = TRASH_ROOT_MODE;
        txn.put_inode(&root_rec);
    }
    let mine = ensure_dir(
        txn,
        root,
        who.uid.to_string().as_bytes(),
        dir_node(0o700, who.uid, who.gid),
        now,
    )?;
    let ino = rec.attr.ino;
    let mut entry = format!("{}-{}-", now.secs, ino.0).into_bytes();
    entry.extend_from_slice(name);
    entry.truncate(NAME_MAX);
    txn.delete(Cf::Dentries, keys::dentry(parent, name));
    txn.put_dentry(
        mine,
        &entry,
        Dentry {
            ino,
            kind: FileKind::File,
        },
    );
    let origin = TrashOrigin {
        parent,
        name: name.to_vec(),
        removed: now,
        by: who.uid,
    };
    txn.put_raw(
        Cf::Xattrs,
        keys::xattr(ino, TRASH_ORIGIN_XATTR),
        origin.encode(),
    );
    rec.parent = mine;
    rec.attr.nlink = 0;
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    touch_dir(txn, mine, now)?;
    Ok(Moved {
        dir: mine,
        made_root_entry,
    })
}

fn touch_dir(txn: &mut Txn<'_>, dir: Ino, now: Timestamp) -> FsResult<()> {
    let mut d = load(txn, dir)?;
    d.attr.mtime = now;
    d.attr.ctime = now;
    txn.put_inode(&d);
    Ok(())
}

/// Puts a file from a trash directory back (see [`Restore`]).
pub fn restore(
    txn: &mut Txn<'_>,
    who: &Caller,
    r: &Restore,
    now: Timestamp,
) -> FsResult<InodeAttr> {
    let trash = load_dir(txn, r.parent)?;
    if !is_trash(txn, &trash)? {
        return Err(FsError::invalid("only files in the trash can be restored"));
    }
    perm::require(who, &trash.attr, WRITE | EXEC)?;
    let entry = txn.dentry(r.parent, &r.name)?.ok_or(FsError::NotFound)?;
    let mut rec = load(txn, entry.ino)?;
    let origin_key = keys::xattr(rec.attr.ino, TRASH_ORIGIN_XATTR);
    let (to_parent, to_name) = match &r.to {
        Some((parent, name)) => (*parent, name.clone()),
        None => {
            let origin = txn
                .get_raw(Cf::Xattrs, &origin_key)?
                .and_then(|v| TrashOrigin::decode(&v))
                .ok_or_else(|| {
                    FsError::invalid("nothing says where this file came from; give a destination")
                })?;
            (origin.parent, origin.name)
        }
    };
    check_name(&to_name)?;
    let mut dest = match load_dir(txn, to_parent) {
        Err(FsError::NotFound) => {
            return Err(FsError::invalid(
                "the directory it was removed from is gone; give a destination",
            ))
        }
        other => other?,
    };
    perm::require(who, &dest.attr, WRITE | EXEC)?;
    if txn.dentry(to_parent, &to_name)?.is_some() {
        return Err(FsError::Exists);
    }
    txn.delete(Cf::Dentries, keys::dentry(r.parent, &r.name));
    txn.put_dentry(
        to_parent,
        &to_name,
        Dentry {
            ino: rec.attr.ino,
            kind: entry.kind,
        },
    );
    txn.delete(Cf::Xattrs, origin_key);
    rec.parent = to_parent;
    rec.attr.nlink = 1;
    rec.attr.ctime = now;
    txn.put_inode(&rec);
    dest.attr.mtime = now;
    dest.attr.ctime = now;
    txn.put_inode(&dest);
    touch_dir(txn, r.parent, now)?;
    Ok(rec.attr)
}

/// A file `rec` moved from directory `from` to `to` by a rename: leaving the trash, a file
/// that had no name outside it has one again (what [`restore`] does, by `mv`).
pub fn moving(
    txn: &mut Txn<'_>,
    rec: &mut InodeRecord,
    from: &InodeRecord,
    to: &InodeRecord,
) -> FsResult<()> {
    if rec.attr.kind == FileKind::File
        && rec.attr.nlink == 0
        && is_trash(txn, from)?
        && !is_trash(txn, to)?
    {
        rec.attr.nlink = 1;
        txn.delete(Cf::Xattrs, keys::xattr(rec.attr.ino, TRASH_ORIGIN_XATTR));
    }
    Ok(())
}

/// When the trash entry `name` was removed, from the seconds it starts with.
pub fn removed_at(name: &[u8]) -> Option<i64> {
    let end = name.iter().position(|b| *b == b'-')?;
    std::str::from_utf8(&name[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_entries_start_with_their_removal_time() {
        assert_eq!(removed_at(b"1732650000-42-report.txt"), Some(1_732_650_000));
        assert_eq!(removed_at(b"report.txt"), None);
        assert_eq!(removed_at(b"x-1"), None);
    }
}
