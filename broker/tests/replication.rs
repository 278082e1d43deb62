//! A partition replicated by Raft across three nodes, in one process but over
//! the real peer service on loopback: acknowledged batches survive the loss
//! of the leader, are never written twice (idempotent retries across the
//! failover), and every replica's log is byte-identical up to the high
//! watermark.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use strata_broker::Error;
use strata_broker::log::storage::{FileStorage, Storage};
use strata_broker::log::{Log, LogConfig};
use strata_broker::partition::Appended;
use strata_broker::partition::replica::{Replica, ReplicaConfig};
use strata_broker::raft::groups::Groups;
use strata_broker::raft::network::Peers;
use strata_broker::server::peer_service::PeerService;
use strata_proto::batch::{BatchBuilder, Batches, ProducerStamp, Record, verify};
use strata_proto::v1::peer_server::PeerServer;
use tempfile::TempDir;
use tokio::sync::watch;

#[path = "../../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

const GROUP: &str = "orders/0";

struct Node {
    id: u64,
    addr: SocketAddr,
    replica: Arc<Replica>,
    server: tokio::task::JoinHandle<()>,
    hw: Arc<watch::Sender<u64>>,
    dir: TempDir,
}

async fn start_node(id: u64) -> Node {
    start_node_in(id, tempfile::tempdir().unwrap(), "127.0.0.1:0").await
}

/// Starts node `id` on the data in `dir`, listening on `addr`.
async fn start_node_in(id: u64, dir: TempDir, addr: &str) -> Node {
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        ..LogConfig::default()
    };
    start_node_with(id, dir, addr, config).await
}

async fn start_node_with(id: u64, dir: TempDir, addr: &str, config: LogConfig) -> Node {
    let storage: Arc<dyn Storage> = Arc::new(FileStorage);
    let (log, _) = Log::open(&dir.path().join("log"), config, storage.clone(), &mut ()).unwrap();
    let hw = Arc::new(watch::Sender::new(0));
    let groups = Groups::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replica = Replica::start(
        ReplicaConfig {
            topic: "orders".into(),
            partition: 0,
            node_id: id,
            rank: id,
            network: Peers::default().group(GROUP),
            resolve: Arc::new(|id| Some(format!("node-{id}"))),
            debug_ack_before_commit: false,
        },
        Arc::new(log),
        storage,
        dir.path(),
        hw.clone(),
    )
    .await
    .unwrap();
    groups.insert(GROUP.into(), replica.raft().clone());
    let service = PeerServer::new(PeerService::new(id as u32, groups));
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Node {
        id,
        addr,
        replica,
        server,
        hw,
        dir,
    }
}

fn batch(producer: u64, sequence: u32, records: u32) -> Bytes {
    let mut b = BatchBuilder::new(ProducerStamp {
        producer_id: producer,
        producer_epoch: 0,
        base_sequence: sequence,
    });
    for i in 0..records {
        let value = format!("p{producer}-s{}", sequence + i);
        b.push(&Record::new(1_700_000_000_000, value.into_bytes()))
            .unwrap();
    }
    b.finish()
}

/// Appends through whichever node leads, retrying (idempotently) while the
/// cluster elects; returns the acknowledgement.
async fn append(nodes: &[&Node], bytes: &Bytes) -> Appended {
    let header = verify(bytes).unwrap();
    for _ in 0..200 {
        for node in nodes {
            match node.replica.append(bytes.clone(), header).await {
                Ok(a) => return a,
                Err(Error::NotLeader { .. }) => {}
                Err(e) => panic!("node {}: {e}", node.id),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader took the batch within 10 s");
}

async fn wait_for_leader(nodes: &[&Node]) -> u64 {
    for _ in 0..200 {
        if let Some(n) = nodes.iter().find(|n| n.replica.is_leader()) {
            return n.id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let states: Vec<String> = nodes
        .iter()
        .map(|n| {
            let m = n.replica.raft().metrics().borrow().clone();
            format!(
                "node {}: {:?} term {} leader {:?} last log {:?} applied {:?} vote {}",
                n.id,
                m.state,
                m.current_term,
                m.current_leader,
                m.last_log_index,
                m.last_applied,
                m.vote
            )
        })
        .collect();
    panic!("no leader elected within 10 s:\n{}", states.join("\n"));
}

/// Every record value below the high watermark, in offset order, and the raw
/// bytes of the log up to it.
fn contents(node: &Node) -> (Vec<(u64, String)>, Vec<u8>) {
    let log = node.replica.log();
    let hw = *node.hw.borrow();
    let mut offset = log.start_offset();
    let (mut records, mut raw) = (Vec::new(), Vec::new());
    while offset < hw {
        let chunk = log.read(offset, 1 << 20, hw).unwrap();
        raw.extend_from_slice(&chunk.bytes);
        for b in Batches::new(chunk.bytes.clone()) {
            let (_, b) = b.unwrap();
            for r in strata_proto::batch::Records::new(b).unwrap() {
                let (o, r) = r.unwrap();
                records.push((o, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
            }
        }
        offset = chunk.next_offset;
    }
    (records, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_leader_loss_exactly_once() {
    let n1 = start_node(1).await;
    let n2 = start_node(2).await;
    let n3 = start_node(3).await;
    let members: BTreeMap<u64, BasicNode> = [&n1, &n2, &n3]
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();
    n1.replica.raft().initialize(members).await.unwrap();
    let all = [&n1, &n2, &n3];
    let first = wait_for_leader(&all).await;
    assert_eq!(
        first, 1,
        "only the initialized node can win the first election"
    );

    // 40 batches of 5 records from producer 7, acknowledged by a quorum.
    let mut acked = Vec::new();
    for i in 0..40u32 {
        let b = batch(7, i * 5, 5);
        let a = append(&all, &b).await;
        assert!(!a.duplicate);
        acked.push((b, a.base_offset));
    }
    assert_eq!(acked.last().unwrap().1, 39 * 5);

    // The leader dies (its Raft stops and its port goes away).
    n1.replica.shutdown().await;
    n1.server.abort();
    let n1_addr = n1.addr.to_string();
    let n1_dir = n1.dir;
    let survivors = [&n2, &n3];
    let second = wait_for_leader(&survivors).await;
    assert_ne!(second, 1);

    // Retrying an acknowledged batch (within the dedupe window of the last
    // five) on the new leader returns its original offset: the producer table
    // was replicated with the data.
    let (retry, offset) = &acked[37];
    let again = append(&survivors, retry).await;
    assert_eq!((again.base_offset, again.duplicate), (*offset, true));

    // Producing continues on the new leader, with offsets right after.
    for i in 40..60u32 {
        let b = batch(7, i * 5, 5);
        let a = append(&survivors, &b).await;
        assert_eq!(a.base_offset, u64::from(i) * 5);
    }

    // Wait until both survivors applied everything, then compare them.
    for _ in 0..200 {
        if survivors.iter().all(|n| *n.hw.borrow() == 300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (records2, raw2) = contents(&n2);
    let (records3, raw3) = contents(&n3);
    assert_eq!(records2.len(), 300, "every acknowledged record, once");
    for (i, (offset, value)) in records2.iter().enumerate() {
        assert_eq!(*offset, i as u64, "dense offsets");
        assert_eq!(*value, format!("p7-s{i}"), "in order, none twice");
    }
    assert_eq!(records2, records3);
    assert_eq!(
        raw2, raw3,
        "replicas are byte-identical up to the high watermark"
    );

    // The old leader restarts on its data and port, rejoins as a follower and
    // catches up to the same bytes.
    drop(n1.replica);
    let n1 = start_node_in(1, n1_dir, &n1_addr).await;
    for _ in 0..200 {
        if *n1.hw.borrow() == 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, raw1) = contents(&n1);
    assert_eq!(raw1, raw2, "the restarted replica caught up byte for byte");
    n1.replica.shutdown().await;
    n2.replica.shutdown().await;
    n3.replica.shutdown().await;
}

/// Retention on a replicated partition: segments go only once Raft has
/// purged their entries; a replica that was down while the others cut their
/// logs catches up from a snapshot and restarts its log where theirs start,
/// byte-identical from there on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_purged_entries_and_a_lagging_replica_restarts_from_a_snapshot() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = LogConfig {
        segment_bytes: 16 * 1024,
        retention_bytes: Some(32 * 1024),
        ..LogConfig::default()
    };
    let start = |id: u64| {
        let config = config.clone();
        async move { start_node_with(id, tempfile::tempdir().unwrap(), "127.0.0.1:0", config).await }
    };
    let (n1, n2, n3) = (start(1).await, start(2).await, start(3).await);
    // Node 3 is reached through a proxy, so that killing it cuts the
    // connections to it, as a crash would.
    let link = proxied().await;
    link.upstream.send_replace(Some(n3.addr));
    let members: BTreeMap<u64, BasicNode> = [
        (1, n1.addr.to_string()),
        (2, n2.addr.to_string()),
        (3, link.proxy.addr.to_string()),
    ]
    .into_iter()
    .map(|(id, addr)| (id, BasicNode::new(addr)))
    .collect();
    n1.replica.raft().initialize(members).await.unwrap();
    let all = [&n1, &n2, &n3];
    wait_for_leader(&all).await;
    for i in 0..20u32 {
        append(&all, &batch(7, i * 5, 5)).await;
    }
    // Node 3 goes down, holding the first 100 records.
    link.proxy.down();
    n3.replica.shutdown().await;
    n3.server.abort();
    let n3_dir = n3.dir;
    drop(n3.replica);
    let up = [&n1, &n2];
    // About 400 KiB more: far beyond the retention size.
    for i in 20..1000u32 {
        append(&up, &batch(7, i * 5, 5)).await;
    }
    let total = 5000u64;
    for _ in 0..200 {
        if up.iter().all(|n| *n.hw.borrow() == total) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few maintenance passes: purge first, then delete what is purged.
    let now = strata_broker::log::now_ms();
    for _ in 0..50 {
        for n in up {
            n.replica.enforce_retention(now).await.unwrap();
        }
        if up.iter().all(|n| n.replica.log().start_offset() > 100) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in up {
        let log = n.replica.log();
        assert!(
            log.start_offset() > 100,
            "node {} kept its whole log (start {})",
            n.id,
            log.start_offset()
        );
        assert!(
            log.cached_size_bytes() < 200 * 1024,
            "retention bounded the log"
        );
    }

    // Node 3 comes back: what it needs is gone, so it gets a snapshot, then
    // the records after it.
    let n3 = start_node_with(3, n3_dir, "127.0.0.1:0", config.clone()).await;
    link.upstream.send_replace(Some(n3.addr));
    link.proxy.heal();
    // The log restarts right after the snapshot restores the high watermark.
    for _ in 0..400 {
        if *n3.hw.borrow() == total && n3.replica.log().start_offset() > 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        *n3.hw.borrow(),
        total,
        "the lagging replica caught up; node 3: {:?}; node 1: {:?}",
        n3.replica.raft().metrics().borrow().clone(),
        n1.replica.raft().metrics().borrow().clone()
    );
    let start3 = n3.replica.log().start_offset();
    assert!(
        start3 > 100,
        "node 3's log restarted past what it had (starts at {start3}; ends at {}; node 1 starts at {}; node 3: {:?})",
        n3.replica.log().end_offset(),
        n1.replica.log().start_offset(),
        n3.replica.raft().metrics().borrow().clone()
    );
    assert!(start3 <= total);
    let (records3, _) = contents(&n3);
    let (records1, _) = contents(&n1);
    let tail1: Vec<_> = records1.into_iter().filter(|(o, _)| *o >= start3).collect();
    assert_eq!(records3, tail1, "the same records from node 3's start on");
    for (offset, value) in &records3 {
        assert_eq!(*value, format!("p7-s{offset}"));
    }
    // And it keeps replicating after the restart, at the same offsets.
    let all = [&n1, &n2, &n3];
    for i in 1000..1010u32 {
        append(&all, &batch(7, i * 5, 5)).await;
    }
    for _ in 0..200 {
        if *n3.hw.borrow() == total + 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (records3, _) = contents(&n3);
    assert_eq!(records3.last().map(|r| r.0), Some(total + 49));
    for (offset, value) in &records3 {
        assert_eq!(*value, format!("p7-s{offset}"));
    }
    for n in [&n1, &n2, &n3] {
        n.replica.shutdown().await;
    }
}

/// A node behind a proxy that can cut it off from its peers.
struct Proxied {
    proxy: proxy::Proxy,
    upstream: watch::Sender<Option<SocketAddr>>,
}

async fn proxied() -> Proxied {
    let (proxy, upstream) = proxy::Proxy::start().await;
    Proxied { proxy, upstream }
}

/// A leader cut off from its followers appends batches nobody acknowledges;
/// the others elect a new leader and commit more batches. When the old leader
/// comes back it ends up byte-identical to the new leader, truncating whatever
/// of its unacknowledged tail the new leader does not have. (Unacknowledged
/// batches may still commit — a request buffered before the cut can land
/// after it, and Raft lets a later leader commit what a majority holds — but
/// never twice and never out of order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_truncates_its_unacknowledged_tail() {
    let links = [proxied().await, proxied().await, proxied().await];
    let n1 = start_node(1).await;
    let n2 = start_node(2).await;
    let n3 = start_node(3).await;
    for (link, node) in links.iter().zip([&n1, &n2, &n3]) {
        link.upstream.send_replace(Some(node.addr));
    }
    let members: BTreeMap<u64, BasicNode> = links
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, BasicNode::new(l.proxy.addr.to_string())))
        .collect();
    n1.replica.raft().initialize(members).await.unwrap();
    let all = [&n1, &n2, &n3];
    assert_eq!(wait_for_leader(&all).await, 1);
    for i in 0..10u32 {
        append(&all, &batch(7, i * 5, 5)).await;
    }

    // Cut the leader off: nobody reaches n2 or n3, so n1 cannot replicate.
    links[1].proxy.down();
    links[2].proxy.down();
    let orphans: Vec<_> = (0..3u32)
        .map(|i| {
            let replica = n1.replica.clone();
            let b = batch(9, i * 2, 2);
            let header = verify(&b).unwrap();
            tokio::spawn(async move { replica.append(b, header).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n1_end = n1.replica.log().end_offset();
    assert!(
        n1_end > 50,
        "the isolated leader wrote its unacknowledged tail"
    );
    n1.replica.shutdown().await;
    for orphan in orphans {
        let answer = orphan.await.unwrap();
        assert!(
            answer.is_err(),
            "nothing was acknowledged without a quorum: {answer:?}"
        );
    }

    // The others, reconnected, elect a leader and commit different batches.
    links[0].proxy.down();
    links[1].proxy.heal();
    links[2].proxy.heal();
    let survivors = [&n2, &n3];
    wait_for_leader(&survivors).await;
    for i in 10..20u32 {
        append(&survivors, &batch(7, i * 5, 5)).await;
    }

    // The old leader restarts on its data and rejoins.
    let n1_dir = n1.dir;
    drop(n1.replica);
    let n1 = start_node_in(1, n1_dir, "127.0.0.1:0").await;
    links[0].upstream.send_replace(Some(n1.addr));
    links[0].proxy.heal();
    let leader_end = survivors
        .iter()
        .find(|n| n.replica.is_leader())
        .map(|n| n.replica.log().end_offset())
        .expect("a survivor leads");
    for _ in 0..200 {
        if [&n1, &n2, &n3].iter().all(|n| *n.hw.borrow() == leader_end) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (records1, raw1) = contents(&n1);
    let (records2, raw2) = contents(&n2);
    let acked: Vec<_> = records2
        .iter()
        .filter(|(_, v)| v.starts_with("p7-"))
        .collect();
    assert_eq!(acked.len(), 100, "every acknowledged record, once");
    for (i, (_, value)) in acked.iter().enumerate() {
        assert_eq!(*value, format!("p7-s{i}"), "acknowledged records in order");
    }
    let orphans: Vec<_> = records2
        .iter()
        .filter(|(_, v)| v.starts_with("p9-"))
        .collect();
    for (i, (_, value)) in orphans.iter().enumerate() {
        assert_eq!(
            *value,
            format!("p9-s{i}"),
            "unacknowledged records at most once, in order"
        );
    }
    for (i, (offset, _)) in records2.iter().enumerate() {
        assert_eq!(*offset, i as u64, "dense offsets");
    }
    assert_eq!(records1, records2);
    assert_eq!(
        raw1, raw2,
        "the old leader's log now equals the new leader's"
    );
    assert_eq!(n1.replica.log().end_offset(), leader_end);
    for n in [&n1, &n2, &n3] {
        n.replica.shutdown().await;
    }
}
