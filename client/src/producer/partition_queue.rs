//! One partition's side of the producer: the open batch records are added to,
//! the sealed batches waiting to be sent, and the task that sends them.
//!
//! A batch is sealed when it is full (another record like its last would not
//! fit the batch size), when a record does not fit, when its linger time has
//! passed, when the partition has nothing in flight (unless the producer
//! lingers even then), or on flush; sealing assigns its producer epoch and
//! first sequence number. Batches are sent in order on one produce stream to
//! the partition's leader, up to `max_in_flight` of them before the first is
//! answered (the broker writes and answers a stream's batches in the order
//! sent), so the next batch crosses the wire while the broker fsyncs the
//! previous one.
//!
//! When the stream fails (a refusal, a leader change, a lost connection, no
//! answer within the request timeout), the batches it left unanswered go
//! back to the front of the queue, marked *maybe written*, and the front one
//! is sent alone and retried with the same bytes (and so the same sequence)
//! until it succeeds, fails for good, or hits the delivery timeout; then
//! pipelining resumes. The broker recognises a retry of a batch it already
//! wrote and answers with the original offset, so retries never duplicate.
//!
//! When a batch fails for good, its records get the error, and the partition
//! starts a new producer epoch with sequence 0 so the batches behind it are not
//! refused as out of order. Batches that may already be written keep their
//! stamps: restamped, they would be written a second time. Every record's
//! delivery resolves exactly once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use strata_proto::batch::{BatchBuilder, ProducerStamp, Record, restamp_producer};
use strata_proto::grpc_wire::PRODUCE_STREAM_PATH;
use strata_proto::v1::{ProduceRequest, ProduceResponse};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::delivery::{Delivery, Resolver};
use super::metrics::Counters;
use super::{Acks, MOVED_ON, ProducerConfig};
use crate::connection::{Connection, MAX_RESPONSE_BYTES};
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::wire_call::{self, Responses};

struct OpenBatch {
    builder: BatchBuilder,
    /// Resolves every record's [`Delivery`] at once.
    outcome: Resolver,
    /// Bytes of the producer's buffer its records took.
    reserved: u32,
    created: Instant,
}

/// Bytes of the producer's buffer memory, given back when dropped.
struct Reserved {
    buffer: Arc<Semaphore>,
    bytes: u32,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.buffer.add_permits(self.bytes as usize);
    }
}

struct SealedBatch {
    payload: Bytes,
    outcome: Resolver,
    _reserved: Reserved,
    created: Instant,
    records: u32,
    /// Times sent so far (for the producer's metrics).
    sends: u32,
    /// Sent on a stream that failed before answering it: the broker may have
    /// written it.
    maybe_written: bool,
}

/// How a run of [`PartitionQueue::pipeline`] ended.
enum PipelineEnd {
    /// Closed, and every batch answered.
    Closed,
    /// The stream failed or could not start; the batches it did not answer
    /// are back at the front of the queue.
    Broken,
    /// The broker does not serve produce streams (an older version).
    Unsupported,
}

#[derive(Default)]
struct State {
    open: Option<OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    flush_requested: bool,
    closed: bool,
    epoch: u16,
    next_sequence: u32,
    /// About the size of this partition's recent batches: what a new batch
    /// is given room for.
    batch_bytes_hint: usize,
    /// Bytes of keyless records taken since this partition became the
    /// topic's sticky one.
    sticky_bytes: usize,
    /// Records enqueued / resolved so far, for `flush`.
    enqueued: u64,
    resolved: u64,
}

pub(crate) struct PartitionQueue {
    topic: Arc<str>,
    partition: u32,
    producer_id: u64,
    state: Mutex<State>,
    /// Wakes the sender: new data, flush, close.
    wake: Notify,
    /// Wakes flushers: records resolved.
    progress: Notify,
    /// The producer's buffer memory, which resolved batches give back to.
    buffer: Arc<Semaphore>,
    /// The topic's sticky partition for keyless records (see `TopicQueues`).
    sticky: Arc<AtomicU32>,
    /// The producer's metrics.
    counters: Arc<Counters>,
}

/// The least a new batch allocates (it grows by doubling from there).
const BATCH_MIN_CAPACITY_BYTES: usize = 16 * 1024;

impl PartitionQueue {
    pub fn new(
        topic: Arc<str>,
        partition: u32,
        producer_id: u64,
        epoch: u16,
        buffer: Arc<Semaphore>,
        sticky: Arc<AtomicU32>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(PartitionQueue {
            topic,
            partition,
            producer_id,
            buffer,
            sticky,
            counters,
            state: Mutex::new(State {
                epoch,
                ..State::default()
            }),
            wake: Notify::new(),
            progress: Notify::new(),
        })
    }

    /// Adds a record to the open batch, sealing it first if the record would
    /// not fit, and after if it is full. `bytes` of the producer's buffer are
    /// the record's: given back with its batch, or at once if refused.
    /// Keyless (`sticky`) records move the topic's sticky partition on once
    /// they fill a batch or, where linger sends batches before they fill,
    /// once a batch size of them came here: whole batches when busy, an even
    /// spread over partitions either way (Kafka's uniform sticky rule).
    pub fn push(
        &self,
        record: &Record,
        bytes: u32,
        batch_size: usize,
        sticky: bool,
    ) -> Result<Delivery> {
        let refuse = |error: Error| {
            self.buffer.add_permits(bytes as usize);
            Err(error)
        };
        let mut st = self.state.lock();
        if st.closed {
            return refuse(Error::Closed);
        }
        // The sender is woken only for news: a batch to send, or a batch's
        // first record, whose linger it must time. A record added to a batch
        // it already times is none, and waking it for each (it re-locked the
        // queue and re-armed its timer) cost about 3% of a producer's CPU.
        let mut sealed = false;
        if let Some(open) = &st.open
            && !open.builder.is_empty()
            && open.builder.encoded_len() + open.builder.record_encoded_len(record) > batch_size
        {
            // Larger than the records before it: it starts the next batch
            // here, which keyless records go on filling (counted afresh, or
            // they would move on at once and leave it to linger).
            self.seal(&mut st);
            st.sticky_bytes = 0;
            sealed = true;
        }
        // Sized like recent batches, with room to grow: filling a batch
        // should not copy it at every doubling.
        let capacity = (st.batch_bytes_hint + st.batch_bytes_hint / 4)
            .clamp(BATCH_MIN_CAPACITY_BYTES.min(batch_size), batch_size);
        let open = st.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(ProducerStamp::default(), capacity),
            outcome: Resolver::new(self.topic.clone(), self.partition),
            reserved: 0,
            created: Instant::now(),
        });
        let mut news = sealed || open.builder.is_empty();
        let index = open.builder.len();
        let before = open.builder.encoded_len();
        if let Err(e) = open.builder.push(record) {
            // No empty batch is left for the sender to send (the broker
            // refuses a batch of no records).
            if open.builder.is_empty() {
                st.open = None;
            }
            drop(st);
            if sealed {
                self.wake.notify_one();
            }
            return refuse(e.into());
        }
        // What the record took, read off the builder rather than encoded
        // again for its length.
        let record_bytes = open.builder.encoded_len() - before;
        let delivery = open.outcome.delivery(index, record.timestamp);
        open.reserved += bytes;
        // Full once another record like this one would not fit: sealed now,
        // not when the next record arrives (which a keyless one then would
        // not, having moved on, leaving a batch of one to linger).
        let full = open.builder.encoded_len() + record_bytes > batch_size;
        st.enqueued += 1;
        if full {
            self.seal(&mut st);
            news = true;
        }
        let mut move_on = false;
        if sticky {
            st.sticky_bytes += record_bytes;
            move_on = full || st.sticky_bytes + record_bytes > batch_size;
            if move_on {
                st.sticky_bytes = 0;
            }
        }
        drop(st);
        if move_on {
            // The next keyless record picks a partition again (unless
            // another record already moved the topic on).
            let _ = self.sticky.compare_exchange(
                self.partition,
                MOVED_ON | self.partition,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if news {
            self.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Seals the open batch: stamps producer epoch and sequences, encodes it.
    fn seal(&self, st: &mut State) {
        let Some(mut open) = st.open.take() else {
            return;
        };
        let records = open.builder.len();
        // A batch sealed by linger may be a busy partition's short tail:
        // the hint follows the largest recent batch and decays slowly.
        let len = open.builder.encoded_len();
        st.batch_bytes_hint = len.max(st.batch_bytes_hint - st.batch_bytes_hint / 8);
        if self.producer_id != 0 {
            open.builder.set_producer(ProducerStamp {
                producer_id: self.producer_id,
                producer_epoch: st.epoch,
                base_sequence: st.next_sequence,
            });
            st.next_sequence = st.next_sequence.wrapping_add(records);
        }
        // Buffer memory counts record bytes, not room: a batch sealed far
        // smaller than the room it was given (a busy partition gone quiet)
        // is copied out, so what it holds stays within twice what it counts.
        let oversized = open.builder.capacity() > 2 * len.max(BATCH_MIN_CAPACITY_BYTES);
        let payload = open.builder.finish();
        let payload = if oversized {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        st.sealed.push_back(SealedBatch {
            payload,
            outcome: open.outcome,
            _reserved: Reserved {
                buffer: self.buffer.clone(),
                bytes: open.reserved,
            },
            created: open.created,
            records,
            sends: 0,
            maybe_written: false,
        });
    }

    /// Starts a new producer epoch at sequence 0 and restamps the batches
    /// still waiting, so they follow on from the reset.
    fn reset_sequences(&self, st: &mut State) {
        if self.producer_id == 0 {
            return;
        }
        st.epoch = st.epoch.wrapping_add(1);
        st.next_sequence = 0;
        // A batch that may be written keeps its stamp: sent again unchanged,
        // it is answered as a duplicate if it was written, or refused as out
        // of order if not, and only then restamped (in `deliver`).
        for batch in st.sealed.iter_mut().filter(|b| !b.maybe_written) {
            let mut bytes = batch.payload.to_vec();
            restamp_producer(&mut bytes, st.epoch, st.next_sequence);
            st.next_sequence = st.next_sequence.wrapping_add(batch.records);
            batch.payload = Bytes::from(bytes);
        }
        tracing::info!(topic = %self.topic, partition = self.partition, epoch = st.epoch,
            "producer sequences reset after a failed batch");
    }

    /// Seals the open batch at once and waits until every record enqueued
    /// before this call has been resolved.
    pub async fn flush(&self) {
        let target = {
            let mut st = self.state.lock();
            st.flush_requested = true;
            st.enqueued
        };
        self.wake.notify_one();
        loop {
            let progressed = self.progress.notified();
            if self.state.lock().resolved >= target {
                return;
            }
            progressed.await;
        }
    }

    /// No more records; the sender finishes what it has, then stops.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
    }

    /// Takes the next batch to send, waiting for one to be sealed (by size,
    /// linger, flush or close; at once if `idle`: nothing of the partition's
    /// is in flight and the producer does not linger then). `None` once
    /// closed and empty.
    async fn next_batch(&self, config: &ProducerConfig, idle: bool) -> Option<SealedBatch> {
        let linger = config.linger;
        let idle = idle && !config.linger_when_idle;
        loop {
            let wake = self.wake.notified();
            let deadline = {
                let mut st = self.state.lock();
                if let Some(batch) = st.sealed.pop_front() {
                    return Some(batch);
                }
                match &st.open {
                    Some(open)
                        if st.flush_requested
                            || st.closed
                            || idle
                            || open.created.elapsed() >= linger =>
                    {
                        self.seal(&mut st);
                        continue;
                    }
                    Some(open) => Some(open.created + linger),
                    None if st.closed => return None,
                    None => {
                        st.flush_requested = false;
                        None
                    }
                }
            };
            match deadline {
                Some(at) => {
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    fn resolve(&self, batch: SealedBatch, result: Result<Option<u64>>) {
        if result.is_err() {
            self.counters.failed(batch.records);
        }
        // Callers may have dropped their deliveries; that is their choice.
        batch.outcome.resolve(result);
        self.state.lock().resolved += u64::from(batch.records);
        self.progress.notify_waiters();
    }

    /// Counts a send of `batch` in the producer's metrics: its first, which
    /// went `queued` after the batch's first record, or a retry.
    fn count_send(&self, batch: &mut SealedBatch, queued: Duration) {
        let first = (batch.sends == 0).then_some(queued);
        batch.sends += 1;
        self.counters.sent(first);
    }

    /// The partition's sender: sends sealed batches in order until closed.
    pub async fn run(self: Arc<Self>, conn: Arc<Connection>, config: ProducerConfig) {
        let mut pipelined = config.max_in_flight > 1;
        loop {
            // Batches that may be written go alone, first: on a stream
            // beside batches restamped to a newer epoch, a newer one could be
            // written ahead of them and fence them, written or not.
            if pipelined && !self.front_maybe_written() {
                match self.pipeline(&conn, &config).await {
                    PipelineEnd::Closed => return,
                    PipelineEnd::Broken => {}
                    PipelineEnd::Unsupported => pipelined = false,
                }
            }
            // One batch alone, retried until it is answered: after a broken
            // stream, the first batch the stream left unanswered.
            let Some(mut batch) = self.next_batch(&config, true).await else {
                return;
            };
            let result = self.deliver(&conn, &config, &mut batch).await;
            if result.is_err() {
                self.reset_sequences(&mut self.state.lock());
            }
            self.resolve(batch, result);
        }
    }

    fn front_maybe_written(&self) -> bool {
        (self.state.lock().sealed.front()).is_some_and(|b| b.maybe_written)
    }

    fn request(&self, batch: &SealedBatch, config: &ProducerConfig) -> ProduceRequest {
        ProduceRequest {
            topic: self.topic.to_string(),
            partition: self.partition,
            // The same bytes on every attempt: the same producer epoch and
            // sequence, so the leader (old or new) writes the batch once.
            batch: batch.payload.clone(),
            acks: config.acks.wire() as i32,
        }
    }

    /// Puts unanswered batches back at the front of the queue, in order;
    /// `sent` if they went out on a stream (the broker may have written them).
    fn requeue(&self, batches: VecDeque<SealedBatch>, sent: bool) {
        let mut st = self.state.lock();
        for mut batch in batches.into_iter().rev() {
            batch.maybe_written |= sent;
            st.sealed.push_front(batch);
        }
    }

    /// Sends batches on one produce stream to the partition's leader, at most
    /// `max_in_flight` unanswered, and resolves each with its answer (they
    /// come in order). Returns once closed and answered, or at the first
    /// failure, leaving what is unanswered to [`PartitionQueue::deliver`].
    async fn pipeline(&self, conn: &Connection, config: &ProducerConfig) -> PipelineEnd {
        let Some(mut first) = self.next_batch(config, true).await else {
            return PipelineEnd::Closed;
        };
        let transport = match conn.leader_transport(&self.topic, self.partition).await {
            Ok(transport) => transport,
            Err(_) => {
                // `deliver` finds the leader, with backoff.
                self.requeue(VecDeque::from([first]), false);
                return PipelineEnd::Broken;
            }
        };
        let (requests, rx) = mpsc::channel(config.max_in_flight);
        let queued = first.created.elapsed();
        self.count_send(&mut first, queued);
        requests
            .try_send(self.request(&first, config))
            .expect("an empty channel has room");
        let mut in_flight = VecDeque::from([(first, Instant::now())]);
        let opening = wire_call::bidi_streaming(
            transport,
            PRODUCE_STREAM_PATH,
            ReceiverStream::new(rx),
            MAX_RESPONSE_BYTES,
        );
        let failure = self.stream(opening, requests, &mut in_flight, config).await;
        let Some(status) = failure else {
            return PipelineEnd::Closed;
        };
        let unsupported = status.code() == tonic::Code::Unimplemented;
        let error = Error::from_status(&status);
        conn.leader_failed(&self.topic, self.partition, &error);
        tracing::debug!(topic = %self.topic, partition = self.partition, %error,
            unanswered = in_flight.len(), "produce stream broken");
        self.requeue(in_flight.into_iter().map(|(b, _)| b).collect(), true);
        if unsupported {
            PipelineEnd::Unsupported
        } else {
            PipelineEnd::Broken
        }
    }

    /// The body of [`PartitionQueue::pipeline`]: `None` when closed and
    /// answered, else why the stream failed. Requests keep going out while
    /// the stream opens (a broker may answer the opening only after it has
    /// read some).
    async fn stream(
        &self,
        opening: impl Future<Output = std::result::Result<Responses<ProduceResponse>, Status>>,
        requests: mpsc::Sender<ProduceRequest>,
        in_flight: &mut VecDeque<(SealedBatch, Instant)>,
        config: &ProducerConfig,
    ) -> Option<Status> {
        let mut opening = std::pin::pin!(opening);
        let mut answers = None;
        let mut closing = false;
        loop {
            if closing && in_flight.is_empty() {
                return None;
            }
            let oldest = in_flight
                .front()
                .map(|(_, sent)| *sent + config.request_timeout);
            tokio::select! {
                opened = &mut opening, if answers.is_none() => match opened {
                    Ok(stream) => answers = Some(stream),
                    Err(status) => return Some(status),
                },
                answer = next_answer(&mut answers) => match answer {
                    Ok(Some(answer)) => {
                        let Some((batch, sent)) = in_flight.pop_front() else {
                            return Some(Status::internal("an answer to no request on a produce stream"));
                        };
                        self.counters.acked(batch.records, batch.payload.len(), sent.elapsed());
                        let base = (config.acks != Acks::None).then_some(answer.base_offset);
                        self.resolve(batch, Ok(base));
                    }
                    Ok(None) => return Some(Status::unavailable("the broker ended the produce stream")),
                    Err(status) => return Some(status),
                },
                batch = self.next_batch(config, in_flight.is_empty()), if !closing && in_flight.len() < config.max_in_flight => {
                    match batch {
                        Some(mut batch) => {
                            let queued = batch.created.elapsed();
                            self.count_send(&mut batch, queued);
                            let request = self.request(&batch, config);
                            in_flight.push_back((batch, Instant::now()));
                            // Never full: at most `max_in_flight` unanswered.
                            if requests.try_send(request).is_err() {
                                return Some(Status::unavailable("the produce stream closed"));
                            }
                        }
                        None => closing = true,
                    }
                }
                () = sleep_until_some(oldest) => {
                    return Some(Status::deadline_exceeded(format!(
                        "no answer to a produce within {:?}",
                        config.request_timeout
                    )));
                }
            }
        }
    }

    async fn deliver(
        &self,
        conn: &Connection,
        config: &ProducerConfig,
        batch: &mut SealedBatch,
    ) -> Result<Option<u64>> {
        let deadline = batch.created + config.delivery_timeout;
        let mut backoff = Backoff::default();
        let mut sent = batch.maybe_written;
        let mut restamped = false;
        loop {
            let now = Instant::now();
            let request_timeout = config
                .request_timeout
                .min(deadline.saturating_duration_since(now));
            let mut request = tonic::Request::new(self.request(batch, config));
            request.set_timeout(request_timeout);
            let queued = batch.created.elapsed();
            // When the request left: once there was a leader to send it to.
            let mut sent_at = None;
            // A failure here also tells the connection where the leader went
            // (a hint, or a refresh before the next attempt).
            let attempt = conn.leader_call(&self.topic, self.partition, |mut client| {
                sent_at = Some(Instant::now());
                async move { client.produce(request).await }
            });
            let result = attempt.await;
            // An attempt that found no leader or could not connect sent nothing.
            if sent_at.is_some() && !matches!(result, Err(Error::Connect { .. })) {
                self.count_send(batch, queued);
            }
            let error = match result {
                Ok(response) => {
                    let latency = sent_at.map_or(Duration::ZERO, |at| at.elapsed());
                    self.counters
                        .acked(batch.records, batch.payload.len(), latency);
                    let base = response.into_inner().base_offset;
                    return Ok((config.acks != Acks::None).then_some(base));
                }
                Err(e) => e,
            };
            // Anything but a refusal before the broker read the batch may have
            // reached it; its outcome is then unknown until a retry answers.
            sent |= !matches!(error, Error::Overloaded { .. } | Error::Connect { .. });
            if matches!(error, Error::OutOfOrderSequence(_)) && !restamped {
                // The broker does not know our sequence (its producer state
                // expired, or batches before this one failed): start a new
                // epoch for this batch and those behind it. None of them is
                // written: the broker writes a producer's batches in sequence.
                let mut st = self.state.lock();
                st.sealed.push_front(SealedBatch {
                    payload: batch.payload.clone(),
                    // A stand-in for restamping only: nobody waits on it.
                    outcome: Resolver::new(self.topic.clone(), self.partition),
                    _reserved: Reserved {
                        buffer: self.buffer.clone(),
                        bytes: 0,
                    },
                    created: batch.created,
                    records: batch.records,
                    sends: 0,
                    maybe_written: false,
                });
                for b in st.sealed.iter_mut() {
                    b.maybe_written = false;
                }
                self.reset_sequences(&mut st);
                batch.payload = st.sealed.pop_front().expect("just pushed").payload;
                restamped = true;
                continue;
            }
            if !error.is_retriable() || matches!(error, Error::OutOfOrderSequence(_)) {
                return Err(error);
            }
            let delay = backoff.next(error.retry_after());
            if Instant::now() + delay >= deadline {
                return Err(Error::Timeout {
                    elapsed: batch.created.elapsed(),
                    last_error: error.to_string(),
                    maybe_written: sent,
                });
            }
            tracing::debug!(topic = %self.topic, partition = self.partition, error = %error,
                delay_ms = delay.as_millis() as u64, "retrying produce");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next answer of an open stream; never, while it is still opening.
async fn next_answer(
    answers: &mut Option<Responses<ProduceResponse>>,
) -> std::result::Result<Option<ProduceResponse>, Status> {
    match answers {
        Some(answers) => futures::StreamExt::next(answers).await.transpose(),
        None => std::future::pending().await,
    }
}
