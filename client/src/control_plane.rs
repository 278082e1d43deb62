//! The cluster's control plane as the client reaches it: the control
//! addresses it knows, the node in use, and failover between them.
//!
//! Known addresses are the bootstrap list (in the order given), then every
//! node's control address from metadata responses, so a client bootstrapped
//! from one node can still reach the cluster after that node dies. Bootstrap
//! connects to the first address that answers; an unreachable entry is skipped.
//!
//! A call goes to the node in use. When that node cannot serve it (the
//! connection failed, or the node answered UNAVAILABLE: shutting down,
//! recovering, no quorum), the call moves to the next known address, each at
//! most once per call, and the first node that answers becomes the one in use.
//! A request refused that way never took effect; one whose connection broke
//! mid-flight may have, so a resent create can answer "already exists". That
//! answer reaches the caller as is: nothing here hides or retries it.
//!
//! Invariants: the address list is never empty and the node in use is on it.
//! No lock is held across a call.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use strata_proto::target::{Credentials, Plane, Target};
use strata_proto::v1::control_client::ControlClient;
use tonic::Status;

use crate::channel::{Token, Transport, endpoint, is_valid_addr, local_channel};
use crate::error::{Error, Result, node_cannot_serve, source_chain};

/// Separates the addresses of a bootstrap list (as in Kafka's `bootstrap.servers`).
pub const BOOTSTRAP_SEPARATOR: char = ',';

/// The name the one address of an in-process broker goes by.
const IN_PROCESS_ADDR: &str = "in-process";

/// How channels to a known address are made.
#[derive(Debug)]
enum Route {
    /// Over TCP; connects lazily, giving up on one connect after the timeout.
    Network {
        connect_timeout: Duration,
        credentials: Credentials,
        token: Token,
    },
    /// To the broker in this process; there is only ever one address.
    InProcess,
}

#[derive(Debug)]
struct Channels {
    /// The address calls go to first.
    current: String,
    /// A channel per address tried so far, reused so a node is not dialled anew
    /// on every failover.
    by_addr: HashMap<String, Transport>,
}

#[derive(Debug)]
pub(crate) struct ControlPlane {
    route: Route,
    /// Bootstrap addresses, then learned ones; never empty, no duplicates.
    addrs: RwLock<Vec<String>>,
    channels: Mutex<Channels>,
}

/// The addresses of a bootstrap list, trimmed, in order, without duplicates.
pub(crate) fn parse_bootstrap(list: &str) -> Result<Vec<String>> {
    let mut addrs: Vec<String> = Vec::new();
    for addr in list.split(BOOTSTRAP_SEPARATOR).map(str::trim) {
        if !addr.is_empty() && !addrs.iter().any(|a| a == addr) {
            addrs.push(addr.to_owned());
        }
    }
    if addrs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no broker address in {list:?}"
        )));
    }
    Ok(addrs)
}

/// Whether a control address from metadata names a node a client can dial:
/// a wildcard listen address (`0.0.0.0:7401`) names no host in particular.
fn is_dialable(addr: &str) -> bool {
    is_valid_addr(addr)
        && addr
            .parse::<SocketAddr>()
            .map_or(true, |a| !a.ip().is_unspecified())
}

impl ControlPlane {
    /// Connects to the first address of `target` that answers, in order.
    /// Fails only if none does, naming every address tried and why it failed.
    pub async fn bootstrap(target: &Target, connect_timeout: Duration) -> Result<ControlPlane> {
        let (list, credentials) = match target {
            Target::Local(connector) => {
                // In-process callers are the process itself: no token.
                let channel = Token::default().wrap(local_channel(connector, Plane::Control));
                return Ok(ControlPlane::with_channel(
                    Route::InProcess,
                    vec![IN_PROCESS_ADDR.to_owned()],
                    IN_PROCESS_ADDR.to_owned(),
                    channel,
                ));
            }
            Target::Remote(list) => (list, Credentials::default()),
            Target::Secure(list, credentials) => (list, credentials.clone()),
        };
        let token = Token::new(&credentials)?;
        let addrs = parse_bootstrap(list)?;
        // Every entry must be an address: a typo fails here, not at failover.
        let endpoints = addrs
            .iter()
            .map(|a| endpoint(a, connect_timeout, &credentials))
            .collect::<Result<Vec<_>>>()?;
        let mut failures: Vec<(&str, String)> = Vec::with_capacity(addrs.len());
        for (addr, endpoint) in addrs.iter().zip(endpoints) {
            match endpoint.connect().await {
                Ok(channel) => {
                    for (skipped, why) in &failures {
                        tracing::info!(%skipped, %why, using = %addr, "bootstrap address unreachable");
                    }
                    let current = addr.clone();
                    return Ok(ControlPlane::with_channel(
                        Route::Network {
                            connect_timeout,
                            credentials,
                            token: token.clone(),
                        },
                        addrs,
                        current,
                        token.wrap(channel),
                    ));
                }
                Err(e) => failures.push((addr, source_chain(&e))),
            }
        }
        Err(match failures.as_slice() {
            // One address: the message reads as it always did.
            [(addr, why)] => Error::Connect {
                addr: addr.to_string(),
                message: why.clone(),
            },
            _ => Error::Connect {
                addr: addrs.join(&BOOTSTRAP_SEPARATOR.to_string()),
                message: failures
                    .iter()
                    .map(|(addr, why)| format!("{addr}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }

    fn with_channel(route: Route, addrs: Vec<String>, current: String, channel: Transport) -> Self {
        assert!(addrs.contains(&current), "the node in use is a known one");
        ControlPlane {
            route,
            addrs: RwLock::new(addrs),
            channels: Mutex::new(Channels {
                by_addr: HashMap::from([(current.clone(), channel)]),
                current,
            }),
        }
    }

    /// Adds control addresses reported in metadata to the known ones.
    pub fn learn(&self, learned: impl IntoIterator<Item = String>) {
        if matches!(self.route, Route::InProcess) {
            // The in-process broker is reached through its pipe, whatever
            // network addresses it may also listen on.
            return;
        }
        let mut addrs = self.addrs.write();
        for addr in learned {
            let addr = addr.trim();
            if is_dialable(addr) && !addrs.iter().any(|a| a == addr) {
                tracing::debug!(%addr, "learned a control address");
                addrs.push(addr.to_owned());
            }
        }
    }

    /// The known control addresses, bootstrap list first.
    #[cfg(test)]
    pub fn known(&self) -> Vec<String> {
        self.addrs.read().clone()
    }

    /// The address calls go to first.
    pub fn current(&self) -> String {
        self.channels.lock().current.clone()
    }

    /// Makes one control call, failing over to the other known nodes while
    /// the node asked cannot serve it (see the module docs).
    pub async fn call<T, F, Fut>(&self, mut rpc: F) -> Result<T>
    where
        F: FnMut(ControlClient<Transport>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let (mut addr, mut channel) = {
            let channels = self.channels.lock();
            let current = channels.current.clone();
            let channel = channels
                .by_addr
                .get(&current)
                .expect("the node in use always has a channel")
                .clone();
            (current, channel)
        };
        let mut failures: Vec<(String, String)> = Vec::new();
        loop {
            let status = match rpc(ControlClient::new(channel)).await {
                Ok(response) => {
                    if !failures.is_empty() {
                        tracing::info!(%addr, "control calls fail over to another node");
                        self.channels.lock().current = addr;
                    }
                    return Ok(response.into_inner());
                }
                Err(status) if node_cannot_serve(&status) => status,
                Err(status) => return Err(Error::from_status(&status)),
            };
            tracing::debug!(%addr, %status, "control node cannot serve; trying the next");
            failures.push((addr.clone(), status.message().to_owned()));
            let next = loop {
                let Some(next) = self.next_untried(&addr, &failures) else {
                    return Err(self.hint_tls(all_failed(status, failures)));
                };
                match self.channel(&next) {
                    Ok(channel) => break (next, channel),
                    Err(e) => failures.push((next, e.to_string())),
                }
            };
            (addr, channel) = next;
        }
    }

    /// A plaintext client on a TLS port sees the connection close before any
    /// answer (the broker's TLS layer cannot parse HTTP/2), which the
    /// transport reports as a bare CANCELLED, UNKNOWN or, when the broker's
    /// TLS alert arrives first, INTERNAL ("h2 protocol error"). Say what
    /// likely happened instead.
    fn hint_tls(&self, error: Error) -> Error {
        let plaintext = matches!(&self.route,
            Route::Network { credentials, .. } if credentials.tls_ca_pem.is_none());
        match error {
            Error::Broker {
                code: tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Internal,
                kind,
                message,
            } if plaintext && kind.is_empty() => Error::Connect {
                addr: self.current(),
                message: format!(
                    "{message}: the connection closed without an answer; if the broker \
                     requires TLS, connect with --tls-ca (Credentials::tls_ca_pem)"
                ),
            },
            e => e,
        }
    }

    /// The known address after `after` (wrapping round) not yet in `tried`.
    fn next_untried(&self, after: &str, tried: &[(String, String)]) -> Option<String> {
        let addrs = self.addrs.read();
        let start = addrs.iter().position(|a| a == after).unwrap_or(0);
        (1..=addrs.len())
            .map(|i| &addrs[(start + i) % addrs.len()])
            .find(|a| !tried.iter().any(|(t, _)| t == *a))
            .cloned()
    }

    fn channel(&self, addr: &str) -> Result<Transport> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.by_addr.get(addr) {
            return Ok(channel.clone());
        }
        let channel = match &self.route {
            Route::Network {
                connect_timeout,
                credentials,
                token,
            } => token.wrap(endpoint(addr, *connect_timeout, credentials)?.connect_lazy()),
            Route::InProcess => unreachable!("an in-process control plane has one address"),
        };
        channels.by_addr.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// The error of a call no known node could serve: the node's own answer if
/// there was only one to ask, else every node's, so none is hidden.
fn all_failed(last: Status, failures: Vec<(String, String)>) -> Error {
    if failures.len() == 1 {
        return Error::from_status(&last);
    }
    let each: Vec<String> = failures
        .into_iter()
        .map(|(addr, why)| format!("{addr}: {why}"))
        .collect();
    Error::Unavailable(format!(
        "no control node could serve the request ({})",
        each.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(addrs: &[&str]) -> ControlPlane {
        let channel = endpoint(addrs[0], Duration::from_secs(1), &Credentials::default())
            .expect("valid address")
            .connect_lazy();
        ControlPlane::with_channel(
            Route::Network {
                connect_timeout: Duration::from_secs(1),
                credentials: Credentials::default(),
                token: Token::default(),
            },
            addrs.iter().map(|a| a.to_string()).collect(),
            addrs[0].to_owned(),
            Token::default().wrap(channel),
        )
    }

    #[test]
    fn bootstrap_list_is_split_trimmed_and_deduplicated_in_order() {
        assert_eq!(
            parse_bootstrap(" h1:7401, h2:7401,,h1:7401 ,h3:7401").unwrap(),
            ["h1:7401", "h2:7401", "h3:7401"]
        );
        assert!(matches!(
            parse_bootstrap(" , "),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn learned_addresses_follow_the_bootstrap_list_once_each() {
        let plane = plane(&["127.0.0.1:7401", "127.0.0.1:7402"]);
        plane.learn([
            "127.0.0.1:7402".to_owned(),
            "10.0.0.3:7401".to_owned(),
            "0.0.0.0:7401".to_owned(),
            String::new(),
            "10.0.0.3:7401".to_owned(),
            "node4.example:7401".to_owned(),
        ]);
        assert_eq!(
            plane.known(),
            [
                "127.0.0.1:7401",
                "127.0.0.1:7402",
                "10.0.0.3:7401",
                "node4.example:7401"
            ]
        );
    }

    #[tokio::test]
    async fn failover_order_starts_after_the_failed_node_and_wraps_round() {
        let plane = plane(&["a:1", "b:1", "c:1"]);
        let tried = |addrs: &[&str]| -> Vec<(String, String)> {
            addrs
                .iter()
                .map(|a| (a.to_string(), String::new()))
                .collect()
        };
        assert_eq!(
            plane.next_untried("b:1", &tried(&["b:1"])).as_deref(),
            Some("c:1")
        );
        assert_eq!(
            plane
                .next_untried("c:1", &tried(&["b:1", "c:1"]))
                .as_deref(),
            Some("a:1")
        );
        assert_eq!(
            plane.next_untried("a:1", &tried(&["a:1", "b:1", "c:1"])),
            None
        );
    }
}
