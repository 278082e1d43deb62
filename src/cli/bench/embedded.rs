//! In-process versus loopback gRPC, same broker, same run: opens a broker in a
//! fresh directory, serves it on loopback ports too, and runs the same
//! produce workload through the in-process transport and through TCP.

use std::time::Instant;

use serde_json::json;
use strata_broker::{Broker, BrokerConfig, ListenAddrs};
use strata_client::{Acks, Admin, NewTopic, Producer, ProducerRecord, Target};

use super::payload::Payloads;
use super::report::{Report, record};
use super::{BenchAcks, BenchArgs, scratch_dir};
use crate::cli::{CliError, CliResult};

pub async fn run(args: &BenchArgs) -> CliResult<Report> {
    let dir = scratch_dir(args, "embedded")?;
    let broker = Broker::open(BrokerConfig::with_data_dir(&dir)).await?;
    let server = broker.serve(&ListenAddrs::ephemeral())?;
    let loopback = server.addrs().control.to_string();
    let admin = Admin::connect(&broker).await?;
    admin
        .create_topic("in-process", NewTopic::new(args.partitions))
        .await?;
    admin
        .create_topic("loopback", NewTopic::new(args.partitions))
        .await?;

    let local = produce(args, Target::from(&broker), "in-process").await?;
    let remote = produce(args, Target::from(loopback), "loopback").await?;

    server.shutdown().await;
    broker.shutdown().await?;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);

    let mut report = local;
    report.mode = "embedded";
    report.detail(
        "loopback_mb_per_s",
        remote.bytes as f64 / 1e6 / remote.seconds(),
    );
    report.detail("loopback_p99_ms", remote.json()["p99_ms"].clone());
    report.detail(
        "in_process_over_loopback",
        (report.bytes as f64 / report.seconds()) / (remote.bytes as f64 / remote.seconds()),
    );
    report.detail("producers", args.producers as u64);
    report.detail("size", args.size as u64);
    report.detail(
        "note",
        json!("mb_per_s and latencies are in-process; loopback_* the same workload over TCP"),
    );
    Ok(report)
}

async fn produce(args: &BenchArgs, target: Target, topic: &str) -> CliResult<Report> {
    let acks = if args.acks == BenchAcks::All {
        Acks::All
    } else {
        Acks::Leader
    };
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        producers.push(Producer::builder(target.clone()).acks(acks).build().await?);
    }
    let started = Instant::now();
    let per = args.messages / args.producers as u64;
    let mut tasks = Vec::new();
    for (p, producer) in producers.into_iter().enumerate() {
        let (topic, size): (std::sync::Arc<str>, _) = (topic.into(), args.size);
        tasks.push(tokio::spawn(async move {
            let mut payloads = Payloads::new(p as u32, size);
            let mut pending = std::collections::VecDeque::new();
            let mut latency = super::report::histogram();
            for sequence in 0..per {
                let sent = Instant::now();
                let (stamp, payload) = payloads.next(sequence, sent);
                let produced =
                    ProducerRecord::new(topic.clone(), payload).timestamp(stamp.sent_micros / 1000);
                pending.push_back((producer.enqueue(produced).await?, sent));
                if pending.len() >= 50_000
                    && let Some((d, t)) = pending.pop_front()
                {
                    d.await?;
                    record(&mut latency, t.elapsed());
                }
            }
            while let Some((d, t)) = pending.pop_front() {
                d.await?;
                record(&mut latency, t.elapsed());
            }
            producer.close().await?;
            Ok::<_, strata_client::Error>(latency)
        }));
    }
    let mut report = Report::new("produce");
    for t in tasks {
        let latency = t.await.map_err(|e| CliError(e.to_string()))??;
        report.latency.add(&latency).expect("same bounds");
    }
    report.elapsed = started.elapsed();
    report.messages = per * args.producers as u64;
    report.bytes = report.messages * args.size as u64;
    Ok(report)
}
