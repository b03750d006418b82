//! Push through Firebase Cloud Messaging's HTTP v1 API.
//!
//! Authentication is OAuth 2.0 for a service account: Herald signs a JWT
//! (RS256, the account's private key, scope `firebase.messaging`) and
//! exchanges it at the account's token URI for an access token, which it
//! caches and refreshes [`REFRESH_MARGIN`] before it expires. One refresh
//! runs at a time; concurrent sends wait for it instead of each fetching
//! a token.
//!
//! A send is `POST /v1/projects/{project}/messages:send` with
//! `message.token`, `notification {title, body}` and `data` (FCM takes
//! string values only). Classification follows FCM's `FcmError` codes:
//! `UNREGISTERED` (404) means the token is gone and the device should be
//! forgotten; `INVALID_ARGUMENT` (400), `SENDER_ID_MISMATCH` (403) and
//! `THIRD_PARTY_AUTH_ERROR` (401) are permanent; `QUOTA_EXCEEDED` (429),
//! `UNAVAILABLE` (503) and `INTERNAL` (500) are transient, with
//! `Retry-After` honoured. A 401 `UNAUTHENTICATED` drops the cached token
//! and is retried: the next attempt signs in again.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::channel::{Address, Receipt};
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::mask::mask;
use crate::{Error, http};

/// The OAuth scope FCM's v1 API needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A cached access token is replaced this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime asked for in the signed grant (Google's maximum).
const GRANT_LIFETIME_SECS: i64 = 3600;

/// How to reach FCM.
#[derive(Clone)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com`.
    pub base_url: String,
    /// The service account key file's JSON, as downloaded from Firebase.
    pub service_account_json: String,
    /// Overrides the key's `token_uri` (empty: use the key's).
    pub token_url: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for FcmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmConfig")
            .field("base_url", &self.base_url)
            .field("service_account_json", &"[redacted]")
            .field("token_url", &self.token_url)
            .finish()
    }
}

/// The fields of a service account key that Herald uses.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// The FCM push transport.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    token_url: String,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field("client_email", &self.client_email)
            .finish()
    }
}

impl Fcm {
    pub fn new(config: &FcmConfig) -> Result<Fcm, Error> {
        let account: ServiceAccount = serde_json::from_str(&config.service_account_json)
            .map_err(|e| {
                Error::new(
                    "service_account",
                    format!("is not a service account key (JSON with project_id, private_key, client_email, token_uri): {e}"),
                )
            })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            Error::new(
                "service_account",
                format!("private_key is not an RSA PEM key: {e}"),
            )
        })?;
        if account.project_id.is_empty() || account.client_email.is_empty() {
            return Err(Error::new(
                "service_account",
                "project_id and client_email are required",
            ));
        }
        let token_url = if config.token_url.trim().is_empty() {
            http::base_url("service_account", &account.token_uri)?
        } else {
            http::base_url("token_url", &config.token_url)?
        };
        Ok(Fcm {
            client: http::client(config.timeout, config.connect_timeout)?,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                http::base_url("base_url", &config.base_url)?,
                account.project_id
            ),
            token_url,
            client_email: account.client_email,
            key_id: account.private_key_id,
            key,
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a fresh one.
    async fn access_token(&self) -> Result<String, ChannelError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// The JWT bearer grant (RFC 7523) at the token URI.
    async fn fetch_token(&self) -> Result<CachedToken, ChannelError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_url,
            iat: now,
            exp: now + GRANT_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            ChannelError::permanent(format!("fcm: cannot sign the token grant: {e}"))
        })?;
        let asked = Instant::now();
        let response = self
            .client
            .post(&self.token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| http::request_failed("fcm token", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            // `{"error": "invalid_grant", "error_description": …}`: a key
            // that was revoked or a clock far off; retrying will not help.
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let reason = format!(
                "fcm token: HTTP {status}: {} {}",
                v["error"].as_str().unwrap_or(""),
                v["error_description"].as_str().unwrap_or("")
            );
            return Err(http::by_status(
                status,
                &headers,
                reason.trim_end().to_owned(),
            ));
        }
        let token: TokenResponse = serde_json::from_str(&text)
            .map_err(|e| ChannelError::transient(format!("fcm token: unreadable answer: {e}")))?;
        let lifetime = Duration::from_secs(token.expires_in);
        Ok(CachedToken {
            value: token.access_token,
            refresh_at: asked + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }

    fn body(token: &str, message: &RenderedMessage) -> Value {
        let mut data = Map::new();
        if let Value::Object(fields) = &message.data {
            for (k, v) in fields {
                match v {
                    Value::Null => {}
                    Value::String(s) => {
                        data.insert(k.clone(), Value::String(s.clone()));
                    }
                    other => {
                        data.insert(k.clone(), Value::String(other.to_string()));
                    }
                }
            }
        }
        let mut notification = json!({"body": message.text});
        if let Some(title) = &message.subject {
            notification["title"] = json!(title);
        }
        json!({"message": {"token": token, "notification": notification, "data": data}})
    }
}

/// FCM's error body: `{"error": {"code", "message", "status", "details":
/// [{"@type": "…FcmError", "errorCode": "UNREGISTERED"}]}}`.
fn error_code(body: &Value) -> Option<String> {
    let error = &body["error"];
    error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| error["status"].as_str())
        .map(str::to_owned)
}

#[async_trait]
impl Channel for Fcm {
    /// Exchanges the service account's signed grant for an access token
    /// (cached, so a healthy check costs nothing).
    async fn check(&self) -> Result<(), String> {
        self.access_token()
            .await
            .map(drop)
            .map_err(|e| format!("fcm: {e}"))
    }

    fn kind(&self) -> ChannelKind {
        ChannelKind::Push
    }

    fn provider(&self) -> &str {
        "fcm"
    }

    #[tracing::instrument(skip_all, fields(provider = "fcm", to = %mask(&message.to)))]
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let Address::Fcm { token } = &message.to else {
            return Err(ChannelError::permanent(
                "fcm sends to FCM registration tokens only",
            ));
        };
        let access = self.access_token().await?;
        let response = self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .json(&Fcm::body(token, message))
            .send()
            .await
            .map_err(|e| http::request_failed("fcm", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            let name = body["name"].as_str().map(str::to_owned);
            tracing::info!(name = ?name, "accepted by fcm");
            return Ok(Receipt {
                provider_message_id: name,
            });
        }
        let code = error_code(&body).unwrap_or_default();
        let reason = format!(
            "fcm: HTTP {status}: {code}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        );
        Err(match code.as_str() {
            "UNREGISTERED" => ChannelError::gone(reason),
            "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH" | "THIRD_PARTY_AUTH_ERROR" => {
                ChannelError::permanent(reason)
            }
            _ if status == StatusCode::UNAUTHORIZED => {
                // Our access token was refused: sign in again next time.
                *self.token.lock().await = None;
                ChannelError::transient(reason)
            }
            _ => http::by_status(status, &headers, reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    const KEY: &str = include_str!("../testdata/fcm-test-key.pem");
    const PUBLIC: &str = include_str!("../testdata/fcm-test-key.pub.pem");
    const SEND: &str = "/v1/projects/herald-test/messages:send";

    fn account(token_uri: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "herald-test",
            "private_key_id": "key-1",
            "private_key": KEY,
            "client_email": "herald@herald-test.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn config(server: &MockServer) -> FcmConfig {
        FcmConfig {
            base_url: server.uri(),
            service_account_json: account(&format!("{}/token", server.uri())),
            token_url: String::new(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn push(token: &str) -> RenderedMessage {
        RenderedMessage {
            channel: ChannelKind::Push,
            to: Address::Fcm {
                token: token.to_owned(),
            },
            subject: Some("+50 баллов".into()),
            text: "Начислено 50 баллов".into(),
            html: None,
            data: json!({"event": "points_added", "eventId": "e-1", "attempt": 2, "none": null}),
            idempotency_key: "d-9".into(),
            list_unsubscribe: None,
        }
    }

    /// Google's token endpoint: checks the JWT bearer grant it is given.
    async fn token_endpoint(server: &MockServer, expires_in: u64) {
        let aud = format!("{}/token", server.uri());
        Mock::given(method("POST"))
            .and(path("/token"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(move |req: &Request| {
                let form: Vec<(String, String)> =
                    url_form(std::str::from_utf8(&req.body).unwrap_or(""));
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if get("grant_type").as_deref()
                    != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                {
                    return false;
                }
                let Some(jwt) = get("assertion") else {
                    return false;
                };
                let mut validation = Validation::new(Algorithm::RS256);
                validation.set_audience(&[aud.as_str()]);
                validation.set_issuer(&["herald@herald-test.iam.gserviceaccount.com"]);
                let key = DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap();
                match jsonwebtoken::decode::<Value>(&jwt, &key, &validation) {
                    Ok(data) => {
                        data.header.kid.as_deref() == Some("key-1")
                            && data.claims["scope"] == SCOPE
                            && data.claims["exp"].as_i64().unwrap_or(0)
                                - data.claims["iat"].as_i64().unwrap_or(0)
                                == 3600
                    }
                    Err(_) => false,
                }
            })
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "ya29.test-access-token",
                "expires_in": expires_in,
                "token_type": "Bearer"
            })))
            .named("oauth token endpoint")
            .mount(server)
            .await;
    }

    /// An `application/x-www-form-urlencoded` body's pairs, decoded.
    fn url_form(body: &str) -> Vec<(String, String)> {
        reqwest::Url::parse(&format!("http://form.invalid/?{body}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn signs_in_once_and_sends_the_documented_message() {
        let server = MockServer::start().await;
        token_endpoint(&server, 3599).await;
        Mock::given(method("POST"))
            .and(path(SEND))
            .and(header("authorization", "Bearer ya29.test-access-token"))
            .and(header("content-type", "application/json"))
            .and(body_partial_json(json!({"message": {
                "token": "device-token-1",
                "notification": {"title": "+50 баллов", "body": "Начислено 50 баллов"},
                "data": {"event": "points_added", "eventId": "e-1", "attempt": "2"}
            }})))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"name": "projects/herald-test/messages/0:1500415314455276%31bd1c9631bd1c96"}),
            ))
            .expect(3)
            .mount(&server)
            .await;
        let fcm = Fcm::new(&config(&server)).unwrap();
        for _ in 0..3 {
            let receipt = fcm.send(&push("device-token-1")).await.unwrap();
            assert_eq!(
                receipt.provider_message_id.as_deref(),
                Some("projects/herald-test/messages/0:1500415314455276%31bd1c9631bd1c96")
            );
        }
        let requests = server.received_requests().await.unwrap();
        let grants = requests.iter().filter(|r| r.url.path() == "/token").count();
        assert_eq!(grants, 1, "the access token is cached across sends");
        // `data` carries strings only; nulls are left out.
        let send: Value = serde_json::from_slice(&requests.last().unwrap().body).unwrap();
        assert!(send["message"]["data"].get("none").is_none());
    }

    #[tokio::test]
    async fn a_token_near_its_expiry_is_refreshed() {
        let server = MockServer::start().await;
        // Expires within the refresh margin: never reused.
        token_endpoint(&server, REFRESH_MARGIN.as_secs()).await;
        Mock::given(method("POST"))
            .and(path(SEND))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"name": "projects/herald-test/messages/1"})),
            )
            .mount(&server)
            .await;
        let fcm = Fcm::new(&config(&server)).unwrap();
        fcm.send(&push("t")).await.unwrap();
        fcm.send(&push("t")).await.unwrap();
        let grants = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/token")
            .count();
        assert_eq!(grants, 2);
    }

    fn fcm_error(code: u16, status: &str, error_code: &str, message: &str) -> Value {
        json!({"error": {
            "code": code,
            "message": message,
            "status": status,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
        }})
    }

    async fn answer(status: u16, body: Value, retry_after: Option<&str>) -> (ChannelError, usize) {
        let server = MockServer::start().await;
        token_endpoint(&server, 3599).await;
        let mut response = ResponseTemplate::new(status).set_body_json(body);
        if let Some(after) = retry_after {
            response = response.insert_header("Retry-After", after);
        }
        Mock::given(method("POST"))
            .and(path(SEND))
            .respond_with(response)
            .mount(&server)
            .await;
        let fcm = Fcm::new(&config(&server)).unwrap();
        let err = fcm.send(&push("stale-token")).await.unwrap_err();
        let _ = fcm.send(&push("stale-token")).await;
        let grants = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path() == "/token")
            .count();
        (err, grants)
    }

    #[tokio::test]
    async fn documented_errors_are_classified() {
        let (err, _) = answer(
            404,
            fcm_error(
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            ),
            None,
        )
        .await;
        assert_eq!(
            err,
            ChannelError::gone(
                "fcm: HTTP 404 Not Found: UNREGISTERED: Requested entity was not found."
            )
        );
        let (err, _) = answer(
            400,
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
            None,
        )
        .await;
        assert!(matches!(err, ChannelError::Permanent { .. }), "{err:?}");
        let (err, _) = answer(
            429,
            fcm_error(
                429,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded.",
            ),
            Some("60"),
        )
        .await;
        assert_eq!(
            err,
            ChannelError::Transient {
                reason: "fcm: HTTP 429 Too Many Requests: QUOTA_EXCEEDED: Quota exceeded.".into(),
                retry_after: Some(Duration::from_secs(60))
            }
        );
        let (err, _) = answer(
            503,
            fcm_error(
                503,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.",
            ),
            None,
        )
        .await;
        assert!(err.is_transient());
        // A refused access token is dropped: the next send signs in again.
        let (err, grants) = answer(401, json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}), None).await;
        assert!(err.is_transient());
        assert_eq!(grants, 2);
    }

    #[tokio::test]
    async fn a_refused_grant_is_permanent_and_bad_keys_fail_at_construction() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ))
            .mount(&server)
            .await;
        let err = Fcm::new(&config(&server))
            .unwrap()
            .send(&push("t"))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ChannelError::permanent(
                "fcm token: HTTP 400 Bad Request: invalid_grant Invalid JWT Signature."
            )
        );

        let mut c = config(&server);
        c.service_account_json = "{}".into();
        assert_eq!(Fcm::new(&c).unwrap_err().key, "service_account");
        c.service_account_json = account("https://oauth2.googleapis.com/token")
            .replace("BEGIN PRIVATE KEY", "BEGIN NOTHING");
        assert_eq!(Fcm::new(&c).unwrap_err().key, "service_account");
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }
}
