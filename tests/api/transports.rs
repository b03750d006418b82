//! Real transports behind the pipeline: swapping the outbox for a provider
//! is a config change, and a provider configured wrong stops the start.
//! Third-party APIs are wiremock fakes replaying their documented shapes.

use std::collections::HashMap;
use std::time::Duration;

use herald_channels::{Security, Smtp, SmtpConfig};
use herald_core::channel::Address;
use herald_core::{Channel, ChannelError, ChannelKind, EventKind, RenderedMessage, Role};
use herald_server::Application;
use herald_server::config::{Secret, Settings};
use herald_testkit::smtp::SmtpSink;
use herald_testkit::{Backend, TestApp, eventually, spawn_app_with};
use serde_json::json;
use wiremock::matchers::{body_partial_json, body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::delivery::{guest_with_email, redeemed, trace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_sendgrid_when_configured() {
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", "Bearer SG.integration"))
        .respond_with(ResponseTemplate::new(202).insert_header("X-Message-Id", "sg-e2e-1"))
        .expect(1)
        .mount(&sendgrid)
        .await;
    let uri = sendgrid.uri();
    let sendgrid_key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let public = public_key(&sendgrid_key);
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.delivery.workers_in_serve = true;
        s.channels.email = "sendgrid".into();
        s.channels.sendgrid.webhook_public_key = public;
        s.channels.sendgrid.base_url = uri;
        s.channels.sendgrid.api_key = Secret::new("SG.integration");
    })
    .await
    .unwrap();
    let (guest, token) = guest_with_email(&app, "sendgrid-guest", json!({"locale": "en"})).await;
    app.publish_ok(&redeemed(&guest)).await;
    let sent = eventually("the email to be sent", Duration::from_secs(20), || async {
        let d = trace(&app, &token, "email").await;
        (d["status"] == "sent").then_some(d)
    })
    .await;
    assert_eq!(sent["providerMessageId"], "sg-e2e-1");
    let requests = sendgrid.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body["personalizations"][0]["to"][0]["email"],
        "sendgrid-guest@example.com"
    );
    assert_eq!(body["custom_args"]["herald_delivery"], sent["id"]);

    // SendGrid's Event Webhook reports the delivery, signed.
    let events = serde_json::to_vec(&json!([
        {"email": "sendgrid-guest@example.com", "event": "processed", "sg_event_id": "ev-processed",
         "sg_message_id": "sg-e2e-1.filterdrecv-5645d9c87f-6r8pw-1-5F3B5A5E-1.0", "timestamp": 1_600_112_492},
        {"email": "sendgrid-guest@example.com", "event": "delivered", "sg_event_id": "ev-delivered",
         "sg_message_id": "sg-e2e-1.filterdrecv-5645d9c87f-6r8pw-1-5F3B5A5E-1.0", "timestamp": 1_600_112_493,
         "herald_delivery": sent["id"]}
    ]))
    .unwrap();
    let post = |body: Vec<u8>, signature: String| {
        app.client
            .post(format!("{}/v1/webhooks/sendgrid", app.address))
            .header("content-type", "application/json")
            .header("X-Twilio-Email-Event-Webhook-Signature", signature)
            .header("X-Twilio-Email-Event-Webhook-Timestamp", "1600112502")
            .body(body)
            .send()
    };
    // Signed by someone else: 403, nothing changes.
    let stranger = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let res = post(events.clone(), sign(&stranger, "1600112502", &events))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(trace(&app, &token, "email").await["status"], "sent");
    for _ in 0..2 {
        let res = post(events.clone(), sign(&sendgrid_key, "1600112502", &events))
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        assert_eq!(trace(&app, &token, "email").await["status"], "delivered");
    }
    // A later bounce (a new event id) still lands.
    let bounce = serde_json::to_vec(&json!([
        {"email": "sendgrid-guest@example.com", "event": "bounce", "sg_event_id": "ev-bounce",
         "sg_message_id": "sg-e2e-1.filterdrecv-5645d9c87f-6r8pw-1-5F3B5A5E-1.0",
         "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
         "type": "bounce", "timestamp": 1_600_112_600}
    ]))
    .unwrap();
    let res = post(bounce.clone(), sign(&sendgrid_key, "1600112502", &bounce))
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let d = trace(&app, &token, "email").await;
    assert_eq!(d["status"], "bounced");
    assert!(
        d["lastError"].as_str().unwrap().contains("does not exist"),
        "{d}"
    );
    assert!(
        !std::fs::exists(app.outbox_dir()).unwrap_or(false)
            || std::fs::read_dir(app.outbox_dir())
                .unwrap()
                .next()
                .is_none()
    );
}

/// The base64 DER public key, as SendGrid shows its verification key.
fn public_key(key: &p256::ecdsa::SigningKey) -> String {
    use base64::Engine as _;
    use p256::pkcs8::EncodePublicKey as _;
    let der = key.verifying_key().to_public_key_der().unwrap();
    base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
}

/// What SendGrid sends in X-Twilio-Email-Event-Webhook-Signature.
fn sign(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

/// Settings as the tests use them, with a SQLite database under a temp dir.
fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::load(None).unwrap();
    s.server.port = 0;
    s.server.data_dir = dir.to_owned();
    s.database.url = Secret::new(format!("sqlite://{}", dir.join("h.db").display()));
    s.delivery.queue_url = Secret::new(format!("sqlite://{}", dir.join("q.db").display()));
    s.auth.secret = Secret::new("x".repeat(32));
    s
}

#[tokio::test]
async fn a_provider_configured_wrong_stops_the_start_with_its_key() {
    let dir = tempfile_dir();
    let mut s = settings(&dir);
    s.channels.email = "sendgrid".into();
    let err = Application::build(s).await.unwrap_err().to_string();
    assert!(err.contains("channels.sendgrid.api_key"), "{err}");

    let mut s = settings(&dir);
    s.channels.sendgrid.webhook_public_key = "not a key".into();
    assert_eq!(
        s.validate().unwrap_err().key,
        "channels.sendgrid.webhook_public_key"
    );

    let mut s = settings(&dir);
    s.channels.sms = "sendgrid".into();
    let err = Application::build(s).await.unwrap_err().to_string();
    assert!(
        err.contains("channels.sms") && err.contains("unknown transport"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-tr-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mail_header(mail: &mailparse::ParsedMail<'_>, name: &str) -> Option<String> {
    mail.headers
        .iter()
        .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
        .map(|h| h.get_value())
}

/// The raw (still encoded) value of a header in a message's bytes.
fn raw_header(data: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(data);
    let prefix = format!("{name}: ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(|l| l[prefix.len()..].to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server_in_english_and_russian() {
    let mut sink = SmtpSink::start().await;
    let port = sink.addr.port();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.delivery.workers_in_serve = true;
        s.channels.email = "smtp".into();
        s.channels.email_from = "Herald <no-reply@herald.test>".into();
        s.channels.smtp.host = "127.0.0.1".into();
        s.channels.smtp.port = port;
        s.channels.smtp.security = "none".into();
        s.channels.smtp.username = "herald".into();
        s.channels.smtp.password = Secret::new("smtp-password");
    })
    .await
    .unwrap();
    for (name, locale, subject, text, lang) in [
        (
            "smtp-en",
            "en",
            "200 points redeemed: Бесплатный кофе",
            "You redeemed 200 points for “Бесплатный кофе”.",
            "<html lang=\"en\">",
        ),
        (
            "smtp-ru",
            "ru",
            "Списано 200 баллов: Бесплатный кофе",
            "Вы обменяли 200 баллов на «Бесплатный кофе».",
            "<html lang=\"ru\">",
        ),
    ] {
        let (guest, token) = guest_with_email(&app, name, json!({"locale": locale})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let received = sink.next(Duration::from_secs(20)).await;
        assert_eq!(received.to, vec![format!("{name}@example.com")]);
        assert_eq!(received.from, "no-reply@herald.test");
        assert_eq!(
            received.auth,
            Some(("herald".to_owned(), "smtp-password".to_owned()))
        );
        let mail = mailparse::parse_mail(&received.data).unwrap();
        assert_eq!(
            mail_header(&mail, "To").as_deref(),
            Some(format!("{name}@example.com").as_str())
        );
        assert_eq!(
            mail_header(&mail, "From").as_deref(),
            Some("Herald <no-reply@herald.test>")
        );
        assert_eq!(mail_header(&mail, "Subject").as_deref(), Some(subject));
        // RFC 2047: non-ASCII subjects travel encoded, never as raw UTF-8.
        let raw = raw_header(&received.data, "Subject");
        // (Lettre encodes the non-ASCII words; ASCII ones stay readable.)
        assert!(raw.is_ascii() && raw.contains("=?utf-8?b?"), "{raw}");
        assert_eq!(mail.ctype.mimetype, "multipart/alternative");
        assert_eq!(mail.subparts[0].ctype.mimetype, "text/plain");
        assert_eq!(mail.subparts[1].ctype.mimetype, "text/html");
        let plain = mail.subparts[0].get_body().unwrap();
        let html = mail.subparts[1].get_body().unwrap();
        assert!(plain.contains(text), "{plain}");
        assert!(html.contains(lang), "{html}");
        let sent = eventually(
            "the delivery to be recorded",
            Duration::from_secs(20),
            || async {
                let d = trace(&app, &token, "email").await;
                (d["status"] == "sent").then_some(d)
            },
        )
        .await;
        let message_id = mail_header(&mail, "Message-ID").unwrap();
        assert_eq!(sent["providerMessageId"], message_id.as_str());
        assert_eq!(
            message_id,
            format!("<{}@herald.test>", sent["id"].as_str().unwrap())
        );
    }
}

#[tokio::test]
async fn smtp_replies_are_classified_by_their_class() {
    let reject = HashMap::from([
        (
            "gone@example.com".to_owned(),
            "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown".to_owned(),
        ),
        (
            "busy@example.com".to_owned(),
            "451 4.7.1 Greylisted, try again later".to_owned(),
        ),
    ]);
    let sink = SmtpSink::start_with(reject).await;
    let smtp = Smtp::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port: sink.addr.port(),
        security: Security::None,
        username: String::new(),
        password: String::new(),
        from: "no-reply@herald.test".into(),
        timeout: Duration::from_secs(5),
        pool_max_size: 2,
    })
    .unwrap();
    smtp.check().await.unwrap();
    let message = |email: &str| RenderedMessage {
        channel: ChannelKind::Email,
        to: Address::Email {
            email: email.to_owned(),
        },
        subject: Some("s".into()),
        text: "t".into(),
        html: None,
        data: json!({}),
        idempotency_key: "d-1".into(),
        list_unsubscribe: None,
    };
    let err = smtp.send(&message("gone@example.com")).await.unwrap_err();
    assert!(matches!(err, ChannelError::Permanent { .. }), "{err:?}");
    let err = smtp.send(&message("busy@example.com")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    // The pool recovers: the next message goes through.
    smtp.send(&message("ok@example.com")).await.unwrap();
    // Nobody listening: transient.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = Smtp::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: Security::None,
        username: String::new(),
        password: String::new(),
        from: "no-reply@herald.test".into(),
        timeout: Duration::from_secs(5),
        pool_max_size: 1,
    })
    .unwrap();
    assert!(
        dead.send(&message("ok@example.com"))
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(dead.check().await.is_err());
}

const TWILIO_SID: &str = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";
const TWILIO_TOKEN: &str = "twilio-auth-token";
const CALLBACK: &str = "https://herald.example.com/v1/webhooks/twilio";

/// Twilio's status callback for `sid`, signed with `token`.
async fn status_callback(app: &TestApp, sid: &str, status: &str, token: &str) -> reqwest::Response {
    let params: Vec<(String, String)> = [
        ("AccountSid", TWILIO_SID),
        ("ApiVersion", "2010-04-01"),
        ("From", "+15017122661"),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("To", "+14155552671"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let signature = herald_channels::twilio::signature(token, CALLBACK, &params);
    app.client
        .post(format!("{}/v1/webhooks/twilio", app.address))
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_through_twilio_and_its_status_callbacks_are_verified_and_applied_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let twilio = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!(
                "/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
            )))
            .and(body_string_contains(
                "StatusCallback=https%3A%2F%2Fherald.example.com%2Fv1%2Fwebhooks%2Ftwilio",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "sid": "SM00000000000000000000000000000001", "status": "queued"
            })))
            .expect(1)
            .mount(&twilio)
            .await;
        let uri = twilio.uri();
        let Some(app) = spawn_app_with(backend, move |s| {
            s.delivery.workers_in_serve = true;
            s.channels.sms = "twilio".into();
            s.channels.twilio.base_url = uri;
            s.channels.twilio.account_sid = TWILIO_SID.into();
            s.channels.twilio.auth_token = Secret::new(TWILIO_TOKEN);
            s.channels.twilio.from = "+15017122661".into();
            s.channels.twilio.status_callback = CALLBACK.into();
        })
        .await
        else {
            continue;
        };
        let admin = crate::user("twilio-admin");
        app.register(&admin, Role::Admin, None, json!({"phone": "+14155552671"}))
            .await;
        let token = app.token(Role::Admin, &admin, None);
        app.publish_ok(&crate::envelope(EventKind::SystemAlert))
            .await;
        let sent = eventually("the sms to be sent", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "sms").await;
            (d["status"] == "sent").then_some(d)
        })
        .await;
        assert_eq!(
            sent["providerMessageId"],
            "SM00000000000000000000000000000001"
        );

        // A forged callback: 403, nothing changes.
        let res = status_callback(
            &app,
            "SM00000000000000000000000000000001",
            "failed",
            "not-the-token",
        )
        .await;
        assert_eq!(res.status(), 403);
        assert_eq!(trace(&app, &token, "sms").await["status"], "sent");
        // Intermediate statuses are acknowledged and ignored.
        let res = status_callback(
            &app,
            "SM00000000000000000000000000000001",
            "sent",
            TWILIO_TOKEN,
        )
        .await;
        assert_eq!(res.status(), 204);
        // The real one moves the delivery; a retry of it changes nothing.
        for _ in 0..2 {
            let res = status_callback(
                &app,
                "SM00000000000000000000000000000001",
                "delivered",
                TWILIO_TOKEN,
            )
            .await;
            assert_eq!(res.status(), 204);
            assert_eq!(trace(&app, &token, "sms").await["status"], "delivered");
        }
        // A callback for a message Herald never sent is accepted and ignored.
        let res = status_callback(
            &app,
            "SM99999999999999999999999999999999",
            "failed",
            TWILIO_TOKEN,
        )
        .await;
        assert_eq!(res.status(), 204);
        // An unsigned request is refused.
        let res = app
            .client
            .post(format!("{}/v1/webhooks/twilio", app.address))
            .form(&[
                ("MessageSid", "SM00000000000000000000000000000001"),
                ("MessageStatus", "failed"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        assert_eq!(trace(&app, &token, "sms").await["status"], "delivered");
    }
}

/// A Firebase service account key whose token endpoint is `token_uri`.
fn service_account(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "herald-test",
        "private_key_id": "key-1",
        "private_key": include_str!("../../crates/herald-channels/testdata/fcm-test-key.pem"),
        "client_email": "herald@herald-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_goes_through_fcm_and_an_unregistered_token_loses_its_device() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let fcm = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "ya29.e2e", "expires_in": 3599, "token_type": "Bearer"
            })))
            .expect(1)
            .mount(&fcm)
            .await;
        let send = "/v1/projects/herald-test/messages:send";
        Mock::given(method("POST"))
            .and(path(send))
            .and(header("authorization", "Bearer ya29.e2e"))
            .and(body_partial_json(
                json!({"message": {"token": "live-token"}}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "projects/herald-test/messages/0:live"
            })))
            .mount(&fcm)
            .await;
        Mock::given(method("POST"))
            .and(path(send))
            .and(body_partial_json(json!({"message": {"token": "stale-token"}})))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
                "code": 404,
                "message": "Requested entity was not found.",
                "status": "NOT_FOUND",
                "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]
            }})))
            .mount(&fcm)
            .await;
        let base = fcm.uri();
        let account = service_account(&format!("{base}/token"));
        let Some(app) = spawn_app_with(backend, move |s| {
            s.delivery.workers_in_serve = true;
            s.channels.push = "fcm".into();
            s.channels.fcm.base_url = base;
            s.channels.fcm.service_account_json = Secret::new(account);
        })
        .await
        else {
            continue;
        };
        let guest = crate::user("fcm-guest");
        let token = app.token(Role::Guest, &guest, None);
        // Known only by their devices: no contact details, no preferences.
        for device in ["live-token", "stale-token"] {
            let res = app
                .send_json(
                    reqwest::Method::POST,
                    &format!("/v1/users/{guest}/devices"),
                    &token,
                    &json!({"kind": "fcm", "token": device}),
                )
                .await;
            assert_eq!(res.status(), 201, "{device}");
        }
        app.publish_ok(&crate::points_for(&guest, 50)).await;
        let sent = eventually("the push to be sent", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "push").await;
            (d["status"] == "sent").then_some(d)
        })
        .await;
        assert_eq!(
            sent["providerMessageId"],
            "projects/herald-test/messages/0:live"
        );
        // FCM said the stale token is gone: its device is forgotten.
        let devices: serde_json::Value = app
            .get(&format!("/v1/users/{guest}/devices"), &token)
            .await
            .json()
            .await
            .unwrap();
        let tokens: Vec<&str> = devices["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{devices}"))
            .iter()
            .filter_map(|d| d["token"].as_str())
            .collect();
        assert_eq!(tokens, vec!["live-token"]);

        // With only a stale device left, the delivery fails permanently.
        let res = app
            .send_json(
                reqwest::Method::POST,
                &format!("/v1/users/{guest}/devices"),
                &token,
                &json!({"kind": "fcm", "token": "stale-token"}),
            )
            .await;
        assert_eq!(res.status(), 201, "a device again, once forgotten");
        let res = app
            .request(
                reqwest::Method::DELETE,
                &format!(
                    "/v1/users/{guest}/devices/{}",
                    devices["items"][0]["id"].as_str().unwrap()
                ),
                &token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        app.publish_ok(&crate::points_for(&guest, 10)).await;
        let failed = eventually("the push to fail", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "push").await;
            (d["status"] == "failed").then_some(d)
        })
        .await;
        assert_eq!(failed["attempts"], 1, "gone is permanent: no retry");
        assert!(
            failed["lastError"]
                .as_str()
                .unwrap()
                .contains("UNREGISTERED"),
            "{failed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_registered_fills_a_missing_email_and_never_overwrites_one() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app_with(backend, |s| {
            s.delivery.workers_in_serve = true;
        })
        .await
        else {
            continue;
        };
        let registered = |guest: &str, email: Option<&str>| {
            let mut e = crate::envelope(EventKind::GuestRegistered);
            e["data"]["guestId"] = json!(guest);
            match email {
                Some(email) => e["data"]["email"] = json!(email),
                None => {
                    e["data"].as_object_mut().unwrap().remove("email");
                }
            }
            e
        };
        let status = |token: String| {
            let app = &app;
            async move {
                eventually(
                    "the welcome email to settle",
                    Duration::from_secs(20),
                    || async {
                        let d = trace(app, &token, "email").await;
                        (d["status"] != "pending" && d["status"] != "sending").then_some(d)
                    },
                )
                .await
            }
        };

        // Unknown to Herald: the event's email becomes the contact.
        let new = crate::user("registered-new");
        let token = app.token(Role::Guest, &new, None);
        app.publish_ok(&registered(&new, Some("new-guest@example.com")))
            .await;
        let d = status(token.clone()).await;
        assert_eq!(d["status"], "sent", "{d}");
        let contact: serde_json::Value = app
            .get(&format!("/v1/users/{new}/contact"), &token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(contact["email"], "new-guest@example.com");
        let eml = std::fs::read(
            app.outbox_dir()
                .join(d["providerMessageId"].as_str().unwrap()),
        )
        .unwrap();
        let mail = mailparse::parse_mail(&eml).unwrap();
        assert_eq!(
            mail_header(&mail, "To").as_deref(),
            Some("new-guest@example.com")
        );

        // An address on file wins.
        let known = crate::user("registered-known");
        let token = app.token(Role::Guest, &known, None);
        app.register(
            &known,
            Role::Guest,
            None,
            json!({"email": "own@example.com"}),
        )
        .await;
        app.publish_ok(&registered(&known, Some("other@example.com")))
            .await;
        let d = status(token.clone()).await;
        let eml = std::fs::read(
            app.outbox_dir()
                .join(d["providerMessageId"].as_str().unwrap()),
        )
        .unwrap();
        let mail = mailparse::parse_mail(&eml).unwrap();
        assert_eq!(mail_header(&mail, "To").as_deref(), Some("own@example.com"));

        // No address anywhere: suppressed, not an error loop.
        let nowhere = crate::user("registered-nowhere");
        let token = app.token(Role::Guest, &nowhere, None);
        app.publish_ok(&registered(&nowhere, None)).await;
        let d = status(token).await;
        assert_eq!(d["status"], "suppressed");
        assert_eq!(d["reason"], "no_contact");
        assert_eq!(d["attempts"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_reaches_a_browser_encrypted_and_an_expired_subscription_is_removed() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let service = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/push/live"))
            .and(header("content-encoding", "aes128gcm"))
            .respond_with(
                ResponseTemplate::new(201)
                    .insert_header("Location", "https://push.example/m/live-1"),
            )
            .mount(&service)
            .await;
        Mock::given(method("POST"))
            .and(path("/push/expired"))
            .respond_with(
                ResponseTemplate::new(410)
                    .set_body_string("push subscription has unsubscribed or expired."),
            )
            .mount(&service)
            .await;
        let vapid = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let vapid_private = URL_SAFE_NO_PAD.encode(vapid.to_bytes());
        let Some(app) = spawn_app_with(backend, move |s| {
            s.delivery.workers_in_serve = true;
            s.channels.push = "fcm+webpush".into();
            // FCM is configured too (a user may have both kinds of device);
            // this guest has browsers only.
            s.channels.fcm.service_account_json =
                Secret::new(service_account("https://oauth2.googleapis.com/token"));
            s.channels.webpush.vapid_private_key = Secret::new(vapid_private);
            s.channels.webpush.subject = "mailto:ops@herald.test".into();
        })
        .await
        else {
            continue;
        };
        let guest = crate::user("webpush-guest");
        let token = app.token(Role::Guest, &guest, None);
        let (keys, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        for name in ["live", "expired"] {
            let subscription = json!({
                "endpoint": format!("{}/push/{name}", service.uri()),
                "expirationTime": null,
                "keys": {
                    "p256dh": URL_SAFE_NO_PAD.encode(keys.pub_as_raw().unwrap()),
                    "auth": URL_SAFE_NO_PAD.encode(auth),
                }
            });
            // The API accepts https endpoints only; the fake push service
            // is plain http, so the device goes straight into the store.
            app.store
                .add_device(
                    &herald_core::UserId(guest.clone()),
                    &herald_store::directory::NewDevice {
                        kind: herald_store::DeviceKind::Webpush,
                        token: subscription["endpoint"].as_str().unwrap().to_owned(),
                        subscription: Some(subscription.clone()),
                    },
                )
                .await
                .unwrap();
        }
        app.publish_ok(&crate::points_for(&guest, 50)).await;
        let sent = eventually("the push to be sent", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "push").await;
            (d["status"] == "sent").then_some(d)
        })
        .await;
        assert_eq!(sent["providerMessageId"], "https://push.example/m/live-1");
        // The browser decrypts what it got (RFC 8291).
        let requests = service.received_requests().await.unwrap();
        let live = requests
            .iter()
            .find(|r| r.url.path() == "/push/live")
            .unwrap();
        let plain = ece::decrypt(&keys.raw_components().unwrap(), &auth, &live.body).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(
            payload["body"].as_str().unwrap().contains("50"),
            "{payload}"
        );
        assert_eq!(payload["data"]["event"], "points_added");
        // The expired subscription is forgotten.
        let devices: serde_json::Value = app
            .get(&format!("/v1/users/{guest}/devices"), &token)
            .await
            .json()
            .await
            .unwrap();
        let endpoints: Vec<&str> = devices["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["token"].as_str())
            .collect();
        assert_eq!(
            endpoints,
            vec![format!("{}/push/live", service.uri()).as_str()]
        );
    }
}

/// A configured but unreachable provider shows on `/readyz` (and in the
/// log at start) before any send, without taking the node out of rotation:
/// its deliveries wait and retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_broken_provider_without_failing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.channels.email = "smtp".into();
        s.channels.smtp.host = "127.0.0.1".into();
        s.channels.smtp.port = port;
        s.channels.smtp.security = "none".into();
    })
    .await
    .unwrap();
    let res = app.get("/readyz", "").await;
    assert_eq!(res.status(), 200);
    let ready: serde_json::Value = res.json().await.unwrap();
    let email = ready["checks"]["channels"]["email"].as_str().unwrap();
    assert!(email.starts_with("unavailable: smtp 127.0.0.1"), "{ready}");
    assert_eq!(
        ready["checks"]["channels"]["sms"], "ok",
        "the outbox is fine"
    );
}
