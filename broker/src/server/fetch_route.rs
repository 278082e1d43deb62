//! The Fetch RPC served one layer below tonic (see `grpc_wire`), so that
//! stored batches reach the socket without being copied.
//!
//! Each response goes out as two DATA frames (`FetchResponse`'s
//! `WireMessage`): a small one with the gRPC prefix and the other fields,
//! then the records themselves, which h2 writes to the socket straight from
//! the page-cache map or buffer they were read into. Validation,
//! authorization, deadlines and the stream's task are those of
//! [`fetch::start`], shared with the tonic handler.

use axum::body::Body;
use axum::http;
use futures::StreamExt;
use strata_proto::v1::FetchRequest;
use tonic::Status;

use super::fetch::{self, FetchStream};
use super::grpc_wire::{self, MessageStream};
use super::status::to_status;
use crate::broker::Broker;
use crate::error::Error;

/// Serves one Fetch call: the same answers as the tonic handler, sent
/// without copying the records. The request is read whole, up to
/// `max_message_bytes`.
pub async fn serve(
    broker: Broker,
    request: http::Request<Body>,
    max_message_bytes: usize,
) -> http::Response<Body> {
    match open(&broker, request, max_message_bytes).await {
        Ok(responses) => grpc_wire::response(responses),
        Err(status) => status.into_http(),
    }
}

async fn open(
    broker: &Broker,
    request: http::Request<Body>,
    max_message_bytes: usize,
) -> Result<FetchStream, Status> {
    let (parts, body) = request.into_parts();
    // Read to its end before answering: a refusal sent while the client's
    // side of the stream is still open reaches it as a reset, not a status.
    let body = axum::body::to_bytes(body, grpc_wire::PREFIX_BYTES + max_message_bytes)
        .await
        .map_err(|e| invalid(&format!("reading the fetch request: {e}")))?;
    let mut messages = MessageStream::<FetchRequest>::new(body.into(), max_message_bytes);
    let Some(message) = messages.next().await.transpose()? else {
        return Err(invalid("the fetch request has no message"));
    };
    if messages.next().await.is_some() {
        return Err(invalid("a fetch request is exactly one message"));
    }
    fetch::start(
        broker,
        tonic::Request::from_http(http::Request::from_parts(parts, message)),
    )
}

fn invalid(why: &str) -> Status {
    to_status(&Error::InvalidArgument(why.into()))
}
