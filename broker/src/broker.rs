//! One node: its data directory, topics and partitions, consumer groups,
//! producer ids, byte budgets and background maintenance.
//!
//! `Broker` is the embedding API (open a directory, then serve it or use it
//! in-process) and what the gRPC services call. It enforces the byte budgets
//! itself, so no path into the broker can bypass them.
//!
//! Dropping a `Broker` without `shutdown` is a crash as far as the disk is
//! concerned; recovery handles it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use strata_proto::target::{LocalConnector, Target, local_pair};

use crate::budget::{BudgetPermit, ByteBudget};
use crate::cluster::metadata::{Command, NodeAddrs, OffsetEntry};
use crate::cluster::metadata_group::MetadataGroup;
use crate::cluster::producer_ids::ProducerIds;
use crate::cluster::topics::{TopicSettings, TopicSpec, TopicStore};
use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::groups::coordinator::GroupCoordinator;
use crate::groups::monitor::GroupMonitor;
use crate::groups::offsets::{MAX_COMMIT_METADATA_BYTES, OffsetCommit, OffsetStore, Offsets};
use crate::lock::DirLock;
use crate::log::now_ms;
use crate::log::storage::{FileStorage, Storage};
use crate::metrics::Metrics;
use crate::partition::{Acks, Appended, Partition, PendingAppend};
use crate::raft::NodeId;
use crate::raft::groups::{METADATA_GROUP, partition_group};
use crate::raft::network::Peers;

/// The leader id reported while a partition has none (ids start at 1).
pub const NO_LEADER: u32 = 0;

/// Replicas per partition when a topic in a cluster does not say.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Producer ids handed out by node N carry N in their bits from here up.
const PRODUCER_ID_NODE_SHIFT: u32 = 48;

/// A topic and the partitions this node holds.
#[derive(Debug)]
pub struct Topic {
    pub spec: TopicSpec,
    /// Per partition, the nodes holding it (the preferred leader first).
    pub replicas: Vec<Vec<u32>>,
    /// The partitions held here, by index: all of them on a single node, those
    /// whose replica list names this node in a cluster.
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// The partition `index`, if this node holds it; `NotLeader` (without a
    /// hint; the broker adds one) if the topic has it but another node holds it.
    pub fn partition(&self, index: u32) -> Result<&Arc<Partition>> {
        if index >= self.spec.partitions {
            return Err(Error::PartitionNotFound {
                topic: self.spec.name.clone(),
                partition: index,
                count: self.spec.partitions,
            });
        }
        self.partitions
            .binary_search_by_key(&index, |p| p.index())
            .map(|at| &self.partitions[at])
            .map_err(|_| Error::NotLeader {
                topic: self.spec.name.clone(),
                partition: index,
                leader: None,
            })
    }
}

pub(crate) struct Inner {
    config: BrokerConfig,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    topic_store: Arc<Mutex<TopicStore>>,
    producer_ids: Arc<ProducerIds>,
    offsets: Offsets,
    groups: GroupCoordinator,
    group_monitor: GroupMonitor,
    produce_budget: ByteBudget,
    fetch_budget: ByteBudget,
    metrics: Metrics,
    started: Instant,
    recovery: watch::Sender<Recovery>,
    shutting_down: AtomicBool,
    shutdown_signal: watch::Sender<bool>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    /// Opens in-process connections to this broker.
    local: LocalConnector,
    /// Raft groups this node runs, for the peer service.
    pub(crate) raft_groups: crate::raft::groups::Groups,
    /// In a cluster: this node's member of the metadata group, and the
    /// channels to the other nodes that every group shares.
    pub(crate) metadata: Option<Arc<MetadataGroup>>,
    pub(crate) peers: Peers,
    /// The metadata index this node's open partitions reflect.
    pub(crate) reconciled: watch::Sender<u64>,
    /// Partition groups whose replica move this node is driving now.
    pub(crate) moving: Mutex<std::collections::HashSet<String>>,
    _lock: DirLock,
}

/// Where start-up recovery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recovery {
    Recovering,
    Ready,
    Failed(String),
}

/// A handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

/// A produce queued in order by [`Broker::submit_produce`], holding its
/// share of the produce budget until it is answered.
#[derive(Debug)]
#[must_use = "the produce's outcome is known only by waiting for it"]
pub struct PendingProduce {
    pending: PendingAppend,
    permit: Option<BudgetPermit>,
}

impl PendingProduce {
    pub async fn wait(self) -> Result<Appended> {
        let PendingProduce { pending, permit } = self;
        let answer = pending.wait().await;
        drop(permit);
        answer
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.inner.config.data_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

impl Broker {
    /// Opens the node's data directory: takes its lock, loads topics, opens
    /// every partition (recovering crashed ones) and starts maintenance.
    pub async fn open(config: BrokerConfig) -> Result<Broker> {
        Self::open_with_storage(config, Arc::new(FileStorage)).await
    }

    /// As [`Broker::open`], with the disk reached through `storage` (tests
    /// inject faults this way).
    pub async fn open_with_storage(
        config: BrokerConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Broker> {
        let broker = Self::start_with_storage(config, storage).await?;
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Like [`Broker::open`], but returns as soon as the directory is locked
    /// and its metadata read; partitions recover in the background. Until
    /// they have, the broker answers health checks (not ready) and refuses
    /// data requests with `Recovering`. `strata serve` starts this way so a
    /// node is observable while it recovers.
    pub async fn start(config: BrokerConfig) -> Result<Broker> {
        Self::start_with_storage(config, Arc::new(FileStorage)).await
    }

    pub async fn start_with_storage(
        config: BrokerConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Broker> {
        let started = Instant::now();
        if config.debug_ack_before_commit {
            tracing::error!(
                "fault injection on: replicated appends are acknowledged before they commit; acknowledged records can be lost"
            );
        }
        let dir = config.data_dir.clone();
        let lock = {
            let dir = dir.clone();
            blocking(move || DirLock::acquire(&dir)).await?
        };
        let meta = dir.join("meta");
        let clustered = config.is_clustered();
        let (store, producer_ids, local_offsets) = {
            let storage = storage.clone();
            let dir = dir.clone();
            blocking(move || {
                let store = TopicStore::load(storage.clone(), &meta)?;
                let ids = ProducerIds::load(storage.clone(), &meta)?;
                // A cluster keeps offsets in the metadata group instead.
                let offsets = match clustered {
                    true => None,
                    false => Some(OffsetStore::open(
                        &dir.join("groups").join("offsets"),
                        storage,
                    )?),
                };
                Ok((store, ids, offsets))
            })
            .await?
        };
        let specs: Vec<TopicSpec> = store.topics().cloned().collect();
        let (connector, listener) = local_pair();
        let raft_groups = crate::raft::groups::Groups::default();
        let peers = Peers::with_addresses(
            config
                .peers
                .iter()
                .map(|(&id, addr)| (NodeId::from(id), addr.clone())),
        )
        .with_tls(
            config
                .security
                .peer_tls
                .as_ref()
                .map(|tls| tls.client_config()),
        );
        let metadata = if clustered {
            let members = config
                .peers
                .iter()
                .map(|(&id, addr)| (NodeId::from(id), addr.clone()))
                .collect();
            let group = MetadataGroup::start(
                config.node_id.into(),
                members,
                config.joins,
                peers.clone(),
                &dir.join("cluster"),
                storage.clone(),
            )
            .await?;
            raft_groups.insert(METADATA_GROUP.to_owned(), group.raft().clone());
            Some(group)
        } else {
            None
        };
        let offsets = match (&metadata, local_offsets) {
            (Some(group), _) => Offsets::Replicated(group.offsets()),
            (None, Some(store)) => Offsets::Local(Arc::new(store)),
            (None, None) => unreachable!("a single node opens its offsets store"),
        };
        let broker = Broker {
            inner: Arc::new(Inner {
                produce_budget: ByteBudget::new(
                    "produce",
                    config.produce_budget_bytes,
                    config.overload_retry_after,
                ),
                fetch_budget: ByteBudget::new(
                    "fetch",
                    config.fetch_budget_bytes,
                    config.overload_retry_after,
                ),
                groups: GroupCoordinator::new(config.group_session_timeout),
                group_monitor: GroupMonitor::default(),
                metrics: Metrics::new(config.metrics_enabled),
                topics: RwLock::new(BTreeMap::new()),
                topic_store: Arc::new(Mutex::new(store)),
                producer_ids: Arc::new(producer_ids),
                offsets,
                storage,
                started,
                recovery: watch::Sender::new(Recovery::Recovering),
                shutting_down: AtomicBool::new(false),
                shutdown_signal: watch::Sender::new(false),
                maintenance: Mutex::new(None),
                local: connector,
                raft_groups,
                metadata,
                peers,
                reconciled: watch::Sender::new(0),
                moving: Mutex::new(Default::default()),
                _lock: lock,
                config,
            }),
        };
        broker.remove_deleted_topics();
        crate::server::local::serve(&broker, listener);
        let recovering = broker.clone();
        tokio::spawn(async move { recovering.recover(specs, started).await });
        Ok(broker)
    }

    /// Opens every topic's partitions, then marks the node ready.
    async fn recover(self, specs: Vec<TopicSpec>, started: Instant) {
        if let Some(delay) = self.config().debug_recovery_delay {
            tracing::warn!(
                ms = delay.as_millis() as u64,
                "delaying recovery (fault injection)"
            );
            tokio::time::sleep(delay).await;
        }
        if let Some(metadata) = self.inner.metadata.clone() {
            // The cluster's topics, not this node's file, say what to open.
            metadata.wait_joined().await;
            let mut states = metadata.watch();
            let first = states.borrow_and_update().clone();
            self.sweep_stale_topic_dirs(&first).await;
            let complete = self.reconcile(&first).await;
            tokio::spawn(crate::cluster::placement::reconcile_forever(
                self.downgrade(),
                states,
                complete,
            ));
        }
        let specs = if self.is_clustered() {
            Vec::new()
        } else {
            specs
        };
        for spec in specs {
            match open_topic(
                self.data_dir(),
                spec,
                self.inner.storage.clone(),
                self.node_id(),
            )
            .await
            {
                Ok(topic) => {
                    self.inner
                        .topics
                        .write()
                        .insert(topic.spec.name.clone(), Arc::new(topic));
                }
                Err(e) => {
                    tracing::error!(dir = %self.data_dir().display(), error = %e, "recovery failed");
                    self.inner
                        .recovery
                        .send_replace(Recovery::Failed(e.to_string()));
                    return;
                }
            }
        }
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&self.inner)));
        *self.inner.maintenance.lock() = Some(maintenance);
        self.inner
            .metrics
            .recovery_seconds
            .set_f64(started.elapsed().as_secs_f64());
        self.inner.recovery.send_replace(Recovery::Ready);
        tracing::info!(dir = %self.data_dir().display(), topics = self.topics().len(),
            ms = started.elapsed().as_secs_f64() * 1e3, "broker recovered and ready");
    }

    /// Waits until recovery has finished; its error if it failed.
    pub async fn wait_ready(&self) -> Result<()> {
        let mut rx = self.inner.recovery.subscribe();
        let state = rx
            .wait_for(|r| !matches!(r, Recovery::Recovering))
            .await
            .map_err(|_| Error::Internal("recovery stopped".into()))?;
        match &*state {
            Recovery::Failed(why) => Err(Error::Internal(format!("recovery failed: {why}"))),
            _ => Ok(()),
        }
    }

    /// A connector for clients in this process (`Producer::builder(&broker)`
    /// does this for you).
    pub fn connector(&self) -> LocalConnector {
        self.inner.local.clone()
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Broker> {
        weak.upgrade().map(|inner| Broker { inner })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.config.data_dir
    }

    /// The Raft groups running on this node.
    pub fn raft_groups(&self) -> &crate::raft::groups::Groups {
        &self.inner.raft_groups
    }

    pub fn node_id(&self) -> u32 {
        self.inner.config.node_id
    }

    /// Whether this node is one of a Raft-replicated cluster.
    pub fn is_clustered(&self) -> bool {
        self.inner.metadata.is_some()
    }

    /// This node's member of the cluster metadata group (clusters only).
    pub fn metadata_group(&self) -> Option<&Arc<MetadataGroup>> {
        self.inner.metadata.as_ref()
    }

    /// Where each node listens: the registered nodes of a cluster, or nothing
    /// on a single node (which knows its own addresses from its listeners).
    pub fn cluster_nodes(&self) -> BTreeMap<NodeId, NodeAddrs> {
        self.inner
            .metadata
            .as_ref()
            .map(|m| m.state().nodes.clone())
            .unwrap_or_default()
    }

    /// The node leading `partition` of `topic`, as far as this node knows: its
    /// own Raft view when it holds a replica (0 while no leader is known, as
    /// during an election), else the preferred leader.
    pub fn partition_leader(&self, topic: &Topic, partition: u32) -> u32 {
        let preferred = topic
            .replicas
            .get(partition as usize)
            .and_then(|r| r.first().copied())
            .unwrap_or(self.node_id());
        match topic.partition(partition).ok().and_then(|p| p.replica()) {
            Some(replica) => replica.leader().map_or(NO_LEADER, |l| l as u32),
            None => preferred,
        }
    }

    /// The data address of `node`, if it has registered one.
    fn data_addr_of(&self, node: u32) -> Option<String> {
        self.inner
            .metadata
            .as_ref()
            .and_then(|m| m.data_addr(NodeId::from(node)))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Recovery is finished and the node serves its partitions.
    pub fn is_ready(&self) -> bool {
        *self.inner.recovery.borrow() == Recovery::Ready && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Flips to `true` when shutdown begins; long-running streams watch it.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown_signal.subscribe()
    }

    /// Starts serving this broker on the data, control and peer ports.
    pub fn serve(&self, addrs: &crate::config::ListenAddrs) -> Result<crate::server::ServerHandle> {
        crate::server::serve(self, addrs)
    }

    pub fn produce_budget(&self) -> &ByteBudget {
        &self.inner.produce_budget
    }

    pub fn fetch_budget(&self) -> &ByteBudget {
        &self.inner.fetch_budget
    }

    pub fn groups(&self) -> &GroupCoordinator {
        &self.inner.groups
    }

    pub fn group_monitor(&self) -> &GroupMonitor {
        &self.inner.group_monitor
    }

    /// Commits consumer positions for `group`: each partition must exist and
    /// the offset lie within its log; the member must still own or be
    /// assigned each partition; the commit is durable when this returns.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        commits: Vec<OffsetCommit>,
    ) -> Result<()> {
        self.check_open()?;
        if let Some(why) = strata_proto::limits::group_id_error(group) {
            return Err(Error::InvalidArgument(why));
        }
        if commits.is_empty() {
            return Ok(());
        }
        let mut high_watermarks = Vec::with_capacity(commits.len());
        for c in &commits {
            let p = match self.partition(&c.topic, c.partition) {
                // A follower's high watermark trails the leader's by up to a
                // heartbeat: checking against it would refuse offsets a
                // consumer just read from the leader.
                Ok(p) if p.replica().is_none_or(|r| r.is_leader()) => p,
                // Led or held elsewhere: the high watermark that counts is
                // not known here, so the offset is taken as given.
                Ok(_) | Err(Error::NotLeader { .. }) => {
                    high_watermarks.push(c.offset);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let hw = p.high_watermark();
            if c.offset > hw {
                return Err(Error::OffsetOutOfRange {
                    topic: c.topic.clone(),
                    partition: c.partition,
                    requested: c.offset,
                    start: p.start_offset(),
                    end: hw,
                });
            }
            high_watermarks.push(hw);
        }
        let tps: Vec<(String, u32)> = commits
            .iter()
            .map(|c| (c.topic.clone(), c.partition))
            .collect();
        self.groups().check_commit(group, member_id, &tps)?;
        match (&self.inner.offsets, &self.inner.metadata) {
            (Offsets::Local(store), _) => {
                let (store, owned_group, stored) =
                    (store.clone(), group.to_owned(), commits.clone());
                blocking(move || store.commit(&owned_group, &stored)).await?;
            }
            (Offsets::Replicated(_), Some(metadata)) => {
                if let Some(c) = commits
                    .iter()
                    .find(|c| c.metadata.len() > MAX_COMMIT_METADATA_BYTES)
                {
                    return Err(Error::InvalidArgument(format!(
                        "commit metadata is {} bytes; the limit is {MAX_COMMIT_METADATA_BYTES}",
                        c.metadata.len()
                    )));
                }
                let command = Command::CommitOffsets {
                    group: group.to_owned(),
                    commits: commits
                        .iter()
                        .map(|c| OffsetEntry {
                            topic: c.topic.clone(),
                            partition: c.partition,
                            offset: c.offset,
                            metadata: c.metadata.clone(),
                        })
                        .collect(),
                    time_ms: now_ms(),
                };
                let applied = metadata.propose(&command).await?;
                // Read-your-writes: a fetch on this node right after sees it.
                metadata.wait_applied(applied.base_offset).await?;
            }
            (Offsets::Replicated(_), None) => unreachable!("replicated offsets need a cluster"),
        }
        let now = now_ms();
        for (c, hw) in commits.iter().zip(high_watermarks) {
            self.group_monitor()
                .record_commit(group, &c.topic, c.partition, c.offset, hw, now);
        }
        Ok(())
    }

    /// Committed offsets of every group (this node's store, or the cluster's).
    pub fn offsets(&self) -> &Offsets {
        &self.inner.offsets
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.inner.topics.read().values().cloned().collect()
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(why) = strata_proto::limits::topic_name_error(name) {
            return Err(Error::InvalidArgument(why));
        }
        if let Some(topic) = self.inner.topics.read().get(name) {
            return Ok(topic.clone());
        }
        // A topic not opened yet may still be recovering, or, in a cluster,
        // be missing from a view of the metadata that is behind: a node
        // restarted on a full disk told consumers an existing topic did not
        // exist (a nemesis run). Those answers are retriable elsewhere.
        let unsettled = self.inner.metadata.as_ref().is_some_and(|m| !m.settled());
        match &*self.inner.recovery.borrow() {
            Recovery::Ready if !unsettled => Err(Error::TopicNotFound(name.to_owned())),
            _ => Err(Error::Recovering),
        }
    }

    /// A partition this node holds. For one held elsewhere, `NotLeader` with
    /// the address of its preferred leader (which redirects again if another
    /// replica leads now).
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        match t.partition(partition) {
            Ok(p) => Ok(p.clone()),
            Err(Error::NotLeader {
                topic, partition, ..
            }) => {
                let leader = self.data_addr_of(self.partition_leader(&t, partition));
                Err(Error::NotLeader {
                    topic,
                    partition,
                    leader,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Partition counts of all topics (for group assignment).
    pub fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.inner
            .topics
            .read()
            .iter()
            .map(|(n, t)| (n.clone(), t.spec.partitions))
            .collect()
    }

    /// Creates a topic and opens its partitions (in a cluster: commits it to
    /// the metadata group, and returns once this node has opened its replicas).
    pub async fn create_topic(&self, name: &str, settings: TopicSettings) -> Result<Arc<Topic>> {
        self.check_open()?;
        if self.is_clustered() {
            return self.create_clustered_topic(name, settings).await;
        }
        let live_nodes = 1;
        if settings.replication_factor > live_nodes {
            return Err(Error::InvalidArgument(format!(
                "replication factor {} is more than the {live_nodes} live node(s) of this cluster",
                settings.replication_factor
            )));
        }
        let store = self.inner.topic_store.clone();
        let default_segment = self.inner.config.default_segment_bytes;
        let owned_name = name.to_owned();
        let spec =
            blocking(move || store.lock().create(&owned_name, &settings, default_segment)).await?;
        let topic = Arc::new(
            open_topic(
                self.data_dir(),
                spec,
                self.inner.storage.clone(),
                self.node_id(),
            )
            .await?,
        );
        self.inner
            .topics
            .write()
            .insert(name.to_owned(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = topic.spec.partitions,
            "topic created"
        );
        Ok(topic)
    }

    /// Deletes a topic: it disappears at once for new requests, its partitions
    /// are closed, and its data is removed in the background.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        if self.is_clustered() {
            return self.delete_clustered_topic(name).await;
        }
        let store = self.inner.topic_store.clone();
        let owned_name = name.to_owned();
        blocking(move || store.lock().delete(&owned_name).map(|_| ())).await?;
        let Some(topic) = self.inner.topics.write().remove(name) else {
            return Ok(());
        };
        self.retire_topic(topic).await
    }

    /// Closes a topic already removed from the map, forgets its offsets and
    /// removes its data.
    pub(crate) async fn retire_topic(&self, topic: Arc<Topic>) -> Result<()> {
        let name = topic.spec.name.as_str();
        for p in &topic.partitions {
            if let Err(e) = p.close().await {
                tracing::warn!(topic = name, partition = p.index(), error = %e, "closing a deleted partition");
            }
            if p.replica().is_some() {
                self.raft_groups()
                    .remove(&partition_group(name, topic.spec.id, p.index()));
            }
        }
        // A cluster's metadata group forgets the offsets as it deletes the topic.
        if let Offsets::Local(store) = &self.inner.offsets {
            let (store, owned_name) = (store.clone(), name.to_owned());
            blocking(move || store.delete_topic(&owned_name)).await?;
        }
        self.group_monitor().forget_topic(name);
        let from = self.topic_dir(&topic.spec);
        if !from.exists() {
            // A cluster node that held no replica of it.
            tracing::info!(topic = name, "topic deleted");
            return Ok(());
        }
        let to = self
            .data_dir()
            .join("deleted")
            .join(format!("{name}-{}", topic.spec.id));
        blocking(move || {
            std::fs::create_dir_all(to.parent().expect("has parent"))
                .and_then(|_| std::fs::rename(&from, &to))
                .and_then(|_| std::fs::remove_dir_all(&to))
                .map_err(|e| Error::Internal(format!("removing data of deleted topic: {e}")))
        })
        .await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    fn remove_deleted_topics(&self) {
        let dir = self.data_dir().join("deleted");
        tokio::task::spawn_blocking(move || {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove data of deleted topics");
            }
        });
    }

    fn check_open(&self) -> Result<()> {
        if self.is_shutting_down() {
            Err(Error::ShuttingDown)
        } else if *self.inner.recovery.borrow() != Recovery::Ready {
            Err(Error::Recovering)
        } else {
            Ok(())
        }
    }

    /// Appends one batch to a partition under the produce byte budget. With
    /// `Acks::None` it returns once the batch is queued (offset unknown), but
    /// the batch's bytes stay charged to the budget until it is written.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<Appended> {
        self.submit_produce(topic, partition, batch, acks)?
            .wait()
            .await
    }

    /// [`Broker::produce`] in two steps: queues the batch behind every batch
    /// submitted to the partition before it (see [`Partition::submit`]) and
    /// returns at once; the answer comes from [`PendingProduce::wait`]. The
    /// batch's bytes stay charged to the produce budget until it is answered
    /// (with `Acks::None`, until it is written).
    pub fn submit_produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<PendingProduce> {
        self.check_open()?;
        let p = self.partition(topic, partition)?;
        let permit = self.inner.produce_budget.try_acquire(batch.len())?;
        if acks == Acks::None {
            let pending = p.submit(batch, Acks::Leader)?;
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = pending.wait().await {
                    tracing::debug!(error = %e, "fire-and-forget produce failed");
                }
            });
            return Ok(PendingProduce {
                pending: PendingAppend::answered(Appended {
                    base_offset: u64::MAX,
                    duplicate: false,
                }),
                permit: None,
            });
        }
        Ok(PendingProduce {
            pending: p.submit(batch, acks)?,
            permit: Some(permit),
        })
    }

    /// A fresh idempotent producer id (epoch 0). In a cluster the node id is
    /// in the top bits, so ids from different nodes never collide.
    pub async fn init_producer(&self) -> Result<(u64, u16)> {
        self.check_open()?;
        let ids = self.inner.producer_ids.clone();
        let id = blocking(move || ids.allocate()).await?;
        let node_bits = if self.is_clustered() {
            u64::from(self.node_id()) << PRODUCER_ID_NODE_SHIFT
        } else {
            0
        };
        Ok((node_bits | id, 0))
    }

    /// Stops accepting work, finishes in-flight appends, flushes every
    /// partition and marks each cleanly closed. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.shutdown_signal.send_replace(true);
        if let Some(task) = self.inner.maintenance.lock().take() {
            task.abort();
        }
        let mut first_error = None;
        for topic in self.topics() {
            for p in &topic.partitions {
                if let Err(e) = p.close().await {
                    tracing::error!(topic = %topic.spec.name, partition = p.index(), error = %e, "close failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(metadata) = &self.inner.metadata
            && let Err(e) = metadata.shutdown().await
        {
            first_error.get_or_insert(e);
        }
        if let Offsets::Local(store) = &self.inner.offsets {
            let store = store.clone();
            if let Err(e) = blocking(move || store.close()).await {
                first_error.get_or_insert(e);
            }
        }
        tracing::info!(dir = %self.data_dir().display(), "broker shut down");
        first_error.map_or(Ok(()), Err)
    }
}

/// `Producer::builder(&broker)`, `Consumer::builder(&broker)`, `Admin::connect(&broker)`:
/// clients in the same process reach the broker without the network.
impl From<&Broker> for Target {
    fn from(broker: &Broker) -> Target {
        Target::Local(broker.connector())
    }
}

impl Broker {
    /// Where a topic's partitions live: `topics/<name>/` on a single node
    /// (whose topic store moves a deleted topic's directory aside before the
    /// name can be reused), `topics/<name>/<incarnation>/` in a cluster, so a
    /// re-created topic never opens a deleted one's data, even on a node that
    /// was down when it was deleted.
    pub(crate) fn topic_dir(&self, spec: &TopicSpec) -> PathBuf {
        let dir = self.data_dir().join("topics").join(&spec.name);
        match self.is_clustered() {
            true => dir.join(spec.id.to_string()),
            false => dir,
        }
    }
}

pub(crate) fn partition_dir(data_dir: &std::path::Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}

/// Opens all partitions of a topic, in parallel on blocking threads.
async fn open_topic(
    data_dir: &std::path::Path,
    spec: TopicSpec,
    storage: Arc<dyn Storage>,
    node_id: u32,
) -> Result<Topic> {
    let opens = (0..spec.partitions).map(|index| {
        let dir = partition_dir(data_dir, &spec.name, index);
        let name = spec.name.clone();
        let config = spec.log_config();
        let storage = storage.clone();
        blocking(move || {
            let (p, report) = Partition::open(&dir, &name, index, config, storage)?;
            if report.damaged_segments > 0 {
                tracing::error!(topic = %name, partition = index, damaged = report.damaged_segments,
                    "partition has damaged sealed segments; reads of the damaged records fail with DATA_LOSS");
            }
            if !report.clean_shutdown && !report.created {
                tracing::warn!(topic = %name, partition = index, scanned = report.scanned_bytes,
                    truncated = report.truncated_bytes, "partition recovered after an unclean shutdown");
            }
            Ok(Arc::new(p))
        })
    });
    let partitions = futures::future::try_join_all(opens).await?;
    Ok(Topic {
        replicas: vec![vec![node_id]; spec.partitions as usize],
        spec,
        partitions,
    })
}

/// Background upkeep: retention, checkpoints, expiry of group members and
/// producers. Holds only a weak reference, so it ends with the broker.
async fn maintain(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.config.maintenance_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let broker = Broker { inner };
        if broker.is_shutting_down() {
            return;
        }
        let now = now_ms();
        for topic in broker.topics() {
            for p in &topic.partitions {
                match p.maintain(now).await {
                    Ok(r) if r.segments_deleted > 0 => {
                        broker
                            .metrics()
                            .retention_deleted_bytes
                            .add(r.bytes_deleted);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(topic = %topic.spec.name, partition = p.index(), error = %e, "maintenance failed")
                    }
                }
            }
        }
        broker.groups().expire(&broker.partition_counts());
        if let Some(metadata) = broker.metadata_group() {
            // A leader elected in the middle of a move picks it up here.
            broker.drive_moves(&metadata.state());
        }
        let mut health = Vec::new();
        for group in broker.group_names() {
            match broker.group_health(&group).await {
                Ok(Some(h)) => health.push(h),
                Ok(None) => {}
                Err(e) => tracing::warn!(%group, error = %e, "evaluating consumer group failed"),
            }
        }
        broker.group_monitor().publish(health);
    }
}
