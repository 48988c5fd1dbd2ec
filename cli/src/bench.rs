//! `cairn bench`: the figures in docs/BENCHMARKS.md, measured on a cluster started in this
//! process (so CPU time counts every daemon and the client together).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{Client, Owner};
use cairn_common::proto::RenameMode;
use cairn_common::{BlockId, Ino};
use cairn_namenode::engine::MetaEngine;
use cairn_namenode::ops::MetaOpKind;
use clap::Subcommand;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::devcluster::{DevCluster, DevOptions};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Put and get one large file through the client library (3 datanodes, R = 3).
    Data {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Bytes per write call, in KiB.
        #[arg(long, default_value_t = 4096)]
        write_kib: usize,
        /// Bytes per read call, in MiB.
        #[arg(long, default_value_t = 32)]
        read_mib: usize,
        /// Datanodes do not fsync blocks (shows what durability costs).
        #[arg(long)]
        no_sync: bool,
    },
    /// Namespace operations through the RPC from concurrent clients.
    Meta {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Files each client creates (and then stats, renames, removes).
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// Namenodes: 1, or a group of 3 or 5 (every change through a majority).
        #[arg(long, default_value_t = 1)]
        namenodes: usize,
    },
    /// Kill one of 4 datanodes holding a file at R = 3; time until every block has 3 live
    /// replicas again (detection included), and the copy rate.
    Repair {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Datanode heartbeat interval, in ms (the namenode's default).
        #[arg(long, default_value_t = 3000)]
        heartbeat_ms: u64,
        /// Silence after which a datanode is dead, in ms (the namenode's default).
        #[arg(long, default_value_t = 30_000)]
        dead_timeout_ms: u64,
    },
    /// Three datanodes hold a file at R = 3 and an empty fourth joins: time until the
    /// balancer has every datanode within the threshold, and the bytes it moved.
    Balance {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Each datanode's capacity in MiB (usage is a share of it).
        #[arg(long, default_value_t = 2048)]
        capacity_mib: u64,
        /// The balancer's threshold, in percentage points.
        #[arg(long, default_value_t = 10.0)]
        threshold: f64,
    },
    /// One datanode's scrubber re-hashing what it holds: the rate of a full pass.
    Scrub {
        /// Data on the datanode, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// The scrubber's limit in bytes per second (default: the datanode's default);
        /// 0 for full speed.
        #[arg(long)]
        bytes_per_sec: Option<u64>,
    },
    /// The namenode's metadata engine alone: durable creates, no RPC.
    Engine {
        #[arg(long, default_value_t = 200_000)]
        creates: usize,
        /// Concurrent submitters (what group commit batches).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Sync the log within this many milliseconds, as the namenode's
        /// `metadata_sync_window_ms` does, instead of before each answer.
        #[arg(long)]
        window_ms: Option<u64>,
    },
    /// Block access tokens: what signing one (the namenode, per block of a map it hands
    /// out) and checking one (a datanode, per block request) costs.
    Tokens {
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
    },
    /// The trash at scale, in the metadata engine alone: files made and removed into the
    /// trash, then one pass of the emptier's read of it, a listing page by page, and the
    /// emptier's removal of them all.
    Trash {
        #[arg(long, default_value_t = 1_000_000)]
        files: usize,
        /// Concurrent submitters filling the trash.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
}

#[derive(Serialize)]
struct Figure {
    what: String,
    value: f64,
    unit: &'static str,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub async fn run(command: BenchCommand, dir: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-bench")
        .tempdir_in(dir.unwrap_or_else(std::env::temp_dir))?;
    let figures = match command {
        BenchCommand::Data {
            size_mib,
            write_kib,
            read_mib,
            no_sync,
        } => {
            data(
                tmp.path(),
                size_mib,
                write_kib << 10,
                read_mib << 20,
                !no_sync,
            )
            .await?
        }
        BenchCommand::Meta {
            clients,
            files,
            namenodes,
        } => meta(tmp.path(), clients, files, namenodes).await?,
        BenchCommand::Scrub {
            size_mib,
            bytes_per_sec,
        } => scrub(tmp.path(), size_mib, bytes_per_sec).await?,
        BenchCommand::Repair {
            size_mib,
            heartbeat_ms,
            dead_timeout_ms,
        } => repair(tmp.path(), size_mib, heartbeat_ms, dead_timeout_ms).await?,
        BenchCommand::Engine {
            creates,
            concurrency,
            window_ms,
        } => {
            use cairn_namenode::walsync::Durability;
            let durability = match window_ms {
                Some(ms) => Durability::Window(Duration::from_millis(ms)),
                None => Durability::Always,
            };
            engine(tmp.path(), creates, concurrency, durability).await?
        }
        BenchCommand::Trash { files, concurrency } => trash(tmp.path(), files, concurrency).await?,
        BenchCommand::Tokens { count } => tokens(count),
        BenchCommand::Balance {
            size_mib,
            capacity_mib,
            threshold,
        } => balance(tmp.path(), size_mib, capacity_mib, threshold).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        for f in figures {
            println!("{:<44} {:>12.1} {}", f.what, f.value, f.unit);
        }
    }
    Ok(())
}

/// A scrub limit no disk reaches (and that a TOML integer can hold).
const FULL_SPEED: u64 = 1 << 50;

async fn scrub(
    dir: &std::path::Path,
    size_mib: u64,
    bytes_per_sec: Option<u64>,
) -> anyhow::Result<Vec<Figure>> {
    let rate = match bytes_per_sec {
        Some(0) => FULL_SPEED,
        Some(r) => r,
        None => cairn_datanode::config::DEFAULT_SCRUB_BYTES_PER_SEC,
    };
    let mut opts = DevOptions::new(dir, 1);
    opts.replication = 1;
    opts.min_replicas = 1;
    opts.heartbeat_interval_ms = 500;
    // Passes start at most once a day: the one after the restart below is measured.
    opts.scrub = Some((rate, 86_400));
    let mut cluster = DevCluster::start(opts).await?;
    let client = cluster.client().await?;
    eprintln!("put {size_mib} MiB on one datanode…");
    write_random(&client, size_mib, 13).await?;
    // Restarted with no scrub state (as if it had never scrubbed), the datanode starts a
    // pass over everything it holds; from the disk, not the page cache, when this may drop
    // it (root).
    cluster.stop_datanode(0).await?;
    let state = cluster.datanodes[0].config.data_dir.join("scrub-state");
    if state.exists() {
        std::fs::remove_file(&state)?;
    }
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    cluster.start_datanode(0).await?;
    eprintln!("scrubbing…");
    let progress = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(nodes) = client.datanodes().await else {
            continue;
        };
        // The namenode may still show the datanode's progress from before the restart (an
        // empty pass): wait for the pass over the data.
        if let Some(p) = nodes
            .first()
            .map(|d| d.scrub)
            .filter(|p| p.passes > 0 && p.last_pass_bytes > 0)
        {
            break p;
        }
    };
    cluster.stop().await?;
    let limit = if rate == FULL_SPEED {
        format!("full speed, {} cache", if cold { "cold" } else { "warm" })
    } else {
        format!("limit {} MiB/s", rate >> 20)
    };
    Ok(vec![Figure {
        what: format!("scrub pass over {size_mib} MiB, {limit}"),
        value: progress.last_pass_bytes as f64 / (1 << 20) as f64 / progress.last_pass_secs,
        unit: "MiB/s",
    }])
}

/// Writes `size_mib` MiB of seeded random bytes to a new file `/bench`.
async fn write_random(client: &Client, size_mib: u64, seed: u64) -> anyhow::Result<Ino> {
    let created = client
        .create(Ino::ROOT, b"bench", 0o644, true, false, Owner::current())
        .await?;
    let mut f = client.open(created.attr.ino).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut piece = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    while offset < size_mib << 20 {
        rng.fill_bytes(&mut piece);
        f.write(offset, &piece).await?;
        offset += piece.len() as u64;
    }
    f.close().await?;
    Ok(created.attr.ino)
}

async fn repair(
    dir: &std::path::Path,
    size_mib: u64,
    heartbeat_ms: u64,
    dead_timeout_ms: u64,
) -> anyhow::Result<Vec<Figure>> {
    let mut opts = DevOptions::new(dir, 4);
    opts.heartbeat_interval_ms = heartbeat_ms;
    opts.dead_timeout_ms = dead_timeout_ms;
    let mut cluster = DevCluster::start(opts).await?;
    let client = cluster.client().await?;
    eprintln!("put {size_mib} MiB of random data at R=3 on 4 datanodes…");
    write_random(&client, size_mib, 11).await?;

    // The datanode holding the most blocks goes.
    let statuses = client.datanodes().await?;
    let victim = statuses
        .iter()
        .max_by_key(|s| s.blocks)
        .context("no datanodes")?;
    let index = victim
        .name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .context("a dev datanode name")?
        - 1;
    let held = victim.blocks;
    eprintln!("stopping {} ({held} blocks)…", victim.name);
    let status = || async {
        client
            .namenode(cairn_common::proto::GetRepairStatus)
            .await
            .map_err(anyhow::Error::from)
    };
    let before = status().await?.bytes_copied;
    let t0 = Instant::now();
    cluster.stop_datanode(index).await?;
    let detected = loop {
        let s = status().await?;
        if s.under_replicated + s.missing > 0 {
            break t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "declared dead after {:.1} s; repairing…",
        detected.as_secs_f64()
    );
    let (healed, copied) = loop {
        let s = status().await?;
        if s.under_replicated + s.missing == 0 && s.copies_in_flight == 0 {
            break (t0.elapsed(), s.bytes_copied - before);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.stop().await?;
    let repair_s = (healed - detected).as_secs_f64();
    let mib = copied as f64 / (1u64 << 20) as f64;
    Ok(vec![
        Figure {
            what: format!("detection (dead timeout {dead_timeout_ms} ms)"),
            value: detected.as_secs_f64(),
            unit: "s",
        },
        Figure {
            what: format!("re-replication of {held} blocks ({mib:.0} MiB)"),
            value: repair_s,
            unit: "s",
        },
        Figure {
            what: "kill to full replication".into(),
            value: healed.as_secs_f64(),
            unit: "s",
        },
        Figure {
            what: "repair throughput".into(),
            value: mib / repair_s,
            unit: "MiB/s",
        },
    ])
}

async fn balance(
    dir: &std::path::Path,
    size_mib: u64,
    capacity_mib: u64,
    threshold_pct: f64,
) -> anyhow::Result<Vec<Figure>> {
    use cairn_common::proto::{Balance, BalanceAction, BalancerState};
    let mut opts = DevOptions::new(dir, 3);
    opts.datanode_capacity = Some(capacity_mib << 20);
    let mut cluster = DevCluster::start(opts).await?;
    let client = cluster.client().await?;
    eprintln!("put {size_mib} MiB of random data at R=3 on 3 datanodes of {capacity_mib} MiB…");
    write_random(&client, size_mib, 12).await?;
    cluster.add_datanode().await?;
    cluster.wait_for_datanodes(4).await?;
    // Its first heartbeat carries its usage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = &client;
    let ask = |action| async move {
        client
            .namenode(Balance { action })
            .await
            .map_err(anyhow::Error::from)
    };
    eprintln!("an empty datanode joined; balancing to within {threshold_pct}%…");
    let t0 = Instant::now();
    let first = ask(BalanceAction::Start { threshold_pct }).await?;
    let status = loop {
        let s = ask(BalanceAction::Get).await?;
        match s.state {
            BalancerState::Balanced => break s,
            BalancerState::Running => {}
            other => anyhow::bail!("the balancer ended {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = t0.elapsed().as_secs_f64();
    cluster.stop().await?;
    let mib = status.bytes_moved as f64 / (1u64 << 20) as f64;
    let spread = status
        .nodes
        .iter()
        .map(|n| (n.used_pct - status.average_pct).abs())
        .fold(0.0, f64::max);
    Ok(vec![
        Figure {
            what: format!("to move at the start (threshold {threshold_pct}%)"),
            value: first.bytes_to_move as f64 / (1u64 << 20) as f64,
            unit: "MiB",
        },
        Figure {
            what: format!("join to balanced ({} replicas moved)", status.moves_done),
            value: took,
            unit: "s",
        },
        Figure {
            what: "moved".into(),
            value: mib,
            unit: "MiB",
        },
        Figure {
            what: "balancer throughput".into(),
            value: mib / took,
            unit: "MiB/s",
        },
        Figure {
            what: "largest distance from the average after".into(),
            value: spread,
            unit: "points",
        },
    ])
}

async fn data(
    dir: &std::path::Path,
    size_mib: u64,
    write_piece: usize,
    read_piece: usize,
    sync: bool,
) -> anyhow::Result<Vec<Figure>> {
    let size = (size_mib << 20) as usize;
    eprintln!("generating {size_mib} MiB of random data…");
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    let want = blake3::hash(&data);

    let cluster = DevCluster::start(DevOptions::new(dir, 3)).await?;
    let mut config = cairn_client::ClientConfig::load(&cluster.client_config_path)?;
    config.sync_blocks = sync;
    let client = Client::connect(config.clone()).await?;

    eprintln!("put…");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let created = client
        .create(Ino::ROOT, b"bench", 0o644, true, false, Owner::current())
        .await?;
    let mut f = client.open(created.attr.ino).await?;
    for (i, piece) in data.chunks(write_piece).enumerate() {
        f.write((i * write_piece) as u64, piece).await?;
    }
    f.close().await?;
    let (put_s, put_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);

    eprintln!("get…");
    // A new client: its block cache is cold, every byte comes from the datanodes.
    let reader = Client::connect(config).await?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut f = reader.open(created.attr.ino).await?;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < size as u64 {
        let part = f.read(offset, read_piece).await?;
        anyhow::ensure!(!part.is_empty(), "short read at {offset}");
        hasher.update(&part);
        offset += part.len() as u64;
    }
    let (get_s, get_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    anyhow::ensure!(hasher.finalize() == want, "read back different bytes");
    cluster.stop().await?;

    let gib = size as f64 / (1u64 << 30) as f64;
    let mib = size as f64 / (1u64 << 20) as f64;
    Ok(vec![
        Figure {
            what: format!("put {size_mib} MiB, R=3, sync={sync}"),
            value: mib / put_s,
            unit: "MiB/s",
        },
        Figure {
            what: "put CPU (all daemons + client)".into(),
            value: put_cpu / gib,
            unit: "CPU s/GiB",
        },
        Figure {
            what: format!("get {size_mib} MiB, cold cache"),
            value: mib / get_s,
            unit: "MiB/s",
        },
        Figure {
            what: "get CPU (all daemons + client)".into(),
            value: get_cpu / gib,
            unit: "CPU s/GiB",
        },
    ])
}

async fn meta(
    dir: &std::path::Path,
    clients: usize,
    files: usize,
    namenodes: usize,
) -> anyhow::Result<Vec<Figure>> {
    let mut opts = DevOptions::new(dir, 1);
    opts.namenodes = namenodes;
    let cluster = DevCluster::start(opts).await?;
    let mut conns = Vec::new();
    for i in 0..clients {
        let c = cluster.client().await?;
        let d = c
            .mkdir(
                Ino::ROOT,
                format!("c{i}").as_bytes(),
                0o755,
                Owner::current(),
            )
            .await?;
        conns.push((c, d.ino));
    }
    let conns = Arc::new(conns);
    let mut figures = Vec::new();
    for phase in ["create", "getattr", "rename", "unlink"] {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..clients {
            let conns = conns.clone();
            tasks.push(tokio::spawn(async move {
                let (c, d) = &conns[i];
                let mut inos = Vec::with_capacity(files);
                for j in 0..files {
                    let name = format!("f{j}");
                    match phase {
                        "create" => {
                            c.create(*d, name.as_bytes(), 0o644, true, false, Owner::current())
                                .await?;
                        }
                        "getattr" => {
                            if inos.is_empty() {
                                for e in c.readdir(*d).await? {
                                    inos.push(e.ino);
                                }
                            }
                            c.getattr(inos[j % inos.len()]).await?;
                        }
                        "rename" => {
                            let to = format!("g{j}");
                            c.rename(*d, name.as_bytes(), *d, to.as_bytes(), RenameMode::Replace)
                                .await?;
                        }
                        _ => c.unlink(*d, format!("g{j}").as_bytes()).await?,
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await.context("client task")??;
        }
        let rate = (clients * files) as f64 / t0.elapsed().as_secs_f64();
        let group = match namenodes {
            1 => String::new(),
            n => format!(", {n} namenodes"),
        };
        figures.push(Figure {
            what: format!("{phase}, {clients} clients{group}"),
            value: rate,
            unit: "ops/s",
        });
    }
    cluster.stop().await?;
    Ok(figures)
}

/// A metadata engine of its own in `dir`, synced, as a namenode opens it.
fn bench_engine(
    dir: &std::path::Path,
    durability: cairn_namenode::walsync::Durability,
) -> anyhow::Result<Arc<MetaEngine>> {
    let opens = Arc::new(cairn_namenode::opens::OpenTable::new(
        Duration::from_secs(30),
        Duration::ZERO,
    ));
    let gc = Arc::new(cairn_namenode::gc::Gc::new(
        Duration::from_secs(300),
        Duration::from_secs(30),
    ));
    Ok(Arc::new(MetaEngine::open(dir, 3, durability, opens, gc)?))
}

/// `concurrency` tasks submit, in turn, the ops `ops` makes of each of `count` file names
/// (as many as divide evenly); how many names they went through.
async fn submitters(
    engine: &Arc<MetaEngine>,
    count: usize,
    concurrency: usize,
    ops: fn(Vec<u8>) -> Vec<MetaOpKind>,
) -> anyhow::Result<usize> {
    let per_task = count / concurrency.max(1);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..per_task {
                for op in ops(format!("t{t}-{j}").into_bytes()) {
                    engine.submit(cairn_common::attr::Caller::ROOT, op).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("submitter task")??;
    }
    Ok(per_task * concurrency)
}

async fn trash(
    dir: &std::path::Path,
    files: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Figure>> {
    let engine = bench_engine(dir, cairn_namenode::walsync::Durability::Always)?;
    use cairn_common::attr::Caller;
    let on = MetaOpKind::SetTrash {
        retention_secs: 86_400,
        replaced: false,
    };
    engine.submit(Caller::ROOT, on).await?;
    let t0 = Instant::now();
    let files = submitters(&engine, files, concurrency, |name| {
        vec![
            MetaOpKind::new_file(Ino::ROOT, name.clone()),
            MetaOpKind::Unlink(cairn_common::proto::Unlink {
                parent: Ino::ROOT,
                name,
            }),
        ]
    })
    .await?;
    let filled = t0.elapsed();
    let t0 = Instant::now();
    let census = engine.trash_census()?;
    let read = t0.elapsed();
    anyhow::ensure!(
        census.files as usize == files,
        "the emptier's read counted {} files",
        census.files
    );
    let t0 = Instant::now();
    let (mut listed, mut after) = (0, None::<(Ino, Vec<u8>)>);
    loop {
        let at = after.as_ref().map(|(d, n)| (*d, n.as_slice()));
        let (page, more) =
            engine.trash_page(None, at, cairn_common::proto::TRASH_PAGE_MAX as usize)?;
        listed += page.len();
        after = page.last().map(|(d, n, _)| (*d, n.clone()));
        if !more {
            break;
        }
    }
    let list = t0.elapsed();
    anyhow::ensure!(listed == files, "the listing found {listed} files");
    let t0 = Instant::now();
    let never = tokio_util::sync::CancellationToken::new();
    let purged = cairn_namenode::emptier::purge(&engine, i64::MAX, &never).await;
    let purge = t0.elapsed();
    anyhow::ensure!(purged == files, "the purge removed {purged} files");
    let rate = |d: Duration| files as f64 / d.as_secs_f64().max(1e-6);
    Ok(vec![
        Figure {
            what: format!("{files} files created and removed into the trash"),
            value: rate(filled),
            unit: "files/s",
        },
        Figure {
            what: "the emptier's read of the whole trash".into(),
            value: read.as_secs_f64(),
            unit: "s",
        },
        Figure {
            what: format!(
                "listed page by page ({} a page)",
                cairn_common::proto::TRASH_PAGE_MAX
            ),
            value: list.as_secs_f64(),
            unit: "s",
        },
        Figure {
            what: "the emptier's removal of them all".into(),
            value: rate(purge),
            unit: "files/s",
        },
    ])
}

fn tokens(count: usize) -> Vec<Figure> {
    use cairn_common::token::{Access, Signer, Verifier, DEFAULT_LIFETIME_SECS};
    let signer = Signer::new(b"bench key", DEFAULT_LIFETIME_SECS);
    let verifier = Verifier::default();
    verifier.set_keys(signer.keys());
    let holder = [7u8; 16];
    let blocks: Vec<BlockId> = (0..count as u64)
        .map(|i| BlockId::of(&i.to_le_bytes()))
        .collect();
    let t0 = Instant::now();
    let signed: Vec<_> = blocks
        .iter()
        .map(|b| signer.sign(Access::Read, Some(*b), &holder))
        .collect();
    let signing = t0.elapsed();
    let t0 = Instant::now();
    let checked = signed
        .iter()
        .zip(&blocks)
        .filter(|(t, b)| {
            verifier
                .check(Some(t), Access::Read, Some(b), &holder, false)
                .is_ok()
        })
        .count();
    let checking = t0.elapsed();
    assert_eq!(checked, count, "every token checks out");
    let each = |d: Duration| d.as_nanos() as f64 / count.max(1) as f64;
    vec![
        Figure {
            what: "sign a block token".into(),
            value: each(signing),
            unit: "ns",
        },
        Figure {
            what: "check a block token".into(),
            value: each(checking),
            unit: "ns",
        },
    ]
}

async fn engine(
    dir: &std::path::Path,
    creates: usize,
    concurrency: usize,
    durability: cairn_namenode::walsync::Durability,
) -> anyhow::Result<Vec<Figure>> {
    let synced = match durability {
        cairn_namenode::walsync::Durability::Window(w) => format!("synced within {w:?}"),
        _ => "synced".into(),
    };
    let engine = bench_engine(dir, durability)?;
    let t0 = Instant::now();
    let created = submitters(&engine, creates, concurrency, |name| {
        vec![MetaOpKind::new_file(Ino::ROOT, name)]
    })
    .await?;
    let elapsed = t0.elapsed().max(Duration::from_micros(1));
    Ok(vec![Figure {
        what: format!("engine creates, {concurrency} submitters, {synced}"),
        value: created as f64 / elapsed.as_secs_f64(),
        unit: "ops/s",
    }])
}
