//! The Cairn datanode: stores verified, content-addressed blocks on local disk, forwards
//! writes down a pipeline of datanodes, serves reads, and keeps the namenode told of what it
//! holds (registration, full and incremental block reports, heartbeats).

pub mod config;
mod direct;
pub mod store;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_common::cert::Role;
use cairn_common::codec::{read_frame, write_frame};
use cairn_common::layout::MAX_BLOCK_SIZE;
use cairn_common::proto::{
    BlockData, BlockReceived, BlockReport, DatanodeAddr, DatanodeCommand, DatanodeRequest,
    GetBlock, GetRange, Heartbeat, PutBlock, PutReply, RangeData, Register, Rpc, SyncReply,
};
use cairn_common::transport::{self, ConnectionPool, Exchange, Peer, Service, TransportOptions};
use cairn_common::{BlockId, DatanodeId, FsError, FsResult};
use quinn::Endpoint;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use config::DatanodeConfig;
use store::BlockStore;

/// Block ids per part of a full block report, to stay well inside the header limit.
const REPORT_PART: usize = 8192;
/// Longest pipeline a request may ask this datanode to forward to.
const MAX_PIPELINE: usize = 16;
/// Most copies (ordered by the namenode) this datanode sends at once.
const COPY_SLOTS: usize = 4;

pub struct Datanode {
    config: DatanodeConfig,
    advertised: std::net::SocketAddr,
    store: Arc<BlockStore>,
    pool: ConnectionPool,
    /// The namenodes to report to, and the one reported to now (the group's leader).
    namenodes: cairn_common::namenodes::Namenodes,
    active_transfers: AtomicU32,
    /// Copies the namenode ordered that failed, told with the next heartbeat.
    copies_failed: std::sync::Mutex<Vec<BlockId>>,
    /// Serials of revoked certificates, as the namenode's last heartbeat reply listed them.
    revoked: std::sync::RwLock<std::collections::HashSet<Vec<u8>>>,
    /// The keys of block access tokens, as the namenode's last answer gave them.
    tokens: cairn_common::token::Verifier,
    /// Bounds the copies this datanode sends at once.
    copy_slots: Arc<tokio::sync::Semaphore>,
    /// With `repair_bytes_per_sec`: when the copy bandwidth is free again.
    copy_pace: tokio::sync::Mutex<tokio::time::Instant>,
    /// What the scrubber has done, told with every heartbeat.
    scrub: std::sync::Mutex<cairn_common::proto::ScrubProgress>,
    /// A copy or deletion finished: heartbeat now, for the next orders.
    work_done: tokio::sync::Notify,
    /// Blocks stored, for `received_loop` to report.
    received: tokio::sync::mpsc::UnboundedSender<BlockId>,
}

/// Runs a datanode serving on `endpoint` until `shutdown` is cancelled.
pub async fn run(
    config: DatanodeConfig,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let advertised = config.advertised(endpoint.local_addr()?)?;
    info!(name = %config.name, addr = %advertised, data = %config.data_dir.display(), "datanode starting");
    let store = {
        let (dir, reserve, cap) = (
            config.data_dir.clone(),
            config.reserve_bytes,
            config.capacity_bytes,
        );
        Arc::new(tokio::task::spawn_blocking(move || BlockStore::open(&dir, reserve, cap)).await??)
    };
    let (received, stored) = tokio::sync::mpsc::unbounded_channel();
    let datanode = Arc::new(Datanode {
        namenodes: cairn_common::namenodes::Namenodes::new(config.namenode, &config.namenodes),
        pool: ConnectionPool::new(
            endpoint.clone(),
            &config.tls.load()?,
            &TransportOptions::default(),
        )?,
        advertised,
        store,
        config,
        active_transfers: AtomicU32::new(0),
        copies_failed: Default::default(),
        revoked: Default::default(),
        tokens: Default::default(),
        copy_slots: Arc::new(tokio::sync::Semaphore::new(COPY_SLOTS)),
        copy_pace: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        scrub: Default::default(),
        work_done: tokio::sync::Notify::new(),
        received,
    });
    // Cancellation point: the reporter checks `shutdown` between heartbeats and retries.
    let reporter = tokio::spawn(report_loop(datanode.clone(), shutdown.clone()));
    let scrubber = tokio::spawn(scrub_loop(datanode.clone(), shutdown.clone()));
    tokio::spawn(received_loop(Arc::downgrade(&datanode), stored));
    transport::serve(endpoint.clone(), datanode.clone(), shutdown).await;
    let _ = reporter.await;
    let _ = scrubber.await;
    let name = datanode.config.name.clone();
    // Requests in flight hold the datanode (and through its pool, the endpoint's socket);
    // let them end so a restart can bind the same port.
    transport::drain(datanode, &endpoint).await;
    info!(%name, "datanode stopped");
    Ok(())
}

impl Datanode {
    fn id(&self) -> DatanodeId {
        self.store.id()
    }

    async fn namenode_call<R: Rpc<Service = cairn_common::proto::NamenodeRequest>>(
        &self,
        req: R,
    ) -> FsResult<R::Response> {
        let addr = self.namenodes.current();
        let res = match self.pool.get(addr, Role::Namenode).await {
            Ok(conn) => {
                // Datanode requests are not file operations: no user to check permissions
                // for.
                let envelope = cairn_common::proto::NamenodeEnvelope {
                    caller: cairn_common::attr::Caller::ROOT,
                    req: req.into_service(),
                    request: None,
                };
                transport::call_enveloped(&conn, &envelope).await
            }
            Err(e) => Err(e),
        };
        if let Err(e @ (FsError::Unavailable(_) | FsError::NotLeader(_))) = &res {
            // Dial again next time rather than reuse a connection that may be dead, and
            // report to the leader of a group from then on.
            self.pool.forget(addr);
            self.namenodes.moved_on(addr, e);
        }
        res
    }

    /// Receives a block, forwarding it downstream as it arrives, stores it once verified,
    /// and answers with every node of the rest of the pipeline that stored it too.
    async fn put_block(&self, r: PutBlock, ex: &mut Exchange) -> FsResult<()> {
        if r.len > MAX_BLOCK_SIZE {
            return Err(FsError::invalid(format!(
                "block of {} bytes exceeds {MAX_BLOCK_SIZE}",
                r.len
            )));
        }
        if r.downstream.len() > MAX_PIPELINE {
            return Err(FsError::invalid("pipeline too long"));
        }
        // Nodes of the pipeline that failed. Nodes after a failure that were never reached
        // are in neither list: the client may try them again.
        let mut failed: Vec<(DatanodeId, String)> = Vec::new();
        let mut down = self.open_pipeline(&r, &mut failed).await;

        // The block arrives as chunks that are forwarded, hashed and written as they are:
        // no copy into one buffer.
        let len = r.len as usize;
        let mut parts: Vec<bytes::Bytes> = Vec::new();
        let mut got = 0usize;
        while got < len {
            let chunk = ex
                .recv
                .read_chunk(len - got, true)
                .await
                .map_err(|e| FsError::unavailable(format!("upstream lost: {e}")))?
                .ok_or_else(|| {
                    FsError::protocol(format!("block stream ended after {got} of {len} bytes"))
                })?;
            got += chunk.bytes.len();
            if let Some((next, send, _)) = down.as_mut() {
                if let Err(e) = send.write_chunk(chunk.bytes.clone()).await {
                    failed.push((*next, format!("lost mid-transfer: {e}")));
                    down = None;
                }
            }
            parts.push(chunk.bytes);
        }

        // Store locally while the rest of the pipeline finishes.
        let store = self.store.clone();
        let block = r.block;
        let sync = r.sync;
        let local = async {
            let stored = tokio::task::spawn_blocking(move || store.put(&block, &parts, sync))
                .await
                .map_err(|e| FsError::io(format!("block writer panicked: {e}")))?;
            if stored.is_ok() {
                debug!(block = %block, "stored");
                // Reported as it is acknowledged, not before: the writer's commit waits at
                // the namenode for the report if it arrives first.
                let _ = self.received.send(block);
            }
            Ok::<_, FsError>(stored)
        };
        let downstream = async {
            let (next, mut send, mut recv) = down?;
            let _ = send.finish();
            Some((next, read_frame::<FsResult<PutReply>>(&mut recv).await))
        };
        let (local, downstream) = tokio::join!(local, downstream);

        let mut stored_on = Vec::new();
        match downstream {
            Some((_, Ok(Ok(reply)))) => {
                stored_on.extend(reply.stored_on);
                failed.extend(reply.failed);
            }
            Some((next, Ok(Err(e)) | Err(e))) => failed.push((next, e.to_string())),
            None => {}
        }
        match local? {
            Ok(()) => stored_on.insert(0, self.id()),
            Err(e) if stored_on.is_empty() => return Err(e),
            Err(e) => {
                warn!(block = %r.block, "cannot store block: {e}");
                failed.insert(0, (self.id(), e.to_string()));
            }
        }
        ex.respond(&Ok(PutReply { stored_on, failed })).await
    }

    /// Opens the stream to the next datanode of the pipeline. A node that cannot be reached
    /// is skipped and the one after it takes its place, so one dead node costs one replica,
    /// not the rest of the pipeline.
    async fn open_pipeline(
        &self,
        r: &PutBlock,
        failed: &mut Vec<(DatanodeId, String)>,
    ) -> Option<(DatanodeId, quinn::SendStream, quinn::RecvStream)> {
        for (i, next) in r.downstream.iter().enumerate() {
            match self.open_downstream(next, &r.downstream[i + 1..], r).await {
                Ok((send, recv)) => return Some((next.id, send, recv)),
                Err(e) => {
                    warn!(datanode = %next.addr, "pipeline successor unreachable: {e}");
                    self.pool.forget(next.addr);
                    failed.push((next.id, e.to_string()));
                }
            }
        }
        None
    }

    async fn open_downstream(
        &self,
        next: &DatanodeAddr,
        rest: &[DatanodeAddr],
        r: &PutBlock,
    ) -> FsResult<(quinn::SendStream, quinn::RecvStream)> {
        let conn = self.pool.get(next.addr, Role::Datanode).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| FsError::unavailable(format!("datanode {}: {e}", next.addr)))?;
        let header = PutBlock {
            block: r.block,
            len: r.len,
            downstream: rest.to_vec(),
            sync: r.sync,
            token: r.token.clone(),
        }
        .into_service();
        write_frame(&mut send, &header).await?;
        Ok((send, recv))
    }

    async fn get_block(&self, r: GetBlock, ex: &mut Exchange) -> FsResult<()> {
        let store = self.store.clone();
        let data = read_blocking(move || store.read(&r.block, r.offset, r.len)).await?;
        let header = BlockData {
            len: data.len() as u32,
        };
        respond_with_body(ex, header, data).await
    }

    async fn get_range(&self, r: GetRange, ex: &mut Exchange) -> FsResult<()> {
        let store = self.store.clone();
        let read = move || store.read_range(&r.block, r.offset, r.len);
        // A random read's few groups are read here: the hand-off to the blocking pool and
        // back would cost more than the read (page-cache hits, mostly).
        let (block_len, encoded) = if r.len <= INLINE_RANGE_MAX {
            read()?
        } else {
            read_blocking(read).await?
        };
        let header = RangeData {
            block_len,
            len: encoded.len() as u32,
        };
        respond_with_body(ex, header, encoded).await
    }

    /// Registers and sends a full block report; returns the heartbeat interval.
    async fn register(&self) -> FsResult<Duration> {
        let space = self.store.space();
        let reply = self
            .namenode_call(Register {
                id: self.id(),
                cluster: self.store.cluster(),
                name: self.config.name.clone(),
                rack: self.config.rack.clone(),
                addr: self.advertised,
                capacity: space.capacity,
                used: space.used,
                available: space.available,
            })
            .await?;
        self.store
            .join_cluster(reply.cluster)
            .map_err(|e| FsError::io(format!("{e:#}")))?;
        // Revoked serials first: the keys let requests in.
        self.set_revoked(reply.revoked);
        self.tokens.set_keys(reply.keys);
        let blocks = self.store.list();
        let parts: Vec<&[cairn_common::BlockId]> = if blocks.is_empty() {
            vec![&[]]
        } else {
            blocks.chunks(REPORT_PART).collect()
        };
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            self.namenode_call(BlockReport {
                id: self.id(),
                blocks: part.to_vec(),
                first: i == 0,
                last: i + 1 == n,
            })
            .await?;
        }
        info!(
            blocks = blocks.len(),
            "registered with the namenode and reported blocks"
        );
        Ok(Duration::from_millis(reply.heartbeat_interval_ms.max(100)))
    }

    async fn heartbeat(self: &Arc<Self>) -> FsResult<bool> {
        let space = self.store.space();
        let copies_failed =
            std::mem::take(&mut *self.copies_failed.lock().unwrap_or_else(|e| e.into_inner()));
        let scrub = *self.scrub.lock().unwrap_or_else(|e| e.into_inner());
        let reply = self
            .namenode_call(Heartbeat {
                id: self.id(),
                capacity: space.capacity,
                used: space.used,
                available: space.available,
                blocks: self.store.count(),
                active_transfers: self.active_transfers.load(Ordering::Relaxed),
                copies_failed,
                scrub,
            })
            .await?;
        if !reply.commands.is_empty() {
            debug!(commands = reply.commands.len(), "orders from the namenode");
        }
        self.set_revoked(reply.revoked);
        self.tokens.set_keys(reply.keys);
        for command in reply.commands {
            let dn = self.clone();
            tokio::spawn(async move { dn.execute(command).await });
        }
        Ok(!reply.reregister)
    }

    /// Takes the namenode's list of revoked certificate serials.
    fn set_revoked(&self, list: Vec<Vec<u8>>) {
        let mut revoked = self.revoked.write().unwrap_or_else(|e| e.into_inner());
        if revoked.len() != list.len() || list.iter().any(|s| !revoked.contains(s)) {
            info!(revoked = list.len(), "revocation list from the namenode");
            *revoked = list.into_iter().collect();
        }
    }

    async fn execute(self: Arc<Self>, command: DatanodeCommand) {
        match command {
            DatanodeCommand::Replicate {
                block,
                len,
                targets,
                token,
            } => {
                let Ok(_slot) = self.copy_slots.clone().acquire_owned().await else {
                    return;
                };
                if let Err(e) = self.replicate(block, len, &targets, token).await {
                    warn!(%block, "copy to {} datanodes failed: {e}", targets.len());
                    self.copies_failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(block);
                }
            }
            DatanodeCommand::Verify { blocks } => {
                for block in blocks {
                    self.check_replica(block, true).await;
                }
            }
            DatanodeCommand::DropQuarantined { blocks } => {
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for b in blocks {
                        if let Err(e) = store.drop_quarantined(&b) {
                            warn!("{e}");
                        }
                    }
                })
                .await;
            }
            DatanodeCommand::Delete { blocks } => {
                let store = self.store.clone();
                let ids = blocks.clone();
                let deleted = tokio::task::spawn_blocking(move || {
                    ids.into_iter()
                        .filter(|b| match store.delete(b) {
                            Ok(()) => true,
                            Err(e) => {
                                warn!("{e}");
                                false
                            }
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                info!(
                    blocks = deleted.len(),
                    "replicas deleted as the namenode ordered"
                );
                let report = BlockReceived {
                    id: self.id(),
                    added: Vec::new(),
                    removed: deleted,
                };
                if let Err(e) = self.namenode_call(report).await {
                    warn!("cannot report deleted blocks to namenode: {e}");
                }
            }
        }
        self.work_done.notify_one();
    }

    /// Re-hashes one replica. A bad one is quarantined and reported (the namenode has it
    /// replaced from a good copy); with `confirm`, a good one is reported held (a reader's
    /// report of it made the namenode drop it). Returns the bytes read.
    async fn check_replica(&self, block: BlockId, confirm: bool) -> u64 {
        let store = self.store.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let len = store.len_of(&block);
            (store.verify(&block), len)
        })
        .await;
        let Ok((verdict, len)) = checked else {
            return 0;
        };
        match verdict {
            Ok(true) if !confirm => {}
            Ok(true) => {
                let report = BlockReceived {
                    id: self.id(),
                    added: vec![block],
                    removed: Vec::new(),
                };
                if let Err(e) = self.namenode_call(report).await {
                    debug!(%block, "cannot confirm replica to namenode: {e}");
                }
            }
            Ok(false) => {
                warn!(%block, "corrupt replica: quarantined, a good copy will replace it");
                self.scrub_progress(|p| p.corrupt_found += 1);
                let store = self.store.clone();
                let quarantined =
                    tokio::task::spawn_blocking(move || store.quarantine(&block)).await;
                if let Ok(Err(e)) = quarantined {
                    warn!("{e}");
                }
                let report = cairn_common::proto::ReportBadReplica {
                    block,
                    datanode: self.id(),
                    reason: "its bytes do not hash to its id".into(),
                };
                if let Err(e) = self.namenode_call(report).await {
                    warn!(%block, "cannot report corrupt replica to namenode: {e}");
                }
            }
            // Deleted meanwhile.
            Err(_) => {}
        }
        len
    }

    fn scrub_progress(&self, f: impl FnOnce(&mut cairn_common::proto::ScrubProgress)) {
        f(&mut self.scrub.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Waits until sending `len` more bytes of copies keeps within `repair_bytes_per_sec`.
    async fn pace_copy(&self, len: u32) {
        let Some(rate) = self.config.repair_bytes_per_sec.filter(|r| *r > 0) else {
            return;
        };
        let start = {
            let mut next = self.copy_pace.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + Duration::from_secs_f64(len as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// Sends a verified copy of a block held here down a pipeline of `targets`; each of them
    /// verifies and reports it.
    async fn replicate(
        &self,
        block: BlockId,
        len: u32,
        targets: &[DatanodeAddr],
        token: Option<cairn_common::token::BlockToken>,
    ) -> FsResult<()> {
        let store = self.store.clone();
        let data = tokio::task::spawn_blocking(move || store.read_verified(&block))
            .await
            .map_err(|e| FsError::io(format!("block reader panicked: {e}")))?;
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                // Tell the namenode this replica is not a source; a good copy replaces it.
                let report = cairn_common::proto::ReportBadReplica {
                    block,
                    datanode: self.id(),
                    reason: e.to_string(),
                };
                let _ = self.namenode_call(report).await;
                return Err(e);
            }
        };
        if data.len() as u32 != len {
            return Err(FsError::protocol(format!(
                "block {block} is {} bytes here, the namenode says {len}",
                data.len()
            )));
        }
        let Some((first, rest)) = targets.split_first() else {
            return Ok(());
        };
        self.pace_copy(len).await;
        let header = PutBlock {
            block,
            len,
            downstream: rest.to_vec(),
            sync: true,
            token,
        };
        let conn = self.pool.get(first.addr, Role::Datanode).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| FsError::unavailable(format!("datanode {}: {e}", first.addr)))?;
        write_frame(&mut send, &header.into_service()).await?;
        send.write_chunk(data)
            .await
            .map_err(|e| FsError::unavailable(format!("datanode {}: {e}", first.addr)))?;
        let _ = send.finish();
        let reply = read_frame::<FsResult<PutReply>>(&mut recv).await??;
        if reply.stored_on.len() < targets.len() {
            return Err(FsError::io(format!(
                "block {block} reached {} of {} targets: {:?}",
                reply.stored_on.len(),
                targets.len(),
                reply.failed
            )));
        }
        debug!(%block, targets = targets.len(), "copied");
        Ok(())
    }
}

/// Tells the namenode of the blocks stored, as they are: all stored while one report is
/// under way go in the next. Ends with the datanode. A report that fails is not sent again:
/// the next full block report has the block.
async fn received_loop(
    datanode: std::sync::Weak<Datanode>,
    mut stored: tokio::sync::mpsc::UnboundedReceiver<BlockId>,
) {
    let mut added = Vec::new();
    while stored.recv_many(&mut added, REPORT_PART).await > 0 {
        let Some(datanode) = datanode.upgrade() else {
            return;
        };
        let report = BlockReceived {
            id: datanode.id(),
            added: std::mem::take(&mut added),
            removed: Vec::new(),
        };
        if let Err(e) = datanode.namenode_call(report).await {
            warn!("cannot report stored blocks to the namenode: {e}");
        }
    }
}

/// Keeps this datanode registered: register, report, then heartbeat until the namenode
/// forgets it or cannot be reached, and start over. Cancellation point: every wait.
async fn report_loop(dn: Arc<Datanode>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let interval = match dn.register().await {
            Ok(interval) => {
                backoff = Duration::from_millis(100);
                interval
            }
            Err(e) => {
                warn!(
                    "cannot register with namenode {}: {e}",
                    dn.namenodes.current()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                // Finished work asks for more at once: repair is not paced by heartbeats.
                _ = dn.work_done.notified() => {}
            }
            match dn.heartbeat().await {
                Ok(true) => {}
                Ok(false) => {
                    info!("namenode asked for registration again");
                    break;
                }
                Err(e) => {
                    warn!("heartbeat failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Where the scrubber is, in `<data_dir>/scrub-state`, so that a restarted datanode resumes
/// its pass (or waits out the period after the last one) instead of starting over: at the
/// default pace a pass over a full disk takes days.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct ScrubState {
    /// The last block checked in the pass under way, if one is (hex).
    cursor: Option<String>,
    /// When the last whole pass ended, in Unix seconds.
    last_pass_done: Option<u64>,
}

/// Blocks scrubbed between two saves of the scrubber's state.
const SCRUB_SAVE_EVERY: usize = 64;

impl ScrubState {
    fn path(dn: &Datanode) -> std::path::PathBuf {
        dn.config.data_dir.join("scrub-state")
    }

    /// The saved state; a missing or unreadable file is a fresh start.
    fn load(dn: &Datanode) -> ScrubState {
        let path = ScrubState::path(dn);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).unwrap_or_else(|e| {
                warn!(path = %path.display(), "scrub state unreadable ({e}); starting a new pass");
                ScrubState::default()
            }),
            Err(_) => ScrubState::default(),
        }
    }

    fn save(&self, dn: &Datanode) {
        let path = ScrubState::path(dn);
        let tmp = path.with_extension("tmp");
        let text = toml::to_string(self).unwrap_or_default();
        let res = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            warn!(path = %path.display(), "saving the scrub state failed: {e}");
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Re-hashes every stored block, at most `scrub_bytes_per_sec`, one pass per
/// `scrub_period_secs` at most, resuming where it was after a restart. Cancellation point:
/// every wait.
async fn scrub_loop(dn: Arc<Datanode>, shutdown: CancellationToken) {
    let rate = dn.config.scrub_bytes_per_sec;
    if rate == 0 {
        return;
    }
    let period = Duration::from_secs(dn.config.scrub_period_secs);
    let mut state = ScrubState::load(&dn);
    if state.cursor.is_none() {
        if let Some(done) = state.last_pass_done {
            // The last pass ended before a restart: the next one is due a period after it.
            // (`done` comes from a file: it may say anything.)
            let due = done.saturating_add(period.as_secs());
            let wait = Duration::from_secs(due.saturating_sub(unix_now()));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait.min(period)) => {}
            }
        }
    }
    loop {
        let started = tokio::time::Instant::now();
        let mut blocks = dn.store.list();
        blocks.sort();
        // Resuming: what sorts up to the cursor was checked before the restart.
        let resume = state.cursor.as_deref().and_then(BlockId::from_hex);
        if let Some(cursor) = resume {
            info!(from = %cursor, "resuming the scrub pass");
            blocks.retain(|b| *b > cursor);
        }
        let mut bytes = 0u64;
        for (i, block) in blocks.into_iter().enumerate() {
            if shutdown.is_cancelled() {
                return;
            }
            bytes += dn.check_replica(block, false).await;
            dn.scrub_progress(|p| p.bytes_this_pass = bytes);
            state.cursor = Some(block.to_hex());
            if i % SCRUB_SAVE_EVERY == SCRUB_SAVE_EVERY - 1 {
                state.save(&dn);
            }
            // Paced over the whole pass: a pass of N bytes takes at least N / rate.
            let due = started + Duration::from_secs_f64(bytes as f64 / rate as f64);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        let took = started.elapsed();
        state = ScrubState {
            cursor: None,
            last_pass_done: Some(unix_now()),
        };
        state.save(&dn);
        dn.scrub_progress(|p| {
            p.passes += 1;
            p.bytes_this_pass = 0;
            p.last_pass_bytes = bytes;
            p.last_pass_secs = took.as_secs_f64();
        });
        info!(
            mib = bytes >> 20,
            secs = took.as_secs_f64(),
            "scrub pass done"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(started + period.max(Duration::from_secs(1))) => {}
        }
    }
}

/// Ranges up to this long are read on the task's own thread (see `get_range`).
const INLINE_RANGE_MAX: u32 = 64 << 10;

/// Runs a read of the block store on the blocking pool.
async fn read_blocking<T: Send + 'static>(
    read: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| FsError::io(format!("block reader panicked: {e}")))?
}

/// Answers with `header`, then `body` after it on the stream.
async fn respond_with_body<H: serde::Serialize>(
    ex: &mut Exchange,
    header: H,
    body: impl Into<bytes::Bytes>,
) -> FsResult<()> {
    ex.respond(&Ok(header)).await?;
    ex.send
        .write_chunk(body.into())
        .await
        .map_err(|e| FsError::unavailable(format!("client lost: {e}")))
}

impl Datanode {
    /// Checks the block access token `req` carries (see `cairn_common::token`). Another
    /// datanode may pass on a token given to someone else: a pipeline's next hop.
    fn admit(&self, peer: &Peer, req: &DatanodeRequest) -> FsResult<()> {
        use cairn_common::token::Access;
        let forwarded = peer.role == Role::Datanode;
        let check = |token, access, block| {
            self.tokens
                .check(token, access, block, &peer.cert_serial, forwarded)
        };
        match req {
            DatanodeRequest::PutBlock(r) => check(r.token.as_ref(), Access::Write, Some(&r.block)),
            DatanodeRequest::GetBlock(r) => check(r.token.as_ref(), Access::Read, Some(&r.block)),
            DatanodeRequest::GetRange(r) => check(r.token.as_ref(), Access::Read, Some(&r.block)),
            DatanodeRequest::SyncBlocks(r) => check(r.token.as_ref(), Access::Write, None),
        }
    }
}

impl Service for Datanode {
    type Request = DatanodeRequest;

    fn refuses(&self, peer: &Peer) -> Option<String> {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.contains(&peer.cert_serial).then(|| peer.revoked())
    }

    async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        req: DatanodeRequest,
        ex: &mut Exchange,
    ) -> FsResult<()> {
        if let Err(e) = self.admit(&peer, &req) {
            debug!(peer = %peer.name, addr = %peer.addr, "refused: {e}");
            return ex.respond::<()>(&Err(e)).await;
        }
        self.active_transfers.fetch_add(1, Ordering::Relaxed);
        let res = match req {
            DatanodeRequest::PutBlock(r) => self.put_block(r, ex).await,
            DatanodeRequest::GetBlock(r) => self.get_block(r, ex).await,
            DatanodeRequest::GetRange(r) => self.get_range(r, ex).await,
            DatanodeRequest::SyncBlocks(r) => {
                let store = self.store.clone();
                let synced = tokio::task::spawn_blocking(move || store.sync(&r.blocks))
                    .await
                    .map_err(|e| FsError::io(format!("block sync panicked: {e}")))
                    .and_then(|r| r);
                ex.respond(&synced.map(|missing| SyncReply { missing }))
                    .await
            }
        };
        self.active_transfers.fetch_sub(1, Ordering::Relaxed);
        res
    }
}
