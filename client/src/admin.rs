//! Administration through the control port: topics, cluster status, groups.

use std::sync::Arc;
use std::time::Duration;

use strata_proto::target::Target;
use strata_proto::v1::{
    ClusterStatusRequest, CreateTopicRequest, DeleteTopicRequest, DescribeGroupRequest,
    DescribeTopicRequest, ListGroupsRequest, ListOffsetsRequest, ListTopicsRequest, OffsetSpec,
    TopicPartition as WireTopicPartition,
};
pub use strata_proto::v1::{
    ClusterStatusResponse as ClusterStatus, GroupInfo, GroupMember, GroupPartition, GroupSummary,
    NodeInfo, PartitionInfo, PartitionOffsets, TopicConfig, TopicInfo,
};

use crate::connection::{CONNECT_TIMEOUT_MS, Connection};
use crate::error::{Error, Result};
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
#[derive(Debug, Clone)]
pub struct Admin {
    conn: Arc<Connection>,
}

impl Admin {
    /// Connects to a broker's control address, or an in-process broker.
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
        Ok(self
            .conn
            .control()
            .create_topic(request)
            .await
            .map_err(Error::from)?
            .into_inner())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.conn
            .control()
            .delete_topic(DeleteTopicRequest {
                name: name.to_owned(),
            })
            .await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        Ok(self
            .conn
            .control()
            .list_topics(ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(self
            .conn
            .control()
            .describe_topic(DescribeTopicRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner())
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        Ok(self
            .conn
            .control()
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        Ok(self
            .conn
            .control()
            .list_groups(ListGroupsRequest {})
            .await?
            .into_inner()
            .groups)
    }

    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo> {
        Ok(self
            .conn
            .control()
            .describe_group(DescribeGroupRequest {
                group: group.to_owned(),
            })
            .await?
            .into_inner())
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
            let mut client = self.conn.data_client(&tp.topic, tp.partition).await?;
            let request = ListOffsetsRequest {
                partitions: vec![WireTopicPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                }],
                spec: spec as i32,
                timestamp_ms,
            };
            out.extend(client.list_offsets(request).await?.into_inner().partitions);
        }
        Ok(out)
    }

    /// Partition count of a topic.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.conn.partition_count(topic).await
    }
}
