//! Connection hardening below gRPC: the listen socket, the accept loop (a cap on
//! open connections, backoff on EMFILE), a deadline for each new connection to
//! finish TLS and send the HTTP/2 preface, and the HTTP/2 limits handed to hyper.
//!
//! Every accepted connection holds a slot of the listener's cap until it closes,
//! and is watched for the RST_STREAM and GOAWAY frames the server sends, so that
//! resets provoked by a client show in the metrics.
//!
//! Here the socket, the accept loop and the caps; `conn` (a served connection and
//! its frames), `tls` (the acceptor and its settings).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics;

mod conn;
mod tls;

pub use conn::*;
pub use tls::*;

/// The client connection preface of HTTP/2 (RFC 9113, 3.4): the first bytes of every connection.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The limits that protect the server from its clients (each a `serve` flag).
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may hold open at once.
    pub max_concurrent_streams: u32,
    /// Resets the server may be made to send on one connection (protocol errors of the
    /// client, CVE-2025-8671) before it answers GOAWAY ENHANCE_YOUR_CALM.
    pub max_local_error_resets: usize,
    /// Longest time from a request's headers to its response's headers: a unary RPC
    /// whole, or a streaming RPC's start (its stream then lives on, kept by pings);
    /// zero turns it off.
    pub request_timeout: Duration,
    /// An HTTP/2 PING after this long without a frame from the client (zero: never).
    pub keepalive_interval: Duration,
    /// A connection whose client does not answer a PING within this is closed.
    pub keepalive_timeout: Duration,
    /// A new connection must finish TLS and send the HTTP/2 preface within this.
    pub handshake_timeout: Duration,
    /// Open connections at most (further ones are closed at once); kept below the
    /// file descriptor limit at start.
    pub max_connections: usize,
    /// The listen backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            max_concurrent_streams: 128,
            max_local_error_resets: 1024,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            listen_backlog: 1024,
        }
    }
}

/// Binds a listen socket with `backlog` (the standard library and tokio use 128).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The file descriptor limit, as found and as raised at start.
#[derive(Clone, Copy, Debug)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising worked).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, and says what it was and is.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(before);
    Some(FdLimit { before, soft, hard })
}

/// Descriptors kept free for everything that is not a client connection: the
/// store, the audit log, the database pool, provider calls, metrics scrapes.
pub fn reserved_fds(database_connections: usize) -> u64 {
    128 + database_connections as u64
}

/// The connection cap under `limit`: `wanted`, lowered so that a full server still
/// has [`reserved_fds`] descriptors to spare (and at least 8 connections).
pub fn connection_cap(wanted: usize, limit: Option<FdLimit>, reserved: u64) -> usize {
    match limit {
        Some(l) => {
            let room = l.soft.saturating_sub(reserved).max(8);
            wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => wanted,
    }
}

/// How one listener accepts: its name (for metrics and logs), cap and deadline.
#[derive(Clone, Debug)]
pub struct Listening {
    /// `grpc` or `health`.
    pub name: &'static str,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections one peer (an IPv4 address, an IPv6 /64) may hold at most,
    /// so that one peer cannot hold the whole cap; zero: no cap per peer.
    pub max_per_peer: usize,
    /// Time to finish TLS and send the HTTP/2 preface.
    pub handshake_timeout: Duration,
}

/// Accepts plaintext connections on `listener`: the stream of connections that sent
/// the HTTP/2 preface in time, for tonic's `serve_with_incoming_shutdown`.
///
/// The accept loop stops, closing the listen socket, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    listening: Listening,
) -> ReceiverStream<io::Result<Conn<TcpStream>>> {
    spawn_accept(listener, listening, |stream| async move { Ok(stream) })
}

/// Like [`incoming`], with a TLS handshake first (inside the same deadline).
pub fn incoming_tls(
    listener: TcpListener,
    listening: Listening,
    acceptor: tokio_rustls::TlsAcceptor,
) -> ReceiverStream<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>> {
    spawn_accept(listener, listening, move |stream| acceptor.accept(stream))
}

fn spawn_accept<IO, H, F>(
    listener: TcpListener,
    listening: Listening,
    handshake: H,
) -> ReceiverStream<io::Result<Conn<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let handshake = Arc::new(handshake);
    let name = listening.name;
    let deadline = listening.handshake_timeout;
    let closed = {
        let tx = tx.clone();
        async move { tx.closed().await }
    };
    tokio::spawn(accept(
        listener,
        listening,
        closed,
        move |stream, peer, slot| {
            let handshake = Arc::clone(&handshake);
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = tokio::time::timeout(deadline, async {
                    let mut io = handshake(stream).await?;
                    let mut preface = [0u8; PREFACE.len()];
                    io.read_exact(&mut preface).await?;
                    Ok::<_, io::Error>((io, preface))
                })
                .await;
                let reason = match opened {
                    Ok(Ok((io, preface))) if &preface == PREFACE => {
                        let _ = tx.send(Ok(Conn::new(io, slot))).await;
                        return;
                    }
                    Ok(Ok(_)) => "not_http2",
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %peer, error = %e, "connection closed during its handshake");
                        "handshake_failed"
                    }
                    Err(_) => "handshake_timeout",
                };
                metrics::connection_refused(name, reason);
            });
        },
    ));
    ReceiverStream::new(rx)
}

/// Accept errors that concern one connection only (it went away before it was
/// accepted): retried at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A warning at most every ten seconds, saying how many were held back meanwhile.
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Throttled {
            last: None,
            held: 0,
        }
    }

    /// How many occurrences to report now (this one included), or `None` to hold it back.
    fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held) + 1)
    }
}

/// Something connections are accepted from (a listen socket; a fake in tests).
pub trait Listen: Send + Sync + 'static {
    /// The next connection and its peer.
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Listen for TcpListener {
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// The accept loop of every listener, until `stop`: each connection gets a slot
/// under the cap and goes to `serve`; over the cap it is closed at once. Accept
/// errors such as EMFILE are followed by a short, growing pause (accepting again
/// at once would fail again, at 100 % of a core) and a throttled warning.
pub async fn accept<L: Listen>(
    listener: L,
    listening: Listening,
    stop: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let slots = Arc::new(Semaphore::new(listening.max_connections));
    let per_peer = Arc::new(PerPeer::default());
    let mut peer_warning = Throttled::new();
    let name = listening.name;
    let mut backoff = FIRST_BACKOFF;
    let mut accept_warning = Throttled::new();
    let mut full_warning = Throttled::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = FIRST_BACKOFF;
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                metrics::accept_error(name);
                if let Some(count) = accept_warning.due() {
                    tracing::warn!(listener = name, error = %e, count, retry_in = ?backoff, "cannot accept connections");
                }
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let peer_hold = match PerPeer::take(&per_peer, peer, listening.max_per_peer) {
            Ok(hold) => hold,
            Err(held) => {
                drop(stream);
                metrics::connection_refused(name, "peer_limit");
                if let Some(count) = peer_warning.due() {
                    tracing::warn!(
                        listener = name,
                        peer = %crate::refusals::PeerKey::of(Some(peer)),
                        held,
                        max_per_peer = listening.max_per_peer,
                        refused = count,
                        "a peer holds the most connections one peer may: its new ones are closed at once"
                    );
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            metrics::connection_refused(name, "limit");
            if let Some(count) = full_warning.due() {
                tracing::warn!(
                    listener = name,
                    max_connections = listening.max_connections,
                    refused = count,
                    "connection limit reached: new connections are closed at once"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        serve(stream, peer, Slot::new(name, permit, peer_hold));
    }
}

/// Open connections per peer, for a listener with a cap per peer.
#[derive(Default)]
struct PerPeer {
    held: std::sync::Mutex<std::collections::HashMap<crate::refusals::PeerKey, usize>>,
}

/// A connection's place under its peer's cap; freed on drop.
struct PeerHold {
    table: Arc<PerPeer>,
    peer: crate::refusals::PeerKey,
}

impl PerPeer {
    /// A place for one more connection of `peer`, or how many it holds already.
    fn take(table: &Arc<PerPeer>, peer: SocketAddr, max: usize) -> Result<Option<PeerHold>, usize> {
        if max == 0 {
            return Ok(None);
        }
        let key = crate::refusals::PeerKey::of(Some(peer));
        let mut held = table
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = held.entry(key).or_default();
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(Some(PeerHold {
            table: Arc::clone(table),
            peer: key,
        }))
    }
}

impl Drop for PeerHold {
    fn drop(&mut self) {
        let mut held = self
            .table
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// A connection's place under its listener's cap (and its peer's), and in the
/// open-connections gauge.
pub struct Slot {
    listener: &'static str,
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerHold>,
}

impl Slot {
    fn new(listener: &'static str, permit: OwnedSemaphorePermit, peer: Option<PeerHold>) -> Self {
        metrics::connection_opened(listener);
        Slot {
            listener,
            _permit: permit,
            _peer: peer,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::connection_closed(self.listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, 0, 0, 0, 0, 1]);
        f.extend(payload);
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        // SETTINGS, DATA, RST_STREAM (REFUSED_STREAM), GOAWAY (ENHANCE_YOUR_CALM), an empty SETTINGS ack.
        let mut bytes = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x0, &[RST_STREAM; 40]));
        bytes.extend(frame(RST_STREAM, &7u32.to_be_bytes()));
        let mut goaway = 5u32.to_be_bytes().to_vec();
        goaway.extend(0xbu32.to_be_bytes());
        goaway.extend(b"calm down");
        bytes.extend(frame(GOAWAY, &goaway));
        bytes.extend(frame(0x4, &[]));
        bytes.extend(frame(RST_STREAM, &8u32.to_be_bytes()));
        for split in [1, 2, 3, 5, 9, 10, 13, 64, bytes.len()] {
            let mut watch = FrameWatch::default();
            let mut sent = Vec::new();
            for chunk in bytes.chunks(split) {
                watch.watch(chunk, |kind, code| sent.push((kind, code)));
            }
            assert_eq!(
                sent,
                [(RST_STREAM, 7), (GOAWAY, 0xb), (RST_STREAM, 8)],
                "split {split}"
            );
            assert_eq!((watch.have, watch.remaining), (0, 0), "split {split}");
        }
        assert_eq!(http2_error_name(0xb), "ENHANCE_YOUR_CALM");
        assert_eq!(http2_error_name(0x7), "REFUSED_STREAM");
    }

    #[test]
    fn the_connection_cap_stays_below_the_descriptor_limit() {
        let limit = |soft| {
            Some(FdLimit {
                before: soft,
                soft,
                hard: soft,
            })
        };
        assert_eq!(connection_cap(4096, limit(1_048_576), 144), 4096);
        assert_eq!(connection_cap(4096, limit(1024), 144), 880);
        assert_eq!(connection_cap(4096, limit(256), 128), 128);
        assert_eq!(connection_cap(4096, limit(100), 128), 8);
        assert_eq!(connection_cap(4096, None, 128), 4096);
    }

    /// A listener whose every accept fails as at the descriptor limit.
    struct Exhausted(Arc<std::sync::atomic::AtomicUsize>);

    impl Listen for Exhausted {
        fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Err(io::Error::from_raw_os_error(24))) // EMFILE
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listening = Listening {
            name: "test",
            max_connections: 8,
            max_per_peer: 0,
            handshake_timeout: Duration::from_secs(1),
        };
        let stop = tokio::time::sleep(Duration::from_secs(10));
        accept(Exhausted(Arc::clone(&calls)), listening, stop, |_, _, _| {}).await;
        // 10 ms, doubling to 1 s: 16 tries in 10 s (a spin would make millions).
        let calls = calls.load(std::sync::atomic::Ordering::Relaxed);
        assert!((14..=18).contains(&calls), "{calls} accepts in 10 s");
    }

    #[test]
    fn warnings_are_throttled() {
        let mut t = Throttled::new();
        assert_eq!(t.due(), Some(1));
        assert_eq!(t.due(), None);
        assert_eq!(t.due(), None);
        t.last = Some(Instant::now() - Throttled::EVERY);
        assert_eq!(t.due(), Some(3));
    }
}
