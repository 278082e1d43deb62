//! Plain HTTP on the control port: `GET /metrics` (Prometheus text),
//! `GET /healthz` (liveness) and `GET /readyz` (readiness).
//!
//! Health answers come from memory only — never the disk, never a data-plane
//! lock — so they stay fast while the data port is saturated, and they reflect
//! the current state on every call (nothing is cached, failures included).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::broker::Broker;
use crate::metrics::{header as help, sample};

pub fn routes(broker: Broker) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(broker)
}

async fn healthz(State(broker): State<Broker>) -> impl IntoResponse {
    if broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(broker): State<Broker>) -> impl IntoResponse {
    if broker.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(broker): State<Broker>) -> impl IntoResponse {
    let body = render(&broker);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// The whole exposition: node-wide series, budgets, and per-partition series.
pub fn render(broker: &Broker) -> String {
    let mut out = String::with_capacity(16 * 1024);
    broker.metrics().render(&mut out);

    for (budget, name) in [
        (broker.produce_budget(), "produce"),
        (broker.fetch_budget(), "fetch"),
    ] {
        let used = format!("strata_{name}_inflight_bytes");
        help(
            &mut out,
            &used,
            &format!("Bytes held against the {name} budget now."),
            "gauge",
        );
        sample(&mut out, &used, &[], budget.in_use_bytes() as f64);
        let cap = format!("strata_{name}_budget_bytes");
        help(
            &mut out,
            &cap,
            &format!("Capacity of the {name} byte budget."),
            "gauge",
        );
        sample(&mut out, &cap, &[], budget.capacity_bytes() as f64);
    }

    let topics = broker.topics();
    type Getter = fn(&crate::partition::Partition) -> f64;
    let series: [(&str, &str, &str, Getter); 8] = [
        (
            "strata_partition_high_watermark",
            "gauge",
            "Offset below which records are committed.",
            |p| p.high_watermark() as f64,
        ),
        (
            "strata_partition_log_end_offset",
            "gauge",
            "Offset the next appended record gets.",
            |p| p.end_offset() as f64,
        ),
        (
            "strata_partition_log_start_offset",
            "gauge",
            "First offset still in the log.",
            |p| p.start_offset() as f64,
        ),
        (
            "strata_partition_log_size_bytes",
            "gauge",
            "Bytes in the partition's segments (as of the last maintenance pass).",
            |p| p.log().cached_size_bytes() as f64,
        ),
        (
            "strata_partition_segments",
            "gauge",
            "Segments in the partition's log.",
            |p| p.log().segment_count() as f64,
        ),
        (
            "strata_partition_appended_batches_total",
            "counter",
            "Batches appended since start.",
            |p| {
                p.commit_stats()
                    .batches
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
            },
        ),
        (
            "strata_partition_group_commits_total",
            "counter",
            "Group-commit rounds (one fsync each when data was appended).",
            |p| {
                p.commit_stats()
                    .groups
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
            },
        ),
        (
            "strata_partition_fsync_seconds_total",
            "counter",
            "Time spent in fsync by the partition's writer.",
            |p| {
                p.commit_stats()
                    .fsync_nanos
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
                    / 1e9
            },
        ),
    ];
    for (name, kind, text, get) in series {
        help(&mut out, name, text, kind);
        for topic in &topics {
            for p in &topic.partitions {
                let index = p.index().to_string();
                sample(
                    &mut out,
                    name,
                    &[("topic", &topic.spec.name), ("partition", &index)],
                    get(p),
                );
            }
        }
    }
    out
}
