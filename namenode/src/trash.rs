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

use std::sync::atomic::{AtomicU64, Ordering};

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
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Moved {
    /// The remover's trash directory.
    pub dir: Ino,
    /// `/.trash` was made by this move: `/` has a new entry too.
    pub made_root_entry: bool,
    /// What the file adds to the trash: its stored bytes, once per replica.
    pub bytes: u64,
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
        ino: None,
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
        bytes: weight(&rec.attr),
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

/// What a file weighs in the trash: its stored bytes, once per replica.
pub fn weight(attr: &InodeAttr) -> u64 {
    attr.stored * u64::from(attr.replication.max(1))
}

/// What the trash holds: its files' bytes, counted once per replica, by the second each
/// was removed (so the oldest can go first without holding the entries in memory).
#[derive(Debug, Default)]
pub struct Census {
    pub bytes: u64,
    pub files: u64,
    by_second: std::collections::BTreeMap<i64, u64>,
}

impl Census {
    pub fn add(&mut self, removed: i64, bytes: u64) {
        self.bytes += bytes;
        self.files += 1;
        *self.by_second.entry(removed).or_default() += bytes;
    }

    /// The removal second up to which (inclusive) files must go, oldest first, for at most
    /// `budget` bytes to stay; `None` if the trash is within it.
    pub fn oldest_to_free(&self, budget: u64) -> Option<i64> {
        let mut over = self.bytes.checked_sub(budget).filter(|o| *o > 0)?;
        for (at, bytes) in &self.by_second {
            over = over.saturating_sub(*bytes);
            if over == 0 {
                return Some(*at);
            }
        }
        self.by_second.keys().next_back().copied()
    }

    /// Bytes of the files removed up to second `through`, inclusive.
    pub fn bytes_through(&self, through: i64) -> u64 {
        self.by_second.range(..=through).map(|(_, b)| b).sum()
    }
}

/// The emptier's estimate of the trash's bytes against its bound between its passes: a
/// file moved in wakes it only when the trash may have gone over.
#[derive(Debug)]
pub struct Gauge {
    bytes: AtomicU64,
    budget: AtomicU64,
}

impl Default for Gauge {
    fn default() -> Gauge {
        Gauge {
            bytes: AtomicU64::new(0),
            budget: AtomicU64::new(u64::MAX),
        }
    }
}

impl Gauge {
    /// The emptier's pass left `bytes` in the trash, which may hold `budget`.
    pub fn set(&self, bytes: u64, budget: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        self.budget.store(budget, Ordering::Relaxed);
    }

    /// A file of `bytes` moved in: whether the trash may now be over its bound.
    pub fn added(&self, bytes: u64) -> bool {
        let now = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        now > self.budget.load(Ordering::Relaxed)
    }
}

/// How many bytes (once per replica) the trash may hold now: `max_percent` of the
/// datanodes' `capacity`, and less when their free space, with what earlier removals will
/// free once collected (`freeing`), is under `keep_free_percent` of it: then the trash gives
/// up what brings the free space back, all of it if need be. With no capacity known (no
/// live datanode) nothing is bounded but by age.
pub fn budget(
    max_percent: u8,
    keep_free_percent: u8,
    capacity: u64,
    available: u64,
    freeing: u64,
    trash_bytes: u64,
) -> u64 {
    if capacity == 0 {
        return u64::MAX;
    }
    let percent = |p: u8| (u128::from(capacity) * u128::from(p) / 100) as u64;
    let share = if max_percent == 0 {
        u64::MAX
    } else {
        percent(max_percent)
    };
    let floor = percent(keep_free_percent);
    let soon_free = available.saturating_add(freeing);
    if soon_free >= floor {
        share
    } else {
        share.min(trash_bytes.saturating_add(soon_free).saturating_sub(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_until_the_trash_fits() {
        let mut c = Census::default();
        c.add(300, 10);
        c.add(100, 10);
        c.add(200, 10);
        c.add(200, 5);
        assert_eq!((c.bytes, c.files), (35, 4));
        assert_eq!(c.oldest_to_free(35), None);
        assert_eq!(c.oldest_to_free(100), None);
        assert_eq!(c.oldest_to_free(30), Some(100));
        assert_eq!(c.oldest_to_free(25), Some(100));
        assert_eq!(c.oldest_to_free(24), Some(200));
        assert_eq!(c.oldest_to_free(0), Some(300));
        assert_eq!(c.bytes_through(200), 25);
        assert_eq!(Census::default().oldest_to_free(0), None);
    }

    #[test]
    fn the_trash_keeps_its_share_and_gives_way_to_writes() {
        // 10% of 1000, plenty free: the share.
        assert_eq!(budget(10, 5, 1000, 500, 0, 80), 100);
        // No share set: unbounded while space is free.
        assert_eq!(budget(0, 5, 1000, 500, 0, 80), u64::MAX);
        // 30 free of the 50 to keep: the trash gives up 20 of its 80.
        assert_eq!(budget(10, 5, 1000, 30, 0, 80), 60);
        // ... unless 20 are being freed already.
        assert_eq!(budget(10, 5, 1000, 30, 20, 80), 100);
        // Full disks and a small trash: all of it goes.
        assert_eq!(budget(10, 5, 1000, 0, 0, 40), 0);
        // Nothing known of the datanodes: no bound.
        assert_eq!(budget(10, 5, 0, 0, 0, 40), u64::MAX);
    }

    #[test]
    fn trash_entries_start_with_their_removal_time() {
        assert_eq!(removed_at(b"1732650000-42-report.txt"), Some(1_732_650_000));
        assert_eq!(removed_at(b"report.txt"), None);
        assert_eq!(removed_at(b"x-1"), None);
    }
}
