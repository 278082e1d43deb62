//! The small files of a Raft group (`raft.state`, `snapshot.bin`): replaced
//! atomically (`replace_file`: temp, fsync, rename, fsync dir) and guarded by
//! a CRC32 (little endian) of the payload that follows it, so a damaged file
//! is an error, never a silently different state.

use std::io;
use std::path::Path;

use crate::log::storage::{OpenMode, Storage, replace_file};

const CRC_BYTES: usize = 4;

/// The payload of `path`, `None` if the file does not exist. A file over
/// `max_bytes` or with a wrong CRC is `InvalidData`.
pub fn read(storage: &dyn Storage, path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    if !storage.exists(path)? {
        return Ok(None);
    }
    let file = storage.open(path, OpenMode::ReadOnly)?;
    let len = file.len()?;
    if !(CRC_BYTES as u64..=max_bytes).contains(&len) {
        return Err(corrupt(path, format!("size {len} bytes")));
    }
    let mut bytes = file.read_exact_vec(len as usize, 0)?;
    let stored = u32::from_le_bytes(bytes[..CRC_BYTES].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[CRC_BYTES..]) != stored {
        return Err(corrupt(path, "CRC mismatch".into()));
    }
    bytes.drain(..CRC_BYTES);
    Ok(Some(bytes))
}

/// Durably replaces `dir/name` with `payload` behind its CRC.
pub fn write(storage: &dyn Storage, dir: &Path, name: &str, payload: &[u8]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(CRC_BYTES + payload.len());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    replace_file(storage, dir, name, &bytes)
}

/// The error for a file whose contents cannot be what was written.
pub fn corrupt(path: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}
