//! Bad input on every RPC of a real broker gets the right gRPC code and a
//! message a person can act on, and never touches what is already stored.

mod common;

use bytes::Bytes;
use common::Node;
use strata_proto::batch::{BatchBuilder, ProducerStamp, Record, field};
use strata_proto::limits::MAX_BATCH_BYTES;
use strata_proto::v1::control_client::ControlClient;
use strata_proto::v1::data_client::DataClient;
use strata_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;

async fn clients(node: &Node) -> (DataClient<Channel>, ControlClient<Channel>) {
    let data = DataClient::connect(format!("http://{}", node.data))
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let control = ControlClient::connect(format!("http://{}", node.control))
        .await
        .unwrap();
    (data, control)
}

fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::default();
    for _ in 0..records {
        b.push(&Record::new(1, vec![b'x'; value_bytes])).unwrap();
    }
    b.finish().to_vec()
}

fn produce(topic: &str, partition: u32, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest {
        topic: topic.into(),
        partition,
        batch: Bytes::from(batch),
        acks: Acks::All as i32,
    }
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status
            .message()
            .to_lowercase()
            .contains(&needle.to_lowercase()),
        "message {:?} does not mention {needle:?}",
        status.message()
    );
    assert!(
        status.metadata().get("strata-error").is_some() || code == Code::OutOfRange,
        "no strata-error kind"
    );
}

/// Sends `message` as the one request message of the data plane's streaming
/// `method`, bytes as given (what a broken or hostile client might send), and
/// returns how the call ended.
async fn raw_call(node: &Node, method: &str, message: &'static [u8]) -> Result<(), tonic::Status> {
    let path = format!("/strata.v1.Data/{method}");
    raw_call_at(node.data, &path, &[message]).await
}

/// Sends `messages` as they are to `path` at `addr`; how the call ended.
async fn raw_call_at(
    addr: std::net::SocketAddr,
    path: &str,
    messages: &[&'static [u8]],
) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = path.parse().unwrap();
    let messages = futures::stream::iter(
        messages
            .iter()
            .map(|m| Bytes::from_static(m))
            .collect::<Vec<_>>(),
    );
    let mut stream = grpc
        .streaming(tonic::Request::new(messages), path, RawCodec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
}

/// Message bodies passed through as they are.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len)))
    }
}

async fn high_watermark(control: &mut ControlClient<Channel>, topic: &str) -> u64 {
    let info = control
        .describe_topic(DescribeTopicRequest { name: topic.into() })
        .await
        .unwrap()
        .into_inner();
    info.partitions.iter().map(|p| p.high_watermark).sum()
}

#[tokio::test]
async fn every_bad_produce_gets_the_right_code_and_stored_data_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let (mut data, mut control) = clients(&node).await;
    let config = TopicConfig {
        partitions: 2,
        ..Default::default()
    };
    control
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            config: Some(config),
        })
        .await
        .unwrap();
    let ok = data
        .produce(produce("t", 0, batch(3, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.base_offset, 0);

    // Unknown topic, unknown partition, invalid names.
    assert_status(
        data.produce(produce("nope", 0, batch(1, 1))).await,
        Code::NotFound,
        "\"nope\"",
    );
    assert_status(
        data.produce(produce("t", 7, batch(1, 1))).await,
        Code::NotFound,
        "partition 7",
    );
    assert_status(
        data.produce(produce("a/b", 0, batch(1, 1))).await,
        Code::InvalidArgument,
        "'/'",
    );
    assert_status(
        data.produce(produce("", 0, batch(1, 1))).await,
        Code::InvalidArgument,
        "empty",
    );
    assert_status(
        data.produce(produce(&"x".repeat(300), 0, batch(1, 1)))
            .await,
        Code::InvalidArgument,
        "300 bytes",
    );

    // Damaged batches.
    let mut crc = batch(2, 10);
    let last = crc.len() - 1;
    crc[last] ^= 1;
    assert_status(
        data.produce(produce("t", 0, crc)).await,
        Code::InvalidArgument,
        "crc",
    );
    let mut magic = batch(1, 10);
    magic[field::MAGIC] = 42;
    assert_status(
        data.produce(produce("t", 0, magic)).await,
        Code::InvalidArgument,
        "magic",
    );
    assert_status(
        data.produce(produce("t", 0, Vec::new())).await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_status(
        data.produce(produce("t", 0, BatchBuilder::default().finish().to_vec()))
            .await,
        Code::InvalidArgument,
        "record count",
    );
    let mut short = batch(2, 10);
    short.truncate(short.len() - 3);
    assert_status(
        data.produce(produce("t", 0, short)).await,
        Code::InvalidArgument,
        "length",
    );
    let mut compressed = batch(1, 10);
    compressed[field::ATTRIBUTES] = 2;
    assert_status(
        data.produce(produce("t", 0, compressed)).await,
        Code::InvalidArgument,
        "compression",
    );
    // A Raft entry id is the broker's to stamp: a replica would take a
    // forged one for its leader's (CRC resealed, so only the id is wrong).
    let mut forged = batch(1, 10);
    strata_proto::batch::verify_and_stamp(&mut forged, 0, 3, 1).unwrap();
    assert_status(
        data.produce(produce("t", 0, forged)).await,
        Code::InvalidArgument,
        "raft term 3 and index 1",
    );
    let bad_acks = ProduceRequest {
        acks: 9,
        ..produce("t", 0, batch(1, 1))
    };
    assert_status(data.produce(bad_acks).await, Code::InvalidArgument, "acks");

    // Oversize: just over the batch limit, and far over the message limit.
    let over = batch(5, 900 * 1024);
    assert!(over.len() > MAX_BATCH_BYTES);
    assert_status(
        data.produce(produce("t", 0, over)).await,
        Code::InvalidArgument,
        "exceeds the limit",
    );
    let huge = data
        .produce(produce("t", 0, vec![0u8; 16 * 1024 * 1024]))
        .await
        .expect_err("16 MiB must be refused");
    assert!(
        matches!(
            huge.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{huge:?}"
    );
    assert!(
        huge.message().contains("too large") || huge.message().contains("limit"),
        "{huge:?}"
    );

    // Idempotence: a sequence gap is refused with the expected sequence.
    let stamp = |seq| ProducerStamp {
        producer_id: 99,
        producer_epoch: 0,
        base_sequence: seq,
    };
    let mut b = BatchBuilder::new(stamp(5));
    b.push(&Record::new(1, "gap")).unwrap();
    let gap = data
        .produce(produce("t", 1, b.finish().to_vec()))
        .await
        .expect_err("gap refused");
    assert_eq!(gap.code(), Code::Aborted);
    assert_eq!(gap.metadata().get("expected-sequence").unwrap(), "0");

    // Bytes that are no ProduceRequest, on the produce stream (read by the
    // broker itself, below tonic).
    assert_status(
        raw_call(&node, "ProduceStream", b"\x0a\xff\xff\xff").await,
        Code::InvalidArgument,
        "does not decode",
    );

    // Nothing stored was touched.
    assert_eq!(high_watermark(&mut control, "t").await, 3);
    let mut stream = data
        .fetch(FetchRequest {
            positions: vec![FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            }],
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.next_offset, 3);
    assert_eq!(
        data.produce(produce("t", 0, batch(1, 1)))
            .await
            .unwrap()
            .into_inner()
            .base_offset,
        3
    );
}

#[tokio::test]
async fn bad_fetches_offsets_groups_and_admin_requests_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("n1"));
    let (mut data, mut control) = clients(&node).await;
    let config = TopicConfig {
        partitions: 1,
        ..Default::default()
    };
    control
        .create_topic(CreateTopicRequest {
            name: "t".into(),
            config: Some(config),
        })
        .await
        .unwrap();
    data.produce(produce("t", 0, batch(2, 1))).await.unwrap();

    let fetch = |topic: &str, partition, offset| FetchRequest {
        positions: vec![FetchPosition {
            topic: topic.into(),
            partition,
            offset,
        }],
        max_bytes: 0,
        max_wait_ms: 0,
    };
    assert_status(
        data.fetch(fetch("t", 0, u64::MAX)).await,
        Code::OutOfRange,
        "out of range",
    );
    assert_status(data.fetch(fetch("t", 0, 3)).await, Code::OutOfRange, "0..2");
    assert_status(
        data.fetch(fetch("t", 4, 0)).await,
        Code::NotFound,
        "partition 4",
    );
    assert_status(data.fetch(fetch("zzz", 0, 0)).await, Code::NotFound, "zzz");
    let empty = FetchRequest {
        positions: vec![],
        max_bytes: 0,
        max_wait_ms: 0,
    };
    assert_status(
        data.fetch(empty).await,
        Code::InvalidArgument,
        "at least one",
    );
    let twice = FetchRequest {
        positions: vec![
            FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset: 1,
            },
        ],
        max_bytes: 0,
        max_wait_ms: 0,
    };
    assert_status(data.fetch(twice).await, Code::InvalidArgument, "twice");
    // Bytes that are no FetchRequest at all (the broker reads Fetch requests
    // itself, below tonic).
    assert_status(
        raw_call(&node, "Fetch", b"\x0a\xff\xff\xff").await,
        Code::InvalidArgument,
        "does not decode",
    );

    let commit = |group: &str, offset| CommitOffsetsRequest {
        group: group.into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![PartitionOffset {
            topic: "t".into(),
            partition: 0,
            offset,
            metadata: String::new(),
        }],
    };
    assert_status(
        data.commit_offsets(commit("g", 10)).await,
        Code::OutOfRange,
        "offset 10",
    );
    assert_status(
        data.commit_offsets(commit("bad group", 1)).await,
        Code::InvalidArgument,
        "' '",
    );
    data.commit_offsets(commit("g", 2)).await.unwrap();
    let hb = HeartbeatRequest {
        group: "g".into(),
        member_id: "ghost".into(),
        ..Default::default()
    };
    assert_status(
        data.heartbeat(hb).await,
        Code::FailedPrecondition,
        "unknown member",
    );
    let hb = HeartbeatRequest {
        group: "g".into(),
        assignor: "fastest".into(),
        ..Default::default()
    };
    assert_status(data.heartbeat(hb).await, Code::InvalidArgument, "assignor");
    let hb = HeartbeatRequest {
        group: "g".into(),
        session_timeout_ms: 5,
        ..Default::default()
    };
    assert_status(
        data.heartbeat(hb).await,
        Code::InvalidArgument,
        "session timeout",
    );

    let create = |name: &str, config: TopicConfig| CreateTopicRequest {
        name: name.into(),
        config: Some(config),
    };
    assert_status(
        control
            .create_topic(create("z", TopicConfig::default()))
            .await,
        Code::InvalidArgument,
        "partitions",
    );
    let tiny = TopicConfig {
        partitions: 1,
        segment_bytes: 10,
        ..Default::default()
    };
    assert_status(
        control.create_topic(create("z", tiny)).await,
        Code::InvalidArgument,
        "segment bytes",
    );
    let rf = TopicConfig {
        partitions: 1,
        replication_factor: 3,
        ..Default::default()
    };
    assert_status(
        control.create_topic(create("z", rf)).await,
        Code::InvalidArgument,
        "live node",
    );
    let one = TopicConfig {
        partitions: 1,
        ..Default::default()
    };
    assert_status(
        control.create_topic(create("t", one)).await,
        Code::AlreadyExists,
        "\"t\"",
    );
    assert_status(
        control
            .delete_topic(DeleteTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        control
            .describe_group(DescribeGroupRequest {
                group: "never".into(),
            })
            .await,
        Code::NotFound,
        "does not exist",
    );
}

/// The peer port's RaftAppend, served below tonic (the nodes send batches as
/// frames of their own), still answers a standard gRPC client, and refuses
/// what is not an AppendEntries of a group it runs.
#[tokio::test]
async fn bad_raft_appends_on_the_peer_port_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let mut peer =
        strata_proto::v1::peer_client::PeerClient::connect(format!("http://{}", node.peer))
            .await
            .unwrap();
    let unknown = RaftAppendRequest {
        group: "nowhere#1/0".into(),
        header_json: Bytes::from_static(b"{}"),
        entries: vec![RaftEntry {
            batch: Bytes::from(batch(100, 1000)),
            json: Bytes::new(),
        }],
    };
    let status = peer.raft_append(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("no Raft group \"nowhere#1/0\""),
        "{status:?}"
    );

    let path = "/strata.v1.Peer/RaftAppend";
    let status = raw_call_at(node.peer, path, &[b"\xff\xff\xff"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("does not decode"), "{status:?}");
    let status = raw_call_at(node.peer, path, &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("without its request"),
        "{status:?}"
    );
    // The node still serves.
    peer.hello(HelloRequest { node_id: 0 }).await.unwrap();
}
