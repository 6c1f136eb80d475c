//! `GET /api/stream`: Server-Sent Events, resumable by `Last-Event-ID` (docs/api.md).
//!
//! Every byte written here is shared: the handler opens the stream from the hub (rule 2,
//! or a snapshot shared by the clients of the last 250 ms) or, when it cannot, asks the
//! ingest engine (one round trip); then it writes the opening, then the frames of its
//! scope. Per client it only chooses buffers and writes them: the frame's own bytes when
//! the client keeps up, the log's shared catch-up pieces (frames and spans of frames,
//! `live::FrameLog::catch_up`) when it is behind by any number of frames, a shared
//! snapshot when the log no longer has them. Nothing is serialised or merged per client,
//! so a client behind costs no more than one that keeps up. With `Accept-Encoding: gzip`
//! the same pieces are written in their shared deflated form.

use super::listener::{Connection, KillSwitch};
use super::sessions::Attached;
use super::watchers::Watching;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::events::StoreId;
use crate::fanout::{Hub, Request, Subscribed, Subscription};
use crate::live::{self, Encoded, Encoding, Piece};
use crate::metrics::{DisconnectReason, Metrics, OpeningPath};
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
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

/// Counts an open stream; the count drops when the stream ends, and a stream that was
/// served counts its end by reason.
struct SubscriberGuard {
    metrics: Arc<Metrics>,
    /// Why the stream ended; `None` until it is served (a refused stream is no disconnect).
    ending: Option<DisconnectReason>,
    /// Set by the stall watch when it closed the connection.
    stalled: Option<Arc<AtomicBool>>,
    /// This stream's place in its address's and principal's caps.
    slot: Option<super::limits::StreamSlot>,
}

impl SubscriberGuard {
    /// The guard, and how many streams were open before this one.
    fn new(metrics: &Arc<Metrics>) -> (SubscriberGuard, i64) {
        let before = metrics.control.stream_opened();
        let guard = SubscriberGuard {
            metrics: Arc::clone(metrics),
            ending: None,
            stalled: None,
            slot: None,
        };
        (guard, before)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.metrics.control.stream_closed();
        if let Some(reason) = self.ending {
            let stalled = self
                .stalled
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Acquire));
            self.metrics.disconnected(if stalled {
                DisconnectReason::Stalled
            } else {
                reason
            });
        }
    }
}

/// The `retry:` line every stream opens with: how long an EventSource waits before it
/// reconnects after a drop (`stream.retry`).
pub fn retry_line(retry: Duration) -> Arc<Encoded> {
    Arc::new(Encoded::new(
        format!("retry: {}\n\n", retry.as_millis()).into_bytes(),
    ))
}

/// The last event of a stream whose token expired: the page gets a new session and
/// reconnects with its last id (gapless). The same bytes for every stream.
static SESSION_EXPIRED: LazyLock<Encoded> = LazyLock::new(|| {
    Encoded::new(live::sse_event(
        "session-expired",
        None,
        br#"{"reason":"the token has expired: POST /api/session with a new one, then reconnect with the last event id"}"#,
    ))
});

/// The last event of a replay stream when the server stops: the client resumes exactly
/// with its last id on another (or the restarted) server.
static SHUTTING_DOWN: LazyLock<Encoded> = LazyLock::new(|| {
    Encoded::new(live::sse_event(
        "shutdown",
        None,
        br#"{"reason":"the server is stopping: reconnect with the last event id to resume the replay"}"#,
    ))
});

/// The plain bytes of the `shutdown` event (a replay stream's last event when the server
/// stops).
pub(super) fn shutdown_event() -> Bytes {
    SHUTTING_DOWN.for_encoding(Encoding::Identity)
}

/// The plain bytes of the `session-expired` event (the replay stream's last event at expiry).
pub(super) fn session_expired_event() -> Bytes {
    SESSION_EXPIRED.for_encoding(Encoding::Identity)
}

/// When a stream ends by itself: its session's expiry, which a renewal moves on, or its
/// `stream.max_lifetime`, whichever comes first.
struct Ending {
    /// The token's expiry (Unix ms), for a stream not attached to a session.
    token_expiry_ms: Option<i64>,
    /// The session it follows (opened with the session cookies), if any.
    session: Option<Attached>,
    /// `stream.max_lifetime` after it opened.
    lifetime_ends: Option<tokio::time::Instant>,
}

impl Ending {
    fn new(principal: &Principal, session: Option<Attached>, max_lifetime: Duration) -> Ending {
        Ending {
            token_expiry_ms: principal.expires_at_ms,
            session,
            lifetime_ends: (!max_lifetime.is_zero())
                .then(|| tokio::time::Instant::now() + max_lifetime),
        }
    }

    /// When and why, as things stand now.
    fn at(&self) -> Option<(tokio::time::Instant, DisconnectReason)> {
        let expiry_ms = match &self.session {
            Some(session) => Some(*session.expiry.borrow()),
            None => self.token_expiry_ms,
        };
        let expiry = expiry_ms.map(|at_ms| {
            let left =
                u64::try_from(at_ms.saturating_sub(crate::wall_clock::unix_ms())).unwrap_or(0);
            (
                tokio::time::Instant::now() + Duration::from_millis(left),
                DisconnectReason::SessionExpired,
            )
        });
        let lifetime = self
            .lifetime_ends
            .map(|at| (at, DisconnectReason::Lifetime));
        match (expiry, lifetime) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Resolves when a renewal (or a sign-out) moved the session's expiry; never without a
    /// session.
    async fn moved(session: &mut Option<tokio::sync::watch::Receiver<i64>>) {
        let Some(expiry) = session else {
            return std::future::pending().await;
        };
        if expiry.changed().await.is_err() {
            *session = None;
        }
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

/// Opens a stream from the hub when the resume rules allow it, else through the engine.
async fn open(
    app: &AppState,
    hub: &Hub,
    store: Option<StoreId>,
    since: Option<String>,
) -> Result<Subscribed, ApiError> {
    if let Some(subscription) = hub.try_open(store.as_ref(), since.as_deref(), Instant::now()) {
        app.metrics.opened(OpeningPath::Shared);
        return Ok(Subscribed::Started(subscription));
    }
    subscribe(app, store, since).await
}

/// The handler.
pub(super) async fn stream(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    connection: Option<Extension<ConnectInfo<Connection>>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::bad_query)?;
    let (store, address) = match super::scope(
        &app,
        &principal,
        connection.as_ref().map(|c| &c.0.0),
        &headers,
        query.store,
    ) {
        Ok(scope) => scope,
        Err(super::ScopeRefusal::Bad(error)) => return Err(error),
        Err(limited) => {
            app.metrics.refused_streams.inc();
            return Ok(limited.into_response());
        }
    };
    app.ensure_assigned()?;
    let hub = app
        .hub
        .get()
        .cloned()
        .ok_or_else(ApiError::ingest_stopped)?;
    let mut guard = match admit_stream(&app, &principal, address) {
        Ok(guard) => guard,
        Err(refused) => {
            app.metrics.refused_streams.inc();
            return Ok(refused.into_response());
        }
    };
    // A header that is not text is as good as a malformed id: it gets a resync snapshot.
    let since = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or(query.since);
    let encoding = Encoding::negotiate(
        headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    let subscription = match open(&app, &hub, store.clone(), since).await? {
        Subscribed::Started(subscription) => subscription,
        Subscribed::UnknownStore => {
            return Err(store
                .as_ref()
                .map_or_else(ApiError::ingest_stopped, ApiError::unknown_store));
        }
    };
    let stall = StallWatch::start(
        connection.map(|Extension(ConnectInfo(c))| c.kill),
        app.stream.stall_timeout,
        &app.tasks,
    );
    guard.ending = Some(DisconnectReason::ClientClosed);
    guard.stalled = Some(stall.fired());
    let traced =
        crate::telemetry::connection_traced(headers.get("traceparent").map(HeaderValue::as_bytes));
    // Opened with the session cookies (not a header): it follows the session's renewals.
    let session = super::sessions::id_of(&headers)
        .filter(|_| !headers.contains_key(header::AUTHORIZATION))
        .and_then(|id| app.access.sessions.attach(id, &principal));
    let client = Client {
        watching: app.watchers.join(store.clone()),
        hub,
        retry: Arc::clone(&app.retry),
        store,
        encoding,
        last_seq: subscription.last_seq,
        traced,
        ending: Ending::new(&principal, session, app.stream.max_lifetime),
    };
    Ok(sse_response(
        Body::from_stream(writer(app, client, subscription, stall, guard)),
        encoding,
    ))
}

/// A place for one more stream: per client first (a flood from one address is its own
/// 429), then the global cap (`stream.max_subscribers`, 503). The guard gives it back.
fn admit_stream(
    app: &AppState,
    principal: &Principal,
    address: Option<std::net::IpAddr>,
) -> Result<SubscriberGuard, StreamRefused> {
    let slot = match address {
        Some(address) => {
            let principal = Some(principal.subject.as_str())
                .filter(|s| !s.is_empty() && principal.expires_at_ms.is_some());
            let slot = app.limits.open_stream(address, principal, Instant::now());
            Some(slot.map_err(StreamRefused::Client)?)
        }
        None => None,
    };
    let (mut guard, open_streams) = SubscriberGuard::new(&app.metrics);
    guard.slot = slot;
    if open_streams >= app.stream.max_subscribers as i64 {
        return Err(StreamRefused::Full);
    }
    Ok(guard)
}

/// Why there is no place for one more stream.
enum StreamRefused {
    /// The client's own cap (429).
    Client(super::limits::Refusal),
    /// `stream.max_subscribers` (503).
    Full,
}

impl IntoResponse for StreamRefused {
    fn into_response(self) -> Response {
        match self {
            StreamRefused::Client(refusal) => refusal.into_response(),
            StreamRefused::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                axum::Json(json!({ "error": "too many open streams; retry later" })),
            )
                .into_response(),
        }
    }
}

/// A response of Server-Sent Events: the headers every stream (live or replay) sends — no
/// caching or transformation, no proxy buffering, varying by `Accept-Encoding` — and
/// `Content-Encoding: gzip` when `encoding` is gzip.
pub(super) fn sse_response(body: Body, encoding: Encoding) -> Response {
    let mut response = body.into_response();
    let response_headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache, no-transform"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
        (header::VARY, "accept-encoding"),
    ] {
        response_headers.insert(name, HeaderValue::from_static(value));
    }
    if encoding == Encoding::Gzip {
        response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// One stream's choices: its scope, its encoding, and the newest frame it was given.
struct Client {
    hub: Arc<Hub>,
    /// The `retry:` line it opens with.
    retry: Arc<Encoded>,
    store: Option<StoreId>,
    encoding: Encoding,
    last_seq: u64,
    /// Frames that carried sampled records get a `write` span on this connection.
    traced: bool,
    /// When the stream ends by itself, and why.
    ending: Ending,
    /// Its place in its scope's count of watchers.
    watching: Watching,
}

impl Client {
    /// The scope's shared `progress` event: newest event time, lag, watchers.
    fn progress(&self, app: &AppState) -> Arc<Encoded> {
        self.watching.progress(
            app.status.borrow().newest_event_time,
            app.metrics.control.consumer_lag().unwrap_or(-1),
        )
    }

    /// The bytes of shared pieces for this client's scope and encoding.
    fn bytes_of(&self, pieces: &[Piece], metrics: &Metrics) -> Vec<Bytes> {
        pieces
            .iter()
            .filter_map(|piece| {
                if let Piece::Span(_) = piece {
                    metrics.span_writes.inc();
                }
                piece.bytes_for(self.store.as_ref(), self.encoding)
            })
            .collect()
    }

    /// The writes of an opening: the snapshot (if any), then its pieces.
    fn opening(&mut self, subscription: &Subscription, metrics: &Metrics) -> Vec<Bytes> {
        self.last_seq = subscription.last_seq;
        let snapshot = subscription
            .snapshot
            .as_ref()
            .map(|event| event.for_encoding(self.encoding));
        snapshot
            .into_iter()
            .chain(self.bytes_of(&subscription.pieces, metrics))
            .collect()
    }

    /// The writes for a received frame: its own bytes when it is the next and nothing is
    /// queued behind it; else the log's catch-up to the newest frame (`None`: the log no
    /// longer holds what follows this client's last frame).
    fn on_frame(
        &mut self,
        frame: &live::Frame,
        queued: bool,
        metrics: &Metrics,
    ) -> Option<Vec<Bytes>> {
        if frame.seq <= self.last_seq {
            return Some(Vec::new()); // covered by a catch-up already written
        }
        if frame.seq == self.last_seq + 1 && !queued {
            self.last_seq = frame.seq;
            let bytes = frame.bytes_for(self.store.as_ref());
            return Some(
                bytes
                    .map(|e| e.for_encoding(self.encoding))
                    .into_iter()
                    .collect(),
            );
        }
        self.catch_up(metrics)
    }

    /// What a stream writes first: the gzip header (if gzip), the `retry:` line, then its
    /// opening.
    fn first_bytes(&mut self, subscription: &Subscription, metrics: &Metrics) -> Vec<Bytes> {
        let mut first = Vec::new();
        if self.encoding == Encoding::Gzip {
            first.push(Bytes::from_static(&live::GZIP_HEADER));
        }
        first.push(self.retry.for_encoding(self.encoding));
        first.extend(self.opening(subscription, metrics));
        first
    }

    /// The `write` span of frame `seq` on a traced connection, if the frame carried sampled
    /// records.
    fn write_span(&self, seq: u64) -> Option<tracing::Span> {
        let parent = self.traced.then(|| self.hub.trace_of(seq)).flatten()?;
        Some(crate::telemetry::write_span(
            parent,
            seq,
            self.store.as_ref().map(|s| s.0.as_str()),
        ))
    }

    /// A client the log has moved past starts again as `live::start` says for it (a
    /// snapshot, shared when fresh): the opening's bytes and the frames after it; `None`
    /// if the feed ended.
    async fn reopen(
        &mut self,
        app: &AppState,
        metrics: &Metrics,
    ) -> Option<(
        Vec<Bytes>,
        tokio::sync::broadcast::Receiver<Arc<live::Frame>>,
    )> {
        let hub = Arc::clone(&self.hub);
        match open(app, &hub, self.store.clone(), None).await {
            Ok(Subscribed::Started(fresh)) => Some((self.opening(&fresh, metrics), fresh.live)),
            _ => None,
        }
    }

    /// The shared pieces from this client's last frame to the newest.
    fn catch_up(&mut self, metrics: &Metrics) -> Option<Vec<Bytes>> {
        let (pieces, newest) = self.hub.catch_up(self.last_seq)?;
        metrics.catch_ups.inc();
        self.last_seq = newest;
        Some(self.bytes_of(&pieces, metrics))
    }
}

/// The body of one stream: the opening, then frames, catch-ups and progress events, until
/// the client goes, the server stops, or the engine ends.
fn writer(
    app: AppState,
    mut client: Client,
    subscription: Subscription,
    stall: StallWatch,
    guard: SubscriberGuard,
) -> impl futures_core::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    async_stream::stream! {
        let mut guard = guard;
        let metrics = Arc::clone(&app.metrics);
        let first = client.first_bytes(&subscription, &metrics);
        let mut live = subscription.live;
        for bytes in first {
            stall.offered();
            yield Ok(bytes);
            stall.taken();
        }
        let heartbeat = app.stream.heartbeat;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut ends = client.ending.at();
        let mut renewals = client.ending.session.as_ref().map(|s| s.expiry.clone());
        let ended = tokio::time::sleep_until(ends.map_or_else(tokio::time::Instant::now, |e| e.0));
        tokio::pin!(ended);
        let drain = Arc::clone(&app.drain);
        let turn = drain.next_turn();
        let drained = async move { drain.ended(turn).await };
        tokio::pin!(drained);
        // Paced (an edge): no frame is written before this; those that arrive meanwhile
        // are caught up with at once after it.
        let mut paced_until: Option<tokio::time::Instant> = None;
        loop {
            let mut write_span = None;
            let next_frame = async {
                if let Some(at) = paced_until {
                    tokio::time::sleep_until(at).await;
                }
                live.recv().await
            };
            let written = tokio::select! {
                received = next_frame => {
                    let writes = match received {
                        Ok(frame) => {
                            write_span = client.write_span(frame.seq);
                            client.on_frame(&frame, !live.is_empty(), &metrics)
                        }
                        Err(RecvError::Lagged(_)) => {
                            metrics.lagged_subscribers.inc();
                            client.catch_up(&metrics)
                        }
                        Err(RecvError::Closed) => {
                            guard.ending = Some(DisconnectReason::FeedEnded);
                            break;
                        }
                    };
                    // Paced from a write on; frames a catch-up already covered are
                    // passed over at once (waiting a pace for each would fall behind).
                    paced_until = match &writes {
                        Some(bytes) if !bytes.is_empty() => app.frame_pace(),
                        _ => None,
                    };
                    writes
                }
                _ = ticker.tick() => Some(vec![client.progress(&app).for_encoding(client.encoding)]),
                () = app.stop.cancelled() => {
                    guard.ending = Some(DisconnectReason::Shutdown);
                    break;
                }
                () = &mut drained => {
                    guard.ending = Some(DisconnectReason::Shutdown);
                    break;
                }
                () = Ending::moved(&mut renewals) => {
                    ends = client.ending.at();
                    if let Some((at, _)) = ends {
                        ended.as_mut().reset(at);
                    }
                    Some(Vec::new())
                }
                () = &mut ended, if ends.is_some() => {
                    let end_reason = ends.map_or(DisconnectReason::Lifetime, |e| e.1);
                    guard.ending = Some(end_reason);
                    if end_reason == DisconnectReason::SessionExpired {
                        yield Ok(SESSION_EXPIRED.for_encoding(client.encoding));
                    }
                    break;
                }
            };
            let writes = match written {
                Some(writes) => writes,
                // The log moved past this client: a snapshot (rule 3), shared when fresh.
                None => match client.reopen(&app, &metrics).await {
                    Some((writes, fresh)) => {
                        live = fresh;
                        writes
                    }
                    None => {
                        guard.ending = Some(DisconnectReason::FeedEnded);
                        break;
                    }
                },
            };
            let bytes_written: usize = writes.iter().map(Bytes::len).sum();
            for bytes in writes {
                stall.offered();
                yield Ok(bytes);
                stall.taken();
            }
            // Ends once hyper took the bytes into the connection's buffer.
            if let Some(span) = write_span.take() {
                span.record("storepulse.write.bytes", bytes_written);
            }
        }
    }
}

/// Disconnects a client that stops taking bytes: hyper polls a body only when the socket
/// has room, so a chunk offered and not taken for `timeout` means the client is not reading.
/// The stream cannot end itself then (it is not polled), so a timer task flips the
/// connection's kill switch; the client reconnects with its Last-Event-ID (rule 2 or 3).
pub(super) struct StallWatch {
    /// Milliseconds since `epoch` when the pending chunk was offered; 0 when none is.
    offered_at: Arc<AtomicU64>,
    /// The connection's chunks taken (all its streams) when the pending one was offered.
    offered_taken: Arc<AtomicU64>,
    /// The connection's switch (and its shared counters).
    kill: Option<KillSwitch>,
    epoch: tokio::time::Instant,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    /// Set when the watch closed the connection.
    fired: Arc<AtomicBool>,
}

impl StallWatch {
    pub(super) fn start(
        kill: Option<KillSwitch>,
        timeout: Duration,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let offered_at = Arc::new(AtomicU64::new(0));
        let offered_taken = Arc::new(AtomicU64::new(0));
        let fired = Arc::new(AtomicBool::new(false));
        let epoch = tokio::time::Instant::now();
        let watchdog = kill.clone().filter(|_| !timeout.is_zero()).map(|kill| {
            let pending = Pending {
                offered_at: Arc::clone(&offered_at),
                offered_taken: Arc::clone(&offered_taken),
            };
            let fired = Arc::clone(&fired);
            tasks.spawn(watch_for_stall(pending, epoch, timeout, kill, fired))
        });
        StallWatch {
            offered_at,
            offered_taken,
            kill,
            epoch,
            watchdog,
            fired,
        }
    }

    /// True once the watch has closed the connection.
    pub(super) fn fired(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.fired)
    }

    /// A chunk is handed to hyper.
    pub(super) fn offered(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(kill) = &self.kill {
            self.offered_taken.store(kill.taken(), Ordering::Release);
        }
        self.offered_at.store(ms.max(1), Ordering::Release);
    }

    /// hyper polled again: the chunk went into the connection's buffer.
    pub(super) fn taken(&self) {
        self.offered_at.store(0, Ordering::Release);
        if let Some(kill) = &self.kill {
            kill.note_taken();
        }
    }
}

/// A stream's pending chunk, as its watchdog sees it.
struct Pending {
    offered_at: Arc<AtomicU64>,
    offered_taken: Arc<AtomicU64>,
}

/// Sleeps until a chunk has been offered and not taken for `timeout`, then kills. On an
/// HTTP/2 connection whose other streams took chunks meanwhile, the connection is alive and
/// only this stream is held by its flow-control window: it is left open (closing the
/// connection would cut every other stream on it).
async fn watch_for_stall(
    pending: Pending,
    epoch: tokio::time::Instant,
    timeout: Duration,
    kill: KillSwitch,
    fired: Arc<AtomicBool>,
) {
    let mut deadline = epoch + timeout;
    loop {
        tokio::time::sleep_until(deadline).await;
        let since = pending.offered_at.load(Ordering::Acquire);
        if since == 0 {
            deadline = tokio::time::Instant::now() + timeout;
            continue;
        }
        let stuck_from = epoch + Duration::from_millis(since);
        if kill.is_multiplexed() && kill.taken() != pending.offered_taken.load(Ordering::Acquire) {
            // Other streams move: look again a timeout later.
            pending.offered_taken.store(kill.taken(), Ordering::Release);
            deadline = tokio::time::Instant::now() + timeout;
            continue;
        }
        if stuck_from + timeout <= tokio::time::Instant::now() {
            fired.store(true, Ordering::Release);
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
        let watch = StallWatch::start(
            Some(kill.clone()),
            Duration::from_secs(30),
            &tokio_util::task::TaskTracker::new(),
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
        assert!(watch.fired().load(Ordering::Acquire), "and says so");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_never_disconnects() {
        let kill = KillSwitch::default();
        let watch = StallWatch::start(
            Some(kill.clone()),
            Duration::ZERO,
            &tokio_util::task::TaskTracker::new(),
        );
        watch.offered();
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert!(!kill.is_killed());
    }
}
