//! The producing side: K producers, each on its own connection, publish
//! numbered bench records closed-loop and await every JetStream publish ack
//! (the stream has stored the message: NATS's equivalent of `acks=all`).
//!
//! Acks are pipelined, not one round trip per message: each producer keeps
//! at most `--window` publishes unacknowledged (async-nats's own ack
//! semaphore blocks the next publish when the window is full), and a
//! collector task awaits the acks in publish order. Latency runs from just
//! before the publish call to its ack, as `strata bench produce` measures
//! from enqueue to delivery, so time spent waiting for window space counts.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    context::{ContextBuilder, PublishAckFuture},
};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::payload::{self, Payloads};
use crate::report::{Report, histogram, record};
use crate::{BenchResult, ProduceArgs, connect, recreate_stream, stream_messages};

/// How long one publish may wait for its ack before it counts as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// What one producer did.
struct Sent {
    acked: u64,
    latency: Histogram<u64>,
    failures: Vec<String>,
}

pub async fn run(args: &ProduceArgs) -> BenchResult<Report> {
    let c = &args.common;
    if args.size < payload::HEADER_BYTES {
        return Err(format!(
            "--size must be at least {} bytes",
            payload::HEADER_BYTES
        ));
    }
    if args.producers == 0 || args.window == 0 {
        return Err("--producers and --window must be at least 1".into());
    }
    let admin = jetstream::new(connect(&c.server).await?);
    if args.create {
        recreate_stream(&admin, &c.stream).await?;
    }
    let before = stream_messages(&admin, &c.stream).await?;

    // Connect everyone before the clock starts, as strata bench does.
    let mut contexts = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        let client = connect(&c.server).await?;
        contexts.push(
            ContextBuilder::new()
                .timeout(ACK_TIMEOUT)
                .max_ack_inflight(args.window)
                .build(client),
        );
    }
    let producers = args.producers as u64;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.producers);
    for (p, js) in contexts.into_iter().enumerate() {
        let count = c.messages / producers + u64::from((p as u64) < c.messages % producers);
        let subject = c.stream.clone();
        let (size, window) = (args.size, args.window);
        tasks.push(tokio::spawn(async move {
            produce_one(js, subject, p as u32, count, size, window).await
        }));
    }
    let mut latency = histogram();
    let (mut acked, mut failures) = (0u64, Vec::new());
    for t in tasks {
        let sent = t.await.map_err(|e| format!("producer task failed: {e}"))?;
        acked += sent.acked;
        latency.add(&sent.latency).expect("same bounds");
        failures.extend(sent.failures);
    }
    let elapsed = started.elapsed();
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} publish(es) failed; first: {first}",
            failures.len()
        ));
    }
    // Every ack must be a message the stream now holds, and nothing more.
    let stored = stream_messages(&admin, &c.stream).await? - before;
    if stored != acked || acked != c.messages {
        return Err(format!(
            "asked for {} messages, {acked} acknowledged, the stream gained {stored}",
            c.messages
        ));
    }

    let mut report = Report::new("produce");
    report.messages = acked;
    report.bytes = acked * args.size as u64;
    report.elapsed = elapsed;
    report.latency = latency;
    report.detail("broker", "nats");
    report.detail("size", args.size as u64);
    report.detail("producers", producers);
    report.detail("ack_window", args.window as u64);
    report.detail("storage", "file");
    report.detail("replicas", 1);
    Ok(report)
}

async fn produce_one(
    js: async_nats::jetstream::Context,
    subject: String,
    index: u32,
    count: u64,
    size: usize,
    window: usize,
) -> Sent {
    // The ack semaphore inside `js` is what bounds the window; this channel
    // only has to be wide enough never to be the tighter limit.
    let (tx, mut rx) = mpsc::channel::<(PublishAckFuture, Instant)>(window);
    let stream_name = subject.clone();
    let collector = tokio::spawn(async move {
        let mut sent = Sent {
            acked: 0,
            latency: histogram(),
            failures: Vec::new(),
        };
        while let Some((ack, started)) = rx.recv().await {
            match ack.await {
                Ok(ack) if ack.stream != stream_name || ack.duplicate => {
                    sent.failures.push(format!(
                        "unexpected ack: stream {} duplicate {}",
                        ack.stream, ack.duplicate
                    ))
                }
                Ok(_) => {
                    record(&mut sent.latency, started.elapsed());
                    sent.acked += 1;
                }
                Err(e) => sent.failures.push(format!("publish ack: {e}")),
            }
        }
        sent
    });
    let mut publish_failure = None;
    // Records made as `strata bench` makes them, at the same cost.
    let mut payloads = Payloads::new(index, size);
    for sequence in 0..count {
        let started = Instant::now();
        let (_, body) = payloads.next(sequence, started);
        match js.publish(subject.clone(), body).await {
            Ok(ack) => {
                if tx.send((ack, started)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                publish_failure = Some(format!("publish: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let mut sent = collector.await.unwrap_or_else(|e| Sent {
        acked: 0,
        latency: histogram(),
        failures: vec![format!("ack collector failed: {e}")],
    });
    sent.failures.extend(publish_failure);
    sent
}
