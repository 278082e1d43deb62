//! Exclusive ownership of a data directory: one broker per directory, across
//! processes and within one. An advisory `flock` on `<data-dir>/LOCK` is held
//! for the broker's life; the kernel releases it when the process dies, so a
//! crash never leaves a stale lock. The owner's pid is written into the file
//! so the error names who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const LOCK_FILE: &str = "LOCK";

/// How long an open waits when the lock is held by a broker of this same
/// process that is going away (dropped; its last connections are closing).
pub const SAME_PROCESS_LOCK_WAIT_MS: u64 = 2_000;

/// Poll interval while waiting for such a lock.
const LOCK_RETRY_MS: u64 = 10;

#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Internal(format!("cannot open {}: {e}", path.display())))?;
        let waited = std::time::Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked == 0 {
                break;
            }
            let mut owner = String::new();
            let _ = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut owner));
            let owner = owner.trim().to_owned();
            let ours = owner == std::process::id().to_string();
            if !ours
                || waited.elapsed() >= std::time::Duration::from_millis(SAME_PROCESS_LOCK_WAIT_MS)
            {
                return Err(Error::DataDirInUse {
                    dir: dir.to_path_buf(),
                    owner,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
        }
        let pid = std::process::id().to_string();
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .and_then(|_| file.sync_data());
        written.map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_and_names_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(Error::DataDirInUse { owner, .. }) => {
                assert_eq!(owner, std::process::id().to_string())
            }
            other => panic!("expected DataDirInUse, got {other:?}"),
        }
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
