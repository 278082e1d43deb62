//! The subcommands of the `strata` binary, one file each.

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod serve;
pub mod status;
pub mod topic;

use clap::Args;

/// Default control address clients bootstrap from.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7401";

/// Options every client command shares.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Control address of any broker.
    #[arg(long, global = true, env = "STRATA_BOOTSTRAP", default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
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
