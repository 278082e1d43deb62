//! The sparse time index of one segment: `(max timestamp i64, relative offset u32)`.
//!
//! An entry `(T, o)` says: the largest timestamp of any record in this segment up
//! to and including the batch at relative offset `o` is `T`. Entries are added at
//! index points only when `T` grows, and once more when the segment is sealed,
//! so a sealed segment's last entry holds its largest timestamp.
//!
//! To find the first batch with a timestamp at or after `t`: every batch up to
//! the last entry with `T < t` is too old, so a forward scan may start there.

use super::index_file::{Entry, IndexFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl Entry for TimeEntry {
    const BYTES: usize = 12;

    fn decode(buf: &[u8]) -> Self {
        TimeEntry {
            timestamp: i64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")),
        }
    }

    fn encode(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.timestamp.to_le_bytes());
        buf[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
    }
}

pub(crate) type TimeIndex = IndexFile<TimeEntry>;

impl TimeIndex {
    /// The relative offset of the last batch known to hold only timestamps
    /// before `timestamp`; a scan for the first batch at or after `timestamp`
    /// may skip it and everything before it. `None`: start at the segment's start.
    pub fn newest_before(&self, timestamp: i64) -> Option<u32> {
        self.last_where(|e| e.timestamp < timestamp)
            .map(|e| e.relative_offset)
    }

    /// Appends `(timestamp, relative_offset)` if it raises the index's maximum.
    pub fn maybe_push(&self, timestamp: i64, relative_offset: u32) -> bool {
        match self.last() {
            Some(last) if last.timestamp >= timestamp => true,
            _ => self.push(TimeEntry {
                timestamp,
                relative_offset,
            }),
        }
    }

    /// Whether the entries are sorted and none lies past `next_relative_offset`
    /// (an empty control batch at the end has its base there).
    pub fn is_consistent(&self, next_relative_offset: u64) -> bool {
        let entries = self.entries();
        entries.windows(2).all(|w| {
            w[0].timestamp < w[1].timestamp && w[0].relative_offset <= w[1].relative_offset
        }) && entries
            .iter()
            .all(|e| u64::from(e.relative_offset) <= next_relative_offset)
    }
}
