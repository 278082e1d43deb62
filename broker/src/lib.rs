//! The Strata broker: storage, partitions, consumer groups and the gRPC services
//! of one node. Layers point one way: `server` → `partition` → `log`.

pub mod error;
pub mod log;
pub mod partition;

pub use error::{Error, Result};
