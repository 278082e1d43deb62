//! The producing side of a bench: K producers, each with its own connection
//! and producer id, sending numbered bench records closed-loop (as fast as
//! the producer's buffer allows) or open-loop at a fixed rate.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use strata_client::{Acks, Delivery, Producer, ProducerMetrics, ProducerRecord};
use tokio::sync::mpsc;

use super::payload::Payloads;
use super::report::{Report, histogram, record};
use super::{BenchAcks, BenchArgs, progress};
use crate::cli::{CliError, CliResult};

/// Records between progress-bar updates.
const PROGRESS_EVERY: u64 = 4096;

/// Deliveries a closed-loop sender hands to the collector at a time: one
/// channel send per this many records, not one per record, which cost the
/// benchmark a tenth of its CPU. An open-loop sender hands over each one as
/// it goes, so the collector sees every answer when it comes.
const CHUNK_DELIVERIES: usize = 64;

/// Chunks queued for the collector per producer: bounds what it holds
/// (about 100,000 deliveries) before the sender waits for it.
const PENDING_CHUNKS: usize = 100_000 / CHUNK_DELIVERIES;

/// What the producers did.
pub struct Sent {
    pub messages: u64,
    pub bytes: u64,
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    pub failures: Vec<String>,
    /// The producers' own counters, summed.
    pub metrics: ProducerMetrics,
}

pub async fn run(args: &BenchArgs) -> CliResult<Report> {
    let bar = progress(args, args.messages);
    let sent = send_all(args, bar.clone()).await?;
    bar.finish_and_clear();
    if let Some(first) = sent.failures.first() {
        return Err(CliError(format!(
            "{} record(s) failed; first: {first}",
            sent.failures.len()
        )));
    }
    let mut report = Report::new("produce");
    report.messages = sent.messages;
    report.bytes = sent.bytes;
    report.elapsed = sent.elapsed;
    report.latency = sent.latency;
    describe(args, &mut report);
    batching(&sent.metrics, &mut report);
    Ok(report)
}

pub fn describe(args: &BenchArgs, report: &mut Report) {
    report.detail("size", args.size as u64);
    report.detail("producers", args.producers as u64);
    report.detail("partitions_created", args.partitions);
    report.detail(
        "acks",
        if args.acks == BenchAcks::All {
            "all"
        } else {
            "leader"
        },
    );
    if let Some(rate) = args.rate {
        report.detail("rate", rate);
    }
    if let Some(batches) = args.max_in_flight {
        report.detail("max_in_flight", batches as u64);
    }
    if args.linger_when_idle {
        report.detail("linger_when_idle", "yes");
    }
}

/// How the producers batched: records per batch, how long a batch waited
/// before it went, how long the broker took to answer, and retries.
pub fn batching(m: &ProducerMetrics, report: &mut Report) {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    report.detail(
        "batch_records_mean",
        (m.mean_batch_records() * 10.0).round() / 10.0,
    );
    report.detail("batch_queue_ms_mean", ms(m.mean_queue_time()));
    report.detail("request_ms_mean", ms(m.mean_request_latency()));
    report.detail("retries", m.retries);
}

/// Runs all producers to completion.
pub async fn send_all(args: &BenchArgs, bar: ProgressBar) -> CliResult<Sent> {
    let topic = args.topic()?.to_owned();
    let acks = match args.acks {
        BenchAcks::All => Acks::All,
        BenchAcks::Leader => Acks::Leader,
    };
    let producers = args.producers as u64;
    let mut handles = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        let mut builder = Producer::builder(args.client.target()?).acks(acks);
        if let Some(bytes) = args.batch_size {
            builder = builder.batch_size(bytes);
        }
        if let Some(ms) = args.linger_ms {
            builder = builder.linger(Duration::from_millis(ms));
        }
        builder = builder.linger_when_idle(args.linger_when_idle);
        if let Some(batches) = args.max_in_flight {
            builder = builder.max_in_flight(batches);
        }
        handles.push(builder.build().await?);
    }
    let started = Instant::now();
    let deadline = args.deadline();
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(producers as f64 / r.max(1e-9)));
    let mut tasks = Vec::with_capacity(args.producers);
    for (p, producer) in handles.into_iter().enumerate() {
        let count = args.messages / producers + u64::from((p as u64) < args.messages % producers);
        let job = Job {
            producer,
            topic: topic.as_str().into(),
            index: p as u32,
            count,
            size: args.size,
            interval,
            deadline,
            started,
        };
        tasks.push(tokio::spawn(job.run(bar.clone())));
    }
    let mut sent = Sent {
        messages: 0,
        bytes: 0,
        latency: histogram(),
        elapsed: Duration::ZERO,
        failures: Vec::new(),
        metrics: ProducerMetrics::default(),
    };
    for t in tasks {
        let (messages, latency, failures, metrics) = t
            .await
            .map_err(|e| CliError(format!("producer task failed: {e}")))?;
        sent.messages += messages;
        sent.bytes += messages * args.size as u64;
        sent.latency.add(&latency).expect("same bounds");
        sent.failures.extend(failures);
        sent.metrics += metrics;
    }
    sent.elapsed = started.elapsed();
    Ok(sent)
}

struct Job {
    producer: Producer,
    topic: std::sync::Arc<str>,
    index: u32,
    count: u64,
    size: usize,
    interval: Option<Duration>,
    deadline: Option<Instant>,
    started: Instant,
}

impl Job {
    async fn run(self, bar: ProgressBar) -> (u64, Histogram<u64>, Vec<String>, ProducerMetrics) {
        let chunk_len = if self.interval.is_some() {
            1
        } else {
            CHUNK_DELIVERIES
        };
        let (tx, mut rx) = mpsc::channel::<Vec<(Delivery, Instant)>>(PENDING_CHUNKS);
        let collector = tokio::spawn(async move {
            let mut latency = histogram();
            let (mut acked, mut failures) = (0u64, Vec::new());
            // Records found answered, stamped together by one clock read
            // taken after all of them were seen (before the next wait, or at
            // the chunk's end): never earlier than an answer, so latency is
            // never under-counted. A batch's records are answered together,
            // and two clock reads per record were 4% of the bench client's
            // CPU.
            let mut answered: Vec<Instant> = Vec::with_capacity(chunk_len);
            let stamp = |answered: &mut Vec<Instant>, latency: &mut Histogram<u64>| {
                let now = Instant::now();
                for intended in answered.drain(..) {
                    record(latency, now.saturating_duration_since(intended));
                }
            };
            while let Some(chunk) = rx.recv().await {
                for (mut delivery, intended) in chunk {
                    let outcome = match futures::FutureExt::now_or_never(&mut delivery) {
                        Some(outcome) => outcome,
                        None => {
                            stamp(&mut answered, &mut latency);
                            delivery.await
                        }
                    };
                    match outcome {
                        Ok(_) => {
                            answered.push(intended);
                            acked += 1;
                            if acked % PROGRESS_EVERY == 0 {
                                bar.inc(PROGRESS_EVERY);
                            }
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                stamp(&mut answered, &mut latency);
            }
            (acked, latency, failures)
        });
        let mut enqueue_failures = Vec::new();
        let mut payloads = Payloads::new(self.index, self.size);
        let mut chunk = Vec::with_capacity(chunk_len);
        for sequence in 0..self.count {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // Open loop: latency counts from when the record was due, so a
            // stall in the system shows up instead of slowing the sender.
            let due = match self.interval {
                Some(every) => {
                    let at = self.started + every.saturating_mul(sequence as u32);
                    tokio::time::sleep_until(at.into()).await;
                    Some(at)
                }
                None => None,
            };
            let now = Instant::now();
            let intended = due.unwrap_or(now);
            let (stamp, payload) = payloads.next(sequence, now);
            let record = ProducerRecord::new(self.topic.clone(), payload)
                .timestamp(stamp.sent_micros / 1000);
            match self.producer.enqueue(record).await {
                Ok(delivery) => {
                    chunk.push((delivery, intended));
                    if chunk.len() == chunk_len
                        && tx
                            .send(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len)))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    enqueue_failures.push(e.to_string());
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk).await;
        }
        drop(tx);
        let (acked, latency, mut failures) =
            collector
                .await
                .unwrap_or((0, histogram(), vec!["collector failed".into()]));
        if let Err(e) = self.producer.close().await {
            failures.push(e.to_string());
        }
        failures.extend(enqueue_failures);
        (acked, latency, failures, self.producer.metrics())
    }
}
