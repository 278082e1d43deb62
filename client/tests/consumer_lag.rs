//! A consumer's own lag: the partition's high watermark, as its fetches saw
//! it, minus its position. It counts records written but not yet handed
//! out, falls as the application reads, and comes back to zero once the
//! consumer has read everything written.

use std::time::Duration;

use strata_client::{Consumer, Producer, ProducerRecord, StartFrom, TopicPartition};

mod embedded;

const WAIT: Duration = Duration::from_secs(20);

async fn write(producer: &Producer, count: usize) {
    let mut deliveries = Vec::new();
    for i in 0..count {
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new("lag", format!("record {i}")))
                .await
                .unwrap(),
        );
    }
    futures::future::try_join_all(deliveries).await.unwrap();
}

async fn read(consumer: &Consumer, count: usize) {
    for _ in 0..count {
        tokio::time::timeout(WAIT, consumer.next_record())
            .await
            .expect("a record within the wait")
            .expect("the stream goes on")
            .unwrap();
    }
}

#[tokio::test]
async fn lag_counts_what_is_written_past_the_position_and_returns_to_zero() {
    let (_dir, broker) = embedded::broker_with_topic("lag", 1).await;
    let producer = Producer::builder(&broker).build().await.unwrap();
    write(&producer, 100).await;

    let tp = TopicPartition::new("lag", 0);
    let consumer = Consumer::builder(&broker)
        .assign([tp.clone()])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    assert_eq!(
        consumer.lag(&TopicPartition::new("lag", 1)),
        None,
        "not assigned"
    );

    // The first records came with a high watermark of 100, all of it
    // acknowledged (so committed) before the consumer started.
    read(&consumer, 30).await;
    assert_eq!(consumer.position(&tp), Some(30));
    assert_eq!(consumer.lag(&tp), Some(70));

    // Ten more: once they arrive, the consumer is 80 behind; reading all
    // of them brings it back to zero.
    write(&producer, 10).await;
    read(&consumer, 80).await;
    assert_eq!(consumer.position(&tp), Some(110));
    assert_eq!(consumer.lag(&tp), Some(0));

    consumer.close().await.unwrap();
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}
