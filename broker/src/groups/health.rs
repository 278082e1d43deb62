//! A group's health now: committed offset, lag in messages and seconds, and
//! status per partition, from the coordinator's view of members, the durable
//! committed offsets, the partitions' high watermarks and the commit history.

use std::collections::BTreeSet;

use super::lag::lag;
use super::monitor::{GroupHealth, PartitionHealth};
use super::status::Status;
use crate::broker::Broker;
use crate::error::Result;
use crate::log::now_ms;

impl Broker {
    /// Evaluates `group`; `None` if the broker knows nothing of it.
    pub async fn group_health(&self, group: &str) -> Result<Option<GroupHealth>> {
        let view = self.groups().describe(group);
        let committed = self.offsets().fetch(group, None);
        if view.is_none() && committed.is_empty() {
            return Ok(None);
        }
        let mut partitions: BTreeSet<(String, u32)> =
            committed.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        if let Some(v) = &view {
            for m in &v.members {
                partitions.extend(m.assigned.iter().cloned());
                partitions.extend(m.owned.iter().cloned());
            }
        }
        let members = view.as_ref().map_or(0, |v| v.members.len());
        let now = now_ms();
        let mut out = Vec::with_capacity(partitions.len());
        for (topic, index) in partitions {
            let Ok(partition) = self.partition(&topic, index) else {
                continue;
            };
            let committed_offset = committed
                .iter()
                .find(|(t, p, _)| *t == topic && *p == index)
                .map(|(_, _, c)| c.offset);
            let owner = view
                .as_ref()
                .and_then(|v| {
                    v.members
                        .iter()
                        .find(|m| m.owned.contains(&(topic.clone(), index)))
                })
                .map(|m| m.member_id.clone());
            let l = lag(&partition, committed_offset, now).await?;
            let status =
                self.group_monitor()
                    .status(group, &topic, index, l.messages, members > 0, now);
            out.push(PartitionHealth {
                topic,
                partition: index,
                committed: committed_offset,
                high_watermark: partition.high_watermark(),
                lag_messages: l.messages,
                lag_seconds: l.seconds,
                status,
                owner,
            });
        }
        let status = out.iter().map(|p| p.status).max().unwrap_or(Status::Ok);
        Ok(Some(GroupHealth {
            group: group.to_owned(),
            members,
            partitions: out,
            status,
        }))
    }

    /// Every group the broker knows: with live members or committed offsets.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.groups().groups().into_iter().collect();
        names.extend(self.offsets().groups());
        names.into_iter().collect()
    }
}
