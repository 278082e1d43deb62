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
//! (`"127.0.0.1:7401"`), or an in-process broker from `strata-broker`.
//!
//! ```no_run
//! # async fn demo() -> strata_client::Result<()> {
//! use strata_client::{Admin, NewTopic, Producer, ProducerRecord};
//! let admin = Admin::connect("127.0.0.1:7401").await?;
//! admin.create_topic("events", NewTopic::new(3)).await?;
//! let producer = Producer::builder("127.0.0.1:7401").build().await?;
//! let meta = producer.send(ProducerRecord::new("events", "hello")).await?;
//! assert!(meta.offset.is_some());
//! # Ok(()) }
//! ```

pub mod admin;
mod connection;
pub mod consumer;
pub mod error;
pub mod partitioner;
pub mod producer;
pub mod record;
pub mod retry;

pub use admin::{Admin, NewTopic, OffsetQuery};
pub use consumer::{Consumer, ConsumerBuilder, OffsetReset, StartFrom};
pub use error::{Error, GroupError, Result};
pub use producer::{Acks, Delivery, Producer, ProducerBuilder};
pub use record::{ConsumerRecord, ProducerRecord, RecordHeader, RecordMetadata, TopicPartition};
pub use strata_proto::target::{LocalConnector, Target};
