//! Consumer lag of one group partition, in messages and in time.
//!
//! Messages: high watermark minus the committed offset. Time: the age of the
//! oldest record not yet consumed, i.e. of the record at the committed offset
//! (zero when caught up). Reading that record's timestamp touches the log, so
//! lag is computed on admin requests and metric scrapes, never on health checks.

use crate::error::Result;
use crate::partition::Partition;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub messages: u64,
    pub seconds: f64,
}

/// Lag of a consumer whose next offset is `committed` (`None`: nothing
/// committed yet, which counts from the log start).
pub async fn lag(partition: &Partition, committed: Option<u64>, now_ms: i64) -> Result<Lag> {
    let hw = partition.high_watermark();
    let next = committed
        .unwrap_or_else(|| partition.start_offset())
        .max(partition.start_offset());
    if next >= hw {
        return Ok(Lag {
            messages: 0,
            seconds: 0.0,
        });
    }
    let seconds = match partition.timestamp_at(next).await? {
        Some(ts) => (now_ms.saturating_sub(ts).max(0) as f64) / 1000.0,
        None => 0.0,
    };
    Ok(Lag {
        messages: hw - next,
        seconds,
    })
}
