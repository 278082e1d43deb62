//! The consuming side of a bench: K consumers (a group when K > 1) read
//! bench records and verify them as they go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use parking_lot::Mutex;
use strata_client::{Admin, Consumer, OffsetQuery, OffsetReset, StartFrom, TopicPartition};

use super::payload;
use super::report::{Report, histogram, record};
use super::verify::Verifier;
use super::{BenchArgs, progress};
use crate::cli::{CliError, CliResult};

/// Records between progress-bar updates (updating per record costs).
const PROGRESS_EVERY: u64 = 4096;

/// A read stalled this long without a record is a failure.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Read {
    pub verifier: Verifier,
    pub bytes: u64,
    /// Produce-to-consume latency (e2e only).
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
}

pub async fn run(args: &BenchArgs) -> CliResult<Report> {
    let topic = args.topic()?;
    let admin = Admin::connect(args.client.target()?).await?;
    let partitions = admin.partition_count(topic).await?;
    let tps: Vec<_> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let start: u64 = admin
        .list_offsets(&tps, OffsetQuery::Earliest)
        .await?
        .iter()
        .map(|o| o.offset)
        .sum();
    let end: u64 = admin
        .list_offsets(&tps, OffsetQuery::Latest)
        .await?
        .iter()
        .map(|o| o.offset)
        .sum();
    if end - start < args.messages {
        return Err(CliError(format!(
            "topic {topic} holds {} records; asked to read {} (produce first, or lower --messages)",
            end - start,
            args.messages
        )));
    }
    let consumers = open(args, StartFrom::Earliest).await?;
    let bar = progress(args, args.messages);
    let read = read(&consumers, args.messages, false, bar.clone()).await?;
    bar.finish_and_clear();
    let mut report = Report::new("consume");
    report.messages = read.verifier.records;
    report.bytes = read.bytes;
    report.elapsed = read.elapsed;
    report.detail("consumers", args.consumers as u64);
    report.detail("partitions", partitions);
    report.detail("verified", true);
    Ok(report)
}

/// Opens the bench's consumers: one standalone reader of every partition, or
/// a fresh group of `--consumers` members.
pub async fn open(args: &BenchArgs, start: StartFrom) -> CliResult<Vec<Arc<Consumer>>> {
    let topic = args.topic()?;
    let mut out = Vec::with_capacity(args.consumers);
    if args.consumers == 1 {
        let c = Consumer::builder(args.client.target()?)
            .topics([topic])
            .start_from(start)
            .build()
            .await?;
        out.push(Arc::new(c));
        return Ok(out);
    }
    let group = format!("strata-bench-{:08x}", rand::random::<u32>());
    let reset = if start == StartFrom::Latest {
        OffsetReset::Latest
    } else {
        OffsetReset::Earliest
    };
    for i in 0..args.consumers {
        let c = Consumer::builder(args.client.target()?)
            .group(group.clone())
            .topics([topic])
            .client_id(format!("bench-{i}"))
            .offset_reset(reset)
            .auto_commit(Duration::from_secs(1))
            .build()
            .await?;
        out.push(Arc::new(c));
    }
    Ok(out)
}

/// Reads until `expected` records arrived across all consumers, verifying
/// each; with `latency`, measures produce-to-consume time from the stamps.
pub async fn read(
    consumers: &[Arc<Consumer>],
    expected: u64,
    latency: bool,
    bar: ProgressBar,
) -> CliResult<Read> {
    let shared = Arc::new(Mutex::new(Read {
        verifier: Verifier::default(),
        bytes: 0,
        latency: histogram(),
        elapsed: Duration::ZERO,
    }));
    let started = Instant::now();
    // Set once all records arrived, so idle members stop waiting.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut tasks = Vec::new();
    for consumer in consumers {
        let (consumer, shared, bar) = (consumer.clone(), shared.clone(), bar.clone());
        let (done_tx, mut done_rx) = (done_tx.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            // In batches, as Kafka's consumers poll: the records are the
            // same, and the consumer's cost per record is what is measured.
            let mut stream = consumer.batches();
            loop {
                if shared.lock().verifier.records >= expected {
                    done_tx.send_replace(true);
                    return Ok(());
                }
                // Most records are already buffered: take them without arming a timer.
                let ready = futures::FutureExt::now_or_never(stream.next());
                let waited = match ready {
                    Some(next) => Ok(next),
                    None => tokio::select! {
                        next = tokio::time::timeout(STALL_TIMEOUT, stream.next()) => next,
                        _ = done_rx.wait_for(|done| *done) => return Ok(()),
                    },
                };
                let next = match waited {
                    Err(_) => {
                        let n = shared.lock().verifier.records;
                        return Err(format!("reading stalled after {n} of {expected} records"));
                    }
                    Ok(None) => return Err("the consumer stopped".to_owned()),
                    Ok(Some(Err(e))) => return Err(e.to_string()),
                    Ok(Some(Ok(batch))) => batch,
                };
                // The records of a batch arrived together.
                let now = latency.then(payload::now_micros);
                let mut s = shared.lock();
                let before = s.verifier.records;
                // No further than asked: a topic may hold more.
                let room = expected.saturating_sub(before) as usize;
                for r in next.into_iter().take(room) {
                    let value = r.value.unwrap_or_default();
                    let stamp = payload::decode(&value);
                    if let (Some(now), Some(stamp)) = (now, stamp) {
                        let micros = (now - stamp.sent_micros).max(1) as u64;
                        record(&mut s.latency, Duration::from_micros(micros));
                    }
                    s.verifier.record(r.partition, r.offset, stamp);
                    s.bytes += value.len() as u64;
                }
                if s.verifier.records / PROGRESS_EVERY != before / PROGRESS_EVERY {
                    bar.set_position(s.verifier.records);
                }
            }
        }));
    }
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    for c in consumers {
        let _ = c.close().await;
    }
    let mut read = Arc::try_unwrap(shared)
        .map_err(|_| CliError("consumer tasks still running".into()))?
        .into_inner();
    read.elapsed = started.elapsed();
    if let Some(e) = first_error {
        return Err(CliError(e));
    }
    read.verifier
        .finish(Some(expected))
        .map_err(|e| CliError(format!("verification failed: {e}")))?;
    Ok(read)
}
