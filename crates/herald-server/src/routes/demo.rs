//! `GET /demo`: one self-contained page that connects to `/ws` with a
//! token, subscribes, and shows events and the inbox as they change — the
//! browser half of the README's tour. It uses only what any browser has
//! (WebSocket, fetch), so it needs no build step and no third-party script.

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/demo.html"))
}
