//! The bench record payload: who sent it, its sequence number, and when it
//! was sent, so consumers can verify order and completeness and measure
//! end-to-end latency. Padded to the requested size.
//!
//! Layout (little endian): magic `SBv1` | producer u32 | sequence u64 |
//! send time µs since the epoch i64 | padding.

pub const MAGIC: &[u8; 4] = b"SBv1";
pub const HEADER_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub sequence: u64,
    pub sent_micros: i64,
}

pub fn encode(stamp: Stamp, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(HEADER_BYTES));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stamp.producer.to_le_bytes());
    out.extend_from_slice(&stamp.sequence.to_le_bytes());
    out.extend_from_slice(&stamp.sent_micros.to_le_bytes());
    out.resize(size.max(HEADER_BYTES), b'.');
    out
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
}
