//! The recovery checkpoint and the clean-shutdown marker.
//!
//! `recovery.checkpoint` records a point in the log below which everything —
//! record data and index entries — is known to be durable, plus an opaque blob
//! of state the layer above derived from exactly that prefix (the producer
//! dedupe table). Recovery after a crash scans only what lies past it.
//!
//! It is replaced atomically: write a temp file, fsync, rename, fsync the
//! directory. A checkpoint that fails its CRC is ignored (recovery then scans
//! more, never trusts less).
//!
//! Layout (little endian), docs/storage-format.md:
//!
//! ```text
//!  0 magic               8 bytes "STRATACP"
//!  8 version             u32 (1)
//! 12 segment_base        u64  segment holding the checkpoint
//! 20 position            u64  bytes of that segment covered
//! 28 next_offset         u64  offset after the last covered batch
//! 36 max_timestamp       i64  largest timestamp in that segment's covered bytes
//! 44 segment_created_ms  i64  wall-clock creation time of that segment
//! 52 index_entries       u32  offset-index entries covered
//! 56 time_index_entries  u32  time-index entries covered
//! 60 state_len           u32
//! 64 state               state_len bytes
//!  . crc32               u32  over everything before it
//! ```

use std::path::{Path, PathBuf};

use super::error::{LogError, Result};
use super::storage::{OpenMode, Storage, read_exact_at, replace_file};

pub(crate) const CHECKPOINT_FILE: &str = "recovery.checkpoint";
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

const MAGIC: &[u8; 8] = b"STRATACP";
const VERSION: u32 = 1;
const FIXED_BYTES: usize = 64;

/// Largest state blob accepted when reading, so a damaged length cannot make
/// recovery allocate without bound.
const MAX_STATE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub segment_created_ms: i64,
    pub index_entries: u32,
    pub time_index_entries: u32,
    pub state: Vec<u8>,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(FIXED_BYTES + self.state.len() + 4);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&self.segment_base.to_le_bytes());
        buf.extend_from_slice(&self.position.to_le_bytes());
        buf.extend_from_slice(&self.next_offset.to_le_bytes());
        buf.extend_from_slice(&self.max_timestamp.to_le_bytes());
        buf.extend_from_slice(&self.segment_created_ms.to_le_bytes());
        buf.extend_from_slice(&self.index_entries.to_le_bytes());
        buf.extend_from_slice(&self.time_index_entries.to_le_bytes());
        buf.extend_from_slice(&(self.state.len() as u32).to_le_bytes());
        buf.extend_from_slice(&self.state);
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    fn decode(buf: &[u8]) -> std::result::Result<Self, String> {
        if buf.len() < FIXED_BYTES + 4 {
            return Err(format!("{} bytes is too short", buf.len()));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err("CRC mismatch".into());
        }
        if &body[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        if u32_at(8) != VERSION {
            return Err(format!("unknown version {}", u32_at(8)));
        }
        let state_len = u32_at(60) as usize;
        if FIXED_BYTES + state_len != body.len() {
            return Err("state length does not match the file size".into());
        }
        Ok(Checkpoint {
            segment_base: u64_at(12),
            position: u64_at(20),
            next_offset: u64_at(28),
            max_timestamp: u64_at(36) as i64,
            segment_created_ms: u64_at(44) as i64,
            index_entries: u32_at(52),
            time_index_entries: u32_at(56),
            state: body[FIXED_BYTES..].to_vec(),
        })
    }

    /// Reads the checkpoint in `dir`. `Ok(None)` if there is none; a damaged one
    /// is reported through `on_damage` and treated as missing.
    pub fn read(
        storage: &dyn Storage,
        dir: &Path,
        on_damage: impl FnOnce(&str),
    ) -> Result<Option<Checkpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        if !storage.exists(&path).map_err(LogError::io("stat", &path))? {
            return Ok(None);
        }
        let file = storage
            .open(&path, OpenMode::ReadOnly)
            .map_err(LogError::io("open", &path))?;
        let len = file.len().map_err(LogError::io("stat", &path))? as usize;
        if len > FIXED_BYTES + MAX_STATE_BYTES + 4 {
            on_damage("file is larger than any checkpoint");
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        read_exact_at(file.as_ref(), &mut buf, 0).map_err(LogError::io("read", &path))?;
        match Checkpoint::decode(&buf) {
            Ok(c) => Ok(Some(c)),
            Err(why) => {
                on_damage(&why);
                Ok(None)
            }
        }
    }

    /// Atomically replaces the checkpoint in `dir`.
    pub fn write(&self, storage: &dyn Storage, dir: &Path) -> Result<()> {
        self.check_writable(dir)?;
        replace_file(storage, dir, CHECKPOINT_FILE, &self.encode())
            .map_err(LogError::io("write checkpoint", dir.join(CHECKPOINT_FILE)))
    }

    /// Fails if `write` would refuse this checkpoint; lets a caller check
    /// before it does anything it cannot undo.
    pub fn check_writable(&self, dir: &Path) -> Result<()> {
        // Never write a checkpoint `read` would refuse: that would look like
        // success and cost a full rescan at the next start.
        if self.state.len() > MAX_STATE_BYTES {
            return Err(LogError::Io {
                op: "write checkpoint",
                path: dir.join(CHECKPOINT_FILE),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "state of {} bytes exceeds {MAX_STATE_BYTES}",
                        self.state.len()
                    ),
                ),
            });
        }
        Ok(())
    }
}

/// Writes the clean-shutdown marker durably.
pub(crate) fn write_clean_marker(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let path = marker_path(dir);
    let file = storage
        .open(&path, OpenMode::Create)
        .map_err(LogError::io("create", &path))?;
    file.sync().map_err(LogError::io("fsync", &path))?;
    storage
        .sync_dir(dir)
        .map_err(LogError::io("fsync dir", dir))
}

/// Removes the marker if present; returns whether it was there. Removal is made
/// durable before the log accepts writes, so a crash later is never mistaken
/// for a clean shutdown.
pub(crate) fn take_clean_marker(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    let path = marker_path(dir);
    if !storage.exists(&path).map_err(LogError::io("stat", &path))? {
        return Ok(false);
    }
    storage
        .remove(&path)
        .map_err(LogError::io("remove", &path))?;
    storage
        .sync_dir(dir)
        .map_err(LogError::io("fsync dir", dir))?;
    Ok(true)
}

fn marker_path(dir: &Path) -> PathBuf {
    dir.join(CLEAN_SHUTDOWN_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::FileStorage;

    #[test]
    fn checkpoint_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            segment_base: 1,
            position: 2,
            next_offset: 3,
            max_timestamp: -4,
            segment_created_ms: 5,
            index_entries: 6,
            time_index_entries: 7,
            state: b"producer state".to_vec(),
        };
        cp.write(&FileStorage, dir.path()).unwrap();
        let read = Checkpoint::read(&FileStorage, dir.path(), |_| panic!("damaged")).unwrap();
        assert_eq!(read, Some(cp));

        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let mut damage = None;
        let read = Checkpoint::read(&FileStorage, dir.path(), |why| {
            damage = Some(why.to_owned())
        })
        .unwrap();
        assert_eq!(read, None);
        assert_eq!(damage.as_deref(), Some("CRC mismatch"));
    }

    #[test]
    fn clean_marker_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!take_clean_marker(&FileStorage, dir.path()).unwrap());
        write_clean_marker(&FileStorage, dir.path()).unwrap();
        assert!(take_clean_marker(&FileStorage, dir.path()).unwrap());
        assert!(!take_clean_marker(&FileStorage, dir.path()).unwrap());
    }
}
