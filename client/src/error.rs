//! The client's error type. Every failure a caller can see is one of these
//! variants, and [`Error::is_retriable`] says whether trying again may help.
//! Broker errors are recognised by the `strata-error` kind the broker attaches
//! to every status, not by parsing messages.

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Metadata key of the stable error kind the broker attaches to every status.
pub(crate) const ERROR_KIND_KEY: &str = "strata-error";

/// Metadata key of the leader's data address on a NOT_LEADER status.
pub(crate) const LEADER_KEY: &str = "strata-leader";

/// Consumer-group failures; the consumer handles them by rejoining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    UnknownMember,
    IllegalGeneration,
    RebalanceInProgress,
    NotFound,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    TopicNotFound(String),

    #[error("{0}")]
    PartitionNotFound(String),

    #[error("{0}")]
    TopicExists(String),

    #[error("{0}")]
    InvalidArgument(String),

    /// A record that cannot be sent as is (too large, malformed).
    #[error("{0}")]
    InvalidRecord(String),

    #[error("{0}")]
    OffsetOutOfRange(String),

    /// The broker's byte budget is full; retry after the hint.
    #[error("{message}")]
    Overloaded {
        retry_after: Duration,
        message: String,
    },

    #[error("{message}")]
    NotLeader {
        leader: Option<String>,
        message: String,
    },

    /// The producer's buffer had no room for a record within `max_block`.
    #[error("producer buffer full: no room for a {bytes}-byte record within {} ms", waited.as_millis())]
    BufferFull { bytes: usize, waited: Duration },

    /// A record was not acknowledged within the delivery timeout. If
    /// `maybe_written`, a send reached the broker and its outcome is unknown.
    #[error("delivery timed out after {} ms (maybe written: {maybe_written}): {last_error}", elapsed.as_millis())]
    Timeout {
        elapsed: Duration,
        last_error: String,
        maybe_written: bool,
    },

    #[error("{0}")]
    ProducerFenced(String),

    #[error("{0}")]
    OutOfOrderSequence(String),

    #[error("{message}")]
    Group { kind: GroupError, message: String },

    /// The broker found stored data damaged (DATA_LOSS).
    #[error("{0}")]
    Corrupt(String),

    /// No bootstrap address answered. With a list, `addr` is the whole list
    /// and `message` names each address with its own failure.
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },

    #[error("{0}")]
    Unavailable(String),

    #[error("{0}")]
    DeadlineExceeded(String),

    /// The broker does not know who is calling: no token, or a wrong one.
    /// Retrying with the same credentials cannot help.
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller may not do this (its grants in the broker's auth file).
    /// Retrying cannot help.
    #[error("{0}")]
    PermissionDenied(String),

    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,

    /// Any other broker status.
    #[error("{message} ({code:?})")]
    Broker {
        code: Code,
        kind: String,
        message: String,
    },
}

impl Error {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Overloaded { .. }
            | Error::NotLeader { .. }
            | Error::Connect { .. }
            | Error::Unavailable(_)
            | Error::DeadlineExceeded(_)
            | Error::OutOfOrderSequence(_) => true,
            Error::Broker { code, kind, .. } => {
                matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
                    // Without the broker's kind, INTERNAL comes from HTTP/2 (a
                    // stream refused by a node going away), not from the broker.
                    || (*code == Code::Internal && kind.is_empty())
            }
            _ => false,
        }
    }

    /// The broker's retry hint, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub(crate) fn from_status(status: &Status) -> Error {
        let md = status.metadata();
        let kind = md
            .get(ERROR_KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let message = status.message().to_owned();
        let group = |kind| Error::Group {
            kind,
            message: message.clone(),
        };
        match (kind, status.code()) {
            ("topic-not-found", _) => Error::TopicNotFound(message),
            ("partition-not-found", _) => Error::PartitionNotFound(message),
            ("topic-exists", _) => Error::TopicExists(message),
            ("invalid-argument", _) => Error::InvalidArgument(message),
            ("invalid-batch", _) => Error::InvalidRecord(message),
            ("offset-out-of-range", _) => Error::OffsetOutOfRange(message),
            ("overloaded", _) => {
                let retry_after = md
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::from_millis(100), Duration::from_millis);
                Error::Overloaded {
                    retry_after,
                    message,
                }
            }
            // Group requests sent to a node that does not coordinate groups.
            ("not-leader" | "not-coordinator", _) => Error::NotLeader {
                leader: md
                    .get(LEADER_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                message,
            },
            ("producer-fenced", _) => Error::ProducerFenced(message),
            ("out-of-order-sequence", _) => Error::OutOfOrderSequence(message),
            ("unknown-member", _) => group(GroupError::UnknownMember),
            ("illegal-generation", _) => group(GroupError::IllegalGeneration),
            ("rebalance-in-progress", _) => group(GroupError::RebalanceInProgress),
            ("group-not-found", _) => group(GroupError::NotFound),
            ("corrupt", _) | (_, Code::DataLoss) => Error::Corrupt(message),
            (_, Code::Unauthenticated) => Error::Unauthenticated(message),
            (_, Code::PermissionDenied) => Error::PermissionDenied(message),
            (_, Code::Unavailable) => Error::Unavailable(message),
            (_, Code::DeadlineExceeded) => Error::DeadlineExceeded(message),
            (_, Code::NotFound) => Error::TopicNotFound(message),
            (_, Code::InvalidArgument) => Error::InvalidArgument(message),
            (_, Code::OutOfRange) => Error::OffsetOutOfRange(message),
            (kind, code) => Error::Broker {
                code,
                kind: kind.to_owned(),
                message,
            },
        }
    }

    /// The error a fetch stream reports for one partition, typed like a
    /// status of the same code and kind.
    pub(crate) fn from_partition_error(code: i32, kind: &str, message: String) -> Error {
        let mut metadata = MetadataMap::new();
        if let (false, Ok(kind)) = (kind.is_empty(), kind.parse()) {
            metadata.insert(ERROR_KIND_KEY, kind);
        }
        Error::from_status(&Status::with_metadata(Code::from(code), message, metadata))
    }
}

/// Whether `status` says the node that answered cannot serve any request now,
/// so the same request may be sent to another node: the connection failed (a
/// status without the broker's kind, made by the transport: connect refused,
/// connection reset, HTTP/2 GOAWAY), or the broker refused with UNAVAILABLE
/// (shutting down, recovering, no quorum, not the leader).
pub(crate) fn node_cannot_serve(status: &Status) -> bool {
    match status.metadata().get(ERROR_KIND_KEY) {
        Some(_) => status.code() == Code::Unavailable,
        None => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        ),
    }
}

/// An error with its sources, for messages a person can act on.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::from_status(&status)
    }
}

impl From<strata_proto::batch::BatchError> for Error {
    fn from(e: strata_proto::batch::BatchError) -> Self {
        Error::InvalidRecord(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_status(code: Code, kind: &str) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(ERROR_KIND_KEY, kind.parse().unwrap());
        Status::with_metadata(code, "from the broker", metadata)
    }

    #[test]
    fn a_node_that_cannot_serve_is_told_apart_from_a_refused_request() {
        // Made by the transport: no broker kind.
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::Internal,
        ] {
            assert!(
                node_cannot_serve(&Status::new(code, "transport")),
                "{code:?}"
            );
        }
        // The broker refused before acting: another node may serve.
        for kind in [
            "shutting-down",
            "recovering",
            "no-quorum",
            "not-leader",
            "replica-stopped",
        ] {
            assert!(node_cannot_serve(&broker_status(Code::Unavailable, kind)));
        }
        // The broker answered: sending it elsewhere would not change that.
        assert!(!node_cannot_serve(&broker_status(
            Code::AlreadyExists,
            "topic-exists"
        )));
        assert!(!node_cannot_serve(&broker_status(
            Code::Internal,
            "storage-error"
        )));
        assert!(!node_cannot_serve(&Status::new(
            Code::InvalidArgument,
            "bad"
        )));
    }

    #[test]
    fn internal_is_retriable_only_when_the_transport_made_it() {
        assert!(
            Error::from_status(&Status::new(Code::Internal, "h2 protocol error")).is_retriable()
        );
        assert!(
            !Error::from_status(&broker_status(Code::Internal, "storage-error")).is_retriable()
        );
    }

    #[test]
    fn a_partition_error_in_a_fetch_stream_is_typed_by_its_kind() {
        let e = Error::from_partition_error(Code::Unavailable as i32, "not-leader", "moved".into());
        assert!(matches!(e, Error::NotLeader { leader: None, .. }), "{e:?}");
        let e = Error::from_partition_error(Code::Unavailable as i32, "", "gone".into());
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
}
