//! Herald's delivery pipeline.
//!
//! | module | owns |
//! |---|---|
//! | [`templates`] | localized message templates from `templates/{locale}/{event}/{channel}.j2`, rendered with minijinja |
//!
//! The inbox text of every notification is rendered here at ingest, in the
//! recipient's locale, so the notification centre never has to know about
//! templates.

pub mod sms;
pub mod templates;

pub use templates::{InboxText, Templates};

/// Errors of the delivery pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A template is missing, does not parse, or failed to render.
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("templates directory {dir}: {source}")]
    TemplateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}
