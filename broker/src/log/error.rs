//! Errors of the log layer. Each variant is something a caller can act on; the
//! server maps them to gRPC codes in one place (`server::status`).

use std::io;
use std::path::PathBuf;

use strata_proto::batch::BatchError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    /// The requested offset is outside `[start, end]`.
    #[error("offset {requested} is out of range: the log holds offsets {start}..{end}")]
    OffsetOutOfRange {
        requested: u64,
        start: u64,
        end: u64,
    },

    /// Stored data failed validation. Never skipped: reads past it fail.
    #[error("corrupt data in {segment} at byte {position}: {reason}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        reason: String,
    },

    /// An earlier fsync failed, so what is on disk is unknown; the log refuses
    /// writes until it is reopened (and recovery re-checks the tail).
    #[error("log is read-only after a failed fsync ({cause}); reopen it to recover")]
    Poisoned { cause: String },

    /// A cut was asked for inside a batch: the log only removes whole batches.
    #[error(
        "offset {offset} is not a batch boundary: it lies inside the batch of offsets {batch_base}..{batch_next}"
    )]
    NotBatchBoundary {
        offset: u64,
        batch_base: u64,
        batch_next: u64,
    },

    /// A batch handed to the log is not well-formed.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),

    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }

    /// True when the disk ran out of space (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
