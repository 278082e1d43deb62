//! The durable list of topics of a node: name, partition count and per-topic
//! log settings, in `<data-dir>/meta/topics.json`, replaced atomically on every
//! change. Topics exist only once created here (no auto-create).
//!
//! Each topic carries an incarnation id; its data lives under
//! `topics/<name>/` and a deleted topic's directory is moved aside before the
//! name can be reused, so a re-created topic never sees old data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use strata_proto::limits::topic_name_error;

use crate::error::{Error, Result};
use crate::log::storage::{Storage, replace_file};
use crate::log::{LogConfig, MAX_SEGMENT_SIZE_BYTES};

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Smallest segment size a topic may ask for (keeps file counts sane).
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;

const TOPICS_FILE: &str = "topics.json";
const FORMAT_VERSION: u32 = 1;

/// What a user asks for when creating a topic; `None`/0 means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub replication_factor: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
}

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub id: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: u64,
    pub created_ms: i64,
}

impl TopicSpec {
    /// Validates `settings` into a spec; errors name the field and the limit.
    pub fn new(
        name: &str,
        settings: &TopicSettings,
        id: u64,
        default_segment_bytes: u64,
    ) -> Result<Self> {
        if let Some(why) = topic_name_error(name) {
            return Err(Error::InvalidArgument(why));
        }
        if name.starts_with("__") {
            return Err(Error::InvalidArgument(format!(
                "topic name {name:?} starts with '__', which is reserved for internal topics"
            )));
        }
        if settings.partitions == 0 || settings.partitions > MAX_PARTITIONS {
            return Err(Error::InvalidArgument(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                settings.partitions
            )));
        }
        let segment_bytes = settings.segment_bytes.unwrap_or(default_segment_bytes);
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&segment_bytes) {
            return Err(Error::InvalidArgument(format!(
                "segment bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_SIZE_BYTES}, got {segment_bytes}"
            )));
        }
        Ok(TopicSpec {
            name: name.to_owned(),
            id,
            partitions: settings.partitions,
            replication_factor: settings.replication_factor.max(1),
            retention_bytes: settings.retention_bytes,
            retention_ms: settings.retention_ms,
            segment_bytes,
            created_ms: crate::log::now_ms(),
        })
    }

    /// The log settings of each of the topic's partitions.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
            ..LogConfig::default()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TopicsFile {
    version: u32,
    next_id: u64,
    topics: Vec<TopicSpec>,
}

/// The persisted topic list. Not synchronised: the broker serialises changes.
#[derive(Debug)]
pub struct TopicStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    next_id: u64,
    topics: BTreeMap<String, TopicSpec>,
}

impl TopicStore {
    /// Loads `<meta_dir>/topics.json` (an empty store if it does not exist).
    pub fn load(storage: Arc<dyn Storage>, meta_dir: &Path) -> Result<Self> {
        storage
            .create_dir_all(meta_dir)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", meta_dir.display())))?;
        let path = meta_dir.join(TOPICS_FILE);
        let mut store = TopicStore {
            storage,
            dir: meta_dir.to_path_buf(),
            next_id: 1,
            topics: BTreeMap::new(),
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let file: TopicsFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("{} is damaged: {e}", path.display())))?;
        if file.version != FORMAT_VERSION {
            return Err(Error::Internal(format!(
                "{} has unknown version {}",
                path.display(),
                file.version
            )));
        }
        store.next_id = file.next_id;
        store.topics = file
            .topics
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Ok(store)
    }

    fn save(&self) -> Result<()> {
        let file = TopicsFile {
            version: FORMAT_VERSION,
            next_id: self.next_id,
            topics: self.topics.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.to_string()))?;
        replace_file(self.storage.as_ref(), &self.dir, TOPICS_FILE, &bytes)
            .map_err(|e| Error::Internal(format!("cannot write topic metadata: {e}")))
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicSpec> {
        self.topics.values()
    }

    pub fn get(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.get(name)
    }

    /// Validates and durably records a new topic.
    pub fn create(
        &mut self,
        name: &str,
        settings: &TopicSettings,
        default_segment_bytes: u64,
    ) -> Result<TopicSpec> {
        if self.topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_owned()));
        }
        let spec = TopicSpec::new(name, settings, self.next_id, default_segment_bytes)?;
        self.next_id += 1;
        self.topics.insert(name.to_owned(), spec.clone());
        if let Err(e) = self.save() {
            self.topics.remove(name);
            return Err(e);
        }
        Ok(spec)
    }

    /// Durably forgets a topic; returns its spec.
    pub fn delete(&mut self, name: &str) -> Result<TopicSpec> {
        let spec = self
            .topics
            .remove(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_owned()))?;
        if let Err(e) = self.save() {
            self.topics.insert(name.to_owned(), spec);
            return Err(e);
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::storage::FileStorage;

    fn settings(partitions: u32) -> TopicSettings {
        TopicSettings {
            partitions,
            ..Default::default()
        }
    }

    #[test]
    fn topics_survive_reload_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage);
        {
            let mut store = TopicStore::load(storage.clone(), dir.path()).unwrap();
            let spec = store.create("orders", &settings(3), 1 << 20).unwrap();
            assert_eq!(spec.partitions, 3);
            assert!(matches!(
                store.create("orders", &settings(1), 1 << 20),
                Err(Error::TopicExists(_))
            ));
            assert!(matches!(
                store.create("bad/name", &settings(1), 1 << 20),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                store.create("__internal", &settings(1), 1 << 20),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                store.create("zero", &settings(0), 1 << 20),
                Err(Error::InvalidArgument(_))
            ));
            store.create("gone", &settings(1), 1 << 20).unwrap();
            store.delete("gone").unwrap();
        }
        let store = TopicStore::load(storage, dir.path()).unwrap();
        let names: Vec<_> = store.topics().map(|t| t.name.clone()).collect();
        assert_eq!(names, vec!["orders"]);
        // A re-created name gets a new incarnation id.
        assert_eq!(store.next_id, 3);
    }
}
