//! Helpers shared by the storage tests: batches of known content and a way to
//! open a log on any storage backend.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_broker::log::storage::{FileStorage, Storage};
use strata_broker::log::{Log, LogConfig, OpenReport, Replay};
use strata_proto::batch::BatchHeader;
use strata_proto::batch::{BatchBuilder, Batches, ProducerStamp, Record, Records};

/// A verified, unstamped batch of `count` records whose values are
/// `"{tag}-{i}"` padded to `value_bytes`, all stamped `timestamp`.
pub fn batch(tag: &str, count: u32, value_bytes: usize, timestamp: i64) -> Vec<u8> {
    batch_from(ProducerStamp::default(), tag, count, value_bytes, timestamp)
}

pub fn batch_from(
    producer: ProducerStamp,
    tag: &str,
    count: u32,
    value_bytes: usize,
    timestamp: i64,
) -> Vec<u8> {
    let mut b = BatchBuilder::new(producer);
    for i in 0..count {
        let mut v = format!("{tag}-{i}").into_bytes();
        if v.len() < value_bytes {
            v.resize(value_bytes, b'.');
        }
        b.push(&Record::new(timestamp, v)).unwrap();
    }
    b.finish().to_vec()
}

pub fn open(dir: &Path, config: LogConfig) -> (Log, OpenReport) {
    open_on(dir, config, Arc::new(FileStorage))
}

pub fn open_on(dir: &Path, config: LogConfig, storage: Arc<dyn Storage>) -> (Log, OpenReport) {
    Log::open(dir, config, storage, &mut ()).expect("open log")
}

/// A config with tiny segments and a dense index so tests exercise rolls.
pub fn small_segments(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Every record of the log from `from` up to `upper`, as (offset, value).
pub fn read_all(log: &Log, from: u64, upper: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < upper {
        let chunk = log.read(offset, 64 * 1024, upper).expect("read");
        if chunk.bytes.is_empty() {
            break;
        }
        for item in Batches::new(chunk.bytes) {
            let (_, batch) = item.expect("stored batch verifies");
            for rec in Records::new(batch).unwrap() {
                let (o, r) = rec.unwrap();
                if o >= offset {
                    out.push((o, r.value.unwrap()));
                }
            }
        }
        offset = chunk.next_offset;
    }
    out
}

/// Appends `batch` and returns its base offset.
pub fn append(log: &Log, batch: Vec<u8>) -> u64 {
    log.append(&batch).expect("append").base_offset
}

/// Records what a log replays at open.
#[derive(Default)]
pub struct Recorded {
    pub state: Vec<u8>,
    pub replayed: Vec<u64>,
}

impl Replay for Recorded {
    fn restore(&mut self, state: &[u8]) {
        self.state = state.to_vec();
    }
    fn replay(&mut self, header: &BatchHeader, _batch: &Bytes) {
        self.replayed.push(header.base_offset);
    }
}
