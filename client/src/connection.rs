//! Connections to a cluster: the control plane (bootstrap list and failover,
//! see `control_plane`), one data channel per node (HTTP/2 multiplexes every
//! request to a node over it), and the cached metadata that says which node
//! leads each partition.
//!
//! Data channels connect lazily and in the background, so a slow or dead node
//! never blocks requests to other nodes. Each node has a single channel, which
//! bounds concurrent connects; retries above this layer add jittered backoff,
//! so clients never stampede a restarting broker.
//!
//! When a partition's leader fails a request, callers report it
//! ([`Connection::leader_failed`]): a NOT_LEADER hint routes the partition's
//! next request to the named node; a lost leader makes its next lookup refresh
//! metadata first. Refreshes are coalesced (one at a time; callers queued
//! behind one reuse its answer) and rate-limited: after a refresh of all
//! leaders, the next waits `METADATA_REFRESH_INTERVAL_MS`, so a leader failure
//! seen by a thousand partitions costs one metadata request, not a thousand.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use strata_proto::limits::{FETCH_MAX_BYTES, MAX_BATCH_BYTES};
use strata_proto::target::{Plane, Target};
use strata_proto::v1::MetadataRequest;
use strata_proto::v1::control_client::ControlClient;
use strata_proto::v1::data_client::DataClient;
use tonic::Status;

use crate::channel::{Token, Transport, endpoint, is_valid_addr, local_channel};
use crate::control_plane::ControlPlane;
use crate::error::{ERROR_KIND_KEY, Error, LEADER_KEY, Result, node_cannot_serve};
use crate::metadata::{LeaderNews, Lookup, Metadata};

/// Default time to establish the first connection to a bootstrap address
/// (each address of a bootstrap list gets this long).
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Least time between two refreshes of every partition's leader; refreshes
/// wanted sooner reuse the last one's answer (or error).
pub const METADATA_REFRESH_INTERVAL_MS: u64 = 100;

/// Largest response a data channel accepts: a full fetch plus one batch.
pub(crate) const MAX_RESPONSE_BYTES: usize = FETCH_MAX_BYTES + MAX_BATCH_BYTES + 64 * 1024;

/// The last refresh of every partition's leader, for the rate limit.
#[derive(Debug)]
struct LastRefresh {
    finished: Instant,
    outcome: Result<()>,
}

#[derive(Debug)]
pub(crate) struct Connection {
    target: Target,
    control: ControlPlane,
    data: Mutex<HashMap<String, Transport>>,
    metadata: RwLock<Metadata>,
    /// Held while a metadata request is in flight, so refreshes queue instead
    /// of racing. An async mutex: waiting for it is waiting for the refresh,
    /// and it guards nothing but the rate limit's record.
    refreshing: tokio::sync::Mutex<Option<LastRefresh>>,
    /// The data address of the node coordinating consumer groups, once known
    /// (in a cluster, the metadata leader; on a single node, the node).
    coordinator: RwLock<Option<String>>,
}

/// Attempts of one group request while it is redirected or its node is down.
const COORDINATOR_ATTEMPTS: usize = 4;

impl Connection {
    /// Connects to the first bootstrap address that answers (eagerly, so a
    /// wrong list is reported here) and loads cluster metadata.
    pub async fn connect(target: Target, connect_timeout: Duration) -> Result<Arc<Connection>> {
        let control = ControlPlane::bootstrap(&target, connect_timeout).await?;
        let conn = Arc::new(Connection {
            target,
            control,
            data: Mutex::new(HashMap::new()),
            metadata: RwLock::new(Metadata::default()),
            refreshing: tokio::sync::Mutex::new(None),
            coordinator: RwLock::new(None),
        });
        conn.refresh_leaders().await?;
        Ok(conn)
    }

    /// Makes a control call, failing over to another known node if the one
    /// in use cannot serve it (see `control_plane`).
    pub async fn control_call<T, F, Fut>(&self, rpc: F) -> Result<T>
    where
        F: FnMut(ControlClient<Transport>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.control.call(rpc).await
    }

    /// The control address calls go to first.
    #[cfg(test)]
    pub fn control_addr(&self) -> String {
        self.control.current()
    }

    fn data_channel(&self, addr: &str) -> Result<Transport> {
        let mut channels = self.data.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let channel =
            match &self.target {
                Target::Local(c) => Token::default().wrap(local_channel(c, Plane::Data)),
                Target::Remote(_) => Token::default()
                    .wrap(endpoint(addr, timeout, &Default::default())?.connect_lazy()),
                Target::Secure(_, credentials) => Token::new(credentials)?
                    .wrap(endpoint(addr, timeout, credentials)?.connect_lazy()),
            };
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn data_client_for(&self, addr: &str) -> Result<DataClient<Transport>> {
        Ok(tonic_data_client(self.data_channel(addr)?))
    }

    /// The transport to the node leading `topic`/`partition`. A caller that
    /// sees a request on it fail reports it with [`Connection::leader_failed`].
    pub async fn leader_transport(&self, topic: &str, partition: u32) -> Result<Transport> {
        let addr = self.leader_addr(topic, partition).await?;
        self.data_channel(&addr)
    }

    /// Sends one request to the leader of `topic`/`partition`, learning from
    /// its failure where the leader went.
    pub async fn leader_call<T, F, Fut>(&self, topic: &str, partition: u32, rpc: F) -> Result<T>
    where
        F: FnOnce(DataClient<Transport>) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        self.leader_call_over(topic, partition, |transport| {
            rpc(tonic_data_client(transport))
        })
        .await
    }

    /// [`Connection::leader_call`] for a call made on the transport itself
    /// rather than through tonic's generated client.
    pub async fn leader_call_over<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        rpc: F,
    ) -> Result<T>
    where
        F: FnOnce(Transport) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        rpc(self.leader_transport(topic, partition).await?)
            .await
            .map_err(|status| {
                let error = Error::from_status(&status);
                self.leader_failed(topic, partition, &error);
                error
            })
    }

    /// Learns from a failed request to the leader of `topic`/`partition`:
    /// a NOT_LEADER hint routes its next request to the named node; a lost or
    /// unreachable leader makes its next lookup refresh metadata first.
    pub fn leader_failed(&self, topic: &str, partition: u32, error: &Error) {
        let news = match LeaderNews::of(error) {
            // A hint no channel can be built for is as good as none.
            LeaderNews::MovedTo(addr) if !is_valid_addr(addr) => LeaderNews::Lost,
            news => news,
        };
        if news != LeaderNews::Unchanged {
            tracing::debug!(topic, partition, ?news, %error, "partition leader failed a request");
            self.metadata
                .write()
                .leader_failed(topic, partition, news, Instant::now());
        }
    }

    /// Calls a consumer-group `rpc` on the coordinating node: the one last
    /// known, else any; follows a `not-coordinator` redirect to the address it
    /// names, and moves to another node when one cannot serve.
    pub async fn coordinator_call<T, F, Fut>(&self, mut rpc: F) -> Result<T>
    where
        F: FnMut(DataClient<Transport>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let mut error = None;
        for attempt in 0..COORDINATOR_ATTEMPTS {
            let addrs = self.metadata.read().data_addrs();
            let known = self.coordinator.read().clone();
            let Some(addr) = known.or_else(|| addrs.get(attempt % addrs.len().max(1)).cloned())
            else {
                return Err(Error::Unavailable("the cluster reported no nodes".into()));
            };
            let status = match rpc(self.data_client_for(&addr)?).await {
                Ok(response) => {
                    *self.coordinator.write() = Some(addr);
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let hint = status
                .metadata()
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let redirected = status
                .metadata()
                .get(ERROR_KIND_KEY)
                .is_some_and(|k| k == "not-coordinator");
            if !(redirected || node_cannot_serve(&status)) {
                return Err(Error::from_status(&status));
            }
            tracing::debug!(%addr, %status, "group coordinator moved or unreachable");
            // A redirect names the coordinator; otherwise ask another node,
            // which redirects if it is not the one.
            *self.coordinator.write() = hint.filter(|h| *h != addr);
            error = Some(Error::from_status(&status));
        }
        Err(error.expect("at least one attempt"))
    }

    /// Calls `rpc` on one node's data port, lowest address first, moving to
    /// the next while a node cannot serve it; for requests any node answers
    /// alike (producer ids).
    pub async fn any_node_call<T, F, Fut>(&self, mut rpc: F) -> Result<T>
    where
        F: FnMut(DataClient<Transport>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let addrs = self.metadata.read().data_addrs();
        let mut last = None;
        for addr in &addrs {
            match rpc(self.data_client_for(addr)?).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if node_cannot_serve(&status) => {
                    tracing::debug!(%addr, %status, "node cannot serve; trying the next");
                    last = Some(status);
                }
                Err(status) => return Err(Error::from_status(&status)),
            }
        }
        Err(last.map_or_else(
            || Error::Unavailable("the cluster reported no nodes".into()),
            |status| Error::from_status(&status),
        ))
    }

    async fn leader_addr(&self, topic: &str, partition: u32) -> Result<String> {
        let suspect = self.metadata.write().take_suspect(topic, partition);
        if suspect && let Err(e) = self.refresh_leaders().await {
            // The cached leader is still worth a try: data ports may serve
            // while no control port does.
            tracing::debug!(topic, partition, error = %e, "metadata refresh failed");
        }
        for attempt in 0..2 {
            let found = self.metadata.read().lookup(topic, partition);
            match found {
                Lookup::Leader(addr) => return Ok(addr),
                Lookup::NoSuchPartition { partitions } => {
                    return Err(Error::PartitionNotFound(format!(
                        "topic {topic:?} has no partition {partition} (it has {partitions})"
                    )));
                }
                Lookup::UnknownTopic if attempt == 0 => self.load_topic(topic).await?,
                Lookup::NoLeader if attempt == 0 => self.refresh_leaders().await?,
                Lookup::UnknownTopic | Lookup::NoLeader => {}
            }
        }
        Err(Error::Unavailable(format!(
            "no known leader for {topic}/{partition}"
        )))
    }

    /// Partition count of `topic`, from the cache or a metadata request.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = self.metadata.read().partition_count(topic) {
            return Ok(n);
        }
        self.load_topic(topic).await?;
        self.metadata
            .read()
            .partition_count(topic)
            .ok_or_else(|| Error::TopicNotFound(format!("topic {topic:?} does not exist")))
    }

    /// Reloads every partition's leader, unless that was done less than
    /// `METADATA_REFRESH_INTERVAL_MS` ago: then the last answer stands.
    pub async fn refresh_leaders(&self) -> Result<()> {
        let mut last = self.refreshing.lock().await;
        if let Some(prev) = last.as_ref()
            && prev.finished.elapsed() < Duration::from_millis(METADATA_REFRESH_INTERVAL_MS)
        {
            return prev.outcome.clone();
        }
        let outcome = self.request_metadata(Vec::new()).await;
        *last = Some(LastRefresh {
            finished: Instant::now(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Loads a topic missing from the cache. Not rate-limited (a topic
    /// created a moment ago must be found), but queued with refreshes: one
    /// ahead in the queue may already have loaded it.
    async fn load_topic(&self, topic: &str) -> Result<()> {
        let _queued = self.refreshing.lock().await;
        if self.metadata.read().has_topic(topic) {
            return Ok(());
        }
        self.request_metadata(vec![topic.to_owned()]).await
    }

    /// Asks for metadata of `topics` (all if empty) and takes it in. Callers
    /// hold `refreshing`.
    async fn request_metadata(&self, topics: Vec<String>) -> Result<()> {
        let complete = topics.is_empty();
        let asked = Instant::now();
        let response = self
            .control
            .call(|mut control| {
                let request = MetadataRequest {
                    topics: topics.clone(),
                };
                async move { control.metadata(request).await }
            })
            .await?;
        self.control
            .learn(response.nodes.iter().map(|n| n.control_addr.clone()));
        self.metadata.write().apply(&response, complete, asked);
        Ok(())
    }
}

/// tonic's data client over `transport`, with Strata's message limits.
fn tonic_data_client(transport: Transport) -> DataClient<Transport> {
    DataClient::new(transport)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_BATCH_BYTES + 64 * 1024)
}

#[cfg(test)]
mod tests {
    use strata_broker::{Broker, BrokerConfig, ListenAddrs};
    use strata_proto::v1::ListTopicsRequest;

    use super::*;

    async fn topics(conn: &Connection) -> Result<Vec<String>> {
        let response = conn
            .control_call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await })
            .await?;
        Ok(response.topics.into_iter().map(|t| t.name).collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_calls_move_to_the_next_bootstrap_address_when_the_node_in_use_stops() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Broker::open(BrokerConfig::with_data_dir(dir_a.path()))
            .await
            .unwrap();
        let b = Broker::open(BrokerConfig::with_data_dir(dir_b.path()))
            .await
            .unwrap();
        let on_b = crate::Admin::connect(&b).await.unwrap();
        on_b.create_topic("on-b", crate::NewTopic::new(1))
            .await
            .unwrap();
        let (server_a, server_b) = (
            a.serve(&ListenAddrs::ephemeral()).unwrap(),
            b.serve(&ListenAddrs::ephemeral()).unwrap(),
        );
        let (addr_a, addr_b) = (
            server_a.addrs().control.to_string(),
            server_b.addrs().control.to_string(),
        );
        let conn = Connection::connect(
            Target::Remote(format!("{addr_a},{addr_b}")),
            Duration::from_millis(CONNECT_TIMEOUT_MS),
        )
        .await
        .unwrap();
        assert_eq!(conn.control_addr(), addr_a);
        assert!(topics(&conn).await.unwrap().is_empty());

        server_a.shutdown().await;
        assert_eq!(topics(&conn).await.unwrap(), ["on-b"]);
        assert_eq!(
            conn.control_addr(),
            addr_b,
            "later calls start at the node that answered"
        );
        assert_eq!(
            conn.partition_count("on-b").await.unwrap(),
            1,
            "metadata comes from it too"
        );

        server_b.shutdown().await;
        match topics(&conn).await {
            Err(Error::Unavailable(message)) => {
                assert!(
                    message.contains(&addr_a) && message.contains(&addr_b),
                    "{message}"
                );
            }
            other => panic!("expected every node to be reported, got {other:?}"),
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}
