//! The producer: batches records per partition, sends them idempotently, and
//! resolves every record to its offset or to an error — never to nothing.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let broker = strata_broker::Broker::open(strata_broker::BrokerConfig::with_data_dir(dir.path())).await?;
//! # strata_client::Admin::connect(&broker).await?.create_topic("events", strata_client::NewTopic::new(1)).await?;
//! use strata_client::{Producer, ProducerRecord};
//! let producer = Producer::builder(&broker).build().await?;
//! // Wait for each record...
//! let meta = producer.send(ProducerRecord::new("events", "hello").key("user-1")).await?;
//! assert_eq!((meta.partition, meta.offset), (0, Some(0)));
//! // ...or enqueue many and collect the results later.
//! let mut pending = Vec::new();
//! for i in 0..1000 {
//!     pending.push(producer.enqueue(ProducerRecord::new("events", format!("event {i}"))).await?);
//! }
//! for (i, delivery) in pending.into_iter().enumerate() {
//!     assert_eq!(delivery.await?.offset, Some(1 + i as u64));
//! }
//! producer.close().await?;
//! # broker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Memory is bounded by `buffer_memory`: a record that does not fit waits up
//! to `max_block` for room, then fails with [`Error::BufferFull`].
//!
//! [`Producer::metrics`] tells how it is going: records acknowledged and
//! failed, records per batch, how long batches waited before going, how long
//! the broker took to answer, and retries.

mod delivery;
mod metrics;
mod partition_queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use strata_proto::batch::Record;
use strata_proto::limits::{MAX_IN_FLIGHT_BATCHES, MAX_MESSAGE_BYTES};
use strata_proto::target::Target;
use strata_proto::v1::InitProducerRequest;
use tokio::sync::Semaphore;

use crate::connection::{CONNECT_TIMEOUT_MS, Connection};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::record::{ProducerRecord, RecordMetadata, now_ms};
pub use delivery::Delivery;
use metrics::Counters;
pub use metrics::ProducerMetrics;
use partition_queue::PartitionQueue;

/// How long a batch waits for more records before it is sent, while its
/// partition has a batch in flight.
pub const LINGER_MS: u64 = 5;

/// A batch is sent once it holds this many bytes.
pub const BATCH_SIZE_BYTES: usize = 1024 * 1024;

/// Bytes of records the producer buffers before `enqueue` blocks.
pub const BUFFER_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// How long `enqueue` waits for buffer room before failing with `BufferFull`.
pub const MAX_BLOCK_MS: u64 = 60_000;

/// How long a record may take from `enqueue` to acknowledgement, retries
/// included, before it fails with `Timeout`.
pub const DELIVERY_TIMEOUT_MS: u64 = 120_000;

/// Deadline of one produce request.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Fixed cost counted per record on top of its key, value and headers.
const RECORD_OVERHEAD_BYTES: usize = 32;

/// When the broker acknowledges a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Once durable: fsynced (on a quorum when replicated). The default.
    #[default]
    All,
    /// Once written by the leader, before fsync.
    Leader,
    /// Not at all: offsets are unknown and failures after sending are unseen.
    None,
}

impl Acks {
    fn wire(self) -> strata_proto::v1::Acks {
        match self {
            Acks::All => strata_proto::v1::Acks::All,
            Acks::Leader => strata_proto::v1::Acks::Leader,
            Acks::None => strata_proto::v1::Acks::None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ProducerConfig {
    linger: Duration,
    batch_size: usize,
    buffer_memory: usize,
    max_block: Duration,
    delivery_timeout: Duration,
    request_timeout: Duration,
    acks: Acks,
    idempotent: bool,
    max_in_flight: usize,
    linger_when_idle: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(LINGER_MS),
            batch_size: BATCH_SIZE_BYTES,
            buffer_memory: BUFFER_MEMORY_BYTES,
            max_block: Duration::from_millis(MAX_BLOCK_MS),
            delivery_timeout: Duration::from_millis(DELIVERY_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            acks: Acks::All,
            idempotent: true,
            max_in_flight: MAX_IN_FLIGHT_BATCHES,
            linger_when_idle: false,
        }
    }
}

/// Builds a [`Producer`]; every setting has a documented default.
#[derive(Debug)]
pub struct ProducerBuilder {
    target: Target,
    config: ProducerConfig,
}

impl ProducerBuilder {
    /// How long a batch waits for more records while its partition has a
    /// batch in flight (default 5 ms).
    ///
    /// A partition with nothing in flight sends its batch at once: waiting
    /// would only leave the connection idle, and the records that arrive
    /// while the batch is out form the next one. Batches so grow with the
    /// load by themselves, to about the record rate times the round trip,
    /// and a producer under light load adds no delay of its own. With
    /// `max_in_flight(1)` a partition never has a batch in flight when it
    /// picks the next, so linger then plays no part. See
    /// [`linger_when_idle`](Self::linger_when_idle) to always wait.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }
    /// Whether a batch waits for its linger time even when its partition has
    /// nothing in flight (default no). Yes is Kafka's `linger.ms`: fewer,
    /// larger requests under light load, for that much more latency.
    pub fn linger_when_idle(mut self, wait: bool) -> Self {
        self.config.linger_when_idle = wait;
        self
    }
    /// Bytes at which a batch is sent without waiting (default 1 MiB, at most 4 MiB).
    pub fn batch_size(mut self, bytes: usize) -> Self {
        self.config.batch_size = bytes;
        self
    }
    /// Bytes of records buffered before `enqueue` blocks (default 64 MiB).
    pub fn buffer_memory(mut self, bytes: usize) -> Self {
        self.config.buffer_memory = bytes;
        self
    }
    /// How long `enqueue` waits for buffer room (default 60 s).
    pub fn max_block(mut self, wait: Duration) -> Self {
        self.config.max_block = wait;
        self
    }
    /// Upper bound from enqueue to acknowledgement, retries included (default 120 s).
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.config.delivery_timeout = timeout;
        self
    }
    /// Deadline of each produce request (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// When batches are acknowledged (default `Acks::All`).
    pub fn acks(mut self, acks: Acks) -> Self {
        self.config.acks = acks;
        self
    }
    /// Batches of one partition sent before the first is answered (default
    /// and most: 5, the batches the broker remembers per producer to
    /// deduplicate retries). They travel on one stream and are written in
    /// order; 1 sends a batch only once the one before it is answered.
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.config.max_in_flight = batches;
        self
    }
    /// Whether retries are deduplicated by the broker (default on).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.config.idempotent = idempotent;
        self
    }

    /// Connects, obtains a producer id, and returns the producer.
    pub async fn build(self) -> Result<Producer> {
        let c = &self.config;
        if c.batch_size == 0 || c.batch_size > strata_proto::limits::MAX_BATCH_BYTES {
            return Err(Error::InvalidArgument(format!(
                "batch size must be between 1 and {} bytes",
                strata_proto::limits::MAX_BATCH_BYTES
            )));
        }
        if !(1..=MAX_IN_FLIGHT_BATCHES).contains(&c.max_in_flight) {
            return Err(Error::InvalidArgument(format!(
                "max in flight must be between 1 and {MAX_IN_FLIGHT_BATCHES} batches"
            )));
        }
        if c.buffer_memory < c.batch_size {
            return Err(Error::InvalidArgument(
                "buffer memory must be at least the batch size".into(),
            ));
        }
        let conn =
            Connection::connect(self.target, Duration::from_millis(CONNECT_TIMEOUT_MS)).await?;
        let (producer_id, epoch) = if c.idempotent {
            // Any node hands out producer ids; one that is down is skipped.
            let r = conn
                .any_node_call(|mut data| async move {
                    data.init_producer(InitProducerRequest {}).await
                })
                .await?;
            (r.producer_id, r.producer_epoch as u16)
        } else {
            (0, 0)
        };
        Ok(Producer {
            inner: Arc::new(Inner {
                buffer: Arc::new(Semaphore::new(self.config.buffer_memory)),
                conn,
                config: self.config,
                producer_id,
                epoch,
                queues: Mutex::new(HashMap::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
                counters: Arc::default(),
            }),
        })
    }
}

/// The partition queues by topic: looked up by `&str` (once per record, twice
/// for a topic's first), without allocating a key.
type Queues = HashMap<Arc<str>, TopicQueues>;

/// No sticky partition: the next keyless record picks one.
const NO_STICKY: u32 = u32::MAX;

/// Set with the partition just left (`MOVED_ON | p`): the next keyless
/// record picks another partition than `p`.
const MOVED_ON: u32 = 1 << 31;

/// One topic's partition queues, and the partition its keyless records go to.
struct TopicQueues {
    /// Indexed by partition; created on a partition's first record.
    partitions: Vec<Option<Arc<PartitionQueue>>>,
    /// The partition keyless records stick to, so they fill batches instead
    /// of spreading one record per partition per linger. Shared with the
    /// queues: the sticky one sets `MOVED_ON | p` once a batch size of
    /// keyless records came to it or they filled its batch, and the next
    /// keyless record picks another partition.
    sticky: Arc<AtomicU32>,
}

impl Default for TopicQueues {
    fn default() -> Self {
        TopicQueues {
            partitions: Vec::new(),
            sticky: Arc::new(AtomicU32::new(NO_STICKY)),
        }
    }
}

impl TopicQueues {
    fn queues(&self) -> impl Iterator<Item = &Arc<PartitionQueue>> {
        self.partitions.iter().flatten()
    }

    fn sticky_partition(&self, partitions: u32) -> u32 {
        let current = self.sticky.load(Ordering::Relaxed);
        if current < partitions {
            return current;
        }
        let left = current & !MOVED_ON;
        let mut rng = rand::rng();
        let chosen = if left < partitions && partitions > 1 {
            // Any partition but the one just left.
            let c = rng.random_range(0..partitions - 1);
            if c >= left { c + 1 } else { c }
        } else {
            rng.random_range(0..partitions.max(1))
        };
        self.sticky.store(chosen, Ordering::Relaxed);
        chosen
    }
}

struct Inner {
    conn: Arc<Connection>,
    config: ProducerConfig,
    producer_id: u64,
    epoch: u16,
    buffer: Arc<Semaphore>,
    queues: Mutex<Queues>,
    closed: std::sync::atomic::AtomicBool,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Senders finish what they hold, then stop: nothing queued is dropped.
        for q in self.queues.lock().values().flat_map(TopicQueues::queues) {
            q.close();
        }
    }
}

/// A batching, idempotent producer; cheap to clone and share across tasks.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("producer_id", &self.inner.producer_id)
            .finish_non_exhaustive()
    }
}

fn record_cost(r: &ProducerRecord) -> usize {
    r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 8)
            .sum::<usize>()
        + RECORD_OVERHEAD_BYTES
}

impl Producer {
    /// A builder for a producer connecting to `target`: a control address
    /// (`host:port`), a comma-separated bootstrap list of them
    /// (`"h1:7401,h2:7401,h3:7401"`; the first that answers is used, and
    /// every node's address is learnt from the cluster, so losing any one
    /// node later is survived), or an in-process broker.
    ///
    /// Sends follow partition leaders as they move: a batch refused by a
    /// former leader, or sent to one that died, is retried at the new leader
    /// with the same sequence numbers (so the broker writes it once) until
    /// the delivery timeout.
    pub fn builder(target: impl Into<Target>) -> ProducerBuilder {
        ProducerBuilder {
            target: target.into(),
            config: ProducerConfig::default(),
        }
    }

    /// What this producer has done so far: records and batches acknowledged
    /// and failed, batch sizes, queue time, request latency, retries.
    pub fn metrics(&self) -> ProducerMetrics {
        self.inner.counters.snapshot()
    }

    /// The producer id the broker assigned (0 if not idempotent).
    pub fn producer_id(&self) -> u64 {
        self.inner.producer_id
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send(&self, record: ProducerRecord) -> Result<RecordMetadata> {
        self.enqueue(record).await?.await
    }

    /// Adds a record to its partition's batch and returns at once with a
    /// [`Delivery`] to await later. Waits only for buffer room (up to
    /// `max_block`), failing with `BufferFull` if there is none.
    pub async fn enqueue(&self, mut record: ProducerRecord) -> Result<Delivery> {
        let inner = &self.inner;
        if inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let partitions = inner.conn.partition_count(&record.topic).await?;
        let cost = record_cost(&record);
        if cost > MAX_MESSAGE_BYTES {
            return Err(Error::InvalidRecord(format!(
                "record of about {cost} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
            )));
        }
        // `None`: keyless, to the topic's sticky partition.
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p >= partitions => {
                return Err(Error::PartitionNotFound(format!(
                    "topic {:?} has no partition {p} (it has {partitions})",
                    record.topic
                )));
            }
            (Some(p), _) => Some(p),
            (None, Some(key)) => Some(partition_for_key(key, partitions)),
            (None, None) => None,
        };
        let queue = self.queue(&record.topic, partition, partitions);
        // The record's bytes of buffer memory: from here on they are the
        // queue's to give back (when the record's batch is resolved, or at
        // once if the queue does not take the record). Counted, not held as
        // a permit per record: that cost an atomic reference count each.
        let bytes = cost as u32;
        match inner.buffer.try_acquire_many(bytes) {
            Ok(permit) => permit.forget(),
            // Only a full buffer pays for a timer.
            Err(_) => {
                match tokio::time::timeout(inner.config.max_block, inner.buffer.acquire_many(bytes))
                    .await
                {
                    Ok(Ok(permit)) => permit.forget(),
                    Ok(Err(_)) => return Err(Error::Closed),
                    Err(_) => {
                        return Err(Error::BufferFull {
                            bytes: cost,
                            waited: inner.config.max_block,
                        });
                    }
                }
            }
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let wire = Record {
            timestamp,
            key: record.key.take(),
            value: record.value.take(),
            headers: std::mem::take(&mut record.headers),
        };
        let sticky = partition.is_none();
        queue.push(&wire, bytes, inner.config.batch_size, sticky)
    }

    /// The queue of `partition` of `topic`, or of its sticky partition;
    /// created (with its sender task) on first use.
    fn queue(
        &self,
        topic: &Arc<str>,
        partition: Option<u32>,
        partitions: u32,
    ) -> Arc<PartitionQueue> {
        let mut queues = self.inner.queues.lock();
        // One lookup per record (this runs for every record; the topic's
        // entry is made once).
        let entry = match queues.get_mut(&**topic) {
            Some(entry) => entry,
            None => queues.entry(topic.clone()).or_default(),
        };
        let partition = partition.unwrap_or_else(|| entry.sticky_partition(partitions));
        let index = partition as usize;
        if entry.partitions.len() <= index {
            entry.partitions.resize(index + 1, None);
        }
        if let Some(q) = &entry.partitions[index] {
            return q.clone();
        }
        let q = PartitionQueue::new(
            topic.clone(),
            partition,
            self.inner.producer_id,
            self.inner.epoch,
            self.inner.buffer.clone(),
            entry.sticky.clone(),
            self.inner.counters.clone(),
        );
        tokio::spawn(
            q.clone()
                .run(self.inner.conn.clone(), self.inner.config.clone()),
        );
        entry.partitions[index] = Some(q.clone());
        q
    }

    /// Sends everything enqueued so far without waiting for linger, and waits
    /// until each of those records is resolved.
    pub async fn flush(&self) {
        let queues: Vec<_> = (self.inner.queues.lock().values())
            .flat_map(TopicQueues::queues)
            .cloned()
            .collect();
        futures::future::join_all(queues.iter().map(|q| q.flush())).await;
    }

    /// Flushes, then stops: later `enqueue` calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.flush().await;
        for q in self
            .inner
            .queues
            .lock()
            .values()
            .flat_map(TopicQueues::queues)
        {
            q.close();
        }
        Ok(())
    }
}
