//! The subcommands of the `strata` binary, one file each.

pub mod auth;
pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod serve;
pub mod status;
pub mod topic;

use std::path::PathBuf;

use clap::Args;
use strata_client::{Credentials, Target};

/// Default control address clients bootstrap from.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7401";

/// Options every client command shares.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Control address of any broker.
    #[arg(long, global = true, env = "STRATA_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
    /// CA certificate (PEM) that signs the brokers' certificates; connects
    /// with TLS.
    #[arg(long, global = true, env = "STRATA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Name the brokers' certificates carry, if not the bootstrap host.
    #[arg(long, global = true, env = "STRATA_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Client certificate (PEM) to present, for brokers that know clients
    /// by certificate (with --tls-key).
    #[arg(long, global = true, env = "STRATA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token for a broker with authentication on (prefer the
    /// environment variable: flags show in process lists).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// The brokers to reach, with the TLS and token settings given.
    pub fn target(&self) -> CliResult<Target> {
        if self.tls_ca.is_none()
            && self.token.is_none()
            && self.tls_domain.is_none()
            && self.tls_cert.is_none()
        {
            return Ok(Target::Remote(self.bootstrap.clone()));
        }
        let read = |path: &Option<PathBuf>, flag: &str| {
            path.as_ref()
                .map(|path| {
                    std::fs::read(path).map_err(|e| {
                        CliError(format!("cannot read {flag} {}: {e}", path.display()))
                    })
                })
                .transpose()
        };
        let tls_ca_pem = read(&self.tls_ca, "--tls-ca")?;
        if (self.tls_domain.is_some() || self.tls_cert.is_some()) && tls_ca_pem.is_none() {
            return Err(CliError(
                "--tls-domain and --tls-cert need --tls-ca (TLS is on only with a CA)".into(),
            ));
        }
        Ok(Target::secure(
            self.bootstrap.clone(),
            Credentials {
                tls_ca_pem,
                tls_domain: self.tls_domain.clone(),
                tls_cert_pem: read(&self.tls_cert, "--tls-cert")?,
                tls_key_pem: read(&self.tls_key, "--tls-key")?,
                token: self.token.clone(),
            },
        ))
    }
}

/// The CLI's error: one line for the user.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<strata_client::Error> for CliError {
    fn from(e: strata_client::Error) -> Self {
        CliError(e.to_string())
    }
}

impl From<strata_broker::Error> for CliError {
    fn from(e: strata_broker::Error) -> Self {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Prints `value` as one JSON document on stdout.
pub fn print_json(value: &serde_json::Value) -> CliResult {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| CliError(e.to_string()))?
    );
    Ok(())
}
