//! The small, durable part of a group's Raft state that is not record data:
//! the vote, the purge point, and the entries that carry no records (blank
//! entries of new leaders, membership changes).
//!
//! Those entries are rare (one per election or membership change), so the
//! whole file is rewritten atomically on every change (`replace_file`: temp,
//! fsync, rename, fsync dir) and is durable when a write returns. Keeping them
//! out of the segment log keeps record offsets dense: a consumer never sees a
//! hole where a leader change happened.
//!
//! File: `raft.state`, a CRC32 (little endian) of the JSON document that
//! follows ([`checked_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::checked_file;
use super::{LogId, Membership, NodeId};
use crate::log::storage::Storage;

pub const FILE_NAME: &str = "raft.state";

/// Largest state file we agree to read: it holds a handful of small entries.
const MAX_STATE_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// An entry without records, kept here instead of in the segment log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEntry {
    pub log_id: LogId,
    /// `None` for a blank entry.
    pub membership: Option<Membership>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftState {
    pub vote: Option<openraft::Vote<NodeId>>,
    pub purged: Option<LogId>,
    pub control: BTreeMap<u64, ControlEntry>,
}

/// The state file of one group directory.
pub struct StateFile {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
}

impl StateFile {
    pub fn new(storage: Arc<dyn Storage>, dir: &Path) -> Self {
        StateFile {
            storage,
            dir: dir.to_path_buf(),
        }
    }

    /// Reads the state; a missing file is the empty state of a new group.
    pub fn load(&self) -> std::io::Result<RaftState> {
        let path = self.dir.join(FILE_NAME);
        match checked_file::read(self.storage.as_ref(), &path, MAX_STATE_FILE_BYTES)? {
            None => Ok(RaftState::default()),
            Some(json) => serde_json::from_slice(&json)
                .map_err(|e| checked_file::corrupt(&path, e.to_string())),
        }
    }

    /// Replaces the state durably.
    pub fn store(&self, state: &RaftState) -> std::io::Result<()> {
        let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        checked_file::write(self.storage.as_ref(), &self.dir, FILE_NAME, &json)
    }
}
