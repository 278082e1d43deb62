//! The Fetch RPC served one layer below tonic (see `grpc_wire`), so that
//! stored batches reach the socket without being copied.
//!
//! Each response goes out as two DATA frames: a small one with the gRPC
//! prefix and the other fields, then the records themselves, which h2 writes
//! to the socket straight from the page-cache map or buffer they were read
//! into. Validation, authorization, deadlines and the stream's task are those
//! of [`fetch::start`], shared with the tonic handler.

use axum::body::Body;
use axum::http;
use bytes::{BufMut, Bytes};
use futures::StreamExt;
use strata_proto::v1::{FetchRequest, FetchResponse};
use tonic::Status;

use super::fetch::{self, FetchStream};
use super::grpc_wire::{self, MessageStream, WireMessage, framed, framed_with_tail};
use super::status::to_status;
use crate::broker::Broker;
use crate::error::Error;

/// The path tonic would route Fetch by.
pub const FETCH_PATH: &str = "/strata.v1.Data/Fetch";

/// Records below this size travel in the same frame as the message prefix:
/// copying a few KiB costs less than a frame of their own.
const SEPARATE_FRAME_MIN_BYTES: usize = 16 * 1024;

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

/// Every field but the records after the prefix, then the records, in a
/// frame of their own when they are worth one.
impl WireMessage for FetchResponse {
    fn into_frames(mut self) -> (Bytes, Option<Bytes>) {
        let records = std::mem::take(&mut self.records);
        if records.is_empty() {
            return (framed(&self), None);
        }
        // Field 3, length-delimited; prost reads fields in any order.
        const RECORDS_KEY: u8 = (3 << 3) | 2;
        let field = 1 + prost::length_delimiter_len(records.len()) + records.len();
        let mut head = framed_with_tail(&self, field);
        head.put_u8(RECORDS_KEY);
        prost::encode_length_delimiter(records.len(), &mut head)
            .expect("the buffer was sized for the message");
        if records.len() < SEPARATE_FRAME_MIN_BYTES {
            head.put_slice(&records);
            return (head.freeze(), None);
        }
        (head.freeze(), Some(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpc_wire::PREFIX_BYTES;
    use prost::Message;

    fn response(records: usize) -> FetchResponse {
        FetchResponse {
            topic: "orders".into(),
            partition: 3,
            records: Bytes::from((0..records).map(|i| i as u8).collect::<Vec<u8>>()),
            next_offset: 1 << 40,
            high_watermark: (1 << 40) + 7,
            log_start_offset: 12,
            error: None,
        }
    }

    /// What any gRPC client decodes from the frames: the same message.
    #[test]
    fn frames_decode_to_the_message_prost_would_send() {
        for records in [
            0,
            1,
            300,
            SEPARATE_FRAME_MIN_BYTES - 1,
            SEPARATE_FRAME_MIN_BYTES,
            1 << 20,
        ] {
            let sent = response(records);
            let (head, tail) = sent.clone().into_frames();
            assert_eq!(tail.is_some(), records >= SEPARATE_FRAME_MIN_BYTES);
            let mut wire = head.to_vec();
            wire.extend_from_slice(tail.as_deref().unwrap_or_default());
            assert_eq!(wire[0], 0, "uncompressed");
            let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, wire.len() - PREFIX_BYTES, "{records} bytes of records");
            let got = FetchResponse::decode(&wire[PREFIX_BYTES..]).unwrap();
            assert_eq!(got, sent);
        }
    }

    #[test]
    fn separate_records_are_the_stored_bytes_not_a_copy() {
        let sent = response(1 << 20);
        let stored = sent.records.clone();
        let (_, tail) = sent.into_frames();
        assert_eq!(tail.unwrap().as_ptr(), stored.as_ptr());
    }
}
