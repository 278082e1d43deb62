//! The data-plane gRPC service: produce, fetch, offsets and group heartbeats.
//! A thin adapter: it validates request shapes, calls the broker, and maps
//! errors through `status`. No storage or partition logic lives here.

use std::time::Duration;

use strata_proto::limits::group_id_error;
use strata_proto::v1::data_server::Data;
use strata_proto::v1::*;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::fetch::{self, FetchStream};
use super::produce;
use super::status::to_status;
use crate::broker::Broker;
use crate::error::Error;
use crate::groups::assignment::Assignor;
use crate::groups::coordinator::Heartbeat;
use crate::groups::offsets::OffsetCommit;
use crate::security::{Action, authorize, caller, permits};

#[derive(Debug, Clone)]
pub struct DataService {
    broker: Broker,
}

impl DataService {
    pub fn new(broker: Broker) -> Self {
        DataService { broker }
    }
}

fn invalid(why: String) -> Status {
    to_status(&Error::InvalidArgument(why))
}

fn check_group(group: &str) -> Result<(), Status> {
    match group_id_error(group) {
        Some(why) => Err(to_status(&Error::InvalidArgument(why))),
        None => Ok(()),
    }
}

fn tp_pairs(tps: &[TopicPartition]) -> Vec<(String, u32)> {
    tps.iter()
        .map(|tp| (tp.topic.clone(), tp.partition))
        .collect()
}

fn to_tps(pairs: Vec<(String, u32)>) -> Vec<TopicPartition> {
    pairs
        .into_iter()
        .map(|(topic, partition)| TopicPartition { topic, partition })
        .collect()
}

#[tonic::async_trait]
impl Data for DataService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let caller = caller(&request);
        let answer = produce::start(&self.broker, caller.as_ref(), request.into_inner())?;
        answer.await.map(Response::new)
    }

    type ProduceStreamStream = ReceiverStream<Result<ProduceResponse, Status>>;

    /// Reached only where these services are served without the route of
    /// `produce_route`, which runs the same pipeline without copying the
    /// batches (see `data_routes`).
    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let caller = caller(&request);
        let answers = produce::serve_stream(self.broker.clone(), caller, request.into_inner());
        Ok(Response::new(answers))
    }

    type FetchStream = FetchStream;

    /// Reached only where these services are served without the route of
    /// `fetch_route`, which answers Fetch the same way without copying the
    /// records (see `data_routes`).
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        fetch::start(&self.broker, request).map(Response::new)
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let topics = request
            .get_ref()
            .partitions
            .iter()
            .map(|p| p.topic.as_str());
        authorize(&request, Action::Consume, topics)?;
        let r = request.into_inner();
        let spec =
            OffsetSpec::try_from(r.spec).map_err(|_| invalid("unknown offset spec".to_owned()))?;
        let mut out = Vec::with_capacity(r.partitions.len());
        for tp in r.partitions {
            let p = self
                .broker
                .partition(&tp.topic, tp.partition)
                .map_err(|e| to_status(&e))?;
            let (start, hw) = (p.start_offset(), p.high_watermark());
            let offset = match spec {
                OffsetSpec::Earliest => start,
                OffsetSpec::Latest => hw,
                OffsetSpec::Timestamp => p
                    .offset_for_timestamp(r.timestamp_ms)
                    .await
                    .map_err(|e| to_status(&e))?
                    .unwrap_or(hw),
            };
            out.push(PartitionOffsets {
                topic: tp.topic,
                partition: tp.partition,
                offset,
                log_start_offset: start,
                high_watermark: hw,
            });
        }
        Ok(Response::new(ListOffsetsResponse { partitions: out }))
    }

    async fn init_producer(
        &self,
        _: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let (producer_id, epoch) = self
            .broker
            .init_producer()
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(InitProducerResponse {
            producer_id,
            producer_epoch: u32::from(epoch),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        authorize(&request, Action::Group, [request.get_ref().group.as_str()])?;
        let topics = request.get_ref().topics.iter().map(String::as_str);
        authorize(&request, Action::Consume, topics)?;
        let r = request.into_inner();
        check_group(&r.group)?;
        self.broker.check_coordinator().map_err(|e| to_status(&e))?;
        let assignor = Assignor::parse(&r.assignor).ok_or_else(|| {
            invalid(format!(
                "unknown assignor {:?}; use range or roundrobin",
                r.assignor
            ))
        })?;
        let hb = Heartbeat {
            group: r.group,
            member_id: r.member_id,
            client_id: r.client_id,
            topics: r.topics,
            owned: tp_pairs(&r.owned),
            session_timeout: (r.session_timeout_ms > 0)
                .then(|| Duration::from_millis(u64::from(r.session_timeout_ms))),
            assignor,
        };
        let reply = self
            .broker
            .groups()
            .heartbeat(hb, &self.broker.partition_counts())
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(HeartbeatResponse {
            member_id: reply.member_id,
            generation: reply.generation,
            assigned: to_tps(reply.assigned),
            heartbeat_interval_ms: reply.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        authorize(&request, Action::Group, [request.get_ref().group.as_str()])?;
        let r = request.into_inner();
        check_group(&r.group)?;
        self.broker.check_coordinator().map_err(|e| to_status(&e))?;
        self.broker
            .groups()
            .leave(&r.group, &r.member_id, &self.broker.partition_counts())
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        authorize(&request, Action::Group, [request.get_ref().group.as_str()])?;
        let topics = request.get_ref().offsets.iter().map(|o| o.topic.as_str());
        authorize(&request, Action::Consume, topics)?;
        let r = request.into_inner();
        self.broker.check_coordinator().map_err(|e| to_status(&e))?;
        let commits = r
            .offsets
            .into_iter()
            .map(|o| OffsetCommit {
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
                metadata: o.metadata,
            })
            .collect();
        self.broker
            .commit_offsets(&r.group, &r.member_id, commits)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        authorize(&request, Action::Group, [request.get_ref().group.as_str()])?;
        // A group may span topics the caller cannot read: their offsets are
        // left out, as CommitOffsets refuses them.
        let may = permits(&request);
        let r = request.into_inner();
        check_group(&r.group)?;
        let wanted = tp_pairs(&r.partitions);
        let filter = (!wanted.is_empty()).then_some(wanted.as_slice());
        let offsets = self
            .broker
            .offsets()
            .fetch(&r.group, filter)
            .into_iter()
            .filter(|(topic, ..)| may(Action::Consume, topic))
            .map(|(topic, partition, c)| PartitionOffset {
                topic,
                partition,
                offset: c.offset,
                metadata: c.metadata,
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }
}
