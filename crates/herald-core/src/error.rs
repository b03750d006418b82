//! One error type for the domain. Validation failures always name the field
//! at fault, as a dotted path from the request's root (`data.amount`,
//! `[3].data.guestId`, `quietHours.timezone`), so the HTTP layer can hand it to
//! the producer unchanged.

use std::fmt;

/// A rejected input, and the field that made it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted path of the offending field; empty for the document itself.
    pub field: String,
    /// What is wrong with it, in a sentence a producer can act on.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// From a `serde_path_to_error` failure: `path` is where serde stood,
    /// `message` what it said. serde reports a missing field at its parent;
    /// this names the field itself.
    pub fn from_serde(path: &str, message: String) -> Self {
        // serde_path_to_error writes `?` for a map key it could not read;
        // the map itself is the field at fault then.
        let path = path.trim_end_matches(".?").trim_end_matches('?');
        let path = if path == "." { "" } else { path };
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            return ValidationError::new(join_path(path, name), "is required");
        }
        ValidationError::new(path, message)
    }

    /// Nests the error under `prefix`: `amount` under `data` becomes `data.amount`.
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = join_path(prefix, &self.field);
        self
    }
}

/// Joins two path segments, so that array indices stay attached (`[3].data`).
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if field.starts_with('[') => format!("{prefix}{field}"),
        (false, false) => format!("{prefix}.{field}"),
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Validation(#[from] ValidationError),
    /// The routing file is malformed or refers to something that does not exist.
    #[error("routing table: {0}")]
    Routing(String),
}
