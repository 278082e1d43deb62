//! Cutting the log back: [`Log::truncate_from`] removes a tail of whole batches
//! (Raft conflict truncation of an uncommitted tail) and [`Log::reset_to`]
//! discards every batch and restarts the log empty at a given offset (a
//! follower installing a snapshot that starts past its log).
//!
//! Invariants, whatever a crash interrupts:
//! - no checkpoint that describes removed batches is ever used again: the
//!   replacement checkpoint is durable before the first byte is removed;
//! - what recovery finds is always a log it accepts as is: a cut removes later
//!   segments before it shortens the segment it cuts into, so the files left
//!   are a prefix of the old log that still holds every kept batch;
//! - once a cut returns, it is durable: the cut file is fsynced and removed
//!   segments are gone from the directory (fsynced), so recovery cannot find
//!   removed batches again.
//!
//! Neither operation may run concurrently with `append` (the caller serializes
//! them); reads may, and see the old log or the new one, never a mix
//! (`Log::cut_lock`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::RwLockUpgradableReadGuard;

use super::checkpoint::Checkpoint;
use super::error::{LogError, Result};
use super::segment::{Cut, Segment, SegmentPaths};
use super::storage::OpenMode;
use super::{Log, SIZE_UNKNOWN, Writer, now_ms};

impl Log {
    /// Removes every batch whose base offset is at or after `offset` and writes
    /// a recovery checkpoint at the new end with `state` (which must describe
    /// the log exactly up to `offset`). `offset` must be the base offset of a
    /// batch in the log (`NotBatchBoundary` otherwise; `OffsetOutOfRange` if it
    /// lies outside `[start_offset, end_offset]`). At `end_offset` nothing is
    /// removed, and only the checkpoint is written.
    ///
    /// The segment holding `offset` becomes the active one, cut there; later
    /// segments are deleted. The next append gets `offset`.
    ///
    /// Durable when it returns. If it fails before removing anything, the log
    /// is unchanged (the checkpoint may already be the new one, which the old
    /// log also satisfies); if it fails later, the log is poisoned, and after
    /// reopening holds the old log, the new one or a prefix in between, always
    /// with every batch before `offset` and a checkpoint that matches.
    ///
    /// Must not run concurrently with `append`. Reads of the removed offsets
    /// that run concurrently may return them (if they finish first) or fail
    /// with `OffsetOutOfRange`; they never return anything else.
    pub fn truncate_from(&self, offset: u64, state: &[u8]) -> Result<()> {
        let no_cut = self.cut_lock.upgradable_read();
        let mut w = self.writer.lock();
        self.check_writable(&w)?;
        let end = w.next_offset;
        let start = self.start_offset();
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        if offset == end {
            return self.checkpoint_locked(&mut w, state);
        }
        let (target, later) = {
            let segments = self.segments.read();
            let target = segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s.clone())
                .expect("offset >= start_offset, the first segment's base");
            let later: Vec<Arc<Segment>> = segments
                .range(offset + 1..)
                .map(|(_, s)| s.clone())
                .collect();
            (target, later)
        };
        let target_is_active = Arc::ptr_eq(&target, &w.segment);
        let cut = self.using(&target, || target.find_cut(offset))?;
        let mut removed_bytes = target.size_bytes()?.saturating_sub(cut.position);
        for s in &later {
            removed_bytes += s.size_bytes()?;
        }

        // The checkpoint vouches for the bytes in front of the cut: sealed
        // segments are durable since their roll, the active one is made so now.
        if target_is_active {
            self.sync_active(&w)?;
        }
        let ckpt = Checkpoint {
            segment_base: target.base_offset,
            position: cut.position,
            next_offset: offset,
            max_timestamp: cut.max_timestamp,
            // A sealed segment made active again gets a full age before it
            // rolls; its creation time was not kept.
            segment_created_ms: if target_is_active {
                w.created_ms
            } else {
                now_ms()
            },
            index_entries: cut.index_entries as u32,
            time_index_entries: cut.time_index_entries as u32,
            state: state.to_vec(),
        };
        // Once the write starts the checkpoint on disk may name the target:
        // retention must keep it from then on, even if the write fails.
        self.checkpoint_segment
            .fetch_min(target.base_offset, Ordering::AcqRel);
        // Before anything is removed: a crash from here on recovers from the
        // cut, and until the files are cut it finds the old batches there
        // again (the old log, with `state` plus their replay: consistent).
        ckpt.write(self.storage.as_ref(), &self.dir)?;

        let _cutting = RwLockUpgradableReadGuard::upgrade(no_cut);
        // Whatever happens below, readers see no offset at or past the cut.
        self.end_offset.store(offset, Ordering::Release);
        // Everything kept was durable before the checkpoint was written.
        self.flushed_offset.store(offset, Ordering::Release);
        if let Err(e) = self.cut_files(&mut w, &target, &later, cut) {
            self.poison(format!("truncating the log at offset {offset} failed: {e}"));
            return Err(e);
        }
        w.next_offset = offset;
        w.created_ms = ckpt.segment_created_ms;
        w.checkpointed();
        self.checkpoint_segment
            .store(target.base_offset, Ordering::Release);
        let _ = self
            .size_cache
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |size| {
                (size != SIZE_UNKNOWN).then(|| size.saturating_sub(removed_bytes))
            });
        tracing::info!(dir = %self.dir.display(), offset, segment = target.base_offset,
            segments_deleted = later.len(), bytes = removed_bytes, "log truncated");
        Ok(())
    }

    /// Removes the files past the cut and makes `target`, cut, the active
    /// segment. Later segments go first (newest first) and the directory is
    /// fsynced before the target is shortened, so a crash at any point leaves a
    /// prefix of the old log, which recovery reads from the new checkpoint.
    fn cut_files(
        &self,
        w: &mut Writer,
        target: &Arc<Segment>,
        later: &[Arc<Segment>],
        cut: Cut,
    ) -> Result<()> {
        {
            let mut map = self.segments.write();
            for s in later {
                map.remove(&s.base_offset);
            }
        }
        // The target stops being sealed: the open-file LRU must never close
        // the active segment's files.
        self.open_sealed
            .lock()
            .retain(|&base| base < target.base_offset);
        for s in later.iter().rev() {
            s.unload();
            s.remove_files()?;
        }
        if !later.is_empty() {
            self.storage
                .sync_dir(&self.dir)
                .map_err(LogError::io("fsync dir", &self.dir))?;
        }

        let log_path = SegmentPaths::new(&self.dir, target.base_offset).log;
        let file = self
            .storage
            .open(&log_path, OpenMode::ReadWrite)
            .map_err(LogError::io("open", &log_path))?;
        file.set_len(cut.position)
            .map_err(LogError::io("truncate", &log_path))?;
        // Without this a crash could bring the removed bytes back behind a
        // checkpoint that points at the cut, and recovery would accept them.
        file.sync().map_err(LogError::io("fsync", &log_path))?;
        drop(file);

        // Reopened writable, its indexes keep the entries that describe kept
        // batches; the rest is zeroed (a sealed index is grown back to its
        // capacity).
        target.unload();
        let (segment, parts) = self.open_active_segment(
            target.base_offset,
            cut.index_entries,
            cut.time_index_entries,
        )?;
        debug_assert_eq!(parts.index.len(), cut.index_entries);
        parts.size.store(cut.position, Ordering::Release);
        parts
            .max_timestamp
            .store(cut.max_timestamp, Ordering::Release);
        let segment = Arc::new(segment);
        self.segments
            .write()
            .insert(segment.base_offset, segment.clone());
        self.active_base
            .store(segment.base_offset, Ordering::Release);
        w.segment = segment;
        w.parts = parts;
        w.size = cut.position;
        Ok(())
    }

    /// Discards every batch and restarts the log empty at `start_offset`: start
    /// and end offset are both `start_offset`, the next append gets it, and the
    /// recovery checkpoint holds `state` (which must describe the log up to
    /// `start_offset`). Readers then see a log whose older segments retention
    /// deleted: offsets below `start_offset` are out of range.
    ///
    /// Durable when it returns. A failure poisons the log; a crash before it
    /// returns leaves, after reopening, the old log (possibly without some of
    /// its oldest segments, as retention would leave it, read with the old
    /// checkpoint), an empty log at the old checkpoint's offset with the old
    /// state, or the new empty log with `state`.
    ///
    /// Must not run concurrently with `append`.
    pub fn reset_to(&self, start_offset: u64, state: &[u8]) -> Result<()> {
        let no_cut = self.cut_lock.upgradable_read();
        let mut w = self.writer.lock();
        self.check_writable(&w)?;
        let ckpt = Checkpoint {
            segment_base: start_offset,
            position: 0,
            next_offset: start_offset,
            max_timestamp: i64::MIN,
            segment_created_ms: now_ms(),
            index_entries: 0,
            time_index_entries: 0,
            state: state.to_vec(),
        };
        ckpt.check_writable(&self.dir)?;
        let old: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        let _cutting = RwLockUpgradableReadGuard::upgrade(no_cut);
        // Nothing below can be undone: after a failure memory and disk
        // disagree, and only recovery can tell what the disk holds.
        if let Err(e) = self.replace_all(&mut w, &old, &ckpt) {
            self.poison(format!(
                "resetting the log to offset {start_offset} failed: {e}"
            ));
            return Err(e);
        }
        tracing::info!(dir = %self.dir.display(), start_offset,
            segments_deleted = old.len(), "log reset");
        Ok(())
    }

    /// The steps of `reset_to`, in the order that keeps every crash image a
    /// log recovery reads consistently (see there).
    fn replace_all(&self, w: &mut Writer, old: &[Arc<Segment>], ckpt: &Checkpoint) -> Result<()> {
        let start_offset = ckpt.next_offset;
        // Oldest first, as retention deletes: until the last one goes, a crash
        // leaves the old log's newest segments and its checkpoint.
        for s in old {
            s.unload();
            s.remove_files()?;
        }
        // The new checkpoint must never meet an old segment: recovery would
        // read the old batches on top of the new state.
        self.storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync dir", &self.dir))?;
        // With no segment on disk, recovery starts a new log at the
        // checkpoint's offset; so the segment is created only after it.
        ckpt.write(self.storage.as_ref(), &self.dir)?;
        let (segment, parts) = self.open_active_segment(start_offset, 0, 0)?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(LogError::io("fsync dir", &self.dir))?;

        let segment = Arc::new(segment);
        {
            let mut map = self.segments.write();
            map.clear();
            map.insert(start_offset, segment.clone());
        }
        self.open_sealed.lock().clear();
        self.active_base.store(start_offset, Ordering::Release);
        self.end_offset.store(start_offset, Ordering::Release);
        self.flushed_offset.store(start_offset, Ordering::Release);
        self.checkpoint_segment
            .store(start_offset, Ordering::Release);
        self.size_cache.store(0, Ordering::Relaxed);
        w.segment = segment;
        w.parts = parts;
        w.size = 0;
        w.next_offset = start_offset;
        w.created_ms = ckpt.segment_created_ms;
        w.checkpointed();
        Ok(())
    }
}
