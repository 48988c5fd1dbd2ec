//! `cairn mount` and `mount.cairn`: mounting in the foreground, in the background, and from
//! an `/etc/fstab` line.
//!
//! fstab: `cairn  /mnt/cairn  cairn  config=/etc/cairn/cairn-client.toml,_netdev  0  0`.
//! mount(8) then runs `mount.cairn cairn /mnt/cairn -o config=…,_netdev,rw`, which is
//! `cairn mount /mnt/cairn --config … --daemon`: it returns once the mount is live.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

/// How long `--daemon` waits for the background mount to come up.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Mounts and serves until `shutdown` or an outside `umount`.
pub async fn run(
    mountpoint: PathBuf,
    config: Option<PathBuf>,
    namenode: Option<SocketAddr>,
    opts: cairn_fuse::MountOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before anything else: a taken mount point is refused without waiting on the network.
    cairn_fuse::prepare_mountpoint(&mountpoint)?;
    let path = cairn_client::ClientConfig::locate(config.as_deref()).map_err(anyhow::Error::msg)?;
    let mut config = cairn_client::ClientConfig::load(&path)?;
    if let Some(nn) = namenode {
        config.namenode = nn;
    }
    config.wsync |= opts.wsync;
    let client = cairn_client::Client::connect(config)
        .await
        .with_context(|| format!("using {}", path.display()))?;
    // Fail now, with the cause, rather than mount something that cannot answer.
    client
        .statfs()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the namenode: {e}"))?;
    cairn_fuse::admitted(&client, &opts).await?;
    let mounted = cairn_fuse::mount(
        client,
        tokio::runtime::Handle::current(),
        &mountpoint,
        &opts,
    )
    .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    eprintln!(
        "Cairn mounted on {}; Ctrl-C or `umount {}` unmounts",
        mountpoint.display(),
        mountpoint.display()
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if mounted.is_ended() {
                    return Ok(());
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await?
        .with_context(|| format!("unmounting {}", mountpoint.display()))
}

/// The largest kernel read-ahead `-o read_ahead_kb=` takes: 1 GiB.
const MAX_READ_AHEAD_KB: u32 = 1 << 20;

/// The mount's options from `-o` lists, as mount(8) and fstab write them.
pub fn mount_options(
    options: &[String],
    threads: usize,
) -> anyhow::Result<cairn_fuse::MountOptions> {
    let mut opts = cairn_fuse::MountOptions {
        threads,
        ..cairn_fuse::MountOptions::default()
    };
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt {
            "noatime" => opts.atime = false,
            "relatime" | "atime" | "strictatime" => opts.atime = true,
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "wsync" => opts.wsync = true,
            "nowsync" => opts.wsync = false,
            "suid" => opts.suid = true,
            "nosuid" => opts.suid = false,
            "dev" => opts.dev = true,
            "nodev" => opts.dev = false,
            "exec" => opts.exec = true,
            "noexec" => opts.exec = false,
            kb if kb.starts_with("read_ahead_kb=") => {
                let v = &kb["read_ahead_kb=".len()..];
                opts.read_ahead_kb = v.parse().ok().filter(|k| *k <= MAX_READ_AHEAD_KB).with_context(|| {
                    format!("read_ahead_kb must be a number of KiB from 0 to {MAX_READ_AHEAD_KB}, not {v:?}")
                })?;
            }
            // mount(8)'s own, or how Cairn always mounts.
            ""
            | "defaults"
            | "_netdev"
            | "nofail"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "async"
            | "allow_other"
            | "default_permissions" => {}
            other => bail!(
                "unknown mount option {other:?} (known: noatime, relatime, ro, rw, wsync, nowsync, \
                 suid, nosuid, dev, nodev, exec, noexec, read_ahead_kb=N and the generic fstab \
                 options)"
            ),
        }
    }
    Ok(opts)
}

/// A mount serving from the background, as [`daemonize`] started it.
pub struct Daemon {
    pub pid: u32,
    pub log: PathBuf,
}

/// Starts `cairn ARGS` (this mount command) without `--daemon` in a new session, detached
/// from the terminal, and returns once `mountpoint` is mounted (or the child has failed).
pub fn daemonize(
    args: &[OsString],
    mountpoint: &Path,
    log: Option<&Path>,
) -> anyhow::Result<Daemon> {
    // Here rather than in the child, so that a refusal reaches the terminal, and so that
    // a mount already there is not taken for the child's.
    cairn_fuse::prepare_mountpoint(mountpoint)?;
    let exe = std::env::current_exe().context("finding the cairn executable")?;
    let args: Vec<&OsString> = args.iter().filter(|a| *a != "--daemon").collect();
    let log_path = match log {
        Some(l) => l.to_path_buf(),
        None => std::env::temp_dir().join(format!(
            "cairn-mount-{}.log",
            mountpoint
                .to_string_lossy()
                .trim_matches('/')
                .replace('/', "-")
        )),
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening log {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // A new session: the mount outlives the shell or mount(8) that started it.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().context("starting the background mount")?;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if cairn_fuse::cairn_mounts_on(mountpoint)? > 0 {
            return Ok(Daemon {
                pid: child.id(),
                log: log_path,
            });
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the background mount exited ({status}); its log is {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "not mounted after {} s; its log is {}",
                DAEMON_START_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What mount(8) asked of a helper.
#[derive(Debug, PartialEq)]
pub enum HelperCall {
    /// A mount: the equivalent `cairn mount` arguments.
    Mount(Vec<OsString>),
    /// `mount -o remount,ro|rw DIR` of a live mount.
    Remount { dir: PathBuf, read_only: bool },
}

/// When called by mount(8), what it asks; `None` for an ordinary `cairn` command. mount(8)
/// runs `mount.cairn SPEC DIR -o OPTIONS` for an fstab line, and for a remount of a mount
/// it finds in the mount table (type `fuse`, source `cairn`) runs `mount.fuse`, which runs
/// `cairn DIR -o OPTIONS`.
pub fn helper_args(args: &[OsString]) -> Option<anyhow::Result<HelperCall>> {
    let name = Path::new(args.first()?)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let by_mount_fuse = name == "cairn"
        && args
            .get(1)
            .is_some_and(|a| a.to_string_lossy().starts_with('/'));
    if name != "mount.cairn" && !by_mount_fuse {
        return None;
    }
    Some(translate_helper(&args[1..], !by_mount_fuse))
}

/// Remounts the Cairn mount on `dir` read-only or read-write, keeping its other flags
/// (the kernel then refuses every change with EROFS; the mount records no access times).
pub fn remount(dir: &Path, read_only: bool) -> anyhow::Result<()> {
    let options = cairn_fuse::mount_flags_of(dir)?
        .with_context(|| format!("{} is not a Cairn mount", dir.display()))?;
    let mut flags = libc::MS_REMOUNT;
    for (name, flag) in [
        ("nosuid", libc::MS_NOSUID),
        ("nodev", libc::MS_NODEV),
        ("noexec", libc::MS_NOEXEC),
        ("noatime", libc::MS_NOATIME),
        ("nodiratime", libc::MS_NODIRATIME),
        ("relatime", libc::MS_RELATIME),
        ("sync", libc::MS_SYNCHRONOUS),
    ] {
        if options.iter().any(|o| o == name) {
            flags |= flag;
        }
    }
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("a mount point with a NUL byte")?;
    // SAFETY: `c_dir` is NUL-terminated; the other pointers may be null for a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c_dir.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "remounting {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `with_spec`: the arguments are `SPEC DIR` (mount.cairn), not `DIR` alone (mount.fuse).
fn translate_helper(args: &[OsString], with_spec: bool) -> anyhow::Result<HelperCall> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("-o") => options.push(
                it.next()
                    .context("-o needs options")?
                    .to_string_lossy()
                    .into_owned(),
            ),
            // mount(8) may pass these; they mean nothing here.
            Some("-n") | Some("-s") | Some("-f") | Some("-v") => {}
            _ => positional.push(a.clone()),
        }
    }
    let dir = match (positional.as_slice(), with_spec) {
        ([_, dir], true) | ([dir], false) => dir,
        _ => bail!("usage: mount.cairn SPEC DIR [-o config=FILE,namenode=HOST:PORT]"),
    };
    let flags: Vec<&str> = options.iter().flat_map(|o| o.split(',')).collect();
    if flags.contains(&"remount") {
        return Ok(HelperCall::Remount {
            dir: PathBuf::from(dir),
            // The last of ro and rw wins, as in mount(8).
            read_only: flags.iter().rev().find(|o| **o == "ro" || **o == "rw") == Some(&"ro"),
        });
    }
    let mut out: Vec<OsString> = vec![
        "cairn".into(),
        "mount".into(),
        dir.clone(),
        "--daemon".into(),
    ];
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt.split_once('=') {
            Some(("config", v)) => out.extend(["--config".into(), v.into()]),
            Some(("namenode", v)) => out.extend(["--namenode".into(), v.into()]),
            Some(("log", v)) => out.extend(["--log".into(), v.into()]),
            // The rest (noatime, ro, the generic ones) are the mount's to judge.
            _ => out.extend(["-o".into(), opt.into()]),
        }
    }
    Ok(HelperCall::Mount(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_arguments_become_a_cairn_mount() {
        let args: Vec<OsString> = [
            "mount.cairn",
            "cairn",
            "/mnt/c",
            "-o",
            "rw,config=/etc/c.toml,_netdev",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = helper_args(&args).unwrap().unwrap();
        assert_eq!(
            out,
            HelperCall::Mount(
                [
                    "cairn",
                    "mount",
                    "/mnt/c",
                    "--daemon",
                    "-o",
                    "rw",
                    "--config",
                    "/etc/c.toml",
                    "-o",
                    "_netdev"
                ]
                .iter()
                .map(OsString::from)
                .collect::<Vec<_>>()
            )
        );
        assert!(helper_args(&[OsString::from("cairn")]).is_none());
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(helper_args(&args(&["cairn", "fs", "ls"])).is_none());
        // A remount, as mount(8) asks it through mount.fuse: `cairn DIR -o OPTIONS`.
        assert_eq!(
            helper_args(&args(&["cairn", "/mnt/c", "-o", "rw,remount,ro"]))
                .unwrap()
                .unwrap(),
            HelperCall::Remount {
                dir: "/mnt/c".into(),
                read_only: true
            }
        );
        assert_eq!(
            helper_args(&args(&[
                "mount.cairn",
                "cairn",
                "/mnt/c",
                "-o",
                "remount,ro,rw"
            ]))
            .unwrap()
            .unwrap(),
            HelperCall::Remount {
                dir: "/mnt/c".into(),
                read_only: false
            }
        );
        let bad: Vec<OsString> = ["mount.cairn", "only-one"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(helper_args(&bad).unwrap().is_err());
    }

    #[test]
    fn mount_options_are_understood_or_refused() {
        let opts = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            mount_options(&o, 4)
        };
        let plain = opts(&[]).unwrap();
        assert!(plain.atime && !plain.read_only);
        // Safe by default: no setuid programs, no devices.
        assert!(!plain.suid && !plain.dev && plain.exec);
        let set = opts(&["noatime,ro", "_netdev,defaults"]).unwrap();
        assert!(!set.atime && set.read_only && !set.suid && !set.dev);
        let trusted = opts(&["suid,dev", "noexec"]).unwrap();
        assert!(trusted.suid && trusted.dev && !trusted.exec);
        assert!(!opts(&["suid,nosuid"]).unwrap().suid, "the last one counts");
        let err = opts(&["noatime,bogus"]).unwrap_err().to_string();
        assert!(err.contains("\"bogus\""), "{err}");
        assert_eq!(plain.read_ahead_kb, 4096, "a block's worth by default");
        assert_eq!(opts(&["read_ahead_kb=0"]).unwrap().read_ahead_kb, 0);
        assert_eq!(
            opts(&["ro,read_ahead_kb=16384"]).unwrap().read_ahead_kb,
            16384
        );
        for bad in [
            "read_ahead_kb=",
            "read_ahead_kb=-1",
            "read_ahead_kb=4M",
            "read_ahead_kb=9999999",
        ] {
            let err = opts(&[bad]).unwrap_err().to_string();
            assert!(err.contains("read_ahead_kb must be"), "{bad}: {err}");
        }
    }
}
