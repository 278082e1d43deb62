//! Administration through the control port: topics, cluster status, groups.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::target::Target;
use strata_proto::v1::{
    AddNodeRequest, ClusterStatusRequest, CreateTopicRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeTopicRequest, ListGroupsRequest, ListOffsetsRequest,
    ListTopicsRequest, OffsetSpec, RemoveNodeRequest, TopicPartition as WireTopicPartition,
};
pub use strata_proto::v1::{
    ClusterStatusResponse as ClusterStatus, GroupInfo, GroupMember, GroupPartition, GroupSummary,
    NodeInfo, PartitionInfo, PartitionOffsets, TopicConfig, TopicInfo,
};

use crate::connection::{CONNECT_TIMEOUT_MS, Connection};
use crate::error::Result;

/// Bounds of the pause between polls in [`Admin::wait_for_leaders`].
const LEADER_POLL_MIN_MS: u64 = 10;
const LEADER_POLL_MAX_MS: u64 = 200;
use crate::record::TopicPartition;

/// Settings of a topic to create; unset fields take the broker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub partitions: u32,
    pub replication_factor: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
}

impl NewTopic {
    pub fn new(partitions: u32) -> Self {
        NewTopic {
            partitions,
            ..Default::default()
        }
    }
    pub fn replication_factor(mut self, rf: u32) -> Self {
        self.replication_factor = rf;
        self
    }
    pub fn retention_bytes(mut self, bytes: u64) -> Self {
        self.retention_bytes = Some(bytes);
        self
    }
    pub fn retention(mut self, age: Duration) -> Self {
        self.retention_ms = Some(age.as_millis() as u64);
        self
    }
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = Some(bytes);
        self
    }
}

/// Which offset [`Admin::list_offsets`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    Earliest,
    /// The high watermark: the offset the next committed record will get.
    Latest,
    /// The first record at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A handle to the cluster's control plane; cheap to clone.
///
/// Calls go to one node's control port. If that node stops answering (its
/// connection fails, or it answers UNAVAILABLE), a call moves on to the next
/// known node: the bootstrap list, then every node named in the cluster's
/// metadata. A request whose connection broke after it was sent may have
/// taken effect before it is sent again elsewhere, so `create_topic` can then
/// fail with [`TopicExists`](crate::Error::TopicExists) and `delete_topic`
/// with [`TopicNotFound`](crate::Error::TopicNotFound); these are reported as they are, not hidden.
#[derive(Debug, Clone)]
pub struct Admin {
    conn: Arc<Connection>,
}

impl Admin {
    /// Connects to a broker's control address, a comma-separated bootstrap
    /// list of them (`"h1:7401,h2:7401"`: the first that answers is used), or
    /// an in-process broker.
    pub async fn connect(target: impl Into<Target>) -> Result<Admin> {
        let conn =
            Connection::connect(target.into(), Duration::from_millis(CONNECT_TIMEOUT_MS)).await?;
        Ok(Admin { conn })
    }

    pub async fn create_topic(&self, name: &str, topic: NewTopic) -> Result<TopicInfo> {
        let request = CreateTopicRequest {
            name: name.to_owned(),
            config: Some(TopicConfig {
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                retention_bytes: topic.retention_bytes.unwrap_or(0),
                retention_ms: topic.retention_ms.unwrap_or(0),
                segment_bytes: topic.segment_bytes.unwrap_or(0),
            }),
        };
        self.conn
            .control_call(|mut c| {
                let request = request.clone();
                async move { c.create_topic(request).await }
            })
            .await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicRequest {
            name: name.to_owned(),
        };
        self.conn
            .control_call(|mut c| {
                let request = request.clone();
                async move { c.delete_topic(request).await }
            })
            .await?;
        Ok(())
    }

    /// Adds a node started with `strata serve --join` to the cluster; the
    /// other nodes reach it at `peer_addr`. With `rebalance`, replicas then
    /// move onto it until every node holds about as many (returns once they
    /// have). Returns the members afterwards.
    pub async fn add_node(
        &self,
        node_id: u32,
        peer_addr: &str,
        rebalance: bool,
    ) -> Result<Vec<u32>> {
        let request = AddNodeRequest {
            node_id,
            peer_addr: peer_addr.to_owned(),
            rebalance,
        };
        let response = self
            .conn
            .control_call(|mut c| {
                let request = request.clone();
                async move { c.add_node(request).await }
            })
            .await?;
        Ok(response.members)
    }

    /// Moves every replica off `node_id`, then removes it from the cluster
    /// (once it returns, the node can be stopped). Safe to repeat if it timed
    /// out while replicas were still moving. Returns the members afterwards.
    pub async fn remove_node(&self, node_id: u32) -> Result<Vec<u32>> {
        let request = RemoveNodeRequest { node_id };
        let response = self
            .conn
            .control_call(|mut c| async move { c.remove_node(request).await })
            .await?;
        Ok(response.members)
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let response = self
            .conn
            .control_call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await })
            .await?;
        Ok(response.topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let request = DescribeTopicRequest {
            name: name.to_owned(),
        };
        self.conn
            .control_call(|mut c| {
                let request = request.clone();
                async move { c.describe_topic(request).await }
            })
            .await
    }

    /// Waits until every partition of a topic has a leader, up to `timeout`,
    /// and describes it then. A topic is created before its partitions have
    /// elected leaders: in a cluster, sends right after `create_topic` are
    /// retried until they have (the producer does that by itself); this is
    /// for callers that want to start, or time something, only once they have.
    pub async fn wait_for_leaders(&self, name: &str, timeout: Duration) -> Result<TopicInfo> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(LEADER_POLL_MIN_MS);
        loop {
            let topic = self.describe_topic(name).await?;
            let leaderless: Vec<u32> = topic
                .partitions
                .iter()
                .filter(|p| p.leader == 0)
                .map(|p| p.partition)
                .collect();
            if leaderless.is_empty() {
                return Ok(topic);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(crate::Error::NotLeader {
                    leader: None,
                    message: format!(
                        "partitions {leaderless:?} of {name} had no leader after {} ms",
                        timeout.as_millis()
                    ),
                });
            }
            // The last poll comes at the deadline, not a pause before it.
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(LEADER_POLL_MAX_MS));
        }
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.conn
            .control_call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let response = self
            .conn
            .control_call(|mut c| async move { c.list_groups(ListGroupsRequest {}).await })
            .await?;
        Ok(response.groups)
    }

    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo> {
        let request = DescribeGroupRequest {
            group: group.to_owned(),
        };
        self.conn
            .control_call(|mut c| {
                let request = request.clone();
                async move { c.describe_group(request).await }
            })
            .await
    }

    /// Offsets of partitions (asked of each partition's leader).
    pub async fn list_offsets(
        &self,
        partitions: &[TopicPartition],
        query: OffsetQuery,
    ) -> Result<Vec<PartitionOffsets>> {
        let (spec, timestamp_ms) = match query {
            OffsetQuery::Earliest => (OffsetSpec::Earliest, 0),
            OffsetQuery::Latest => (OffsetSpec::Latest, 0),
            OffsetQuery::Timestamp(ts) => (OffsetSpec::Timestamp, ts),
        };
        let mut out = Vec::with_capacity(partitions.len());
        for tp in partitions {
            let request = ListOffsetsRequest {
                partitions: vec![WireTopicPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                }],
                spec: spec as i32,
                timestamp_ms,
            };
            let response = self
                .conn
                .leader_call(&tp.topic, tp.partition, |mut client| async move {
                    client.list_offsets(request).await
                })
                .await?;
            out.extend(response.into_inner().partitions);
        }
        Ok(out)
    }

    /// Partition count of a topic.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.conn.partition_count(topic).await
    }
}
