//! A memory-mapped file of fixed-width entries: the machinery shared by the
//! offset index and the time index.
//!
//! A writable index (the active segment's) is preallocated to its capacity and
//! written through a shared map; `len` entries are valid, the rest is zeros.
//! Sealing flushes the map, cuts the file to exactly `len` entries and maps it
//! read-only, so a sealed index describes itself by its size.
//!
//! Readers and the single writer meet at an `RwLock`; lookups hold it only for
//! a binary search, never across I/O.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use parking_lot::RwLock;

use super::error::{LogError, Result};
use super::storage::{OpenMode, Storage, StorageFile};

/// A fixed-width little-endian index entry.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    const BYTES: usize;
    fn decode(buf: &[u8]) -> Self;
    fn encode(&self, buf: &mut [u8]);
}

enum Map {
    /// No entries (a map of an empty file is not allowed).
    Empty,
    ReadOnly(Mmap),
    Writable(MmapMut),
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::Empty => &[],
            Map::ReadOnly(m) => m,
            Map::Writable(m) => m,
        }
    }
}

struct State {
    map: Map,
    len: usize,
    capacity: usize,
}

pub(crate) struct IndexFile<E: Entry> {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    state: RwLock<State>,
    _entry: PhantomData<E>,
}

impl<E: Entry> std::fmt::Debug for IndexFile<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexFile")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

impl<E: Entry> IndexFile<E> {
    /// Maps a sealed index read-only. Fails if the file is not a whole number of
    /// entries; the caller decides whether to rebuild.
    pub fn open_sealed(storage: &dyn Storage, path: &Path) -> Result<Self> {
        let file = storage
            .open(path, OpenMode::ReadOnly)
            .map_err(LogError::io("open", path))?;
        let bytes = file.len().map_err(LogError::io("stat", path))?;
        if bytes % E::BYTES as u64 != 0 {
            return Err(LogError::Corrupt {
                segment: path.to_path_buf(),
                position: bytes,
                reason: format!("index size {bytes} is not a multiple of {}", E::BYTES),
            });
        }
        let len = (bytes / E::BYTES as u64) as usize;
        let map = if len == 0 {
            Map::Empty
        } else {
            Map::ReadOnly(file.map().map_err(LogError::io("mmap", path))?)
        };
        Ok(IndexFile {
            path: path.to_path_buf(),
            file,
            state: RwLock::new(State {
                map,
                len,
                capacity: len,
            }),
            _entry: PhantomData,
        })
    }

    /// Opens (creating if needed) a writable index with room for `capacity`
    /// entries, keeping the first `keep` entries and zeroing the rest.
    pub fn open_writable(
        storage: &dyn Storage,
        path: &Path,
        capacity: usize,
        keep: usize,
    ) -> Result<Self> {
        let file = storage
            .open(path, OpenMode::Create)
            .map_err(LogError::io("open", path))?;
        let existing = file.len().map_err(LogError::io("stat", path))? as usize / E::BYTES;
        let keep = keep.min(existing).min(capacity);
        file.set_len((capacity * E::BYTES) as u64)
            .map_err(LogError::io("preallocate", path))?;
        let mut map = file.map_mut().map_err(LogError::io("mmap", path))?;
        // Entries past `keep` that the file already held may be stale or
        // half-written after a crash. What `set_len` just added is zero
        // already; leaving it untouched keeps a new index sparse.
        let stale_end = existing.min(capacity);
        if keep < stale_end {
            map[keep * E::BYTES..stale_end * E::BYTES].fill(0);
        }
        Ok(IndexFile {
            path: path.to_path_buf(),
            file,
            state: RwLock::new(State {
                map: Map::Writable(map),
                len: keep,
                capacity,
            }),
            _entry: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.state.read().len
    }

    /// Keeps only the longest prefix of entries that `valid(previous, entry)`
    /// accepts, zeroing the rest: recovery's check that kept entries agree
    /// with the log they index, whatever a crash did to the file.
    pub fn retain_valid_prefix(&self, valid: impl Fn(Option<&E>, &E) -> bool) {
        let mut s = self.state.write();
        let mut keep = 0;
        let mut previous: Option<E> = None;
        while keep < s.len {
            let entry = E::decode(&s.map.bytes()[keep * E::BYTES..]);
            if !valid(previous.as_ref(), &entry) {
                break;
            }
            previous = Some(entry);
            keep += 1;
        }
        if keep < s.len {
            if let Map::Writable(map) = &mut s.map {
                map[keep * E::BYTES..].fill(0);
            }
            s.len = keep;
        }
    }

    pub fn is_full(&self) -> bool {
        let s = self.state.read();
        s.len >= s.capacity
    }

    pub fn last(&self) -> Option<E> {
        let s = self.state.read();
        (s.len > 0).then(|| E::decode(&s.map.bytes()[(s.len - 1) * E::BYTES..]))
    }

    /// All entries, decoded (for validation and tests; O(len)).
    pub fn entries(&self) -> Vec<E> {
        let s = self.state.read();
        s.map.bytes()[..s.len * E::BYTES]
            .chunks_exact(E::BYTES)
            .map(E::decode)
            .collect()
    }

    /// The last entry for which `before` holds, given that `before` is true for
    /// a prefix of the entries and false after (binary search).
    pub fn last_where(&self, before: impl Fn(&E) -> bool) -> Option<E> {
        let s = self.state.read();
        let bytes = s.map.bytes();
        let (mut lo, mut hi) = (0usize, s.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(&E::decode(&bytes[mid * E::BYTES..])) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| E::decode(&bytes[(lo - 1) * E::BYTES..]))
    }

    /// Appends an entry; returns false if the index is full or sealed.
    pub fn push(&self, entry: E) -> bool {
        let mut s = self.state.write();
        let at = s.len * E::BYTES;
        if s.len >= s.capacity {
            return false;
        }
        let Map::Writable(map) = &mut s.map else {
            return false;
        };
        entry.encode(&mut map[at..at + E::BYTES]);
        s.len += 1;
        true
    }

    /// Makes the entries written so far durable.
    pub fn flush(&self) -> Result<()> {
        let s = self.state.read();
        if let Map::Writable(map) = &s.map {
            map.flush().map_err(LogError::io("msync", &self.path))?;
        }
        Ok(())
    }

    /// Cuts the file to exactly its entries, syncs it and maps it read-only.
    pub fn seal(&self) -> Result<()> {
        let mut s = self.state.write();
        if let Map::Writable(map) = &s.map {
            map.flush().map_err(LogError::io("msync", &self.path))?;
        }
        // Unmap before cutting: a map must never outlive the bytes it covers.
        s.map = Map::Empty;
        let bytes = (s.len * E::BYTES) as u64;
        self.file
            .set_len(bytes)
            .map_err(LogError::io("truncate", &self.path))?;
        self.file
            .sync()
            .map_err(LogError::io("fsync", &self.path))?;
        if s.len > 0 {
            s.map = Map::ReadOnly(self.file.map().map_err(LogError::io("mmap", &self.path))?);
        }
        s.capacity = s.len;
        Ok(())
    }
}
