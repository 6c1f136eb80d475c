//! The HTTP API (axum): snapshots, the live stream, health, readiness and metrics. The only
//! axum code (with `listener`, which owns the sockets).
//!
//! Handlers never touch the state: a snapshot is requested from the ingest thread, which
//! serialises it once per (position, scope) and caches it.

use crate::checkpoint::CheckpointStore;
use crate::events::StoreId;
use crate::ingest::Subscription;
use crate::ingest::{Request, Status};
use crate::metrics::Metrics;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use listener::{Connection, KillSwitch};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

mod dashboard;
pub mod listener;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Requests to the ingest thread.
    pub requests: mpsc::Sender<Request>,
    /// Ingest status.
    pub status: watch::Receiver<Status>,
    /// The checkpoint store (readiness checks it answers).
    pub checkpoints: CheckpointStore,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Most records behind that still count as ready.
    pub max_lag: i64,
    /// Live-stream settings.
    pub stream: StreamSettings,
    /// Cancelled on shutdown: open streams end so the server can stop.
    pub stop: CancellationToken,
}

/// Settings of `/api/stream`.
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    /// Interval of id-less progress events.
    pub heartbeat: Duration,
    /// Longest wait for a client whose id is ahead (rule 4).
    pub resume_wait: Duration,
    /// Most concurrent streams.
    pub max_subscribers: usize,
    /// A client that takes nothing from its socket for this long is disconnected.
    pub stall_timeout: Duration,
    /// A client behind by more than this many bytes of frames gets one conflated delta.
    pub batch_bytes: usize,
}

/// An error response: a status and a reason, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.reason }))).into_response()
    }
}

/// The router, testable without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/snapshot", get(snapshot))
        .route("/api/stream", get(stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(dashboard::routes())
        .with_state(state)
}

/// Query of `/api/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// One store's snapshot.
    store: Option<String>,
}

async fn snapshot(
    State(app): State<AppState>,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        reason: e.body_text(),
    })?;
    if let Some(store) = &query.store
        && (store.is_empty() || store.len() > 200)
    {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: "store must be a store id of 1 to 200 characters".into(),
        });
    }
    if !app.status.borrow().assigned {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "starting: partitions are not assigned yet (see /readyz)".into(),
        });
    }
    let (reply, answer) = oneshot::channel();
    let unavailable = || ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "the ingest loop is not running".into(),
    };
    app.requests
        .send(Request::Snapshot {
            store: query.store.clone().map(StoreId),
            reply,
        })
        .await
        .map_err(|_| unavailable())?;
    let json = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the ingest loop did not answer in time".into(),
        })?
        .map_err(|_| unavailable())?;
    match json {
        Some(json) => Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            json.as_ref().clone(),
        )
            .into_response()),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            reason: format!(
                "no events for store {:?} yet",
                query.store.unwrap_or_default()
            ),
        }),
    }
}

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

async fn subscribe(
    app: &AppState,
    store: Option<StoreId>,
    since: Option<String>,
) -> Result<Subscription, ApiError> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: "the ingest loop is not running".into(),
    };
    app.requests
        .send(Request::Subscribe {
            store,
            since,
            reply,
        })
        .await
        .map_err(|_| unavailable())?;
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
}

/// `GET /api/stream`: Server-Sent Events, resumable by `Last-Event-ID` (docs/api.md).
async fn stream(
    State(app): State<AppState>,
    connection: Option<Extension<ConnectInfo<Connection>>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        reason: e.body_text(),
    })?;
    if !app.status.borrow().assigned {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "starting: partitions are not assigned yet (see /readyz)".into(),
        });
    }
    let open = app.metrics.subscribers.fetch_add(1, Ordering::Relaxed);
    let guard = SubscriberGuard(Arc::clone(&app.metrics));
    if open >= app.stream.max_subscribers as i64 {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(json!({ "error": "too many open streams; retry later" })),
        )
            .into_response());
    }
    let store = query.store.map(StoreId);
    // A header that is not text is as good as a malformed id: it gets a resync snapshot.
    let since = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or(query.since);
    let mut subscription = subscribe(&app, store.clone(), since.clone()).await?;
    if let Subscription::Ahead { wanted } = &subscription {
        // Rule 4: wait (bounded) until this process has caught up with what the client
        // has already shown, then a snapshot; on timeout a resync snapshot.
        let mut status = app.status.clone();
        let wanted = wanted.clone();
        let caught_up = tokio::time::timeout(
            app.stream.resume_wait,
            status.wait_for(|s| {
                wanted
                    .compare(&s.position)
                    .is_some_and(|o| o != std::cmp::Ordering::Greater)
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        subscription = subscribe(&app, store.clone(), None).await?;
        if !caught_up && let Subscription::Snapshot { event, bytes, .. } = &mut subscription {
            *event = "resync";
            *bytes = rename_event(bytes, "resync");
        }
    }
    let (first, mut live): (Vec<Bytes>, _) = match subscription {
        Subscription::Snapshot { bytes, live, .. } => (vec![bytes], live),
        Subscription::Replay { frames, live } => (
            crate::stream::pending_bytes(&frames, store.as_ref())
                .into_iter()
                .collect(),
            live,
        ),
        Subscription::UnknownStore => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                reason: "no events for that store yet".into(),
            });
        }
        Subscription::Ahead { .. } => unreachable!("asked without an id"),
    };
    let heartbeat = app.stream.heartbeat;
    let batch_bytes = app.stream.batch_bytes;
    let stop = app.stop.clone();
    let stall = StallWatch::start(
        connection.map(|Extension(ConnectInfo(c))| c.kill),
        app.stream.stall_timeout,
        Arc::clone(&app.metrics),
    );
    let body = async_stream::stream! {
        let _guard = guard;
        // Reconnect within a second after a drop.
        yield Ok::<Bytes, std::convert::Infallible>(Bytes::from_static(b"retry: 1000\n\n"));
        // The shared bytes of the snapshot or of the (conflated) replay: never a copy.
        for bytes in first {
            stall.offered();
            yield Ok(bytes);
            stall.taken();
        }
        // The id of the newest frame sent (empty until one is): where a lag resumes from.
        let mut last_sent = String::new();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(frame) => {
                        // Behind by a few small frames: their shared bytes in one write; by
                        // more bytes than that: one conflated delta (serialised for this client
                        // alone, and smaller than the frames it replaces).
                        let mut pending = vec![frame];
                        while let Ok(more) = live.try_recv() {
                            pending.push(more);
                        }
                        let relevant: Vec<&Bytes> = pending
                            .iter()
                            .filter_map(|f| f.bytes_for(store.as_ref()))
                            .collect();
                        let pending_size: usize = relevant.iter().map(|b| b.len()).sum();
                        let bytes = if relevant.len() > 1 && pending_size > batch_bytes {
                            Metrics::inc(&app.metrics.conflated_writes);
                            crate::stream::pending_bytes(&pending, store.as_ref())
                        } else if relevant.len() > 1 {
                            Some(Bytes::from(relevant.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>()))
                        } else {
                            relevant.first().map(|b| (*b).clone())
                        };
                        if let Some(last) = pending.last() {
                            last_sent.clone_from(&last.id);
                        }
                        if let Some(bytes) = bytes {
                            stall.offered();
                            yield Ok(bytes);
                            stall.taken();
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the queue: the frames since the last one sent from
                        // the log, conflated into one delta (rule 2); a snapshot if the log
                        // no longer has them (rule 3).
                        Metrics::inc(&app.metrics.lagged_subscribers);
                        let since = Some(last_sent.clone()).filter(|id| !id.is_empty());
                        let (bytes, fresh) = match subscribe(&app, store.clone(), since).await {
                            Ok(Subscription::Snapshot { bytes, live, .. }) => (Some(bytes), live),
                            Ok(Subscription::Replay { frames, live }) => {
                                if let Some(last) = frames.last() {
                                    last_sent.clone_from(&last.id);
                                }
                                (crate::stream::pending_bytes(&frames, store.as_ref()), live)
                            }
                            _ => break,
                        };
                        live = fresh;
                        if let Some(bytes) = bytes {
                            stall.offered();
                            yield Ok(bytes);
                            stall.taken();
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = ticker.tick() => {
                    let status = app.status.borrow().clone();
                    let lag = app.metrics.consumer_lag.load(Ordering::Relaxed);
                    let progress = json!({ "as_of_ms": status.newest_event_time, "lag": lag });
                    stall.offered();
                    yield Ok(Bytes::from(crate::stream::sse_event("progress", None, progress.to_string().as_bytes())));
                    stall.taken();
                }
                () = stop.cancelled() => break,
            }
        }
    };
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

/// Disconnects a client that stops taking bytes: hyper polls a body only when the socket
/// has room, so a chunk offered and not taken for `timeout` means the client is not reading.
/// The stream cannot end itself then (it is not polled), so a timer task flips the
/// connection's kill switch; the client reconnects with its Last-Event-ID (rule 2 or 3).
struct StallWatch {
    /// Milliseconds since `epoch` when the pending chunk was offered; 0 when none is.
    offered_at: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl StallWatch {
    fn start(kill: Option<KillSwitch>, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let offered_at = Arc::new(AtomicU64::new(0));
        let epoch = tokio::time::Instant::now();
        let watchdog = kill.filter(|_| !timeout.is_zero()).map(|kill| {
            let offered_at = Arc::clone(&offered_at);
            tokio::spawn(async move {
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
            })
        });
        StallWatch {
            offered_at,
            epoch,
            watchdog,
        }
    }

    /// A chunk is handed to hyper.
    fn offered(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.offered_at.store(ms.max(1), Ordering::Release);
    }

    /// hyper polled again: the chunk went into the connection's buffer.
    fn taken(&self) {
        self.offered_at.store(0, Ordering::Release);
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

/// The same SSE event under another event name.
fn rename_event(event: &Bytes, name: &str) -> Bytes {
    let text = event.as_ref();
    let rest = text
        .iter()
        .position(|b| *b == b'\n')
        .map_or(&text[..0], |i| &text[i..]);
    let mut out = Vec::with_capacity(text.len() + 8);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(rest);
    Bytes::from(out)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

async fn readyz(State(app): State<AppState>) -> Response {
    let status = app.status.borrow().clone();
    let checkpoint_store =
        tokio::time::timeout(Duration::from_secs(2), app.checkpoints.is_reachable())
            .await
            .unwrap_or(false);
    let lag = app
        .metrics
        .consumer_lag
        .load(std::sync::atomic::Ordering::Relaxed);
    let lag = (lag >= 0).then_some(lag);
    let caught_up = status.assigned && lag.is_some_and(|lag| lag <= app.max_lag);
    let ready = caught_up && checkpoint_store;
    let body = json!({
        "ready": ready,
        "consumer": {
            "ready": caught_up,
            "assigned": status.assigned,
            "lag": lag,
            "max_lag": app.max_lag,
            "newest_event_time_ms": status.newest_event_time,
        },
        "checkpoint_store": { "ready": checkpoint_store },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
