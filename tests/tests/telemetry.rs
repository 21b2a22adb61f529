//! One user action is one trace: a service exports its spans over OTLP when an endpoint is
//! configured, continues the caller's W3C trace context, and outgoing calls made through the
//! platform's client carry the current context. (Its own test binary: telemetry is
//! process-wide.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use portal_platform::config::{LogFormat, TelemetrySettings};
use portal_platform::{client, telemetry};
use portal_proto::identity::v1::GetTenantRequest;
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_testkit::telemetry::Collector;
use portal_testkit::{TestDb, TestService, eventually};
use portal_tests::all_schemas;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_exported_over_otlp_within_the_callers_trace() {
    let collector = Collector::start().await.unwrap();
    let settings = TelemetrySettings {
        log_format: LogFormat::Human,
        log_filter: "info".to_owned(),
        service_namespace: "portal".to_owned(),
        otlp_endpoint: Some(collector.endpoint().to_owned()),
        metrics_listen: None,
        metrics_export_interval_ms: 30_000,
    };
    let telemetry = telemetry::init("identity-service", &settings).unwrap();
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let service = TestService::start(&identity_service::SERVICE, db.url())
        .await
        .unwrap();

    // 1. A caller outside the suite sends W3C trace context by hand.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(GetTenantRequest {
        name: "tenants/0190f7a0-0000-7000-8000-000000000000".to_owned(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let mut identity = IdentityServiceClient::new(service.channel().await.unwrap());
    let _ = identity.get_tenant(request).await;

    // 2. A service calls another through the platform's client, inside its own span.
    let outgoing = client::Outgoing::new(None, Duration::from_secs(5), Default::default())
        .channel(&service.uri(), client::OnBehalfOf::Service)
        .unwrap();
    let work = tracing::info_span!("work caused by an event");
    let work_trace = work.context().span().span_context().trace_id().to_string();
    async {
        let mut identity = IdentityServiceClient::new(outgoing);
        let request = GetTenantRequest {
            name: "tenants/0190f7a0-0000-7000-8000-000000000001".to_owned(),
        };
        let _ = identity.get_tenant(request).await;
    }
    .instrument(work)
    .await;

    // Dropping the telemetry flushes what is buffered; it blocks, so off the async threads.
    tokio::task::spawn_blocking(move || drop(telemetry))
        .await
        .unwrap();

    let server_spans = eventually(Duration::from_secs(10), "both server spans", || {
        let seen = collector.spans();
        let server_span_in = |trace: &str| {
            seen.iter()
                .find(|s| s.trace_id() == trace && s.span.name.ends_with("GetTenant"))
                .map(|s| s.span.clone())
        };
        let found = server_span_in(caller_trace).zip(server_span_in(&work_trace));
        async move { found }
    })
    .await
    .unwrap();

    let (from_caller, from_service) = server_spans;
    assert_eq!(hex(&from_caller.parent_span_id), caller_span);
    assert!(!from_service.parent_span_id.is_empty());
    for span in [from_caller, from_service] {
        let text = format!("{:?}", span.attributes);
        assert!(
            !text.contains("tenants/"),
            "request contents leaked: {text}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
