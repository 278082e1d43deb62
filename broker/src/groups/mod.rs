//! Consumer groups: the coordinator (membership, assignment, fencing) and the
//! durable store of committed offsets.

pub mod assignment;
pub mod coordinator;
mod health;
pub mod lag;
pub mod monitor;
pub mod offsets;
pub mod status;
