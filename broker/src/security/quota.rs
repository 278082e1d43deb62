//! Per-principal produce byte-rate quotas: one token bucket per principal
//! with a quota, shared by all of its connections.
//!
//! The bucket may go into debt: a batch is admitted whenever the bucket is
//! not in debt, and its bytes are taken even if that overdraws it. So a batch
//! larger than a second's worth still gets through, and the long-run rate
//! never exceeds the quota. While in debt, producing is refused with the time
//! until the debt is repaid, which the client honours as a retry hint
//! (RESOURCE_EXHAUSTED, the same path as the broker's byte budgets): a
//! throttled producer slows down, it is not disconnected and loses nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::tokens::AuthTable;

/// Seconds of quota a bucket holds when full: the burst a quiet principal
/// may send at once.
const QUOTA_BURST_SECONDS: f64 = 1.0;

/// Shortest retry hint, so a nearly repaid debt is not polled in a busy loop.
const QUOTA_MIN_RETRY_MS: u64 = 5;

#[derive(Debug)]
struct Bucket {
    rate_bytes_per_sec: f64,
    /// Negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn admit(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let burst = self.rate_bytes_per_sec * QUOTA_BURST_SECONDS;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_bytes_per_sec).min(burst);
        self.refilled = now;
        if self.tokens < 0.0 {
            let wait = -self.tokens / self.rate_bytes_per_sec;
            return Err(
                Duration::from_secs_f64(wait).max(Duration::from_millis(QUOTA_MIN_RETRY_MS))
            );
        }
        self.tokens -= bytes as f64;
        Ok(())
    }
}

/// The buckets of every principal with a quota; built once from the auth
/// file, so the map never grows at run time.
#[derive(Debug, Default)]
pub struct Quotas {
    buckets: HashMap<String, Mutex<Bucket>>,
}

impl Quotas {
    pub fn new(table: &AuthTable) -> Quotas {
        let now = Instant::now();
        let buckets = table
            .principals()
            .filter_map(|p| {
                let rate = p.produce_bytes_per_sec? as f64;
                Some((
                    p.name.clone(),
                    Mutex::new(Bucket {
                        rate_bytes_per_sec: rate,
                        tokens: rate * QUOTA_BURST_SECONDS,
                        refilled: now,
                    }),
                ))
            })
            .collect();
        Quotas { buckets }
    }

    /// Takes `bytes` from `principal`'s bucket, or says how long to wait.
    pub fn admit(&self, principal: &str, bytes: u64) -> Result<(), Duration> {
        match self.buckets.get(principal) {
            None => Ok(()),
            Some(bucket) => bucket.lock().admit(bytes, Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_in_debt_refuses_until_the_debt_is_repaid() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate_bytes_per_sec: 1000.0,
            tokens: 1000.0,
            refilled: t0,
        };
        // A batch larger than the burst is admitted, leaving a debt.
        assert!(b.admit(3000, t0).is_ok());
        let wait = b.admit(1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 2.0).abs() < 0.01, "{wait:?}");
        assert!(b.admit(1, t0 + Duration::from_millis(1500)).is_err());
        assert!(b.admit(1, t0 + Duration::from_millis(2001)).is_ok());
    }

    #[test]
    fn a_quiet_bucket_fills_only_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate_bytes_per_sec: 1000.0,
            tokens: 0.0,
            refilled: t0,
        };
        // 100 s of quiet saved one second's worth, not 100.
        assert!(b.admit(1500, t0 + Duration::from_secs(100)).is_ok());
        assert!(b.admit(1, t0 + Duration::from_secs(100)).is_err());
    }
}
