//! POSIX permission checks, made by the namenode with the caller's uid, gid and groups, so a
//! client is refused exactly where a local ext4 would refuse it.

use cairn_common::attr::{Caller, InodeAttr};
use cairn_common::{FsError, FsResult};

pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const EXEC: u16 = 1;

pub fn in_group(caller: &Caller, gid: u32) -> bool {
    caller.in_group(gid)
}

pub fn is_owner_or_root(caller: &Caller, attr: &InodeAttr) -> bool {
    caller.uid == 0 || caller.uid == attr.uid
}

/// May `caller` do `want` (a mask of READ, WRITE, EXEC) to `attr`?
pub fn allowed(caller: &Caller, attr: &InodeAttr, want: u16) -> bool {
    caller.may(attr, want)
}

/// `EACCES` unless `caller` may do `want` to `attr`.
pub fn require(caller: &Caller, attr: &InodeAttr, want: u16) -> FsResult<()> {
    if allowed(caller, attr, want) {
        Ok(())
    } else {
        Err(FsError::AccessDenied)
    }
}

/// `EPERM` unless `caller` owns `attr` or is root.
pub fn require_owner(caller: &Caller, attr: &InodeAttr) -> FsResult<()> {
    if is_owner_or_root(caller, attr) {
        Ok(())
    } else {
        Err(FsError::NotPermitted)
    }
}

/// In a sticky directory only the entry's owner, the directory's owner or root may remove or
/// rename an entry.
pub fn require_sticky(caller: &Caller, dir: &InodeAttr, entry: &InodeAttr) -> FsResult<()> {
    if dir.perm & 0o1000 == 0 || caller.uid == 0 || caller.uid == dir.uid || caller.uid == entry.uid
    {
        Ok(())
    } else {
        Err(FsError::NotPermitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::attr::{FileKind, Timestamp};
    use cairn_common::Ino;

    fn attr(perm: u16, uid: u32, gid: u32, kind: FileKind) -> InodeAttr {
        InodeAttr {
            ino: Ino(2),
            kind,
            perm,
            uid,
            gid,
            size: 0,
            nlink: 1,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
            replication: 1,
            stored: 0,
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn owner_group_other_and_root() {
        let f = attr(0o640, 10, 20, FileKind::File);
        assert!(allowed(&user(10, 99, &[]), &f, READ | WRITE));
        assert!(allowed(&user(11, 20, &[]), &f, READ));
        assert!(!allowed(&user(11, 20, &[]), &f, WRITE));
        assert!(
            allowed(&user(11, 99, &[20]), &f, READ),
            "supplementary group"
        );
        assert!(!allowed(&user(12, 99, &[]), &f, READ));
        assert!(allowed(&Caller::ROOT, &f, READ | WRITE));
        assert!(!allowed(&Caller::ROOT, &f, EXEC), "no x bit at all");
        // The owner class decides alone: an owner without w is refused even if others may.
        let odd = attr(0o077, 10, 20, FileKind::File);
        assert!(!allowed(&user(10, 20, &[]), &odd, READ));
    }

    #[test]
    fn sticky_directories() {
        let tmp = attr(0o1777, 0, 0, FileKind::Dir);
        let mine = attr(0o644, 10, 10, FileKind::File);
        assert!(require_sticky(&user(10, 10, &[]), &tmp, &mine).is_ok());
        assert_eq!(
            require_sticky(&user(11, 11, &[]), &tmp, &mine),
            Err(FsError::NotPermitted)
        );
        assert!(require_sticky(&Caller::ROOT, &tmp, &mine).is_ok());
    }
}
