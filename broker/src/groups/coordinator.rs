//! The consumer group coordinator: membership, liveness and partition
//! ownership, with cooperative hand-over.
//!
//! Members join and stay alive through heartbeats, reporting the partitions
//! they currently consume. On every change of membership or topics the
//! coordinator recomputes a target assignment and bumps the generation. A
//! member is given a partition of its target only once no other member reports
//! owning it, so a partition never has two consumers: the old owner first sees
//! it dropped from its assignment, stops, commits, and stops reporting it.
//!
//! A member whose heartbeats stop for its session timeout is removed and its
//! partitions become free. Commits are fenced: only a live member may commit,
//! and only partitions currently assigned to it.
//!
//! Membership is in memory; after a broker restart members get
//! `UnknownMember` and rejoin. Committed offsets are durable (`offsets`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::assignment::{Assignor, TopicPartition};
use crate::config::{GROUP_MAX_SESSION_TIMEOUT_MS, GROUP_MIN_SESSION_TIMEOUT_MS};
use crate::error::{Error, GroupErrorKind, Result};

/// Heartbeat interval while a member's assignment is still moving.
pub const REBALANCE_HEARTBEAT_MS: u64 = 100;

/// Heartbeats per session timeout while the assignment is stable.
pub const HEARTBEATS_PER_SESSION: u32 = 3;

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    owned: BTreeSet<TopicPartition>,
    last_seen: Instant,
    session_timeout: Duration,
}

#[derive(Debug, Default)]
struct Group {
    generation: u64,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, Vec<TopicPartition>>,
    /// Partition counts the target was computed from.
    topic_counts: BTreeMap<String, u32>,
}

impl Group {
    fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Recomputes the target; bumps the generation if it changed.
    fn rebalance(&mut self, counts: &BTreeMap<String, u32>) {
        let subscribed = self.subscribed_topics();
        let counts: BTreeMap<String, u32> = counts
            .iter()
            .filter(|(t, _)| subscribed.contains(*t))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        let subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let target = self.assignor.assign(&subscriptions, &counts);
        if target != self.target || counts != self.topic_counts {
            self.generation += 1;
            self.target = target;
            self.topic_counts = counts;
        }
    }

    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members.retain(|id, m| {
            let alive = now.duration_since(m.last_seen) < m.session_timeout;
            if !alive {
                tracing::info!(member = %id, "consumer group member timed out");
            }
            alive
        });
        self.members.len() != before
    }

    /// The part of `member`'s target that no other member still owns.
    fn grantable(&self, member: &str) -> Vec<TopicPartition> {
        let owned_by_others: BTreeSet<&TopicPartition> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member)
            .flat_map(|(_, m)| m.owned.iter())
            .collect();
        self.target
            .get(member)
            .map(|t| {
                t.iter()
                    .filter(|tp| !owned_by_others.contains(tp))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A heartbeat (or join, with an empty member id).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    pub owned: Vec<TopicPartition>,
    pub session_timeout: Option<Duration>,
    pub assignor: Assignor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub generation: u64,
    pub assigned: Vec<TopicPartition>,
    pub heartbeat_interval: Duration,
}

/// A snapshot of one group for admin views.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub group: String,
    pub generation: u64,
    pub assignor: Assignor,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub owned: Vec<TopicPartition>,
    pub assigned: Vec<TopicPartition>,
    pub since_heartbeat: Duration,
}

#[derive(Debug)]
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    default_session_timeout: Duration,
}

fn group_error(group: &str, reason: GroupErrorKind) -> Error {
    Error::Group {
        group: group.to_owned(),
        reason,
    }
}

impl GroupCoordinator {
    pub fn new(default_session_timeout: Duration) -> Self {
        GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            default_session_timeout,
        }
    }

    /// Joins (empty member id) or keeps a member alive, and tells it what to
    /// consume. `topic_counts` holds the partition counts of existing topics.
    pub fn heartbeat(
        &self,
        hb: Heartbeat,
        topic_counts: &BTreeMap<String, u32>,
    ) -> Result<HeartbeatReply> {
        let session_timeout = match hb.session_timeout {
            None => self.default_session_timeout,
            Some(t) => {
                let ms = t.as_millis() as u64;
                if !(GROUP_MIN_SESSION_TIMEOUT_MS..=GROUP_MAX_SESSION_TIMEOUT_MS).contains(&ms) {
                    return Err(Error::InvalidArgument(format!(
                        "session timeout must be between {GROUP_MIN_SESSION_TIMEOUT_MS} and {GROUP_MAX_SESSION_TIMEOUT_MS} ms, got {ms}"
                    )));
                }
                t
            }
        };
        let now = Instant::now();
        let mut groups = self.groups.lock();
        let group = groups.entry(hb.group.clone()).or_default();
        group.expire(now);

        let member_id = if hb.member_id.is_empty() {
            if group.members.is_empty() {
                group.assignor = hb.assignor;
            }
            let id = format!(
                "{}-{:016x}",
                if hb.client_id.is_empty() {
                    "member"
                } else {
                    &hb.client_id
                },
                rand::random::<u64>()
            );
            group.members.insert(
                id.clone(),
                Member {
                    client_id: hb.client_id.clone(),
                    topics: BTreeSet::new(),
                    owned: BTreeSet::new(),
                    last_seen: now,
                    session_timeout,
                },
            );
            tracing::info!(group = %hb.group, member = %id, "member joined consumer group");
            id
        } else if group.members.contains_key(&hb.member_id) {
            hb.member_id.clone()
        } else {
            return Err(group_error(&hb.group, GroupErrorKind::UnknownMember));
        };

        let member = group.members.get_mut(&member_id).expect("member present");
        member.last_seen = now;
        member.session_timeout = session_timeout;
        member.owned = hb.owned.iter().cloned().collect();
        member.topics = hb.topics.iter().cloned().collect();
        // Recomputing on every heartbeat catches joins, expiries, subscription
        // and partition-count changes alike; it is cheap and bumps the
        // generation only when the outcome differs.
        group.rebalance(topic_counts);

        let assigned = group.grantable(&member_id);
        // What we grant counts as owned from now on, before the member's next
        // heartbeat confirms it: otherwise the same partition could be
        // granted to another member in between.
        let member = group.members.get_mut(&member_id).expect("member present");
        member.owned.extend(assigned.iter().cloned());
        let member = &group.members[&member_id];
        let target = group.target.get(&member_id).cloned().unwrap_or_default();
        let settled =
            assigned.len() == target.len() && member.owned.iter().all(|tp| target.contains(tp));
        let heartbeat_interval = if settled {
            session_timeout / HEARTBEATS_PER_SESSION
        } else {
            Duration::from_millis(REBALANCE_HEARTBEAT_MS)
        };
        Ok(HeartbeatReply {
            member_id,
            generation: group.generation,
            assigned,
            heartbeat_interval,
        })
    }

    /// Removes a member at once (it stopped cleanly); its partitions are free.
    pub fn leave(
        &self,
        group: &str,
        member_id: &str,
        topic_counts: &BTreeMap<String, u32>,
    ) -> Result<()> {
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| group_error(group, GroupErrorKind::NotFound))?;
        if g.members.remove(member_id).is_none() {
            return Err(group_error(group, GroupErrorKind::UnknownMember));
        }
        tracing::info!(group, member = member_id, "member left consumer group");
        g.rebalance(topic_counts);
        Ok(())
    }

    /// Refuses commits from members that are gone, or for partitions a member
    /// neither owns nor is assigned.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return if member_id.is_empty() {
                Ok(())
            } else {
                Err(group_error(group, GroupErrorKind::UnknownMember))
            };
        };
        g.expire(Instant::now());
        if member_id.is_empty() {
            // A consumer that assigns itself partitions may commit only to a
            // group with no live members.
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(group_error(group, GroupErrorKind::UnknownMember))
            };
        }
        let Some(member) = g.members.get(member_id) else {
            return Err(group_error(group, GroupErrorKind::UnknownMember));
        };
        // Its target, or what it still reports owning: a member hands over a
        // partition by committing it before it stops reporting it, and nobody
        // else is given the partition until then.
        let target = g.target.get(member_id);
        if partitions
            .iter()
            .all(|tp| target.is_some_and(|t| t.contains(tp)) || member.owned.contains(tp))
        {
            Ok(())
        } else {
            Err(group_error(group, GroupErrorKind::IllegalGeneration))
        }
    }

    /// Removes timed-out members from every group, and forgets empty groups.
    pub fn expire(&self, topic_counts: &BTreeMap<String, u32>) {
        let now = Instant::now();
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            if g.expire(now) {
                g.rebalance(topic_counts);
            }
        }
        groups.retain(|_, g| !g.members.is_empty());
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let now = Instant::now();
        Some(GroupView {
            group: group.to_owned(),
            generation: g.generation,
            assignor: g.assignor,
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    owned: m.owned.iter().cloned().collect(),
                    assigned: g.grantable(id),
                    since_heartbeat: now.duration_since(m.last_seen),
                })
                .collect(),
        })
    }

    /// Groups with live members.
    pub fn groups(&self) -> Vec<String> {
        let mut names: Vec<_> = self.groups.lock().keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: u32) -> BTreeMap<String, u32> {
        [("t".to_string(), n)].into_iter().collect()
    }

    fn hb(member: &str, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            topics: vec!["t".into()],
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
            session_timeout: Some(Duration::from_millis(1_000)),
            assignor: Assignor::Range,
        }
    }

    fn parts(reply: &HeartbeatReply) -> Vec<u32> {
        reply.assigned.iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn a_partition_moves_only_after_its_old_owner_releases_it() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        let a = c.heartbeat(hb("", &[]), &counts(4)).unwrap();
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);
        let a_id = a.member_id.clone();
        c.heartbeat(hb(&a_id, &[0, 1, 2, 3]), &counts(4)).unwrap();

        let b = c.heartbeat(hb("", &[]), &counts(4)).unwrap();
        assert!(b.generation > a.generation);
        assert!(
            parts(&b).is_empty(),
            "b must wait until a releases: {:?}",
            b.assigned
        );
        assert_eq!(
            b.heartbeat_interval,
            Duration::from_millis(REBALANCE_HEARTBEAT_MS)
        );

        // a keeps half (which half depends on the member ids' order)...
        let a2 = c.heartbeat(hb(&a_id, &[0, 1, 2, 3]), &counts(4)).unwrap();
        let kept = parts(&a2);
        assert_eq!(kept.len(), 2);
        // ...b gets the other half once a reports it released it.
        c.heartbeat(hb(&a_id, &kept), &counts(4)).unwrap();
        let b2 = c.heartbeat(hb(&b.member_id, &[]), &counts(4)).unwrap();
        let mut all = kept.clone();
        all.extend(parts(&b2));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_silent_member_is_expired_and_its_partitions_are_reassigned() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        let a = c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        let b = c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        c.heartbeat(hb(&a.member_id, &[0]), &counts(2)).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        c.heartbeat(hb(&a.member_id, &[0]), &counts(2)).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        // b has been silent for 1.2 s > its 1 s session.
        let a2 = c.heartbeat(hb(&a.member_id, &[0]), &counts(2)).unwrap();
        assert_eq!(parts(&a2), vec![0, 1]);
        assert!(matches!(
            c.heartbeat(hb(&b.member_id, &[]), &counts(2)),
            Err(Error::Group {
                reason: GroupErrorKind::UnknownMember,
                ..
            })
        ));
    }

    #[test]
    fn commits_are_fenced_to_live_owners() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        let a = c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        let tp = |p: u32| ("t".to_string(), p);
        c.check_commit("g", &a.member_id, &[tp(0), tp(1)]).unwrap();
        let b = c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        // One partition moves to b: once a has released it, a may no longer
        // commit it.
        let a_keeps = parts(&c.heartbeat(hb(&a.member_id, &[0, 1]), &counts(2)).unwrap());
        assert_eq!(a_keeps.len(), 1);
        let moved = 1 - a_keeps[0];
        c.heartbeat(hb(&a.member_id, &a_keeps), &counts(2)).unwrap();
        c.heartbeat(hb(&b.member_id, &[]), &counts(2)).unwrap();
        assert!(matches!(
            c.check_commit("g", &a.member_id, &[tp(moved)]),
            Err(Error::Group {
                reason: GroupErrorKind::IllegalGeneration,
                ..
            })
        ));
        c.check_commit("g", &a.member_id, &[tp(a_keeps[0])])
            .unwrap();
        c.check_commit("g", &b.member_id, &[tp(moved)]).unwrap();
        assert!(c.check_commit("g", "ghost", &[tp(0)]).is_err());
        assert!(
            c.check_commit("g", "", &[tp(0)]).is_err(),
            "anonymous commits to a live group are refused"
        );
        c.check_commit("other", "", &[tp(0)]).unwrap();
        c.leave("g", &a.member_id, &counts(2)).unwrap();
        c.leave("g", &b.member_id, &counts(2)).unwrap();
        c.expire(&counts(2));
        assert!(c.groups().is_empty());
    }

    #[test]
    fn a_member_may_commit_a_partition_it_is_handing_over() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        let a = c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        c.heartbeat(hb(&a.member_id, &[0, 1]), &counts(2)).unwrap();
        c.heartbeat(hb("", &[]), &counts(2)).unwrap();
        let kept = parts(&c.heartbeat(hb(&a.member_id, &[0, 1]), &counts(2)).unwrap());
        let moving = 1 - kept[0];
        // Still reported as owned: the hand-over commit is accepted...
        c.check_commit("g", &a.member_id, &[("t".to_string(), moving)])
            .unwrap();
        // ...and once released, further commits for it are fenced.
        c.heartbeat(hb(&a.member_id, &kept), &counts(2)).unwrap();
        assert!(
            c.check_commit("g", &a.member_id, &[("t".to_string(), moving)])
                .is_err()
        );
    }

    #[test]
    fn a_partition_granted_but_not_yet_confirmed_is_not_granted_twice() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        // a is granted everything and starts consuming before it heartbeats again.
        let a = c.heartbeat(hb("", &[]), &counts(4)).unwrap();
        assert_eq!(parts(&a).len(), 4);
        let b = c.heartbeat(hb("", &[]), &counts(4)).unwrap();
        assert!(
            parts(&b).is_empty(),
            "b was granted partitions a is consuming: {:?}",
            b.assigned
        );
    }

    #[test]
    fn session_timeouts_outside_the_limits_are_refused() {
        let c = GroupCoordinator::new(Duration::from_secs(10));
        let mut h = hb("", &[]);
        h.session_timeout = Some(Duration::from_millis(10));
        assert!(matches!(
            c.heartbeat(h, &counts(1)),
            Err(Error::InvalidArgument(_))
        ));
    }
}
