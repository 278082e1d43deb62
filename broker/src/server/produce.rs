//! Produce on the data port: one request at a time (`Produce`) and
//! pipelined (`ProduceStream`), both through [`start`], so the two answer
//! every request alike (checks, codes, metrics).
//!
//! A pipelined stream reads requests in order and submits each to its
//! partition before reading the next, so a partition writes them in the
//! order they were sent; it answers them in that order as each becomes as
//! durable as its acks asked. It reads at most [`MAX_IN_FLIGHT_BATCHES`]
//! requests ahead of its answers, so a stream holds at most that many
//! batches of produce budget and HTTP/2 flow control holds the rest in the
//! client. With one request in flight a producer waits a full round trip
//! and an fsync per batch; with several, the next batch crosses the wire
//! while the previous one is fsynced.
//!
//! The first request that fails ends the stream with its status, after the
//! answers of the requests before it. Requests read after it may already be
//! submitted; an idempotent producer resends them unchanged, and the broker
//! answers those already written with their original offsets.

use std::future::Future;
use std::time::Instant;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use strata_proto::limits::MAX_IN_FLIGHT_BATCHES;
use strata_proto::v1::{Acks, ProduceRequest, ProduceResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::status::to_status;
use crate::broker::Broker;
use crate::error::Error;
use crate::partition::Acks as PartitionAcks;
use crate::security::{Action, Caller, authorize_caller, throttle};

/// What a stream sends back: one answer per request, in order.
type Answers = mpsc::Sender<Result<ProduceResponse, Status>>;

/// Checks one request and queues its batch behind those submitted before it
/// (call in request order); the future answers it once it is as durable as
/// its acks asked. Refusals (rights, quota, a bad request, a full budget)
/// come back at once.
pub(super) fn start(
    broker: &Broker,
    caller: Option<&Caller>,
    request: ProduceRequest,
) -> Result<impl Future<Output = Result<ProduceResponse, Status>> + Send + 'static, Status> {
    let started = Instant::now();
    let metrics = broker.metrics();
    let refused = |status: Status, overloaded: bool| {
        metrics.produce_error(status.code() as i32, overloaded);
        status
    };
    let check = authorize_caller(caller, Action::Produce, [request.topic.as_str()])
        .and_then(|()| throttle(caller, request.batch.len() as u64).map_err(|e| to_status(&e)));
    if let Err(status) = check {
        let overloaded = status.code() == tonic::Code::ResourceExhausted;
        return Err(refused(status, overloaded));
    }
    let acks = match Acks::try_from(request.acks) {
        Ok(Acks::All) => PartitionAcks::All,
        Ok(Acks::Leader) => PartitionAcks::Leader,
        Ok(Acks::None) => PartitionAcks::None,
        Err(_) => {
            let e = Error::InvalidArgument(format!("unknown acks value {}", request.acks));
            return Err(refused(to_status(&e), false));
        }
    };
    let ProduceRequest {
        topic,
        partition,
        batch,
        ..
    } = request;
    let bytes = batch.len() as u64;
    let pending = broker
        .submit_produce(&topic, partition, batch, acks)
        .map_err(|e| refused(to_status(&e), matches!(e, Error::Overloaded { .. })))?;
    let broker = broker.clone();
    let span = tracing::debug_span!("produce", topic = %topic, partition, bytes);
    Ok(async move {
        let metrics = broker.metrics();
        match pending.wait().instrument(span).await {
            Ok(done) => {
                metrics.produce_ok(bytes, done.duplicate, started.elapsed());
                let high_watermark = broker
                    .partition(&topic, partition)
                    .map_or(0, |p| p.high_watermark());
                Ok(ProduceResponse {
                    base_offset: done.base_offset,
                    duplicate: done.duplicate,
                    high_watermark,
                })
            }
            Err(e) => {
                let status = to_status(&e);
                metrics.produce_error(status.code() as i32, matches!(e, Error::Overloaded { .. }));
                Err(status)
            }
        }
    })
}

/// Starts serving a `ProduceStream` whose requests are `requests` (decoded by
/// tonic or by `produce_route`); the answers are the stream returned.
pub(super) fn serve_stream(
    broker: Broker,
    caller: Option<Caller>,
    requests: impl Stream<Item = Result<ProduceRequest, Status>> + Unpin + Send + 'static,
) -> ReceiverStream<Result<ProduceResponse, Status>> {
    let (answers, rx) = mpsc::channel(MAX_IN_FLIGHT_BATCHES);
    tokio::spawn(pipeline(broker, caller, requests, answers));
    ReceiverStream::new(rx)
}

/// Serves one `ProduceStream` until the client stops sending and has every
/// answer, a request fails, the client goes away, or the broker shuts down.
async fn pipeline(
    broker: Broker,
    caller: Option<Caller>,
    mut requests: impl Stream<Item = Result<ProduceRequest, Status>> + Unpin,
    answers: Answers,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    // The first refusal, sent once the answers before it are.
    let mut refusal: Option<Status> = None;
    let mut shutdown = broker.shutdown_signal();
    loop {
        if in_flight.is_empty() && !reading {
            if let Some(status) = refusal {
                let _ = answers.send(Err(status)).await;
            }
            return;
        }
        tokio::select! {
            // Answers first: each one makes room for another request.
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                let answer: Result<ProduceResponse, Status> = answer;
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    // The client went away, or the stream ends here. What
                    // is still in flight is written all the same, and keeps
                    // its produce budget until it is.
                    finish_in_background(in_flight);
                    return;
                }
            }
            request = requests.next(), if reading && in_flight.len() < MAX_IN_FLIGHT_BATCHES => {
                match request {
                    Some(Ok(request)) => match start(&broker, caller.as_ref(), request) {
                        Ok(answer) => in_flight.push_back(answer),
                        Err(status) => {
                            reading = false;
                            refusal = Some(status);
                        }
                    },
                    // The client sent its last request: answer the rest.
                    None => reading = false,
                    // A message that does not decode, or the client's side
                    // broke: answer what is in flight, then the error (which
                    // nobody reads if the client went away).
                    Some(Err(status)) => {
                        reading = false;
                        refusal = Some(status);
                    }
                }
            }
            // (The guard `wait_for` returns must not live across an await.)
            () = async { drop(shutdown.wait_for(|&down| down).await) }, if reading => {
                reading = false;
                refusal = Some(to_status(&Error::ShuttingDown));
            }
        }
    }
}

/// Lets appends already submitted finish without anyone to answer: each
/// keeps its produce budget until written.
fn finish_in_background<F>(mut in_flight: FuturesOrdered<F>)
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    tokio::spawn(async move { while in_flight.next().await.is_some() {} });
}
