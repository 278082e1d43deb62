//! `strata auth hash-token`: turns a token (read from stdin, so it stays out
//! of shell history and process lists) into the hash an auth file stores.

use std::io::Read;

use clap::{Args, Subcommand};
use strata_broker::security::hash_token;

use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Read a token on stdin (one line) and print its SHA-256 for `token_sha256`.
    HashToken,
}

pub fn run(args: AuthArgs) -> CliResult {
    match args.command {
        AuthCommand::HashToken => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            let token = input.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                return Err(CliError("no token on stdin".into()));
            }
            println!("{}", hash_token(token));
            Ok(())
        }
    }
}
