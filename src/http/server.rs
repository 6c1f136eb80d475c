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

/// Serves `router` on `listener` until `stop` is cancelled and every connection ended.
pub async fn serve(
    mut listener: StreamListener,
    router: Router,
    tasks: &tokio_util::task::TaskTracker,
    header_timeout: Duration,
    max_connections: usize,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(true);
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
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<Connection>(connection.clone()));
                router.clone().oneshot(request)
            },
        );
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(io), service));
        tasks.spawn(async move {
            let _permit = permit; // given back when the connection ends
            if let Err(error) = connection.await {
                // Timeouts, resets and malformed requests: the client's problem, not ours.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener); // the port closes now
    graceful.shutdown().await;
    Ok(())
}
