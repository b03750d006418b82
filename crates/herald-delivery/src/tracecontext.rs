//! A trace across the queue: the W3C `traceparent` of the publish is
//! stored with its event, and each delivery attempt's span continues it.
//!
//! Without the OpenTelemetry layer (traces off) a span has no trace
//! context: [`traceparent`] answers `None` and nothing is stored, and
//! [`continue_trace`] does nothing.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` of `span`, when it is part of a trace.
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    let sc = context.span().span_context().clone();
    sc.is_valid().then(|| format_traceparent(&sc))
}

fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Makes `span` (not yet entered) a child of the span `traceparent` names,
/// and links it to `follows` (the worker's batch) when that is traced. A
/// malformed `traceparent` is ignored.
pub fn continue_trace(span: &Span, traceparent: &str, follows: &Span) {
    let parent = TraceContextPropagator::new().extract(&One(traceparent));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let batch = follows.context().span().span_context().clone();
    if batch.is_valid() {
        span.add_link(batch);
    }
}

/// A carrier holding one `traceparent`.
struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn traceparents_read_back_as_written() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let text = format_traceparent(&sc);
        assert_eq!(
            text,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let back = TraceContextPropagator::new().extract(&One(&text));
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        let junk = TraceContextPropagator::new().extract(&One("00-nonsense"));
        assert!(!junk.span().span_context().is_valid());
    }

    #[test]
    fn without_the_layer_there_is_no_trace() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent(&span), None);
        // And continuing one is harmless.
        continue_trace(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            &Span::none(),
        );
    }
}
