//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz_targets/)
//! and the stable smoke run in the test suite (tests/fuzz_smoke.rs). Each
//! takes arbitrary bytes and must neither panic nor hang; where the input is
//! accepted, what comes back must be consistent.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;
use std::time::Duration;
use strata_broker::log::storage::FileStorage;
use strata_broker::log::{Log, LogConfig};
use strata_broker::server::data_service::DataService;
use strata_broker::{Broker, BrokerConfig};
use strata_proto::batch::{Batches, Records, verify};

use futures::StreamExt;
use strata_broker::partition::Acks;
use strata_broker::server::control_service::ControlService;
use strata_proto::batch::{BatchBuilder, Record};
use strata_proto::v1::control_server::Control;
use strata_proto::v1::data_server::Data;
use strata_proto::v1::{
    CommitOffsetsRequest, CreateTopicRequest, DeleteTopicRequest, DescribeGroupRequest,
    DescribeTopicRequest, FetchOffsetsRequest, FetchRequest, HeartbeatRequest, InitProducerRequest,
    LeaveGroupRequest, ListOffsetsRequest, MetadataRequest, NodeInfo, ProduceRequest,
};

/// The batch decoder: `verify`, then every record of an accepted batch, and
/// the batch iterator over the same bytes.
pub fn batch_decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(header) = verify(data) {
        assert_eq!(
            header.batch_len(),
            data.len(),
            "a verified batch is the whole input"
        );
        if let Ok(records) = Records::new(bytes.clone()) {
            let decoded = records.take_while(Result::is_ok).count();
            assert!(decoded <= header.record_count as usize);
        }
    }
    for item in Batches::new(bytes) {
        if item.is_err() {
            break;
        }
    }
}

/// Recovery of arbitrary segment files: `data` becomes a log directory's
/// segment, index, time index and checkpoint files; opening must recover or
/// refuse cleanly, and everything it then claims to hold must read back.
pub fn segment_recovery(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let quarter = data.len() / 4;
    let (log, rest) = data.split_at(quarter * 2);
    let (index, rest) = rest.split_at(quarter);
    let (time_index, checkpoint) = rest.split_at(rest.len() / 2);
    let base = "00000000000000000000";
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).expect("write");
    write(&format!("{base}.log"), log);
    write(&format!("{base}.index"), index);
    write(&format!("{base}.timeindex"), time_index);
    if !checkpoint.is_empty() {
        write("recovery.checkpoint", checkpoint);
    }
    let Ok((log, _)) = Log::open(
        dir.path(),
        LogConfig::default(),
        Arc::new(FileStorage),
        &mut (),
    ) else {
        return;
    };
    let mut offset = log.start_offset();
    while offset < log.end_offset() {
        let Ok(chunk) = log.read(offset, 1 << 20, log.end_offset()) else {
            return;
        };
        assert!(chunk.next_offset > offset, "a read makes progress");
        offset = chunk.next_offset;
    }
}

/// A broker shared by every run of the request targets, on its own
/// runtime: topic `fuzz` with two partitions holding a few records each.
struct Services {
    rt: tokio::runtime::Runtime,
    data: DataService,
    control: ControlService,
}

fn broker() -> &'static Services {
    static BROKER: OnceLock<Services> = OnceLock::new();
    BROKER.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let (data, control) = rt.block_on(async {
            let broker = Broker::open(BrokerConfig::with_data_dir(dir))
                .await
                .expect("broker");
            let settings = strata_broker::cluster::topics::TopicSettings {
                partitions: 2,
                ..Default::default()
            };
            broker.create_topic("fuzz", settings).await.expect("topic");
            for partition in 0..2 {
                let mut batch = BatchBuilder::default();
                for i in 0..3 {
                    batch
                        .push(&Record::new(1_700_000_000_000 + i, "seed"))
                        .expect("a tiny record fits");
                }
                broker
                    .produce("fuzz", partition, batch.finish(), Acks::All)
                    .await
                    .expect("seed records");
            }
            let control = ControlService::new(broker.clone(), NodeInfo::default());
            (DataService::new(broker), control)
        });
        Services { rt, data, control }
    })
}

/// Longest a target waits on a stream before it counts as quiet: fetches
/// long-poll at the high watermark, which is an answer, not a hang.
const STREAM_QUIET: Duration = Duration::from_millis(20);

/// The produce handler's validation: `data` is a protobuf `ProduceRequest`
/// (or, when it is not one, the batch of a request to a real topic). Every
/// request is answered — accepted or refused with a status — never a panic.
pub fn produce_request(data: &[u8]) {
    let request = ProduceRequest::decode(data).unwrap_or_else(|_| ProduceRequest {
        topic: "fuzz".into(),
        partition: u32::from(data.first().copied().unwrap_or(0) % 3),
        batch: Bytes::copy_from_slice(data),
        acks: 1,
    });
    let s = broker();
    let answer =
        s.rt.block_on(s.data.produce(tonic::Request::new(request.clone())));
    if let Ok(response) = answer {
        // Accepted: the batch was a valid one for an existing partition, so
        // of a topic whose name is valid (the control target may have
        // created others than "fuzz" on the broker the targets share).
        assert!(verify(&request.batch).is_ok());
        assert!(
            !request.topic.is_empty() && !request.topic.contains('/'),
            "a produce to the invalid topic name {:?} was accepted",
            request.topic
        );
        let _ = response.into_inner().base_offset;
    }
}

/// Every data-plane request but produce: the first byte picks the RPC, the
/// rest is its protobuf message. Each is answered — a response or a status —
/// and a fetch stream yields only whole, valid batches from where it was
/// asked to start, or a status.
pub fn data_request(data: &[u8]) {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    let s = broker();
    s.rt.block_on(async {
        match which % 7 {
            0 => {
                let Ok(request) = FetchRequest::decode(message) else {
                    return;
                };
                let starts: Vec<u64> = request.positions.iter().map(|p| p.offset).collect();
                let Ok(stream) = s.data.fetch(tonic::Request::new(request)).await else {
                    return;
                };
                let mut stream = stream.into_inner();
                while let Ok(Some(item)) = tokio::time::timeout(STREAM_QUIET, stream.next()).await {
                    let Ok(response) = item else { break };
                    for batch in Batches::new(response.records.clone()) {
                        let (header, _) = batch.expect("a fetch returns only valid batches");
                        assert!(header.next_offset() <= response.next_offset);
                    }
                    assert!(
                        starts.iter().any(|&s| response.next_offset >= s),
                        "a fetch never moves back"
                    );
                }
            }
            1 => {
                if let Ok(r) = ListOffsetsRequest::decode(message) {
                    let _ = s.data.list_offsets(tonic::Request::new(r)).await;
                }
            }
            2 => {
                if let Ok(r) = InitProducerRequest::decode(message) {
                    let _ = s.data.init_producer(tonic::Request::new(r)).await;
                }
            }
            3 => {
                if let Ok(r) = HeartbeatRequest::decode(message) {
                    let _ = s.data.heartbeat(tonic::Request::new(r)).await;
                }
            }
            4 => {
                if let Ok(r) = LeaveGroupRequest::decode(message) {
                    let _ = s.data.leave_group(tonic::Request::new(r)).await;
                }
            }
            5 => {
                if let Ok(r) = CommitOffsetsRequest::decode(message) {
                    let _ = s.data.commit_offsets(tonic::Request::new(r)).await;
                }
            }
            _ => {
                if let Ok(r) = FetchOffsetsRequest::decode(message) {
                    let _ = s.data.fetch_offsets(tonic::Request::new(r)).await;
                }
            }
        }
    });
}

/// Largest partition count the target lets through to the broker: larger
/// valid counts only cost time (a directory per partition); counts past the
/// broker's limit are still sent, to be refused.
const FUZZ_MAX_PARTITIONS: u32 = 16;

/// The control plane's requests that take input: topic create, delete and
/// describe, metadata, group describe. A topic the fuzzer manages to create is
/// described back consistently and deleted again.
pub fn control_request(data: &[u8]) {
    let Some((&which, message)) = data.split_first() else {
        return;
    };
    let s = broker();
    s.rt.block_on(async {
        match which % 5 {
            0 => {
                let Ok(mut request) = CreateTopicRequest::decode(message) else {
                    return;
                };
                if let Some(config) = request.config.as_mut()
                    && config.partitions > FUZZ_MAX_PARTITIONS
                    && config.partitions <= strata_broker::cluster::topics::MAX_PARTITIONS
                {
                    config.partitions = FUZZ_MAX_PARTITIONS;
                }
                let name = request.name.clone();
                if let Ok(created) = s.control.create_topic(tonic::Request::new(request)).await {
                    let created = created.into_inner();
                    assert_eq!(created.name, name);
                    let described = s
                        .control
                        .describe_topic(tonic::Request::new(DescribeTopicRequest {
                            name: name.clone(),
                        }))
                        .await
                        .expect("a created topic can be described");
                    assert_eq!(
                        described.into_inner().partitions.len(),
                        created.partitions.len()
                    );
                    s.control
                        .delete_topic(tonic::Request::new(DeleteTopicRequest { name }))
                        .await
                        .expect("a created topic can be deleted");
                }
            }
            1 => {
                if let Ok(r) = DeleteTopicRequest::decode(message)
                    && r.name != "fuzz"
                {
                    let _ = s.control.delete_topic(tonic::Request::new(r)).await;
                }
            }
            2 => {
                if let Ok(r) = DescribeTopicRequest::decode(message) {
                    let _ = s.control.describe_topic(tonic::Request::new(r)).await;
                }
            }
            3 => {
                if let Ok(r) = MetadataRequest::decode(message) {
                    let _ = s.control.metadata(tonic::Request::new(r)).await;
                }
            }
            _ => {
                if let Ok(r) = DescribeGroupRequest::decode(message) {
                    let _ = s.control.describe_group(tonic::Request::new(r)).await;
                }
            }
        }
    });
}
