//! The gRPC services of a node, on three listeners with three runtimes:
//!
//! - data (`Data`): a multi-threaded runtime sized to the machine;
//! - control (`Control`, `grpc.health.v1`, HTTP `/metrics` `/healthz`
//!   `/readyz`): its own single-threaded runtime, so a flood of data cannot
//!   queue control requests behind it;
//! - peer (`Peer`): its own single-threaded runtime.
//!
//! The services are thin: they translate requests, call the `Broker`, and map
//! errors through `status`. The server knows nothing of files or offsets
//! within segments.

pub mod connections;
pub mod control_service;
pub mod data_service;
mod deadline;
mod fetch;
mod fetch_route;
mod grpc_wire;
pub mod http;
pub(crate) mod local;
pub mod peer_service;
mod produce;
mod produce_route;
mod raft_append_route;
pub mod status;

use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use strata_proto::limits::{
    FETCH_MAX_BYTES, HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES,
    HTTP2_STREAM_WINDOW_BYTES, MAX_BATCH_BYTES,
};
use strata_proto::v1::NodeInfo;
use strata_proto::v1::control_server::ControlServer;
use strata_proto::v1::data_server::DataServer;
use strata_proto::v1::peer_server::PeerServer;
use tokio::sync::watch;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::{Server, ServerTlsConfig};

use crate::broker::Broker;
use crate::config::{DATA_MAX_CONCURRENT_STREAMS, ListenAddrs};
use crate::error::{Error, Result};
use crate::security::{Gate, GateLayer};
use control_service::ControlService;
use data_service::DataService;
use peer_service::PeerService;

/// How long a stopping server lets open connections finish before it closes them.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Request bytes the data port decodes per message: a full batch plus room to
/// tell a slightly oversized batch why it is refused (INVALID_ARGUMENT) rather
/// than drop it at the transport.
const DATA_MAX_DECODING_BYTES: usize = MAX_BATCH_BYTES + 1024 * 1024;

/// Response bytes the data port encodes per message: a full fetch response
/// (which may exceed its byte target by one batch) plus framing.
const DATA_MAX_ENCODING_BYTES: usize = FETCH_MAX_BYTES + MAX_BATCH_BYTES + 64 * 1024;

/// HTTP/2 keepalive, so dead peers of long fetch streams are noticed.
const KEEPALIVE_INTERVAL_MS: u64 = 10_000;
const KEEPALIVE_TIMEOUT_MS: u64 = 20_000;

/// The addresses a running server listens on (ports resolved if 0 was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddrs {
    pub data: SocketAddr,
    pub control: SocketAddr,
    pub peer: SocketAddr,
}

/// A running server; `shutdown` stops it.
#[derive(Debug)]
pub struct ServerHandle {
    addrs: BoundAddrs,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::Internal(format!("cannot listen on {what} address {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(listener)
}

fn local(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))
}

/// The data-plane services of `broker`, ready to serve connections.
/// Fetch and ProduceStream are routed to `fetch_route` and `produce_route`
/// ahead of tonic's handlers (see `grpc_wire`).
pub(crate) fn data_routes(broker: &Broker) -> Routes {
    let services = Routes::new(
        DataServer::new(DataService::new(broker.clone()))
            .max_decoding_message_size(DATA_MAX_DECODING_BYTES)
            .max_encoding_message_size(DATA_MAX_ENCODING_BYTES),
    );
    let (b1, b2) = (broker.clone(), broker.clone());
    let fetch = axum::routing::post(move |request| {
        fetch_route::serve(b1, request, DATA_MAX_DECODING_BYTES)
    });
    let produce = axum::routing::post(move |request| async move {
        produce_route::serve(b2, request, DATA_MAX_DECODING_BYTES)
    });
    Routes::from(
        services
            .into_axum_router()
            .route(grpc_wire::FETCH_PATH, fetch)
            .route(grpc_wire::PRODUCE_STREAM_PATH, produce),
    )
}

/// The peer-port services of `broker`; RaftAppend is routed to
/// `raft_append_route` ahead of tonic's handler (see `grpc_wire`).
fn peer_routes(broker: &Broker) -> Routes {
    let peers = PeerService::new(broker.node_id(), broker.raft_groups().clone())
        .with_metadata(broker.metadata_group().cloned());
    let services = Routes::new(
        PeerServer::new(peers.clone())
            .max_decoding_message_size(crate::raft::network::MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::network::MAX_PEER_MESSAGE_BYTES),
    );
    let append =
        axum::routing::post(move |request| raft_append_route::serve(peers.clone(), request));
    Routes::from(
        services
            .into_axum_router()
            .route(grpc_wire::RAFT_APPEND_PATH, append),
    )
}

/// The control-plane services (and HTTP endpoints) of `broker`, describing
/// this node as `node`, plus whatever `extra` adds (health, on the TCP port).
pub(crate) fn control_routes(
    broker: &Broker,
    node: NodeInfo,
    extra: impl FnOnce(&mut RoutesBuilder),
) -> Routes {
    let mut routes = RoutesBuilder::default();
    routes.add_service(ControlServer::new(ControlService::new(
        broker.clone(),
        node,
    )));
    extra(&mut routes);
    Routes::from(
        routes
            .routes()
            .into_axum_router()
            .merge(http::routes(broker.clone())),
    )
}

/// The address other nodes and clients should use for a listener bound to
/// `bound`. A wildcard bind (`0.0.0.0`) names no host: use the host this
/// node has in `--peers` (the name the cluster knows it by), with the bound
/// port.
fn advertised(broker: &Broker, bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let own = broker.config().peers.get(&broker.node_id());
    match own.and_then(|a| a.rsplit_once(':')).map(|(host, _)| host) {
        Some(host) if !host.is_empty() => format!("{host}:{}", bound.port()),
        _ => bound.to_string(),
    }
}

/// Starts the three listeners for `broker`. Binding happens before this
/// returns, so a port conflict is reported here.
pub fn serve(broker: &Broker, addrs: &ListenAddrs) -> Result<ServerHandle> {
    let data = bind(addrs.data, "data")?;
    let control = bind(addrs.control, "control")?;
    let peer = bind(addrs.peer, "peer")?;
    let bound = BoundAddrs {
        data: local(&data)?,
        control: local(&control)?,
        peer: local(&peer)?,
    };
    let advertise = |addr: SocketAddr| advertised(broker, addr);
    let node = NodeInfo {
        node_id: broker.node_id(),
        data_addr: broker
            .config()
            .advertised_data_addr
            .clone()
            .unwrap_or_else(|| advertise(bound.data)),
        control_addr: advertise(bound.control),
        peer_addr: advertise(bound.peer),
    };
    if let Some(metadata) = broker.metadata_group() {
        metadata.register(crate::cluster::metadata::NodeAddrs {
            data: node.data_addr.clone(),
            control: node.control_addr.clone(),
            peer: node.peer_addr.clone(),
        });
    }
    let (stop, stopped) = watch::channel(false);
    let workers = match broker.config().data_worker_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };

    let data_routes = data_routes(broker);
    let (health, health_service) = tonic_health::server::health_reporter();
    let control_routes = control_routes(broker, node, |routes| {
        routes.add_service(health_service);
    });
    let peer_routes = peer_routes(broker);

    // Authentication wraps the data and control services (not the peer
    // port: mutual TLS is how nodes know each other).
    let security = &broker.config().security;
    let (data_routes, control_routes) = match &security.auth {
        Some(table) => {
            let gate = GateLayer(Gate::new(table.clone(), broker.clone()));
            (
                Routes::from(data_routes.into_axum_router().layer(gate.clone())),
                Routes::from(control_routes.into_axum_router().layer(gate)),
            )
        }
        None => (data_routes, control_routes),
    };
    let tls = security.tls.as_ref();
    let peer_tls = security.peer_tls.as_ref();
    let listener = |name, workers, socket, routes, accept_http1, tls| Listener {
        name,
        workers,
        socket,
        routes,
        accept_http1,
        tls,
        max_connections: broker.config().max_connections,
        // Only produce traffic is worth limiting per connection; peers and
        // admin requests are small or trusted.
        connection_bytes_per_sec: (name == "strata-data")
            .then_some(broker.config().connection_max_bytes_per_sec)
            .flatten(),
        // The peer port authenticates by mutual TLS in the handshake.
        auth_deadline: (security.auth.is_some() && name != "strata-peer")
            .then_some(broker.config().auth_deadline),
        broker: broker.clone(),
    };
    let threads = vec![
        spawn_listener(
            listener(
                "strata-data",
                Some(workers),
                data,
                data_routes,
                false,
                tls.map(|t| t.server_config()),
            ),
            stopped.clone(),
        )?,
        spawn_listener(
            listener(
                "strata-control",
                None,
                control,
                control_routes,
                true,
                tls.map(|t| t.server_config()),
            ),
            stopped.clone(),
        )?,
        spawn_listener(
            listener(
                "strata-peer",
                None,
                peer,
                peer_routes,
                false,
                peer_tls.map(|t| t.server_config()),
            ),
            stopped.clone(),
        )?,
    ];

    // Health reflects the broker's state as it changes: from memory, never cached.
    let mut shutdown = broker.shutdown_signal();
    let ready = broker.clone();
    tokio::spawn(async move {
        use tonic_health::ServingStatus;
        // Not serving while recovering; serving once ready; not serving again
        // from the start of shutdown. Always the current state, never cached.
        for service in ["", "strata.v1.Data", "strata.v1.Control"] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        tokio::select! {
            recovered = ready.wait_ready() => if recovered.is_ok() {
                for service in ["", "strata.v1.Data", "strata.v1.Control"] {
                    health.set_service_status(service, ServingStatus::Serving).await;
                }
            },
            _ = shutdown.changed() => {}
        }
        let _ = shutdown.wait_for(|stopping| *stopping).await;
        for service in ["", "strata.v1.Data", "strata.v1.Control"] {
            health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    });
    tracing::info!(data = %bound.data, control = %bound.control, peer = %bound.peer,
        tls = tls.is_some(), peer_tls = peer_tls.is_some(), auth = security.auth.is_some(), "listening");
    Ok(ServerHandle {
        addrs: bound,
        stop,
        threads,
    })
}

/// One listener's settings.
struct Listener {
    name: &'static str,
    /// Worker threads of its runtime; `None`: a single-threaded runtime.
    workers: Option<usize>,
    socket: TcpListener,
    routes: Routes,
    accept_http1: bool,
    tls: Option<ServerTlsConfig>,
    max_connections: usize,
    /// Bytes per second each connection may send us; `None`: unlimited.
    connection_bytes_per_sec: Option<u64>,
    /// Close connections without an admitted request after this long;
    /// `None`: no authentication on this listener.
    auth_deadline: Option<Duration>,
    broker: Broker,
}

/// Runs one tonic server on its own runtime in its own thread.
fn spawn_listener(
    listener: Listener,
    mut stopped: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let Listener {
        name,
        workers,
        socket: listener,
        routes,
        accept_http1,
        tls,
        max_connections,
        connection_bytes_per_sec,
        auth_deadline,
        broker,
    } = listener;
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Internal(format!("TLS settings of {name}: {e}")))?;
    }
    let runtime = match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name(name)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .map_err(|e| Error::Internal(format!("cannot start the {name} runtime: {e}")))?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(name, error = %e, "listener failed"),
                };
                let incoming = connections::limited(
                    listener,
                    max_connections,
                    connection_bytes_per_sec,
                    auth_deadline,
                    broker,
                    name,
                );
                let mut grace = stopped.clone();
                let server = builder
                    .accept_http1(accept_http1)
                    .max_concurrent_streams(DATA_MAX_CONCURRENT_STREAMS)
                    .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
                    .max_frame_size(Some(HTTP2_MAX_FRAME_BYTES))
                    .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
                    .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_TIMEOUT_MS)))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                let deadline = async move {
                    let _ = grace.wait_for(|s| *s).await;
                    tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
                };
                tokio::select! {
                    result = server => if let Err(e) = result {
                        tracing::error!(name, error = %e, "server failed");
                    },
                    () = deadline => tracing::warn!(name, "closing connections still open after the grace period"),
                }
            });
        })
        .map_err(|e| Error::Internal(format!("cannot start the {name} thread: {e}")))
}

impl Drop for ServerHandle {
    /// A dropped handle stops its listeners (without waiting for them).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl ServerHandle {
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Stops accepting connections, lets open ones finish (up to
    /// `SHUTDOWN_GRACE_MS`), and waits for the listener threads to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
