//! Produces records typed on stdin to a topic, printing where each landed.
//!
//! ```sh
//! cargo run --release -- serve &
//! cargo run -p strata-client --example producer -- 127.0.0.1:7401 events
//! ```

use strata_client::{Admin, NewTopic, Producer, ProducerRecord};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:7401".into());
    let topic = args.next().unwrap_or_else(|| "events".into());

    // Topics are created explicitly; an existing one is fine.
    match Admin::connect(bootstrap.as_str())
        .await?
        .create_topic(&topic, NewTopic::new(3))
        .await
    {
        Ok(_) | Err(strata_client::Error::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }

    let producer = Producer::builder(bootstrap.as_str()).build().await?;
    // Shared: each record clones the name's reference count, not its bytes.
    let topic: std::sync::Arc<str> = topic.into();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        // Keyed by the first word: records with the same key stay in order.
        let key = line.split_whitespace().next().unwrap_or("").to_owned();
        let meta = producer
            .send(ProducerRecord::new(topic.clone(), line).key(key))
            .await?;
        println!(
            "partition {} offset {}",
            meta.partition,
            meta.offset.unwrap_or_default()
        );
    }
    producer.close().await?;
    // The producer's own account, for a look at how it batched.
    let m = producer.metrics();
    eprintln!(
        "{} records acknowledged, {} failed; {:.1} records per batch; \
         batches waited {:?} to go and {:?} for their answer on average",
        m.records_acked,
        m.records_failed,
        m.mean_batch_records(),
        m.mean_queue_time(),
        m.mean_request_latency()
    );
    Ok(())
}
