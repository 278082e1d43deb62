//! Strata embedded in an application: the same client API in-process, with the
//! same durability, idempotence, groups and byte budgets; one broker per data
//! directory; and the embedded broker served to the network on demand.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cli_ok;
use futures::StreamExt;
use strata_broker::{Broker, BrokerConfig, Error as BrokerError, ListenAddrs};
use strata_client::{Admin, Consumer, NewTopic, Producer, ProducerRecord, StartFrom};

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig::with_data_dir(dir)
}

async fn produce(
    broker: &Broker,
    topic: &str,
    values: impl IntoIterator<Item = String>,
) -> Vec<u64> {
    let producer = Producer::builder(broker).build().await.unwrap();
    let mut deliveries = Vec::new();
    for v in values {
        deliveries.push(
            producer
                .enqueue(ProducerRecord::new(topic, v))
                .await
                .unwrap(),
        );
    }
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(d.await.unwrap().offset.unwrap());
    }
    producer.close().await.unwrap();
    offsets
}

async fn consume_all(broker: &Broker, topic: &str, count: usize) -> Vec<String> {
    let consumer = Consumer::builder(broker)
        .topics([topic])
        .start_from(StartFrom::Earliest)
        .build()
        .await
        .unwrap();
    let mut stream = consumer.stream();
    let mut out = Vec::new();
    while out.len() < count {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        out.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_in_process_survive_shutdown_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::open(config(dir.path())).await.unwrap();
        Admin::connect(&broker)
            .await
            .unwrap()
            .create_topic("app", NewTopic::new(1))
            .await
            .unwrap();
        let offsets = produce(&broker, "app", (0..100).map(|i| format!("e{i}"))).await;
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
        broker.shutdown().await.unwrap();
    }
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let got = consume_all(&broker, "app", 100).await;
    assert_eq!(got, (0..100).map(|i| format!("e{i}")).collect::<Vec<_>>());
    assert!(
        dir.path()
            .join("topics/app/0/00000000000000000000.log")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_broker_without_shutdown_is_a_crash_that_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let acked = {
        let broker = Broker::open(config(dir.path())).await.unwrap();
        Admin::connect(&broker)
            .await
            .unwrap()
            .create_topic("crash", NewTopic::new(2))
            .await
            .unwrap();
        produce(&broker, "crash", (0..500).map(|i| format!("c{i}")))
            .await
            .len()
        // Dropped here: no shutdown, no clean-shutdown markers.
    };
    assert!(!dir.path().join("topics/crash/0/clean-shutdown").exists());
    // The directory is free again (the lock died with the broker), and
    // recovery finds every acknowledged record.
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let mut got = consume_all(&broker, "crash", acked).await;
    got.sort();
    let mut want: Vec<_> = (0..500).map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    match Broker::open(config(dir.path())).await {
        Err(e @ BrokerError::DataDirInUse { .. }) => {
            assert!(
                e.to_string().contains(&std::process::id().to_string()),
                "{e}"
            );
        }
        other => panic!("a second open succeeded or failed oddly: {other:?}"),
    }
    // Another process is refused too, with a clear one-line error.
    let out = std::process::Command::new(common::STRATA)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--data-addr",
            "127.0.0.1:0",
            "--control-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_broker_served_over_grpc_is_read_by_the_cli_while_the_app_writes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    Admin::connect(&broker)
        .await
        .unwrap()
        .create_topic("shared", NewTopic::new(1))
        .await
        .unwrap();
    let server = broker.serve(&ListenAddrs::ephemeral()).unwrap();
    let bootstrap = server.addrs().control.to_string();
    let writer = {
        let broker = broker.clone();
        tokio::spawn(
            async move { produce(&broker, "shared", (0..300).map(|i| format!("w{i}"))).await },
        )
    };
    let offsets = writer.await.unwrap();
    assert_eq!(offsets.len(), 300);
    let out = tokio::task::spawn_blocking(move || {
        cli_ok(
            &bootstrap,
            &["consume", "shared", "--from-beginning", "--until-end"],
            None,
        )
    })
    .await
    .unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 300);
    assert_eq!(lines[0], "w0");
    assert_eq!(lines[299], "w299");
    server.shutdown().await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_path_is_held_to_the_same_byte_budget() {
    use strata_proto::v1::data_client::DataClient;
    use strata_proto::v1::{Acks, ProduceRequest};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig {
        produce_budget_bytes: 1024 * 1024,
        ..config(dir.path())
    })
    .await
    .unwrap();
    Admin::connect(&broker)
        .await
        .unwrap()
        .create_topic("b", NewTopic::new(1))
        .await
        .unwrap();
    // Raw requests through the in-process connector, no client retries.
    let connector = broker.connector();
    let channel = tonic::transport::Endpoint::from_static("http://in-process")
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let pipe = connector
                .connect(strata_proto::target::Plane::Data)
                .map(hyper_util::rt::TokioIo::new);
            async move { pipe }
        }));
    let mut batch = strata_proto::batch::BatchBuilder::default();
    for _ in 0..700 {
        batch
            .push(&strata_proto::batch::Record::new(1, vec![0u8; 1000]))
            .unwrap();
    }
    let batch: Bytes = batch.finish();
    let requests = (0..16).map(|_| {
        let mut client = DataClient::new(channel.clone()).max_encoding_message_size(8 << 20);
        let batch = batch.clone();
        async move {
            client
                .produce(ProduceRequest {
                    topic: "b".into(),
                    partition: 0,
                    batch,
                    acks: Acks::All as i32,
                })
                .await
        }
    });
    let results = futures::future::join_all(requests).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == tonic::Code::ResourceExhausted))
        .count();
    assert!(
        refused > 0,
        "16 concurrent 700 KB batches fit a 1 MiB budget?"
    );
    assert!(results.iter().all(|r| r.is_ok() || refused > 0));
    broker.shutdown().await.unwrap();
}
