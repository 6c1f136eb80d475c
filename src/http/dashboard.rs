//! The operations dashboard's assets, embedded in the binary (no CDN, no runtime network):
//! `/` (the page), `/dashboard.js`, `/merge.js` (the stream's merge rules, imported by the
//! page and by the browser tests), `/dashboard.css`. The page itself lives in
//! `src/http/dashboard/`; it talks to `/api/stream` only.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const MERGE: &str = include_str!("dashboard/merge.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Everything the page may load: its own origin, nothing inline but CSSOM styles; never
/// framed (clickjacking).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small and versioned with the binary: revalidate, never serve a stale page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// The dashboard's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/merge.js",
            get(|| async { asset("text/javascript; charset=utf-8", MERGE) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
