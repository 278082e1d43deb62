//! A cluster of real `strata serve` processes on loopback whose peer traffic
//! runs through one proxy per direction, so a test can cut a node off from
//! the others (both ways) while clients still reach it.
//!
//! Node `i` (index) has id `i + 1`. Every node names the others by the address
//! of the proxy that carries its traffic to them, so the peer lists differ per
//! node, as they may in production (NAT, per-host names).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_broker::log::storage::FileStorage;
use strata_broker::log::{Log, LogConfig};
use strata_proto::batch::{Batches, Records};

use super::Node;
use super::proxy::Proxy;

pub struct Cluster {
    pub rt: tokio::runtime::Runtime,
    pub nodes: Vec<Node>,
    /// `links[from][to]`: the proxy `from` reaches `to` through.
    links: Vec<Vec<Option<Proxy>>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes and returns once each serves (a metadata leader is
    /// elected and every node has joined).
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// As [`Cluster::start`], with `extra` flags for every node.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Self::start_configured(n, |_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// As [`Cluster::start`], with the extra flags `extra(i)` for node `i`.
    pub fn start_configured(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut links: Vec<Vec<Option<Proxy>>> = Vec::new();
        let mut upstreams = Vec::new();
        for from in 0..n {
            let mut row = Vec::new();
            for to in 0..n {
                if from == to {
                    row.push(None);
                    continue;
                }
                let (proxy, upstream) = rt.block_on(Proxy::start());
                upstreams.push((to, upstream));
                row.push(Some(proxy));
            }
            links.push(row);
        }
        let mut nodes = Vec::new();
        for (i, row) in links.iter().enumerate() {
            let peers: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(j, link)| match link {
                    Some(p) => format!("{}={}", j + 1, p.addr),
                    // Its own entry is never dialled.
                    None => format!("{}=127.0.0.1:0", j + 1),
                })
                .collect();
            let id = (i + 1).to_string();
            let peers = peers.join(",");
            let node_dir = dir.path().join(format!("n{}", i + 1));
            let own = extra(i);
            let mut args = vec!["--node-id", &id, "--peers", &peers];
            args.extend(own.iter().map(String::as_str));
            nodes.push(Node::start_listening(&node_dir, &args));
        }
        for (to, upstream) in upstreams {
            upstream.send_replace(Some(nodes[to].peer));
        }
        for node in &mut nodes {
            node.wait_serving();
        }
        let cluster = Cluster {
            rt,
            nodes,
            links,
            dir,
        };
        cluster.wait_all_registered();
        cluster
    }

    /// Waits until every node lists every node's addresses (each registers
    /// through the metadata group once it listens).
    pub fn wait_all_registered(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for addr in self.control_addrs() {
            loop {
                let listed = self.rt.block_on(async {
                    let admin = strata_client::Admin::connect(addr.as_str()).await.ok()?;
                    Some(admin.cluster_status().await.ok()?.nodes.len())
                });
                if listed == Some(self.nodes.len()) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "node at {addr} lists {listed:?} of {} nodes",
                    self.nodes.len()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    /// Starts one more node with `--join` (the others will not know it until
    /// `cluster add-node`), reached directly, without proxies. Returns its
    /// index; it listens but does not serve until it is added.
    pub fn start_joining_node(&mut self) -> usize {
        let i = self.nodes.len();
        let mut peers: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| format!("{}={}", j + 1, n.peer))
            .collect();
        peers.push(format!("{}=127.0.0.1:0", i + 1));
        let id = (i + 1).to_string();
        let peers = peers.join(",");
        let dir = self.data_dir(i);
        self.nodes.push(Node::start_listening(
            &dir,
            &["--node-id", &id, "--peers", &peers, "--join"],
        ));
        i
    }

    /// Every node's control address.
    pub fn control_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.control.to_string()).collect()
    }

    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        for (from, row) in self.links.iter().enumerate() {
            for (to, link) in row.iter().enumerate() {
                if let Some(p) = link
                    && (from == i || to == i)
                {
                    p.down();
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for p in self.links.iter().flatten().flatten() {
            p.heal();
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }
}

/// Every batch of a partition's log in `data_dir` (read with the node
/// stopped), as stored: (base offset, bytes).
pub fn stored_batches(data_dir: &Path, topic: &str, partition: u32) -> Vec<(u64, Bytes)> {
    // A cluster keeps each incarnation of a topic in its own directory.
    let incarnations: Vec<_> = std::fs::read_dir(data_dir.join("topics").join(topic))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        incarnations.len(),
        1,
        "one incarnation of {topic}: {incarnations:?}"
    );
    let dir = incarnations[0].join(partition.to_string());
    let (log, _) = Log::open(&dir, LogConfig::default(), Arc::new(FileStorage), &mut ()).unwrap();
    let mut out = Vec::new();
    let mut offset = log.start_offset();
    while offset < log.end_offset() {
        let chunk = log.read(offset, 1 << 20, log.end_offset()).unwrap();
        for item in Batches::new(chunk.bytes) {
            let (header, batch) = item.unwrap();
            offset = header.next_offset();
            out.push((header.base_offset, batch));
        }
    }
    out
}

/// The records of `batches` as (offset, value).
pub fn record_values(batches: &[(u64, Bytes)]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for (_, batch) in batches {
        for record in Records::new(batch.clone()).unwrap() {
            let (offset, record) = record.unwrap();
            let value = record.value.unwrap_or_default();
            out.push((offset, String::from_utf8(value.to_vec()).unwrap()));
        }
    }
    out
}

impl Cluster {
    /// Waits until every node of `nodes` reports the same high watermark and
    /// log end for each partition of `topic`, with nothing uncommitted: the
    /// replicas have converged. Returns the high watermarks.
    pub fn wait_converged(&self, topic: &str, nodes: &[usize], timeout: Duration) -> Vec<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<Option<Vec<(u64, u64)>>> = self.rt.block_on(async {
                let mut views = Vec::new();
                for &i in nodes {
                    let addr = self.nodes[i].control.to_string();
                    let view = async {
                        let admin = strata_client::Admin::connect(addr.as_str()).await.ok()?;
                        let t = admin.describe_topic(topic).await.ok()?;
                        Some(
                            t.partitions
                                .iter()
                                .map(|p| (p.high_watermark, p.log_end_offset))
                                .collect::<Vec<_>>(),
                        )
                    };
                    views.push(view.await);
                }
                views
            });
            if let Some(Some(first)) = views.first()
                && views.iter().all(|v| v.as_ref() == Some(first))
                && first.iter().all(|(hw, end)| hw == end)
            {
                return first.iter().map(|(hw, _)| *hw).collect();
            }
            if Instant::now() >= deadline {
                // What the nodes said went wrong, for the failure report.
                for (i, node) in self.nodes.iter().enumerate() {
                    let log = node.log();
                    let bad: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                        .collect();
                    eprintln!(
                        "node {} ({} warnings and errors, the last 20):",
                        i + 1,
                        bad.len()
                    );
                    for line in &bad[bad.len().saturating_sub(20)..] {
                        eprintln!("  {line}");
                    }
                }
                panic!("replicas never converged: {views:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
