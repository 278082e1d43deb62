//! A TCP proxy in front of a broker port that can misbehave on command:
//! swallow the broker's responses and then cut the connection (a response
//! lost after the broker acted on the request), or refuse all traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection whose responses are being dropped lives on before
/// the proxy cuts it (time for the broker to act on what it received).
const CUT_AFTER: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Faults {
    /// Responses on open connections are dropped, then those connections cut.
    drop_responses: AtomicBool,
    /// New connections are refused; open ones are cut.
    down: AtomicBool,
    cuts: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
}

impl Proxy {
    /// Listens on an ephemeral port and forwards to `upstream` (which may be
    /// set later with `set_upstream`, for brokers that must know the proxy's
    /// address before they start).
    pub async fn start() -> (Proxy, tokio::sync::watch::Sender<Option<SocketAddr>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let (upstream_tx, upstream_rx) = tokio::sync::watch::channel(None::<SocketAddr>);
        let f = faults.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if f.down.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let Some(upstream) = *upstream_rx.borrow() else {
                    continue;
                };
                tokio::spawn(forward(client, upstream, f.clone()));
            }
        });
        (Proxy { addr, faults }, upstream_tx)
    }

    /// Drop every response on connections open now or opened before
    /// `heal`, cutting each such connection shortly after.
    pub fn drop_responses(&self) {
        self.faults.drop_responses.store(true, Ordering::Release);
    }

    pub fn heal(&self) {
        self.faults.drop_responses.store(false, Ordering::Release);
        self.faults.down.store(false, Ordering::Release);
    }

    pub fn down(&self) {
        self.faults.down.store(true, Ordering::Release);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.faults.cuts.load(Ordering::Acquire)
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_server = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if faults.down.load(Ordering::Acquire)
                        || server_write.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if faults.down.load(Ordering::Acquire) {
                        return;
                    }
                    if faults.drop_responses.load(Ordering::Acquire) {
                        // The broker has acted on the request; the client never
                        // hears of it. Cut the connection once it has settled.
                        tokio::time::sleep(CUT_AFTER).await;
                        faults.cuts.fetch_add(1, Ordering::AcqRel);
                        faults.drop_responses.store(false, Ordering::Release);
                        return;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = to_server => {}
        _ = to_client => {}
    }
}
