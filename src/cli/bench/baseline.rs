//! Baselines measured on the same machine, to state results as fractions of
//! what the hardware can do: sequential write+fsync of the same bytes (the
//! disk's limit for durable writes) and loopback TCP (the network path).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BenchArgs;
use super::report::{Report, record};
use crate::cli::{CliError, CliResult};

/// Bytes written per fsync in the disk baseline (a producer batch).
const DISK_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes per write in the TCP baseline.
const TCP_CHUNK_BYTES: usize = 256 * 1024;

/// Sequential write + fsync of `messages × size` bytes, one fsync per
/// `--batch-size` (default 1 MiB) chunk; latency is per fsync.
pub async fn disk(args: &BenchArgs) -> CliResult<Report> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(strata_broker::config::DATA_DIR));
    let chunk = args.batch_size.unwrap_or(DISK_CHUNK_BYTES);
    let total = args.messages * args.size as u64;
    let size = args.size as u64;
    let report = tokio::task::spawn_blocking(move || -> std::io::Result<Report> {
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("bench-baseline-{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&path)?;
        let buf = vec![0x5au8; chunk];
        let mut report = Report::new("disk");
        let started = Instant::now();
        let mut written = 0u64;
        while written < total {
            let n = chunk.min((total - written) as usize);
            let t = Instant::now();
            file.write_all(&buf[..n])?;
            file.sync_data()?;
            record(&mut report.latency, t.elapsed());
            written += n as u64;
        }
        report.elapsed = started.elapsed();
        drop(file);
        std::fs::remove_file(&path)?;
        report.bytes = written;
        report.messages = total / size;
        report.detail("chunk_bytes", chunk as u64);
        report.detail("dir", dir.display().to_string());
        Ok(report)
    })
    .await
    .map_err(|e| CliError(e.to_string()))?
    .map_err(|e| CliError(format!("disk baseline: {e}")))?;
    Ok(report)
}

/// Streams `messages × size` bytes over `--producers` loopback TCP
/// connections to a receiver that discards them.
pub async fn tcp(args: &BenchArgs) -> CliResult<Report> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = args.producers;
    let total = args.messages * args.size as u64;
    let per_connection = total / connections as u64;
    let receiver = tokio::spawn(async move {
        let mut readers = Vec::new();
        for _ in 0..connections {
            let (mut socket, _) = listener.accept().await?;
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; TCP_CHUNK_BYTES];
                let mut got = 0u64;
                loop {
                    let n = socket.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<u64, std::io::Error>(got);
                    }
                    got += n as u64;
                }
            }));
        }
        let mut got = 0;
        for r in readers {
            got += r.await.map_err(std::io::Error::other)??;
        }
        Ok::<u64, std::io::Error>(got)
    });
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            let buf = vec![0x5au8; TCP_CHUNK_BYTES];
            let mut sent = 0u64;
            while sent < per_connection {
                let n = TCP_CHUNK_BYTES.min((per_connection - sent) as usize);
                socket.write_all(&buf[..n]).await?;
                sent += n as u64;
            }
            socket.shutdown().await?;
            Ok::<(), std::io::Error>(())
        }));
    }
    for s in senders {
        s.await.map_err(|e| CliError(e.to_string()))??;
    }
    let received = receiver.await.map_err(|e| CliError(e.to_string()))??;
    let mut report = Report::new("tcp");
    report.elapsed = started.elapsed().max(Duration::from_nanos(1));
    report.bytes = received;
    report.messages = received / args.size as u64;
    report.detail("connections", connections as u64);
    Ok(report)
}
