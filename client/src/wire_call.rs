//! Streaming calls made one layer below tonic, for the data plane's bulk
//! RPCs: the records of each fetch response are handed to the consumer as a
//! slice of the HTTP/2 DATA frame they arrived in (when they fit in one:
//! `strata_proto::grpc_wire` says when), and each produced batch goes to h2
//! as a frame of its own, written to the socket from the buffer the producer
//! built it in.
//!
//! tonic's client copies every DATA frame it receives into a buffer of its
//! own before it decodes a message (a seventh of a catching-up consumer's
//! CPU), and encodes every message it sends into another (a sixteenth of a
//! producer's). The broker sends each fetch response's records as a DATA
//! frame of their own, and `strata_proto::grpc_wire` decodes a `bytes` field
//! that lies within one frame as a slice of it; its `WireMessage` cuts each
//! produce request the same way. The call goes through the same channel
//! (and so the same connection, credentials and token) as tonic's calls, and
//! answers the way tonic's would: a `Status` from the response's headers or
//! trailers, or from the transport when the call could not be made.

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use prost::Message;
use strata_proto::grpc_wire::{WireBody, WireMessage, call_request, framed, response_messages};
use tonic::Status;
use tower::ServiceExt;

use crate::channel::Transport;

/// A call's response messages, then its status if that is not OK.
pub(crate) type Responses<M> = BoxStream<'static, Result<M, Status>>;

/// Calls `path` with `request` and streams the response messages, each at
/// most `max_message_bytes`.
pub(crate) async fn server_streaming<Req, Resp>(
    transport: Transport,
    path: &'static str,
    request: &Req,
    max_message_bytes: usize,
) -> Result<Responses<Resp>, Status>
where
    Req: Message,
    Resp: Message + Default + Send + 'static,
{
    let body = tonic::body::Body::new(http_body_util::Full::new(framed(request)));
    call(transport, path, body, max_message_bytes).await
}

/// Calls `path` with the messages `requests` yields, each sent as the frames
/// [`WireMessage`] cuts it into, and streams the response messages. Returns
/// once the response's headers arrive; requests go out meanwhile.
pub(crate) async fn bidi_streaming<S, Req, Resp>(
    transport: Transport,
    path: &'static str,
    requests: S,
    max_message_bytes: usize,
) -> Result<Responses<Resp>, Status>
where
    S: Stream<Item = Req> + Send + Unpin + 'static,
    Req: WireMessage + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    let body = tonic::body::Body::new(WireBody::request(requests.map(Ok)));
    call(transport, path, body, max_message_bytes).await
}

async fn call<Resp>(
    transport: Transport,
    path: &'static str,
    body: tonic::body::Body,
    max_message_bytes: usize,
) -> Result<Responses<Resp>, Status>
where
    Resp: Message + Default + Send + 'static,
{
    let response = transport
        .oneshot(call_request(path, body))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    Ok(
        match response_messages::<_, Resp>(response, max_message_bytes)? {
            Some(messages) => Box::pin(messages),
            None => Box::pin(futures::stream::empty()),
        },
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};
    use http_body::Frame;
    use strata_proto::grpc_wire::{ResponseMessages, WireError, response_wire_status};
    use strata_proto::v1::FetchResponse;
    use tonic::Code;

    use super::*;
    use crate::error::Error;

    fn fetch_response() -> FetchResponse {
        FetchResponse {
            topic: "orders".into(),
            records: Bytes::from(vec![3u8; 40_000]),
            next_offset: 9,
            ..Default::default()
        }
    }

    /// The messages `frames` (data, then optional trailers) decode to.
    async fn messages(
        frames: Vec<Frame<Bytes>>,
        http_status: http::StatusCode,
    ) -> Vec<Result<FetchResponse, Status>> {
        let body = http_body_util::StreamBody::new(futures::stream::iter(
            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
        ));
        ResponseMessages::<_, FetchResponse>::new(body, 1 << 20, http_status)
            .collect()
            .await
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        Frame::trailers(map)
    }

    #[tokio::test]
    async fn messages_then_the_status_in_the_trailers_with_its_metadata() {
        let sent = fetch_response();
        let [head, tail] = <[Bytes; 2]>::try_from(sent.clone().into_frames()).unwrap();
        let frames = vec![
            Frame::data(head),
            Frame::data(tail),
            trailers(&[
                ("grpc-status", "5"),
                ("grpc-message", "no%20topic"),
                ("strata-error", "topic-not-found"),
            ]),
        ];
        let got = messages(frames, http::StatusCode::OK).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), &sent);
        let status = got[1].as_ref().unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no topic");
        assert!(matches!(
            Error::from_status(status),
            Error::TopicNotFound(_)
        ));
    }

    #[tokio::test]
    async fn a_stream_that_ends_badly_ends_in_an_error() {
        let head = fetch_response().into_frames().swap_remove(0);
        // OK trailers inside a message.
        let got = messages(
            vec![Frame::data(head.clone()), trailers(&[("grpc-status", "0")])],
            http::StatusCode::OK,
        )
        .await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Internal);
        // No trailers at all: as tonic, UNKNOWN; from an HTTP error status,
        // that status's gRPC code.
        let got = messages(vec![], http::StatusCode::OK).await;
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Unknown);
        let got = messages(vec![], http::StatusCode::SERVICE_UNAVAILABLE).await;
        assert_eq!(got[0].as_ref().unwrap_err().code(), Code::Unavailable);
        // OK trailers after whole messages: the end.
        let got = messages(
            vec![trailers(&[("grpc-status", "0")])],
            http::StatusCode::OK,
        )
        .await;
        assert!(got.is_empty());
    }

    #[test]
    fn a_response_over_the_limit_is_not_retried_or_taken_for_an_offset_error() {
        let status = response_wire_status(&WireError::TooLarge { len: 10, limit: 5 });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let error = Error::from_status(&status);
        assert!(!error.is_retriable(), "{error:?}");
        assert!(!matches!(error, Error::OffsetOutOfRange(_)));
        assert_eq!(
            response_wire_status(&WireError::Compressed).code(),
            Code::Unimplemented
        );
    }
}
