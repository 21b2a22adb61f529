//! Metrics for every process, recorded once through OpenTelemetry and read two ways: pushed
//! over OTLP with the traces (when `telemetry.otlp_endpoint` is set) and scraped by Prometheus
//! from `GET /metrics` on a port of its own (when `telemetry.metrics_listen` is set).
//!
//! What is measured (Prometheus names; docs/operations.md says how to read them):
//! - `portal_rpc_requests_total{service,method,code}`: calls answered, by gRPC status code;
//! - `portal_rpc_duration_seconds{service,method,code}`: their latency, as a histogram;
//! - `portal_db_pool_connections{pool,state}` and `portal_db_pool_max_connections{pool}`;
//! - `portal_event_feed_lag_seconds{consumer,feed}`: how long after it was written the last
//!   event was applied, and `portal_event_feed_connected{consumer,feed}` (1 while the feed is
//!   open);
//! - `portal_transfer_checkpoint_lag_records` and `portal_transfer_checkpoint_wait_seconds`: how
//!   many transfer records no signed checkpoint covers yet, and how long the oldest has waited.
//!
//! Labels never carry request contents: a method name, a status code, a service or pool name.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use sqlx::PgPool;

use crate::config::TelemetrySettings;

/// Upper bounds (seconds) of the latency buckets: sub-millisecond reads to multi-second
/// password hashing and deadlines.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics pipeline, if anything reads it; flushes what is buffered when dropped.
#[derive(Debug)]
pub struct Metrics {
    provider: Option<SdkMeterProvider>,
    scrape: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(scrape) = self.scrape.take() {
            scrape.abort();
        }
        // Bounded so a dead collector cannot hold up shutdown.
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(3));
        }
    }
}

/// Installs the process-wide meter provider: an OTLP exporter when an endpoint is configured
/// and the Prometheus scrape when `metrics_listen` is. Must run inside the Tokio runtime, and
/// before the first measurement (instruments made earlier measure nothing). With neither,
/// measurements go to OpenTelemetry's no-op provider.
pub fn init(resource: Resource, settings: &TelemetrySettings) -> anyhow::Result<Metrics> {
    if settings.otlp_endpoint.is_none() && settings.metrics_listen.is_none() {
        return Ok(Metrics {
            provider: None,
            scrape: None,
        });
    }
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
            .with_interval(Duration::from_millis(
                settings.metrics_export_interval_ms.max(100),
            ))
            .build();
        builder = builder.with_reader(reader);
    }
    let mut scrape = None;
    if let Some(addr) = settings.metrics_listen {
        let reader = Scrape::default();
        builder = builder.with_reader(reader.clone());
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .with_context(|| format!("telemetry.metrics_listen: cannot listen on {addr}"))?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        scrape = Some(tokio::spawn(serve_scrape(listener, reader)));
    }
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(Metrics {
        provider: Some(provider),
        scrape,
    })
}

/// A manual reader that the scrape handler and the provider share (the provider owns its
/// readers; Prometheus asks whenever it likes).
#[derive(Debug, Clone, Default)]
struct Scrape(Arc<ManualReader>);

impl MetricReader for Scrape {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        // Prometheus counters and histograms are cumulative.
        self.0.temporality(kind)
    }
}

async fn serve_scrape(listener: tokio::net::TcpListener, reader: Scrape) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let reader = reader.clone();
            async move {
                let mut collected = ResourceMetrics::default();
                match reader.collect(&mut collected) {
                    Ok(()) => (
                        http::StatusCode::OK,
                        [(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                        prometheus_text(&collected),
                    ),
                    Err(e) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        format!("metrics unavailable: {e}\n"),
                    ),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics scrape stopped");
    }
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders collected metrics in the Prometheus text exposition format (version 0.0.4).
pub fn prometheus_text(metrics: &ResourceMetrics) -> String {
    let mut out = String::new();
    for metric in metrics.scope_metrics().flat_map(|scope| scope.metrics()) {
        let mut name = metric.name().replace(['.', '-', '/'], "_");
        if metric.unit() == "s" {
            name.push_str("_seconds");
        }
        let help = metric
            .description()
            .replace('\\', "\\\\")
            .replace('\n', " ");
        match metric.data() {
            AggregatedMetrics::F64(data) => render(&mut out, &name, &help, data),
            AggregatedMetrics::U64(data) => render(&mut out, &name, &help, data),
            AggregatedMetrics::I64(data) => render(&mut out, &name, &help, data),
        }
    }
    out
}

fn render<T: Copy + Into<Number>>(out: &mut String, name: &str, help: &str, data: &MetricData<T>) {
    match data {
        MetricData::Gauge(gauge) => {
            header(out, name, help, "gauge");
            for point in gauge.data_points() {
                sample(
                    out,
                    name,
                    "",
                    &labels(point.attributes(), None),
                    point.value(),
                );
            }
        }
        MetricData::Sum(sum) if sum.is_monotonic() => {
            let name = format!("{name}_total");
            header(out, &name, help, "counter");
            for point in sum.data_points() {
                sample(
                    out,
                    &name,
                    "",
                    &labels(point.attributes(), None),
                    point.value(),
                );
            }
        }
        MetricData::Sum(sum) => {
            header(out, name, help, "gauge");
            for point in sum.data_points() {
                sample(
                    out,
                    name,
                    "",
                    &labels(point.attributes(), None),
                    point.value(),
                );
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, name, help, "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0_u64;
                let bounds = point.bounds().map(Some).chain([None]);
                for (bound, count) in bounds.zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                    let labels = labels(point.attributes(), Some(&le));
                    sample(out, name, "_bucket", &labels, cumulative);
                }
                let labels = labels(point.attributes(), None);
                sample(out, name, "_sum", &labels, point.sum());
                sample(out, name, "_count", &labels, point.count());
            }
        }
        // Not used here: every histogram has explicit buckets.
        MetricData::ExponentialHistogram(_) => {}
    }
}

/// A sample value, printed as Prometheus expects.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Float(f64),
    Int(i128),
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}
impl From<u64> for Number {
    fn from(value: u64) -> Self {
        Self::Int(value.into())
    }
}
impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Self::Int(value.into())
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, value: impl Into<Number>) {
    let _ = match value.into() {
        Number::Float(v) if v.is_nan() => writeln!(out, "{name}{suffix}{labels} NaN"),
        Number::Float(v) if v.is_infinite() => {
            let sign = if v > 0.0 { "+" } else { "-" };
            writeln!(out, "{name}{suffix}{labels} {sign}Inf")
        }
        Number::Float(v) => writeln!(out, "{name}{suffix}{labels} {v}"),
        Number::Int(v) => writeln!(out, "{name}{suffix}{labels} {v}"),
    };
}

/// `{key="value",...}` (empty without labels), with `le` last for histogram buckets.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| {
            (
                kv.key.as_str().replace('.', "_"),
                kv.value.as_str().into_owned(),
            )
        })
        .collect();
    pairs.sort();
    if let Some(le) = le {
        pairs.push(("le".to_owned(), le.to_owned()));
    }
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{key}=\"{value}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// The instruments every service records to, made on first use from the global provider.
struct Instruments {
    requests: Counter<u64>,
    duration: Histogram<f64>,
    feed_lag: Gauge<f64>,
    feed_connected: Gauge<u64>,
    checkpoint_lag: Gauge<u64>,
    checkpoint_wait: Gauge<f64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        Instruments {
            requests: meter
                .u64_counter("portal.rpc.requests")
                .with_description("Calls answered, by service, method and gRPC status code.")
                .build(),
            duration: meter
                .f64_histogram("portal.rpc.duration")
                .with_unit("s")
                .with_description("Time from receiving a call to its final status.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
            feed_lag: meter
                .f64_gauge("portal.event_feed.lag")
                .with_unit("s")
                .with_description("How long after it was written the last event was applied.")
                .build(),
            feed_connected: meter
                .u64_gauge("portal.event_feed.connected")
                .with_description("1 while the consumer's event feed is open, 0 otherwise.")
                .build(),
            checkpoint_lag: meter
                .u64_gauge("portal.transfer.checkpoint.lag_records")
                .with_description("Transfer records not yet covered by a signed checkpoint.")
                .build(),
            checkpoint_wait: meter
                .f64_gauge("portal.transfer.checkpoint.wait")
                .with_unit("s")
                .with_description("How long the oldest record not under a checkpoint has waited.")
                .build(),
        }
    })
}

fn meter() -> Meter {
    opentelemetry::global::meter("portal")
}

/// Records one consumed event: how long after `committed` (its transaction's start) it was
/// applied.
pub fn event_applied(consumer: &str, feed: &str, committed: Option<SystemTime>) {
    let Some(committed) = committed else { return };
    let lag = SystemTime::now()
        .duration_since(committed)
        .unwrap_or_default();
    instruments()
        .feed_lag
        .record(lag.as_secs_f64(), &feed_labels(consumer, feed));
}

/// Records whether a consumer's feed is open.
pub fn event_feed_connected(consumer: &str, feed: &str, connected: bool) {
    instruments()
        .feed_connected
        .record(u64::from(connected), &feed_labels(consumer, feed));
}

fn feed_labels(consumer: &str, feed: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("consumer", consumer.to_owned()),
        KeyValue::new("feed", feed.to_owned()),
    ]
}

/// Records how far the newest signed checkpoint is behind the transfer log: records not under
/// it, and how long the oldest of them has waited.
pub fn checkpoint_lag(records: u64, waited: Duration) {
    let instruments = instruments();
    instruments.checkpoint_lag.record(records, &[]);
    instruments
        .checkpoint_wait
        .record(waited.as_secs_f64(), &[]);
}

/// The pools the connection gauges report, by name.
type Pools = Arc<Mutex<Vec<(&'static str, PgPool)>>>;

/// Reports `pool`'s connections as `portal_db_pool_*{pool=name}` from now on (a pool of the
/// same name registered earlier is replaced).
pub fn observe_pool(name: &'static str, pool: &PgPool) {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    let pools = POOLS.get_or_init(|| {
        let pools = Pools::default();
        let meter = meter();
        let observed = Arc::clone(&pools);
        // Observable instruments stay registered with the provider once built.
        let _ = meter
            .u64_observable_gauge("portal.db.pool.connections")
            .with_description("Database connections held by the pool, by state.")
            .with_callback(move |observer| {
                let Ok(pools) = observed.lock() else { return };
                for (name, pool) in pools.iter() {
                    let size = u64::from(pool.size());
                    let idle = u64::try_from(pool.num_idle()).unwrap_or(u64::MAX).min(size);
                    for (state, count) in [("idle", idle), ("in_use", size - idle)] {
                        observer.observe(
                            count,
                            &[KeyValue::new("pool", *name), KeyValue::new("state", state)],
                        );
                    }
                }
            })
            .build();
        let observed = Arc::clone(&pools);
        let _ = meter
            .u64_observable_gauge("portal.db.pool.max_connections")
            .with_description("The most connections the pool opens.")
            .with_callback(move |observer| {
                let Ok(pools) = observed.lock() else { return };
                for (name, pool) in pools.iter() {
                    let max = u64::from(pool.options().get_max_connections());
                    observer.observe(max, &[KeyValue::new("pool", *name)]);
                }
            })
            .build();
        pools
    });
    if let Ok(mut pools) = pools.lock() {
        pools.retain(|(known, _)| *known != name);
        pools.push((name, pool.clone()));
    }
}

/// A tower layer counting and timing every call a server answers, by method and status.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    service: &'static str,
    /// The paths the server serves: any other path is labelled `unknown`, so a caller cannot
    /// put text of its choosing (or an unbounded number of series) into the metrics.
    methods: Arc<HashSet<String>>,
    /// The server's own limit on a call (`server.request_timeout_ms`).
    timeout: Duration,
}

impl RpcMetricsLayer {
    /// For a server of `service` whose contract is `descriptor_set`, with health and reflection.
    pub fn new(
        service: &'static str,
        descriptor_set: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut methods: HashSet<String> = REFLECTION_METHODS
            .iter()
            .map(|path| (*path).to_owned())
            .collect();
        for set in [descriptor_set, tonic_health::pb::FILE_DESCRIPTOR_SET] {
            let set = <prost_types::FileDescriptorSet as prost::Message>::decode(set)
                .context("a service's descriptor set does not decode")?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        Ok(Self {
            service,
            methods: Arc::new(methods),
            timeout,
        })
    }
}

const REFLECTION_METHODS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    layer: RpcMetricsLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = if self.layer.methods.contains(path) {
            path.to_owned()
        } else {
            "unknown".to_owned()
        };
        let call = Call {
            service: self.layer.service,
            method,
            start: Instant::now(),
            caller_deadline: grpc_timeout(request.headers()),
            server_timeout: self.layer.timeout,
            answering: false,
            recorded: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move { Ok(call.observe(answer.await?)) })
    }
}

/// The caller's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`), if it sent a valid one.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// One call being answered; recorded exactly once, when its final status is known or, if it
/// never is, when the call is dropped.
#[derive(Debug)]
struct Call {
    service: &'static str,
    method: String,
    start: Instant,
    /// The caller's `grpc-timeout`: it bounds the whole call, streams included.
    caller_deadline: Option<Duration>,
    /// `server.request_timeout_ms`: tonic applies it only until the response headers are sent.
    server_timeout: Duration,
    /// The headers are sent and the body (a unary answer or a stream) is under way.
    answering: bool,
    recorded: bool,
}

impl Call {
    /// An error answered in the headers (trailers-only) is final now; otherwise the status
    /// comes in the trailers at the end of the body.
    fn observe(
        mut self,
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = grpc_status(response.headers()) {
            self.finish(code);
            return response;
        }
        self.answering = true;
        response.map(|body| tonic::body::Body::new(Observed { body, call: self }))
    }

    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let labels = [
            KeyValue::new("service", self.service),
            KeyValue::new("method", std::mem::take(&mut self.method)),
            KeyValue::new("code", code_name(code)),
        ];
        let instruments = instruments();
        instruments.requests.add(1, &labels);
        instruments
            .duration
            .record(self.start.elapsed().as_secs_f64(), &labels);
    }
}

/// The caller's clock and tonic's timer start a moment before this layer sees a call, so a call
/// ended by its deadline looks a few milliseconds short of it here.
const DEADLINE_SLACK: Duration = Duration::from_millis(25);

impl Drop for Call {
    /// Dropped unanswered: a deadline in force passed (tonic drops the call and answers it
    /// itself), or the caller went away (a watcher closing its stream, say).
    fn drop(&mut self) {
        let deadline = if self.answering {
            self.caller_deadline
        } else {
            Some(
                self.caller_deadline
                    .map_or(self.server_timeout, |asked| asked.min(self.server_timeout)),
            )
        };
        let passed = |deadline: Duration| self.start.elapsed() + DEADLINE_SLACK >= deadline;
        let code = if deadline.is_some_and(passed) {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Cancelled
        };
        self.finish(code);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

/// A response body that records its call when the trailers pass (or, through the call's own
/// drop, when the caller goes away first).
struct Observed {
    body: tonic::body::Body,
    call: Call,
}

impl http_body::Body for Observed {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or(tonic::Code::Unknown)),
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = finished {
            self.call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.call.recorded && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The status code as `google.rpc.Code` spells it (`NOT_FOUND`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_for_prometheus() {
        let attributes = [KeyValue::new("method", "a\"b\\c\nd")];
        assert_eq!(
            labels(attributes.iter(), Some("0.5")),
            r#"{method="a\"b\\c\nd",le="0.5"}"#
        );
        assert_eq!(labels([].iter(), None), "");
    }

    #[test]
    fn a_callers_grpc_timeout_is_read_in_every_unit_and_nonsense_is_ignored() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        for nonsense in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(timeout(nonsense), None, "{nonsense}");
        }
    }

    #[test]
    fn only_the_servers_own_methods_are_labelled_by_name() {
        let layer = RpcMetricsLayer::new(
            "health",
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(layer.methods.contains("/grpc.health.v1.Health/Check"));
        assert!(layer.methods.contains(REFLECTION_METHODS[0]));
        assert!(!layer.methods.contains("/attacker/alice@example.com"));
    }

    #[test]
    fn status_codes_are_named_as_google_rpc_does() {
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
