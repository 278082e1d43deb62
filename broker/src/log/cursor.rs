//! Walks the batches of one segment file forward, reading it in large chunks so
//! that a walk over many small batches costs few system calls.
//!
//! Used by the read path (to find the batch holding an offset), by recovery
//! (to check the tail batch by batch) and by index rebuilds. The cursor never
//! reads past `end`, the byte count the caller knows to be fully written.

use std::io;

use bytes::Bytes;
use strata_proto::batch::{BatchHeader, HEADER_BYTES, verify};
use strata_proto::limits::MAX_BATCH_BYTES;

use super::storage::StorageFile;

/// Bytes read at a time when walking headers.
pub(crate) const CURSOR_CHUNK_BYTES: usize = 256 * 1024;

/// Bytes read at a time to find one batch whose bytes come from elsewhere
/// (a map of the file): the index points within ~4 KiB of the batch, so
/// this holds the few headers walked, and a catching-up consumer's fetch no
/// longer copies 256 KiB out of the page cache to read one 69-byte header
/// (5% of the broker's CPU serving a catch-up).
pub(crate) const SEEK_CHUNK_BYTES: usize = 4 * 1024;

/// Why a walk could not go on.
#[derive(Debug)]
pub(crate) enum Stop {
    Io(io::Error),
    /// The bytes at `position` are not a valid batch.
    Invalid {
        position: u64,
        reason: String,
    },
}

pub(crate) struct BatchCursor<'a> {
    file: &'a dyn StorageFile,
    pos: u64,
    end: u64,
    chunk: Bytes,
    chunk_start: u64,
    /// Least bytes read at a time.
    chunk_bytes: usize,
}

impl<'a> BatchCursor<'a> {
    /// A cursor for walking many batches: reads `CURSOR_CHUNK_BYTES` at a time.
    pub fn new(file: &'a dyn StorageFile, start: u64, end: u64) -> Self {
        Self::with_chunk_bytes(file, start, end, CURSOR_CHUNK_BYTES)
    }

    /// A cursor that reads at least `chunk_bytes` at a time.
    pub fn with_chunk_bytes(
        file: &'a dyn StorageFile,
        start: u64,
        end: u64,
        chunk_bytes: usize,
    ) -> Self {
        BatchCursor {
            file,
            pos: start,
            end,
            chunk: Bytes::new(),
            chunk_start: start,
            chunk_bytes,
        }
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The header of the batch at the cursor; `None` at `end`. A header that is
    /// cut off by `end` or does not parse is `Stop::Invalid`.
    pub fn header(&mut self) -> Result<Option<BatchHeader>, Stop> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let pos = self.pos;
        if self.end - pos < HEADER_BYTES as u64 {
            return Err(self.invalid(format!(
                "{} bytes left, too few for a batch header",
                self.end - pos
            )));
        }
        let bytes = self.bytes(pos, HEADER_BYTES)?;
        let header = BatchHeader::parse(&bytes).map_err(|e| self.invalid(e.to_string()))?;
        // A damaged length must not make us read (or allocate) a segment's
        // worth of bytes: no valid batch is larger than the batch limit.
        if header.batch_len() > MAX_BATCH_BYTES {
            return Err(self.invalid(format!(
                "batch length {} exceeds the {MAX_BATCH_BYTES}-byte limit",
                header.batch_len()
            )));
        }
        if header.batch_len() as u64 > self.end - pos {
            return Err(self.invalid(format!(
                "batch of {} bytes runs past the end of the data ({} bytes left)",
                header.batch_len(),
                self.end - pos
            )));
        }
        Ok(Some(header))
    }

    /// The whole batch at the cursor, CRC-checked.
    pub fn batch(&mut self, header: &BatchHeader) -> Result<Bytes, Stop> {
        let bytes = self.bytes(self.pos, header.batch_len())?;
        verify(&bytes).map_err(|e| self.invalid(e.to_string()))?;
        Ok(bytes)
    }

    /// Moves past the batch whose header is `header`.
    pub fn advance(&mut self, header: &BatchHeader) {
        self.pos += header.batch_len() as u64;
    }

    /// Bytes `[pos, pos + len)` as one buffer, from the current chunk when it
    /// holds them, else from a fresh read starting at `pos`.
    pub fn bytes(&mut self, pos: u64, len: usize) -> Result<Bytes, Stop> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if pos >= self.chunk_start && pos + len as u64 <= chunk_end {
            let at = (pos - self.chunk_start) as usize;
            return Ok(self.chunk.slice(at..at + len));
        }
        let want = len
            .max(self.chunk_bytes)
            .min((self.end - pos) as usize)
            .max(len);
        let buf = self.file.read_exact_vec(want, pos).map_err(Stop::Io)?;
        self.chunk = Bytes::from(buf);
        self.chunk_start = pos;
        Ok(self.chunk.slice(0..len))
    }

    fn invalid(&self, reason: String) -> Stop {
        Stop::Invalid {
            position: self.pos,
            reason,
        }
    }
}
