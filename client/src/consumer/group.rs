//! The consumer's side of group membership: heartbeats that report what it
//! consumes and learn what it should, releasing partitions the coordinator
//! moves elsewhere (after committing their positions when auto-commit is on),
//! and taking up ones it is given. Also drives auto-commit.
//!
//! If the coordinator no longer knows the member (it was silent for its
//! session timeout, or the broker restarted), the member drops everything and
//! joins again; its partitions resume from the group's committed offsets.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::v1::{HeartbeatRequest, TopicPartition as WireTopicPartition};

use super::{ConsumerConfig, Shared, commit};
use crate::connection::Connection;
use crate::error::{Error, GroupError};
use crate::record::TopicPartition;
use crate::retry::Backoff;

pub(crate) async fn run(conn: Arc<Connection>, shared: Arc<Shared>, config: ConsumerConfig) {
    let group = config
        .group
        .clone()
        .expect("group task runs only for group consumers");
    let mut backoff = Backoff::default();
    let mut last_commit = Instant::now();
    loop {
        let (member_id, closed) = {
            let st = shared.state.lock();
            (st.member_id.clone(), st.closed)
        };
        if closed {
            return;
        }
        let owned: BTreeSet<TopicPartition> = shared.owned().into_iter().collect();
        let request = HeartbeatRequest {
            group: group.clone(),
            member_id,
            topics: config.topics.clone(),
            owned: owned
                .iter()
                .map(|tp| WireTopicPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })
                .collect(),
            session_timeout_ms: config.session_timeout.as_millis() as u32,
            assignor: config.assignor.clone(),
            client_id: config.client_id.clone(),
        };
        let reply = conn
            .coordinator_call(|mut client| {
                let request = request.clone();
                async move { client.heartbeat(request).await }
            })
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(Error::Group {
                kind: GroupError::UnknownMember | GroupError::IllegalGeneration,
                ..
            }) => {
                tracing::info!(%group, "consumer group membership lost; rejoining");
                let all: Vec<_> = owned.into_iter().collect();
                shared.revoke(&all);
                shared.state.lock().member_id.clear();
                continue;
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "heartbeat failed");
                tokio::time::sleep(backoff.next(e.retry_after())).await;
                continue;
            }
        };
        backoff.reset();
        {
            let mut st = shared.state.lock();
            st.member_id = reply.member_id.clone();
            st.generation = reply.generation;
        }
        let assigned: BTreeSet<TopicPartition> = reply
            .assigned
            .into_iter()
            .map(|tp| TopicPartition::new(tp.topic, tp.partition))
            .collect();
        let revoked: Vec<TopicPartition> = owned.difference(&assigned).cloned().collect();
        let added: Vec<TopicPartition> = assigned.difference(&owned).cloned().collect();
        if !revoked.is_empty() {
            let positions = shared.revoke(&revoked);
            if config.auto_commit.is_some() {
                let offsets: Vec<_> = positions
                    .into_iter()
                    .filter_map(|(tp, p)| p.map(|p| (tp, p)))
                    .collect();
                if let Err(e) = commit(&conn, &shared, &config, &offsets).await {
                    tracing::warn!(%group, error = %e, "commit of revoked partitions failed");
                }
            }
            // Tell the coordinator at once, so the new owner can start.
            continue;
        }
        if !added.is_empty() {
            shared.assign(added);
        }
        if let Some(every) = config.auto_commit
            && last_commit.elapsed() >= every
        {
            last_commit = Instant::now();
            let due: Vec<(TopicPartition, u64)> = {
                let st = shared.state.lock();
                st.partitions
                    .iter()
                    .filter_map(|(tp, p)| {
                        p.position
                            .filter(|pos| Some(*pos) != p.committed)
                            .map(|pos| (tp.clone(), pos))
                    })
                    .collect()
            };
            if let Err(e) = commit(&conn, &shared, &config, &due).await {
                tracing::warn!(%group, error = %e, "auto-commit failed");
            }
        }
        let interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms).max(10));
        let wait = config.auto_commit.map_or(interval, |c| interval.min(c));
        tokio::time::sleep(wait).await;
    }
}
