//! The consumer's fetch loop: resolves where each assigned partition starts,
//! keeps one server-streaming fetch open per partition, decodes what arrives
//! and hands it to the consumer's stream through a bounded channel (the
//! consumer's memory bound; a full channel pauses reading, and HTTP/2 flow
//! control then pauses the broker).
//!
//! Any change of assignment, seek or pause restarts the loop from the
//! consumer's positions; fetched records from before the change are dropped
//! by their epoch. A failure restarts it after a backoff; a failure of one
//! partition's stream (including the broker ending it) is first reported to
//! the connection, so the restart reaches that partition's new leader.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_proto::batch::{Batches, Records};
use strata_proto::grpc_wire::FETCH_PATH;
use strata_proto::v1::{FetchPosition, FetchRequest, FetchResponse, OffsetSpec};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, StreamMap};
use tonic::Code;

use super::{ConsumerConfig, Fetched, OffsetReset, Shared, StartFrom, committed, list_offset};
use crate::connection::{Connection, MAX_RESPONSE_BYTES};
use crate::error::{Error, Result};
use crate::record::{ConsumerRecord, TopicPartition};
use crate::retry::Backoff;
use crate::wire_call;

/// One partition's fetch responses, ending in an error if the broker ends it.
type FetchStream = wire_call::Responses<FetchResponse>;

/// Why the streams were torn down.
enum Restart {
    /// The consumer's state changed: restart at once.
    Changed,
    /// An error: restart after a backoff.
    Failed(Option<Error>),
    /// The consumer's stream is gone.
    Stop,
}

pub(crate) async fn run(
    conn: Arc<Connection>,
    shared: Arc<Shared>,
    config: ConsumerConfig,
    tx: mpsc::Sender<Result<Fetched>>,
) {
    let mut backoff = Backoff::default();
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.state.lock().closed || tx.is_closed() {
            return;
        }
        let outcome = match resolve_positions(&conn, &shared, &config).await {
            Err(e) => Restart::Failed(Some(e)),
            Ok(()) => fetch(&conn, &shared, &config, &tx, changed.as_mut()).await,
        };
        match outcome {
            Restart::Changed => backoff.reset(),
            Restart::Stop => return,
            Restart::Failed(error) => {
                if let Some(e) = error {
                    tracing::debug!(error = %e, "fetch failed; retrying");
                    // Errors a retry cannot fix are the application's to see.
                    if !e.is_retriable() && tx.send(Err(e.clone())).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next(None)) => {}
                    _ = changed => {}
                }
            }
        }
    }
}

/// Gives every assigned partition without a position one: its committed
/// offset, or the log start or end as configured.
async fn resolve_positions(
    conn: &Connection,
    shared: &Shared,
    config: &ConsumerConfig,
) -> Result<()> {
    let unresolved: Vec<TopicPartition> = {
        let st = shared.state.lock();
        st.partitions
            .iter()
            .filter(|(_, p)| p.position.is_none())
            .map(|(tp, _)| tp.clone())
            .collect()
    };
    if unresolved.is_empty() {
        return Ok(());
    }
    let stored = match (&config.group, config.start) {
        (Some(group), StartFrom::Committed) => committed(conn, group, &unresolved).await?,
        _ => BTreeMap::new(),
    };
    for tp in unresolved {
        let offset = match stored.get(&tp) {
            Some(&offset) => offset,
            None => {
                let spec = match (config.start, config.reset) {
                    (StartFrom::Earliest, _) | (StartFrom::Committed, OffsetReset::Earliest) => {
                        OffsetSpec::Earliest
                    }
                    (StartFrom::Latest, _) | (StartFrom::Committed, OffsetReset::Latest) => {
                        OffsetSpec::Latest
                    }
                };
                list_offset(conn, &tp, spec, 0).await?
            }
        };
        let mut st = shared.state.lock();
        if let Some(ps) = st.partitions.get_mut(&tp)
            && ps.position.is_none()
        {
            ps.position = Some(offset);
            ps.committed = stored.get(&tp).copied();
        }
    }
    Ok(())
}

/// Moves a partition whose position fell out of the log to the reset point.
async fn reset_position(
    conn: &Connection,
    shared: &Shared,
    config: &ConsumerConfig,
    tp: &TopicPartition,
) -> Result<()> {
    let spec = match config.reset {
        OffsetReset::Earliest => OffsetSpec::Earliest,
        OffsetReset::Latest => OffsetSpec::Latest,
    };
    let offset = list_offset(conn, tp, spec, 0).await?;
    let mut st = shared.state.lock();
    if let Some(ps) = st.partitions.get_mut(tp) {
        tracing::warn!(partition = %tp, from = ?ps.position, to = offset, "position out of range; reset");
        ps.position = Some(offset);
        ps.epoch += 1;
    }
    shared.bump(&mut st);
    Ok(())
}

async fn fetch(
    conn: &Connection,
    shared: &Shared,
    config: &ConsumerConfig,
    tx: &mpsc::Sender<Result<Fetched>>,
    mut changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
) -> Restart {
    let work: Vec<(TopicPartition, u64, u64)> = {
        let st = shared.state.lock();
        st.partitions
            .iter()
            .filter(|(_, p)| !p.paused)
            .filter_map(|(tp, p)| p.position.map(|pos| (tp.clone(), pos, p.epoch)))
            .collect()
    };
    if work.is_empty() {
        changed.await;
        return Restart::Changed;
    }
    let mut streams: StreamMap<(TopicPartition, u64), FetchStream> = StreamMap::new();
    for (tp, offset, epoch) in work {
        let request = FetchRequest {
            positions: vec![FetchPosition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
            }],
            max_bytes: config.fetch_max_bytes,
            max_wait_ms: 0,
        };
        let opened = conn.leader_call_over(&tp.topic, tp.partition, |transport| async move {
            wire_call::server_streaming(transport, FETCH_PATH, &request, MAX_RESPONSE_BYTES).await
        });
        match opened.await {
            Ok(stream) => {
                // A stream the broker ends without an error (it is shutting
                // down) must not silently stop this partition: its end is
                // reported like a lost leader.
                let ended = tonic::Status::unavailable(format!("the fetch stream of {tp} ended"));
                let stream = stream.chain(tokio_stream::once(Err(ended)));
                streams.insert((tp, epoch), Box::pin(stream));
            }
            Err(Error::OffsetOutOfRange(_)) => {
                return match reset_position(conn, shared, config, &tp).await {
                    Ok(()) => Restart::Changed,
                    Err(e) => Restart::Failed(Some(e)),
                };
            }
            Err(e) => return Restart::Failed(Some(e)),
        }
    }
    loop {
        let item = tokio::select! {
            _ = changed.as_mut() => return Restart::Changed,
            item = streams.next() => item,
        };
        let ((tp, epoch), response) = match item {
            None => return Restart::Failed(None),
            Some(((tp, epoch), Ok(response))) => ((tp, epoch), response),
            Some(((tp, _), Err(status))) => {
                let error = Error::from(status);
                conn.leader_failed(&tp.topic, tp.partition, &error);
                return Restart::Failed(Some(error));
            }
        };
        if let Some(error) = response.error {
            if error.code == Code::OutOfRange as i32 {
                return match reset_position(conn, shared, config, &tp).await {
                    Ok(()) => Restart::Changed,
                    Err(e) => Restart::Failed(Some(e)),
                };
            }
            let error = Error::from_partition_error(error.code, &error.kind, error.message);
            conn.leader_failed(&tp.topic, tp.partition, &error);
            return Restart::Failed(Some(error));
        }
        shared.note_high_watermark(&tp, response.high_watermark);
        if response.records.is_empty() {
            continue;
        }
        let fetched = decode(&tp, epoch, response.records);
        let failed = fetched.is_err();
        tokio::select! {
            sent = tx.send(fetched) => if sent.is_err() { return Restart::Stop },
            _ = changed.as_mut() => return Restart::Changed,
        }
        if failed {
            return Restart::Failed(None);
        }
    }
}

fn decode(tp: &TopicPartition, epoch: u64, bytes: bytes::Bytes) -> Result<Fetched> {
    let topic: Arc<str> = Arc::from(tp.topic.as_str());
    let mut records = Vec::new();
    for batch in Batches::new(bytes) {
        let (header, batch) = batch.map_err(|e| Error::Corrupt(format!("{tp}: {e}")))?;
        if header.is_control() {
            continue;
        }
        // Room for the batch's records at once, not by doubling (a copy of
        // the list each time).
        records.reserve(header.record_count as usize);
        for item in Records::new(batch).map_err(|e| Error::Corrupt(format!("{tp}: {e}")))? {
            let (offset, r) = item.map_err(|e| Error::Corrupt(format!("{tp}: {e}")))?;
            records.push(ConsumerRecord {
                topic: topic.clone(),
                partition: tp.partition,
                offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers,
            });
        }
    }
    Ok(Fetched {
        tp: tp.clone(),
        epoch,
        records,
    })
}
