//! Request extractors whose failures are problem documents naming the field.
//!
//! Every piece of a request a handler reads — the JSON body ([`ApiJson`]),
//! the path ([`ApiPath`]), the query ([`ApiQuery`]) — passes the limits of
//! [`herald_core::input`] here, once, before any handler or store sees it:
//! a NUL character anywhere, or a body integer JavaScript cannot read
//! exactly, is 422 naming the field (`data.restaurantName`, `user`,
//! `recipient`). The token's claims pass the same limits in `auth`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use herald_core::{ValidationError, input};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::{ApiError, Code};

/// A JSON body. Malformed JSON is 400 `invalid_json`; JSON of the wrong
/// shape, or holding a NUL or an unsafe integer, is 422 naming the field; a
/// body over the limit is 413; another content type is 415.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    Code::PayloadTooLarge,
                    "the request body is larger than server.max_body_bytes",
                )
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses JSON bytes into `T` with field-named errors: the document is read
/// once into a tree, its whole numbers written as integers
/// ([`input::whole_numbers_as_integers`]: `5.0` is 5), checked against
/// [`input::check_json`] in one walk, then deserialised, so the first
/// offending field is named whatever `T` is.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(Code::InvalidJson, e.to_string()))?;
    input::whole_numbers_as_integers(&mut value);
    input::check_json(&value)?;
    Ok(from_value(value)?)
}

/// Deserialises a JSON value into `T`, naming the field at fault.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        ValidationError::from_serde(&path, err.into_inner().to_string())
    })
}

/// The path's parameters, as axum's `Path`. A segment holding a NUL is 422
/// naming the parameter as the route spells it (`/v1/users/{user}/…`: `user`);
/// one that is not UTF-8 once percent-decoded is 400.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| rejected(rejection.status(), rejection.body_text()))?;
        for (name, value) in &raw {
            input::check_text(name, value)?;
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| rejected(rejection.status(), rejection.body_text()))
    }
}

/// The query string, deserialised into `T` (a map, or a struct of
/// optional fields). A name or value holding a NUL is 422 naming the
/// parameter; a query that is not form-encoded is 400.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let bad = |e: serde_urlencoded::de::Error| {
            ApiError::bad_request(format!("the query string cannot be read: {e}"))
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(bad)?;
        for (name, value) in &pairs {
            let field = name.replace('\0', "\\u0000");
            input::check_text(&field, name)?;
            input::check_text(&field, value)?;
        }
        serde_urlencoded::from_str(query).map(ApiQuery).map_err(bad)
    }
}

/// A page size from the query string: a whole number from 1 to `max`, or
/// an error naming `limit`.
pub fn page_limit(value: &str, max: u32) -> Result<u32, ValidationError> {
    value
        .parse()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| ValidationError::new("limit", format!("must be 1 to {max}")))
}

/// A query parameter the endpoint does not take.
pub fn unknown_parameter(name: &str) -> ValidationError {
    ValidationError::new(name, "is not a query parameter of this endpoint")
}

/// One of axum's own rejections as a problem: its message, under the code
/// of its status (a 500 is a route that does not match its handler: a bug).
fn rejected(status: StatusCode, detail: String) -> ApiError {
    if status.is_server_error() {
        ApiError::internal(detail)
    } else {
        ApiError::bad_request(detail)
    }
}
