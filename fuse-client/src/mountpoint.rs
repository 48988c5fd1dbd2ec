//! The directory a mount goes on. Linux lets mounts stack, so a second `cairn mount` (or a
//! `mount -a` run twice) would hide the first; and a mount whose process died stays in the
//! mount table, answering ENOTCONN ("Transport endpoint is not connected") to everyone
//! until it is unmounted. So, as JuiceFS's mount does: a live Cairn mount there refuses the
//! new one, a dead one is detached first.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

/// Readies `mountpoint` for a new Cairn mount: an error if a live Cairn mount is on it or
/// it is not a directory; a Cairn mount whose process has ended is detached first.
pub fn prepare_mountpoint(mountpoint: &Path) -> io::Result<()> {
    let shown = mountpoint.display();
    // Stacked dead mounts come off one at a time; a bound keeps a mount that will not go
    // from looping forever.
    for _ in 0..8 {
        if cairn_mounts_on(mountpoint)? == 0 {
            return match std::fs::metadata(mountpoint) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{shown} is not a directory"),
                )),
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{shown} holds a FUSE mount of another file system whose process has \
                         ended; unmount it first (`umount -l {shown}`)"
                    ),
                )),
                Err(e) => Err(io::Error::new(e.kind(), format!("{shown}: {e}"))),
            };
        }
        if answers(mountpoint) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("Cairn is already mounted on {shown}; unmount it first (`umount {shown}`)"),
            ));
        }
        warn!(
            mountpoint = %shown,
            "a Cairn mount whose process has ended is still on the mount point; unmounting it"
        );
        detach(mountpoint)?;
    }
    Err(io::Error::other(format!(
        "{shown}: dead mounts keep reappearing; unmount them by hand (`umount -l {shown}`)"
    )))
}

/// Is a process behind the mount on `mountpoint`? The kernel answers ENOTCONN at once for
/// a mount whose process has ended. `statfs` because the kernel caches no answer to it
/// (an attribute could still be cached); a live mount whose namenode is down says ENOTCONN
/// too, but only after its retries, and one that does not answer (stopped, swapped out)
/// counts as live: it may come back.
fn answers(mountpoint: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return true;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread, so that a mount that never answers cannot hang this one.
    std::thread::spawn(move || {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c_path` is NUL-terminated and `st` is a valid out-pointer.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
        let errno = match rc {
            0 => 0,
            _ => io::Error::last_os_error().raw_os_error().unwrap_or(0),
        };
        let _ = tx.send(errno);
    });
    !matches!(rx.recv_timeout(DEAD_ANSWER_WITHIN), Ok(libc::ENOTCONN))
}

/// How soon a dead mount's ENOTCONN comes: the kernel answers it without asking anyone.
const DEAD_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How many Cairn mounts the mount table has on `mountpoint` (stacked ones count each).
pub fn cairn_mounts_on(mountpoint: &Path) -> io::Result<usize> {
    Ok(cairn_mounts(mountpoint)?.len())
}

/// The options of the Cairn mount on `mountpoint` (the topmost, if they are stacked) as the
/// mount table shows them (`rw`/`ro`, `nosuid`, `relatime`, …); `None` if there is none.
pub fn mount_flags_of(mountpoint: &Path) -> io::Result<Option<Vec<String>>> {
    Ok(cairn_mounts(mountpoint)?
        .pop()
        .map(|options| options.split(',').map(str::to_string).collect()))
}

/// The option fields of the mount table's Cairn mounts on `mountpoint`, oldest first.
fn cairn_mounts(mountpoint: &Path) -> io::Result<Vec<String>> {
    let target = absolute(mountpoint)?;
    let target = target.to_string_lossy();
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, point, fstype, options) =
                (fields.next(), fields.next(), fields.next(), fields.next());
            (source == Some(FS_NAME)
                && fstype.is_some_and(|t| t.starts_with("fuse"))
                && point.map(unescape_mount_path).as_deref() == Some(target.as_ref()))
            .then(|| options.unwrap_or_default().to_string())
        })
        .collect())
}

/// Sets the kernel's read-ahead for the Cairn mount on `mountpoint` to `kib` KiB. A FUSE
/// mount starts with 128 KiB, which splits a sequential reader's stream into 128 KiB
/// requests, each a round of wake-ups in the kernel and the mount; the setting lives in
/// the mount's backing device in sysfs, which only root may write. To be called once the
/// mount has answered a request: its start (FUSE's `INIT`) lowers the setting to what the
/// kernel offered.
pub fn set_read_ahead(mountpoint: &Path, kib: u32) -> io::Result<()> {
    let target = absolute(mountpoint)?;
    let target = target.to_string_lossy();
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    // `36 35 0:52 / /mnt/point rw,nosuid - fuse.cairn cairn rw,...`: the device is the
    // third field, the mount point the fifth; the source follows the `-`.
    let device = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let ours = fields.get(dash + 2) == Some(&FS_NAME)
                && fields.get(dash + 1).is_some_and(|t| t.starts_with("fuse"))
                && fields.get(4).map(|p| unescape_mount_path(p)).as_deref()
                    == Some(target.as_ref());
            ours.then(|| fields[2].to_string())
        })
        .next_back()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no Cairn mount on {target} in the mount table"),
            )
        })?;
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    std::fs::write(&knob, kib.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{knob}: {e}")))
}

/// The name mounts of Cairn carry in the mount table's source field.
pub(crate) const FS_NAME: &str = "cairn";

/// `path` made absolute with its directories resolved, but not its last component: a dead
/// mount there cannot be looked into (ENOTCONN), yet it is the name the mount table holds.
pub(crate) fn absolute(path: &Path) -> io::Result<PathBuf> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(parent.canonicalize()?.join(name))
        }
        // `/`, or a name ending in `..`: nothing below it can be a dead mount of ours.
        _ => path.canonicalize(),
    }
}

/// /proc/mounts writes spaces and a few other bytes as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Lazily unmounts the mount on `mountpoint`: root directly, others through fusermount.
fn detach(mountpoint: &Path) -> io::Result<()> {
    let c_path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount point has a NUL byte"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let direct = io::Error::last_os_error();
    for helper in ["fusermount3", "fusermount"] {
        let status = std::process::Command::new(helper)
            .args(["-u", "-z"])
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Ok(());
        }
    }
    Err(io::Error::new(
        direct.kind(),
        format!(
            "a Cairn mount whose process has ended is on {} and cannot be unmounted ({direct}); \
             unmount it by hand (`umount -l {}`)",
            mountpoint.display(),
            mountpoint.display()
        ),
    ))
}
