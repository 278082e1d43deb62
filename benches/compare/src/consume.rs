//! The catch-up consumer: one ephemeral pull consumer reads the stream from
//! its first message, in batched pull requests kept ahead of the reader, and
//! verifies every record with `strata bench`'s own verifier (stream
//! sequences contiguous, each producer's sequences dense and in order, the
//! expected count). Messages are not acknowledged one by one (ack policy
//! none), as Strata's catch-up reader commits nothing per record either.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};

use crate::report::Report;
use crate::verify::Verifier;
use crate::{BenchResult, ConsumeArgs, connect, stream_messages};

/// A read stalled this long without a message is a failure (as in
/// `strata bench consume`).
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A JetStream stream is a single log: it is the one "partition" the
/// verifier tracks.
const PARTITION: u32 = 0;

pub async fn run(args: &ConsumeArgs) -> BenchResult<Report> {
    let c = &args.common;
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let js = jetstream::new(connect(&c.server).await?);
    let held = stream_messages(&js, &c.stream).await?;
    if held < c.messages {
        return Err(format!(
            "stream {} holds {held} messages; asked to read {} (produce first, or lower --messages)",
            c.stream, c.messages
        ));
    }
    let stream = js
        .get_stream(&c.stream)
        .await
        .map_err(|e| format!("stream {}: {e}", c.stream))?;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create consumer on {}: {e}", c.stream))?;

    let started = Instant::now();
    let mut messages = reader
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await
        .map_err(|e| format!("pull from {}: {e}", c.stream))?;
    let (mut verifier, mut bytes) = (Verifier::default(), 0u64);
    while verifier.records < c.messages {
        // Most messages are already buffered: take them without arming a
        // timer (as strata bench does; a timer per message is measurable).
        let next = match messages.next().now_or_never() {
            Some(next) => Ok(next),
            None => tokio::time::timeout(STALL_TIMEOUT, messages.next()).await,
        };
        let message = match next {
            Err(_) => {
                return Err(format!(
                    "reading stalled after {} of {} messages",
                    verifier.records, c.messages
                ));
            }
            Ok(None) => return Err("the pull stream ended".into()),
            Ok(Some(Err(e))) => return Err(format!("pull: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let sequence = message
            .info()
            .map_err(|e| format!("message without JetStream metadata: {e}"))?
            .stream_sequence;
        verifier.record(
            PARTITION,
            sequence,
            crate::payload::decode(&message.payload),
        );
        bytes += message.payload.len() as u64;
    }
    let elapsed = started.elapsed();
    verifier
        .finish(Some(c.messages))
        .map_err(|e| format!("verification failed: {e}"))?;

    let mut report = Report::new("consume");
    report.messages = verifier.records;
    report.bytes = bytes;
    report.elapsed = elapsed;
    report.detail("broker", "nats");
    report.detail("consumers", 1);
    report.detail("fetch_batch", args.batch as u64);
    report.detail("verified", true);
    Ok(report)
}
