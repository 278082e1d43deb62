//! In-process serving: the broker's data and control services over the
//! in-memory pipes of `strata_proto::target`, so an embedding application
//! uses the same client API, validation, budgets and error codes as a remote
//! one — only without sockets.
//!
//! Each accepted pipe is served as one HTTP/2 connection. The accept loop
//! holds the broker only weakly and each connection holds it only while it is
//! open, so dropping the application's last `Broker` handle (and its clients)
//! really stops the broker and releases its data directory.

use std::sync::Weak;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use strata_proto::limits::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
};
use strata_proto::target::{LocalListener, Plane};
use strata_proto::v1::NodeInfo;
use tokio::io::DuplexStream;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::broker::{Broker, Inner};

/// What an in-process client is told about this node's addresses.
pub const LOCAL_ADDR: &str = "in-process";

/// Starts serving `listener` for `broker` on the current runtime.
pub(crate) fn serve(broker: &Broker, listener: LocalListener) {
    let LocalListener { data, control } = listener;
    tokio::spawn(accept(broker.downgrade(), data, Plane::Data));
    tokio::spawn(accept(broker.downgrade(), control, Plane::Control));
}

async fn accept(broker: Weak<Inner>, mut incoming: UnboundedReceiver<DuplexStream>, plane: Plane) {
    while let Some(pipe) = incoming.recv().await {
        let Some(broker) = Broker::upgrade(&broker) else {
            return;
        };
        let routes = match plane {
            Plane::Data => super::data_routes(&broker),
            Plane::Control => {
                let node = NodeInfo {
                    node_id: broker.node_id(),
                    data_addr: LOCAL_ADDR.into(),
                    control_addr: LOCAL_ADDR.into(),
                    peer_addr: String::new(),
                };
                super::control_routes(&broker, node, |_| {})
            }
        };
        let mut shutdown = broker.shutdown_signal();
        drop(broker);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
                .max_frame_size(HTTP2_MAX_FRAME_BYTES)
                .serve_connection(TokioIo::new(pipe), TowerToHyperService::new(routes));
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(error = %e, "in-process connection ended");
                },
                _ = shutdown.wait_for(|stopping| *stopping) => {}
            }
        });
    }
}
