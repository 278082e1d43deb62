//! Strata inside an application: one binary that opens a broker on a local
//! directory, writes events from one task and processes them in another — no
//! server, no network. The same code talks to a remote broker by passing an
//! address instead of `&broker`.
//!
//! ```sh
//! cargo run -p strata-client --example embedded
//! ```

use std::time::Duration;

use futures::StreamExt;
use strata_broker::{Broker, BrokerConfig};
use strata_client::{Admin, Consumer, NewTopic, Producer, ProducerRecord, StartFrom};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("strata-embedded-example");
    let broker = Broker::open(BrokerConfig::with_data_dir(&dir)).await?;
    match Admin::connect(&broker)
        .await?
        .create_topic("orders", NewTopic::new(2))
        .await
    {
        Ok(_) | Err(strata_client::Error::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }

    // The processor: a consumer group member in its own task.
    let consumer = Consumer::builder(&broker)
        .group("billing")
        .topics(["orders"])
        .start_from(StartFrom::Committed)
        .auto_commit(Duration::from_millis(200))
        .build()
        .await?;
    let processor = tokio::spawn(async move {
        let mut total_cents = 0u64;
        let mut records = consumer.stream();
        for _ in 0..100 {
            let Some(Ok(record)) = records.next().await else {
                break;
            };
            let cents: u64 = std::str::from_utf8(record.value.as_deref().unwrap_or_default())
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            total_cents += cents;
        }
        consumer.close().await.ok();
        total_cents
    });

    // The application: writes 100 orders, each acknowledged once durable.
    let producer = Producer::builder(&broker).build().await?;
    for i in 0..100u64 {
        producer
            .send(
                ProducerRecord::new("orders", (i * 100).to_string())
                    .key(format!("customer-{}", i % 7)),
            )
            .await?;
    }
    producer.close().await?;

    let total = processor.await?;
    println!(
        "processed 100 orders worth {}.{:02}",
        total / 100,
        total % 100
    );
    // Flushes, checkpoints and marks every partition cleanly closed.
    broker.shutdown().await?;
    Ok(())
}
