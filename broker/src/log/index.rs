//! The sparse offset index of one segment: `(relative offset u32, position u32)`
//! entries, one per `index_interval_bytes` of log, pointing at batch starts.
//!
//! Invariants: entries are sorted by offset and by position; every position is
//! the start of a batch whose base offset is `segment base + relative offset`;
//! the first batch (position 0) has no entry, it is implied.

use super::index_file::{Entry, IndexFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl Entry for OffsetEntry {
    const BYTES: usize = 8;

    fn decode(buf: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")),
            position: u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")),
        }
    }

    fn encode(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        buf[4..8].copy_from_slice(&self.position.to_le_bytes());
    }
}

pub(crate) type OffsetIndex = IndexFile<OffsetEntry>;

impl OffsetIndex {
    /// Position of a batch at or before the one holding `relative_offset`: the
    /// place a forward scan for that offset may start.
    pub fn scan_start(&self, relative_offset: u32) -> u32 {
        self.last_where(|e| e.relative_offset <= relative_offset)
            .map_or(0, |e| e.position)
    }

    /// Whether the entries are sorted and inside a log of `log_bytes` bytes.
    pub fn is_consistent(&self, log_bytes: u64) -> bool {
        let entries = self.entries();
        entries
            .windows(2)
            .all(|w| w[0].relative_offset <= w[1].relative_offset && w[0].position < w[1].position)
            && entries
                .iter()
                .all(|e| e.position > 0 && u64::from(e.position) < log_bytes)
    }
}
