//! One partition of a topic: its log, the writer in front of it, the
//! idempotent-producer table, and the high watermark readers wait on.
//!
//! This is the append interface the server talks to. Behind it is one of two
//! writers: on a single node the group-commit writer, with the high watermark
//! at the flushed end of the log; in a cluster the partition's Raft group
//! ([`replica`]), with the high watermark at the quorum-committed end.
//!
//! Blocking log work runs on blocking threads; every method here is safe to
//! call from async tasks.

mod group_commit;
pub mod machine;
pub mod producer_state;
pub mod replica;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::batch::{BatchHeader, verify};
use tokio::sync::{oneshot, watch};

pub use group_commit::CommitStats;
use group_commit::{GroupCommit, Work};
use producer_state::ProducerStates;
use replica::{Replica, ReplicaConfig};

use crate::error::{Error, Result};
use crate::log::storage::Storage;
use crate::log::{Log, LogConfig, LogError, OpenReport, ReadChunk, Replay, RetentionReport};

/// When a produce request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// After the batch is durable (fsynced; on a quorum once replicated).
    #[default]
    All,
    /// After the batch is written to the leader's log, before fsync.
    Leader,
    /// Not at all (fire and forget; the CLI's `--acks none`).
    None,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    /// The batch was a retry of one already in the log; nothing was written.
    pub duplicate: bool,
}

/// An append queued behind every append submitted to its partition before
/// it: [`PendingAppend::wait`] answers once it is as durable as its acks
/// asked. Submitting and waiting apart lets a caller keep several appends of
/// one partition in flight, in order (a pipelined produce stream).
#[derive(Debug)]
#[must_use = "the append's outcome is known only by waiting for it"]
pub struct PendingAppend(Pending);

#[derive(Debug)]
enum Pending {
    /// Answered at submission (acks=none).
    Answered(Appended),
    /// The group-commit writer answers; a dropped reply means it died.
    Local(oneshot::Receiver<Result<Appended>>),
    /// The Raft proposer answers; a dropped reply means it shut down.
    Replicated(oneshot::Receiver<Result<Appended>>),
}

impl PendingAppend {
    /// An append whose answer is already known.
    pub(crate) fn answered(appended: Appended) -> Self {
        PendingAppend(Pending::Answered(appended))
    }

    pub async fn wait(self) -> Result<Appended> {
        match self.0 {
            Pending::Answered(appended) => Ok(appended),
            // Never report success without an answer.
            Pending::Local(rx) => rx
                .await
                .map_err(|_| Error::Internal("group commit stopped".into()))?,
            Pending::Replicated(rx) => rx.await.map_err(|_| Error::ShuttingDown)?,
        }
    }
}

/// Restores the producer table from the checkpoint and the log's tail.
struct ProducerReplay {
    states: ProducerStates,
    dir: String,
}

impl Replay for ProducerReplay {
    fn restore(&mut self, state: &[u8]) {
        match ProducerStates::decode(state) {
            Ok(states) => self.states = states,
            Err(why) => {
                tracing::warn!(dir = %self.dir, %why, "producer snapshot unreadable; rebuilding from the log tail")
            }
        }
    }

    fn replay(&mut self, header: &BatchHeader, _batch: &Bytes) {
        self.states.record(header, crate::log::now_ms());
    }
}

/// Who writes the partition's log.
enum Writer {
    /// A single node: the group-commit writer, which owns the producer table.
    Local(Arc<GroupCommit>),
    /// A cluster: the partition's Raft group.
    Replicated(Arc<Replica>),
}

/// Statistics of a writer that does no group commit of its own.
static NO_COMMIT_STATS: std::sync::LazyLock<CommitStats> =
    std::sync::LazyLock::new(CommitStats::default);

pub struct Partition {
    topic: Arc<str>,
    index: u32,
    log: Arc<Log>,
    writer: Writer,
    high_watermark: Arc<watch::Sender<u64>>,
    /// What opening the log found (recovery facts for metrics).
    opened: OpenReport,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("topic", &self.topic)
            .field("index", &self.index)
            .finish()
    }
}

impl Partition {
    /// Opens the partition's log in `dir` (blocking: call from a blocking thread
    /// or before the runtime is busy).
    pub fn open(
        dir: &Path,
        topic: &str,
        index: u32,
        config: LogConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<(Partition, OpenReport)> {
        let mut replay = ProducerReplay {
            states: ProducerStates::default(),
            dir: dir.display().to_string(),
        };
        let (log, report) = Log::open(dir, config, storage, &mut replay)?;
        let log = Arc::new(log);
        let high_watermark = Arc::new(watch::Sender::new(log.end_offset()));
        let commit = Arc::new(GroupCommit::new(
            log.clone(),
            replay.states,
            high_watermark.clone(),
        ));
        let partition = Partition {
            topic: topic.into(),
            index,
            log,
            writer: Writer::Local(commit),
            high_watermark,
            opened: report.clone(),
        };
        Ok((partition, report))
    }

    /// Opens the partition's log in `dir` and starts its Raft group, which
    /// from then on is the only writer of the log. The group's own files live
    /// in `raft_dir`. The high watermark starts at what the group's state
    /// machine restores and moves as entries commit.
    pub async fn open_replicated(
        dir: &Path,
        raft_dir: &Path,
        config: LogConfig,
        storage: Arc<dyn Storage>,
        replica: ReplicaConfig,
    ) -> Result<(Partition, OpenReport)> {
        let (log, report) = {
            let (dir, raft_dir, storage) =
                (dir.to_path_buf(), raft_dir.to_path_buf(), storage.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&raft_dir).map_err(|e| {
                    Error::Internal(format!("creating {}: {e}", raft_dir.display()))
                })?;
                Ok::<_, Error>(Log::open(&dir, config, storage, &mut ())?)
            })
            .await
            .map_err(|e| Error::Internal(format!("open task failed: {e}")))??
        };
        let log = Arc::new(log);
        let high_watermark = Arc::new(watch::Sender::new(log.start_offset()));
        let (topic, index) = (replica.topic.clone(), replica.partition);
        let replica = Replica::start(
            replica,
            log.clone(),
            storage,
            raft_dir,
            high_watermark.clone(),
        )
        .await?;
        let partition = Partition {
            topic: topic.as_str().into(),
            index,
            log,
            writer: Writer::Replicated(replica),
            high_watermark,
            opened: report.clone(),
        };
        Ok((partition, report))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's Raft member, when it is replicated.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.writer {
            Writer::Replicated(r) => Some(r),
            Writer::Local(_) => None,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Consumers read below this offset: every record under it is durable.
    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// The first offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The offset the next appended record gets (may be above the high watermark).
    pub fn end_offset(&self) -> u64 {
        self.log.end_offset()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.opened
    }

    pub fn commit_stats(&self) -> &CommitStats {
        match &self.writer {
            Writer::Local(commit) => &commit.stats,
            Writer::Replicated(_) => &NO_COMMIT_STATS,
        }
    }

    pub fn producer_count(&self) -> usize {
        match &self.writer {
            Writer::Local(commit) => commit.producer_count(),
            Writer::Replicated(r) => r.machine().with(|m| m.producers().len()),
        }
    }

    /// Verifies `batch` and appends it; resolves as `acks` says. A retry of a
    /// batch already in the log resolves to its original offset.
    ///
    /// A replicated partition answers every acks mode once a quorum has the
    /// batch fsynced: answering earlier would hand out an offset that a
    /// leader change can give to another batch.
    pub async fn append(&self, batch: Bytes, acks: Acks) -> Result<Appended> {
        self.submit(batch, acks)?.wait().await
    }

    /// Verifies `batch` and queues it behind every append submitted before
    /// it, without waiting: appends submitted one after the other are
    /// written in that order. Errors found before queueing (a bad batch, a
    /// stopped writer) come back at once.
    pub fn submit(&self, batch: Bytes, acks: Acks) -> Result<PendingAppend> {
        let header = verify(&batch)?;
        if header.is_control() {
            return Err(Error::InvalidArgument(
                "control batches are written by the broker, not producers".into(),
            ));
        }
        // A replica takes a batch whose Raft entry id matches the log's next
        // entry as one stamped by its leader; one forged by a producer made
        // the leader's own write fail and stopped the partition's group.
        if (header.raft_term, header.raft_index) != (0, 0) {
            return Err(Error::InvalidArgument(format!(
                "the batch carries Raft term {} and index {}; the broker sets those, send zeros",
                header.raft_term, header.raft_index
            )));
        }
        let commit = match &self.writer {
            Writer::Local(commit) => commit,
            Writer::Replicated(replica) => {
                return Ok(PendingAppend(Pending::Replicated(
                    replica.submit(batch, header)?,
                )));
            }
        };
        let (reply, answer) = match acks {
            Acks::None => (None, None),
            _ => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
        };
        commit.submit(Work::Append {
            batch,
            header,
            acks,
            reply,
        })?;
        Ok(PendingAppend(match answer {
            None => Pending::Answered(Appended {
                base_offset: u64::MAX,
                duplicate: false,
            }),
            Some(rx) => Pending::Local(rx),
        }))
    }

    /// Whole batches from the one holding `offset`, at most `max_bytes` (at
    /// least one batch), all below the high watermark.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadChunk> {
        let log = self.log.clone();
        let upper = self.high_watermark();
        let read =
            tokio::task::spawn_blocking(move || log.read_committed(offset, max_bytes, upper))
                .await
                .map_err(|e| Error::Internal(format!("read task failed: {e}")))?;
        read.map_err(|e| match e {
            LogError::OffsetOutOfRange {
                requested,
                start,
                end,
            } => Error::OffsetOutOfRange {
                topic: self.topic.to_string(),
                partition: self.index,
                requested,
                start,
                end,
            },
            other => Error::Storage(other),
        })
    }

    /// Waits until the high watermark passes `offset` or `timeout` elapses;
    /// returns whether data is available.
    pub async fn wait_for(&self, offset: u64, timeout: Duration) -> bool {
        let mut rx = self.high_watermark.subscribe();
        let wait = rx.wait_for(|hw| *hw > offset);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// A receiver that sees every move of the high watermark.
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    /// The first offset whose record is at or after `timestamp` (ms), if any.
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let log = self.log.clone();
        let upper = self.high_watermark();
        tokio::task::spawn_blocking(move || log.offset_for_timestamp(timestamp, upper))
            .await
            .map_err(|e| Error::Internal(format!("lookup task failed: {e}")))?
            .map_err(Error::from)
    }

    /// The timestamp of the record at `offset`, if it is below the high
    /// watermark (reads and decodes the batch holding it).
    pub async fn timestamp_at(&self, offset: u64) -> Result<Option<i64>> {
        if offset >= self.high_watermark() || offset < self.start_offset() {
            return Ok(None);
        }
        let chunk = self.read(offset, 1).await?;
        for item in strata_proto::batch::Batches::new(chunk.bytes) {
            let (_, batch) = item?;
            for record in strata_proto::batch::Records::new(batch)? {
                let (o, r) = record?;
                if o >= offset {
                    return Ok(Some(r.timestamp));
                }
            }
        }
        Ok(None)
    }

    /// Applies retention, and asks the writer for a checkpoint if one is due.
    /// A replicated partition deletes only what its Raft group has purged
    /// (see [`Replica::enforce_retention`]); its Raft flusher checkpoints the
    /// log itself.
    pub async fn maintain(&self, now_ms: i64) -> Result<RetentionReport> {
        if let Some(replica) = self.replica() {
            return replica.enforce_retention(now_ms).await;
        }
        let log = self.log.clone();
        let report = tokio::task::spawn_blocking(move || log.enforce_retention(now_ms))
            .await
            .map_err(|e| Error::Internal(format!("retention task failed: {e}")))??;
        if let Writer::Local(commit) = &self.writer
            && self.log.checkpoint_due()
            && !self.log.is_poisoned()
        {
            // Through the writer, so the producer table matches the log end.
            let _ = commit.submit(Work::Checkpoint);
        }
        Ok(report)
    }

    /// Finishes queued appends, flushes, checkpoints and marks the log cleanly
    /// closed. Appends after this fail with `ShuttingDown`.
    pub async fn close(&self) -> Result<()> {
        let commit = match &self.writer {
            Writer::Local(commit) => commit,
            Writer::Replicated(replica) => {
                // Raft first, so nothing appends while the log closes; the
                // group's flusher has made every acknowledged entry durable.
                replica.shutdown().await;
                let log = self.log.clone();
                return tokio::task::spawn_blocking(move || log.close(&[]))
                    .await
                    .map_err(|e| Error::Internal(format!("close task failed: {e}")))?
                    .map_err(Error::from);
            }
        };
        let (reply, done) = oneshot::channel();
        commit.submit(Work::Close { reply })?;
        done.await
            .map_err(|_| Error::Internal("group commit stopped".into()))?
    }
}
