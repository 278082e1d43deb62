//! Exponential backoff with full jitter: each wait is drawn uniformly from
//! zero up to an exponentially growing cap, so clients that failed together
//! do not retry together. A broker's retry-after hint is a floor.

use std::time::Duration;

use rand::Rng;

/// First backoff cap.
pub const RETRY_BACKOFF_BASE_MS: u64 = 50;

/// Largest backoff cap.
pub const RETRY_BACKOFF_MAX_MS: u64 = 2_000;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(RETRY_BACKOFF_BASE_MS),
            Duration::from_millis(RETRY_BACKOFF_MAX_MS),
        )
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait: uniform in `[hint, hint + cap]`, where the cap doubles
    /// per attempt up to the maximum and `hint` is the broker's retry-after.
    pub fn next(&mut self, hint: Option<Duration>) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let jitter = rand::rng().random_range(0..=cap.as_millis() as u64);
        hint.unwrap_or_default() + Duration::from_millis(jitter)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_respect_the_hint() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for attempt in 0..10u32 {
            let cap = (10u64 << attempt.min(16)).min(80);
            let d = b.next(None);
            assert!(
                d <= Duration::from_millis(cap),
                "attempt {attempt}: {d:?} > {cap} ms"
            );
        }
        let d = b.next(Some(Duration::from_millis(500)));
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(580));
    }

    #[test]
    fn jitter_spreads_retries() {
        let waits: std::collections::BTreeSet<_> = (0..50)
            .map(|_| Backoff::new(Duration::from_millis(1000), Duration::from_secs(1)).next(None))
            .collect();
        assert!(
            waits.len() > 10,
            "50 clients picked only {} distinct waits",
            waits.len()
        );
    }
}
