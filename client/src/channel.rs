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
use strata_proto::target::{Credentials, LocalConnector, Plane};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::error::{Error, Result};

/// HTTP/2 keepalive, so a dead connection is noticed during long fetches.
const KEEPALIVE_INTERVAL_MS: u64 = 10_000;

/// How long a TLS handshake with a broker may take.
const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

fn uri(addr: &str, tls: bool) -> String {
    let host = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"));
    match host {
        Some(host) if tls => format!("https://{host}"),
        Some(_) => addr.to_owned(),
        None if tls => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// An endpoint for `addr` (`host:port`, with or without a scheme): TLS when
/// `credentials` name a CA, plaintext otherwise.
pub(crate) fn endpoint(
    addr: &str,
    connect_timeout: Duration,
    credentials: &Credentials,
) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(uri(addr, credentials.tls_ca_pem.is_some()))
        .map(|e| {
            tune(e.connect_timeout(connect_timeout).tcp_nodelay(true))
                .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| Error::InvalidArgument(format!("bad address {addr:?}: {e}")))?;
    let Some(ca) = &credentials.tls_ca_pem else {
        return Ok(endpoint);
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS));
    if let Some(domain) = &credentials.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    match (&credentials.tls_cert_pem, &credentials.tls_key_pem) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidArgument(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| Error::InvalidArgument(format!("TLS settings for {addr:?}: {e}")))
}

/// A channel with the caller's bearer token on every request.
pub(crate) type Transport = InterceptedService<Channel, Token>;

/// Adds `authorization: Bearer <token>` to each request, if there is a token.
#[derive(Clone, Default)]
pub(crate) struct Token(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(<redacted>)"
        } else {
            "Token(None)"
        })
    }
}

impl Token {
    pub(crate) fn new(credentials: &Credentials) -> Result<Token> {
        credentials
            .token
            .as_deref()
            .map(|t| {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {}", t.trim()).parse().map_err(|_| {
                        Error::InvalidArgument(
                            "the token must be printable ASCII without line breaks".into(),
                        )
                    })?;
                // Keeps the token out of HPACK's table and HTTP/2 dumps.
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()
            .map(Token)
    }

    pub(crate) fn wrap(&self, channel: Channel) -> Transport {
        InterceptedService::new(channel, self.clone())
    }
}

impl Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Whether `addr` is one a channel can be built for.
pub(crate) fn is_valid_addr(addr: &str) -> bool {
    !addr.trim().is_empty() && uri(addr, false).parse::<Uri>().is_ok()
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
