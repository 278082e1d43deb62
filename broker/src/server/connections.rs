//! The connections a listener accepts: Nagle off, and at most
//! `max_connections` open at once. A connection over the limit is closed as
//! soon as it is accepted, before TLS or HTTP/2 spend anything on it, so a
//! flood of sockets cannot exhaust the node's file descriptors or memory.
//!
//! With a byte rate, each connection reads at most that many bytes per
//! second (a token bucket holding one second's worth): past it the socket
//! is simply not read for a while, so TCP and HTTP/2 flow control slow the
//! sender down. Nothing is refused and nothing is dropped.
//!
//! With authentication on, a connection must make a request the gate admits
//! within the auth deadline, or it is closed: otherwise anonymous sockets
//! that connect and send nothing could hold every slot of a port. The gate
//! marks the connection through the [`ConnInfo`] tonic hands every request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::broker::Broker;

/// Bytes a rate-limited connection waits to have in its bucket before it
/// reads again, so a slow rate means fewer, larger reads, not a busy loop.
const MIN_READ_BYTES: f64 = 1024.0;

/// An accepted connection holding one of its listener's slots until closed.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    rate: Option<ReadRate>,
    admitted: Arc<AtomicBool>,
    /// Until the gate admits a request on this connection.
    auth_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What every request on a connection knows about it (tonic puts it in the
/// request's extensions, inside `TlsConnectInfo` with TLS).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    admitted: Arc<AtomicBool>,
}

impl ConnInfo {
    /// The gate admitted a request on this connection: it may stay open
    /// past the auth deadline.
    pub fn admit(&self) {
        self.admitted.store(true, Ordering::Release);
    }
}

/// A token bucket on the bytes read from one connection.
#[derive(Debug)]
struct ReadRate {
    bytes_per_sec: f64,
    tokens: f64,
    refilled: Instant,
    /// Set while waiting for the bucket to refill.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReadRate {
    fn new(bytes_per_sec: u64) -> ReadRate {
        let rate = bytes_per_sec as f64;
        ReadRate {
            bytes_per_sec: rate,
            tokens: rate,
            refilled: Instant::now(),
            waiting: None,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        self.refilled = now;
    }

    /// Bytes the next read may take, or `Pending` until the bucket refills.
    fn poll_allowance(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        loop {
            if let Some(sleep) = &mut self.waiting {
                ready!(sleep.as_mut().poll(cx));
                self.waiting = None;
            }
            self.refill();
            let wanted = MIN_READ_BYTES.min(self.bytes_per_sec);
            if self.tokens >= wanted {
                return Poll::Ready(self.tokens as usize);
            }
            let wait = (wanted - self.tokens) / self.bytes_per_sec;
            self.waiting = Some(Box::pin(tokio::time::sleep(Duration::from_secs_f64(wait))));
        }
    }
}

/// The connections of `listener`, at most `max` open at once, each reading
/// at most `bytes_per_sec` if given, each closed if the gate has admitted
/// none of its requests after `auth_deadline` (if given).
pub fn limited(
    listener: TcpListener,
    max: usize,
    bytes_per_sec: Option<u64>,
    auth_deadline: Option<Duration>,
    broker: Broker,
    name: &'static str,
) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max));
    TcpListenerStream::new(listener).filter_map(move |conn| {
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                // Without this, small fetch responses waited out the peer's
                // 40 ms delayed ACK (`serve_with_incoming*` ignores the
                // builder's TCP settings).
                if let Err(e) = stream.set_nodelay(true) {
                    return Some(Err(e));
                }
                Some(Ok(Conn {
                    stream,
                    _slot: slot,
                    rate: bytes_per_sec.map(ReadRate::new),
                    admitted: Arc::new(AtomicBool::new(false)),
                    auth_deadline: auth_deadline.map(|after| Box::pin(tokio::time::sleep(after))),
                }))
            }
            Err(_) => {
                broker.metrics().connection_refused();
                tracing::warn!(listener = name, max, peer = ?stream.peer_addr().ok(),
                    "connection refused: listener at --max-connections");
                None
            }
        }
    })
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            admitted: self.admitted.clone(),
        }
    }
}

impl Conn {
    /// An error once the auth deadline passed without an admitted request;
    /// the connection then closes.
    fn poll_auth_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = &mut self.auth_deadline else {
            return Ok(());
        };
        if self.admitted.load(Ordering::Acquire) {
            self.auth_deadline = None;
            return Ok(());
        }
        if deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!(peer = ?self.stream.peer_addr().ok(),
                "closing a connection without an authenticated request");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no authenticated request within the auth deadline",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_auth_deadline(cx)?;
        let Some(rate) = &mut this.rate else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        let allowed = ready!(rate.poll_allowance(cx));
        let mut limited = buf.take(allowed);
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        // SAFETY: the `n` bytes were initialised and filled by the read into
        // `limited`, which borrows the start of `buf`'s unfilled part (the
        // same pattern as `tokio::io::Take`).
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        rate.tokens -= n as f64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
