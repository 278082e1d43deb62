//! The record batch: the unit a producer sends, the log stores and a consumer
//! reads back, byte for byte (DESIGN.md §5, docs/storage-format.md).
//!
//! Layout, little endian:
//!
//! ```text
//!  0 base_offset     u64   stamped by the broker; outside the CRC
//!  8 length          u32   bytes after this field (batch size = 12 + length)
//! 12 crc             u32   crc32 (crc32fast) of bytes 16..end
//! 16 magic           u8    format version, MAGIC
//! 17 attributes      u16   bits 0-2 compression (0 = none), bit 5 control
//! 19 record_count    u32
//! 23 first_timestamp i64   ms since the Unix epoch
//! 31 max_timestamp   i64
//! 39 producer_id     u64   NO_PRODUCER_ID when not idempotent
//! 47 producer_epoch  u16
//! 49 base_sequence   u32
//! 53 raft_term       u64   stamped by the broker (Raft entry term)
//! 61 raft_index      u64   stamped by the broker (Raft entry index)
//! 69 records...
//! ```
//!
//! Each record: `length` uvarint (bytes that follow), `attributes` u8 (0),
//! `timestamp_delta` varint (from first_timestamp), `offset_delta` uvarint,
//! `key_len` varint (-1 = null) and key, `value_len` varint (-1 = null) and value,
//! `header_count` uvarint, then per header `key_len` uvarint + UTF-8 key,
//! `value_len` varint (-1 = null) + value.
//!
//! The broker validates a batch with [`verify`] (structure and CRC, records left
//! encoded) and stores it as it came; nothing here panics on hostile input.

use bytes::{BufMut, Bytes, BytesMut};
use crc32fast::Hasher;

use crate::limits::{MAX_BATCH_BYTES, MAX_MESSAGE_BYTES};
use crate::varint::{
    VarintError, get_uvarint, get_varint, put_uvarint, put_varint, uvarint_len, varint_len,
};

/// Format version written by this code.
pub const MAGIC: u8 = 2;

/// Fixed header size; records start here.
pub const HEADER_BYTES: usize = 69;

/// Bytes before the region the length field counts (base_offset + length).
pub const LOG_OVERHEAD_BYTES: usize = 12;

/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: u64 = 0;

/// Attribute bits holding the compression codec; only 0 (none) is supported.
pub const ATTR_COMPRESSION_MASK: u16 = 0x0007;

/// Attribute bit of a control batch (carries broker metadata, not user records).
pub const ATTR_CONTROL: u16 = 0x0020;

const KNOWN_ATTRIBUTES: u16 = ATTR_COMPRESSION_MASK | ATTR_CONTROL;

/// The smallest encoded record: seven one-byte fields.
pub const MIN_RECORD_BYTES: usize = 7;

/// Byte positions of the header fields.
pub mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const CRC: usize = 12;
    pub const MAGIC: usize = 16;
    pub const ATTRIBUTES: usize = 17;
    pub const RECORD_COUNT: usize = 19;
    pub const FIRST_TIMESTAMP: usize = 23;
    pub const MAX_TIMESTAMP: usize = 31;
    pub const PRODUCER_ID: usize = 39;
    pub const PRODUCER_EPOCH: usize = 47;
    pub const BASE_SEQUENCE: usize = 49;
    pub const RAFT_TERM: usize = 53;
    pub const RAFT_INDEX: usize = 61;
    pub const RECORDS: usize = 69;
}

/// Why a batch was refused. Every variant is a property of the input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("batch is truncated: {len} bytes present, at least {need} needed")]
    Truncated { len: usize, need: usize },
    #[error("batch length field declares {declared} bytes but {actual} are present")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unsupported batch magic {found}; this build reads magic {MAGIC}")]
    BadMagic { found: u8 },
    #[error("batch CRC mismatch: header says {stored:#010x}, content hashes to {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch attributes {0:#06x} (compression is not supported)")]
    UnsupportedAttributes(u16),
    #[error("record count {count} is impossible for a batch of {bytes} bytes")]
    BadRecordCount { count: u32, bytes: usize },
    #[error("batch max_timestamp {max} is before first_timestamp {first}")]
    BadTimestamps { first: i64, max: i64 },
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("a batch holds at most {max} records")]
    TooManyRecords { max: u32 },
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub length: u32,
    pub crc: u32,
    pub magic: u8,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub base_sequence: u32,
    pub raft_term: u64,
    pub raft_index: u64,
}

impl BatchHeader {
    /// Reads the header at the front of `buf`. Checks only what is needed to know
    /// the batch's extent (magic and a sane length); [`verify`] checks the rest.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                len: buf.len(),
                need: HEADER_BYTES,
            });
        }
        let header = BatchHeader {
            base_offset: u64_at(buf, field::BASE_OFFSET),
            length: u32_at(buf, field::LENGTH),
            crc: u32_at(buf, field::CRC),
            magic: buf[field::MAGIC],
            attributes: u16::from_le_bytes([buf[field::ATTRIBUTES], buf[field::ATTRIBUTES + 1]]),
            record_count: u32_at(buf, field::RECORD_COUNT),
            first_timestamp: u64_at(buf, field::FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(buf, field::MAX_TIMESTAMP) as i64,
            producer_id: u64_at(buf, field::PRODUCER_ID),
            producer_epoch: u16::from_le_bytes([
                buf[field::PRODUCER_EPOCH],
                buf[field::PRODUCER_EPOCH + 1],
            ]),
            base_sequence: u32_at(buf, field::BASE_SEQUENCE),
            raft_term: u64_at(buf, field::RAFT_TERM),
            raft_index: u64_at(buf, field::RAFT_INDEX),
        };
        if header.magic != MAGIC {
            return Err(BatchError::BadMagic {
                found: header.magic,
            });
        }
        if (header.length as usize) < HEADER_BYTES - LOG_OVERHEAD_BYTES {
            return Err(BatchError::LengthMismatch {
                declared: header.length as usize + LOG_OVERHEAD_BYTES,
                actual: buf.len(),
            });
        }
        Ok(header)
    }

    /// Total encoded size of the batch, header included.
    pub fn batch_len(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.length as usize
    }

    /// The offset after this batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// The offset of the last record (the base offset for an empty control batch).
    pub fn last_offset(&self) -> u64 {
        self.next_offset().saturating_sub(1).max(self.base_offset)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Sequence number of the last record, for idempotence checks.
    pub fn last_sequence(&self) -> u32 {
        self.base_sequence
            .wrapping_add(self.record_count.saturating_sub(1))
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8-byte slice"))
}

/// Checks that `batch` is exactly one well-formed batch: length, magic,
/// attributes, a plausible record count, timestamps and CRC. Records are not
/// decoded. Returns the header.
pub fn verify(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_structure(batch)?;
    let parts = CrcParts::new(batch);
    let computed = parts.with_raft(header.raft_term, header.raft_index);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// [`verify`]s `batch`, then stamps the broker-assigned base offset and Raft
/// entry id (term, index), updating the CRC when the id changes. One pass over
/// the record bytes.
pub fn verify_and_stamp(
    batch: &mut [u8],
    base_offset: u64,
    raft_term: u64,
    raft_index: u64,
) -> Result<BatchHeader, BatchError> {
    let mut header = check_structure(batch)?;
    let parts = CrcParts::new(batch);
    let computed = parts.with_raft(header.raft_term, header.raft_index);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
    header.base_offset = base_offset;
    if (raft_term, raft_index) != (header.raft_term, header.raft_index) {
        let crc = parts.with_raft(raft_term, raft_index);
        batch[field::RAFT_TERM..field::RAFT_TERM + 8].copy_from_slice(&raft_term.to_le_bytes());
        batch[field::RAFT_INDEX..field::RAFT_INDEX + 8].copy_from_slice(&raft_index.to_le_bytes());
        batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        header.raft_term = raft_term;
        header.raft_index = raft_index;
        header.crc = crc;
    }
    Ok(header)
}

/// Rewrites only the base offset; it lies outside the CRC, so nothing else changes.
pub fn stamp_base_offset(batch: &mut [u8], base_offset: u64) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "stamping a buffer shorter than a header"
    );
    batch[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Rewrites the producer epoch and base sequence of an encoded batch (a
/// producer resetting its sequences after a failed batch) and reseals its CRC.
pub fn restamp_producer(batch: &mut [u8], producer_epoch: u16, base_sequence: u32) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "restamping a buffer shorter than a header"
    );
    batch[field::PRODUCER_EPOCH..field::PRODUCER_EPOCH + 2]
        .copy_from_slice(&producer_epoch.to_le_bytes());
    batch[field::BASE_SEQUENCE..field::BASE_SEQUENCE + 4]
        .copy_from_slice(&base_sequence.to_le_bytes());
    let term = u64_at(batch, field::RAFT_TERM);
    let index = u64_at(batch, field::RAFT_INDEX);
    let crc = CrcParts::new(batch).with_raft(term, index);
    batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The CRC of a batch split around the Raft entry id, so that the id can be
/// restamped without hashing the records twice (CRC32 states combine).
struct CrcParts {
    before_term: Hasher,
    records: Hasher,
}

impl CrcParts {
    fn new(batch: &[u8]) -> Self {
        let mut before_term = Hasher::new();
        before_term.update(&batch[field::MAGIC..field::RAFT_TERM]);
        let mut records = Hasher::new();
        records.update(&batch[field::RECORDS..]);
        CrcParts {
            before_term,
            records,
        }
    }

    fn with_raft(&self, raft_term: u64, raft_index: u64) -> u32 {
        let mut hasher = self.before_term.clone();
        hasher.update(&raft_term.to_le_bytes());
        hasher.update(&raft_index.to_le_bytes());
        hasher.combine(&self.records);
        hasher.finalize()
    }
}

fn check_structure(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    if batch.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge {
            size: batch.len(),
            limit: MAX_BATCH_BYTES,
        });
    }
    let header = BatchHeader::parse(batch)?;
    if header.batch_len() != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.batch_len(),
            actual: batch.len(),
        });
    }
    if header.attributes & !KNOWN_ATTRIBUTES != 0 || header.attributes & ATTR_COMPRESSION_MASK != 0
    {
        return Err(BatchError::UnsupportedAttributes(header.attributes));
    }
    let record_bytes = batch.len() - HEADER_BYTES;
    let max_records = record_bytes / MIN_RECORD_BYTES;
    let count_ok = if header.is_control() {
        header.record_count as usize <= max_records
    } else {
        header.record_count >= 1 && header.record_count as usize <= max_records
    };
    if !count_ok {
        return Err(BatchError::BadRecordCount {
            count: header.record_count,
            bytes: batch.len(),
        });
    }
    if header.max_timestamp < header.first_timestamp {
        return Err(BatchError::BadTimestamps {
            first: header.first_timestamp,
            max: header.max_timestamp,
        });
    }
    Ok(header)
}

/// One key/value header attached to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as a producer writes it and a consumer reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

impl Record {
    /// A record with a value, no key, stamped `timestamp`.
    pub fn new(timestamp: i64, value: impl Into<Bytes>) -> Self {
        Record {
            timestamp,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
        }
    }
}

/// Identity and first sequence number of an idempotent producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerStamp {
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub base_sequence: u32,
}

/// What a builder allocates at first: a few records' worth, grown by
/// doubling, so a partition that gets one small record per linger does not
/// hold a whole batch size of memory.
const BUILDER_INITIAL_BYTES: usize = 16 * 1024;

/// Accumulates records into one encoded batch.
#[derive(Debug)]
pub struct BatchBuilder {
    /// Room for the header (written by `finish`), then the records: the
    /// finished batch is this buffer, not a copy of it.
    buf: BytesMut,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerStamp,
    attributes: u16,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new(ProducerStamp::default())
    }
}

impl BatchBuilder {
    pub fn new(producer: ProducerStamp) -> Self {
        Self::with_capacity(producer, BUILDER_INITIAL_BYTES)
    }

    /// A builder that holds `bytes` of batch (header included) before it
    /// grows: for a caller that knows about how large its batches get, so
    /// filling one does not copy it at every doubling.
    pub fn with_capacity(producer: ProducerStamp, bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes.max(HEADER_BYTES));
        buf.resize(HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
            producer,
            attributes: 0,
        }
    }

    /// Sets the producer identity and first sequence written at `finish`.
    pub fn set_producer(&mut self, producer: ProducerStamp) {
        self.producer = producer;
    }

    /// A control batch: broker metadata rather than user records. It may be empty.
    pub fn control() -> Self {
        BatchBuilder {
            attributes: ATTR_CONTROL,
            ..Self::default()
        }
    }

    /// Encoded size of the batch built so far.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the builder holds room for before it grows.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes `record` would add to the batch if pushed now.
    pub fn record_encoded_len(&self, record: &Record) -> usize {
        let body = self.record_body_len(record);
        uvarint_len(body as u64) + body
    }

    fn record_body_len(&self, record: &Record) -> usize {
        let delta = record
            .timestamp
            .wrapping_sub(self.first_timestamp_for(record));
        1 + varint_len(delta)
            + uvarint_len(u64::from(self.count))
            + opt_bytes_len(record.key.as_deref())
            + opt_bytes_len(record.value.as_deref())
            + uvarint_len(record.headers.len() as u64)
            + record
                .headers
                .iter()
                .map(|h| {
                    uvarint_len(h.key.len() as u64)
                        + h.key.len()
                        + opt_bytes_len(h.value.as_deref())
                })
                .sum::<usize>()
    }

    fn first_timestamp_for(&self, record: &Record) -> i64 {
        if self.count == 0 {
            record.timestamp
        } else {
            self.first_timestamp
        }
    }

    /// Appends `record`. Fails if the record alone exceeds the message limit or
    /// the batch would hold more records than the format can count.
    pub fn push(&mut self, record: &Record) -> Result<(), BatchError> {
        if self.count == u32::MAX {
            return Err(BatchError::TooManyRecords { max: u32::MAX });
        }
        let body = self.record_body_len(record);
        if body > MAX_MESSAGE_BYTES {
            return Err(BatchError::RecordTooLarge {
                size: body,
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let first = self.first_timestamp_for(record);
        let buf = &mut self.buf;
        buf.reserve(uvarint_len(body as u64) + body);
        put_uvarint(buf, body as u64);
        buf.put_u8(0);
        put_varint(buf, record.timestamp.wrapping_sub(first));
        put_uvarint(buf, u64::from(self.count));
        put_opt_bytes(buf, record.key.as_deref());
        put_opt_bytes(buf, record.value.as_deref());
        put_uvarint(buf, record.headers.len() as u64);
        for h in &record.headers {
            put_uvarint(buf, h.key.len() as u64);
            buf.put_slice(h.key.as_bytes());
            put_opt_bytes(buf, h.value.as_deref());
        }
        if self.count == 0 {
            self.first_timestamp = record.timestamp;
            self.max_timestamp = record.timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(record.timestamp);
        }
        self.count += 1;
        Ok(())
    }

    /// Encodes the header in front of the records; base offset and term are 0
    /// until the broker stamps them.
    pub fn finish(self) -> Bytes {
        let mut out = self.buf;
        let length = (out.len() - LOG_OVERHEAD_BYTES) as u32;
        let mut header = &mut out[..HEADER_BYTES];
        header.put_u64_le(0);
        header.put_u32_le(length);
        header.put_u32_le(0); // CRC, filled in below
        header.put_u8(MAGIC);
        header.put_u16_le(self.attributes);
        header.put_u32_le(self.count);
        header.put_i64_le(self.first_timestamp);
        header.put_i64_le(self.max_timestamp);
        header.put_u64_le(self.producer.producer_id);
        header.put_u16_le(self.producer.producer_epoch);
        header.put_u32_le(self.producer.base_sequence);
        header.put_u64_le(0); // raft term
        header.put_u64_le(0); // raft index
        debug_assert!(header.is_empty(), "the header fills its room exactly");
        let crc = CrcParts::new(&out).with_raft(0, 0);
        out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        out.freeze()
    }
}

fn opt_bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i64) + b.len(),
    }
}

fn put_opt_bytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

/// Iterates the records of one verified batch without copying their payloads:
/// keys, values and header values are slices of the batch's `Bytes`.
pub struct Records {
    batch: Bytes,
    pos: usize,
    index: u32,
    header: BatchHeader,
}

impl Records {
    /// Iterates `batch`, which must be one whole batch; it is [`verify`]ed first.
    pub fn new(batch: Bytes) -> Result<Self, BatchError> {
        let header = verify(&batch)?;
        Ok(Records {
            batch,
            pos: HEADER_BYTES,
            index: 0,
            header,
        })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    fn malformed(&self, reason: &'static str) -> BatchError {
        BatchError::MalformedRecord {
            index: self.index,
            reason,
        }
    }

    fn next_record(&mut self) -> Result<(u64, Record), BatchError> {
        let rest = &self.batch[self.pos..];
        let mut cur = rest;
        let body_len = get_uvarint(&mut cur).map_err(|e| self.varint(e))? as usize;
        if body_len > cur.len() {
            return Err(self.malformed("length runs past the end of the batch"));
        }
        let body_start = self.pos + (rest.len() - cur.len());
        let body_end = body_start + body_len;
        let mut body = &self.batch[body_start..body_end];
        let Some((&_attributes, after)) = body.split_first() else {
            return Err(self.malformed("empty record"));
        };
        body = after;
        let ts_delta = get_varint(&mut body).map_err(|e| self.varint(e))?;
        let offset_delta = get_uvarint(&mut body).map_err(|e| self.varint(e))?;
        if offset_delta >= u64::from(self.header.record_count) {
            return Err(self.malformed("offset delta beyond the batch's record count"));
        }
        let key = self.opt_bytes(&mut body, body_end, "key length out of range")?;
        let value = self.opt_bytes(&mut body, body_end, "value length out of range")?;
        let header_count = get_uvarint(&mut body).map_err(|e| self.varint(e))?;
        if header_count > body.len() as u64 {
            return Err(self.malformed("header count larger than the record"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key_len = get_uvarint(&mut body).map_err(|e| self.varint(e))?;
            if key_len > body.len() as u64 {
                return Err(self.malformed("header key runs past the record"));
            }
            let (key, after) = body.split_at(key_len as usize);
            let key = std::str::from_utf8(key)
                .map_err(|_| self.malformed("header key is not UTF-8"))?
                .to_owned();
            body = after;
            let value = self.opt_bytes(&mut body, body_end, "header value length out of range")?;
            headers.push(RecordHeader { key, value });
        }
        if !body.is_empty() {
            return Err(self.malformed("trailing bytes after the record's headers"));
        }
        self.pos = body_end;
        let record = Record {
            timestamp: self.header.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        };
        Ok((self.header.base_offset + offset_delta, record))
    }

    /// Reads a nullable length-prefixed field; `body` must be a suffix of the
    /// batch ending at `body_end`, so the field can be sliced without copying.
    fn opt_bytes(
        &self,
        body: &mut &[u8],
        body_end: usize,
        out_of_range: &'static str,
    ) -> Result<Option<Bytes>, BatchError> {
        let len = get_varint(body).map_err(|e| self.varint(e))?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 || len as u64 > body.len() as u64 {
            return Err(self.malformed(out_of_range));
        }
        let start = body_end - body.len();
        let field = self.batch.slice(start..start + len as usize);
        *body = &body[len as usize..];
        Ok(Some(field))
    }

    fn varint(&self, err: VarintError) -> BatchError {
        self.malformed(match err {
            VarintError::Truncated => "a varint runs past the end of the record",
            VarintError::Overflow => "a varint is longer than 10 bytes",
        })
    }
}

impl Iterator for Records {
    type Item = Result<(u64, Record), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.header.record_count {
            if self.pos != self.batch.len() {
                self.pos = self.batch.len();
                return Some(Err(self.malformed("bytes left after the last record")));
            }
            return None;
        }
        let item = self.next_record();
        match &item {
            Ok(_) => self.index += 1,
            // Stop after the first error: later positions are meaningless.
            Err(_) => self.index = self.header.record_count,
        }
        if item.is_err() {
            self.pos = self.batch.len();
        }
        Some(item)
    }
}

/// Splits a buffer of back-to-back batches (a fetch response) into verified
/// batches. A trailing partial batch is an error, not silently dropped.
pub struct Batches {
    buf: Bytes,
}

impl Batches {
    pub fn new(buf: Bytes) -> Self {
        Batches { buf }
    }
}

impl Iterator for Batches {
    type Item = Result<(BatchHeader, Bytes), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let header = match BatchHeader::parse(&self.buf) {
            Ok(h) => h,
            Err(e) => {
                self.buf.clear();
                return Some(Err(e));
            }
        };
        if header.batch_len() > self.buf.len() {
            let err = BatchError::Truncated {
                len: self.buf.len(),
                need: header.batch_len(),
            };
            self.buf.clear();
            return Some(Err(err));
        }
        let batch = self.buf.split_to(header.batch_len());
        Some(verify(&batch).map(|h| (h, batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(
        ts: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Record {
        Record {
            timestamp: ts,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(k, v)| RecordHeader {
                    key: (*k).to_owned(),
                    value: v.map(Bytes::copy_from_slice),
                })
                .collect(),
        }
    }

    fn build(records: &[Record]) -> Bytes {
        let mut b = BatchBuilder::new(ProducerStamp {
            producer_id: 7,
            producer_epoch: 2,
            base_sequence: 40,
        });
        for r in records {
            b.push(r).unwrap();
        }
        b.finish()
    }

    #[test]
    fn header_fields_survive_encoding() {
        let batch = build(&[
            record(1_000, None, Some(b"a"), &[]),
            record(900, Some(b"k"), None, &[]),
        ]);
        let h = verify(&batch).unwrap();
        assert_eq!(h.record_count, 2);
        assert_eq!(h.first_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_000);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 2, 40)
        );
        assert_eq!(h.last_sequence(), 41);
        assert_eq!(h.batch_len(), batch.len());
    }

    #[test]
    fn stamping_keeps_the_batch_valid_and_records_intact() {
        let records = vec![record(5, Some(b"k"), Some(b"v"), &[("h", Some(b"x"))])];
        let mut bytes = build(&records).to_vec();
        let h = verify_and_stamp(&mut bytes, 1234, 9, 77).unwrap();
        assert_eq!((h.base_offset, h.raft_term, h.raft_index), (1234, 9, 77));
        let again = verify(&bytes).unwrap();
        assert_eq!(again, h);
        let decoded: Vec<_> = Records::new(Bytes::from(bytes))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(decoded, vec![(1234, records[0].clone())]);
    }

    #[test]
    fn base_offset_is_outside_the_crc() {
        let mut bytes = build(&[record(1, None, Some(b"v"), &[])]).to_vec();
        stamp_base_offset(&mut bytes, u64::MAX - 5);
        assert_eq!(verify(&bytes).unwrap().base_offset, u64::MAX - 5);
    }

    #[test]
    fn every_flipped_bit_after_the_length_is_detected() {
        let batch = build(&[record(3, Some(b"key"), Some(b"value"), &[("a", None)])]);
        for byte in field::CRC..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.to_vec();
                bad[byte] ^= 1 << bit;
                assert!(
                    verify(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn malformed_batches_get_typed_errors() {
        let good = build(&[record(1, None, Some(b"v"), &[])]);
        assert!(matches!(
            verify(&good[..10]),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            verify(&good[..good.len() - 1]),
            Err(BatchError::LengthMismatch { .. })
        ));
        let mut magic = good.to_vec();
        magic[field::MAGIC] = 9;
        assert_eq!(verify(&magic), Err(BatchError::BadMagic { found: 9 }));
        let mut compressed = good.to_vec();
        compressed[field::ATTRIBUTES] = 1;
        assert!(matches!(
            verify(&compressed),
            Err(BatchError::UnsupportedAttributes(1))
        ));
        let mut absurd = good.to_vec();
        absurd[field::RECORD_COUNT..field::RECORD_COUNT + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            verify(&absurd),
            Err(BatchError::BadRecordCount { .. })
        ));
        let empty = BatchBuilder::default().finish();
        assert!(matches!(
            verify(&empty),
            Err(BatchError::BadRecordCount { count: 0, .. })
        ));
        let oversize = vec![0u8; MAX_BATCH_BYTES + 1];
        assert!(matches!(
            verify(&oversize),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn restamped_producer_fields_keep_the_batch_valid() {
        let mut bytes = build(&[record(1, None, Some(b"v"), &[])]).to_vec();
        restamp_producer(&mut bytes, 9, 1234);
        let h = verify(&bytes).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 9, 1234)
        );
    }

    #[test]
    fn empty_control_batches_are_valid() {
        let batch = BatchBuilder::control().finish();
        let h = verify(&batch).unwrap();
        assert!(h.is_control());
        assert_eq!(h.record_count, 0);
        assert_eq!(h.next_offset(), h.base_offset);
    }

    #[test]
    fn oversized_records_are_refused_by_the_builder() {
        let mut b = BatchBuilder::default();
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            b.push(&record(0, None, Some(&big), &[])),
            Err(BatchError::RecordTooLarge { .. })
        ));
        assert!(b.is_empty());
    }

    #[test]
    fn concatenated_batches_split_and_trailing_partial_is_an_error() {
        let a = build(&[record(1, None, Some(b"a"), &[])]);
        let b = build(&[
            record(2, None, Some(b"b"), &[]),
            record(3, None, Some(b"c"), &[]),
        ]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&a[..20]);
        let got: Vec<_> = Batches::new(buf.freeze()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().1, a);
        assert_eq!(got[1].as_ref().unwrap().0.record_count, 2);
        assert!(got[2].is_err());
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let bytes = || proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64));
        (
            any::<i64>(),
            bytes(),
            bytes(),
            proptest::collection::vec(("[a-z]{0,8}", bytes()), 0..3),
        )
            .prop_map(|(ts, k, v, hs)| Record {
                timestamp: ts,
                key: k.map(Bytes::from),
                value: v.map(Bytes::from),
                headers: hs
                    .into_iter()
                    .map(|(key, value)| RecordHeader {
                        key,
                        value: value.map(Bytes::from),
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(arb_record(), 1..20), base in any::<u32>()) {
            let mut b = BatchBuilder::default();
            for r in &records {
                let before = b.encoded_len();
                let predicted = b.record_encoded_len(r);
                b.push(r).unwrap();
                prop_assert_eq!(b.encoded_len() - before, predicted);
            }
            let mut bytes = b.finish().to_vec();
            verify_and_stamp(&mut bytes, u64::from(base), 3, 5).unwrap();
            let decoded: Vec<_> = Records::new(Bytes::from(bytes)).unwrap().collect::<Result<_, _>>().unwrap();
            let expected: Vec<_> = records.into_iter().enumerate().map(|(i, r)| (u64::from(base) + i as u64, r)).collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify(&bytes);
            for item in Batches::new(Bytes::from(bytes.clone())) {
                let _ = item;
            }
        }

        #[test]
        fn corrupted_records_with_a_fixed_crc_never_panic(
            records in proptest::collection::vec(arb_record(), 1..5),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
        ) {
            let mut b = BatchBuilder::default();
            for r in &records { b.push(r).unwrap(); }
            let mut bytes = b.finish().to_vec();
            let i = HEADER_BYTES + at.index(bytes.len() - HEADER_BYTES);
            bytes[i] = value;
            // Re-seal so the decoder, not the CRC, meets the damage.
            let crc = CrcParts::new(&bytes).with_raft(0, 0);
            bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
            if let Ok(records) = Records::new(Bytes::from(bytes)) {
                for r in records { let _ = r; }
            }
        }
    }
}
