//! The namespace as the group's state machine. An entry's ops and the entry's place in the
//! log (`meta/raft_applied`) are written in one batch, so after a crash the namespace is
//! exactly as of some entry, and Raft applies the rest again from the log.
//!
//! A snapshot is the namespace's families read from one consistent RocksDB view, written
//! to `current.snap` in the snapshot directory: a header with Raft's description of it,
//! the records, and the BLAKE3 hash of everything before. A member installing one first
//! copies it there, checking the hash and the description, then marks the store as
//! installing, replaces the families' records, and clears the mark: one cut short by a
//! crash is installed again from the file when the member starts.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StoredMembership,
};
use tokio::io::AsyncSeekExt;
use tracing::{info, warn};

use super::net::ClusterId;
use super::{decode, encode, io_error, Answer, Applied, Member, NodeId, StorageError, TypeConfig};
use crate::keys::{META_CLUSTER_ID, META_RAFT_APPLIED, META_RAFT_MEMBERSHIP};
use crate::ops::{self, MetaOp};
use crate::store::{Cf, Store, Txn, NAMESPACE_CFS};

/// The first bytes of a snapshot file.
const MAGIC: &[u8; 16] = b"cairn-snapshot-1";
/// Where a family's number would be: no more records.
const END: u8 = 0xff;
/// The largest key or value a snapshot may hold (RocksDB's values here are far smaller).
const MAX_FIELD: u32 = 64 << 20;
/// How many bytes of records go to the store in one write while installing.
const INSTALL_BATCH: usize = 4 << 20;
/// `raft_state` key: a snapshot is being installed (its description).
const INSTALLING: &[u8] = b"installing";
const CURRENT: &str = "current.snap";

type Meta = SnapshotMeta<NodeId, Member>;
type Membership = StoredMembership<NodeId, Member>;
/// One record of a snapshot: its family, key and value.
type Record = (Cf, Vec<u8>, Vec<u8>);

/// Applies `ops` in order within `txn`, each all or nothing: one that fails leaves no
/// trace but its error.
pub fn apply_ops(txn: &mut Txn<'_>, ops: &[MetaOp]) -> Vec<Applied> {
    ops.iter()
        .map(|op| {
            txn.savepoint();
            let reply = ops::apply(txn, op);
            if reply.is_err() {
                txn.rollback();
                return Applied {
                    reply,
                    changes: Vec::new(),
                    removed: Vec::new(),
                    orphaned: Vec::new(),
                };
            }
            Applied {
                reply,
                changes: txn.changes(),
                removed: txn.inodes_removed(),
                orphaned: txn.take_orphans(),
            }
        })
        .collect()
}

pub struct Machine {
    store: Arc<Store>,
    /// Where snapshots are kept.
    dir: PathBuf,
    /// The namespace's cluster id, learned from a snapshot by a member that joins.
    cluster: Arc<ClusterId>,
}

impl Machine {
    /// The state machine over `store`, keeping snapshots in `dir`. An installation cut
    /// short is finished first.
    pub fn open(store: Arc<Store>, dir: &Path, cluster: Arc<ClusterId>) -> anyhow::Result<Machine> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        let machine = Machine {
            store,
            dir: dir.to_path_buf(),
            cluster,
        };
        if machine.store.get_raw(Cf::RaftState, INSTALLING)?.is_some() {
            warn!("the installation of a snapshot was cut short: installing it again");
            let meta = read_header(&mut BufReader::new(File::open(machine.current())?))?;
            machine.load(&meta)?;
        }
        Ok(machine)
    }

    fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        let read = |key: &[u8]| {
            self.store
                .get_raw(Cf::Meta, key)
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        let applied = match read(META_RAFT_APPLIED)? {
            Some(b) => decode("applied log id", ErrorSubject::StateMachine, &b)?,
            None => None,
        };
        let membership = match read(META_RAFT_MEMBERSHIP)? {
            Some(b) => decode("membership", ErrorSubject::StateMachine, &b)?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    /// Replaces the namespace with the records of the current snapshot, described by
    /// `meta` (checked when it was received).
    fn load(&self, meta: &Meta) -> anyhow::Result<()> {
        let mut txn = self.store.txn();
        txn.put_raw(Cf::RaftState, INSTALLING.to_vec(), encode(meta));
        self.store.commit(txn, true)?;
        for cf in NAMESPACE_CFS {
            self.store.clear(cf)?;
        }
        let mut file = BufReader::new(File::open(self.current())?);
        read_header(&mut file)?;
        let mut txn = self.store.txn();
        let (mut pending, mut records) = (0, 0u64);
        while let Some((cf, key, value)) = read_record(&mut file)? {
            pending += key.len() + value.len();
            txn.put_raw(cf, key, value);
            records += 1;
            if pending >= INSTALL_BATCH {
                self.store.commit(txn, false)?;
                txn = self.store.txn();
                pending = 0;
            }
        }
        txn.delete(Cf::RaftState, INSTALLING.to_vec());
        self.store.commit(txn, true)?;
        if let Some(id) = self.store.meta_u64(META_CLUSTER_ID)? {
            self.cluster.set(id);
        }
        info!(snapshot = %meta.snapshot_id, records, "snapshot installed");
        Ok(())
    }

    /// Writes a snapshot of the namespace as it is now to the current snapshot's place.
    fn build(&self) -> anyhow::Result<Meta> {
        let view = self.store.snapshot();
        let applied: Option<LogId<NodeId>> = match view.get_raw(Cf::Meta, META_RAFT_APPLIED)? {
            Some(b) => crate::store::decode("applied log id", &b)?,
            None => None,
        };
        let membership: Membership = match view.get_raw(Cf::Meta, META_RAFT_MEMBERSHIP)? {
            Some(b) => crate::store::decode("membership", &b)?,
            None => Membership::default(),
        };
        let id = match &applied {
            Some(at) => format!("{}-{}-{:x}", at.leader_id, at.index, rand::random::<u32>()),
            None => format!("empty-{:x}", rand::random::<u32>()),
        };
        let meta = Meta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: id,
        };
        let building = self.dir.join("building.tmp");
        let mut out = Hashing::new(BufWriter::new(File::create(&building)?));
        write_header(&mut out, &meta)?;
        for (n, cf) in NAMESPACE_CFS.into_iter().enumerate() {
            view.for_each(cf, |k, v| {
                write_record(&mut out, n as u8, k, v)
                    .map_err(|e| cairn_common::FsError::io(format!("writing a snapshot: {e}")))
            })?;
        }
        out.write_all(&[END])?;
        let hash = out.hasher.finalize();
        let mut file = out.inner;
        file.write_all(hash.as_bytes())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&building, self.current())?;
        File::open(&self.dir)?.sync_all()?;
        Ok(meta)
    }
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_header(out: &mut impl Write, meta: &Meta) -> std::io::Result<()> {
    let meta = encode(meta);
    out.write_all(MAGIC)?;
    out.write_all(&(meta.len() as u32).to_be_bytes())?;
    out.write_all(&meta)
}

fn write_record(out: &mut impl Write, cf: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[cf])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

fn read_field(input: &mut impl Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut len = [0; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    anyhow::ensure!(len <= MAX_FIELD, "a snapshot's {what} claims {len} bytes");
    let mut field = vec![0; len as usize];
    input.read_exact(&mut field)?;
    Ok(field)
}

fn read_header(input: &mut impl Read) -> anyhow::Result<Meta> {
    let mut magic = [0; MAGIC.len()];
    input.read_exact(&mut magic)?;
    anyhow::ensure!(
        &magic == MAGIC,
        "not a Cairn snapshot (or of another version)"
    );
    let meta = read_field(input, "description")?;
    Ok(crate::store::decode("snapshot description", &meta)?)
}

/// The next record, or `None` at the end of the records.
fn read_record(input: &mut impl Read) -> anyhow::Result<Option<Record>> {
    let mut cf = [0];
    input.read_exact(&mut cf)?;
    if cf[0] == END {
        return Ok(None);
    }
    let Some(&family) = NAMESPACE_CFS.get(cf[0] as usize) else {
        anyhow::bail!(
            "a snapshot's record names family {}, which it cannot",
            cf[0]
        );
    };
    let key = read_field(input, "key")?;
    let value = read_field(input, "value")?;
    Ok(Some((family, key, value)))
}

/// Checks a snapshot's bytes, whole, against its hash and its description against
/// `meta`, reading all of it from `input` and copying it to `out`.
fn check_copy(input: &mut impl Read, out: &mut impl Write, meta: &Meta) -> anyhow::Result<()> {
    let mut hashing = HashingReader {
        inner: input,
        hasher: blake3::Hasher::new(),
        copy: out,
    };
    let described = read_header(&mut hashing)?;
    anyhow::ensure!(
        described.last_log_id == meta.last_log_id
            && described.last_membership == meta.last_membership,
        "the snapshot holds {}, not the {} it was sent as",
        described,
        meta
    );
    while read_record(&mut hashing)?.is_some() {}
    let computed = hashing.hasher.finalize();
    let mut stated = [0; 32];
    hashing.inner.read_exact(&mut stated)?;
    anyhow::ensure!(
        computed == blake3::Hash::from(stated),
        "the snapshot's bytes do not match its checksum"
    );
    hashing.copy.write_all(&stated)?;
    let mut rest = [0];
    anyhow::ensure!(
        hashing.inner.read(&mut rest)? == 0,
        "the snapshot goes on past its checksum"
    );
    Ok(())
}

/// A reader that hashes what it reads and copies it to `copy`.
struct HashingReader<'a, R, W> {
    inner: &'a mut R,
    hasher: blake3::Hasher,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for HashingReader<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Builds snapshots for Raft (a handle on the machine's store).
pub struct Builder {
    machine: Arc<Machine>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let machine = self.machine.clone();
        let subject = || ErrorSubject::Snapshot(None);
        let meta = tokio::task::spawn_blocking(move || machine.build())
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?
            .map_err(|e| io_error(subject(), ErrorVerb::Write, format!("{e:#}")))?;
        info!(snapshot = %meta.snapshot_id, "snapshot built");
        let file = tokio::fs::File::open(self.machine.current())
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// The state machine as Raft drives it.
pub struct StateMachine {
    machine: Arc<Machine>,
}

impl StateMachine {
    pub fn new(machine: Machine) -> StateMachine {
        StateMachine {
            machine: Arc::new(machine),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        self.machine.applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = &self.machine.store;
        let mut txn = store.txn();
        let mut answers = Vec::new();
        for entry in entries {
            let answer = match entry.payload {
                EntryPayload::Blank => Answer::default(),
                EntryPayload::Normal(proposal) => Answer {
                    applied: apply_ops(&mut txn, &proposal.ops),
                },
                EntryPayload::Membership(membership) => {
                    let stored = Membership::new(Some(entry.log_id), membership);
                    txn.put_raw(Cf::Meta, META_RAFT_MEMBERSHIP.to_vec(), encode(&stored));
                    Answer::default()
                }
            };
            txn.put_raw(
                Cf::Meta,
                META_RAFT_APPLIED.to_vec(),
                encode(&Some(entry.log_id)),
            );
            answers.push(answer);
        }
        // Not synced: the log is, and what this write loses a restart applies again.
        store
            .commit(txn, false)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            machine: self.machine.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .machine
            .dir
            .join(format!("incoming-{:x}.tmp", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        // Nothing needs the name: the file goes when its handle is dropped.
        let _ = tokio::fs::remove_file(&path).await;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        let input = snapshot.into_std().await;
        let machine = self.machine.clone();
        let meta = meta.clone();
        let installed = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let received = machine.dir.join("received.tmp");
            let mut out = BufWriter::new(File::create(&received)?);
            let mut input = BufReader::new(input);
            if let Err(e) = check_copy(&mut input, &mut out, &meta) {
                let _ = fs::remove_file(&received);
                return Err(e.context(format!("snapshot {} refused", meta.snapshot_id)));
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&received, machine.current())?;
            File::open(&machine.dir)?.sync_all()?;
            machine.load(&meta)
        })
        .await
        .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        installed.map_err(|e| {
            warn!(error = format!("{e:#}"), "installing a snapshot failed");
            io_error(subject(), ErrorVerb::Write, format!("{e:#}"))
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.machine.current();
        let subject = || ErrorSubject::Snapshot(None);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(subject(), ErrorVerb::Read, e)),
        };
        let meta = read_header(&mut BufReader::new(&file))
            .map_err(|e| io_error(subject(), ErrorVerb::Read, format!("{e:#}")))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
