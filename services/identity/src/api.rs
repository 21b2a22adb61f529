//! gRPC handlers of `portal.identity.v1.IdentityService`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use std::time::{Duration, SystemTime};

use portal_platform::auth::{self, Kind};
use portal_platform::events::{self, ResponseStream, StoredEvent};
use portal_platform::{ApiError, ServiceContext};
use portal_proto::identity::v1::identity_service_server::IdentityService;
use portal_proto::identity::v1::{UserEvent, WatchUserEventsRequest};
use sqlx::PgPool;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::{SERVICE, USER_EVENT_TYPE_PREFIX};

/// How often a caught-up WatchUserEvents stream looks for new events: the longest a committed
/// event waits before it is sent (while no older transaction is still running).
const FEED_POLL: Duration = Duration::from_millis(200);

/// Handlers; they gain clients as the methods are implemented.
#[derive(Debug, Clone)]
pub struct IdentityServiceApi {
    /// Connections as `identity_app`.
    pool: PgPool,
    /// Set when the server drains; ends watch streams.
    draining: watch::Receiver<bool>,
}

impl IdentityServiceApi {
    pub fn new(context: ServiceContext) -> Self {
        Self {
            pool: context.pool,
            draining: context.draining,
        }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityServiceApi {
    async fn watch_user_events(
        &self,
        request: Request<WatchUserEventsRequest>,
    ) -> Result<Response<ResponseStream<UserEvent>>, Status> {
        // The feed names every user of the deployment: services and staff only.
        auth::caller(&request)?
            .require_kind(&[Kind::Service, Kind::Operator, Kind::Auditor])
            .map_err(|e| e.in_domain(SERVICE.error_domain))?;
        let stream = events::watch(
            self.pool.clone(),
            SERVICE.schema.name,
            &request.get_ref().after,
            FEED_POLL,
            SERVICE.error_domain,
            self.draining.clone(),
            user_event,
        )?;
        Ok(Response::new(stream))
    }
}

/// The stored event as the feed delivers it: the payload written by
/// [`crate::record_user_event`], with the feed's fields filled from the outbox row. Events of
/// other kinds in identity's outbox are not user events and are left out.
fn user_event(stored: StoredEvent) -> Result<Option<UserEvent>, ApiError> {
    if !stored.event_type.starts_with(USER_EVENT_TYPE_PREFIX) {
        return Ok(None);
    }
    let mut event: UserEvent = stored.decode()?;
    event.cursor = stored.cursor.encode();
    event.sequence = stored.id;
    event.event_time = Some(SystemTime::from(stored.event_time).into());
    event.traceparent = stored.traceparent;
    event.tracestate = stored.tracestate;
    Ok(Some(event))
}
