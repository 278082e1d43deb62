//! LEB128 varints and zigzag encoding for record fields inside a batch.
//!
//! These bytes are part of the on-disk format (docs/storage-format.md), so the
//! encoding is owned here rather than borrowed from prost's hidden internals.
//! Decoding never panics: truncated or over-long input is an error.

use bytes::BufMut;

/// The longest LEB128 encoding of a u64.
pub const MAX_VARINT_BYTES: usize = 10;

/// Why a varint could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended inside the varint.
    Truncated,
    /// More than [`MAX_VARINT_BYTES`] bytes, or bits beyond 64.
    Overflow,
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_uvarint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Appends `value` zigzag-encoded, so small negative numbers stay short.
pub fn put_varint(buf: &mut impl BufMut, value: i64) {
    put_uvarint(buf, zigzag(value));
}

/// Number of bytes [`put_uvarint`] writes for `value`.
pub fn uvarint_len(value: u64) -> usize {
    // One byte per started group of 7 bits; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Number of bytes [`put_varint`] writes for `value`.
pub fn varint_len(value: i64) -> usize {
    uvarint_len(zigzag(value))
}

/// Reads an unsigned varint from the front of `buf`, advancing it.
pub fn get_uvarint(buf: &mut &[u8]) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT_BYTES {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(VarintError::Truncated);
        };
        *buf = rest;
        let low = u64::from(byte & 0x7f);
        if i == MAX_VARINT_BYTES - 1 && low > 1 {
            return Err(VarintError::Overflow);
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::Overflow)
}

/// Reads a zigzag-encoded signed varint from the front of `buf`, advancing it.
pub fn get_varint(buf: &mut &[u8]) -> Result<i64, VarintError> {
    get_uvarint(buf).map(unzigzag)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn unsigned_round_trips_with_predicted_length(v in any::<u64>()) {
            let mut buf = Vec::new();
            put_uvarint(&mut buf, v);
            prop_assert_eq!(buf.len(), uvarint_len(v));
            let mut cursor = &buf[..];
            prop_assert_eq!(get_uvarint(&mut cursor), Ok(v));
            prop_assert!(cursor.is_empty());
        }

        #[test]
        fn signed_round_trips_with_predicted_length(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let mut cursor = &buf[..];
            prop_assert_eq!(get_varint(&mut cursor), Ok(v));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut cursor = &bytes[..];
            let _ = get_uvarint(&mut cursor);
        }
    }

    #[test]
    fn truncated_and_overlong_inputs_are_errors() {
        assert_eq!(get_uvarint(&mut &[0x80u8][..]), Err(VarintError::Truncated));
        assert_eq!(get_uvarint(&mut &[][..]), Err(VarintError::Truncated));
        let overlong = [0xffu8; 11];
        assert_eq!(get_uvarint(&mut &overlong[..]), Err(VarintError::Overflow));
        // Ten bytes whose last carries more than the 64th bit.
        let mut too_big = [0xffu8; 10];
        too_big[9] = 0x02;
        assert_eq!(get_uvarint(&mut &too_big[..]), Err(VarintError::Overflow));
    }

    #[test]
    fn small_negatives_stay_short() {
        assert_eq!(varint_len(-1), 1);
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
    }
}
