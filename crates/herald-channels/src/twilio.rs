//! SMS through Twilio's Programmable Messaging API:
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded
//! (`To`, `From` or `MessagingServiceSid`, `Body`, `StatusCallback`), HTTP
//! Basic auth with the Account SID and auth token. Twilio answers 201 with
//! the message resource; its `sid` (`SM…`) is what status callbacks name.
//!
//! Classification follows Twilio's documented error responses
//! (`{"code", "message", "more_info", "status"}`): 429 (error 20429) and 5xx
//! are transient; 400 (21211 invalid `To`, 21610 the recipient replied
//! STOP, 21614 not a mobile number, 21606 a `From` that cannot send …) is
//! permanent, as are 401 (20003: wrong credentials) and 404 (a wrong
//! account): those are misconfiguration that no retry fixes.
//!
//! Twilio signs each status callback: `X-Twilio-Signature` is
//! base64(HMAC-SHA1(auth token, the callback URL followed by every POST
//! parameter's name and value, sorted by name)). [`verify_signature`]
//! checks it in constant time.

use std::time::Duration;

use async_trait::async_trait;
use herald_core::channel::{Address, Receipt};
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use serde_json::Value;

use crate::mask::mask;
use crate::{Error, http};

/// How to reach Twilio.
#[derive(Clone)]
pub struct TwilioConfig {
    /// `https://api.twilio.com`.
    pub base_url: String,
    /// `AC…`.
    pub account_sid: String,
    pub auth_token: String,
    /// The sending number in E.164, or empty when a Messaging Service sends.
    pub from: String,
    /// `MG…`, or empty to send from `from`.
    pub messaging_service_sid: String,
    /// Where Twilio posts status changes (Herald's
    /// `/v1/webhooks/twilio`), or empty for none.
    pub status_callback: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"[redacted]")
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("status_callback", &self.status_callback)
            .finish()
    }
}

/// The sender: a number, or a Messaging Service that picks one.
#[derive(Debug, Clone)]
enum Sender {
    From(String),
    Service(String),
}

/// The Twilio SMS transport.
#[derive(Clone)]
pub struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: String,
    sender: Sender,
    status_callback: Option<String>,
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twilio")
            .field("url", &self.url)
            .field("sender", &self.sender)
            .finish()
    }
}

impl Twilio {
    pub fn new(config: &TwilioConfig) -> Result<Twilio, Error> {
        let sid = config.account_sid.trim();
        if !(sid.starts_with("AC")
            && sid.len() == 34
            && sid.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(Error::new(
                "account_sid",
                "must be an Account SID (AC followed by 32 hex digits)",
            ));
        }
        if config.auth_token.trim().is_empty() {
            return Err(Error::new("auth_token", "is required"));
        }
        let sender = match (config.from.trim(), config.messaging_service_sid.trim()) {
            ("", "") => {
                return Err(Error::new(
                    "from",
                    "set `from` (an E.164 number) or `messaging_service_sid`",
                ));
            }
            (_, service) if !service.is_empty() => {
                if !service.starts_with("MG") {
                    return Err(Error::new("messaging_service_sid", "must start with MG"));
                }
                Sender::Service(service.to_owned())
            }
            (from, _) => Sender::From(from.to_owned()),
        };
        let status_callback = match config.status_callback.trim() {
            "" => None,
            url => Some(http::base_url("status_callback", url)?),
        };
        Ok(Twilio {
            client: http::client(config.timeout, config.connect_timeout)?,
            url: format!(
                "{}/2010-04-01/Accounts/{sid}/Messages.json",
                http::base_url("base_url", &config.base_url)?
            ),
            account_sid: sid.to_owned(),
            auth_token: config.auth_token.clone(),
            sender,
            status_callback,
        })
    }
}

/// Twilio's error body: `{"code": 21211, "message": …, "more_info": …}`.
fn describe(status: reqwest::StatusCode, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match (v["code"].as_i64(), v["message"].as_str()) {
        (Some(code), Some(message)) => format!("twilio: HTTP {status}: error {code}: {message}"),
        (None, Some(message)) => format!("twilio: HTTP {status}: {message}"),
        _ => format!("twilio: HTTP {status}"),
    }
}

#[async_trait]
impl Channel for Twilio {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    fn provider(&self) -> &str {
        "twilio"
    }

    #[tracing::instrument(skip_all, fields(provider = "twilio", to = %mask(&message.to)))]
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let Address::Phone { phone } = &message.to else {
            return Err(ChannelError::permanent("an SMS needs a phone number"));
        };
        let mut form: Vec<(&str, &str)> = vec![("To", phone), ("Body", &message.text)];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::Service(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(url) = &self.status_callback {
            form.push(("StatusCallback", url));
        }
        let response = self
            .client
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(|e| http::request_failed("twilio", &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let sid = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["sid"].as_str().map(str::to_owned));
            tracing::info!(sid = ?sid, "accepted by twilio");
            return Ok(Receipt {
                provider_message_id: sid,
            });
        }
        let reason = describe(status, &text);
        // The number is masked in what is recorded: Twilio's messages quote it.
        let reason = reason.replace(phone.as_str(), &mask(&message.to));
        Err(http::by_status(status, &headers, reason))
    }
}

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// HMAC-SHA1 over the URL and the parameters sorted by name (then value,
/// for repeated names).
fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    use hmac::Mac as _;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The `X-Twilio-Signature` Twilio would send for a POST of `params` to `url`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `given` is Twilio's signature of this request (constant time).
pub fn verify_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: &str,
) -> bool {
    use base64::Engine as _;
    use hmac::Mac as _;
    match base64::engine::general_purpose::STANDARD.decode(given.trim()) {
        Ok(given) => mac(auth_token, url, params).verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{body_string, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const SID: &str = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";

    fn config(base: &str) -> TwilioConfig {
        TwilioConfig {
            base_url: base.to_owned(),
            account_sid: SID.to_owned(),
            auth_token: "your_auth_token".to_owned(),
            from: "+15017122661".to_owned(),
            messaging_service_sid: String::new(),
            status_callback: "https://herald.example.com/v1/webhooks/twilio".to_owned(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn sms(phone: &str) -> RenderedMessage {
        RenderedMessage {
            channel: ChannelKind::Sms,
            to: Address::Phone {
                phone: phone.to_owned(),
            },
            subject: None,
            text: "Код: 1234 & всё".into(),
            html: None,
            data: json!({}),
            idempotency_key: "d-7".into(),
            list_unsubscribe: None,
        }
    }

    const MESSAGES: &str = "/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages.json";

    #[tokio::test]
    async fn posts_the_documented_form_with_basic_auth_and_reads_the_sid() {
        let server = MockServer::start().await;
        use base64::Engine as _;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{SID}:your_auth_token"))
        );
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .and(header("authorization", basic.as_str()))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .and(body_string(
                "To=%2B14155552671&Body=%D0%9A%D0%BE%D0%B4%3A+1234+%26+%D0%B2%D1%81%D1%91\
                 &From=%2B15017122661\
                 &StatusCallback=https%3A%2F%2Fherald.example.com%2Fv1%2Fwebhooks%2Ftwilio",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "account_sid": SID,
                "api_version": "2010-04-01",
                "body": "Код: 1234 & всё",
                "direction": "outbound-api",
                "error_code": null,
                "error_message": null,
                "from": "+15017122661",
                "messaging_service_sid": null,
                "num_segments": "1",
                "sid": "SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                "status": "queued",
                "to": "+14155552671",
                "uri": "/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages/SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX.json"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let twilio = Twilio::new(&config(&server.uri())).unwrap();
        let receipt = twilio.send(&sms("+14155552671")).await.unwrap();
        assert_eq!(
            receipt.provider_message_id.as_deref(),
            Some("SMXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
        );
    }

    #[tokio::test]
    async fn a_messaging_service_replaces_from() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .and(body_string(
                "To=%2B14155552671&Body=hi&MessagingServiceSid=MGXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            ))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"sid": "SM1", "status": "accepted"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let mut c = config(&server.uri());
        c.from = String::new();
        c.status_callback = String::new();
        c.messaging_service_sid = "MGXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX".into();
        let mut message = sms("+14155552671");
        message.text = "hi".into();
        let receipt = Twilio::new(&c).unwrap().send(&message).await.unwrap();
        assert_eq!(receipt.provider_message_id.as_deref(), Some("SM1"));
    }

    async fn answer(status: u16, body: Value, retry_after: Option<&str>) -> ChannelError {
        let server = MockServer::start().await;
        let mut response = ResponseTemplate::new(status).set_body_json(body);
        if let Some(after) = retry_after {
            response = response.insert_header("Retry-After", after);
        }
        Mock::given(method("POST"))
            .and(path(MESSAGES))
            .respond_with(response)
            .mount(&server)
            .await;
        Twilio::new(&config(&server.uri()))
            .unwrap()
            .send(&sms("+15005550001"))
            .await
            .unwrap_err()
    }

    fn twilio_error(code: i64, message: &str, status: u16) -> Value {
        json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status})
    }

    #[tokio::test]
    async fn documented_errors_are_classified() {
        let err = answer(
            400,
            twilio_error(
                21211,
                "The 'To' number +15005550001 is not a valid phone number.",
                400,
            ),
            None,
        )
        .await;
        assert_eq!(
            err,
            ChannelError::permanent(
                "twilio: HTTP 400 Bad Request: error 21211: The 'To' number +1500***0001 is not a valid phone number."
            )
        );
        for (code, message) in [
            (21610, "Attempt to send to unsubscribed recipient"),
            (21614, "'To' number is not a valid mobile number"),
        ] {
            let err = answer(400, twilio_error(code, message, 400), None).await;
            assert!(
                matches!(err, ChannelError::Permanent { .. }),
                "{code}: {err:?}"
            );
            assert!(err.reason().contains(&code.to_string()));
        }
        let err = answer(401, twilio_error(20003, "Authenticate", 401), None).await;
        assert!(matches!(err, ChannelError::Permanent { .. }), "{err:?}");
        let err = answer(
            429,
            twilio_error(20429, "Too Many Requests", 429),
            Some("2"),
        )
        .await;
        assert_eq!(
            err,
            ChannelError::Transient {
                reason: "twilio: HTTP 429 Too Many Requests: error 20429: Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(2))
            }
        );
        let err = answer(503, json!({}), None).await;
        assert!(err.is_transient());
    }

    /// The example in Twilio's "Validating requests" documentation (and
    /// its helper libraries' tests).
    #[test]
    fn signatures_match_twilios_published_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature("12345", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(verify_signature(
            "12345",
            url,
            &reversed,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_signature(
            "12346",
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_signature(
            "12345",
            "https://mycompany.com/myapp.php",
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "4321".into();
        assert!(!verify_signature(
            "12345",
            url,
            &tampered,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_signature("12345", url, &params, "not base64!"));
    }

    #[test]
    fn configuration_is_checked_up_front() {
        let mut c = config("https://api.twilio.com");
        c.account_sid = "nope".into();
        assert_eq!(Twilio::new(&c).unwrap_err().key, "account_sid");
        let mut c = config("https://api.twilio.com");
        c.auth_token = String::new();
        assert_eq!(Twilio::new(&c).unwrap_err().key, "auth_token");
        let mut c = config("https://api.twilio.com");
        c.from = String::new();
        assert_eq!(Twilio::new(&c).unwrap_err().key, "from");
        let mut c = config("https://api.twilio.com");
        c.status_callback = "not a url".into();
        assert_eq!(Twilio::new(&c).unwrap_err().key, "status_callback");
        assert!(!format!("{c:?}").contains("your_auth_token"));
    }
}
