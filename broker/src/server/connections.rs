//! The connections a listener accepts: Nagle off, and at most
//! `max_connections` open at once. A connection over the limit is closed as
//! soon as it is accepted, before TLS or HTTP/2 spend anything on it, so a
//! flood of sockets cannot exhaust the node's file descriptors or memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::broker::Broker;

/// An accepted connection holding one of its listener's slots until closed.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The connections of `listener`, at most `max` open at once.
pub fn limited(
    listener: TcpListener,
    max: usize,
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
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
