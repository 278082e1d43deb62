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
use strata_broker::partition::replica::Replica;
use strata_broker::raft::groups::Groups;
use strata_broker::raft::network::Peers;
use strata_broker::server::peer_service::PeerService;
use strata_proto::batch::{BatchBuilder, Batches, ProducerStamp, Record, verify};
use strata_proto::v1::peer_server::PeerServer;
use tempfile::TempDir;
use tokio::sync::watch;

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
    let storage: Arc<dyn Storage> = Arc::new(FileStorage);
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(&dir.path().join("log"), config, storage.clone(), &mut ()).unwrap();
    let hw = Arc::new(watch::Sender::new(0));
    let groups = Groups::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replica = Replica::start(
        "orders",
        0,
        id,
        Arc::new(log),
        storage,
        dir.path(),
        hw.clone(),
        Peers::default().group(GROUP),
        Arc::new(|id| Some(format!("node-{id}"))),
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
    panic!("no leader elected within 10 s");
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
