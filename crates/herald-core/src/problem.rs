//! The stable codes of Herald's HTTP errors (meilisearch's `Code`).
//!
//! Every error Herald answers over HTTP — a REST route, an extractor, the
//! `/ws` and Socket.IO handshakes — is an `application/problem+json`
//! document whose `code` comes from this one table, with the status and the
//! title that go with it. Clients match on the code; the table is the
//! contract, so a row's code, status and title never change once published,
//! and the OpenAPI document lists [`Code::ALL`].
//!
//! The HTTP shape itself (headers, the document's fields) is written by the
//! server and the realtime gateway; this crate does no I/O and knows statuses
//! as numbers only.

use std::fmt;

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal, $status:literal, $title:literal;)+) => {
        /// One kind of HTTP error, with its stable wire code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $($(#[$doc])* $variant),+ }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The wire code (`validation_failed`), the document's `code`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code),+ }
            }

            /// The HTTP status that carries it.
            pub const fn status(self) -> u16 {
                match self { $(Code::$variant => $status),+ }
            }

            /// The document's `title`: the same for every error of the code.
            pub const fn title(self) -> &'static str {
                match self { $(Code::$variant => $title),+ }
            }
        }
    };
}

codes! {
    /// The request cannot be understood (a query, a form, a path).
    BadRequest => "bad_request", 400, "Bad request";
    /// The body is not JSON.
    InvalidJson => "invalid_json", 400, "Malformed JSON";
    /// No token, or one Herald does not accept.
    Unauthorized => "unauthorized", 401, "Unauthorized";
    /// The token is good but its holder may not do this.
    Forbidden => "forbidden", 403, "Forbidden";
    NotFound => "not_found", 404, "Not found";
    MethodNotAllowed => "method_not_allowed", 405, "Method not allowed";
    /// An event id published before with another payload.
    IdempotencyConflict => "idempotency_conflict", 409, "Event id reused with a different payload";
    /// A re-drive of a delivery that is neither failed nor expired.
    NotRetryable => "not_retryable", 409, "Only failed and expired deliveries can be retried";
    /// An `If-Match` that names a version other than the current one: someone
    /// changed the resource since the caller read it.
    PreconditionFailed => "precondition_failed", 412, "The resource changed since it was read";
    /// An unsubscribe link past its time (a forged one is `forbidden`).
    LinkExpired => "link_expired", 410, "This link has expired";
    /// The body is larger than `server.max_body_bytes`.
    PayloadTooLarge => "payload_too_large", 413, "Payload too large";
    /// More events in one publish than `server.max_batch`.
    BatchTooLarge => "batch_too_large", 413, "Too many events in one request";
    UnsupportedMediaType => "unsupported_media_type", 415, "Unsupported media type";
    /// Well-formed input that breaks a rule; `field` names the input.
    ValidationFailed => "validation_failed", 422, "Validation failed";
    /// An event name outside the catalog (or one only Herald may emit).
    UnknownEvent => "unknown_event", 422, "Unknown event";
    /// Too many realtime handshakes from one address; `Retry-After` says when to try again.
    RateLimited => "rate_limited", 429, "Too many requests";
    /// A bug or an unexpected failure; the cause is in Herald's log.
    Internal => "internal", 500, "Internal error";
    /// A dependency is down (the database, the queue) or Herald is restarting;
    /// the same request may succeed after `Retry-After`.
    Unavailable => "unavailable", 503, "Service unavailable";
}

impl Code {
    /// The code with this wire name.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// The document's `type`: a URN per code.
    pub fn type_uri(self) -> String {
        format!("urn:herald:problem:{}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_code_is_distinct_and_an_error_status() {
        let names: BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len(), "a code string is used twice");
        for &code in Code::ALL {
            assert!(
                (400..600).contains(&code.status()),
                "{code}: {}",
                code.status()
            );
            assert!(!code.title().is_empty(), "{code}");
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert_eq!(Code::parse(code.as_str()), Some(code));
        }
    }
}
