//! The client's picture of the cluster: where each node's data port is, which
//! node leads each partition, and what failed requests taught since the last
//! metadata response.
//!
//! Two lessons come from failed requests. A leader hint (a node answered
//! NOT_LEADER and named the leader's data address) sends the partition's next
//! requests straight there. A lost leader (NOT_LEADER without a hint, or the
//! leader could not be reached) marks the partition suspect: its next lookup
//! refreshes metadata first. A metadata response replaces the lessons learnt
//! before it was asked for, and keeps the ones learnt while it was in flight,
//! which are newer than its answer.
//!
//! Pure data: no I/O and no clock of its own (callers pass instants), so each
//! rule here is tested without a network.

use std::collections::HashMap;
use std::time::Instant;

use strata_proto::v1::MetadataResponse;
use tonic::Code;

use crate::error::Error;

#[derive(Debug, Default)]
pub(crate) struct Metadata {
    /// Node id → data address.
    nodes: HashMap<u32, String>,
    topics: HashMap<String, TopicLeaders>,
}

#[derive(Debug, Default)]
struct TopicLeaders {
    /// Leader node of each partition, by partition number; `None` if the
    /// response named none.
    leaders: Vec<Option<u32>>,
    /// Partition → where a NOT_LEADER answer said its leader is.
    hints: HashMap<u32, Lesson<String>>,
    /// Partitions whose leader was lost, to refresh before their next lookup.
    suspects: HashMap<u32, Lesson<()>>,
}

#[derive(Debug, Clone)]
struct Lesson<T> {
    what: T,
    learnt: Instant,
}

/// Where a partition's requests go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// To this data address.
    Leader(String),
    /// The topic has fewer partitions.
    NoSuchPartition { partitions: u32 },
    /// The topic is not in the cache.
    UnknownTopic,
    /// The topic is known, but not its partition's leader or that node's address.
    NoLeader,
}

/// What a failed request to a partition's leader says about leadership.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaderNews<'a> {
    /// Another node leads; its data address.
    MovedTo(&'a str),
    /// The leader is unknown or could not be reached.
    Lost,
    /// Nothing: the request failed for another reason (bad input, overload).
    Unchanged,
}

impl<'a> LeaderNews<'a> {
    pub fn of(error: &'a Error) -> LeaderNews<'a> {
        match error {
            Error::NotLeader {
                leader: Some(addr), ..
            } if !addr.trim().is_empty() => LeaderNews::MovedTo(addr.trim()),
            Error::NotLeader { .. }
            | Error::Connect { .. }
            | Error::Unavailable(_)
            | Error::DeadlineExceeded(_) => LeaderNews::Lost,
            // No broker kind: the connection broke, not the request.
            Error::Broker { code, kind, .. }
                if kind.is_empty()
                    && matches!(code, Code::Unknown | Code::Cancelled | Code::Internal) =>
            {
                LeaderNews::Lost
            }
            _ => LeaderNews::Unchanged,
        }
    }
}

impl Metadata {
    pub fn lookup(&self, topic: &str, partition: u32) -> Lookup {
        let Some(t) = self.topics.get(topic) else {
            return Lookup::UnknownTopic;
        };
        let Some(leader) = t.leaders.get(partition as usize) else {
            return Lookup::NoSuchPartition {
                partitions: t.leaders.len() as u32,
            };
        };
        if let Some(hint) = t.hints.get(&partition) {
            return Lookup::Leader(hint.what.clone());
        }
        match leader.and_then(|node| self.nodes.get(&node)) {
            Some(addr) => Lookup::Leader(addr.clone()),
            None => Lookup::NoLeader,
        }
    }

    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|t| t.leaders.len() as u32)
    }

    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Every node's data address, lowest first.
    pub fn data_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.nodes.values().cloned().collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Takes the partition's suspect mark: whether its next request should
    /// wait for a metadata refresh.
    pub fn take_suspect(&mut self, topic: &str, partition: u32) -> bool {
        self.topics
            .get_mut(topic)
            .is_some_and(|t| t.suspects.remove(&partition).is_some())
    }

    /// Learns from a failed request to the partition's leader.
    pub fn leader_failed(&mut self, topic: &str, partition: u32, news: LeaderNews, now: Instant) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        match news {
            LeaderNews::MovedTo(addr) => {
                t.suspects.remove(&partition);
                t.hints.insert(
                    partition,
                    Lesson {
                        what: addr.to_owned(),
                        learnt: now,
                    },
                );
            }
            LeaderNews::Lost => {
                // A hinted leader that is lost is no better than the cached one.
                t.hints.remove(&partition);
                t.suspects.insert(
                    partition,
                    Lesson {
                        what: (),
                        learnt: now,
                    },
                );
            }
            LeaderNews::Unchanged => {}
        }
    }

    /// Takes in a metadata response to a request sent at `asked`: for every
    /// topic if `complete` (topics missing from it are gone), else for the
    /// topics it lists.
    pub fn apply(&mut self, response: &MetadataResponse, complete: bool, asked: Instant) {
        for node in &response.nodes {
            self.nodes.insert(node.node_id, node.data_addr.clone());
        }
        let mut fresh: HashMap<String, TopicLeaders> = response
            .topics
            .iter()
            .map(|t| {
                let leaders = vec![None; t.partitions as usize];
                (
                    t.topic.clone(),
                    TopicLeaders {
                        leaders,
                        ..Default::default()
                    },
                )
            })
            .collect();
        for p in &response.partitions {
            if let Some(slot) = fresh
                .get_mut(&p.topic)
                .and_then(|t| t.leaders.get_mut(p.partition as usize))
            {
                *slot = Some(p.leader);
            }
        }
        for (name, t) in fresh.iter_mut() {
            if let Some(old) = self.topics.get_mut(name) {
                // Lessons learnt while this request was in flight are newer
                // than its answer; older ones are superseded by it.
                t.hints = std::mem::take(&mut old.hints);
                t.hints.retain(|_, l| l.learnt > asked);
                t.suspects = std::mem::take(&mut old.suspects);
                t.suspects.retain(|_, l| l.learnt > asked);
            }
        }
        if complete {
            self.topics = fresh;
        } else {
            self.topics.extend(fresh);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use strata_proto::v1::{NodeInfo, PartitionLeader, TopicPartitionCount};

    use super::*;

    /// Metadata of topic "t" with one partition per leader in `leaders`;
    /// node n's data address is "dn:1".
    fn response(leaders: &[u32]) -> MetadataResponse {
        let mut nodes: Vec<u32> = leaders.to_vec();
        nodes.sort();
        nodes.dedup();
        MetadataResponse {
            nodes: nodes
                .into_iter()
                .map(|n| NodeInfo {
                    node_id: n,
                    data_addr: format!("d{n}:1"),
                    control_addr: format!("c{n}:1"),
                    peer_addr: String::new(),
                })
                .collect(),
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(p, &leader)| PartitionLeader {
                    topic: "t".into(),
                    partition: p as u32,
                    leader,
                })
                .collect(),
            topics: vec![TopicPartitionCount {
                topic: "t".into(),
                partitions: leaders.len() as u32,
            }],
        }
    }

    fn not_leader(leader: Option<&str>) -> Error {
        Error::NotLeader {
            leader: leader.map(str::to_owned),
            message: "not the leader".into(),
        }
    }

    fn leader(addr: &str) -> Lookup {
        Lookup::Leader(addr.into())
    }

    #[test]
    fn a_leader_hint_routes_the_partition_until_a_later_refresh() {
        let t0 = Instant::now();
        let mut md = Metadata::default();
        md.apply(&response(&[1, 1]), true, t0);
        assert_eq!(md.lookup("t", 0), leader("d1:1"));

        let hint = not_leader(Some("d2:1"));
        let at = t0 + Duration::from_millis(10);
        md.leader_failed("t", 0, LeaderNews::of(&hint), at);
        assert_eq!(md.lookup("t", 0), leader("d2:1"), "hinted partition moves");
        assert_eq!(md.lookup("t", 1), leader("d1:1"), "others stay");
        assert!(!md.take_suspect("t", 0), "a hint needs no refresh");

        // A response asked for before the hint is older than the hint.
        md.apply(&response(&[1, 1]), true, at - Duration::from_millis(1));
        assert_eq!(md.lookup("t", 0), leader("d2:1"));
        // One asked for after it replaces it.
        md.apply(&response(&[3, 1]), true, at + Duration::from_millis(1));
        assert_eq!(md.lookup("t", 0), leader("d3:1"));
    }

    #[test]
    fn a_lost_leader_marks_the_partition_for_one_refresh() {
        let t0 = Instant::now();
        let mut md = Metadata::default();
        md.apply(&response(&[1, 1]), true, t0);
        md.leader_failed("t", 0, LeaderNews::of(&not_leader(Some("d2:1"))), t0);
        let unreachable = Error::Unavailable("tcp connect error".into());
        md.leader_failed("t", 0, LeaderNews::of(&unreachable), t0);
        assert_eq!(
            md.lookup("t", 0),
            leader("d1:1"),
            "a lost hinted leader is forgotten"
        );
        assert!(md.take_suspect("t", 0));
        assert!(!md.take_suspect("t", 0), "the mark is taken once");
        assert!(!md.take_suspect("t", 1));
    }

    #[test]
    fn a_refresh_clears_only_the_suspect_marks_learnt_before_it_was_asked() {
        let t0 = Instant::now();
        let mut md = Metadata::default();
        md.apply(&response(&[1, 1]), true, t0);
        let lost = not_leader(None);
        md.leader_failed("t", 0, LeaderNews::of(&lost), t0 + Duration::from_millis(1));
        md.leader_failed("t", 1, LeaderNews::of(&lost), t0 + Duration::from_millis(3));
        md.apply(&response(&[2, 2]), true, t0 + Duration::from_millis(2));
        assert!(!md.take_suspect("t", 0));
        assert!(md.take_suspect("t", 1));
    }

    #[test]
    fn which_errors_say_the_leader_moved_or_was_lost() {
        let hinted = not_leader(Some("d2:1"));
        assert_eq!(LeaderNews::of(&hinted), LeaderNews::MovedTo("d2:1"));
        for lost in [
            not_leader(None),
            not_leader(Some("")),
            Error::Connect {
                addr: "d1:1".into(),
                message: "refused".into(),
            },
            Error::Unavailable("recovering".into()),
            Error::DeadlineExceeded("slow".into()),
            Error::Broker {
                code: Code::Unknown,
                kind: String::new(),
                message: "connection reset".into(),
            },
        ] {
            assert_eq!(LeaderNews::of(&lost), LeaderNews::Lost, "{lost:?}");
        }
        for unchanged in [
            Error::InvalidRecord("too big".into()),
            Error::Overloaded {
                retry_after: Duration::from_millis(5),
                message: "full".into(),
            },
            Error::Broker {
                code: Code::Internal,
                kind: "storage-error".into(),
                message: "disk".into(),
            },
        ] {
            assert_eq!(LeaderNews::of(&unchanged), LeaderNews::Unchanged);
        }
    }

    #[test]
    fn lookups_distinguish_unknown_topics_missing_partitions_and_missing_leaders() {
        let mut md = Metadata::default();
        assert_eq!(md.lookup("t", 0), Lookup::UnknownTopic);
        let mut r = response(&[1, 1]);
        r.partitions.retain(|p| p.partition == 0);
        md.apply(&r, true, Instant::now());
        assert_eq!(md.lookup("t", 0), leader("d1:1"));
        assert_eq!(md.lookup("t", 1), Lookup::NoLeader);
        assert_eq!(md.lookup("t", 2), Lookup::NoSuchPartition { partitions: 2 });
        assert_eq!(md.partition_count("t"), Some(2));
    }

    #[test]
    fn a_complete_refresh_forgets_deleted_topics_and_a_partial_one_keeps_others() {
        let t0 = Instant::now();
        let mut md = Metadata::default();
        md.apply(&response(&[1]), true, t0);
        let mut other = response(&[1]);
        other.topics[0].topic = "u".into();
        other.partitions[0].topic = "u".into();
        md.apply(&other, false, t0);
        assert!(md.has_topic("t") && md.has_topic("u"));
        md.apply(&other, true, t0);
        assert!(!md.has_topic("t") && md.has_topic("u"));
    }
}
