//! Consumes a topic as a member of a consumer group, committing as it goes.
//! Start several to watch the group share the partitions.
//!
//! ```sh
//! cargo run -p strata-client --example consumer -- 127.0.0.1:7401 events printers
//! ```

use std::time::Duration;

use futures::StreamExt;
use strata_client::{Consumer, OffsetReset};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:7401".into());
    let topic = args.next().unwrap_or_else(|| "events".into());
    let group = args.next().unwrap_or_else(|| "printers".into());

    let consumer = Consumer::builder(bootstrap.as_str())
        .group(group)
        .topics([topic])
        .offset_reset(OffsetReset::Earliest)
        .auto_commit(Duration::from_secs(1))
        .build()
        .await?;
    let mut records = consumer.stream();
    while let Some(record) = records.next().await {
        let record = record?;
        let value = record
            .value
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        println!(
            "{}/{}@{}: {value}",
            record.topic, record.partition, record.offset
        );
    }
    Ok(())
}
