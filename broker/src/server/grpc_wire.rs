//! gRPC's framing for the data plane's bulk RPCs, served one layer below
//! tonic so that batches are not copied on their way through.
//!
//! tonic copies every incoming DATA frame into a buffer of its own before
//! decoding a message, and encodes every outgoing message into another. For
//! Produce and Fetch, whose messages are mostly one batch of up to a few MiB,
//! those copies were a tenth of the broker's CPU producing and a quarter of it
//! while a consumer caught up. Here a request message that arrives in one DATA
//! frame is decoded from that frame's bytes (its batch is a slice of them), and
//! a response hands its bulk bytes to h2 as a frame of their own, which h2
//! writes to the socket from where they are. The bytes on the wire are
//! ordinary gRPC: a 1-byte compression flag, a 4-byte big-endian length, the
//! protobuf message; the status follows in trailers.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::http::{self, HeaderMap, HeaderValue, header};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use http_body::{Body as _, Frame};
use prost::Message;
use tonic::Status;

use super::status::to_status;
use crate::error::Error;

/// Length of gRPC's message prefix: a compression flag and a 4-byte length.
pub const PREFIX_BYTES: usize = 5;

/// A response message as the DATA frames that carry it: the prefix with the
/// start of the message, and optionally bytes sent as they are after it.
pub trait WireMessage {
    fn into_frames(self) -> (Bytes, Option<Bytes>);
}

/// `message` with its prefix, in one buffer.
pub fn framed(message: &impl Message) -> Bytes {
    framed_with_tail(message, 0).freeze()
}

/// The prefix and `message`, in a buffer with room for `tail_bytes` more,
/// whose length the prefix includes: the caller appends them, in this
/// buffer or in a frame of their own.
pub fn framed_with_tail(message: &impl Message, tail_bytes: usize) -> BytesMut {
    let len = message.encoded_len() + tail_bytes;
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + len);
    buf.put_u8(0);
    // Messages are bounded by the data plane's limits, far below 4 GiB.
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf
}

/// A successful gRPC response streaming `messages`, then their status.
pub fn response<S, M>(messages: S) -> http::Response<Body>
where
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
    M: WireMessage,
{
    let body = ResponseBody {
        messages,
        tail: None,
        done: false,
    };
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A stream of messages as an HTTP/2 body: DATA frames, then the status in
/// trailers.
struct ResponseBody<S> {
    messages: S,
    /// Bytes of the message whose first frame was just sent.
    tail: Option<Bytes>,
    done: bool,
}

impl<S> ResponseBody<S> {
    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.done = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(
                "grpc-status",
                HeaderValue::from(tonic::Code::Internal as i32),
            );
        }
        Frame::trailers(trailers)
    }
}

impl<S, M> http_body::Body for ResponseBody<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: WireMessage,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(tail) = self.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.messages).poll_next(cx)) {
            Some(Ok(message)) => {
                let (head, tail) = message.into_frames();
                self.tail = tail;
                Frame::data(head)
            }
            Some(Err(status)) => self.trailers(&status),
            None => self.trailers(&Status::ok("")),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.tail.is_none()
    }
}

/// The messages of a request body, decoded as they complete. A message that
/// arrived in one DATA frame is decoded from that frame's bytes without a
/// copy; one split across frames is first put together.
pub struct MessageStream<M> {
    body: Body,
    /// Bytes received and not yet decoded, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max_message_bytes: usize,
    ended: bool,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> MessageStream<M> {
    pub fn new(body: Body, max_message_bytes: usize) -> Self {
        MessageStream {
            body,
            chunks: VecDeque::new(),
            buffered: 0,
            max_message_bytes,
            ended: false,
            message: PhantomData,
        }
    }

    /// The next whole message's bytes, if they have all arrived.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered < PREFIX_BYTES {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX_BYTES];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(PREFIX_BYTES - filled);
            prefix[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == PREFIX_BYTES {
                break;
            }
        }
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "compressed messages are not accepted; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message_bytes {
            return Err(to_status(&Error::InvalidArgument(format!(
                "a message of {len} bytes is over the limit of {} bytes",
                self.max_message_bytes
            ))));
        }
        if self.buffered < PREFIX_BYTES + len {
            return Ok(None);
        }
        self.take(PREFIX_BYTES);
        Ok(Some(self.take(len)))
    }

    /// The first `n` buffered bytes: a slice of the first chunk when it holds
    /// them all, else a copy.
    fn take(&mut self, n: usize) -> Bytes {
        if n == 0 {
            // An empty message (every field at its default).
            return Bytes::new();
        }
        self.buffered -= n;
        let front = self.chunks.front_mut().expect("n bytes are buffered");
        if front.len() >= n {
            let taken = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return taken;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.chunks.front_mut().expect("n bytes are buffered");
            let k = front.len().min(n - out.len());
            out.put_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

impl<M: Message + Default> Stream for MessageStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.next_message() {
                Ok(Some(bytes)) => {
                    return Poll::Ready(Some(M::decode(bytes).map_err(|e| {
                        to_status(&Error::InvalidArgument(format!(
                            "a request message does not decode: {e}"
                        )))
                    })));
                }
                Ok(None) => {}
                Err(status) => {
                    self.ended = true;
                    self.chunks.clear();
                    self.buffered = 0;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if self.ended {
                if self.buffered > 0 {
                    self.buffered = 0;
                    self.chunks.clear();
                    return Poll::Ready(Some(Err(to_status(&Error::InvalidArgument(
                        "the request ended inside a message".into(),
                    )))));
                }
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Request trailers carry nothing gRPC uses.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.buffered += data.len();
                        self.chunks.push_back(data);
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    self.chunks.clear();
                    self.buffered = 0;
                    return Poll::Ready(Some(Err(Status::cancelled(format!(
                        "the request stream broke: {e}"
                    )))));
                }
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use strata_proto::v1::ProduceRequest;

    fn request(batch: usize) -> ProduceRequest {
        ProduceRequest {
            topic: "orders".into(),
            partition: 2,
            batch: Bytes::from(vec![7u8; batch]),
            acks: 1,
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

    #[tokio::test]
    async fn messages_decode_however_the_frames_cut_them() {
        let empty = ProduceRequest::default();
        assert_eq!(empty.encoded_len(), 0);
        let sent = [
            request(10),
            empty.clone(),
            request(100_000),
            request(0),
            empty,
        ];
        let wire: Bytes = sent
            .iter()
            .flat_map(|m| framed(m).to_vec())
            .collect::<Vec<_>>()
            .into();
        let n = wire.len();
        for cuts in [
            vec![],
            vec![1],
            vec![3, 4, 5, 6],
            vec![n / 2],
            vec![20, n - 1],
        ] {
            let got = decode_all(body(&wire, &cuts), 1 << 20).await;
            let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, sent, "cut at {cuts:?}");
        }
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_decoded_from_its_bytes() {
        let wire = framed(&request(100_000));
        let frame = wire.clone();
        let got = decode_all(body(&frame, &[]), 1 << 20).await;
        let batch = got[0].as_ref().unwrap().batch.clone();
        let inside = wire.as_ptr_range();
        assert!(
            inside.contains(&batch.as_ptr()),
            "the batch is a slice of the frame"
        );
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
