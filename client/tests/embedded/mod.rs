//! An in-process broker for the client's tests: no process to start, no
//! port to find.

use strata_broker::{Broker, BrokerConfig};
use strata_client::{Admin, NewTopic};

/// A broker in a fresh directory with `topic` of `partitions` partitions.
/// Keep the directory while the broker runs.
pub async fn broker_with_topic(topic: &str, partitions: u32) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(BrokerConfig::with_data_dir(dir.path()))
        .await
        .unwrap();
    Admin::connect(&broker)
        .await
        .unwrap()
        .create_topic(topic, NewTopic::new(partitions))
        .await
        .unwrap();
    (dir, broker)
}
