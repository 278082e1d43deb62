//! Behaviour of the segmented log on real files: offsets, reads, rolls,
//! retention, timestamp lookup, clean reopen and crash images.

mod common;

use std::sync::Arc;

use common::*;
use strata_broker::log::storage::{Faults, FaultyStorage, FileStorage};
use strata_broker::log::{LogConfig, LogError};
use strata_proto::batch::{Batches, HEADER_BYTES};

#[test]
fn appends_get_dense_offsets_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    assert_eq!(append(&log, batch("a", 3, 10, 1)), 0);
    assert_eq!(append(&log, batch("b", 1, 10, 2)), 3);
    assert_eq!(append(&log, batch("c", 5, 10, 3)), 4);
    assert_eq!(log.end_offset(), 9);
    let got = read_all(&log, 0, log.end_offset());
    let offsets: Vec<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..9).collect::<Vec<_>>());
    assert!(got[3].1.starts_with(b"b-0"));
    assert!(got[8].1.starts_with(b"c-4"));
}

#[test]
fn read_starts_at_the_batch_holding_the_offset_and_returns_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments(1 << 20));
    for i in 0..100 {
        append(&log, batch(&format!("b{i}"), 4, 50, i));
    }
    // Offset 4*37+2 lies inside batch 37.
    let chunk = log.read(150, 1, log.end_offset()).unwrap();
    let batches: Vec<_> = Batches::new(chunk.bytes.clone())
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        batches.len(),
        1,
        "max_bytes smaller than a batch still returns one whole batch"
    );
    assert_eq!(batches[0].0.base_offset, 148);
    assert_eq!(chunk.next_offset, 152);

    let chunk = log.read(150, 10 * 1024, log.end_offset()).unwrap();
    assert!(chunk.bytes.len() <= 10 * 1024);
    let batches: Vec<_> = Batches::new(chunk.bytes).map(Result::unwrap).collect();
    assert!(batches.len() > 1);
    for w in batches.windows(2) {
        assert_eq!(w[0].0.next_offset(), w[1].0.base_offset);
    }
}

#[test]
fn reads_never_pass_the_upper_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), LogConfig::default());
    append(&log, batch("a", 2, 10, 1));
    append(&log, batch("b", 2, 10, 1));
    let chunk = log.read(0, 1 << 20, 2).unwrap();
    assert_eq!(chunk.next_offset, 2);
    // A batch that straddles the bound is not returned at all.
    let chunk = log.read(0, 1 << 20, 3).unwrap();
    assert_eq!(chunk.next_offset, 2);
    assert!(log.read(2, 1 << 20, 2).unwrap().bytes.is_empty());
    assert!(matches!(
        log.read(3, 1 << 20, 2),
        Err(LogError::OffsetOutOfRange { requested: 3, .. })
    ));
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments(4096));
    for i in 0..200 {
        append(&log, batch(&format!("x{i}"), 2, 100, i));
    }
    assert!(
        log.segment_count() > 10,
        "only {} segments",
        log.segment_count()
    );
    let got = read_all(&log, 0, log.end_offset());
    assert_eq!(got.len(), 400);
    assert!(got.iter().enumerate().all(|(i, r)| r.0 == i as u64));
    // Segment files are named by their base offsets.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    assert_eq!(names[0], "00000000000000000000.log");
    let second: u64 = names[1].trim_end_matches(".log").parse().unwrap();
    assert!(second > 0 && second % 2 == 0);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 20,
        ..LogConfig::default()
    };
    let (log, _) = open(dir.path(), config);
    append(&log, batch("a", 1, 10, 1));
    std::thread::sleep(std::time::Duration::from_millis(30));
    append(&log, batch("b", 1, 10, 1));
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn reopen_after_clean_close_reads_everything_without_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), small_segments(8192), storage.clone());
        for i in 0..300 {
            append(&log, batch(&format!("r{i}"), 3, 64, 1000 + i));
        }
        log.flush().unwrap();
        log.close(b"state at close").unwrap();
        assert!(matches!(
            log.append(&batch("late", 1, 1, 1)),
            Err(LogError::Closed)
        ));
    }
    let reopened = Arc::new(FaultyStorage::new());
    let mut recorded = Recorded::default();
    let (log, report) = strata_broker::log::Log::open(
        dir.path(),
        small_segments(8192),
        reopened.clone(),
        &mut recorded,
    )
    .unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(report.scanned_bytes, 0);
    assert_eq!(recorded.state, b"state at close");
    assert!(recorded.replayed.is_empty());
    assert_eq!(report.replayed_from, 900);
    assert_eq!(reopened.bytes_read("log"), 0, "opening read record data");
    assert_eq!(log.end_offset(), 900);
    let got = read_all(&log, 0, log.end_offset());
    assert_eq!(got.len(), 900);
    assert!(got[899].1.starts_with(b"r299-2"));
    // And the log continues where it stopped.
    assert_eq!(append(&log, batch("next", 1, 1, 1)), 900);
}

#[test]
fn a_second_clean_open_is_not_mistaken_for_clean_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (log, _) = open(dir.path(), LogConfig::default());
        append(&log, batch("a", 1, 10, 1));
        log.close(&[]).unwrap();
    }
    {
        // Opened, written, then "crashed" (dropped without close).
        let (log, report) = open(dir.path(), LogConfig::default());
        assert!(report.clean_shutdown);
        append(&log, batch("b", 1, 10, 1));
        log.flush().unwrap();
    }
    let mut recorded = Recorded::default();
    let (log, report) = strata_broker::log::Log::open(
        dir.path(),
        LogConfig::default(),
        Arc::new(FileStorage),
        &mut recorded,
    )
    .unwrap();
    assert!(!report.clean_shutdown);
    assert!(report.scanned_bytes > 0);
    assert_eq!(log.end_offset(), 2);
    // The batch written after the last checkpoint is replayed, the one before is not.
    assert_eq!(recorded.replayed, vec![1]);
}

/// Builds a log of `batches` batches of 3 records, flushed, and "crashes" it.
fn crashed_log(dir: &std::path::Path, batches: u32, config: LogConfig) -> Vec<u64> {
    let (log, _) = open(dir, config);
    let mut sizes = Vec::new();
    for i in 0..batches {
        let b = batch(&format!("t{i}"), 3, 40, i64::from(i));
        sizes.push(b.len() as u64);
        append(&log, b);
    }
    log.flush().unwrap();
    sizes
}

fn active_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn torn_tail_is_truncated_to_last_valid_batch_at_every_byte() {
    let template = tempfile::tempdir().unwrap();
    let sizes = crashed_log(template.path(), 5, LogConfig::default());
    let full: u64 = sizes.iter().sum();
    let last = *sizes.last().unwrap();
    // Every length from "just the first byte of the last batch is missing" to
    // "only its first byte is there".
    for cut in 1..=last {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(template.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let file = active_log_file(dir.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(full - cut)
            .unwrap();
        let (log, report) = open(dir.path(), LogConfig::default());
        assert_eq!(log.end_offset(), 12, "cut {cut}");
        assert_eq!(report.truncated_bytes, last - cut, "cut {cut}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), full - last);
        assert_eq!(read_all(&log, 0, log.end_offset()).len(), 12);
        assert_eq!(append(&log, batch("after", 1, 1, 1)), 12, "cut {cut}");
    }
}

#[test]
fn bit_flip_in_the_tail_truncates_from_the_damaged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = crashed_log(dir.path(), 6, LogConfig::default());
    let file = active_log_file(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let fourth: u64 = sizes[..3].iter().sum();
    bytes[(fourth + HEADER_BYTES as u64 + 5) as usize] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    let (log, report) = open(dir.path(), LogConfig::default());
    assert_eq!(log.end_offset(), 9);
    assert_eq!(report.truncated_bytes, sizes[3..].iter().sum::<u64>());
    assert_eq!(read_all(&log, 0, 9).len(), 9);
}

#[test]
fn bit_flip_in_a_sealed_segment_is_reported_on_read_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(2048);
    let batch_len;
    {
        let (log, _) = open(dir.path(), config.clone());
        let b = batch("s", 3, 100, 1);
        batch_len = b.len() as u64;
        for _ in 0..40 {
            append(&log, b.clone());
        }
        log.close(&[]).unwrap();
    }
    let first = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    // Damage the record data of the second batch.
    bytes[(batch_len + HEADER_BYTES as u64 + 10) as usize] ^= 0x80;
    std::fs::write(&first, bytes).unwrap();

    let (log, report) = open(dir.path(), config);
    assert!(report.clean_shutdown, "sealed data is not read at open");
    // The first batch is still readable...
    let chunk = log.read(0, 1, log.end_offset()).unwrap();
    assert_eq!(chunk.next_offset, 3);
    // ...and reading the damaged one fails loudly, naming segment and position.
    match log.read(3, 1 << 20, log.end_offset()) {
        Err(LogError::Corrupt {
            segment, position, ..
        }) => {
            assert_eq!(segment, first);
            assert_eq!(position, batch_len);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // A read that starts before it stops short of it rather than skipping it.
    let chunk = log.read(0, 1 << 20, log.end_offset()).unwrap();
    assert_eq!(chunk.next_offset, 3);
    // Later segments are unaffected.
    let later = log.read(60, 1 << 20, log.end_offset()).unwrap();
    assert!(!later.bytes.is_empty());
}

#[test]
fn deleted_or_damaged_index_is_rebuilt_from_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(8192);
    {
        let (log, _) = open(dir.path(), config.clone());
        for i in 0..100 {
            append(&log, batch(&format!("i{i}"), 2, 200, i));
        }
        log.close(&[]).unwrap();
    }
    let expected = {
        let (log, _) = open(dir.path(), config.clone());
        read_all(&log, 0, log.end_offset())
    };
    std::fs::remove_file(dir.path().join("00000000000000000000.index")).unwrap();
    let second = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .min()
        .unwrap();
    // A torn index: not a whole number of entries.
    let len = std::fs::metadata(&second).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let (log, _) = open(dir.path(), config);
    assert_eq!(read_all(&log, 0, log.end_offset()), expected);
    assert!(dir.path().join("00000000000000000000.index").exists());
    assert_eq!(std::fs::metadata(&second).unwrap().len() % 8, 0);
    // Reads in the middle of a rebuilt segment still start at the right batch.
    let chunk = log.read(51, 1, log.end_offset()).unwrap();
    assert_eq!(
        Batches::new(chunk.bytes)
            .next()
            .unwrap()
            .unwrap()
            .0
            .base_offset,
        50
    );
}

#[test]
fn failed_fsync_fails_the_flush_and_poisons_the_log_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
        append(&log, batch("durable", 2, 10, 1));
        assert_eq!(log.flush().unwrap(), 2);
        append(&log, batch("lost", 2, 10, 1));
        storage.set(Faults {
            fail_sync: true,
            ..Faults::default()
        });
        assert!(log.flush().is_err());
        assert!(log.is_poisoned());
        assert_eq!(
            log.flushed_offset(),
            2,
            "a failed fsync never advances durability"
        );
        storage.set(Faults::default());
        // Even with a healthy disk again, the log stays read-only...
        assert!(matches!(
            log.append(&batch("x", 1, 1, 1)),
            Err(LogError::Poisoned { .. })
        ));
        assert!(matches!(log.flush(), Err(LogError::Poisoned { .. })));
        // ...but still serves what it has.
        assert_eq!(read_all(&log, 0, 2).len(), 2);
    }
    storage.crash().unwrap();
    let (log, _) = open_on(dir.path(), LogConfig::default(), storage);
    assert_eq!(
        log.end_offset(),
        2,
        "only the synced batch survives the crash"
    );
    assert_eq!(append(&log, batch("again", 1, 1, 1)), 2);
}

#[test]
fn a_crash_loses_only_what_was_never_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), small_segments(4096), storage.clone());
        for i in 0..50 {
            append(&log, batch(&format!("f{i}"), 2, 100, i));
        }
        assert_eq!(log.flush().unwrap(), 100);
        for i in 0..5 {
            append(&log, batch(&format!("u{i}"), 2, 100, i));
        }
    }
    storage.crash().unwrap();
    let (log, report) = open_on(dir.path(), small_segments(4096), storage);
    assert!(!report.clean_shutdown);
    assert!(log.end_offset() >= 100);
    let got = read_all(&log, 0, log.end_offset());
    assert_eq!(got.len() as u64, log.end_offset());
    assert!(got[99].1.starts_with(b"f49-1"));
}

#[test]
fn lying_fsync_is_exposed_by_a_crash() {
    // The fault model is strong enough to show a disk that lies: this is what
    // the verification harness relies on to prove it would catch lost writes.
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
        storage.set(Faults {
            lie_on_sync: true,
            ..Faults::default()
        });
        append(&log, batch("acked", 1, 10, 1));
        assert_eq!(log.flush().unwrap(), 1);
    }
    storage.crash().unwrap();
    storage.set(Faults::default());
    let (log, _) = open_on(dir.path(), LogConfig::default(), storage);
    assert_eq!(log.end_offset(), 0);
}

#[test]
fn full_disk_fails_the_append_and_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
    append(&log, batch("ok", 1, 10, 1));
    storage.set(Faults {
        space_left_bytes: Some(10),
        ..Faults::default()
    });
    let err = log.append(&batch("too-big", 1, 100, 1)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    storage.set(Faults::default());
    assert_eq!(append(&log, batch("after", 1, 10, 1)), 1);
    log.flush().unwrap();
    let got = read_all(&log, 0, log.end_offset());
    assert_eq!(got.len(), 2);
}

#[test]
fn torn_write_is_cut_and_the_next_append_lands_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), LogConfig::default(), storage.clone());
        append(&log, batch("ok", 1, 10, 1));
        storage.set(Faults {
            tear_next_write_after: Some(30),
            ..Faults::default()
        });
        assert!(log.append(&batch("torn", 1, 100, 1)).is_err());
        assert_eq!(append(&log, batch("after", 1, 10, 1)), 1);
        log.flush().unwrap();
    }
    let (log, report) = open_on(dir.path(), LogConfig::default(), storage);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(log.end_offset(), 2);
}

#[test]
fn retention_by_bytes_deletes_whole_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(10_000),
        ..small_segments(4096)
    };
    let (log, _) = open(dir.path(), config);
    for i in 0..200 {
        append(&log, batch(&format!("r{i}"), 1, 200, i));
    }
    let before = log.size_bytes().unwrap();
    // Nothing is deleted that the latest checkpoint does not cover: with only
    // the initial checkpoint, every segment is still needed for recovery.
    assert_eq!(log.enforce_retention(1_000).unwrap().segments_deleted, 0);
    log.checkpoint(&[]).unwrap();
    let report = log.enforce_retention(1_000).unwrap();
    assert!(report.segments_deleted > 0);
    let after = log.size_bytes().unwrap();
    assert_eq!(before - after, report.bytes_deleted);
    assert!(after >= 10_000, "retention cut below its limit: {after}");
    let start = log.start_offset();
    assert!(start > 0);
    assert!(matches!(
        log.read(0, 100, log.end_offset()),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        read_all(&log, start, log.end_offset()).len() as u64,
        200 - start
    );
}

#[test]
fn retention_by_age_deletes_expired_segments_and_rolls_an_expired_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(1_000),
        ..small_segments(4096)
    };
    let (log, _) = open(dir.path(), config.clone());
    for i in 0..60 {
        append(&log, batch(&format!("old{i}"), 1, 200, 10_000 + i));
    }
    for i in 0..3 {
        append(&log, batch(&format!("new{i}"), 1, 200, 50_000));
    }
    log.checkpoint(&[]).unwrap();
    // At t=50_500, records older than 49_500 have expired: all the "old" ones.
    let report = log.enforce_retention(50_500).unwrap();
    assert!(report.segments_deleted > 0);
    let remaining = read_all(&log, log.start_offset(), log.end_offset());
    assert!(
        remaining
            .iter()
            .all(|r| !r.1.starts_with(b"old") || r.0 >= log.start_offset())
    );
    assert!(remaining.iter().any(|r| r.1.starts_with(b"new0")));
    // Much later everything has expired, even the active segment's records:
    // it is rolled, and deleted once a checkpoint has moved past it.
    log.enforce_retention(100_000).unwrap();
    log.checkpoint(&[]).unwrap();
    log.enforce_retention(100_000).unwrap();
    assert_eq!(log.start_offset(), log.end_offset());
    drop(log);
    // And the log reopens at the same offsets.
    let (log, _) = open(dir.path(), config);
    assert_eq!(log.start_offset(), 63);
    assert_eq!(append(&log, batch("z", 1, 1, 1)), 63);
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments(4096));
    for i in 0..100i64 {
        append(&log, batch(&format!("t{i}"), 2, 100, 1_000 + i * 10));
    }
    let end = log.end_offset();
    assert_eq!(log.offset_for_timestamp(0, end).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_000, end).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1_001, end).unwrap(), Some(2));
    assert_eq!(log.offset_for_timestamp(1_500, end).unwrap(), Some(100));
    assert_eq!(log.offset_for_timestamp(1_990, end).unwrap(), Some(198));
    assert_eq!(log.offset_for_timestamp(1_991, end).unwrap(), None);
    // Not past the upper bound.
    assert_eq!(log.offset_for_timestamp(1_500, 50).unwrap(), None);
}

#[test]
fn open_time_does_not_read_sealed_segments_even_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        checkpoint_interval_bytes: 1,
        ..small_segments(4096)
    };
    let storage = Arc::new(FaultyStorage::new());
    {
        let (log, _) = open_on(dir.path(), config.clone(), storage.clone());
        for i in 0..500 {
            append(&log, batch(&format!("c{i}"), 1, 200, i));
            log.flush().unwrap();
            if log.checkpoint_due() {
                log.checkpoint(&[]).unwrap();
            }
        }
        // Crash with an unflushed tail.
        append(&log, batch("tail", 1, 200, 1));
    }
    let fresh = Arc::new(FaultyStorage::new());
    let (log, report) = open_on(dir.path(), config, fresh.clone());
    assert!(!report.clean_shutdown);
    assert!(log.segment_count() > 20);
    // Only the one unflushed batch was read.
    assert!(
        fresh.bytes_read("log") < 1024,
        "read {} bytes",
        fresh.bytes_read("log")
    );
    assert_eq!(log.end_offset(), 501);
}

#[test]
fn a_log_keeps_few_sealed_segments_open_however_many_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments(4096));
    for i in 0..400 {
        append(&log, batch(&format!("f{i}"), 2, 1000, i));
    }
    assert!(
        log.segment_count() > 100,
        "{} segments",
        log.segment_count()
    );
    // Writing closes each segment as it is sealed.
    assert_eq!(log.open_sealed_segments(), 0);
    // Reading everything opens each, but only the most recent few stay open.
    assert_eq!(read_all(&log, 0, log.end_offset()).len(), 800);
    let open = log.open_sealed_segments();
    assert!(
        open <= strata_broker::log::OPEN_SEALED_SEGMENTS,
        "{open} sealed segments still open"
    );
    // And closed segments read again fine.
    assert_eq!(read_all(&log, 0, 10).len(), 10);
}

#[test]
fn damage_in_a_sealed_segment_past_the_checkpoint_deletes_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        checkpoint_interval_bytes: u64::MAX,
        ..small_segments(4096)
    };
    let end;
    {
        let (log, _) = open(dir.path(), config.clone());
        log.checkpoint(&[]).unwrap();
        for i in 0..200 {
            append(&log, batch(&format!("d{i}"), 2, 200, i));
        }
        log.flush().unwrap();
        end = log.end_offset();
        assert!(log.segment_count() > 5);
        // A crash: every segment past the first checkpoint gets rescanned.
    }
    let mut logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let damaged = &logs[2];
    let mut bytes = std::fs::read(damaged).unwrap();
    let at = HEADER_BYTES + 20;
    bytes[at] ^= 0x20;
    std::fs::write(damaged, bytes).unwrap();
    let damaged_base: u64 = damaged
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let (log, report) = open(dir.path(), config);
    assert_eq!(
        report.truncated_bytes, 0,
        "acknowledged data after the damage was cut"
    );
    assert_eq!(report.damaged_segments, 1);
    assert_eq!(log.end_offset(), end, "every later record is still there");
    // Reads before the damage work; reading the damaged batch fails loudly;
    // later segments read normally.
    assert_eq!(read_all(&log, 0, damaged_base).len() as u64, damaged_base);
    assert!(matches!(
        log.read(damaged_base, 1 << 20, end),
        Err(LogError::Corrupt { .. })
    ));
    let next_base: u64 = logs[3]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(read_all(&log, next_base, end).len() as u64, end - next_base);
    // And the log still takes writes.
    assert_eq!(append(&log, batch("after", 1, 1, 1)), end);
}

#[test]
fn a_damaged_length_field_is_not_read_as_a_huge_batch() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = crashed_log(dir.path(), 3, LogConfig::default());
    let file = active_log_file(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    // The third batch claims to be 1 GiB long.
    let third = (sizes[0] + sizes[1]) as usize;
    bytes[third + 8..third + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let (log, report) = open(dir.path(), LogConfig::default());
    assert_eq!(log.end_offset(), 6);
    assert_eq!(report.truncated_bytes, sizes[2]);
}

#[test]
fn committed_reads_hand_out_the_same_bytes_and_outlive_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_segments(1 << 20)
    };
    let (log, _) = open(dir.path(), config);
    for i in 0..600 {
        append(&log, batch(&format!("v{i}"), 4, 1000, i));
    }
    let end = log.end_offset();
    // Reads large enough to be served as views of the page cache, from
    // offsets inside batches and across segment ends, equal the copies.
    let mut views = Vec::new();
    let mut offset = 5;
    while offset < end {
        let copy = log.read(offset, 512 << 10, end).unwrap();
        let view = log.read_committed(offset, 512 << 10, end).unwrap();
        assert_eq!(view.next_offset, copy.next_offset, "at {offset}");
        assert_eq!(view.bytes, copy.bytes, "at {offset}");
        views.push(view.bytes);
        offset = copy.next_offset;
    }
    assert!(views.len() >= 4, "{} reads", views.len());
    let small = log.read_committed(7, 1, end).unwrap();
    assert_eq!(small.bytes, log.read(7, 1, end).unwrap().bytes);

    // Retention deletes the segments the views were taken from; the views
    // stay readable and intact.
    log.flush().unwrap();
    log.checkpoint(&[]).unwrap();
    let report = log.enforce_retention(1_000).unwrap();
    assert!(report.segments_deleted >= 2, "{report:?}");
    let mut records = 0;
    for view in views {
        for batch in Batches::new(view) {
            records += batch
                .expect("a view of a deleted segment still verifies")
                .0
                .record_count;
        }
    }
    assert_eq!(u64::from(records), end - 4, "every record from offset 4 on");
}
