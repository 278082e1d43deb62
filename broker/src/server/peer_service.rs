//! The peer-port service: traffic between nodes. Raft RPCs of every group are
//! multiplexed here and routed by group id (DESIGN.md §6).

use std::sync::Arc;

use serde::Serialize;
use strata_proto::v1::peer_server::Peer;
use strata_proto::v1::{HelloRequest, HelloResponse, RaftAppendRequest, RaftReply, RaftRequest};
use tonic::{Request, Response, Status};

use crate::cluster::metadata_group::{Change, MetadataGroup};
use crate::raft::groups::Groups;
use crate::raft::{Raft, wire};

#[derive(Clone)]
pub struct PeerService {
    node_id: u32,
    groups: Groups,
    metadata: Option<Arc<MetadataGroup>>,
}

impl PeerService {
    pub fn new(node_id: u32, groups: Groups) -> Self {
        PeerService {
            node_id,
            groups,
            metadata: None,
        }
    }

    /// Accepts metadata commands forwarded by other nodes.
    pub fn with_metadata(mut self, metadata: Option<Arc<MetadataGroup>>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Hands an AppendEntries to its group (both routes: tonic's handler and
    /// the one below tonic that the nodes themselves call).
    pub async fn append(&self, request: RaftAppendRequest) -> Result<RaftReply, Status> {
        let raft = self.group(&request.group)?;
        let rpc = wire::decode_append(&request.header_json, request.entries)
            .map_err(Status::invalid_argument)?;
        reply(raft.append_entries(rpc).await).map(Response::into_inner)
    }

    fn group(&self, group: &str) -> Result<Raft, Status> {
        // A group this node does not run (yet): the sender retries, and by then
        // this node has usually applied the metadata that creates it.
        self.groups
            .get(group)
            .ok_or_else(|| Status::not_found(format!("no Raft group {group:?} on this node")))
    }
}

fn reply<T: Serialize>(result: T) -> Result<Response<RaftReply>, Status> {
    let json = serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply { json: json.into() }))
}

fn parse<T: serde::de::DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(json).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        Ok(Response::new(HelloResponse {
            node_id: self.node_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }

    async fn raft_append(
        &self,
        request: Request<RaftAppendRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.append(request.into_inner()).await.map(Response::new)
    }

    async fn raft_vote(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(&request.group)?;
        reply(raft.vote(parse(&request.json, "vote")?).await)
    }

    async fn raft_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(&request.group)?;
        reply(
            raft.install_snapshot(parse(&request.json, "snapshot")?)
                .await,
        )
    }

    async fn propose(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let metadata = self
            .metadata
            .as_ref()
            .filter(|_| request.group == crate::raft::groups::METADATA_GROUP)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no metadata group {:?} on this node",
                    request.group
                ))
            })?;
        let change: Change = parse(&request.json, "metadata change")?;
        // Only the leader applies; a node that lost leadership meanwhile says
        // so, and the sender looks for the new one.
        reply(metadata.change_here(&change).await)
    }
}
