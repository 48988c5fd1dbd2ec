//! The trash's emptier: removes for good what has been in the trash for the retention
//! period, and the oldest first while the trash holds more than its bound
//! ([`trash::budget`]). A pass reads the trash a page at a time into a [`trash::Census`]
//! (bytes by removal second, no entry list in memory), then removes what is due a page at
//! a time, many removals in flight so that the metadata writer commits them in groups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_common::attr::{Caller, Timestamp};
use cairn_common::{FsError, Ino};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::MetaEngine;
use crate::ops::MetaOpKind;
use crate::{trash, Namenode};

/// Removes for good the files that have been in the trash for the retention period, and
/// the oldest first while the trash holds more than its bound (see [`trash::budget`]).
pub(crate) async fn empty_trash(nn: Arc<Namenode>, shutdown: CancellationToken) {
    let retention = nn.config.trash_retention_secs;
    if retention == 0 {
        return;
    }
    // A pass reads the whole trash: often enough that nothing stays much past its time, at
    // most once a minute; at once when a file moved in may have taken the trash over its
    // bound or a write found no space (at most once a second); and every few seconds while
    // the datanodes' free space is short, which costs nothing to look at.
    let calm = Duration::from_secs((retention / 4).clamp(1, 60));
    let mut freeing = Freeing::default();
    let mut last = Instant::now();
    loop {
        // With no datanode heard of yet, the bound is not known: look again once one is.
        let bounded = nn.space().0 > 0;
        empty_trash_once(&nn, retention, &mut freeing).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TRASH_SHORT_EVERY) => {}
                _ = async {
                    nn.trash_wake.notified().await;
                    tokio::time::sleep(TRASH_PASS_GAP).await;
                } => break,
            }
            if last.elapsed() >= calm
                || nn.space_short(&mut freeing)
                || !bounded && nn.space().0 > 0
            {
                break;
            }
        }
        last = Instant::now();
    }
}

impl Namenode {
    /// The live datanodes' capacity and free bytes, as their heartbeats last said.
    fn space(&self) -> (u64, u64) {
        self.blocks
            .statuses()
            .iter()
            .filter(|s| s.alive)
            .fold((0, 0), |(c, a), s| (c + s.capacity, a + s.available))
    }

    /// Whether the datanodes' free space, with what the trash's removals will give back,
    /// is under `trash_keep_free_percent` of their capacity.
    fn space_short(&self, freeing: &mut Freeing) -> bool {
        let (capacity, available) = self.space();
        let soon_free = available.saturating_add(freeing.bytes(self.collected_after()));
        capacity > 0
            && u128::from(soon_free) * 100
                < u128::from(capacity) * u128::from(self.config.trash_keep_free_percent)
    }

    /// How long after their files go removed blocks show as free space: the collector's
    /// grace, then a repair pass and a heartbeat.
    fn collected_after(&self) -> Duration {
        self.config.gc_grace() + Duration::from_secs(60)
    }
}

/// Bytes the emptier removed that their blocks' collection has not given back yet, so that
/// space short for a while is not taken for more to give up.
#[derive(Default)]
struct Freeing(std::collections::VecDeque<(Instant, u64)>);

impl Freeing {
    fn bytes(&mut self, collected_after: Duration) -> u64 {
        while self
            .0
            .front()
            .is_some_and(|(at, _)| at.elapsed() > collected_after)
        {
            self.0.pop_front();
        }
        self.0.iter().map(|(_, b)| b).sum()
    }
}

/// One pass of the emptier.
async fn empty_trash_once(nn: &Namenode, retention: u64, freeing: &mut Freeing) {
    if nn.engine.group().leading().is_err() {
        return;
    }
    let census = match nn.engine.trash_census() {
        Ok(c) => c,
        Err(e) => {
            warn!("reading the trash failed: {e}");
            return;
        }
    };
    let (capacity, available) = nn.space();
    let pending = freeing.bytes(nn.collected_after());
    let (max, keep) = (
        nn.config.trash_max_percent,
        nn.config.trash_keep_free_percent,
    );
    let budget = trash::budget(max, keep, capacity, available, pending, census.bytes);
    // Past its bound the trash goes down to 90% of it, so that every file removed after
    // does not bring the emptier back.
    let target = if census.bytes > budget {
        budget - budget / 10
    } else {
        budget
    };
    tracing::debug!(
        trash = census.bytes,
        files = census.files,
        budget,
        capacity,
        available,
        pending,
        "trash pass"
    );
    let now = Timestamp::now().secs;
    let expired = now.saturating_sub(retention as i64);
    let over = census.oldest_to_free(target);
    let cutoff = over.map_or(expired, |at| at.max(expired));
    if over.is_some_and(|at| at > expired) {
        info!(
            trash_mib = census.bytes >> 20,
            files = census.files,
            budget_mib = budget >> 20,
            free_mib = available >> 20,
            "the trash is over its bound: removing for good the files removed longest ago"
        );
    }
    let removing = census.bytes_through(cutoff);
    nn.trash_gauge.set(census.bytes - removing, budget);
    if removing == 0 {
        return;
    }
    freeing.0.push_back((Instant::now(), removing));
    let removed = purge(&nn.engine, cutoff, &nn.stopping).await;
    tracing::debug!(removed, "trash pass removed files");
}

/// Removes for good every file in the trash removed at or before second `through`; how
/// many it removed.
pub async fn purge(engine: &MetaEngine, through: i64, stop: &CancellationToken) -> usize {
    let mut removed = 0;
    // A page at a time: a trash of millions of files is never held in memory whole.
    let mut after: Option<(Ino, Vec<u8>)> = None;
    loop {
        let at = after.as_ref().map(|(dir, name)| (*dir, name.as_slice()));
        let (page, more) = match engine.trash_page(None, at, TRASH_EMPTY_PAGE) {
            Ok(page) => page,
            Err(e) => {
                warn!("listing the trash failed: {e}");
                return removed;
            }
        };
        after = page.last().map(|(dir, name, _)| (*dir, name.clone()));
        let due = page
            .into_iter()
            .filter(|(_, name, _)| trash::removed_at(name).is_some_and(|at| at <= through));
        removed += futures::stream::iter(due)
            .map(|(dir, name, _)| async move {
                let op = MetaOpKind::Unlink(cairn_common::proto::Unlink {
                    parent: dir,
                    name: name.clone(),
                });
                match engine.submit(Caller::ROOT, op).await {
                    Ok(_) => 1,
                    Err(FsError::NotFound) => 0,
                    Err(e) => {
                        warn!(
                            entry = %String::from_utf8_lossy(&name),
                            "removing a file from the trash for good failed: {e}"
                        );
                        0
                    }
                }
            })
            .buffer_unordered(PURGE_IN_FLIGHT)
            .fold(0, |n, one| async move { n + one })
            .await;
        if !more || stop.is_cancelled() {
            return removed;
        }
    }
}

/// Removals the emptier has in flight: the metadata writer commits them in groups.
const PURGE_IN_FLIGHT: usize = 64;

/// Trash entries the emptier reads at a time.
const TRASH_EMPTY_PAGE: usize = 10_000;

/// The least time between two passes of the emptier.
const TRASH_PASS_GAP: Duration = Duration::from_secs(1);

/// How often the emptier looks while the datanodes' free space is short.
const TRASH_SHORT_EVERY: Duration = Duration::from_secs(5);
