//! Dispatch under provider trouble: an outage outlasted, failover along a
//! provider chain with its breaker, rate limits held, expiry, a worker
//! killed mid-batch, and a queue that does not keep what it finished.
//! SendGrid is a wiremock stand-in answering as its v3 API documents; SMTP
//! is a real server in the test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_delivery::Outcome;
use herald_server::config::Secret;
use herald_testkit::fakes::Step;
use herald_testkit::smtp::SmtpSink;
use herald_testkit::{Backend, Fakes, TestApp, eventually, spawn_app_with, spawn_app_with_fakes};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::delivery::{delivery_id, guest_with_email, redeemed, trace};
use crate::realtime::Ws;

/// SendGrid's Mail Send endpoint, up or down on the test's word. Counts
/// what it accepted per delivery (`custom_args.herald_delivery`) and when.
#[derive(Debug, Default)]
struct StandIn {
    down: AtomicBool,
    /// While down: 503 (transient) or 400 (a permanent refusal).
    refuse_permanently: AtomicBool,
    requests: AtomicUsize,
    accepted: Mutex<Vec<(String, Instant)>>,
}

impl StandIn {
    async fn start() -> (Arc<StandIn>, MockServer) {
        let stand_in = Arc::new(StandIn::default());
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v3/mail/send"))
            .respond_with(Shared(stand_in.clone()))
            .mount(&server)
            .await;
        (stand_in, server)
    }

    fn accepted(&self) -> Vec<(String, Instant)> {
        self.accepted.lock().unwrap().clone()
    }

    /// How many times each delivery was accepted.
    fn accepted_per_delivery(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (id, _) in self.accepted() {
            *out.entry(id).or_default() += 1;
        }
        out
    }
}

struct Shared(Arc<StandIn>);

impl Respond for Shared {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let s = &self.0;
        let n = s.requests.fetch_add(1, Ordering::SeqCst);
        if s.down.load(Ordering::SeqCst) {
            return if s.refuse_permanently.load(Ordering::SeqCst) {
                ResponseTemplate::new(400).set_body_json(json!({"errors": [
                    {"message": "The from address does not match a verified Sender Identity.",
                     "field": "from", "help": null}
                ]}))
            } else {
                ResponseTemplate::new(503).set_body_string("Service Unavailable")
            };
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let delivery = body["custom_args"]["herald_delivery"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        s.accepted.lock().unwrap().push((delivery, Instant::now()));
        ResponseTemplate::new(202).insert_header("X-Message-Id", format!("sg-{n}").as_str())
    }
}

fn use_sendgrid(s: &mut herald_server::Settings, uri: &str) {
    s.delivery.workers_in_serve = true;
    s.channels.sendgrid.base_url = uri.to_owned();
    s.channels.sendgrid.api_key = Secret::new("SG.dispatch");
    s.channels.email = "sendgrid".into();
}

/// Email through SendGrid at `uri`, failing over to SMTP on `port`.
fn use_sendgrid_then_smtp(s: &mut herald_server::Settings, uri: &str, port: u16) {
    use_sendgrid(s, uri);
    s.channels.email = "sendgrid, smtp".into();
    s.channels.smtp.host = "127.0.0.1".into();
    s.channels.smtp.port = port;
    s.channels.smtp.security = "none".into();
}

/// `n` guests with an email address, and a `points_redeemed` for each.
async fn guests_redeeming(app: &TestApp, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut guests = Vec::with_capacity(n);
    for i in 0..n {
        guests.push(guest_with_email(app, &format!("{prefix}-{i}"), json!({"locale": "en"})).await);
    }
    let batch = Value::Array(guests.iter().map(|(g, _)| redeemed(g)).collect());
    assert_eq!(app.publish(&batch).await.status(), 202);
    guests
}

/// A provider down for a minute: every delivery is sent once it is back,
/// and each failed attempt was reported with `delivery_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_of_a_minute_loses_nothing() {
    let (stand_in, server) = StandIn::start().await;
    stand_in.down.store(true, Ordering::SeqCst);
    let uri = server.uri();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        use_sendgrid(s, &uri);
        // The default horizon (hours) with shorter first windows, so the
        // test ends soon after the outage does.
        s.delivery.retry.base_ms = 1_000;
        s.delivery.retry.cap_ms = 10_000;
        s.delivery.breaker.open_seconds = 5;
    })
    .await
    .unwrap();
    // An admin watching: read all along, so the socket answers pings.
    let (mut admin, _) = Ws::connect(&app, &app.admin_token()).await;
    admin.subscribe("system_events", json!({})).await;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let watching = {
        let reports = reports.clone();
        tokio::spawn(async move {
            loop {
                // Quiet spells are long while breakers are open.
                let Some(frame) = admin.recv_within(Duration::from_secs(5)).await else {
                    continue;
                };
                if frame["event"] == "delivery_failed" {
                    reports.lock().unwrap().push(frame);
                }
            }
        })
    };

    let guests = guests_redeeming(&app, "outage", 50).await;
    let outage = Duration::from_secs(60);
    tokio::time::sleep(outage).await;
    let failed_calls = stand_in.requests.load(Ordering::SeqCst);
    stand_in.down.store(false, Ordering::SeqCst);

    let mut emails = Vec::new();
    for (_, token) in &guests {
        let sent = eventually(
            "the email after the outage",
            Duration::from_secs(120),
            || async {
                let d = trace(&app, token, "email").await;
                (d["status"] == "sent").then_some(d)
            },
        )
        .await;
        emails.push(sent);
    }
    let per_delivery = stand_in.accepted_per_delivery();
    assert_eq!(per_delivery.len(), 50, "every delivery sent");
    assert!(
        per_delivery.values().all(|&n| n == 1),
        "once each: {per_delivery:?}"
    );
    // The breaker kept the outage from burning the retry budget: far fewer
    // calls than 50 deliveries × 12 attempts.
    assert!(
        failed_calls < 50 * 12,
        "{failed_calls} calls during the outage"
    );

    // Each failed attempt told the admins, with when it would try again.
    let failed_attempts: i64 = emails
        .iter()
        .map(|d| d["attempts"].as_i64().unwrap() - 1)
        .sum();
    let reports = eventually(
        "every failed attempt reported",
        Duration::from_secs(10),
        || async {
            let reports = reports.lock().unwrap().clone();
            (reports.len() as i64 >= failed_attempts).then_some(reports)
        },
    )
    .await;
    watching.abort();
    assert_eq!(reports.len() as i64, failed_attempts);
    for frame in &reports {
        assert!(frame["data"]["nextRetry"].is_i64(), "{frame}");
        assert_eq!(frame["data"]["channel"], "email");
    }
    // The trace tells the story: failed attempts, attempts that waited for
    // the breaker, and the send.
    let steps: Vec<String> = emails
        .iter()
        .flat_map(|d| d["trace"].as_array().unwrap().clone())
        .filter_map(|s| s["outcome"].as_str().map(str::to_owned))
        .collect();
    assert!(steps.iter().any(|o| o == "retrying"), "{steps:?}");
    assert!(steps.iter().any(|o| o == "postponed"), "{steps:?}");
    assert_eq!(steps.iter().filter(|o| *o == "sent").count(), 50);
    assert!(emails.iter().all(|d| d["provider"] == "sendgrid"));
}

/// SendGrid failing: SMTP takes the mail at once, SendGrid's breaker opens
/// and then closes again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_fails_over_and_its_breaker_recovers() {
    let (stand_in, server) = StandIn::start().await;
    stand_in.down.store(true, Ordering::SeqCst);
    let mut smtp = SmtpSink::start().await;
    let (uri, port) = (server.uri(), smtp.addr.port());
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        use_sendgrid_then_smtp(s, &uri, port);
        s.delivery.breaker.failures = 2;
        // Open long enough for the checks below to see it open, even on
        // a loaded machine.
        s.delivery.breaker.open_seconds = 5;
    })
    .await
    .unwrap();

    // Two failures go over to SMTP and open SendGrid's breaker.
    for i in 0..2 {
        let (guest, token) = guest_with_email(&app, &format!("failover-{i}"), json!({})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let d = sent(&app, &token).await;
        assert_eq!(d["provider"], "smtp");
        let steps = steps(&d);
        assert_eq!(steps[0], ("failover".into(), "sendgrid".into()), "{d}");
        smtp.next(Duration::from_secs(10)).await;
    }
    let ready: Value = app.get("/readyz", "").await.json().await.unwrap();
    assert_eq!(ready["checks"]["providers"]["sendgrid"], "open", "{ready}");
    assert_eq!(ready["checks"]["providers"]["smtp"], "closed");
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"herald_provider_breaker_state{provider="sendgrid"} 2"#),
        "{metrics}"
    );

    // While it is open SendGrid is not even asked.
    let calls = stand_in.requests.load(Ordering::SeqCst);
    let (guest, token) = guest_with_email(&app, "failover-open", json!({})).await;
    app.publish_ok(&redeemed(&guest)).await;
    let d = sent(&app, &token).await;
    assert_eq!(
        steps(&d)[0],
        ("breaker_open".into(), "sendgrid".into()),
        "{d}"
    );
    assert_eq!(stand_in.requests.load(Ordering::SeqCst), calls);
    smtp.next(Duration::from_secs(10)).await;

    // Back up: after open_seconds one probe goes to SendGrid and closes it.
    stand_in.down.store(false, Ordering::SeqCst);
    eventually(
        "SendGrid to take a probe",
        Duration::from_secs(30),
        || async {
            let (guest, token) =
                guest_with_email(&app, &format!("probe-{}", uuid::Uuid::new_v4()), json!({})).await;
            app.publish_ok(&redeemed(&guest)).await;
            let d = sent(&app, &token).await;
            (d["provider"] == "sendgrid").then_some(())
        },
    )
    .await;
    let ready: Value = app.get("/readyz", "").await.json().await.unwrap();
    assert_eq!(
        ready["checks"]["providers"]["sendgrid"], "closed",
        "{ready}"
    );
}

/// A refused sender is the provider's final word: no failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_does_not_fail_over() {
    let (stand_in, server) = StandIn::start().await;
    stand_in.down.store(true, Ordering::SeqCst);
    stand_in.refuse_permanently.store(true, Ordering::SeqCst);
    let mut smtp = SmtpSink::start().await;
    let (uri, port) = (server.uri(), smtp.addr.port());
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        use_sendgrid_then_smtp(s, &uri, port);
    })
    .await
    .unwrap();
    let (guest, token) = guest_with_email(&app, "refused", json!({})).await;
    app.publish_ok(&redeemed(&guest)).await;
    let d = eventually("the email to fail", Duration::from_secs(20), || async {
        let d = trace(&app, &token, "email").await;
        (d["status"] == "failed").then_some(d)
    })
    .await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["provider"], "sendgrid");
    assert!(steps(&d).iter().all(|(step, _)| step != "failover"), "{d}");
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            smtp.next(Duration::from_secs(1))
        )
        .await
        .is_err(),
        "SMTP got nothing"
    );
}

/// 5 a second, one at a time: the stand-in never sees more in a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_rate_limit_is_never_exceeded() {
    let (stand_in, server) = StandIn::start().await;
    let uri = server.uri();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        use_sendgrid(s, &uri);
        s.delivery.rate_limits.insert(
            "sendgrid".into(),
            herald_server::config::RateLimitSettings {
                per_second: 5.0,
                burst: 1,
            },
        );
    })
    .await
    .unwrap();
    let guests = guests_redeeming(&app, "limited", 20).await;
    eventually("every email", Duration::from_secs(30), || async {
        (stand_in.accepted().len() >= guests.len()).then_some(())
    })
    .await;
    // A token bucket lets `per_second` a second through, plus its burst:
    // the stand-in, which sees arrivals a little jittered, never sees more.
    let times: Vec<Instant> = stand_in.accepted().into_iter().map(|(_, t)| t).collect();
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .filter(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            within <= 5 + 1,
            "{within} sends within a second of send {i}"
        );
    }
    // And over the whole run, no faster than the rate.
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(200 * (times.len() as u64 - 2)),
        "{} sends in {span:?}",
        times.len()
    );
    // Waiting for the limit is not a failed attempt.
    for (_, token) in &guests {
        assert_eq!(trace(&app, token, "email").await["attempts"], 1);
    }
}

/// A points email past its category's `expire_after` ends `expired`, and a
/// re-drive gives it its time again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_delivery_ends_expired_and_a_redrive_restarts_its_time() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let fakes = Fakes::new(chrono::Utc::now());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |s| {
            s.delivery.expire_after.insert("points".into(), "1h".into());
        })
        .await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "late", json!({"locale": "en"})).await;
        fakes.email.script([Step::Transient { retry_after: None }]);
        app.publish_ok(&redeemed(&guest)).await;
        let id = delivery_id(&trace(&app, &token, "email").await);
        let dispatcher = &app.delivery.dispatcher;
        assert!(matches!(
            dispatcher.process(id).await.unwrap(),
            Outcome::Retrying { .. }
        ));
        fakes.clock().advance(chrono::Duration::minutes(61));
        let outcome = dispatcher.process(id).await.unwrap();
        let Outcome::Expired { reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            reason.contains("points") && reason.contains("1h"),
            "{reason}"
        );
        let d = trace(&app, &token, "email").await;
        assert_eq!(d["status"], "expired");
        assert!(fakes.email.sent().is_empty());
        assert_eq!(
            d["trace"].as_array().unwrap().last().unwrap()["outcome"],
            "expired"
        );

        let res = app
            .request(
                reqwest::Method::POST,
                &format!("/v1/admin/deliveries/{id}/retry"),
                &app.admin_token(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        assert!(matches!(
            dispatcher.process(id).await.unwrap(),
            Outcome::Sent { .. }
        ));
        assert_eq!(fakes.email.sent().len(), 1);
    }
}

/// A worker dies with a batch claimed and sends hanging: nothing is lost,
/// and nothing the provider accepted is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_sends_nothing_twice() {
    // On SQLite: a PostgreSQL connection opened by the dying runtime would
    // die with it, which a killed process's would not.
    {
        let fakes = Fakes::live();
        let Some(app) = spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |s| {
            s.delivery.concurrency = 4;
            s.delivery.lease_seconds = 2;
            s.delivery.sweep_interval_seconds = 1;
        })
        .await
        else {
            return;
        };
        fakes.email.script(std::iter::repeat_n(Step::Hang, 4));
        let guests = guests_redeeming(&app, "killed", 100).await;

        // The worker runs on a runtime of its own; shutting that down ends
        // every task it started at once, mid-send, as a kill would.
        let doomed = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        doomed.spawn(app.delivery.clone().run(stop.clone()));
        eventually("four sends hanging", Duration::from_secs(30), || async {
            (fakes.email.calls() >= 4).then_some(())
        })
        .await;
        doomed.shutdown_background();
        let claimed = app
            .store
            .delivery_backlog()
            .await
            .unwrap()
            .into_iter()
            .find(|(status, _)| status == "sending")
            .map_or(0, |(_, n)| n);
        assert!(claimed >= 4, "{claimed} claimed when the worker died");

        let workers = tokio::spawn(app.delivery.clone().run(stop.clone()));
        eventually("every email", Duration::from_secs(60), || async {
            (fakes.email.sent().len() >= guests.len()).then_some(())
        })
        .await;
        stop.cancel();
        workers.await.unwrap().unwrap();
        let mut keys: Vec<String> = fakes
            .email
            .sent()
            .into_iter()
            .map(|m| m.idempotency_key)
            .collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "a delivery was sent twice");
        assert_eq!(keys.len(), guests.len());
    }
}

/// Finished jobs leave the embedded queue: a year of traffic does not live
/// in `queue.db`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_purged_from_the_queue() {
    let fakes = Fakes::live();
    let app = spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |s| {
        s.delivery.workers_in_serve = true;
    })
    .await
    .unwrap();
    fakes.email.script([Step::Transient {
        retry_after: Some(Duration::ZERO),
    }]);
    let guests = guests_redeeming(&app, "purged", 23).await;
    eventually("every email", Duration::from_secs(30), || async {
        (fakes.email.sent().len() >= guests.len()).then_some(())
    })
    .await;
    // A job is marked done after its send is recorded, and a job still
    // running is neither queued nor purgeable: sweep until none is left.
    eventually(
        "finished jobs purged from queue.db",
        Duration::from_secs(10),
        || async {
            app.delivery.sweeper.sweep_once().await.unwrap();
            let queue = &app.delivery.queue;
            (queue.depth().await.unwrap() == 0 && queue.stored_jobs().await.unwrap() == 0)
                .then_some(())
        },
    )
    .await;
}

/// The provider and step of each line of a delivery's trace.
fn steps(d: &Value) -> Vec<(String, String)> {
    d["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or_default().to_owned(),
                s["provider"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn sent(app: &TestApp, token: &str) -> Value {
    eventually("the email to be sent", Duration::from_secs(20), || async {
        let d = trace(app, token, "email").await;
        (d["status"] == "sent").then_some(d)
    })
    .await
}
