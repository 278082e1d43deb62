//! A replicated partition's Raft state machine: the high watermark and the
//! idempotent-producer table, and nothing else (the records stay in the
//! segment log, DESIGN.md §6).
//!
//! Applying is deterministic on every replica: it reads only the committed
//! batch header (producer expiry is timed by the batch's own timestamps, not
//! by each replica's clock).

use std::sync::Arc;

use bytes::Bytes;
use strata_proto::batch::BatchHeader;
use tokio::sync::watch;

use super::producer_state::{ProducerStates, SequenceCheck};
use crate::raft::{Applied, LogId, Machine};

pub struct PartitionMachine {
    producers: ProducerStates,
    /// Offsets below this are committed on a quorum; consumers read below it.
    high_watermark: Arc<watch::Sender<u64>>,
    duplicates_applied: u64,
}

impl PartitionMachine {
    pub fn new(high_watermark: Arc<watch::Sender<u64>>) -> Self {
        PartitionMachine {
            producers: ProducerStates::default(),
            high_watermark,
            duplicates_applied: 0,
        }
    }

    pub fn producers(&self) -> &ProducerStates {
        &self.producers
    }

    /// Batches that reached the log twice (a leader-side dedupe miss). Zero
    /// unless something is wrong; exported as a metric.
    pub fn duplicates_applied(&self) -> u64 {
        self.duplicates_applied
    }
}

impl Machine for PartitionMachine {
    fn apply(&mut self, _log_id: &LogId, header: &BatchHeader, _batch: &Bytes) -> Applied {
        let applied = match self.producers.check(header) {
            Ok(SequenceCheck::Duplicate { base_offset }) => {
                self.duplicates_applied += 1;
                tracing::error!(
                    producer = header.producer_id,
                    sequence = header.base_sequence,
                    offset = header.base_offset,
                    original = base_offset,
                    "a retried batch was committed twice"
                );
                Applied {
                    base_offset,
                    duplicate: true,
                }
            }
            _ => {
                self.producers.record(header, header.max_timestamp);
                Applied {
                    base_offset: header.base_offset,
                    duplicate: false,
                }
            }
        };
        self.high_watermark.send_if_modified(|hw| {
            let next = header.next_offset();
            (next > *hw).then(|| *hw = next).is_some()
        });
        applied
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.high_watermark.borrow().to_le_bytes().to_vec();
        out.extend_from_slice(&self.producers.encode());
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let Some((hw, producers)) = snapshot.split_first_chunk::<8>() else {
            return Err("partition snapshot shorter than its header".into());
        };
        self.producers = ProducerStates::decode(producers)?;
        self.high_watermark.send_replace(u64::from_le_bytes(*hw));
        Ok(())
    }
}
