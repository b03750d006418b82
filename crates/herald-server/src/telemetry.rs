//! Logs and traces: how one event is followed from ingest to the provider.
//!
//! Logs: `RUST_LOG` if set, else `log.filter`; pretty for people, JSON for
//! collectors. A JSON line carries the fields of every span it was written
//! in, so the ids below ride on each line without being repeated at each
//! call site:
//!
//! | span | fields |
//! |---|---|
//! | `http` (every request) | `request_id` (its `X-Request-Id`, or one made up), method, path |
//! | `publish` (the handler) | `principal`, `role` |
//! | `ingest` | `event_id`, `event` (one event; a batch logs one line per event) |
//! | `delivery_attempt` | `delivery_id`, `event_id`, `channel`, `attempt`, `provider`, `outcome` |
//! | `provider_send` | `provider`, `outcome` |
//!
//! Addresses are masked where they are logged (`herald_channels::mask`);
//! secrets are never fields.
//!
//! Traces: with `[telemetry] otlp_endpoint` set, the same spans (and `route`,
//! `persist`, `enqueue`, `render`) go to an
//! OpenTelemetry collector over OTLP/HTTP (protobuf), batched on the SDK's
//! own thread. The trace of a publish continues a caller's `traceparent`,
//! and crosses the queue: the ingest span's traceparent is stored with the
//! event, and each delivery attempt's span is its child (and links the
//! worker's batch). With the endpoint empty there is no exporter and no
//! OpenTelemetry layer: a span costs what it cost before.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::{Dispatch, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{ConfigError, LogFormat, LogSettings, Settings, TelemetrySettings};

/// The header a request id travels in, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
const MAX_REQUEST_ID: usize = 128;

/// Installs the global subscriber, logs only. Safe to call more than once
/// (later calls do nothing), so tests can share a process.
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// For commands whose standard output is their answer (`herald
/// deliveries`): warnings and errors only (unless `RUST_LOG` says
/// otherwise), on standard error.
pub fn init_quiet() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the global subscriber for `herald serve` and `herald worker`:
/// logs as [`init`], and traces when `[telemetry]` asks for them. Keep the
/// answer until the process ends: dropping it flushes the traces.
pub fn start(settings: &Settings) -> Result<Telemetry, ConfigError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log.filter));
    let (dispatch, telemetry) =
        subscriber(&settings.log, filter, &settings.telemetry, std::io::stdout)?;
    let _ = dispatch.try_init();
    Ok(telemetry)
}

/// A subscriber as `settings` describe it, writing log lines to `writer`
/// and filtering them with `filter`; not installed. Tests install it for
/// their own threads, to read what one app logs.
pub fn subscriber<W>(
    log: &LogSettings,
    filter: EnvFilter,
    telemetry: &TelemetrySettings,
    writer: W,
) -> Result<(Dispatch, Telemetry), ConfigError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    if !telemetry.enabled() {
        // Off: the subscriber logs had before, and nothing more.
        return Ok((Dispatch::new(registry), Telemetry::default()));
    }
    let provider = tracer(telemetry)?;
    // Herald's own spans (and their events); a dependency's spans would
    // start traces of their own. Independent of the log filter, so
    // `RUST_LOG=warn` does not empty the traces.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("herald"))
        .with_threads(false)
        // Herald's spans are its only OpenTelemetry instrumentation:
        // no other library reads the thread's current OTel context, so
        // entering a span need not attach one.
        .with_context_activation(false)
        .with_filter(
            Targets::new()
                .with_default(LevelFilter::OFF)
                .with_target("herald", LevelFilter::INFO),
        );
    Ok((
        Dispatch::new(registry.with(otel)),
        Telemetry {
            provider: Some(Arc::new(provider)),
        },
    ))
}

/// The OTLP/HTTP tracer provider of `[telemetry]`.
fn tracer(t: &TelemetrySettings) -> Result<SdkTracerProvider, ConfigError> {
    // The exporter's client is reqwest with rustls; Herald's crypto
    // provider must be in place before it is built.
    herald_channels::http::install_crypto();
    let endpoint = format!("{}/v1/traces", t.otlp_endpoint.trim().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_millis(t.export_timeout_ms))
        .build()
        .map_err(|e| ConfigError::new("telemetry.otlp_endpoint", e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(t.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The trace exporter of a subscriber, if `[telemetry]` made one. Dropping
/// the last clone flushes and stops it.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    provider: Option<Arc<SdkTracerProvider>>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now. Blocks: call it off the async
    /// threads (`spawn_blocking`) or at exit.
    pub fn flush(&self) -> Result<(), String> {
        match &self.provider {
            Some(p) => p.force_flush().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Ok(p) = Arc::try_unwrap(p)
            && let Err(e) = p.shutdown()
        {
            eprintln!("herald: flushing traces: {e}");
        }
    }
}

/// Gives every request a request id: the caller's `X-Request-Id` when it
/// is a sane token (1 to 128 of `A-Z a-z 0-9 - _ . : = + / @`), else a new
/// UUID. The request carries it on (the `http` span reads it) and the
/// response echoes it.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
        _ => HeaderValue::try_from(uuid::Uuid::now_v7().to_string())
            .expect("a UUID is a valid header value"),
    };
    req.headers_mut().insert(REQUEST_ID, id.clone());
    let mut res = next.run(req).await;
    res.headers_mut().insert(REQUEST_ID, id);
    res
}

fn sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:=+/@".contains(b))
}

/// The span of one HTTP request: its request id, method and route (the
/// path only: query strings may carry tokens). With traces on, it continues
/// the caller's `traceparent`.
pub fn http_span<B>(req: &axum::http::Request<B>, traces: bool) -> Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "http",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        request_id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    if traces {
        if let Some(route) = req.extensions().get::<MatchedPath>() {
            span.record(
                "otel.name",
                tracing::field::display(format_args!("{} {}", req.method(), route.as_str())),
            );
        }
        if req.headers().contains_key("traceparent") {
            let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// An incoming request's headers, as a propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_callers_are_taken_only_when_sane() {
        assert!(sane_request_id(b"0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(sane_request_id(b"Root=1-5759e988-bd862e3fe1be46a994272793"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"quote\"d"));
        assert!(!sane_request_id("é".as_bytes()));
        assert!(!sane_request_id(&[b'a'; MAX_REQUEST_ID + 1]));
    }
}
