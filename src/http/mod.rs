//! The HTTP API (axum): the router, snapshots, stock pages, health, readiness and metrics;
//! the live stream is `stream.rs`, the sockets `listener.rs`, the connection loop
//! `server.rs`, the page `dashboard.rs`. The only axum and hyper code.
//!
//! Handlers never touch the state: a snapshot is requested from the ingest engine, which
//! answers with shared views (pointer copies, cached per position and scope); the handler
//! serialises them on a blocking worker, once, and every later request shares the bytes.

use crate::auth::Principal;
use crate::checkpoint::CheckpointStore;
use crate::config::StreamSection;
use crate::events::StoreId;
use crate::fanout::{Request, Status};
use crate::metrics::Metrics;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub mod access;
mod dashboard;
pub mod drain;
pub mod limits;
pub mod listener;
mod replay;
pub mod server;
pub mod sessions;
mod stream;
pub mod tls;
pub mod watchers;
pub use stream::retry_line;
#[cfg(test)]
mod tests;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The live stream's shared side, set once the partition layout is known.
    pub hub: Arc<std::sync::OnceLock<Arc<crate::fanout::Hub>>>,
    /// Requests to the ingest thread.
    pub requests: mpsc::Sender<Request>,
    /// Ingest status.
    pub status: watch::Receiver<Status>,
    /// The checkpoint store (readiness checks it answers); `None` for a role without one
    /// (a cluster's edge).
    pub checkpoints: Option<CheckpointStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Most records behind that still count as ready.
    pub max_lag: i64,
    /// Live-stream settings (`[stream]`).
    pub stream: Arc<StreamSection>,
    /// Cancelled on shutdown: open streams end so the server can stop.
    pub stop: CancellationToken,
    /// The drain before the stop: readiness false, streams ending at their turns.
    pub drain: Arc<drain::Drain>,
    /// The open streams per scope, and the heartbeat's `progress` event of each scope,
    /// encoded once per change for its streams.
    pub watchers: Arc<watchers::Watchers>,
    /// The `retry:` line every stream opens with (`stream.retry`), encoded once.
    pub retry: Arc<crate::live::Encoded>,
    /// Replays streamed to dashboards.
    pub replays: Arc<crate::replay::stream::ReplayService>,
    /// Who may read what (tokens, scopes, CORS).
    pub access: Arc<access::AccessControl>,
    /// Per-client stream caps and request rates.
    pub limits: Arc<limits::ClientLimits>,
    /// `serve`'s task tracker: connections, watchdogs and replays are spawned on it.
    pub tasks: tokio_util::task::TaskTracker,
    /// Each stream writes frames at most once per (stretched) `stream.frame_interval`,
    /// catching up with the log's shared pieces: an edge's frames come from every slice,
    /// up to one per slice per interval, where `serve` makes at most one.
    pub pace_frames: bool,
}

impl AppState {
    /// When a paced stream may write its next frame (`None`: not paced).
    pub fn frame_pace(&self) -> Option<tokio::time::Instant> {
        self.pace_frames.then(|| {
            tokio::time::Instant::now()
                + crate::ingest::stretched_interval(
                    self.stream.frame_interval,
                    self.metrics.control.open_streams(),
                )
        })
    }

    /// 503 until the ingest thread has assigned its partitions.
    fn ensure_assigned(&self) -> Result<(), ApiError> {
        if self.status.borrow().assigned {
            Ok(())
        } else {
            Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "starting: partitions are not assigned yet (see /readyz)".into(),
            })
        }
    }
}

/// An error response: a status and a reason, as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
}

impl ApiError {
    fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: rejection.body_text(),
        }
    }

    fn ingest_stopped() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the ingest loop is not running".into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }

    /// A store with no events, or out of the token's scope: the same answer, so store ids
    /// cannot be probed.
    fn unknown_store(store: &StoreId) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            reason: format!("no events for store {:?} yet", store.0),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.reason }))).into_response()
    }
}

/// The `store` parameter of every endpoint: absent (all stores), or a store id by the
/// same rule the events' `store_id` follows (1 to 128 bytes, no control, space or
/// invisible character, not `all` or `other`); anything else is the same 400 everywhere,
/// with the rule's reason.
/// Why a request for a scope is refused: a bad or forbidden `store` (4xx with a reason), or
/// the caller's request rate (429 with `Retry-After`).
enum ScopeRefusal {
    Bad(ApiError),
    Limited(limits::Refusal),
}

impl IntoResponse for ScopeRefusal {
    fn into_response(self) -> Response {
        match self {
            ScopeRefusal::Bad(error) => error.into_response(),
            ScopeRefusal::Limited(refusal) => refusal.into_response(),
        }
    }
}

/// The scope a request asks for, checked the one way `/api/snapshot`, `/api/stream` and
/// `/api/replay/stream` check it: `store` is a store id, the caller's token may read it, and
/// the caller's address is within its request rate (`limits.*`). Returns the store and
/// that address (streams cap their count per address too).
fn scope(
    app: &AppState,
    principal: &Principal,
    connection: Option<&listener::Connection>,
    headers: &axum::http::HeaderMap,
    store: Option<String>,
) -> Result<(Option<StoreId>, Option<std::net::IpAddr>), ScopeRefusal> {
    let store = store_param(store).map_err(ScopeRefusal::Bad)?;
    access::check_store(principal, store.as_ref()).map_err(ScopeRefusal::Bad)?;
    let address = connection.map(|c| app.limits.client_address(c.remote.ip(), headers));
    if let Some(address) = address {
        app.limits
            .admit(address, std::time::Instant::now())
            .map_err(ScopeRefusal::Limited)?;
    }
    Ok((store, address))
}

fn store_param(store: Option<String>) -> Result<Option<StoreId>, ApiError> {
    match store {
        Some(store) => match crate::events::store_id_problem(&store) {
            Some(problem) => Err(ApiError::bad_request(format!(
                "store must be a store id (1 to 128 bytes, visible characters, not all or other): it {problem}"
            ))),
            None => Ok(Some(StoreId(store))),
        },
        None => Ok(None),
    }
}

/// Longest request target (path and query) answered; longer is 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of request headers (names and values) answered; more is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// 414 and 431 with a JSON reason, before any handler runs (hyper's own limits, far
/// above these, answer without a body).
async fn request_limits(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError {
            status: StatusCode::URI_TOO_LONG,
            reason: format!("the request target is {uri} bytes; at most {MAX_URI_BYTES}"),
        }
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: format!("the request headers are {headers} bytes; at most {MAX_HEADER_BYTES}"),
        }
        .into_response();
    }
    next.run(request).await
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        reason: format!(
            "no such endpoint: {}",
            uri.path().chars().take(200).collect::<String>()
        ),
    }
}

async fn wrong_method(method: axum::http::Method) -> Response {
    let mut response = ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        reason: format!("{method} is not allowed here; endpoints answer GET (and HEAD), /api/session also POST and DELETE"),
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

/// The router, testable without a socket.
pub fn app(state: AppState) -> Router {
    use axum::middleware::from_fn;
    let metrics_route = if state.access.protect_metrics {
        get(metrics).route_layer(from_fn(access::operator))
    } else {
        get(metrics)
    };
    Router::new()
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/api/snapshot",
            get(snapshot).route_layer(from_fn(access::viewer)),
        )
        .route(
            "/api/stock",
            get(stock).route_layer(from_fn(access::viewer)),
        )
        .route(
            "/api/stores",
            get(stores).route_layer(from_fn(access::viewer)),
        )
        // Checks its own credentials (sign-in and sign-out).
        .route(
            "/api/session",
            get(access::current)
                .post(access::create)
                .delete(access::end),
        )
        .route(
            "/api/stream",
            get(stream::stream).route_layer(from_fn(access::viewer)),
        )
        .route(
            "/api/replay/stream",
            get(replay::replay_stream).route_layer(from_fn(access::analyst)),
        )
        // Any other API path needs a viewer too (401 before 404: no probing without a token).
        .route(
            "/api/{*rest}",
            get(no_route).route_layer(from_fn(access::viewer)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", metrics_route)
        .merge(dashboard::routes(&state.access.renew_origin))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::cors_layer,
        ))
        .layer(axum::middleware::from_fn(request_limits))
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
    Extension(principal): Extension<Principal>,
    connection: Option<Extension<ConnectInfo<listener::Connection>>>,
    headers: axum::http::HeaderMap,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_query(e).into_response())?;
    let connection = connection.as_ref().map(|c| &c.0.0);
    let (store, _) = scope(&app, &principal, connection, &headers, query.store)
        .map_err(IntoResponse::into_response)?;
    snapshot_of(&app, store)
        .await
        .map_err(IntoResponse::into_response)
}

/// Query of `/api/stock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockQuery {
    /// The store (required).
    store: Option<String>,
    /// The page starts after this SKU.
    after: Option<String>,
    /// Most levels in the page.
    limit: Option<usize>,
}

/// Levels in a stock page unless `limit` says otherwise, and the most it may say.
pub const STOCK_PAGE: (usize, usize) = (500, 1_000);

/// One page of a store's stock levels, by SKU: the whole catalog is not in snapshots.
async fn stock(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<StockQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_query(e).into_response())?;
    let store = store_param(query.store)
        .and_then(|s| s.ok_or_else(|| ApiError::bad_request("store is required")))
        .map_err(IntoResponse::into_response)?;
    let limit = page_limit(query.limit, query.after.as_deref(), STOCK_PAGE, "a SKU id")
        .map_err(IntoResponse::into_response)?;
    access::check_store(&principal, Some(&store)).map_err(IntoResponse::into_response)?;
    let page = ask_engine(&app, |reply| Request::Stock {
        store: store.clone(),
        after: query.after,
        limit,
        reply,
    })
    .await
    .map_err(IntoResponse::into_response)?;
    match page {
        Some(page) => Ok(([(header::CACHE_CONTROL, "no-cache")], Json(page)).into_response()),
        None => Err(ApiError::unknown_store(&store).into_response()),
    }
}

/// Query of `/api/stores`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresQuery {
    /// The page starts after this store id.
    after: Option<String>,
    /// Most ids in the page.
    limit: Option<usize>,
}

/// Ids in a page of stores unless `limit` says otherwise, and the most it may say.
pub const STORE_PAGE: (usize, usize) = (500, 1_000);

/// One page of the stores seen, by id: the all-stores scope carries the rollup, not every
/// store, so this is where a dashboard finds the stores to choose from.
async fn stores(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<StoresQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_query(e).into_response())?;
    let limit = page_limit(
        query.limit,
        query.after.as_deref(),
        STORE_PAGE,
        "a store id",
    )
    .map_err(IntoResponse::into_response)?;
    // A token for some stores reads those (its session says which), not the list.
    access::check_store(&principal, None).map_err(IntoResponse::into_response)?;
    let page = ask_engine(&app, |reply| Request::Stores {
        after: query.after,
        limit,
        reply,
    })
    .await
    .map_err(IntoResponse::into_response)?;
    Ok(([(header::CACHE_CONTROL, "no-cache")], Json(page)).into_response())
}

/// The `limit` of a paged endpoint (`page`: its default and most) with its `after` checked
/// (`what` the ids are).
fn page_limit(
    limit: Option<usize>,
    after: Option<&str>,
    page: (usize, usize),
    what: &str,
) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(page.0);
    if !(1..=page.1).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {}",
            page.1
        )));
    }
    if after.is_some_and(|a| a.len() > 128) {
        return Err(ApiError::bad_request(format!(
            "after must be {what} (at most 128 bytes)"
        )));
    }
    Ok(limit)
}

/// Sends the ingest loop the request `ask` makes with a reply channel, and waits for its
/// answer (at most 10 s): `503` while the partitions are not assigned, when the loop has
/// stopped or does not answer in time.
async fn ask_engine<T>(
    app: &AppState,
    ask: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, ApiError> {
    app.ensure_assigned()?;
    let (reply, answer) = oneshot::channel();
    app.requests
        .send(ask(reply))
        .await
        .map_err(|_| ApiError::ingest_stopped())?;
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "the ingest loop did not answer in time".into(),
        })?
        .map_err(|_| ApiError::ingest_stopped())
}

async fn snapshot_of(app: &AppState, store: Option<StoreId>) -> Result<Response, ApiError> {
    let json = ask_engine(app, |reply| Request::Snapshot {
        store: store.clone(),
        reply,
    })
    .await?;
    match json {
        // Serialised here, off the ingest thread, once per position and scope: later
        // requests share the bytes.
        Some(snapshot) => Ok((
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            tokio::task::spawn_blocking(move || snapshot.bytes())
                .await
                .map_err(|_| ApiError::ingest_stopped())?,
        )
            .into_response()),
        None => Err(store
            .as_ref()
            .map_or_else(ApiError::ingest_stopped, ApiError::unknown_store)),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

/// Checkpoint attempts failing in a row (PostgreSQL answering, but the write refused: a
/// value too large, a table gone, a permission) from which `/readyz` is not ready.
pub const CHECKPOINT_FAILURES_NOT_READY: i64 = 3;

/// Longest a poison record may wait for the dead-letter topic while `/readyz` says ready.
const DEAD_LETTER_WAIT_READY_MS: i64 = 5_000;

async fn readyz(State(app): State<AppState>) -> Response {
    let status = app.status.borrow().clone();
    let reachable = match &app.checkpoints {
        Some(store) => tokio::time::timeout(Duration::from_secs(2), store.is_reachable())
            .await
            .unwrap_or(false),
        None => true,
    };
    let control = &app.metrics.control;
    let failing = control.checkpoint_failures_in_a_row();
    let checkpoint_store = reachable && failing < CHECKPOINT_FAILURES_NOT_READY;
    let lag = control.consumer_lag();
    let caught_up = status.assigned && lag.is_some_and(|lag| lag <= app.max_lag);
    let dead_letters_pending = control.dead_letters_pending();
    let dead_letters_oldest_ms =
        i64::try_from(control.dead_letters_oldest().as_millis()).unwrap_or(i64::MAX);
    // A poison record waiting this long means the dead-letter topic is not taking them:
    // checkpoints are held back until it does.
    let dead_letter_topic = dead_letters_oldest_ms < DEAD_LETTER_WAIT_READY_MS;
    let draining = app.drain.is_draining();
    let ready = caught_up && checkpoint_store && dead_letter_topic && !draining;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "consumer": {
            "ready": caught_up,
            "assigned": status.assigned,
            "lag": lag,
            "max_lag": app.max_lag,
            "newest_event_time_ms": status.newest_event_time,
        },
        "checkpoint_store": {
            "ready": checkpoint_store,
            "reachable": reachable,
            "consecutive_failures": failing,
        },
        "dead_letter_topic": {
            "ready": dead_letter_topic,
            "pending": dead_letters_pending,
            "oldest_wait_ms": dead_letters_oldest_ms,
        },
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
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
}
