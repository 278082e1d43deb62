//! A randomized fault run against a real three-node cluster, judged by the
//! history checker (tests/common/history.rs), in the spirit of Jepsen.
//!
//! Producers (idempotent, acks=all) and consumers run for the whole length of
//! the run while a nemesis, driven by a seeded RNG, keeps one fault at a time
//! going: kill -9 a node (then restart it on its data), freeze one
//! (SIGSTOP/SIGCONT), cut one off from its peers both ways (proxies), or
//! restart one on a disk that fills up at once (ENOSPC through the storage
//! layer, `serve --debug-disk-space-bytes`), then with space again. At
//! the end the cluster heals, the replicas converge, the nodes stop, every
//! replica's log is compared byte for byte, and the checker judges what the
//! clients saw against the final log.
//!
//! `STRATA_NEMESIS_SECS` sets the length (default 30 s; CI uses the default),
//! `STRATA_NEMESIS_SEED` replays a schedule (the seed of every run is printed).
//! docs/testing.md has the results of long runs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, stored_batches};
use common::history::{History, Report, value_of};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_client::{Admin, Consumer, NewTopic, Producer, ProducerRecord, StartFrom};
use strata_proto::batch::Records;

const TOPIC: &str = "jepsen";
const PARTITIONS: u32 = 3;
const PRODUCERS: u32 = 3;
const CONSUMERS: usize = 2;
/// Records a producer sends before awaiting their acknowledgements.
const ROUND: u64 = 20;
/// How long the replicas may take to converge once the faults stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Sends `p<producer>-<n>` records until `stop`, recording every outcome.
async fn produce(producer: Producer, id: u32, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut next = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut round = Vec::new();
        for _ in 0..ROUND {
            let rid = (id, next);
            next += 1;
            history.sent(rid);
            let record = ProducerRecord::new(TOPIC, value_of(rid)).key(next.to_string());
            match producer.enqueue(record).await {
                Ok(delivery) => round.push((rid, delivery)),
                Err(_) => history.failed(rid),
            }
        }
        for (rid, delivery) in round {
            match delivery.await {
                Ok(meta) => history.acked(rid, meta.partition, meta.offset.expect("acks=all")),
                Err(_) => history.failed(rid),
            }
        }
    }
    let _ = producer.close().await;
}

/// Reads every partition from the start until `stop`, recording each record.
async fn consume(consumer: Consumer, id: usize, history: Arc<History>, stop: Arc<AtomicBool>) {
    let mut stream = consumer.stream();
    while !stop.load(Ordering::Acquire) {
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Ok(Some(Ok(r))) => history.read(
                id,
                r.partition,
                r.offset,
                r.value.as_deref().unwrap_or_default(),
            ),
            Ok(Some(Err(e))) => eprintln!("consumer {id}: {e}"),
            Ok(None) => return,
            Err(_) => {}
        }
    }
}

/// One fault the nemesis can hold.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    Pause(usize),
    Isolate(usize),
    /// Restart the node on a disk that is full after `DISK_SPACE_BYTES`
    /// more bytes (its catch-up alone fills it); lifted by a restart with
    /// space.
    FillDisk(usize),
}

/// Room a `FillDisk` node gets: enough to start, far too little to catch up.
const DISK_SPACE_BYTES: &str = "16384";
const DISK_SPACE_FLAG: &str = "--debug-disk-space-bytes";

/// How much longer than its drawn hold a disk fill may last, waiting for
/// the node to meet ENOSPC: on a loaded machine a restarted node can take
/// the whole hold to start, and a fill that never bit tested nothing.
const FILL_BITE_WAIT: Duration = Duration::from_secs(15);

const ENOSPC: &str = "No space left on device";

fn enospc_count(log: &str) -> usize {
    log.matches(ENOSPC).count()
}

fn begin(cluster: &mut Cluster, fault: Fault) {
    match fault {
        Fault::Kill(i) => cluster.nodes[i].kill9(),
        Fault::Pause(i) => cluster.nodes[i].pause(),
        Fault::Isolate(i) => cluster.isolate(i),
        Fault::FillDisk(i) => {
            let node = &mut cluster.nodes[i];
            node.kill9();
            node.set_flag(DISK_SPACE_FLAG, DISK_SPACE_BYTES);
            node.restart();
        }
    }
}

fn end(cluster: &mut Cluster, fault: Fault) {
    match fault {
        Fault::Kill(i) => cluster.nodes[i].restart(),
        Fault::Pause(i) => cluster.nodes[i].resume(),
        Fault::Isolate(_) => cluster.heal(),
        Fault::FillDisk(i) => {
            let node = &mut cluster.nodes[i];
            node.kill9();
            node.drop_flag(DISK_SPACE_FLAG);
            node.restart();
        }
    }
}

/// What a run produced: the history and the final log of each partition.
struct Outcome {
    history: Arc<History>,
    final_log: BTreeMap<u32, Vec<(u64, Vec<u8>)>>,
}

/// Runs clients against a fresh cluster (nodes started with `extra` flags)
/// while `nemesis` injects faults; returns once the replicas converged and
/// the nodes stopped.
fn run(extra: &[&str], nemesis: impl FnOnce(&mut Cluster, &History)) -> Outcome {
    let mut cluster = Cluster::start_with(3, extra);
    let bootstrap = cluster.control_addrs().join(",");
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = cluster.rt.block_on(async {
        let admin = Admin::connect(bootstrap.as_str()).await.unwrap();
        admin
            .create_topic(TOPIC, NewTopic::new(PARTITIONS).replication_factor(3))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for id in 0..PRODUCERS {
            let producer = Producer::builder(bootstrap.as_str())
                .request_timeout(Duration::from_secs(2))
                .delivery_timeout(Duration::from_secs(30))
                .build()
                .await
                .unwrap();
            tasks.push(tokio::spawn(produce(
                producer,
                id,
                history.clone(),
                stop.clone(),
            )));
        }
        for id in 0..CONSUMERS {
            let consumer = Consumer::builder(bootstrap.as_str())
                .topics([TOPIC])
                .start_from(StartFrom::Earliest)
                .build()
                .await
                .unwrap();
            tasks.push(tokio::spawn(consume(
                consumer,
                id,
                history.clone(),
                stop.clone(),
            )));
        }
        tasks
    });
    nemesis(&mut cluster, &history);
    stop.store(true, Ordering::Release);
    cluster.rt.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    cluster.wait_converged(TOPIC, &[0, 1, 2], SETTLE_TIMEOUT);
    for node in &mut cluster.nodes {
        assert!(node.sigterm().success(), "clean shutdown");
    }
    let mut final_log = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let logs: Vec<_> = (0..3)
            .map(|i| stored_batches(&cluster.data_dir(i), TOPIC, partition))
            .collect();
        for (i, log) in logs.iter().enumerate().skip(1) {
            assert!(
                log == &logs[0],
                "partition {partition}: node {} and node 1 hold different logs",
                i + 1
            );
        }
        let mut records = Vec::new();
        for (_, batch) in &logs[0] {
            for record in Records::new(batch.clone()).unwrap() {
                let (offset, record) = record.unwrap();
                records.push((offset, record.value.unwrap_or_default().to_vec()));
            }
        }
        final_log.insert(partition, records);
    }
    Outcome { history, final_log }
}

fn judge(outcome: &Outcome) -> Report {
    let h = &outcome.history;
    let report = h.check(&outcome.final_log);
    eprintln!(
        "history: {} acknowledged, {} failed (fate unknown), {} reads; {}",
        h.acked_count(),
        h.failed_count(),
        h.read_count(),
        report.explain().trim_end()
    );
    report
}

#[test]
fn randomized_faults_lose_duplicate_or_reorder_nothing() {
    let seed = env_u64("STRATA_NEMESIS_SEED").unwrap_or_else(rand::random);
    let length = Duration::from_secs(env_u64("STRATA_NEMESIS_SECS").unwrap_or(30));
    eprintln!(
        "nemesis seed {seed} (replay with STRATA_NEMESIS_SEED={seed}), {} s",
        length.as_secs()
    );
    let mut faults = Vec::new();
    let mut disk_full_errors = 0;
    let outcome = run(&[], |cluster, history| {
        let mut rng = StdRng::seed_from_u64(seed);
        let deadline = Instant::now() + length;
        while Instant::now() < deadline {
            let node = rng.random_range(0..3);
            let fault = match rng.random_range(0..4) {
                0 => Fault::Kill(node),
                1 => Fault::Pause(node),
                2 => Fault::Isolate(node),
                _ => Fault::FillDisk(node),
            };
            let hold = Duration::from_millis(rng.random_range(500..3000));
            let rest = Duration::from_millis(rng.random_range(500..2000));
            let acked = history.acked_count();
            let enospc_before = match fault {
                Fault::FillDisk(i) => enospc_count(&cluster.nodes[i].log()),
                _ => 0,
            };
            begin(cluster, fault);
            std::thread::sleep(hold);
            if let Fault::FillDisk(i) = fault {
                let give_up = Instant::now() + FILL_BITE_WAIT;
                while enospc_count(&cluster.nodes[i].log()) == enospc_before
                    && Instant::now() < give_up
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            end(cluster, fault);
            std::thread::sleep(rest);
            faults.push((fault, history.acked_count() - acked));
        }
        disk_full_errors = cluster.nodes.iter().map(|n| enospc_count(&n.log())).sum();
    });
    eprintln!("faults (fault, records acknowledged while it was held or after): {faults:?}");
    let fills = faults
        .iter()
        .filter(|(f, _)| matches!(f, Fault::FillDisk(_)))
        .count();
    eprintln!("{fills} disk fills; the nodes logged {disk_full_errors} ENOSPC errors");
    assert!(
        fills == 0 || disk_full_errors > 0,
        "the disk fills never bit (no ENOSPC in any node's log)"
    );
    let report = judge(&outcome);
    assert!(report.is_clean(), "seed {seed}:\n{}", report.explain());
    assert!(
        outcome.history.acked_count() > 1000,
        "the cluster made almost no progress under faults (seed {seed})"
    );
}

/// The checker's own test: a broker that acknowledges appends before they
/// commit (a test-only flag) loses acknowledged records when its leader is
/// cut off, and answers with offsets it only guessed; the checker must say so.
#[test]
fn the_checker_catches_a_broker_that_acknowledges_before_commit() {
    let outcome = run(&["--debug-ack-before-commit"], |cluster, history| {
        let wait_for = |more: usize| {
            let target = history.acked_count() + more;
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while history.acked_count() < target && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(300);
        // Cut off the node the clients write to: it keeps acknowledging
        // what it can never commit.
        let leader = cluster.rt.block_on(async {
            let admin = Admin::connect(cluster.control_addrs()[0].as_str())
                .await
                .unwrap();
            // 0 while an election runs: ask until a leader is known.
            for _ in 0..100 {
                let leader = admin.describe_topic(TOPIC).await.unwrap().partitions[0].leader;
                if leader != 0 {
                    return leader as usize;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("partition 0 has no leader");
        });
        cluster.isolate(leader - 1);
        wait_for(300);
        std::thread::sleep(Duration::from_secs(2));
        cluster.heal();
        wait_for(300);
    });
    let report = judge(&outcome);
    // Records acknowledged by the cut-off leader are lost; records it
    // acknowledged at guessed offsets are misplaced. Either is a catch.
    assert!(
        !report.lost.is_empty() || !report.misplaced.is_empty(),
        "the checker missed what the broken broker did wrong:\n{}",
        report.explain()
    );
}

/// The checker itself: a clean history passes, and each kind of anomaly,
/// injected by hand, is reported.
mod checker {
    use std::collections::BTreeMap;

    use crate::common::history::{History, RecordId, value_of};

    fn log(entries: &[(u32, u64, RecordId)]) -> BTreeMap<u32, Vec<(u64, Vec<u8>)>> {
        let mut out: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for &(p, o, id) in entries {
            out.entry(p)
                .or_default()
                .push((o, value_of(id).into_bytes()));
        }
        out
    }

    fn history(acks: &[(RecordId, u32, u64)]) -> History {
        let h = History::default();
        for &(id, p, o) in acks {
            h.sent(id);
            h.acked(id, p, o);
        }
        h
    }

    #[test]
    fn a_clean_history_is_clean() {
        let h = history(&[((0, 0), 0, 0), ((0, 1), 0, 1), ((1, 0), 1, 0)]);
        h.read(0, 0, 0, b"p0-0");
        h.read(0, 0, 1, b"p0-1");
        let report = h.check(&log(&[(0, 0, (0, 0)), (0, 1, (0, 1)), (1, 0, (1, 0))]));
        assert!(report.is_clean(), "{}", report.explain());
    }

    #[test]
    fn each_injected_anomaly_is_reported() {
        let h = history(&[
            ((0, 0), 0, 0),
            ((0, 1), 0, 1),
            ((0, 2), 0, 2),
            ((1, 0), 1, 0),
        ]);
        h.sent((2, 0)); // sent, never acked: may be stored once, not twice
        h.read(0, 0, 1, b"p0-1");
        h.read(0, 0, 0, b"p0-0"); // backwards
        h.read(1, 0, 0, b"p9-9"); // never sent, and not what the log holds
        let report = h.check(&log(&[
            (0, 0, (0, 0)),
            (0, 1, (0, 2)), // p0-2 before p0-1, and not where acked
            (0, 2, (0, 1)),
            (0, 3, (2, 0)),
            (0, 4, (2, 0)), // duplicated
                            // p1-0 lost
        ]));
        assert_eq!(report.lost.len(), 1, "{}", report.explain());
        assert_eq!(report.duplicated.len(), 1, "{}", report.explain());
        assert_eq!(report.misplaced.len(), 2, "{}", report.explain());
        assert_eq!(report.reordered.len(), 1, "{}", report.explain());
        assert_eq!(report.non_monotonic.len(), 1, "{}", report.explain());
        assert_eq!(report.phantom.len(), 1, "{}", report.explain());
        assert_eq!(report.diverging.len(), 2, "{}", report.explain());
        assert!(!report.is_clean());
        assert!(report.explain().contains("p1-0 was acknowledged at 1/0"));
    }
}
