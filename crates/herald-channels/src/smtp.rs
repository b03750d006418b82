//! Email over SMTP with lettre's tokio transport.
//!
//! Connections are pooled (up to `pool_max_size`, idle ones closed after a
//! minute) and reused across sends. `security` picks implicit TLS (port
//! 465), STARTTLS (587, required: a server that does not offer it is an
//! error, not a downgrade) or plain (a local relay or a test sink). The
//! message is the same RFC 5322 message the outbox writes.
//!
//! Classification follows SMTP's reply classes: a 5xx reply (unknown
//! mailbox, rejected sender, failed authentication) is permanent; a 4xx
//! reply (greylisting, a full mailbox, rate limits), a timeout or a lost
//! connection is transient. TLS failures are misconfiguration: permanent.

use std::time::Duration;

use async_trait::async_trait;
use herald_core::channel::Receipt;
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use lettre::message::Mailbox;
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::Error;
use crate::mask::mask;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain, upgraded with STARTTLS before anything is sent (port 587).
    StartTls,
    /// No encryption: only for a relay on a trusted network.
    None,
}

impl Security {
    pub fn parse(s: &str) -> Option<Security> {
        match s {
            "tls" => Some(Security::Tls),
            "starttls" => Some(Security::StartTls),
            "none" => Some(Security::None),
            _ => None,
        }
    }
}

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Empty: no authentication.
    pub username: String,
    pub password: String,
    pub from: String,
    /// Bounds each SMTP command, connecting included.
    pub timeout: Duration,
    pub pool_max_size: u32,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// The SMTP email transport.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    id_domain: String,
    server: String,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("server", &self.server)
            .finish()
    }
}

impl Smtp {
    pub fn new(config: &SmtpConfig) -> Result<Smtp, Error> {
        crate::http::install_crypto();
        let host = config.host.trim();
        if host.is_empty() {
            return Err(Error::new("host", "is required"));
        }
        if config.port == 0 {
            return Err(Error::new("port", "must be a port number"));
        }
        if config.pool_max_size == 0 {
            return Err(Error::new("pool_max_size", "must be at least 1"));
        }
        let from = crate::email::sender(&config.from)?;
        let tls =
            |e: lettre::transport::smtp::Error| Error::new("security", format!("TLS setup: {e}"));
        let mut builder = match config.security {
            Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(tls)?,
            Security::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(tls)?
            }
            Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        }
        .port(config.port)
        .timeout(Some(config.timeout))
        .pool_config(PoolConfig::new().max_size(config.pool_max_size));
        if !config.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                config.username.clone(),
                config.password.clone(),
            ));
        }
        Ok(Smtp {
            transport: builder.build(),
            id_domain: from.email.domain().to_owned(),
            from,
            server: format!("{host}:{}", config.port),
        })
    }
}

fn classify(err: &lettre::transport::smtp::Error) -> ChannelError {
    let reason = format!("smtp: {err}");
    if err.is_permanent() || err.is_tls() {
        ChannelError::permanent(reason)
    } else {
        // 4xx replies, timeouts, refused or dropped connections.
        ChannelError::transient(reason)
    }
}

#[async_trait]
impl Channel for Smtp {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    fn provider(&self) -> &str {
        "smtp"
    }

    /// Opens a connection and says EHLO.
    async fn check(&self) -> Result<(), String> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("smtp {}: not answering", self.server)),
            Err(e) => Err(format!("smtp {}: {e}", self.server)),
        }
    }

    #[tracing::instrument(skip_all, fields(provider = "smtp", to = %mask(&message.to)))]
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let email = crate::email::build(&self.from, message, &self.id_domain)?;
        let id = format!("<{}@{}>", message.idempotency_key, self.id_domain);
        let response = self.transport.send(email).await.map_err(|e| classify(&e))?;
        tracing::info!(code = %response.code(), "accepted by the smtp server");
        Ok(Receipt {
            provider_message_id: Some(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmtpConfig {
        SmtpConfig {
            host: "smtp.example.com".into(),
            port: 587,
            security: Security::StartTls,
            username: "herald".into(),
            password: "hunter2".into(),
            from: "Herald <no-reply@herald.test>".into(),
            timeout: Duration::from_secs(5),
            pool_max_size: 4,
        }
    }

    #[tokio::test]
    async fn configuration_is_checked_up_front() {
        assert!(Smtp::new(&config()).is_ok());
        let mut c = config();
        c.host = String::new();
        assert_eq!(Smtp::new(&c).unwrap_err().key, "host");
        let mut c = config();
        c.from = "nobody".into();
        assert_eq!(Smtp::new(&c).unwrap_err().key, "email_from");
        let mut c = config();
        c.pool_max_size = 0;
        assert_eq!(Smtp::new(&c).unwrap_err().key, "pool_max_size");
        assert_eq!(Security::parse("starttls"), Some(Security::StartTls));
        assert_eq!(Security::parse("ssl"), None);
        assert!(!format!("{:?}", config()).contains("hunter2"));
    }
}
