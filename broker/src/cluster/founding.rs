//! Founding a new partition's Raft group: which founding replica initializes
//! it first, so that a new topic has leaders within milliseconds rather than
//! after an election timeout.
//!
//! openraft's `initialize` starts an election at once. When every founder
//! initialized as soon as it opened its replica, all of them campaigned in
//! the same term, each voted for itself, and no one won; the group waited for
//! the preferred leader's election timeout (500–600 ms), while producers that
//! had just created the topic backed off on "no known leader" for up to a
//! second. Now the preferred leader (the first founder) initializes
//! and campaigns alone; the other founders only initialize if no leader has
//! appeared after [`FOUNDING_GRACE`] (the preferred leader is down or slow),
//! which is the old behaviour, so a group still forms without it.
//!
//! Timing only: any founder may initialize and campaign at any time without
//! risk to safety (Raft's votes decide), so nothing here is needed for
//! correctness — it must never block opening a replica.

use std::collections::BTreeMap;
use std::time::Duration;

use super::metadata_group::initialize;
use crate::raft::{ELECTION_TIMEOUT_MIN, NodeId, Raft};

/// How long a founder that is not the preferred leader waits for a leader
/// before initializing the group itself.
pub const FOUNDING_GRACE: Duration = ELECTION_TIMEOUT_MIN;

/// How often the preferred leader campaigns again while no leader is known:
/// its first vote requests can reach peers that have not opened the group
/// yet, which refuse them, and openraft would otherwise wait out a whole
/// election timeout before trying again.
pub const FOUNDING_RETRY: Duration = Duration::from_millis(50);

/// Founds the group of a replica this node opened as one of `members` (the
/// founders); `preferred` is the first founder, the partition's preferred
/// leader when it was created.
pub async fn found(
    raft: &Raft,
    me: NodeId,
    preferred: Option<NodeId>,
    members: BTreeMap<NodeId, String>,
) -> crate::error::Result<()> {
    let preferred_founds = preferred.is_some_and(|p| members.contains_key(&p));
    if preferred == Some(me) || !preferred_founds {
        // Only a group founded just now campaigns early: a restarted member of
        // an existing group must wait to hear from the leader it has.
        if initialize(raft, &members).await? && preferred == Some(me) {
            tokio::spawn(campaign(raft.clone()));
        }
        return Ok(());
    }
    let raft = raft.clone();
    tokio::spawn(async move {
        if leader_within(&raft, FOUNDING_GRACE).await {
            return;
        }
        if let Err(e) = initialize(&raft, &members).await {
            tracing::warn!(error = %e, "initializing a partition group after the founding grace");
        }
    });
    Ok(())
}

/// Campaigns again every [`FOUNDING_RETRY`] until the group knows a leader
/// or [`FOUNDING_GRACE`] has passed (then openraft's own timeouts take over).
async fn campaign(raft: Raft) {
    let tries = FOUNDING_GRACE.as_millis() / FOUNDING_RETRY.as_millis();
    for _ in 0..tries {
        if leader_within(&raft, FOUNDING_RETRY).await {
            return;
        }
        // Ignored by openraft if this node became leader meanwhile.
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

async fn leader_within(raft: &Raft, timeout: Duration) -> bool {
    raft.wait(Some(timeout))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .is_ok()
}
