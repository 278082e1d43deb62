//! A record's delivery: one outcome per batch, shared by its records.
//!
//! A batch is acknowledged (or fails) as a whole, so its records share one
//! [`BatchOutcome`]: resolving a batch of a thousand records sets one result
//! and wakes whoever waits, instead of sending a thousand messages through a
//! channel allocated per record. Each [`Delivery`] knows its record's index
//! in the batch and derives its offset from the batch's base offset.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::record::RecordMetadata;

/// The shared outcome of one batch.
pub(crate) struct BatchOutcome {
    topic: Arc<str>,
    partition: u32,
    state: Mutex<OutcomeState>,
}

#[derive(Default)]
struct OutcomeState {
    /// The batch's base offset (`None` with `Acks::None`), or its error.
    result: Option<Result<Option<u64>>>,
    /// Tasks waiting on deliveries of this batch.
    wakers: Vec<Waker>,
}

/// The producer's side of a [`BatchOutcome`]: resolves it once. Dropped
/// unresolved (the sender stopped), its records fail with `Closed` rather
/// than wait forever.
pub(crate) struct Resolver {
    outcome: Arc<BatchOutcome>,
}

impl Resolver {
    pub fn new(topic: Arc<str>, partition: u32) -> Self {
        Resolver {
            outcome: Arc::new(BatchOutcome {
                topic,
                partition,
                state: Mutex::new(OutcomeState::default()),
            }),
        }
    }

    /// The delivery of the batch's `index`-th record.
    pub fn delivery(&self, index: u32, timestamp: i64) -> Delivery {
        Delivery {
            outcome: self.outcome.clone(),
            index,
            timestamp,
            waker_slot: None,
        }
    }

    /// Sets the batch's outcome (the first call wins) and wakes its waiters.
    pub fn resolve(&self, result: Result<Option<u64>>) {
        let wakers = {
            let mut st = self.outcome.state.lock();
            if st.result.is_some() {
                return;
            }
            st.result = Some(result);
            std::mem::take(&mut st.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.resolve(Err(Error::Closed));
    }
}

/// The outcome of one enqueued record; resolves once the broker has
/// acknowledged its batch (or the batch failed for good).
pub struct Delivery {
    outcome: Arc<BatchOutcome>,
    index: u32,
    timestamp: i64,
    /// Where this delivery's waker sits in the outcome's list, once polled.
    waker_slot: Option<usize>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.outcome.topic)
            .field("partition", &self.outcome.partition)
            .field("index_in_batch", &self.index)
            .finish_non_exhaustive()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // A delivery dropped while waiting leaves no waker behind: it would
        // keep the task that polled it alive until the batch resolves.
        if let Some(slot) = self.waker_slot {
            let mut st = self.outcome.state.lock();
            if st.result.is_none() {
                st.wakers[slot] = Waker::noop().clone();
            }
        }
    }
}

impl Future for Delivery {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let outcome = &this.outcome;
        let mut st = outcome.state.lock();
        match &st.result {
            Some(Ok(base)) => Poll::Ready(Ok(RecordMetadata {
                topic: outcome.topic.clone(),
                partition: outcome.partition,
                offset: base.map(|b| b + u64::from(this.index)),
                timestamp: this.timestamp,
            })),
            Some(Err(e)) => Poll::Ready(Err(e.clone())),
            None => {
                // One slot per delivery, replaced if polled from another
                // task: no duplicates, however often it is polled.
                match this.waker_slot {
                    Some(slot) => {
                        if !st.wakers[slot].will_wake(cx.waker()) {
                            st.wakers[slot] = cx.waker().clone();
                        }
                    }
                    None => {
                        this.waker_slot = Some(st.wakers.len());
                        st.wakers.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_record_of_a_batch_gets_its_own_offset() {
        let resolver = Resolver::new("t".into(), 3);
        let deliveries: Vec<_> = (0..3)
            .map(|i| resolver.delivery(i, 100 + i64::from(i)))
            .collect();
        let waiting = tokio::spawn(futures::future::join_all(deliveries));
        tokio::task::yield_now().await;
        resolver.resolve(Ok(Some(40)));
        let results = waiting.await.unwrap();
        let got: Vec<_> = results
            .into_iter()
            .map(|r| {
                let m = r.unwrap();
                (m.partition, m.offset, m.timestamp)
            })
            .collect();
        assert_eq!(
            got,
            [(3, Some(40), 100), (3, Some(41), 101), (3, Some(42), 102)]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_record_and_the_first_outcome_stands() {
        let resolver = Resolver::new("t".into(), 0);
        let delivery = resolver.delivery(0, 0);
        resolver.resolve(Err(Error::Closed));
        resolver.resolve(Ok(Some(1)));
        assert!(matches!(delivery.await, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn a_dropped_resolver_fails_its_records_instead_of_hanging() {
        let resolver = Resolver::new("t".into(), 0);
        let delivery = resolver.delivery(0, 0);
        let waiting = tokio::spawn(delivery);
        tokio::task::yield_now().await;
        drop(resolver);
        assert!(matches!(waiting.await.unwrap(), Err(Error::Closed)));
    }

    #[test]
    fn a_delivery_dropped_while_waiting_leaves_no_waker_behind() {
        struct Task;
        impl futures::task::ArcWake for Task {
            fn wake_by_ref(_: &Arc<Self>) {}
        }
        let task = Arc::new(Task);
        let waker = futures::task::waker(task.clone());
        let resolver = Resolver::new("t".into(), 0);
        let mut delivery = resolver.delivery(0, 0);
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut delivery).poll(&mut cx).is_pending());
        drop(waker);
        assert_eq!(Arc::strong_count(&task), 2, "the outcome holds the waker");
        drop(delivery);
        assert_eq!(
            Arc::strong_count(&task),
            1,
            "and lets it go with the delivery"
        );
    }

    #[tokio::test]
    async fn a_delivery_moved_to_another_task_still_wakes() {
        let resolver = Resolver::new("t".into(), 0);
        let mut delivery = resolver.delivery(0, 0);
        // Polled once by this task, then handed to another.
        assert!(futures::poll!(&mut delivery).is_pending());
        let waiting = tokio::spawn(delivery);
        tokio::task::yield_now().await;
        resolver.resolve(Ok(Some(7)));
        let meta = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert_eq!(meta.offset, Some(7));
    }
}
