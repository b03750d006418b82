//! Every HTTP error, in one place, as `application/problem+json` (RFC 9457).
//!
//! Each error has a stable `code` from [`herald_core::problem::Code`], the
//! one table of codes, statuses and titles that the realtime handshakes
//! share; `field` names the offending input when there is one.
//!
//! A dependency that is down (the database unreachable, the queue's Redis
//! away) is `unavailable`, 503 with `Retry-After`, never `internal`: the
//! request may be repeated as it is once the dependency is back. Store
//! errors become problems here and only here ([`From<herald_store::Error>`]),
//! by the store's own judgement of what "unreachable" means.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::ValidationError;
pub use herald_core::problem::Code;
use serde::Serialize;

/// An error a handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub detail: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            field: None,
        }
    }

    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, detail)
    }

    pub fn invalid(err: ValidationError) -> Self {
        let code = if err.field == "event" || err.field.ends_with("].event") {
            Code::UnknownEvent
        } else {
            Code::ValidationFailed
        };
        let detail = err.to_string();
        Self::new(code, detail).field(err.field)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        // The cause goes to the log, not to the client.
        tracing::error!(error = %err, "request failed");
        Self::new(
            Code::Internal,
            "Herald failed to handle the request; the error is in its log",
        )
    }

    /// A dependency is down; `detail` names it. The cause goes to the log.
    pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Self {
        tracing::warn!(dependency = what, error = %err, "dependency unavailable");
        Self::new(
            Code::Unavailable,
            format!("the {what} is unavailable; retry shortly"),
        )
    }
}

/// The status of a code of the table (which holds only valid ones).
pub fn status_of(code: Code) -> StatusCode {
    StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        ApiError::invalid(err)
    }
}

impl From<herald_store::Error> for ApiError {
    fn from(err: herald_store::Error) -> Self {
        match err {
            herald_store::Error::IdempotencyConflict { .. } => {
                ApiError::new(Code::IdempotencyConflict, err.to_string())
            }
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
        let status = self.status();
        let body = Problem {
            kind: self.code.type_uri(),
            title: self.code.title(),
            status: status.as_u16(),
            detail: &self.detail,
            code: self.code.as_str(),
            field: self.field.as_deref(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_answers_with_its_status_and_headers() {
        for &code in Code::ALL {
            let response = ApiError::new(code, "why").into_response();
            assert_eq!(response.status().as_u16(), code.status(), "{code}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
            assert_eq!(
                headers.contains_key(header::RETRY_AFTER),
                code == Code::Unavailable,
                "{code}"
            );
            assert_eq!(
                headers.contains_key(header::WWW_AUTHENTICATE),
                code == Code::Unauthorized,
                "{code}"
            );
        }
    }
}
