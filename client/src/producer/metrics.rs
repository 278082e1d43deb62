//! What a producer has done, for its user to read: how many records and
//! batches were acknowledged or failed, how large batches came out, how long
//! they waited before going and how long the broker took to answer, and how
//! often a batch was sent again. Kafka's producer reports much the same as
//! `record-error-total`, `record-queue-time-avg`, `request-latency-avg` and
//! `record-retry-total` (its `record-send-total` counts records sent rather
//! than acknowledged, and its `batch-size-avg` is in bytes: here
//! `bytes_acked / batches_acked`). They are the first numbers to read when
//! latency or throughput is not what it should be.
//!
//! Counted once per batch or request, never per record, with relaxed
//! atomics: a snapshot is a consistent view of each counter, not of all of
//! them at one instant.

use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a producer's counters since it was built
/// ([`Producer::metrics`](crate::Producer::metrics)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerMetrics {
    /// Records the broker acknowledged.
    pub records_acked: u64,
    /// Records whose batch failed for good (a refusal, the delivery
    /// timeout). Not counted: a record refused by `enqueue` (a full buffer,
    /// a closed producer), whose caller got the error at once, and records
    /// still queued when the runtime shut down, which fail with `Closed`.
    pub records_failed: u64,
    /// Batches sent at least once (an attempt that found no leader or could
    /// not connect sent nothing).
    pub batches_sent: u64,
    /// Batches the broker acknowledged.
    pub batches_acked: u64,
    /// Encoded bytes of the acknowledged batches.
    pub bytes_acked: u64,
    /// Sends of a batch after its first: after a refusal, a lost answer, a
    /// broken stream (or a broker that takes no produce streams) or a leader
    /// change.
    pub retries: u64,
    /// Summed over the batches sent: from a batch's first record to its
    /// first send (linger, a full pipeline, a busy sender).
    pub queue_time: Duration,
    /// Summed over the acknowledged batches: from the send that was
    /// answered to its answer (the network, the broker's append and, with
    /// `Acks::All`, its fsync; for the first batch on a new connection or
    /// stream, setting it up too).
    pub request_latency: Duration,
}

impl ProducerMetrics {
    /// Records per acknowledged batch, on average.
    pub fn mean_batch_records(&self) -> f64 {
        self.records_acked as f64 / self.batches_acked.max(1) as f64
    }

    /// How long a batch waited before it was first sent, on average.
    pub fn mean_queue_time(&self) -> Duration {
        mean(self.queue_time, self.batches_sent)
    }

    /// How long the broker took to answer an acknowledged batch, on average.
    pub fn mean_request_latency(&self) -> Duration {
        mean(self.request_latency, self.batches_acked)
    }
}

fn mean(total: Duration, count: u64) -> Duration {
    let nanos = total.as_nanos() / u128::from(count.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Sums two producers' counters (several producers of one application).
impl AddAssign for ProducerMetrics {
    fn add_assign(&mut self, other: Self) {
        self.records_acked += other.records_acked;
        self.records_failed += other.records_failed;
        self.batches_sent += other.batches_sent;
        self.batches_acked += other.batches_acked;
        self.bytes_acked += other.bytes_acked;
        self.retries += other.retries;
        self.queue_time += other.queue_time;
        self.request_latency += other.request_latency;
    }
}

/// The live counters, shared by a producer's partition queues.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    records_acked: AtomicU64,
    records_failed: AtomicU64,
    batches_sent: AtomicU64,
    batches_acked: AtomicU64,
    bytes_acked: AtomicU64,
    retries: AtomicU64,
    queue_nanos: AtomicU64,
    request_nanos: AtomicU64,
}

impl Counters {
    /// A batch goes out: its first send after `queued`, or a retry.
    pub fn sent(&self, first: Option<Duration>) {
        match first {
            Some(queued) => {
                self.batches_sent.fetch_add(1, Ordering::Relaxed);
                self.queue_nanos.fetch_add(nanos(queued), Ordering::Relaxed);
            }
            None => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A batch of `records` and `bytes` was acknowledged, answered `latency`
    /// after the send the answer was to.
    pub fn acked(&self, records: u32, bytes: usize, latency: Duration) {
        self.records_acked
            .fetch_add(u64::from(records), Ordering::Relaxed);
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.bytes_acked.fetch_add(bytes as u64, Ordering::Relaxed);
        self.request_nanos
            .fetch_add(nanos(latency), Ordering::Relaxed);
    }

    /// A batch of `records` failed for good.
    pub fn failed(&self, records: u32) {
        self.records_failed
            .fetch_add(u64::from(records), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProducerMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProducerMetrics {
            records_acked: get(&self.records_acked),
            records_failed: get(&self.records_failed),
            batches_sent: get(&self.batches_sent),
            batches_acked: get(&self.batches_acked),
            bytes_acked: get(&self.bytes_acked),
            retries: get(&self.retries),
            queue_time: Duration::from_nanos(get(&self.queue_nanos)),
            request_latency: Duration::from_nanos(get(&self.request_nanos)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_follow_the_counters_and_snapshots_add_up() {
        let c = Counters::default();
        assert_eq!(c.snapshot(), ProducerMetrics::default());
        assert_eq!(c.snapshot().mean_batch_records(), 0.0);
        assert_eq!(c.snapshot().mean_queue_time(), Duration::ZERO);
        c.sent(Some(Duration::from_millis(4)));
        c.sent(Some(Duration::from_millis(2)));
        c.sent(None);
        c.acked(10, 1000, Duration::from_millis(3));
        c.acked(20, 2000, Duration::from_millis(5));
        c.failed(7);
        let m = c.snapshot();
        assert_eq!(
            (
                m.records_acked,
                m.records_failed,
                m.batches_sent,
                m.batches_acked
            ),
            (30, 7, 2, 2)
        );
        assert_eq!((m.bytes_acked, m.retries), (3000, 1));
        assert_eq!(m.mean_batch_records(), 15.0);
        assert_eq!(m.mean_queue_time(), Duration::from_millis(3));
        assert_eq!(m.mean_request_latency(), Duration::from_millis(4));
        let mut sum = m;
        sum += m;
        assert_eq!((sum.records_acked, sum.retries), (60, 2));
        assert_eq!(sum.mean_request_latency(), Duration::from_millis(4));
    }
}
