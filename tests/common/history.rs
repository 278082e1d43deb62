//! A history of what clients did and saw, and the checker that judges it, in
//! the spirit of Jepsen: producers record every send, acknowledgement and
//! failure; consumers record every record they read; at the end the whole log
//! is read once more. The checker then reports, with a short explanation each:
//!
//! - **lost**: acknowledged, but not in the final log;
//! - **duplicated**: stored at more than one offset;
//! - **misplaced**: stored, but not at the offset it was acknowledged with;
//! - **reordered**: two records of one producer to one partition stored in the
//!   opposite order to their sends (the producer sends in order, one batch in
//!   flight behind another, and acks=all; a broker must keep that order);
//! - **phantom**: read, but never sent;
//! - **diverging**: two reads of the same offset returned different records;
//! - **non-monotonic**: a consumer read offsets of a partition out of order.
//!
//! Records are identified by their value, `p<producer>-<sequence>`.

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::Mutex;

/// A record's identity: (producer, sequence number within that producer).
pub type RecordId = (u32, u64);

pub fn value_of(id: RecordId) -> String {
    format!("p{}-{}", id.0, id.1)
}

pub fn id_of(value: &[u8]) -> Option<RecordId> {
    let text = std::str::from_utf8(value).ok()?;
    let (producer, sequence) = text.strip_prefix('p')?.split_once('-')?;
    Some((producer.parse().ok()?, sequence.parse().ok()?))
}

#[derive(Default)]
struct Events {
    sent: HashSet<RecordId>,
    acked: HashMap<RecordId, (u32, u64)>,
    failed: HashSet<RecordId>,
    /// Per consumer, in the order read: (partition, offset, value).
    reads: BTreeMap<usize, Vec<(u32, u64, Vec<u8>)>>,
}

#[derive(Default)]
pub struct History {
    events: Mutex<Events>,
}

impl History {
    pub fn sent(&self, id: RecordId) {
        self.events.lock().sent.insert(id);
    }

    pub fn acked(&self, id: RecordId, partition: u32, offset: u64) {
        self.events.lock().acked.insert(id, (partition, offset));
    }

    /// The send failed: its fate is unknown (it may or may not be stored).
    pub fn failed(&self, id: RecordId) {
        self.events.lock().failed.insert(id);
    }

    pub fn read(&self, consumer: usize, partition: u32, offset: u64, value: &[u8]) {
        self.events.lock().reads.entry(consumer).or_default().push((
            partition,
            offset,
            value.to_vec(),
        ));
    }

    pub fn acked_count(&self) -> usize {
        self.events.lock().acked.len()
    }

    pub fn failed_count(&self) -> usize {
        self.events.lock().failed.len()
    }

    pub fn read_count(&self) -> usize {
        self.events.lock().reads.values().map(Vec::len).sum()
    }

    /// Judges the history against `final_log`: per partition, every record
    /// stored, as (offset, value), read after the run.
    pub fn check(&self, final_log: &BTreeMap<u32, Vec<(u64, Vec<u8>)>>) -> Report {
        let ev = self.events.lock();
        let mut report = Report::default();
        let mut stored: HashMap<RecordId, Vec<(u32, u64)>> = HashMap::new();
        let mut at: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
        for (&partition, records) in final_log {
            for (offset, value) in records {
                at.insert((partition, *offset), value.clone());
                match id_of(value) {
                    Some(id) if ev.sent.contains(&id) => {
                        stored.entry(id).or_default().push((partition, *offset))
                    }
                    _ => report.phantom.push(format!(
                        "{partition}/{offset} holds {:?}, which no producer sent",
                        String::from_utf8_lossy(value)
                    )),
                }
            }
        }
        let mut acked: Vec<_> = ev.acked.iter().collect();
        acked.sort();
        for &(&id, &(partition, offset)) in &acked {
            match stored.get(&id).map(Vec::as_slice) {
                None | Some([]) => report.lost.push(format!(
                    "{} was acknowledged at {partition}/{offset} but is not in the log",
                    value_of(id)
                )),
                Some([one]) if *one != (partition, offset) => report.misplaced.push(format!(
                    "{} was acknowledged at {partition}/{offset} but is stored at {}/{}",
                    value_of(id),
                    one.0,
                    one.1
                )),
                _ => {}
            }
        }
        let mut stored_sorted: Vec<_> = stored.iter().collect();
        stored_sorted.sort();
        for &(&id, places) in &stored_sorted {
            if places.len() > 1 {
                report.duplicated.push(format!(
                    "{} is stored {} times: {places:?}",
                    value_of(id),
                    places.len()
                ));
            }
        }
        // Per producer and partition, stored order must follow send order.
        let mut by_stream: BTreeMap<(u32, u32), Vec<(u64, u64)>> = BTreeMap::new();
        for &(&(producer, sequence), places) in &stored_sorted {
            for &(partition, offset) in places.iter() {
                by_stream
                    .entry((producer, partition))
                    .or_default()
                    .push((sequence, offset));
            }
        }
        for ((producer, partition), mut records) in by_stream {
            records.sort();
            for pair in records.windows(2) {
                let ((s1, o1), (s2, o2)) = (pair[0], pair[1]);
                if o2 < o1 {
                    report.reordered.push(format!(
                        "producer {producer} sent {s1} before {s2}, but partition {partition} stores them at {o1} and {o2}"
                    ));
                    break;
                }
            }
        }
        for (consumer, reads) in &ev.reads {
            let mut last: HashMap<u32, u64> = HashMap::new();
            for (partition, offset, value) in reads {
                if let Some(&prev) = last.get(partition)
                    && *offset <= prev
                {
                    report.non_monotonic.push(format!(
                        "consumer {consumer} read {partition}/{offset} after {partition}/{prev}"
                    ));
                }
                last.insert(*partition, *offset);
                match at.get(&(*partition, *offset)) {
                    Some(stored) if stored != value => report.diverging.push(format!(
                        "consumer {consumer} read {:?} at {partition}/{offset}; the log holds {:?}",
                        String::from_utf8_lossy(value),
                        String::from_utf8_lossy(stored)
                    )),
                    None => report.diverging.push(format!(
                        "consumer {consumer} read {:?} at {partition}/{offset}, beyond the final log",
                        String::from_utf8_lossy(value)
                    )),
                    _ => {}
                }
                if id_of(value).is_none_or(|id| !ev.sent.contains(&id)) {
                    report.phantom.push(format!(
                        "consumer {consumer} read {:?} at {partition}/{offset}, which no producer sent",
                        String::from_utf8_lossy(value)
                    ));
                }
            }
        }
        report
    }
}

/// Anomalies found, each with a one-line explanation.
#[derive(Debug, Default)]
pub struct Report {
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub misplaced: Vec<String>,
    pub reordered: Vec<String>,
    pub phantom: Vec<String>,
    pub diverging: Vec<String>,
    pub non_monotonic: Vec<String>,
}

impl Report {
    fn kinds(&self) -> [(&'static str, &Vec<String>); 7] {
        [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("misplaced", &self.misplaced),
            ("reordered", &self.reordered),
            ("phantom", &self.phantom),
            ("diverging", &self.diverging),
            ("non-monotonic", &self.non_monotonic),
        ]
    }

    pub fn is_clean(&self) -> bool {
        self.kinds().iter().all(|(_, v)| v.is_empty())
    }

    /// Counts per kind, and the first few explanations of each.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for (kind, anomalies) in self.kinds() {
            if anomalies.is_empty() {
                continue;
            }
            out.push_str(&format!("{kind}: {}\n", anomalies.len()));
            for a in anomalies.iter().take(5) {
                out.push_str(&format!("  {a}\n"));
            }
        }
        if out.is_empty() {
            out.push_str("no anomalies\n");
        }
        out
    }
}
