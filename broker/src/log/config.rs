//! Tunables of one partition's log, with the defaults of DESIGN.md §7.

use strata_proto::limits::MAX_BATCH_BYTES;

/// A segment rolls once it holds this many bytes.
pub const SEGMENT_SIZE_BYTES: u64 = 256 * 1024 * 1024;

/// A segment rolls once it was created this long ago (7 days, as Kafka), by
/// the broker's clock; the creation time survives restarts through the
/// recovery checkpoint.
pub const SEGMENT_AGE_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// One sparse index entry per this many bytes of log.
pub const INDEX_INTERVAL_BYTES: u64 = 4 * 1024;

/// A recovery checkpoint is written after this many bytes are flushed since the
/// last one, bounding the tail a crash recovery must scan.
pub const CHECKPOINT_INTERVAL_BYTES: u64 = 64 * 1024 * 1024;

/// ... or after this long, whichever comes first.
pub const CHECKPOINT_INTERVAL_MS: u64 = 30_000;

/// Sealed segments a log keeps open at once (three files each) after reading
/// them; the least recently used beyond this are closed again.
pub const OPEN_SEALED_SEGMENTS: usize = 16;

/// Smallest index interval: a denser index buys little and multiplies the
/// index files' size.
pub const MIN_INDEX_INTERVAL_BYTES: u64 = 64;

/// Segment positions are u32 in the index; a segment may overshoot its roll
/// size by one batch, so its roll size must leave room for one.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = u32::MAX as u64 - MAX_BATCH_BYTES as u64;

/// Configuration of one log. `Default` gives DESIGN.md's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// Roll the active segment once it was created this long ago.
    pub segment_ms: u64,
    /// Bytes of log between sparse index entries.
    pub index_interval_bytes: u64,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Bytes flushed between recovery checkpoints.
    pub checkpoint_interval_bytes: u64,
    /// Time between recovery checkpoints while data is being written.
    pub checkpoint_interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_SIZE_BYTES,
            segment_ms: SEGMENT_AGE_MS,
            index_interval_bytes: INDEX_INTERVAL_BYTES,
            retention_bytes: None,
            retention_ms: None,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS,
        }
    }
}

impl LogConfig {
    /// Checks the values against what the on-disk format can represent.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_SIZE_BYTES {
            return Err(format!(
                "segment size must be between 1 and {MAX_SEGMENT_SIZE_BYTES} bytes, got {}",
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes < MIN_INDEX_INTERVAL_BYTES {
            return Err(format!(
                "index interval must be at least {MIN_INDEX_INTERVAL_BYTES} bytes, got {}",
                self.index_interval_bytes
            ));
        }
        if self.segment_ms == 0 {
            return Err("segment age must be at least 1 ms".into());
        }
        Ok(())
    }

    /// Index entries a segment can need: one per interval, plus one for the
    /// batch that overshoots the roll size.
    pub(crate) fn max_index_entries(&self) -> u64 {
        (self.segment_bytes + MAX_BATCH_BYTES as u64) / self.index_interval_bytes.max(1) + 2
    }
}
