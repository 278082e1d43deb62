//! Per-partition state of idempotent producers: for each producer id, its epoch
//! and its last few batches, so that a retried batch is recognised and answered
//! with its original offset instead of being written twice.
//!
//! Sequence rules (as Kafka's): a producer's first batch in an epoch starts at
//! sequence 0; each next batch starts right after the previous one's last
//! sequence (wrapping at u32::MAX); a batch equal to one of the last
//! `DEDUPE_WINDOW_BATCHES` is a duplicate; anything else is out of order, and
//! the client retries it after the batches before it. An older epoch is fenced.
//!
//! The table is part of the log's recovery checkpoint and is rebuilt from the
//! batch headers of the tail after a crash, so dedupe survives restarts.

use std::collections::{HashMap, VecDeque};

use strata_proto::batch::{BatchHeader, NO_PRODUCER_ID};

/// Batches remembered per producer: as many as a client may have in flight
/// on one partition.
pub const DEDUPE_WINDOW_BATCHES: usize = strata_proto::limits::MAX_IN_FLIGHT_BATCHES;

/// A producer silent for this long is forgotten (7 days, as Kafka).
pub const PRODUCER_EXPIRY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

const SNAPSHOT_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_sequence: u32,
    last_sequence: u32,
    base_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: u16,
    last_seen_ms: i64,
    recent: VecDeque<BatchMeta>,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: append it.
    Append,
    /// Already in the log at `base_offset`: acknowledge, do not write.
    Duplicate { base_offset: u64 },
}

/// Why a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    OutOfOrder {
        expected: u32,
        received: u32,
    },
    Fenced {
        current_epoch: u16,
        received_epoch: u16,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<u64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn check(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        if header.producer_id == NO_PRODUCER_ID {
            return Ok(SequenceCheck::Append);
        }
        let received = header.base_sequence;
        let Some(entry) = self.producers.get(&header.producer_id) else {
            return if received == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    received,
                })
            };
        };
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::Fenced {
                current_epoch: entry.epoch,
                received_epoch: header.producer_epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if received == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    received,
                })
            };
        }
        let last = header.last_sequence();
        if let Some(dup) = entry
            .recent
            .iter()
            .find(|b| b.first_sequence == received && b.last_sequence == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: dup.base_offset,
            });
        }
        let expected = entry
            .recent
            .back()
            .map_or(0, |b| b.last_sequence.wrapping_add(1));
        if received == expected {
            Ok(SequenceCheck::Append)
        } else {
            Err(SequenceError::OutOfOrder { expected, received })
        }
    }

    /// Records a batch that is now in the log (its base offset stamped).
    pub fn record(&mut self, header: &BatchHeader, now_ms: i64) {
        if header.producer_id == NO_PRODUCER_ID {
            return;
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                last_seen_ms: now_ms,
                recent: VecDeque::with_capacity(DEDUPE_WINDOW_BATCHES),
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.recent.clear();
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        let meta = BatchMeta {
            first_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset,
        };
        // Recovery may replay a batch the checkpoint already counted.
        if entry.recent.contains(&meta) {
            return;
        }
        if entry.recent.len() == DEDUPE_WINDOW_BATCHES {
            entry.recent.pop_front();
        }
        entry.recent.push_back(meta);
    }

    /// Forgets producers not seen for [`PRODUCER_EXPIRY_MS`].
    pub fn expire(&mut self, now_ms: i64) {
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) < PRODUCER_EXPIRY_MS);
    }

    /// Serialises the table for the recovery checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.producers.len() * 64);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.producers[&id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_le_bytes());
            out.push(e.recent.len() as u8);
            for b in &e.recent {
                out.extend_from_slice(&b.first_sequence.to_le_bytes());
                out.extend_from_slice(&b.last_sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
            }
        }
        out
    }

    /// Reads a table written by [`ProducerStates::encode`]. Empty input is an
    /// empty table; anything malformed is an error (the caller starts empty and
    /// rebuilds from the log).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let mut cur = Cursor(bytes);
        if cur.u8()? != SNAPSHOT_VERSION {
            return Err("unknown producer snapshot version".into());
        }
        let count = cur.u32()? as usize;
        let mut producers = HashMap::with_capacity(count.min(bytes.len() / 19));
        for _ in 0..count {
            let id = cur.u64()?;
            let epoch = cur.u16()?;
            let last_seen_ms = cur.u64()? as i64;
            let n = cur.u8()? as usize;
            if n > DEDUPE_WINDOW_BATCHES {
                return Err(format!("producer {id} has {n} remembered batches"));
            }
            let mut recent = VecDeque::with_capacity(n);
            for _ in 0..n {
                recent.push_back(BatchMeta {
                    first_sequence: cur.u32()?,
                    last_sequence: cur.u32()?,
                    base_offset: cur.u64()?,
                });
            }
            producers.insert(
                id,
                ProducerEntry {
                    epoch,
                    last_seen_ms,
                    recent,
                },
            );
        }
        if !cur.0.is_empty() {
            return Err("trailing bytes after producer snapshot".into());
        }
        Ok(ProducerStates { producers })
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("producer snapshot is truncated".into());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("split at N"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::batch::{BatchBuilder, BatchHeader, ProducerStamp, Record};

    fn header(pid: u64, epoch: u16, seq: u32, records: u32, base: u64) -> BatchHeader {
        let mut b = BatchBuilder::new(ProducerStamp {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
        });
        for _ in 0..records {
            b.push(&Record::new(0, "v")).unwrap();
        }
        let mut bytes = b.finish().to_vec();
        strata_proto::batch::stamp_base_offset(&mut bytes, base);
        BatchHeader::parse(&bytes).unwrap()
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        let a = header(9, 0, 0, 3, 100);
        assert_eq!(s.check(&a), Ok(SequenceCheck::Append));
        s.record(&a, 0);
        let b = header(9, 0, 3, 2, 103);
        assert_eq!(s.check(&b), Ok(SequenceCheck::Append));
        s.record(&b, 0);
        assert_eq!(
            s.check(&a),
            Ok(SequenceCheck::Duplicate { base_offset: 100 })
        );
        assert_eq!(
            s.check(&b),
            Ok(SequenceCheck::Duplicate { base_offset: 103 })
        );
        assert_eq!(
            s.check(&header(9, 0, 7, 1, 0)),
            Err(SequenceError::OutOfOrder {
                expected: 5,
                received: 7
            })
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7u32 {
            s.record(&header(1, 0, i, 1, u64::from(i)), 0);
        }
        assert!(matches!(
            s.check(&header(1, 0, 1, 1, 0)),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert_eq!(
            s.check(&header(1, 0, 2, 1, 0)),
            Ok(SequenceCheck::Duplicate { base_offset: 2 })
        );
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::default();
        s.record(&header(5, 2, 0, 1, 0), 0);
        assert_eq!(
            s.check(&header(5, 1, 1, 1, 0)),
            Err(SequenceError::Fenced {
                current_epoch: 2,
                received_epoch: 1
            })
        );
        assert_eq!(s.check(&header(5, 3, 0, 1, 0)), Ok(SequenceCheck::Append));
        assert!(matches!(
            s.check(&header(5, 3, 4, 1, 0)),
            Err(SequenceError::OutOfOrder { .. })
        ));
        // An unknown producer must start at 0.
        assert!(matches!(
            s.check(&header(6, 0, 1, 1, 0)),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
    }

    #[test]
    fn sequences_wrap_around() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 1, 0), 0);
        let near_end = header(1, 0, u32::MAX - 1, 2, 10);
        // Force the state to just before the wrap.
        s.producers
            .get_mut(&1)
            .unwrap()
            .recent
            .back_mut()
            .unwrap()
            .last_sequence = u32::MAX - 2;
        assert_eq!(s.check(&near_end), Ok(SequenceCheck::Append));
        s.record(&near_end, 0);
        assert_eq!(s.check(&header(1, 0, 0, 1, 12)), Ok(SequenceCheck::Append));
    }

    #[test]
    fn snapshot_round_trips_and_expiry_forgets_idle_producers() {
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 2, 0), 1_000);
        s.record(&header(2, 4, 0, 1, 2), PRODUCER_EXPIRY_MS + 5_000);
        let back = ProducerStates::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        assert!(ProducerStates::decode(&s.encode()[..10]).is_err());
        s.expire(PRODUCER_EXPIRY_MS + 2_000);
        assert_eq!(s.len(), 1);
        assert!(
            s.check(&header(1, 0, 2, 1, 0)).is_err(),
            "expired producer starts over at 0"
        );
    }
}
