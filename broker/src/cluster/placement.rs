//! A clustered node's side of placement: creating topics through the metadata
//! group, keeping the partitions open here in line with the metadata (opening
//! replicas assigned to this node, closing those moved away once the move is
//! settled), driving replica moves on the partitions this node leads, and
//! adding or removing nodes.
//!
//! A replica move (`strata cluster remove-node`, or placement on a new node)
//! is safe by construction: the metadata first records the new replica list
//! and marks the partition moving; the partition's Raft leader adds each new
//! replica as a learner and waits for it to catch up, then changes the voters
//! in one joint-consensus step, then records the move settled. Only then does
//! a replica that left close and delete its copy. Any step can be repeated
//! after a crash or a leader change: each checks what is already done.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{BasicNode, ChangeMembers};
use strata_proto::v1::HelloRequest;
use tokio::sync::watch;

use super::metadata::{
    ClusterState, Command, TopicAssignment, assign_replicas, plan_rebalance, plan_removal,
};
use super::metadata_group::{Change, MetadataGroup, PROPOSE_TIMEOUT};
use super::topics::{TopicSettings, TopicSpec};
use crate::broker::{Broker, DEFAULT_REPLICATION_FACTOR, Inner, Topic, blocking};
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::partition::replica::{ReplicaConfig, ResolveLeader};
use crate::raft::NodeId;
use crate::raft::groups::partition_group;

impl Broker {
    fn metadata(&self) -> Result<&Arc<MetadataGroup>> {
        self.inner
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("this node is not part of a cluster".into()))
    }

    pub(crate) async fn create_clustered_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<Topic>> {
        let metadata = self.metadata()?;
        let members = metadata.voters();
        let nodes = self.live_nodes(&members).await;
        let factor = match settings.replication_factor {
            0 => nodes.len().min(DEFAULT_REPLICATION_FACTOR),
            f => f as usize,
        };
        if factor > nodes.len() {
            let down: Vec<NodeId> = members
                .iter()
                .filter(|n| !nodes.contains(n))
                .copied()
                .collect();
            return Err(Error::InvalidArgument(format!(
                "replication factor {factor} is more than the {} live nodes of this cluster ({} members{})",
                nodes.len(),
                members.len(),
                if down.is_empty() {
                    String::new()
                } else {
                    format!("; not answering: {down:?}")
                }
            )));
        }
        let settings = TopicSettings {
            replication_factor: factor as u32,
            ..settings
        };
        let spec = TopicSpec::new(name, &settings, 0, self.config().default_segment_bytes)?;
        let state = metadata.state();
        if state.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_owned()));
        }
        let replicas = assign_replicas(&nodes, spec.partitions, factor, state.next_topic_id);
        let applied = metadata
            .propose(&Command::CreateTopic { spec, replicas })
            .await?;
        if applied.duplicate {
            return Err(Error::TopicExists(name.to_owned()));
        }
        self.wait_reconciled(applied.base_offset).await?;
        let topic = self.topic(name)?;
        tracing::info!(
            topic = name,
            partitions = topic.spec.partitions,
            replication_factor = factor,
            "topic created"
        );
        Ok(topic)
    }

    pub(crate) async fn delete_clustered_topic(&self, name: &str) -> Result<()> {
        if let Some(why) = strata_proto::limits::topic_name_error(name) {
            return Err(Error::InvalidArgument(why));
        }
        let command = Command::DeleteTopic {
            name: name.to_owned(),
        };
        let applied = self.metadata()?.propose(&command).await?;
        if applied.duplicate {
            return Err(Error::TopicNotFound(name.to_owned()));
        }
        self.wait_reconciled(applied.base_offset).await
    }

    /// Waits until this node's partitions reflect metadata index `index`.
    async fn wait_reconciled(&self, index: u64) -> Result<()> {
        let mut reconciled = self.inner.reconciled.subscribe();
        let reached = reconciled.wait_for(|&r| r >= index);
        match tokio::time::timeout(PROPOSE_TIMEOUT, reached).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NoQuorum(format!(
                "metadata change {index} was not applied on this node within {} s",
                PROPOSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Brings this node's open partitions in line with the cluster metadata,
    /// then drives the moves of partitions it leads. Returns whether every
    /// replica this node should hold is open.
    pub(crate) async fn reconcile(&self, state: &ClusterState) -> bool {
        for (&id, addrs) in &state.nodes {
            self.inner.peers.learn(id, &addrs.peer);
        }
        let deleted: Vec<Arc<Topic>> = self
            .topics()
            .into_iter()
            .filter(|t| {
                state
                    .topics
                    .get(&t.spec.name)
                    .is_none_or(|a| a.spec.id != t.spec.id)
            })
            .collect();
        for topic in deleted {
            self.inner.topics.write().remove(&topic.spec.name);
            if let Err(e) = self.retire_topic(topic).await {
                tracing::warn!(error = %e, "removing a deleted topic");
            }
        }
        let mut complete = true;
        for (name, assignment) in &state.topics {
            if let Err(e) = self.reconcile_topic(assignment).await {
                complete = false;
                tracing::error!(topic = %name, error = %e, "opening the replicas of a topic failed");
            }
        }
        if complete {
            self.inner.reconciled.send_replace(state.applied_index);
        }
        self.drive_moves(state);
        complete
    }

    /// Opens the replicas of `assignment` this node should hold and does not,
    /// and closes those it holds but no longer should (once their move is
    /// settled).
    async fn reconcile_topic(&self, assignment: &TopicAssignment) -> Result<()> {
        let me = NodeId::from(self.node_id());
        let name = &assignment.spec.name;
        let current = self
            .inner
            .topics
            .read()
            .get(name)
            .filter(|t| t.spec.id == assignment.spec.id)
            .cloned();
        let held: BTreeMap<u32, Arc<Partition>> = current
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (p.index(), p.clone())))
            .collect();
        // A replica moving away still votes until the move settles: one this
        // node held before a restart in the middle of the move opens again.
        let leaving: Vec<u32> = assignment
            .moving
            .iter()
            .copied()
            .filter(|p| !held.contains_key(p))
            .collect();
        let still_here = {
            let dirs: Vec<_> = leaving
                .iter()
                .map(|&p| (p, self.topic_dir(&assignment.spec).join(p.to_string())))
                .collect();
            blocking(move || {
                Ok(dirs
                    .into_iter()
                    .filter(|(_, d)| d.exists())
                    .map(|(p, _)| p)
                    .collect::<BTreeSet<u32>>())
            })
            .await?
        };
        let wanted: BTreeSet<u32> = (0..assignment.spec.partitions)
            .filter(|&p| assignment.replicas[p as usize].contains(&me) || still_here.contains(&p))
            .collect();
        let to_open: Vec<u32> = wanted
            .iter()
            .filter(|p| !held.contains_key(p))
            .copied()
            .collect();
        // A replica moved away keeps serving the group until the move settles.
        let to_close: Vec<u32> = held
            .keys()
            .filter(|p| !wanted.contains(p) && !assignment.moving.contains(p))
            .copied()
            .collect();
        let replicas: Vec<Vec<u32>> = assignment
            .replicas
            .iter()
            .map(|r| r.iter().map(|&n| n as u32).collect())
            .collect();
        if current.as_ref().is_some_and(|t| t.replicas == replicas)
            && to_open.is_empty()
            && to_close.is_empty()
        {
            return Ok(());
        }
        // Keep what opened even if another replica failed to: the next pass
        // retries only the missing ones (and nothing opened is left running
        // outside the topic map).
        let results = futures::future::join_all(
            to_open
                .iter()
                .map(|&index| self.open_replica(assignment, index)),
        )
        .await;
        let mut opened = Vec::new();
        let mut failed = None;
        for result in results {
            match result {
                Ok(p) => opened.push(p),
                Err(e) => failed = Some(e),
            }
        }
        let mut partitions: Vec<Arc<Partition>> = held
            .iter()
            .filter(|(p, _)| !to_close.contains(p))
            .map(|(_, p)| p.clone())
            .chain(opened)
            .collect();
        partitions.sort_by_key(|p| p.index());
        let topic = Topic {
            spec: assignment.spec.clone(),
            replicas,
            partitions,
        };
        self.inner
            .topics
            .write()
            .insert(name.clone(), Arc::new(topic));
        for index in to_close {
            self.close_moved_replica(&assignment.spec, &held[&index])
                .await;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Removes topic directories the cluster no longer has — a deleted
    /// topic's, or a deleted incarnation's — left by this node being down
    /// when they were deleted. Only with a view of the metadata as new as
    /// this node's log, so a stale view never deletes live data.
    pub(crate) async fn sweep_stale_topic_dirs(&self, state: &ClusterState) {
        if !self.metadata().is_ok_and(|m| m.caught_up()) {
            tracing::info!("metadata not caught up; leaving old topic directories for now");
            return;
        }
        let live: BTreeMap<String, String> = state
            .topics
            .iter()
            .map(|(name, a)| (name.clone(), a.spec.id.to_string()))
            .collect();
        let topics = self.data_dir().join("topics");
        let swept = blocking(move || {
            let mut stale = Vec::new();
            let Ok(entries) = std::fs::read_dir(&topics) else {
                return Ok(stale);
            };
            for topic in entries.flatten() {
                let name = topic.file_name().to_string_lossy().into_owned();
                match live.get(&name) {
                    None => stale.push(topic.path()),
                    Some(id) => {
                        let incarnations = std::fs::read_dir(topic.path())
                            .map_err(|e| Error::Internal(format!("listing {name}: {e}")))?;
                        stale.extend(
                            incarnations
                                .flatten()
                                .filter(|i| i.file_name().to_string_lossy() != *id)
                                .map(|i| i.path()),
                        );
                    }
                }
            }
            for dir in &stale {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| Error::Internal(format!("removing {}: {e}", dir.display())))?;
            }
            Ok(stale)
        })
        .await;
        match swept {
            Ok(dirs) if !dirs.is_empty() => {
                tracing::info!(
                    ?dirs,
                    "removed the data of topics deleted while this node was away"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping old topic directories"),
        }
    }

    /// Opens (creating if new) this node's replica of one partition and
    /// starts its Raft group. A founding replica initializes the group; a
    /// replica moved here waits for the leader to add it.
    async fn open_replica(
        &self,
        assignment: &TopicAssignment,
        index: u32,
    ) -> Result<Arc<Partition>> {
        let me = NodeId::from(self.node_id());
        let spec = &assignment.spec;
        let replicas = &assignment.replicas[index as usize];
        let rank = replicas.iter().position(|&n| n == me).unwrap_or(0);
        let group = partition_group(&spec.name, spec.id, index);
        let metadata = self.metadata()?.clone();
        let resolve: ResolveLeader = Arc::new(move |node| metadata.data_addr(node));
        let dir = self.topic_dir(spec).join(index.to_string());
        let (partition, _) = Partition::open_replicated(
            &dir,
            &dir.with_extension("raft"),
            spec.log_config(),
            self.inner.storage.clone(),
            ReplicaConfig {
                topic: spec.name.clone(),
                partition: index,
                node_id: me,
                rank: rank as u64,
                network: self.inner.peers.group(&group),
                resolve,
                debug_ack_before_commit: self.config().debug_ack_before_commit,
            },
        )
        .await?;
        let replica = partition.replica().expect("replicated").clone();
        self.raft_groups()
            .insert(group.clone(), replica.raft().clone());
        let founders = &assignment.founders[index as usize];
        if founders.contains(&me) {
            let members: BTreeMap<NodeId, String> = founders
                .iter()
                .map(|&n| (n, self.peer_addr_of(n).unwrap_or_default()))
                .collect();
            let founded =
                super::founding::found(replica.raft(), me, founders.first().copied(), members)
                    .await;
            if let Err(e) = founded {
                // Never leave a Raft core running on a replica not in the
                // topic map: the next pass would open a second one on it.
                self.raft_groups().remove(&group);
                let _ = partition.close().await;
                return Err(e);
            }
        }
        Ok(Arc::new(partition))
    }

    /// Closes a replica whose partition moved to other nodes and deletes it.
    async fn close_moved_replica(&self, spec: &TopicSpec, partition: &Arc<Partition>) {
        let (topic, index) = (spec.name.as_str(), partition.index());
        if let Err(e) = partition.close().await {
            tracing::warn!(topic, partition = index, error = %e, "closing a moved replica");
        }
        self.raft_groups()
            .remove(&partition_group(topic, spec.id, index));
        let dir = self.topic_dir(spec).join(index.to_string());
        let removed = blocking(move || {
            std::fs::remove_dir_all(dir.with_extension("raft"))
                .and_then(|_| std::fs::remove_dir_all(&dir))
                .map_err(|e| Error::Internal(format!("removing a moved replica: {e}")))
        })
        .await;
        match removed {
            Ok(()) => tracing::info!(topic, partition = index, "replica moved away and removed"),
            Err(e) => {
                tracing::warn!(topic, partition = index, error = %e, "removing a moved replica")
            }
        }
    }

    /// The members that answer a peer-port hello within `LIVENESS_TIMEOUT`
    /// (this node always counts), in order. New replicas go only to these.
    async fn live_nodes(&self, members: &[NodeId]) -> Vec<NodeId> {
        let me = NodeId::from(self.node_id());
        let probes = members.iter().map(|&node| async move {
            if node == me {
                return Some(node);
            }
            let addr = self.peer_addr_of(node)?;
            let mut client = self.inner.peers.client(&addr).ok()?;
            let mut request = tonic::Request::new(HelloRequest {
                node_id: self.node_id(),
            });
            request.set_timeout(LIVENESS_TIMEOUT);
            client.hello(request).await.ok().map(|_| node)
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// In a cluster, consumer groups are coordinated by the metadata group's
    /// leader (membership lives in its memory; offsets are replicated). Any
    /// other node refuses group requests with the coordinator's address.
    pub fn check_coordinator(&self) -> Result<()> {
        let Some(metadata) = self.inner.metadata.as_ref() else {
            return Ok(());
        };
        let me = NodeId::from(self.node_id());
        match metadata.leader() {
            Some(leader) if leader == me => Ok(()),
            leader => Err(Error::NotCoordinator {
                leader: leader.and_then(|l| metadata.data_addr(l)),
            }),
        }
    }

    /// Where this node reaches `node` on the peer port: `--peers`, else the
    /// address it was added with, else the one it registered.
    fn peer_addr_of(&self, node: NodeId) -> Option<String> {
        let metadata = self.inner.metadata.as_ref()?;
        let peers = &self.inner.peers;
        peers
            .configured(node)
            .or_else(|| metadata.member_addr(node).filter(|a| !a.is_empty()))
            .or_else(|| peers.address(node))
    }

    /// Starts the membership change of every moving partition this node
    /// leads (at most one change per partition at a time).
    pub(crate) fn drive_moves(&self, state: &ClusterState) {
        for (name, assignment) in &state.topics {
            for &index in &assignment.moving {
                let Ok(partition) = self.partition(name, index) else {
                    continue;
                };
                let Some(replica) = partition.replica() else {
                    continue;
                };
                if !replica.is_leader() {
                    continue;
                }
                let group = partition_group(name, assignment.spec.id, index);
                if !self.inner.moving.lock().insert(group.clone()) {
                    continue;
                }
                let broker = self.clone();
                let desired = assignment.replicas[index as usize].clone();
                let (topic, raft) = (name.clone(), replica.raft().clone());
                tokio::spawn(async move {
                    if let Err(e) = broker.move_partition(&topic, index, &raft, &desired).await {
                        tracing::warn!(%topic, partition = index, error = %e, "moving a partition's replicas failed; will retry");
                    }
                    broker.inner.moving.lock().remove(&group);
                });
            }
        }
    }

    /// Makes `desired` the voters of one partition's group (this node leads
    /// it), then records the move settled.
    async fn move_partition(
        &self,
        topic: &str,
        index: u32,
        raft: &crate::raft::Raft,
        desired: &[NodeId],
    ) -> Result<()> {
        let raft_error =
            |e: &dyn std::fmt::Display| Error::Internal(format!("{topic}/{index}: {e}"));
        let voters: BTreeSet<NodeId> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let wanted: BTreeSet<NodeId> = desired.iter().copied().collect();
        if voters != wanted {
            for &node in wanted.difference(&voters) {
                let addr = self.peer_addr_of(node).ok_or_else(|| {
                    Error::Internal(format!("no peer address known for node {node}"))
                })?;
                tracing::info!(
                    topic,
                    partition = index,
                    node,
                    "adding a replica (catching up)"
                );
                // Not openraft's blocking form: it waits without end for a
                // learner that never answers, and this task holds the move.
                raft.add_learner(node, BasicNode::new(&addr), false)
                    .await
                    .map_err(|e| raft_error(&e))?;
                let target = raft.metrics().borrow().last_log_index;
                raft.wait(Some(LEARNER_CATCH_UP_TIMEOUT))
                    .metrics(
                        |m| {
                            m.replication.as_ref().is_some_and(|r| {
                                r.get(&node).is_some_and(|l| l.map(|l| l.index) >= target)
                            })
                        },
                        "the new replica catches up",
                    )
                    .await
                    .map_err(|e| raft_error(&e))?;
            }
            raft.change_membership(ChangeMembers::ReplaceAllVoters(wanted.clone()), false)
                .await
                .map_err(|e| raft_error(&e))?;
            tracing::info!(topic, partition = index, voters = ?wanted, "replicas moved");
        }
        self.metadata()?
            .propose(&Command::ReplicasSettled {
                topic: topic.to_owned(),
                partition: index,
                replicas: desired.to_vec(),
            })
            .await?;
        Ok(())
    }

    /// Adds a node (started with `--join`) to the cluster; with `rebalance`,
    /// then moves replicas onto it until every node holds about as many, and
    /// waits for the moves to settle. Returns the voters.
    pub async fn add_node(&self, id: u32, peer_addr: &str, rebalance: bool) -> Result<Vec<NodeId>> {
        let metadata = self.metadata()?;
        if id == 0 {
            return Err(Error::InvalidArgument("node ids start at 1".into()));
        }
        if metadata.voters().contains(&NodeId::from(id)) {
            return Err(Error::InvalidArgument(format!(
                "node {id} is already a member of the cluster"
            )));
        }
        let change = Change::AddNode {
            id: id.into(),
            peer_addr: peer_addr.to_owned(),
        };
        metadata.change(&change).await?;
        // The change may have been made by another node (the leader): plan
        // with it applied here.
        metadata.wait_voter(NodeId::from(id), true).await?;
        tracing::info!(node = id, %peer_addr, "node added to the cluster");
        if rebalance {
            let moves = plan_rebalance(&metadata.state(), &metadata.voters());
            if !moves.is_empty() {
                tracing::info!(
                    node = id,
                    partitions = moves.len(),
                    "moving replicas onto the new node"
                );
                metadata.propose(&Command::MoveReplicas { moves }).await?;
            }
            self.wait_moves_settled(|_| true).await?;
        }
        Ok(metadata.voters())
    }

    /// Waits until no partition is moving and `placed` holds for every
    /// replica list.
    async fn wait_moves_settled(&self, placed: impl Fn(&[NodeId]) -> bool) -> Result<()> {
        let mut states = self.metadata()?.watch();
        let settled = states.wait_for(|s| {
            s.topics
                .values()
                .all(|a| a.moving.is_empty() && a.replicas.iter().all(|r| placed(r)))
        });
        match tokio::time::timeout(MOVE_TIMEOUT, settled).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NoQuorum(format!(
                "replicas were still moving after {} s; they keep moving in the background (see `strata status`), and repeating the command keeps waiting",
                MOVE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Removes a node: moves each of its replicas to another node, waits for
    /// the moves to settle, then removes it from the metadata group. Returns
    /// the voters. Safe to repeat if it timed out.
    pub async fn remove_node(&self, id: u32) -> Result<Vec<NodeId>> {
        let metadata = self.metadata()?;
        let leaving = NodeId::from(id);
        let voters = metadata.voters();
        if !voters.contains(&leaving) {
            return Err(Error::InvalidArgument(format!(
                "node {id} is not a member of the cluster (members: {voters:?})"
            )));
        }
        let remaining: Vec<NodeId> = voters.into_iter().filter(|&n| n != leaving).collect();
        if remaining.is_empty() {
            return Err(Error::InvalidArgument(
                "the last node of a cluster cannot be removed".into(),
            ));
        }
        let moves =
            plan_removal(&metadata.state(), &remaining, leaving).map_err(Error::InvalidArgument)?;
        if !moves.is_empty() {
            tracing::info!(
                node = id,
                partitions = moves.len(),
                "moving replicas off a leaving node"
            );
            metadata.propose(&Command::MoveReplicas { moves }).await?;
        }
        self.wait_moves_settled(|r| !r.contains(&leaving)).await?;
        metadata.change(&Change::RemoveNode { id: leaving }).await?;
        // As for add-node: the leader may have made the change; answer with
        // the membership once it is seen here, not this node's older view.
        // (A node removing itself may never hear the change commit.)
        if leaving == NodeId::from(self.node_id()) {
            return Ok(remaining);
        }
        metadata.wait_voter(leaving, false).await?;
        tracing::info!(node = id, "node removed from the cluster");
        Ok(metadata.voters())
    }
}

/// How long a member may take to answer a hello before a new topic counts
/// it as down (and places no replica on it).
pub const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a new replica may take to catch up on a partition's log before
/// the move is given up (and retried on the next maintenance pass).
pub const LEARNER_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long `remove-node` waits for the leaving node's replicas to move
/// (each new replica must first catch up on the partition's whole log).
pub const MOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// First wait before reopening replicas that failed to open.
const RECONCILE_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest wait between such attempts.
const RECONCILE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Reconciles partitions with every new cluster metadata state, until the
/// broker is gone or shutting down. `complete`: whether the first pass
/// opened everything.
///
/// A pass that left a replica unopened (its disk was full, its group could
/// not be founded yet) is retried with backoff even if the metadata does not
/// change: a quiet cluster may never change it, and the replica would stay
/// closed for good (found by the nemesis: a node restarted on a full disk,
/// then with space, held no copy of two partitions).
pub(crate) async fn reconcile_forever(
    inner: std::sync::Weak<Inner>,
    mut states: watch::Receiver<Arc<ClusterState>>,
    complete: bool,
) {
    let mut retry = (!complete).then_some(RECONCILE_RETRY_MIN);
    loop {
        let changed = match retry {
            None => states.changed().await.is_ok(),
            Some(after) => tokio::select! {
                changed = states.changed() => changed.is_ok(),
                () = tokio::time::sleep(after) => true,
            },
        };
        if !changed {
            return;
        }
        let state = states.borrow_and_update().clone();
        let Some(broker) = Broker::upgrade(&inner) else {
            return;
        };
        if broker.is_shutting_down() {
            return;
        }
        retry = match broker.reconcile(&state).await {
            true => None,
            false => Some(retry.map_or(RECONCILE_RETRY_MIN, |r| (r * 2).min(RECONCILE_RETRY_MAX))),
        };
    }
}
