//! Transport security and access control of a node's network listeners:
//! TLS (`tls`), bearer tokens (`tokens`), grants (`acl`), produce quotas
//! (`quota`), and the layer that applies them to every request (`gate`).
//!
//! All of it is off by default. The in-process listener of an embedded
//! broker never uses any of it: its callers are the process itself.

pub mod acl;
pub mod gate;
pub mod quota;
pub mod tls;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

pub use acl::{Action, Principal};
pub use gate::{Caller, Gate, GateLayer, authorize, authorize_caller, caller, permits, throttle};
pub use tls::{PeerTls, ServerTls, TlsFiles};
pub use tokens::{AuthTable, hash_token};

/// A node's security settings, loaded at start-up.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// TLS on the data and control ports; `None`: plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// Mutual TLS on the peer port and to peers; `None`: plaintext.
    pub peer_tls: Option<Arc<PeerTls>>,
    /// Principals and grants; `None`: no authentication.
    pub auth: Option<Arc<AuthTable>>,
}

impl SecurityConfig {
    /// Reads the TLS files and the auth file, whichever are given.
    pub fn load(
        tls: Option<&TlsFiles>,
        auth_file: Option<&Path>,
    ) -> Result<SecurityConfig, String> {
        let (tls, peer_tls) = match tls {
            Some(files) => tls::load(files)?,
            None => (None, None),
        };
        let auth = auth_file
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
                AuthTable::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
            })
            .transpose()?
            .map(Arc::new);
        Ok(SecurityConfig {
            tls: tls.map(Arc::new),
            peer_tls: peer_tls.map(Arc::new),
            auth,
        })
    }
}
