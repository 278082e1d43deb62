//! A few seconds of each fuzz target (tests/fuzz/targets.rs) on stable, in every
//! test run: valid inputs mutated at random (flipped bytes, cuts, splices)
//! and plain random bytes, from a seed printed on failure. `cargo +nightly
//! fuzz run --fuzz-dir tests/fuzz <target>` runs the same bodies under
//! libFuzzer for as long as you like (docs/testing.md).

#[path = "fuzz/targets.rs"]
mod targets;

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_proto::batch::{BatchBuilder, ProducerStamp, Record, verify_and_stamp};
use strata_proto::v1::{
    CommitOffsetsRequest, CreateTopicRequest, DescribeTopicRequest, FetchOffsetsRequest,
    FetchPosition, FetchRequest, HeartbeatRequest, ListOffsetsRequest, PartitionOffset,
    ProduceRequest, TopicConfig, TopicPartition,
};

/// Inputs per target: enough to reach past the length and CRC checks many
/// times, few enough for a few seconds in a debug build. `STRATA_FUZZ_CASES`
/// runs more.
const CASES: usize = 300;

fn cases() -> usize {
    std::env::var("STRATA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

fn valid_batch(rng: &mut StdRng, base_offset: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(ProducerStamp::default());
    for i in 0..rng.random_range(1..8) {
        let len = rng.random_range(0..64);
        let value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        b.push(&Record::new(1_700_000_000_000 + i, value)).unwrap();
    }
    let mut bytes = b.finish().to_vec();
    verify_and_stamp(&mut bytes, base_offset, 0, 0).unwrap();
    bytes
}

/// A copy of `input` with a few random flips, a cut or a splice of noise.
fn mutate(rng: &mut StdRng, mut input: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => {}
        1 => {
            for _ in 0..rng.random_range(1..4) {
                if !input.is_empty() {
                    let at = rng.random_range(0..input.len());
                    input[at] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        2 => {
            let keep = rng.random_range(0..=input.len());
            input.truncate(keep);
        }
        _ => {
            let at = rng.random_range(0..=input.len());
            let noise: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
            input.splice(at..at, noise);
        }
    }
    input
}

fn run(name: &str, mut make: impl FnMut(&mut StdRng) -> Vec<u8>, target: fn(&[u8])) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..cases() {
        let input = if case % 5 == 0 {
            (0..rng.random_range(0..256))
                .map(|_| rng.random())
                .collect()
        } else {
            let valid = make(&mut rng);
            mutate(&mut rng, valid)
        };
        let outcome = std::panic::catch_unwind(|| target(&input));
        assert!(
            outcome.is_ok(),
            "{name} panicked on case {case} (seed {seed}); input {} bytes: {:02x?}",
            input.len(),
            &input[..input.len().min(256)]
        );
    }
}

#[test]
fn batch_decoder_survives_mutated_batches() {
    run(
        "batch_decode",
        |rng| valid_batch(rng, 0),
        targets::batch_decode,
    );
}

#[test]
fn segment_recovery_survives_mutated_segments() {
    run(
        "segment_recovery",
        |rng| {
            let mut offset = 0;
            let mut log = Vec::new();
            for _ in 0..rng.random_range(1..5) {
                let b = valid_batch(rng, offset);
                offset += strata_proto::batch::verify(&b).unwrap().record_count as u64;
                log.extend_from_slice(&b);
            }
            // Index, time index and checkpoint get noise of their own.
            let tail: Vec<u8> = (0..log.len()).map(|_| rng.random()).collect();
            log.extend_from_slice(&tail);
            log
        },
        targets::segment_recovery,
    );
}

#[test]
fn produce_handler_answers_every_request() {
    run(
        "produce_request",
        |rng| {
            ProduceRequest {
                topic: ["fuzz", "nope", "", "a/b"][rng.random_range(0..4)].into(),
                partition: rng.random_range(0..3),
                batch: Bytes::from(valid_batch(rng, 0)),
                acks: rng.random_range(0..3),
            }
            .encode_to_vec()
        },
        targets::produce_request,
    );
}

/// Topics the request inputs name: the real one, unknown ones, invalid ones.
const TOPICS: [&str; 5] = ["fuzz", "nope", "", "a/b", "fuzz-new"];

fn topic(rng: &mut StdRng) -> String {
    TOPICS[rng.random_range(0..TOPICS.len())].into()
}

/// Names the control target asks to create: never "nope", which the targets
/// share one broker to test as unknown (its creation once let a produce to
/// it through, failing the produce target's check).
const CREATED_TOPICS: [&str; 4] = ["fuzz", "fuzz-new", "", "a/b"];

/// Offsets near the log (it holds 3 records per partition) and far off.
fn offset(rng: &mut StdRng) -> u64 {
    [0, 1, 3, 4, u64::MAX][rng.random_range(0..5)]
}

#[test]
fn data_handlers_answer_every_request() {
    run(
        "data_request",
        |rng| {
            let which: u8 = rng.random_range(0..7);
            let message = match which {
                0 => FetchRequest {
                    positions: (0..rng.random_range(0..3))
                        .map(|_| FetchPosition {
                            topic: topic(rng),
                            partition: rng.random_range(0..3),
                            offset: offset(rng),
                        })
                        .collect(),
                    max_bytes: [0, 1, 100, u32::MAX][rng.random_range(0..4)],
                    max_wait_ms: rng.random_range(0..30),
                }
                .encode_to_vec(),
                1 => ListOffsetsRequest {
                    partitions: vec![TopicPartition {
                        topic: topic(rng),
                        partition: rng.random_range(0..3),
                    }],
                    ..Default::default()
                }
                .encode_to_vec(),
                3 => HeartbeatRequest {
                    group: ["g", "", "x".repeat(300).as_str()][rng.random_range(0..3)].into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                5 => CommitOffsetsRequest {
                    group: ["g", ""][rng.random_range(0..2)].into(),
                    member_id: String::new(),
                    generation: rng.random_range(0..2),
                    offsets: vec![PartitionOffset {
                        topic: topic(rng),
                        partition: rng.random_range(0..3),
                        offset: offset(rng),
                        ..Default::default()
                    }],
                }
                .encode_to_vec(),
                6 => FetchOffsetsRequest {
                    group: ["g", ""][rng.random_range(0..2)].into(),
                    partitions: vec![TopicPartition {
                        topic: topic(rng),
                        partition: rng.random_range(0..3),
                    }],
                }
                .encode_to_vec(),
                _ => Vec::new(),
            };
            let mut input = vec![which];
            input.extend(message);
            input
        },
        targets::data_request,
    );
}

#[test]
fn control_handlers_answer_every_request() {
    run(
        "control_request",
        |rng| {
            let which: u8 = rng.random_range(0..5);
            let message = match which {
                0 => CreateTopicRequest {
                    name: CREATED_TOPICS[rng.random_range(0..CREATED_TOPICS.len())].into(),
                    config: Some(TopicConfig {
                        partitions: [0, 1, 3, 20_000][rng.random_range(0..4)],
                        replication_factor: rng.random_range(0..3),
                        segment_bytes: [0, 1, 1 << 20][rng.random_range(0..3)],
                        ..Default::default()
                    }),
                }
                .encode_to_vec(),
                2 => DescribeTopicRequest { name: topic(rng) }.encode_to_vec(),
                _ => Vec::new(),
            };
            let mut input = vec![which];
            input.extend(message);
            input
        },
        targets::control_request,
    );
}
