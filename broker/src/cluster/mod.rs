//! What a node knows about the cluster: its topics, and the identities it hands
//! out. In a single node this state lives in `<data-dir>/meta/`; replication
//! moves it into the metadata Raft group.

pub mod producer_ids;
pub mod topics;
