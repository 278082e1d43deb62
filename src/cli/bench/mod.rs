//! `strata bench`: throughput and latency of a running broker, measured
//! through the client crate, with every record read back verified.
//!
//! - `produce`: K producers send N records of B bytes (closed loop, or
//!   open loop at `--rate`); latency is send-to-acknowledgement, measured from
//!   the scheduled send time so a stall is not hidden (coordinated omission).
//! - `consume`: reads N records from the start; verifies them.
//! - `e2e`: producers and consumers at once; latency is produce-to-consume.
//! - `disk` / `tcp`: baselines on this machine — sequential write+fsync of the
//!   same bytes in a directory, and loopback TCP.
//! - `embedded`: a broker opened in this process, the same produce workload
//!   in-process and over loopback gRPC, side by side.
//! - `append`: the broker's own durable-append throughput in this process
//!   (no gRPC, no client): the yardstick for `produce`.

mod append;
mod baseline;
mod consume;
mod e2e;
mod embedded;
mod payload;
mod produce;
mod report;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use strata_client::{Admin, Error as ClientError, NewTopic};

use super::{CliError, CliResult, ClientArgs};
use report::Report;

/// How long `--create` waits for the new topic's partitions to elect leaders.
const LEADER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    Produce,
    Consume,
    E2e,
    Disk,
    Tcp,
    /// The same produce workload in-process and over loopback gRPC.
    Embedded,
    /// The broker's own durable appends, in-process, without gRPC or client.
    Append,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchAcks {
    All,
    Leader,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(value_enum)]
    mode: Mode,
    /// Topic to use (produce, consume, e2e).
    #[arg(long)]
    topic: Option<String>,
    /// Records to send or read.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Record value size in bytes (at least 24: the bench header).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Partitions of the topic when `--create` creates it.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    #[arg(long, value_enum, default_value = "all")]
    acks: BenchAcks,
    /// Open loop: send this many records per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Run for this many seconds (at most `--messages` records).
    #[arg(long)]
    duration: Option<f64>,
    /// Create the topic (with `--partitions`) if it does not exist.
    #[arg(long)]
    create: bool,
    /// Producer batch size in bytes (default: the client's, 1 MiB).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Producer linger in milliseconds (default: the client's, 5 ms).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Linger even when a partition has nothing in flight (Kafka's
    /// `linger.ms`; by default such a batch goes at once).
    #[arg(long)]
    linger_when_idle: bool,
    /// Batches a producer keeps in flight per partition (default: the
    /// client's, 5; 1 waits for each answer before the next batch).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Directory for the disk baseline (default: ./strata-data) and for the
    /// brokers `embedded` and `append` open (default: the temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of text and a progress bar.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

impl BenchArgs {
    fn topic(&self) -> CliResult<&str> {
        self.topic
            .as_deref()
            .ok_or_else(|| CliError("this bench mode needs --topic".into()))
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.duration
            .map(|s| std::time::Instant::now() + Duration::from_secs_f64(s))
    }
}

/// CPU time (user and system) this process has used so far: what a bench
/// run cost its clients (and the broker too, where it runs in process).
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is pointed at and touches
    // nothing else; it is only read if the call succeeded.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A progress bar on a terminal; hidden with `--json` or when piped.
pub fn progress(args: &BenchArgs, total: u64) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {pos}/{len} records [{elapsed_precise}] {per_sec} {wide_bar}",
        )
        .expect("valid template"),
    );
    bar
}

/// A fresh directory for a bench that opens a broker of its own: under
/// `--dir`, else the system's temporary directory. The bench removes it.
fn scratch_dir(args: &BenchArgs, mode: &str) -> CliResult<PathBuf> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("strata-bench-{mode}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

async fn ensure_topic(args: &BenchArgs) -> CliResult {
    if !args.create {
        return Ok(());
    }
    let admin = Admin::connect(args.client.target()?).await?;
    match admin
        .create_topic(args.topic()?, NewTopic::new(args.partitions))
        .await
    {
        Ok(_) | Err(ClientError::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // The clock starts with the first send: time spent electing the new
    // partitions' leaders is not the broker's throughput.
    admin.wait_for_leaders(args.topic()?, LEADER_WAIT).await?;
    Ok(())
}

pub async fn run(args: BenchArgs) -> CliResult {
    if args.size < payload::HEADER_BYTES {
        return Err(CliError(format!(
            "--size must be at least {} bytes",
            payload::HEADER_BYTES
        )));
    }
    if args.producers == 0 || args.consumers == 0 {
        return Err(CliError(
            "--producers and --consumers must be at least 1".into(),
        ));
    }
    let cpu_before = process_cpu();
    let mut report: Report = match args.mode {
        Mode::Produce => {
            ensure_topic(&args).await?;
            produce::run(&args).await?
        }
        Mode::Consume => consume::run(&args).await?,
        Mode::E2e => {
            ensure_topic(&args).await?;
            e2e::run(&args).await?
        }
        Mode::Disk => baseline::disk(&args).await?,
        Mode::Tcp => baseline::tcp(&args).await?,
        Mode::Embedded => embedded::run(&args).await?,
        Mode::Append => append::run(&args).await?,
    };
    report.detail(
        "process_cpu_ms",
        (process_cpu().saturating_sub(cpu_before)).as_millis() as u64,
    );
    if args.json {
        // One object on one line: easy to parse and to collect from scripts.
        println!("{}", report.json());
        Ok(())
    } else {
        report.print();
        Ok(())
    }
}
