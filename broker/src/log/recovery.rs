//! Crash recovery of the log's tail: the bytes past the recovery checkpoint.
//!
//! Everything before the checkpoint is trusted as is and not read. From the
//! checkpoint on, each batch is parsed, CRC-checked and checked to continue the
//! offsets densely; index entries are rebuilt as it goes. The first batch that
//! fails ends the log: the file is cut there and later segments are removed.
//! This never loses an acknowledged write under crash faults, because a batch
//! is acknowledged only after an fsync that also covered every batch before
//! it; a torn batch was therefore never acknowledged, nor was anything after it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strata_proto::batch::BatchHeader;

use super::config::LogConfig;
use super::cursor::{BatchCursor, Stop};
use super::error::{LogError, Result};
use super::segment::{Parts, Segment};
use super::storage::Storage;

/// Where recovery starts: a checkpoint, or the start of a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TailStart {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub index_entries: usize,
    pub time_index_entries: usize,
}

impl TailStart {
    /// Recovery from the first byte of the segment at `base`.
    pub fn segment_start(base: u64) -> Self {
        TailStart {
            segment_base: base,
            position: 0,
            next_offset: base,
            max_timestamp: i64::MIN,
            index_entries: 0,
            time_index_entries: 0,
        }
    }
}

/// The segment left open for writing after recovery.
pub(crate) struct Active {
    pub segment: Segment,
    pub parts: Arc<Parts>,
    pub next_offset: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TailReport {
    /// Bytes read and checked.
    pub scanned_bytes: u64,
    /// Bytes cut off: torn or corrupt tail, and segments after it.
    pub truncated_bytes: u64,
    /// Sealed segments found damaged (kept; reads report the damage).
    pub damaged_segments: u64,
}

/// Recovers the segments `bases` (ascending; the first is `start.segment_base`).
/// Returns the sealed segments among them and the active one.
pub(crate) fn recover_tail(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
    start: TailStart,
    visit: &mut dyn FnMut(&BatchHeader, &Bytes),
) -> Result<(Vec<Segment>, Active, TailReport)> {
    debug_assert_eq!(bases.first(), Some(&start.segment_base));
    let capacity = config.max_index_entries() as usize;
    let shared_dir: Arc<Path> = Arc::from(dir);
    let mut report = TailReport::default();
    let mut sealed = Vec::new();
    let mut next_offset = start.next_offset;

    for (i, &base) in bases.iter().enumerate() {
        let first = i == 0;
        debug_assert!(
            first || base == next_offset,
            "only continuing segments are recovered"
        );
        let (mut from, keep_index, keep_time) = if first {
            (
                start.position,
                start.index_entries,
                start.time_index_entries,
            )
        } else {
            (0, 0, 0)
        };
        let log_path = super::segment::SegmentPaths::new(dir, base).log;
        let file_len = match storage.file_len(&log_path) {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(LogError::Io {
                    op: "stat",
                    path: log_path,
                    source: e,
                });
            }
        };
        let (mut keep_index, mut keep_time) = (keep_index, keep_time);
        if from > file_len {
            // The checkpoint promised bytes the file no longer has: the disk lost
            // data it had acknowledged as synced. Recheck the whole segment.
            tracing::error!(dir = %dir.display(), segment = base, checkpoint = from, file_len,
                "log file is shorter than its checkpoint; rescanning the segment");
            (from, keep_index, keep_time) = (0, 0, 0);
            next_offset = base;
        }
        let (segment, parts) = Segment::open_writable(
            storage.clone(),
            &shared_dir,
            base,
            config.index_interval_bytes,
            capacity,
            keep_index,
            keep_time,
        )?;
        if first && from > 0 {
            parts
                .max_timestamp
                .store(start.max_timestamp, Ordering::Release);
        }
        // The checkpoint says how many index entries were durable; keep only
        // those that also agree with the log below `from`, so a damaged or
        // stale index file can never point recovery at the wrong bytes.
        let relative_end = next_offset.saturating_sub(base);
        parts.index.retain_valid_prefix(|previous, e| {
            u64::from(e.position) < from
                && e.position > previous.map_or(0, |p| p.position)
                && e.relative_offset >= previous.map_or(0, |p| p.relative_offset)
                && u64::from(e.relative_offset) < relative_end.max(1)
        });
        let max_timestamp = parts.max_timestamp.load(Ordering::Acquire);
        parts.time_index.retain_valid_prefix(|previous, e| {
            e.timestamp <= max_timestamp
                && previous.is_none_or(|p| {
                    e.timestamp > p.timestamp && e.relative_offset >= p.relative_offset
                })
                && u64::from(e.relative_offset) < relative_end.max(1)
        });

        let mut cursor = BatchCursor::new(parts.log.as_ref(), from, file_len);
        let stop = loop {
            let header = match cursor.header() {
                Ok(Some(h)) => h,
                Ok(None) => break None,
                Err(stop) => break Some(stop),
            };
            let bytes = match cursor.batch(&header) {
                Ok(bytes) => bytes,
                Err(stop) => break Some(stop),
            };
            if header.base_offset != next_offset {
                break Some(Stop::Invalid {
                    position: cursor.position(),
                    reason: format!(
                        "batch has base offset {}, expected {next_offset}",
                        header.base_offset
                    ),
                });
            }
            parts.index_batch(
                base,
                cursor.position(),
                &header,
                config.index_interval_bytes,
            );
            visit(&header, &bytes);
            next_offset = header.next_offset();
            cursor.advance(&header);
        };
        let valid_end = cursor.position();
        report.scanned_bytes += valid_end - from;
        parts.size.store(valid_end, Ordering::Release);

        let later = &bases[i + 1..];
        let stop = match stop {
            Some(Stop::Io(e)) => {
                return Err(LogError::Io {
                    op: "read",
                    path: segment.log_path(),
                    source: e,
                });
            }
            Some(Stop::Invalid { reason, .. }) => Some(reason),
            None => None,
        };
        if let (Some(reason), Some(&next_base)) = (&stop, later.first()) {
            // Not the last segment: it was complete and fsynced before the
            // next one was created, so this is damage, not a torn write.
            // Cutting here would delete acknowledged records after it. Keep
            // every byte; reads stop at the damage and report it.
            tracing::error!(segment = %segment.log_path().display(), position = valid_end, %reason,
                "damaged batch in a sealed segment; its records from here on cannot be read");
            report.damaged_segments += 1;
            parts.size.store(file_len, Ordering::Release);
            next_offset = next_base;
            let last_offset = next_offset.saturating_sub(1).max(base);
            parts.seal(base, Some(last_offset), &segment.log_path())?;
            sealed.push(segment);
            continue;
        }
        if let Some(reason) = stop {
            let cut = file_len - valid_end;
            tracing::warn!(segment = %segment.log_path().display(), position = valid_end, cut_bytes = cut,
                %reason, "truncating the log at its last valid batch");
            parts
                .log
                .set_len(valid_end)
                .map_err(LogError::io("truncate", segment.log_path()))?;
            report.truncated_bytes += cut + remove_segments(storage, dir, config, later)?;
        } else if later.first() == Some(&next_offset) {
            // A later segment continues this one: this one is sealed.
            let last_offset = (valid_end > 0).then(|| next_offset.saturating_sub(1).max(base));
            parts.seal(base, last_offset, &segment.log_path())?;
            sealed.push(segment);
            continue;
        } else if let Some(&found) = later.first() {
            tracing::error!(dir = %dir.display(), expected = next_offset, found,
                "next segment does not continue the offsets; removing it and every later one");
            report.truncated_bytes += remove_segments(storage, dir, config, later)?;
        }
        // This is the active segment. Whatever survived a process crash may
        // still sit only in the page cache: make it durable before anything is
        // built on top of it.
        parts
            .log
            .sync()
            .map_err(LogError::io("fsync", segment.log_path()))?;
        return Ok((
            sealed,
            Active {
                segment,
                parts,
                next_offset,
            },
            report,
        ));
    }
    unreachable!("recover_tail is called with at least one segment and returns from its last")
}

/// Deletes the segments `bases`; returns the bytes they held.
fn remove_segments(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    config: &LogConfig,
    bases: &[u64],
) -> Result<u64> {
    let mut bytes = 0;
    let shared_dir: Arc<Path> = Arc::from(dir);
    for &base in bases {
        let segment = Segment::lazy(
            storage.clone(),
            &shared_dir,
            base,
            config.index_interval_bytes,
            1,
        );
        bytes += segment.size_bytes().unwrap_or(0);
        segment.remove_files()?;
    }
    if !bases.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(LogError::io("fsync dir", dir))?;
    }
    Ok(bytes)
}
