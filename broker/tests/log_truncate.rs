//! Cutting the log back: `Log::truncate_from` (Raft conflict truncation) and
//! `Log::reset_to` (a follower installing a snapshot), on real files, across
//! clean reopens, dropped logs and simulated power loss.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::*;
use strata_broker::log::storage::{Faults, FaultyStorage, FileStorage, Storage};
use strata_broker::log::{Log, LogConfig, LogError};
use strata_proto::batch::{Batches, Records};

/// Opens the log in `dir`, recording the checkpoint state and replayed batches.
fn open_recorded(dir: &Path, config: LogConfig, storage: Arc<dyn Storage>) -> (Log, Recorded) {
    let mut recorded = Recorded::default();
    let (log, _) = Log::open(dir, config, storage, &mut recorded).expect("open log");
    (log, recorded)
}

/// Appends `count` batches of 2 records tagged `"{tag}{i}"`, timestamps
/// `ts0 + i`; returns their base offsets.
fn append_batches(log: &Log, tag: &str, count: u32, value_bytes: usize, ts0: i64) -> Vec<u64> {
    (0..count)
        .map(|i| {
            append(
                log,
                batch(&format!("{tag}{i}"), 2, value_bytes, ts0 + i64::from(i)),
            )
        })
        .collect()
}

/// The values of every record in the log, in offset order, as strings up to
/// the padding.
fn values(log: &Log) -> Vec<(u64, String)> {
    read_all(log, log.start_offset(), log.end_offset())
        .into_iter()
        .map(|(o, v)| {
            let s = String::from_utf8_lossy(&v);
            (o, s.trim_end_matches('.').to_owned())
        })
        .collect()
}

/// What `append_batches(tag, count)` starting at `base` puts in the log.
fn expected(base: u64, tag: &str, count: u32) -> Vec<(u64, String)> {
    (0..count)
        .flat_map(|i| (0..2).map(move |r| (format!("{tag}{i}-{r}"), r)))
        .enumerate()
        .map(|(n, (v, _))| (base + n as u64, v))
        .collect()
}

fn log_files(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".log").map(|s| s.parse().unwrap()))
        .collect();
    bases.sort();
    bases
}

#[test]
fn truncate_in_the_active_segment_removes_the_tail_and_appends_continue_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    let bases = append_batches(&log, "a", 10, 20, 1_000);
    log.truncate_from(bases[6], b"at 12").unwrap();
    assert_eq!(log.end_offset(), 12);
    assert_eq!(log.flushed_offset(), 12);
    assert_eq!(values(&log), expected(0, "a", 6));
    assert!(matches!(
        log.read(12, 1 << 20, u64::MAX),
        Ok(chunk) if chunk.bytes.is_empty()
    ));
    assert!(matches!(
        log.read(14, 1 << 20, u64::MAX),
        Err(LogError::OffsetOutOfRange { end: 12, .. })
    ));
    // The next batch gets the cut offset, and its records read back.
    assert_eq!(append(&log, batch("new", 3, 20, 5_000)), 12);
    let got = values(&log);
    assert_eq!(got.len(), 15);
    assert_eq!(got[12], (12, "new-0".to_owned()));
    assert_eq!(got[14], (14, "new-2".to_owned()));
    assert!(!log.is_poisoned());
}

#[test]
fn truncate_across_sealed_segments_makes_the_cut_segment_active_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let (log, _) = open(dir.path(), config.clone());
    let bases = append_batches(&log, "s", 120, 100, 1_000);
    let segments = log_files(dir.path());
    assert!(segments.len() > 6, "{} segments", segments.len());
    // A batch in the middle of the third segment.
    let cut = bases
        .iter()
        .copied()
        .find(|&b| b > segments[2] + 4 && b < segments[3])
        .unwrap();
    let size_before = log.size_bytes().unwrap();
    log.truncate_from(cut, b"cut").unwrap();
    assert_eq!(log.end_offset(), cut);
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log_files(dir.path()), segments[..3].to_vec());
    assert!(log.size_bytes().unwrap() < size_before);
    let kept = (cut / 2) as u32;
    assert_eq!(values(&log), expected(0, "s", kept));

    // The cut segment takes writes again, and rolls when it fills.
    let more = append_batches(&log, "t", 60, 100, 9_000);
    assert_eq!(more[0], cut);
    assert!(log.segment_count() > 3);
    let mut want = expected(0, "s", kept);
    want.extend(expected(cut, "t", 60));
    assert_eq!(values(&log), want);
    drop(log);
    let (log, _) = open(dir.path(), config);
    assert_eq!(values(&log), want);
}

#[test]
fn truncate_at_a_segment_base_leaves_that_segment_empty_and_active() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let (log, _) = open(dir.path(), config.clone());
    append_batches(&log, "b", 60, 100, 1_000);
    let segments = log_files(dir.path());
    log.truncate_from(segments[2], b"").unwrap();
    assert_eq!(log.end_offset(), segments[2]);
    assert_eq!(log_files(dir.path()), segments[..3].to_vec());
    assert_eq!(values(&log), expected(0, "b", (segments[2] / 2) as u32));
    assert_eq!(append(&log, batch("x", 1, 1, 1)), segments[2]);
}

#[test]
fn truncate_to_the_start_leaves_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), config.clone(), storage.clone());
        append_batches(&log, "e", 50, 100, 1_000);
        log.truncate_from(0, b"empty").unwrap();
        assert_eq!(log.start_offset(), 0);
        assert_eq!(log.end_offset(), 0);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.size_bytes().unwrap(), 0);
        assert!(values(&log).is_empty());
        assert_eq!(log.offset_for_timestamp(0, u64::MAX).unwrap(), None);
    }
    storage.crash().unwrap();
    let (log, recorded) = open_recorded(dir.path(), config, storage);
    assert_eq!(recorded.state, b"empty");
    assert!(recorded.replayed.is_empty());
    assert_eq!((log.start_offset(), log.end_offset()), (0, 0));
    assert_eq!(append(&log, batch("first", 1, 1, 1)), 0);
}

#[test]
fn an_offset_inside_a_batch_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments(2048));
    append_batches(&log, "n", 40, 100, 1_000);
    let before = values(&log);
    // Batches hold two records: odd offsets are inside one.
    match log.truncate_from(31, b"") {
        Err(LogError::NotBatchBoundary {
            offset: 31,
            batch_base: 30,
            batch_next: 32,
        }) => {}
        other => panic!("expected NotBatchBoundary, got {other:?}"),
    }
    assert!(matches!(
        log.truncate_from(81, b""),
        Err(LogError::OffsetOutOfRange { requested: 81, .. })
    ));
    assert!(!log.is_poisoned());
    assert_eq!(values(&log), before);
    assert_eq!(append(&log, batch("x", 1, 1, 1)), 80);
}

#[test]
fn an_offset_below_the_start_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    log.reset_to(100, b"").unwrap();
    append_batches(&log, "x", 3, 10, 1);
    assert!(matches!(
        log.truncate_from(50, b""),
        Err(LogError::OffsetOutOfRange {
            requested: 50,
            start: 100,
            end: 106
        })
    ));
    assert_eq!(log.end_offset(), 106);
}

#[test]
fn truncate_at_the_end_removes_nothing_and_checkpoints_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
        append_batches(&log, "z", 5, 10, 1);
        log.truncate_from(10, b"at the end").unwrap();
        assert_eq!(log.end_offset(), 10);
        assert_eq!(log.flushed_offset(), 10);
        assert_eq!(values(&log), expected(0, "z", 5));
    }
    storage.crash().unwrap();
    let (log, recorded) = open_recorded(dir.path(), LogConfig::default(), storage);
    assert_eq!(recorded.state, b"at the end");
    assert!(recorded.replayed.is_empty());
    assert_eq!(values(&log), expected(0, "z", 5));
}

#[test]
fn reads_and_timestamp_lookups_after_truncate_and_append_find_the_new_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(4096);
    let (log, _) = open(dir.path(), config.clone());
    // Timestamps 1000, 1010, ... two records per batch.
    for i in 0..100i64 {
        append(&log, batch(&format!("o{i}"), 2, 100, 1_000 + i * 10));
    }
    // Cut at batch 40 (offset 80) in a sealed segment, then append batches
    // with timestamps 5000, 5010, ...
    log.truncate_from(80, b"").unwrap();
    assert_eq!(log.offset_for_timestamp(1_395, u64::MAX).unwrap(), None);
    for i in 0..60i64 {
        append(&log, batch(&format!("n{i}"), 2, 100, 5_000 + i * 10));
    }
    let check = |log: &Log| {
        let end = log.end_offset();
        assert_eq!(end, 200);
        assert_eq!(log.offset_for_timestamp(1_000, end).unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(1_390, end).unwrap(), Some(78));
        // Old timestamps past the cut are gone: the first record at or after
        // 1400 is now the first new one.
        assert_eq!(log.offset_for_timestamp(1_391, end).unwrap(), Some(80));
        assert_eq!(log.offset_for_timestamp(5_000, end).unwrap(), Some(80));
        assert_eq!(log.offset_for_timestamp(5_001, end).unwrap(), Some(82));
        assert_eq!(log.offset_for_timestamp(5_590, end).unwrap(), Some(198));
        assert_eq!(log.offset_for_timestamp(5_591, end).unwrap(), None);
        for offset in [0, 1, 79, 80, 81, 120, 199] {
            let chunk = log.read(offset, 1, end).unwrap();
            let (h, b) = Batches::new(chunk.bytes).next().unwrap().unwrap();
            assert_eq!(h.base_offset, offset - offset % 2, "read at {offset}");
            let (o, r) = Records::new(b).unwrap().next().unwrap().unwrap();
            let want = if o < 80 {
                format!("o{}-0", o / 2)
            } else {
                format!("n{}-0", (o - 80) / 2)
            };
            assert!(r.value.unwrap().starts_with(want.as_bytes()), "at {offset}");
        }
    };
    check(&log);
    log.close(b"").unwrap();
    drop(log);
    let (log, _) = open(dir.path(), config);
    check(&log);
}

#[test]
fn reopen_after_truncate_sees_exactly_the_kept_batches_clean_dropped_or_crashed() {
    #[derive(Debug, Clone, Copy)]
    enum End {
        Close,
        Drop,
        Crash,
    }
    for end in [End::Close, End::Drop, End::Crash] {
        for in_sealed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let config = small_segments(if in_sealed { 2048 } else { 1 << 20 });
            let storage = Arc::new(FaultyStorage::new());
            let cut;
            {
                let (log, _) = open_on(dir.path(), config.clone(), storage.clone());
                append_batches(&log, "k", 50, 100, 1_000);
                // An old checkpoint past the cut, with its own state.
                log.checkpoint(b"old").unwrap();
                append_batches(&log, "u", 5, 100, 2_000);
                cut = if in_sealed { 20 } else { 90 };
                log.truncate_from(cut, b"new").unwrap();
                match end {
                    End::Close => log.close(b"closed").unwrap(),
                    End::Drop | End::Crash => {}
                }
            }
            if let End::Crash = end {
                storage.crash().unwrap();
            }
            let (log, recorded) = open_recorded(dir.path(), config, storage);
            let want_state: &[u8] = match end {
                End::Close => b"closed",
                End::Drop | End::Crash => b"new",
            };
            assert_eq!(recorded.state, want_state, "{end:?} sealed={in_sealed}");
            assert!(recorded.replayed.is_empty(), "{end:?} sealed={in_sealed}");
            assert_eq!(log.end_offset(), cut, "{end:?} sealed={in_sealed}");
            assert_eq!(values(&log), expected(0, "k", (cut / 2) as u32));
            assert_eq!(append(&log, batch("next", 1, 1, 1)), cut);
        }
    }
}

#[test]
fn batches_appended_after_a_truncate_survive_a_crash_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), config.clone(), storage.clone());
        append_batches(&log, "a", 40, 100, 1_000);
        log.flush().unwrap();
        log.truncate_from(30, b"cut").unwrap();
        append_batches(&log, "b", 10, 100, 3_000);
        log.flush().unwrap();
        // Not flushed: lost by the crash, and nothing of the old tail returns.
        append_batches(&log, "c", 3, 100, 4_000);
    }
    storage.crash().unwrap();
    let (log, recorded) = open_recorded(dir.path(), config, storage);
    assert_eq!(recorded.state, b"cut");
    assert_eq!(log.end_offset(), 50);
    let mut want = expected(0, "a", 15);
    want.extend(expected(30, "b", 10));
    assert_eq!(values(&log), want);
    // The batches after the checkpoint were replayed, from the cut on.
    assert_eq!(recorded.replayed.first(), Some(&30));
}

/// Copies every file of `from` into a fresh directory.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn a_crash_in_the_middle_of_a_truncate_recovers_a_consistent_prefix() {
    // The disk images a crash can leave between the steps of a truncate: the
    // new checkpoint alone; it and the later segments removed; everything.
    let config = small_segments(2048);
    let before = tempfile::tempdir().unwrap();
    {
        let (log, _) = open(before.path(), config.clone());
        append_batches(&log, "p", 60, 100, 1_000);
        log.checkpoint(b"old").unwrap();
        log.close(b"old").unwrap();
    }
    let segments = log_files(before.path());
    let cut = segments[1] + 2;
    let after = copy_dir(before.path());
    {
        let (log, _) = open(after.path(), config.clone());
        log.truncate_from(cut, b"new").unwrap();
    }
    let new_checkpoint = std::fs::read(after.path().join("recovery.checkpoint")).unwrap();

    for removed_later in [false, true] {
        let image = copy_dir(before.path());
        std::fs::write(image.path().join("recovery.checkpoint"), &new_checkpoint).unwrap();
        std::fs::remove_file(image.path().join("clean-shutdown")).unwrap();
        if removed_later {
            for base in &segments[2..] {
                for ext in ["log", "index", "timeindex"] {
                    std::fs::remove_file(image.path().join(format!("{base:020}.{ext}"))).unwrap();
                }
            }
        }
        let (log, recorded) = open_recorded(image.path(), config.clone(), Arc::new(FileStorage));
        // The state is the new one, and the log is the old one or a prefix of
        // it from the cut on: every batch recovery found past the checkpoint
        // was replayed on top of that state.
        assert_eq!(recorded.state, b"new");
        let end = log.end_offset();
        let want_end = if removed_later { segments[2] } else { 120 };
        assert_eq!(end, want_end, "removed_later={removed_later}");
        assert_eq!(recorded.replayed.first(), Some(&cut));
        assert_eq!(recorded.replayed.len() as u64, (end - cut) / 2);
        assert_eq!(values(&log), expected(0, "p", (end / 2) as u32));
    }
}

#[test]
fn a_poisoned_or_closed_log_refuses_truncate_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
    append_batches(&log, "x", 4, 10, 1);
    storage.set(Faults {
        fail_sync: true,
        ..Faults::default()
    });
    assert!(log.flush().is_err());
    storage.set(Faults::default());
    assert!(matches!(
        log.truncate_from(2, b""),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(
        log.reset_to(100, b""),
        Err(LogError::Poisoned { .. })
    ));
    assert_eq!(log.end_offset(), 8);
    assert_eq!(values(&log).len(), 8);

    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    append_batches(&log, "y", 2, 10, 1);
    log.close(b"").unwrap();
    assert!(matches!(log.truncate_from(0, b""), Err(LogError::Closed)));
    assert!(matches!(log.reset_to(9, b""), Err(LogError::Closed)));
}

#[test]
fn a_failed_checkpoint_write_leaves_the_log_unchanged_and_writable() {
    // Cutting into a sealed segment: the first fsync is the checkpoint's, and
    // nothing has been removed when it fails.
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let storage = Arc::new(FaultyStorage::new());
    let (log, _) = open_on(dir.path(), config, storage.clone());
    append_batches(&log, "f", 40, 100, 1_000);
    let before = values(&log);
    storage.set(Faults {
        fail_sync: true,
        ..Faults::default()
    });
    assert!(log.truncate_from(20, b"").is_err());
    storage.set(Faults::default());
    assert!(!log.is_poisoned());
    assert_eq!(values(&log), before);
    log.truncate_from(20, b"").unwrap();
    assert_eq!(values(&log), expected(0, "f", 10));
}

#[test]
fn a_failed_fsync_of_the_active_segment_during_truncate_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
        append_batches(&log, "f", 10, 100, 1_000);
        log.flush().unwrap();
        append_batches(&log, "g", 2, 100, 1_000);
        storage.set(Faults {
            fail_sync: true,
            ..Faults::default()
        });
        assert!(log.truncate_from(10, b"").is_err());
        assert!(log.is_poisoned());
        assert_eq!(log.flushed_offset(), 20);
        storage.set(Faults::default());
    }
    storage.crash().unwrap();
    let (log, _) = open_on(dir.path(), LogConfig::default(), storage);
    // Nothing was cut: the flushed log is whole, the unflushed tail is lost.
    assert_eq!(values(&log), expected(0, "f", 10));
}

#[test]
fn reset_to_then_append_then_reopen_continues_at_the_new_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), config.clone(), storage.clone());
        append_batches(&log, "old", 60, 100, 1_000);
        log.reset_to(1_000, b"snapshot").unwrap();
        assert_eq!(log.start_offset(), 1_000);
        assert_eq!(log.end_offset(), 1_000);
        assert_eq!(log.flushed_offset(), 1_000);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log_files(dir.path()), vec![1_000]);
        assert!(matches!(
            log.read(10, 1 << 20, u64::MAX),
            Err(LogError::OffsetOutOfRange { start: 1_000, .. })
        ));
        assert_eq!(log.offset_for_timestamp(0, u64::MAX).unwrap(), None);
        let bases = append_batches(&log, "new", 30, 100, 9_000);
        assert_eq!(bases[0], 1_000);
        assert!(log.segment_count() > 1);
        assert_eq!(values(&log), expected(1_000, "new", 30));
        assert_eq!(
            log.offset_for_timestamp(9_001, u64::MAX).unwrap(),
            Some(1_002)
        );
        log.flush().unwrap();
    }
    storage.crash().unwrap();
    let (log, recorded) = open_recorded(dir.path(), config.clone(), storage.clone());
    assert_eq!(recorded.state, b"snapshot");
    assert_eq!(recorded.replayed.first(), Some(&1_000));
    assert_eq!(log.start_offset(), 1_000);
    assert_eq!(values(&log), expected(1_000, "new", 30));
    log.close(b"closed").unwrap();
    drop(log);
    let (log, recorded) = open_recorded(dir.path(), config, storage);
    assert_eq!(recorded.state, b"closed");
    assert_eq!(values(&log), expected(1_000, "new", 30));
}

#[test]
fn reset_to_then_reopen_without_append_gives_an_empty_log_at_the_new_start() {
    for crash in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(FaultyStorage::new());
        {
            let (log, _) = open_on(dir.path(), small_segments(2048), storage.clone());
            append_batches(&log, "old", 40, 100, 1_000);
            log.checkpoint(b"old").unwrap();
            log.reset_to(500, b"snapshot").unwrap();
        }
        if crash {
            storage.crash().unwrap();
        }
        let (log, recorded) = open_recorded(dir.path(), small_segments(2048), storage);
        assert_eq!(recorded.state, b"snapshot", "crash={crash}");
        assert!(recorded.replayed.is_empty());
        assert_eq!((log.start_offset(), log.end_offset()), (500, 500));
        assert_eq!(append(&log, batch("a", 1, 1, 1)), 500);
    }
}

#[test]
fn reset_to_an_offset_a_segment_already_had_replaces_it() {
    // Resetting to offset 0 (or below the current end) reuses a file name
    // the old log had: the old segment must not survive under it.
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    {
        let (log, _) = open(dir.path(), config.clone());
        append_batches(&log, "old", 40, 100, 1_000);
        log.reset_to(0, b"again").unwrap();
        assert_eq!(log.end_offset(), 0);
        append_batches(&log, "new", 3, 10, 1);
        assert_eq!(values(&log), expected(0, "new", 3));
    }
    let (log, recorded) = open_recorded(dir.path(), config, Arc::new(FileStorage));
    assert_eq!(recorded.state, b"again");
    assert_eq!(values(&log), expected(0, "new", 3));
}

#[test]
fn retention_after_reset_behaves_as_for_any_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(4096),
        ..small_segments(2048)
    };
    let (log, _) = open(dir.path(), config);
    append_batches(&log, "old", 20, 100, 1_000);
    log.reset_to(300, b"").unwrap();
    assert_eq!(log.enforce_retention(0).unwrap().segments_deleted, 0);
    append_batches(&log, "new", 80, 100, 2_000);
    log.checkpoint(b"").unwrap();
    let report = log.enforce_retention(0).unwrap();
    assert!(report.segments_deleted > 0);
    assert!(log.start_offset() > 300);
    let start = log.start_offset();
    assert_eq!(values(&log).first().map(|v| v.0), Some(start));
    assert_eq!(log.end_offset(), 460);
}

#[test]
fn truncate_after_retention_cuts_in_the_remaining_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(4096),
        ..small_segments(2048)
    };
    let (log, _) = open(dir.path(), config);
    append_batches(&log, "r", 80, 100, 1_000);
    log.checkpoint(b"").unwrap();
    log.enforce_retention(0).unwrap();
    let start = log.start_offset();
    assert!(start > 0);
    log.truncate_from(start + 2, b"").unwrap();
    assert_eq!(log.end_offset(), start + 2);
    assert_eq!(values(&log).len(), 2);
    log.truncate_from(start, b"").unwrap();
    assert_eq!((log.start_offset(), log.end_offset()), (start, start));
}

#[test]
fn concurrent_readers_see_the_old_log_or_the_new_never_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), small_segments(4096)).0);
    // Every record's value names the offset it was written at, so a reader
    // can tell a record from the wrong place.
    let append_at = |log: &Log, round: u32| {
        let offset = log.end_offset();
        let b = batch(&format!("{offset}:{round}"), 1, 50, 1);
        log.append(&b).unwrap();
    };
    for _ in 0..200 {
        append_at(&log, 0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let log = log.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let offset = reads * 37 % 200;
                    reads += 1;
                    match log.read(offset, 8 * 1024, u64::MAX) {
                        Ok(chunk) => {
                            let mut next = None;
                            for item in Batches::new(chunk.bytes) {
                                let (h, b) = item.expect("whole, valid batches");
                                if let Some(n) = next {
                                    assert_eq!(h.base_offset, n);
                                }
                                for rec in Records::new(b).unwrap() {
                                    let (o, r) = rec.unwrap();
                                    let v: Bytes = r.value.unwrap();
                                    let tag = String::from_utf8_lossy(&v);
                                    assert!(tag.starts_with(&format!("{o}:")), "{o}: {tag}");
                                }
                                next = Some(h.next_offset());
                            }
                        }
                        Err(LogError::OffsetOutOfRange { .. }) => {}
                        Err(e) => panic!("read at {offset}: {e}"),
                    }
                }
                reads
            })
        })
        .collect();
    for round in 1..40u32 {
        let cut = u64::from(round * 13 % 150);
        log.truncate_from(cut, b"").unwrap();
        while log.end_offset() < 200 {
            append_at(&log, round);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

mod model {
    //! Random appends, truncates, resets, flushes, reopens and crashes,
    //! checked against a vector of batches.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append { records: u32, value_bytes: usize },
        Truncate { at: prop::sample::Index },
        Reset { gap: u64 },
        Flush,
        Checkpoint,
        Reopen,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (1u32..5, 1usize..300).prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
            3 => any::<prop::sample::Index>().prop_map(|at| Op::Truncate { at }),
            1 => (0u64..50).prop_map(|gap| Op::Reset { gap }),
            2 => Just(Op::Flush),
            1 => Just(Op::Checkpoint),
            1 => Just(Op::Reopen),
            2 => Just(Op::Crash),
        ]
    }

    struct Model {
        start: u64,
        /// Live batches: base offset and record values.
        batches: Vec<(u64, Vec<Bytes>)>,
        flushed: u64,
    }

    impl Model {
        fn end(&self) -> u64 {
            self.batches
                .last()
                .map_or(self.start, |(b, r)| b + r.len() as u64)
        }
    }

    fn config() -> LogConfig {
        LogConfig {
            checkpoint_interval_bytes: 4096,
            ..small_segments(2048)
        }
    }

    /// The checkpoint state the test writes: the offset it describes.
    fn state(offset: u64) -> Vec<u8> {
        offset.to_string().into_bytes()
    }

    fn check(log: &Log, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(log.start_offset(), model.start);
        prop_assert_eq!(log.end_offset(), model.end());
        let got = read_all(log, log.start_offset(), log.end_offset());
        let want: Vec<(u64, Bytes)> = model
            .batches
            .iter()
            .flat_map(|(base, records)| {
                records
                    .iter()
                    .enumerate()
                    .map(move |(i, v)| (base + i as u64, v.clone()))
            })
            .collect();
        prop_assert_eq!(got, want);
        Ok(())
    }

    /// After an open: the restored state names an offset at a batch
    /// boundary, and exactly the batches from there on were replayed.
    fn check_replay(recorded: &Recorded, model: &Model) -> Result<(), TestCaseError> {
        let from: u64 = String::from_utf8(recorded.state.clone())
            .unwrap()
            .parse()
            .unwrap();
        let want: Vec<u64> = model
            .batches
            .iter()
            .map(|b| b.0)
            .filter(|&b| b >= from)
            .collect();
        prop_assert_eq!(&recorded.replayed, &want);
        prop_assert!(from == model.end() || want.first() == Some(&from));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn truncating_log_behaves_like_a_vector_of_batches(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let storage = Arc::new(FaultyStorage::new());
            let mut log = open_on(dir.path(), config(), storage.clone()).0;
            log.checkpoint(&state(0)).unwrap();
            let mut model = Model { start: 0, batches: Vec::new(), flushed: 0 };
            let mut tag = 0u32;

            for op in ops {
                match op {
                    Op::Append { records, value_bytes } => {
                        tag += 1;
                        let b = batch(&format!("v{tag}"), records, value_bytes, i64::from(tag));
                        let base = append(&log, b);
                        prop_assert_eq!(base, model.end());
                        let values = (0..records)
                            .map(|i| {
                                let mut v = format!("v{tag}-{i}").into_bytes();
                                if v.len() < value_bytes { v.resize(value_bytes, b'.'); }
                                Bytes::from(v)
                            })
                            .collect();
                        model.batches.push((base, values));
                    }
                    Op::Truncate { at } => {
                        let i = at.index(model.batches.len() + 1);
                        let offset = model.batches.get(i).map_or(model.end(), |b| b.0);
                        log.truncate_from(offset, &state(offset)).unwrap();
                        model.batches.truncate(i);
                        model.flushed = offset;
                    }
                    Op::Reset { gap } => {
                        let start = model.end() + gap;
                        log.reset_to(start, &state(start)).unwrap();
                        model = Model { start, batches: Vec::new(), flushed: start };
                    }
                    Op::Flush => model.flushed = log.flush().unwrap(),
                    Op::Checkpoint => {
                        log.checkpoint(&state(model.end())).unwrap();
                        model.flushed = model.end();
                    }
                    Op::Reopen => {
                        log.close(&state(model.end())).unwrap();
                        drop(log);
                        let (reopened, recorded) = open_recorded(dir.path(), config(), storage.clone());
                        log = reopened;
                        check_replay(&recorded, &model)?;
                    }
                    Op::Crash => {
                        let flushed = log.flushed_offset().max(model.flushed);
                        drop(log);
                        storage.crash().unwrap();
                        let (reopened, recorded) = open_recorded(dir.path(), config(), storage.clone());
                        log = reopened;
                        let end = log.end_offset();
                        // Everything flushed survives; nothing removed returns.
                        prop_assert!(end >= flushed, "end {} < flushed {}", end, flushed);
                        prop_assert!(end <= model.end());
                        let keep = model.batches.iter().take_while(|b| b.0 < end).count();
                        model.batches.truncate(keep);
                        prop_assert_eq!(model.end(), end, "crash ended inside a batch");
                        model.flushed = end;
                        check_replay(&recorded, &model)?;
                    }
                }
                check(&log, &model)?;
            }
        }
    }
}
