//! Where a client connects: a broker's control address on the network, or a
//! broker in the same process.
//!
//! In-process connections are gRPC over in-memory pipes: the same services,
//! validation, byte budgets and error codes as over TCP, minus the sockets.
//! The broker hands out a [`LocalConnector`]; each call to `connect` creates a
//! pipe and passes its far end to the broker's in-process listener.

use std::fmt;
use std::io;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// Bytes buffered in each direction of an in-process pipe.
pub const LOCAL_PIPE_BYTES: usize = 1024 * 1024;

/// Which of the broker's planes a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Data,
    Control,
}

/// Opens in-process connections to one broker.
#[derive(Clone)]
pub struct LocalConnector {
    data: mpsc::UnboundedSender<DuplexStream>,
    control: mpsc::UnboundedSender<DuplexStream>,
}

impl fmt::Debug for LocalConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalConnector")
    }
}

/// The broker's side: the pipes clients opened, per plane.
pub struct LocalListener {
    pub data: mpsc::UnboundedReceiver<DuplexStream>,
    pub control: mpsc::UnboundedReceiver<DuplexStream>,
}

/// A connector and the listener it connects to.
pub fn local_pair() -> (LocalConnector, LocalListener) {
    let (data, data_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::unbounded_channel();
    (
        LocalConnector { data, control },
        LocalListener {
            data: data_rx,
            control: control_rx,
        },
    )
}

impl LocalConnector {
    /// A new connection to the broker's `plane`; fails once the broker is gone.
    pub fn connect(&self, plane: Plane) -> io::Result<DuplexStream> {
        let (client, server) = tokio::io::duplex(LOCAL_PIPE_BYTES);
        let sender = match plane {
            Plane::Data => &self.data,
            Plane::Control => &self.control,
        };
        sender.send(server).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the in-process broker has shut down",
            )
        })?;
        Ok(client)
    }
}

/// How a client checks the broker it reaches over the network and proves
/// who it is. The default is plaintext without a token.
#[derive(Clone, Default)]
pub struct Credentials {
    /// CA certificates (PEM) that sign the brokers' certificates; set, every
    /// connection (control and data) uses TLS.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Name the brokers' certificates must carry, if not the host dialled.
    pub tls_domain: Option<String>,
    /// A client certificate (PEM) to present, for brokers that know their
    /// clients by certificate; with `tls_key_pem`.
    pub tls_cert_pem: Option<Vec<u8>>,
    /// The client certificate's private key (PEM).
    pub tls_key_pem: Option<Vec<u8>>,
    /// Bearer token sent with every request.
    pub token: Option<String>,
}

impl fmt::Debug for Credentials {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.tls_ca_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .field("client_certificate", &self.tls_cert_pem.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A broker to connect to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A control address, `host:port` (with or without `http://`).
    Remote(String),
    /// A control address reached with TLS and/or a bearer token.
    Secure(String, Credentials),
    /// A broker in this process.
    Local(LocalConnector),
}

impl Target {
    /// `addrs` (a bootstrap list), reached with `credentials`.
    pub fn secure(addrs: impl Into<String>, credentials: Credentials) -> Target {
        Target::Secure(addrs.into(), credentials)
    }
}

impl From<&str> for Target {
    fn from(addr: &str) -> Self {
        Target::Remote(addr.to_owned())
    }
}

impl From<String> for Target {
    fn from(addr: String) -> Self {
        Target::Remote(addr)
    }
}

impl From<&String> for Target {
    fn from(addr: &String) -> Self {
        Target::Remote(addr.clone())
    }
}

impl From<std::net::SocketAddr> for Target {
    fn from(addr: std::net::SocketAddr) -> Self {
        Target::Remote(addr.to_string())
    }
}

impl From<LocalConnector> for Target {
    fn from(c: LocalConnector) -> Self {
        Target::Local(c)
    }
}

impl From<&LocalConnector> for Target {
    fn from(c: &LocalConnector) -> Self {
        Target::Local(c.clone())
    }
}
