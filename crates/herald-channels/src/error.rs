//! Why a transport could not be built. Send failures are
//! [`herald_core::ChannelError`]s; this is only about configuration, and it
//! names the setting at fault so a broken channel stops the start.

/// A transport's configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Error {
    /// The setting at fault, relative to the provider's section (`api_key`).
    pub key: &'static str,
    pub message: String,
}

impl Error {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Error {
            key,
            message: message.into(),
        }
    }
}
