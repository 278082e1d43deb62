//! Byte budgets: every queue of data in the broker holds at most a fixed
//! number of bytes. Producers that would overrun the produce budget are
//! answered at once with `Overloaded` and a retry hint (backpressure, never
//! unbounded buffering); fetches wait for room instead, since a fetch is pulled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct ByteBudget {
    name: &'static str,
    capacity_bytes: u32,
    semaphore: Arc<Semaphore>,
    retry_after: Duration,
}

/// Bytes held against a budget; released when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `capacity_bytes` (capped at u32::MAX bytes).
    pub fn new(name: &'static str, capacity_bytes: u64, retry_after: Duration) -> Self {
        let capacity_bytes = capacity_bytes.clamp(1, u64::from(u32::MAX)) as u32;
        ByteBudget {
            name,
            capacity_bytes,
            semaphore: Arc::new(Semaphore::new(capacity_bytes as usize)),
            retry_after,
        }
    }

    fn clamp(&self, bytes: usize) -> u32 {
        // A request larger than the whole budget may still pass alone.
        (bytes.max(1) as u64).min(u64::from(self.capacity_bytes)) as u32
    }

    /// Takes `bytes` now or fails with `Overloaded`.
    pub fn try_acquire(&self, bytes: usize) -> Result<BudgetPermit> {
        match self
            .semaphore
            .clone()
            .try_acquire_many_owned(self.clamp(bytes))
        {
            Ok(permit) => Ok(BudgetPermit { _permit: permit }),
            Err(_) => Err(Error::Overloaded {
                what: self.name,
                retry_after: self.retry_after,
            }),
        }
    }

    /// Waits until `bytes` are free.
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(self.clamp(bytes))
            .await
            .expect("budget semaphores are never closed");
        BudgetPermit { _permit: permit }
    }

    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.capacity_bytes)
    }

    pub fn in_use_bytes(&self) -> u64 {
        u64::from(self.capacity_bytes) - self.semaphore.available_permits() as u64
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_refuses_with_a_retry_hint_and_frees_on_drop() {
        let budget = ByteBudget::new("produce", 100, Duration::from_millis(7));
        let a = budget.try_acquire(60).unwrap();
        assert_eq!(budget.in_use_bytes(), 60);
        match budget.try_acquire(50) {
            Err(Error::Overloaded {
                what: "produce",
                retry_after,
            }) => assert_eq!(retry_after.as_millis(), 7),
            other => panic!("expected Overloaded, got {other:?}"),
        }
        drop(a);
        let _b = budget.try_acquire(50).unwrap();
        // Larger than the whole budget: allowed alone, so it cannot wait forever.
        drop(_b);
        let _c = budget.acquire(1_000).await;
        assert_eq!(budget.in_use_bytes(), 100);
    }
}
