//! `GET /api/stream`: Server-Sent Events, resumable by `Last-Event-ID` (docs/api.md).
//!
//! The handler asks the ingest engine where the stream starts (one round trip: the engine
//! applies the resume rules, `live::start`, and answers a rule-4 wait itself), then writes
//! shared bytes: the opening, then the frames of its scope. Per client it only chooses
//! buffers: the frame's own bytes, several frames' bytes in one write, or (behind by more
//! than `stream.batch_bytes`) one conflated delta. A client that overflows its queue
//! catches up from the frame log after the last frame it was sent.

use super::listener::{Connection, KillSwitch};
use super::{ApiError, AppState};
use crate::events::StoreId;
use crate::ingest::{Opening, Request, Subscribed, Subscription};
use crate::live::{self, Frame};
use crate::metrics::Metrics;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::oneshot;

/// Query of `/api/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// One store's stream.
    store: Option<String>,
    /// The last event id seen, for clients that cannot send `Last-Event-ID`.
    since: Option<String>,
}

/// Counts an open stream; the count drops when the stream ends.
struct SubscriberGuard(Arc<Metrics>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Asks the engine for a subscription. The answer may wait for rule 4 (bounded by
/// `stream.resume_wait`, decided by the engine).
async fn subscribe(
    app: &AppState,
    store: Option<StoreId>,
    since: Option<String>,
) -> Result<Subscribed, ApiError> {
    let (reply, answer) = oneshot::channel();
    app.requests
        .send(Request::Subscribe {
            store,
            since,
            reply,
        })
        .await
        .map_err(|_| ApiError::ingest_stopped())?;
    tokio::time::timeout(app.stream.resume_wait + Duration::from_secs(10), answer)
        .await
        .map_err(|_| ApiError::ingest_stopped())?
        .map_err(|_| ApiError::ingest_stopped())
}

/// The handler.
pub(super) async fn stream(
    State(app): State<AppState>,
    connection: Option<Extension<ConnectInfo<Connection>>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::bad_query)?;
    app.ensure_assigned()?;
    let open = app.metrics.subscribers.fetch_add(1, Ordering::Relaxed);
    let guard = SubscriberGuard(Arc::clone(&app.metrics));
    if open >= app.stream.max_subscribers as i64 {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            axum::Json(json!({ "error": "too many open streams; retry later" })),
        )
            .into_response());
    }
    let store = query.store.map(StoreId);
    // A header that is not text is as good as a malformed id: it gets a resync snapshot.
    let since = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or(query.since);
    let subscription = match subscribe(&app, store.clone(), since).await? {
        Subscribed::Started(subscription) => subscription,
        Subscribed::UnknownStore => return Err(ApiError::unknown_store()),
    };
    let stall = StallWatch::start(
        connection.map(|Extension(ConnectInfo(c))| c.kill),
        app.stream.stall_timeout,
        Arc::clone(&app.metrics),
    );
    let body = writer(app, store, subscription, stall, guard);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-transform"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The body of one stream: the opening, then frames, progress events and lag recovery,
/// until the client goes, the server stops, or the engine ends.
fn writer(
    app: AppState,
    store: Option<StoreId>,
    subscription: Subscription,
    stall: StallWatch,
    guard: SubscriberGuard,
) -> impl futures_core::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    async_stream::stream! {
        let _guard = guard;
        let Subscription { opening, mut live } = subscription;
        // Reconnect within a second after a drop.
        yield Ok(Bytes::from_static(b"retry: 1000\n\n"));
        // The id of the newest frame sent (empty until one is): where a lag resumes from.
        let mut last_sent = String::new();
        if let Some(bytes) = opening_bytes(opening, store.as_ref(), &mut last_sent) {
            stall.offered();
            yield Ok(bytes);
            stall.taken();
        }
        let heartbeat = app.stream.heartbeat;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            let bytes = tokio::select! {
                received = live.recv() => match received {
                    Ok(frame) => pending_write(frame, &mut live, store.as_ref(), &app, &mut last_sent),
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the queue: the frames since the last one sent, from
                        // the log (rule 2); a snapshot if the log no longer has them (rule 3).
                        Metrics::inc(&app.metrics.lagged_subscribers);
                        let since = Some(last_sent.clone()).filter(|id| !id.is_empty());
                        match subscribe(&app, store.clone(), since).await {
                            Ok(Subscribed::Started(fresh)) => {
                                live = fresh.live;
                                opening_bytes(fresh.opening, store.as_ref(), &mut last_sent)
                            }
                            _ => break,
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = ticker.tick() => Some(progress(&app)),
                () = app.stop.cancelled() => break,
            };
            if let Some(bytes) = bytes {
                stall.offered();
                yield Ok(bytes);
                stall.taken();
            }
        }
    }
}

/// The bytes of an opening for `scope`: the snapshot event, or the replayed frames (one
/// write; conflated into one delta when there are several).
fn opening_bytes(
    opening: Opening,
    scope: Option<&StoreId>,
    last_sent: &mut String,
) -> Option<Bytes> {
    match opening {
        Opening::Event(bytes) => Some(bytes),
        Opening::Frames(frames) => {
            if let Some(last) = frames.last() {
                last_sent.clone_from(&last.id);
            }
            live::pending_bytes(&frames, scope)
        }
    }
}

/// The write for `frame` and whatever else is already queued behind it: one frame's
/// shared bytes; a few frames' bytes in one write; beyond `batch_bytes`, one conflated
/// delta (smaller than the frames it replaces).
fn pending_write(
    frame: Arc<Frame>,
    live: &mut tokio::sync::broadcast::Receiver<Arc<Frame>>,
    scope: Option<&StoreId>,
    app: &AppState,
    last_sent: &mut String,
) -> Option<Bytes> {
    let mut pending = vec![frame];
    while let Ok(more) = live.try_recv() {
        pending.push(more);
    }
    if let Some(last) = pending.last() {
        last_sent.clone_from(&last.id);
    }
    let relevant: Vec<&Bytes> = pending.iter().filter_map(|f| f.bytes_for(scope)).collect();
    let size: usize = relevant.iter().map(|b| b.len()).sum();
    match relevant.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        _ if size > app.stream.batch_bytes => {
            Metrics::inc(&app.metrics.conflated_writes);
            live::pending_bytes(&pending, scope)
        }
        several => {
            let mut joined = Vec::with_capacity(size);
            for bytes in several {
                joined.extend_from_slice(bytes);
            }
            Some(Bytes::from(joined))
        }
    }
}

/// An id-less `progress` event: the newest event time and the consumer lag.
fn progress(app: &AppState) -> Bytes {
    let status = app.status.borrow().clone();
    let lag = app.metrics.consumer_lag.load(Ordering::Relaxed);
    let progress = json!({ "as_of_ms": status.newest_event_time, "lag": lag });
    Bytes::from(live::sse_event(
        "progress",
        None,
        progress.to_string().as_bytes(),
    ))
}

/// Disconnects a client that stops taking bytes: hyper polls a body only when the socket
/// has room, so a chunk offered and not taken for `timeout` means the client is not reading.
/// The stream cannot end itself then (it is not polled), so a timer task flips the
/// connection's kill switch; the client reconnects with its Last-Event-ID (rule 2 or 3).
pub(super) struct StallWatch {
    /// Milliseconds since `epoch` when the pending chunk was offered; 0 when none is.
    offered_at: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl StallWatch {
    pub(super) fn start(
        kill: Option<KillSwitch>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let offered_at = Arc::new(AtomicU64::new(0));
        let epoch = tokio::time::Instant::now();
        let watchdog = kill.filter(|_| !timeout.is_zero()).map(|kill| {
            let offered_at = Arc::clone(&offered_at);
            tokio::spawn(watch_for_stall(offered_at, epoch, timeout, kill, metrics))
        });
        StallWatch {
            offered_at,
            epoch,
            watchdog,
        }
    }

    /// A chunk is handed to hyper.
    pub(super) fn offered(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.offered_at.store(ms.max(1), Ordering::Release);
    }

    /// hyper polled again: the chunk went into the connection's buffer.
    pub(super) fn taken(&self) {
        self.offered_at.store(0, Ordering::Release);
    }
}

/// Sleeps until a chunk has been offered and not taken for `timeout`, then kills.
async fn watch_for_stall(
    offered_at: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
    timeout: Duration,
    kill: KillSwitch,
    metrics: Arc<Metrics>,
) {
    let mut deadline = epoch + timeout;
    loop {
        tokio::time::sleep_until(deadline).await;
        let since = offered_at.load(Ordering::Acquire);
        if since == 0 {
            deadline = tokio::time::Instant::now() + timeout;
            continue;
        }
        let stuck_from = epoch + Duration::from_millis(since);
        if stuck_from + timeout <= tokio::time::Instant::now() {
            Metrics::inc(&metrics.stalled_disconnects);
            tracing::info!(
                ?timeout,
                "disconnecting a stream client that stopped reading"
            );
            kill.kill();
            return;
        }
        deadline = stuck_from + timeout;
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_chunk_not_taken_for_the_stall_timeout_kills_the_connection() {
        let kill = KillSwitch::default();
        let metrics = Arc::new(Metrics::default());
        let watch = StallWatch::start(
            Some(kill.clone()),
            Duration::from_secs(30),
            Arc::clone(&metrics),
        );
        // Reading clients: chunks offered and taken, for longer than the timeout.
        for _ in 0..100 {
            watch.offered();
            tokio::time::sleep(Duration::from_secs(1)).await;
            watch.taken();
        }
        assert!(!kill.is_killed(), "a client that takes every chunk stays");
        watch.offered();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!kill.is_killed(), "not before the timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(kill.is_killed(), "a chunk offered 31 s ago and never taken");
        assert_eq!(metrics.stalled_disconnects.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_never_disconnects() {
        let kill = KillSwitch::default();
        let watch = StallWatch::start(
            Some(kill.clone()),
            Duration::ZERO,
            Arc::new(Metrics::default()),
        );
        watch.offered();
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(!kill.is_killed());
    }
}
