//! The Raft groups running on this node, by group id, for the peer service to
//! route incoming RPCs to.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::Raft;

/// Group id of the cluster metadata group.
pub const METADATA_GROUP: &str = "__metadata";

/// Group id of a partition's group.
pub fn partition_group(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

#[derive(Clone, Default)]
pub struct Groups {
    groups: Arc<RwLock<HashMap<String, Raft>>>,
}

impl Groups {
    pub fn get(&self, group: &str) -> Option<Raft> {
        self.groups.read().get(group).cloned()
    }

    pub fn insert(&self, group: String, raft: Raft) {
        self.groups.write().insert(group, raft);
    }

    pub fn remove(&self, group: &str) -> Option<Raft> {
        self.groups.write().remove(group)
    }

    pub fn all(&self) -> Vec<(String, Raft)> {
        self.groups
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
