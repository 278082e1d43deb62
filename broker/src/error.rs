//! The broker's error type: what any caller of the broker (the gRPC services,
//! an embedding application) can get back, in variants it can act on. The
//! server maps each to exactly one gRPC code in `server::status`.

use std::time::Duration;

use strata_proto::batch::BatchError;

use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),

    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    PartitionNotFound {
        topic: String,
        partition: u32,
        count: u32,
    },

    #[error("topic {0:?} already exists")]
    TopicExists(String),

    /// A request field is unacceptable; the message says which and why.
    #[error("{0}")]
    InvalidArgument(String),

    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),

    #[error(
        "offset {requested} is out of range for {topic}/{partition}: it holds offsets {start}..{end}"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        requested: u64,
        start: u64,
        end: u64,
    },

    /// The producer must resend the batches before this one first.
    #[error("producer {producer_id} sent sequence {received}, expected {expected}")]
    OutOfOrderSequence {
        producer_id: u64,
        expected: u32,
        received: u32,
    },

    /// A newer instance of this producer exists; this one must stop.
    #[error("producer {producer_id} epoch {received} is fenced by epoch {current}")]
    ProducerFenced {
        producer_id: u64,
        current: u16,
        received: u16,
    },

    /// A byte budget is full; retry after the hint.
    #[error("broker overloaded ({what}); retry after {} ms", retry_after.as_millis())]
    Overloaded {
        what: &'static str,
        retry_after: Duration,
    },

    #[error("this node does not lead {topic}/{partition}{}", leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_default())]
    NotLeader {
        topic: String,
        partition: u32,
        leader: Option<String>,
    },

    /// Consumer groups are coordinated by another node (the metadata
    /// group's leader); its data address, when known.
    #[error("this node does not coordinate consumer groups{}", leader.as_ref().map(|l| format!("; the coordinator is at {l}")).unwrap_or_default())]
    NotCoordinator { leader: Option<String> },

    /// This node's replica of the partition stopped: its Raft group hit a
    /// fatal error (storage, typically a full or failing disk) and takes no
    /// writes until the node restarts. Nothing of the request was proposed,
    /// and the other replicas elect a leader, so a retry there may succeed.
    #[error(
        "this node's replica of {topic}/{partition} has stopped ({reason}); retry on the partition's new leader"
    )]
    ReplicaStopped {
        topic: String,
        partition: u32,
        reason: String,
    },

    /// The cluster cannot agree on a change now (no metadata leader, or no
    /// quorum of nodes reachable); retrying later may succeed.
    #[error("no quorum: {0}")]
    NoQuorum(String),

    /// A storage failure. Whether a write that failed this way is durable is
    /// unknown; an idempotent retry is safe.
    #[error("storage: {0}")]
    Storage(#[from] LogError),

    #[error("consumer group {group:?}: {reason}")]
    Group {
        group: String,
        reason: GroupErrorKind,
    },

    #[error("the broker is shutting down")]
    ShuttingDown,

    /// The node is still recovering its partitions after start-up; retry.
    #[error("the broker is still recovering its data; retry shortly")]
    Recovering,

    /// Another broker (process or handle) owns the data directory.
    #[error("data directory {} is in use by another broker (pid {owner})", dir.display())]
    DataDirInUse {
        dir: std::path::PathBuf,
        owner: String,
    },

    #[error("deadline exceeded")]
    DeadlineExceeded,

    /// The request carries no credentials, or ones the broker does not know.
    /// The message never repeats the credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The caller is known but may not do this.
    #[error("permission denied: {principal:?} may not {action} {resource}")]
    PermissionDenied {
        principal: String,
        action: &'static str,
        resource: String,
    },

    /// A fetch stream whose consumer took nothing for this long was closed;
    /// the consumer reopens it when it reads again.
    #[error("fetch stream closed: the consumer read nothing for {} ms", idle.as_millis())]
    StreamIdle { idle: Duration },

    #[error("internal error: {0}")]
    Internal(String),
}

/// Consumer group failures a member reacts to by rejoining or stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupErrorKind {
    #[error("unknown member; rejoin the group")]
    UnknownMember,
    #[error("stale generation; rejoin the group")]
    IllegalGeneration,
    #[error("the group is rebalancing; rejoin the group")]
    RebalanceInProgress,
    #[error("the group does not exist")]
    NotFound,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
