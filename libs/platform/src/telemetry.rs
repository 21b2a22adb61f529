//! Tracing for every process: `tracing` output for people (human or JSON), OpenTelemetry spans
//! exported over OTLP when an endpoint is configured, and W3C trace context carried across
//! every gRPC hop (extracted here for incoming calls, injected by `client` for outgoing ones).
//! Metrics share the process's OpenTelemetry resource (`crate::metrics`).

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// Keeps the tracer and meter providers alive; flushes what is still buffered when dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    _metrics: crate::metrics::Metrics,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Bounded so a dead collector cannot hold up shutdown.
        let _ = self
            .provider
            .shutdown_with_timeout(std::time::Duration::from_secs(3));
    }
}

/// Installs the process-wide subscriber and meter provider (inside the Tokio runtime).
/// `service_name` becomes the OpenTelemetry `service.name`. Fails if a subscriber is already
/// installed, an exporter cannot be built or the metrics port cannot be bound.
pub fn init(service_name: &str, settings: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    let resource = resource(service_name, settings);
    let metrics = crate::metrics::init(resource.clone(), settings)?;
    let provider = tracer_provider(resource, settings)?;
    let tracer = provider.tracer("portal");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&settings.log_filter)?;
    let output = match settings.log_format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    tracing_subscriber::registry()
        // The filter limits what is printed only: spans below it must still exist, or trace
        // context would stop at this process.
        .with(output.with_filter(filter))
        // Installed even without an exporter, so trace context still flows through this
        // process from the caller to the services it calls.
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()?;
    if let Some(addr) = settings.metrics_listen {
        tracing::info!(%addr, "metrics scrape listening");
    }
    Ok(Telemetry {
        provider,
        _metrics: metrics,
    })
}

fn resource(service_name: &str, settings: &TelemetrySettings) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.namespace", settings.service_namespace.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

fn tracer_provider(
    resource: Resource,
    settings: &TelemetrySettings,
) -> anyhow::Result<SdkTracerProvider> {
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The span of one incoming call, a child of the caller's span when the call carries W3C trace
/// context. Only the method is recorded: request contents may hold personal information.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let method = request.uri().path();
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %method.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    // Without a usable parent the span simply starts a new trace.
    let _ = span.set_parent(parent);
    span
}

/// Writes the current span's W3C trace context into outgoing gRPC metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    inject(&context, metadata);
}

/// Writes `context` as W3C trace context into gRPC metadata.
pub fn inject(context: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(context, &mut MetadataInjector(metadata));
}

/// The current span's W3C `traceparent` and `tracestate` (empty when there is no trace), for
/// work that continues later, such as an event written to an outbox.
pub fn current_trace_context() -> (String, String) {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    (
        carrier.remove("traceparent").unwrap_or_default(),
        carrier.remove("tracestate").unwrap_or_default(),
    )
}

/// The W3C trace id (32 lower-case hex digits) of the current span's trace; empty if the
/// work is not traced. Records that must say which call caused them keep it.
pub fn current_trace_id() -> String {
    let (traceparent, _) = current_trace_context();
    traceparent
        .split('-')
        .nth(1)
        .filter(|id| id.len() == 32 && *id != "0".repeat(32))
        .unwrap_or_default()
        .to_owned()
}

/// Makes `span` a child of the trace a stored `traceparent`/`tracestate` names, so work done
/// later from an event joins the trace of the call that caused it.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    let carrier = std::collections::HashMap::from([
        ("traceparent".to_owned(), traceparent.to_owned()),
        ("tracestate".to_owned(), tracestate.to_owned()),
    ]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Without a usable parent the span simply starts a new trace.
    let _ = span.set_parent(parent);
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn trace_context_round_trips_through_metadata() {
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span_context);
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&context, &mut metadata);
        let header = metadata.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            header,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );

        let headers = metadata.into_headers();
        let extracted = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert_eq!(
            extracted.span().span_context().trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
    }
}
