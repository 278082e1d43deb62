//! The one place where broker errors become gRPC statuses.
//!
//! Each status carries `strata-error: <kind>` in its metadata, a stable name a
//! client maps back to a typed error without parsing messages; overload adds
//! `retry-after-ms`, NOT_LEADER adds `strata-leader`, an out-of-order produce
//! adds `expected-sequence`.

use tonic::{Code, Status};

use crate::error::{Error, GroupErrorKind};
use crate::log::LogError;

pub const ERROR_KIND_KEY: &str = "strata-error";
pub const RETRY_AFTER_KEY: &str = "retry-after-ms";
pub const LEADER_KEY: &str = "strata-leader";
pub const EXPECTED_SEQUENCE_KEY: &str = "expected-sequence";

/// The gRPC code and stable kind of an error.
pub fn classify(error: &Error) -> (Code, &'static str) {
    match error {
        Error::TopicNotFound(_) => (Code::NotFound, "topic-not-found"),
        Error::PartitionNotFound { .. } => (Code::NotFound, "partition-not-found"),
        Error::TopicExists(_) => (Code::AlreadyExists, "topic-exists"),
        Error::InvalidArgument(_) => (Code::InvalidArgument, "invalid-argument"),
        Error::InvalidBatch(_) => (Code::InvalidArgument, "invalid-batch"),
        Error::OffsetOutOfRange { .. } => (Code::OutOfRange, "offset-out-of-range"),
        Error::OutOfOrderSequence { .. } => (Code::Aborted, "out-of-order-sequence"),
        Error::ProducerFenced { .. } => (Code::FailedPrecondition, "producer-fenced"),
        Error::Overloaded { .. } => (Code::ResourceExhausted, "overloaded"),
        Error::NotLeader { .. } => (Code::Unavailable, "not-leader"),
        Error::NoQuorum(_) => (Code::Unavailable, "no-quorum"),
        Error::ReplicaStopped { .. } => (Code::Unavailable, "replica-stopped"),
        Error::NotCoordinator { .. } => (Code::Unavailable, "not-coordinator"),
        Error::Storage(e) => match e {
            LogError::OffsetOutOfRange { .. } => (Code::OutOfRange, "offset-out-of-range"),
            LogError::Corrupt { .. } => (Code::DataLoss, "corrupt"),
            LogError::Poisoned { .. } => (Code::Unavailable, "storage-failed"),
            LogError::InvalidBatch(_) => (Code::InvalidArgument, "invalid-batch"),
            LogError::NotBatchBoundary { .. } => (Code::InvalidArgument, "not-batch-boundary"),
            LogError::Closed => (Code::Unavailable, "shutting-down"),
            e if e.is_disk_full() => (Code::ResourceExhausted, "disk-full"),
            _ => (Code::Internal, "storage-error"),
        },
        Error::Group { reason, .. } => match reason {
            GroupErrorKind::UnknownMember => (Code::FailedPrecondition, "unknown-member"),
            GroupErrorKind::IllegalGeneration => (Code::Aborted, "illegal-generation"),
            GroupErrorKind::RebalanceInProgress => (Code::Aborted, "rebalance-in-progress"),
            GroupErrorKind::NotFound => (Code::NotFound, "group-not-found"),
        },
        Error::ShuttingDown => (Code::Unavailable, "shutting-down"),
        Error::Recovering => (Code::Unavailable, "recovering"),
        Error::DataDirInUse { .. } => (Code::Unavailable, "data-dir-in-use"),
        Error::DeadlineExceeded => (Code::DeadlineExceeded, "deadline-exceeded"),
        Error::Internal(_) => (Code::Internal, "internal"),
        Error::Unauthenticated(_) => (Code::Unauthenticated, "unauthenticated"),
        Error::PermissionDenied { .. } => (Code::PermissionDenied, "permission-denied"),
        Error::StreamIdle { .. } => (Code::Unavailable, "stream-idle"),
    }
}

/// Converts a broker error into the status a client sees.
pub fn to_status(error: &Error) -> Status {
    let (code, kind) = classify(error);
    let mut status = Status::new(code, error.to_string());
    let md = status.metadata_mut();
    md.insert(ERROR_KIND_KEY, kind.parse().expect("kinds are ASCII"));
    match error {
        Error::Overloaded { retry_after, .. } => {
            md.insert(
                RETRY_AFTER_KEY,
                retry_after.as_millis().to_string().parse().expect("digits"),
            );
        }
        Error::NotLeader {
            leader: Some(leader),
            ..
        }
        | Error::NotCoordinator {
            leader: Some(leader),
        } => {
            if let Ok(v) = leader.parse() {
                md.insert(LEADER_KEY, v);
            }
        }
        Error::OutOfOrderSequence { expected, .. } => {
            md.insert(
                EXPECTED_SEQUENCE_KEY,
                expected.to_string().parse().expect("digits"),
            );
        }
        _ => {}
    }
    status
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overload_carries_a_retry_hint_and_a_kind() {
        let s = to_status(&Error::Overloaded {
            what: "produce",
            retry_after: Duration::from_millis(50),
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_KEY).unwrap(), "50");
        assert_eq!(s.metadata().get(ERROR_KIND_KEY).unwrap(), "overloaded");
    }

    #[test]
    fn storage_errors_map_by_cause() {
        let corrupt = Error::Storage(LogError::Corrupt {
            segment: "s".into(),
            position: 1,
            reason: "r".into(),
        });
        assert_eq!(to_status(&corrupt).code(), Code::DataLoss);
        let full = Error::Storage(LogError::Io {
            op: "write",
            path: "p".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(to_status(&full).code(), Code::ResourceExhausted);
    }
}
