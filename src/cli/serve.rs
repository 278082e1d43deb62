//! `strata serve`: runs one node until SIGTERM or Ctrl-C, then shuts down
//! cleanly: stops accepting work, finishes in-flight appends, flushes, writes
//! each partition's clean-shutdown marker, and exits 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use strata_broker::config::{CONTROL_ADDR, DATA_ADDR, DATA_DIR, PEER_ADDR};
use strata_broker::log::storage::{Faults, FaultyStorage, FileStorage, Storage};
use strata_broker::security::{SecurityConfig, TlsFiles};
use strata_broker::{Broker, BrokerConfig, ListenAddrs};

use super::{CliError, CliResult};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Directory holding topics, offsets and metadata [default: ./strata-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the data port (produce, fetch) [default: 127.0.0.1:7400].
    #[arg(long)]
    data_addr: Option<SocketAddr>,
    /// Address of the control port (admin, health, metrics) [default: 127.0.0.1:7401].
    #[arg(long)]
    control_addr: Option<SocketAddr>,
    /// Address of the peer port (traffic between nodes) [default: 127.0.0.1:7402].
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// This node's id [default: 1].
    #[arg(long)]
    node_id: Option<u32>,
    /// Data address to tell clients, if not --data-addr (NAT, proxies).
    #[arg(long)]
    advertised_data_addr: Option<String>,
    /// Cluster members and their peer addresses, `1=host:7402,2=host:7402,...`,
    /// this node included; the same list on every node forms a Raft cluster.
    #[arg(long)]
    peers: Option<String>,
    /// Join a running cluster (whose members are in --peers) instead of
    /// forming one; an admin then runs `strata cluster add-node`.
    #[arg(long)]
    join: bool,
    /// A TOML file with any of the settings above (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bytes of produce data in flight before producers get RESOURCE_EXHAUSTED [default: 256 MiB].
    #[arg(long)]
    produce_budget_bytes: Option<u64>,
    /// Bytes of fetched data held for all consumers together [default: 256 MiB].
    #[arg(long)]
    fetch_budget_bytes: Option<u64>,
    /// How often retention, checkpoints and consumer-group checks run [default: 5000].
    #[arg(long)]
    maintenance_interval_ms: Option<u64>,
    /// TLS certificate (PEM) of this node; with --tls-key, turns TLS on for
    /// all three ports (mutual TLS on the peer port).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) verifying client certificates on the data and control ports
    /// (optional for clients); never the same CA as --peer-ca.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// CA (PEM) that signs the cluster's node certificates and nothing else;
    /// peers must present one on the peer port (required with TLS).
    #[arg(long)]
    peer_ca: Option<PathBuf>,
    /// Certificate (PEM) for the peer port, if not --tls-cert; alone (with
    /// --peer-key and --peer-ca) it turns on mutual TLS between nodes only.
    #[arg(long, requires = "peer_key")]
    peer_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert.
    #[arg(long, requires = "peer_cert")]
    peer_key: Option<PathBuf>,
    /// Principals, token hashes and grants (TOML); turns authentication on
    /// for the data and control ports.
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Open connections per listener at most [default: 4096].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Bytes per second each data-port connection may send (read more
    /// slowly past it; nothing is refused) [default: unlimited].
    #[arg(long)]
    connection_max_bytes_per_sec: Option<u64>,
    /// Close a fetch stream whose consumer reads nothing for this long [default: 300000].
    #[arg(long)]
    fetch_idle_timeout_ms: Option<u64>,
    /// With --auth-file: close a data or control connection that has made no
    /// authenticated request for this long after connecting [default: 10000].
    #[arg(long)]
    auth_deadline_ms: Option<u64>,
    /// Fault injection for tests: delay partition recovery by this long.
    #[arg(long, hide = true)]
    debug_recovery_delay_ms: Option<u64>,
    /// Fault injection for tests: acknowledge replicated appends before they
    /// commit (breaks acks=all; proves the history checker catches it).
    #[arg(long, hide = true)]
    debug_ack_before_commit: bool,
    /// Fault injection for tests: the disk fills up (writes fail with ENOSPC)
    /// once this many more bytes have been written through the log.
    #[arg(long, hide = true)]
    debug_disk_space_bytes: Option<u64>,
    /// Turn off request metrics (to measure what they cost).
    #[arg(long, hide = true)]
    no_metrics: bool,
    /// Log line format; filter with RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// The `--config` file: the same settings as the flags, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    data_addr: Option<SocketAddr>,
    control_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    node_id: Option<u32>,
    peers: Option<String>,
    produce_budget_bytes: Option<u64>,
    fetch_budget_bytes: Option<u64>,
    advertised_data_addr: Option<String>,
    maintenance_interval_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    peer_cert: Option<PathBuf>,
    peer_key: Option<PathBuf>,
    auth_file: Option<PathBuf>,
    max_connections: Option<usize>,
    connection_max_bytes_per_sec: Option<u64>,
    fetch_idle_timeout_ms: Option<u64>,
    auth_deadline_ms: Option<u64>,
}

/// Log filter without RUST_LOG: openraft reports every vote and heartbeat
/// decision at info, which would drown the broker's own lines.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses `--peers` into every member and its peer address; the list must
/// name this node (every node gets the same list).
fn parse_peers(peers: &str, node_id: u32) -> CliResult<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for entry in peers.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('=').ok_or_else(|| {
            CliError(format!(
                "bad --peers entry {entry:?}: expected id=host:port"
            ))
        })?;
        let id: u32 = id
            .parse()
            .map_err(|_| CliError(format!("bad node id in --peers entry {entry:?}")))?;
        if out.insert(id, addr.to_owned()).is_some() {
            return Err(CliError(format!("--peers names node {id} twice")));
        }
    }
    if !out.is_empty() && !out.contains_key(&node_id) {
        return Err(CliError(format!(
            "--peers does not name this node ({node_id}); give every node the same list, itself included"
        )));
    }
    Ok(out)
}

pub async fn run(args: ServeArgs) -> CliResult {
    init_logging(args.log_format);
    let file = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError(format!("cannot read config {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| CliError(format!("config {}: {}", path.display(), e.message())))?
        }
    };
    let parse = |a: &str| a.parse::<SocketAddr>().expect("valid default address");
    // Read once, before anything listens: a bad file fails the start.
    let tls = TlsFiles {
        cert: args.tls_cert.or(file.tls_cert),
        key: args.tls_key.or(file.tls_key),
        client_ca: args.tls_client_ca.or(file.tls_client_ca),
        peer_cert: args.peer_cert.or(file.peer_cert),
        peer_key: args.peer_key.or(file.peer_key),
        peer_ca: args.peer_ca.or(file.peer_ca),
    };
    let any_tls = [
        &tls.cert,
        &tls.key,
        &tls.client_ca,
        &tls.peer_cert,
        &tls.peer_key,
        &tls.peer_ca,
    ]
    .iter()
    .any(|f| f.is_some());
    let tls = any_tls.then_some(tls);
    let auth_file = args.auth_file.or(file.auth_file);
    let security = SecurityConfig::load(tls.as_ref(), auth_file.as_deref()).map_err(CliError)?;
    let max_connections = args.max_connections.or(file.max_connections);
    if max_connections == Some(0) {
        return Err(CliError("--max-connections must be at least 1".into()));
    }
    let connection_max_bytes_per_sec = args
        .connection_max_bytes_per_sec
        .or(file.connection_max_bytes_per_sec);
    if connection_max_bytes_per_sec == Some(0) {
        return Err(CliError(
            "--connection-max-bytes-per-sec must be positive (leave it out for no limit)".into(),
        ));
    }
    let fetch_idle_timeout_ms = args.fetch_idle_timeout_ms.or(file.fetch_idle_timeout_ms);
    if fetch_idle_timeout_ms == Some(0) {
        return Err(CliError("--fetch-idle-timeout-ms must be positive".into()));
    }
    let auth_deadline_ms = args.auth_deadline_ms.or(file.auth_deadline_ms);
    if auth_deadline_ms == Some(0) {
        return Err(CliError("--auth-deadline-ms must be positive".into()));
    }
    let node_id = args.node_id.or(file.node_id).unwrap_or(1);
    // 0 stands for "no node" where leaders are reported (no leader known).
    if node_id == 0 {
        return Err(CliError("--node-id must be at least 1".into()));
    }
    let defaults = BrokerConfig::default();
    let config = BrokerConfig {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DATA_DIR)),
        node_id,
        produce_budget_bytes: args
            .produce_budget_bytes
            .or(file.produce_budget_bytes)
            .unwrap_or(defaults.produce_budget_bytes),
        fetch_budget_bytes: args
            .fetch_budget_bytes
            .or(file.fetch_budget_bytes)
            .unwrap_or(defaults.fetch_budget_bytes),
        advertised_data_addr: args.advertised_data_addr.or(file.advertised_data_addr),
        debug_recovery_delay: args
            .debug_recovery_delay_ms
            .map(std::time::Duration::from_millis),
        metrics_enabled: !args.no_metrics,
        debug_ack_before_commit: args.debug_ack_before_commit,
        maintenance_interval: args
            .maintenance_interval_ms
            .or(file.maintenance_interval_ms)
            .map_or(
                defaults.maintenance_interval,
                std::time::Duration::from_millis,
            ),
        max_connections: max_connections.unwrap_or(defaults.max_connections),
        connection_max_bytes_per_sec,
        fetch_idle_timeout: fetch_idle_timeout_ms.map_or(
            defaults.fetch_idle_timeout,
            std::time::Duration::from_millis,
        ),
        auth_deadline: auth_deadline_ms
            .map_or(defaults.auth_deadline, std::time::Duration::from_millis),
        security,
        ..defaults
    };
    let addrs = ListenAddrs {
        data: args
            .data_addr
            .or(file.data_addr)
            .unwrap_or_else(|| parse(DATA_ADDR)),
        control: args
            .control_addr
            .or(file.control_addr)
            .unwrap_or_else(|| parse(CONTROL_ADDR)),
        peer: args
            .peer_addr
            .or(file.peer_addr)
            .unwrap_or_else(|| parse(PEER_ADDR)),
    };
    let peers = match args.peers.or(file.peers) {
        Some(peers) => parse_peers(&peers, node_id)?,
        None => BTreeMap::new(),
    };
    // In a cluster the peer port takes metadata changes and Raft traffic
    // from any node it trusts; without mutual TLS it trusts every
    // connection, and access control on the other ports would be for show.
    if config.security.auth.is_some() && peers.len() > 1 && config.security.peer_tls.is_none() {
        return Err(CliError(
            "--auth-file in a cluster needs mutual TLS on the peer port (--peer-cert, \
             --peer-key, --peer-ca): otherwise anyone who reaches the peer port can \
             change the cluster without a token"
                .into(),
        ));
    }
    let config = BrokerConfig {
        peers,
        joins: args.join,
        ..config
    };
    let storage: Arc<dyn Storage> = match args.debug_disk_space_bytes {
        None => Arc::new(FileStorage),
        Some(bytes) => {
            tracing::error!(
                bytes,
                "fault injection on: the disk fills up after this many bytes"
            );
            let faulty = FaultyStorage::new();
            faulty.set(Faults {
                space_left_bytes: Some(bytes),
                ..Faults::default()
            });
            Arc::new(faulty)
        }
    };
    // Listen first, recover after: health and readiness are observable while
    // partitions recover.
    let broker = Broker::start_with_storage(config, storage).await?;
    let server = broker.serve(&addrs)?;
    let bound = server.addrs();
    let addrs_line = format!(
        "node={node_id} data={} control={} peer={}",
        bound.data, bound.control, bound.peer
    );
    // Machine-readable lines on stdout, so scripts and tests can use port 0:
    // "listening" once bound, "serving" once recovered and ready.
    println!("strata listening {addrs_line}");
    tokio::select! {
        ready = broker.wait_ready() => ready?,
        signal = wait_for_signal() => {
            signal?;
            tracing::info!("stopped during recovery");
            server.shutdown().await;
            return Ok(());
        }
    }
    println!("strata serving {addrs_line}");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let closed = broker.shutdown().await;
    server.shutdown().await;
    closed?;
    Ok(())
}

async fn wait_for_signal() -> CliResult {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(|e| CliError(format!("cannot watch Ctrl-C: {e}")))?,
    }
    Ok(())
}
