//! `GET /api/replay/stream`: a past range replayed over the live stream's protocol (see
//! `replay/stream.rs`), for the dashboard's "watch a past sale". Validates the request,
//! takes a slot (503 with `Retry-After` when every slot is busy) and relays the replay
//! thread's bytes until the range ends, the token expires (`session-expired`) or the server
//! stops (`shutdown`: a deploy never waits for a replay to end).

use super::{ApiError, AppState};
use crate::replay::stream::ReplayRequest;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| ApiError {
            status: StatusCode::BAD_REQUEST,
            reason: format!("{name}: out of range"),
        })
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
    let store = super::store_param(query.store.clone())?;
    super::access::check_store(&principal, store.as_ref())?;
    if let Some(axum::Extension(axum::extract::ConnectInfo(connection))) = &connection
        && let Err(refusal) = app.limits.admit(
            app.limits.client_address(connection.remote.ip(), &headers),
            std::time::Instant::now(),
        )
    {
        return Ok(refusal.into_response());
    }
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
    let request = ReplayRequest {
        from_ms,
        to_ms,
        speed,
        store,
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.since.as_deref());
    let Ok(mut bytes) = app.replays.start(request, last_event_id) else {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            axum::Json(json!({ "error": "every replay slot is busy (replay.max_concurrent); retry later" })),
        )
            .into_response());
    };
    // A replay stream ends at its token's expiry too, with the same last event as a live
    // one; dropping the receiver stops the replay thread.
    let expires_in = principal.expires_at_ms.map(|at_ms| {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        std::time::Duration::from_millis(u64::try_from(at_ms - now_ms).unwrap_or(0))
    });
    let stop = app.stop.clone();
    let body = Body::from_stream(async_stream::stream! {
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
    });
    let mut response = body.into_response();
    let response_headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache, no-transform"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ] {
        response_headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}
