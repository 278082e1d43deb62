//! Connections to a broker: one control channel, one data channel per node
//! (HTTP/2 multiplexes every request to a node over it), and a cache of which
//! node leads which partition.
//!
//! Data channels connect lazily and in the background, so a slow or dead node
//! never blocks requests to other nodes. Each node has a single channel, which
//! bounds concurrent connects; retries above this layer add jittered backoff,
//! so clients never stampede a restarting broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use strata_proto::limits::{
    FETCH_MAX_BYTES, HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_STREAM_WINDOW_BYTES, MAX_BATCH_BYTES,
};
use strata_proto::target::{LocalConnector, Plane, Target};
use strata_proto::v1::MetadataRequest;
use strata_proto::v1::control_client::ControlClient;
use strata_proto::v1::data_client::DataClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// Default time to establish the first connection to the bootstrap address.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// HTTP/2 keepalive, so a dead connection is noticed during long fetches.
const KEEPALIVE_INTERVAL_MS: u64 = 10_000;

/// Largest response a data channel accepts: a full fetch plus one batch.
const MAX_RESPONSE_BYTES: usize = FETCH_MAX_BYTES + MAX_BATCH_BYTES + 64 * 1024;

#[derive(Debug, Default)]
struct Metadata {
    /// Node id → data address.
    nodes: HashMap<u32, String>,
    /// Topic → leader node of each partition.
    topics: HashMap<String, Vec<u32>>,
}

#[derive(Debug)]
pub(crate) struct Connection {
    target: Target,
    control: Channel,
    data: Mutex<HashMap<String, Channel>>,
    metadata: RwLock<Metadata>,
    refreshing: tokio::sync::Mutex<()>,
}

fn uri(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint> {
    Endpoint::from_shared(uri(addr))
        .map(|e| {
            tune(e.connect_timeout(connect_timeout).tcp_nodelay(true))
                .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| Error::InvalidArgument(format!("bad address {addr:?}: {e}")))
}

/// HTTP/2 windows sized to Strata's messages (see `limits`).
fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
}

fn local_channel(connector: &LocalConnector, plane: Plane) -> Channel {
    let connector = connector.clone();
    tune(Endpoint::from_static("http://in-process")).connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let connected = connector.connect(plane).map(TokioIo::new);
            async move { connected }
        },
    ))
}

impl Connection {
    /// Connects to the bootstrap target's control plane (eagerly, so a wrong
    /// address is reported here) and loads cluster metadata.
    pub async fn connect(target: Target, connect_timeout: Duration) -> Result<Arc<Connection>> {
        let control = match &target {
            Target::Remote(addr) => {
                endpoint(addr, connect_timeout)?
                    .connect()
                    .await
                    .map_err(|e| Error::Connect {
                        addr: addr.clone(),
                        message: source_chain(&e),
                    })?
            }
            Target::Local(c) => local_channel(c, Plane::Control),
        };
        let conn = Arc::new(Connection {
            target,
            control,
            data: Mutex::new(HashMap::new()),
            metadata: RwLock::new(Metadata::default()),
            refreshing: tokio::sync::Mutex::new(()),
        });
        conn.refresh(&[]).await?;
        Ok(conn)
    }

    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.control.clone())
    }

    fn data_channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.data.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = match &self.target {
            Target::Local(c) => local_channel(c, Plane::Data),
            Target::Remote(_) => {
                endpoint(addr, Duration::from_millis(CONNECT_TIMEOUT_MS))?.connect_lazy()
            }
        };
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn data_client_for(&self, addr: &str) -> Result<DataClient<Channel>> {
        Ok(DataClient::new(self.data_channel(addr)?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_BATCH_BYTES + 64 * 1024))
    }

    /// A data client for the node leading `topic`/`partition`.
    pub async fn data_client(&self, topic: &str, partition: u32) -> Result<DataClient<Channel>> {
        let addr = self.leader_addr(topic, partition).await?;
        self.data_client_for(&addr)
    }

    /// A data client for any node (producer ids, group coordination).
    pub fn any_data_client(&self) -> Result<DataClient<Channel>> {
        let addr = self
            .metadata
            .read()
            .nodes
            .values()
            .min()
            .cloned()
            .ok_or_else(|| Error::Unavailable("the cluster reported no nodes".into()))?;
        self.data_client_for(&addr)
    }

    async fn leader_addr(&self, topic: &str, partition: u32) -> Result<String> {
        for attempt in 0..2 {
            {
                let md = self.metadata.read();
                if let Some(leaders) = md.topics.get(topic) {
                    let Some(node) = leaders.get(partition as usize) else {
                        return Err(Error::PartitionNotFound(format!(
                            "topic {topic:?} has no partition {partition} (it has {})",
                            leaders.len()
                        )));
                    };
                    if let Some(addr) = md.nodes.get(node) {
                        return Ok(addr.clone());
                    }
                }
            }
            if attempt == 0 {
                self.refresh(&[topic.to_owned()]).await?;
            }
        }
        Err(Error::Unavailable(format!(
            "no known leader for {topic}/{partition}"
        )))
    }

    /// Partition count of `topic`, from the cache or a metadata request.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(leaders) = self.metadata.read().topics.get(topic) {
            return Ok(leaders.len() as u32);
        }
        self.refresh(&[topic.to_owned()]).await?;
        self.metadata
            .read()
            .topics
            .get(topic)
            .map(|l| l.len() as u32)
            .ok_or_else(|| Error::TopicNotFound(format!("topic {topic:?} does not exist")))
    }

    /// Reloads metadata for `topics` (all if empty). Concurrent refreshes
    /// coalesce: callers wait for the one in progress.
    pub async fn refresh(&self, topics: &[String]) -> Result<()> {
        let _one_at_a_time = self.refreshing.lock().await;
        let response = self
            .control()
            .metadata(MetadataRequest {
                topics: topics.to_vec(),
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        let mut md = self.metadata.write();
        for node in response.nodes {
            md.nodes.insert(node.node_id, node.data_addr);
        }
        let mut fresh: HashMap<String, Vec<u32>> = HashMap::new();
        for t in &response.topics {
            fresh.insert(t.topic.clone(), vec![0; t.partitions as usize]);
        }
        for p in response.partitions {
            if let Some(slot) = fresh
                .get_mut(&p.topic)
                .and_then(|l| l.get_mut(p.partition as usize))
            {
                *slot = p.leader;
            }
        }
        if topics.is_empty() {
            md.topics = fresh;
        } else {
            md.topics.extend(fresh);
        }
        Ok(())
    }
}

/// An error with its sources, for messages a person can act on.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
