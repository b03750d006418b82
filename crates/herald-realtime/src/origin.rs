//! The Origin allowlist for both realtime endpoints, and the one origin
//! policy the REST API's CORS answers from too (`herald-server`'s `cors`):
//! a page allowed to open a socket may read the inbox, and no other.
//!
//! A browser sends `Origin` with every WebSocket upgrade and cross-origin
//! request; a page on another site must not open a socket that rides on
//! the user's credentials (cross-site WebSocket hijacking). A request whose
//! `Origin` is not allowed gets 403 before the upgrade or the Socket.IO
//! handshake happens.
//!
//! `allowed_origins` empty (the default) allows same-origin pages only: the
//! `Origin`'s host must be the host the request was sent to. `*` allows
//! any. Otherwise an origin must match an entry exactly. A request without
//! `Origin` is not from a browser page and passes; it still needs a token.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use herald_core::problem::Code;

use crate::hub::Hub;
use crate::ws::problem;

pub(crate) async fn check(State(hub): State<Hub>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("");
        if !allowed(origin, host, &hub.config().allowed_origins) {
            tracing::warn!(origin, path = %request.uri().path(), "cross-site realtime connection refused");
            return problem(
                Code::Forbidden,
                "this origin may not open a realtime connection",
            );
        }
    }
    next.run(request).await
}

/// Whether a page at `origin` may talk to Herald, for a request sent to
/// `host` (its `Host` header), under `realtime.allowed_origins` (`list`).
pub fn allowed(origin: &str, host: Option<&str>, list: &[String]) -> bool {
    if any_origin(list) {
        return true;
    }
    if list.is_empty() {
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        return origin_host.is_some() && origin_host == host;
    }
    list.iter().any(|o| o == origin)
}

/// Whether `list` admits any origin (`*`): then no answer may carry
/// credentials, as browsers refuse `*` with them anyway.
pub fn any_origin(list: &[String]) -> bool {
    list.iter().any(|o| o == "*")
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn origins_match_exactly() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(allowed("https://app.example.com", Some("api"), &list));
        assert!(!allowed(
            "https://app.example.com.evil.io",
            Some("api"),
            &list
        ));
        assert!(!allowed("http://app.example.com", Some("api"), &list));
        assert!(!allowed("null", Some("api"), &list));
        // Same-origin only by default.
        assert!(allowed(
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080"),
            &[]
        ));
        assert!(!allowed("http://evil.io", Some("127.0.0.1:8080"), &[]));
        assert!(!allowed("null", Some("127.0.0.1:8080"), &[]));
        assert!(allowed("http://evil.io", None, &["*".to_owned()]));
    }
}
