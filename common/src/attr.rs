//! File attributes as the namenode stores them and every client sees them.

use serde::{Deserialize, Serialize};

use crate::ids::Ino;

/// Longest name of one directory entry, in bytes (as on Linux).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes.
pub const SYMLINK_MAX: usize = 4095;
/// Longest extended attribute name and value.
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// A point in time, nanoseconds resolution, as `struct timespec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// How stale an access time may grow before a read refreshes it anyway (relatime).
const ATIME_REFRESH_SECS: i64 = 24 * 3600;

/// The latest and earliest second a stored timestamp may name: about ±34,000 years, far
/// inside what any `SystemTime` or `timespec` holds.
pub const TIMESTAMP_SECS_MAX: i64 = 1 << 40;

impl Timestamp {
    /// `EINVAL` for a timestamp no `struct timespec` means (nanoseconds of a second at
    /// 10^9 or more) or past [`TIMESTAMP_SECS_MAX`] either way: refused where it comes in,
    /// never stored for another mount to trip on.
    pub fn check(&self) -> Result<(), crate::FsError> {
        if self.nanos >= 1_000_000_000 || self.secs.unsigned_abs() > TIMESTAMP_SECS_MAX as u64 {
            return Err(crate::FsError::invalid(format!(
                "timestamp {}.{:09} is out of range",
                self.secs, self.nanos
            )));
        }
        Ok(())
    }

    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeAttr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Device number of character and block devices.
    pub rdev: u32,
    /// Replicas each block of this file should have; directories pass theirs to new children.
    pub replication: u8,
    /// Bytes of a file that hold data, holes left out (`st_blocks` is this in 512-byte
    /// units). A copy by reference counts in full, as a reflinked copy does on a local disk.
    pub stored: u64,
}

impl InodeAttr {
    /// Should a read at `now` record itself in the access time? As Linux's relatime: when
    /// the access time is not after the last change, or is a day old.
    pub fn atime_due(&self, now: Timestamp) -> bool {
        self.atime <= self.mtime
            || self.atime <= self.ctime
            || now.secs - self.atime.secs >= ATIME_REFRESH_SECS
    }
}

impl InodeAttr {
    /// `st_mode`: kind and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm as u32
    }
}

/// How `setattr` should set a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

impl TimeSet {
    pub fn check(&self) -> Result<(), crate::FsError> {
        match self {
            TimeSet::Now => Ok(()),
            TimeSet::At(t) => t.check(),
        }
    }
}

/// The changes of one `setattr`; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

impl SetAttr {
    /// Refuses times out of range (see [`Timestamp::check`]).
    pub fn check(&self) -> Result<(), crate::FsError> {
        self.atime
            .iter()
            .chain(&self.mtime)
            .try_for_each(TimeSet::check)
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
    /// The entry's attributes, when the listing asked for them (`ls -l` in one round trip).
    pub attr: Option<InodeAttr>,
}

/// Who is asking: the namenode checks permissions with these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// May this caller do `want` (a mask of 4 read, 2 write, 1 execute) to `attr`, as
    /// POSIX mode bits say? Root may do anything but execute what nobody may execute.
    pub fn may(&self, attr: &InodeAttr, want: u16) -> bool {
        if self.uid == 0 {
            return want & 1 == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
        }
        let shift = if self.uid == attr.uid {
            6
        } else if self.in_group(attr.gid) {
            3
        } else {
            0
        };
        (attr.perm >> shift) & 7 & want == want
    }
}

/// Checks a directory entry name: not empty, not `.` or `..`, no `/` or NUL, ≤ 255 bytes.
pub fn check_name(name: &[u8]) -> Result<(), crate::FsError> {
    if name.len() > NAME_MAX {
        return Err(crate::FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(crate::FsError::invalid(format!(
            "bad file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}
