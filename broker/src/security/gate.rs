//! The door of the data and control ports when authentication is on: a tower
//! layer that authenticates every request before any handler runs, and the
//! one table of what each RPC requires.
//!
//! A request passes in three steps:
//! 1. `rule` (by gRPC path): health checks and the plain HTTP endpoints are
//!    open; everything else needs a known principal, so *no* RPC is served
//!    without a valid token (a method missing from the table needs admin).
//!    A principal is known by its bearer token, or else by the subject CN of
//!    a client certificate that TLS verified against `--tls-client-ca`. A
//!    token that is sent wins: a wrong token is refused, never ignored.
//! 2. The layer checks admin-only RPCs itself and attaches the [`Caller`] to
//!    the request.
//! 3. RPCs whose resource is in the message body (topics, groups) are
//!    checked by the handler, right after decoding, with [`authorize`]; a
//!    produce also passes the principal's quota with [`throttle`].
//!
//! Denials answer UNAUTHENTICATED or PERMISSION_DENIED, are counted in
//! `strata_auth_denied_total{reason}` and logged with the principal, the RPC
//! and the resource — never the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tonic::transport::server::TlsConnectInfo;
use tonic::{Request, Status};
use tower::{Layer, Service};

use super::acl::{Action, Principal};
use super::quota::Quotas;
use super::tokens::AuthTable;
use crate::broker::Broker;
use crate::error::Error;
use crate::metrics::DenyReason;
use crate::server::connections::ConnInfo;
use crate::server::status::to_status;

/// The scheme of the `authorization` header a client sends its token in.
const BEARER_PREFIX: &str = "Bearer ";

/// What an RPC needs before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Served to anyone: health checks, `/healthz`, `/readyz`, `/metrics`.
    Open,
    /// Any known principal (reads of cluster metadata every client needs).
    Authenticated,
    /// An admin principal.
    Admin,
    /// A known principal, then a per-topic or per-group check in the handler.
    Resource,
}

/// The table: every RPC of the data and control services and what it needs.
pub fn rule(path: &str) -> Rule {
    if path.starts_with("/grpc.health.v1.Health/") {
        return Rule::Open;
    }
    match path {
        "/metrics" | "/healthz" | "/readyz" => Rule::Open,
        "/strata.v1.Data/Produce"
        | "/strata.v1.Data/ProduceStream"
        | "/strata.v1.Data/Fetch"
        | "/strata.v1.Data/ListOffsets"
        | "/strata.v1.Data/Heartbeat"
        | "/strata.v1.Data/LeaveGroup"
        | "/strata.v1.Data/CommitOffsets"
        | "/strata.v1.Data/FetchOffsets" => Rule::Resource,
        "/strata.v1.Data/InitProducer"
        | "/strata.v1.Control/ListTopics"
        | "/strata.v1.Control/DescribeTopic"
        | "/strata.v1.Control/Metadata"
        | "/strata.v1.Control/ClusterStatus"
        | "/strata.v1.Control/ListGroups"
        | "/strata.v1.Control/DescribeGroup" => Rule::Authenticated,
        "/strata.v1.Control/CreateTopic"
        | "/strata.v1.Control/DeleteTopic"
        | "/strata.v1.Control/AddNode"
        | "/strata.v1.Control/RemoveNode" => Rule::Admin,
        // Deny by default: a method added without a rule needs admin.
        _ => Rule::Admin,
    }
}

/// Authentication state shared by the listeners of a node.
#[derive(Debug)]
pub struct Gate {
    table: Arc<AuthTable>,
    quotas: Quotas,
    broker: Broker,
    refusal_log: LogLimiter,
}

/// Least time between two log lines about refused requests.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// At most one log line per reason per [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct LogLimiter {
    /// Per reason: when its last line was logged, and what was dropped since.
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// `Some(dropped since the last line)` if a line about `reason` may be
    /// logged now.
    fn admit(&self, reason: &'static str) -> Option<u64> {
        let mut state = self.state.lock();
        let now = Instant::now();
        match state.get_mut(reason) {
            Some((last, dropped)) if now.duration_since(*last) < REFUSAL_LOG_INTERVAL => {
                *dropped += 1;
                None
            }
            Some((last, dropped)) => {
                *last = now;
                Some(std::mem::take(dropped))
            }
            None => {
                state.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// The authenticated caller of one request, attached to it by the layer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    gate: Arc<Gate>,
}

impl Gate {
    pub fn new(table: Arc<AuthTable>, broker: Broker) -> Arc<Gate> {
        Arc::new(Gate {
            quotas: Quotas::new(&table),
            table,
            broker,
            refusal_log: LogLimiter::default(),
        })
    }

    fn refuse(&self, reason: DenyReason, error: Error, rpc: &str) -> Status {
        self.broker.metrics().auth_denied(reason);
        // Every refusal is counted; a client looping bad requests gets one
        // line per interval, with how many were not logged.
        if let Some(suppressed) = self.refusal_log.admit(reason.label()) {
            tracing::warn!(rpc, reason = reason.label(), error = %error, suppressed,
                "request refused (`suppressed`: refusals since the last line, not logged)");
        }
        to_status(&error)
    }

    /// Steps 1 and 2 for one request: `Ok(None)` for an open endpoint.
    fn admit<B>(self: &Arc<Gate>, request: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let path = request.uri().path();
        let rule = rule(path);
        if rule == Rule::Open {
            return Ok(None);
        }
        // A header that is sent must be a bearer token: anything else is
        // refused, never taken as no token (which would let a client
        // certificate authenticate a request that said something else).
        let token = match request.headers().get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => match value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix(BEARER_PREFIX))
            {
                Some(token) => Some(token.trim()),
                None => {
                    return Err(self.refuse(
                        DenyReason::Unauthenticated,
                        Error::Unauthenticated(
                            "the authorization header is not `Bearer <token>`".into(),
                        ),
                        path,
                    ));
                }
            },
        };
        let certified =
            || certificate_name(request).and_then(|name| self.table.by_certificate_name(&name));
        let principal = match token {
            None => match certified() {
                Some(principal) => principal,
                None => {
                    return Err(self.refuse(
                        DenyReason::Unauthenticated,
                        Error::Unauthenticated(
                            "this broker requires a bearer token (--token or STRATA_TOKEN) \
                             or a client certificate it knows"
                                .into(),
                        ),
                        path,
                    ));
                }
            },
            Some(token) => self.table.authenticate(token).ok_or_else(|| {
                self.refuse(
                    DenyReason::Unauthenticated,
                    Error::Unauthenticated("the bearer token is not valid".into()),
                    path,
                )
            })?,
        };
        if rule == Rule::Admin && !principal.allows(Action::Admin, "") {
            return Err(self.refuse(
                DenyReason::PermissionDenied,
                Error::PermissionDenied {
                    principal: principal.name.clone(),
                    action: Action::Admin.name(),
                    resource: format!("the cluster ({})", rpc_name(path)),
                },
                path,
            ));
        }
        Ok(Some(Caller {
            principal,
            gate: self.clone(),
        }))
    }
}

/// The subject CN of the client certificate TLS verified for this
/// connection, if any. Only a verified chain reaches the extensions: rustls
/// refuses the handshake for a certificate the client CA did not sign.
fn certificate_name<B>(request: &http::Request<B>) -> Option<String> {
    let info = request.extensions().get::<TlsConnectInfo<ConnInfo>>()?;
    let certs = info.peer_certs()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_owned())
}

/// Tells the connection `request` came on that the gate admitted a request
/// on it (see the auth deadline in `server::connections`).
fn mark_admitted<B>(request: &http::Request<B>) {
    let extensions = request.extensions();
    if let Some(info) = extensions.get::<ConnInfo>() {
        info.admit();
    } else if let Some(info) = extensions.get::<TlsConnectInfo<ConnInfo>>() {
        info.get_ref().admit();
    }
}

fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Step 3: whether the caller of `request` may do `action` on each of
/// `resources`. Without a caller (authentication off, or the in-process
/// listener) everything is allowed.
/// Whether the request's caller may do `action` on `resource` (always, with
/// authentication off): for answers that leave out what the caller may not
/// see rather than refusing the whole request.
pub fn permits<T>(request: &Request<T>) -> impl Fn(Action, &str) -> bool + use<T> {
    let principal = request
        .extensions()
        .get::<Caller>()
        .map(|c| c.principal.clone());
    move |action, resource| {
        principal
            .as_ref()
            .is_none_or(|p| p.allows(action, resource))
    }
}

pub fn authorize<'a, T>(
    request: &Request<T>,
    action: Action,
    resources: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    authorize_caller(caller(request).as_ref(), action, resources)
}

/// The caller the layer attached to `request`; `None` with authentication
/// off. For streams, whose messages are checked one by one after the
/// request itself is gone.
pub fn caller<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

/// [`authorize`] for a caller taken from its request with [`caller`].
pub fn authorize_caller<'a>(
    caller: Option<&Caller>,
    action: Action,
    resources: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    let Some(caller) = caller else {
        return Ok(());
    };
    for resource in resources {
        if !caller.principal.allows(action, resource) {
            let kind = match action {
                Action::Group => "group",
                _ => "topic",
            };
            return Err(caller.gate.refuse(
                DenyReason::PermissionDenied,
                Error::PermissionDenied {
                    principal: caller.principal.name.clone(),
                    action: action.name(),
                    resource: format!("{kind} {resource:?}"),
                },
                action.name(),
            ));
        }
    }
    Ok(())
}

/// Takes `bytes` from the caller's produce quota, or refuses with
/// RESOURCE_EXHAUSTED and the time until the quota allows more.
/// The caller comes from its request by [`caller`].
pub fn throttle(caller: Option<&Caller>, bytes: u64) -> Result<(), Error> {
    let Some(caller) = caller else {
        return Ok(());
    };
    caller
        .gate
        .quotas
        .admit(&caller.principal.name, bytes)
        .map_err(|retry_after| {
            caller.gate.broker.metrics().quota_throttled(retry_after);
            Error::Overloaded {
                what: "produce quota",
                retry_after,
            }
        })
}

/// The layer applying a [`Gate`] to every request of a listener.
#[derive(Debug, Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            gate: self.0.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GateService<S> {
    gate: Arc<Gate>,
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GateService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.gate.admit(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    // Only an authenticated request keeps a connection past
                    // the auth deadline: an open endpoint (a health check)
                    // would let anyone hold a slot.
                    mark_admitted(&request);
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
