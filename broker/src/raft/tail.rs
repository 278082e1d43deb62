//! The newest data entries of a group's Raft log, in memory: where each one
//! starts in the segment log (index → offset), and the stored bytes of the
//! newest few.
//!
//! Right after an entry is written, the leader reads it back once per
//! follower (replication) and every member reads it back once more to apply
//! it. Served from the segment log, each of those reads is a `pread` copying
//! the whole batch out of the page cache; on a three-node cluster that was the
//! largest CPU cost after the writes themselves. Keeping the bytes just written
//! (the exact bytes in the segment, stamped) turns those reads into reference
//! count increments.
//!
//! Invariants: entries are in index order and mirror the segment log's newest
//! data entries exactly (appends push, conflict truncation pops); the entries
//! whose bytes are kept are a suffix of the list (bytes are dropped oldest
//! first). Every tail may keep [`TAIL_BYTES_FLOOR`]; beyond that up to
//! [`TAIL_BYTES_MAX`] while the node's tails together hold at most
//! [`NODE_TAIL_BYTES`], and back to the floor once idle for
//! [`TAIL_IDLE_TRIM`] (each bound exceeded by at most the newest entry). It
//! never holds an entry the segment log does not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Recent data entries remembered (index → offset), so replication to
/// followers that keep up never searches the log.
pub const TAIL_ENTRIES: usize = 65_536;

/// Bytes of the newest entries every group may keep in memory, whatever the
/// others hold: two of the producer's default 1 MiB batches. A node with a
/// thousand replicas may hold 2 GiB here at most, which is why it is not
/// larger.
pub const TAIL_BYTES_FLOOR: usize = 2 * 1024 * 1024;

/// Bytes of the newest entries one group keeps while the node has room. A
/// leader with a few partitions each taking 5 batches of up to 1 MiB in flight
/// from every producer runs well ahead of its slowest reader (a follower's
/// replication stream, or its own apply, which waits for a quorum's flush):
/// with 2 MiB per group, the replication and apply reads of a busy three-node
/// cluster kept missing and copied their batches out of the page cache again
/// (`pread`: 14% of the nodes' CPU under `perf`; 1% with 16 MiB).
pub const TAIL_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes all the groups of this process may keep together before each is held
/// to [`TAIL_BYTES_FLOOR`]: the busy few get room, a thousand idle ones do not
/// add up. Half the broker's in-flight produce budget (256 MiB).
pub const NODE_TAIL_BYTES: usize = 128 * 1024 * 1024;

/// How long a group takes no new entries before its tail gives back what it
/// holds beyond [`TAIL_BYTES_FLOOR`] (at the next maintenance pass): by then
/// its followers and its state machine have read what they will, and the
/// bytes are the node budget's for groups that are busy.
pub const TAIL_IDLE_TRIM: Duration = Duration::from_secs(10);

/// Bytes kept by every tail of this process (a node is one process).
static NODE_CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone)]
pub struct TailEntry {
    pub index: u64,
    pub term: u64,
    pub base_offset: u64,
    /// The batch as stored, while it is among the newest kept.
    pub bytes: Option<Bytes>,
}

#[derive(Debug)]
pub struct Tail {
    entries: VecDeque<TailEntry>,
    /// `entries[uncached..]` have their bytes.
    uncached: usize,
    cached_bytes: usize,
    /// The node's count of bytes kept, this tail's included.
    node_cached_bytes: &'static AtomicUsize,
    /// When the newest entry was pushed.
    pushed: Instant,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail::on_node(&NODE_CACHED_BYTES)
    }
}

impl Tail {
    /// An empty tail sharing the node-wide budget through `node_cached_bytes`.
    fn on_node(node_cached_bytes: &'static AtomicUsize) -> Tail {
        Tail {
            entries: VecDeque::new(),
            uncached: 0,
            cached_bytes: 0,
            node_cached_bytes,
            pushed: Instant::now(),
        }
    }

    /// A tail anchored at the log's newest entry (whose bytes are not kept).
    pub fn anchored(last: Option<TailEntry>) -> Tail {
        Tail::default().anchor(last)
    }

    fn anchor(mut self, last: Option<TailEntry>) -> Tail {
        if let Some(mut last) = last {
            last.bytes = None;
            self.entries.push_back(last);
            self.uncached = 1;
        }
        self
    }

    pub fn push(&mut self, entry: TailEntry) {
        debug_assert!(
            self.entries.back().is_none_or(|b| b.index < entry.index),
            "tail entries must be appended in index order"
        );
        if self.entries.len() == TAIL_ENTRIES {
            self.pop_front();
        }
        match &entry.bytes {
            Some(b) => self.add_cached(b.len()),
            None => {
                // Keep the cached entries a suffix.
                self.drop_bytes_before(self.entries.len());
                self.uncached = self.entries.len() + 1;
            }
        }
        self.entries.push_back(entry);
        self.pushed = Instant::now();
        let limit = match self.node_cached_bytes.load(Ordering::Relaxed) <= NODE_TAIL_BYTES {
            true => TAIL_BYTES_MAX,
            false => TAIL_BYTES_FLOOR,
        };
        self.trim_to(limit);
    }

    /// Gives back the bytes beyond [`TAIL_BYTES_FLOOR`] (keeping the newest
    /// entry's) once nothing was pushed for `idle`.
    pub fn trim_if_idle(&mut self, idle: Duration) {
        if self.cached_bytes <= TAIL_BYTES_FLOOR || self.pushed.elapsed() < idle {
            return;
        }
        self.trim_to(TAIL_BYTES_FLOOR);
    }

    /// Drops bytes oldest first until at most `limit` are kept, or only the
    /// newest entry's.
    fn trim_to(&mut self, limit: usize) {
        while self.cached_bytes > limit && self.uncached + 1 < self.entries.len() {
            self.drop_bytes_before(self.uncached + 1);
        }
    }

    fn add_cached(&mut self, bytes: usize) {
        self.cached_bytes += bytes;
        self.node_cached_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub_cached(&mut self, bytes: usize) {
        self.cached_bytes -= bytes;
        self.node_cached_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            match e.bytes {
                Some(b) => self.sub_cached(b.len()),
                None => self.uncached -= 1,
            }
        }
    }

    /// Drops the bytes of `entries[..upto]`.
    fn drop_bytes_before(&mut self, upto: usize) {
        while self.uncached < upto.min(self.entries.len()) {
            if let Some(b) = self.entries[self.uncached].bytes.take() {
                self.sub_cached(b.len());
            }
            self.uncached += 1;
        }
    }

    /// Removes entries with index `>= from` (conflict truncation).
    pub fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.index >= from) {
            if let Some(b) = self.entries.pop_back().and_then(|e| e.bytes) {
                self.sub_cached(b.len());
            }
        }
        self.uncached = self.uncached.min(self.entries.len());
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<&TailEntry> {
        self.entries.back()
    }

    /// Position of the first entry with index `>= index`, if the tail reaches
    /// back that far (`Some(len)`: no entry that new).
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?;
        (first.index <= index).then(|| self.entries.partition_point(|e| e.index < index))
    }

    /// The offset of the first data entry with index `>= index`: `None` if the
    /// tail does not reach back that far, `Some(None)` if there is none.
    pub fn offset_from(&self, index: u64) -> Option<Option<u64>> {
        let at = self.position(index)?;
        Some(self.entries.get(at).map(|e| e.base_offset))
    }

    /// The kept bytes of the data entries with indexes in `[start, end)`, at
    /// most `max_bytes` of them but at least one: `None` unless every such
    /// entry's bytes are kept.
    pub fn cached(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<(u64, u64, Bytes)>> {
        let at = self.position(start)?;
        if at < self.uncached {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.range(at..) {
            if e.index >= end || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let b = e
                .bytes
                .as_ref()
                .expect("entries past `uncached` keep their bytes");
            bytes += b.len();
            out.push((e.index, e.term, b.clone()));
        }
        Some(out)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.node_cached_bytes
            .fetch_sub(self.cached_bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, len: usize) -> TailEntry {
        TailEntry {
            index,
            term: 1,
            base_offset: index * 10,
            bytes: Some(Bytes::from(vec![0u8; len])),
        }
    }

    /// A tail on a node of its own, so tests running side by side do not
    /// share a budget.
    fn isolated(last: Option<TailEntry>) -> Tail {
        on_node(Box::leak(Box::new(AtomicUsize::new(0))), last)
    }

    fn on_node(node: &'static AtomicUsize, last: Option<TailEntry>) -> Tail {
        Tail::on_node(node).anchor(last)
    }

    #[test]
    fn bytes_are_dropped_oldest_first_beyond_the_budget() {
        let mut tail = isolated(None);
        let big = TAIL_BYTES_MAX / 4;
        for i in 1..=6 {
            tail.push(entry(i, big));
        }
        assert!(tail.cached_bytes <= TAIL_BYTES_MAX);
        // The oldest are no longer served from memory, the newest are.
        assert!(tail.cached(1, 7, usize::MAX).is_none());
        let newest = tail.cached(4, 7, usize::MAX).expect("newest kept");
        assert_eq!(
            newest.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        // Offsets stay known for every entry.
        assert_eq!(tail.offset_from(1), Some(Some(10)));
    }

    #[test]
    fn a_single_entry_larger_than_the_budget_is_still_kept() {
        let mut tail = isolated(None);
        tail.push(entry(1, TAIL_BYTES_MAX * 2));
        assert_eq!(tail.cached(1, 2, usize::MAX).map(|v| v.len()), Some(1));
    }

    #[test]
    fn the_anchor_and_truncated_entries_are_read_from_the_log() {
        let mut tail = isolated(Some(entry(5, 100)));
        assert!(tail.cached(5, 6, usize::MAX).is_none());
        tail.push(entry(6, 100));
        tail.push(entry(7, 100));
        assert_eq!(tail.cached(6, 8, usize::MAX).map(|v| v.len()), Some(2));
        tail.truncate(7);
        assert_eq!(tail.cached(6, 8, usize::MAX).map(|v| v.len()), Some(1));
        assert_eq!(tail.cached_bytes, 100);
        tail.truncate(5);
        assert!(tail.is_empty());
        assert_eq!(tail.cached_bytes, 0);
        assert_eq!(tail.uncached, 0);
    }

    #[test]
    fn byte_limit_cuts_after_at_least_one_entry() {
        let mut tail = isolated(None);
        for i in 1..=3 {
            tail.push(entry(i, 100));
        }
        assert_eq!(tail.cached(1, 4, 150).map(|v| v.len()), Some(2));
        assert_eq!(tail.cached(1, 4, 1).map(|v| v.len()), Some(1));
        assert_eq!(tail.cached(4, 9, 1).map(|v| v.len()), Some(0));
    }

    #[test]
    fn a_full_node_holds_every_tail_to_the_floor_until_room_returns() {
        let node: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let chunk = TAIL_BYTES_MAX / 4;
        let fill = |index_base: u64| {
            let mut tail = on_node(node, None);
            for i in 1..=4 {
                tail.push(entry(index_base + i, chunk));
            }
            tail
        };
        // Busy groups grow past the floor while the node has room...
        let mut busy: Vec<Tail> = Vec::new();
        while node.load(Ordering::Relaxed) + TAIL_BYTES_MAX <= NODE_TAIL_BYTES {
            busy.push(fill(0));
            assert_eq!(busy.last().unwrap().cached_bytes, TAIL_BYTES_MAX);
        }
        // ...and once it is full, another keeps only its floor's worth.
        let held = fill(0);
        assert!(held.cached_bytes <= TAIL_BYTES_FLOOR.max(chunk));
        assert!(held.cached(4, 5, usize::MAX).is_some(), "the newest stays");
        assert!(held.cached(1, 5, usize::MAX).is_none());
        // The bytes of dropped tails return to the node.
        let total: usize = busy.iter().map(|t| t.cached_bytes).sum::<usize>() + held.cached_bytes;
        assert_eq!(node.load(Ordering::Relaxed), total);
        busy.clear();
        drop(held);
        assert_eq!(node.load(Ordering::Relaxed), 0);
        assert_eq!(fill(0).cached_bytes, TAIL_BYTES_MAX);
    }

    #[test]
    fn an_idle_tail_gives_back_what_it_holds_beyond_the_floor() {
        let node: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let mut tail = on_node(node, None);
        let mib = 1024 * 1024;
        for i in 1..=10 {
            tail.push(entry(i, mib));
        }
        assert_eq!(tail.cached_bytes, 10 * mib);
        tail.trim_if_idle(Duration::from_secs(3600));
        assert_eq!(tail.cached_bytes, 10 * mib, "not idle yet");
        tail.trim_if_idle(Duration::ZERO);
        assert_eq!(tail.cached_bytes, TAIL_BYTES_FLOOR);
        assert_eq!(node.load(Ordering::Relaxed), TAIL_BYTES_FLOOR);
        assert!(tail.cached(9, 11, usize::MAX).is_some(), "the newest stay");
        assert!(tail.cached(8, 11, usize::MAX).is_none());
    }
}
