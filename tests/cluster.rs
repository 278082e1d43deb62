//! Three real `strata serve` processes forming a Raft cluster on loopback
//! (DESIGN.md §4, §6): producers with acks=all keep going while the leader
//! is killed with SIGKILL, restarted, and cut off from its peers; afterwards
//! every acknowledged record is in the log exactly once, at the offset it was
//! acknowledged with, and every replica's log is byte-identical.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, record_values, stored_batches};
use futures::StreamExt;
use parking_lot::Mutex;
use strata_client::{Admin, Consumer, Error, NewTopic, Producer, ProducerRecord};
use strata_proto::batch::{BatchBuilder, Record};
use strata_proto::v1::data_client::DataClient;
use strata_proto::v1::{
    Acks, CommitOffsetsRequest, FetchOffsetsRequest, PartitionOffset, ProduceRequest,
};
use tonic::Code;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;
/// Records per round; a round is sent, then all its acks awaited.
const ROUND: usize = 50;
/// How long one phase of the test may take to show progress.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the producer task saw: record number → (partition, offset) for each
/// acknowledged record; and how many it sent.
#[derive(Default)]
struct History {
    acked: Mutex<HashMap<u64, (u32, u64)>>,
    sent: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

impl History {
    fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    /// Blocks until `more` records beyond now are acknowledged.
    fn wait_for_progress(&self, more: usize, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "no progress {what}: {} acked, waiting for {target}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Produces numbered records in rounds until told to stop.
async fn produce(producer: Producer, history: Arc<History>) {
    let mut next = 0u64;
    while !history.stop.load(Ordering::Acquire) {
        let mut round = Vec::with_capacity(ROUND);
        for _ in 0..ROUND {
            let record = ProducerRecord::new(TOPIC, format!("r{next}")).key(format!("k{next}"));
            round.push((next, producer.enqueue(record).await.expect("enqueue")));
            next += 1;
        }
        history.sent.store(next, Ordering::Release);
        for (n, delivery) in round {
            match delivery.await {
                Ok(meta) => {
                    let offset = meta.offset.expect("acks=all answers with an offset");
                    history.acked.lock().insert(n, (meta.partition, offset));
                }
                Err(e) => {
                    // Allowed (its fate is unknown), but it must never be duplicated.
                    history.failed.fetch_add(1, Ordering::AcqRel);
                    eprintln!("record {n} failed: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer.close().await.expect("close");
}

/// The index of the node leading `partition` as `bootstrap` sees it, if
/// it knows of one (a node that has not yet applied the topic's creation
/// knows of none).
fn leader_of(cluster: &Cluster, bootstrap: &str, partition: u32) -> Option<usize> {
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap).await.unwrap();
        let topic = match admin.describe_topic(TOPIC).await {
            Ok(topic) => topic,
            Err(Error::TopicNotFound(_)) => return None,
            Err(e) => panic!("describe {TOPIC} through {bootstrap}: {e}"),
        };
        (topic.partitions[partition as usize].leader as usize).checked_sub(1)
    })
}

/// The leader of `partition` once every node agrees on it (a new group's
/// first election may still be running).
fn agreed_leader(cluster: &Cluster, partition: u32) -> usize {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let views: Vec<Option<usize>> = cluster
            .control_addrs()
            .iter()
            .map(|addr| leader_of(cluster, addr, partition))
            .collect();
        if let Some(leader) = views[0]
            && views.iter().all(|&l| l == views[0])
        {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "nodes disagree on the leader: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates `TOPIC` with three replicas per partition through `bootstrap`.
fn create_topic(cluster: &Cluster, bootstrap: &str) {
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap).await.unwrap();
        admin
            .create_topic(TOPIC, NewTopic::new(PARTITIONS).replication_factor(3))
            .await
            .unwrap();
    });
}

/// Starts the numbered-record producer (patient: faults are expected)
/// bootstrapping from `bootstrap`; stop it through the history.
fn start_producing(
    cluster: &Cluster,
    bootstrap: &str,
) -> (Arc<History>, tokio::task::JoinHandle<()>) {
    let history = Arc::new(History::default());
    let producer = cluster.rt.block_on(async {
        Producer::builder(bootstrap)
            .request_timeout(Duration::from_secs(2))
            .delivery_timeout(Duration::from_secs(120))
            .linger(Duration::from_millis(2))
            .build()
            .await
            .unwrap()
    });
    let task = cluster.rt.spawn(produce(producer, history.clone()));
    (history, task)
}

#[test]
fn acknowledged_records_survive_leader_kill_restart_and_partition() {
    let mut cluster = Cluster::start(3);
    let first = cluster.control_addrs()[0].clone();
    create_topic(&cluster, &first);
    // Kill the leader of partition 0; clients bootstrap from another node.
    let victim = agreed_leader(&cluster, 0);
    // The replica ranked last for partition 0: after the kill, the middle
    // one usually leads, and it can be cut off without cutting the client's
    // metadata source.
    let bootstrap_node = (victim + 2) % 3;
    let bootstrap = cluster.control_addrs()[bootstrap_node].clone();
    let (history, task) = start_producing(&cluster, &bootstrap);

    history.wait_for_progress(500, "before any fault");
    cluster.nodes[victim].kill9();
    history.wait_for_progress(500, "after the leader was killed");
    cluster.nodes[victim].restart();
    history.wait_for_progress(500, "after the old leader restarted");

    // Cut off a leader other than the client's bootstrap node (whose metadata
    // the client relies on), both ways; the rest elect a new one.
    let led: Vec<(u32, usize)> = (0..PARTITIONS)
        .filter_map(|p| Some((p, leader_of(&cluster, &bootstrap, p)?)))
        .filter(|&(_, l)| l != bootstrap_node)
        .collect();
    let isolated = led.first().map_or((bootstrap_node + 1) % 3, |&(_, l)| l);
    cluster.isolate(isolated);
    history.wait_for_progress(500, "with a leader cut off");
    for &(p, l) in &led {
        if l == isolated {
            assert_ne!(
                leader_of(&cluster, &bootstrap, p),
                Some(isolated),
                "partition {p} still led by the node cut off"
            );
        }
    }
    eprintln!(
        "killed node {}, cut off node {} (leading {:?})",
        victim + 1,
        isolated + 1,
        led.iter()
            .filter(|(_, l)| *l == isolated)
            .map(|(p, _)| p)
            .collect::<Vec<_>>()
    );
    cluster.heal();
    history.wait_for_progress(500, "after the partition healed");

    history.stop.store(true, Ordering::Release);
    cluster.rt.block_on(task).unwrap();
    let high_watermarks = cluster.wait_converged(TOPIC, &[0, 1, 2], PHASE_TIMEOUT);
    for node in &mut cluster.nodes {
        assert!(node.sigterm().success(), "clean shutdown");
    }
    let acked = history.acked.lock().clone();
    assert!(acked.len() >= 2500, "only {} acked", acked.len());
    check_replicas(&cluster, &[0, 1, 2], &high_watermarks, &history);
}

/// A node whose disk fills up mid-run (every write past a budget fails with
/// ENOSPC) must not cost an acknowledged record: the other two carry on, it
/// does not crash, and once restarted with space it catches up byte for byte.
#[test]
fn a_full_disk_on_one_node_loses_no_acknowledged_record() {
    const FULL: usize = 2;
    // Enough for the cluster to form and the topic to start; a few seconds
    // of the producer below fill the rest.
    const SPACE_BYTES: &str = "1500000";
    let mut cluster = Cluster::start_configured(3, |i| match i {
        FULL => vec!["--debug-disk-space-bytes".into(), SPACE_BYTES.into()],
        _ => Vec::new(),
    });
    let bootstrap = cluster.control_addrs()[0].clone();
    create_topic(&cluster, &bootstrap);
    let (history, task) = start_producing(&cluster, &bootstrap);

    // Filling 1.5 MB takes seconds on an idle machine; a loaded one (CI
    // beside other work) can take far longer, which is not what this tests.
    let deadline = Instant::now() + 3 * PHASE_TIMEOUT;
    while !cluster.nodes[FULL]
        .log()
        .contains("No space left on device")
    {
        assert!(
            Instant::now() < deadline,
            "node {} never ran out of space; {} records acked",
            FULL + 1,
            history.acked()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    history.wait_for_progress(1000, "after a node's disk filled up");
    assert!(
        !cluster.nodes[FULL].has_exited(),
        "a full disk crashed the node:\n{}",
        cluster.nodes[FULL].log()
    );

    history.stop.store(true, Ordering::Release);
    cluster.rt.block_on(task).unwrap();
    cluster.wait_converged(TOPIC, &[0, 1], PHASE_TIMEOUT);

    // With space again, the node catches up from where its disk filled.
    cluster.nodes[FULL].kill9();
    cluster.nodes[FULL].drop_flag("--debug-disk-space-bytes");
    cluster.nodes[FULL].restart();
    let high_watermarks = cluster.wait_converged(TOPIC, &[0, 1, 2], PHASE_TIMEOUT);
    for node in &mut cluster.nodes {
        assert!(node.sigterm().success(), "clean shutdown");
    }
    check_replicas(&cluster, &[0, 1, 2], &high_watermarks, &history);
}

/// With the nodes stopped: every replica's log of each partition is
/// byte-identical and dense up to the high watermark; every acknowledged
/// record is in it exactly once, at its acknowledged offset; no record is
/// stored twice or was never sent.
fn check_replicas(cluster: &Cluster, nodes: &[usize], high_watermarks: &[u64], history: &History) {
    let acked = history.acked.lock().clone();
    let sent = history.sent.load(Ordering::Acquire);
    for partition in 0..high_watermarks.len() as u32 {
        let logs: Vec<_> = nodes
            .iter()
            .map(|&i| stored_batches(&cluster.data_dir(i), TOPIC, partition))
            .collect();
        for (i, log) in logs.iter().enumerate().skip(1) {
            assert!(
                log == &logs[0],
                "partition {partition}: node {} holds {} batches, node {} holds {}, or their bytes differ",
                nodes[i] + 1,
                log.len(),
                nodes[0] + 1,
                logs[0].len()
            );
        }
        let records = record_values(&logs[0]);
        assert_eq!(
            records.len() as u64,
            high_watermarks[partition as usize],
            "offsets are dense up to the high watermark"
        );
        let mut seen: HashMap<u64, u64> = HashMap::new();
        for (offset, value) in &records {
            let n: u64 = value.strip_prefix('r').unwrap().parse().unwrap();
            assert!(n < sent, "record {n} was never sent");
            if let Some(first) = seen.insert(n, *offset) {
                panic!("record {n} is stored twice: at {first} and {offset}");
            }
        }
        for (n, (p, offset)) in &acked {
            if *p == partition {
                assert_eq!(
                    seen.get(n),
                    Some(offset),
                    "acknowledged record {n} is not at its acknowledged offset {p}/{offset}"
                );
            }
        }
    }
}

#[test]
fn followers_redirect_to_the_leader_and_replication_is_bounded_by_nodes() {
    let cluster = Cluster::start(3);
    let first = cluster.control_addrs()[0].clone();
    cluster.rt.block_on(async {
        let admin = Admin::connect(first.as_str()).await.unwrap();
        let err = admin
            .create_topic("wide", NewTopic::new(1).replication_factor(4))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("replication factor 4")
                && err.to_string().contains("3 live nodes"),
            "{err}"
        );
        let info = admin
            .create_topic(TOPIC, NewTopic::new(1).replication_factor(3))
            .await
            .unwrap();
        assert_eq!(info.partitions[0].replicas.len(), 3);
    });
    let leader = agreed_leader(&cluster, 0);
    let follower = (leader + 1) % 3;
    cluster.rt.block_on(async {
        // A leader may need a moment to commit its first entry of its term.
        let mut batch = BatchBuilder::default();
        batch.push(&Record::new(1, "x")).unwrap();
        let batch = batch.finish();
        let request = ProduceRequest {
            topic: TOPIC.into(),
            partition: 0,
            batch: batch.clone(),
            acks: Acks::All as i32,
        };
        let mut client = DataClient::connect(format!("http://{}", cluster.nodes[follower].data))
            .await
            .unwrap();
        let leader_data = cluster.nodes[leader].data.to_string();
        // Until the first election of the new group ends, a follower does not
        // know the leader and says NOT_LEADER without a hint.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = client.produce(request.clone()).await.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(status.metadata().get("strata-error").unwrap(), "not-leader");
            let hint = status
                .metadata()
                .get("strata-leader")
                .map(|v| v.to_str().unwrap().to_owned());
            if let Some(hint) = hint {
                assert_eq!(
                    hint, leader_data,
                    "NOT_LEADER names the leader's data address"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the follower never learned the leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut at_leader = DataClient::connect(format!("http://{leader_data}"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match at_leader.produce(request.clone()).await {
                Ok(r) => {
                    assert_eq!(r.into_inner().base_offset, 0);
                    break;
                }
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("the leader refused: {s:?}"),
            }
        }
    });
    // The leader reports the group's Raft state and each follower's lag.
    let (status, text) = common::http_get(cluster.nodes[leader].control, "/metrics");
    assert_eq!(status, 200);
    // Group ids carry the topic's incarnation: `orders#<id>/0`.
    let group = text
        .lines()
        .find_map(|l| {
            let label = l
                .strip_prefix("strata_raft_leader{group=\"")?
                .split('"')
                .next()?;
            (label.starts_with(&format!("{TOPIC}#")) && label.ends_with("/0"))
                .then(|| label.to_owned())
        })
        .expect("a Raft series for the partition");
    let group = format!("{{group=\"{group}\"}}");
    assert_eq!(
        common::metric(&text, &format!("strata_raft_leader{group}")),
        Some((leader + 1) as f64)
    );
    assert!(common::metric(&text, &format!("strata_raft_term{group}")).unwrap() >= 1.0);
    assert!(common::metric(&text, &format!("strata_raft_applied_index{group}")).unwrap() >= 1.0);
    let lag_series = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "strata_raft_replication_lag_entries{}",
                group.trim_end_matches('}')
            ))
        })
        .count();
    assert_eq!(lag_series, 2, "one lag series per follower:\n{text}");
    assert!(text.contains("strata_raft_term{group=\"__metadata\"}"));

    // With a node down, three replicas are refused and two avoid it.
    let mut cluster = cluster;
    let down = (leader + 2) % 3;
    cluster.nodes[down].kill9();
    let bootstrap = cluster.control_addrs()[leader].clone();
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        let err = admin
            .create_topic("needs-three", NewTopic::new(1).replication_factor(3))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 live nodes") && err.contains(&format!("not answering: [{}]", down + 1)),
            "{err}"
        );
        let info = admin
            .create_topic("two-of-three", NewTopic::new(3).replication_factor(2))
            .await
            .unwrap();
        for p in info.partitions {
            assert!(!p.replicas.contains(&((down + 1) as u32)), "{p:?}");
        }
    });
}

#[test]
fn consumer_groups_survive_the_loss_of_their_coordinator() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.control_addrs().join(",");
    let data: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.data))
        .collect();
    let commit = CommitOffsetsRequest {
        group: "billing".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![PartitionOffset {
            topic: TOPIC.into(),
            partition: 0,
            offset: 2,
            metadata: "m".into(),
        }],
    };
    let coordinator = cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        admin.create_topic(TOPIC, NewTopic::new(1)).await.unwrap();
        let producer = Producer::builder(bootstrap.as_str()).build().await.unwrap();
        for i in 0..5 {
            producer
                .send(ProducerRecord::new(TOPIC, format!("r{i}")))
                .await
                .unwrap();
        }
        producer.close().await.unwrap();
        // Exactly one node coordinates groups; the others redirect to it.
        let mut coordinator = None;
        for (i, addr) in data.iter().enumerate() {
            let mut client = DataClient::connect(addr.clone()).await.unwrap();
            match client.commit_offsets(commit.clone()).await {
                Ok(_) => {
                    assert!(coordinator.is_none(), "two coordinators");
                    coordinator = Some(i);
                }
                Err(status) => {
                    assert_eq!(
                        status.metadata().get("strata-error").unwrap(),
                        "not-coordinator"
                    );
                    assert!(
                        status.metadata().get("strata-leader").is_some(),
                        "{status:?}"
                    );
                }
            }
        }
        coordinator.expect("one node coordinates groups")
    });
    // The coordinator dies: the others still have the committed offset, and a
    // group consumer resumes from it through the new coordinator.
    cluster.nodes[coordinator].kill9();
    for (i, addr) in data.iter().enumerate().filter(|(i, _)| *i != coordinator) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let offsets = cluster.rt.block_on(async {
                let mut client = DataClient::connect(addr.clone()).await.unwrap();
                client
                    .fetch_offsets(FetchOffsetsRequest {
                        group: "billing".into(),
                        partitions: vec![],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .offsets
            });
            if let Some(o) = offsets.first() {
                assert_eq!(
                    (o.offset, o.metadata.as_str()),
                    (2, "m"),
                    "at node {}",
                    i + 1
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never saw the commit",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != coordinator)
        .map(|i| cluster.control_addrs()[i].clone())
        .collect();
    cluster.rt.block_on(async {
        let consumer = Consumer::builder(survivors.join(",").as_str())
            .group("billing")
            .topics([TOPIC])
            .build()
            .await
            .unwrap();
        let mut stream = consumer.stream();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the group resumed")
            .unwrap()
            .unwrap();
        assert_eq!(first.offset, 2, "resumed from the committed offset");
        assert_eq!(first.value.as_deref(), Some(&b"r2"[..]));
    });
}

#[test]
fn a_node_added_takes_over_the_replicas_of_a_node_removed() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.control_addrs()[1].clone();
    let history = Arc::new(History::default());
    create_topic(&cluster, &bootstrap);
    let producer = cluster.rt.block_on(async {
        Producer::builder(bootstrap.as_str())
            .request_timeout(Duration::from_secs(2))
            .delivery_timeout(Duration::from_secs(120))
            .build()
            .await
            .unwrap()
    });
    let task = cluster.rt.spawn(produce(producer, history.clone()));
    history.wait_for_progress(300, "before the membership change");

    let added = cluster.start_joining_node();
    let peer = cluster.nodes[added].peer.to_string();
    let members = cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        admin.add_node(4, &peer, true).await.unwrap()
    });
    assert_eq!(members, vec![1, 2, 3, 4]);
    cluster.nodes[added].wait_serving();
    // Rebalanced: six replicas on four nodes, node 4 holds some. The node
    // answering may be a metadata follower a moment behind the leader.
    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let topic = admin.describe_topic(TOPIC).await.unwrap();
            if topic.partitions.iter().any(|p| p.replicas.contains(&4)) {
                break;
            }
            assert!(Instant::now() < deadline, "{:?}", topic.partitions);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    history.wait_for_progress(300, "after a node joined");

    // Node 1 leaves while records keep coming: its replicas move to node 4.
    let members = cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        admin.remove_node(1).await.unwrap()
    });
    assert_eq!(members, vec![2, 3, 4]);
    history.wait_for_progress(300, "after a node left");
    history.stop.store(true, Ordering::Release);
    cluster.rt.block_on(task).unwrap();

    cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        for p in admin.describe_topic(TOPIC).await.unwrap().partitions {
            let mut replicas = p.replicas.clone();
            replicas.sort();
            assert_eq!(replicas, vec![2, 3, 4], "partition {}", p.partition);
        }
    });
    let high_watermarks = cluster.wait_converged(TOPIC, &[1, 2, 3], PHASE_TIMEOUT);
    // The node that left deleted its copies once the moves settled.
    let left = cluster.data_dir(0).join("topics").join(TOPIC);
    let incarnation: Vec<_> = std::fs::read_dir(&left)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(incarnation.len(), 1, "{incarnation:?}");
    let held = |p: u32| incarnation[0].join(p.to_string()).exists();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while (0..PARTITIONS).any(held) {
        assert!(Instant::now() < deadline, "node 1 kept its replicas");
        std::thread::sleep(Duration::from_millis(50));
    }
    for node in &mut cluster.nodes {
        assert!(node.sigterm().success(), "clean shutdown");
    }
    check_replicas(&cluster, &[1, 2, 3], &high_watermarks, &history);
}

/// Far more produce traffic than a cluster can take — 64 senders, each with
/// a 500 KB batch always in flight, against an 8 MiB produce budget per
/// node — for a few seconds (`STRATA_OVERLOAD_SECS` for longer runs). The
/// excess is refused with RESOURCE_EXHAUSTED and a retry hint; no node
/// crashes or grows without bound; health checks keep answering; every
/// acknowledged batch is committed, and the replicas agree byte for byte.
#[test]
fn overload_on_a_cluster_is_refused_and_nothing_acknowledged_is_lost() {
    const BUDGET_BYTES: u64 = 8 * 1024 * 1024;
    const SENDERS: u32 = 64;
    const RECORDS: u64 = 500;
    let secs: u64 = std::env::var("STRATA_OVERLOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut cluster =
        Cluster::start_with(3, &["--produce-budget-bytes", &BUDGET_BYTES.to_string()]);
    let bootstrap = cluster.control_addrs()[0].clone();
    create_topic(&cluster, &bootstrap);
    let leaders: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("http://{}", cluster.nodes[agreed_leader(&cluster, p)].data))
        .collect();
    let mut batch = BatchBuilder::default();
    for _ in 0..RECORDS {
        batch.push(&Record::new(1, vec![b'v'; 1000])).unwrap();
    }
    let payload = batch.finish();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..PARTITIONS).map(|_| AtomicU64::new(0)).collect());
    let refused = Arc::new(AtomicU64::new(0));
    let redirected = Arc::new(AtomicU64::new(0));
    let controls = cluster.control_addrs();
    let rss_before: Vec<u64> = cluster.nodes.iter().map(|n| n.peak_rss_bytes()).collect();

    let started = Instant::now();
    let health_ms = cluster.rt.block_on(async {
        // At least `secs`, and on until every partition has taken a batch:
        // on a loaded machine an election under the flood can take seconds.
        let end = Instant::now() + Duration::from_secs(secs);
        let cap = end + PHASE_TIMEOUT;
        let flooding = {
            let acked = acked.clone();
            move || {
                let now = Instant::now();
                now < cap && (now < end || acked.iter().any(|a| a.load(Ordering::Relaxed) == 0))
            }
        };
        let mut senders = Vec::new();
        for t in 0..SENDERS {
            let partition = t % PARTITIONS;
            let addr = leaders[partition as usize].clone();
            let (payload, acked, refused, redirected, flooding) = (
                payload.clone(),
                acked.clone(),
                refused.clone(),
                redirected.clone(),
                flooding.clone(),
            );
            senders.push(tokio::spawn(async move {
                let mut client = DataClient::connect(addr).await.unwrap();
                while flooding() {
                    let request = ProduceRequest {
                        topic: TOPIC.into(),
                        partition,
                        batch: payload.clone(),
                        acks: Acks::All as i32,
                    };
                    match client.produce(request).await {
                        Ok(_) => {
                            acked[partition as usize].fetch_add(RECORDS, Ordering::Relaxed);
                        }
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            let hint = s.metadata().get("retry-after-ms");
                            let hint: u64 = hint.unwrap().to_str().unwrap().parse().unwrap();
                            assert!(hint > 0, "a refusal says when to retry");
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        // Leadership may move under load; the batch may or
                        // may not be committed, and is not counted. Follow
                        // the new leader, or wait out the election.
                        Err(s) if s.code() == Code::Unavailable => {
                            redirected.fetch_add(1, Ordering::Relaxed);
                            let leader = s.metadata().get("strata-leader");
                            match leader.and_then(|l| l.to_str().ok()) {
                                Some(leader) => {
                                    let addr = format!("http://{leader}");
                                    if let Ok(c) = DataClient::connect(addr).await {
                                        client = c;
                                    }
                                }
                                None => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                        Err(s) => panic!("overload answered with {s:?}"),
                    }
                }
            }));
        }
        // Health checks on every node while the flood runs.
        let mut health_ms = Vec::new();
        let mut probes = Vec::new();
        for addr in &controls {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            probes.push(tonic_health::pb::health_client::HealthClient::new(channel));
        }
        while flooding() {
            for probe in &mut probes {
                let asked = Instant::now();
                let answer = probe
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .expect("health answers during the flood");
                assert_eq!(answer.into_inner().status, 1, "SERVING");
                health_ms.push(asked.elapsed().as_secs_f64() * 1e3);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for s in senders {
            s.await.unwrap();
        }
        health_ms
    });

    let mut sorted = health_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let peaks: Vec<u64> = cluster.nodes.iter().map(|n| n.peak_rss_bytes()).collect();
    println!(
        "{:.1} s: acked {acked:?} records; refused {} requests, {} unavailable; \
         health median {median:.2} ms, max {:.1} ms; peak RSS MB {:?} (before {:?})",
        started.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed),
        redirected.load(Ordering::Relaxed),
        sorted[sorted.len() - 1],
        peaks.iter().map(|p| p / 1_000_000).collect::<Vec<_>>(),
        rss_before.iter().map(|p| p / 1_000_000).collect::<Vec<_>>(),
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the flood never met backpressure"
    );
    assert!(
        acked.iter().all(|&a| a > 0),
        "no progress under overload: {acked:?}"
    );
    for (i, peak) in peaks.iter().enumerate() {
        assert!(
            *peak < 512 * 1024 * 1024,
            "node {} peaked at {peak} bytes",
            i + 1
        );
    }
    // A control plane queued behind the flood would answer in seconds, or
    // time out; the bound leaves room for a loaded machine (this is not a
    // latency benchmark: benches/run.sh and docs/benchmarks.md are).
    assert!(
        median < 250.0,
        "health median {median:.1} ms under the flood"
    );

    let high_watermarks = cluster.wait_converged(TOPIC, &[0, 1, 2], PHASE_TIMEOUT);
    for (p, (&hw, &a)) in high_watermarks.iter().zip(&acked).enumerate() {
        assert!(
            hw >= a,
            "partition {p}: {a} records acked, only {hw} committed"
        );
    }
    for node in &mut cluster.nodes {
        assert!(node.sigterm().success(), "clean shutdown");
    }
    for partition in 0..PARTITIONS {
        let logs: Vec<_> = (0..3)
            .map(|i| stored_batches(&cluster.data_dir(i), TOPIC, partition))
            .collect();
        assert!(
            logs.iter().all(|l| l == &logs[0]),
            "partition {partition}: the replicas differ after the flood"
        );
        let stored: u64 = logs[0]
            .iter()
            .map(|(_, b)| strata_proto::batch::verify(b).unwrap().record_count as u64)
            .sum();
        assert_eq!(stored, high_watermarks[partition as usize]);
    }
}
