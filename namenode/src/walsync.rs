//! When the metadata log reaches the disk.
//!
//! A change is acknowledged once it is applied and written to RocksDB's write-ahead log;
//! what it takes to be durable is the [`Durability`]:
//!
//! - `Window`: a syncer thread fsyncs the log at most the window after the first write it
//!   has not synced yet, one fsync for everything written meanwhile (group commit). A crash
//!   of the namenode's process loses nothing (the log is in the kernel); a power loss of its
//!   host loses at most the window. A barrier ([`WalSync::barrier`]: the `fsync` of a file
//!   or a directory, `sync`) does not wait for the window: it has the log synced at once,
//!   joining a sync under way if that covers it.
//! - `Always`: every write is synced before it is acknowledged (HDFS's contract).
//! - `Never`: nothing is synced (throwaway clusters).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_common::{FsError, FsResult};
use tracing::error;

use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Window(Duration),
    Always,
    Never,
}

#[derive(Default)]
struct State {
    /// Writes made (each a group of ops), in order.
    written: u64,
    /// All writes up to this one are synced.
    synced: u64,
    /// A barrier waits: sync without waiting for the window.
    urgent: bool,
    /// The last sync failed, and why: barriers waiting fail.
    failed: Option<String>,
    stop: bool,
    /// Syncs tried.
    syncs: u64,
}

pub struct WalSync {
    durability: Durability,
    state: Mutex<State>,
    /// Wakes the syncer: a write to sync, a barrier, or the stop.
    work: Condvar,
    /// Barriers wait for `synced` to reach their write.
    done: tokio::sync::Notify,
}

impl WalSync {
    /// Starts the syncer thread for `Window` (returned: it ends after [`WalSync::stop`]).
    pub fn start(
        store: Arc<Store>,
        durability: Durability,
    ) -> std::io::Result<(Arc<WalSync>, Option<std::thread::JoinHandle<()>>)> {
        let sync = Arc::new(WalSync {
            durability,
            state: Mutex::default(),
            work: Condvar::new(),
            done: tokio::sync::Notify::new(),
        });
        let syncer = match durability {
            Durability::Window(window) => {
                let syncer = sync.clone();
                Some(
                    std::thread::Builder::new()
                        .name("meta-wal-sync".into())
                        .spawn(move || syncer.run(&store, window))?,
                )
            }
            Durability::Always | Durability::Never => None,
        };
        Ok((sync, syncer))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write is synced by itself before it is acknowledged.
    pub fn sync_each_write(&self) -> bool {
        self.durability == Durability::Always
    }

    /// A write was made (synced by itself if [`WalSync::sync_each_write`]).
    pub fn wrote(&self) {
        let mut state = self.state();
        state.written += 1;
        match self.durability {
            Durability::Window(_) => self.work.notify_one(),
            Durability::Always | Durability::Never => state.synced = state.written,
        }
    }

    /// Returns once every write acknowledged before the call is durable.
    pub async fn barrier(&self) -> FsResult<()> {
        let (target, tried) = {
            let mut state = self.state();
            if state.synced >= state.written {
                return Ok(());
            }
            state.urgent = true;
            self.work.notify_one();
            (state.written, state.syncs)
        };
        loop {
            let done = self.done.notified();
            {
                let state = self.state();
                if state.synced >= target {
                    return Ok(());
                }
                // A sync tried since this barrier came, and failed.
                if let Some(why) = state.failed.as_ref().filter(|_| state.syncs > tried) {
                    return Err(FsError::io(format!("syncing the metadata log: {why}")));
                }
                if state.stop {
                    return Err(FsError::unavailable("the namenode is stopping"));
                }
            }
            done.await;
        }
    }

    /// How many times a sync of the log was tried, by the window or a barrier.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Ends the syncer once it has synced what was written.
    pub fn stop(&self) {
        self.state().stop = true;
        self.work.notify_one();
    }

    fn run(&self, store: &Store, window: Duration) {
        let mut state = self.state();
        loop {
            while state.synced >= state.written && !state.stop {
                state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.synced >= state.written {
                break;
            }
            // The window runs from the first write not synced; a barrier cuts it short.
            let due = Instant::now() + window;
            while !state.urgent && !state.stop {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .work
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            state.urgent = false;
            let target = state.written;
            drop(state);
            let synced = store.sync_wal();
            state = self.state();
            state.syncs += 1;
            match synced {
                Ok(()) => {
                    state.synced = state.synced.max(target);
                    state.failed = None;
                }
                Err(e) => {
                    error!("cannot sync the metadata log: {e}");
                    state.failed = Some(e.to_string());
                    drop(state);
                    self.done.notify_waiters();
                    // Tried again after a pause, or at once by the next barrier.
                    std::thread::sleep(window.max(Duration::from_millis(100)));
                    state = self.state();
                    continue;
                }
            }
            self.done.notify_waiters();
        }
        drop(state);
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, store)
    }

    #[tokio::test]
    async fn a_barrier_syncs_at_once_what_the_window_would_later() {
        let (_dir, store) = store();
        let hour = Duration::from_secs(3600);
        let (wal, syncer) = WalSync::start(store, Durability::Window(hour)).unwrap();
        assert!(!wal.sync_each_write());
        wal.barrier().await.unwrap();
        assert_eq!(wal.syncs(), 0, "nothing written, nothing to sync");
        for _ in 0..3 {
            wal.wrote();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wal.syncs(), 0, "the window is an hour");
        wal.barrier().await.unwrap();
        assert_eq!(wal.syncs(), 1, "one sync for the three writes");
        wal.barrier().await.unwrap();
        assert_eq!(wal.syncs(), 1, "nothing new since");
        wal.wrote();
        wal.stop();
        syncer.unwrap().join().unwrap();
        assert_eq!(
            wal.syncs(),
            2,
            "what was written is synced before the syncer ends"
        );
    }

    #[tokio::test]
    async fn the_window_syncs_by_itself() {
        let (_dir, store) = store();
        let window = Duration::from_millis(10);
        let (wal, syncer) = WalSync::start(store, Durability::Window(window)).unwrap();
        wal.wrote();
        let started = Instant::now();
        while wal.syncs() == 0 {
            assert!(started.elapsed() < Duration::from_secs(30), "never synced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A barrier now finds it synced.
        wal.barrier().await.unwrap();
        assert_eq!(wal.syncs(), 1);
        wal.stop();
        syncer.unwrap().join().unwrap();
    }

    #[tokio::test]
    async fn always_syncs_with_each_write_and_never_never() {
        for durability in [Durability::Always, Durability::Never] {
            let (_dir, store) = store();
            let (wal, syncer) = WalSync::start(store, durability).unwrap();
            assert!(syncer.is_none());
            assert_eq!(wal.sync_each_write(), durability == Durability::Always);
            wal.wrote();
            wal.barrier().await.unwrap();
            assert_eq!(wal.syncs(), 0);
        }
    }
}
