//! `strata produce TOPIC`: one record per stdin line. With `--print-offsets`
//! prints `<partition>\t<offset>` per acknowledged line, in input order. Every
//! line is accounted for: any record that fails is reported, and the command
//! exits non-zero after the rest are flushed.

use std::collections::VecDeque;

use clap::{Args, ValueEnum};
use strata_client::{Acks, Delivery, Producer, ProducerRecord};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{CliError, CliResult, ClientArgs};

/// Deliveries kept in flight before the oldest is awaited (bounds memory
/// while keeping output in input order).
const MAX_PENDING_RECORDS: usize = 100_000;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AcksArg {
    All,
    Leader,
    None,
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    topic: String,
    /// Send every line to this partition (default: by key, or spread).
    #[arg(long)]
    partition: Option<u32>,
    /// Key for every line.
    #[arg(long)]
    key: Option<String>,
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Print `<partition>\t<offset>` for each acknowledged line, in input order.
    #[arg(long)]
    print_offsets: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: ProduceArgs) -> CliResult {
    let acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
        AcksArg::None => Acks::None,
    };
    let producer = Producer::builder(args.client.target()?)
        .acks(acks)
        .build()
        .await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::BufWriter::new(tokio::io::stdout());
    let mut pending: VecDeque<Delivery> = VecDeque::new();
    let mut failures = 0u64;
    let mut first_error: Option<String> = None;
    while let Some(line) = lines.next_line().await? {
        let mut record = ProducerRecord::new(args.topic.clone(), line);
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        if let Some(k) = &args.key {
            record = record.key(k.clone());
        }
        pending.push_back(producer.enqueue(record).await?);
        if pending.len() >= MAX_PENDING_RECORDS
            && let Some(d) = pending.pop_front()
        {
            report(
                d.await,
                args.print_offsets,
                &mut stdout,
                &mut failures,
                &mut first_error,
            )
            .await?;
        }
    }
    producer.flush().await;
    while let Some(d) = pending.pop_front() {
        report(
            d.await,
            args.print_offsets,
            &mut stdout,
            &mut failures,
            &mut first_error,
        )
        .await?;
    }
    stdout.flush().await?;
    producer.close().await?;
    match first_error {
        None => Ok(()),
        Some(e) => Err(CliError(format!(
            "{failures} record(s) were not written; first failure: {e}"
        ))),
    }
}

async fn report(
    result: strata_client::Result<strata_client::RecordMetadata>,
    print: bool,
    out: &mut (impl AsyncWriteExt + Unpin),
    failures: &mut u64,
    first_error: &mut Option<String>,
) -> CliResult {
    match result {
        Ok(meta) => {
            if print && let Some(offset) = meta.offset {
                out.write_all(format!("{}\t{}\n", meta.partition, offset).as_bytes())
                    .await?;
            }
        }
        Err(e) => {
            *failures += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    Ok(())
}
