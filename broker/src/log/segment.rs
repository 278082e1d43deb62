//! One segment: `<base>.log` with its `<base>.index` and `<base>.timeindex`.
//!
//! A sealed segment is opened lazily, on its first read: the log file, and the
//! two indexes mapped read-only. An index that is missing or inconsistent with
//! its log is rebuilt from the log then, so opening a log never reads sealed data.
//!
//! The active segment is the only one written; its size is published with
//! release ordering after each write, so readers (which never read past it)
//! see only whole batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use strata_proto::batch::{BatchHeader, Records};

use super::cursor::{BatchCursor, CURSOR_CHUNK_BYTES, SEEK_CHUNK_BYTES, Stop};
use super::error::{LogError, Result};
use super::index::{OffsetEntry, OffsetIndex};
use super::read_mode::{ReadMode, VIEW_MIN_BYTES};
use super::storage::{OpenMode, Storage, StorageFile};
use super::time_index::TimeIndex;

/// Where a segment's three files live.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: u64) -> Self {
        SegmentPaths {
            log: dir.join(format!("{base_offset:020}.log")),
            index: dir.join(format!("{base_offset:020}.index")),
            time_index: dir.join(format!("{base_offset:020}.timeindex")),
        }
    }
}

/// Parses a segment file name (`<20 digits>.<ext>`) into base offset and extension.
pub(crate) fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// The open files of a segment.
#[derive(Debug)]
pub(crate) struct Parts {
    pub log: Arc<dyn StorageFile>,
    /// Bytes of whole batches readers may see.
    pub size: AtomicU64,
    /// Largest timestamp in the segment; `i64::MIN` while empty.
    pub max_timestamp: AtomicI64,
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
}

impl Parts {
    /// Records a batch written at `pos` (in log order) in the indexes.
    pub fn index_batch(&self, base_offset: u64, pos: u64, header: &BatchHeader, interval: u64) {
        let max = self
            .max_timestamp
            .fetch_max(header.max_timestamp, Ordering::AcqRel)
            .max(header.max_timestamp);
        let last = self.index.last().map_or(0, |e| u64::from(e.position));
        if pos > 0 && pos - last >= interval {
            let relative_offset = relative(base_offset, header.base_offset);
            let pushed = self.index.push(OffsetEntry {
                relative_offset,
                position: pos as u32,
            });
            debug_assert!(pushed, "index full: the log must roll before it fills");
            self.time_index.maybe_push(max, relative_offset);
        }
    }

    /// Seals the segment: its last batch starts at `last_base`.
    pub fn seal(&self, base_offset: u64, last_base: Option<u64>, path: &Path) -> Result<()> {
        self.log.sync().map_err(LogError::io("fsync", path))?;
        if let Some(last) = last_base {
            // The final entry carries the segment's largest timestamp (time-based
            // retention and lookups read it without touching the log).
            let max = self.max_timestamp.load(Ordering::Acquire);
            self.time_index.maybe_push(max, relative(base_offset, last));
        }
        self.index.seal()?;
        self.time_index.seal()
    }
}

fn relative(base_offset: u64, offset: u64) -> u32 {
    u32::try_from(offset - base_offset).expect("segments roll before relative offsets overflow")
}

/// A chunk of whole batches read from a segment.
#[derive(Debug, Clone)]
pub struct ReadChunk {
    pub bytes: Bytes,
    /// Offset after the last batch in `bytes` (the first offset to read next).
    pub next_offset: u64,
}

/// Where a cut before the batch at some offset falls in a segment, and what of
/// the segment stays valid in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Bytes kept: the position of the first batch at or after the offset.
    pub position: u64,
    /// Largest timestamp of the kept batches; `i64::MIN` if none.
    pub max_timestamp: i64,
    /// Offset-index entries that point into the kept bytes.
    pub index_entries: usize,
    /// Time-index entries that describe only kept batches.
    pub time_index_entries: usize,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    /// The partition directory (shared by all its segments: no per-segment
    /// path allocations, so opening a log of many segments stays cheap).
    dir: Arc<Path>,
    storage: Arc<dyn Storage>,
    index_interval_bytes: u64,
    index_capacity: usize,
    parts: Mutex<Option<Arc<Parts>>>,
}

impl Segment {
    /// Where the segment's three files are.
    pub fn paths(&self) -> SegmentPaths {
        SegmentPaths::new(&self.dir, self.base_offset)
    }

    /// The segment's `.log` file.
    pub fn log_path(&self) -> PathBuf {
        self.paths().log
    }

    /// A sealed segment whose files are opened on first use.
    pub fn lazy(
        storage: Arc<dyn Storage>,
        dir: &Arc<Path>,
        base_offset: u64,
        index_interval_bytes: u64,
        index_capacity: usize,
    ) -> Self {
        Segment {
            base_offset,
            dir: dir.clone(),
            storage,
            index_interval_bytes,
            index_capacity,
            parts: Mutex::new(None),
        }
    }

    /// Opens the segment for writing, creating its files if needed. The log
    /// file keeps its content; the indexes keep their first `keep_index` and
    /// `keep_time_index` entries (the caller re-indexes anything after them).
    pub fn open_writable(
        storage: Arc<dyn Storage>,
        dir: &Arc<Path>,
        base_offset: u64,
        index_interval_bytes: u64,
        index_capacity: usize,
        keep_index: usize,
        keep_time_index: usize,
    ) -> Result<(Self, Arc<Parts>)> {
        let segment = Self::lazy(
            storage,
            dir,
            base_offset,
            index_interval_bytes,
            index_capacity,
        );
        let p = &segment.paths();
        let log = segment
            .storage
            .open(&p.log, OpenMode::Create)
            .map_err(LogError::io("open", &p.log))?;
        let index = OffsetIndex::open_writable(
            segment.storage.as_ref(),
            &p.index,
            index_capacity,
            keep_index,
        )?;
        let time_index = TimeIndex::open_writable(
            segment.storage.as_ref(),
            &p.time_index,
            index_capacity,
            keep_time_index,
        )?;
        let parts = Arc::new(Parts {
            log,
            size: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            index,
            time_index,
        });
        *segment.parts.lock() = Some(parts.clone());
        Ok((segment, parts))
    }

    /// Whether the segment's files are open.
    pub fn is_loaded(&self) -> bool {
        self.parts.lock().is_some()
    }

    /// Closes the segment's files (readers holding them finish first); the
    /// next use opens them again.
    pub fn unload(&self) {
        *self.parts.lock() = None;
    }

    /// The segment's open files, opening a sealed segment on first use.
    pub fn parts(&self) -> Result<Arc<Parts>> {
        let mut slot = self.parts.lock();
        if let Some(parts) = slot.as_ref() {
            return Ok(parts.clone());
        }
        let parts = Arc::new(self.load_sealed()?);
        *slot = Some(parts.clone());
        Ok(parts)
    }

    fn load_sealed(&self) -> Result<Parts> {
        let p = &self.paths();
        let log = self
            .storage
            .open(&p.log, OpenMode::ReadOnly)
            .map_err(LogError::io("open", &p.log))?;
        let size = log.len().map_err(LogError::io("stat", &p.log))?;
        let storage = self.storage.as_ref();
        let indexes = OffsetIndex::open_sealed(storage, &p.index)
            .and_then(|i| Ok((i, TimeIndex::open_sealed(storage, &p.time_index)?)));
        let (index, time_index) = match indexes {
            Ok((i, t)) if i.is_consistent(size) && t.is_consistent(u64::from(u32::MAX)) => (i, t),
            Ok(_) => {
                tracing::warn!(segment = %p.log.display(), "index inconsistent with its log; rebuilding");
                return self.rebuild_indexes(log, size);
            }
            Err(e) => {
                tracing::warn!(segment = %p.log.display(), error = %e, "index unusable; rebuilding");
                return self.rebuild_indexes(log, size);
            }
        };
        let max_timestamp = time_index.last().map_or(i64::MIN, |e| e.timestamp);
        Ok(Parts {
            log,
            size: AtomicU64::new(size),
            max_timestamp: AtomicI64::new(max_timestamp),
            index,
            time_index,
        })
    }

    /// Recreates both indexes of a sealed segment from its log. A damaged batch
    /// ends the rebuild; reads that reach it report the corruption.
    fn rebuild_indexes(&self, log: Arc<dyn StorageFile>, size: u64) -> Result<Parts> {
        let p = &self.paths();
        for path in [&p.index, &p.time_index] {
            if self
                .storage
                .exists(path)
                .map_err(LogError::io("stat", path))?
            {
                self.storage
                    .remove(path)
                    .map_err(LogError::io("remove", path))?;
            }
        }
        let storage = self.storage.as_ref();
        let parts = Parts {
            size: AtomicU64::new(size),
            max_timestamp: AtomicI64::new(i64::MIN),
            index: OffsetIndex::open_writable(storage, &p.index, self.index_capacity, 0)?,
            time_index: TimeIndex::open_writable(storage, &p.time_index, self.index_capacity, 0)?,
            log,
        };
        let mut cursor = BatchCursor::new(parts.log.as_ref(), 0, size);
        let mut last_base = None;
        loop {
            match cursor.header() {
                Ok(Some(h)) => {
                    if let Err(stop) = cursor.batch(&h) {
                        self.warn_stop(&stop);
                        break;
                    }
                    parts.index_batch(
                        self.base_offset,
                        cursor.position(),
                        &h,
                        self.index_interval_bytes,
                    );
                    last_base = Some(h.base_offset);
                    cursor.advance(&h);
                }
                Ok(None) => break,
                Err(stop) => {
                    self.warn_stop(&stop);
                    break;
                }
            }
        }
        // The log file is read-only here; sealing only syncs and trims indexes.
        if let Some(last) = last_base {
            let max = parts.max_timestamp.load(Ordering::Acquire);
            parts
                .time_index
                .maybe_push(max, relative(self.base_offset, last));
        }
        parts.index.seal()?;
        parts.time_index.seal()?;
        Ok(parts)
    }

    fn warn_stop(&self, stop: &Stop) {
        tracing::error!(segment = %self.paths().log.display(), ?stop, "damaged batch in sealed segment");
    }

    /// Bytes in the segment's log file (stats the file if not open).
    pub fn size_bytes(&self) -> Result<u64> {
        if let Some(parts) = self.parts.lock().as_ref() {
            return Ok(parts.size.load(Ordering::Acquire));
        }
        self.storage
            .file_len(&self.paths().log)
            .map_err(LogError::io("stat", &self.paths().log))
    }

    /// Largest record timestamp in the segment (opens it if needed).
    pub fn max_timestamp(&self) -> Result<i64> {
        Ok(self.parts()?.max_timestamp.load(Ordering::Acquire))
    }

    fn corrupt(&self, stop: Stop) -> LogError {
        match stop {
            Stop::Io(source) => LogError::Io {
                op: "read",
                path: self.paths().log.clone(),
                source,
            },
            Stop::Invalid { position, reason } => LogError::Corrupt {
                segment: self.paths().log.clone(),
                position,
                reason,
            },
        }
    }

    /// Reads whole batches starting with the one holding `offset`, at most
    /// `max_bytes` (but always one whole batch), none reaching `upper` or beyond.
    /// `None` if the segment holds nothing at or after `offset`.
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        upper: u64,
        mode: ReadMode,
    ) -> Result<Option<ReadChunk>> {
        debug_assert!(offset >= self.base_offset);
        let parts = self.parts()?;
        let end = parts.size.load(Ordering::Acquire);
        let relative_offset = u32::try_from(offset - self.base_offset).unwrap_or(u32::MAX);
        let start = u64::from(parts.index.scan_start(relative_offset));
        // A read served from a map needs the cursor only to find its first
        // batch; a copied one takes its bytes from the cursor's chunk too.
        let mapped = mode == ReadMode::View && max_bytes >= VIEW_MIN_BYTES;
        let chunk_bytes = if mapped {
            SEEK_CHUNK_BYTES
        } else {
            CURSOR_CHUNK_BYTES
        };
        let mut cursor = BatchCursor::with_chunk_bytes(parts.log.as_ref(), start, end, chunk_bytes);
        let first = loop {
            let Some(h) = cursor.header().map_err(|s| self.corrupt(s))? else {
                return Ok(None);
            };
            if h.next_offset() > offset {
                if h.base_offset > offset {
                    return Err(self.corrupt(Stop::Invalid {
                        position: cursor.position(),
                        reason: format!("offsets {offset}..{} are missing", h.base_offset),
                    }));
                }
                break h;
            }
            cursor.advance(&h);
        };
        let pos = cursor.position();
        if first.next_offset() > upper {
            return Ok(Some(ReadChunk {
                bytes: Bytes::new(),
                next_offset: offset,
            }));
        }
        let want = (max_bytes as u64)
            .max(first.batch_len() as u64)
            .min(end - pos) as usize;
        let buf = match mode {
            ReadMode::View if want >= VIEW_MIN_BYTES => {
                parts.log.read_view(want, pos).map_err(Stop::Io)
            }
            _ => cursor.bytes(pos, want),
        }
        .map_err(|s| self.corrupt(s))?;
        let mut taken = 0usize;
        let mut next_offset = first.base_offset;
        while taken < buf.len() {
            let Ok(h) = BatchHeader::parse(&buf[taken..]) else {
                if taken == 0 {
                    return Err(self.corrupt(Stop::Invalid {
                        position: pos,
                        reason: "bad header".into(),
                    }));
                }
                break; // The next read meets it again and reports it.
            };
            let len = h.batch_len();
            if taken + len > buf.len()
                || (taken > 0 && taken + len > max_bytes)
                || h.next_offset() > upper
            {
                break;
            }
            let position = pos + taken as u64;
            if let Err(e) = strata_proto::batch::verify(&buf[taken..taken + len]) {
                if taken == 0 {
                    return Err(self.corrupt(Stop::Invalid {
                        position,
                        reason: e.to_string(),
                    }));
                }
                break;
            }
            if h.base_offset != next_offset && taken > 0 {
                break;
            }
            next_offset = h.next_offset();
            taken += len;
        }
        Ok(Some(ReadChunk {
            bytes: buf.slice(..taken),
            next_offset,
        }))
    }

    /// The offset of the first record in this segment with a timestamp at or
    /// after `timestamp`, if any, among batches below `upper`.
    pub fn find_timestamp(&self, timestamp: i64, upper: u64) -> Result<Option<u64>> {
        let parts = self.parts()?;
        if parts.max_timestamp.load(Ordering::Acquire) < timestamp {
            return Ok(None);
        }
        let end = parts.size.load(Ordering::Acquire);
        let start = parts
            .time_index
            .newest_before(timestamp)
            .map_or(0, |rel| u64::from(parts.index.scan_start(rel)));
        let mut cursor = BatchCursor::new(parts.log.as_ref(), start, end);
        while let Some(h) = cursor.header().map_err(|s| self.corrupt(s))? {
            if h.next_offset() > upper {
                return Ok(None);
            }
            if h.max_timestamp >= timestamp && !h.is_control() {
                let batch = cursor.batch(&h).map_err(|s| self.corrupt(s))?;
                let records = Records::new(batch).map_err(LogError::InvalidBatch)?;
                for item in records {
                    let (offset, record) = item.map_err(LogError::InvalidBatch)?;
                    if record.timestamp >= timestamp {
                        return Ok(Some(offset));
                    }
                }
            }
            cursor.advance(&h);
        }
        Ok(None)
    }

    /// Where a cut that removes every batch with a base offset at or after
    /// `offset` falls in this segment. `offset` must be the base offset of one
    /// of its batches (or the end of its data), else `NotBatchBoundary`.
    ///
    /// Reads every header in front of the cut (at most one segment of data):
    /// the kept batches' largest timestamp must be exact, and the sparse time
    /// index only bounds it.
    pub fn find_cut(&self, offset: u64) -> Result<Cut> {
        debug_assert!(offset >= self.base_offset);
        let parts = self.parts()?;
        let end = parts.size.load(Ordering::Acquire);
        let mut cursor = BatchCursor::new(parts.log.as_ref(), 0, end);
        let mut max_timestamp = i64::MIN;
        let mut expected = self.base_offset;
        // The first batch whose base is `offset` (empty control batches may
        // share their base with the batch after them: the cut goes before both).
        let position = loop {
            if expected == offset {
                break cursor.position();
            }
            let Some(h) = cursor.header().map_err(|s| self.corrupt(s))? else {
                return Err(self.corrupt(Stop::Invalid {
                    position: cursor.position(),
                    reason: format!("offsets {expected}..{offset} are missing"),
                }));
            };
            if h.base_offset != expected {
                return Err(self.corrupt(Stop::Invalid {
                    position: cursor.position(),
                    reason: format!(
                        "batch has base offset {}, expected {expected}",
                        h.base_offset
                    ),
                }));
            }
            if h.next_offset() > offset {
                return Err(LogError::NotBatchBoundary {
                    offset,
                    batch_base: h.base_offset,
                    batch_next: h.next_offset(),
                });
            }
            max_timestamp = max_timestamp.max(h.max_timestamp);
            expected = h.next_offset();
            cursor.advance(&h);
        };
        let relative_cut = offset - self.base_offset;
        let index_entries = parts
            .index
            .entries()
            .iter()
            .take_while(|e| u64::from(e.position) < position)
            .count();
        // An entry (T, o) speaks for the batches up to the one at `o`: it stays
        // if that batch does, and if T is not a removed batch's timestamp.
        let time_index_entries = parts
            .time_index
            .entries()
            .iter()
            .take_while(|e| {
                u64::from(e.relative_offset) < relative_cut && e.timestamp <= max_timestamp
            })
            .count();
        Ok(Cut {
            position,
            max_timestamp,
            index_entries,
            time_index_entries,
        })
    }

    /// Deletes the segment's files. Open handles keep working until dropped.
    pub fn remove_files(&self) -> Result<()> {
        let p = self.paths();
        for path in [&p.log, &p.index, &p.time_index] {
            match self.storage.remove(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LogError::Io {
                        op: "remove",
                        path: path.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}
