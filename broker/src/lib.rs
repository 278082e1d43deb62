//! The Strata broker: storage, partitions, consumer groups and the gRPC services
//! of one node. Layers point one way: `server` → `broker` → `partition` → `log`.
//!
//! Embedding: [`Broker::open`] a data directory, then either use it through the
//! client crate in-process or [`Broker::serve`] it on the network.

pub mod broker;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod error;
pub mod groups;
pub mod lock;
pub mod log;
pub mod metrics;
pub mod partition;
pub mod raft;
pub mod security;
pub mod server;

pub use broker::{Broker, Topic};
pub use config::{BrokerConfig, ListenAddrs};
pub use error::{Error, Result};
