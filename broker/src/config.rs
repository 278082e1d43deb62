//! Everything a node can be configured with, and the documented defaults
//! (DESIGN.md §2, §7). docs/operations.md lists each setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default data directory, relative to the working directory.
pub const DATA_DIR: &str = "./strata-data";

/// Default listener addresses.
pub const DATA_ADDR: &str = "127.0.0.1:7400";
pub const CONTROL_ADDR: &str = "127.0.0.1:7401";
pub const PEER_ADDR: &str = "127.0.0.1:7402";

/// Bytes of produce data the broker holds in flight (received, not yet
/// answered) before it answers RESOURCE_EXHAUSTED.
pub const PRODUCE_BUDGET_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes of fetched data the broker holds for all fetch streams together.
pub const FETCH_BUDGET_BYTES: u64 = 256 * 1024 * 1024;

/// Retry hint sent with RESOURCE_EXHAUSTED when the produce budget is full.
pub const OVERLOAD_RETRY_AFTER_MS: u64 = 50;

/// How long a fetch stream waits at the high watermark before it sends an
/// empty progress message.
pub const FETCH_MAX_WAIT_MS: u64 = 500;

/// Period of background maintenance: retention, checkpoints, group expiry.
pub const MAINTENANCE_INTERVAL_MS: u64 = 5_000;

/// Worker threads of the data-plane runtime (0: one per core).
pub const DATA_WORKER_THREADS: usize = 0;

/// Concurrent HTTP/2 streams per connection on the data port; with the
/// decoding limit this bounds the request bytes one connection can pin.
pub const DATA_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Connections each listener holds open at most; more are closed as soon as
/// they are accepted (counted in `strata_connections_refused_total`).
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a fetch stream may wait for its consumer to take the next
/// response before the broker closes it (slow-loris protection; the client
/// reopens it when it reads again).
pub const FETCH_IDLE_TIMEOUT_MS: u64 = 300_000;

/// With authentication on, how long a data or control connection may stay
/// open without a request the gate admits (anonymous sockets would
/// otherwise hold the port's connection slots).
pub const AUTH_DEADLINE_MS: u64 = 10_000;

/// Consumer group defaults.
pub const GROUP_SESSION_TIMEOUT_MS: u64 = 10_000;
pub const GROUP_MIN_SESSION_TIMEOUT_MS: u64 = 1_000;
pub const GROUP_MAX_SESSION_TIMEOUT_MS: u64 = 300_000;

#[derive(Debug, Clone)]
pub struct ListenAddrs {
    pub data: SocketAddr,
    pub control: SocketAddr,
    pub peer: SocketAddr,
}

impl Default for ListenAddrs {
    fn default() -> Self {
        ListenAddrs {
            data: DATA_ADDR.parse().expect("valid default address"),
            control: CONTROL_ADDR.parse().expect("valid default address"),
            peer: PEER_ADDR.parse().expect("valid default address"),
        }
    }
}

impl ListenAddrs {
    /// Ephemeral ports on loopback, for tests and embedded use.
    pub fn ephemeral() -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        ListenAddrs {
            data: any,
            control: any,
            peer: any,
        }
    }
}

/// Configuration of one node.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub node_id: u32,
    pub produce_budget_bytes: u64,
    pub fetch_budget_bytes: u64,
    pub overload_retry_after: Duration,
    pub fetch_max_wait: Duration,
    pub maintenance_interval: Duration,
    pub data_worker_threads: usize,
    /// Defaults for topics created without explicit settings.
    pub default_segment_bytes: u64,
    pub group_session_timeout: Duration,
    /// Data address given to clients, if not the one listened on (NAT,
    /// proxies, containers).
    pub advertised_data_addr: Option<String>,
    /// Every member of the cluster (this node included) and the peer address
    /// this node reaches it at. Empty or just this node: a single node,
    /// without Raft. More: a cluster, formed from this static list.
    pub peers: BTreeMap<u32, String>,
    /// Join an existing cluster (wait to be added with `cluster add-node`)
    /// instead of forming one from `peers`.
    pub joins: bool,
    /// Open connections per listener (data, control, peer) at most.
    pub max_connections: usize,
    /// Bytes per second each data-port connection may send; `None`:
    /// unlimited (the default). Past it the connection is read more slowly.
    pub connection_max_bytes_per_sec: Option<u64>,
    /// A fetch stream whose consumer takes nothing for this long is closed.
    pub fetch_idle_timeout: Duration,
    /// With authentication on, a data or control connection on which no
    /// request was authenticated within this long of connecting is closed
    /// (open endpoints such as health checks do not count).
    pub auth_deadline: Duration,
    /// TLS and authentication of the network listeners (off by default).
    pub security: crate::security::SecurityConfig,
    /// Record request metrics (on by default; off only to measure their cost).
    pub metrics_enabled: bool,
    /// Fault injection for tests: wait this long before recovering partitions,
    /// so behaviour during recovery can be observed. Never set in production.
    pub debug_recovery_delay: Option<Duration>,
    /// Fault injection for the history checker's own test: replicated
    /// partitions acknowledge appends before they commit. Never set in
    /// production: acknowledged records can be lost.
    pub debug_ack_before_commit: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from(DATA_DIR),
            node_id: 1,
            produce_budget_bytes: PRODUCE_BUDGET_BYTES,
            fetch_budget_bytes: FETCH_BUDGET_BYTES,
            overload_retry_after: Duration::from_millis(OVERLOAD_RETRY_AFTER_MS),
            fetch_max_wait: Duration::from_millis(FETCH_MAX_WAIT_MS),
            maintenance_interval: Duration::from_millis(MAINTENANCE_INTERVAL_MS),
            data_worker_threads: DATA_WORKER_THREADS,
            default_segment_bytes: crate::log::SEGMENT_SIZE_BYTES,
            group_session_timeout: Duration::from_millis(GROUP_SESSION_TIMEOUT_MS),
            advertised_data_addr: None,
            peers: BTreeMap::new(),
            joins: false,
            max_connections: MAX_CONNECTIONS,
            connection_max_bytes_per_sec: None,
            fetch_idle_timeout: Duration::from_millis(FETCH_IDLE_TIMEOUT_MS),
            auth_deadline: Duration::from_millis(AUTH_DEADLINE_MS),
            security: crate::security::SecurityConfig::default(),
            metrics_enabled: true,
            debug_recovery_delay: None,
            debug_ack_before_commit: false,
        }
    }
}

impl BrokerConfig {
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            data_dir: data_dir.into(),
            ..Default::default()
        }
    }

    /// Whether this node is one of several (replicated through Raft).
    pub fn is_clustered(&self) -> bool {
        self.peers.keys().any(|&id| id != self.node_id)
    }
}
