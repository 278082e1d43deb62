//! The consumer: a `Stream` of records from assigned partitions, fed by
//! server-streaming fetches that the broker pushes as fast as flow control
//! allows (so catching up after downtime runs at disk and network speed).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let broker = strata_broker::Broker::open(strata_broker::BrokerConfig::with_data_dir(dir.path())).await?;
//! # strata_client::Admin::connect(&broker).await?.create_topic("events", strata_client::NewTopic::new(2)).await?;
//! # let producer = strata_client::Producer::builder(&broker).build().await?;
//! # for i in 0..10 { producer.send(strata_client::ProducerRecord::new("events", format!("e{i}"))).await?; }
//! use futures::StreamExt;
//! use strata_client::{Consumer, OffsetReset};
//! let consumer = Consumer::builder(&broker)
//!     .group("billing")
//!     .topics(["events"])
//!     .offset_reset(OffsetReset::Earliest)
//!     .build()
//!     .await?;
//! let mut records = consumer.stream().take(10);
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{}@{}: {:?}", record.partition, record.offset, record.value);
//! }
//! drop(records);
//! consumer.commit().await?; // the group resumes after these ten
//! # consumer.close().await?;
//! # broker.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Positions: a partition's position is the offset of the next record the
//! stream will yield. `commit` stores the positions of all assigned
//! partitions in the broker; a restarted member of the group resumes there.
//!
//! To read fast, take records in batches, as Kafka's `poll` hands them out:
//! [`Consumer::batches`] yields each partition's records as they arrived
//! together, the same records as the stream at a fraction of the cost per
//! record (`strata bench consume` reads this way).

mod fetcher;
mod group;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use strata_proto::target::Target;
use strata_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, LeaveGroupRequest, ListOffsetsRequest, OffsetSpec,
    PartitionOffset, TopicPartition as WireTopicPartition,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::connection::{CONNECT_TIMEOUT_MS, Connection};
use crate::error::{Error, Result};
use crate::record::{ConsumerRecord, TopicPartition};

/// Bytes asked for per fetch response. Several fit in one HTTP/2 stream
/// window, so the broker keeps sending while the client decodes (measured:
/// 1 MiB catches up faster than 4 MiB here).
pub const FETCH_MAX_BYTES: u32 = 1024 * 1024;

/// Fetch responses buffered between the fetcher and the stream (so at most
/// 16 MiB of fetched data per consumer).
pub const FETCH_BUFFER_RESPONSES: usize = 16;

/// Group session timeout: a member silent this long loses its partitions.
pub const SESSION_TIMEOUT_MS: u64 = 10_000;

/// Where to start a partition that has no committed offset, or whose
/// position fell out of the log (retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// Where to start reading an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The group's committed offset, else as `OffsetReset` says.
    #[default]
    Committed,
    /// The log start, ignoring committed offsets.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
}

#[derive(Debug, Clone)]
pub(crate) struct ConsumerConfig {
    group: Option<String>,
    topics: Vec<String>,
    assign: Vec<TopicPartition>,
    start: StartFrom,
    reset: OffsetReset,
    auto_commit: Option<Duration>,
    session_timeout: Duration,
    fetch_max_bytes: u32,
    client_id: String,
    assignor: String,
}

/// Builds a [`Consumer`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    target: Target,
    config: ConsumerConfig,
}

impl ConsumerBuilder {
    /// Joins consumer group `group`: partitions of the subscribed topics are
    /// shared among its members and positions are committed under it.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }
    /// Topics to subscribe to (with a group) or to read entirely (without).
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.topics = topics.into_iter().map(Into::into).collect();
        self
    }
    /// Reads exactly these partitions, without group membership.
    pub fn assign(mut self, partitions: impl IntoIterator<Item = TopicPartition>) -> Self {
        self.config.assign = partitions.into_iter().collect();
        self
    }
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.config.start = start;
        self
    }
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.config.reset = reset;
        self
    }
    /// Commits positions in the background at this interval (off by default).
    pub fn auto_commit(mut self, interval: Duration) -> Self {
        self.config.auto_commit = Some(interval);
        self
    }
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = timeout;
        self
    }
    pub fn fetch_max_bytes(mut self, bytes: u32) -> Self {
        self.config.fetch_max_bytes = bytes;
        self
    }
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }
    /// "range" (default) or "roundrobin".
    pub fn assignor(mut self, name: impl Into<String>) -> Self {
        self.config.assignor = name.into();
        self
    }

    pub async fn build(self) -> Result<Consumer> {
        let c = &self.config;
        if c.topics.is_empty() && c.assign.is_empty() {
            return Err(Error::InvalidArgument(
                "a consumer needs topics or assigned partitions".into(),
            ));
        }
        if c.group.is_none() && c.auto_commit.is_some() {
            return Err(Error::InvalidArgument("auto-commit needs a group".into()));
        }
        let conn =
            Connection::connect(self.target, Duration::from_millis(CONNECT_TIMEOUT_MS)).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        // Without a group, the assignment is fixed: named partitions, or all
        // partitions of the named topics.
        if c.group.is_none() {
            let mut partitions = c.assign.clone();
            for topic in &c.topics {
                let n = conn.partition_count(topic).await?;
                partitions.extend((0..n).map(|p| TopicPartition::new(topic.clone(), p)));
            }
            shared.assign(partitions);
        } else {
            for topic in &c.topics {
                conn.partition_count(topic).await?;
            }
        }
        let (tx, rx) = mpsc::channel(FETCH_BUFFER_RESPONSES);
        let mut tasks = vec![tokio::spawn(fetcher::run(
            conn.clone(),
            shared.clone(),
            self.config.clone(),
            tx,
        ))];
        if self.config.group.is_some() {
            tasks.push(tokio::spawn(group::run(
                conn.clone(),
                shared.clone(),
                self.config.clone(),
            )));
        }
        Ok(Consumer {
            conn,
            config: self.config,
            shared,
            inbox: tokio::sync::Mutex::new(Inbox { rx, pending: None }),
            tasks,
        })
    }
}

/// Per-partition consumer state.
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionState {
    /// Next offset to yield; `None` until resolved (committed offset or reset).
    position: Option<u64>,
    paused: bool,
    /// Bumped by seek and pause: fetched records of older epochs are dropped.
    epoch: u64,
    /// Position last committed (to skip redundant auto-commits).
    committed: Option<u64>,
    /// The partition's high watermark in the last fetch response (for `lag`).
    high_watermark: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Bumped on any change that requires the fetcher to restart.
    version: u64,
    member_id: String,
    generation: u64,
    closed: bool,
}

impl State {
    /// `tp`'s state if records fetched for it in `epoch` may still be handed
    /// out: still assigned, not paused, and not sought since.
    fn current(&mut self, tp: &TopicPartition, epoch: u64) -> Option<&mut PartitionState> {
        self.partitions
            .get_mut(tp)
            .filter(|p| p.epoch == epoch && !p.paused)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn bump(&self, st: &mut State) {
        st.version += 1;
        self.changed.notify_waiters();
    }

    /// Adds partitions (position unresolved); keeps ones already present.
    fn assign(&self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let mut st = self.state.lock();
        for tp in partitions {
            st.partitions.entry(tp).or_default();
        }
        self.bump(&mut st);
    }

    /// Removes partitions; returns their last positions.
    fn revoke(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, Option<u64>)> {
        let mut st = self.state.lock();
        let out = partitions
            .iter()
            .filter_map(|tp| st.partitions.remove(tp).map(|s| (tp.clone(), s.position)))
            .collect();
        self.bump(&mut st);
        out
    }

    /// Keeps the high watermark a fetch response of `tp` carried.
    fn note_high_watermark(&self, tp: &TopicPartition, high_watermark: u64) {
        if let Some(p) = self.state.lock().partitions.get_mut(tp) {
            p.high_watermark = Some(high_watermark);
        }
    }

    fn owned(&self) -> Vec<TopicPartition> {
        self.state.lock().partitions.keys().cloned().collect()
    }
}

/// A batch of decoded records from one fetch response.
#[derive(Debug)]
pub(crate) struct Fetched {
    tp: TopicPartition,
    epoch: u64,
    records: Vec<ConsumerRecord>,
}

struct Inbox {
    rx: mpsc::Receiver<Result<Fetched>>,
    /// What is left of the batch being handed out: its partition and epoch
    /// once, not per record (a partition's name is a heap string).
    pending: Option<(TopicPartition, u64, std::vec::IntoIter<ConsumerRecord>)>,
}

impl Inbox {
    /// Waits for the next fetched batch and makes it the pending one. `Err`
    /// holds what the reader returns instead: the fetch loop's error, or
    /// `None` once the consumer is closed.
    async fn refill<T>(&mut self) -> std::result::Result<(), Option<Result<T>>> {
        match self.rx.recv().await {
            None => Err(None),
            Some(Err(e)) => Err(Some(Err(e))),
            Some(Ok(Fetched { tp, epoch, records })) => {
                self.pending = Some((tp, epoch, records.into_iter()));
                Ok(())
            }
        }
    }
}

/// A consumer; share it by reference (`&Consumer` methods are concurrent-safe).
pub struct Consumer {
    conn: Arc<Connection>,
    config: ConsumerConfig,
    shared: Arc<Shared>,
    inbox: tokio::sync::Mutex<Inbox>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.config.group)
            .finish_non_exhaustive()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Consumer {
    /// A builder for a consumer connecting to `target`: a control address
    /// (`host:port`), a comma-separated bootstrap list of them
    /// (`"h1:7401,h2:7401"`; the first that answers is used), or an
    /// in-process broker. Fetches follow partition leaders as they move.
    pub fn builder(target: impl Into<Target>) -> ConsumerBuilder {
        ConsumerBuilder {
            target: target.into(),
            config: ConsumerConfig {
                group: None,
                topics: Vec::new(),
                assign: Vec::new(),
                start: StartFrom::Committed,
                reset: OffsetReset::Earliest,
                auto_commit: None,
                session_timeout: Duration::from_millis(SESSION_TIMEOUT_MS),
                fetch_max_bytes: FETCH_MAX_BYTES,
                client_id: "strata-consumer".into(),
                assignor: "range".into(),
            },
        }
    }

    /// The records, in offset order per partition. Ends only after `close`.
    pub fn stream(&self) -> BoxStream<'_, Result<ConsumerRecord>> {
        futures::stream::unfold(
            self,
            |c| async move { c.next_record().await.map(|r| (r, c)) },
        )
        .boxed()
    }

    /// The records in batches: each item is records of one partition in
    /// offset order, as many as arrived together (up to a fetch's worth),
    /// like Kafka's `poll`. The same records as [`Consumer::stream`], for a
    /// fraction of the cost per record when reading fast (one check of the
    /// partition's state per batch, not per record). Ends only after `close`.
    pub fn batches(&self) -> BoxStream<'_, Result<Vec<ConsumerRecord>>> {
        futures::stream::unfold(
            self,
            |c| async move { c.next_batch().await.map(|r| (r, c)) },
        )
        .boxed()
    }

    /// The next record; `None` once the consumer is closed.
    pub async fn next_record(&self) -> Option<Result<ConsumerRecord>> {
        let mut inbox = self.inbox().await;
        loop {
            if let Some((tp, epoch, records)) = &mut inbox.pending {
                // Checked per record: a seek, pause or revoke may come between two.
                for record in records.by_ref() {
                    let mut st = self.shared.state.lock();
                    // Stale after a seek, pause or revoke, or before the position
                    // (a batch may start before it): skip.
                    let Some(ps) = st.current(tp, *epoch) else {
                        continue;
                    };
                    if ps.position.is_some_and(|p| record.offset < p) {
                        continue;
                    }
                    ps.position = Some(record.offset + 1);
                    return Some(Ok(record));
                }
                inbox.pending = None;
            }
            if let Err(end) = inbox.refill().await {
                return end;
            }
        }
    }

    /// The next batch of records (see [`Consumer::batches`]); `None` once the
    /// consumer is closed. Taking a batch moves its partition's position past
    /// its last record, as taking each of its records would.
    pub async fn next_batch(&self) -> Option<Result<Vec<ConsumerRecord>>> {
        let mut inbox = self.inbox().await;
        loop {
            if let Some((tp, epoch, records)) = inbox.pending.take() {
                let mut st = self.shared.state.lock();
                // Stale after a seek, pause or revoke: dropped whole; records
                // before the position (a batch may start before it): skipped.
                if let Some(ps) = st.current(&tp, epoch) {
                    // Handed on in the list they came in, filtered in place
                    // (which moves nothing when nothing goes): a filtered
                    // copy moved every record, a few percent of a
                    // catching-up consumer's CPU. Every record is checked,
                    // and the position moves past the highest: nothing
                    // makes a producer's batch list its records in offset
                    // order.
                    let mut batch: Vec<ConsumerRecord> = records.collect();
                    if let Some(p) = ps.position {
                        batch.retain(|r| r.offset >= p);
                    }
                    if let Some(last) = batch.iter().map(|r| r.offset).max() {
                        ps.position = Some(last + 1);
                        return Some(Ok(batch));
                    }
                }
            }
            if let Err(end) = inbox.refill().await {
                return end;
            }
        }
    }

    /// The inbox, taken without queueing when nobody else reads (it is
    /// taken once per record by `next_record`).
    async fn inbox(&self) -> tokio::sync::MutexGuard<'_, Inbox> {
        match self.inbox.try_lock() {
            Ok(inbox) => inbox,
            Err(_) => self.inbox.lock().await,
        }
    }

    /// Partitions currently assigned to this consumer.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.owned()
    }

    /// The position of a partition: the next offset the stream will yield.
    pub fn position(&self, tp: &TopicPartition) -> Option<u64> {
        self.shared
            .state
            .lock()
            .partitions
            .get(tp)
            .and_then(|p| p.position)
    }

    /// How many records of `tp` lie past this consumer's position: the
    /// partition's high watermark, as the last fetch response gave it, minus
    /// the position (records fetched but not yet handed out count too). Like
    /// Kafka's `currentLag`; `None` for a partition not assigned to this
    /// consumer, or before its first fetch response. The fetch stream
    /// long-polls at the high watermark, so a consumer that keeps up sees
    /// `Some(0)` soon after each write.
    pub fn lag(&self, tp: &TopicPartition) -> Option<u64> {
        let st = self.shared.state.lock();
        let p = st.partitions.get(tp)?;
        Some(p.high_watermark?.saturating_sub(p.position?))
    }

    /// Continues `tp` from `offset`.
    pub fn seek(&self, tp: &TopicPartition, offset: u64) -> Result<()> {
        let mut st = self.shared.state.lock();
        let ps = st.partitions.get_mut(tp).ok_or_else(|| {
            Error::InvalidArgument(format!("{tp} is not assigned to this consumer"))
        })?;
        ps.position = Some(offset);
        ps.epoch += 1;
        self.shared.bump(&mut st);
        Ok(())
    }

    /// Continues `tp` from its first record at or after `timestamp_ms`.
    pub async fn seek_to_timestamp(&self, tp: &TopicPartition, timestamp_ms: i64) -> Result<()> {
        let offset = list_offset(&self.conn, tp, OffsetSpec::Timestamp, timestamp_ms).await?;
        self.seek(tp, offset)
    }

    /// Stops yielding and fetching `partitions` until `resume`.
    pub fn pause(&self, partitions: &[TopicPartition]) {
        self.set_paused(partitions, true);
    }

    pub fn resume(&self, partitions: &[TopicPartition]) {
        self.set_paused(partitions, false);
    }

    fn set_paused(&self, partitions: &[TopicPartition], paused: bool) {
        let mut st = self.shared.state.lock();
        for tp in partitions {
            if let Some(ps) = st.partitions.get_mut(tp) {
                ps.paused = paused;
                ps.epoch += 1;
            }
        }
        self.shared.bump(&mut st);
    }

    /// Commits the positions of all assigned partitions.
    pub async fn commit(&self) -> Result<()> {
        let positions: Vec<(TopicPartition, u64)> = {
            let st = self.shared.state.lock();
            st.partitions
                .iter()
                .filter_map(|(tp, ps)| ps.position.map(|p| (tp.clone(), p)))
                .collect()
        };
        self.commit_offsets(&positions).await
    }

    /// Commits explicit positions (next offsets to consume).
    pub async fn commit_offsets(&self, offsets: &[(TopicPartition, u64)]) -> Result<()> {
        commit(&self.conn, &self.shared, &self.config, offsets).await
    }

    /// The group's committed positions for `partitions`.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, u64>> {
        let group = self
            .config
            .group
            .clone()
            .ok_or_else(|| Error::InvalidArgument("no group".into()))?;
        committed(&self.conn, &group, partitions).await
    }

    /// Commits (if auto-commit is on), leaves the group, and stops.
    pub async fn close(&self) -> Result<()> {
        if self.config.auto_commit.is_some() {
            self.commit().await?;
        }
        let member_id = {
            let mut st = self.shared.state.lock();
            st.closed = true;
            self.shared.bump(&mut st);
            std::mem::take(&mut st.member_id)
        };
        if let (Some(group), false) = (&self.config.group, member_id.is_empty()) {
            let request = LeaveGroupRequest {
                group: group.clone(),
                member_id,
            };
            self.conn
                .coordinator_call(|mut client| {
                    let request = request.clone();
                    async move { client.leave_group(request).await }
                })
                .await?;
        }
        for t in &self.tasks {
            t.abort();
        }
        Ok(())
    }
}

async fn commit(
    conn: &Connection,
    shared: &Shared,
    config: &ConsumerConfig,
    offsets: &[(TopicPartition, u64)],
) -> Result<()> {
    let group = config
        .group
        .clone()
        .ok_or_else(|| Error::InvalidArgument("commit needs a group".into()))?;
    if offsets.is_empty() {
        return Ok(());
    }
    let (member_id, generation) = {
        let st = shared.state.lock();
        (st.member_id.clone(), st.generation)
    };
    let request = CommitOffsetsRequest {
        group,
        member_id,
        generation,
        offsets: offsets
            .iter()
            .map(|(tp, offset)| PartitionOffset {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *offset,
                metadata: String::new(),
            })
            .collect(),
    };
    conn.coordinator_call(|mut client| {
        let request = request.clone();
        async move { client.commit_offsets(request).await }
    })
    .await?;
    let mut st = shared.state.lock();
    for (tp, offset) in offsets {
        if let Some(ps) = st.partitions.get_mut(tp) {
            ps.committed = Some(*offset);
        }
    }
    Ok(())
}

async fn committed(
    conn: &Connection,
    group: &str,
    partitions: &[TopicPartition],
) -> Result<BTreeMap<TopicPartition, u64>> {
    let request = FetchOffsetsRequest {
        group: group.to_owned(),
        partitions: partitions
            .iter()
            .map(|tp| WireTopicPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })
            .collect(),
    };
    // From the coordinator, which applied this group's latest commit.
    let response = conn
        .coordinator_call(|mut client| {
            let request = request.clone();
            async move { client.fetch_offsets(request).await }
        })
        .await?;
    Ok(response
        .offsets
        .into_iter()
        .map(|o| (TopicPartition::new(o.topic, o.partition), o.offset))
        .collect())
}

async fn list_offset(
    conn: &Connection,
    tp: &TopicPartition,
    spec: OffsetSpec,
    timestamp_ms: i64,
) -> Result<u64> {
    let request = ListOffsetsRequest {
        partitions: vec![WireTopicPartition {
            topic: tp.topic.clone(),
            partition: tp.partition,
        }],
        spec: spec as i32,
        timestamp_ms,
    };
    let response = conn
        .leader_call(&tp.topic, tp.partition, |mut client| async move {
            client.list_offsets(request).await
        })
        .await?
        .into_inner();
    response
        .partitions
        .first()
        .map(|p| p.offset)
        .ok_or_else(|| Error::PartitionNotFound(format!("partition {tp} does not exist")))
}
