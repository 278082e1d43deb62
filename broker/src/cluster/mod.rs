//! What a node knows about the cluster: its topics, and the identities it hands
//! out. A single node keeps this state in `<data-dir>/meta/`; a cluster keeps
//! topics, partition placement and node addresses in the metadata Raft group
//! (`<data-dir>/cluster/`).

pub mod founding;
pub mod metadata;
pub mod metadata_group;
pub mod placement;
pub mod producer_ids;
pub mod topics;
