//! `cairn admin …`: the cluster's health and the operator's levers, in the manner of
//! `hdfs dfsadmin` and `hdfs fsck`. Tables for people, JSON with `--json`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use cairn_client::Client;
use cairn_common::attr::{FileKind, InodeAttr};
use cairn_common::layout::CHUNK_SIZE;
use cairn_common::proto::{
    AdminState, CheckNamespace, DatanodeState, DatanodeStatus, ForgetDatanode, GetMetaHealth,
    GetRepairStatus, MetaHealth, ReadChunks, RepairStatus, SafeMode, SafeModeAction,
    SafeModeStatus, SetAdminState,
};
use cairn_common::{BlockId, FsError};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::fs_cmd::{at, connect, join};

/// Chunks asked for per `ReadChunks` while checking a file.
const FSCK_CHUNKS: u32 = 64;

#[derive(Args)]
pub struct AdminArgs {
    /// Client configuration file (default: $CAIRN_CONFIG, then ./cairn-client.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The namenode group: its members, which leads and in which term, and how far each
    /// member's log is behind the leader's; or a change of its members (admin certificate).
    Namenodes {
        #[command(subcommand)]
        change: Option<NamenodesCommand>,
    },
    /// Every datanode (state, space, blocks, last heartbeat, load), cluster totals, and how
    /// many blocks are under-replicated or missing.
    Report,
    /// Check files' blocks against their replication: per file, blocks, replicas and where
    /// they are, and what is wrong; of `/`, the namespace's links and reference counts too
    /// (as root). Exits with 1 when data is missing or corrupt or the namespace is
    /// inconsistent, with 3 when blocks are only under-replicated.
    Fsck {
        #[arg(default_value = "/")]
        path: String,
        /// List every file, not only those with problems.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Set the replication factor of a file, or of a tree with -r; repair then meets it.
    Setrep {
        #[arg(short = 'r', long)]
        recursive: bool,
        replication: u8,
        path: String,
    },
    /// Show safe mode, or enter or leave it (admin certificate).
    Safemode {
        #[arg(value_enum, default_value_t = SafeModeArg::Get)]
        action: SafeModeArg,
    },
    /// Re-replication: blocks below their replication, copies under way, rate and ETA.
    RepairStatus,
    /// The mounts connected to the namenode: host, mount point, process, version, open
    /// files, and when each last read the change feed (one that stopped reading it makes
    /// changes of files it read wait up to two seconds).
    Mounts,
    /// The namenode's export rules, in the order it tries them: which certificates see the
    /// namespace read-only, with root squashed, and which uids and gids they may act as.
    Exports,
    /// Drain a datanode: its blocks are copied elsewhere, then it shows as decommissioned
    /// and may be switched off (admin certificate). `--cancel` puts it back in service.
    Decommission {
        /// The datanode's name, address or id (as `report` shows them).
        node: String,
        #[arg(long)]
        cancel: bool,
    },
    /// Take a datanode down for planned work without its blocks being copied elsewhere
    /// (admin certificate). `--end` puts it back in service.
    Maintenance {
        node: String,
        #[arg(long)]
        end: bool,
    },
    /// Drop a dead datanode from the list for good (admin certificate): one that will not come
    /// back. Dead datanodes stay listed, across namenode restarts too, until forgotten or
    /// dead for `forget_dead_datanode_secs`.
    Forget {
        /// The datanode's name, address or id (as `report` shows them).
        node: String,
    },
    /// Move replicas from the fullest datanodes to the emptiest until every datanode's used
    /// share is within the threshold of the cluster's average (admin certificate to start or stop),
    /// showing progress until then. Interrupted, the balancing goes on in the namenode.
    Balance {
        /// Percentage points of capacity a datanode's usage may differ from the average.
        #[arg(long, default_value_t = 10.0)]
        threshold: f64,
        /// Start it and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Stop balancing; moves under way finish.
        #[arg(long, conflicts_with = "status")]
        stop: bool,
        /// Show what the balancer is doing.
        #[arg(long)]
        status: bool,
    },
}

#[derive(Subcommand)]
enum NamenodesCommand {
    /// Add the namenode listening at ADDR: start it first with an empty meta_dir and this
    /// group's members, then its own address last, in its `group` list. It receives a
    /// snapshot, catches up with the log, then votes. Asked again, it goes on.
    Add { addr: std::net::SocketAddr },
    /// Remove a member (its number or address): it no longer votes nor gets the log.
    /// Stop it afterwards; it must not be started again with its old meta_dir.
    Remove { member: String },
    /// Hand the lead to another voter (by default the one most caught up). Changes pause
    /// for about an election timeout (2 s); clients follow the new leader.
    TransferLeader {
        /// The member to lead, by number.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SafeModeArg {
    Get,
    Enter,
    Leave,
}

pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let client = connect(args.config.as_deref()).await?;
    let json = args.json;
    match args.command {
        AdminCommand::Report => report(&client, json).await?,
        AdminCommand::Fsck { path, verbose } => return fsck(&client, &path, verbose, json).await,
        AdminCommand::Setrep {
            recursive,
            replication,
            path,
        } => crate::fs_cmd::setrep(&client, &path, replication, recursive).await?,
        AdminCommand::Safemode { action } => {
            let action = match action {
                SafeModeArg::Get => SafeModeAction::Get,
                SafeModeArg::Enter => SafeModeAction::Enter,
                SafeModeArg::Leave => SafeModeAction::Leave,
            };
            let status = client
                .namenode(SafeMode { action })
                .await
                .map_err(|e| anyhow!("safe mode: {e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", safe_mode_line(&status));
            }
        }
        AdminCommand::RepairStatus => repair_status(&client, json).await?,
        AdminCommand::Mounts => mounts(&client, json).await?,
        AdminCommand::Namenodes { change: None } => namenodes(&client, json).await?,
        AdminCommand::Namenodes {
            change: Some(change),
        } => change_namenodes(&client, change, json).await?,
        AdminCommand::Exports => exports(&client, json).await?,
        AdminCommand::Decommission { node, cancel } => {
            let state = admin_target(AdminState::Decommissioning, cancel);
            set_admin(&client, &node, state, json).await?
        }
        AdminCommand::Maintenance { node, end } => {
            let state = admin_target(AdminState::Maintenance, end);
            set_admin(&client, &node, state, json).await?
        }
        AdminCommand::Forget { node } => {
            let status = client
                .namenode(ForgetDatanode { node: node.clone() })
                .await
                .map_err(|e| anyhow!("{node}: {e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{} ({}): forgotten", status.name, status.addr);
            }
        }
        AdminCommand::Balance {
            threshold,
            no_wait,
            stop,
            status,
        } => {
            use crate::balance_cmd::Request;
            let request = if stop {
                Request::Stop
            } else if status {
                Request::Status
            } else {
                Request::Start {
                    threshold_pct: threshold,
                    wait: !no_wait,
                }
            };
            return crate::balance_cmd::run(&client, request, json).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `state`, or back to normal service when the operator ends it.
fn admin_target(state: AdminState, end: bool) -> AdminState {
    if end {
        AdminState::Normal
    } else {
        state
    }
}

async fn set_admin(
    client: &Client,
    node: &str,
    state: AdminState,
    json: bool,
) -> anyhow::Result<()> {
    let status = client
        .namenode(SetAdminState {
            node: node.to_string(),
            state,
        })
        .await
        .map_err(|e| anyhow!("{node}: {e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{} ({}): {}", status.name, status.addr, status.admin);
    }
    Ok(())
}

fn safe_mode_line(s: &SafeModeStatus) -> String {
    let state = match (s.on, s.manual) {
        (false, _) => "off",
        (true, true) => "ON (entered by an operator; `cairn admin safemode leave` ends it)",
        (true, false) => "ON (waiting for block reports)",
    };
    format!(
        "Safe mode: {state}; {} of {} blocks reported (threshold {:.1}%)",
        s.blocks_reported,
        s.blocks,
        s.threshold * 100.0
    )
}

pub(crate) fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[derive(Serialize)]
struct Totals {
    datanodes: usize,
    live: usize,
    stale: usize,
    dead: usize,
    capacity: u64,
    used: u64,
    available: u64,
    blocks: u64,
}

#[derive(Serialize)]
struct Report {
    datanodes: Vec<DatanodeStatus>,
    totals: Totals,
    repair: RepairStatus,
    safe_mode: SafeModeStatus,
    metadata: MetaHealth,
    mounts: Vec<cairn_common::proto::MountStatus>,
}

/// How long since its last read of the change feed a mount counts as stale: twice the
/// trust one read gives, past which the namenode stops waiting for it.
fn stale_after_ms() -> u64 {
    2 * cairn_common::proto::LEASE_TRUST.as_millis() as u64
}

async fn report(client: &Client, json: bool) -> anyhow::Result<()> {
    let datanodes = client.datanodes().await.map_err(|e| anyhow!("{e}"))?;
    let repair = client
        .namenode(GetRepairStatus)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let safe_mode = client
        .namenode(SafeMode {
            action: SafeModeAction::Get,
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let metadata = client
        .namenode(GetMetaHealth)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mounts = client
        .namenode(cairn_common::proto::ListMounts)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let count = |state| datanodes.iter().filter(|d| d.state == state).count();
    let live: Vec<&DatanodeStatus> = datanodes.iter().filter(|d| d.alive).collect();
    let totals = Totals {
        datanodes: datanodes.len(),
        live: count(DatanodeState::Live),
        stale: count(DatanodeState::Stale),
        dead: count(DatanodeState::Dead),
        capacity: live.iter().map(|d| d.capacity).sum(),
        used: live.iter().map(|d| d.used).sum(),
        available: live.iter().map(|d| d.available).sum(),
        blocks: repair.blocks,
    };
    let report = Report {
        datanodes,
        totals,
        repair,
        safe_mode,
        metadata,
        mounts,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let t = &report.totals;
    println!(
        "Datanodes: {} ({} live, {} stale, {} dead)",
        t.datanodes, t.live, t.stale, t.dead
    );
    println!("{}", safe_mode_line(&report.safe_mode));
    println!("Cluster: {:016x}", report.metadata.cluster);
    match &report.metadata.refusing {
        None => println!("Metadata: taking writes"),
        Some(r) => println!(
            "Metadata: REFUSING WRITES for {} s ({} changes refused): {}",
            r.for_secs, r.refused, r.error
        ),
    }
    let stale = report
        .mounts
        .iter()
        .filter(|m| m.feed_read_ms_ago > stale_after_ms())
        .count();
    println!(
        "Mounts: {} ({stale} not reading the change feed; `cairn admin mounts` lists them)",
        report.mounts.len()
    );
    println!();
    println!(
        "{:<16} {:<10} {:<22} {:<6} {:<15} {:>10} {:>10} {:>10} {:>6} {:>8} {:>10} {:>5}",
        "NAME",
        "RACK",
        "ADDRESS",
        "STATE",
        "ADMIN",
        "CAPACITY",
        "USED",
        "AVAILABLE",
        "USE%",
        "BLOCKS",
        "HEARTBEAT",
        "LOAD"
    );
    for d in &report.datanodes {
        println!(
            "{:<16} {:<10} {:<22} {:<6} {:<15} {:>10} {:>10} {:>10} {:>5.1}% {:>8} {:>9.1}s {:>5}",
            d.name,
            if d.rack.is_empty() { "-" } else { &d.rack },
            d.addr.to_string(),
            d.state.to_string(),
            d.admin.to_string(),
            size(d.capacity),
            size(d.used),
            size(d.available),
            percent(d.used, d.capacity),
            d.blocks,
            d.last_heartbeat_ms as f64 / 1000.0,
            d.active_transfers
        );
    }
    println!(
        "{:<16} {:<10} {:<22} {:<6} {:<15} {:>10} {:>10} {:>10} {:>5.1}%",
        "total (live)",
        "",
        "",
        "",
        "",
        size(t.capacity),
        size(t.used),
        size(t.available),
        percent(t.used, t.capacity)
    );
    println!();
    let r = &report.repair;
    println!(
        "Blocks: {} referenced; {} under-replicated ({} with one replica), {} missing, {} over-replicated, {} in too few racks",
        r.blocks, r.under_replicated, r.one_replica, r.missing, r.over_replicated, r.misplaced
    );
    if let Some(why) = unrepairable(r) {
        println!("{why}");
    }
    println!(
        "Corrupt: {} replicas awaiting replacement; {} blocks with no good replica",
        r.corrupt_replicas, r.corrupt_blocks
    );
    println!();
    println!(
        "{:<16} {:>7} {:>14} {:>16} {:>8}",
        "SCRUB", "PASSES", "THIS PASS", "LAST PASS", "CORRUPT"
    );
    for d in &report.datanodes {
        let s = &d.scrub;
        let last = if s.passes == 0 {
            "-".to_string()
        } else {
            format!("{} in {:.0} s", size(s.last_pass_bytes), s.last_pass_secs)
        };
        println!(
            "{:<16} {:>7} {:>14} {:>16} {:>8}",
            d.name,
            s.passes,
            size(s.bytes_this_pass),
            last,
            s.corrupt_found
        );
    }
    Ok(())
}

async fn namenodes(client: &Client, json: bool) -> anyhow::Result<()> {
    let group = client
        .namenode(cairn_common::proto::ListNamenodes)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&group)?);
        return Ok(());
    }
    let at = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
    println!(
        "Namenode group: {} member(s); member {} leads in term {}; log at {}, applied {}, snapshot at {}",
        group.members.len(),
        group.leader,
        group.term,
        at(group.last_log),
        at(group.applied),
        at(group.snapshot)
    );
    for m in &group.members {
        let role = if m.id == group.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let behind = match (m.matched, group.last_log) {
            _ if m.id == group.leader => String::new(),
            (Some(matched), Some(last)) => {
                format!("  at {matched} ({} behind)", last.saturating_sub(matched))
            }
            _ => "  not heard from".into(),
        };
        println!("  {}  {}  {role}{behind}", m.id, m.addr);
    }
    Ok(())
}

async fn change_namenodes(
    client: &Client,
    change: NamenodesCommand,
    json: bool,
) -> anyhow::Result<()> {
    use cairn_common::proto::ChangeNamenodes as C;
    let (change, what) = match change {
        NamenodesCommand::Add { addr } => (C::Add { addr }, format!("adding {addr}")),
        NamenodesCommand::Remove { member } => {
            let group = client
                .namenode(cairn_common::proto::ListNamenodes)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let found = group
                .members
                .iter()
                .find(|m| m.id.to_string() == member || m.addr == member)
                .ok_or_else(|| {
                    anyhow!("the group has no member {member} (`cairn admin namenodes` lists them)")
                })?;
            (
                C::Remove { id: found.id },
                format!("removing member {} at {}", found.id, found.addr),
            )
        }
        NamenodesCommand::TransferLeader { to } => {
            let whom = to.map_or("another member".to_string(), |id| format!("member {id}"));
            (
                C::TransferLeader { to },
                format!("handing the lead to {whom}"),
            )
        }
    };
    if !json {
        println!("{what}…");
    }
    client
        .namenode(change)
        .await
        .map_err(|e| anyhow!("{what}: {e}"))?;
    namenodes(client, json).await
}

async fn mounts(client: &Client, json: bool) -> anyhow::Result<()> {
    let list = client
        .namenode(cairn_common::proto::ListMounts)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("Mounts: {}", list.len());
    for m in &list {
        let feed = format!("{:.1} s ago", m.feed_read_ms_ago as f64 / 1000.0);
        let stale = if m.feed_read_ms_ago > stale_after_ms() {
            "  STALE: not reading the change feed"
        } else {
            ""
        };
        println!(
            "{}:{}  pid {}  cairn {}  {} ({})  open files {}  feed read {feed}  up {}{stale}",
            m.info.host,
            m.info.mountpoint,
            m.info.pid,
            m.info.version,
            m.addr,
            m.client,
            m.open_files,
            humantime::format_duration(std::time::Duration::from_secs(m.connected_secs)),
        );
    }
    Ok(())
}

async fn exports(client: &Client, json: bool) -> anyhow::Result<()> {
    let rules = client
        .namenode(cairn_common::proto::ListExports {})
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rules)?);
        return Ok(());
    }
    println!(
        "Export rules: {} (the first whose name matches a certificate's applies)",
        rules.len()
    );
    for r in &rules {
        let ids = |list: &[cairn_common::exports::IdRange]| match list {
            [] => "any".to_string(),
            _ => list
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(","),
        };
        let squash = match (r.all_squash, r.root_squash) {
            (true, _) => format!("all_squash to {}:{}", r.anon_uid, r.anon_gid),
            (false, true) => format!("root_squash to {}:{}", r.anon_uid, r.anon_gid),
            (false, false) => "no_root_squash".to_string(),
        };
        let options = match (r.suid, r.dev) {
            (true, true) => "suid,dev",
            (true, false) => "suid,nodev",
            (false, true) => "nosuid,dev",
            (false, false) => "nosuid,nodev",
        };
        println!(
            "  {:<20} {}  {:?}  {squash}  uids {}  gids {}  {options}",
            r.name,
            r.root,
            r.access,
            ids(&r.uids),
            ids(&r.gids)
        );
    }
    println!(
        "  {:<20} /  Rw  root_squash to 65534:65534  uids any  gids any  nosuid,nodev  (mount and user certificates no rule names)",
        "(others)"
    );
    Ok(())
}

async fn repair_status(client: &Client, json: bool) -> anyhow::Result<()> {
    let r = client
        .namenode(GetRepairStatus)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "Queue: {} blocks under-replicated ({} with one replica), {} missing, {} in too few racks",
        r.under_replicated, r.one_replica, r.missing, r.misplaced
    );
    if let Some(why) = unrepairable(&r) {
        println!("{why}");
    }
    println!(
        "To copy: {} replicas, {}; {} copies under way",
        r.copies_needed,
        size(r.bytes_needed),
        r.copies_in_flight
    );
    println!(
        "Done since start: {} copies, {}; {} surplus replicas deleted",
        r.copies_done,
        size(r.bytes_copied),
        r.surplus_deleted
    );
    let eta = if r.bytes_needed == 0 {
        "none needed".to_string()
    } else if r.rate_bytes_per_sec == 0 {
        "unknown (nothing copied in the last minute)".to_string()
    } else {
        format!("{} s", r.bytes_needed.div_ceil(r.rate_bytes_per_sec))
    };
    println!(
        "Rate: {}/s over the last minute; ETA {eta}",
        size(r.rate_bytes_per_sec)
    );
    println!(
        "Garbage: {} unreferenced blocks in their grace period, {} being deleted, {} collected since start",
        r.garbage_waiting, r.garbage_deleting, r.garbage_collected
    );
    Ok(())
}

#[derive(Serialize)]
struct BlockCheck {
    offset: u64,
    block: String,
    len: u32,
    replicas: usize,
    wanted: u8,
    locations: Vec<String>,
    problem: Option<&'static str>,
}

#[derive(Serialize)]
struct FileCheck {
    path: String,
    size: u64,
    replication: u8,
    blocks: Vec<BlockCheck>,
}

#[derive(Serialize, Default)]
struct FsckSummary {
    files: u64,
    directories: u64,
    bytes: u64,
    blocks: u64,
    under_replicated: u64,
    missing: u64,
    /// Blocks whose every replica was found corrupt.
    corrupt: u64,
    /// Every block has all its replicas.
    healthy: bool,
    /// `healthy`, `under-replicated` (every block readable, some short of replicas),
    /// `corrupt` (some block has no good live replica) or `inconsistent` (the namespace's
    /// records disagree).
    status: &'static str,
    /// The namespace recounted (a check of `/` by root), when it was.
    namespace: Option<cairn_common::proto::NamespaceCheck>,
}

/// `cairn admin fsck`'s exit status when every block is readable but some have fewer live
/// replicas than their replication (1 is for missing or corrupt data, 2 for usage errors).
const FSCK_UNDER_REPLICATED: u8 = 3;

/// One file's blocks against its replication; `names` names datanodes by id.
async fn check_file(
    client: &Client,
    path: &str,
    attr: &InodeAttr,
    names: &HashMap<cairn_common::DatanodeId, String>,
) -> Result<FileCheck, FsError> {
    let mut blocks = Vec::new();
    let mut seen = std::collections::HashSet::<BlockId>::new();
    let mut first = 0u32;
    while (first as u64) * CHUNK_SIZE < attr.size {
        let map = client
            .namenode(ReadChunks {
                ino: attr.ino,
                first,
                count: FSCK_CHUNKS,
            })
            .await?;
        let locations: HashMap<_, _> = map.locations.into_iter().collect();
        let corrupt: std::collections::HashSet<BlockId> = map.corrupt.into_iter().collect();
        for (index, slices) in map.chunks {
            for s in slices {
                if !seen.insert(s.block) {
                    continue;
                }
                let at: Vec<String> = locations
                    .get(&s.block)
                    .map(|l| {
                        l.iter()
                            .map(|d| names.get(&d.id).cloned().unwrap_or(d.addr.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let problem = if at.is_empty() && corrupt.contains(&s.block) {
                    Some("corrupt")
                } else if at.is_empty() {
                    Some("missing")
                } else if at.len() < attr.replication as usize {
                    Some("under-replicated")
                } else {
                    None
                };
                blocks.push(BlockCheck {
                    offset: index as u64 * CHUNK_SIZE + s.pos as u64,
                    block: s.block.to_hex(),
                    len: s.block_len,
                    replicas: at.len(),
                    wanted: attr.replication,
                    locations: at,
                    problem,
                });
            }
        }
        first += FSCK_CHUNKS;
    }
    Ok(FileCheck {
        path: path.to_string(),
        size: attr.size,
        replication: attr.replication,
        blocks,
    })
}

async fn fsck(client: &Client, path: &str, verbose: bool, json: bool) -> anyhow::Result<ExitCode> {
    let root = client.resolve(path).await.map_err(at(path))?;
    let names: HashMap<_, _> = client
        .datanodes()
        .await
        .map_err(|e| anyhow!("{e}"))?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect();
    let mut summary = FsckSummary::default();
    let mut reported = Vec::new();
    let mut stack = vec![(root, path.to_string())];
    while let Some((attr, p)) = stack.pop() {
        match attr.kind {
            FileKind::Dir => {
                summary.directories += 1;
                let mut entries = client.readdir_plus(attr.ino).await.map_err(at(&p))?;
                entries.sort_by(|a, b| b.name.cmp(&a.name));
                for e in entries {
                    let child = join(&p, &String::from_utf8_lossy(&e.name));
                    let a = match e.attr {
                        Some(a) => a,
                        None => match client.getattr(e.ino).await {
                            Ok(a) => a,
                            Err(FsError::NotFound) => continue,
                            Err(err) => return Err(at(&child)(err)),
                        },
                    };
                    stack.push((a, child));
                }
            }
            FileKind::File => {
                summary.files += 1;
                summary.bytes += attr.size;
                let check = match check_file(client, &p, &attr, &names).await {
                    Ok(c) => c,
                    // Removed while we walked: not a problem of the file system.
                    Err(FsError::NotFound) => continue,
                    Err(e) => return Err(at(&p)(e)),
                };
                summary.blocks += check.blocks.len() as u64;
                let mut bad = false;
                for b in &check.blocks {
                    match b.problem {
                        Some("missing") => summary.missing += 1,
                        Some("corrupt") => summary.corrupt += 1,
                        Some(_) => summary.under_replicated += 1,
                        None => continue,
                    }
                    bad = true;
                }
                if bad || verbose {
                    reported.push(check);
                }
            }
            _ => {}
        }
    }
    if path.trim_end_matches('/').is_empty() {
        summary.namespace = match client.namenode(CheckNamespace {}).await {
            Ok(check) => Some(check),
            // Only an administrator's certificate may read every record; fsck of the
            // files goes on without it.
            Err(FsError::WrongRole(_)) => None,
            Err(e) => return Err(anyhow!("checking the namespace: {e}")),
        };
    }
    let inconsistent = summary.namespace.as_ref().is_some_and(|n| n.problems > 0);
    summary.status = if inconsistent {
        "inconsistent"
    } else if summary.missing + summary.corrupt > 0 {
        "corrupt"
    } else if summary.under_replicated > 0 {
        "under-replicated"
    } else {
        "healthy"
    };
    summary.healthy = summary.status == "healthy";
    if json {
        #[derive(Serialize)]
        struct Out {
            files: Vec<FileCheck>,
            summary: FsckSummary,
        }
        let out = Out {
            files: reported,
            summary,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(fsck_exit(&out.summary));
    }
    for f in &reported {
        let problems = f.blocks.iter().filter(|b| b.problem.is_some()).count();
        println!(
            "{}: {} bytes, replication {}, {} blocks, {}",
            f.path,
            f.size,
            f.replication,
            f.blocks.len(),
            if problems == 0 {
                "OK".to_string()
            } else {
                format!("{problems} with problems")
            }
        );
        for b in &f.blocks {
            if b.problem.is_none() && !verbose {
                continue;
            }
            println!(
                "  @{:<12} {}  {} of {} replicas{}{}",
                b.offset,
                &b.block[..16],
                b.replicas,
                b.wanted,
                if b.locations.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", b.locations.join(", "))
                },
                b.problem
                    .map(|p| format!("  {}", p.to_uppercase()))
                    .unwrap_or_default()
            );
        }
    }
    let s = &summary;
    println!(
        "{}: {} files, {} directories, {}, {} blocks; {} under-replicated, {} missing, {} corrupt",
        path,
        s.files,
        s.directories,
        size(s.bytes),
        s.blocks,
        s.under_replicated,
        s.missing,
        s.corrupt
    );
    match &s.namespace {
        Some(n) if n.problems == 0 => println!(
            "Namespace: consistent ({} inodes, {} names, {} blocks, {} block references, \
             {} inode numbers free for reuse)",
            n.inodes, n.names, n.blocks, n.block_refs, n.free_inos
        ),
        Some(n) => {
            println!(
                "Namespace: {} records disagree ({} inodes, {} names, {} blocks):",
                n.problems, n.inodes, n.names, n.blocks
            );
            for p in &n.examples {
                println!("  {p}");
            }
            if n.problems > n.examples.len() as u64 {
                println!("  and {} more", n.problems - n.examples.len() as u64);
            }
        }
        None if path.trim_end_matches('/').is_empty() => {
            println!("Namespace: not checked (it takes an admin certificate)")
        }
        None => {}
    }
    match s.status {
        "healthy" => println!("Status: HEALTHY"),
        "inconsistent" => println!(
            "Status: INCONSISTENT (the namespace's records disagree: a bug; keep the namenode's metadata directory for the report)"
        ),
        "under-replicated" => {
            println!(
                "Status: UNDER-REPLICATED ({} blocks have fewer live replicas than their replication; all are readable)",
                s.under_replicated
            );
            // Why repair has not fixed it, as the namenode sees it now.
            if let Ok(r) = client.namenode(GetRepairStatus).await {
                if let Some(why) = unrepairable(&r) {
                    println!("{why}");
                } else {
                    println!("Repair is under way: cairn admin repair-status");
                }
            }
        }
        _ => println!("Status: CORRUPT (blocks with no good live replica)"),
    }
    Ok(fsck_exit(s))
}

fn fsck_exit(s: &FsckSummary) -> ExitCode {
    match s.status {
        "healthy" => ExitCode::SUCCESS,
        "under-replicated" => ExitCode::from(FSCK_UNDER_REPLICATED),
        _ => ExitCode::from(1),
    }
}

/// Why some under-replicated blocks cannot be repaired now, if any cannot.
fn unrepairable(r: &cairn_common::proto::RepairStatus) -> Option<String> {
    (r.unrepairable > 0).then(|| {
        format!(
            "Cannot repair {} blocks now: each is on every one of the {} live datanodes in service, \
             fewer than its replication. Add datanodes, or lower the replication (cairn admin setrep).",
            r.unrepairable, r.live_datanodes
        )
    })
}
