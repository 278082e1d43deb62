//! The Raft groups running on this node, by group id, for the peer service to
//! route incoming RPCs to, and for metrics to report on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::Raft;

/// Group id of the cluster metadata group.
pub const METADATA_GROUP: &str = "__metadata";

/// Group id of a partition's group: the topic's incarnation is part of it,
/// so a node still running a deleted topic's group never takes traffic meant
/// for a topic re-created under the same name.
pub fn partition_group(topic: &str, incarnation: u64, partition: u32) -> String {
    format!("{topic}#{incarnation}/{partition}")
}

/// A running group and what this node has seen of it.
#[derive(Clone)]
pub struct Member {
    pub raft: Raft,
    /// Times the leader this node knows of changed (including to "none").
    pub leader_changes: Arc<AtomicU64>,
}

#[derive(Clone, Default)]
pub struct Groups {
    groups: Arc<RwLock<HashMap<String, Member>>>,
}

impl Groups {
    pub fn get(&self, group: &str) -> Option<Raft> {
        self.groups.read().get(group).map(|m| m.raft.clone())
    }

    /// Registers `raft` as `group` and starts counting its leader changes
    /// (a task that ends when the group shuts down).
    pub fn insert(&self, group: String, raft: Raft) {
        let leader_changes = Arc::new(AtomicU64::new(0));
        let mut metrics = raft.metrics();
        let counter = leader_changes.clone();
        tokio::spawn(async move {
            let mut leader = metrics.borrow_and_update().current_leader;
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow_and_update().current_leader;
                if now != leader {
                    leader = now;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        self.groups.write().insert(
            group,
            Member {
                raft,
                leader_changes,
            },
        );
    }

    pub fn remove(&self, group: &str) -> Option<Raft> {
        self.groups.write().remove(group).map(|m| m.raft)
    }

    /// Every group, sorted by id.
    pub fn all(&self) -> Vec<(String, Member)> {
        let mut all: Vec<_> = self
            .groups
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
