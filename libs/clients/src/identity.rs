//! Calls to identity: tenants as identity knows them (approval, anti-phishing), and identity's
//! user event feed, which approval and transfer consume to act on deletions (Art. 5.3).

use portal_platform::ApiError;
use portal_platform::client::{OnBehalfOf, OutgoingChannel, dependency_failure};
use portal_platform::events::{Backoff, Consumer, Cursor, Effect, Received};
use portal_platform::names::tenant_name;
use portal_platform::server::ServiceContext;
use portal_proto::identity::v1::identity_service_client::IdentityServiceClient;
use portal_proto::identity::v1::{GetTenantRequest, Tenant, UserEvent, WatchUserEventsRequest};
use tokio_stream::{Stream, StreamExt};
use tonic::Code;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Identity {
    client: IdentityServiceClient<OutgoingChannel>,
}

impl Identity {
    pub fn new(context: &ServiceContext) -> anyhow::Result<Self> {
        let outgoing = &context.outgoing;
        let uri = outgoing.peer_uri(&context.settings, "identity")?;
        let channel = outgoing.channel(&uri, OnBehalfOf::Service)?;
        Ok(Self {
            client: IdentityServiceClient::new(channel),
        })
    }

    /// The tenant as identity's records describe it; `TENANT_NOT_FOUND` if it has none.
    pub async fn tenant(&self, id: Uuid) -> Result<Tenant, ApiError> {
        let name = tenant_name(id);
        let request = GetTenantRequest { name: name.clone() };
        match self.client.clone().get_tenant(request).await {
            Ok(tenant) => Ok(tenant.into_inner()),
            Err(status) if status.code() == Code::NotFound => {
                Err(ApiError::not_found("TENANT_NOT_FOUND", "no such tenant")
                    .resource("portal.identity.v1.Tenant", &name))
            }
            Err(status) => Err(dependency_failure("identity", &status)),
        }
    }

    /// Identity's user events after `after`, as the platform's consumer applies them.
    pub async fn user_events(
        &self,
        after: Option<Cursor>,
    ) -> Result<impl Stream<Item = Result<Received<UserEvent>, tonic::Status>> + use<>, tonic::Status>
    {
        let request = WatchUserEventsRequest {
            after: after.map(|cursor| cursor.encode()).unwrap_or_default(),
        };
        let events = self
            .client
            .clone()
            .watch_user_events(request)
            .await?
            .into_inner();
        Ok(events.map(|event| {
            let event = event?;
            let (cursor, traceparent, tracestate) = (
                event.cursor.clone(),
                event.traceparent.clone(),
                event.tracestate.clone(),
            );
            let committed = event
                .event_time
                .and_then(|time| std::time::SystemTime::try_from(time).ok());
            Received::parse(&cursor, &traceparent, &tracestate, event)
                .map(|received| received.committed_at(committed))
                .map_err(tonic::Status::from)
        }))
    }
}

impl Identity {
    /// Until `shutdown`: applies identity's user events to this service's `schema` with
    /// `effect`, each exactly once (the platform's consumer, cursor under source `identity`),
    /// reconnecting with backoff whenever identity or the database is lost.
    pub async fn consume_user_events<F>(
        &self,
        pool: sqlx::PgPool,
        schema: &'static str,
        effect: F,
        shutdown: impl std::future::Future<Output = ()>,
    ) where
        F: for<'c> Fn(&'c mut sqlx::PgConnection, &'c UserEvent) -> Effect<'c, ApiError>,
    {
        let consumer = Consumer::new(pool, schema, "identity");
        consumer
            .run(
                |after| {
                    let identity = self.clone();
                    async move { identity.user_events(after).await }
                },
                effect,
                Backoff::default(),
                shutdown,
            )
            .await;
    }
}
