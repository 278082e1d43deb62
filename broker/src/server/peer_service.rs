//! The peer-port service: traffic between nodes. Today it lets nodes identify
//! each other; Raft replication (DESIGN.md §6) is multiplexed here.

use strata_proto::v1::peer_server::Peer;
use strata_proto::v1::{HelloRequest, HelloResponse};
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct PeerService {
    node_id: u32,
}

impl PeerService {
    pub fn new(node_id: u32) -> Self {
        PeerService { node_id }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        Ok(Response::new(HelloResponse {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }
}
