//! How Raft RPCs travel on the peer port. AppendEntries carries record batches
//! as the bytes they are stored as (no JSON of a megabyte of records); the
//! small envelope and every other RPC are openraft's own types as JSON.

use bytes::Bytes;
use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use serde::{Deserialize, Serialize};
use strata_proto::batch::BatchHeader;
use strata_proto::v1::RaftEntry;

use super::{Entry, NodeId, Payload, TypeConfig};

#[derive(Serialize, Deserialize)]
struct Envelope {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

/// Splits an AppendEntries request into its JSON envelope and entries.
pub fn encode_append(req: AppendEntriesRequest<TypeConfig>) -> (Vec<u8>, Vec<RaftEntry>) {
    let envelope = Envelope {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
    };
    let header = serde_json::to_vec(&envelope).expect("the envelope serializes");
    let entries = req.entries.into_iter().map(encode_entry).collect();
    (header, entries)
}

fn encode_entry(entry: Entry) -> RaftEntry {
    match entry.payload {
        EntryPayload::Normal(Payload(batch)) => RaftEntry {
            batch,
            json: Bytes::new(),
        },
        payload => {
            let entry = Entry {
                log_id: entry.log_id,
                payload,
            };
            let json = serde_json::to_vec(&entry).expect("a control entry serializes");
            RaftEntry {
                batch: Bytes::new(),
                json: json.into(),
            }
        }
    }
}

/// Rebuilds an AppendEntries request; a malformed one is a readable error.
pub fn decode_append(
    header: &[u8],
    entries: Vec<RaftEntry>,
) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    let envelope: Envelope =
        serde_json::from_slice(header).map_err(|e| format!("append envelope: {e}"))?;
    let entries = entries
        .into_iter()
        .map(decode_entry)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest {
        vote: envelope.vote,
        prev_log_id: envelope.prev_log_id,
        leader_commit: envelope.leader_commit,
        entries,
    })
}

fn decode_entry(entry: RaftEntry) -> Result<Entry, String> {
    match (entry.batch.is_empty(), entry.json.is_empty()) {
        (false, true) => {
            let h = BatchHeader::parse(&entry.batch).map_err(|e| format!("data entry: {e}"))?;
            Ok(Entry {
                log_id: LogId::new(CommittedLeaderId::new(h.raft_term, 0), h.raft_index),
                payload: EntryPayload::Normal(Payload(entry.batch)),
            })
        }
        (true, false) => {
            serde_json::from_slice(&entry.json).map_err(|e| format!("control entry: {e}"))
        }
        _ => Err("an entry must carry exactly one of batch and json".into()),
    }
}
