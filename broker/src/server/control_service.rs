//! The control-plane gRPC service: topics, metadata, cluster status and
//! consumer-group admin. Served on its own port and runtime so that a flood
//! of data never slows it; it reads broker state from memory, except group
//! lag in seconds, which reads the timestamp of one record per partition.

use std::collections::BTreeSet;

use strata_proto::v1::control_server::Control;
use strata_proto::v1::*;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::broker::{Broker, Topic};
use crate::cluster::topics::TopicSettings;
use crate::error::{Error, GroupErrorKind};
use crate::groups::lag::lag;
use crate::log::now_ms;

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

fn topic_info(topic: &Topic, node_id: u32) -> TopicInfo {
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
        partitions: topic
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                partition: p.index(),
                leader: node_id,
                replicas: vec![node_id],
                log_start_offset: p.start_offset(),
                high_watermark: p.high_watermark(),
                log_end_offset: p.end_offset(),
                size_bytes: p.log().cached_size_bytes(),
                segments: p.log().segment_count() as u32,
            })
            .collect(),
    }
}

impl ControlService {
    fn counted(&self) {
        self.broker.metrics().control_requests.inc();
    }

    async fn describe(&self, group: &str) -> Result<GroupInfo, Error> {
        let view = self.broker.groups().describe(group);
        let committed = self.broker.offsets().fetch(group, None);
        if view.is_none() && committed.is_empty() {
            return Err(Error::Group {
                group: group.to_owned(),
                reason: GroupErrorKind::NotFound,
            });
        }
        let mut partitions: BTreeSet<(String, u32)> =
            committed.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let mut members = Vec::new();
        if let Some(view) = &view {
            for m in &view.members {
                partitions.extend(m.assigned.iter().cloned());
                partitions.extend(m.owned.iter().cloned());
                members.push(GroupMember {
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
                });
            }
        }
        let now = now_ms();
        let mut out = Vec::new();
        for (topic, index) in partitions {
            let Ok(partition) = self.broker.partition(&topic, index) else {
                continue;
            };
            let committed_offset = committed
                .iter()
                .find(|(t, p, _)| *t == topic && *p == index)
                .map(|(_, _, c)| c.offset);
            let owner = view
                .as_ref()
                .and_then(|v| {
                    v.members
                        .iter()
                        .find(|m| m.owned.contains(&(topic.clone(), index)))
                })
                .map(|m| m.member_id.clone())
                .unwrap_or_default();
            let l = lag(&partition, committed_offset, now).await?;
            out.push(GroupPartition {
                topic,
                partition: index,
                committed_offset,
                high_watermark: partition.high_watermark(),
                lag_messages: l.messages,
                lag_seconds: l.seconds,
                status: String::new(),
                owner,
            });
        }
        Ok(GroupInfo {
            group: group.to_owned(),
            generation: view.as_ref().map_or(0, |v| v.generation),
            assignor: view.as_ref().map_or("", |v| v.assignor.name()).to_owned(),
            members,
            partitions: out,
            status: String::new(),
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
        Ok(Response::new(topic_info(&topic, self.broker.node_id())))
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
        let node = self.broker.node_id();
        let topics = self
            .broker
            .topics()
            .iter()
            .map(|t| topic_info(t, node))
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
        Ok(Response::new(topic_info(&topic, self.broker.node_id())))
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
        let node = self.broker.node_id();
        Ok(Response::new(MetadataResponse {
            nodes: vec![self.node.clone()],
            partitions: topics
                .iter()
                .flat_map(|t| {
                    (0..t.spec.partitions).map(move |p| PartitionLeader {
                        topic: t.spec.name.clone(),
                        partition: p,
                        leader: node,
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
        let node = self.broker.node_id();
        Ok(Response::new(ClusterStatusResponse {
            node_id: node,
            nodes: vec![self.node.clone()],
            topics: self
                .broker
                .topics()
                .iter()
                .map(|t| topic_info(t, node))
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
        let mut names: BTreeSet<String> = self.broker.groups().groups().into_iter().collect();
        names.extend(self.broker.offsets().groups());
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            let info = self.describe(&name).await.map_err(|e| to_status(&e))?;
            groups.push(GroupSummary {
                members: info.members.len() as u32,
                total_lag: info.partitions.iter().map(|p| p.lag_messages).sum(),
                status: info.status.clone(),
                group: name,
            });
        }
        Ok(Response::new(ListGroupsResponse { groups }))
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
