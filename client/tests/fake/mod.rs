//! Stand-ins for the nodes of a cluster, for tests of how the client follows
//! leaders and control nodes: a control port whose metadata the test sets
//! (nodes, their addresses, the leader of every partition) and a data port
//! that answers as a former partition leader does: NOT_LEADER, with or
//! without the new leader's address. Real single-node brokers stand in for
//! the nodes that serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use strata_proto::v1::control_server::{Control, ControlServer};
use strata_proto::v1::data_client::DataClient;
use strata_proto::v1::data_server::{Data, DataServer};
use strata_proto::v1::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

/// A running fake server; `stop` closes its port.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections and closes the open ones.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn serve(router: tonic::transport::server::Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A port nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A node as the fake control port describes it.
#[derive(Clone)]
pub struct FakeNode {
    pub id: u32,
    pub data: SocketAddr,
    pub control: SocketAddr,
}

struct ControlState {
    nodes: Vec<FakeNode>,
    topic: String,
    partitions: u32,
    /// Node id leading every partition.
    leader: AtomicU32,
    /// How long a metadata answer takes, in milliseconds.
    metadata_delay_ms: AtomicU64,
    metadata_calls: AtomicUsize,
}

/// A control port serving only `Metadata`: `nodes`, and one topic whose
/// partitions all have the same leader.
pub struct FakeControl {
    state: Arc<ControlState>,
    pub server: Running,
}

impl FakeControl {
    pub async fn start(nodes: Vec<FakeNode>, topic: &str, partitions: u32, leader: u32) -> Self {
        let state = Arc::new(ControlState {
            nodes,
            topic: topic.to_owned(),
            partitions,
            leader: AtomicU32::new(leader),
            metadata_delay_ms: AtomicU64::new(0),
            metadata_calls: AtomicUsize::new(0),
        });
        let server = serve(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(ControlService(state.clone()))),
        )
        .await;
        FakeControl { state, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// From now on every partition is led by `node`.
    pub fn set_leader(&self, node: u32) {
        self.state.leader.store(node, Ordering::SeqCst);
    }

    /// From now on a metadata answer takes `delay` (a slow control node).
    pub fn set_metadata_delay(&self, delay: Duration) {
        self.state
            .metadata_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn metadata_calls(&self) -> usize {
        self.state.metadata_calls.load(Ordering::SeqCst)
    }
}

struct ControlService(Arc<ControlState>);

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not faked"))
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn metadata(
        &self,
        _: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let s = &self.0;
        s.metadata_calls.fetch_add(1, Ordering::SeqCst);
        let delay = s.metadata_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let leader = s.leader.load(Ordering::SeqCst);
        Ok(Response::new(MetadataResponse {
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    node_id: n.id,
                    data_addr: n.data.to_string(),
                    control_addr: n.control.to_string(),
                    peer_addr: String::new(),
                })
                .collect(),
            partitions: (0..s.partitions)
                .map(|p| PartitionLeader {
                    topic: s.topic.clone(),
                    partition: p,
                    leader,
                })
                .collect(),
            topics: vec![TopicPartitionCount {
                topic: s.topic.clone(),
                partitions: s.partitions,
            }],
        }))
    }
    async fn create_topic(
        &self,
        _: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        unimplemented()
    }
    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        unimplemented()
    }
    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        unimplemented()
    }
    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let s = &self.0;
        if request.get_ref().name != s.topic {
            return Err(Status::not_found("no such topic"));
        }
        let leader = s.leader.load(Ordering::SeqCst);
        Ok(Response::new(TopicInfo {
            name: s.topic.clone(),
            config: None,
            partitions: (0..s.partitions)
                .map(|partition| PartitionInfo {
                    partition,
                    leader,
                    replicas: s.nodes.iter().map(|n| n.id).collect(),
                    ..Default::default()
                })
                .collect(),
        }))
    }
    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        unimplemented()
    }
    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        unimplemented()
    }
    async fn describe_group(
        &self,
        _: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupInfo>, Status> {
        unimplemented()
    }

    async fn add_node(
        &self,
        _: Request<AddNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        unimplemented()
    }

    async fn remove_node(
        &self,
        _: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        unimplemented()
    }
}

struct DataState {
    /// The data address NOT_LEADER answers name, if any.
    hint: Option<String>,
    /// A real broker's data port that produce requests are written to before
    /// the NOT_LEADER answer: a write that reached the log, then a reply the
    /// client cannot use (the node lost leadership meanwhile).
    write_through: Option<SocketAddr>,
    produce_calls: AtomicUsize,
    /// Producer (id, epoch, base sequence) of every batch received.
    stamps: parking_lot::Mutex<Vec<(u64, u16, u32)>>,
    /// A relay, not a former leader: a produce stream's first this-many
    /// requests are all received before any is answered, then written
    /// through in order and answered.
    hold: usize,
}

/// A former leader's data port: every partition request is answered
/// NOT_LEADER; producer ids come from `write_through` if set.
pub struct FormerLeader {
    state: Arc<DataState>,
    pub server: Running,
}

impl FormerLeader {
    pub async fn start(hint: Option<SocketAddr>, write_through: Option<SocketAddr>) -> Self {
        Self::serve(DataState {
            hint: hint.map(|a| a.to_string()),
            write_through,
            produce_calls: AtomicUsize::new(0),
            stamps: parking_lot::Mutex::new(Vec::new()),
            hold: 0,
        })
        .await
    }

    /// A leader that answers a produce stream only once `hold` requests
    /// arrived on it (a client sending one batch at a time waits forever),
    /// writing them to the real broker at `real`.
    pub async fn relay(real: SocketAddr, hold: usize) -> Self {
        Self::serve(DataState {
            hint: Some(real.to_string()),
            write_through: Some(real),
            produce_calls: AtomicUsize::new(0),
            stamps: parking_lot::Mutex::new(Vec::new()),
            hold,
        })
        .await
    }

    async fn serve(state: DataState) -> Self {
        let state = Arc::new(state);
        let server = serve(
            tonic::transport::Server::builder()
                .add_service(DataServer::new(DataService(state.clone()))),
        )
        .await;
        FormerLeader { state, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn produce_calls(&self) -> usize {
        self.state.produce_calls.load(Ordering::SeqCst)
    }

    /// Producer (id, epoch, base sequence) of every batch received.
    pub fn stamps(&self) -> Vec<(u64, u16, u32)> {
        self.state.stamps.lock().clone()
    }
}

struct DataService(Arc<DataState>);

impl DataService {
    fn not_leader(&self) -> Status {
        let mut md = MetadataMap::new();
        md.insert("strata-error", "not-leader".parse().unwrap());
        if let Some(hint) = &self.0.hint {
            md.insert("strata-leader", hint.parse().unwrap());
        }
        Status::with_metadata(
            Code::Unavailable,
            "this node does not lead the partition",
            md,
        )
    }

    /// Counts and records a produce, writes it through if asked, and says
    /// what a former leader says.
    async fn refuse_produce(&self, request: ProduceRequest) -> Status {
        self.0.produce_calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(header) = strata_proto::batch::BatchHeader::parse(&request.batch) {
            self.0.stamps.lock().push((
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
            ));
        }
        if self.0.write_through.is_some() {
            let written = match self.real().await {
                Ok(mut real) => real.produce(request).await.map(drop),
                Err(status) => Err(status),
            };
            if let Err(status) = written {
                return status;
            }
        }
        self.not_leader()
    }

    async fn real(&self) -> Result<DataClient<tonic::transport::Channel>, Status> {
        let addr = self.0.write_through.ok_or_else(|| self.not_leader())?;
        DataClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }
}

#[tonic::async_trait]
impl Data for DataService {
    type FetchStream = futures::stream::BoxStream<'static, Result<FetchResponse, Status>>;
    type ProduceStreamStream = futures::stream::BoxStream<'static, Result<ProduceResponse, Status>>;

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        Err(self.refuse_produce(request.into_inner()).await)
    }
    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut requests = request.into_inner();
        if self.0.hold == 0 {
            // Takes the first batch as `produce` does, then ends the stream.
            return match requests.message().await? {
                Some(first) => Err(self.refuse_produce(first).await),
                None => Err(self.not_leader()),
            };
        }
        let mut held = Vec::new();
        while held.len() < self.0.hold {
            match requests.message().await? {
                Some(request) => held.push(request),
                None => break,
            }
        }
        self.0.produce_calls.fetch_add(held.len(), Ordering::SeqCst);
        let mut real = self.real().await?;
        let mut answers = Vec::new();
        for request in held {
            answers.push(real.produce(request).await.map(Response::into_inner));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(answers))))
    }
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        Err(self.not_leader())
    }
    async fn list_offsets(
        &self,
        _: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Err(self.not_leader())
    }
    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        self.real().await?.init_producer(request.into_inner()).await
    }
    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn leave_group(
        &self,
        _: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        unimplemented()
    }
    async fn commit_offsets(
        &self,
        _: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        unimplemented()
    }
    async fn fetch_offsets(
        &self,
        _: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        unimplemented()
    }
}
