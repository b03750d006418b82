//! Tokens (contract §1): verification for every request, minting for
//! `herald token` and the development quick start.
//!
//! The algorithm comes from config and only from config: a token whose
//! header names another algorithm (`none` included) is refused. `exp` is
//! required, and must fall before the end of year 9999
//! ([`herald_core::input::MAX_INSTANT_SECONDS`]): a later one is not a
//! lifetime but a mistake, and would overflow the time arithmetic of
//! connections that close when their token expires. The user id is `sub`,
//! or `id` for tokens minted by the seed's platform, which reads
//! `decoded.id`. Claims are text from outside like any other and pass the
//! same limits ([`herald_core::input`]): a NUL in `sub` is a refused token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use herald_core::auth::Principal;
use herald_core::input::{self, MAX_INSTANT_SECONDS};
use herald_core::{Role, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, ConfigError, TokenAlgorithm};
use crate::problem::ApiError;
use crate::startup::AppState;

/// The claims Herald reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The seed platform's spelling of `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restaurant_id: Option<String>,
    pub exp: u64,
}

/// Why a token was refused. The message is safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies and mints tokens with the configured algorithm and keys.
pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .field("can_mint", &self.encoding.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn from_settings(settings: &AuthSettings) -> Result<Authenticator, ConfigError> {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))
        };
        let bad_key = |key: &'static str| {
            move |e: jsonwebtoken::errors::Error| ConfigError::new(key, e.to_string())
        };
        let (algorithm, decoding, encoding) = match settings.algorithm {
            TokenAlgorithm::HS256 => {
                if settings.secret.is_empty() {
                    return Err(ConfigError::new("auth.secret", "is empty"));
                }
                let secret = settings.secret.expose().as_bytes();
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret),
                    Some(EncodingKey::from_secret(secret)),
                )
            }
            TokenAlgorithm::RS256 | TokenAlgorithm::EdDSA => {
                let public = read("auth.public_key_file", &settings.public_key_file)?;
                let private = if settings.private_key_file.as_os_str().is_empty() {
                    None
                } else {
                    Some(read("auth.private_key_file", &settings.private_key_file)?)
                };
                if settings.algorithm == TokenAlgorithm::RS256 {
                    (
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(&public)
                            .map_err(bad_key("auth.public_key_file"))?,
                        private
                            .map(|p| EncodingKey::from_rsa_pem(&p))
                            .transpose()
                            .map_err(bad_key("auth.private_key_file"))?,
                    )
                } else {
                    (
                        Algorithm::EdDSA,
                        DecodingKey::from_ed_pem(&public)
                            .map_err(bad_key("auth.public_key_file"))?,
                        private
                            .map(|p| EncodingKey::from_ed_pem(&p))
                            .transpose()
                            .map_err(bad_key("auth.private_key_file"))?,
                    )
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = settings.leeway_seconds;
        validation.validate_exp = true;
        Ok(Authenticator {
            algorithm,
            decoding,
            encoding,
            validation,
        })
    }

    /// Verifies a token and reads who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_until(token).map(|(principal, _)| principal)
    }

    /// As [`Authenticator::verify`], with the moment the token stops being
    /// accepted (Unix seconds: `exp` plus the leeway), for connections that
    /// outlive a request.
    pub fn verify_until(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".into()),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing `{c}`")),
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        let claims = data.claims;
        if claims.exp > MAX_INSTANT_SECONDS {
            return Err(AuthError::Invalid(format!(
                "`exp` must be before the end of year 9999 ({MAX_INSTANT_SECONDS})"
            )));
        }
        let (name, user) = match (claims.sub, claims.id) {
            (Some(sub), _) => ("sub", sub),
            (None, Some(id)) => ("id", id),
            (None, None) => ("sub", String::new()),
        };
        if user.is_empty() {
            return Err(AuthError::Invalid("missing `sub`".into()));
        }
        let claim = |name: &str, value: &str| {
            input::check_text(name, value)
                .map_err(|e| AuthError::Invalid(format!("`{}` {}", e.field, e.message)))
        };
        claim(name, &user)?;
        if let Some(restaurant) = &claims.restaurant_id {
            claim("restaurantId", restaurant)?;
        }
        let role = Role::parse(&claims.role)
            .ok_or_else(|| AuthError::Invalid(format!("unknown role `{}`", claims.role)))?;
        if role.is_staff() && claims.restaurant_id.as_deref().is_none_or(str::is_empty) {
            return Err(AuthError::Invalid(format!(
                "a {} token needs `restaurantId`",
                role.as_str()
            )));
        }
        Ok((
            Principal {
                user_id: UserId(user),
                role,
                restaurant_id: claims.restaurant_id,
            },
            claims.exp.saturating_add(self.validation.leeway),
        ))
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        restaurant_id: Option<&str>,
        ttl: Duration,
    ) -> Result<String, ConfigError> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            ConfigError::new(
                "auth.private_key_file",
                "is needed to sign tokens with this algorithm",
            )
        })?;
        let exp = jsonwebtoken::get_current_timestamp()
            .checked_add(ttl.as_secs())
            .filter(|exp| *exp <= MAX_INSTANT_SECONDS)
            .ok_or_else(|| {
                ConfigError::new("--ttl", "the token would expire after the end of year 9999")
            })?;
        let claims = Claims {
            sub: Some(sub.to_owned()),
            id: None,
            role: role.as_str().to_owned(),
            restaurant_id: restaurant_id.map(str::to_owned),
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| ConfigError::new("auth", e.to_string()))
    }
}

/// The verified caller of a REST request (`Authorization: Bearer …`).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized(AuthError::Missing.to_string()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        state
            .auth
            .verify(token)
            .map(Caller)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

impl Caller {
    /// Only these roles may call.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} token may not do this",
                self.0.role.as_str()
            )))
        }
    }

    /// The user themselves, or an admin.
    pub fn require_self_or_admin(&self, user: &str) -> Result<(), ApiError> {
        if self.0.is_self_or_admin(user) {
            Ok(())
        } else {
            Err(ApiError::forbidden("this belongs to another user"))
        }
    }

    /// The user themselves, a service, or an admin.
    pub fn require_self_or_operator(&self, user: &str) -> Result<(), ApiError> {
        if self.0.role == Role::Service || self.0.is_self_or_admin(user) {
            Ok(())
        } else {
            Err(ApiError::forbidden("this belongs to another user"))
        }
    }
}

/// Shared handle.
pub type SharedAuth = Arc<Authenticator>;

/// The realtime gateway checks tokens the same way as REST.
impl herald_realtime::Verifier for Authenticator {
    fn verify(&self, token: &str) -> Result<(Principal, u64), String> {
        self.verify_until(token).map_err(|e| e.to_string())
    }
}
