//! This node's member of the cluster metadata group: the Raft group of every
//! node in `--peers`, whose state machine ([`metadata`](super::metadata)) says
//! which topics exist, where their partitions live, and where nodes listen.
//!
//! Any node accepts a metadata change: it proposes the command to its own Raft
//! member and, when that is not the leader, forwards it over the peer port to
//! the node that is (the `Propose` RPC), retrying with backoff while an
//! election runs. Every node reads the state from memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use strata_proto::v1::RaftRequest;
use tokio::sync::watch;

use super::metadata::{ClusterState, Command, MetadataMachine, NodeAddrs};
use crate::error::{Error, Result};
use crate::groups::offsets::OffsetMap;
use crate::log::storage::Storage;
use crate::log::{Log, LogConfig};
use crate::raft::groups::METADATA_GROUP;
use crate::raft::network::Peers;
use crate::raft::{Applied, LogStore, NodeId, Payload, Raft, StateMachine};

/// How long a metadata change may wait for a leader before it fails with
/// `NoQuorum` (an election takes well under a second).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Backoff between attempts while no leader is known.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Segments of the metadata log are small: commands are a few hundred bytes.
const METADATA_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// A change to the cluster that only the metadata leader can make: a command
/// for the state machine, or a change of the group's own membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    Apply(Command),
    /// Adds a node: it catches up as a learner, then becomes a voter.
    AddNode {
        id: NodeId,
        peer_addr: String,
    },
    /// Removes a node from the group's voters.
    RemoveNode {
        id: NodeId,
    },
}

impl ProposeRefused {
    fn into_error(self) -> Error {
        match self {
            ProposeRefused::NotLeader(leader) => {
                Error::NoQuorum(format!("no metadata leader (last known: {leader:?})"))
            }
            ProposeRefused::Invalid(why) => Error::InvalidArgument(why),
            // A membership change in progress, a group shutting down: all
            // worth retrying later.
            ProposeRefused::Failed(why) => Error::NoQuorum(why),
        }
    }
}

/// Why a node did not apply a command itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProposeRefused {
    /// Not the leader; the one it knows of, if any.
    NotLeader(Option<NodeId>),
    /// The change itself is unacceptable (too large).
    Invalid(String),
    Failed(String),
}

pub struct MetadataGroup {
    node_id: NodeId,
    raft: Raft,
    log: Arc<Log>,
    state: watch::Receiver<Arc<ClusterState>>,
    /// Consumer groups' committed offsets, kept by the state machine.
    offsets: Arc<RwLock<OffsetMap>>,
    peers: Peers,
}

impl MetadataGroup {
    /// Opens the metadata group's log and state in `dir` and starts this
    /// node's member. On first start every node initializes the group with
    /// the same membership (all of `members`), so whichever nodes come up
    /// first can elect a leader. A node that `joins` an existing cluster does
    /// not: it waits to be added (`strata cluster add-node`).
    pub async fn start(
        node_id: NodeId,
        members: BTreeMap<NodeId, String>,
        joins: bool,
        peers: Peers,
        dir: &Path,
        storage: Arc<dyn Storage>,
    ) -> Result<Arc<MetadataGroup>> {
        let (published, state) = watch::channel(Arc::new(ClusterState::default()));
        let offsets = Arc::new(RwLock::new(OffsetMap::default()));
        let machine = MetadataMachine::new(Arc::new(published), offsets.clone());
        let (log, store, machine) = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let config = LogConfig {
                    segment_bytes: METADATA_SEGMENT_BYTES,
                    ..LogConfig::default()
                };
                let (log, _) = Log::open(&dir.join("log"), config, storage.clone(), &mut ())
                    .map_err(std::io::Error::other)?;
                let log = Arc::new(log);
                let store = LogStore::open(log.clone(), storage.clone(), &dir)?;
                let machine = StateMachine::open(storage, &dir, machine)?;
                Ok((log, store, machine))
            })
            .await
            .map_err(|e| Error::Internal(format!("opening the metadata group failed: {e}")))?
            .map_err(|e| Error::Internal(format!("opening the metadata group: {e}")))?
        };
        let rank = members
            .keys()
            .position(|&id| id == node_id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("--peers does not list this node ({node_id})"))
            })?;
        let config = Arc::new(
            crate::raft::config(METADATA_GROUP, rank as u64)
                .validate()
                .map_err(|e| Error::Internal(format!("raft config: {e}")))?,
        );
        let raft = Raft::new(node_id, config, peers.group(METADATA_GROUP), store, machine)
            .await
            .map_err(|e| Error::Internal(format!("starting the metadata group: {e}")))?;
        if !joins {
            initialize(&raft, &members).await?;
        }
        Ok(Arc::new(MetadataGroup {
            node_id,
            raft,
            log,
            state,
            offsets,
            peers,
        }))
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The nodes of the cluster now: the metadata group's voters.
    pub fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let mut voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters.sort_unstable();
        voters
    }

    /// Waits (up to `PROPOSE_TIMEOUT`) until this node's view of the voters
    /// has `node` among them (`member`) or not: a membership change the
    /// leader made is seen here a moment later.
    pub async fn wait_voter(&self, node: NodeId, member: bool) -> Result<()> {
        self.raft
            .wait(Some(PROPOSE_TIMEOUT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == node)
                        == member
                },
                "the membership change",
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                let change = if member { "added" } else { "removed" };
                Error::NoQuorum(format!("node {node} {change}, but not seen here: {e}"))
            })
    }

    /// Where the group's membership says `node` listens for peers (the
    /// address it was added with), for nodes missing from `--peers`.
    pub fn member_addr(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// The latest applied state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// Every group's committed offsets, as applied on this node.
    pub fn offsets(&self) -> Arc<RwLock<OffsetMap>> {
        self.offsets.clone()
    }

    /// The data (client) address `node` registered, if it has.
    pub fn data_addr(&self, node: NodeId) -> Option<String> {
        self.state.borrow().nodes.get(&node).map(|n| n.data.clone())
    }

    /// A receiver that sees every applied state.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// The metadata leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Commits `command` through the metadata leader, wherever it is, and
    /// returns once it is applied there (the answer's `base_offset` is its
    /// Raft index).
    pub async fn propose(&self, command: &Command) -> Result<Applied> {
        self.change(&Change::Apply(command.clone())).await
    }

    /// Makes `change` on the metadata leader, wherever it is, retrying with
    /// backoff while no leader is known (up to `PROPOSE_TIMEOUT`).
    pub async fn change(&self, change: &Change) -> Result<Applied> {
        if let Change::Apply(command) = change {
            command.encode().map_err(Error::InvalidArgument)?;
        }
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        let mut delay = RETRY_MIN;
        let json = serde_json::to_vec(change).expect("changes serialize");
        let timed_out = || {
            Error::NoQuorum(format!(
                "the metadata change did not commit within {} s",
                PROPOSE_TIMEOUT.as_secs()
            ))
        };
        loop {
            // Bounded: a leader cut off from its peers accepts the change but
            // can never commit it.
            let left = deadline.saturating_duration_since(Instant::now());
            let leader = match tokio::time::timeout(left, self.change_here(change)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(applied)) => return Ok(applied),
                Ok(Err(ProposeRefused::NotLeader(leader))) => leader,
                Ok(Err(refused)) => return Err(refused.into_error()),
            };
            if let Some(leader) = leader.filter(|&l| l != self.node_id) {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.forward(leader, &json)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Ok(Ok(applied))) => return Ok(applied),
                    Ok(Ok(Err(ProposeRefused::NotLeader(_)))) => {}
                    Ok(Ok(Err(refused))) => return Err(refused.into_error()),
                    Ok(Err(why)) => {
                        tracing::debug!(leader, %why, "forwarding a metadata command failed")
                    }
                }
            }
            if Instant::now() + delay > deadline {
                return Err(Error::NoQuorum(format!(
                    "no metadata leader answered within {} s (leader known: {:?})",
                    PROPOSE_TIMEOUT.as_secs(),
                    leader
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Makes `change` if this node leads the metadata group.
    pub async fn change_here(
        &self,
        change: &Change,
    ) -> std::result::Result<Applied, ProposeRefused> {
        let written = match change {
            Change::Apply(command) => match command.encode() {
                Ok(batch) => self.raft.client_write(Payload(batch)).await,
                Err(why) => return Err(ProposeRefused::Invalid(why)),
            },
            Change::AddNode { id, peer_addr } => {
                // Catch up as a learner first (blocking), so the voter set
                // never waits on a node with an empty log.
                match self
                    .raft
                    .add_learner(*id, BasicNode::new(peer_addr), true)
                    .await
                {
                    Ok(_) => {
                        let add = ChangeMembers::AddVoterIds([*id].into());
                        self.raft.change_membership(add, false).await
                    }
                    Err(e) => Err(e),
                }
            }
            Change::RemoveNode { id } => {
                let remove = ChangeMembers::RemoveVoters([*id].into());
                self.raft.change_membership(remove, false).await
            }
        };
        match written {
            Ok(response) => Ok(match change {
                Change::Apply(_) => response.data,
                _ => Applied {
                    base_offset: response.log_id.index,
                    duplicate: false,
                },
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeRefused::NotLeader(f.leader_id))
            }
            Err(e) => Err(ProposeRefused::Failed(format!("metadata group: {e}"))),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        json: &[u8],
    ) -> std::result::Result<std::result::Result<Applied, ProposeRefused>, String> {
        let addr = self
            .peers
            .address(leader)
            .ok_or_else(|| format!("no peer address for node {leader}"))?;
        let mut request = tonic::Request::new(RaftRequest {
            group: METADATA_GROUP.to_owned(),
            json: json.to_vec().into(),
        });
        request.set_timeout(PROPOSE_TIMEOUT);
        let reply = self
            .peers
            .client(&addr)?
            .propose(request)
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        serde_json::from_slice(&reply.json).map_err(|e| format!("propose reply: {e}"))
    }

    /// Waits until this node has applied the command at `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut state = self.state.clone();
        let applied = state.wait_for(|s| s.applied_index >= index);
        match tokio::time::timeout(PROPOSE_TIMEOUT, applied).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NoQuorum(format!(
                "metadata change {index} committed but not applied on node {} within {} s",
                self.node_id,
                PROPOSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Keeps this node's addresses registered in the metadata: proposes them
    /// until the applied state shows them (in the background; a node can
    /// start before a quorum exists).
    pub fn register(self: &Arc<Self>, addrs: NodeAddrs) {
        let group = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = RETRY_MIN;
            loop {
                let Some(group) = group.upgrade() else { return };
                if group.state().nodes.get(&group.node_id) == Some(&addrs) {
                    return;
                }
                let command = Command::RegisterNode {
                    id: group.node_id,
                    addrs: addrs.clone(),
                };
                match group.propose(&command).await {
                    Ok(applied) => {
                        let _ = group.wait_applied(applied.base_offset).await;
                        tracing::info!(node = group.node_id, data = %addrs.data, "registered in cluster metadata");
                    }
                    Err(e) => tracing::debug!(error = %e, "registering this node failed; retrying"),
                }
                drop(group);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        });
    }

    /// Waits until the group has a leader and this node has applied what it
    /// knows to be committed, so its first view of the cluster is not stale.
    pub async fn wait_joined(&self) {
        let mut metrics = self.raft.metrics();
        let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
        // A follower learns the commit index with the leader's next heartbeat.
        let caught_up = metrics.wait_for(|m| m.last_applied.map(|l| l.index) >= m.last_log_index);
        let _ = tokio::time::timeout(PROPOSE_TIMEOUT, caught_up).await;
    }

    /// Whether this node's view of the cluster can be trusted to say a topic
    /// does not exist: its member is running (not stopped by a storage
    /// error, say on a full disk) and has applied every entry it holds.
    pub fn settled(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.running_state.is_ok() && m.last_applied.map(|l| l.index) >= m.last_log_index
    }

    /// Whether this node has applied every metadata entry it holds (its view
    /// is as new as its log).
    pub fn caught_up(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.last_applied.map(|l| l.index) >= m.last_log_index
    }

    /// Stops this node's member and closes its log.
    pub async fn shutdown(&self) -> Result<()> {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(%e, "metadata group shutdown failed");
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.close(&[]))
            .await
            .map_err(|e| Error::Internal(format!("close task failed: {e}")))?
            .map_err(Error::from)
    }
}

/// Initializes a group with `members` as voters, unless it already has a
/// membership (started before, or already joined by a leader's append).
/// Returns whether this call initialized it.
pub async fn initialize(raft: &Raft, members: &BTreeMap<NodeId, String>) -> Result<bool> {
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|(&id, addr)| (id, BasicNode::new(addr)))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(true),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(Error::Internal(format!("initializing a Raft group: {e}"))),
    }
}
