//! The HTTP listener: socket options for every accepted connection, and a kill switch per
//! connection so the stream handler can drop a client that stopped reading.
//!
//! A blocked socket stops hyper from polling a response body, so a stream cannot end itself
//! when its client never drains; it flips the connection's [`KillSwitch`] instead, and the
//! next (or pending) read or write of that connection fails, which closes it.
//!
//! Connections are accepted by a thread of their own (`accept`), not by a task: in a
//! reconnect storm the runtime's workers are busy writing to every other client, a task's
//! accept loop yields after each coop budget and waits its turn, and the kernel's accept
//! queue (capped by `net.core.somaxconn`) overflows into SYN retries of 1 s and more. The
//! thread drains the queue whatever the workers are doing.

use atomic_waker::AtomicWaker;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Most connections waiting to be accepted. A reconnect storm (every dashboard of a
/// restarted process at once) overflows tokio's default of 1024 into SYN retries of 1 s
/// and more; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` with `SO_REUSEADDR` and a deep accept queue.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts TCP connections with `TCP_NODELAY` (frames are small and latency matters) and,
/// when configured, a fixed send buffer (bounds the kernel memory a stalled client holds).
pub struct StreamListener {
    accepted: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
    send_buffer: Option<usize>,
    /// The listening socket (a duplicate): shut down on drop, which wakes the accept thread
    /// so that it ends and the port closes with the server.
    socket: socket2::Socket,
    /// TLS for its connections (`http.tls_cert_file`), if configured.
    tls: Option<Arc<super::tls::Tls>>,
}

/// Raises the soft limit of open files to the hard one: every client is a descriptor, and
/// a common default soft limit of 1024 runs out long before memory does.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit (RLIMIT_NOFILE soft = hard)"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        self.accepted.close();
        let _ = self.socket.shutdown(std::net::Shutdown::Read);
    }
}

impl StreamListener {
    /// Its connections speak TLS with `tls` (`None`: plain).
    pub fn with_tls(mut self, tls: Option<Arc<super::tls::Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Its TLS, if any.
    pub fn tls(&self) -> Option<Arc<super::tls::Tls>> {
        self.tls.clone()
    }

    /// Takes over a bound listener, accepted from on a thread of its own; `send_buffer` of
    /// `None` keeps the kernel's autotuning.
    pub fn new(
        inner: TcpListener,
        send_buffer: Option<usize>,
        accept_errors: prometheus_client::metrics::counter::Counter,
        tasks: &tokio_util::task::TaskTracker,
    ) -> io::Result<Self> {
        let local = inner.local_addr()?;
        let inner = inner.into_std()?;
        inner.set_nonblocking(false)?;
        let socket = socket2::Socket::from(inner.try_clone()?);
        let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
        crate::tasks::spawn_thread(tasks, "accept", move || {
            accept_until_closed(&inner, &tx, &accept_errors);
        })?;
        Ok(StreamListener {
            accepted,
            local,
            send_buffer,
            socket,
            tls: None,
        })
    }
}

/// First pause after a failed accept; doubled per failure in a row, up to
/// [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest pause after failed accepts.
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts until the server stops taking connections (the receiver is dropped). A failed
/// accept (e.g. EMFILE, out of file descriptors: the pending connection stays queued) is
/// counted, logged once per 10 s with the count held back, and followed by a pause that
/// doubles while accepts keep failing, so a full descriptor table does not spin a core.
fn accept_until_closed(
    listener: &std::net::TcpListener,
    accepted: &tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    errors: &prometheus_client::metrics::counter::Counter,
) {
    let mut log = crate::log_every::LogEvery::new(std::time::Duration::from_secs(10));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    while !accepted.is_closed() {
        match listener.accept() {
            Ok(connection) => {
                backoff = ACCEPT_BACKOFF_MIN;
                if accepted.send(connection).is_err() {
                    return;
                }
            }
            Err(_) if accepted.is_closed() => return, // woken by the listener's drop
            Err(error) => {
                errors.inc();
                if let Some(held_back) = log.allow(std::time::Instant::now()) {
                    tracing::warn!(%error, similar_errors_not_logged = held_back, retry_in = ?backoff, "accept failed (repeats are logged once per 10 s, counted in storepulse_accept_errors_total)");
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

impl Listener for StreamListener {
    type Io = Killable;
    type Addr = Connection;

    async fn accept(&mut self) -> (Killable, Connection) {
        let (io, remote) = loop {
            let Some((stream, remote)) = self.accepted.recv().await else {
                // The accept thread ended (it does not, while this receiver lives).
                std::future::pending::<()>().await;
                continue;
            };
            let registered = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            match registered {
                Ok(io) => break (io, remote),
                Err(error) => tracing::debug!(%error, "an accepted socket could not be registered"),
            }
        };
        if let Err(error) = io.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY");
        }
        if let Some(bytes) = self.send_buffer
            && let Err(error) = socket2::SockRef::from(&io).set_send_buffer_size(bytes)
        {
            tracing::debug!(%error, "SO_SNDBUF");
        }
        let kill = KillSwitch::default();
        (
            Killable {
                io,
                kill: kill.clone(),
            },
            Connection { remote, kill },
        )
    }

    fn local_addr(&self) -> io::Result<Connection> {
        Ok(Connection {
            remote: self.local,
            kill: KillSwitch::default(),
        })
    }
}

/// What a handler knows about its connection (axum `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Closes this connection.
    pub kill: KillSwitch,
}

impl Connected<IncomingStream<'_, StreamListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, StreamListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Closes one connection from outside its task.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<KillState>);

#[derive(Debug, Default)]
struct KillState {
    killed: AtomicBool,
    waker: AtomicWaker,
    /// An HTTP/2 connection: its streams share it, so one stalled stream is no reason to
    /// close it while others move.
    multiplexed: AtomicBool,
    /// Chunks its streams' clients took, all streams together.
    taken: std::sync::atomic::AtomicU64,
}

impl KillSwitch {
    /// Every later or pending read and write of the connection fails.
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// True once [`KillSwitch::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::Acquire)
    }

    /// The connection speaks HTTP/2 (many streams on it).
    pub fn set_multiplexed(&self) {
        self.0.multiplexed.store(true, Ordering::Release);
    }

    /// Whether it speaks HTTP/2.
    pub fn is_multiplexed(&self) -> bool {
        self.0.multiplexed.load(Ordering::Acquire)
    }

    /// A stream's client took a chunk.
    pub fn note_taken(&self) {
        self.0.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// Chunks taken on this connection so far.
    pub fn taken(&self) -> u64 {
        self.0.taken.load(Ordering::Relaxed)
    }

    fn check(&self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.0.killed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client stopped reading",
            ));
        }
        self.0.waker.register(cx.waker());
        Ok(())
    }
}

/// A TCP stream that fails once its [`KillSwitch`] is flipped.
pub struct Killable {
    io: TcpStream,
    kill: KillSwitch,
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.kill.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.kill.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.kill.check(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.kill.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_accept_thread_serves_connections_and_the_port_closes_with_the_listener() {
        let bound = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let mut listener = StreamListener::new(
            bound,
            None,
            Default::default(),
            &tokio_util::task::TaskTracker::new(),
        )
        .expect("listener");
        let address = listener.local.to_string();
        for _ in 0..3 {
            let client = tokio::net::TcpStream::connect(&address);
            let ((io, connection), client) = tokio::join!(listener.accept(), client);
            assert!(client.is_ok());
            assert!(
                io.io.nodelay().expect("nodelay"),
                "TCP_NODELAY on accepted sockets"
            );
            assert!(!connection.kill.is_killed());
        }
        drop(listener);
        // The thread wakes, ends and closes the port: connecting is refused, not left hanging.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match tokio::net::TcpStream::connect(&address).await {
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
                    break;
                }
                Ok(_) => {
                    assert!(std::time::Instant::now() < deadline, "the port stayed open");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
}
