//! `GET /console`: the browser console (the notification centre,
//! preferences, and the admin's views), built from `console/` at the
//! repository's root. Its built assets (`console/dist/`) are committed and
//! embedded here, so a fresh clone's `cargo run` serves the console with no
//! Node on the machine; `npm --prefix console run check` keeps them in step
//! with the source.
//!
//! The page holds no data of its own: it signs in with a token given once
//! (`?token=`, which the page takes out of the address bar at once; the
//! request log records paths only) and calls the API with it. A strict
//! Content-Security-Policy allows only this origin's scripts, styles and
//! sockets. The file names carry no hash, so every response is revalidated
//! (`no-cache`) against an ETag of its content.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// What the console's page may load and reach: its own origin, nothing
/// inline, no frames around it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../../../console/dist/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../../console/dist/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../../console/dist/console.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../../console/dist/icon.svg"),
    },
];

/// Each asset's ETag, computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS)
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                (a.name, format!("\"{hex}\""))
            })
            .collect()
    });
    tags.iter()
        .find(|(name, _)| *name == asset.name)
        .map(|(_, tag)| tag.as_str())
        .expect("every asset has a tag")
}

fn serve(asset: &Asset, headers: &HeaderMap, page: bool) -> Response {
    let tag = etag(asset);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(tag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if page {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// `GET /console` (and `/console/`): the page.
pub async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers, true)
}

/// `GET /console/{asset}`: the page's script, stylesheet and icon.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name == INDEX.name {
        return serve(&INDEX, &headers, true);
    }
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers, false),
        None => ApiError::not_found("no such console asset").into_response(),
    }
}

/// `GET /demo`: the old live page is now the console.
pub async fn demo() -> Redirect {
    Redirect::permanent("/console")
}
