//! The partition's append path: group commit, durability, idempotence and the
//! high watermark, under concurrency and injected faults.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::future::join_all;
use strata_broker::Error;
use strata_broker::log::LogConfig;
use strata_broker::log::storage::{Faults, FaultyStorage, FileStorage, Storage};
use strata_broker::partition::{Acks, Partition};
use strata_proto::batch::{Batches, ProducerStamp, Records};

fn open_partition(dir: &std::path::Path, storage: Arc<dyn Storage>) -> Partition {
    Partition::open(dir, "t", 0, small_segments(64 * 1024), storage)
        .expect("open partition")
        .0
}

async fn read_values(p: &Partition) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut offset = p.start_offset();
    while offset < p.high_watermark() {
        let chunk = p.read(offset, 1 << 20).await.unwrap();
        for item in Batches::new(chunk.bytes) {
            for rec in Records::new(item.unwrap().1).unwrap() {
                let (o, r) = rec.unwrap();
                out.push((o, r.value.unwrap()));
            }
        }
        offset = chunk.next_offset;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_unique_offsets_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(open_partition(dir.path(), Arc::new(FileStorage)));
    const TASKS: usize = 32;
    const BATCHES: usize = 60;
    let tasks = (0..TASKS).map(|t| {
        let p = p.clone();
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for b in 0..BATCHES {
                let records = 1 + (t + b) as u32 % 4;
                let batch = Bytes::from(batch(&format!("t{t}b{b}"), records, 20, 1));
                let done = p.append(batch, Acks::All).await.unwrap();
                // Acknowledged means readable: the high watermark covers it.
                assert!(p.high_watermark() >= done.base_offset + u64::from(records));
                offsets.push((done.base_offset, records, format!("t{t}b{b}")));
            }
            offsets
        })
    });
    let mut all: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    all.sort();
    let mut expected = 0;
    for (base, records, _) in &all {
        assert_eq!(*base, expected, "offsets are dense and unique");
        expected += u64::from(*records);
    }
    // Every record is there, with the content its producer sent, at its offset.
    let values: HashMap<u64, Bytes> = read_values(&p).await.into_iter().collect();
    assert_eq!(values.len() as u64, expected);
    for (base, records, tag) in &all {
        for i in 0..*records {
            assert!(values[&(base + u64::from(i))].starts_with(format!("{tag}-{i}").as_bytes()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_together_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    let p = open_partition(dir.path(), storage.clone());
    let syncs_before = storage.syncs();
    let appends =
        (0..400).map(|i| p.append(Bytes::from(batch(&format!("g{i}"), 1, 10, 1)), Acks::All));
    for r in join_all(appends).await {
        r.unwrap();
    }
    let syncs = storage.syncs() - syncs_before;
    assert!(
        syncs <= 40,
        "{syncs} fsyncs for 400 appends: group commit is not grouping"
    );
    assert_eq!(p.high_watermark(), 400);
}

#[tokio::test]
async fn a_failed_fsync_fails_every_waiter_and_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    let p = open_partition(dir.path(), storage.clone());
    p.append(Bytes::from(batch("ok", 1, 10, 1)), Acks::All)
        .await
        .unwrap();
    storage.set(Faults {
        fail_sync: true,
        ..Faults::default()
    });
    let results = join_all(
        (0..5).map(|i| p.append(Bytes::from(batch(&format!("f{i}"), 1, 10, 1)), Acks::All)),
    )
    .await;
    assert!(
        results.iter().all(|r| matches!(r, Err(Error::Storage(_)))),
        "{results:?}"
    );
    assert_eq!(p.high_watermark(), 1, "nothing unflushed becomes visible");
    storage.set(Faults::default());
    let later = p
        .append(Bytes::from(batch("later", 1, 10, 1)), Acks::All)
        .await;
    assert!(
        matches!(later, Err(Error::Storage(_))),
        "the partition stays read-only: {later:?}"
    );
    assert_eq!(read_values(&p).await.len(), 1);
}

fn producer_batch(pid: u64, seq: u32, records: u32, tag: &str) -> Bytes {
    let stamp = ProducerStamp {
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: seq,
    };
    Bytes::from(batch_from(stamp, tag, records, 10, 1))
}

#[tokio::test]
async fn a_retried_batch_is_acknowledged_with_its_original_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = open_partition(dir.path(), Arc::new(FileStorage));
    p.append(Bytes::from(batch("other", 2, 10, 1)), Acks::All)
        .await
        .unwrap();
    let first = p
        .append(producer_batch(7, 0, 3, "a"), Acks::All)
        .await
        .unwrap();
    let second = p
        .append(producer_batch(7, 3, 1, "b"), Acks::All)
        .await
        .unwrap();
    assert_eq!((first.base_offset, first.duplicate), (2, false));
    let retry = p
        .append(producer_batch(7, 0, 3, "a"), Acks::All)
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (2, true));
    let retry = p
        .append(producer_batch(7, 3, 1, "b"), Acks::Leader)
        .await
        .unwrap();
    assert_eq!(retry.base_offset, second.base_offset);
    assert_eq!(p.end_offset(), 6, "duplicates are not written");
    // A gap in sequences is refused, so the client resends in order.
    let gap = p.append(producer_batch(7, 9, 1, "c"), Acks::All).await;
    assert!(
        matches!(
            gap,
            Err(Error::OutOfOrderSequence {
                expected: 4,
                received: 9,
                ..
            })
        ),
        "{gap:?}"
    );
}

#[tokio::test]
async fn dedupe_survives_a_clean_restart_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let p = open_partition(dir.path(), storage.clone());
        p.append(producer_batch(1, 0, 2, "x"), Acks::All)
            .await
            .unwrap();
        p.close().await.unwrap();
    }
    {
        let p = open_partition(dir.path(), storage.clone());
        let retry = p
            .append(producer_batch(1, 0, 2, "x"), Acks::All)
            .await
            .unwrap();
        assert_eq!((retry.base_offset, retry.duplicate), (0, true));
        // Written after the last checkpoint, then a crash: only the log has it.
        let y = p
            .append(producer_batch(1, 2, 1, "y"), Acks::All)
            .await
            .unwrap();
        assert_eq!(y.base_offset, 2);
    }
    storage.crash().unwrap();
    let p = open_partition(dir.path(), storage);
    let retry = p
        .append(producer_batch(1, 2, 1, "y"), Acks::All)
        .await
        .unwrap();
    assert_eq!((retry.base_offset, retry.duplicate), (2, true));
    assert_eq!(p.end_offset(), 3);
}

#[tokio::test]
async fn a_waiting_reader_wakes_when_data_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(open_partition(dir.path(), Arc::new(FileStorage)));
    assert!(
        !p.wait_for(0, Duration::from_millis(20)).await,
        "times out on an empty partition"
    );
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.wait_for(0, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    p.append(Bytes::from(batch("wake", 1, 10, 1)), Acks::All)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap()
    );
}

#[tokio::test]
async fn close_finishes_queued_appends_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(open_partition(dir.path(), Arc::new(FileStorage)));
    let pending: Vec<_> = (0..50)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                p.append(Bytes::from(batch(&format!("c{i}"), 1, 10, 1)), Acks::All)
                    .await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    let closed = p.close().await;
    assert!(closed.is_ok());
    let mut acked = 0;
    for r in join_all(pending).await {
        match r.unwrap() {
            Ok(_) => acked += 1,
            Err(Error::ShuttingDown) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(matches!(
        p.append(Bytes::from(batch("late", 1, 1, 1)), Acks::All)
            .await,
        Err(Error::ShuttingDown)
    ));
    drop(p);
    let (reopened, report) = Partition::open(
        dir.path(),
        "t",
        0,
        LogConfig::default(),
        Arc::new(FileStorage),
    )
    .unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(
        reopened.end_offset(),
        acked,
        "every acknowledged append is in the log, nothing else"
    );
}
