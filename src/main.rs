//! `strata`: the broker and its command-line tools (DESIGN.md §3).
//!
//! Every client command takes `--bootstrap host:port` (a control address) and
//! on failure prints one line, `error: ...`, and exits non-zero.

mod allocator;
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{auth, bench, cluster, consume, group, produce, serve, status, topic};

#[derive(Parser)]
#[command(name = "strata", version, about = "Strata: a durable log broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker node.
    Serve(Box<serve::ServeArgs>),
    /// Create, list, describe and delete topics.
    Topic(topic::TopicArgs),
    /// Produce stdin lines as records, one per line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic, one value per line.
    Consume(consume::ConsumeArgs),
    /// List consumer groups, or describe one with its lag.
    Group(group::GroupArgs),
    /// Nodes, leaders, health and per-partition high watermarks.
    Status(status::StatusArgs),
    /// Add or remove cluster nodes.
    Cluster(cluster::ClusterArgs),
    /// Hash bearer tokens for an auth file.
    Auth(auth::AuthArgs),
    /// Measure throughput and latency (produce, consume, e2e) and baselines (disk, tcp).
    Bench(bench::BenchArgs),
}

/// Client commands stay quiet (one line on failure) unless `RUST_LOG` asks
/// for more: `RUST_LOG=strata_client=debug strata produce ...` shows the
/// client's retries, leader moves and reconnects on stderr.
fn client_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        client_logging();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Topic(args) => topic::run(args).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Group(args) => group::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Auth(args) => auth::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
