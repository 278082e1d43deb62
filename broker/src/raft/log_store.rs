//! openraft's log storage on top of the segmented log: the segment log *is*
//! the Raft log (DESIGN.md §6).
//!
//! A normal entry is one record batch, written once into the partition's
//! segment log with its Raft term and index stamped in the batch header (the
//! CRC covers them). Blank and membership entries live in the group's
//! [`StateFile`]. Reading entry `i` finds the batch whose header says index
//! `i`: recent entries through an in-memory [`Tail`] (which also keeps the
//! bytes of the newest, so replication and apply rarely read the segments),
//! older ones by a binary search over offsets (Raft indexes grow with
//! offsets), a few header reads instead of a scan.
//!
//! Durability: data entries are written to the page cache by `append` and the
//! caller is told they are durable only after a flusher task has fsynced them;
//! flushes are shared by every append waiting at the time (group commit).
//! Control entries and the vote are durable when their write returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, Vote,
};
use parking_lot::{Mutex, RwLock};
use strata_proto::batch::{BatchError, BatchHeader, Batches, verify, verify_and_stamp};
use strata_proto::grpc_wire::own_frame;
use tokio::sync::{mpsc, watch};

use super::state_file::{ControlEntry, RaftState, StateFile};
use super::tail::{TAIL_IDLE_TRIM, Tail, TailEntry};
use super::{Entry, LogId, NodeId, Payload, StorageError, TypeConfig, blocking, io_error};
use crate::log::Log;
use crate::log::storage::Storage;

/// Most bytes of entries sent in one AppendEntries request (at least one
/// entry is always sent, however large).
pub const MAX_REPLICATION_BYTES: usize = 8 * 1024 * 1024;

/// Bytes read from the segment log per step when collecting entries.
const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// The log state blob passed to the segment log's checkpoints: the Raft layer
/// keeps its state in the state file and the state machine snapshot.
const NO_LOG_STATE: &[u8] = &[];

#[derive(Debug, Clone, Copy)]
struct DataEntry {
    index: u64,
    term: u64,
    base_offset: u64,
}

struct Inner {
    log: Arc<Log>,
    state_file: StateFile,
    state: Mutex<RaftState>,
    /// Data entries appended since open (and the newest before), oldest
    /// first, with the bytes of the newest.
    tail: Mutex<Tail>,
    flush: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// Held shared by a flush and exclusively by a truncation: a flush that
    /// read the log end before a cut must not report it durable after.
    cut: Arc<RwLock<()>>,
    /// Where the state machine says the log ends (a partition's high
    /// watermark), when the group may install snapshots past this log.
    machine_end: Mutex<Option<watch::Receiver<u64>>>,
    /// Held while entries are written and while the log restarts behind a
    /// snapshot, so the two never interleave.
    writing: Mutex<()>,
}

/// One group's Raft log. Cheap to clone (the clone is also its log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("log", &self.inner.log)
            .finish_non_exhaustive()
    }
}

impl DataEntry {
    fn into_tail(self) -> TailEntry {
        TailEntry {
            index: self.index,
            term: self.term,
            base_offset: self.base_offset,
            bytes: None,
        }
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl LogStore {
    /// Opens the Raft log of the group whose segment log is `log` and whose
    /// state file lives in `dir` (blocking). Must be called inside a tokio
    /// runtime: it starts the group's flusher task.
    pub fn open(log: Arc<Log>, storage: Arc<dyn Storage>, dir: &Path) -> std::io::Result<LogStore> {
        let state_file = StateFile::new(storage, dir);
        let mut state = state_file.load()?;
        let last_data = last_data_entry(&log).map_err(std::io::Error::other)?;
        if drop_control_after_hole(&mut state, last_data.map(|e| e.index)) {
            state_file.store(&state)?;
        }
        let (flush, rx) = mpsc::unbounded_channel();
        let cut = Arc::new(RwLock::new(()));
        tokio::spawn(flusher(log.clone(), cut.clone(), rx));
        let tail = Tail::anchored(last_data.map(DataEntry::into_tail));
        Ok(LogStore {
            inner: Arc::new(Inner {
                log,
                state_file,
                state: Mutex::new(state),
                tail: Mutex::new(tail),
                flush,
                cut,
                machine_end: Mutex::new(None),
                writing: Mutex::new(()),
            }),
        })
    }

    /// Lets the tail give back its memory if the group has been idle (see
    /// [`TAIL_IDLE_TRIM`]); called by the partition's maintenance pass.
    pub fn trim_idle_tail(&self) {
        self.inner.tail.lock().trim_if_idle(TAIL_IDLE_TRIM);
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.inner.log
    }

    /// Lets the log follow a snapshot installed past its end: `machine_end`
    /// is where the state machine says the log ends (the partition's high
    /// watermark, which a snapshot restores). Groups whose leaders purge
    /// (retention) need it; without it such a gap is an error.
    /// Blocking: restarts the log at once if a snapshot installed before a
    /// crash already left it behind.
    pub fn follow_snapshots(&self, machine_end: watch::Receiver<u64>) -> std::io::Result<()> {
        *self.inner.machine_end.lock() = Some(machine_end);
        self.restart_if_behind().map_err(std::io::Error::other)
    }

    /// Blocking: restarts the log where the state machine says it ends if a
    /// snapshot newer than all of it was installed. Run when the state
    /// machine installs one, and when openraft purges after it (whichever
    /// comes second finds both done).
    pub fn restart_if_behind(&self) -> Result<(), String> {
        let inner = &self.inner;
        let _writing = inner.writing.lock();
        let _no_flush = inner.cut.write();
        inner
            .restart_behind_snapshot(inner.machine_end())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Records below this offset belong only to entries Raft has purged, so
    /// retention may delete segments ending at or below it (blocking).
    pub fn purged_offset(&self) -> Result<u64, StorageError> {
        let purged = self.inner.state.lock().purged;
        let Some(purged) = purged else {
            return Ok(self.inner.log.start_offset());
        };
        Ok(self
            .inner
            .data_offset_from(purged.index + 1)?
            .unwrap_or_else(|| self.inner.log.end_offset()))
    }

    /// The Raft index of the entry holding the record just below `offset`
    /// (blocking); `None` at or below the log start.
    pub fn index_before(&self, offset: u64) -> Result<Option<u64>, StorageError> {
        let log = &self.inner.log;
        if offset <= log.start_offset() || offset > log.end_offset() {
            return Ok(None);
        }
        Ok(Some(
            header_at(log, offset - 1).map_err(read_err)?.raft_index,
        ))
    }
}

/// The newest data entry in the log, read from its last batch header.
fn last_data_entry(log: &Log) -> Result<Option<DataEntry>, String> {
    let end = log.end_offset();
    if end == log.start_offset() {
        return Ok(None);
    }
    let h = header_at(log, end - 1)?;
    Ok(Some(DataEntry {
        index: h.raft_index,
        term: h.raft_term,
        base_offset: h.base_offset,
    }))
}

fn header_at(log: &Log, offset: u64) -> Result<BatchHeader, String> {
    let chunk = log
        .read(offset, 1, log.end_offset())
        .map_err(|e| e.to_string())?;
    BatchHeader::parse(&chunk.bytes).map_err(|e| format!("batch at offset {offset}: {e}"))
}

/// After a crash the state file (synced at once) may hold control entries
/// newer than data entries that never reached the disk. The Raft log must be
/// contiguous, so control entries past the first hole go: none of them was
/// ever reported durable (the data before them was not). Returns whether
/// anything was dropped.
fn drop_control_after_hole(state: &mut RaftState, last_data: Option<u64>) -> bool {
    // Purged entries count as present: after an installed snapshot the data
    // before it is gone on purpose, not lost.
    let last_data = last_data.max(state.purged.map(|p| p.index));
    let above = last_data.map_or(0, |d| d + 1);
    let mut keys = state.control.range(above..).map(|(&i, _)| i);
    let Some(first) = keys.next() else {
        return false;
    };
    // With data, the entry after the last data entry must come next; with
    // none, the control entries only need to be contiguous among themselves.
    let start = last_data.map_or(first, |d| d + 1);
    let cut = std::iter::once(first)
        .chain(keys)
        .zip(start..)
        .find(|(index, expected)| index != expected)
        .map(|(index, _)| index);
    let Some(cut) = cut else {
        return false;
    };
    let dropped = state.control.split_off(&cut);
    tracing::warn!(
        entries = dropped.len(),
        from = cut,
        "dropped Raft control entries past data lost in a crash"
    );
    true
}

async fn flusher(
    log: Arc<Log>,
    cut: Arc<RwLock<()>>,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let (log, cut) = (log.clone(), cut.clone());
        let flushed = move || {
            let _no_cut = cut.read();
            let end = log.flush()?;
            // Keep restarts cheap: recovery scans only what the latest
            // checkpoint does not cover. The Raft state lives elsewhere, so
            // the checkpoint carries none.
            if log.checkpoint_due() {
                log.checkpoint(NO_LOG_STATE)?;
            }
            Ok::<_, crate::log::LogError>(end)
        };
        let result = match tokio::task::spawn_blocking(flushed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        for waiter in waiting {
            // A failed fsync poisons the log: every waiter hears it, and so
            // does every later append.
            waiter.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

impl Inner {
    /// Writes `entries` (blocking); returns whether any data needs a flush.
    ///
    /// A data entry reaches the segment log only once every control entry
    /// before it is in the state file. The other order left holes: the data
    /// survives a process crash in the page cache, the control entry (whose
    /// write failed on a full disk, or never ran) does not, and openraft then
    /// refuses to start the group, for good. A control entry durable before
    /// the data ahead of it is not a hole openraft sees: open drops it
    /// ([`drop_control_after_hole`]).
    fn write(&self, entries: Vec<Entry>) -> Result<bool, StorageError> {
        let _writing = self.writing.lock();
        let mut data = false;
        let mut control = Vec::new();
        for entry in entries {
            let id = entry.log_id;
            match entry.payload {
                EntryPayload::Normal(Payload(batch)) => {
                    self.store_control(&mut control)?;
                    self.write_batch(id, &batch)?;
                    data = true;
                }
                EntryPayload::Blank => control.push(ControlEntry {
                    log_id: id,
                    membership: None,
                }),
                EntryPayload::Membership(m) => control.push(ControlEntry {
                    log_id: id,
                    membership: Some(m),
                }),
            }
        }
        self.store_control(&mut control)?;
        Ok(data)
    }

    /// Makes `pending` control entries durable, then visible, and empties it.
    fn store_control(&self, pending: &mut Vec<ControlEntry>) -> Result<(), StorageError> {
        if pending.is_empty() {
            return Ok(());
        }
        let entries = || pending.iter().map(|c| (c.log_id.index, c.clone()));
        let mut next = self.state.lock().clone();
        next.control.extend(entries());
        self.state_file.store(&next).map_err(write_err)?;
        self.state.lock().control.extend(entries());
        pending.clear();
        Ok(())
    }

    fn write_batch(&self, id: LogId, batch: &Bytes) -> Result<(), StorageError> {
        let mut end = self.log.end_offset();
        let header =
            BatchHeader::parse(batch).map_err(|e| write_err(format!("entry {id}: {e}")))?;
        // A replicated batch arrives stamped by the leader: it must land at the
        // same offset here, or replicas would disagree about offsets.
        let stamped = header.raft_index == id.index && header.raft_index != 0;
        // Where the log must continue: the leader's stamp, or (on a leader)
        // where the state machine says the log ends.
        let expected = match stamped {
            true => header.base_offset,
            false => self.machine_end(),
        };
        if expected > end {
            let _no_flush = self.cut.write();
            if self.restart_behind_snapshot(expected)? {
                end = expected;
            }
        }
        if stamped && header.base_offset != end {
            return Err(write_err(format!(
                "entry {id} was stamped with offset {} by the leader but this log ends at {end}",
                header.base_offset
            )));
        }
        let entry_err = |e: BatchError| write_err(format!("entry {id}: {e}"));
        // A follower's entry arrives as the leader stored it, stamped with
        // this offset and entry id: it is checked and written as it came. A
        // leader's comes as its producer sent it and is stamped in a copy.
        let bytes = if stamped && header.raft_term == id.leader_id.term {
            verify(batch).map_err(entry_err)?;
            // A large batch arrived as an HTTP/2 frame of its own and is kept
            // as it is; a small one shares its frame with other entries,
            // which the tail would keep alive with it.
            if own_frame(batch.len()) {
                batch.clone()
            } else {
                Bytes::copy_from_slice(batch)
            }
        } else {
            let mut bytes = batch.to_vec();
            verify_and_stamp(&mut bytes, end, id.leader_id.term, id.index).map_err(entry_err)?;
            Bytes::from(bytes)
        };
        let appended = self.log.append(&bytes).map_err(write_err)?;
        // The bytes exactly as stored: stamped above with the offset the log
        // gave them.
        debug_assert_eq!(appended.base_offset, end);
        self.tail.lock().push(TailEntry {
            index: id.index,
            term: id.leader_id.term,
            base_offset: appended.base_offset,
            bytes: Some(bytes),
        });
        Ok(())
    }

    /// After a snapshot newer than anything in this log was installed (the
    /// leader had purged what this replica lacked), restarts the log where the
    /// snapshot ends, so offsets stay those of the other replicas: every
    /// replica's log then starts where retention cut it. `upto` is the purge
    /// point openraft sets to the snapshot's last entry.
    fn restart_after_snapshot(&self, upto: LogId) -> Result<(), StorageError> {
        let end = self.machine_end();
        let _writing = self.writing.lock();
        let _no_flush = self.cut.write();
        if end > self.log.end_offset() && self.restart_behind_snapshot(end)? {
            tracing::debug!(snapshot = %upto, "restarted at the purge after a snapshot");
        }
        Ok(())
    }

    /// The id of the newest data entry: from the tail, else from the last
    /// batch header in the log (one read).
    fn newest_data_id(&self) -> Result<Option<LogId>, StorageError> {
        let cached = self.tail.lock().last().map(|e| log_id(e.term, e.index));
        match cached {
            Some(id) => Ok(Some(id)),
            None => Ok(last_data_entry(&self.log)
                .map_err(read_err)?
                .map(|e| log_id(e.term, e.index))),
        }
    }

    /// Where the state machine says the log ends (0 if it does not say).
    fn machine_end(&self) -> u64 {
        self.machine_end
            .lock()
            .as_ref()
            .map_or(0, |rx| *rx.borrow())
    }

    /// If everything this log holds is purged (a snapshot newer than all of
    /// it was installed) and the log ends before `end`, restarts it empty at
    /// `end`, so its offsets stay those of the other replicas. Returns
    /// whether it did. Callers exclude concurrent flushes and appends.
    fn restart_behind_snapshot(&self, end: u64) -> Result<bool, StorageError> {
        if end <= self.log.end_offset() {
            return Ok(false);
        }
        let Some(purged) = self.state.lock().purged else {
            return Ok(false);
        };
        if self
            .newest_data_id()?
            .is_some_and(|id| id.index > purged.index)
        {
            return Ok(false);
        }
        self.log.reset_to(end, NO_LOG_STATE).map_err(write_err)?;
        *self.tail.lock() = Tail::default();
        tracing::info!(purged = %purged, offset = end, "log restarted after an installed snapshot");
        Ok(true)
    }

    /// The offset of the first data entry with index `>= index`, if any.
    fn data_offset_from(&self, index: u64) -> Result<Option<u64>, StorageError> {
        if let Some(found) = self.tail.lock().offset_from(index) {
            return Ok(found);
        }
        // Binary search over offsets; every probe lands on a batch boundary.
        let log = &self.log;
        let (mut lo, mut hi) = (log.start_offset(), log.end_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let h = header_at(log, mid).map_err(read_err)?;
            if h.raft_index < index {
                lo = h.next_offset();
            } else {
                hi = h.base_offset;
            }
        }
        Ok((lo < log.end_offset()).then_some(lo))
    }

    /// Entries with indexes in `[start, end)`, at most `max_bytes` of data
    /// entries (but at least one entry).
    fn entries(&self, start: u64, end: u64, max_bytes: usize) -> Result<Vec<Entry>, StorageError> {
        // A read is one snapshot of the log (openraft's requirement): a
        // conflict truncation must not cut the log between finding where the
        // entries start and reading them. Without this, a leader's stale
        // replication task read entries its node had just truncated as a new
        // follower, got "offset out of range", and the storage error stopped
        // the node's Raft core for the partition for good.
        let _no_cut = self.cut.read();
        // Purged entries are hidden even where their records remain.
        let (start, control): (u64, Vec<ControlEntry>) = {
            let state = self.state.lock();
            let start = state.purged.map_or(start, |p| start.max(p.index + 1));
            if start >= end {
                return Ok(Vec::new());
            }
            let control = state.control.range(start..end).map(|(_, c)| c.clone());
            (start, control.collect())
        };
        let mut data = Vec::new();
        let mut bytes = 0usize;
        let cached = self.tail.lock().cached(start, end, max_bytes);
        if let Some(cached) = cached {
            for (index, term, batch) in cached {
                bytes += batch.len();
                data.push(Entry {
                    log_id: log_id(term, index),
                    payload: EntryPayload::Normal(Payload(batch)),
                });
            }
        } else if let Some(mut offset) = self.data_offset_from(start)? {
            let upper = self.log.end_offset();
            'read: while offset < upper {
                let chunk = self
                    .log
                    .read(offset, READ_CHUNK_BYTES, upper)
                    .map_err(read_err)?;
                if chunk.bytes.is_empty() {
                    break;
                }
                for batch in Batches::new(chunk.bytes) {
                    let (h, batch) = batch.map_err(read_err)?;
                    if h.raft_index >= end || (bytes >= max_bytes && !data.is_empty()) {
                        break 'read;
                    }
                    bytes += batch.len();
                    data.push(Entry {
                        log_id: log_id(h.raft_term, h.raft_index),
                        payload: EntryPayload::Normal(Payload(batch)),
                    });
                }
                offset = chunk.next_offset;
            }
        }
        // When the byte limit cut the data short, stop the control entries
        // there too: the result must stay contiguous.
        let data_cut = (bytes >= max_bytes)
            .then(|| data.last().map(|e| e.log_id.index))
            .flatten();
        let mut out = Vec::with_capacity(data.len() + control.len());
        let mut control = control.into_iter().peekable();
        for entry in data {
            while let Some(c) = control.next_if(|c| c.log_id.index < entry.log_id.index) {
                out.push(control_entry(c));
            }
            out.push(entry);
        }
        for c in control {
            if data_cut.is_some_and(|cut| c.log_id.index > cut) {
                break;
            }
            out.push(control_entry(c));
        }
        Ok(out)
    }

    /// Removes the entries from `from` on: data first, then control
    /// entries. Stopped between the two (a crash, a failed write), the log
    /// keeps control entries past its data, which open drops
    /// ([`drop_control_after_hole`]) or keeps as a prefix of the old log.
    /// The other order kept data past dropped control entries: a hole.
    fn truncate(&self, from: LogId) -> Result<(), StorageError> {
        let cut = self.cut.clone();
        let _no_flush = cut.write();
        if let Some(offset) = self.data_offset_from(from.index)? {
            self.log
                .truncate_from(offset, NO_LOG_STATE)
                .map_err(write_err)?;
        }
        {
            let mut tail = self.tail.lock();
            tail.truncate(from.index);
            if tail.is_empty() {
                // Reload the newest surviving entry so the cache stays anchored.
                let last = last_data_entry(&self.log).map_err(read_err)?;
                *tail = Tail::anchored(last.map(DataEntry::into_tail));
            }
        }
        let mut next = self.state.lock().clone();
        if next.control.range(from.index..).next().is_some() {
            next.control.split_off(&from.index);
            self.state_file.store(&next).map_err(write_err)?;
            self.state.lock().control.split_off(&from.index);
        }
        Ok(())
    }

    fn purge(&self, upto: LogId) -> Result<(), StorageError> {
        self.restart_after_snapshot(upto)?;
        let snapshot = {
            let mut state = self.state.lock();
            if state.purged.is_some_and(|p| p.index >= upto.index) {
                return Ok(());
            }
            state.purged = Some(upto);
            state.control = state.control.split_off(&(upto.index + 1));
            state.clone()
        };
        self.state_file.store(&snapshot).map_err(write_err)?;
        // The records stay: retention owns their lifetime. Purged entries are
        // only hidden from Raft.
        Ok(())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StorageError> {
        let (purged, last_control) = {
            let state = self.state.lock();
            (
                state.purged,
                state.control.values().next_back().map(|c| c.log_id),
            )
        };
        let last = last_control.max(self.newest_data_id()?).max(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }
}

fn control_entry(c: ControlEntry) -> Entry {
    Entry {
        log_id: c.log_id,
        payload: match c.membership {
            None => EntryPayload::Blank,
            Some(m) => EntryPayload::Membership(m),
        },
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let inner = self.inner.clone();
        blocking(move || inner.entries(start, end, usize::MAX)).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.entries(start, end, MAX_REPLICATION_BYTES)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.log_state()).await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let vote = *vote;
        blocking(move || {
            let snapshot = {
                let mut state = inner.state.lock();
                state.vote = Some(vote);
                state.clone()
            };
            inner
                .state_file
                .store(&snapshot)
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.state.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let inner = self.inner.clone();
        let needs_flush = blocking(move || inner.write(entries)).await?;
        if needs_flush {
            self.inner
                .flush
                .send(callback)
                .map_err(|_| write_err("the log flusher stopped"))?;
        } else {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.truncate(log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.purge(log_id)).await
    }
}
