//! The cluster metadata group's state machine: which nodes exist and where
//! they listen, which topics exist, which nodes hold each partition, and the
//! consumer groups' committed offsets.
//!
//! Every node runs this machine on the same committed commands, so every node
//! can answer metadata requests from memory. A command is one JSON record in
//! an ordinary record batch, so the metadata group's log is a segment log like
//! any partition's. Applying is deterministic: topic ids come from a counter
//! in the state, and the creation time travels in the command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strata_proto::batch::{BatchBuilder, BatchHeader, Record, Records};
use tokio::sync::watch;

use parking_lot::RwLock;

use super::topics::TopicSpec;
use crate::groups::offsets::{CommittedOffset, OffsetMap};
use crate::raft::{Applied, LogId, Machine, NodeId};

/// Where a node listens, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// Data port address given to clients (may be the advertised one).
    pub data: String,
    pub control: String,
    pub peer: String,
}

/// A topic and the nodes that hold each of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicAssignment {
    pub spec: TopicSpec,
    /// Per partition, the nodes that should hold it; the first is the
    /// preferred leader.
    pub replicas: Vec<Vec<NodeId>>,
    /// Per partition, the replicas it was created with. Only these nodes
    /// initialize the partition's Raft group (all with this same membership);
    /// a node a replica moved to joins the existing group instead, since a
    /// second, different initial membership would fork the group's log.
    pub founders: Vec<Vec<NodeId>>,
    /// Partitions whose Raft membership is still being changed to `replicas`
    /// (a node left or joined them). A replica leaving keeps running until
    /// the move is settled.
    #[serde(default)]
    pub moving: BTreeSet<u32>,
}

/// Everything the metadata group agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<NodeId, NodeAddrs>,
    pub topics: BTreeMap<String, TopicAssignment>,
    pub next_topic_id: u64,
    /// Raft index of the last command applied (0 before any).
    pub applied_index: u64,
}

/// A change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node announces (or changes) its addresses.
    RegisterNode { id: NodeId, addrs: NodeAddrs },
    /// Creates a topic; its `spec.id` is assigned when applied.
    CreateTopic {
        spec: TopicSpec,
        replicas: Vec<Vec<NodeId>>,
    },
    /// Deletes a topic and every group's committed offsets for it.
    DeleteTopic { name: String },
    /// Gives partitions new replica lists (a node is leaving, or joined);
    /// each partition's Raft leader then changes the group's membership.
    MoveReplicas { moves: Vec<ReplicaMove> },
    /// A partition's Raft group now has exactly `replicas` as voters.
    ReplicasSettled {
        topic: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
    /// Commits consumer positions of `group` (stamped with the proposer's clock).
    CommitOffsets {
        group: String,
        commits: Vec<OffsetEntry>,
        time_ms: i64,
    },
}

/// One partition's new placement in a [`Command::MoveReplicas`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<NodeId>,
}

/// One committed position in a [`Command::CommitOffsets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

impl Command {
    /// The command as a record batch, the form every group's log stores; an
    /// error naming the size if it is too large for one record (a commit of
    /// very many offsets).
    pub fn encode(&self) -> Result<Bytes, String> {
        let json = serde_json::to_vec(self).expect("commands serialize");
        let size = json.len();
        let mut batch = BatchBuilder::control();
        batch
            .push(&Record::new(crate::log::now_ms(), json))
            .map_err(|e| format!("a metadata change of {size} bytes is too large: {e}"))?;
        Ok(batch.finish())
    }

    /// The command in a stored batch.
    pub fn decode(batch: &Bytes) -> Result<Command, String> {
        let mut records = Records::new(batch.clone()).map_err(|e| e.to_string())?;
        let (_, record) = records
            .next()
            .ok_or("metadata batch holds no record")?
            .map_err(|e| e.to_string())?;
        let value = record.value.ok_or("metadata record has no value")?;
        serde_json::from_slice(&value).map_err(|e| format!("metadata command: {e}"))
    }
}

/// The metadata group's [`Machine`]. Publishes every new state on a watch
/// channel, which the broker reconciles its partitions against. Committed
/// offsets, which change far more often than the rest, are not in the
/// published state (that would copy them on every commit): they live in a
/// map the broker shares and reads in place.
pub struct MetadataMachine {
    state: ClusterState,
    published: Arc<watch::Sender<Arc<ClusterState>>>,
    offsets: Arc<RwLock<OffsetMap>>,
}

impl MetadataMachine {
    pub fn new(
        published: Arc<watch::Sender<Arc<ClusterState>>>,
        offsets: Arc<RwLock<OffsetMap>>,
    ) -> Self {
        MetadataMachine {
            state: ClusterState::default(),
            published,
            offsets,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn publish(&self) {
        self.published.send_replace(Arc::new(self.state.clone()));
    }

    /// Applies `command`; false when it changed nothing (a topic that already
    /// exists, or one already deleted).
    fn apply_command(&mut self, command: Command) -> bool {
        let state = &mut self.state;
        match command {
            Command::RegisterNode { id, addrs } => {
                state.nodes.insert(id, addrs.clone()) != Some(addrs)
            }
            Command::CreateTopic { mut spec, replicas } => {
                if state.topics.contains_key(&spec.name) {
                    return false;
                }
                state.next_topic_id += 1;
                spec.id = state.next_topic_id;
                let assignment = TopicAssignment {
                    spec,
                    founders: replicas.clone(),
                    replicas,
                    moving: BTreeSet::new(),
                };
                state
                    .topics
                    .insert(assignment.spec.name.clone(), assignment);
                true
            }
            Command::MoveReplicas { moves } => {
                let mut changed = false;
                for m in moves {
                    if let Some(a) = state.topics.get_mut(&m.topic)
                        && let Some(slot) = a.replicas.get_mut(m.partition as usize)
                        && *slot != m.replicas
                    {
                        *slot = m.replicas;
                        a.moving.insert(m.partition);
                        changed = true;
                    }
                }
                changed
            }
            Command::ReplicasSettled {
                topic,
                partition,
                replicas,
            } => match state.topics.get_mut(&topic) {
                // Settled only for the placement that was moved to: a newer
                // move of the same partition stays pending.
                Some(a) if a.replicas.get(partition as usize) == Some(&replicas) => {
                    a.moving.remove(&partition)
                }
                _ => false,
            },
            Command::DeleteTopic { name } => {
                self.offsets.write().remove_topic(&name);
                state.topics.remove(&name).is_some()
            }
            Command::CommitOffsets {
                group,
                commits,
                time_ms,
            } => {
                let mut offsets = self.offsets.write();
                for c in commits {
                    let committed = CommittedOffset {
                        offset: c.offset,
                        metadata: c.metadata,
                        commit_time_ms: time_ms,
                    };
                    offsets.set(&group, &c.topic, c.partition, committed);
                }
                true
            }
        }
    }
}

impl Machine for MetadataMachine {
    fn apply(&mut self, log_id: &LogId, _header: &BatchHeader, batch: &Bytes) -> Applied {
        let changed = match Command::decode(batch) {
            Ok(command) => self.apply_command(command),
            Err(why) => {
                // Only the broker writes this log; a command it cannot read is
                // from a newer version. Skipping it on every node keeps them equal.
                tracing::error!(index = log_id.index, %why, "skipping an unreadable metadata command");
                false
            }
        };
        self.state.applied_index = log_id.index;
        self.publish();
        Applied {
            base_offset: log_id.index,
            duplicate: !changed,
        }
    }

    /// `state_len u32 (LE) | state JSON | offsets` (the offsets store's
    /// checkpoint format).
    fn snapshot(&self) -> Vec<u8> {
        let state = serde_json::to_vec(&self.state).expect("state serializes");
        let mut out = (state.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&state);
        out.extend_from_slice(&self.offsets.read().encode());
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (len, rest) = snapshot
            .split_first_chunk::<4>()
            .ok_or("metadata snapshot shorter than its header")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("metadata snapshot truncated".into());
        }
        let (state, offsets) = rest.split_at(len);
        self.state = serde_json::from_slice(state).map_err(|e| e.to_string())?;
        *self.offsets.write() = OffsetMap::decode(offsets)?;
        self.publish();
        Ok(())
    }
}

/// Replicas for each of `partitions` partitions of a topic: `factor` distinct
/// nodes each, the preferred leader first, rotated by partition (and by topic
/// id, so that many one-partition topics do not all lead on one node).
pub fn assign_replicas(
    nodes: &[NodeId],
    partitions: u32,
    factor: usize,
    seed: u64,
) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    (0..partitions as usize)
        .map(|p| {
            let first = (p + seed as usize) % n;
            (0..factor).map(|r| nodes[(first + r) % n]).collect()
        })
        .collect()
}

/// New placements for every partition the `leaving` node holds: its place
/// in each replica list goes to the remaining node (of `remaining`) that does
/// not hold that partition yet and holds the fewest replicas overall. Fails,
/// naming the partition, when no remaining node can take one.
pub fn plan_removal(
    state: &ClusterState,
    remaining: &[NodeId],
    leaving: NodeId,
) -> Result<Vec<ReplicaMove>, String> {
    let mut load: BTreeMap<NodeId, usize> = remaining.iter().map(|&n| (n, 0)).collect();
    for replicas in state.topics.values().flat_map(|a| &a.replicas) {
        for n in replicas {
            if let Some(l) = load.get_mut(n) {
                *l += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for (name, a) in &state.topics {
        for (partition, replicas) in a.replicas.iter().enumerate() {
            let Some(at) = replicas.iter().position(|&n| n == leaving) else {
                continue;
            };
            let Some(with) = load
                .iter()
                .filter(|(n, _)| !replicas.contains(n))
                .min_by_key(|&(&n, &l)| (l, n))
                .map(|(&n, _)| n)
            else {
                return Err(format!(
                    "partition {name}/{partition} has {} replicas and no other node can take the one on node {leaving}; add a node first",
                    replicas.len()
                ));
            };
            *load.get_mut(&with).expect("a remaining node") += 1;
            let mut moved = replicas.clone();
            moved[at] = with;
            moves.push(ReplicaMove {
                topic: name.clone(),
                partition: partition as u32,
                replicas: moved,
            });
        }
    }
    Ok(moves)
}

/// Moves that even out how many replicas each of `nodes` holds (to within
/// one), moving one replica at a time from the fullest node to the emptiest
/// in a partition that does not have the emptiest yet; each replica keeps its
/// position, so a moved preferred leader stays first. Used after a node joins.
pub fn plan_rebalance(state: &ClusterState, nodes: &[NodeId]) -> Vec<ReplicaMove> {
    let mut lists: Vec<(&str, u32, Vec<NodeId>)> = state
        .topics
        .iter()
        .flat_map(|(name, a)| {
            a.replicas
                .iter()
                .enumerate()
                .map(move |(p, r)| (name.as_str(), p as u32, r.clone()))
        })
        .collect();
    let original = lists.clone();
    loop {
        let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|&n| (n, 0)).collect();
        for (_, _, r) in &lists {
            for n in r {
                if let Some(l) = load.get_mut(n) {
                    *l += 1;
                }
            }
        }
        let Some((&fullest, &most)) = load
            .iter()
            .max_by_key(|&(&n, &l)| (l, std::cmp::Reverse(n)))
        else {
            break;
        };
        let (&emptiest, &least) = load
            .iter()
            .min_by_key(|&(&n, &l)| (l, n))
            .expect("nodes is not empty");
        if most <= least + 1 {
            break;
        }
        let Some((_, _, r)) = lists
            .iter_mut()
            .find(|(_, _, r)| r.contains(&fullest) && !r.contains(&emptiest))
        else {
            break;
        };
        let at = r.iter().position(|&n| n == fullest).expect("contains");
        r[at] = emptiest;
    }
    lists
        .into_iter()
        .zip(original)
        .filter(|(now, before)| now.2 != before.2)
        .map(|((topic, partition, replicas), _)| ReplicaMove {
            topic: topic.to_owned(),
            partition,
            replicas,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topics::TopicSettings;

    fn spec(name: &str) -> TopicSpec {
        let settings = TopicSettings {
            partitions: 3,
            replication_factor: 2,
            ..Default::default()
        };
        TopicSpec::new(name, &settings, 0, 1 << 20).unwrap()
    }

    fn apply(m: &mut MetadataMachine, index: u64, c: &Command) -> Applied {
        let batch = c.encode().unwrap();
        let header = strata_proto::batch::verify(&batch).unwrap();
        let id = LogId::new(openraft::CommittedLeaderId::new(1, 0), index);
        m.apply(&id, &header, &batch)
    }

    #[test]
    fn commands_apply_deterministically_and_publish() {
        let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
        let mut a = MetadataMachine::new(Arc::new(tx), Default::default());
        let mut b = machine();
        let create = Command::CreateTopic {
            spec: spec("orders"),
            replicas: assign_replicas(&[1, 2, 3], 3, 2, 0),
        };
        for m in [&mut a, &mut b] {
            assert!(!apply(m, 1, &create).duplicate);
            assert!(
                apply(m, 2, &create).duplicate,
                "second create changes nothing"
            );
        }
        assert_eq!(a.state(), b.state());
        assert_eq!(rx.borrow().topics["orders"].spec.id, 1);
        assert_eq!(rx.borrow().applied_index, 2);
        let delete = Command::DeleteTopic {
            name: "orders".into(),
        };
        assert!(!apply(&mut a, 3, &delete).duplicate);
        assert!(apply(&mut a, 4, &delete).duplicate);
        // A re-created topic is a new incarnation.
        apply(&mut a, 5, &create);
        assert_eq!(rx.borrow().topics["orders"].spec.id, 2);
    }

    fn machine() -> MetadataMachine {
        MetadataMachine::new(
            Arc::new(watch::channel(Default::default()).0),
            Default::default(),
        )
    }

    fn commit(group: &str, topic: &str, offset: u64) -> Command {
        Command::CommitOffsets {
            group: group.into(),
            commits: vec![OffsetEntry {
                topic: topic.into(),
                partition: 0,
                offset,
                metadata: "m".into(),
            }],
            time_ms: 42,
        }
    }

    #[test]
    fn snapshot_restores_the_same_state_and_offsets() {
        let mut a = machine();
        let addrs = NodeAddrs {
            data: "d".into(),
            control: "c".into(),
            peer: "p".into(),
        };
        apply(&mut a, 1, &Command::RegisterNode { id: 7, addrs });
        apply(&mut a, 2, &commit("g", "orders", 5));
        let mut b = machine();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a.state(), b.state());
        assert_eq!(*a.offsets.read(), *b.offsets.read());
        assert_eq!(b.offsets.read().fetch("g", None)[0].2.offset, 5);
        assert!(b.restore(&a.snapshot()[..3]).is_err());
    }

    #[test]
    fn deleting_a_topic_forgets_its_offsets() {
        let mut m = machine();
        let create = Command::CreateTopic {
            spec: spec("orders"),
            replicas: assign_replicas(&[1], 3, 1, 0),
        };
        apply(&mut m, 1, &create);
        apply(&mut m, 2, &commit("g", "orders", 5));
        apply(&mut m, 3, &commit("g", "other", 9));
        apply(
            &mut m,
            4,
            &Command::DeleteTopic {
                name: "orders".into(),
            },
        );
        let left = m.offsets.read().fetch("g", None);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "other");
    }

    #[test]
    fn removal_moves_each_replica_to_the_least_loaded_other_node() {
        let mut m = machine();
        let create = Command::CreateTopic {
            spec: spec("orders"),
            replicas: assign_replicas(&[1, 2, 3], 3, 2, 0),
        };
        apply(&mut m, 1, &create);
        let state = m.state().clone();
        // Node 4 joined; node 1 leaves.
        let moves = plan_removal(&state, &[2, 3, 4], 1).unwrap();
        assert_eq!(moves.len(), 2, "node 1 holds two of the three partitions");
        for mv in &moves {
            assert!(!mv.replicas.contains(&1));
            assert_eq!(mv.replicas.len(), 2);
            assert!(
                mv.replicas.contains(&4),
                "the empty node takes them: {mv:?}"
            );
        }
        apply(
            &mut m,
            2,
            &Command::MoveReplicas {
                moves: moves.clone(),
            },
        );
        let a = &m.state().topics["orders"];
        assert_eq!(a.moving.len(), 2);
        assert_ne!(a.replicas, a.founders);
        let settle = |mv: &ReplicaMove| Command::ReplicasSettled {
            topic: mv.topic.clone(),
            partition: mv.partition,
            replicas: mv.replicas.clone(),
        };
        apply(&mut m, 3, &settle(&moves[0]));
        apply(&mut m, 4, &settle(&moves[1]));
        assert!(m.state().topics["orders"].moving.is_empty());
        // Partition 0 is now on 4 and 2: with only node 4 left, nothing can
        // take node 2's replica.
        assert_eq!(m.state().topics["orders"].replicas[0], vec![4, 2]);
        let err = plan_removal(m.state(), &[4], 2).unwrap_err();
        assert!(err.contains("add a node first"), "{err}");
    }

    #[test]
    fn rebalancing_fills_a_new_node_to_within_one_replica() {
        let mut m = machine();
        let create = Command::CreateTopic {
            spec: spec("orders"),
            replicas: assign_replicas(&[1, 2, 3], 3, 3, 0),
        };
        apply(&mut m, 1, &create);
        let moves = plan_rebalance(m.state(), &[1, 2, 3, 4]);
        apply(&mut m, 2, &Command::MoveReplicas { moves });
        let mut load = BTreeMap::new();
        for r in &m.state().topics["orders"].replicas {
            let mut distinct = r.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{r:?}");
            for n in r {
                *load.entry(*n).or_insert(0) += 1;
            }
        }
        // Nine replicas on four nodes: 3, 2, 2, 2.
        let mut counts: Vec<_> = load.values().copied().collect();
        counts.sort();
        assert_eq!(counts, vec![2, 2, 2, 3], "{load:?}");
        assert!(
            plan_rebalance(m.state(), &[1, 2, 3, 4]).is_empty(),
            "balanced"
        );
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        let nodes = [1, 2, 3];
        let replicas = assign_replicas(&nodes, 6, 3, 0);
        for r in &replicas {
            let mut sorted = r.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
        }
        let mut leaders = [0; 4];
        for r in &replicas {
            leaders[r[0] as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
    }
}
