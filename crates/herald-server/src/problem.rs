//! Every HTTP error, in one place, as `application/problem+json` (RFC 9457).
//!
//! Each error has a stable `code` that clients may match on; `field` names
//! the offending input when there is one.
//!
//! | code | status |
//! |---|---|
//! | `bad_request` | 400 |
//! | `invalid_json` | 400 |
//! | `unauthorized` | 401 |
//! | `forbidden` | 403 |
//! | `not_found` | 404 |
//! | `method_not_allowed` | 405 |
//! | `idempotency_conflict` | 409 |
//! | `not_retryable` | 409 |
//! | `payload_too_large` | 413 |
//! | `batch_too_large` | 413 |
//! | `unsupported_media_type` | 415 |
//! | `validation_failed` | 422 |
//! | `unknown_event` | 422 |
//! | `internal` | 500 |
//! | `unavailable` | 503 |
//!
//! A dependency that is down (the database unreachable, the queue's Redis
//! away) is `unavailable`, 503 with `Retry-After`, never `internal`: the
//! request may be repeated as it is once the dependency is back.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::ValidationError;
use serde::Serialize;

/// An error a handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub status: StatusCode,
    pub detail: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            status,
            detail: detail.into(),
            field: None,
        }
    }

    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn invalid(err: ValidationError) -> Self {
        let code = if err.field == "event" || err.field.ends_with("].event") {
            "unknown_event"
        } else {
            "validation_failed"
        };
        let detail = err.to_string();
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).field(err.field)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        // The cause goes to the log, not to the client.
        tracing::error!(error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Herald failed to handle the request; the error is in its log",
        )
    }

    /// A dependency is down; `detail` names it. The cause goes to the log.
    pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %err, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the {what} is unavailable; retry shortly"),
        )
    }

    fn title(&self) -> &'static str {
        match self.code {
            "bad_request" => "Bad request",
            "invalid_json" => "Malformed JSON",
            "unauthorized" => "Unauthorized",
            "forbidden" => "Forbidden",
            "not_found" => "Not found",
            "method_not_allowed" => "Method not allowed",
            "idempotency_conflict" => "Event id reused with a different payload",
            "not_retryable" => "Only failed and expired deliveries can be retried",
            "payload_too_large" => "Payload too large",
            "batch_too_large" => "Too many events in one request",
            "unsupported_media_type" => "Unsupported media type",
            "validation_failed" => "Validation failed",
            "unknown_event" => "Unknown event",
            "unavailable" => "Service unavailable",
            _ => "Internal error",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        ApiError::invalid(err)
    }
}

impl From<herald_store::Error> for ApiError {
    fn from(err: herald_store::Error) -> Self {
        match err {
            herald_store::Error::IdempotencyConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                err.to_string(),
            ),
            ref e if e.is_unavailable() => ApiError::unavailable("database", err),
            other => ApiError::internal(other),
        }
    }
}

/// How long a client should wait before repeating a request that met an
/// unavailable dependency.
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: format!("urn:herald:problem:{}", self.code),
            title: self.title(),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            field: self.field.as_deref(),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
