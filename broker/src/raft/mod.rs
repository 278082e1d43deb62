//! Raft glue (openraft): the segment log as the Raft log, the small state
//! machines, and the tuning every group shares (DESIGN.md §6,
//! docs/replication.md).
//!
//! Every group — one per partition, plus the metadata group — uses the same
//! [`TypeConfig`]: a normal entry is one encoded record batch ([`Payload`]),
//! stored once in the group's segment log with its Raft term and index in the
//! batch header. Blank and membership entries carry no records; they live in
//! the group's small state file ([`state_file`]) so that record offsets stay
//! dense for consumers.

// openraft's traits fix the error type (`StorageError`, large); the helpers
// that feed them return it as is rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

pub mod checked_file;
pub mod groups;
pub mod log_store;
pub mod network;
pub mod state_file;
pub mod state_machine;
pub mod tail;
pub mod wire;

use std::fmt;
use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use state_machine::{Machine, StateMachine};

/// A node's id in every group (the `N` of `--node-id N`).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft types of every Strata group.
    pub TypeConfig:
        D = Payload,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;

/// A normal entry's payload: one encoded record batch, exactly as it is
/// stored. Serialized as raw bytes (never as a list of numbers).
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(pub Bytes);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Payload;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(Bytes::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Payload, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Payload(Bytes::from(out)))
            }
        }
        d.deserialize_bytes(Visit)
    }
}

/// What applying an entry answered: where its records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Applied {
    /// Offset of the batch's first record (for a metadata command: its index).
    pub base_offset: u64,
    /// The batch repeated one the state machine had already applied (a retry
    /// that slipped past the leader's check); no new offsets were assigned to
    /// it by the state machine, though its bytes are in the log.
    pub duplicate: bool,
}

/// Raft timing shared by every group. Elections are a few hundred
/// milliseconds: fast failover on a LAN without electing on a GC-free hiccup.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest election timeout of any node.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(500);
/// Each node draws its election timeout from its own window of this width…
pub const ELECTION_WINDOW: Duration = Duration::from_millis(100);
/// …with windows this far apart, by the member's rank in the group modulo
/// [`ELECTION_WINDOWS`].
///
/// openraft 0.9 draws a node's election timeout once, at start-up, not per
/// election. Two nodes that drew nearly the same one, with vote requests
/// slower than the gap, start every election together, each votes for
/// itself, and no leader is ever elected (seen in the three-replica test: two
/// candidates still splitting the vote after 13 terms). Disjoint windows keep
/// any two nodes of a group at least `ELECTION_WINDOW_STRIDE − ELECTION_WINDOW`
/// apart.
pub const ELECTION_WINDOW_STRIDE: Duration = Duration::from_millis(150);
pub const ELECTION_WINDOWS: u64 = 5;
/// Entries per AppendEntries request; bytes are bounded separately by
/// [`log_store::MAX_REPLICATION_BYTES`].
pub const MAX_PAYLOAD_ENTRIES: u64 = 256;
/// Build a snapshot of the (small) state machine every this many entries, so
/// a restart re-applies at most this many entries' headers.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1024;

/// The openraft config of one group's member whose `rank` is its position
/// in the group's replica list (the preferred leader is rank 0). The lowest
/// rank has the shortest election timeout, so the preferred leader usually
/// wins the first election and leadership spreads as replica lists do.
pub fn config(cluster_name: &str, rank: u64) -> openraft::Config {
    let min = ELECTION_TIMEOUT_MIN + ELECTION_WINDOW_STRIDE * (rank % ELECTION_WINDOWS) as u32;
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: min.as_millis() as u64,
        election_timeout_max: (min + ELECTION_WINDOW).as_millis() as u64,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        // Never purge: the log is the data. A follower far behind catches up
        // from segments through AppendEntries, not from a snapshot that would
        // carry none of the records; retention alone removes old segments.
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Default::default()
    }
}

/// Maps any displayable error into openraft's storage error for `subject`.
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl fmt::Display,
) -> StorageError {
    let io = std::io::Error::other(e.to_string());
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&io)).into()
}

/// Runs blocking storage work off the async workers. A task that panicked is
/// a storage error of the whole store.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e))?
}
