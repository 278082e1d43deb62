//! End to end: consumers wait at the end of the topic, then producers send;
//! latency is from the producer's stamp to the consumer's receipt.

use std::time::{Duration, Instant};

use strata_client::StartFrom;

use super::report::Report;
use super::{BenchArgs, consume, produce, progress};
use crate::cli::{CliError, CliResult};

/// How long consumers may take to be positioned before producing starts.
const POSITION_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: &BenchArgs) -> CliResult<Report> {
    let consumers = consume::open(args, StartFrom::Latest).await?;
    // Produce only once every partition has a consumer positioned at its end.
    let partitions = strata_client::Admin::connect(args.client.target()?)
        .await?
        .partition_count(args.topic()?)
        .await? as usize;
    let deadline = Instant::now() + POSITION_TIMEOUT;
    loop {
        let positioned: usize = consumers
            .iter()
            .map(|c| {
                c.assignment()
                    .iter()
                    .filter(|tp| c.position(tp).is_some())
                    .count()
            })
            .sum();
        if positioned == partitions {
            break;
        }
        if Instant::now() > deadline {
            return Err(CliError(format!(
                "only {positioned} of {partitions} partitions got a consumer"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bar = progress(args, args.messages);
    let reader = {
        let consumers = consumers.clone();
        let bar = bar.clone();
        let expected = args.messages;
        tokio::spawn(async move { consume::read(&consumers, expected, true, bar).await })
    };
    let sent = produce::send_all(args, indicatif::ProgressBar::hidden()).await?;
    if let Some(first) = sent.failures.first() {
        return Err(CliError(format!(
            "{} record(s) failed to produce; first: {first}",
            sent.failures.len()
        )));
    }
    if sent.messages != args.messages {
        return Err(CliError(format!(
            "produced {} of {} records before the deadline",
            sent.messages, args.messages
        )));
    }
    let read = reader
        .await
        .map_err(|e| CliError(format!("consumer task failed: {e}")))??;
    bar.finish_and_clear();
    let mut report = Report::new("e2e");
    report.messages = read.verifier.records;
    report.bytes = read.bytes;
    report.elapsed = read.elapsed;
    report.latency = read.latency;
    produce::describe(args, &mut report);
    produce::batching(&sent.metrics, &mut report);
    report.detail("consumers", args.consumers as u64);
    report.detail("verified", true);
    Ok(report)
}
