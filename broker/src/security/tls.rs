//! TLS material of a node, read from PEM files at start-up, and the rustls
//! configurations (through tonic) of its three listeners and of its channels
//! to peers.
//!
//! - data and control ports: the node's certificate; with a client CA, a
//!   client certificate is verified when presented but not required (bearer
//!   tokens remain the way clients authenticate);
//! - peer port: mutual TLS, always: a node presents its certificate and
//!   accepts only peers whose certificate the cluster CA signed. A node
//!   without such a certificate fails the handshake and never reaches Raft.
//!   Turning TLS on for clients turns it on for peers too (with the same
//!   certificate unless a peer one is given); peers alone may use TLS while
//!   clients stay on plaintext (a trusted client network).
//!
//! Files are read once, before any listener starts, so a bad file fails the
//! start with its path, and nothing reads the disk on a connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped (a
/// client that opens a socket and sends nothing holds it no longer).
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Where a node's TLS material lives. Any of the three ports' settings may
/// be given; TLS for clients without mutual TLS between nodes is refused.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM) for the data and control ports.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// CA verifying client certificates on the data and control ports.
    pub client_ca: Option<PathBuf>,
    /// The node's certificate for the peer port (server and client side);
    /// defaults to `cert`.
    pub peer_cert: Option<PathBuf>,
    /// Its private key; defaults to `key`.
    pub peer_key: Option<PathBuf>,
    /// CA of the cluster's node certificates (and nothing else), required
    /// with any TLS; never the same CA as `client_ca`.
    pub peer_ca: Option<PathBuf>,
}

/// A certificate chain and its key, in memory.
#[derive(Clone)]
struct KeyPair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for KeyPair {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPair(..)")
    }
}

impl KeyPair {
    fn load(cert: &Path, key: &Path, what: &str) -> Result<KeyPair, String> {
        Ok(KeyPair {
            cert_pem: read_pem(cert, &format!("{what} certificate"))?,
            key_pem: read_pem(key, &format!("{what} key"))?,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{what} {} is not PEM", path.display()));
    }
    Ok(bytes)
}

/// TLS of the data and control ports.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pair: KeyPair,
    client_ca_pem: Option<Vec<u8>>,
}

/// Mutual TLS of the peer port and of this node's channels to its peers.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pair: KeyPair,
    ca_pem: Vec<u8>,
}

/// Reads and checks the files: a certificate that does not match its key,
/// or a CA that does not parse, fails here, naming the file or the port.
pub fn load(files: &TlsFiles) -> Result<(Option<ServerTls>, Option<PeerTls>), String> {
    let server = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            pair: KeyPair::load(cert, key, "TLS")?,
            client_ca_pem: files
                .client_ca
                .as_deref()
                .map(|p| read_pem(p, "client CA"))
                .transpose()?,
        }),
        (None, None) => None,
        _ => return Err("TLS needs both a certificate and its key".into()),
    };
    let peer_pair = match (&files.peer_cert, &files.peer_key) {
        (Some(cert), Some(key)) => Some(KeyPair::load(cert, key, "peer TLS")?),
        (None, None) => server.as_ref().map(|s| s.pair.clone()),
        _ => return Err("peer TLS needs both a certificate and its key".into()),
    };
    let peer = match peer_pair {
        None => None,
        Some(pair) => {
            // The peer port has no other check: a certificate the peer CA
            // signed *is* a cluster node, free to propose any metadata
            // change and to feed Raft. So that CA must sign nodes only,
            // never the client certificates --tls-client-ca admits.
            let Some(path) = &files.peer_ca else {
                return Err(
                    "TLS on the peer port is mutual: give --peer-ca, the CA that signs \
                            the cluster's node certificates and nothing else"
                        .into(),
                );
            };
            let ca_pem = read_pem(path, "peer CA")?;
            if server
                .as_ref()
                .and_then(|s| s.client_ca_pem.as_ref())
                .is_some_and(|client_ca| *client_ca == ca_pem)
            {
                return Err("--peer-ca is the same CA as --tls-client-ca: every client \
                            certificate would be accepted as a cluster node; sign node \
                            certificates with a CA of their own"
                    .into());
            }
            Some(PeerTls { pair, ca_pem })
        }
    };
    if server.is_none() && files.client_ca.is_some() {
        return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
    }
    if peer.is_none() && files.peer_ca.is_some() {
        return Err("--peer-ca needs a node certificate (--peer-cert and --peer-key, or --tls-cert and --tls-key)".into());
    }
    if let Some(server) = &server {
        Server::builder()
            .tls_config(server.server_config())
            .map_err(|e| format!("TLS settings of the data and control ports: {e}"))?;
    }
    if let Some(peer) = &peer {
        Server::builder()
            .tls_config(peer.server_config())
            .map_err(|e| format!("TLS settings of the peer port: {e}"))?;
    }
    Ok((server, peer))
}

impl ServerTls {
    /// With a client CA, a client certificate is verified when presented but
    /// not required: bearer tokens stay the way clients authenticate.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.pair.identity())
            .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS));
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => config,
        }
    }
}

impl PeerTls {
    /// The peer port: a client certificate signed by the cluster CA is required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.pair.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
            .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS))
    }

    /// How this node dials its peers: it checks their certificate against
    /// the cluster CA and presents its own.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.pair.identity())
            .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS))
    }
}
