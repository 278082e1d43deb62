//! gRPC's message framing, for the data plane's bulk RPCs, which the broker
//! serves and the client calls one layer below tonic so that batches are not
//! copied on their way through.
//!
//! tonic copies every incoming DATA frame into a buffer of its own before it
//! decodes a message, and encodes every outgoing message into another. For
//! Produce and Fetch, whose messages are mostly one batch of up to a few MiB,
//! those copies were a tenth to a quarter of each side's CPU. Here received
//! bytes stay in the chunks HTTP/2 delivered them in, and a message's `bytes`
//! fields are decoded as slices of those chunks wherever a field lies within
//! one. A sender gives its bulk field a DATA frame of its own
//! ([`WireMessage`]), which arrives as one chunk when it fits in a frame
//! (`limits::HTTP2_MAX_FRAME_BYTES`, 1 MiB: a consumer's default fetch size)
//! and in the stream's flow-control window at the time; h2 cuts a larger
//! field into several frames, and that field is copied once, as tonic would.
//! The bytes on the wire are ordinary gRPC: a 1-byte compression flag, a
//! 4-byte big-endian length, the protobuf message.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;

use crate::v1::{
    FetchResponse, ProduceRequest, ProduceResponse, RaftAppendRequest, RaftEntry, RaftReply,
};

/// The path of the Fetch RPC, as tonic routes it.
pub const FETCH_PATH: &str = "/strata.v1.Data/Fetch";

/// The path of the ProduceStream RPC, as tonic routes it.
pub const PRODUCE_STREAM_PATH: &str = "/strata.v1.Data/ProduceStream";

/// The path of the peer port's RaftAppend RPC (Raft's AppendEntries).
pub const RAFT_APPEND_PATH: &str = "/strata.v1.Peer/RaftAppend";

/// Length of gRPC's message prefix: a compression flag and a 4-byte length.
pub const PREFIX_BYTES: usize = 5;

/// `message` with its prefix, in one buffer.
pub fn framed(message: &impl Message) -> Bytes {
    framed_with_tail(message, 0, 0).freeze()
}

/// The prefix and `message`, in a buffer with room for `room` more bytes;
/// the prefix's length counts `tail_bytes` more, which the caller appends,
/// in this buffer or in frames of their own.
pub fn framed_with_tail(message: &impl Message, tail_bytes: usize, room: usize) -> BytesMut {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_BYTES + len + room);
    buf.put_u8(0);
    // Messages are bounded by the data plane's limits, far below 4 GiB.
    buf.put_u32((len + tail_bytes) as u32);
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf
}

/// A message as the DATA frames that carry it, in order: the prefix with
/// the start of the message, then any bulk bytes sent as they are, each in a
/// frame of its own, with the encoding between them in frames of its own.
pub trait WireMessage {
    fn into_frames(self) -> Vec<Bytes>;
}

/// Bulk bytes below this size travel in the same frame as the rest of their
/// message: copying a few KiB costs less than a frame of their own.
pub const SEPARATE_FRAME_MIN_BYTES: usize = 16 * 1024;

/// Whether bulk bytes of `len` travel in a DATA frame of their own, and so
/// arrive in one (when they fit in a frame) rather than among other fields.
pub fn own_frame(len: usize) -> bool {
    len >= SEPARATE_FRAME_MIN_BYTES
}

/// `message` with `bulk` as its length-delimited field `field`, put after
/// the other fields (prost reads fields in any order), and in a frame of its
/// own when it is worth one. `message` must not hold that field itself.
fn with_bulk_field(message: &impl Message, field: u32, bulk: Bytes) -> Vec<Bytes> {
    if bulk.is_empty() {
        return vec![framed(message)];
    }
    let head = key_len(field) + encoded_len_varint(bulk.len() as u64);
    let inline = !own_frame(bulk.len());
    let room = head + if inline { bulk.len() } else { 0 };
    let mut buf = framed_with_tail(message, head + bulk.len(), room);
    encode_key(field, WireType::LengthDelimited, &mut buf);
    encode_varint(bulk.len() as u64, &mut buf);
    if inline {
        buf.put_slice(&bulk);
        return vec![buf.freeze()];
    }
    vec![buf.freeze(), bulk]
}

/// `FetchResponse.records`'s field number in `strata.proto`.
const FETCH_RESPONSE_RECORDS_FIELD: u32 = 3;

/// `ProduceRequest.batch`'s field number in `strata.proto`.
const PRODUCE_REQUEST_BATCH_FIELD: u32 = 3;

/// The records in a frame of their own: h2 writes them to the socket from
/// the broker's page-cache map, and the client decodes them in place.
impl WireMessage for FetchResponse {
    fn into_frames(mut self) -> Vec<Bytes> {
        let records = std::mem::take(&mut self.records);
        with_bulk_field(&self, FETCH_RESPONSE_RECORDS_FIELD, records)
    }
}

/// The batch in a frame of its own: the producer sends the batch it built,
/// and the broker writes it from the frame it arrived in.
impl WireMessage for ProduceRequest {
    fn into_frames(mut self) -> Vec<Bytes> {
        let batch = std::mem::take(&mut self.batch);
        with_bulk_field(&self, PRODUCE_REQUEST_BATCH_FIELD, batch)
    }
}

impl WireMessage for ProduceResponse {
    fn into_frames(self) -> Vec<Bytes> {
        vec![framed(&self)]
    }
}

/// `RaftAppendRequest.entries`'s field number in `strata.proto`.
const RAFT_APPEND_ENTRIES_FIELD: u32 = 3;

/// `RaftEntry.batch`'s field number in `strata.proto`.
const RAFT_ENTRY_BATCH_FIELD: u32 = 1;

/// Each entry's batch in a frame of its own: the leader sends the batches
/// from its log's memory, and the follower writes them from the frames they
/// arrived in.
impl WireMessage for RaftAppendRequest {
    fn into_frames(mut self) -> Vec<Bytes> {
        let entries = std::mem::take(&mut self.entries);
        let entry_len = |e: &RaftEntry| e.encoded_len();
        let entries_len: usize = entries
            .iter()
            .map(|e| {
                let len = entry_len(e);
                key_len(RAFT_APPEND_ENTRIES_FIELD) + encoded_len_varint(len as u64) + len
            })
            .sum();
        // A batch goes alone; an entry with JSON (never also a batch) is
        // encoded whole.
        let alone = |e: &RaftEntry| own_frame(e.batch.len()) && e.json.is_empty();
        // What goes in frames of their own takes no room in the buffer.
        let separate: usize = entries
            .iter()
            .filter(|e| alone(e))
            .map(|e| e.batch.len())
            .sum();
        let mut frames = Vec::new();
        let mut buf = framed_with_tail(&self, entries_len, entries_len - separate);
        for entry in entries {
            encode_key(
                RAFT_APPEND_ENTRIES_FIELD,
                WireType::LengthDelimited,
                &mut buf,
            );
            encode_varint(entry_len(&entry) as u64, &mut buf);
            if !alone(&entry) {
                entry.encode(&mut buf).expect("the buffer grows as needed");
                continue;
            }
            encode_key(RAFT_ENTRY_BATCH_FIELD, WireType::LengthDelimited, &mut buf);
            encode_varint(entry.batch.len() as u64, &mut buf);
            frames.push(buf.split().freeze());
            frames.push(entry.batch);
        }
        if !buf.is_empty() {
            frames.push(buf.freeze());
        }
        frames
    }
}

impl WireMessage for RaftReply {
    fn into_frames(self) -> Vec<Bytes> {
        vec![framed(&self)]
    }
}

/// A stream of messages as an HTTP/2 body: each message's frames (see
/// [`WireMessage`]). A response's body ends with its status in trailers
/// (the stream's first error, or OK at its end); a request's body has no
/// trailers, and an error in its stream resets the call.
pub struct WireBody<S> {
    messages: S,
    /// The frames still to send of the message whose first frame was sent.
    tail: std::vec::IntoIter<Bytes>,
    ends_with_status: bool,
    done: bool,
}

impl<S> WireBody<S> {
    /// The body of a call's requests.
    pub fn request(messages: S) -> Self {
        Self::new(messages, false)
    }

    /// The body of a call's responses, then its status.
    pub fn response(messages: S) -> Self {
        Self::new(messages, true)
    }

    fn new(messages: S, ends_with_status: bool) -> Self {
        WireBody {
            messages,
            tail: Vec::new().into_iter(),
            ends_with_status,
            done: false,
        }
    }

    /// The last frame: the trailers carrying `status`, if this body has them.
    fn finish(&mut self, status: Status) -> Option<Result<Frame<Bytes>, Status>> {
        self.done = true;
        if !self.ends_with_status {
            return (status.code() != tonic::Code::Ok).then_some(Err(status));
        }
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(
                "grpc-status",
                HeaderValue::from(tonic::Code::Internal as i32),
            );
        }
        Some(Ok(Frame::trailers(trailers)))
    }
}

impl<S, M> http_body::Body for WireBody<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: WireMessage,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(frame) = self.tail.next() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(Pin::new(&mut self.messages).poll_next(cx)) {
            Some(Ok(message)) => {
                let mut frames = message.into_frames().into_iter();
                let head = frames.next().expect("a message has a first frame");
                self.tail = frames;
                Some(Ok(Frame::data(head)))
            }
            Some(Err(status)) => self.finish(status),
            None => self.finish(Status::ok("")),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.tail.len() == 0
    }
}

/// A gRPC call of `path` with `body`, as an HTTP/2 request; the channel it
/// goes through adds the scheme and authority of the node it reaches.
pub fn call_request<B>(path: &'static str, body: B) -> http::Request<B> {
    let mut call = http::Request::new(body);
    *call.method_mut() = http::Method::POST;
    *call.version_mut() = http::Version::HTTP_2;
    *call.uri_mut() = http::Uri::from_static(path);
    let headers = call.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    call
}

/// The status of a response without one (not gRPC, or cut short), as
/// gRPC's HTTP mapping infers it.
pub fn missing_status(http_status: http::StatusCode) -> Status {
    use tonic::Code;
    let code = match http_status {
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "the response carries no gRPC status (HTTP {})",
            http_status.as_u16()
        ),
    )
}

/// A call's `response` as it arrived: refused in its headers alone (an error
/// at once; no messages if the status there is OK), or its messages, each
/// at most `max_message_bytes`, then its status.
pub fn response_messages<B, M>(
    response: http::Response<B>,
    max_message_bytes: usize,
) -> Result<Option<ResponseMessages<B, M>>, Status> {
    // A call refused before any message is answered in the headers alone.
    if let Some(status) = Status::from_header_map(response.headers()) {
        return match status.code() {
            tonic::Code::Ok => Ok(None),
            _ => Err(status),
        };
    }
    let http_status = response.status();
    // Not gRPC at all (a proxy's error page, say): its body is no message.
    if http_status != http::StatusCode::OK {
        return Err(missing_status(http_status));
    }
    Ok(Some(ResponseMessages::new(
        response.into_body(),
        max_message_bytes,
        http_status,
    )))
}

/// The one message of a unary call's `response`, or the call's status if
/// that is not OK.
pub async fn unary_reply<B, M>(
    response: http::Response<B>,
    max_message_bytes: usize,
) -> Result<M, Status>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Message + Default,
{
    use futures::StreamExt;
    let no_message = || Status::internal("the response carried no message");
    let Some(mut messages) = response_messages::<B, M>(response, max_message_bytes)? else {
        return Err(no_message());
    };
    let reply = messages.next().await.ok_or_else(no_message)??;
    // Then the call's status.
    while let Some(item) = messages.next().await {
        item?;
    }
    Ok(reply)
}

/// A response body's messages, then its status if that is not OK.
pub struct ResponseMessages<B, M> {
    messages: BodyMessages<B, M>,
    http_status: http::StatusCode,
}

impl<B, M> ResponseMessages<B, M> {
    /// The messages of `body`, a response with `http_status`.
    pub fn new(body: B, max_message_bytes: usize, http_status: http::StatusCode) -> Self {
        ResponseMessages {
            messages: BodyMessages::new(body, max_message_bytes),
            http_status,
        }
    }

    /// The last item: the call's status from its trailers (as gRPC's HTTP
    /// mapping infers it when there are none), unless it is OK.
    fn finish(&self, trailers: Option<&HeaderMap>, truncated: bool) -> Option<Result<M, Status>> {
        let status = trailers
            .and_then(Status::from_header_map)
            .unwrap_or_else(|| missing_status(self.http_status));
        if status.code() != tonic::Code::Ok {
            return Some(Err(status));
        }
        if truncated {
            return Some(Err(Status::internal("the response ended inside a message")));
        }
        None
    }
}

/// A response that is not a message, as a status typed the way the caller
/// should see it: a message over the limit is not something a retry fixes
/// (tonic said OUT_OF_RANGE, which a consumer would have taken for an offset
/// out of range); an undecodable one is INTERNAL, as in tonic.
pub fn response_wire_status(error: &WireError) -> Status {
    let message = format!("a response from the broker: {error}");
    match error {
        WireError::TooLarge { .. } => Status::resource_exhausted(message),
        WireError::Compressed => Status::unimplemented(message),
        _ => Status::internal(message),
    }
}

impl<B, M> Stream for ResponseMessages<B, M>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Message + Default,
{
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(match ready!(Pin::new(&mut self.messages).poll_next(cx)) {
            Some(Ok(message)) => Some(Ok(message)),
            None => None,
            Some(Err(BodyEnd::Ended {
                trailers,
                truncated,
            })) => self.finish(trailers.as_ref(), truncated),
            Some(Err(BodyEnd::Wire(e))) => Some(Err(response_wire_status(&e))),
            Some(Err(BodyEnd::Broken(e))) => Some(Err(Status::from_error(e))),
        })
    }
}

/// Why received bytes are not a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("compressed messages are not accepted; send them uncompressed")]
    Compressed,
    #[error("a message of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("a message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The bytes of one side of a call, as received: whole messages are decoded
/// from them as they complete.
#[derive(Debug)]
pub struct Reassembly {
    /// Bytes received and not yet decoded, in order.
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max_message_bytes: usize,
}

impl Reassembly {
    pub fn new(max_message_bytes: usize) -> Self {
        Reassembly {
            chunks: VecDeque::new(),
            buffered: 0,
            max_message_bytes,
        }
    }

    /// Adds the payload of a DATA frame.
    pub fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.buffered += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Bytes received and not yet decoded: non-zero at the end of a stream
    /// means it ended inside a message.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Forgets what is buffered (after an error, nothing more is decoded).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.buffered = 0;
    }

    /// The next message, if all of it has arrived.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, WireError> {
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
            return Err(WireError::Compressed);
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message_bytes {
            return Err(WireError::TooLarge {
                len,
                limit: self.max_message_bytes,
            });
        }
        if self.buffered < PREFIX_BYTES + len {
            return Ok(None);
        }
        self.take(PREFIX_BYTES);
        Ok(Some(M::decode(self.take(len))?))
    }

    /// The first `n` buffered bytes, as the chunks (or parts of them) that
    /// hold them.
    fn take(&mut self, mut n: usize) -> Chunks {
        self.buffered -= n;
        let mut taken = Chunks::default();
        while n > 0 {
            let front = self.chunks.front_mut().expect("n bytes are buffered");
            if front.len() > n {
                taken.push(front.split_to(n));
                break;
            }
            n -= front.len();
            taken.push(self.chunks.pop_front().expect("the front chunk"));
        }
        taken
    }
}

/// How a body's messages ended: the last item of [`BodyMessages`].
#[derive(Debug)]
pub enum BodyEnd {
    /// The body ended, with its trailers if it had any; `truncated` if it
    /// ended inside a message.
    Ended {
        trailers: Option<HeaderMap>,
        truncated: bool,
    },
    /// Received bytes that are not a message.
    Wire(WireError),
    /// The body itself failed: the stream or connection broke.
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

/// The messages of an HTTP/2 body, decoded as they complete (see
/// [`Reassembly`]), then how the body ended, as one `Err` item, always the
/// last. Each side of a call says what an ending means to it: the broker
/// reading requests, the client reading responses and their status.
pub struct BodyMessages<B, M> {
    body: B,
    received: Reassembly,
    done: bool,
    message: PhantomData<fn() -> M>,
}

impl<B, M> BodyMessages<B, M> {
    pub fn new(body: B, max_message_bytes: usize) -> Self {
        BodyMessages {
            body,
            received: Reassembly::new(max_message_bytes),
            done: false,
            message: PhantomData,
        }
    }

    fn end(&mut self, end: BodyEnd) -> Poll<Option<Result<M, BodyEnd>>> {
        self.done = true;
        self.received.clear();
        Poll::Ready(Some(Err(end)))
    }

    fn ended(&mut self, trailers: Option<HeaderMap>) -> Poll<Option<Result<M, BodyEnd>>> {
        let truncated = self.received.buffered() > 0;
        self.end(BodyEnd::Ended {
            trailers,
            truncated,
        })
    }
}

impl<B, M> Stream for BodyMessages<B, M>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    M: Message + Default,
{
    type Item = Result<M, BodyEnd>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match self.received.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(e) => return self.end(BodyEnd::Wire(e)),
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.received.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return self.ended(Some(trailers));
                        }
                    }
                },
                Some(Err(e)) => return self.end(BodyEnd::Broken(e.into())),
                None => return self.ended(None),
            }
        }
    }
}

/// One message's bytes in the chunks they arrived in. A `bytes` field that
/// lies within one chunk decodes to a slice of it (prost takes such fields
/// with `copy_to_bytes`); only one that straddles chunks is copied.
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        self.remaining += chunk.len();
        self.chunks.push_back(chunk);
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the message");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.chunks.front_mut().expect("cnt bytes remain");
            if front.len() > cnt {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self.chunks.front_mut() {
            Some(front) if front.len() >= len => {
                self.remaining -= len;
                let taken = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                taken
            }
            _ => {
                assert!(len <= self.remaining, "copy past the end of the message");
                let mut out = BytesMut::with_capacity(len);
                while out.len() < len {
                    let n = self.chunk().len().min(len - out.len());
                    out.extend_from_slice(&self.chunk()[..n]);
                    self.advance(n);
                }
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(batch: usize) -> ProduceRequest {
        ProduceRequest {
            topic: "orders".into(),
            partition: 2,
            batch: Bytes::from((0..batch).map(|i| i as u8).collect::<Vec<u8>>()),
            acks: 1,
        }
    }

    /// Everything `wire` decodes to when it arrives in chunks cut at `cuts`.
    fn decode_all<M: Message + Default>(
        wire: &Bytes,
        cuts: &[usize],
        limit: usize,
    ) -> Result<Vec<M>, WireError> {
        let mut reassembly = Reassembly::new(limit);
        let mut got = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([wire.len()].iter()) {
            reassembly.push(wire.slice(at..cut));
            at = cut;
            while let Some(m) = reassembly.next_message()? {
                got.push(m);
            }
        }
        assert_eq!(reassembly.buffered(), 0, "nothing left over");
        Ok(got)
    }

    #[test]
    fn messages_decode_however_the_frames_cut_them() {
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
            vec![20, 21, 22, n - 1],
            (1..n).step_by(997).collect(),
        ] {
            let got: Vec<ProduceRequest> = decode_all(&wire, &cuts, 1 << 20).unwrap();
            assert_eq!(got, sent, "cut at {cuts:?}");
        }
    }

    #[test]
    fn a_bytes_field_within_one_chunk_is_a_slice_of_it() {
        let sent = request(100_000);
        let wire = framed(&sent);
        // The whole message in one chunk, or the batch alone in the second.
        let batch_at = wire.len() - sent.batch.len() - 2; // acks field follows
        for cuts in [vec![], vec![batch_at]] {
            let got: Vec<ProduceRequest> = decode_all(&wire, &cuts, 1 << 20).unwrap();
            let inside = wire.as_ptr_range();
            assert!(
                inside.contains(&got[0].batch.as_ptr()),
                "the batch is a slice of what arrived (cut at {cuts:?})"
            );
            assert_eq!(got[0], sent);
        }
        // Straddling two chunks, it is put together.
        let got: Vec<ProduceRequest> = decode_all(&wire, &[batch_at + 50_000], 1 << 20).unwrap();
        assert_eq!(got[0], sent);
    }

    fn fetch_response(records: usize) -> FetchResponse {
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

    /// The frames' bytes, back to back: what the peer receives.
    fn joined(frames: Vec<Bytes>) -> Bytes {
        frames.concat().into()
    }

    /// What any gRPC peer decodes from the frames: the same message.
    #[test]
    fn frames_decode_to_the_message_prost_would_send() {
        for bulk in [
            0,
            1,
            300,
            SEPARATE_FRAME_MIN_BYTES - 1,
            SEPARATE_FRAME_MIN_BYTES,
            1 << 20,
        ] {
            let sent = fetch_response(bulk);
            let frames = sent.clone().into_frames();
            assert_eq!(frames.len() == 2, bulk >= SEPARATE_FRAME_MIN_BYTES);
            let wire = joined(frames);
            assert_eq!(wire[0], 0, "uncompressed");
            let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, wire.len() - PREFIX_BYTES, "{bulk} bytes of records");
            assert_eq!(FetchResponse::decode(&wire[PREFIX_BYTES..]).unwrap(), sent);

            let sent = request(bulk);
            let wire = joined(sent.clone().into_frames());
            assert_eq!(ProduceRequest::decode(&wire[PREFIX_BYTES..]).unwrap(), sent);
        }
        let sent = ProduceResponse {
            base_offset: 12,
            ..Default::default()
        };
        let wire = joined(sent.into_frames());
        assert_eq!(
            ProduceResponse::decode(&wire[PREFIX_BYTES..]).unwrap(),
            sent
        );
    }

    #[test]
    fn bulk_bytes_travel_as_they_are_and_arrive_as_they_were_sent() {
        let sent = fetch_response(1 << 20);
        let stored = sent.records.clone();
        let [head, tail] = <[Bytes; 2]>::try_from(sent.clone().into_frames()).unwrap();
        assert_eq!(tail.as_ptr(), stored.as_ptr(), "not a copy");
        // The receiver gets them as the frame they were sent in.
        let mut received = Reassembly::new(2 << 20);
        received.push(Bytes::copy_from_slice(&head));
        let frame = Bytes::copy_from_slice(&tail);
        received.push(frame.clone());
        let got: FetchResponse = received.next_message().unwrap().unwrap();
        assert_eq!(got, sent);
        assert_eq!(got.records.as_ptr(), frame.as_ptr(), "decoded in place");
    }

    #[test]
    fn an_append_sends_each_large_batch_as_it_is_and_the_follower_decodes_it_in_place() {
        let large = |n: usize, fill: u8| Bytes::from(vec![fill; n]);
        let entry = |batch: Bytes| RaftEntry {
            batch,
            json: Bytes::new(),
        };
        let sent = RaftAppendRequest {
            group: "orders#1/3".into(),
            header_json: Bytes::from_static(b"{\"vote\":1}"),
            entries: vec![
                entry(large(1 << 20, 1)),
                RaftEntry {
                    batch: Bytes::new(),
                    json: Bytes::from_static(b"\"Blank\""),
                },
                entry(large(100, 2)),
                entry(large(SEPARATE_FRAME_MIN_BYTES, 3)),
            ],
        };
        let frames = sent.clone().into_frames();
        // Head, batch, the small entries with the next batch's field head,
        // that batch; nothing after it.
        assert_eq!(
            frames.len(),
            4,
            "{:?}",
            frames.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(
            frames[1].as_ptr(),
            sent.entries[0].batch.as_ptr(),
            "not a copy"
        );
        assert_eq!(
            frames[3].as_ptr(),
            sent.entries[3].batch.as_ptr(),
            "not a copy"
        );
        // What prost would have sent, byte for byte.
        let wire = joined(frames.clone());
        assert_eq!(&wire[..], &framed(&sent)[..]);
        // Received as the frames they were sent in: the batches in place.
        let mut received = Reassembly::new(4 << 20);
        let arrived: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        for frame in &arrived {
            received.push(frame.clone());
        }
        let got: RaftAppendRequest = received.next_message().unwrap().unwrap();
        assert_eq!(got, sent);
        assert_eq!(
            got.entries[0].batch.as_ptr(),
            arrived[1].as_ptr(),
            "decoded in place"
        );
        assert_eq!(
            got.entries[3].batch.as_ptr(),
            arrived[3].as_ptr(),
            "decoded in place"
        );
        // An entry with both fields set (never sent, but well-formed) is
        // encoded whole, in line.
        let both = RaftAppendRequest {
            entries: vec![RaftEntry {
                batch: large(SEPARATE_FRAME_MIN_BYTES, 4),
                json: Bytes::from_static(b"{}"),
            }],
            ..sent.clone()
        };
        assert_eq!(&joined(both.clone().into_frames())[..], &framed(&both)[..]);
        // No entries: one frame, as prost sends it.
        let empty = RaftAppendRequest {
            entries: Vec::new(),
            ..sent
        };
        assert_eq!(empty.clone().into_frames(), vec![framed(&empty)]);
    }

    /// Every frame `body` yields, in order.
    fn frames<S>(mut body: WireBody<S>) -> Vec<Result<Frame<Bytes>, Status>>
    where
        WireBody<S>: http_body::Body<Data = Bytes, Error = Status> + Unpin,
    {
        use http_body::Body as _;
        let mut out = Vec::new();
        while let Some(frame) = futures::executor::block_on(std::future::poll_fn(|cx| {
            Pin::new(&mut body).poll_frame(cx)
        })) {
            out.push(frame);
        }
        assert!(body.is_end_stream());
        out
    }

    #[test]
    fn a_response_body_ends_with_its_status_and_a_request_body_without() {
        let sent = fetch_response(1 << 20);
        let messages = |end: Option<Status>| {
            futures::stream::iter(
                [Ok(sent.clone())]
                    .into_iter()
                    .chain(end.map(Err))
                    .collect::<Vec<_>>(),
            )
        };
        let got = frames(WireBody::response(messages(None)));
        assert_eq!(got.len(), 3, "head, records, trailers");
        let trailers = got[2].as_ref().unwrap().trailers_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "0");

        let got = frames(WireBody::response(messages(Some(Status::not_found(
            "gone",
        )))));
        let trailers = got[2].as_ref().unwrap().trailers_ref().unwrap();
        assert_eq!(trailers["grpc-status"], "5");
        assert_eq!(trailers["grpc-message"], "gone");

        let got = frames(WireBody::request(messages(None)));
        assert_eq!(got.len(), 2, "head and records, no trailers");
        let wire = joined(vec![
            got[0].as_ref().unwrap().data_ref().unwrap().clone(),
            got[1].as_ref().unwrap().data_ref().unwrap().clone(),
        ]);
        assert_eq!(FetchResponse::decode(&wire[PREFIX_BYTES..]).unwrap(), sent);

        let got = frames(WireBody::request(messages(Some(Status::cancelled("x")))));
        assert_eq!(
            got.last().unwrap().as_ref().unwrap_err().code(),
            tonic::Code::Cancelled
        );
    }

    #[test]
    fn oversize_compressed_and_garbled_messages_are_errors() {
        let wire = framed(&request(1000));
        let err = decode_all::<ProduceRequest>(&wire, &[], 100).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { limit: 100, .. }),
            "{err}"
        );

        let mut compressed = wire.to_vec();
        compressed[0] = 1;
        let err = decode_all::<ProduceRequest>(&compressed.into(), &[], 1 << 20).unwrap_err();
        assert!(matches!(err, WireError::Compressed));

        let garbage = Bytes::from_static(b"\x00\x00\x00\x00\x03\xff\xff\xff");
        let err = decode_all::<ProduceRequest>(&garbage, &[2], 1 << 20).unwrap_err();
        assert!(matches!(err, WireError::Decode(_)));

        let mut cut = Reassembly::new(1 << 20);
        cut.push(wire.slice(..wire.len() - 1));
        assert!(cut.next_message::<ProduceRequest>().unwrap().is_none());
        assert_eq!(cut.buffered(), wire.len() - 1, "a partial message waits");
    }
    /// `wire` delivered in chunks cut at `cuts` (positions, any order).
    fn chunked(wire: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        at.push(0);
        at.push(wire.len());
        at.sort_unstable();
        at.dedup();
        at.windows(2)
            .map(|w| Bytes::copy_from_slice(&wire[w[0]..w[1]]))
            .collect()
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_request() -> impl Strategy<Value = ProduceRequest> {
            (
                "[a-z]{0,12}",
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..40_000),
                any::<i32>(),
            )
                .prop_map(|(topic, partition, batch, acks)| ProduceRequest {
                    topic,
                    partition,
                    batch: batch.into(),
                    acks,
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Messages sent as `WireMessage` frames arrive whole however
            /// the stream is cut into chunks.
            #[test]
            fn messages_survive_any_chunking(
                sent in proptest::collection::vec(arb_request(), 1..6),
                cuts in proptest::collection::vec(any::<usize>(), 0..40),
            ) {
                let mut wire = Vec::new();
                for m in &sent {
                    for frame in m.clone().into_frames() {
                        wire.extend_from_slice(&frame);
                    }
                }
                let mut received = Reassembly::new(1 << 20);
                let mut got = Vec::new();
                for chunk in chunked(&wire, &cuts) {
                    received.push(chunk);
                    while let Some(m) = received.next_message::<ProduceRequest>().unwrap() {
                        got.push(m);
                    }
                }
                prop_assert_eq!(got, sent);
                prop_assert_eq!(received.buffered(), 0);
            }

            /// Whatever a peer sends, reassembly answers with messages or an
            /// error, never a panic, and never decodes past an error.
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..2_000),
                cuts in proptest::collection::vec(any::<usize>(), 0..20),
                limit in 0usize..4_000,
            ) {
                let mut received = Reassembly::new(limit);
                'chunks: for chunk in chunked(&bytes, &cuts) {
                    received.push(chunk);
                    loop {
                        match received.next_message::<ProduceRequest>() {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => break 'chunks,
                        }
                    }
                }
                prop_assert!(received.buffered() <= bytes.len());
            }
        }
    }
}
