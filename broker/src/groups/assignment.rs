//! Partition assignment strategies. Deterministic: the same members and topics
//! always give the same assignment, so a coordinator can recompute it freely.

use std::collections::{BTreeMap, BTreeSet};

/// A (topic, partition) pair.
pub type TopicPartition = (String, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to members in id order; the
    /// first members get one extra when it does not divide evenly (Kafka's
    /// RangeAssignor).
    #[default]
    Range,
    /// All partitions of all topics, dealt to the subscribed members in turn.
    RoundRobin,
}

impl Assignor {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "" | "range" => Some(Assignor::Range),
            "roundrobin" | "round-robin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    /// Assigns the partitions of `topics` (name → partition count) to
    /// `members` (id → subscribed topics). Every partition of a subscribed
    /// topic goes to exactly one member subscribed to it.
    pub fn assign(
        self,
        members: &BTreeMap<String, BTreeSet<String>>,
        topics: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut out: BTreeMap<String, Vec<TopicPartition>> =
            members.keys().map(|m| (m.clone(), Vec::new())).collect();
        match self {
            Assignor::Range => {
                for (topic, &count) in topics {
                    let subscribed: Vec<&String> = members
                        .iter()
                        .filter(|(_, t)| t.contains(topic))
                        .map(|(m, _)| m)
                        .collect();
                    if subscribed.is_empty() {
                        continue;
                    }
                    let n = subscribed.len() as u32;
                    let (per, extra) = (count / n, count % n);
                    let mut next = 0;
                    for (i, member) in subscribed.iter().enumerate() {
                        let take = per + u32::from((i as u32) < extra);
                        let slot = out.get_mut(*member).expect("member listed");
                        slot.extend((next..next + take).map(|p| (topic.clone(), p)));
                        next += take;
                    }
                }
            }
            Assignor::RoundRobin => {
                let member_ids: Vec<&String> = members.keys().collect();
                let mut turn = 0usize;
                for (topic, &count) in topics {
                    for p in 0..count {
                        // The next member in turn that subscribes to this topic.
                        for _ in 0..member_ids.len() {
                            let m = member_ids[turn % member_ids.len()];
                            turn += 1;
                            if members[m].contains(topic) {
                                out.get_mut(m)
                                    .expect("member listed")
                                    .push((topic.clone(), p));
                                break;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        spec.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn topics(spec: &[(&str, u32)]) -> BTreeMap<String, u32> {
        spec.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn check_exactly_once(
        a: &BTreeMap<String, Vec<TopicPartition>>,
        topics: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for tps in a.values() {
            for tp in tps {
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
            }
        }
        let total: u32 = topics.values().sum();
        assert_eq!(seen.len() as u32, total);
    }

    #[test]
    fn range_splits_each_topic_into_contiguous_ranges() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let t = topics(&[("t", 7)]);
        let a = Assignor::Range.assign(&m, &t);
        check_exactly_once(&a, &t);
        let parts = |id: &str| a[id].iter().map(|(_, p)| *p).collect::<Vec<_>>();
        assert_eq!(parts("a"), vec![0, 1, 2]);
        assert_eq!(parts("b"), vec![3, 4]);
        assert_eq!(parts("c"), vec![5, 6]);
    }

    #[test]
    fn round_robin_deals_across_topics_and_respects_subscriptions() {
        let m = members(&[("a", &["x", "y"]), ("b", &["x"])]);
        let t = topics(&[("x", 4), ("y", 2)]);
        let a = Assignor::RoundRobin.assign(&m, &t);
        check_exactly_once(&a, &t);
        assert!(a["b"].iter().all(|(t, _)| t == "x"));
        assert_eq!(a["a"].len() + a["b"].len(), 6);
        assert_eq!(a["b"].len(), 2);
    }

    #[test]
    fn six_partitions_over_three_members_give_two_each() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let t = topics(&[("t", 6)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let a = assignor.assign(&m, &t);
            check_exactly_once(&a, &t);
            assert!(a.values().all(|v| v.len() == 2), "{assignor:?}: {a:?}");
        }
    }
}
