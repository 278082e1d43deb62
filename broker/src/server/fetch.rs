//! One fetch stream: whole stored batches of a set of partitions, streamed from
//! given offsets, long-polling at the high watermark.
//!
//! Memory is bounded per stream and in total: a stream reads only after taking
//! `max_bytes` from the broker's fetch budget, and hands the response to a
//! channel of capacity one; the budget is released when gRPC takes the message
//! for sending. A slow consumer therefore pins at most about two responses,
//! and HTTP/2 flow control does the rest. The stream's task ends as soon as the
//! client goes away, its deadline passes, or the broker shuts down — or when
//! gRPC has taken nothing from it for `fetch_idle_timeout` (a consumer that
//! stopped reading): the stream then ends with UNAVAILABLE `stream-idle`.

use futures::Stream;
use futures::future::select_all;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use strata_proto::limits::FETCH_MAX_BYTES;
use strata_proto::v1::{FetchPosition, FetchRequest, FetchResponse, PartitionError};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};
use tracing::Instrument;

use super::deadline;
use super::status::{classify, to_status};
use crate::broker::Broker;
use crate::budget::BudgetPermit;
use crate::error::Error;
use crate::partition::Partition;
use crate::security::{Action, authorize};

/// Longest long-poll a client may ask for.
pub const FETCH_MAX_WAIT_LIMIT_MS: u64 = 30_000;

pub type FetchStream = Pin<Box<dyn Stream<Item = Result<FetchResponse, Status>> + Send>>;

struct Cursor {
    partition: Arc<Partition>,
    offset: u64,
    done: bool,
}

/// Serves a Fetch call: authorizes it, then [`open`]s its stream before its
/// deadline (`grpc-timeout`), which the stream keeps to.
pub fn start(broker: &Broker, request: Request<FetchRequest>) -> Result<FetchStream, Status> {
    let until = deadline::deadline(request.metadata());
    let topics = request.get_ref().positions.iter().map(|p| p.topic.as_str());
    authorize(&request, Action::Consume, topics)?;
    let r = request.into_inner();
    open(broker, r.positions, r.max_bytes, r.max_wait_ms, until).map_err(|e| {
        let status = to_status(&e);
        broker.metrics().fetch_error(status.code() as i32);
        status
    })
}

/// Validates the request and starts the stream. Unknown partitions and
/// offsets outside the log are refused before anything is streamed.
fn open(
    broker: &Broker,
    positions: Vec<FetchPosition>,
    max_bytes: u32,
    max_wait_ms: u32,
    deadline: Option<Instant>,
) -> Result<FetchStream, Error> {
    if positions.is_empty() {
        return Err(Error::InvalidArgument(
            "a fetch needs at least one partition".into(),
        ));
    }
    let mut cursors: Vec<Cursor> = Vec::with_capacity(positions.len());
    for pos in positions {
        let partition = broker.partition(&pos.topic, pos.partition)?;
        if cursors
            .iter()
            .any(|c| Arc::ptr_eq(&c.partition, &partition))
        {
            return Err(Error::InvalidArgument(format!(
                "partition {}/{} is listed twice",
                pos.topic, pos.partition
            )));
        }
        // Out of range means outside the log, not above the high watermark:
        // a newly elected leader's high watermark trails the offsets its
        // predecessor acknowledged until it commits an entry of its own term,
        // so a consumer that moves over asks for offsets above it but within
        // the log. Such a cursor waits below like any other at the end;
        // calling it out of range would reset the consumer (to the start,
        // typically) and make it read everything again.
        let start = partition.start_offset();
        let end = partition.high_watermark().max(partition.end_offset());
        if pos.offset < start || pos.offset > end {
            return Err(Error::OffsetOutOfRange {
                topic: pos.topic,
                partition: pos.partition,
                requested: pos.offset,
                start,
                end,
            });
        }
        cursors.push(Cursor {
            partition,
            offset: pos.offset,
            done: false,
        });
    }
    let max_bytes = if max_bytes == 0 {
        FETCH_MAX_BYTES
    } else {
        (max_bytes as usize).min(FETCH_MAX_BYTES)
    };
    let max_wait = match max_wait_ms {
        0 => broker.config().fetch_max_wait,
        ms => Duration::from_millis(u64::from(ms).min(FETCH_MAX_WAIT_LIMIT_MS)),
    };
    let (tx, rx) = mpsc::channel::<(Result<FetchResponse, Status>, Option<BudgetPermit>)>(1);
    let idle = broker.config().fetch_idle_timeout;
    let idled = Arc::new(AtomicBool::new(false));
    let sender = Sender {
        tx: tx.clone(),
        idle,
        idled: idled.clone(),
    };
    let broker = broker.clone();
    let span = tracing::debug_span!("fetch", partitions = cursors.len(), max_bytes);
    tokio::spawn(async move {
        let deadline_tx = tx;
        let stream = run(broker, cursors, max_bytes, max_wait, sender);
        match deadline {
            None => stream.await,
            Some(at) => tokio::select! {
                () = stream => {}
                () = tokio::time::sleep_until(at.into()) => {
                    let status = Status::deadline_exceeded("the fetch stream reached its deadline");
                    let _ = deadline_tx.send((Err(status), None)).await;
                }
            },
        }
    }.instrument(span));
    // Dropping the permit as gRPC takes the message returns its bytes to the budget.
    let mut responses = ReceiverStream::new(rx).map(|(response, _permit)| response);
    let mut ended = false;
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        if ended {
            return Poll::Ready(None);
        }
        // Set before the task drops its sender, so it is seen before the end.
        if idled.load(Ordering::Acquire) {
            ended = true;
            return Poll::Ready(Some(Err(to_status(&Error::StreamIdle { idle }))));
        }
        Pin::new(&mut responses).poll_next(cx)
    })))
}

/// The task's end of a stream: hands responses to gRPC, and gives up on a
/// consumer that has not taken the previous one within `idle`.
struct Sender {
    tx: mpsc::Sender<(Result<FetchResponse, Status>, Option<BudgetPermit>)>,
    idle: Duration,
    idled: Arc<AtomicBool>,
}

impl Sender {
    /// Whether `item` was handed over; `false`: the stream is over.
    async fn send(
        &self,
        item: (Result<FetchResponse, Status>, Option<BudgetPermit>),
        broker: &Broker,
    ) -> bool {
        match tokio::time::timeout(self.idle, self.tx.send(item)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                broker.metrics().fetch_idle_closed();
                tracing::info!(
                    idle_ms = self.idle.as_millis() as u64,
                    "fetch stream closed: its consumer read nothing"
                );
                self.idled.store(true, Ordering::Release);
                false
            }
        }
    }
}

fn response(c: &Cursor, records: bytes::Bytes, error: Option<PartitionError>) -> FetchResponse {
    FetchResponse {
        topic: c.partition.topic().to_owned(),
        partition: c.partition.index(),
        records,
        next_offset: c.offset,
        high_watermark: c.partition.high_watermark(),
        log_start_offset: c.partition.start_offset(),
        error,
    }
}

/// Counts a fetch stream as active for as long as its task runs.
struct ActiveStream(Broker);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.metrics().fetch_stream_closed();
    }
}

async fn run(
    broker: Broker,
    mut cursors: Vec<Cursor>,
    max_bytes: usize,
    max_wait: Duration,
    tx: Sender,
) {
    broker.metrics().fetch_stream_opened();
    let _active = ActiveStream(broker.clone());
    let mut shutdown = broker.shutdown_signal();
    loop {
        if tx.tx.is_closed() || broker.is_shutting_down() {
            return;
        }
        let mut sent = false;
        for c in cursors.iter_mut().filter(|c| !c.done) {
            if c.offset >= c.partition.high_watermark() {
                continue;
            }
            let permit = tokio::select! {
                permit = broker.fetch_budget().acquire(max_bytes) => permit,
                _ = tx.tx.closed() => return,
            };
            match c.partition.read(c.offset, max_bytes).await {
                Ok(chunk) if chunk.bytes.is_empty() => {}
                Ok(chunk) => {
                    c.offset = chunk.next_offset;
                    broker.metrics().fetch_response(chunk.bytes.len() as u64);
                    if !tx
                        .send((Ok(response(c, chunk.bytes, None)), Some(permit)), &broker)
                        .await
                    {
                        return;
                    }
                    sent = true;
                }
                Err(e) => {
                    let (code, kind) = classify(&e);
                    broker.metrics().fetch_error(code as i32);
                    tracing::warn!(topic = c.partition.topic(), partition = c.partition.index(),
                        offset = c.offset, error = %e, "fetch of partition stopped");
                    let error = PartitionError {
                        code: code as i32,
                        kind: kind.into(),
                        message: to_status(&e).message().into(),
                    };
                    c.done = true;
                    if !tx
                        .send(
                            (Ok(response(c, bytes::Bytes::new(), Some(error))), None),
                            &broker,
                        )
                        .await
                    {
                        return;
                    }
                }
            }
        }
        let waiting: Vec<_> = cursors
            .iter()
            .filter(|c| !c.done)
            .map(|c| Box::pin(c.partition.wait_for(c.offset, max_wait)))
            .collect();
        if waiting.is_empty() {
            return;
        }
        if !sent {
            tokio::select! {
                _ = select_all(waiting) => {}
                _ = tx.tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    }
}
