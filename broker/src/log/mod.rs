//! The segmented, append-only log of one partition.
//!
//! Owns the segment files of one directory: assigns dense offsets, appends
//! batches to the active segment, rolls it by size and age, makes data durable
//! on `flush`, serves reads of whole batches through the sparse indexes, and
//! deletes old segments for retention. Knows nothing of gRPC, Raft or producers.
//!
//! Invariants:
//! - offsets are dense: each batch's base offset is the previous batch's next
//!   offset, across segments; the segment file name is its first base offset;
//! - readers see only whole batches (the active size is published after writes);
//! - after a failed fsync the log accepts no writes until reopened: what the
//!   disk holds is then unknown, and recovery must look again;
//! - opening never reads record data before the recovery checkpoint;
//! - no read spans a cut (`truncate_from`, `reset_to`): reads hold `cut_lock`
//!   shared, a cut holds it exclusively while it changes files.
//!
//! The API is blocking; async callers run it on blocking threads (see
//! `partition::group_commit`).

mod checkpoint;
mod config;
mod cursor;
mod error;
mod index;
mod index_file;
mod read_mode;
mod recovery;
mod retention;
mod segment;
pub mod storage;
mod time_index;
mod truncate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use strata_proto::batch::{BatchHeader, field};

use checkpoint::{CHECKPOINT_FILE, Checkpoint};
pub use config::*;
pub use error::{LogError, Result};
use read_mode::ReadMode;
use recovery::TailStart;
pub use segment::ReadChunk;
use segment::{Parts, Segment, parse_file_name};
use storage::Storage;

/// What [`Log::append`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub next_offset: u64,
}

/// State a layer above keeps in the recovery checkpoint and brings up to date
/// from the log's tail when the log is opened.
pub trait Replay {
    /// Called once, first, with the state stored in the checkpoint (empty if
    /// there was none).
    fn restore(&mut self, state: &[u8]);
    /// Called for each batch past the checkpoint, in log order, with the
    /// batch's bytes (CRC-checked).
    fn replay(&mut self, header: &BatchHeader, batch: &Bytes);
}

/// For logs opened without state to keep.
impl Replay for () {
    fn restore(&mut self, _state: &[u8]) {}
    fn replay(&mut self, _header: &BatchHeader, _batch: &Bytes) {}
}

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// The log was closed cleanly last time (marker and checkpoint agreed).
    pub clean_shutdown: bool,
    /// A valid recovery checkpoint was found.
    pub checkpoint_found: bool,
    /// The directory held no segments: a new log.
    pub created: bool,
    /// Segments in the log after opening.
    pub segments: usize,
    /// Bytes of tail read and checked.
    pub scanned_bytes: u64,
    /// Bytes cut off as torn or corrupt.
    pub truncated_bytes: u64,
    /// Sealed segments found damaged during recovery; kept, and reads report
    /// the damage (gRPC DATA_LOSS) rather than skip it.
    pub damaged_segments: u64,
    /// `replay` saw every batch from this offset on.
    pub replayed_from: u64,
    pub duration: Duration,
}

/// What [`Log::enforce_retention`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

struct Writer {
    segment: Arc<Segment>,
    parts: Arc<Parts>,
    size: u64,
    next_offset: u64,
    created_ms: i64,
    bytes_since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoint_forced: bool,
    closed: bool,
}

impl Writer {
    /// Everything written is covered by a checkpoint just written.
    fn checkpointed(&mut self) {
        self.bytes_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint_forced = false;
    }
}

pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    storage: Arc<dyn Storage>,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    end_offset: AtomicU64,
    flushed_offset: AtomicU64,
    /// Total bytes of the log files as last computed, `SIZE_UNKNOWN` until the
    /// first retention pass stats the sealed segments (opening never does).
    size_cache: AtomicU64,
    /// Base of the segment the latest checkpoint points into; retention never
    /// deletes it or anything after, so recovery always finds its start.
    checkpoint_segment: AtomicU64,
    /// Sealed segments opened by reads, least recently used first.
    open_sealed: Mutex<std::collections::VecDeque<u64>>,
    /// Base offset of the active segment (never closed by `using`).
    active_base: AtomicU64,
    /// Reads hold it shared for their whole duration, so none ever sees bytes
    /// a cut removes or rewrites. Retention and cuts hold it upgradable (one
    /// at a time: retention decides from the checkpoint's segment, which a
    /// cut moves back); a cut upgrades it while it changes files. Taken
    /// before `writer`, never after.
    cut_lock: RwLock<()>,
    poisoned: OnceLock<String>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("end_offset", &self.end_offset())
            .finish_non_exhaustive()
    }
}

const SIZE_UNKNOWN: u64 = u64::MAX;

/// Creates `dir` (and missing ancestors) and fsyncs each new entry's parent,
/// so a partition created just before a crash is still there after it.
fn create_durably(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if storage.exists(path).map_err(LogError::io("stat", path))? {
            break;
        }
        missing.push(path);
        at = path.parent().filter(|p| !p.as_os_str().is_empty());
    }
    if missing.is_empty() {
        return Ok(());
    }
    storage
        .create_dir_all(dir)
        .map_err(LogError::io("create", dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage
                .sync_dir(parent)
                .map_err(LogError::io("fsync dir", parent))?;
        }
    }
    Ok(())
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering its tail if the last
    /// shutdown was not clean. `replay` gets the checkpoint's state blob, then
    /// the header of every batch past the checkpoint, in order. (If retention
    /// removed the checkpoint's segment, the blob is older than the tail; the
    /// batches between are gone with the segment.)
    pub fn open(
        dir: &Path,
        config: LogConfig,
        storage: Arc<dyn Storage>,
        replay: &mut dyn Replay,
    ) -> Result<(Log, OpenReport)> {
        let started = Instant::now();
        config.validate().map_err(|reason| LogError::Io {
            op: "configure",
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
        })?;
        create_durably(storage.as_ref(), dir)?;
        let bases = Self::list_segments(storage.as_ref(), dir)?;
        let marker = storage
            .exists(&dir.join(checkpoint::CLEAN_SHUTDOWN_FILE))
            .map_err(LogError::io("stat", dir))?;
        let ckpt = Checkpoint::read(storage.as_ref(), dir, |why| {
            tracing::warn!(dir = %dir.display(), why, "recovery checkpoint is damaged; recovering from further back");
        })?;
        let mut report = OpenReport {
            checkpoint_found: ckpt.is_some(),
            created: bases.is_empty(),
            ..Default::default()
        };

        let start = match (&ckpt, bases.first()) {
            (_, None) => TailStart::segment_start(ckpt.as_ref().map_or(0, |c| c.next_offset)),
            (Some(c), Some(_)) if bases.contains(&c.segment_base) => TailStart {
                segment_base: c.segment_base,
                position: c.position,
                next_offset: c.next_offset,
                max_timestamp: c.max_timestamp,
                index_entries: c.index_entries as usize,
                time_index_entries: c.time_index_entries as usize,
            },
            (Some(c), Some(&first)) => {
                // Retention removed the checkpoint's segment: start at the next one.
                let base = bases
                    .iter()
                    .copied()
                    .find(|&b| b > c.segment_base)
                    .unwrap_or(first);
                TailStart::segment_start(base)
            }
            (None, Some(&first)) => {
                if bases.len() > 1 {
                    tracing::warn!(dir = %dir.display(), segments = bases.len(),
                        "no recovery checkpoint; checking every segment");
                }
                TailStart::segment_start(first)
            }
        };
        report.replayed_from = start.next_offset;
        replay.restore(ckpt.as_ref().map_or(&[][..], |c| &c.state));

        let mut map = BTreeMap::new();
        let shared_dir: Arc<Path> = Arc::from(dir);
        let capacity = config.max_index_entries() as usize;
        for &base in bases.iter().filter(|&&b| b < start.segment_base) {
            let seg = Segment::lazy(
                storage.clone(),
                &shared_dir,
                base,
                config.index_interval_bytes,
                capacity,
            );
            map.insert(base, Arc::new(seg));
        }
        let tail: Vec<u64> = if bases.is_empty() {
            vec![start.segment_base]
        } else {
            bases
                .iter()
                .copied()
                .filter(|&b| b >= start.segment_base)
                .collect()
        };
        let (sealed, active, tail_report) =
            recovery::recover_tail(&storage, dir, &config, &tail, start, &mut |h, b| {
                replay.replay(h, b)
            })?;
        for seg in sealed {
            // Recovery opened it; like every sealed segment it is reopened on use.
            seg.unload();
            map.insert(seg.base_offset, Arc::new(seg));
        }
        report.scanned_bytes = tail_report.scanned_bytes;
        report.truncated_bytes = tail_report.truncated_bytes;
        report.damaged_segments = tail_report.damaged_segments;

        let size = active.parts.size.load(Ordering::Acquire);
        let created_ms = match &ckpt {
            Some(c) if c.segment_base == active.segment.base_offset => c.segment_created_ms,
            _ => now_ms(),
        };
        report.clean_shutdown = marker
            && ckpt.as_ref().is_some_and(|c| {
                c.segment_base == active.segment.base_offset && c.position == size
            })
            && report.truncated_bytes == 0
            && report.scanned_bytes == 0;
        if marker && !report.clean_shutdown {
            tracing::warn!(dir = %dir.display(), "clean-shutdown marker present but the log had a tail; recovered it");
        }
        let next_offset = active.next_offset;
        let active_base = active.segment.base_offset;
        let segment = Arc::new(active.segment);
        map.insert(segment.base_offset, segment.clone());
        report.segments = map.len();
        let checkpoint_segment = match &ckpt {
            Some(c) if map.contains_key(&c.segment_base) => c.segment_base,
            _ => *map
                .keys()
                .next()
                .expect("a log always has its active segment"),
        };

        let log = Log {
            dir: dir.to_path_buf(),
            storage: storage.clone(),
            segments: RwLock::new(map),
            writer: Mutex::new(Writer {
                segment,
                parts: active.parts,
                size,
                next_offset,
                created_ms,
                bytes_since_checkpoint: 0,
                last_checkpoint: Instant::now(),
                // A recovered tail is worth a checkpoint so it is never rescanned.
                checkpoint_forced: report.scanned_bytes > 0
                    || report.truncated_bytes > 0
                    || ckpt.is_none(),
                closed: false,
            }),
            end_offset: AtomicU64::new(next_offset),
            flushed_offset: AtomicU64::new(next_offset),
            size_cache: AtomicU64::new(SIZE_UNKNOWN),
            checkpoint_segment: AtomicU64::new(checkpoint_segment),
            open_sealed: Mutex::new(std::collections::VecDeque::new()),
            active_base: AtomicU64::new(active_base),
            cut_lock: RwLock::new(()),
            poisoned: OnceLock::new(),
            config,
        };
        checkpoint::take_clean_marker(storage.as_ref(), dir)?;
        report.duration = started.elapsed();
        tracing::info!(dir = %dir.display(), segments = report.segments, clean = report.clean_shutdown,
            scanned = report.scanned_bytes, truncated = report.truncated_bytes,
            ms = report.duration.as_secs_f64() * 1e3, "log opened");
        Ok((log, report))
    }

    /// Base offsets of the segments in `dir`, ascending. Removes leftovers: index
    /// files without a log, and temp files from an interrupted checkpoint.
    fn list_segments(storage: &dyn Storage, dir: &Path) -> Result<Vec<u64>> {
        let names = storage.list_dir(dir).map_err(LogError::io("list", dir))?;
        let mut logs = std::collections::BTreeSet::new();
        let mut others = Vec::new();
        for name in &names {
            match parse_file_name(name) {
                Some((base, "log")) => {
                    logs.insert(base);
                }
                Some((base, "index" | "timeindex")) => others.push((base, name)),
                _ if name.ends_with(".tmp") => others.push((u64::MAX, name)),
                _ => {}
            }
        }
        for (base, name) in others {
            if base == u64::MAX || !logs.contains(&base) {
                let path = dir.join(name);
                tracing::info!(file = %path.display(), "removing leftover file");
                storage
                    .remove(&path)
                    .map_err(LogError::io("remove", &path))?;
            }
        }
        Ok(logs.into_iter().collect())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The first offset still in the log.
    pub fn start_offset(&self) -> u64 {
        *self
            .segments
            .read()
            .keys()
            .next()
            .expect("a log always has its active segment")
    }

    /// The offset the next appended record gets.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Every record below this offset is durable.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Total bytes of the log as of the last retention pass plus appends since;
    /// 0 until the first pass. Reads no files.
    pub fn cached_size_bytes(&self) -> u64 {
        match self.size_cache.load(Ordering::Relaxed) {
            SIZE_UNKNOWN => 0,
            size => size,
        }
    }

    /// Total bytes of all segments' log files.
    pub fn size_bytes(&self) -> Result<u64> {
        let segments: Vec<_> = self.segments.read().values().cloned().collect();
        segments.iter().map(|s| s.size_bytes()).sum()
    }

    fn check_writable(&self, writer: &Writer) -> Result<()> {
        if writer.closed {
            return Err(LogError::Closed);
        }
        if let Some(cause) = self.poisoned.get() {
            return Err(LogError::Poisoned {
                cause: cause.clone(),
            });
        }
        Ok(())
    }

    fn poison(&self, cause: String) {
        tracing::error!(dir = %self.dir.display(), %cause, "log is now read-only");
        let _ = self.poisoned.set(cause);
    }

    /// Whether the log refuses writes after a failed fsync.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.get().is_some()
    }

    /// Appends one batch with its base offset stamped (in what is written;
    /// `batch` itself is not changed). `batch` must already be verified
    /// (`strata_proto::batch::verify`). The batch is in the page cache
    /// when this returns; it is durable after the next [`Log::flush`].
    pub fn append(&self, batch: &[u8]) -> Result<AppendInfo> {
        let header = BatchHeader::parse(batch)?;
        debug_assert!(
            strata_proto::batch::verify(batch).is_ok(),
            "appending an unverified batch"
        );
        if header.batch_len() != batch.len() {
            return Err(LogError::InvalidBatch(
                strata_proto::batch::BatchError::LengthMismatch {
                    declared: header.batch_len(),
                    actual: batch.len(),
                },
            ));
        }
        let mut w = self.writer.lock();
        self.check_writable(&w)?;
        if self.should_roll(&w, &header, batch.len() as u64) {
            self.roll(&mut w)?;
        }
        let base_offset = w.next_offset;
        // The base offset lies outside the CRC: written from its own buffer,
        // the batch itself is written as it came, without a copy.
        let stamp = base_offset.to_le_bytes();
        let body = &batch[field::BASE_OFFSET + stamp.len()..];
        let pos = w.size;
        if let Err(e) = w.parts.log.write_all_vectored_at(&[&stamp, body], pos) {
            // Cut whatever part of the batch reached the file, so a later append
            // at `pos` cannot leave stale bytes behind it.
            if let Err(cut) = w.parts.log.set_len(pos) {
                self.poison(format!(
                    "write failed ({e}) and the partial write could not be cut ({cut})"
                ));
            }
            return Err(LogError::Io {
                op: "write",
                path: w.segment.log_path().clone(),
                source: e,
            });
        }
        let header = BatchHeader {
            base_offset,
            ..header
        };
        w.parts.index_batch(
            w.segment.base_offset,
            pos,
            &header,
            self.config.index_interval_bytes,
        );
        w.size += batch.len() as u64;
        w.bytes_since_checkpoint += batch.len() as u64;
        let _ = self
            .size_cache
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |size| {
                (size != SIZE_UNKNOWN).then(|| size + batch.len() as u64)
            });
        w.next_offset = header.next_offset();
        w.parts.size.store(w.size, Ordering::Release);
        self.end_offset.store(w.next_offset, Ordering::Release);
        Ok(AppendInfo {
            base_offset,
            next_offset: w.next_offset,
        })
    }

    fn should_roll(&self, w: &Writer, header: &BatchHeader, len: u64) -> bool {
        if w.size == 0 {
            return false;
        }
        let relative_end = w.next_offset + u64::from(header.record_count) - w.segment.base_offset;
        w.size + len > self.config.segment_bytes
            || now_ms().saturating_sub(w.created_ms) >= self.config.segment_ms as i64
            || relative_end > u64::from(u32::MAX)
            // Leave one time-index slot for the entry written at seal.
            || w.parts.index.is_full()
            || w.parts.time_index.len() + 1 >= self.config.max_index_entries() as usize
    }

    /// Opens (creating if missing) the segment at `base_offset` as the active,
    /// writable one, keeping its first index entries as given.
    fn open_active_segment(
        &self,
        base_offset: u64,
        index_entries: usize,
        time_index_entries: usize,
    ) -> Result<(Segment, Arc<Parts>)> {
        Segment::open_writable(
            self.storage.clone(),
            &Arc::from(self.dir.as_path()),
            base_offset,
            self.config.index_interval_bytes,
            self.config.max_index_entries() as usize,
            index_entries,
            time_index_entries,
        )
    }

    /// Seals the active segment and starts a new one at the log end.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let base = w.segment.base_offset;
        let last_offset = (w.size > 0).then(|| w.next_offset.saturating_sub(1).max(base));
        if let Err(e) = w.parts.seal(base, last_offset, &w.segment.log_path()) {
            self.poison(format!("sealing segment {base} failed: {e}"));
            return Err(e);
        }
        // The sealed segment is synced: everything before the new one is durable.
        self.flushed_offset
            .fetch_max(w.next_offset, Ordering::AcqRel);
        let (segment, parts) = self.open_active_segment(w.next_offset, 0, 0)?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync dir", &self.dir))?;
        let segment = Arc::new(segment);
        self.segments
            .write()
            .insert(segment.base_offset, segment.clone());
        // The sealed segment's files close now; reads reopen them on demand.
        self.active_base
            .store(segment.base_offset, Ordering::Release);
        w.segment.unload();
        tracing::debug!(dir = %self.dir.display(), sealed = base, active = segment.base_offset, "rolled segment");
        w.segment = segment;
        w.parts = parts;
        w.size = 0;
        w.created_ms = now_ms();
        w.checkpoint_forced = true;
        Ok(())
    }

    /// Makes every appended batch durable; returns the offset everything below
    /// which is now durable. A failure poisons the log.
    pub fn flush(&self) -> Result<u64> {
        let (file, path, next_offset) = {
            let w = self.writer.lock();
            self.check_writable(&w)?;
            (
                w.parts.log.clone(),
                w.segment.log_path().clone(),
                w.next_offset,
            )
        };
        if let Err(e) = file.sync() {
            self.poison(format!("fsync of {} failed: {e}", path.display()));
            return Err(LogError::Io {
                op: "fsync",
                path,
                source: e,
            });
        }
        self.flushed_offset.fetch_max(next_offset, Ordering::AcqRel);
        Ok(next_offset)
    }

    /// Whether enough has happened since the last checkpoint to write one.
    pub fn checkpoint_due(&self) -> bool {
        let w = self.writer.lock();
        w.checkpoint_forced
            || w.bytes_since_checkpoint >= self.config.checkpoint_interval_bytes
            || (w.bytes_since_checkpoint > 0
                && w.last_checkpoint.elapsed()
                    >= Duration::from_millis(self.config.checkpoint_interval_ms))
    }

    /// Writes a recovery checkpoint at the log end. `state` must describe the
    /// log exactly up to [`Log::end_offset`]; callers hold their own state
    /// steady (no appends) while calling this.
    pub fn checkpoint(&self, state: &[u8]) -> Result<()> {
        let mut w = self.writer.lock();
        self.check_writable(&w)?;
        self.checkpoint_locked(&mut w, state)
    }

    /// Makes the active segment durable, record data and index entries alike;
    /// a failed fsync poisons the log.
    fn sync_active(&self, w: &Writer) -> Result<()> {
        if let Err(e) = w.parts.log.sync() {
            let path = w.segment.log_path().clone();
            self.poison(format!("fsync of {} failed: {e}", path.display()));
            return Err(LogError::Io {
                op: "fsync",
                path,
                source: e,
            });
        }
        self.flushed_offset
            .fetch_max(w.next_offset, Ordering::AcqRel);
        w.parts.index.flush()?;
        w.parts.time_index.flush()
    }

    /// [`Log::checkpoint`] with the writer already held.
    fn checkpoint_locked(&self, w: &mut Writer, state: &[u8]) -> Result<()> {
        self.sync_active(w)?;
        let ckpt = Checkpoint {
            segment_base: w.segment.base_offset,
            position: w.size,
            next_offset: w.next_offset,
            max_timestamp: w.parts.max_timestamp.load(Ordering::Acquire),
            segment_created_ms: w.created_ms,
            index_entries: w.parts.index.len() as u32,
            time_index_entries: w.parts.time_index.len() as u32,
            state: state.to_vec(),
        };
        ckpt.write(self.storage.as_ref(), &self.dir)?;
        self.checkpoint_segment
            .store(ckpt.segment_base, Ordering::Release);
        w.checkpointed();
        Ok(())
    }

    /// Flushes, checkpoints with `state`, and marks the shutdown clean. The log
    /// accepts no more writes; the next open reads no data.
    pub fn close(&self, state: &[u8]) -> Result<()> {
        self.checkpoint(state)?;
        let mut w = self.writer.lock();
        checkpoint::write_clean_marker(self.storage.as_ref(), &self.dir)?;
        w.closed = true;
        Ok(())
    }

    /// Reads whole batches starting with the one holding `offset`: at most
    /// `max_bytes` (but at least one whole batch), all ending at or below
    /// `upper`. Empty when `offset == upper`. The bytes are a copy: for
    /// readers of batches that may still be cut (Raft's uncommitted tail).
    pub fn read(&self, offset: u64, max_bytes: usize, upper: u64) -> Result<ReadChunk> {
        self.read_with(offset, max_bytes, upper, ReadMode::Copy)
    }

    /// As `read`, for batches below `upper` that are committed and so never
    /// cut (the high watermark): large reads are served as views of the page
    /// cache instead of copies (see `ReadMode::View`).
    pub fn read_committed(&self, offset: u64, max_bytes: usize, upper: u64) -> Result<ReadChunk> {
        self.read_with(offset, max_bytes, upper, ReadMode::View)
    }

    fn read_with(
        &self,
        offset: u64,
        max_bytes: usize,
        upper: u64,
        mode: ReadMode,
    ) -> Result<ReadChunk> {
        let _no_cut = self.cut_lock.read();
        let upper = upper.min(self.end_offset());
        loop {
            let (segment, next) = {
                let segments = self.segments.read();
                let segment = segments
                    .range(..=offset)
                    .next_back()
                    .map(|(_, s)| s.clone());
                let next = segments.range(offset + 1..).next().map(|(&b, _)| b);
                (segment, next)
            };
            let start = self.start_offset();
            let Some(segment) = segment.filter(|_| offset >= start && offset <= upper) else {
                return Err(LogError::OffsetOutOfRange {
                    requested: offset,
                    start,
                    end: upper,
                });
            };
            if offset == upper {
                return Ok(ReadChunk {
                    bytes: bytes::Bytes::new(),
                    next_offset: offset,
                });
            }
            let read = self.using(&segment, || segment.read(offset, max_bytes, upper, mode));
            match read {
                Ok(Some(chunk)) => return Ok(chunk),
                Ok(None) => match next {
                    // Nothing at `offset` in its segment, and the next segment
                    // starts later: offsets are missing from the log.
                    Some(next) => {
                        return Err(LogError::Corrupt {
                            segment: segment.log_path().clone(),
                            position: segment.size_bytes()?,
                            reason: format!("offsets {offset}..{next} are missing"),
                        });
                    }
                    None => {
                        return Ok(ReadChunk {
                            bytes: bytes::Bytes::new(),
                            next_offset: offset,
                        });
                    }
                },
                // Retention deleted the segment between lookup and open: retry,
                // and the range check reports the new start.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && !self.segments.read().contains_key(&segment.base_offset) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The offset of the first record with a timestamp at or after `timestamp`
    /// below `upper`; `None` if every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64, upper: u64) -> Result<Option<u64>> {
        let _no_cut = self.cut_lock.read();
        let segments: Vec<_> = self.segments.read().values().cloned().collect();
        for segment in segments {
            if segment.base_offset >= upper {
                break;
            }
            if let Some(offset) =
                self.using(&segment, || segment.find_timestamp(timestamp, upper))?
            {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Deletes the oldest sealed segments as the retention settings say; rolls
    /// the active segment first if all of it has expired by age. Segments from
    /// the latest checkpoint's on are kept until a newer checkpoint covers them.
    pub fn enforce_retention(&self, now: i64) -> Result<RetentionReport> {
        self.enforce_retention_within(now, u64::MAX)
    }

    /// The offset retention would move the log start to now, if it would
    /// delete anything (nothing is deleted). A replicated partition asks its
    /// Raft group to purge up to there before it may delete.
    pub fn retention_target(&self, now: i64) -> Result<Option<u64>> {
        let _no_cut = self.cut_lock.read();
        let (segments, count, _) = self.plan_retention(now, u64::MAX)?;
        Ok((count > 0).then(|| segments[count].base_offset))
    }

    /// As [`Log::enforce_retention`], but deletes only segments that end at or
    /// below `limit` (a replicated partition's purged prefix).
    pub fn enforce_retention_within(&self, now: i64, limit: u64) -> Result<RetentionReport> {
        let _no_cut = self.cut_lock.upgradable_read();
        if self.config.retention_bytes.is_none() && self.config.retention_ms.is_none() {
            self.size_cache.store(self.size_bytes()?, Ordering::Relaxed);
            return Ok(RetentionReport::default());
        }
        {
            let mut w = self.writer.lock();
            if let Some(ms) = self.config.retention_ms
                && w.size > 0
                && !w.closed
                && self.poisoned.get().is_none()
                && w.parts.max_timestamp.load(Ordering::Acquire) < now.saturating_sub(ms as i64)
            {
                self.roll(&mut w)?;
            }
        }
        let (segments, count, total) = self.plan_retention(now, limit)?;
        let sealed = &segments[..count];
        let mut report = RetentionReport::default();
        self.size_cache.store(total, Ordering::Relaxed);
        if count == 0 {
            return Ok(report);
        }
        {
            let mut map = self.segments.write();
            for s in &sealed[..count] {
                map.remove(&s.base_offset);
            }
        }
        for s in &sealed[..count] {
            report.bytes_deleted += s.size_bytes()?;
            s.remove_files()?;
            report.segments_deleted += 1;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync dir", &self.dir))?;
        self.size_cache
            .fetch_sub(report.bytes_deleted.min(total), Ordering::Relaxed);
        // The checkpoint may name a deleted segment; write a fresh one soon.
        self.writer.lock().checkpoint_forced = true;
        tracing::info!(dir = %self.dir.display(), segments = report.segments_deleted,
            bytes = report.bytes_deleted, start = self.start_offset(), "retention deleted segments");
        Ok(report)
    }

    /// The segments now, how many of the oldest retention deletes (each ending
    /// at or below `limit`), and the log's total size in bytes.
    fn plan_retention(&self, now: i64, limit: u64) -> Result<(Vec<Arc<Segment>>, usize, u64)> {
        let segments: Vec<_> = self.segments.read().values().cloned().collect();
        let protected = self.checkpoint_segment.load(Ordering::Acquire);
        let deletable = segments
            .windows(2)
            .take_while(|pair| pair[0].base_offset < protected && pair[1].base_offset <= limit)
            .count();
        let sealed = &segments[..deletable];
        let mut total = 0;
        for s in &segments {
            total += s.size_bytes()?;
        }
        let count = retention::segments_to_delete(
            sealed.len(),
            total,
            self.config.retention_bytes,
            self.config.retention_ms,
            now,
            |i| {
                Ok::<_, LogError>(retention::SegmentFacts {
                    size_bytes: sealed[i].size_bytes()?,
                    max_timestamp: self.using(&sealed[i], || sealed[i].max_timestamp())?,
                })
            },
        )?;
        Ok((segments, count, total))
    }

    /// Runs `f` on `segment`, keeping the set of open sealed segments to the
    /// `OPEN_SEALED_SEGMENTS` most recently used.
    fn using<T>(&self, segment: &Arc<Segment>, f: impl FnOnce() -> T) -> T {
        let result = f();
        if segment.base_offset == self.active_base.load(Ordering::Acquire) || !segment.is_loaded() {
            return result;
        }
        let evicted: Vec<u64> = {
            let mut open = self.open_sealed.lock();
            open.retain(|b| *b != segment.base_offset);
            open.push_back(segment.base_offset);
            let excess = open.len().saturating_sub(OPEN_SEALED_SEGMENTS);
            open.drain(..excess).collect()
        };
        if !evicted.is_empty() {
            let segments = self.segments.read();
            for base in evicted {
                if let Some(s) = segments.get(&base) {
                    s.unload();
                }
            }
        }
        result
    }

    /// Sealed segments whose files are open now (for tests and diagnostics).
    pub fn open_sealed_segments(&self) -> usize {
        self.segments
            .read()
            .values()
            .filter(|s| s.is_loaded())
            .count()
            .saturating_sub(1)
    }

    /// Whether a checkpoint file exists (for tests and diagnostics).
    pub fn has_checkpoint(&self) -> bool {
        self.storage
            .exists(&self.dir.join(CHECKPOINT_FILE))
            .unwrap_or(false)
    }
}
