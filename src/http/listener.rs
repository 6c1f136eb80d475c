//! The HTTP listener: socket options for every accepted connection, and a kill switch per
//! connection so the stream handler can drop a client that stopped reading.
//!
//! A blocked socket stops hyper from polling a response body, so a stream cannot end itself
//! when its client never drains; it flips the connection's [`KillSwitch`] instead, and the
//! next (or pending) read or write of that connection fails, which closes it.

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
    inner: TcpListener,
    send_buffer: Option<usize>,
}

impl StreamListener {
    /// Wraps a bound listener; `send_buffer` of `None` keeps the kernel's autotuning.
    pub fn new(inner: TcpListener, send_buffer: Option<usize>) -> Self {
        StreamListener { inner, send_buffer }
    }
}

impl Listener for StreamListener {
    type Io = Killable;
    type Addr = Connection;

    async fn accept(&mut self) -> (Killable, Connection) {
        let (io, remote) = Listener::accept(&mut self.inner).await;
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
            remote: self.inner.local_addr()?,
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
