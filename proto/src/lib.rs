//! Strata's wire formats, shared by the broker and the client.
//!
//! - [`batch`]: the record-batch codec. The same bytes travel from the producer
//!   through the log to the consumer; the broker verifies and stamps, never re-encodes.
//! - [`v1`]: gRPC messages and services generated from `proto/strata.proto`.
//! - [`grpc_wire`]: gRPC message framing, for the bulk RPCs served and called
//!   below tonic without copying their batches.
//! - [`limits`]: size limits both sides enforce (DESIGN.md §7).
//! - [`target`]: where a client connects, over the network or in-process.

pub mod batch;
pub mod grpc_wire;
pub mod limits;
pub mod target;
pub mod varint;

/// Generated gRPC code for `strata.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}
