//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz_targets/)
//! and the stable smoke run in the test suite (tests/fuzz_smoke.rs). Each
//! takes arbitrary bytes and must neither panic nor hang; where the input is
//! accepted, what comes back must be consistent.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;
use strata_broker::log::storage::FileStorage;
use strata_broker::log::{Log, LogConfig};
use strata_broker::server::data_service::DataService;
use strata_broker::{Broker, BrokerConfig};
use strata_proto::batch::{Batches, Records, verify};
use strata_proto::v1::ProduceRequest;
use strata_proto::v1::data_server::Data;

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

/// A broker shared by every run of [`produce_request`], on its own runtime.
fn broker() -> &'static (tokio::runtime::Runtime, DataService) {
    static BROKER: OnceLock<(tokio::runtime::Runtime, DataService)> = OnceLock::new();
    BROKER.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let service = rt.block_on(async {
            let broker = Broker::open(BrokerConfig::with_data_dir(dir))
                .await
                .expect("broker");
            let settings = strata_broker::cluster::topics::TopicSettings {
                partitions: 2,
                ..Default::default()
            };
            broker.create_topic("fuzz", settings).await.expect("topic");
            DataService::new(broker)
        });
        (rt, service)
    })
}

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
    let (rt, service) = broker();
    let answer = rt.block_on(service.produce(tonic::Request::new(request.clone())));
    if let Ok(response) = answer {
        // Accepted: the batch was a valid one for an existing partition.
        assert!(verify(&request.batch).is_ok());
        assert_eq!(request.topic, "fuzz");
        let _ = response.into_inner().base_offset;
    }
}
