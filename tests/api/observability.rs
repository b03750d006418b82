//! Following one event from ingest to the provider: JSON logs with the
//! request, event and delivery ids on every line of their flow (and no
//! secret on any), one OTLP trace across the queue, and `herald worker`'s
//! own `/metrics`.
//!
//! Logs and traces are read from a subscriber of the test's own, set as the
//! default on every thread of the test's runtime (tests share a process, so
//! a global subscriber would mix their lines).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use herald_core::{EventKind, Role};
use herald_server::config::{LogFormat, Secret, Settings, TelemetrySettings};
use herald_server::delivery::Components;
use herald_server::telemetry::{self, Telemetry};
use herald_server::worker::Worker;
use herald_testkit::smtp::SmtpSink;
use herald_testkit::{Backend, Fakes, eventually, spawn_app_with, spawn_app_with_fakes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message as _;
use reqwest::Method;
use serde_json::{Value, json};
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{envelope, in_a_process_of_its_own};

/// Log lines written to memory.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("log lines are UTF-8")
    }

    /// Every line, each of which must be a JSON object.
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// The fields of a JSON log line and of every span it was written in.
fn fields(line: &Value) -> serde_json::Map<String, Value> {
    let mut all = serde_json::Map::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        all.extend(span.as_object().unwrap().clone());
    }
    all.extend(line["fields"].as_object().cloned().unwrap_or_default());
    all
}

/// Runs `test` on a runtime of its own whose every thread logs (and
/// traces) through `dispatch`.
fn with_subscriber<F: Future>(dispatch: &Dispatch, test: F) -> F::Output {
    let on_start = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // For the thread's whole life (the runtime's).
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()
        .expect("a runtime");
    tracing::dispatcher::with_default(dispatch, || runtime.block_on(test))
}

fn json_log() -> herald_server::config::LogSettings {
    let mut log = Settings::load(None).unwrap().log;
    log.format = LogFormat::Json;
    log
}

/// What the exporter of `[telemetry]` posts, as a collector receives it.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, OtlpSpan)>>>,
}

impl Collector {
    /// Listens on a port of its own; answers its base URL.
    async fn start(&self) -> String {
        let spans = self.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut spans = spans.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| text(a.value.as_ref()?))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<(String, OtlpSpan)> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute(span: &OtlpSpan, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?))
}

/// Exports what has ended, off the async threads (the flush blocks until
/// the collector, on this runtime, has answered).
async fn flush(telemetry: &Telemetry) {
    let telemetry = telemetry.clone();
    tokio::task::spawn_blocking(move || telemetry.flush())
        .await
        .unwrap()
        .expect("traces flush");
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

/// A publish over real SMTP and the FCM fake, logged as JSON: every line
/// parses; the request's lines carry its request id and the event's id;
/// each delivery's lines carry its id, event, channel and provider; and
/// neither the bearer token, nor a password or key of the configuration,
/// nor the guest's email address or phone number appears anywhere.
///
/// In a process of its own: tracing caches whether a callsite is
/// enabled across every subscriber of the process, and the other tests'
/// subscribers, made and dropped beside them, can leave theirs disabled.
#[test]
fn json_logs_follow_an_event_by_its_ids_and_keep_secrets_out() {
    in_a_process_of_its_own("observability::json_logs_in_a_process_of_its_own");
}

#[test]
#[ignore = "run alone by json_logs_follow_an_event_by_its_ids_and_keep_secrets_out"]
fn json_logs_in_a_process_of_its_own() {
    let capture = Capture::default();
    let (dispatch, _telemetry) = telemetry::subscriber(
        &json_log(),
        // The fakes standing in for providers are not Herald.
        EnvFilter::new("info,sqlx=warn,herald_testkit=off,wiremock=off"),
        &TelemetrySettings {
            otlp_endpoint: String::new(),
            ..Settings::load(None).unwrap().telemetry
        },
        capture.clone(),
    )
    .unwrap();
    with_subscriber(&dispatch, async {
        let mut sink = SmtpSink::start().await;
        let smtp_port = sink.addr.port();
        let fcm = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "access_token": "ya29.obs-access-token", "expires_in": 3599, "token_type": "Bearer"
            })))
            .mount(&fcm)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/projects/herald-test/messages:send"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "projects/herald-test/messages/0:obs"
            })))
            .mount(&fcm)
            .await;
        let base = fcm.uri();
        let account = service_account(&format!("{base}/token"));
        let backend = if herald_testkit::postgres_available().await {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let secrets = [
            "smtp-password-obs",
            "SG.obs-sendgrid-api-key",
            "obs-twilio-auth-token",
            "obs-metrics-token",
            "obs-database-password",
            "ya29.obs-access-token",
        ];
        let app = spawn_app_with(backend, move |s| {
            s.delivery.workers_in_serve = true;
            s.channels.email = "smtp".into();
            s.channels.smtp.host = "127.0.0.1".into();
            s.channels.smtp.port = smtp_port;
            s.channels.smtp.security = "none".into();
            s.channels.smtp.username = "herald".into();
            s.channels.smtp.password = Secret::new(secrets[0]);
            s.channels.sendgrid.api_key = Secret::new(secrets[1]);
            s.channels.twilio.auth_token = Secret::new(secrets[2]);
            s.server.metrics_token = Secret::new(secrets[3]);
            s.channels.push = "fcm".into();
            s.channels.fcm.base_url = base;
            s.channels.fcm.service_account_json = Secret::new(account);
            // PostgreSQL here trusts local connections: the password is
            // there to be kept out of the logs, not to be checked.
            let url = s.database.url.expose().to_owned();
            if backend == Backend::Postgres {
                let rest = url
                    .strip_prefix("postgres://postgres@")
                    .expect("the test database's URL names no password");
                s.database.url = Secret::new(format!("postgres://postgres:{}@{rest}", secrets[4]));
            }
        })
        .await
        .expect("the app starts");

        let guest = crate::user("obs-guest");
        let email = "obs-guest@example.com";
        let phone = "+15017122661";
        let service = app.service_token();
        let res = app
            .send_json(
                Method::PUT,
                &format!("/v1/users/{guest}/contact"),
                &service,
                &json!({"email": email, "phone": phone, "locale": "en"}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let res = app
            .send_json(
                Method::POST,
                &format!("/v1/users/{guest}/devices"),
                &service,
                &json!({"kind": "fcm", "token": "obs-device-token"}),
            )
            .await;
        assert_eq!(res.status(), 201);

        let mut event = envelope(EventKind::PointsRedeemed);
        event["data"]["guestId"] = json!(guest);
        let res = app
            .request(Method::POST, "/v1/events", &service)
            .header("x-request-id", "obs-request-1")
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        assert_eq!(res.headers()["x-request-id"], "obs-request-1");
        let body: Value = res.json().await.unwrap();
        let event_id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned();

        // A request id that is not a sane token is replaced, and echoed.
        let res = app
            .request(Method::GET, "/healthz", "")
            .header("x-request-id", "not a token\"")
            .send()
            .await
            .unwrap();
        let made_up = res.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(made_up).is_ok(), "{made_up}");

        let mail = sink.next(Duration::from_secs(20)).await;
        assert_eq!(mail.to, vec![email.to_owned()]);
        let token = app.token(Role::Guest, &guest, None);
        let deliveries = eventually("both deliveries sent", Duration::from_secs(20), || async {
            let items = crate::newest_deliveries(&app, &token).await;
            (items.len() == 2 && items.iter().all(|d| d["status"] == "sent")).then_some(items)
        })
        .await;

        // Each delivery's outcome line names it, its event, channel and provider.
        for d in &deliveries {
            let id = d["id"].as_str().unwrap().to_owned();
            let line = eventually("the attempt's line", Duration::from_secs(10), || {
                let lines = capture.lines();
                let id = id.clone();
                async move {
                    lines.into_iter().map(|l| fields(&l)).find(|f| {
                        f.get("delivery_id") == Some(&json!(id))
                            && f.get("message") == Some(&json!("delivery attempt recorded"))
                    })
                }
            })
            .await;
            assert_eq!(line["event_id"], json!(event_id), "{line:?}");
            assert_eq!(line["channel"], d["channel"], "{line:?}");
            assert_eq!(line["provider"], d["provider"], "{line:?}");
            assert_eq!(line["outcome"], "sent", "{line:?}");
        }
        // The provider's own line is inside the delivery's span too.
        let lines = capture.lines();
        let smtp = lines
            .iter()
            .map(fields)
            .find(|f| f.get("message") == Some(&json!("accepted by the smtp server")))
            .expect("the SMTP transport logs the acceptance");
        assert_eq!(smtp["event_id"], json!(event_id));
        assert!(smtp["delivery_id"].is_string(), "{smtp:?}");

        // The publish's lines carry the request id and the event id.
        let published = lines
            .iter()
            .map(fields)
            .find(|f| f.get("message") == Some(&json!("published")))
            .expect("a line for the publish");
        assert_eq!(published["request_id"], "obs-request-1");
        assert_eq!(published["event_id"], json!(event_id));

        // No secret, and no full address, anywhere.
        let text = capture.text();
        let key_line = include_str!("../../crates/herald-channels/testdata/fcm-test-key.pem")
            .lines()
            .nth(1)
            .unwrap();
        for secret in secrets.iter().copied().chain([
            service.as_str(),
            token.as_str(),
            email,
            phone,
            key_line,
        ]) {
            assert!(!text.contains(secret), "`{secret}` is in the logs");
        }
        assert!(text.contains("obs-request-1"));
    });
}

/// One publish that brings its caller's `traceparent` is one trace at the
/// collector: the request, the publish and its ingest (with the event id),
/// routing, persisting and enqueueing, then — across the queue — the
/// delivery attempt (a child of ingest, with the delivery and event ids),
/// its render and the provider's send.
///
/// In a process of its own, as the JSON logs' test is and for its reason.
#[test]
fn a_published_event_is_one_trace_from_the_request_to_the_provider() {
    in_a_process_of_its_own("observability::one_trace_in_a_process_of_its_own");
}

#[test]
#[ignore = "run alone by a_published_event_is_one_trace_from_the_request_to_the_provider"]
fn one_trace_in_a_process_of_its_own() {
    let collector = Collector::default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = runtime.block_on(collector.start());
    let settings = TelemetrySettings {
        otlp_endpoint: endpoint.clone(),
        service_name: "herald-under-test".into(),
        sample_ratio: 1.0,
        export_timeout_ms: 5_000,
    };
    let (dispatch, telemetry) = telemetry::subscriber(
        &json_log(),
        EnvFilter::new("warn"),
        &settings,
        std::io::sink,
    )
    .unwrap();
    assert!(telemetry.traces());
    with_subscriber(&dispatch, async {
        // PostgreSQL and a Redis queue: SQLite's driver hands the caller's
        // span to a thread of its own, which closes it there; with this
        // test's subscriber set per thread rather than for the process (as
        // `herald serve` sets it), the parent of a span closed on that
        // thread would never learn its child had ended.
        let Some(redis) = herald_testkit::redis_available(13).await else {
            return;
        };
        let queue = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
        let fakes = Fakes::live();
        let Some(app) = spawn_app_with_fakes(Backend::Postgres, fakes.clone(), move |s| {
            s.delivery.workers_in_serve = true;
            s.delivery.queue_url = Secret::new(redis);
            s.delivery.queue_name = queue;
            s.telemetry.otlp_endpoint = endpoint;
        })
        .await
        else {
            return;
        };
        let (guest, _) = crate::delivery::guest_with_email(&app, "traced-guest", json!({})).await;
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller_span = "00f067aa0ba902b7";
        let mut event = envelope(EventKind::PointsRedeemed);
        event["data"]["guestId"] = json!(guest);
        let res = app
            .request(Method::POST, "/v1/events", &app.service_token())
            .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        let event_id = body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned();

        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let spans = eventually(
            "the request's and the provider's spans at the collector",
            Duration::from_secs(20),
            || async {
                flush(&telemetry).await;
                let spans: Vec<OtlpSpan> = collector
                    .spans()
                    .into_iter()
                    .filter(|(service, s)| {
                        service == "herald-under-test" && hex(&s.trace_id) == trace_id
                    })
                    .map(|(_, s)| s)
                    .collect();
                // A span is exported once it ends: the request's once its
                // answer is out, the attempt's once its outcome is recorded.
                let sent = spans.iter().any(|s| {
                    s.name == "provider_send" && attribute(s, "outcome").as_deref() == Some("sent")
                });
                let all = [HTTP, "publish", "ingest", "delivery_attempt"]
                    .iter()
                    .all(|name| spans.iter().any(|s| s.name == *name));
                if !(sent && all) {
                    // Shown if it never comes.
                    eprintln!("at the collector so far: {:?}", names(&spans));
                }
                (sent && all).then_some(spans)
            },
        )
        .await;
        assert_eq!(fakes.email.sent().len(), 1);

        let named = |name: &str| -> &OtlpSpan {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no `{name}` span in {:?}", names(&spans)))
        };
        let http = named(HTTP);
        assert_eq!(
            hex(&http.parent_span_id),
            caller_span,
            "continues the caller"
        );
        // The handler's span, then ingest's.
        let handler = named("publish");
        assert_eq!(handler.parent_span_id, http.span_id);
        let ingest = named("ingest");
        assert_eq!(ingest.parent_span_id, handler.span_id);
        assert_eq!(attribute(ingest, "event_id"), Some(event_id.clone()));
        for step in ["route", "persist", "enqueue"] {
            assert_eq!(named(step).parent_span_id, ingest.span_id, "{step}");
        }
        // Across the queue: the attempt is ingest's child.
        let attempt = spans
            .iter()
            .find(|s| {
                s.name == "delivery_attempt" && attribute(s, "channel").as_deref() == Some("email")
            })
            .expect("the email's attempt");
        assert_eq!(attempt.parent_span_id, ingest.span_id);
        assert_eq!(attribute(attempt, "event_id"), Some(event_id.clone()));
        assert_eq!(attribute(attempt, "outcome").as_deref(), Some("sent"));
        let delivery_id = attribute(attempt, "delivery_id").expect("the delivery's id");
        assert!(uuid::Uuid::parse_str(&delivery_id).is_ok(), "{delivery_id}");
        assert_eq!(named("render").parent_span_id, attempt.span_id);
        let send = spans
            .iter()
            .find(|s| {
                s.name == "provider_send" && attribute(s, "outcome").as_deref() == Some("sent")
            })
            .unwrap();
        // (The fake serves every channel: its name says which.)
        assert_eq!(attribute(send, "provider").as_deref(), Some("fake:email"));
        // provider_send ← send (the chain) ← delivery_attempt.
        let chain = spans
            .iter()
            .find(|s| s.span_id == send.parent_span_id)
            .expect("the provider chain's span");
        assert_eq!(chain.parent_span_id, attempt.span_id);
    });
    runtime.block_on(async move {
        tokio::task::spawn_blocking(move || drop(telemetry))
            .await
            .unwrap();
    });
}

/// The request's span, named by its method and route.
const HTTP: &str = "POST /v1/events";

fn names(spans: &[OtlpSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// `herald worker` has no API, but serves `/metrics` (behind the metrics
/// token) and `/healthz`; its delivery counters move as it delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_that_count_its_deliveries() {
    let Some(redis) = herald_testkit::redis_available(13).await else {
        return;
    };
    let queue = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(Backend::Sqlite, {
        let (redis, queue) = (redis.clone(), queue.clone());
        move |s| {
            s.delivery.queue_url = Secret::new(redis);
            s.delivery.queue_name = queue;
        }
    })
    .await
    .unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load(None).unwrap();
    settings.database.url = Secret::new(format!(
        "sqlite://{}",
        app.data_dir.join("herald.db").display()
    ));
    settings.delivery.queue_url = Secret::new(redis);
    settings.delivery.queue_name = queue;
    settings.channels.outbox_dir = app.data_dir.join("worker-outbox");
    settings.routing.file = root.join("config/routing.toml");
    settings.templates.dir = root.join("templates");
    settings.server.metrics_token = Secret::new("worker-scrape-token");
    settings.worker.metrics_port = 0;
    let worker = Worker::build(settings, Components::default())
        .await
        .expect("the worker starts");
    let addr = worker.metrics_addr().expect("metrics are on by default");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let anonymous = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let scrape = || async {
        let res = client
            .get(format!("http://{addr}/metrics"))
            .bearer_auth("worker-scrape-token")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    };
    let sent = r#"herald_delivery_attempts_total{channel="email",outcome="sent"}"#;
    assert!(!scrape().await.contains(sent), "nothing sent yet");

    let (guest, _) = crate::delivery::guest_with_email(&app, "worker-guest", json!({})).await;
    app.publish_ok(&crate::delivery::redeemed(&guest)).await;
    let line = eventually(
        "the worker to count the email",
        Duration::from_secs(20),
        || async {
            scrape()
                .await
                .lines()
                .find(|l| l.starts_with(sent))
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(line, format!("{sent} 1"));
    let _ = stop.send(());
    running.await.unwrap().expect("the worker stops cleanly");
}
