//! The ProduceStream RPC served one layer below tonic (see `grpc_wire`): a
//! batch that arrives within one HTTP/2 DATA frame (the client sends each
//! batch as a frame of its own) is written from that frame's bytes, where
//! tonic first copied every frame into a buffer of its own.
//! The stream itself is [`produce::pipeline`], shared with the tonic handler.

use axum::body::Body;
use axum::http;
use strata_proto::v1::ProduceRequest;

use super::grpc_wire::{self, MessageStream};
use super::produce;
use crate::broker::Broker;
use crate::security::caller;

/// Serves one ProduceStream call until the client stops sending and has
/// every answer, a request fails, or either side goes away.
pub fn serve(
    broker: Broker,
    request: http::Request<Body>,
    max_message_bytes: usize,
) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let caller = caller(&tonic::Request::from_http(http::Request::from_parts(
        parts,
        (),
    )));
    let requests = MessageStream::<ProduceRequest>::new(body, max_message_bytes);
    grpc_wire::response(produce::serve_stream(broker, caller, requests))
}
