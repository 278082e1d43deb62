//! The Fetch RPC served one layer below tonic, so that stored batches reach
//! the socket without being copied.
//!
//! tonic encodes every message into a buffer of its own, so each response's
//! records (a view of the page cache, or a buffer read from the segment) were
//! copied once more before HTTP/2 sent them: a quarter of the broker's CPU
//! while a consumer caught up. Here each response goes out as two DATA frames:
//! a small one with the gRPC message prefix and the other fields, then the
//! records themselves, which h2 writes to the socket straight from the
//! stored bytes. On the wire it is the same gRPC stream tonic sends (any gRPC
//! client reads it); validation, authorization, deadlines and the stream's
//! task are those of [`fetch::open`], shared with the tonic handler.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{self, HeaderMap, HeaderValue, header};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use strata_proto::v1::{FetchRequest, FetchResponse};
use tonic::Status;

use super::fetch::{self, FetchStream};
use super::status::to_status;
use crate::broker::Broker;
use crate::error::Error;

/// The path tonic would route Fetch by.
pub const FETCH_PATH: &str = "/strata.v1.Data/Fetch";

/// Largest Fetch request read: a request lists partitions and offsets, so
/// this allows some ten thousand of them.
const MAX_FETCH_REQUEST_BYTES: usize = 1024 * 1024;

/// Records below this size travel in the same frame as the message prefix:
/// copying a few KiB costs less than a frame of their own.
const SEPARATE_FRAME_MIN_BYTES: usize = 16 * 1024;

/// Length of gRPC's message prefix: a compression flag and a 4-byte length.
const GRPC_PREFIX_BYTES: usize = 5;

/// Serves one Fetch call: the same answers as the tonic handler, sent
/// without copying the records.
pub async fn serve(broker: Broker, request: http::Request<Body>) -> http::Response<Body> {
    match open(&broker, request).await {
        Ok(responses) => {
            let mut response = http::Response::new(Body::new(FetchBody::new(responses)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

async fn open(broker: &Broker, request: http::Request<Body>) -> Result<FetchStream, Status> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, GRPC_PREFIX_BYTES + MAX_FETCH_REQUEST_BYTES)
        .await
        .map_err(|e| invalid(format!("reading the fetch request: {e}")))?;
    let message = unary_message(&body)?;
    let message = FetchRequest::decode(message)
        .map_err(|e| invalid(format!("decoding the fetch request: {e}")))?;
    fetch::start(
        broker,
        tonic::Request::from_http(http::Request::from_parts(parts, message)),
    )
}

fn invalid(why: String) -> Status {
    to_status(&Error::InvalidArgument(why))
}

/// The one message of a unary request body.
fn unary_message(body: &Bytes) -> Result<Bytes, Status> {
    let Some((prefix, rest)) = body.split_at_checked(GRPC_PREFIX_BYTES) else {
        return Err(invalid("the fetch request has no message".into()));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted; send Fetch uncompressed",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len != rest.len() {
        return Err(invalid(format!(
            "the fetch request must hold exactly one message: its prefix says {len} bytes, \
             {} follow",
            rest.len()
        )));
    }
    Ok(body.slice(GRPC_PREFIX_BYTES..))
}

/// A fetch stream as an HTTP/2 body: each response as gRPC message frames,
/// then the status in trailers.
struct FetchBody {
    responses: FetchStream,
    /// Records of the message whose head was just sent.
    records: Option<Bytes>,
    done: bool,
}

impl FetchBody {
    fn new(responses: FetchStream) -> Self {
        FetchBody {
            responses,
            records: None,
            done: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> http_body::Frame<Bytes> {
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(
                "grpc-status",
                HeaderValue::from(tonic::Code::Internal as i32),
            );
        }
        http_body::Frame::trailers(trailers)
    }
}

/// `response` as one gRPC message: the prefix and every field but the
/// records, and the records when they are worth a frame of their own.
fn encode(mut response: FetchResponse) -> (Bytes, Option<Bytes>) {
    let records = std::mem::take(&mut response.records);
    // Field 3, length-delimited; prost reads fields in any order.
    const RECORDS_KEY: u8 = (3 << 3) | 2;
    let records_field = match records.is_empty() {
        true => 0,
        false => 1 + prost::length_delimiter_len(records.len()) + records.len(),
    };
    let len = response.encoded_len() + records_field;
    let separate = records.len() >= SEPARATE_FRAME_MIN_BYTES;
    let head_len = GRPC_PREFIX_BYTES + len - if separate { records.len() } else { 0 };
    let mut head = BytesMut::with_capacity(head_len);
    head.put_u8(0);
    // A response holds at most FETCH_MAX_BYTES of records.
    head.put_u32(len as u32);
    response
        .encode(&mut head)
        .expect("the buffer was sized for the message");
    if !records.is_empty() {
        head.put_u8(RECORDS_KEY);
        prost::encode_length_delimiter(records.len(), &mut head)
            .expect("the buffer was sized for the message");
        if !separate {
            head.put_slice(&records);
        }
    }
    (head.freeze(), separate.then_some(records))
}

impl http_body::Body for FetchBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(records) = self.records.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(records))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.responses.as_mut().poll_next(cx)) {
            Some(Ok(response)) => {
                let (head, records) = encode(response);
                self.records = records;
                http_body::Frame::data(head)
            }
            Some(Err(status)) => self.trailers(&status),
            None => self.trailers(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.records.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let (head, tail) = encode(sent.clone());
            assert_eq!(tail.is_some(), records >= SEPARATE_FRAME_MIN_BYTES);
            let mut wire = head.to_vec();
            wire.extend_from_slice(tail.as_deref().unwrap_or_default());
            assert_eq!(wire[0], 0, "uncompressed");
            let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
            assert_eq!(
                len,
                wire.len() - GRPC_PREFIX_BYTES,
                "{records} bytes of records"
            );
            let got = FetchResponse::decode(&wire[GRPC_PREFIX_BYTES..]).unwrap();
            assert_eq!(got, sent);
        }
    }

    #[test]
    fn separate_records_are_the_stored_bytes_not_a_copy() {
        let sent = response(1 << 20);
        let stored = sent.records.clone();
        let (_, tail) = encode(sent);
        assert_eq!(tail.unwrap().as_ptr(), stored.as_ptr());
    }

    #[test]
    fn a_request_body_must_be_exactly_one_uncompressed_message() {
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x02ab");
        assert_eq!(unary_message(&message).unwrap(), Bytes::from_static(b"ab"));
        let short = Bytes::from_static(b"\x00\x00\x00\x00\x03ab");
        assert_eq!(
            unary_message(&short).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let compressed = Bytes::from_static(b"\x01\x00\x00\x00\x02ab");
        assert_eq!(
            unary_message(&compressed).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            unary_message(&Bytes::from_static(b"\x00"))
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
    }
}
