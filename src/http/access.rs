//! Access control on the HTTP side: where a token is read from (the `Authorization`
//! header, or the `__Host-storepulse-session` cookie set by `POST /api/session`; never the
//! URL), which endpoints need one, CORS, and the session endpoints. Verification and
//! scopes are `crate::auth`; each handler checks its store against the request's
//! [`Principal`] with [`check_store`].

use super::sessions::{Renewal, SESSION_ID_COOKIE};
use super::{ApiError, AppState};
use crate::auth::{Access, AuthError, Principal, Role, Verifier};
use crate::events::StoreId;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

/// The session cookie. `__Host-`: only set with `Secure`, from this origin, for `/`.
pub const SESSION_COOKIE: &str = "__Host-storepulse-session";

/// Query parameters that look like a credential: refused on every endpoint.
const TOKEN_PARAMETERS: &[&str] = &[
    "access_token",
    "token",
    "jwt",
    "id_token",
    "auth",
    "authorization",
    "bearer",
    "session",
];

/// What the access layer needs.
pub struct AccessControl {
    /// `None`: `auth.mode = "none"`, everyone is [`Principal::anonymous`].
    pub verifier: Option<Arc<Verifier>>,
    /// Whether `/metrics` needs role operator.
    pub protect_metrics: bool,
    /// Origins allowed to call from a browser page.
    pub cors_origins: Vec<String>,
    /// Where the page fetches a fresh token to renew its session (`auth.renew_url`).
    pub renew_url: Option<String>,
    /// That URL's origin when it is another than this one (for the page's CSP), else empty.
    pub renew_origin: String,
    /// The sessions whose streams follow their renewals.
    pub sessions: Arc<super::sessions::Sessions>,
}

impl AccessControl {
    /// Who may read what: refuses `auth.mode = "none"` on a non-loopback address unless
    /// `auth.allow_anonymous`, reads the key files, and reloads them on SIGHUP (a task of
    /// `tasks` that ends on `stop`).
    pub fn from_settings(
        settings: &crate::config::Settings,
        tasks: &tokio_util::task::TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<AccessControl> {
        use anyhow::Context;
        let auth = &settings.auth;
        if auth.mode == "none" && !settings.http.addr.ip().is_loopback() && !auth.allow_anonymous {
            anyhow::bail!(
                "http.addr {} is not a loopback address and auth.mode is \"none\": anyone who can reach it would read every store. Set auth.mode = \"jwt\" with a key (README, Security), or auth.allow_anonymous = true (STOREPULSE_AUTH_ALLOW_ANONYMOUS=true) if a proxy in front authenticates",
                settings.http.addr
            );
        }
        let verifier = crate::auth::Verifier::new(auth)
            .context("auth key files")?
            .map(Arc::new);
        if let Some(verifier) = &verifier {
            let verifier = Arc::clone(verifier);
            crate::tasks::on_hangup(tasks, stop, move || match verifier.reload() {
                Ok(keys) => tracing::info!(keys, "SIGHUP: auth keys reloaded"),
                Err(error) => {
                    tracing::error!(error = %error, "SIGHUP: auth keys not reloaded; the keys in use stay");
                }
            });
        }
        Ok(AccessControl {
            verifier,
            protect_metrics: auth.protect_metrics,
            cors_origins: settings.http.cors_origins.clone(),
            renew_url: Some(auth.renew_url.clone()).filter(|u| !u.is_empty()),
            renew_origin: auth.renew_origin().unwrap_or_default().to_owned(),
            sessions: Arc::default(),
        })
    }
}

impl AccessControl {
    /// No access control (the default on loopback, and most tests).
    pub fn open() -> AccessControl {
        AccessControl {
            verifier: None,
            protect_metrics: false,
            cors_origins: Vec::new(),
            renew_url: None,
            renew_origin: String::new(),
            sessions: Arc::default(),
        }
    }
}

/// A request whose credentials did not verify (or were missing): kept for the routes that
/// need a role, which answer 401 with it.
#[derive(Clone, Debug)]
struct Unauthenticated(AuthError);

/// The middleware a route that needs role viewer is declared with (`http::app`,
/// `route_layer(from_fn(access::viewer))`): 401 without a valid token, 403 with one of a
/// lower role. A route declared without one of these needs nothing.
pub async fn viewer(request: Request, next: Next) -> Response {
    require(Role::Viewer, request, next).await
}

/// Like [`viewer`], for the routes that need role analyst.
pub async fn analyst(request: Request, next: Next) -> Response {
    require(Role::Analyst, request, next).await
}

/// Like [`viewer`], for the routes that need role operator.
pub async fn operator(request: Request, next: Next) -> Response {
    require(Role::Operator, request, next).await
}

async fn require(role: Role, request: Request, next: Next) -> Response {
    match request.extensions().get::<Principal>() {
        Some(principal) if principal.role < role => ApiError {
            status: StatusCode::FORBIDDEN,
            reason: format!("this needs a token with role {} or above", role.as_str()),
        }
        .into_response(),
        Some(_) => next.run(request).await,
        None => {
            let error = request
                .extensions()
                .get::<Unauthenticated>()
                .map_or(AuthError::Missing, |u| u.0.clone());
            unauthorized(&error)
        }
    }
}

/// The bearer token of a request: the `Authorization` header, else the session cookie.
fn token(headers: &HeaderMap, cookie_too: bool) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    if !cookie_too {
        return None;
    }
    cookie(headers, SESSION_COOKIE)
}

/// The value of the request's cookie `name`, if it has one.
pub(super) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie, _)| *cookie == name)
        .map(|(_, value)| value)
}

fn unauthorized(error: &AuthError) -> Response {
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        reason: error.to_string(),
    }
    .into_response();
    let challenge = match error {
        AuthError::Missing => "Bearer realm=\"storepulse\"",
        AuthError::Expired | AuthError::Invalid(_) => {
            "Bearer realm=\"storepulse\", error=\"invalid_token\""
        }
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The principal of a request's credentials (header or cookie).
fn authenticate(control: &AccessControl, headers: &HeaderMap) -> Result<Principal, AuthError> {
    match &control.verifier {
        None => Ok(Principal::anonymous()),
        Some(verifier) => verifier.verify(token(headers, true).ok_or(AuthError::Missing)?),
    }
}

/// The layer: refuses credentials in the URL, verifies the request's credentials if it has
/// any, and puts the [`Principal`] (or why there is none) in the request; each route that
/// needs a role says so where it is declared ([`viewer`], [`analyst`], [`operator`]).
pub async fn layer(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query()
        && let Some(name) = query
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
            .find(|name| TOKEN_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()))
    {
        return ApiError::bad_request(format!(
            "{name}: tokens are not accepted in the URL (URLs end up in logs, proxies and browser history); send Authorization: Bearer, or POST /api/session for a cookie"
        ))
        .into_response();
    }
    match authenticate(&app.access, request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
        }
        Err(error) => {
            request.extensions_mut().insert(Unauthenticated(error));
        }
    }
    next.run(request).await
}

/// Answers CORS preflights and adds CORS headers for allowed origins. Outside the access
/// layer, so a preflight (which carries no credentials) is answered.
pub async fn cors_layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_deref()
        .filter(|origin| app.access.cors_origins.iter().any(|o| o == origin));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = allowed else {
            return ApiError {
                status: StatusCode::FORBIDDEN,
                reason: "this origin may not call the API (http.cors_origins)".into(),
            }
            .into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow_origin(headers, origin);
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, DELETE"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, last-event-id, content-type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        return response;
    }
    let allowed = allowed.map(str::to_owned);
    let mut response = next.run(request).await;
    if let Some(origin) = allowed {
        allow_origin(response.headers_mut(), &origin);
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// Whether `principal` may read `store` (`None`: all stores and the rollup). A store out
/// of scope is answered exactly as a store with no events, so ids cannot be probed.
pub fn check_store(principal: &Principal, store: Option<&StoreId>) -> Result<(), ApiError> {
    match principal.access(store) {
        Access::Allowed => Ok(()),
        Access::NotInScope => Err(ApiError::unknown_store(store.expect("a store"))),
        Access::NeedsStore => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            reason: "this token reads some stores only: ask for one with ?store=<id>".into(),
        }),
    }
}

/// What `GET`/`POST /api/session` answer: who this is and what it may read.
fn describe(app: &AppState, principal: &Principal) -> serde_json::Value {
    json!({
        "mode": if app.access.verifier.is_some() { "jwt" } else { "none" },
        "subject": principal.subject,
        "stores": principal.stores_json(),
        "role": principal.role.as_str(),
        "expires_at_ms": principal.expires_at_ms,
        "renew_url": app.access.renew_url,
    })
}

/// `GET /api/session`: the current credentials (header or cookie), or 401.
pub async fn current(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match authenticate(&app.access, &headers) {
        Ok(principal) => axum::Json(describe(&app, &principal)).into_response(),
        Err(error) => unauthorized(&error),
    }
}

/// `POST /api/session` with `Authorization: Bearer`: the token, verified, as an HttpOnly
/// cookie for the page's EventSource (which cannot send headers), until the token expires,
/// and the session's id in its own cookie. With the id of a session whose streams hold the
/// same grant, it renews them: they continue to the new token's expiry (`sessions`).
pub async fn create(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(verifier) = &app.access.verifier else {
        return axum::Json(describe(&app, &Principal::anonymous())).into_response();
    };
    let Some(token) = token(&headers, false) else {
        return unauthorized(&AuthError::Missing);
    };
    let principal = match verifier.verify(token) {
        Ok(principal) => principal,
        Err(error) => return unauthorized(&error),
    };
    let now_ms = crate::wall_clock::unix_ms();
    let max_age = (principal.expires_at_ms.unwrap_or(now_ms) - now_ms).max(0) / 1000;
    let sessions = &app.access.sessions;
    let (id, renewed) = match super::sessions::id_of(&headers) {
        Some(id) => match sessions.renew(id, &principal) {
            Renewal::Renewed => (id.to_owned(), true),
            Renewal::Kept => (id.to_owned(), false),
            Renewal::New => (super::sessions::new_id(), false),
        },
        None => (super::sessions::new_id(), false),
    };
    let mut body = describe(&app, &principal);
    body["renewed"] = json!(renewed);
    let mut response = axum::Json(body).into_response();
    for cookie in [
        format!(
            "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        ),
        format!(
            "{SESSION_ID_COOKIE}={id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `DELETE /api/session`: signs out: the session's streams end now (`session-expired`) and
/// the cookies are forgotten.
pub async fn end(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = super::sessions::id_of(&headers) {
        app.access.sessions.revoke(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, SESSION_ID_COOKIE] {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!(
                "{name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
            ))
            .expect("ascii"),
        );
    }
    response
}
