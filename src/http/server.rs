//! The connection loop: hyper's HTTP/1.1 connections over the [`StreamListener`], with
//! the limits `axum::serve` cannot set. A client must send a request's headers within
//! the header timeout of connecting or of its previous response (hyper starts the timer
//! while a keep-alive connection idles too), so a connection that sends nothing, trickles
//! its headers or idles is closed; a response body (a live stream) is never timed.
//! Stopping stops accepting and waits for the open connections to end (the streams end on
//! the same token).

use super::listener::{Connection, StreamListener};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Serves `router` on `listener` until `stop` is cancelled and every connection ended.
pub async fn serve(
    mut listener: StreamListener,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (io, connection) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
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
        tokio::spawn(async move {
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
