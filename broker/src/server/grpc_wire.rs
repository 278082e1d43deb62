//! The broker's side of gRPC framing for the data plane's bulk RPCs, served
//! one layer below tonic so that batches are not copied on their way through
//! (`strata_proto::grpc_wire` says why and holds the framing itself): request
//! messages decoded from the DATA frames they arrived in, and responses whose
//! bulk bytes go to h2 as a frame of their own, which h2 writes to the socket
//! from where they are. The status follows in trailers, as in any gRPC call.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{self, HeaderValue, header};
use futures::Stream;
use prost::Message;
use strata_proto::grpc_wire::{BodyEnd, BodyMessages, WireBody, WireError};
pub use strata_proto::grpc_wire::{
    FETCH_PATH, PREFIX_BYTES, PRODUCE_STREAM_PATH, RAFT_APPEND_PATH, WireMessage,
};
use tonic::Status;

use super::status::to_status;
use crate::error::Error;

/// A successful gRPC response streaming `messages`, then their status.
pub fn response<S, M>(messages: S) -> http::Response<Body>
where
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
    M: WireMessage,
{
    let body = WireBody::response(messages);
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The messages of a request body, decoded as they complete, each `bytes`
/// field a slice of the frame it arrived in where it lies within one.
pub struct MessageStream<M> {
    messages: BodyMessages<Body, M>,
}

impl<M: Message + Default> MessageStream<M> {
    pub fn new(body: Body, max_message_bytes: usize) -> Self {
        MessageStream {
            messages: BodyMessages::new(body, max_message_bytes),
        }
    }
}

/// A request that is not a message: the client's to fix, so
/// INVALID_ARGUMENT, except compression, which this server does not do.
fn wire_status(error: WireError) -> Status {
    match error {
        WireError::Compressed => Status::unimplemented(error.to_string()),
        _ => to_status(&Error::InvalidArgument(error.to_string())),
    }
}

impl<M: Message + Default> Stream for MessageStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(match ready!(Pin::new(&mut self.messages).poll_next(cx)) {
            Some(Ok(message)) => Some(Ok(message)),
            // Request trailers carry nothing gRPC uses.
            None
            | Some(Err(BodyEnd::Ended {
                truncated: false, ..
            })) => None,
            Some(Err(BodyEnd::Ended {
                truncated: true, ..
            })) => Some(Err(to_status(&Error::InvalidArgument(
                "the request ended inside a message".into(),
            )))),
            Some(Err(BodyEnd::Wire(error))) => Some(Err(wire_status(error))),
            Some(Err(BodyEnd::Broken(e))) => Some(Err(Status::cancelled(format!(
                "the request stream broke: {e}"
            )))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use strata_proto::grpc_wire::framed;
    use strata_proto::v1::ProduceRequest;

    /// A produce request carrying a batch of `batch` bytes.
    fn request(batch: usize) -> ProduceRequest {
        let batch = Bytes::from(vec![7u8; batch]);
        ProduceRequest {
            batch,
            ..ProduceRequest::default()
        }
    }

    /// A request body delivering `wire` in DATA frames cut at `cuts`.
    fn body(wire: &Bytes, cuts: &[usize]) -> Body {
        let mut frames = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([wire.len()].iter()) {
            frames.push(Ok::<_, std::convert::Infallible>(wire.slice(at..cut)));
            at = cut;
        }
        Body::from_stream(futures::stream::iter(frames))
    }

    async fn decode_all(body: Body, limit: usize) -> Vec<Result<ProduceRequest, Status>> {
        MessageStream::<ProduceRequest>::new(body, limit)
            .collect()
            .await
    }

    /// The reassembly itself is tested in `strata_proto::grpc_wire`; here,
    /// that a body's frames reach it.
    #[tokio::test]
    async fn messages_split_across_frames_arrive_whole() {
        let sent = [request(10), ProduceRequest::default(), request(100_000)];
        let wire: Bytes = sent
            .iter()
            .flat_map(|m| framed(m).to_vec())
            .collect::<Vec<_>>()
            .into();
        let got = decode_all(body(&wire, &[3, 4, wire.len() / 2]), 1 << 20).await;
        let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn oversize_truncated_and_compressed_messages_are_refused() {
        let wire = framed(&request(1000));
        let got = decode_all(body(&wire, &[]), 100).await;
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(got.len(), 1, "nothing after a refusal");

        let cut = wire.slice(..wire.len() - 1);
        let got = decode_all(body(&cut, &[]), 1 << 20).await;
        let status = got[0].as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("ended inside a message"));

        let mut compressed = wire.to_vec();
        compressed[0] = 1;
        let got = decode_all(body(&compressed.into(), &[]), 1 << 20).await;
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::Unimplemented
        );

        let garbage = Bytes::from_static(b"\x00\x00\x00\x00\x03\xff\xff\xff");
        let got = decode_all(body(&garbage, &[]), 1 << 20).await;
        assert_eq!(
            got[0].as_ref().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
