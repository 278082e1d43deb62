//! Hands out idempotent producer ids that are never reused by this node, even
//! across crashes: ids are reserved in blocks, and a block's end is made
//! durable (`<data-dir>/meta/producer-ids`) before any id in it is returned.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::log::storage::{Storage, replace_file};

/// Ids reserved per durable write.
pub const PRODUCER_ID_BLOCK: u64 = 1_000;

const FILE: &str = "producer-ids";

#[derive(Debug)]
struct Range {
    next: u64,
    end: u64,
}

#[derive(Debug)]
pub struct ProducerIds {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    range: Mutex<Range>,
}

impl ProducerIds {
    pub fn load(storage: Arc<dyn Storage>, meta_dir: &Path) -> Result<Self> {
        let path = meta_dir.join(FILE);
        let reserved_end = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| Error::Internal(format!("{} is damaged: {e}", path.display())))?,
            // Producer id 0 means "not idempotent"; start at 1.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(ProducerIds {
            storage,
            dir: meta_dir.to_path_buf(),
            range: Mutex::new(Range {
                next: reserved_end,
                end: reserved_end,
            }),
        })
    }

    /// A fresh producer id. Blocking (may write a file); call off async workers.
    pub fn allocate(&self) -> Result<u64> {
        let mut range = self.range.lock();
        if range.next == range.end {
            let end = range.end + PRODUCER_ID_BLOCK;
            replace_file(
                self.storage.as_ref(),
                &self.dir,
                FILE,
                end.to_string().as_bytes(),
            )
            .map_err(|e| Error::Internal(format!("cannot reserve producer ids: {e}")))?;
            range.end = end;
        }
        let id = range.next;
        range.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::FileStorage;

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage);
        let first: Vec<u64> = {
            let ids = ProducerIds::load(storage.clone(), dir.path()).unwrap();
            (0..3).map(|_| ids.allocate().unwrap()).collect()
        };
        assert_eq!(first, vec![1, 2, 3]);
        let ids = ProducerIds::load(storage, dir.path()).unwrap();
        let next = ids.allocate().unwrap();
        assert!(next > 3, "an id was reused after restart: {next}");
    }
}
