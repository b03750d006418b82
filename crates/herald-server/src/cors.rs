//! CORS for the REST API (`/v1/…`), from the realtime allowlist.
//!
//! The platform's frontend is served from its own origin, so its inbox
//! calls are cross-origin: a browser sends a preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Headers: authorization`) before it
//! lets the page send a bearer token. One setting decides which pages may
//! talk to Herald, sockets and REST alike: `realtime.allowed_origins`,
//! judged by [`herald_realtime::origin::allowed`] (empty: same-origin only;
//! `*`: any; otherwise exact matches).
//!
//! - An allowed origin's preflight is answered here, 204, with the methods
//!   and headers the API takes; its other requests go through and get
//!   `Access-Control-Allow-Origin` (the origin itself, with
//!   `Access-Control-Allow-Credentials: true` — or `*` and no credentials
//!   when the list is `*`).
//! - A disallowed origin gets no CORS header at all, so the browser keeps
//!   the answer from the page; its preflight is 403 (`forbidden`).
//! - A request without `Origin` is not a browser page's: untouched.
//!
//! Every `/v1` answer carries `Vary: Origin`, since it depends on it.
//! CORS is a browser's rule, not an access control: tokens still decide.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;
use crate::startup::AppState;

/// What a page may send.
const METHODS: &str = "GET, POST, PUT, DELETE";
const HEADERS: &str = "authorization, content-type, if-match, x-request-id";
/// What a page may read besides the simple headers.
const EXPOSED: &str = "retry-after, location, x-request-id";
/// How long a browser may reuse a preflight, in seconds.
const MAX_AGE: &str = "600";

/// The middleware; it acts on `/v1/…` only.
pub async fn api(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return vary(next.run(request).await);
    };
    let list = &state.settings.realtime.allowed_origins;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let admitted = origin
        .to_str()
        .is_ok_and(|o| herald_realtime::origin::allowed(o, host, list));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !admitted {
        if preflight {
            tracing::warn!(origin = ?origin, path = %request.uri().path(), "CORS preflight from a disallowed origin");
            return vary(
                ApiError::forbidden("this origin may not call Herald's API").into_response(),
            );
        }
        return vary(next.run(request).await);
    }
    let any = herald_realtime::origin::any_origin(list);
    if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow(headers, origin, any);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        return vary(response);
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    allow(headers, origin, any);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    vary(response)
}

/// `*` for a `*` list (never with credentials); the origin itself, with
/// credentials, for a listed or same-origin page.
fn allow(headers: &mut HeaderMap, origin: HeaderValue, any: bool) {
    if any {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

fn vary(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("origin"));
    response
}
