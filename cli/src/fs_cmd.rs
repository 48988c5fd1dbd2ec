//! `cairn fs …`: file commands in the manner of `hdfs dfs`. Each prints a table or lines for
//! people, or JSON with `--json`; each failure is one line naming the path and the cause,
//! with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use cairn_client::{Client, ClientConfig, Owner};
use cairn_common::attr::{FileKind, InodeAttr};
use cairn_common::proto::{ReadChunks, RenameMode};
use cairn_common::{FsError, Ino};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes read from a local file per write call on `put`.
const PUT_PIECE: usize = 4 << 20;
/// Bytes asked for per read call on `get`: many blocks fetched in parallel.
const GET_PIECE: usize = 32 << 20;
/// Files smaller than this get no progress bar.
const PROGRESS_MIN: u64 = 16 << 20;

#[derive(Args)]
pub struct FsArgs {
    /// Client configuration file (default: $CAIRN_CONFIG, then ./cairn-client.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: FsCommand,
}

#[derive(Subcommand)]
enum FsCommand {
    /// List a directory (or show one file).
    Ls {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Make a directory.
    Mkdir {
        /// Make parents as needed; no error if it exists.
        #[arg(short, long)]
        parents: bool,
        path: String,
    },
    /// Copy a local file (or - for standard input) into the cluster.
    Put {
        /// Replace the target if it exists.
        #[arg(short, long)]
        force: bool,
        local: PathBuf,
        remote: String,
    },
    /// Copy a file out of the cluster (LOCAL - for standard output).
    Get { remote: String, local: PathBuf },
    /// Print a file.
    Cat { path: String },
    /// Remove a file, or a directory tree with -r.
    Rm {
        #[arg(short, long)]
        recursive: bool,
        path: String,
    },
    /// Move or rename.
    Mv { from: String, to: String },
    /// Copy a file within the cluster, by reference: the copy names the blocks the
    /// source's bytes are in, so nothing is read or stored again.
    Cp {
        /// Replace the target if it exists.
        #[arg(short, long)]
        force: bool,
        from: String,
        to: String,
    },
    /// Show a file's attributes and where its blocks are.
    Stat { path: String },
    /// Space used by each entry of a directory (or its total with -s): bytes, and how many
    /// of them are stored (holes left out).
    Du {
        #[arg(short, long)]
        summary: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Cluster capacity and use.
    Df,
    /// List the files in your trash (`--all`: everyone's, root only): when and where from.
    Trash {
        #[arg(long)]
        all: bool,
    },
    /// Put a removed file back where it was (or at --to PATH). ENTRY is its name as
    /// `cairn fs trash` lists it, or its path under /.trash.
    Restore {
        entry: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Set the replication factor of a file, or of a tree with -r.
    Setrep {
        #[arg(short = 'r', long)]
        recursive: bool,
        replication: u8,
        path: String,
    },
}

/// A client from the configuration `config`, or the one found where `cairn dev` leaves it.
pub(crate) async fn connect(config: Option<&Path>) -> anyhow::Result<Client> {
    let path = ClientConfig::locate(config).map_err(|e| anyhow!(e))?;
    let config = ClientConfig::load(&path)?;
    Client::connect(config)
        .await
        .with_context(|| format!("using {}", path.display()))
}

pub async fn run(args: FsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(args.config.as_deref()).await?;
    let json = args.json;
    match args.command {
        FsCommand::Ls { path } => ls(&client, &path, json).await?,
        FsCommand::Mkdir { parents, path } => mkdir(&client, &path, parents).await?,
        FsCommand::Put {
            force,
            local,
            remote,
        } => put(&client, &local, &remote, force, json).await?,
        FsCommand::Get { remote, local } => get(&client, &remote, &local, json).await?,
        FsCommand::Cat { path } => get(&client, &path, Path::new("-"), false).await?,
        FsCommand::Rm { recursive, path } => rm(&client, &path, recursive).await?,
        FsCommand::Mv { from, to } => mv(&client, &from, &to).await?,
        FsCommand::Cp { force, from, to } => cp(&client, &from, &to, force, json).await?,
        FsCommand::Stat { path } => stat(&client, &path, json).await?,
        FsCommand::Du { summary, path } => du(&client, &path, summary, json).await?,
        FsCommand::Df => df(&client, json).await?,
        FsCommand::Trash { all } => crate::trash_cmd::list(&client, all, json).await?,
        FsCommand::Restore { entry, to } => {
            crate::trash_cmd::restore(&client, &entry, to.as_deref()).await?
        }
        FsCommand::Setrep {
            recursive,
            replication,
            path,
        } => setrep(&client, &path, replication, recursive).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// "PATH: cause" for a failed operation on a cluster path.
pub(crate) fn at(path: &str) -> impl FnOnce(FsError) -> anyhow::Error + '_ {
    move |e| anyhow!("{path}: {e}")
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[derive(Serialize)]
struct Entry {
    path: String,
    kind: &'static str,
    size: u64,
    /// Bytes that hold data: holes left out.
    stored: u64,
    mode: String,
    uid: u32,
    gid: u32,
    nlink: u32,
    replication: u8,
    mtime: String,
    ino: u64,
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "char",
        FileKind::BlockDevice => "block",
    }
}

fn entry(path: String, a: &InodeAttr) -> Entry {
    let mtime = UNIX_EPOCH + Duration::new(a.mtime.secs.max(0) as u64, a.mtime.nanos);
    Entry {
        path,
        kind: kind_name(a.kind),
        size: a.size,
        stored: a.stored,
        mode: format!("{:04o}", a.perm),
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        replication: a.replication,
        mtime: humantime::format_rfc3339_seconds(mtime).to_string(),
        ino: a.ino.0,
    }
}

fn mode_string(a: &InodeAttr) -> String {
    let t = match a.kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (a.perm >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn print_entries(entries: &[(String, InodeAttr)], json: bool) -> anyhow::Result<()> {
    if json {
        let list: Vec<Entry> = entries.iter().map(|(p, a)| entry(p.clone(), a)).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for (path, a) in entries {
        let e = entry(path.clone(), a);
        let rep = if a.kind == FileKind::File {
            a.replication.to_string()
        } else {
            "-".into()
        };
        println!(
            "{} {:>3} {:>5} {:>5} {:>12} {} {}",
            mode_string(a),
            rep,
            a.uid,
            a.gid,
            a.size,
            e.mtime,
            path
        );
    }
    Ok(())
}

async fn ls(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    let attr = client.resolve(path).await.map_err(at(path))?;
    let mut entries = Vec::new();
    if attr.kind == FileKind::Dir {
        // Entries removed while the directory was listed come without attributes: ls
        // leaves them out.
        for e in client.readdir_plus(attr.ino).await.map_err(at(path))? {
            if let Some(a) = e.attr {
                let name = String::from_utf8_lossy(&e.name).into_owned();
                entries.push((join(path, &name), a));
            }
        }
    } else {
        entries.push((path.to_string(), attr));
    }
    print_entries(&entries, json)
}

async fn mkdir(client: &Client, path: &str, parents: bool) -> anyhow::Result<()> {
    if !parents {
        let (dir, name) = client.resolve_parent(path).await.map_err(at(path))?;
        client
            .mkdir(dir.ino, name.as_bytes(), 0o755, Owner::current())
            .await
            .map_err(at(path))?;
        return Ok(());
    }
    let mut cur = client.getattr(Ino::ROOT).await.map_err(at(path))?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur = match client.lookup(cur.ino, part.as_bytes()).await {
            Ok(a) if a.kind == FileKind::Dir => a,
            Ok(_) => return Err(at(path)(FsError::NotDir)),
            Err(FsError::NotFound) => match client
                .mkdir(cur.ino, part.as_bytes(), 0o755, Owner::current())
                .await
            {
                Ok(a) => a,
                Err(FsError::Exists) => client
                    .lookup(cur.ino, part.as_bytes())
                    .await
                    .map_err(at(path))?,
                Err(e) => return Err(at(path)(e)),
            },
            Err(e) => return Err(at(path)(e)),
        };
    }
    Ok(())
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if len < PROGRESS_MIN {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

#[derive(Serialize)]
struct Transfer {
    path: String,
    bytes: u64,
    seconds: f64,
}

/// With `--json`, prints what a transfer to or from `path` moved, and how long it took.
fn report_transfer(
    json: bool,
    path: &str,
    bytes: u64,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    if json {
        let t = Transfer {
            path: path.to_string(),
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        };
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}

async fn put(
    client: &Client,
    local: &Path,
    remote: &str,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    // A remote directory receives the file under its local name.
    let remote = match client.resolve(remote).await {
        Ok(a) if a.kind == FileKind::Dir => {
            let name = local
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|_| local != Path::new("-"))
                .ok_or_else(|| anyhow!("{remote} is a directory; name the target file"))?;
            join(remote, name)
        }
        _ => remote.to_string(),
    };
    let mut input: Box<dyn tokio::io::AsyncRead + Unpin> = if local == Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(local)
                .await
                .with_context(|| format!("{}", local.display()))?,
        )
    };
    let total = if local == Path::new("-") {
        0
    } else {
        std::fs::metadata(local)?.len()
    };
    let started = std::time::Instant::now();
    let (dir, name) = client.resolve_parent(&remote).await.map_err(at(&remote))?;
    let (_, mut file) = client
        .create_open(cairn_client::NewFile {
            parent: dir.ino,
            name: name.as_bytes(),
            perm: 0o644,
            exclusive: !force,
            truncate: force,
            owner: Owner::current(),
        })
        .await
        .map_err(at(&remote))?;
    let bar = progress(total, &remote);
    let mut offset = 0u64;
    let mut buf = vec![0u8; PUT_PIECE];
    loop {
        let n = read_full(&mut input, &mut buf)
            .await
            .with_context(|| format!("reading {}", local.display()))?;
        if n == 0 {
            break;
        }
        file.write(offset, &buf[..n]).await.map_err(at(&remote))?;
        offset += n as u64;
        bar.set_position(offset);
    }
    file.close().await.map_err(at(&remote))?;
    bar.finish_and_clear();
    report_transfer(json, &remote, offset, started)
}

/// Reads until `buf` is full or the input ends.
async fn read_full(
    input: &mut (dyn tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = input.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

async fn get(client: &Client, remote: &str, local: &Path, json: bool) -> anyhow::Result<()> {
    let attr = client.resolve(remote).await.map_err(at(remote))?;
    if attr.kind == FileKind::Dir {
        bail!("{remote}: {}", FsError::IsDir);
    }
    let started = std::time::Instant::now();
    let mut file = client.open(attr.ino).await.map_err(at(remote))?;
    let size = file.attr().size;
    let to_stdout = local == Path::new("-");
    let local = if !to_stdout && local.is_dir() {
        let name = remote.rsplit('/').next().unwrap_or(remote);
        local.join(name)
    } else {
        local.to_path_buf()
    };
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        Box::new(
            tokio::fs::File::create(&local)
                .await
                .with_context(|| format!("{}", local.display()))?,
        )
    };
    let bar = if to_stdout {
        ProgressBar::hidden()
    } else {
        progress(size, remote)
    };
    let mut offset = 0u64;
    while offset < size {
        let data = file.read(offset, GET_PIECE).await.map_err(at(remote))?;
        if data.is_empty() {
            break;
        }
        out.write_all(&data)
            .await
            .with_context(|| format!("writing {}", local.display()))?;
        offset += data.len() as u64;
        bar.set_position(offset);
    }
    out.flush().await?;
    bar.finish_and_clear();
    report_transfer(json, remote, offset, started)
}

async fn rm(client: &Client, path: &str, recursive: bool) -> anyhow::Result<()> {
    let (dir, name) = client.resolve_parent(path).await.map_err(at(path))?;
    let attr = client
        .lookup(dir.ino, name.as_bytes())
        .await
        .map_err(at(path))?;
    if attr.kind == FileKind::Dir {
        if !recursive {
            bail!("{path}: is a directory (use -r to remove a tree)");
        }
        remove_tree(client, attr.ino, path).await?;
        client
            .rmdir(dir.ino, name.as_bytes())
            .await
            .map_err(at(path))?;
    } else {
        client
            .unlink(dir.ino, name.as_bytes())
            .await
            .map_err(at(path))?;
    }
    Ok(())
}

/// Removes everything inside directory `dir`, depth first.
async fn remove_tree(client: &Client, dir: Ino, path: &str) -> anyhow::Result<()> {
    for e in client.readdir(dir).await.map_err(at(path))? {
        let child = join(path, &String::from_utf8_lossy(&e.name));
        if e.kind == FileKind::Dir {
            Box::pin(remove_tree(client, e.ino, &child)).await?;
            client.rmdir(dir, &e.name).await.map_err(at(&child))?;
        } else {
            client.unlink(dir, &e.name).await.map_err(at(&child))?;
        }
    }
    Ok(())
}

async fn mv(client: &Client, from: &str, to: &str) -> anyhow::Result<()> {
    let (src_dir, src_name) = client.resolve_parent(from).await.map_err(at(from))?;
    // Moving onto an existing directory moves into it, as mv(1) does.
    let (dst_dir, dst_name) = match client.resolve(to).await {
        Ok(a) if a.kind == FileKind::Dir => (a, src_name.to_string()),
        _ => {
            let (d, n) = client.resolve_parent(to).await.map_err(at(to))?;
            (d, n.to_string())
        }
    };
    client
        .rename(
            src_dir.ino,
            src_name.as_bytes(),
            dst_dir.ino,
            dst_name.as_bytes(),
            RenameMode::Replace,
        )
        .await
        .map_err(|e| anyhow!("{from} -> {to}: {e}"))
}

async fn cp(client: &Client, from: &str, to: &str, force: bool, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let src = client.resolve(from).await.map_err(at(from))?;
    if src.kind != FileKind::File {
        bail!("{from}: not a regular file");
    }
    // Onto an existing directory: into it, under the source's name, as cp(1) does.
    let to = match client.resolve(to).await {
        Ok(a) if a.kind == FileKind::Dir => join(to, from.rsplit('/').next().unwrap_or(from)),
        _ => to.to_string(),
    };
    // Checked before the target is opened: `-f` truncates it.
    if matches!(client.resolve(&to).await, Ok(a) if a.ino == src.ino) {
        bail!("{from} and {to} are the same file");
    }
    let (dir, name) = client.resolve_parent(&to).await.map_err(at(&to))?;
    let (created, file) = client
        .create_open(cairn_client::NewFile {
            parent: dir.ino,
            name: name.as_bytes(),
            perm: src.perm,
            exclusive: !force,
            truncate: force,
            owner: Owner::current(),
        })
        .await
        .map_err(at(&to))?;
    let dst = created.attr.ino;
    let mut copied = 0;
    loop {
        let n = client
            .copy_range(src.ino, copied, dst, copied, u64::MAX)
            .await
            .map_err(|e| anyhow!("{from} -> {to}: {e}"))?
            .len;
        if n == 0 {
            break;
        }
        copied += n;
    }
    file.close().await.map_err(at(&to))?;
    report_transfer(json, &to, copied, started)
}

#[derive(Serialize)]
struct StatOut {
    #[serde(flatten)]
    entry: Entry,
    blocks: Vec<BlockOut>,
}

#[derive(Serialize)]
struct BlockOut {
    offset: u64,
    len: u32,
    block: String,
    replicas: Vec<String>,
}

async fn stat(client: &Client, path: &str, json: bool) -> anyhow::Result<()> {
    let attr = client.resolve(path).await.map_err(at(path))?;
    let mut blocks = Vec::new();
    if attr.kind == FileKind::File {
        let mut first = 0u32;
        while (first as u64) * cairn_common::layout::CHUNK_SIZE < attr.size {
            let map = client
                .namenode(ReadChunks {
                    ino: attr.ino,
                    first,
                    count: 64,
                })
                .await
                .map_err(at(path))?;
            let locations: std::collections::HashMap<_, _> = map.locations.into_iter().collect();
            for (index, slices) in map.chunks {
                for s in slices {
                    blocks.push(BlockOut {
                        offset: index as u64 * cairn_common::layout::CHUNK_SIZE + s.pos as u64,
                        len: s.len,
                        block: s.block.to_hex(),
                        replicas: locations
                            .get(&s.block)
                            .map(|l| l.iter().map(|d| d.addr.to_string()).collect())
                            .unwrap_or_default(),
                    });
                }
            }
            first += 64;
        }
    }
    let out = StatOut {
        entry: entry(path.to_string(), &attr),
        blocks,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let e = &out.entry;
    println!("  path: {}", e.path);
    println!("  kind: {}  inode: {}  links: {}", e.kind, e.ino, e.nlink);
    if attr.kind == FileKind::File {
        println!(
            "  size: {} bytes ({} stored, holes left out)",
            e.size, e.stored
        );
    } else {
        println!("  size: {} bytes", e.size);
    }
    println!(
        "  mode: {} ({})  uid: {}  gid: {}",
        e.mode,
        mode_string(&attr),
        e.uid,
        e.gid
    );
    println!("  modified: {}", e.mtime);
    if attr.kind == FileKind::File {
        println!("  replication: {}", e.replication);
        println!("  slices: {}", out.blocks.len());
        for b in &out.blocks {
            println!(
                "    @{:<12} {:>8} bytes  {}  on {}",
                b.offset,
                b.len,
                &b.block[..16],
                if b.replicas.is_empty() {
                    "NO LIVE REPLICA".to_string()
                } else {
                    b.replicas.join(", ")
                }
            );
        }
    }
    Ok(())
}

#[derive(Serialize, Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    /// The part of `bytes` that holds data: holes left out.
    stored: u64,
    files: u64,
    dirs: u64,
}

async fn usage(client: &Client, attr: &InodeAttr, path: &str) -> anyhow::Result<Usage> {
    let mut total = Usage::default();
    let mut stack = vec![(attr.clone(), path.to_string())];
    while let Some((a, p)) = stack.pop() {
        match a.kind {
            FileKind::Dir => {
                total.dirs += 1;
                for e in client.readdir(a.ino).await.map_err(at(&p))? {
                    let child = join(&p, &String::from_utf8_lossy(&e.name));
                    match client.getattr(e.ino).await {
                        Ok(ca) => stack.push((ca, child)),
                        Err(FsError::NotFound) => {}
                        Err(err) => return Err(at(&child)(err)),
                    }
                }
            }
            _ => {
                total.files += 1;
                total.bytes += a.size;
                total.stored += a.stored;
            }
        }
    }
    Ok(total)
}

async fn du(client: &Client, path: &str, summary: bool, json: bool) -> anyhow::Result<()> {
    let attr = client.resolve(path).await.map_err(at(path))?;
    let mut rows: Vec<(String, Usage)> = Vec::new();
    if summary || attr.kind != FileKind::Dir {
        rows.push((path.to_string(), usage(client, &attr, path).await?));
    } else {
        for e in client.readdir(attr.ino).await.map_err(at(path))? {
            let child = join(path, &String::from_utf8_lossy(&e.name));
            let ca = match client.getattr(e.ino).await {
                Ok(a) => a,
                Err(FsError::NotFound) => continue,
                Err(err) => return Err(at(&child)(err)),
            };
            rows.push((child.clone(), usage(client, &ca, &child).await?));
        }
    }
    if json {
        #[derive(Serialize)]
        struct Row {
            path: String,
            #[serde(flatten)]
            usage: Usage,
        }
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|(path, usage)| Row { path, usage })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:>12}  {:>10}  {:>10}  Path", "Bytes", "Size", "Stored");
    for (p, u) in rows {
        println!(
            "{:>12}  {:>10}  {:>10}  {p}",
            u.bytes,
            bytesize::ByteSize(u.bytes).to_string(),
            bytesize::ByteSize(u.stored).to_string()
        );
    }
    Ok(())
}

async fn df(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client.statfs().await.map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let pct = if s.capacity > 0 {
        s.used as f64 * 100.0 / s.capacity as f64
    } else {
        0.0
    };
    println!(
        "{:>12} {:>12} {:>12} {:>6} {:>10} {:>9}",
        "Size", "Used", "Available", "Use%", "Files", "Datanodes"
    );
    println!(
        "{:>12} {:>12} {:>12} {:>5.1}% {:>10} {:>9}",
        bytesize::ByteSize(s.capacity).to_string(),
        bytesize::ByteSize(s.used).to_string(),
        bytesize::ByteSize(s.available).to_string(),
        pct,
        s.inodes,
        s.live_datanodes
    );
    Ok(())
}

pub(crate) async fn setrep(
    client: &Client,
    path: &str,
    replication: u8,
    recursive: bool,
) -> anyhow::Result<()> {
    if replication == 0 {
        bail!("replication must be at least 1");
    }
    let attr = client.resolve(path).await.map_err(at(path))?;
    let mut stack = vec![(attr, path.to_string())];
    while let Some((a, p)) = stack.pop() {
        client
            .set_replication(a.ino, replication)
            .await
            .map_err(at(&p))?;
        if a.kind == FileKind::Dir && recursive {
            for e in client.readdir(a.ino).await.map_err(at(&p))? {
                let child = join(&p, &String::from_utf8_lossy(&e.name));
                if let Ok(ca) = client.getattr(e.ino).await {
                    if matches!(ca.kind, FileKind::Dir | FileKind::File) {
                        stack.push((ca, child));
                    }
                }
            }
        }
    }
    Ok(())
}
