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
use crate::groups::monitor::GroupHealth;
use crate::groups::status::Status;
use crate::metrics::{Histogram, header as help, sample};

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
    let partitions: Vec<_> = topics.iter().flat_map(|t| t.partitions.iter()).collect();
    Histogram::render_merged(
        &mut out,
        "strata_fsync_seconds",
        "Time per fsync of a partition's log (one per group commit).",
        partitions.iter().map(|p| &p.commit_stats().fsync_seconds),
    );
    Histogram::render_merged(
        &mut out,
        "strata_group_commit_batches",
        "Batches made durable by one fsync.",
        partitions
            .iter()
            .map(|p| &p.commit_stats().batches_per_fsync),
    );
    let truncated: u64 = partitions
        .iter()
        .map(|p| p.open_report().truncated_bytes)
        .sum();
    let scanned: u64 = partitions
        .iter()
        .map(|p| p.open_report().scanned_bytes)
        .sum();
    help(
        &mut out,
        "strata_recovery_truncated_bytes",
        "Bytes of torn or corrupt log tail cut off when this node started.",
        "gauge",
    );
    sample(
        &mut out,
        "strata_recovery_truncated_bytes",
        &[],
        truncated as f64,
    );
    let damaged: u64 = partitions
        .iter()
        .map(|p| p.open_report().damaged_segments)
        .sum();
    help(
        &mut out,
        "strata_recovery_damaged_segments",
        "Sealed segments found damaged at start-up (kept; reads of the damage fail with DATA_LOSS).",
        "gauge",
    );
    sample(
        &mut out,
        "strata_recovery_damaged_segments",
        &[],
        damaged as f64,
    );
    help(
        &mut out,
        "strata_recovery_scanned_bytes",
        "Bytes of log tail checked at start-up (past the recovery checkpoints).",
        "gauge",
    );
    sample(
        &mut out,
        "strata_recovery_scanned_bytes",
        &[],
        scanned as f64,
    );
    render_groups(&mut out, &broker.group_monitor().latest());
    render_raft(&mut out, broker);
    out
}

/// Raft series of every group on this node (one per replicated partition,
/// plus `__metadata`): label cardinality is bounded by partitions × replicas.
fn render_raft(out: &mut String, broker: &Broker) {
    let groups = broker.raft_groups().all();
    if groups.is_empty() {
        return;
    }
    let views: Vec<_> = groups
        .iter()
        .map(|(name, member)| {
            let m = member.raft.metrics().borrow().clone();
            (name.as_str(), member, m)
        })
        .collect();
    type Get = fn(&openraft::RaftMetrics<u64, openraft::BasicNode>) -> f64;
    let series: [(&str, &str, &str, Get); 4] = [
        (
            "strata_raft_term",
            "gauge",
            "Current Raft term of the group.",
            |m| m.current_term as f64,
        ),
        (
            "strata_raft_leader",
            "gauge",
            "Node id of the group's leader as this node knows it (0: none).",
            |m| m.current_leader.unwrap_or(0) as f64,
        ),
        (
            "strata_raft_last_log_index",
            "gauge",
            "Index of the last entry in this node's log of the group.",
            |m| m.last_log_index.unwrap_or(0) as f64,
        ),
        (
            "strata_raft_applied_index",
            "gauge",
            "Index of the last entry this node applied (committed).",
            |m| m.last_applied.map_or(0, |l| l.index) as f64,
        ),
    ];
    for (name, kind, text, get) in series {
        help(out, name, text, kind);
        for (group, _, m) in &views {
            sample(out, name, &[("group", group)], get(m));
        }
    }
    help(
        out,
        "strata_raft_leader_changes_total",
        "Times the leader this node knows of changed, since start.",
        "counter",
    );
    for (group, member, _) in &views {
        let changes = member
            .leader_changes
            .load(std::sync::atomic::Ordering::Relaxed);
        sample(
            out,
            "strata_raft_leader_changes_total",
            &[("group", group)],
            changes as f64,
        );
    }
    help(
        out,
        "strata_raft_replication_lag_entries",
        "On a leader: entries a follower still lacks (last log index minus its matched index).",
        "gauge",
    );
    for (group, _, m) in &views {
        let Some(replication) = &m.replication else {
            continue;
        };
        let last = m.last_log_index.unwrap_or(0);
        for (follower, matched) in replication {
            if Some(*follower) == m.current_leader {
                continue;
            }
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            let follower = follower.to_string();
            sample(
                out,
                "strata_raft_replication_lag_entries",
                &[("group", group), ("follower", &follower)],
                lag as f64,
            );
        }
    }
}

/// Consumer group series, from the maintenance loop's last evaluation.
fn render_groups(out: &mut String, groups: &[GroupHealth]) {
    help(
        out,
        "strata_group_members",
        "Live members of a consumer group.",
        "gauge",
    );
    for g in groups {
        sample(
            out,
            "strata_group_members",
            &[("group", &g.group)],
            g.members as f64,
        );
    }
    help(
        out,
        "strata_group_status",
        "1 for the group's current status (its worst partition's).",
        "gauge",
    );
    for g in groups {
        for status in Status::ALL {
            let value = if g.status == status { 1.0 } else { 0.0 };
            sample(
                out,
                "strata_group_status",
                &[("group", &g.group), ("status", status.name())],
                value,
            );
        }
    }
    type Value = fn(&crate::groups::monitor::PartitionHealth) -> f64;
    let families: [(&str, &str, Value); 2] = [
        (
            "strata_group_lag_messages",
            "Records between the committed offset and the high watermark.",
            |p| p.lag_messages as f64,
        ),
        (
            "strata_group_lag_seconds",
            "Age of the oldest record the group has not consumed.",
            |p| p.lag_seconds,
        ),
    ];
    for (name, text, value) in families {
        help(out, name, text, "gauge");
        for g in groups {
            for p in &g.partitions {
                let index = p.partition.to_string();
                sample(
                    out,
                    name,
                    &[
                        ("group", &g.group),
                        ("topic", &p.topic),
                        ("partition", &index),
                    ],
                    value(p),
                );
            }
        }
    }
    help(
        out,
        "strata_group_partition_status",
        "1 for the partition's current consumer status.",
        "gauge",
    );
    for g in groups {
        for p in &g.partitions {
            let index = p.partition.to_string();
            let labels = [
                ("group", g.group.as_str()),
                ("topic", &p.topic),
                ("partition", &index),
                ("status", p.status.name()),
            ];
            sample(out, "strata_group_partition_status", &labels, 1.0);
        }
    }
}
