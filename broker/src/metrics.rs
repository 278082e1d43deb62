//! Counters, gauges and histograms kept in atomics, rendered in the Prometheus
//! text exposition format (version 0.0.4).
//!
//! Recording is a relaxed atomic add: cheap enough for every request. Labels
//! are bounded by construction: gRPC codes (17 values), and per-partition or
//! per-group series whose count the operator controls; never per-producer or
//! per-connection. Rendering reads only memory (never the disk).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge counting things that come and go.
#[derive(Debug, Default)]
pub struct IntGauge(std::sync::atomic::AtomicI64);

impl IntGauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding an f64.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set_f64(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Upper bounds (seconds) of latency histogram buckets.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds of group-commit size buckets (batches per fsync).
pub const GROUP_SIZE_BUCKETS: [f64; 10] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        Self::render_merged(out, name, help, std::iter::once(self));
    }

    /// Renders several histograms with the same buckets as one (e.g. every
    /// partition's fsync times as the node's).
    pub fn render_merged<'a>(
        out: &mut String,
        name: &str,
        help: &str,
        parts: impl Iterator<Item = &'a Histogram> + Clone,
    ) {
        header(out, name, help, "histogram");
        let Some(first) = parts.clone().next() else {
            return;
        };
        let bounds = first.bounds;
        let count_at = |i: usize| {
            parts
                .clone()
                .map(|h| h.counts[i].load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += count_at(i);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += count_at(bounds.len());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum: u64 = parts
            .clone()
            .map(|h| h.sum_micro.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "{name}_sum {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// gRPC status code names, indexed by code number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One counter per gRPC code.
#[derive(Debug, Default)]
pub struct CodeCounters([Counter; 17]);

impl CodeCounters {
    pub fn inc(&self, code: i32) {
        if let Some(c) = self.0.get(code as usize) {
            c.inc();
        }
    }
    pub fn get(&self, code: i32) -> u64 {
        self.0.get(code as usize).map_or(0, Counter::get)
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "counter");
        for (i, c) in self.0.iter().enumerate() {
            let v = c.get();
            if v > 0 {
                let _ = writeln!(out, "{name}{{code=\"{}\"}} {v}", GRPC_CODES[i]);
            }
        }
    }
}

pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample with labels; label values are escaped.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{escaped}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Why a request was refused at the door (the `reason` label of
/// `strata_auth_denied_total`; a fixed set, so the series stay bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Unauthenticated,
    PermissionDenied,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::PermissionDenied => "permission_denied",
        }
    }
}

/// The node-wide request metrics. Per-partition and per-group series are
/// computed from broker state at scrape time (see `server::http`).
///
/// Recording goes through the methods below so that a broker configured
/// without metrics skips it in one place (used to measure their cost).
#[derive(Debug)]
pub struct Metrics {
    enabled: bool,
    produce_requests: Counter,
    produce_bytes: Counter,
    produce_errors: CodeCounters,
    produce_duplicates: Counter,
    produce_latency: Histogram,
    fetch_streams: Counter,
    fetch_streams_active: IntGauge,
    fetch_responses: Counter,
    fetch_bytes: Counter,
    fetch_errors: CodeCounters,
    backpressure_rejections: Counter,
    pub retention_deleted_bytes: Counter,
    pub recovery_seconds: Gauge,
    pub recovery_truncated_bytes: Counter,
    control_requests: Counter,
    // Security series are recorded even with metrics off: they are rare and
    // an operator needs them.
    auth_denied_unauthenticated: Counter,
    auth_denied_permission: Counter,
    quota_throttled: Counter,
    quota_throttle_ms: Counter,
    connections_refused: Counter,
    fetch_idle_closed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(true)
    }
}

impl Metrics {
    pub fn new(enabled: bool) -> Self {
        Metrics {
            enabled,
            produce_requests: Counter::default(),
            produce_bytes: Counter::default(),
            produce_errors: CodeCounters::default(),
            produce_duplicates: Counter::default(),
            produce_latency: Histogram::new(&LATENCY_BUCKETS_SECONDS),
            fetch_streams: Counter::default(),
            fetch_streams_active: IntGauge::default(),
            fetch_responses: Counter::default(),
            fetch_bytes: Counter::default(),
            fetch_errors: CodeCounters::default(),
            backpressure_rejections: Counter::default(),
            retention_deleted_bytes: Counter::default(),
            recovery_seconds: Gauge::default(),
            recovery_truncated_bytes: Counter::default(),
            control_requests: Counter::default(),
            auth_denied_unauthenticated: Counter::default(),
            auth_denied_permission: Counter::default(),
            quota_throttled: Counter::default(),
            quota_throttle_ms: Counter::default(),
            connections_refused: Counter::default(),
            fetch_idle_closed: Counter::default(),
        }
    }

    pub fn produce_ok(&self, bytes: u64, duplicate: bool, latency: Duration) {
        if self.enabled {
            self.produce_requests.inc();
            self.produce_bytes.add(bytes);
            if duplicate {
                self.produce_duplicates.inc();
            }
            self.produce_latency.observe_duration(latency);
        }
    }

    pub fn produce_error(&self, code: i32, overloaded: bool) {
        if self.enabled {
            self.produce_requests.inc();
            self.produce_errors.inc(code);
            if overloaded {
                self.backpressure_rejections.inc();
            }
        }
    }

    pub fn fetch_stream_opened(&self) {
        if self.enabled {
            self.fetch_streams.inc();
            self.fetch_streams_active.inc();
        }
    }

    pub fn fetch_stream_closed(&self) {
        if self.enabled {
            self.fetch_streams_active.dec();
        }
    }

    pub fn fetch_response(&self, bytes: u64) {
        if self.enabled {
            self.fetch_responses.inc();
            self.fetch_bytes.add(bytes);
        }
    }

    pub fn fetch_error(&self, code: i32) {
        if self.enabled {
            self.fetch_errors.inc(code);
        }
    }

    pub fn control_request(&self) {
        if self.enabled {
            self.control_requests.inc();
        }
    }

    pub fn auth_denied(&self, reason: DenyReason) {
        match reason {
            DenyReason::Unauthenticated => self.auth_denied_unauthenticated.inc(),
            DenyReason::PermissionDenied => self.auth_denied_permission.inc(),
        }
    }

    pub fn auth_denied_count(&self, reason: DenyReason) -> u64 {
        match reason {
            DenyReason::Unauthenticated => self.auth_denied_unauthenticated.get(),
            DenyReason::PermissionDenied => self.auth_denied_permission.get(),
        }
    }

    /// A produce refused by its principal's quota, told to wait `wait`.
    pub fn quota_throttled(&self, wait: Duration) {
        self.quota_throttled.inc();
        self.quota_throttle_ms.add(wait.as_millis() as u64);
    }

    /// A connection closed at once because its listener was full.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A fetch stream closed because its consumer read nothing for too long.
    pub fn fetch_idle_closed(&self) {
        self.fetch_idle_closed.inc();
    }

    /// Renders the node-wide series.
    pub fn render(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, c: &Counter| {
            header(out, name, help, "counter");
            sample(out, name, &[], c.get() as f64);
        };
        counter(
            out,
            "strata_produce_requests_total",
            "Produce requests received.",
            &self.produce_requests,
        );
        counter(
            out,
            "strata_produce_bytes_total",
            "Record batch bytes accepted by produce.",
            &self.produce_bytes,
        );
        self.produce_errors.render(
            out,
            "strata_produce_errors_total",
            "Produce requests answered with an error, by gRPC code.",
        );
        counter(
            out,
            "strata_produce_duplicates_total",
            "Retried batches answered with their original offset.",
            &self.produce_duplicates,
        );
        self.produce_latency.render(
            out,
            "strata_produce_latency_seconds",
            "Time from receiving a produce request to answering it.",
        );
        counter(
            out,
            "strata_fetch_streams_total",
            "Fetch streams opened.",
            &self.fetch_streams,
        );
        header(
            out,
            "strata_fetch_streams_active",
            "Fetch streams open now.",
            "gauge",
        );
        sample(
            out,
            "strata_fetch_streams_active",
            &[],
            self.fetch_streams_active.get() as f64,
        );
        counter(
            out,
            "strata_fetch_responses_total",
            "Fetch response messages sent.",
            &self.fetch_responses,
        );
        counter(
            out,
            "strata_fetch_bytes_total",
            "Record batch bytes sent to consumers.",
            &self.fetch_bytes,
        );
        self.fetch_errors.render(
            out,
            "strata_fetch_errors_total",
            "Fetch streams or partitions ended with an error, by gRPC code.",
        );
        counter(
            out,
            "strata_backpressure_rejections_total",
            "Requests refused with RESOURCE_EXHAUSTED because a byte budget was full.",
            &self.backpressure_rejections,
        );
        counter(
            out,
            "strata_retention_deleted_bytes_total",
            "Bytes of segments deleted by retention.",
            &self.retention_deleted_bytes,
        );
        counter(
            out,
            "strata_control_requests_total",
            "Requests served on the control port.",
            &self.control_requests,
        );
        header(
            out,
            "strata_auth_denied_total",
            "Requests refused by authentication or authorization, by reason.",
            "counter",
        );
        for reason in [DenyReason::Unauthenticated, DenyReason::PermissionDenied] {
            sample(
                out,
                "strata_auth_denied_total",
                &[("reason", reason.label())],
                self.auth_denied_count(reason) as f64,
            );
        }
        counter(
            out,
            "strata_quota_throttled_total",
            "Produce requests refused (RESOURCE_EXHAUSTED) because their principal's quota was spent.",
            &self.quota_throttled,
        );
        header(
            out,
            "strata_quota_throttle_seconds_total",
            "Sum of the waits told to quota-throttled producers.",
            "counter",
        );
        sample(
            out,
            "strata_quota_throttle_seconds_total",
            &[],
            self.quota_throttle_ms.get() as f64 / 1000.0,
        );
        counter(
            out,
            "strata_connections_refused_total",
            "Connections closed at once because their listener had --max-connections open.",
            &self.connections_refused,
        );
        counter(
            out,
            "strata_fetch_idle_closed_total",
            "Fetch streams closed because their consumer read nothing for --fetch-idle-timeout-ms.",
            &self.fetch_idle_closed,
        );
        header(
            out,
            "strata_recovery_seconds",
            "Time the node took to open its data directory at start-up.",
            "gauge",
        );
        sample(
            out,
            "strata_recovery_seconds",
            &[],
            self.recovery_seconds.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let h = Histogram::new(&LATENCY_BUCKETS_SECONDS);
        h.observe(0.0002);
        h.observe(0.003);
        h.observe(100.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count 3\n"));
        let mut out = String::new();
        sample(&mut out, "m", &[("topic", "a\"b")], 1.0);
        assert_eq!(out, "m{topic=\"a\\\"b\"} 1\n");
    }
}
