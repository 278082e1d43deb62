//! Record-batch codec micro-benchmarks, in bytes per second: a producer
//! encoding 64 records of 1 KiB (`BatchBuilder` push + finish); the broker's
//! check of every produced batch (`verify`, 64 KiB and 1 MiB batches) and the
//! replicated variant that also restamps a changed Raft term
//! (`verify_and_stamp`); and a consumer's full decode of a 64 KiB batch
//! (`Records` iterated). The codec has no issue target of its own: these
//! numbers say how much of the log targets' budget it takes, since `verify`
//! runs on the append path (target: append ≥ 0.8 of raw write + fsync) and
//! decode behind every read (target: warm read ≥ 1 GB/s); see benches/log.rs.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_proto::batch::{BatchBuilder, Record, Records, verify, verify_and_stamp};

const KIB: usize = 1024;
const RECORD_BYTES: usize = KIB;
const TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// The `i`th record: a short key and a 1 KiB value, its timestamp a little
/// later than the previous one's (as from a live producer).
fn record(i: usize) -> Record {
    Record {
        timestamp: TIMESTAMP_MS + i as i64,
        key: Some(Bytes::from(format!("key-{i}"))),
        value: Some(Bytes::from(vec![b'v'; RECORD_BYTES])),
        headers: Vec::new(),
    }
}

fn encode(records: &[Record]) -> Bytes {
    let mut builder = BatchBuilder::default();
    for r in records {
        builder.push(r).expect("a 1 KiB record fits in a batch");
    }
    builder.finish()
}

/// As many records as fit in `max_bytes`, encoded.
fn packed(max_bytes: usize) -> Bytes {
    let mut builder = BatchBuilder::default();
    for i in 0.. {
        let r = record(i);
        if builder.encoded_len() + builder.record_encoded_len(&r) > max_bytes {
            break;
        }
        builder.push(&r).expect("a 1 KiB record fits in a batch");
    }
    builder.finish()
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));

    let records: Vec<Record> = (0..64).map(record).collect();
    group.throughput(Throughput::Bytes(encode(&records).len() as u64));
    group.bench_function(BenchmarkId::new("encode", "64x1KiB"), |b| {
        b.iter(|| encode(black_box(&records)))
    });

    for (label, max_bytes) in [("64KiB", 64 * KIB), ("1MiB", 1024 * KIB)] {
        let batch = packed(max_bytes);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::new("verify", label), |b| {
            b.iter(|| verify(black_box(&batch)).expect("a well-formed batch"))
        });
        let mut stamped = batch.to_vec();
        let mut term = 0u64;
        group.bench_function(BenchmarkId::new("verify_and_stamp", label), |b| {
            b.iter(|| {
                // A new term every time, so the CRC is always resealed.
                term += 1;
                verify_and_stamp(black_box(&mut stamped), term, term, term)
                    .expect("a well-formed batch")
            })
        });
    }

    let batch = packed(64 * KIB);
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function(BenchmarkId::new("decode", "64KiB"), |b| {
        b.iter(|| {
            let mut value_bytes = 0;
            // The clone shares the buffer; decoding slices it, copying no payload.
            for item in Records::new(batch.clone()).expect("a well-formed batch") {
                let (_, record) = item.expect("a well-formed record");
                value_bytes += record.value.map_or(0, |v| v.len());
            }
            value_bytes
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
