//! openraft's state machine for a Strata group: the last applied entry, the
//! membership, and a small [`Machine`] that gives the entries meaning (a
//! partition's high watermark and producer table, or the cluster metadata).
//!
//! The state is small by design: records stay in the segment log. A snapshot
//! is the machine's few bytes plus openraft's metadata, persisted in
//! `snapshot.bin` and reloaded on open, so a restart re-applies only the
//! entries after the last snapshot (at most `SNAPSHOT_EVERY_ENTRIES`).
//!
//! File ([`checked_file`]): CRC32 (LE) of the rest, meta length u32 (LE),
//! meta JSON, machine bytes.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StoredMembership,
};
use parking_lot::Mutex;
use strata_proto::batch::BatchHeader;

use super::checked_file;
use super::{Applied, Entry, LogId, NodeId, Payload, StorageError, TypeConfig, blocking, io_error};
use crate::log::storage::Storage;

pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// Largest snapshot we agree to read back (the state is small by design).
const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

/// What a group's committed entries mean.
pub trait Machine: Send + Sync + 'static {
    /// Applies one committed record batch (stamped: offsets and Raft id set).
    fn apply(&mut self, log_id: &LogId, header: &BatchHeader, batch: &Bytes) -> Applied;
    /// The machine's whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

struct State<M> {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    machine: M,
    snapshots_built: u64,
}

/// Called (on a blocking thread) after a snapshot from the leader is
/// installed; for the log store to follow it.
pub type AfterInstall = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Inner<M> {
    state: Mutex<State<M>>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    after_install: Mutex<Option<AfterInstall>>,
}

/// A group's state machine. Cheap to clone (the clone is its snapshot builder).
pub struct StateMachine<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for StateMachine<M> {
    fn clone(&self) -> Self {
        StateMachine {
            inner: self.inner.clone(),
        }
    }
}

type SnapshotFile = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::StateMachine, verb, e)
}

impl<M: Machine> StateMachine<M> {
    /// Opens the state machine in `dir`, restoring `machine` from the last
    /// persisted snapshot if there is one (blocking).
    pub fn open(storage: Arc<dyn Storage>, dir: &Path, mut machine: M) -> std::io::Result<Self> {
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        if let Some((meta, data)) = read_snapshot(storage.as_ref(), dir)? {
            machine
                .restore(&data)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            last_applied = meta.last_log_id;
            membership = meta.last_membership;
        }
        Ok(StateMachine {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    last_applied,
                    membership,
                    machine,
                    snapshots_built: 0,
                }),
                storage,
                dir: dir.to_path_buf(),
                after_install: Mutex::new(None),
            }),
        })
    }

    /// Sets what runs after a snapshot from the leader is installed.
    pub fn after_install(&self, hook: AfterInstall) {
        *self.inner.after_install.lock() = Some(hook);
    }

    /// Runs `f` on the machine (for reads of its state by the broker).
    pub fn with<T>(&self, f: impl FnOnce(&M) -> T) -> T {
        f(&self.inner.state.lock().machine)
    }

    /// The last applied entry.
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.state.lock().last_applied
    }

    fn build(&self) -> Result<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>), StorageError> {
        let (meta, data) = {
            let mut state = self.inner.state.lock();
            state.snapshots_built += 1;
            let id = match state.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, state.snapshots_built),
                None => format!("0-0-{}", state.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id: id,
            };
            (meta, state.machine.snapshot())
        };
        write_snapshot(self.inner.storage.as_ref(), &self.inner.dir, &meta, &data)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok((meta, data))
    }
}

fn read_snapshot(storage: &dyn Storage, dir: &Path) -> std::io::Result<Option<SnapshotFile>> {
    let path = dir.join(SNAPSHOT_FILE);
    let Some(bytes) = checked_file::read(storage, &path, MAX_SNAPSHOT_BYTES)? else {
        return Ok(None);
    };
    let Some((meta_len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(checked_file::corrupt(&path, "no meta length".into()));
    };
    let meta_len = u32::from_le_bytes(*meta_len) as usize;
    let Some(meta) = rest.get(..meta_len) else {
        return Err(checked_file::corrupt(
            &path,
            format!("meta length {meta_len} past the end"),
        ));
    };
    let meta =
        serde_json::from_slice(meta).map_err(|e| checked_file::corrupt(&path, e.to_string()))?;
    Ok(Some((meta, rest[meta_len..].to_vec())))
}

fn write_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> std::io::Result<()> {
    let meta = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let mut payload = Vec::with_capacity(4 + meta.len() + data.len());
    payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(data);
    checked_file::write(storage, dir, SNAPSHOT_FILE, &payload)
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachine<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        let (meta, data) = blocking(move || this.build()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let state = self.inner.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut state = self.inner.state.lock();
        let mut out = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(Payload(batch)) => {
                    let header = BatchHeader::parse(&batch).map_err(|e| {
                        io_error(
                            ErrorSubject::Apply(entry.log_id),
                            ErrorVerb::Read,
                            format!("entry {}: {e}", entry.log_id),
                        )
                    })?;
                    state.machine.apply(&entry.log_id, &header, &batch)
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    Applied::default()
                }
            };
            out.push(applied);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        {
            let mut state = self.inner.state.lock();
            state
                .machine
                .restore(&data)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        let inner = self.inner.clone();
        let meta = meta.clone();
        blocking(move || {
            write_snapshot(inner.storage.as_ref(), &inner.dir, &meta, &data)
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let hook = inner.after_install.lock().clone();
            match hook {
                Some(hook) => hook().map_err(|e| sm_err(ErrorVerb::Write, e)),
                None => Ok(()),
            }
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.inner.clone();
        let file = blocking(move || {
            read_snapshot(inner.storage.as_ref(), &inner.dir)
                .map_err(|e| sm_err(ErrorVerb::Read, e))
        })
        .await?;
        Ok(file.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
