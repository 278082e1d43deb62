//! What operators see: consumer lag and status (OK, STALLED, STOPPED),
//! Prometheus metrics, and health that stays fast and truthful under load
//! and during recovery.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Node, cli_ok, http_get};
use futures::StreamExt;
use strata_client::{
    Admin, Consumer, NewTopic, OffsetReset, Producer, ProducerRecord, TopicPartition,
};

/// Produces a record every `every` until `stop` is set.
fn keep_producing(
    bootstrap: String,
    topic: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let producer = Producer::builder(bootstrap.as_str())
            .linger(Duration::from_millis(1))
            .build()
            .await
            .unwrap();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            producer
                .send(ProducerRecord::new(topic, format!("r{i}")))
                .await
                .unwrap();
            i += 1;
            tokio::time::sleep(every).await;
        }
    })
}

fn describe(bootstrap: &str, group: &str) -> serde_json::Value {
    serde_json::from_str(&cli_ok(
        bootstrap,
        &["group", "describe", group, "--json"],
        None,
    ))
    .unwrap()
}

fn partition_status(v: &serde_json::Value) -> (String, f64, u64) {
    let p = &v["partitions"][0];
    (
        p["status"].as_str().unwrap().to_owned(),
        p["lag_seconds"].as_f64().unwrap(),
        p["lag_messages"].as_u64().unwrap(),
    )
}

async fn wait_status(
    bootstrap: &str,
    group: &str,
    want: &str,
    within: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let b = bootstrap.to_owned();
        let g = group.to_owned();
        let v = tokio::task::spawn_blocking(move || describe(&b, &g))
            .await
            .unwrap();
        if v["partitions"][0]["status"] == want {
            return v;
        }
        assert!(Instant::now() < deadline, "status never became {want}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn group_consumer(node: &Node, group: &str, topic: &str, auto_commit: bool) -> Consumer {
    let mut b = Consumer::builder(node.bootstrap())
        .group(group)
        .topics([topic])
        .offset_reset(OffsetReset::Earliest)
        .session_timeout(Duration::from_secs(30));
    if auto_commit {
        b = b.auto_commit(Duration::from_millis(200));
    }
    b.build().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_that_stops_consuming_is_stopped_and_its_lag_in_seconds_grows() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        &dir.path().join("n1"),
        &["--maintenance-interval-ms", "200"],
    );
    Admin::connect(node.bootstrap())
        .await
        .unwrap()
        .create_topic("s", NewTopic::new(1))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = keep_producing(
        node.bootstrap(),
        "s",
        Duration::from_millis(20),
        stop.clone(),
    );
    let consumer = group_consumer(&node, "stopper", "s", true).await;
    // Healthy while it keeps up...
    {
        let mut stream = consumer.stream();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
    let v = describe(&node.bootstrap(), "stopper");
    assert_ne!(v["partitions"][0]["status"], "STOPPED", "{v}");
    // ...then it stops reading (still alive, so no rebalance) while records arrive.
    let v = wait_status(
        &node.bootstrap(),
        "stopper",
        "STOPPED",
        Duration::from_secs(15),
    )
    .await;
    let (_, lag1, msgs1) = partition_status(&v);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, lag2, msgs2) = partition_status(&describe(&node.bootstrap(), "stopper"));
    assert_eq!(status, "STOPPED");
    assert!(
        lag2 >= lag1 + 1.0,
        "lag in seconds must grow with wall time: {lag1} then {lag2}"
    );
    assert!(
        msgs2 > msgs1,
        "lag in messages grows while the producer runs"
    );
    assert_eq!(
        v["status"], "STOPPED",
        "a group is as bad as its worst partition"
    );
    // The transition is logged, and exported as a metric.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        node.log().contains("consumer group status changed"),
        "no status-change log line"
    );
    let metrics = http_get(node.control, "/metrics").1;
    assert!(
        metrics.contains("strata_group_status{group=\"stopper\",status=\"STOPPED\"} 1"),
        "{metrics}"
    );
    stop.store(true, Ordering::Relaxed);
    producing.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_stuck_on_one_offset_is_stalled_and_a_healthy_one_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let admin = Admin::connect(node.bootstrap()).await.unwrap();
    admin.create_topic("st", NewTopic::new(1)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producing = keep_producing(
        node.bootstrap(),
        "st",
        Duration::from_millis(20),
        stop.clone(),
    );

    // Stuck: alive, committing, but always the same offset.
    let stuck = group_consumer(&node, "stuck", "st", false).await;
    // Healthy: reads everything and commits as it goes.
    let healthy = group_consumer(&node, "healthy", "st", true).await;
    let reader = {
        let healthy = Arc::new(healthy);
        let h = healthy.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stream = h.stream();
            while !stop.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            }
        })
    };
    let tp = TopicPartition::new("st", 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stuck.assignment().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let a few records exist before committing a position among them.
    let admin_probe = Admin::connect(node.bootstrap()).await.unwrap();
    while admin_probe
        .list_offsets(
            std::slice::from_ref(&tp),
            strata_client::OffsetQuery::Latest,
        )
        .await
        .unwrap()[0]
        .offset
        < 10
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committer = tokio::spawn(async move {
        for _ in 0..40 {
            stuck.commit_offsets(&[(tp.clone(), 3)]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        stuck
    });
    let v = wait_status(
        &node.bootstrap(),
        "stuck",
        "STALLED",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(v["partitions"][0]["committed_offset"], 3);
    let healthy_status = describe(&node.bootstrap(), "healthy");
    assert_eq!(
        healthy_status["partitions"][0]["status"], "OK",
        "{healthy_status}"
    );
    let list = cli_ok(&node.bootstrap(), &["group", "list", "--json"], None);
    let groups: serde_json::Value = serde_json::from_str(&list).unwrap();
    let statuses: HashSet<(String, String)> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap().to_owned(),
                g["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("stuck".into(), "STALLED".into())),
        "{list}"
    );
    stop.store(true, Ordering::Relaxed);
    producing.await.unwrap();
    reader.await.unwrap();
    drop(committer.await.unwrap());
}

/// Checks the exposition format: HELP/TYPE before samples, each family's
/// samples together, well-formed sample lines. Returns the family names.
fn parse_exposition(text: &str) -> HashSet<String> {
    let mut families = HashSet::new();
    let mut current: Option<(String, String)> = None;
    let mut finished = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(rest.split_once(' ').is_some(), "bad HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            if let Some((prev, _)) = current.take() {
                finished.insert(prev);
            }
            assert!(families.insert(name.to_owned()), "{name} declared twice");
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: name value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        if series.contains('{') {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name}"
        );
        let (family, kind) = current.as_ref().expect("sample before any TYPE");
        let belongs = name == family
            || (kind == "histogram"
                && [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_owned()));
        assert!(
            belongs,
            "{name} appears under {family}: families must not interleave"
        );
        assert!(
            !finished.contains(name),
            "{name} appears again after its family ended"
        );
    }
    families
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_is_valid_prometheus_text_with_the_documented_series() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        &dir.path().join("n1"),
        &["--maintenance-interval-ms", "200"],
    );
    Admin::connect(node.bootstrap())
        .await
        .unwrap()
        .create_topic("m", NewTopic::new(2))
        .await
        .unwrap();
    let producer = Producer::builder(node.bootstrap()).build().await.unwrap();
    for i in 0..50 {
        producer
            .send(ProducerRecord::new("m", format!("v{i}")))
            .await
            .unwrap();
    }
    let consumer = group_consumer(&node, "watchers", "m", true).await;
    {
        let mut stream = consumer.stream();
        for _ in 0..20 {
            stream.next().await.unwrap().unwrap();
        }
    }
    consumer.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, text) = http_get(node.control, "/metrics");
    assert_eq!(code, 200);
    let families = parse_exposition(&text);
    for name in [
        "strata_produce_requests_total",
        "strata_produce_bytes_total",
        "strata_produce_errors_total",
        "strata_produce_latency_seconds",
        "strata_fetch_bytes_total",
        "strata_fetch_streams_active",
        "strata_fsync_seconds",
        "strata_group_commit_batches",
        "strata_produce_inflight_bytes",
        "strata_produce_budget_bytes",
        "strata_fetch_inflight_bytes",
        "strata_backpressure_rejections_total",
        "strata_partition_high_watermark",
        "strata_partition_log_size_bytes",
        "strata_partition_segments",
        "strata_group_lag_messages",
        "strata_group_lag_seconds",
        "strata_group_status",
        "strata_group_partition_status",
        "strata_recovery_seconds",
        "strata_recovery_truncated_bytes",
    ] {
        assert!(families.contains(name), "missing {name}");
    }
    assert!(
        text.contains("strata_group_lag_messages{group=\"watchers\""),
        "per-group lag missing"
    );
    // No per-producer or per-connection labels: cardinality stays bounded.
    assert!(!text.contains("producer_id") && !text.contains("client_id"));
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_from_memory_during_recovery_and_never_caches_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Something to recover.
        let node = Node::start(&dir.path().join("n1"));
        cli_ok(
            &node.bootstrap(),
            &["topic", "create", "h", "--partitions", "4"],
            None,
        );
    }
    let mut node = Node::start_listening(
        &dir.path().join("n1"),
        &["--debug-recovery-delay-ms", "3000"],
    );
    let mut live = Vec::new();
    let mut ready_codes = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (code, _) = http_get(node.control, "/healthz");
        live.push(t.elapsed());
        assert_eq!(code, 200, "alive while recovering");
        ready_codes.push(http_get(node.control, "/readyz").0);
    }
    assert!(
        ready_codes.iter().all(|c| *c == 503),
        "not ready while recovering: {ready_codes:?}"
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.control))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let status = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    // A data request meanwhile is told to retry, not that the topic is missing.
    let out = common::cli(&node.bootstrap(), &["produce", "h"], Some("x\n"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("recovering"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Once recovered, both flip at once: the earlier failure was not cached.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(node.control, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let median = median_ms(live);
    println!("/healthz median during recovery: {median:.2} ms");
    assert!(median < 10.0, "health took {median} ms");
    let status = node.sigterm();
    assert!(status.success());
}
