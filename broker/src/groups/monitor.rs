//! Remembers each group partition's recent commits, and the latest health of
//! every group as evaluated by the maintenance loop. Metrics read from here,
//! so a scrape touches memory only. Status changes are logged as they happen.

use std::collections::{BTreeMap, HashMap};

use parking_lot::{Mutex, RwLock};

use super::status::{CommitWindow, Sample, Status};

/// Lag and status of one group partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionHealth {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    pub high_watermark: u64,
    pub lag_messages: u64,
    /// Age of the oldest unconsumed record; 0 when caught up.
    pub lag_seconds: f64,
    pub status: Status,
    /// Member consuming it now, if any.
    pub owner: Option<String>,
}

/// Lag and status of one group: its worst partition.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupHealth {
    pub group: String,
    pub members: usize,
    pub partitions: Vec<PartitionHealth>,
    pub status: Status,
}

impl GroupHealth {
    pub fn total_lag(&self) -> u64 {
        self.partitions.iter().map(|p| p.lag_messages).sum()
    }
}

type Key = (String, String, u32);

#[derive(Debug, Default)]
pub struct GroupMonitor {
    windows: Mutex<HashMap<Key, CommitWindow>>,
    latest: RwLock<BTreeMap<String, GroupHealth>>,
}

impl GroupMonitor {
    /// Records a commit of `offset` made when the partition's high watermark
    /// was `high_watermark`.
    pub fn record_commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        high_watermark: u64,
        now_ms: i64,
    ) {
        let sample = Sample {
            time_ms: now_ms,
            offset,
            lag: high_watermark.saturating_sub(offset),
        };
        self.windows
            .lock()
            .entry((group.to_owned(), topic.to_owned(), partition))
            .or_default()
            .push(sample);
    }

    /// The status of a group partition with lag `lag_now` right now.
    pub fn status(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        lag_now: u64,
        has_members: bool,
        now_ms: i64,
    ) -> Status {
        let windows = self.windows.lock();
        match windows.get(&(group.to_owned(), topic.to_owned(), partition)) {
            Some(w) => w.evaluate(lag_now, has_members, now_ms),
            None => CommitWindow::default().evaluate(lag_now, has_members, now_ms),
        }
    }

    /// Stores a fresh evaluation of all groups, logging every status change.
    pub fn publish(&self, groups: Vec<GroupHealth>) {
        let mut latest = self.latest.write();
        for g in &groups {
            for p in &g.partitions {
                let before = latest
                    .get(&g.group)
                    .and_then(|old| {
                        old.partitions
                            .iter()
                            .find(|o| o.topic == p.topic && o.partition == p.partition)
                    })
                    .map(|o| o.status);
                if before != Some(p.status) && (before.is_some() || p.status != Status::Ok) {
                    let from = before.map_or("NEW", Status::name);
                    tracing::warn!(group = %g.group, topic = %p.topic, partition = p.partition, from, to = %p.status,
                        lag_messages = p.lag_messages, lag_seconds = p.lag_seconds, "consumer group status changed");
                }
            }
        }
        *latest = groups.into_iter().map(|g| (g.group.clone(), g)).collect();
    }

    /// The last published evaluation of every group.
    pub fn latest(&self) -> Vec<GroupHealth> {
        self.latest.read().values().cloned().collect()
    }

    /// Forgets the commit history of a deleted topic.
    pub fn forget_topic(&self, topic: &str) {
        self.windows.lock().retain(|(_, t, _), _| t != topic);
    }
}
