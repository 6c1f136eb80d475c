//! The HTTP API (axum): snapshots, health, readiness and metrics. The only axum code.
//!
//! Handlers never touch the state: a snapshot is requested from the ingest thread, which
//! serialises it once per (position, scope) and caches it.

use crate::checkpoint::CheckpointStore;
use crate::events::StoreId;
use crate::ingest::{Request, Status};
use crate::metrics::Metrics;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

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
        .route("/", get(index))
        .route("/api/snapshot", get(snapshot))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(
        "<!doctype html><title>storepulse</title><h1>storepulse</h1>\
         <ul><li><a href=\"/api/snapshot\">/api/snapshot</a> (all stores; <code>?store=ID</code> for one)</li>\
         <li><a href=\"/readyz\">/readyz</a></li><li><a href=\"/metrics\">/metrics</a></li></ul>",
    )
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
