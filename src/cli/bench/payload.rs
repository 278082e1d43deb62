//! The bench record payload: who sent it, its sequence number, and when it
//! was sent, so consumers can verify order and completeness and measure
//! end-to-end latency. Padded to the requested size.
//!
//! Layout (little endian): magic `SBv1` | producer u32 | sequence u64 |
//! send time µs since the epoch i64 | padding.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

pub const MAGIC: &[u8; 4] = b"SBv1";
pub const HEADER_BYTES: usize = 24;

/// Payloads are cut from chunks of this many bytes, padded once per chunk.
const CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub sequence: u64,
    pub sent_micros: i64,
}

/// One payload on its own (tests compare [`Payloads`] with it).
#[cfg(test)]
pub fn encode(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut out = vec![b'.'; size.max(HEADER_BYTES)];
    write_header(stamp, &mut out);
    out
}

fn write_header(stamp: Stamp, out: &mut [u8]) {
    out[0..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&stamp.producer.to_le_bytes());
    out[8..16].copy_from_slice(&stamp.sequence.to_le_bytes());
    out[16..24].copy_from_slice(&stamp.sent_micros.to_le_bytes());
}

/// Makes one sender's payloads: each is a slice of a shared, pre-padded
/// chunk with its own header, so the benchmark allocates and pads once per
/// chunk rather than once per record, and measures the broker and client
/// rather than its own record generator.
pub struct Payloads {
    producer: u32,
    size: usize,
    chunk: BytesMut,
    /// The sender's clock: one monotonic read per record gives both the
    /// instant it was sent (for latency) and its wall-clock stamp (for
    /// end-to-end latency across processes), instead of reading both clocks.
    origin: Instant,
    origin_micros: i64,
}

impl Payloads {
    pub fn new(producer: u32, size: usize) -> Self {
        Payloads {
            producer,
            size: size.max(HEADER_BYTES),
            chunk: BytesMut::new(),
            origin: Instant::now(),
            origin_micros: now_micros(),
        }
    }

    /// The payload of record `sequence`, stamped as sent at `at`.
    pub fn next(&mut self, sequence: u64, at: Instant) -> (Stamp, Bytes) {
        let stamp = Stamp {
            producer: self.producer,
            sequence,
            sent_micros: self.origin_micros
                + at.saturating_duration_since(self.origin).as_micros() as i64,
        };
        if self.chunk.len() < self.size {
            let bytes = (CHUNK_BYTES / self.size).max(1) * self.size;
            // The last chunk's memory again once no payload cut from it is
            // left (the producer copies each value into its batch): warm in
            // cache, where a new one was faulted in page by page.
            self.chunk.clear();
            if !self.chunk.try_reclaim(bytes) {
                self.chunk = BytesMut::with_capacity(bytes);
            }
            self.chunk.resize(bytes, b'.');
        }
        let mut payload = self.chunk.split_to(self.size);
        write_header(stamp, &mut payload);
        (stamp, payload.freeze())
    }
}

pub fn decode(bytes: &[u8]) -> Option<Stamp> {
    if bytes.len() < HEADER_BYTES || &bytes[0..4] != MAGIC {
        return None;
    }
    Some(Stamp {
        producer: u32::from_le_bytes(bytes[4..8].try_into().ok()?),
        sequence: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
        sent_micros: i64::from_le_bytes(bytes[16..24].try_into().ok()?),
    })
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let s = Stamp {
            producer: 3,
            sequence: 99,
            sent_micros: -5,
        };
        let b = encode(s, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(decode(&b), Some(s));
        assert_eq!(encode(s, 1).len(), HEADER_BYTES);
        assert_eq!(decode(b"not a bench record at all"), None);
    }

    #[test]
    fn payloads_match_encode_across_chunks() {
        let mut payloads = Payloads::new(1, 1000);
        let started = Instant::now();
        for sequence in 0..3 * (CHUNK_BYTES as u64 / 1000) {
            let (s, payload) = payloads.next(sequence, Instant::now());
            assert_eq!((s.producer, s.sequence), (1, sequence));
            assert!(s.sent_micros >= payloads.origin_micros);
            assert_eq!(payload[..], encode(s, 1000)[..]);
        }
        let (late, _) = payloads.next(0, started + std::time::Duration::from_secs(2));

        assert_eq!(
            late.sent_micros - payloads.origin_micros,
            (started - payloads.origin).as_micros() as i64 + 2_000_000,
            "the stamp follows the instant it is given"
        );
        let per_chunk = CHUNK_BYTES / 1000;
        // A chunk's memory is used again only once none of its payloads is
        // left: one still held keeps its bytes.
        let mut other = Payloads::new(2, 1000);
        let first: Vec<_> = (0..per_chunk as u64)
            .map(|i| other.next(i, Instant::now()))
            .collect();
        let (_, next) = other.next(per_chunk as u64, Instant::now());
        assert_ne!(next.as_ptr(), first[0].1.as_ptr(), "reused while held");
        for (s, payload) in &first {
            assert_eq!(payload[..], encode(*s, 1000)[..]);
        }
        let start = first[0].1.as_ptr();
        drop(first);
        let second_start = next.as_ptr();
        drop(next);
        for i in 1..per_chunk as u64 {
            other.next(per_chunk as u64 + i, Instant::now());
        }
        let (s, reused) = other.next(0, Instant::now());
        assert!(
            [start, second_start].contains(&reused.as_ptr()),
            "a chunk whose payloads are all gone is used again"
        );
        assert_eq!(reused[..], encode(s, 1000)[..]);
    }
}
