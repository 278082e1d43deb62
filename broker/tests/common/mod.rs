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

/// Drops the clean pages of every segment file (`*.log`) in `dir` from the
/// page cache.
pub fn evict_segments(dir: &Path) {
    use std::os::fd::AsRawFd;
    for path in segment_files(dir) {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid descriptor; the advice only drops clean pages.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "fadvise {}", path.display());
    }
}

/// Brings the first `bytes` of every segment file in `dir` into the page
/// cache, and nothing after them (no read-ahead).
pub fn load_segment_prefixes(dir: &Path, bytes: usize) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    for path in segment_files(dir) {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid descriptor; the advice only turns off read-ahead
        // for this descriptor.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        assert_eq!(rc, 0, "fadvise {}", path.display());
        file.read_exact_at(&mut vec![0u8; bytes], 0).unwrap();
    }
}

/// Reads every segment file in `dir` whole, so no read of their pages is
/// still in flight (a read the kernel started ahead would otherwise land
/// after the next eviction).
pub fn settle_segments(dir: &Path) {
    for path in segment_files(dir) {
        std::fs::read(&path).unwrap();
    }
}

/// The segment files (`*.log`) in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no segment files in {}", dir.display());
    files
}

/// Whether files in `dir` support reads that refuse to wait for the disk
/// (`preadv2` with `RWF_NOWAIT`; tmpfs does not), without which nothing
/// can be read limited to memory.
pub fn nowait_reads_supported(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.join("nowait-probe");
    std::fs::write(&path, [1u8; 16]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 16];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, valid for the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    std::fs::remove_file(&path).unwrap();
    n == 16
}
