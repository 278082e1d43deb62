//! The append path of a replicated partition: batches go through the
//! partition's Raft group instead of the local group commit.
//!
//! One proposer task per partition takes appends in arrival order, checks
//! idempotence against the applied producer table *and* the batches it has
//! proposed but not yet seen applied, and hands new batches to Raft without
//! waiting for each to commit (so appends pipeline). A retry of a batch still
//! in flight waits for that batch's answer instead of being written twice.
//!
//! Only a leader that has applied an entry of its own term accepts writes:
//! until then its producer table may miss batches of the previous term that it
//! is about to commit, and a retry of one of them would be written again.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata_proto::batch::BatchHeader;
use tokio::sync::{mpsc, oneshot, watch};

use super::Appended;
use super::machine::PartitionMachine;
use super::producer_state::{SequenceCheck, SequenceError};
use crate::error::{Error, Result};
use crate::log::storage::Storage;
use crate::log::{Log, RetentionReport};
use crate::raft::network::GroupNetwork;
use crate::raft::{LogStore, NodeId, Payload, Raft, StateMachine};

/// Finds a node's client-facing (data) address, for `NOT_LEADER` answers.
pub type ResolveLeader = Arc<dyn Fn(NodeId) -> Option<String> + Send + Sync>;

/// Which group member a replica is, and how it reaches the others.
pub struct ReplicaConfig {
    pub topic: String,
    pub partition: u32,
    pub node_id: NodeId,
    /// This node's position in the partition's replica list (0: preferred
    /// leader), which orders election timeouts.
    pub rank: u64,
    pub network: GroupNetwork,
    pub resolve: ResolveLeader,
    /// Fault injection, for the history checker's own test only: answer an
    /// append as soon as it is proposed, before it commits. Breaks acks=all.
    pub debug_ack_before_commit: bool,
}

type Answer = Result<Appended>;

struct Proposal {
    batch: Bytes,
    header: BatchHeader,
    reply: oneshot::Sender<Answer>,
}

/// A batch proposed and not yet answered.
struct InFlight {
    epoch: u16,
    first: u32,
    last: u32,
    answer: watch::Receiver<Option<Outcome>>,
}

/// Bytes a partition's leader may have proposed and not yet seen committed.
/// Producers keep up to 5 batches of 1 MiB in flight per partition each, and
/// the proposer hands them to Raft without waiting; unbounded, a leader ran
/// tens of MiB ahead of its followers, past what the group's tail keeps in
/// memory ([`crate::raft::tail::TAIL_BYTES_MAX`], 16 MiB), so replication and
/// apply read their entries back from the segment files (`pread` into fresh
/// buffers: 13% of a node's CPU on a three-node produce). Half the tail: what
/// replication reads is still there. The rest wait here, in order, which is
/// where they would have waited for their commit anyway.
const MAX_UNCOMMITTED_BYTES: usize = 8 * 1024 * 1024;

/// Proposals not yet answered, oldest first, with their sizes.
#[derive(Default)]
struct Uncommitted {
    proposals: VecDeque<(usize, watch::Receiver<Option<Outcome>>)>,
    bytes: usize,
}

impl Uncommitted {
    fn push(&mut self, bytes: usize, answer: watch::Receiver<Option<Outcome>>) {
        self.bytes += bytes;
        self.proposals.push_back((bytes, answer));
    }

    /// Waits for room for `bytes` (see [`Uncommitted::room_for`]) unless
    /// `stop` resolves first. False if it did: after a step-down the oldest
    /// proposals stay unanswered until the new leader commits or truncates
    /// them, and a proposal waiting behind them for room would leave its
    /// client waiting for its deadline instead of being sent to the new
    /// leader at once.
    async fn room_unless(&mut self, bytes: usize, stop: impl Future<Output = ()>) -> bool {
        tokio::select! {
            biased;
            () = self.room_for(bytes) => true,
            () = stop => false,
        }
    }

    /// Returns once `bytes` more fit under [`MAX_UNCOMMITTED_BYTES`] (at
    /// once if nothing is uncommitted: a batch larger than the bound still
    /// goes, alone), waiting for the oldest proposals' answers meanwhile.
    /// Cancel-safe: a proposal leaves the list only once answered.
    async fn room_for(&mut self, bytes: usize) {
        loop {
            while self
                .proposals
                .front()
                .is_some_and(|(_, answer)| answer.borrow().is_some())
            {
                self.pop();
            }
            if self.proposals.is_empty() || self.bytes + bytes <= MAX_UNCOMMITTED_BYTES {
                return;
            }
            let answer = &mut self.proposals.front_mut().expect("not empty").1;
            // An error means the answering task is gone: nothing to wait for.
            let _ = answer.wait_for(Option::is_some).await;
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((bytes, _)) = self.proposals.pop_front() {
            self.bytes -= bytes;
        }
    }
}

/// How a proposal ended, in a form every waiter can have a copy of.
#[derive(Debug, Clone)]
enum Outcome {
    Appended(Appended),
    NotLeader(Option<String>),
    Failed(String),
}

impl Outcome {
    fn into_answer(self, replica: &Replica) -> Answer {
        match self {
            Outcome::Appended(a) => Ok(a),
            Outcome::NotLeader(leader) => Err(Error::NotLeader {
                topic: replica.topic.to_string(),
                partition: replica.partition,
                leader,
            }),
            Outcome::Failed(why) => Err(Error::Internal(why)),
        }
    }
}

pub struct Replica {
    topic: Arc<str>,
    partition: u32,
    node_id: NodeId,
    raft: Raft,
    machine: StateMachine<PartitionMachine>,
    log: Arc<Log>,
    store: LogStore,
    proposals: mpsc::UnboundedSender<Proposal>,
    resolve: ResolveLeader,
    debug_ack_before_commit: bool,
}

impl Replica {
    /// Starts the partition's Raft group on `log` (opened by the caller, and
    /// written only through Raft from now on), with its state files in `dir`.
    pub async fn start(
        config: ReplicaConfig,
        log: Arc<Log>,
        storage: Arc<dyn Storage>,
        dir: &Path,
        high_watermark: Arc<watch::Sender<u64>>,
    ) -> Result<Arc<Replica>> {
        let ReplicaConfig {
            topic,
            partition,
            node_id,
            rank,
            network,
            resolve,
            debug_ack_before_commit,
        } = config;
        let (store, machine) = {
            let (log, storage, dir) = (log.clone(), storage.clone(), dir.to_path_buf());
            let machine_end = high_watermark.subscribe();
            let machine = PartitionMachine::new(high_watermark);
            tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let store = LogStore::open(log, storage.clone(), &dir)?;
                // The snapshot restores the high watermark before the log
                // store learns of it, so a log left behind by a snapshot
                // installed before a crash restarts here.
                let machine = StateMachine::open(storage, &dir, machine)?;
                store.follow_snapshots(machine_end)?;
                let follower = store.clone();
                machine.after_install(Arc::new(move || follower.restart_if_behind()));
                Ok((store, machine))
            })
            .await
            .map_err(|e| Error::Internal(format!("opening the Raft group failed: {e}")))?
            .map_err(|e| {
                Error::Internal(format!(
                    "opening the Raft group of {topic}/{partition}: {e}"
                ))
            })?
        };
        let config = Arc::new(
            crate::raft::config(&format!("{topic}/{partition}"), rank)
                .validate()
                .map_err(|e| Error::Internal(format!("raft config: {e}")))?,
        );
        let raft = Raft::new(node_id, config, network, store.clone(), machine.clone())
            .await
            .map_err(|e| Error::Internal(format!("starting Raft for {topic}/{partition}: {e}")))?;
        let (proposals, rx) = mpsc::unbounded_channel();
        let replica = Arc::new(Replica {
            topic: topic.as_str().into(),
            partition,
            node_id,
            raft,
            machine,
            log,
            store,
            proposals,
            resolve,
            debug_ack_before_commit,
        });
        tokio::spawn(proposer(Arc::downgrade(&replica), rx));
        Ok(replica)
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn machine(&self) -> &StateMachine<PartitionMachine> {
        &self.machine
    }

    /// Whether this node leads the partition now.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// The node this replica takes for the partition's leader: `None` while
    /// unknown, and once this replica has stopped (its Raft core quit on a
    /// fatal error), whose last view of the leader, often itself, is stale
    /// and must not send clients here.
    pub fn leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.running_state.as_ref().ok().and(m.current_leader)
    }

    /// Why this replica stopped, if it has.
    fn stopped(&self) -> Option<Error> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let fatal = m.running_state.as_ref().err()?;
        Some(Error::ReplicaStopped {
            topic: self.topic.to_string(),
            partition: self.partition,
            reason: fatal.to_string(),
        })
    }

    /// Appends a verified batch through Raft; resolves once a quorum has it
    /// fsynced and it is applied (`acks=all`).
    pub async fn append(&self, batch: Bytes, header: BatchHeader) -> Result<Appended> {
        self.submit(batch, header)?
            .await
            .map_err(|_| Error::ShuttingDown)?
    }

    /// Queues a verified batch for Raft behind every batch queued before it
    /// (proposals keep that order); the answer comes once a quorum has it
    /// fsynced and it is applied (`acks=all`). A dropped answer means the
    /// replica shut down.
    pub fn submit(
        &self,
        batch: Bytes,
        header: BatchHeader,
    ) -> Result<oneshot::Receiver<Result<Appended>>> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal {
                batch,
                header,
                reply,
            })
            .map_err(|_| Error::ShuttingDown)?;
        Ok(answer)
    }

    fn not_leader(&self, leader: Option<NodeId>) -> Error {
        Error::NotLeader {
            topic: self.topic.to_string(),
            partition: self.partition,
            leader: leader
                .filter(|&l| l != self.node_id)
                .and_then(|l| (self.resolve)(l)),
        }
    }

    /// The current term, the index of the last entry in this replica's log,
    /// and the index of the last one applied.
    fn log_positions(&self) -> (u64, u64, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (
            m.current_term,
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |l| l.index),
        )
    }

    /// `None` when this node may take writes; otherwise why not.
    fn refuse_writes(&self) -> Option<Error> {
        if let Some(stopped) = self.stopped() {
            return Some(stopped);
        }
        // Read in place: cloning the metrics (membership, replication map)
        // on every append would cost more than the check.
        let (leader, own_term_applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term),
            )
        };
        if leader != Some(self.node_id) {
            return Some(self.not_leader(leader));
        }
        if !own_term_applied {
            // A new leader still committing its predecessor's tail; answer
            // like an election in progress so clients retry here shortly.
            return Some(self.not_leader(None));
        }
        None
    }

    /// Applies the topic's retention to this replica. Records may only go
    /// once Raft has purged their entries (so no replica will be asked for
    /// them; one that lags behind the cut gets a snapshot instead and
    /// restarts its log there). So this deletes what is purged, then asks
    /// Raft to purge up to where retention wants the log to start; openraft
    /// purges only what a snapshot covers, and the next pass deletes it.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        self.store.trim_idle_tail();
        let (store, log, raft) = (self.store.clone(), self.log.clone(), self.raft.clone());
        let (report, purge_to) = tokio::task::spawn_blocking(move || {
            let purged = store
                .purged_offset()
                .map_err(|e| Error::Internal(e.to_string()))?;
            let report = log.enforce_retention_within(now_ms, purged)?;
            let purge_to = match log.retention_target(now_ms)? {
                Some(target) if target > purged => store
                    .index_before(target)
                    .map_err(|e| Error::Internal(e.to_string()))?,
                _ => None,
            };
            Ok::<_, Error>((report, purge_to))
        })
        .await
        .map_err(|e| Error::Internal(format!("retention task failed: {e}")))??;
        if let Some(index) = purge_to {
            let snapshot_index = raft.metrics().borrow().snapshot.map_or(0, |s| s.index);
            if snapshot_index < index {
                // Purging needs a snapshot at least that new.
                let _ = raft.trigger().snapshot().await;
            }
            let _ = raft.trigger().purge_log(index).await;
        }
        Ok(report)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.topic, partition = self.partition, %e, "Raft shutdown failed");
        }
    }
}

/// Whether a new batch of an idempotent producer may be proposed, from the
/// applied producer table's verdict (`applied`) and the epoch and last
/// sequence of that producer's latest batch still in flight, if any.
///
/// A batch that follows the latest in-flight one goes, whatever the table
/// says: the table either has not applied that batch yet (and expects its
/// first sequence) or just has (and expects this batch's). Anything else
/// in flight means the table alone cannot judge the batch: it is out of
/// order, and the sequence expected is the one after the in-flight batch.
fn admit(
    h: &BatchHeader,
    applied: std::result::Result<SequenceCheck, SequenceError>,
    last_in_flight: Option<(u16, u32)>,
) -> Result<SequenceCheck> {
    let follows_in_flight = last_in_flight.is_some_and(|(epoch, last)| {
        epoch == h.producer_epoch && last.wrapping_add(1) == h.base_sequence
    });
    match applied {
        Ok(SequenceCheck::Duplicate { base_offset }) => {
            return Ok(SequenceCheck::Duplicate { base_offset });
        }
        Err(SequenceError::Fenced {
            current_epoch,
            received_epoch,
        }) => {
            return Err(Error::ProducerFenced {
                producer_id: h.producer_id,
                current: current_epoch,
                received: received_epoch,
            });
        }
        Ok(SequenceCheck::Append) if last_in_flight.is_none() => return Ok(SequenceCheck::Append),
        Ok(SequenceCheck::Append) | Err(SequenceError::OutOfOrder { .. }) if follows_in_flight => {
            return Ok(SequenceCheck::Append);
        }
        _ => {}
    }
    let expected = match (last_in_flight, applied) {
        (Some((_, last)), _) => last.wrapping_add(1),
        (None, Err(SequenceError::OutOfOrder { expected, .. })) => expected,
        (None, _) => h.base_sequence,
    };
    Err(Error::OutOfOrderSequence {
        producer_id: h.producer_id,
        expected,
        received: h.base_sequence,
    })
}

type Metrics = watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>;

/// Resolves once node `me` no longer leads the group whose `metrics` these
/// are, or the group stopped. Holds the metrics, not the replica (which the
/// proposer must not keep alive).
async fn leadership_lost(mut metrics: Metrics, me: NodeId) {
    // An error: the group is gone, which ends leadership too.
    let _ = metrics
        .wait_for(|m| m.running_state.is_err() || m.current_leader != Some(me))
        .await;
}

async fn proposer(replica: std::sync::Weak<Replica>, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let mut in_flight: HashMap<u64, VecDeque<InFlight>> = HashMap::new();
    // (term, last log index) when this proposer first took a write in the
    // term: every entry up to that index was written before it (by an
    // earlier term, or by this node before a restart, which openraft may
    // resume as leader of the same term with the entries unapplied), so the
    // producer table is complete only once they are applied. Until then a
    // retried batch could look new and be committed twice.
    let mut barrier: Option<(u64, u64)> = None;
    let mut uncommitted = Uncommitted::default();
    while let Some(p) = rx.recv().await {
        // Whoever asked stopped waiting (a unary Produce past its deadline,
        // before or while this waits for room): nothing was acknowledged,
        // so nothing need be written, and a retry comes as a proposal of
        // its own.
        if p.reply.is_closed() {
            continue;
        }
        let Some(lost) = replica
            .upgrade()
            .map(|r| leadership_lost(r.raft.metrics(), r.node_id))
        else {
            let _ = p.reply.send(Err(Error::ShuttingDown));
            continue;
        };
        // Without room, a step-down ends the wait: the check below refuses.
        let _ = uncommitted.room_unless(p.batch.len(), lost).await;
        if p.reply.is_closed() {
            continue;
        }
        let Some(replica) = replica.upgrade() else {
            let _ = p.reply.send(Err(Error::ShuttingDown));
            continue;
        };
        for queue in in_flight.values_mut() {
            queue.retain(|f| f.answer.borrow().is_none());
        }
        in_flight.retain(|_, q| !q.is_empty());
        if let Some(refused) = replica.refuse_writes() {
            let _ = p.reply.send(Err(refused));
            continue;
        }
        let (term, last_log, applied) = replica.log_positions();
        let logged_before = match barrier {
            Some((t, index)) if t == term => index,
            _ => {
                barrier = Some((term, last_log));
                last_log
            }
        };
        if applied < logged_before {
            // Answered like an election in progress: clients retry shortly.
            let _ = p.reply.send(Err(replica.not_leader(None)));
            continue;
        }
        let h = p.header;
        let queue = in_flight.entry(h.producer_id).or_default();
        if h.producer_id != strata_proto::batch::NO_PRODUCER_ID {
            if let Some(same) = queue.iter().find(|f| {
                (f.epoch, f.first, f.last) == (h.producer_epoch, h.base_sequence, h.last_sequence())
            }) {
                // A retry of a batch still in flight: answer with its outcome.
                let mut answer = same.answer.clone();
                let replica = replica.clone();
                tokio::spawn(async move {
                    let outcome = match answer.wait_for(Option::is_some).await {
                        Ok(a) => a.clone().expect("waited for Some").into_answer(&replica),
                        Err(_) => Err(Error::ShuttingDown),
                    };
                    let _ = p.reply.send(outcome);
                });
                continue;
            }
            let applied = replica.machine.with(|m| m.producers().check(&h));
            let last_in_flight = queue.back().map(|f| (f.epoch, f.last));
            match admit(&h, applied, last_in_flight) {
                Ok(SequenceCheck::Append) => {}
                Ok(SequenceCheck::Duplicate { base_offset }) => {
                    let _ = p.reply.send(Ok(Appended {
                        base_offset,
                        duplicate: true,
                    }));
                    continue;
                }
                Err(refused) => {
                    let _ = p.reply.send(Err(refused));
                    continue;
                }
            }
        }
        let batch_bytes = p.batch.len();
        let responder = match replica.raft.client_write_ff(Payload(p.batch)).await {
            Ok(rx) => rx,
            Err(fatal) => {
                let _ = p.reply.send(Err(Error::ReplicaStopped {
                    topic: replica.topic.to_string(),
                    partition: replica.partition,
                    reason: fatal.to_string(),
                }));
                continue;
            }
        };
        let reply = if replica.debug_ack_before_commit {
            // Deliberately wrong (see `ReplicaConfig`): an offset guessed from
            // the local log, answered before any quorum has the batch.
            let guess = replica.log.end_offset();
            let _ = p.reply.send(Ok(Appended {
                base_offset: guess,
                duplicate: false,
            }));
            None
        } else {
            Some(p.reply)
        };
        let (tx, answer) = watch::channel(None);
        uncommitted.push(batch_bytes, answer.clone());
        if h.producer_id != strata_proto::batch::NO_PRODUCER_ID {
            queue.push_back(InFlight {
                epoch: h.producer_epoch,
                first: h.base_sequence,
                last: h.last_sequence(),
                answer,
            });
        }
        let replica = replica.clone();
        tokio::spawn(async move {
            let outcome = match responder.await {
                Ok(Ok(resp)) => Outcome::Appended(Appended {
                    base_offset: resp.data.base_offset,
                    duplicate: resp.data.duplicate,
                }),
                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    Outcome::NotLeader(f.leader_id.and_then(|l| (replica.resolve)(l)))
                }
                Ok(Err(e)) => Outcome::Failed(format!("replication: {e}")),
                // The leader stepped down or stopped before answering: the
                // batch may or may not commit; an idempotent retry is safe.
                Err(_) => Outcome::NotLeader(None),
            };
            tx.send_replace(Some(outcome.clone()));
            if let Some(reply) = reply {
                let _ = reply.send(outcome.into_answer(&replica));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::batch::{BatchBuilder, ProducerStamp, Record};

    /// Producer 7's batch of `records` from sequence `first`, in `epoch`.
    fn batch(epoch: u16, first: u32, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::new(ProducerStamp {
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence: first,
        });
        for _ in 0..records {
            b.push(&Record::new(0, "v")).unwrap();
        }
        BatchHeader::parse(&b.finish()).unwrap()
    }

    fn out_of_order(
        expected: u32,
        received: u32,
    ) -> std::result::Result<SequenceCheck, SequenceError> {
        Err(SequenceError::OutOfOrder { expected, received })
    }

    fn refused_expecting(r: Result<SequenceCheck>) -> Option<u32> {
        match r {
            Err(Error::OutOfOrderSequence { expected, .. }) => Some(expected),
            _ => None,
        }
    }

    #[test]
    fn a_batch_after_the_one_in_flight_goes_whether_or_not_that_one_was_applied() {
        let next = batch(0, 720, 10);
        // Batch 700..=719 proposed, not yet applied: the table expects 700.
        let unapplied = admit(&next, out_of_order(700, 720), Some((0, 719)));
        assert!(
            matches!(unapplied, Ok(SequenceCheck::Append)),
            "{unapplied:?}"
        );
        // Applied, but its answer not yet seen by the proposer: the table
        // expects 720 too. This was refused as "sent 720, expected 720",
        // which broke the producer's stream and made it resend.
        let applied = admit(&next, Ok(SequenceCheck::Append), Some((0, 719)));
        assert!(matches!(applied, Ok(SequenceCheck::Append)), "{applied:?}");
    }

    #[test]
    fn a_batch_that_skips_or_repeats_the_in_flight_ones_is_out_of_order() {
        // The table would take 700 (nothing of the in-flight 700..=719 is
        // applied), but 700 is already proposed in another batch.
        let again = admit(&batch(0, 700, 5), Ok(SequenceCheck::Append), Some((0, 719)));
        assert_eq!(refused_expecting(again), Some(720));
        let gap = admit(&batch(0, 730, 5), out_of_order(700, 730), Some((0, 719)));
        assert_eq!(refused_expecting(gap), Some(720));
        // Another epoch's batch does not follow this epoch's in-flight one.
        let other_epoch = admit(&batch(1, 720, 5), out_of_order(0, 720), Some((0, 719)));
        assert_eq!(refused_expecting(other_epoch), Some(720));
    }

    #[tokio::test]
    async fn proposals_wait_while_the_uncommitted_ones_fill_the_bound() {
        const MIB: usize = 1024 * 1024;
        let mut uncommitted = Uncommitted::default();
        let (first, answer) = watch::channel(None);
        uncommitted.push(5 * MIB, answer);
        let (_second, answer) = watch::channel(None);
        uncommitted.push(3 * MIB, answer);
        // 8 MiB uncommitted: nothing more fits until the oldest is answered.
        let wait = std::time::Duration::from_millis(50);
        let blocked = tokio::time::timeout(wait, uncommitted.room_for(1)).await;
        assert!(blocked.is_err(), "went past a full bound");
        first.send_replace(Some(Outcome::NotLeader(None)));
        tokio::time::timeout(wait * 20, uncommitted.room_for(MIB))
            .await
            .expect("room once the oldest was answered");
        assert_eq!(uncommitted.bytes, 3 * MIB);
        // Larger than the bound: waits for everything, then goes alone.
        let second = tokio::time::timeout(wait, uncommitted.room_for(9 * MIB)).await;
        assert!(second.is_err(), "a batch over the bound waits for the rest");
        let mut empty = Uncommitted::default();
        empty.room_for(9 * MIB).await;
    }

    #[tokio::test]
    async fn leadership_is_lost_when_another_node_or_none_leads_or_the_group_stops() {
        let wait = std::time::Duration::from_millis(50);
        let leading = |leader: Option<NodeId>| {
            let mut m = openraft::RaftMetrics::new_initial(1);
            m.current_leader = leader;
            m
        };
        let (tx, rx) = watch::channel(leading(Some(1)));
        let lost = leadership_lost(rx.clone(), 1);
        tokio::pin!(lost);
        assert!(
            tokio::time::timeout(wait, &mut lost).await.is_err(),
            "still leads"
        );
        tx.send_replace(leading(None));
        tokio::time::timeout(wait * 20, lost)
            .await
            .expect("an election is on");

        tx.send_replace(leading(Some(1)));
        let lost = leadership_lost(rx.clone(), 1);
        tx.send_replace(leading(Some(2)));
        tokio::time::timeout(wait * 20, lost)
            .await
            .expect("another node leads");

        tx.send_replace(leading(Some(1)));
        let lost = leadership_lost(rx, 1);
        drop(tx);
        tokio::time::timeout(wait * 20, lost)
            .await
            .expect("the group stopped");
    }

    #[tokio::test]
    async fn a_step_down_ends_the_wait_for_room_and_the_bound_still_holds() {
        const MIB: usize = 1024 * 1024;
        let mut uncommitted = Uncommitted::default();
        let (oldest, answer) = watch::channel(None);
        uncommitted.push(8 * MIB, answer);
        let (step_down, stepped_down) = oneshot::channel::<()>();
        let stop = async {
            let _ = stepped_down.await;
        };
        let wait = std::time::Duration::from_millis(50);
        {
            let waiting = uncommitted.room_unless(MIB, stop);
            tokio::pin!(waiting);
            assert!(
                tokio::time::timeout(wait, &mut waiting).await.is_err(),
                "still leading: waits for room"
            );
            step_down.send(()).unwrap();
            let made_room = tokio::time::timeout(wait * 20, waiting)
                .await
                .expect("a step-down ends the wait");
            assert!(!made_room, "ended by the step-down, not by room");
        }
        // The unanswered proposal still counts against the bound.
        assert_eq!(uncommitted.bytes, 8 * MIB);
        oldest.send_replace(Some(Outcome::NotLeader(None)));
        assert!(uncommitted.room_unless(MIB, std::future::pending()).await);
        assert_eq!(uncommitted.bytes, 0);
    }

    #[test]
    fn with_nothing_in_flight_the_applied_table_decides() {
        let b = batch(0, 5, 1);
        assert!(matches!(
            admit(&b, Ok(SequenceCheck::Append), None),
            Ok(SequenceCheck::Append)
        ));
        assert!(matches!(
            admit(&b, Ok(SequenceCheck::Duplicate { base_offset: 42 }), None),
            Ok(SequenceCheck::Duplicate { base_offset: 42 })
        ));
        assert_eq!(
            refused_expecting(admit(&b, out_of_order(3, 5), None)),
            Some(3)
        );
        let fenced = admit(
            &b,
            Err(SequenceError::Fenced {
                current_epoch: 2,
                received_epoch: 0,
            }),
            Some((0, 4)),
        );
        assert!(
            matches!(fenced, Err(Error::ProducerFenced { current: 2, .. })),
            "{fenced:?}"
        );
    }
}
