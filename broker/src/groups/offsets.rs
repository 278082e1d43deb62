//! Durable committed offsets of consumer groups.
//!
//! Commits are records in an internal log (`<data-dir>/groups/offsets/`), one
//! batch per commit request, made durable before the commit is acknowledged.
//! The whole offsets map is the log's checkpoint state, so recovery reads only
//! the commits after the last checkpoint, and retention may drop every segment
//! the checkpoint covers.
//!
//! Record key: `group_len u16 | group | topic_len u16 | topic | partition u32`.
//! Record value: `offset u64 | commit_time_ms i64 | metadata (UTF-8, rest)`;
//! a null value deletes the entry (topic deleted).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use strata_proto::batch::{BatchBuilder, BatchHeader, Record, Records};

use crate::error::{Error, Result};
use crate::log::storage::Storage;
use crate::log::{Log, LogConfig, Replay, now_ms};

/// Longest metadata string stored with a committed offset.
pub const MAX_COMMIT_METADATA_BYTES: usize = 4 * 1024;

/// Segment size of the offsets log (small: it is mostly covered by checkpoints).
const OFFSETS_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

const STATE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: u64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

type GroupOffsets = BTreeMap<(String, u32), CommittedOffset>;

/// Every group's committed offsets, in memory. The single-node store keeps
/// it in front of its log; in a cluster the metadata group's state machine
/// owns it and every node applies the same commits.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetMap {
    groups: HashMap<String, GroupOffsets>,
}

impl OffsetMap {
    /// Records `committed` for `group` on `topic`/`partition`.
    pub fn set(&mut self, group: &str, topic: &str, partition: u32, committed: CommittedOffset) {
        self.groups
            .entry(group.to_owned())
            .or_default()
            .insert((topic.to_owned(), partition), committed);
    }

    /// Forgets every group's offsets for `topic` (it was deleted).
    pub fn remove_topic(&mut self, topic: &str) {
        for offsets in self.groups.values_mut() {
            offsets.retain(|(t, _), _| t != topic);
        }
        self.groups.retain(|_, offsets| !offsets.is_empty());
    }

    /// Committed offsets of `group`, all or only those in `partitions`.
    pub fn fetch(
        &self,
        group: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Vec<(String, u32, CommittedOffset)> {
        let Some(offsets) = self.groups.get(group) else {
            return Vec::new();
        };
        match partitions {
            None => offsets
                .iter()
                .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                .collect(),
            Some(wanted) => wanted
                .iter()
                .filter_map(|(t, p)| {
                    offsets
                        .get(&(t.clone(), *p))
                        .map(|c| (t.clone(), *p, c.clone()))
                })
                .collect(),
        }
    }

    /// Groups that have committed offsets, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<_> = self.groups.keys().cloned().collect();
        groups.sort();
        groups
    }

    fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> std::result::Result<(), String> {
        let mut k = Reader(key);
        let group = k.string16()?;
        let topic = k.string16()?;
        let partition = k.u32()?;
        match value {
            None => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.remove(&(topic, partition));
                    if g.is_empty() {
                        self.groups.remove(&group);
                    }
                }
            }
            Some(value) => {
                let mut v = Reader(value);
                let offset = v.u64()?;
                let commit_time_ms = v.u64()? as i64;
                let metadata =
                    String::from_utf8(v.0.to_vec()).map_err(|_| "metadata is not UTF-8")?;
                self.groups.entry(group).or_default().insert(
                    (topic, partition),
                    CommittedOffset {
                        offset,
                        metadata,
                        commit_time_ms,
                    },
                );
            }
        }
        Ok(())
    }

    /// The whole map in the store's checkpoint format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        for (group, offsets) in groups {
            for ((topic, partition), c) in offsets {
                let key = encode_key(group, topic, *partition);
                let value = encode_value(c);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(&key);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(&value);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut map = OffsetMap::default();
        if bytes.is_empty() {
            return Ok(map);
        }
        let mut r = Reader(bytes);
        if r.u8()? != STATE_VERSION {
            return Err("unknown offsets state version".into());
        }
        while !r.0.is_empty() {
            let key = r.bytes32()?;
            let value = r.bytes32()?;
            map.apply(key, Some(value))?;
        }
        Ok(map)
    }
}

fn encode_key(group: &str, topic: &str, partition: u32) -> Bytes {
    let mut k = BytesMut::with_capacity(8 + group.len() + topic.len());
    k.put_u16_le(group.len() as u16);
    k.put_slice(group.as_bytes());
    k.put_u16_le(topic.len() as u16);
    k.put_slice(topic.as_bytes());
    k.put_u32_le(partition);
    k.freeze()
}

fn encode_value(c: &CommittedOffset) -> Bytes {
    let mut v = BytesMut::with_capacity(16 + c.metadata.len());
    v.put_u64_le(c.offset);
    v.put_i64_le(c.commit_time_ms);
    v.put_slice(c.metadata.as_bytes());
    v.freeze()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated offsets record".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string16(&mut self) -> std::result::Result<String, String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "name is not UTF-8".into())
    }
    fn bytes32(&mut self) -> std::result::Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

struct MapReplay {
    map: OffsetMap,
}

impl Replay for MapReplay {
    fn restore(&mut self, state: &[u8]) {
        match OffsetMap::decode(state) {
            Ok(map) => self.map = map,
            Err(why) => {
                tracing::error!(%why, "offsets checkpoint state unreadable; rebuilding from the log")
            }
        }
    }

    fn replay(&mut self, _header: &BatchHeader, batch: &Bytes) {
        let Ok(records) = Records::new(batch.clone()) else {
            return;
        };
        for item in records {
            let Ok((_, record)) = item else { return };
            let Some(key) = record.key else { continue };
            if let Err(why) = self.map.apply(&key, record.value.as_deref()) {
                tracing::error!(%why, "skipping an unreadable offset commit");
            }
        }
    }
}

/// One offset to commit.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

pub struct OffsetStore {
    log: Log,
    map: RwLock<OffsetMap>,
    /// Serialises writers so the map and the log stay in the same order.
    writer: Mutex<()>,
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl OffsetStore {
    /// Opens the store in `dir` (blocking).
    pub fn open(dir: &Path, storage: Arc<dyn Storage>) -> Result<Self> {
        let config = LogConfig {
            segment_bytes: OFFSETS_SEGMENT_BYTES,
            // Everything a checkpoint covers is in the checkpoint's state.
            retention_bytes: Some(0),
            ..LogConfig::default()
        };
        let mut replay = MapReplay {
            map: OffsetMap::default(),
        };
        let (log, _) = Log::open(dir, config, storage, &mut replay)?;
        Ok(OffsetStore {
            log,
            map: RwLock::new(replay.map),
            writer: Mutex::new(()),
        })
    }

    /// Durably records `commits` for `group` (blocking: appends and fsyncs).
    /// Returns only after the commit is on disk.
    pub fn commit(&self, group: &str, commits: &[OffsetCommit]) -> Result<()> {
        let now = now_ms();
        let mut batch = BatchBuilder::default();
        let mut entries = Vec::with_capacity(commits.len());
        for c in commits {
            if c.metadata.len() > MAX_COMMIT_METADATA_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "commit metadata is {} bytes; the limit is {MAX_COMMIT_METADATA_BYTES}",
                    c.metadata.len()
                )));
            }
            let committed = CommittedOffset {
                offset: c.offset,
                metadata: c.metadata.clone(),
                commit_time_ms: now,
            };
            let key = encode_key(group, &c.topic, c.partition);
            batch.push(&Record {
                timestamp: now,
                key: Some(key.clone()),
                value: Some(encode_value(&committed)),
                headers: vec![],
            })?;
            entries.push((key, committed));
        }
        self.write(batch, |map| {
            for (key, committed) in &entries {
                let value = encode_value(committed);
                map.apply(key, Some(&value)).expect("own encoding decodes");
            }
        })
    }

    /// Forgets every group's offsets for `topic` (it was deleted).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let keys: Vec<Bytes> = {
            let map = self.map.read();
            map.groups
                .iter()
                .flat_map(|(g, offsets)| {
                    offsets
                        .keys()
                        .filter(|(t, _)| t == topic)
                        .map(move |(t, p)| encode_key(g, t, *p))
                })
                .collect()
        };
        if keys.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut batch = BatchBuilder::default();
        for key in &keys {
            batch.push(&Record {
                timestamp: now,
                key: Some(key.clone()),
                value: None,
                headers: vec![],
            })?;
        }
        self.write(batch, |map| {
            for key in &keys {
                map.apply(key, None).expect("own encoding decodes");
            }
        })
    }

    fn write(&self, batch: BatchBuilder, apply: impl FnOnce(&mut OffsetMap)) -> Result<()> {
        let _writer = self.writer.lock();
        self.log.append(&batch.finish())?;
        self.log.flush()?;
        let mut map = self.map.write();
        apply(&mut map);
        if self.log.checkpoint_due() {
            let state = map.encode();
            drop(map);
            self.log.checkpoint(&state)?;
            self.log.enforce_retention(now_ms())?;
        }
        Ok(())
    }

    /// Committed offsets of `group`, all or only those in `partitions`.
    pub fn fetch(
        &self,
        group: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Vec<(String, u32, CommittedOffset)> {
        self.map.read().fetch(group, partitions)
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> Vec<String> {
        self.map.read().groups()
    }

    /// Checkpoints and marks the store cleanly closed (blocking).
    pub fn close(&self) -> Result<()> {
        let _writer = self.writer.lock();
        let state = self.map.read().encode();
        self.log.close(&state)?;
        Ok(())
    }
}

/// Where a node's committed offsets live: its own store (a single node) or
/// the cluster metadata group's replicated map (a cluster). Reads only;
/// commits go through the broker, which knows which it is.
#[derive(Clone)]
pub enum Offsets {
    Local(Arc<OffsetStore>),
    Replicated(Arc<RwLock<OffsetMap>>),
}

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Offsets::Local(_) => f.write_str("Offsets::Local"),
            Offsets::Replicated(_) => f.write_str("Offsets::Replicated"),
        }
    }
}

impl Offsets {
    /// Committed offsets of `group`, all or only those in `partitions`.
    pub fn fetch(
        &self,
        group: &str,
        partitions: Option<&[(String, u32)]>,
    ) -> Vec<(String, u32, CommittedOffset)> {
        match self {
            Offsets::Local(store) => store.fetch(group, partitions),
            Offsets::Replicated(map) => map.read().fetch(group, partitions),
        }
    }

    /// Groups that have committed offsets, sorted.
    pub fn groups(&self) -> Vec<String> {
        match self {
            Offsets::Local(store) => store.groups(),
            Offsets::Replicated(map) => map.read().groups(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::{FaultyStorage, FileStorage};

    fn commit(topic: &str, partition: u32, offset: u64) -> OffsetCommit {
        OffsetCommit {
            topic: topic.into(),
            partition,
            offset,
            metadata: String::new(),
        }
    }

    #[test]
    fn commits_survive_clean_restarts_and_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(FaultyStorage::new());
        {
            let store = OffsetStore::open(dir.path(), storage.clone()).unwrap();
            store
                .commit("g1", &[commit("a", 0, 10), commit("a", 1, 20)])
                .unwrap();
            store.commit("g2", &[commit("b", 0, 5)]).unwrap();
            store.close().unwrap();
        }
        {
            let store = OffsetStore::open(dir.path(), storage.clone()).unwrap();
            assert_eq!(store.fetch("g1", None).len(), 2);
            store.commit("g1", &[commit("a", 0, 11)]).unwrap();
            store.delete_topic("b").unwrap();
            // Dropped without close: a crash after durable commits.
        }
        storage.crash().unwrap();
        let store = OffsetStore::open(dir.path(), storage).unwrap();
        let g1 = store.fetch("g1", Some(&[("a".into(), 0)]));
        assert_eq!(g1[0].2.offset, 11);
        assert!(store.fetch("g2", None).is_empty());
        assert_eq!(store.groups(), vec!["g1"]);
    }

    #[test]
    fn checkpoint_state_round_trips() {
        let mut map = OffsetMap::default();
        map.apply(
            &encode_key("g", "t", 3),
            Some(&encode_value(&CommittedOffset {
                offset: 9,
                metadata: "m".into(),
                commit_time_ms: 1,
            })),
        )
        .unwrap();
        assert_eq!(OffsetMap::decode(&map.encode()).unwrap(), map);
        assert!(OffsetMap::decode(&[STATE_VERSION, 1, 0]).is_err());
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path(), Arc::new(FileStorage)).unwrap();
        let mut c = commit("a", 0, 1);
        c.metadata = "x".repeat(MAX_COMMIT_METADATA_BYTES + 1);
        assert!(matches!(
            store.commit("g", &[c]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
