//! Checks what a bench read: every partition's offsets are contiguous, no
//! record arrives twice, each producer's records arrive in the order sent,
//! and (optionally) the expected number arrived. A fast number must never
//! hide lost, duplicated or reordered data.

use super::payload::Stamp;

/// Per partition (and per producer and partition), state kept in vectors
/// indexed by the small dense numbers partitions and bench producers have:
/// map lookups per record were about 3% of the bench client's CPU on a
/// catch-up read, measuring the verifier rather than the consumer.
#[derive(Debug, Default)]
pub struct Verifier {
    /// The offset expected next, per partition.
    next_offset: Vec<Option<u64>>,
    /// Last sequence per producer, per partition.
    last_sequence: Vec<Vec<Option<u64>>>,
    /// Per producer, which sequences arrived (bench sequences are dense from
    /// 0, so a bit vector: no hashing per record).
    seen: Vec<Vec<u64>>,
    pub records: u64,
    pub problems: Vec<String>,
}

/// Bench producers are numbered from 0; a stamp naming one beyond this is
/// not from a bench run (and must not size the verifier's tables).
const MAX_PRODUCERS: u32 = 1 << 16;

/// Bench sequences count a producer's records from 0; one beyond this (4G
/// records, 4 TB at 1 KiB) is not from a bench run, and must not grow the
/// verifier's bit set past 512 MiB.
const MAX_SEQUENCE: u64 = 1 << 32;

/// The slot for `index` in `v`, grown to hold it.
fn slot<T: Default>(v: &mut Vec<T>, index: u32) -> &mut T {
    let i = index as usize;
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

/// Problems reported in full; beyond this only counted.
const MAX_REPORTED: usize = 20;

impl Verifier {
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_REPORTED {
            self.problems.push(what);
        } else if self.problems.len() == MAX_REPORTED {
            self.problems.push("(more problems not shown)".into());
        }
    }

    /// Marks a sequence as seen; false if it had been seen before.
    fn mark_seen(&mut self, producer: u32, sequence: u64) -> bool {
        let bits = slot(&mut self.seen, producer);
        let (word, bit) = ((sequence / 64) as usize, sequence % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let fresh = bits[word] & (1 << bit) == 0;
        bits[word] |= 1 << bit;
        fresh
    }

    /// Records one consumed record.
    pub fn record(&mut self, partition: u32, offset: u64, stamp: Option<Stamp>) {
        self.records += 1;
        let next = slot(&mut self.next_offset, partition);
        let expected = next.unwrap_or(offset);
        *next = Some(offset + 1);
        if offset != expected {
            let kind = if offset > expected {
                "gap"
            } else {
                "offset went backwards"
            };
            self.problem(format!(
                "partition {partition}: {kind}: expected offset {expected}, got {offset}"
            ));
        }
        let bench = |s: &Stamp| s.producer < MAX_PRODUCERS && s.sequence < MAX_SEQUENCE;
        let Some(stamp) = stamp.filter(bench) else {
            self.problem(format!(
                "partition {partition} offset {offset}: not a bench record"
            ));
            return;
        };
        if !self.mark_seen(stamp.producer, stamp.sequence) {
            self.problem(format!(
                "duplicate: producer {} sequence {} arrived twice (again at {partition}/{offset})",
                stamp.producer, stamp.sequence
            ));
        }
        let last = slot(slot(&mut self.last_sequence, stamp.producer), partition);
        if let Some(prev) = last.replace(stamp.sequence)
            && stamp.sequence <= prev
        {
            self.problem(format!(
                "reordered: producer {} sequence {} after {prev} in partition {partition}",
                stamp.producer, stamp.sequence
            ));
        }
    }

    /// Final check against the number of records expected.
    pub fn finish(&mut self, expected: Option<u64>) -> Result<(), String> {
        if let Some(expected) = expected
            && self.records != expected
        {
            let what = format!("expected {expected} records, read {}", self.records);
            self.problem(what);
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(producer: u32, sequence: u64) -> Option<Stamp> {
        Some(Stamp {
            producer,
            sequence,
            sent_micros: 0,
        })
    }

    #[test]
    fn clean_reads_pass() {
        let mut v = Verifier::default();
        v.record(0, 10, s(1, 0));
        v.record(1, 0, s(2, 0));
        v.record(0, 11, s(1, 1));
        v.record(1, 1, s(1, 2));
        assert!(v.finish(Some(4)).is_ok());
    }

    #[test]
    fn gaps_duplicates_reordering_and_short_reads_fail() {
        let mut gap = Verifier::default();
        gap.record(0, 0, s(1, 0));
        gap.record(0, 2, s(1, 1));
        assert!(gap.finish(None).unwrap_err().contains("gap"));

        let mut dup = Verifier::default();
        dup.record(0, 0, s(1, 0));
        dup.record(0, 1, s(1, 0));
        let err = dup.finish(None).unwrap_err();
        assert!(err.contains("duplicate"), "{err}");

        let mut reorder = Verifier::default();
        reorder.record(0, 0, s(1, 5));
        reorder.record(0, 1, s(1, 4));
        assert!(reorder.finish(None).unwrap_err().contains("reordered"));

        let mut short = Verifier::default();
        short.record(0, 0, s(1, 0));
        assert!(short.finish(Some(2)).unwrap_err().contains("expected 2"));

        let mut huge = Verifier::default();
        huge.record(0, 0, s(1, u64::MAX - 1));
        huge.record(0, 1, s(u32::MAX, 0));
        assert_eq!(huge.problems.len(), 2, "{:?}", huge.problems);
        assert!(
            huge.seen.iter().all(Vec::is_empty),
            "no table sized by them"
        );

        let mut foreign = Verifier::default();
        foreign.record(0, 0, None);
        assert!(
            foreign
                .finish(None)
                .unwrap_err()
                .contains("not a bench record")
        );
    }
}
