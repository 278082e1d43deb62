//! The client in a cluster whose nodes fail: bootstrap lists, control calls
//! that fail over to another node, and produce/fetch requests that follow a
//! partition's leader when it moves or dies.
//!
//! Independent single-node brokers cannot form one cluster, so the nodes that
//! serve are real brokers and the rest is played by fakes (see `fake`): a
//! control port whose metadata the test sets, and a former leader's data port
//! that answers NOT_LEADER.

mod fake;

use std::net::SocketAddr;
use std::time::Duration;

use fake::{FakeControl, FakeNode, FormerLeader, dead_addr};
use futures::StreamExt;
use strata_broker::server::ServerHandle;
use strata_broker::{Broker, BrokerConfig, ListenAddrs};
use strata_client::{
    Admin, Consumer, Error, NewTopic, OffsetQuery, Producer, ProducerRecord, StartFrom,
    TopicPartition,
};

/// Bound on anything a test waits for, so a regression fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

/// A real broker served on ephemeral ports.
struct Served {
    broker: Broker,
    server: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(topics: &[(&str, u32)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(BrokerConfig::with_data_dir(dir.path()))
            .await
            .unwrap();
        let admin = Admin::connect(&broker).await.unwrap();
        for (name, partitions) in topics {
            admin
                .create_topic(name, NewTopic::new(*partitions))
                .await
                .unwrap();
        }
        let server = broker.serve(&ListenAddrs::ephemeral()).unwrap();
        Served {
            broker,
            server: Some(server),
            _dir: dir,
        }
    }

    fn control(&self) -> SocketAddr {
        self.server.as_ref().expect("serving").addrs().control
    }

    fn data(&self) -> SocketAddr {
        self.server.as_ref().expect("serving").addrs().data
    }

    /// Closes the network ports (the broker itself keeps running).
    async fn stop_serving(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    async fn shutdown(mut self) {
        self.stop_serving().await;
        self.broker.shutdown().await.unwrap();
    }

    /// Names of the broker's topics, asked in-process.
    async fn topic_names(&self) -> Vec<String> {
        names(Admin::connect(&self.broker).await.unwrap()).await
    }

    /// The values stored in `topic`/0, asked in-process: everything up to
    /// the high watermark, so a duplicate would show.
    async fn values(&self, topic: &str) -> Vec<String> {
        let admin = Admin::connect(&self.broker).await.unwrap();
        let tp = TopicPartition::new(topic, 0);
        let end = admin
            .list_offsets(std::slice::from_ref(&tp), OffsetQuery::Latest)
            .await
            .unwrap()[0]
            .offset;
        let consumer = Consumer::builder(&self.broker)
            .assign([tp])
            .start_from(StartFrom::Earliest)
            .build()
            .await
            .unwrap();
        let mut stream = consumer.stream();
        let mut out = Vec::new();
        while (out.len() as u64) < end {
            let record = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("records up to the high watermark arrive")
                .expect("stream open")
                .unwrap();
            out.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
        out
    }
}

async fn names(admin: Admin) -> Vec<String> {
    let mut names: Vec<String> = admin
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_list_whose_first_address_is_dead_connects_through_the_next() {
    let node = Served::start(&[]).await;
    let bootstrap = format!("127.0.0.1:1, {}", node.control());

    let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
    admin
        .create_topic("events", NewTopic::new(1))
        .await
        .unwrap();
    let producer = Producer::builder(bootstrap.as_str())
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();
    let sent = producer
        .send(ProducerRecord::new("events", "hello"))
        .await
        .unwrap();
    assert_eq!(sent.offset, Some(0));
    let consumer = Consumer::builder(bootstrap.as_str())
        .topics(["events"])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let record = tokio::time::timeout(WAIT, consumer.stream().next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
    // Closed first, so the server need not wait out an open fetch stream.
    drop(consumer);
    node.shutdown().await;
}

#[tokio::test]
async fn a_bootstrap_list_of_dead_addresses_fails_naming_every_address_tried() {
    let dead = dead_addr().await;
    let bootstrap = format!("127.0.0.1:1,{dead}");
    match Admin::connect(bootstrap.as_str()).await {
        Err(e @ Error::Connect { .. }) => {
            let message = e.to_string();
            for addr in ["127.0.0.1:1", &dead.to_string()] {
                assert!(
                    message.contains(&format!("{addr}: ")),
                    "{addr} and its failure missing from: {message}"
                );
            }
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A malformed entry is a configuration error, reported before any dialling.
    assert!(matches!(
        Admin::connect(format!("{dead},not a host:x")).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_fail_over_to_the_next_bootstrap_address_when_the_node_in_use_stops() {
    let mut first = Served::start(&[("on-first", 1)]).await;
    let second = Served::start(&[("on-second", 1)]).await;
    let admin = Admin::connect(format!("{},{}", first.control(), second.control()))
        .await
        .unwrap();
    assert_eq!(names(admin.clone()).await, ["on-first"], "uses the first");

    first.stop_serving().await;
    assert_eq!(names(admin.clone()).await, ["on-second"], "moved on");
    admin
        .create_topic("after-failover", NewTopic::new(2))
        .await
        .unwrap();
    assert_eq!(
        second.topic_names().await,
        ["after-failover", "on-second"],
        "the create reached the second node"
    );
    assert_eq!(admin.partition_count("after-failover").await.unwrap(), 2);
    assert!(first.topic_names().await == ["on-first"]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_survives_losing_the_node_it_bootstrapped_from() {
    // Both nodes call themselves node 1, so after failover the second node's
    // metadata moves node 1 (and the partition's leader) to its own data port.
    let mut first = Served::start(&[("t", 1)]).await;
    let second = Served::start(&[("t", 1)]).await;
    let producer = Producer::builder(format!("{},{}", first.control(), second.control()))
        // Two separate brokers do not share producer state.
        .idempotent(false)
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();
    producer.send(ProducerRecord::new("t", "a")).await.unwrap();

    first.stop_serving().await;
    producer.send(ProducerRecord::new("t", "b")).await.unwrap();
    assert_eq!(first.values("t").await, ["a"]);
    assert_eq!(second.values("t").await, ["b"]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_fail_over_to_a_control_address_learned_from_metadata() {
    let real = Served::start(&[("real-topic", 1)]).await;
    let control = FakeControl::start(
        vec![FakeNode {
            id: 1,
            data: real.data(),
            control: real.control(),
        }],
        "real-topic",
        1,
        1,
    )
    .await;
    // Bootstrapped from the fake alone: the real node's control address is
    // known only from the metadata the fake served.
    let admin = Admin::connect(control.addr().to_string()).await.unwrap();
    control.server.stop().await;
    assert_eq!(names(admin).await, ["real-topic"]);
    real.shutdown().await;
}

/// A fake control port describing node 1, a former leader (or a dead port),
/// and node 2, the real broker; every partition is led by node 1.
async fn cluster(former: SocketAddr, real: &Served, partitions: u32) -> FakeControl {
    FakeControl::start(
        vec![
            FakeNode {
                id: 1,
                data: former,
                control: real.control(),
            },
            FakeNode {
                id: 2,
                data: real.data(),
                control: real.control(),
            },
        ],
        "t",
        partitions,
        1,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_by_a_former_leader_goes_to_the_hinted_leader_and_is_written_once() {
    let real = Served::start(&[("t", 1)]).await;
    // The former leader writes the batch to the real log, then answers
    // NOT_LEADER: the retry must carry the same sequence for the broker to
    // recognise it.
    let former = FormerLeader::start(Some(real.data()), Some(real.data())).await;
    let control = cluster(former.addr(), &real, 1).await;
    let producer = Producer::builder(control.addr().to_string())
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();

    let first = producer.send(ProducerRecord::new("t", "v0")).await.unwrap();
    assert_eq!(first.offset, Some(0), "the retry got the original offset");
    let second = producer.send(ProducerRecord::new("t", "v1")).await.unwrap();
    assert_eq!(second.offset, Some(1));
    assert_eq!(real.values("t").await, ["v0", "v1"], "no duplicate");
    assert_eq!(
        former.produce_calls(),
        1,
        "later batches go straight to the hinted leader"
    );
    let stamps = former.stamps();
    assert_eq!(stamps[0].0, producer.producer_id());
    assert_eq!(stamps[0].2, 0, "the first batch starts the sequence");
    assert_eq!(control.metadata_calls(), 1, "a hint needs no refresh");
    real.shutdown().await;
}

/// A producer keeps several batches of a partition in flight: the leader
/// here answers nothing until five batches have arrived on the stream, which
/// a producer sending one batch at a time never does (its first batch would
/// time out and go, alone, to the real broker instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_pipelines_batches_and_they_are_written_in_order() {
    const IN_FLIGHT: usize = strata_proto::limits::MAX_IN_FLIGHT_BATCHES;
    let real = Served::start(&[("t", 1)]).await;
    let relay = FormerLeader::relay(real.data(), IN_FLIGHT).await;
    let control = cluster(relay.addr(), &real, 1).await;
    let producer = Producer::builder(control.addr().to_string())
        // Every record its own batch.
        .batch_size(1)
        .request_timeout(Duration::from_secs(5))
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..IN_FLIGHT {
        let record = ProducerRecord::new("t", format!("v{i}"));
        pending.push(producer.enqueue(record).await.unwrap());
    }
    for (i, delivery) in pending.into_iter().enumerate() {
        assert_eq!(delivery.await.unwrap().offset, Some(i as u64));
    }
    assert_eq!(
        relay.produce_calls(),
        IN_FLIGHT,
        "all five batches reached the relay on one stream before any answer"
    );
    let want: Vec<String> = (0..IN_FLIGHT).map(|i| format!("v{i}")).collect();
    assert_eq!(real.values("t").await, want);
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_to_a_dead_leader_refreshes_metadata_and_reaches_the_new_one() {
    let real = Served::start(&[("t", 1)]).await;
    let control = cluster(dead_addr().await, &real, 1).await;
    // Producer ids come from any node: the dead one is skipped.
    let producer = Producer::builder(control.addr().to_string())
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();
    control.set_leader(2);

    let sent = producer.send(ProducerRecord::new("t", "v0")).await.unwrap();
    assert_eq!(sent.offset, Some(0));
    assert_eq!(real.values("t").await, ["v0"]);
    assert_eq!(control.metadata_calls(), 2, "connect, then one refresh");
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_partitions_losing_their_leader_at_once_share_few_metadata_refreshes() {
    const PARTITIONS: u32 = 32;
    let real = Served::start(&[("t", PARTITIONS)]).await;
    let former = FormerLeader::start(None, None).await;
    let control = cluster(former.addr(), &real, PARTITIONS).await;
    let producer = Producer::builder(control.addr().to_string())
        .delivery_timeout(WAIT)
        .build()
        .await
        .unwrap();
    control.set_leader(2);
    // A refresh slower than the first retries' backoff: every partition
    // wants one while the first is still in flight.
    control.set_metadata_delay(Duration::from_millis(60));

    let mut pending = Vec::new();
    for p in 0..PARTITIONS {
        let record = ProducerRecord::new("t", format!("p{p}")).partition(p);
        pending.push(producer.enqueue(record).await.unwrap());
    }
    for (p, delivery) in pending.into_iter().enumerate() {
        let sent = delivery.await.unwrap();
        assert_eq!((sent.partition, sent.offset), (p as u32, Some(0)));
    }
    assert!(former.produce_calls() >= 1, "the former leader was asked");
    let refreshes = control.metadata_calls() - 1;
    // Each partition learnt of the loss on its own; without the refresh
    // interval, each queued behind the first refresh would make its own.
    assert!(
        (1..=3).contains(&refreshes),
        "{refreshes} metadata refreshes for {PARTITIONS} partitions"
    );
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_a_not_leader_hint_to_read_the_partition() {
    let real = Served::start(&[("t", 1)]).await;
    let producer = Producer::builder(&real.broker).build().await.unwrap();
    for v in ["a", "b", "c"] {
        producer.send(ProducerRecord::new("t", v)).await.unwrap();
    }
    let former = FormerLeader::start(Some(real.data()), None).await;
    let control = cluster(former.addr(), &real, 1).await;
    let consumer = Consumer::builder(control.addr().to_string())
        .topics(["t"])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let values: Vec<String> =
        tokio::time::timeout(WAIT, consumer.stream().take(3).collect::<Vec<_>>())
            .await
            .expect("the records arrive")
            .into_iter()
            .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
            .collect();
    assert_eq!(values, ["a", "b", "c"]);
    assert_eq!(control.metadata_calls(), 1, "a hint needs no refresh");
    drop(consumer);
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_leaders_returns_once_every_partition_has_one_and_fails_naming_those_without() {
    let real = Served::start(&[("t", 3)]).await;
    // Node 0 is no node: the partitions are still electing.
    let control = cluster(dead_addr().await, &real, 3).await;
    control.set_leader(0);
    let admin = Admin::connect(control.addr().to_string()).await.unwrap();

    let err = admin
        .wait_for_leaders("t", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotLeader { leader: None, .. }) && err.is_retriable(),
        "{err:?}"
    );
    assert!(err.to_string().contains("[0, 1, 2] of t"), "{err}");

    let elect = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        control.set_leader(2);
    };
    let (topic, ()) = tokio::join!(admin.wait_for_leaders("t", WAIT), elect);
    let leaders: Vec<u32> = topic.unwrap().partitions.iter().map(|p| p.leader).collect();
    assert_eq!(leaders, [2, 2, 2]);
    real.shutdown().await;
}
