//! How the producer cuts batches, seen from what it delivers: keyless records
//! fill one partition's batch at a time, a full batch goes at once instead
//! of waiting for its linger time, and keyless records move to another
//! partition after a batch size of them even when linger sends them in
//! smaller batches. A partition with nothing in flight sends its batch
//! without lingering, unless the producer is told to linger even then.

use std::time::Duration;

use strata_broker::Broker;
use strata_client::{Producer, ProducerRecord};
use strata_proto::batch::{BatchBuilder, Record};

mod embedded;

const VALUE_BYTES: usize = 1000;
const RECORDS_PER_BATCH: usize = 9;
const BATCHES: usize = 10;
/// Far beyond the test's wait: a batch left to linger fails the test.
const LINGER: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);

fn record() -> ProducerRecord {
    ProducerRecord::new("spread", vec![b'v'; VALUE_BYTES]).timestamp(1_000)
}

/// A batch size that holds exactly `RECORDS_PER_BATCH` of these records.
fn batch_size() -> usize {
    let mut builder = BatchBuilder::default();
    for _ in 0..RECORDS_PER_BATCH {
        builder
            .push(&Record::new(1_000, vec![b'v'; VALUE_BYTES]))
            .unwrap();
    }
    builder.encoded_len() + VALUE_BYTES / 2
}

/// A broker with a 4-partition topic, and a producer of `batch_size()`
/// batches that lingers the given time even with nothing in flight (so what
/// the tests see is cut by size and linger alone). Keep the directory while
/// they run.
async fn setup(linger: Duration) -> (tempfile::TempDir, Broker, Producer) {
    let (dir, broker) = broker().await;
    let producer = Producer::builder(&broker)
        .batch_size(batch_size())
        .linger(linger)
        .linger_when_idle(true)
        .build()
        .await
        .unwrap();
    (dir, broker, producer)
}

async fn broker() -> (tempfile::TempDir, Broker) {
    embedded::broker_with_topic("spread", 4).await
}

async fn stop(producer: Producer, broker: Broker) {
    producer.close().await.unwrap();
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn keyless_records_fill_whole_batches_which_go_without_lingering() {
    let (_dir, broker, producer) = setup(LINGER).await;
    let mut deliveries = Vec::new();
    for _ in 0..RECORDS_PER_BATCH * BATCHES {
        deliveries.push(producer.enqueue(record()).await.unwrap());
    }
    // Every batch is full, so none waits for the linger time; a record left
    // behind in a batch of its own (the sticky partition having moved on)
    // would.
    let delivered = tokio::time::timeout(WAIT, futures::future::try_join_all(deliveries))
        .await
        .expect("every batch was full and sent without lingering")
        .unwrap();
    // Runs of consecutive records on one partition are whole batches.
    let mut runs = Vec::new();
    for pair in delivered.windows(2) {
        if runs.is_empty() {
            runs.push(1);
        }
        if pair[0].partition == pair[1].partition && pair[1].offset == pair[0].offset.map(|o| o + 1)
        {
            *runs.last_mut().unwrap() += 1;
        } else {
            runs.push(1);
        }
    }
    assert!(
        runs.iter().all(|run| run % RECORDS_PER_BATCH == 0),
        "keyless records switch partitions only between full batches: {runs:?}"
    );
    // The producer's metrics count the same batches: all full, none retried.
    let m = producer.metrics();
    assert_eq!(
        (m.records_acked, m.batches_sent, m.batches_acked, m.retries),
        (
            (RECORDS_PER_BATCH * BATCHES) as u64,
            BATCHES as u64,
            BATCHES as u64,
            0
        ),
        "{m:?}"
    );
    assert_eq!(m.mean_batch_records(), RECORDS_PER_BATCH as f64);
    assert!(m.bytes_acked > (RECORDS_PER_BATCH * BATCHES * VALUE_BYTES) as u64);
    assert!(m.request_latency > Duration::ZERO && m.queue_time > Duration::ZERO);
    stop(producer, broker).await;
}

#[tokio::test]
async fn keyless_records_sent_one_at_a_time_move_on_after_a_batch_size_of_them() {
    // Each record is awaited, so each goes alone once linger passes: no
    // batch ever fills. The partition must change after every
    // `RECORDS_PER_BATCH` records all the same, to spread the load.
    let (_dir, broker, producer) = setup(Duration::from_millis(1)).await;
    let mut partitions = Vec::new();
    for _ in 0..RECORDS_PER_BATCH * 4 {
        let meta = tokio::time::timeout(WAIT, producer.send(record()))
            .await
            .expect("sent after its linger time")
            .unwrap();
        partitions.push(meta.partition);
    }
    let stretches: Vec<_> = partitions.chunks(RECORDS_PER_BATCH).collect();
    for (i, stretch) in stretches.iter().enumerate() {
        assert!(
            stretch.iter().all(|p| *p == stretch[0]),
            "a batch size of keyless records stays on one partition: {partitions:?}"
        );
        if i > 0 {
            assert_ne!(
                stretch[0],
                stretches[i - 1][0],
                "then moves to another: {partitions:?}"
            );
        }
    }
    stop(producer, broker).await;
}

#[tokio::test]
async fn a_larger_keyless_record_starts_a_batch_that_keyless_records_go_on_filling() {
    let (_dir, broker, producer) = setup(LINGER).await;
    // Eight records leave room for a ninth of the same size, not for one
    // of 1.6 KB: that one starts the partition's next batch.
    let mut deliveries = Vec::new();
    for _ in 0..RECORDS_PER_BATCH - 1 {
        deliveries.push(producer.enqueue(record()).await.unwrap());
    }
    let larger = ProducerRecord::new("spread", vec![b'v'; VALUE_BYTES * 8 / 5]).timestamp(1_000);
    deliveries.push(producer.enqueue(larger).await.unwrap());
    deliveries.push(producer.enqueue(record()).await.unwrap());
    // Everything goes now: a batch left to linger would not.
    producer.flush().await;
    let delivered = tokio::time::timeout(WAIT, futures::future::try_join_all(deliveries))
        .await
        .expect("flushed")
        .unwrap();
    let [.., larger, after] = &delivered[..] else {
        unreachable!()
    };
    assert_eq!(
        (after.partition, after.offset),
        (larger.partition, larger.offset.map(|o| o + 1)),
        "the record after the larger one joins its batch rather than moving on"
    );
    assert_eq!(
        delivered[0].partition, larger.partition,
        "the larger record starts the next batch of the same partition"
    );
    stop(producer, broker).await;
}

#[tokio::test]
async fn a_partition_with_nothing_in_flight_sends_at_once_unless_told_to_linger() {
    let (_dir, broker) = broker().await;
    // By default: a record whose partition has nothing in flight goes at
    // once, far within its linger time.
    let eager = Producer::builder(&broker)
        .linger(LINGER)
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::timeout(WAIT, eager.send(record()))
            .await
            .expect("sent without lingering: nothing was in flight")
            .unwrap();
    }
    eager.close().await.unwrap();
    // Told to linger even then, it waits (here, for a flush).
    let patient = Producer::builder(&broker)
        .linger(LINGER)
        .linger_when_idle(true)
        .build()
        .await
        .unwrap();
    let delivery = patient.enqueue(record()).await.unwrap();
    let mut delivery = std::pin::pin!(delivery);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut delivery)
            .await
            .is_err(),
        "a producer told to linger sent a lone record before its linger time"
    );
    patient.flush().await;
    let meta = tokio::time::timeout(WAIT, delivery)
        .await
        .expect("flushed")
        .unwrap();
    assert!(meta.offset.is_some(), "written: {meta:?}");
    patient.close().await.unwrap();
    broker.shutdown().await.unwrap();
}
