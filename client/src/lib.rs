//! `strata-client`: the Rust client for Strata.
//!
//! - [`Producer`]: batching, idempotent; every record resolves to its offset or
//!   an error, never to silence. Retries use exponential backoff with full
//!   jitter and honour the broker's retry-after hints.
//! - [`Consumer`]: a `futures::Stream` of records, standalone or in a consumer
//!   group with durable committed offsets.
//! - [`Admin`]: topics, cluster status, group lag.
//!
//! Every constructor takes a [`Target`]: a broker's control address
//! (`"127.0.0.1:7401"`), a bootstrap list of control addresses separated by
//! commas (`"h1:7401,h2:7401,h3:7401"`, like Kafka's `bootstrap.servers`), or
//! an in-process broker from `strata-broker`. [`Target::secure`] adds TLS (a
//! CA to trust, optionally a client certificate) and a bearer token; a broker
//! refusing them answers with [`Error::Unauthenticated`] or
//! [`Error::PermissionDenied`], which are never retried.
//!
//! A client connects to the first address of the list that answers, learns
//! every node's control address from the cluster's metadata, and moves its
//! control calls to another node when the one in use stops answering. Produce
//! and fetch requests follow partition leaders as they move: a NOT_LEADER
//! answer naming the new leader sends the next request straight there; an
//! unreachable leader makes the next request refresh metadata first.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let broker = strata_broker::Broker::open(strata_broker::BrokerConfig::with_data_dir(dir.path())).await?;
//! use strata_client::{Admin, NewTopic, Producer, ProducerRecord};
//! // `&broker` is a broker in this process; pass "127.0.0.1:7401" to reach
//! // one over the network instead.
//! let admin = Admin::connect(&broker).await?;
//! admin.create_topic("events", NewTopic::new(3)).await?;
//! let producer = Producer::builder(&broker).build().await?;
//! let meta = producer.send(ProducerRecord::new("events", "hello")).await?;
//! assert_eq!(meta.offset, Some(0));
//! # broker.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod admin;
mod channel;
mod connection;
pub mod consumer;
mod control_plane;
pub mod error;
mod metadata;
pub mod partitioner;
pub mod producer;
pub mod record;
pub mod retry;
mod wire_call;

pub use admin::{Admin, NewTopic, OffsetQuery};
pub use consumer::{Consumer, ConsumerBuilder, OffsetReset, StartFrom};
pub use error::{Error, GroupError, Result};
pub use producer::{Acks, Delivery, Producer, ProducerBuilder, ProducerMetrics};
pub use record::{ConsumerRecord, ProducerRecord, RecordHeader, RecordMetadata, TopicPartition};
pub use strata_proto::target::{Credentials, LocalConnector, Target};
