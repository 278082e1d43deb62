//! What a bench run measured, as one JSON object (`--json`) or a few lines of
//! text. Latencies come from an HDR histogram in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latencies above this are clamped (an hour, in µs).
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_MICROS);
    h.record(micros).expect("clamped into range");
}

#[derive(Debug)]
pub struct Report {
    pub mode: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// Extra facts about the run (producers, partitions, acks, ...).
    pub details: serde_json::Map<String, Value>,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

impl Report {
    pub fn new(mode: &'static str) -> Self {
        Report {
            mode,
            messages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            details: serde_json::Map::new(),
        }
    }

    pub fn detail(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
    }

    pub fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn json(&self) -> Value {
        let mut v = json!({
            "mode": self.mode,
            "messages": self.messages,
            "bytes": self.bytes,
            "seconds": self.seconds(),
            "mb_per_s": self.bytes as f64 / 1e6 / self.seconds(),
            "msgs_per_s": self.messages as f64 / self.seconds(),
            "p50_ms": ms(&self.latency, 0.50),
            "p90_ms": ms(&self.latency, 0.90),
            "p99_ms": ms(&self.latency, 0.99),
            "p999_ms": ms(&self.latency, 0.999),
            "max_ms": if self.latency.is_empty() { 0.0 } else { self.latency.max() as f64 / 1000.0 },
        });
        if let Value::Object(map) = &mut v {
            for (k, val) in &self.details {
                map.insert(k.clone(), val.clone());
            }
        }
        v
    }

    pub fn print(&self) {
        println!(
            "{}: {} messages, {:.1} MB in {:.2} s: {:.1} MB/s, {:.0} msgs/s",
            self.mode,
            self.messages,
            self.bytes as f64 / 1e6,
            self.seconds(),
            self.bytes as f64 / 1e6 / self.seconds(),
            self.messages as f64 / self.seconds()
        );
        if !self.latency.is_empty() {
            println!(
                "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                ms(&self.latency, 0.5),
                ms(&self.latency, 0.9),
                ms(&self.latency, 0.99),
                ms(&self.latency, 0.999),
                self.latency.max() as f64 / 1000.0
            );
        }
        let details: Vec<String> = self
            .details
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !details.is_empty() {
            println!("{}", details.join(" "));
        }
    }
}
