//! Consumer groups: the coordinator (membership, assignment, fencing) and the
//! durable store of committed offsets.

pub mod assignment;
pub mod coordinator;
pub mod lag;
pub mod offsets;
