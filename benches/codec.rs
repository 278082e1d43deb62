//! Record-batch codec micro-benchmarks: building a batch of 1 KiB records,
//! the broker's validation (`verify`, and `verify_and_stamp` with a new Raft
//! term), and the consumer's full record decode. All in bytes per second.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_proto::batch::{BatchBuilder, Record, Records, verify, verify_and_stamp};

const RECORD_BYTES: usize = 1024;

fn records(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'v'; RECORD_BYTES])),
            headers: Vec::new(),
        })
        .collect()
}

fn encode(records: &[Record]) -> Bytes {
    let mut b = BatchBuilder::default();
    for r in records {
        b.push(r).expect("record fits");
    }
    b.finish()
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.measurement_time(Duration::from_secs(3));
    let small = records(64);
    let encoded_small = encode(&small);
    group.throughput(Throughput::Bytes(encoded_small.len() as u64));
    group.bench_function("encode/64KiB", |b| b.iter(|| black_box(encode(&small))));
    group.bench_function("decode/64KiB", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in Records::new(encoded_small.clone()).expect("valid") {
                n += r.expect("record").1.value.map_or(0, |v| v.len());
            }
            black_box(n)
        })
    });
    let large = encode(&records(1000));
    for (label, batch) in [("64KiB", encoded_small.clone()), ("1MiB", large)] {
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::new("verify", label), |b| {
            b.iter(|| black_box(verify(&batch).expect("valid")))
        });
        let mut owned = batch.to_vec();
        let mut term = 0u64;
        group.bench_function(BenchmarkId::new("verify_and_stamp", label), |b| {
            b.iter(|| {
                term += 1;
                black_box(verify_and_stamp(&mut owned, 42, term).expect("valid"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
