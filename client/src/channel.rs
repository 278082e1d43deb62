//! How the client builds gRPC channels: endpoints for network addresses
//! (connect timeout, keepalive, HTTP/2 windows sized to Strata's messages) and
//! channels over in-process pipes for a broker in the same process.
//!
//! Building a channel never sends anything; whether to connect eagerly or
//! lazily is the caller's choice.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use strata_proto::limits::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_MAX_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
};
use strata_proto::target::{LocalConnector, Plane};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// HTTP/2 keepalive, so a dead connection is noticed during long fetches.
const KEEPALIVE_INTERVAL_MS: u64 = 10_000;

fn uri(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// An endpoint for `addr` (`host:port`, with or without `http://`).
pub(crate) fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint> {
    Endpoint::from_shared(uri(addr))
        .map(|e| {
            tune(e.connect_timeout(connect_timeout).tcp_nodelay(true))
                .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| Error::InvalidArgument(format!("bad address {addr:?}: {e}")))
}

/// Whether `addr` is one a channel can be built for.
pub(crate) fn is_valid_addr(addr: &str) -> bool {
    !addr.trim().is_empty() && uri(addr).parse::<Uri>().is_ok()
}

/// HTTP/2 windows and frames sized to Strata's messages (see `limits`).
fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
}

/// A channel to an in-process broker's `plane`; each connection is a new pipe.
pub(crate) fn local_channel(connector: &LocalConnector, plane: Plane) -> Channel {
    let connector = connector.clone();
    tune(Endpoint::from_static("http://in-process")).connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let connected = connector.connect(plane).map(TokioIo::new);
            async move { connected }
        },
    ))
}
