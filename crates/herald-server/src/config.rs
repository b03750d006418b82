//! Settings, layered: the compiled-in `config/default.toml`, then an
//! optional environment file, then `HERALD__SECTION__KEY` variables.
//!
//! Every value is typed; anything that does not parse or does not make
//! sense stops the start with the key's name. Secrets are wrapped in
//! [`Secret`], whose `Debug` never shows them.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use config::{Config, Environment, File, FileFormat};
use herald_core::Locale;
use serde::Deserialize;

/// The compiled-in defaults.
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub database: DatabaseSettings,
    pub routing: RoutingSettings,
    pub templates: TemplateSettings,
    pub delivery: DeliverySettings,
    pub channels: ChannelSettings,
    pub log: LogSettings,
    /// The realtime gateway (Socket.IO, `/ws`, resume, Redis bus).
    pub realtime: herald_realtime::RealtimeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Refuse to run with development conveniences (a generated secret).
    pub production: bool,
    pub data_dir: PathBuf,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one published array.
    pub max_batch: usize,
}

/// How tokens are verified (contract §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub algorithm: TokenAlgorithm,
    /// HS256 shared secret.
    pub secret: Secret,
    /// RS256/EdDSA PEM public key file.
    pub public_key_file: PathBuf,
    /// RS256/EdDSA PEM private key file, for `herald token` only.
    pub private_key_file: PathBuf,
    pub leeway_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    HS256,
    RS256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`.
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    pub dir: PathBuf,
    pub default_locale: Locale,
}

/// The delivery queue and its workers (`[delivery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// `sqlite://…` (one node) or `redis://…`.
    pub queue_url: Secret,
    pub queue_name: String,
    pub workers_in_serve: bool,
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    pub lease_seconds: u64,
    pub sweep_interval_seconds: u64,
    pub stale_seconds: u64,
    pub sweep_batch: u32,
    pub retry: herald_delivery::RetryPolicy,
}

/// Which transport serves each channel (`[channels]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    pub email: String,
    pub sms: String,
    pub push: String,
    pub outbox_dir: PathBuf,
    pub email_from: String,
    /// `email = "smtp"`.
    pub smtp: SmtpSettings,
    /// `email = "sendgrid"`.
    pub sendgrid: SendGridSettings,
    /// `sms = "twilio"`.
    pub twilio: TwilioSettings,
    /// `push = "fcm"`.
    pub fcm: FcmSettings,
    /// `push = "webpush"`.
    pub webpush: WebPushSettings,
}

/// Web Push with VAPID (`[channels.webpush]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushSettings {
    /// The VAPID private key (P-256, base64url, no padding).
    pub vapid_private_key: Secret,
    /// `mailto:` or `https:` contact for push services.
    pub subject: String,
    pub ttl_seconds: u64,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Firebase Cloud Messaging HTTP v1 (`[channels.fcm]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    pub base_url: String,
    /// The service account key file downloaded from Firebase.
    pub service_account_file: PathBuf,
    /// The same key's JSON inline (for environments that pass secrets as
    /// variables); wins over the file.
    pub service_account_json: Secret,
    /// Overrides the key's `token_uri`; empty uses the key's.
    pub token_url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Twilio's Messages API (`[channels.twilio]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub base_url: String,
    /// `AC…`.
    pub account_sid: String,
    /// Also the key of `X-Twilio-Signature` on status callbacks.
    pub auth_token: Secret,
    /// The sending number (E.164); empty when `messaging_service_sid` is set.
    pub from: String,
    /// `MG…`: let a Messaging Service choose the sender.
    pub messaging_service_sid: String,
    /// The public URL of Herald's `/v1/webhooks/twilio`, or empty.
    pub status_callback: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// An SMTP server (`[channels.smtp]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `starttls`, `tls` (implicit, port 465) or `none`.
    pub security: String,
    /// Empty: no authentication.
    pub username: String,
    pub password: Secret,
    pub timeout_ms: u64,
    pub pool_max_size: u32,
}

/// SendGrid's v3 Mail Send API (`[channels.sendgrid]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridSettings {
    pub base_url: String,
    /// An API key with the `mail.send` scope.
    pub api_key: Secret,
    /// The Signed Event Webhook's verification key (base64 DER); empty
    /// leaves `/v1/webhooks/sendgrid` off.
    pub webhook_public_key: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A value that must not reach a log: its `Debug` is redacted.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Settings {
    /// Loads the layers. `file` is the environment file, if any.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix("HERALD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| {
                let text = e.to_string();
                let key = text
                    .rsplit_once(" for key `")
                    .and_then(|(_, k)| k.split('`').next())
                    .unwrap_or("")
                    .to_owned();
                ConfigError::new(key, text)
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.server.max_batch == 0 {
            return Err(ConfigError::new("server.max_batch", "must be at least 1"));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        let d = &self.delivery;
        let queue = d.queue_url.expose();
        if !(queue.starts_with("sqlite:")
            || queue.starts_with("redis://")
            || queue.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "delivery.queue_url",
                "must start with sqlite:, redis:// or rediss://",
            ));
        }
        for (key, value) in [
            ("delivery.concurrency", d.concurrency as u64),
            ("delivery.poll_interval_ms", d.poll_interval_ms),
            ("delivery.lease_seconds", d.lease_seconds),
            ("delivery.sweep_interval_seconds", d.sweep_interval_seconds),
            ("delivery.stale_seconds", d.stale_seconds),
            ("delivery.sweep_batch", u64::from(d.sweep_batch)),
            (
                "delivery.retry.max_attempts",
                u64::from(d.retry.max_attempts),
            ),
            ("delivery.retry.base_ms", d.retry.base_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if !(d.retry.factor >= 1.0 && d.retry.factor.is_finite()) {
            return Err(ConfigError::new(
                "delivery.retry.factor",
                "must be a number ≥ 1",
            ));
        }
        if d.retry.cap_ms < d.retry.base_ms {
            return Err(ConfigError::new(
                "delivery.retry.cap_ms",
                "must be at least base_ms",
            ));
        }
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must start with sqlite:, postgres: or postgresql:",
            ));
        }
        let sendgrid_key = &self.channels.sendgrid.webhook_public_key;
        if !sendgrid_key.is_empty()
            && let Err(e) = herald_channels::sendgrid::EventWebhookKey::parse(sendgrid_key)
        {
            return Err(ConfigError::new(
                "channels.sendgrid.webhook_public_key",
                e.message,
            ));
        }
        if let Err(herald_realtime::Error::Config { key, message }) = self.realtime.validate() {
            return Err(ConfigError::new(format!("realtime.{key}"), message));
        }
        match self.auth.algorithm {
            TokenAlgorithm::HS256 => {
                if self.server.production && self.auth.secret.is_empty() {
                    return Err(ConfigError::new(
                        "auth.secret",
                        "is required in production (set HERALD__AUTH__SECRET)",
                    ));
                }
                if !self.auth.secret.is_empty() && self.auth.secret.expose().len() < 32 {
                    return Err(ConfigError::new("auth.secret", "must be at least 32 bytes"));
                }
            }
            TokenAlgorithm::RS256 | TokenAlgorithm::EdDSA => {
                if self.auth.public_key_file.as_os_str().is_empty() {
                    return Err(ConfigError::new(
                        "auth.public_key_file",
                        "is required for RS256 and EdDSA",
                    ));
                }
            }
        }
        Ok(())
    }

    /// In development with no HS256 secret, use the one kept in
    /// `data_dir/dev-secret`, making it on first use. Returns whether a
    /// development secret is in use, so the caller can say so.
    pub fn ensure_dev_secret(&mut self) -> Result<bool, ConfigError> {
        if self.auth.algorithm != TokenAlgorithm::HS256 || !self.auth.secret.is_empty() {
            return Ok(false);
        }
        if self.server.production {
            return Err(ConfigError::new("auth.secret", "is required in production"));
        }
        let path = self.server.data_dir.join("dev-secret");
        let io = |e: std::io::Error| {
            ConfigError::new("server.data_dir", format!("{}: {e}", path.display()))
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => s.trim().to_owned(),
            _ => {
                std::fs::create_dir_all(&self.server.data_dir).map_err(io)?;
                let bytes: [u8; 32] = rand::random();
                let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                write_private(&path, &secret).map_err(io)?;
                secret
            }
        };
        self.auth.secret = Secret(secret);
        Ok(true)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_secrets_stay_out_of_debug() {
        let mut s: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        s.validate().unwrap();
        s.auth.secret = Secret::new("a-very-long-secret-that-nobody-should-see");
        assert!(!format!("{s:?}").contains("nobody"));
        s.server.production = true;
        s.auth.secret = Secret::default();
        assert_eq!(s.validate().unwrap_err().key, "auth.secret");
    }
}
