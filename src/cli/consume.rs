//! `strata consume TOPIC`: prints record values one per line (or
//! `<partition>\t<offset>\t<value>` with `--print-offsets`).
//!
//! Without `--group` it reads every partition; from the end unless
//! `--from-beginning`. With `--group` it joins the group, starts from the
//! committed offsets, and commits what it printed. `--until-end` exits once
//! it has read everything committed when it started.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use strata_client::{Admin, Consumer, OffsetQuery, OffsetReset, StartFrom, TopicPartition};
use tokio::io::AsyncWriteExt;

use super::{CliResult, ClientArgs};

/// How often `--until-end` re-checks positions while no record arrives.
const UNTIL_END_POLL_MS: u64 = 50;

/// Commit interval of a group consumer.
const AUTO_COMMIT_MS: u64 = 1_000;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    topic: String,
    /// Consume as a member of this group, with committed offsets.
    #[arg(long)]
    group: Option<String>,
    /// Start at the oldest record (a group: only where it has no committed offset).
    #[arg(long)]
    from_beginning: bool,
    /// Exit after reading everything committed when the command started.
    #[arg(long)]
    until_end: bool,
    /// Exit after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Print `<partition>\t<offset>\t<value>`.
    #[arg(long)]
    print_offsets: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: ConsumeArgs) -> CliResult {
    let bootstrap = args.client.target()?;
    let admin = Admin::connect(bootstrap.clone()).await?;
    let partitions = admin.partition_count(&args.topic).await?;
    let ends: BTreeMap<TopicPartition, u64> = if args.until_end {
        let tps: Vec<_> = (0..partitions)
            .map(|p| TopicPartition::new(args.topic.clone(), p))
            .collect();
        admin
            .list_offsets(&tps, OffsetQuery::Latest)
            .await?
            .into_iter()
            .map(|o| (TopicPartition::new(o.topic, o.partition), o.offset))
            .collect()
    } else {
        BTreeMap::new()
    };
    let reset = if args.from_beginning {
        OffsetReset::Earliest
    } else {
        OffsetReset::Latest
    };
    let builder = Consumer::builder(bootstrap)
        .topics([args.topic.clone()])
        .offset_reset(reset);
    let consumer = match &args.group {
        Some(group) => {
            builder
                .group(group)
                .auto_commit(Duration::from_millis(AUTO_COMMIT_MS))
                .build()
                .await?
        }
        None => {
            let start = if args.from_beginning || args.until_end {
                StartFrom::Earliest
            } else {
                StartFrom::Latest
            };
            builder.start_from(start).build().await?
        }
    };
    let mut out = tokio::io::BufWriter::new(tokio::io::stdout());
    let mut count = 0u64;
    let reached_end = |c: &Consumer| {
        let assigned = c.assignment();
        !assigned.is_empty()
            && assigned
                .iter()
                .all(|tp| c.position(tp).unwrap_or(0) >= ends.get(tp).copied().unwrap_or(0))
    };
    loop {
        if args.max_messages.is_some_and(|max| count >= max)
            || (args.until_end && reached_end(&consumer))
        {
            break;
        }
        let next = tokio::time::timeout(
            Duration::from_millis(UNTIL_END_POLL_MS),
            consumer.next_record(),
        );
        let record = match next.await {
            Err(_) => {
                out.flush().await?;
                continue;
            }
            Ok(None) => break,
            Ok(Some(record)) => record?,
        };
        let value = record
            .value
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let line = if args.print_offsets {
            format!("{}\t{}\t{}\n", record.partition, record.offset, value)
        } else {
            format!("{value}\n")
        };
        out.write_all(line.as_bytes()).await?;
        count += 1;
    }
    out.flush().await?;
    consumer.close().await?;
    Ok(())
}
