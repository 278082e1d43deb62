//! Random sequences of appends, reads, flushes, retention, clean reopens and
//! crashes, checked against a plain in-memory model of the log.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use strata_broker::log::storage::FaultyStorage;
use strata_broker::log::{Log, LogConfig};

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: u32,
        value_bytes: usize,
    },
    Read {
        at: prop::sample::Index,
        max_bytes: usize,
    },
    Flush,
    Checkpoint,
    Retain {
        keep_bytes: u64,
    },
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u32..6, 1usize..300).prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        4 => (any::<prop::sample::Index>(), 1usize..4096).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        2 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => (2_000u64..20_000).prop_map(|keep_bytes| Op::Retain { keep_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

struct Model {
    /// Every record ever appended that is still expected, by offset.
    records: Vec<Bytes>,
    start: u64,
    flushed: u64,
}

fn config(retention_bytes: Option<u64>) -> LogConfig {
    LogConfig {
        retention_bytes,
        checkpoint_interval_bytes: 4096,
        ..small_segments(2048)
    }
}

fn check_contents(log: &Log, model: &Model) {
    assert_eq!(log.end_offset(), model.records.len() as u64);
    let got = read_all(log, log.start_offset(), log.end_offset());
    let want: Vec<(u64, Bytes)> = model.records[log.start_offset() as usize..]
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, v)| (log.start_offset() + i as u64, v))
        .collect();
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_behaves_like_a_vector(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(FaultyStorage::new());
        let mut log = open_on(dir.path(), config(None), storage.clone()).0;
        let mut model = Model { records: Vec::new(), start: 0, flushed: 0 };
        let mut tag = 0u32;

        for op in ops {
            match op {
                Op::Append { records, value_bytes } => {
                    tag += 1;
                    let b = batch(&format!("v{tag}"), records, value_bytes, i64::from(tag));
                    let base = append(&log, b.clone());
                    prop_assert_eq!(base, model.records.len() as u64);
                    for i in 0..records {
                        let mut v = format!("v{tag}-{i}").into_bytes();
                        if v.len() < value_bytes { v.resize(value_bytes, b'.'); }
                        model.records.push(Bytes::from(v));
                    }
                }
                Op::Read { at, max_bytes } => {
                    let end = log.end_offset();
                    let start = log.start_offset();
                    if end > start {
                        let offset = start + at.index((end - start) as usize) as u64;
                        let chunk = log.read(offset, max_bytes, end).unwrap();
                        prop_assert!(!chunk.bytes.is_empty());
                        prop_assert!(chunk.next_offset > offset);
                        let mut expect = None;
                        for item in strata_proto::batch::Batches::new(chunk.bytes) {
                            let (h, batch) = item.unwrap();
                            if let Some(e) = expect { prop_assert_eq!(h.base_offset, e); }
                            prop_assert!(h.base_offset <= offset || expect.is_some());
                            for rec in strata_proto::batch::Records::new(batch).unwrap() {
                                let (o, r) = rec.unwrap();
                                prop_assert_eq!(&r.value.unwrap(), &model.records[o as usize]);
                            }
                            expect = Some(h.next_offset());
                        }
                        prop_assert_eq!(expect, Some(chunk.next_offset));
                    }
                }
                Op::Flush => {
                    model.flushed = log.flush().unwrap();
                }
                Op::Checkpoint => {
                    log.checkpoint(&[]).unwrap();
                    model.flushed = log.end_offset();
                }
                Op::Retain { keep_bytes } => {
                    drop(log);
                    log = open_on(dir.path(), config(Some(keep_bytes)), storage.clone()).0;
                    let before = log.start_offset();
                    log.checkpoint(&[]).unwrap();
                    log.enforce_retention(0).unwrap();
                    prop_assert!(log.start_offset() >= before);
                    prop_assert!(log.start_offset() >= model.start);
                    model.start = log.start_offset();
                    model.flushed = model.flushed.max(log.flushed_offset());
                }
                Op::Reopen => {
                    log.close(&[]).unwrap();
                    drop(log);
                    let (reopened, report) = open_on(dir.path(), config(None), storage.clone());
                    prop_assert!(report.clean_shutdown);
                    log = reopened;
                    model.flushed = log.end_offset();
                }
                Op::Crash => {
                    let flushed = log.flushed_offset().max(model.flushed);
                    drop(log);
                    storage.crash().unwrap();
                    log = open_on(dir.path(), config(None), storage.clone()).0;
                    // Everything flushed survives; anything after may or may not.
                    prop_assert!(log.end_offset() >= flushed);
                    model.records.truncate(log.end_offset() as usize);
                    model.flushed = log.end_offset();
                }
            }
            prop_assert_eq!(log.start_offset(), model.start);
            check_contents(&log, &model);
        }
    }
}
