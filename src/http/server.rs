//! The connection loop: hyper's HTTP/1.1 connections over the [`StreamListener`], with
//! the limits `axum::serve` cannot set. A client must send a request's headers within
//! the header timeout of connecting or of its previous response (hyper starts the timer
//! while a keep-alive connection idles too), so a connection that sends nothing, trickles
//! its headers or idles is closed; a response body (a live stream) is never timed.
//! Stopping stops accepting and waits for the open connections to end (the streams end on
//! the same token).
//!
//! Bounded: at most `http.max_connections` connections are open (one more is closed at
//! once, before anything is read), and each buffers at most [`MAX_HEAD_BUFFER`] bytes of
//! a request head, so what clients can make the server hold is their product.
//!
//! With TLS (`http.tls_cert_file`, `super::tls`), the handshake must finish within the
//! header timeout; a connection that negotiated `h2` is served as HTTP/2: at most
//! [`MAX_STREAMS_PER_CONNECTION`] concurrent streams, headers of at most 16 KiB, a ping
//! every 20 s (a peer that does not answer within the header timeout is closed), and
//! flow control per stream, so a stream whose client stops taking it holds only itself
//! (its window fills; the other streams on the connection go on).

use super::listener::{Connection, StreamListener};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Most bytes of a request head one connection buffers (hyper's read buffer; a head that
/// does not fit is refused with 431 and the connection closed). Requests are answered only
/// with headers of at most 16 KiB anyway ([`super::MAX_HEADER_BYTES`]).
pub const MAX_HEAD_BUFFER: usize = 32 * 1024;

/// Most concurrent streams one HTTP/2 connection may open (a browser's every tab of an
/// origin shares one connection: live streams, replays and API calls together).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Connections open now, by protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, plain or over TLS.
    Http1,
    /// HTTP/2 (over TLS, by ALPN).
    Http2,
}

/// Serves `router` on `listener` until `stop` is cancelled and every connection ended.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    mut listener: StreamListener,
    router: Router,
    tasks: &tokio_util::task::TaskTracker,
    header_timeout: Duration,
    max_connections: usize,
    tls: Option<std::sync::Arc<super::tls::Tls>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(super::MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(header_timeout)
        .adaptive_window(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut refused_log = crate::log_every::LogEvery::new(Duration::from_secs(10));
    loop {
        let (io, connection) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let Ok(permit) = std::sync::Arc::clone(&open).try_acquire_owned() else {
            drop(io); // closed before anything is read
            if let Some(held_back) = refused_log.allow(std::time::Instant::now()) {
                tracing::warn!(
                    max_connections,
                    similar_errors_not_logged = held_back,
                    "a connection was closed at once: http.max_connections are open"
                );
            }
            continue;
        };
        let router = router.clone();
        let connection_kill = connection.kill.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<Connection>(connection.clone()));
                router.clone().oneshot(request)
            },
        );
        let Some(tls) = &tls else {
            let connection = graceful.watch(http1.serve_connection(TokioIo::new(io), service));
            let open = OpenConnection::new(&metrics, Protocol::Http1);
            tasks.spawn(async move {
                let _permit = permit; // given back when the connection ends
                let _open = open;
                if let Err(error) = connection.await {
                    // Timeouts, resets and malformed requests: the client's problem, not ours.
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
            continue;
        };
        let acceptor = tls.acceptor();
        let (http1, http2) = (http1.clone(), http2.clone());
        let watcher = graceful.watcher();
        let metrics = std::sync::Arc::clone(&metrics);
        let kill = connection_kill;
        tasks.spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake not finished within the header timeout");
                    return;
                }
            };
            let ended = if stream.get_ref().1.alpn_protocol() == Some(super::tls::H2) {
                kill.set_multiplexed();
                let _open = OpenConnection::new(&metrics, Protocol::Http2);
                watcher
                    .watch(http2.serve_connection(TokioIo::new(stream), service))
                    .await
            } else {
                let _open = OpenConnection::new(&metrics, Protocol::Http1);
                watcher
                    .watch(http1.serve_connection(TokioIo::new(stream), service))
                    .await
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener); // the port closes now
    graceful.shutdown().await;
    Ok(())
}

/// Counts an open connection by protocol until dropped.
struct OpenConnection {
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    protocol: Protocol,
}

impl OpenConnection {
    fn new(
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
        protocol: Protocol,
    ) -> OpenConnection {
        metrics.connection_opened(protocol, 1);
        OpenConnection {
            metrics: std::sync::Arc::clone(metrics),
            protocol,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection_opened(self.protocol, -1);
    }
}
