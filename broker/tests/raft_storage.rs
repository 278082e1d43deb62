//! The Raft log store and state machine against openraft's own storage test
//! suite, plus what the suite cannot build: normal entries (record batches)
//! stored once in the segment log, read back by index, truncated, and found
//! again after a reopen without scanning.

use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use strata_broker::log::storage::{Faults, FaultyStorage, FileStorage, Storage};
use strata_broker::log::{Log, LogConfig};
use strata_broker::raft::{
    Applied, Entry, LogId, LogStore, Machine, Payload, StateMachine, StorageError, TypeConfig,
};
use strata_proto::batch::{BatchBuilder, BatchHeader, Record};
use tempfile::TempDir;

/// Counts applied records; enough to see that apply ran, in order.
#[derive(Default)]
struct Counter {
    records: u64,
}

impl Machine for Counter {
    fn apply(&mut self, _log_id: &LogId, header: &BatchHeader, _batch: &Bytes) -> Applied {
        self.records += u64::from(header.record_count);
        Applied {
            base_offset: header.base_offset,
            duplicate: false,
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        self.records.to_le_bytes().to_vec()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = snapshot.try_into().map_err(|_| "bad counter snapshot")?;
        self.records = u64::from_le_bytes(bytes);
        Ok(())
    }
}

fn open(dir: &std::path::Path) -> (LogStore, StateMachine<Counter>) {
    open_on(dir, Arc::new(FileStorage))
}

fn open_on(dir: &std::path::Path, storage: Arc<dyn Storage>) -> (LogStore, StateMachine<Counter>) {
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        ..LogConfig::default()
    };
    let (log, _) = Log::open(&dir.join("log"), config, storage.clone(), &mut ()).unwrap();
    let store = LogStore::open(Arc::new(log), storage.clone(), dir).unwrap();
    let sm = StateMachine::open(storage, dir, Counter::default()).unwrap();
    (store, sm)
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine<Counter>, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine<Counter>), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (store, sm) = open(dir.path());
        Ok((dir, store, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn batch(records: usize, fill: u8) -> Bytes {
    let mut b = BatchBuilder::default();
    for i in 0..records {
        b.push(&Record::new(1_700_000_000_000 + i as i64, vec![fill; 300]))
            .unwrap();
    }
    b.finish()
}

fn data(term: u64, index: u64, records: usize) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Normal(Payload(batch(records, index as u8))),
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
        payload: EntryPayload::Blank,
    }
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    // Resolves only once the flusher reports the entries durable.
    store.blocking_append(entries).await.unwrap();
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

/// Offsets stay dense while Raft indexes interleave with blank entries, and
/// every data entry comes back byte for byte with its id stamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_entries_are_the_segment_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut sm) = open(dir.path());
    let mut entries = vec![blank(1, 1)];
    for i in 2..=40 {
        entries.push(data(1, i, 3));
    }
    entries.push(blank(2, 41));
    for i in 42..=80 {
        entries.push(data(2, i, 2));
    }
    append(&mut store, entries).await;

    let got = store.try_get_log_entries(1..=80).await.unwrap();
    assert_eq!(indexes(&got), (1..=80).collect::<Vec<_>>());
    let mut next_offset = 0;
    for e in &got {
        if let EntryPayload::Normal(Payload(b)) = &e.payload {
            let h = BatchHeader::parse(b).unwrap();
            assert_eq!(
                (h.raft_term, h.raft_index),
                (e.log_id.leader_id.term, e.log_id.index)
            );
            assert_eq!(
                h.base_offset, next_offset,
                "offsets are dense across blank entries"
            );
            next_offset = h.next_offset();
        }
    }
    assert_eq!(next_offset, 39 * 3 + 39 * 2);
    assert_eq!(store.log().end_offset(), next_offset);

    // Apply everything: the machine sees the stamped offsets.
    let applied = sm.apply(got).await.unwrap();
    assert_eq!(applied[1].base_offset, 0);
    assert_eq!(applied[2].base_offset, 3);
    assert_eq!(sm.with(|m| m.records), next_offset);

    // A middle range, from the tail cache and (after a reopen) by search.
    let mid = store.try_get_log_entries(30..45).await.unwrap();
    assert_eq!(indexes(&mid), (30..45).collect::<Vec<_>>());

    // Conflict truncation inside the data: entries from 60 go, offsets too.
    store
        .truncate(LogId::new(CommittedLeaderId::new(2, 0), 60))
        .await
        .unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.unwrap().index, 59);
    let end_after_truncate = store.log().end_offset();
    assert_eq!(end_after_truncate, 39 * 3 + 18 * 2, "entries 42..=59 kept");
    append(&mut store, vec![data(3, 60, 5)]).await;
    drop(store);
    drop(sm);

    // Reopen: nothing scanned, everything found by index.
    let (mut store, sm) = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(
        state.last_log_id.unwrap(),
        LogId::new(CommittedLeaderId::new(3, 0), 60)
    );
    let all = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&all), (1..=60).collect::<Vec<_>>());
    let mid = store.try_get_log_entries(17..23).await.unwrap();
    assert_eq!(indexes(&mid), (17..23).collect::<Vec<_>>());
    let last = &all[59];
    let EntryPayload::Normal(Payload(b)) = &last.payload else {
        panic!("entry 60 is data")
    };
    assert_eq!(
        BatchHeader::parse(b).unwrap().base_offset,
        end_after_truncate
    );
    // No snapshot was built, so the machine starts empty and Raft re-applies.
    assert_eq!(sm.with(|m| m.records), 0);

    // Replication reads are bounded in bytes but never empty.
    let limited = store.limited_get_log_entries(2, 61).await.unwrap();
    assert!(!limited.is_empty());
    assert_eq!(limited[0].log_id.index, 2);
}

/// A state machine snapshot is persisted and restored on open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_survives_reopen() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    let (mut store, mut sm) = open(dir.path());
    append(&mut store, vec![blank(1, 1), data(1, 2, 7), data(1, 3, 4)]).await;
    let entries = store.try_get_log_entries(1..4).await.unwrap();
    sm.apply(entries).await.unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 3);
    drop((store, sm));
    let (_store, mut sm) = open(dir.path());
    assert_eq!(sm.with(|m| m.records), 11);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 3);
}

/// A read racing a conflict truncation sees the log from before the cut or
/// from after it, never an error. openraft stops a group for good on any
/// storage error, and the race is real: a leader's replication task that has
/// not yet noticed its node lost leadership keeps reading while the node,
/// now a follower, truncates its uncommitted entries (seen in the cluster
/// overload test: "offset 5000 is out of range", then a dead replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_a_truncation_never_fail() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const FROM: u64 = 10;
    const LAST: u64 = 48;
    // ~60 KB entries: far past the bytes the tail keeps in memory, so reads
    // go to the segments, where a truncation can cut under them.
    const RECORDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _sm) = open(dir.path());
    let mut entries = vec![blank(1, 1)];
    entries.extend((2..=LAST).map(|i| data(1, i, RECORDS)));
    append(&mut store, entries).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (mut store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let got = store
                    .try_get_log_entries(FROM..=LAST)
                    .await
                    .expect("a read racing a truncation fails");
                // Before the cut, after it, or after the new entries: always
                // a contiguous run from FROM.
                let want: Vec<u64> = (FROM..FROM + got.len() as u64).collect();
                assert_eq!(indexes(&got), want);
                reads += 1;
            }
            reads
        })
    };
    for term in 2..40 {
        let from = LogId::new(CommittedLeaderId::new(term, 0), FROM);
        store.truncate(from).await.unwrap();
        append(
            &mut store,
            (FROM..=LAST).map(|i| data(term, i, RECORDS)).collect(),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0, "the reader ran");
}

/// Every index from the first entry to the last one the store reports can be
/// read back: what openraft checks when it starts a group.
async fn assert_contiguous(store: &mut LogStore) {
    let state = store.get_log_state().await.unwrap();
    let Some(last) = state.last_log_id else {
        return;
    };
    let first = state.last_purged_log_id.map_or(1, |p| p.index + 1);
    let got = store.try_get_log_entries(first..=last.index).await.unwrap();
    assert_eq!(
        indexes(&got),
        (first..=last.index).collect::<Vec<_>>(),
        "the Raft log has a hole: openraft would refuse to start the group"
    );
}

/// Drops `store` as a kill -9 would (no power loss: nothing written is
/// undone), clears the faults, opens the group again and checks that Raft
/// could start from what it finds.
async fn restart(store: LogStore, dir: &std::path::Path, storage: &FaultyStorage) -> LogStore {
    drop(store);
    storage.set(Faults::default());
    let (mut store, _sm) = open_on(dir, Arc::new(storage.clone()));
    assert_contiguous(&mut store).await;
    store
}

/// A full disk between a blank entry and the data entry after it, then a
/// process crash (the page cache keeps whatever reached it), must not leave
/// the data on disk without the blank before it. It did: blank and membership
/// entries were stored in the state file after the data entries of the same
/// append, the state file write hit ENOSPC, the data stayed, and after the
/// restart openraft refused to start the group ("try to get log at index N
/// but got None"), every retry, for good (hour-long nemesis run with disk
/// fills).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_between_control_and_data_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let (mut store, _sm) = open_on(dir.path(), Arc::new(storage.clone()));
    append(&mut store, (1..=5).map(|i| data(1, i, 3)).collect()).await;

    // Room for the next batch of records, not for the state file too.
    let next = data(2, 7, 3);
    let EntryPayload::Normal(Payload(bytes)) = &next.payload else {
        unreachable!()
    };
    storage.set(Faults {
        space_left_bytes: Some(bytes.len() as u64),
        ..Faults::default()
    });
    let failed = store.blocking_append(vec![blank(2, 6), next]).await;
    assert!(failed.is_err(), "the append cannot have fit on the disk");
    let mut store = restart(store, dir.path(), &storage).await;
    let last = store.get_log_state().await.unwrap().last_log_id.unwrap();
    assert!(
        last.index >= 5,
        "acknowledged entries survive the full disk: {last}"
    );
}

/// A crash in the middle of a conflict truncation leaves a log Raft can
/// start from: either the old entries or the cut, never a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_truncation_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let (mut store, _sm) = open_on(dir.path(), Arc::new(storage.clone()));
    let mut entries: Vec<Entry> = (1..=3).map(|i| data(1, i, 3)).collect();
    entries.push(blank(2, 4));
    entries.extend((5..=8).map(|i| data(2, i, 3)));
    entries.push(blank(3, 9));
    entries.push(data(3, 10, 3));
    append(&mut store, entries).await;

    // The segment file cannot be cut: the truncation stops between its
    // steps. It used to drop the control entries from 6 on first (blank 9),
    // keep the data past them, and leave a hole at 9.
    storage.set(Faults {
        fail_files_ending: Some(".log".into()),
        ..Faults::default()
    });
    let failed = store
        .truncate(LogId::new(CommittedLeaderId::new(3, 0), 6))
        .await;
    assert!(failed.is_err(), "the segment could not be cut");
    restart(store, dir.path(), &storage).await;
}
