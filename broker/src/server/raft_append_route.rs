//! The peer port's RaftAppend (Raft's AppendEntries) served one layer below
//! tonic (see `grpc_wire`): the leader sends each entry's batch as a DATA
//! frame of its own, and a batch that arrives within one frame is written
//! from that frame's bytes. Through tonic, the leader encoded every request
//! into a buffer and the follower copied every frame into another: together
//! a fifth of a node's CPU in a three-node produce profile.

use axum::body::Body;
use axum::http;
use futures::StreamExt;
use strata_proto::v1::RaftAppendRequest;
use tonic::Status;

use super::grpc_wire::{self, MessageStream};
use super::peer_service::PeerService;
use crate::raft::network::MAX_PEER_MESSAGE_BYTES;

/// Serves one RaftAppend call: its one request, then the group's answer.
pub async fn serve(peers: PeerService, request: http::Request<Body>) -> http::Response<Body> {
    let mut requests =
        MessageStream::<RaftAppendRequest>::new(request.into_body(), MAX_PEER_MESSAGE_BYTES);
    let reply = match requests.next().await {
        Some(Ok(request)) => peers.append(request).await,
        Some(Err(status)) => Err(status),
        None => Err(Status::invalid_argument(
            "a RaftAppend call without its request",
        )),
    };
    grpc_wire::response(futures::stream::iter([reply]))
}
