//! What the HTTP providers share: one pooled client per transport with
//! explicit timeouts, and the classification of failures that happen
//! before a provider answers or that every provider answers alike.

use std::time::Duration;

use herald_core::ChannelError;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::Error;

/// Makes rustls usable: reqwest is built without a default crypto
/// provider, so the first caller installs ring's. Later calls find it in
/// place, which is fine.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for one provider. Connections are pooled and reused across
/// sends; `timeout` bounds a whole request, `connect` its TCP+TLS setup.
pub fn client(timeout: Duration, connect: Duration) -> Result<reqwest::Client, Error> {
    install_crypto();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect)
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::new("timeout_ms", format!("cannot build the HTTP client: {e}")))
}

/// A base URL without its trailing slash, checked to be http(s).
pub fn base_url(key: &'static str, url: &str) -> Result<String, Error> {
    let url = url.trim_end_matches('/');
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::new(key, format!("`{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::new(key, format!("`{url}` is not an http(s) URL")));
    }
    Ok(url.to_owned())
}

/// A request that got no answer. Timeouts, refused and reset connections
/// are worth retrying; a request that could not even be built is not.
pub fn request_failed(provider: &str, err: &reqwest::Error) -> ChannelError {
    if err.is_builder() {
        ChannelError::permanent(format!("{provider}: cannot build the request: {err}"))
    } else if err.is_timeout() {
        ChannelError::transient(format!("{provider}: timed out"))
    } else {
        ChannelError::transient(format!("{provider}: {err}"))
    }
}

/// `Retry-After` in seconds (the form every provider here uses).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The classes every provider shares: 429 and 5xx are "later" (with the
/// provider's Retry-After as a floor), anything else in 4xx is "never".
pub fn by_status(status: StatusCode, headers: &HeaderMap, reason: String) -> ChannelError {
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        ChannelError::Transient {
            reason,
            retry_after: retry_after(headers),
        }
    } else {
        ChannelError::permanent(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_and_retry_after_is_read() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        let err = by_status(StatusCode::TOO_MANY_REQUESTS, &headers, "slow down".into());
        assert_eq!(
            err,
            ChannelError::Transient {
                reason: "slow down".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(by_status(StatusCode::BAD_GATEWAY, &HeaderMap::new(), "x".into()).is_transient());
        assert!(!by_status(StatusCode::BAD_REQUEST, &HeaderMap::new(), "x".into()).is_transient());
        assert!(base_url("base_url", "ftp://x").is_err());
        assert_eq!(
            base_url("base_url", "https://api.example.com/").unwrap(),
            "https://api.example.com"
        );
    }
}
