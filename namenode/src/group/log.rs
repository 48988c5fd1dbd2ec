//! The Raft log and vote, kept in the store's `raft_log` and `raft_state` families. A vote
//! counts as cast only once RocksDB has synced it. An entry counts as written once it is in
//! RocksDB's write-ahead log, in the kernel (a crash of the process loses nothing), and is
//! synced as the namenode's durability says: with the write, or within the window; a
//! barrier has a majority of the members sync it (`Group::sync_quorum`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, Vote,
};

use super::{decode, encode, io_error, NodeId, StorageError, TypeConfig};
use crate::store::{Cf, Store};
use crate::walsync::WalSync;

const VOTE: &[u8] = b"vote";
/// The last entry purged from the log (its effect is in the namespace).
const PURGED: &[u8] = b"purged";
const COMMITTED: &[u8] = b"committed";

/// The log's key for the entry at `index`: big-endian, so key order is log order.
fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    /// When entries reach the disk: synced before Raft counts them as written, or told
    /// to the syncer, which syncs them within the namenode's window or at a barrier (see
    /// `crate::walsync`). Votes always are synced.
    wal: Arc<WalSync>,
}

impl LogStore {
    pub fn new(store: Arc<Store>, wal: Arc<WalSync>) -> LogStore {
        LogStore { store, wal }
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let bytes = self
            .store
            .get_raw(Cf::RaftState, key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
        bytes.map(|b| decode("raft state", subject, &b)).transpose()
    }

    fn write_state<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        sync: bool,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let mut txn = self.store.txn();
        txn.put_raw(Cf::RaftState, key.to_vec(), encode(value));
        self.store
            .commit(txn, sync)
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    /// Deletes the entries from `from` up to (without) `to`, synced.
    fn delete(&self, from: u64, to: Option<u64>) -> Result<(), StorageError> {
        let to = match to {
            Some(to) => key(to).to_vec(),
            // Past every 8-byte key.
            None => vec![0xff; 9],
        };
        self.store
            .delete_range(Cf::RaftLog, &key(from), &to, true)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let limit = match range.end_bound() {
            Bound::Included(&i) => i.saturating_sub(start).saturating_add(1),
            Bound::Excluded(&i) => i.saturating_sub(start),
            Bound::Unbounded => u64::MAX,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let records = self
            .store
            .scan_from(Cf::RaftLog, &[], &key(start), limit)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut entries = Vec::with_capacity(records.len());
        for (k, v) in records {
            let index = u64::from_be_bytes(k.as_slice().try_into().unwrap_or([0xff; 8]));
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = decode("log entry", ErrorSubject::LogIndex(index), &v)?;
            if entry.get_log_id().index != index {
                return Err(io_error(
                    ErrorSubject::LogIndex(index),
                    ErrorVerb::Read,
                    format!("the entry kept at {index} is {}", entry.get_log_id()),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId<NodeId>> = self.read_state(PURGED, ErrorSubject::Logs)?;
        let last = self
            .store
            .last(Cf::RaftLog)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last = match last {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = decode("log entry", ErrorSubject::Logs, &v)?;
                Some(*entry.get_log_id())
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_state(VOTE, vote, true, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_state(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        // A hint for a restart (apply what is known committed at once): need not be synced.
        self.write_state(COMMITTED, &committed, false, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self
            .read_state::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<_> = entries
            .into_iter()
            .map(|entry| (key(entry.get_log_id().index).to_vec(), encode(&entry)))
            .collect();
        // Raft counts the entries as this member's once the callback says so.
        let (store, wal) = (self.store.clone(), self.wal.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut txn = store.txn();
            for (k, v) in records {
                txn.put_raw(Cf::RaftLog, k, v);
            }
            store.commit(txn, wal.sync_each_write())?;
            wal.wrote();
            Ok::<_, cairn_common::FsError>(())
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.delete(log_id.index, None)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        // The purge point first: a crash between the two leaves entries below it, which
        // the next purge deletes, never a log that seems to start earlier than it does.
        self.write_state(PURGED, &log_id, true, ErrorSubject::Logs)?;
        self.delete(0, Some(log_id.index.saturating_add(1)))
    }
}
