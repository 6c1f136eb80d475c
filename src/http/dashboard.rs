//! The operations dashboard's assets, embedded in the binary (no CDN, no runtime network):
//! `/` (the page), `/dashboard.js`, `/merge.js` (the stream's merge rules, imported by the
//! page and by the browser tests), `/dashboard.css`. The page itself lives in
//! `src/http/dashboard/`; it talks to `/api/stream` only.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const MERGE: &str = include_str!("dashboard/merge.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Everything the page may load: its own origin (and the origin of `auth.renew_url`, the
/// only other place it fetches from), nothing inline but CSSOM styles; never framed
/// (clickjacking).
fn policy(connect_also: &str) -> HeaderValue {
    let connect = if connect_also.is_empty() {
        "'self'".to_owned()
    } else {
        format!("'self' {connect_also}")
    };
    HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src {connect}; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

fn asset(content_type: &'static str, body: &'static str, policy: HeaderValue) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small and versioned with the binary: revalidate, never serve a stale page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, policy),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
}

/// The dashboard's routes; `connect_also` is another origin the page may fetch from (that
/// of `auth.renew_url`; empty for none).
pub fn routes<S: Clone + Send + Sync + 'static>(connect_also: &str) -> Router<S> {
    let policy = policy(connect_also);
    let mut router = Router::new();
    for (path, content_type, body) in [
        ("/", "text/html; charset=utf-8", PAGE),
        ("/dashboard.js", "text/javascript; charset=utf-8", SCRIPT),
        ("/merge.js", "text/javascript; charset=utf-8", MERGE),
        ("/dashboard.css", "text/css; charset=utf-8", STYLE),
    ] {
        let policy = policy.clone();
        router = router.route(
            path,
            get(move || async move { asset(content_type, body, policy) }),
        );
    }
    router
}
