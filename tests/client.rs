//! The client crate against real broker processes: concurrency, idempotent
//! retries, restarts, backpressure, and consumer groups.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{Node, http_get, metric};
use futures::StreamExt;
use parking_lot::Mutex;
use strata_client::{
    Admin, Consumer, Error, NewTopic, OffsetReset, Producer, ProducerRecord, StartFrom,
    TopicPartition,
};

async fn topic(node: &Node, name: &str, partitions: u32) -> Admin {
    let admin = Admin::connect(node.bootstrap()).await.unwrap();
    admin
        .create_topic(name, NewTopic::new(partitions))
        .await
        .unwrap();
    admin
}

/// A broker whose data port clients reach through a fault-injecting proxy
/// (it advertises the proxy's address), with a one-partition `topic`.
async fn node_behind_proxy(dir: &std::path::Path, topic_name: &str) -> (Node, Proxy) {
    let (proxy, upstream) = Proxy::start().await;
    let node = Node::start_with(
        &dir.join("n1"),
        &["--advertised-data-addr", &proxy.addr.to_string()],
    );
    upstream.send(Some(node.data)).unwrap();
    topic(&node, topic_name, 1).await;
    (node, proxy)
}

/// Reads `count` records from every partition of `topic`, from the start.
async fn read_all(node: &Node, topic: &str, count: usize) -> Vec<strata_client::ConsumerRecord> {
    let consumer = Consumer::builder(node.bootstrap())
        .topics([topic])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let mut out = Vec::with_capacity(count);
    let mut stream = consumer.stream();
    while out.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        match next {
            Ok(Some(record)) => out.push(record.unwrap()),
            other => panic!(
                "stream stalled after {} of {count} records: {other:?}",
                out.len()
            ),
        }
    }
    // Nothing beyond what was expected.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "unexpected extra records"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_of_32_concurrent_producers_arrive_exactly_once_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "many", 8).await;
    const TASKS: usize = 32;
    const PER_TASK: usize = 10_000;
    const KEYS: usize = 64;
    // Four producer handles, each shared by eight tasks.
    let mut producers = Vec::new();
    for _ in 0..4 {
        producers.push(Producer::builder(node.bootstrap()).build().await.unwrap());
    }
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let producer = producers[t % 4].clone();
        tasks.push(tokio::spawn(async move {
            let mut deliveries = Vec::with_capacity(PER_TASK);
            for seq in 0..PER_TASK {
                let key = format!("key-{}", rand::random::<u64>() as usize % KEYS);
                let record = ProducerRecord::new("many", format!("{t}:{key}:{seq}")).key(key);
                deliveries.push(producer.enqueue(record).await.unwrap());
            }
            for d in deliveries {
                let meta = d.await.unwrap();
                assert!(meta.offset.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = read_all(&node, "many", TASKS * PER_TASK).await;
    let mut seen = HashSet::new();
    // Per (producer task, key): sequence numbers strictly increase in offset order.
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    let mut by_partition: BTreeMap<u32, Vec<&strata_client::ConsumerRecord>> = BTreeMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for (partition, mut rs) in by_partition {
        rs.sort_by_key(|r| r.offset);
        for r in rs {
            let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
            assert!(seen.insert(value.clone()), "{value} consumed twice");
            let mut parts = value.split(':');
            let (task, key, seq) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
            let seq: i64 = seq.parse().unwrap();
            let prev = last
                .insert((task.to_owned(), key.to_owned()), seq)
                .unwrap_or(-1);
            assert!(
                seq > prev,
                "partition {partition}: {task}:{key} went from {prev} to {seq}"
            );
        }
    }
    assert_eq!(seen.len(), TASKS * PER_TASK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_response_was_lost_is_retried_and_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let (node, proxy) = node_behind_proxy(dir.path(), "r").await;
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    assert_eq!(
        producer
            .send(ProducerRecord::new("r", "first"))
            .await
            .unwrap()
            .offset,
        Some(0)
    );

    proxy.drop_responses();
    let meta = producer
        .send(ProducerRecord::new("r", "second"))
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1, "the response was not dropped");
    assert_eq!(
        meta.offset,
        Some(1),
        "the retry is acknowledged with the original offset"
    );

    let values: Vec<_> = read_all(&node, "r", 2)
        .await
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(values, vec!["first", "second"]);
    let metrics = http_get(node.control, "/metrics").1;
    assert!(
        metric(&metrics, "strata_produce_duplicates_total").unwrap() >= 1.0,
        "the retry was not deduplicated"
    );
}

/// A batch that reached the broker but whose every answer was lost fails
/// for good at the delivery timeout, saying it may be written; it is in the
/// log at most once (its retries carried the same stamps), and the records
/// after it are written normally (the partition starts a new producer epoch
/// rather than being refused as out of sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maybe_written_batch_that_times_out_is_written_at_most_once_and_later_records_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (node, proxy) = node_behind_proxy(dir.path(), "m").await;
    let producer = Producer::builder(node.bootstrap())
        .delivery_timeout(Duration::from_millis(2_000))
        .request_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let first = producer.send(ProducerRecord::new("m", "first")).await;
    assert_eq!(first.unwrap().offset, Some(0));

    // The broker gets the batch; its answer is held back, then dropped, and
    // the proxy goes down meanwhile, so no retry reaches the broker again.
    proxy.drop_responses();
    let requests = || {
        metric(
            &http_get(node.control, "/metrics").1,
            "strata_produce_requests_total",
        )
    };
    let before = requests().unwrap();
    let sending = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.send(ProducerRecord::new("m", "second")).await })
    };
    while requests().unwrap() < before + 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.down();
    let second = sending.await.unwrap();
    match second {
        Err(Error::Timeout { maybe_written, .. }) => {
            assert!(maybe_written, "the batch reached the broker")
        }
        other => panic!("expected a delivery timeout, got {other:?}"),
    }
    proxy.heal();
    let third = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send(ProducerRecord::new("m", "third")),
    )
    .await
    .expect("the next record is delivered")
    .unwrap();
    assert!(third.offset.unwrap() >= 1);

    let count = third.offset.unwrap() as usize + 1;
    let values: Vec<_> = read_all(&node, "m", count)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect();
    let expected: &[&[&str]] = &[&["first", "third"], &["first", "second", "third"]];
    assert!(
        expected.contains(
            &values
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
        ),
        "each record at most once, in order: {values:?}"
    );
    // The producer's own account agrees: two records acknowledged, one
    // failed, and the failed one was sent more than once.
    let m = producer.metrics();
    assert_eq!((m.records_acked, m.records_failed), (2, 1), "{m:?}");
    assert!(m.retries >= 1, "the lost batch was retried: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_stream_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("n1"));
    topic(&node, "rs", 3).await;
    let producer = Producer::builder(node.bootstrap())
        .delivery_timeout(Duration::from_secs(60))
        .linger(Duration::from_millis(2))
        .build()
        .await
        .unwrap();
    const TOTAL: usize = 6_000;
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            for i in 0..TOTAL {
                deliveries.push(
                    producer
                        .enqueue(ProducerRecord::new("rs", format!("v{i}")))
                        .await
                        .unwrap(),
                );
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            futures::future::join_all(deliveries).await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.restart();
    let results = sender.await.unwrap();
    let acked: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        acked.len(),
        TOTAL,
        "every record is acknowledged once the broker is back: {:?}",
        results.iter().find(|r| r.is_err())
    );
    let records = read_all(&node, "rs", TOTAL).await;
    let values: BTreeSet<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(
        values.len(),
        TOTAL,
        "duplicates or losses across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_fails_with_buffer_full_after_max_block_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (node, proxy) = node_behind_proxy(dir.path(), "full").await;
    let producer = Producer::builder(node.bootstrap())
        .buffer_memory(64 * 1024)
        .batch_size(16 * 1024)
        .max_block(Duration::from_millis(300))
        .delivery_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    // The broker becomes unreachable: nothing drains the buffer.
    proxy.down();
    let mut deliveries = Vec::new();
    let blocked_for = loop {
        let started = Instant::now();
        match producer
            .enqueue(ProducerRecord::new("full", vec![b'x'; 1024]))
            .await
        {
            Ok(d) => deliveries.push(d),
            Err(Error::BufferFull { .. }) => break started.elapsed(),
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(deliveries.len() < 1_000, "the buffer never filled");
    };
    assert!(
        blocked_for >= Duration::from_millis(300),
        "gave up after {blocked_for:?}"
    );
    assert!(
        blocked_for < Duration::from_secs(5),
        "blocked for {blocked_for:?}"
    );
    // Every accepted record resolves: here, to a timeout. (Whether a send may
    // have reached the broker is the client's honest guess; the offset check
    // below shows none did.)
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join_all(deliveries),
    )
    .await
    .expect("deliveries hang");
    assert!(!results.is_empty());
    for r in &results {
        match r {
            Err(Error::Timeout { .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    // And the producer recovers when the broker is reachable again.
    proxy.heal();
    let meta = producer
        .send(ProducerRecord::new("full", "after"))
        .await
        .unwrap();
    assert_eq!(meta.offset, Some(0), "timed-out records were never written");
}

async fn wait_for_assignment(consumers: &[&Consumer], expected_each: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sizes: Vec<usize> = consumers.iter().map(|c| c.assignment().len()).collect();
        if sizes.iter().all(|n| *n == expected_each) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "assignment never settled: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_three_over_six_partitions_gets_each_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "g6", 6).await;
    let mut consumers = Vec::new();
    for i in 0..3 {
        consumers.push(Arc::new(
            Consumer::builder(node.bootstrap())
                .group("workers")
                .topics(["g6"])
                .client_id(format!("w{i}"))
                .auto_commit(Duration::from_millis(200))
                .offset_reset(OffsetReset::Earliest)
                .build()
                .await
                .unwrap(),
        ));
    }
    wait_for_assignment(&consumers.iter().map(|c| c.as_ref()).collect::<Vec<_>>(), 2).await;
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    const TOTAL: usize = 3_000;
    let mut deliveries = Vec::new();
    for i in 0..TOTAL {
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new("g6", format!("r{i}")).key(format!("k{i}")))
                .await
                .unwrap(),
        );
    }
    for d in deliveries {
        d.await.unwrap();
    }
    let seen: Arc<Mutex<HashMap<bytes::Bytes, usize>>> = Arc::default();
    let mut readers = Vec::new();
    for (member, consumer) in consumers.iter().enumerate() {
        let (consumer, seen) = (consumer.clone(), seen.clone());
        readers.push(tokio::spawn(async move {
            let mut stream = consumer.stream();
            let mut partitions = BTreeSet::new();
            while let Ok(Some(r)) =
                tokio::time::timeout(Duration::from_secs(3), stream.next()).await
            {
                let r = r.unwrap();
                partitions.insert(r.partition);
                if let Some(other) = seen.lock().insert(r.value.clone().unwrap(), member) {
                    panic!("{:?} delivered to members {other} and {member}", r.value);
                }
            }
            partitions
        }));
    }
    let mut all_partitions = BTreeSet::new();
    for r in readers {
        let partitions = r.await.unwrap();
        assert_eq!(
            partitions.len(),
            2,
            "each member reads its own two partitions: {partitions:?}"
        );
        all_partitions.extend(partitions);
    }
    assert_eq!(all_partitions.len(), 6);
    assert_eq!(seen.lock().len(), TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_members_partitions_move_after_the_session_timeout_and_resume_from_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "kill", 2).await;
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    for p in 0..2 {
        for i in 0..200 {
            producer
                .enqueue(ProducerRecord::new("kill", format!("p{p}-{i}")).partition(p))
                .await
                .unwrap();
        }
    }
    producer.flush().await;
    let session = Duration::from_millis(1_500);
    let build = |id: &str| {
        Consumer::builder(node.bootstrap())
            .group("g")
            .topics(["kill"])
            .client_id(id)
            .session_timeout(session)
            .offset_reset(OffsetReset::Earliest)
            .build()
    };
    let a = build("a").await.unwrap();
    let b = build("b").await.unwrap();
    wait_for_assignment(&[&a, &b], 1).await;
    let a_partition = a.assignment()[0].clone();
    // a reads 50 records and commits, then 10 more it never commits.
    {
        let mut stream = a.stream();
        for _ in 0..50 {
            stream.next().await.unwrap().unwrap();
        }
        a.commit().await.unwrap();
        for _ in 0..10 {
            stream.next().await.unwrap().unwrap();
        }
    }
    assert_eq!(
        a.committed(std::slice::from_ref(&a_partition))
            .await
            .unwrap()[&a_partition],
        50
    );
    let killed = Instant::now();
    drop(a); // No leave, no commit: as if the process died.

    let mut stream = b.stream();
    let mut first_from_a = None;
    let mut from_a = 0;
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        let r = r.unwrap();
        if r.partition == a_partition.partition {
            first_from_a.get_or_insert((r.offset, killed.elapsed()));
            from_a += 1;
            if from_a == 150 {
                break;
            }
        }
    }
    let (first_offset, after) = first_from_a.expect("the dead member's partition never moved");
    assert_eq!(
        first_offset, 50,
        "consumption resumes from the committed offset"
    );
    assert!(
        after >= session / 2,
        "moved before the session could expire: {after:?}"
    );
    assert_eq!(from_a, 150, "everything after the commit is consumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_seek_to_timestamp_pause_and_resume_move_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "s", 1).await;
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    for i in 0..100i64 {
        producer
            .enqueue(ProducerRecord::new("s", format!("v{i}")).timestamp(1_000 + i * 10))
            .await
            .unwrap();
    }
    producer.flush().await;
    let tp = TopicPartition::new("s", 0);
    let consumer = Consumer::builder(node.bootstrap())
        .assign([tp.clone()])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let next = || async { consumer.next_record().await.unwrap().unwrap() };
    assert_eq!(next().await.offset, 0);
    consumer.seek(&tp, 90).unwrap();
    assert_eq!(next().await.offset, 90);
    consumer.seek_to_timestamp(&tp, 1_500).await.unwrap();
    let r = next().await;
    assert_eq!((r.offset, r.timestamp), (50, 1_500));
    consumer.pause(std::slice::from_ref(&tp));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next_record())
            .await
            .is_err()
    );
    consumer.resume(std::slice::from_ref(&tp));
    assert_eq!(next().await.offset, 51);
    assert_eq!(consumer.position(&tp), Some(52));
}

/// `Consumer::batches` hands out the same records as the record stream:
/// each once, in offset order per partition, moving positions as it goes,
/// and following seeks; record and batch reads mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hand_out_each_record_once_in_order_and_follow_seeks() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "b", 2).await;
    let producer = Producer::builder(node.bootstrap())
        .linger(Duration::from_millis(1))
        .batch_size(16 * 1024)
        .build()
        .await
        .unwrap();
    let total = 3_000u64;
    for i in 0..total {
        producer
            .enqueue(ProducerRecord::new("b", format!("v{i}")).key(format!("k{}", i % 7)))
            .await
            .unwrap();
    }
    producer.flush().await;
    let tps = [TopicPartition::new("b", 0), TopicPartition::new("b", 1)];
    let consumer = Consumer::builder(node.bootstrap())
        .assign(tps.clone())
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let mut next_offset: HashMap<u32, u64> = HashMap::new();
    let mut check = |partition: u32, offset: u64| {
        let expected = next_offset.entry(partition).or_insert(0);
        assert_eq!(offset, *expected, "partition {partition}: in order, once");
        *expected += 1;
    };
    // One record first: a batch then starts where it left off.
    let first = consumer.next_record().await.unwrap().unwrap();
    check(first.partition, first.offset);
    let mut seen = 1;
    let mut batches = 0;
    while seen < total {
        let batch = tokio::time::timeout(Duration::from_secs(30), consumer.next_batch())
            .await
            .expect("a batch within 30 s")
            .unwrap()
            .unwrap();
        assert!(!batch.is_empty());
        let partition = batch[0].partition;
        for r in &batch {
            assert_eq!(r.partition, partition, "one partition per batch");
            check(r.partition, r.offset);
        }
        let tp = TopicPartition::new("b", partition);
        assert_eq!(
            consumer.position(&tp),
            Some(batch.last().unwrap().offset + 1)
        );
        seen += batch.len() as u64;
        batches += 1;
    }
    assert_eq!(seen, total);
    assert!(
        batches < total / 10,
        "records come in batches: {batches} batches"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next_batch())
            .await
            .is_err(),
        "nothing more"
    );
    consumer.seek(&tps[0], 5).unwrap();
    let batch = consumer.next_batch().await.unwrap().unwrap();
    assert_eq!((batch[0].partition, batch[0].offset), (0, 5));
}

/// Batches of several MiB cross HTTP/2 in several DATA frames (frames are at
/// most 1 MiB), which the broker's produce stream must put back together,
/// and come back in fetch responses of the same size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_an_http2_frame_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "big", 1).await;
    let producer = Producer::builder(node.bootstrap())
        .batch_size(strata_proto::limits::MAX_BATCH_BYTES)
        .linger(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    // Values just under the largest record, each filled with its own byte.
    let value = |i: usize| vec![i as u8; 900 * 1024 + i];
    let mut deliveries = Vec::new();
    for i in 0..12 {
        let record = ProducerRecord::new("big", value(i));
        deliveries.push(producer.enqueue(record).await.unwrap());
    }
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(d.await.unwrap().offset.expect("acks=all reports offsets"));
    }
    assert_eq!(offsets, (0..12).collect::<Vec<u64>>());
    producer.close().await.unwrap();
    // Written the first time: a batch the stream garbled would be refused
    // (CRC) and then retried alone, and succeed, over unary Produce.
    let metrics = http_get(node.control, "/metrics").1;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("strata_produce_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "produce errors: {refused:?}");
    let read = read_all(&node, "big", 12).await;
    for (i, record) in read.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
        let got = record.value.as_deref().unwrap();
        assert!(got == value(i).as_slice(), "record {i} came back changed");
    }
}

#[tokio::test]
async fn client_errors_are_typed_and_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    topic(&node, "e", 2).await;
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    match producer.send(ProducerRecord::new("missing", "x")).await {
        Err(e @ Error::TopicNotFound(_)) => assert!(e.to_string().contains("missing")),
        other => panic!("{other:?}"),
    }
    match producer
        .send(ProducerRecord::new("e", "x").partition(9))
        .await
    {
        Err(e @ Error::PartitionNotFound(_)) => assert!(e.to_string().contains('9')),
        other => panic!("{other:?}"),
    }
    let big = vec![0u8; 2 * 1024 * 1024];
    assert!(matches!(
        producer.send(ProducerRecord::new("e", big)).await,
        Err(Error::InvalidRecord(_))
    ));
    producer.close().await.unwrap();
    assert!(matches!(
        producer.send(ProducerRecord::new("e", "late")).await,
        Err(Error::Closed)
    ));
    match Admin::connect("127.0.0.1:1").await {
        Err(e @ Error::Connect { .. }) => assert!(e.to_string().contains("127.0.0.1:1")),
        other => panic!("{other:?}"),
    }
}
