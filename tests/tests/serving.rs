//! What every service does before any domain logic: serve health and reflection, say
//! NOT_SERVING and fail calls UNAVAILABLE while its database is lost, recover by itself, and
//! bound what it accepts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::{Duration, Instant};

use portal_platform::ServiceDef;
use portal_testkit::{TcpProxy, TestDb, TestService};
use portal_tests::{ALL_SERVICES, all_schemas};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::{v1, v1alpha};
use tonic_types::StatusExt;

/// A method of each service, called with an empty request through a plain gRPC client.
fn some_method(def: &ServiceDef) -> String {
    let method = match def.name {
        "identity" => "GetTenant",
        "consent" => "GetConsentState",
        "approval" => "GetApprovalRequest",
        _ => "GetEntity",
    };
    format!("/{}/{method}", def.grpc_service)
}

async fn raw_call<M: prost::Message + Default + 'static>(
    channel: Channel,
    path: &str,
    request: M,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<M, ()>::default();
    let path = http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    let mut request = tonic::Request::new(request);
    let bearer = format!("Bearer {}", portal_testkit::keys::operator_token());
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    grpc.unary(request, path, codec).await.map(|_| ())
}

async fn services_listed_by_v1(channel: Channel) -> Vec<String> {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

async fn services_listed_by_v1alpha(channel: Channel) -> Vec<String> {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    match responses.next().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn each_service_serves_health_and_lists_itself_over_both_reflection_versions() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    for def in ALL_SERVICES {
        let service = TestService::start(def, db.url()).await.unwrap();
        assert_eq!(service.health().await.unwrap(), ServingStatus::Serving);
        for listed in [
            services_listed_by_v1(service.channel().await.unwrap()).await,
            services_listed_by_v1alpha(service.channel().await.unwrap()).await,
        ] {
            assert!(listed.contains(&def.grpc_service.to_owned()), "{listed:?}");
            assert!(
                listed.contains(&"grpc.health.v1.Health".to_owned()),
                "{listed:?}"
            );
            assert!(
                listed
                    .iter()
                    .all(|name| !name.starts_with("portal.") || name == def.grpc_service),
                "{} lists another service's contract: {listed:?}",
                def.name
            );
        }
        service.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_lost_database_turns_health_not_serving_within_five_seconds_and_recovers_without_restart()
{
    let db = TestDb::new(&all_schemas()).await.unwrap();
    for def in ALL_SERVICES {
        let (proxy, url) = TcpProxy::for_url(db.url()).await.unwrap();
        let service = TestService::start(def, &url).await.unwrap();

        proxy.cut();
        let cut_at = Instant::now();
        service.wait_for(ServingStatus::NotServing).await.unwrap();
        assert!(
            cut_at.elapsed() < Duration::from_secs(5),
            "{} took {:?} to notice",
            def.name,
            cut_at.elapsed()
        );
        let status = raw_call(service.channel().await.unwrap(), &some_method(def), ())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}: {status:?}", def.name);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "DATABASE_UNAVAILABLE");
        assert_eq!(info.domain, def.error_domain);
        // Health itself keeps answering, so orchestrators can see the state.
        assert_eq!(service.health().await.unwrap(), ServingStatus::NotServing);

        proxy.restore();
        service.wait_for(ServingStatus::Serving).await.unwrap();
        let status = raw_call(service.channel().await.unwrap(), &some_method(def), ())
            .await
            .err();
        assert_ne!(
            status.map(|s| s.code()),
            Some(Code::Unavailable),
            "{}",
            def.name
        );
        service.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_service_whose_database_is_down_at_start_up_serves_once_it_appears() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let (proxy, url) = TcpProxy::for_url(db.url()).await.unwrap();
    proxy.cut();
    let def = ALL_SERVICES[0];
    let mut start = tokio::spawn({
        let url = url.clone();
        async move { TestService::start(def, &url).await }
    });
    // Start-up does not finish (it waits for SERVING) while the database is away.
    let early = tokio::time::timeout(Duration::from_millis(1500), &mut start).await;
    assert!(
        early.is_err(),
        "the service said SERVING without a database"
    );
    proxy.restore();
    let service = start.await.unwrap().unwrap();
    assert_eq!(service.health().await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn requests_larger_than_the_configured_limit_are_refused() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    let def = ALL_SERVICES[0];
    let settings = [("PORTAL_SERVER__MAX_MESSAGE_BYTES", "2048")];
    let service = TestService::start_with(def, db.url(), &settings)
        .await
        .unwrap();
    // Encoded as google.protobuf.BytesValue; the size is checked before any decoding.
    let oversized: Vec<u8> = vec![0; 4096];
    let status = raw_call(
        service.channel().await.unwrap(),
        &some_method(def),
        oversized,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn stopping_a_service_drains_and_ends_cleanly() {
    let db = TestDb::new(&all_schemas()).await.unwrap();
    for def in ALL_SERVICES {
        let service = TestService::start(def, db.url()).await.unwrap();
        let channel = service.channel().await.unwrap();
        service.stop().await.unwrap();
        let after = raw_call(channel, &some_method(def), ()).await.unwrap_err();
        assert_eq!(after.code(), Code::Unavailable, "{}: {after:?}", def.name);
    }
}
