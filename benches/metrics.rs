//! What request metrics cost the broker, per request: the counters and the
//! latency histogram a produce request records (`Metrics::produce_ok`) and
//! those of a fetch response, enabled and disabled (`serve --no-metrics`).
//!
//! The issue target is produce throughput with metrics ≥ 0.97 × without.
//! End to end, that ratio is inside this machine's disk noise (see
//! docs/benchmarks.md), so the cost is bounded from here instead: a produce
//! request of a 1 MiB batch costs the broker hundreds of microseconds of CPU
//! (CRC check, write, group commit, gRPC), and its metrics cost is this
//! benchmark's nanoseconds. Per-partition and per-group series are computed
//! at scrape time, not per request; `render` measures a scrape.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use strata_broker::metrics::Metrics;

const BATCH_BYTES: u64 = 1024 * 1024;

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_per_request");
    for (name, enabled) in [("enabled", true), ("disabled", false)] {
        let metrics = Metrics::new(enabled);
        group.bench_function(format!("produce_ok_{name}"), |b| {
            b.iter(|| {
                metrics.produce_ok(
                    black_box(BATCH_BYTES),
                    black_box(false),
                    black_box(Duration::from_micros(2_500)),
                )
            })
        });
        group.bench_function(format!("fetch_response_{name}"), |b| {
            b.iter(|| metrics.fetch_response(black_box(BATCH_BYTES)))
        });
    }
    group.finish();
}

fn scrape(c: &mut Criterion) {
    let metrics = Metrics::new(true);
    for i in 0..10_000u64 {
        metrics.produce_ok(BATCH_BYTES, false, Duration::from_micros(i));
    }
    c.bench_function("metrics_render_node_series", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(16 * 1024);
            metrics.render(&mut out);
            black_box(out)
        })
    });
}

criterion_group!(benches, per_request, scrape);
criterion_main!(benches);
