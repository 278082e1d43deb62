//! The control-plane gRPC service: topics, metadata, cluster status and
//! consumer-group admin. Served on its own port and runtime so that a flood
//! of data never slows it; it reads broker state from memory, except group
//! lag in seconds, which reads the timestamp of one record per partition.

use strata_proto::v1::control_server::Control;
use strata_proto::v1::*;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::broker::{Broker, Topic};
use crate::cluster::topics::TopicSettings;
use crate::error::{Error, GroupErrorKind};

#[derive(Debug, Clone)]
pub struct ControlService {
    broker: Broker,
    node: NodeInfo,
}

impl ControlService {
    /// `node` carries the addresses this node is reachable at.
    pub fn new(broker: Broker, node: NodeInfo) -> Self {
        ControlService { broker, node }
    }
}

impl ControlService {
    /// Every node of the cluster (just this one on a single node). Another
    /// node that has not registered its addresses yet is missing until it
    /// has; this one is always listed, from its own listeners.
    fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self
            .broker
            .cluster_nodes()
            .into_iter()
            .filter(|(id, _)| *id != u64::from(self.node.node_id))
            .map(|(id, n)| NodeInfo {
                node_id: id as u32,
                data_addr: n.data,
                control_addr: n.control,
                peer_addr: n.peer,
            })
            .collect();
        nodes.push(self.node.clone());
        nodes.sort_by_key(|n| n.node_id);
        nodes
    }
}

fn membership(members: Vec<u64>) -> MembershipResponse {
    MembershipResponse {
        members: members.into_iter().map(|m| m as u32).collect(),
    }
}

/// A topic as this node sees it: every partition with its replicas and
/// leader; offsets and sizes for the partitions held here (zero for others).
fn topic_info(broker: &Broker, topic: &Topic) -> TopicInfo {
    let spec = &topic.spec;
    TopicInfo {
        name: spec.name.clone(),
        config: Some(TopicConfig {
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            retention_bytes: spec.retention_bytes.unwrap_or(0),
            retention_ms: spec.retention_ms.unwrap_or(0),
            segment_bytes: spec.segment_bytes,
        }),
        partitions: (0..spec.partitions)
            .map(|index| {
                let mut info = PartitionInfo {
                    partition: index,
                    leader: broker.partition_leader(topic, index),
                    replicas: topic
                        .replicas
                        .get(index as usize)
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                };
                if let Ok(p) = topic.partition(index) {
                    info.log_start_offset = p.start_offset();
                    info.high_watermark = p.high_watermark();
                    info.log_end_offset = p.end_offset();
                    info.size_bytes = p.log().cached_size_bytes();
                    info.segments = p.log().segment_count() as u32;
                }
                info
            })
            .collect(),
    }
}

impl ControlService {
    fn counted(&self) {
        self.broker.metrics().control_request();
    }

    async fn describe(&self, group: &str) -> Result<GroupInfo, Error> {
        let health = self
            .broker
            .group_health(group)
            .await?
            .ok_or_else(|| Error::Group {
                group: group.to_owned(),
                reason: GroupErrorKind::NotFound,
            })?;
        let view = self.broker.groups().describe(group);
        let members = view
            .as_ref()
            .map(|v| {
                v.members
                    .iter()
                    .map(|m| GroupMember {
                        member_id: m.member_id.clone(),
                        client_id: m.client_id.clone(),
                        assigned: m
                            .assigned
                            .iter()
                            .map(|(topic, partition)| TopicPartition {
                                topic: topic.clone(),
                                partition: *partition,
                            })
                            .collect(),
                        last_heartbeat_ms_ago: m.since_heartbeat.as_millis() as u64,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(GroupInfo {
            group: group.to_owned(),
            generation: view.as_ref().map_or(0, |v| v.generation),
            assignor: view.as_ref().map_or("", |v| v.assignor.name()).to_owned(),
            members,
            partitions: health
                .partitions
                .iter()
                .map(|p| GroupPartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    committed_offset: p.committed,
                    high_watermark: p.high_watermark,
                    lag_messages: p.lag_messages,
                    lag_seconds: p.lag_seconds,
                    status: p.status.name().to_owned(),
                    owner: p.owner.clone().unwrap_or_default(),
                })
                .collect(),
            status: health.status.name().to_owned(),
        })
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.counted();
        let r = request.into_inner();
        let config = r.config.unwrap_or_default();
        let settings = TopicSettings {
            partitions: config.partitions,
            replication_factor: config.replication_factor,
            retention_bytes: (config.retention_bytes > 0).then_some(config.retention_bytes),
            retention_ms: (config.retention_ms > 0).then_some(config.retention_ms),
            segment_bytes: (config.segment_bytes > 0).then_some(config.segment_bytes),
        };
        let topic = self
            .broker
            .create_topic(&r.name, settings)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(topic_info(&self.broker, &topic)))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        self.counted();
        let r = request.into_inner();
        self.broker
            .delete_topic(&r.name)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        self.counted();
        let topics = self
            .broker
            .topics()
            .iter()
            .map(|t| topic_info(&self.broker, t))
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.counted();
        let topic = self
            .broker
            .topic(&request.into_inner().name)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(topic_info(&self.broker, &topic)))
    }

    async fn metadata(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        self.counted();
        let wanted = request.into_inner().topics;
        let topics: Vec<_> = if wanted.is_empty() {
            self.broker.topics()
        } else {
            wanted
                .iter()
                .map(|name| self.broker.topic(name))
                .collect::<Result<_, _>>()
                .map_err(|e| to_status(&e))?
        };
        Ok(Response::new(MetadataResponse {
            nodes: self.nodes(),
            partitions: topics
                .iter()
                .flat_map(|t| {
                    (0..t.spec.partitions).map(move |p| PartitionLeader {
                        topic: t.spec.name.clone(),
                        partition: p,
                        leader: self.broker.partition_leader(t, p),
                    })
                })
                .collect(),
            topics: topics
                .iter()
                .map(|t| TopicPartitionCount {
                    topic: t.spec.name.clone(),
                    partitions: t.spec.partitions,
                })
                .collect(),
        }))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.counted();
        Ok(Response::new(ClusterStatusResponse {
            node_id: self.broker.node_id(),
            nodes: self.nodes(),
            topics: self
                .broker
                .topics()
                .iter()
                .map(|t| topic_info(&self.broker, t))
                .collect(),
            ready: self.broker.is_ready(),
            uptime_ms: self.broker.uptime().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        self.counted();
        let mut groups = Vec::new();
        for name in self.broker.group_names() {
            if let Some(h) = self
                .broker
                .group_health(&name)
                .await
                .map_err(|e| to_status(&e))?
            {
                groups.push(GroupSummary {
                    group: h.group.clone(),
                    members: h.members as u32,
                    total_lag: h.total_lag(),
                    status: h.status.name().to_owned(),
                });
            }
        }
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.counted();
        let r = request.into_inner();
        let members = self
            .broker
            .add_node(r.node_id, &r.peer_addr, r.rebalance)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(membership(members)))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        self.counted();
        let members = self
            .broker
            .remove_node(request.into_inner().node_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(membership(members)))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        self.counted();
        let info = self
            .describe(&request.into_inner().group)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(info))
    }
}
