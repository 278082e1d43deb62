//! The broker's own durable-append throughput: the yardstick the produce path
//! is measured against in the same run.
//!
//! A broker opened in this process on a fresh directory; `--producers`
//! writers, writer `w` appending to partition `w mod --partitions`, each with
//! up to `--max-in-flight` batches in flight (default: as many as the client
//! keeps per partition, 5): the next is submitted while earlier ones are
//! fsynced, as the client's produce stream does. Every batch is
//! idempotent, `--batch-size` bytes (default: the client's batch, 1 MiB) of
//! `--size`-byte records, and goes through `Broker::produce` with acks=all:
//! the produce budget, validation, the dedupe table, group commit and fsync —
//! everything a produce request costs once it has arrived, without gRPC and
//! without the client.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use strata_broker::cluster::topics::TopicSettings;
use strata_broker::partition::Acks;
use strata_broker::{Broker, BrokerConfig};
use strata_client::producer::BATCH_SIZE_BYTES;
use strata_proto::batch::{BatchBuilder, ProducerStamp, Record, restamp_producer};
use strata_proto::limits::MAX_IN_FLIGHT_BATCHES;

use super::payload::Payloads;
use super::report::{Report, histogram, record};
use super::{BenchArgs, scratch_dir};
use crate::cli::{CliError, CliResult};

const TOPIC: &str = "engine-append";

pub async fn run(args: &BenchArgs) -> CliResult<Report> {
    let dir = scratch_dir(args, "append")?;
    let broker = Broker::open(BrokerConfig::with_data_dir(&dir)).await?;
    let settings = TopicSettings {
        partitions: args.partitions,
        ..TopicSettings::default()
    };
    broker.create_topic(TOPIC, settings).await?;
    let batch_bytes = args.batch_size.unwrap_or(BATCH_SIZE_BYTES);
    let per_writer = args.messages / args.producers as u64;
    let in_flight_max = args.max_in_flight.unwrap_or(MAX_IN_FLIGHT_BATCHES).max(1);

    let mut writers = Vec::with_capacity(args.producers);
    for w in 0..args.producers {
        let (producer_id, epoch) = broker.init_producer().await?;
        let template = batch(w, producer_id, epoch, args.size, batch_bytes)?;
        writers.push((w, epoch, template));
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers.len());
    for (w, epoch, (template, per_batch)) in writers {
        let broker = broker.clone();
        let partition = (w % args.partitions as usize) as u32;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut submitted = 0u64;
            let mut written = 0u64;
            let mut sequence = 0u32;
            let mut in_flight = VecDeque::with_capacity(in_flight_max);
            while written < per_writer {
                if submitted < per_writer && in_flight.len() < in_flight_max {
                    // A fresh buffer per batch, as a request brings one.
                    let mut bytes = template.to_vec();
                    restamp_producer(&mut bytes, epoch, sequence);
                    let sent = Instant::now();
                    let pending =
                        broker.submit_produce(TOPIC, partition, Bytes::from(bytes), Acks::All)?;
                    in_flight.push_back((sent, pending));
                    sequence = sequence.wrapping_add(per_batch);
                    submitted += u64::from(per_batch);
                    continue;
                }
                let (sent, pending) = in_flight.pop_front().expect("a batch is in flight");
                pending.wait().await?;
                record(&mut latency, sent.elapsed());
                written += u64::from(per_batch);
            }
            Ok::<_, strata_broker::Error>((latency, written))
        }));
    }
    let mut report = Report::new("append");
    for t in tasks {
        let (latency, written) = t.await.map_err(|e| CliError(e.to_string()))??;
        report.latency.add(&latency).expect("same bounds");
        report.messages += written;
    }
    report.elapsed = started.elapsed();
    report.bytes = report.messages * args.size as u64;
    // A fast number must never hide appends that did not land.
    let mut stored = 0;
    for p in 0..args.partitions {
        stored += broker.partition(TOPIC, p)?.high_watermark();
    }
    if stored != report.messages {
        return Err(CliError(format!(
            "appended {} records but the partitions hold {stored}",
            report.messages
        )));
    }
    broker.shutdown().await?;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    report.detail("producers", args.producers as u64);
    report.detail("partitions", u64::from(args.partitions));
    report.detail("batch_size", batch_bytes as u64);
    report.detail("max_in_flight", in_flight_max as u64);
    report.detail("size", args.size as u64);
    Ok(report)
}

/// One writer's batch, filled to `batch_bytes`; and how many records it holds.
fn batch(
    writer: usize,
    producer_id: u64,
    producer_epoch: u16,
    size: usize,
    batch_bytes: usize,
) -> CliResult<(Bytes, u32)> {
    let mut builder = BatchBuilder::new(ProducerStamp {
        producer_id,
        producer_epoch,
        base_sequence: 0,
    });
    let mut sequence = 0u64;
    let mut payloads = Payloads::new(writer as u32, size);
    loop {
        let (stamp, payload) = payloads.next(sequence, std::time::Instant::now());
        let record = Record::new(stamp.sent_micros / 1000, payload);
        if !builder.is_empty()
            && builder.encoded_len() + builder.record_encoded_len(&record) > batch_bytes
        {
            break;
        }
        builder
            .push(&record)
            .map_err(|e| CliError(format!("cannot build a batch: {e}")))?;
        sequence += 1;
    }
    let records = builder.len();
    Ok((builder.finish(), records))
}
