//! `nats-bench`: the `strata bench` produce and catch-up consume workload,
//! run against NATS JetStream so benches/compare.sh can put the two brokers
//! side by side on one machine in one run.
//!
//! The record format, the verification and the JSON report are not copies:
//! they are Strata's own `src/cli/bench/{payload,verify,report}.rs`, compiled
//! into this binary, so both sides send the same bytes, reject the same
//! anomalies and print the same fields. If those files change shape, this
//! driver stops compiling rather than drifting apart from `strata bench`.
//!
//! What maps to what: a Strata topic is one JetStream stream (file storage,
//! one replica) holding one subject; a Strata `acks=all` delivery is a
//! JetStream publish ack; a Strata offset is a stream sequence.

#[path = "../../../src/cli/bench/payload.rs"]
mod payload;
#[path = "../../../src/cli/bench/report.rs"]
mod report;
#[path = "../../../src/cli/bench/verify.rs"]
mod verify;

mod consume;
mod produce;

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use clap::{Args, Parser, Subcommand};

/// Publish acks outstanding per producer unless `--window` says otherwise:
/// enough that a producer never waits a round trip per message, and no more,
/// since beyond it only latency grew (the sweep in docs/benchmarks.md,
/// "Against another broker"). benches/compare.sh uses the same default.
const DEFAULT_ACK_WINDOW: usize = 256;

/// Messages asked for per pull request by the catch-up consumer.
const DEFAULT_FETCH_BATCH: usize = 1024;

/// A stream API call (create, delete, info) slower than this is a failure.
const API_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "strata bench's produce/consume workload against NATS JetStream")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// K producers publish N messages of B bytes, each publish's JetStream
    /// ack awaited, with at most `--window` acks outstanding per producer.
    Produce(ProduceArgs),
    /// One pull consumer reads the whole stream from the start and verifies
    /// count, stream-sequence contiguity and per-producer order.
    Consume(ConsumeArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// Stream name; its one subject has the same name.
    #[arg(long)]
    stream: String,
    /// Messages in total.
    #[arg(long)]
    messages: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Message size in bytes (at least 24: the bench header).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Publish acks outstanding per producer.
    #[arg(long, default_value_t = DEFAULT_ACK_WINDOW)]
    window: usize,
    /// Delete the stream if it exists and create it fresh (file storage, one
    /// replica).
    #[arg(long)]
    create: bool,
}

#[derive(Args, Clone)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Messages asked for per pull request.
    #[arg(long, default_value_t = DEFAULT_FETCH_BATCH)]
    batch: usize,
}

type BenchResult<T> = Result<T, String>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, outcome) = match cli.mode {
        Mode::Produce(args) => (args.common.json, produce::run(&args).await),
        Mode::Consume(args) => (args.common.json, consume::run(&args).await),
    };
    match outcome {
        Ok(report) if json => {
            println!("{}", report.json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nats-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(server: &str) -> BenchResult<async_nats::Client> {
    async_nats::connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))
}

/// A fresh stream named `name` with one subject of the same name: file
/// storage, one replica, no limits (the server's defaults for zero).
async fn recreate_stream(js: &jetstream::Context, name: &str) -> BenchResult<()> {
    // Absent is the usual case; any other failure shows up in create below.
    let _ = tokio::time::timeout(API_TIMEOUT, js.delete_stream(name)).await;
    let config = stream::Config {
        name: name.to_owned(),
        subjects: vec![name.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    tokio::time::timeout(API_TIMEOUT, js.create_stream(config))
        .await
        .map_err(|_| format!("creating stream {name} timed out"))?
        .map_err(|e| format!("create stream {name}: {e}"))?;
    Ok(())
}

/// Messages the stream holds now.
async fn stream_messages(js: &jetstream::Context, name: &str) -> BenchResult<u64> {
    let info = tokio::time::timeout(API_TIMEOUT, async {
        js.get_stream(name)
            .await
            .map_err(|e| format!("stream {name}: {e}"))?
            .get_info()
            .await
            .map_err(|e| format!("stream {name} info: {e}"))
    })
    .await
    .map_err(|_| format!("stream {name} info timed out"))??;
    Ok(info.state.messages)
}
