//! Group commit: the one writer of a partition's log.
//!
//! Appends are queued; a drain runs on a blocking thread (never on an async
//! worker) whenever the queue is non-empty. Each round takes everything queued,
//! checks producer sequences, appends the new batches, then makes them all
//! durable with a single fsync and answers their waiters. Appends that arrive
//! during that fsync form the next group. With one drain per partition there is
//! no lock contention on the log and exactly one fsync per group.
//!
//! Never report success after a failed fsync: a failed flush fails every waiter
//! of its group and poisons the log, so later appends and duplicates fail too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use strata_proto::batch::BatchHeader;
use tokio::sync::{oneshot, watch};

use super::producer_state::{ProducerStates, SequenceCheck, SequenceError};
use super::{Acks, Appended};
use crate::error::{Error, Result};
use crate::log::{Log, LogError, now_ms};
use crate::metrics::{GROUP_SIZE_BUCKETS, Histogram, LATENCY_BUCKETS_SECONDS};

/// One unit of work for the drain, in submission order.
pub(crate) enum Work {
    Append {
        /// As the request brought it: written without a copy.
        batch: Bytes,
        header: BatchHeader,
        acks: Acks,
        reply: Option<oneshot::Sender<Result<Appended>>>,
    },
    /// Write a recovery checkpoint (with the producer table) now.
    Checkpoint,
    /// Flush, checkpoint, mark the log cleanly closed; accept nothing after.
    Close { reply: oneshot::Sender<Result<()>> },
}

#[derive(Default)]
struct Queue {
    items: Vec<Work>,
    running: bool,
    closed: bool,
}

/// Counters for metrics; read without locks.
#[derive(Debug)]
pub struct CommitStats {
    pub groups: AtomicU64,
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
    pub duplicates: AtomicU64,
    pub fsync_nanos: AtomicU64,
    /// Seconds per fsync.
    pub fsync_seconds: Histogram,
    /// Batches made durable by one fsync.
    pub batches_per_fsync: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            groups: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            fsync_nanos: AtomicU64::new(0),
            fsync_seconds: Histogram::new(&LATENCY_BUCKETS_SECONDS),
            batches_per_fsync: Histogram::new(&GROUP_SIZE_BUCKETS),
        }
    }
}

pub(crate) struct GroupCommit {
    log: Arc<Log>,
    producers: Mutex<ProducerStates>,
    high_watermark: Arc<watch::Sender<u64>>,
    queue: Mutex<Queue>,
    pub stats: CommitStats,
}

impl GroupCommit {
    pub fn new(
        log: Arc<Log>,
        producers: ProducerStates,
        high_watermark: Arc<watch::Sender<u64>>,
    ) -> Self {
        GroupCommit {
            log,
            producers: Mutex::new(producers),
            high_watermark,
            queue: Mutex::new(Queue::default()),
            stats: CommitStats::default(),
        }
    }

    /// Queues `work`; fails with `ShuttingDown` once the partition is closing.
    pub fn submit(self: &Arc<Self>, work: Work) -> Result<()> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(Error::ShuttingDown);
        }
        if matches!(work, Work::Close { .. }) {
            queue.closed = true;
        }
        queue.items.push(work);
        if !queue.running {
            queue.running = true;
            let me = self.clone();
            let drain = move || me.drain();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(drain);
                }
                Err(_) => {
                    std::thread::spawn(drain);
                }
            }
        }
        Ok(())
    }

    fn drain(&self) {
        loop {
            let items = {
                let mut queue = self.queue.lock();
                if queue.items.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.items)
            };
            self.process(items);
        }
    }

    fn process(&self, items: Vec<Work>) {
        let _span = tracing::debug_span!("group_commit", dir = %self.log.dir().display(), items = items.len()).entered();
        let mut producers = self.producers.lock();
        let now = now_ms();
        let mut after_flush = Vec::new();
        let mut appended = false;
        let batches_before = self.stats.batches.load(Ordering::Relaxed);
        let mut checkpoint = false;
        let mut close = None;

        for item in items {
            match item {
                Work::Append {
                    batch,
                    header,
                    acks,
                    reply,
                } => {
                    let result =
                        self.append_one(&mut producers, &batch, &header, now, &mut appended);
                    match (result, acks, reply) {
                        (_, _, None) => {}
                        (Ok(done), Acks::All, Some(reply)) => after_flush.push((reply, done)),
                        (result, _, Some(reply)) => {
                            let _ = reply.send(result);
                        }
                    }
                }
                Work::Checkpoint => checkpoint = true,
                Work::Close { reply } => close = Some(reply),
            }
        }
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        let group_batches = self.stats.batches.load(Ordering::Relaxed) - batches_before;

        if appended {
            let started = Instant::now();
            let flushed = self.log.flush();
            let took = started.elapsed();
            self.stats
                .fsync_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.stats.fsync_seconds.observe_duration(took);
            self.stats.batches_per_fsync.observe(group_batches as f64);
            match flushed {
                Ok(offset) => {
                    self.high_watermark.send_if_modified(|hw| {
                        let moved = offset > *hw;
                        *hw = (*hw).max(offset);
                        moved
                    });
                }
                Err(e) => {
                    let cause = e.to_string();
                    for (reply, _) in after_flush.drain(..) {
                        let _ = reply.send(Err(Error::Storage(LogError::Poisoned {
                            cause: cause.clone(),
                        })));
                    }
                }
            }
        }
        for (reply, done) in after_flush {
            let _ = reply.send(Ok(done));
        }

        if let Some(reply) = close {
            producers.expire(now);
            let _ = reply.send(self.log.close(&producers.encode()).map_err(Error::from));
        } else if (checkpoint || self.log.checkpoint_due()) && !self.log.is_poisoned() {
            producers.expire(now);
            if let Err(e) = self.log.checkpoint(&producers.encode()) {
                tracing::error!(dir = %self.log.dir().display(), error = %e, "recovery checkpoint failed");
            }
        }
    }

    fn append_one(
        &self,
        producers: &mut ProducerStates,
        batch: &[u8],
        header: &BatchHeader,
        now: i64,
        appended: &mut bool,
    ) -> Result<Appended> {
        match producers.check(header) {
            Err(SequenceError::OutOfOrder { expected, received }) => {
                Err(Error::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    expected,
                    received,
                })
            }
            Err(SequenceError::Fenced {
                current_epoch,
                received_epoch,
            }) => Err(Error::ProducerFenced {
                producer_id: header.producer_id,
                current: current_epoch,
                received: received_epoch,
            }),
            Ok(SequenceCheck::Duplicate { base_offset }) => {
                // The original was made durable by an earlier group, or is in
                // this one and is answered after its flush; unless the log
                // failed since, in which case nothing may be acknowledged.
                if self.log.is_poisoned() {
                    return Err(Error::Storage(LogError::Poisoned {
                        cause: "an earlier fsync failed".into(),
                    }));
                }
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                Ok(Appended {
                    base_offset,
                    duplicate: true,
                })
            }
            Ok(SequenceCheck::Append) => {
                let info = self.log.append(batch)?;
                producers.record(
                    &BatchHeader {
                        base_offset: info.base_offset,
                        ..*header
                    },
                    now,
                );
                *appended = true;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(Appended {
                    base_offset: info.base_offset,
                    duplicate: false,
                })
            }
        }
    }

    /// Idempotent producers the partition currently remembers.
    pub fn producer_count(&self) -> usize {
        self.producers.lock().len()
    }
}
