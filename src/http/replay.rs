//! `GET /api/replay/stream`: a past range replayed over the live stream's protocol (see
//! `replay/stream.rs`), for the dashboard's "watch a past sale". Validates the request,
//! takes a slot (503 with `Retry-After` when every slot is busy) and relays the replay
//! thread's bytes until the range ends, the token expires (`session-expired`) or the server
//! stops (`shutdown`: a deploy never waits for a replay to end).

use super::{ApiError, AppState};
use crate::events::StoreId;
use crate::replay::stream::ReplayRequest;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// The query.
#[derive(Debug, Deserialize)]
pub(super) struct ReplayQuery {
    /// Start, RFC 3339.
    from: String,
    /// End, RFC 3339.
    to: String,
    /// Event time per wall time (1 to 1000; default 10).
    speed: Option<u32>,
    /// One store.
    store: Option<String>,
    /// The last id seen, for a client that cannot send `Last-Event-ID` (a new
    /// EventSource after a pause).
    since: Option<String>,
}

fn time(name: &str, value: &str) -> Result<i64, ApiError> {
    let at = humantime::parse_rfc3339_weak(value).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        reason: format!("{name}: {e} (e.g. 2026-12-02T14:00:00Z)"),
    })?;
    match crate::wall_clock::unix_ms_of(at) {
        0 | i64::MAX => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: format!("{name}: out of range"),
        }),
        ms => Ok(ms),
    }
}

/// The handler.
pub(super) async fn replay_stream(
    State(app): State<AppState>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    connection: Option<axum::Extension<axum::extract::ConnectInfo<super::listener::Connection>>>,
    headers: HeaderMap,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::bad_query)?;
    let (store, _) = match super::scope(
        &app,
        &principal,
        connection.as_ref().map(|c| &c.0.0),
        &headers,
        query.store.clone(),
    ) {
        Ok(scope) => scope,
        Err(super::ScopeRefusal::Bad(error)) => return Err(error),
        Err(limited) => return Ok(limited.into_response()),
    };
    let request = request_of(&query, store)?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.since.as_deref());
    let Ok(bytes) = app.replays.start(request, last_event_id) else {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            axum::Json(json!({ "error": "every replay slot is busy (replay.max_concurrent); retry later" })),
        )
            .into_response());
    };
    Ok(super::stream::sse_response(
        relay(bytes, principal.session_left(), app.stop.clone()),
        crate::live::Encoding::Identity,
    ))
}

/// The range, speed and store asked for, checked: 400 with the reason otherwise.
fn request_of(query: &ReplayQuery, store: Option<StoreId>) -> Result<ReplayRequest, ApiError> {
    let bad = |reason: String| ApiError {
        status: StatusCode::BAD_REQUEST,
        reason,
    };
    let from_ms = time("from", &query.from)?;
    let to_ms = time("to", &query.to)?;
    if to_ms <= from_ms {
        return Err(bad(format!(
            "to ({}) is not after from ({})",
            query.to, query.from
        )));
    }
    let speed = query.speed.unwrap_or(10);
    if !(1..=1000).contains(&speed) {
        return Err(bad(format!("speed {speed} is not between 1 and 1000")));
    }
    Ok(ReplayRequest {
        from_ms,
        to_ms,
        speed,
        store,
    })
}

/// The response body: the replay's bytes until it ends, the token expires (`expires_in`,
/// with the same last event as a live stream) or the server stops (`event: shutdown`);
/// dropping the receiver stops the replay thread.
fn relay(
    mut bytes: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    expires_in: Option<std::time::Duration>,
    stop: tokio_util::sync::CancellationToken,
) -> Body {
    Body::from_stream(async_stream::stream! {
        let expiry = tokio::time::sleep(expires_in.unwrap_or_default());
        tokio::pin!(expiry);
        loop {
            // (bytes to write, whether they are the last)
            let (chunk, last) = tokio::select! {
                chunk = bytes.recv() => match chunk {
                    Some(chunk) => (chunk, false),
                    None => break,
                },
                () = &mut expiry, if expires_in.is_some() => {
                    (super::stream::session_expired_event(), true)
                }
                // The server stops: the stream ends now (dropping the receiver stops the
                // replay thread), or graceful shutdown would wait for the whole range.
                () = stop.cancelled() => (super::stream::shutdown_event(), true),
            };
            yield Ok::<_, std::convert::Infallible>(chunk);
            if last {
                break;
            }
        }
    })
}
