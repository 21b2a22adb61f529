//! What operators observe of the suite as deployed: the four real processes export their spans
//! and metrics to a real OTLP receiver and serve a Prometheus scrape. One user action is one
//! trace through every service it touches, including work done later from an event, and no
//! span holds personal information.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use portal_platform::single_writer::SingleWriter;
use portal_proto::identity::v1::user::Role;
use portal_proto::identity::v1::{DeleteUserRequest, GetTenantRequest};
use portal_proto::transfer::v1::Decision;
use portal_proto::transfer::v1::Purpose;
use portal_testkit::eventually;
use portal_testkit::telemetry::{Collector, ReceivedSpan, sample, scrape};
use portal_tests::suite::{
    Service, Suite, SuiteOptions, callers, new_request_id, person, registration, transfer_request,
};

/// Spans leave a process within this, so the test does not wait the default 5 s per batch.
const EXPORT_DELAY_MS: &str = "200";

/// A request carrying W3C trace context of a caller outside the suite: (request, trace id,
/// the caller's span id).
fn traced<T>(mut request: tonic::Request<T>) -> (tonic::Request<T>, String, String) {
    let trace = uuid::Uuid::now_v7().simple().to_string();
    let span = uuid::Uuid::now_v7().simple().to_string()[16..].to_owned();
    let traceparent = format!("00-{trace}-{span}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    (request, trace, span)
}

/// The spans of one trace, once they satisfy `complete`.
async fn trace_of(
    collector: &Collector,
    trace: &str,
    what: &str,
    complete: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    eventually(Duration::from_secs(30), what, || {
        let spans: Vec<ReceivedSpan> = collector
            .spans()
            .into_iter()
            .filter(|span| span.trace_id() == trace)
            .collect();
        let done = complete(&spans).then_some(spans);
        async move { done }
    })
    .await
    .unwrap_or_else(|e| {
        let seen: Vec<(String, String)> = collector
            .spans()
            .into_iter()
            .filter(|span| span.trace_id() == trace)
            .map(|span| (span.service, span.span.name))
            .collect();
        panic!("{e}; the trace holds {seen:?}")
    })
}

fn has(spans: &[ReceivedSpan], service: &str, name: &str) -> bool {
    spans
        .iter()
        .any(|span| span.service == service && span.span.name.ends_with(name))
}

/// Every span's parent is the caller's span or another span of the trace: one tree, nothing
/// dangling from a trace that was never exported.
fn assert_one_tree(spans: &[ReceivedSpan], caller_span: &str) {
    let ids: HashSet<String> = spans.iter().map(ReceivedSpan::span_id).collect();
    for span in spans {
        let parent = span.parent_span_id();
        assert!(
            parent == caller_span || ids.contains(&parent),
            "{} of {} hangs off {parent}, outside the trace",
            span.span.name,
            span.service
        );
    }
}

/// `service`'s metrics, as Prometheus scrapes them.
async fn metrics_of(suite: &Suite, service: Service) -> String {
    scrape(suite.metrics_addr(service)).await.unwrap()
}

fn services(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|span| span.service.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_a_transfer_and_a_deletion_are_each_one_trace_across_the_services_without_pi()
 {
    let collector = Collector::start().await.unwrap();
    let suite = Suite::start_with(
        SuiteOptions::default()
            .env("PORTAL_TELEMETRY__OTLP_ENDPOINT", collector.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
    )
    .await
    .unwrap();
    suite.publish_terms(1).await.unwrap();
    let tenant = suite
        .create_tenant("Example Corporation", "PSC-2026-000042")
        .await
        .unwrap();
    let admin = suite.first_admin(&tenant, 1).await.unwrap();
    let group = suite.register_group().await.unwrap();

    // 1. The admin registers a colleague: identity, consent (the attested consent), and
    //    approval and transfer applying identity's REGISTERED event later.
    let colleague = person(2, &[Role::Member]);
    let request = registration(&tenant, colleague.clone(), &admin.user.name);
    let (request, trace, caller) = traced(admin.request(request));
    let registered = suite
        .identity()
        .register_user(request)
        .await
        .unwrap()
        .into_inner();
    let subject = registered.user.clone().unwrap().name;
    let spans = trace_of(&collector, &trace, "the registration's trace", |spans| {
        has(spans, "identity-service", "IdentityService/RegisterUser")
            && has(spans, "consent-service", "ConsentService/RecordConsent")
            && has(spans, "approval-service", "event.apply")
            && has(spans, "transfer-service", "event.apply")
    })
    .await;
    assert_one_tree(&spans, &caller);

    // 2. A transfer of the colleague's PI to the affiliate abroad: transfer and consent.
    let request = transfer_request(
        &subject,
        &group.operator,
        &group.affiliate,
        Purpose::PortalService,
    );
    let (request, trace, caller) = traced(callers::portal_backend(request));
    let record = suite
        .transfer()
        .authorize_transfer(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.decision(), Decision::Allowed);
    assert_eq!(record.trace_id, trace, "the record names the trace");
    let spans = trace_of(&collector, &trace, "the transfer's trace", |spans| {
        has(
            spans,
            "transfer-service",
            "AffiliateTransferService/AuthorizeTransfer",
        ) && has(spans, "consent-service", "ConsentService/CheckConsent")
    })
    .await;
    assert_one_tree(&spans, &caller);
    assert_eq!(
        services(&spans),
        BTreeSet::from(["consent-service", "transfer-service"])
    );

    // 3. The colleague deletes their registration: identity, consent withdrawn, and approval
    //    and transfer acting on the DELETED event.
    let signed_in = suite
        .activate_and_sign_in(&registered)
        .await
        .map(|s| s.token)
        .unwrap();
    let request = DeleteUserRequest {
        name: subject.clone(),
        etag: String::new(),
        request_id: new_request_id(),
    };
    let (request, trace, caller) = traced(portal_testkit::keys::authorized(request, &signed_in));
    suite.identity().delete_user(request).await.unwrap();
    let spans = trace_of(&collector, &trace, "the deletion's trace", |spans| {
        has(spans, "identity-service", "IdentityService/DeleteUser")
            && has(spans, "consent-service", "ConsentService/WithdrawConsent")
            && has(spans, "approval-service", "event.apply")
            && has(spans, "transfer-service", "event.apply")
    })
    .await;
    assert_one_tree(&spans, &caller);

    // No span of any trace, from any process, holds the colleague's PI.
    let everything = format!("{:?}", collector.spans());
    for pi in [
        colleague.display_name.as_str(),
        colleague.email.as_str(),
        colleague.phone_number.as_str(),
    ] {
        assert!(!everything.contains(pi), "a span holds PI");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_its_metrics_to_prometheus_and_exports_them_over_otlp() {
    let collector = Collector::start().await.unwrap();
    let options = SuiteOptions::default()
        .env("PORTAL_TELEMETRY__OTLP_ENDPOINT", collector.endpoint())
        .env("PORTAL_TELEMETRY__METRICS_EXPORT_INTERVAL_MS", "500");
    let mut suite = Suite::start_with(options).await.unwrap();
    suite.publish_terms(1).await.unwrap();
    let tenant = suite
        .create_tenant("Example Corporation", "PSC-2026-000043")
        .await
        .unwrap();
    let admin = suite.first_admin(&tenant, 1).await.unwrap();
    let missing = GetTenantRequest {
        name: "tenants/0190f7a0-0000-7000-8000-000000000000".to_owned(),
    };
    let refused = suite
        .identity()
        .get_tenant(callers::operator(missing))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let group = suite.register_group().await.unwrap();
    let request = transfer_request(
        &admin.user.name,
        &group.operator,
        &group.affiliate,
        Purpose::PortalService,
    );
    suite.authorize(request).await.unwrap();
    suite.checkpoint(1).await.unwrap();

    // A call whose deadline passes while the database holds it up (the test locks the table
    // it reads), and a call to a path no service has, made up by the caller (the label must
    // not carry what the caller wrote).
    let superuser = suite.db().admin_pool().await.unwrap();
    let mut blocker = superuser.begin().await.unwrap();
    sqlx::query("LOCK TABLE identity.tenants IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut slow = callers::operator(GetTenantRequest {
        name: tenant.name.clone(),
    });
    slow.set_timeout(Duration::from_millis(300));
    let late = suite.identity().get_tenant(slow).await.unwrap_err();
    assert_eq!(
        late.code(),
        tonic::Code::Cancelled,
        "tonic's answer: {late:?}"
    );
    // Held until the server has given up on the call too, so it cannot finish it late.
    let get_tenant = "/portal.identity.v1.IdentityService/GetTenant";
    let late = [("method", get_tenant), ("code", "DEADLINE_EXCEEDED")];
    eventually(Duration::from_secs(10), "the late call", || async {
        let identity = metrics_of(&suite, Service::Identity).await;
        (sample(&identity, "portal_rpc_requests_total", &late) == Some(1.0)).then_some(())
    })
    .await
    .unwrap();
    blocker.rollback().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(suite.channel(Service::Identity));
    grpc.ready().await.unwrap();
    let made_up = http::uri::PathAndQuery::from_static("/attacker/person1@example.com");
    let refused = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            made_up,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Calls by method and status code, with their latency.
    let identity = metrics_of(&suite, Service::Identity).await;
    assert_eq!(
        sample(
            &identity,
            "portal_rpc_requests_total",
            &[("method", "unknown"), ("code", "UNAUTHENTICATED")]
        ),
        Some(1.0)
    );
    assert!(
        !identity.contains("example.com"),
        "a caller's path in a label"
    );
    let register = [
        ("service", "identity"),
        ("method", "/portal.identity.v1.IdentityService/RegisterUser"),
        ("code", "OK"),
    ];
    assert_eq!(
        sample(&identity, "portal_rpc_requests_total", &register),
        Some(1.0)
    );
    assert_eq!(
        sample(&identity, "portal_rpc_duration_seconds_count", &register),
        Some(1.0)
    );
    let inf_bucket = [register.as_slice(), &[("le", "+Inf")]].concat();
    assert_eq!(
        sample(&identity, "portal_rpc_duration_seconds_bucket", &inf_bucket),
        Some(1.0)
    );
    let not_found = [
        ("method", "/portal.identity.v1.IdentityService/GetTenant"),
        ("code", "NOT_FOUND"),
    ];
    assert_eq!(
        sample(&identity, "portal_rpc_requests_total", &not_found),
        Some(1.0)
    );
    // The database pool.
    assert_eq!(
        sample(
            &identity,
            "portal_db_pool_max_connections",
            &[("pool", "identity")]
        ),
        Some(10.0)
    );
    assert!(
        sample(
            &identity,
            "portal_db_pool_connections",
            &[("pool", "identity"), ("state", "idle")]
        )
        .is_some()
    );
    // Consent answered the transfer's questions.
    let consent = metrics_of(&suite, Service::Consent).await;
    let checks = [
        ("method", "/portal.consent.v1.ConsentService/CheckConsent"),
        ("code", "OK"),
    ];
    assert!(sample(&consent, "portal_rpc_requests_total", &checks).is_some_and(|n| n >= 1.0));

    // Approval and transfer consume identity's user feed: connected, and how late.
    for (service, consumer) in [
        (Service::Approval, "approval"),
        (Service::Transfer, "transfer"),
    ] {
        let feed = [("consumer", consumer), ("feed", "identity")];
        let exposition = eventually(Duration::from_secs(20), "the feed's lag", || async {
            let exposition = metrics_of(&suite, service).await;
            sample(&exposition, "portal_event_feed_lag_seconds", &feed).map(|_| exposition)
        })
        .await
        .unwrap();
        assert_eq!(
            sample(&exposition, "portal_event_feed_connected", &feed),
            Some(1.0)
        );
        let lag = sample(&exposition, "portal_event_feed_lag_seconds", &feed).unwrap();
        assert!((0.0..20.0).contains(&lag), "lag {lag}");
    }

    // The checkpoint lag, measured by every transfer replica from the database: once the
    // transfer is covered nothing waits; while no replica can sign (the test holds the
    // checkpointer's lock), a new record waits, and for longer and longer.
    let lag = |exposition: &str| {
        sample(exposition, "portal_transfer_checkpoint_lag_records", &[]).zip(sample(
            exposition,
            "portal_transfer_checkpoint_wait_seconds",
            &[],
        ))
    };
    eventually(Duration::from_secs(20), "no checkpoint lag", || async {
        (lag(&metrics_of(&suite, Service::Transfer).await) == Some((0.0, 0.0))).then_some(())
    })
    .await
    .unwrap();
    suite.kill(Service::Transfer).unwrap();
    let (release, released) = tokio::sync::watch::channel(false);
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let mut held_tx = Some(held_tx);
        let mut released = released;
        let until_released = async move {
            let _ = released.wait_for(|r| *r).await;
        };
        SingleWriter::new("transfer.checkpointer", Duration::from_millis(50))
            .run(&superuser, until_released, |_conn| {
                if let Some(held) = held_tx.take() {
                    let _ = held.send(());
                }
                Box::pin(std::future::pending())
            })
            .await;
    });
    tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the test takes the checkpointer's lock")
        .unwrap();
    suite.restart(Service::Transfer).await.unwrap();
    let request = transfer_request(
        &admin.user.name,
        &group.operator,
        &group.affiliate,
        Purpose::PortalService,
    );
    suite.authorize(request).await.unwrap();
    eventually(Duration::from_secs(20), "a record waiting", || async {
        lag(&metrics_of(&suite, Service::Transfer).await)
            .filter(|(waiting, age)| *waiting == 1.0 && *age > 0.0)
    })
    .await
    .unwrap();
    release.send_replace(true);
    holder.await.unwrap();
    suite.checkpoint(2).await.unwrap();
    eventually(Duration::from_secs(20), "the lag gone", || async {
        (lag(&metrics_of(&suite, Service::Transfer).await) == Some((0.0, 0.0))).then_some(())
    })
    .await
    .unwrap();

    // The same measurements arrive over OTLP, from each process under its own name.
    eventually(Duration::from_secs(20), "metrics over OTLP", || {
        let received = collector.metrics();
        let from = |service: &str, name: &str| {
            received
                .iter()
                .any(|m| m.service == service && m.metric.name == name)
        };
        let all = from("identity-service", "portal.rpc.requests")
            && from("consent-service", "portal.rpc.duration")
            && from("approval-service", "portal.event_feed.lag")
            && from("transfer-service", "portal.transfer.checkpoint.lag_records")
            && Service::ALL.iter().all(|s| {
                from(
                    &format!("{}-service", s.name()),
                    "portal.db.pool.connections",
                )
            });
        async move { all.then_some(()) }
    })
    .await
    .unwrap();
}
