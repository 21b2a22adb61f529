//! gRPC handlers of `portal.approval.v1.ApprovalService`: who may see and change which
//! request (users act within their tenant; a request is invisible, `NOT_FOUND`, to every other
//! tenant), the transitions under a row lock so racing decisions have one winner, and the
//! lists and feed of the two request screens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use portal_platform::auth::{self, Caller, Kind};
use portal_platform::events::{self, ResponseStream, StoredEvent};
use portal_platform::idempotency::{self, RequestKey};
use portal_platform::names::{self, tenant_name, user_ids};
use portal_platform::{ApiError, ServiceContext, paging};
use portal_proto::approval::v1::approval_request::Kind as RequestKind;
use portal_proto::approval::v1::approval_request_event::Type as EventType;
use portal_proto::approval::v1::approval_service_server::ApprovalService;
use portal_proto::approval::v1::{
    AcceptApprovalRequestRequest, ApprovalRequest, ApprovalRequestEvent,
    CreateApprovalRequestRequest, DeleteTenantConnectionRequest, GetApprovalRequestRequest,
    ListApprovalRequestHistoryRequest, ListApprovalRequestHistoryResponse,
    ListReceivedApprovalRequestsRequest, ListReceivedApprovalRequestsResponse,
    ListSentApprovalRequestsRequest, ListSentApprovalRequestsResponse,
    ListTenantConnectionsRequest, ListTenantConnectionsResponse, RejectApprovalRequestRequest,
    TenantConnection, WatchApprovalRequestsRequest, WithdrawApprovalRequestRequest,
};
use sqlx::PgPool;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, State, effective_state, request_name};
use crate::store::{self, NewRequest, RequestRow, Side};
use crate::view::{self, EVENT_TYPE_PREFIX, USER_DELETED_MARKER, event_for};
use crate::{SERVICE, workers};
use portal_clients::identity::Identity;

/// How often a caught-up WatchApprovalRequests stream looks for new events.
const FEED_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ApprovalServiceApi {
    /// Connections as `approval_app`.
    pool: PgPool,
    draining: watch::Receiver<bool>,
    identity: Identity,
    expiry: chrono::Duration,
}

impl ApprovalServiceApi {
    /// Also starts the expiry sweeper and the consumer of identity's user events.
    pub fn new(context: ServiceContext) -> anyhow::Result<Self> {
        let settings = &context.settings.approval;
        let identity = Identity::new(&context)?;
        workers::start(
            context.clone(),
            identity.clone(),
            Duration::from_millis(settings.sweep_interval_ms),
        );
        Ok(Self {
            expiry: chrono::Duration::seconds(
                i64::try_from(settings.request_expiry_secs).unwrap_or(i64::MAX / 1000),
            ),
            pool: context.pool,
            draining: context.draining,
            identity,
        })
    }

    /// The calling user, refused if identity has reported them deleted (Art. 5.3).
    async fn user(&self, caller: &Caller) -> Result<Party, ApiError> {
        if caller.kind != Kind::User {
            return Err(not_allowed());
        }
        let (tenant, user) = user_ids(&caller.subject)
            .ok_or_else(|| ApiError::unauthenticated("TOKEN_INVALID", "the token names no user"))?;
        if store::is_deleted_user(&self.pool, &caller.subject).await? {
            return Err(user_deleted());
        }
        Ok(Party {
            tenant,
            user,
            admin: caller.has_role("TENANT_ADMIN"),
            name: caller.subject.clone(),
        })
    }

    /// Who reads: a user (confined to their tenant) or staff (everything).
    async fn viewer(&self, caller: &Caller) -> Result<Viewer, ApiError> {
        match caller.kind {
            Kind::Operator | Kind::Auditor => Ok(Viewer::Staff),
            Kind::User => Ok(Viewer::User(self.user(caller).await?)),
            Kind::Service => Err(not_allowed()),
        }
    }

    /// The request, if `viewer` may see it (else NOT_FOUND, as if it did not exist).
    async fn visible_request(&self, viewer: &Viewer, id: Uuid) -> Result<RequestRow, ApiError> {
        let mut conn = self.pool.acquire().await?;
        store::request(&mut conn, id, false)
            .await?
            .filter(|row| viewer.sees(row.requester_tenant, row.target_tenant))
            .ok_or_else(|| request_not_found(id))
    }

    /// Accept, reject or withdraw `id`, once per request_id.
    async fn decide(
        &self,
        caller: &Caller,
        decision: Decision,
        message: &impl prost::Message,
        fields: DecisionFields<'_>,
    ) -> Result<ApprovalRequest, ApiError> {
        let party = self.user(caller).await?;
        let id = domain::request_id(fields.name, "name")?;
        domain::check_message(fields.reason, "reason")?;
        let key = RequestKey {
            caller: &caller.subject,
            method: decision.method(),
            request_id: fields.request_id,
        };
        let etag = fields.etag.to_owned();
        let reason = fields.reason.to_owned();
        idempotency::once(&self.pool, SERVICE.schema.name, key, message, |tx| {
            Box::pin(async move {
                let now = Utc::now();
                if decision == Decision::Accept {
                    // Accepting makes a connection of the pair: take the pair's lock before
                    // the row's, in the order CreateApprovalRequest takes them.
                    let pair = store::request(tx, id, false)
                        .await?
                        .filter(|row| row.involves(party.tenant))
                        .ok_or_else(|| request_not_found(id))?;
                    store::lock_pair(tx, pair.requester_tenant, pair.target_tenant).await?;
                }
                let row = store::request(tx, id, true)
                    .await?
                    .filter(|row| row.involves(party.tenant))
                    .ok_or_else(|| request_not_found(id))?;
                decision.allowed(&party, &row)?;
                let stored = row.stored_state();
                let current = effective_state(stored, row.expire_time, now);
                if !etag.is_empty() && etag != domain::etag(row.revision, current, stored) {
                    return Err(ApiError::aborted(
                        "ETAG_MISMATCH",
                        "the request changed since it was read; read it again",
                    ));
                }
                if current == State::Expired {
                    return Err(ApiError::failed_precondition(
                        "REQUEST_EXPIRED",
                        "the request expired before a decision",
                    )
                    .with_metadata("state", "STATE_EXPIRED"));
                }
                if stored != State::Pending {
                    return Err(ApiError::failed_precondition(
                        "REQUEST_NOT_PENDING",
                        "the request was already decided",
                    )
                    .with_metadata("state", current.to_proto().as_str_name()));
                }
                let connection = if decision == Decision::Accept {
                    let connection = Uuid::now_v7();
                    store::insert_connection(
                        tx,
                        connection,
                        row.requester_tenant,
                        row.target_tenant,
                        row.id,
                        now,
                    )
                    .await?;
                    Some(connection)
                } else {
                    None
                };
                let to = decision.state();
                let row = store::decide(tx, id, to, &party.name, &reason, connection, now).await?;
                view::emit(tx, event_for(to), &row, connection).await?;
                Ok(view::request(&row, now))
            })
        })
        .await
    }

    async fn list(
        &self,
        caller: &Caller,
        side: Side,
        page: ListPage<'_>,
    ) -> Result<(Vec<ApprovalRequest>, String), ApiError> {
        let viewer = self.viewer(caller).await?;
        let tenant = viewer.tenant_to_list(page.tenant)?;
        let states = domain::filter(page.filter)?;
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let size = paging::page_size(page.page_size)?;
        let fingerprint = format!("{side:?}|{tenant}|{}", page.filter);
        let after = decode_position(page.page_token, &fingerprint)?;
        let now = Utc::now();
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows =
            store::list_requests(&self.pool, side, tenant, &states, after, limit, now).await?;
        let next = next_token(&mut rows, size, &fingerprint, |r| (r.create_time, r.id));
        Ok((rows.iter().map(|r| view::request(r, now)).collect(), next))
    }
}

/// A user acting within their tenant.
#[derive(Debug, Clone)]
struct Party {
    tenant: Uuid,
    user: Uuid,
    admin: bool,
    name: String,
}

enum Viewer {
    Staff,
    User(Party),
}

impl Viewer {
    fn sees(&self, a: Uuid, b: Uuid) -> bool {
        match self {
            Self::Staff => true,
            Self::User(party) => party.tenant == a || party.tenant == b,
        }
    }

    /// The tenant a list is about: a user's own (empty or their own name; another tenant is
    /// NOT_FOUND); staff must name one.
    fn tenant_to_list(&self, given: &str) -> Result<Uuid, ApiError> {
        match self {
            Self::User(party) if given.is_empty() || given == tenant_name(party.tenant) => {
                Ok(party.tenant)
            }
            Self::User(_) => Err(ApiError::not_found("TENANT_NOT_FOUND", "no such tenant")
                .resource("portal.identity.v1.Tenant", given)),
            Self::Staff => names::tenant_id(given)
                .ok_or_else(|| domain::invalid("tenant", "required for staff: tenants/{tenant}")),
        }
    }

    /// Whether an event about a request between `a` and `b` belongs on this stream.
    fn follows(&self, only: Option<Uuid>, a: Uuid, b: Uuid) -> bool {
        self.sees(a, b) && only.is_none_or(|t| t == a || t == b)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Accept,
    Reject,
    Withdraw,
}

impl Decision {
    fn method(self) -> &'static str {
        match self {
            Self::Accept => "portal.approval.v1.ApprovalService/AcceptApprovalRequest",
            Self::Reject => "portal.approval.v1.ApprovalService/RejectApprovalRequest",
            Self::Withdraw => "portal.approval.v1.ApprovalService/WithdrawApprovalRequest",
        }
    }

    fn state(self) -> State {
        match self {
            Self::Accept => State::Accepted,
            Self::Reject => State::Rejected,
            Self::Withdraw => State::Withdrawn,
        }
    }

    /// Only the target tenant's admins decide; only the requester or an admin of the
    /// requester tenant withdraws.
    fn allowed(self, party: &Party, row: &RequestRow) -> Result<(), ApiError> {
        let allowed = match self {
            Self::Accept | Self::Reject => party.tenant == row.target_tenant && party.admin,
            Self::Withdraw => {
                party.tenant == row.requester_tenant
                    && (party.user == row.requester_user || party.admin)
            }
        };
        if allowed { Ok(()) } else { Err(not_allowed()) }
    }
}

struct DecisionFields<'a> {
    name: &'a str,
    etag: &'a str,
    request_id: &'a str,
    reason: &'a str,
}

struct ListPage<'a> {
    tenant: &'a str,
    filter: &'a str,
    page_size: i32,
    page_token: &'a str,
}

fn status(error: ApiError) -> Status {
    error.in_domain(SERVICE.error_domain).into()
}

fn not_allowed() -> ApiError {
    ApiError::permission_denied("CALLER_NOT_ALLOWED", "this caller may not do this")
}

/// A tenant as the request keeps it: identity's name, display name and contract reference.
fn profile(
    tenant: portal_proto::identity::v1::Tenant,
) -> portal_proto::approval::v1::TenantProfile {
    portal_proto::approval::v1::TenantProfile {
        tenant: tenant.name,
        display_name: tenant.display_name,
        contract_reference: tenant.contract_reference,
    }
}

/// A deleted user's token is refused here from the moment identity's event is applied.
fn user_deleted() -> ApiError {
    ApiError::unauthenticated(
        "TOKEN_INVALID",
        "the token's user deleted their registration",
    )
}

fn request_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("APPROVAL_REQUEST_NOT_FOUND", "no such approval request")
        .resource("portal.approval.v1.ApprovalRequest", &request_name(id))
}

fn connection_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("TENANT_CONNECTION_NOT_FOUND", "no such tenant connection").resource(
        "portal.approval.v1.TenantConnection",
        &domain::connection_name(id),
    )
}

/// Keyset position of a newest-first list: (create time in microseconds, id).
fn decode_position(
    token: &str,
    fingerprint: &str,
) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    let position: Option<(i64, String)> = paging::decode_token(token, fingerprint)?;
    position
        .map(|(micros, id)| {
            DateTime::from_timestamp_micros(micros)
                .zip(Uuid::parse_str(&id).ok())
                .ok_or_else(|| {
                    ApiError::invalid_argument("INVALID_PAGE_TOKEN", "the page token is not valid")
                })
        })
        .transpose()
}

/// Cuts `rows` (fetched one longer than `size`) to the page, and the token of the next page.
fn next_token<R>(
    rows: &mut Vec<R>,
    size: usize,
    fingerprint: &str,
    position: impl Fn(&R) -> (DateTime<Utc>, Uuid),
) -> String {
    if rows.len() <= size {
        return String::new();
    }
    rows.truncate(size);
    rows.last()
        .map(|last| {
            let (time, id) = position(last);
            paging::encode_token(&(time.timestamp_micros(), id.to_string()), fingerprint)
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl ApprovalService for ApprovalServiceApi {
    async fn create_approval_request(
        &self,
        request: Request<CreateApprovalRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let party = self.user(caller).await.map_err(status)?;
        let body = request.get_ref();
        let given = body.approval_request.clone().unwrap_or_default();
        if given.kind != i32::from(RequestKind::TenantConnection) {
            return Err(status(domain::invalid(
                "approval_request.kind",
                "required: KIND_TENANT_CONNECTION",
            )));
        }
        let target = names::tenant_id(&given.target_tenant).ok_or_else(|| {
            status(domain::invalid(
                "approval_request.target_tenant",
                "required: tenants/{tenant}",
            ))
        })?;
        if target == party.tenant {
            return Err(status(domain::invalid(
                "approval_request.target_tenant",
                "must be another tenant than the requester's own",
            )));
        }
        domain::check_message(&given.message, "approval_request.message").map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: "portal.approval.v1.ApprovalService/CreateApprovalRequest",
            request_id: &body.request_id,
        };
        // A retry is answered from what was stored, even while identity is unreachable.
        if let Some(stored) = idempotency::replay(&self.pool, SERVICE.schema.name, &key, body)
            .await
            .map_err(status)?
        {
            return Ok(Response::new(stored));
        }
        // Both tenants as identity knows them: what the receiver judges the request by.
        let target_profile = self.identity.tenant(target).await.map_err(status)?;
        let requester_profile = self.identity.tenant(party.tenant).await.map_err(status)?;
        let (target_profile, requester_profile) =
            (profile(target_profile), profile(requester_profile));
        let expiry = self.expiry;
        let created = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                let now = Utc::now();
                // Checked again under the user's lock: a deletion being applied now either
                // withdraws this request after it commits or is seen here.
                store::lock_user(tx, &party.name).await?;
                if store::is_deleted_user(&mut *tx, &party.name).await? {
                    return Err(user_deleted());
                }
                store::lock_pair(tx, party.tenant, target).await?;
                for expired in store::expire_between(tx, party.tenant, target, now).await? {
                    view::emit(tx, EventType::Expired, &expired, None).await?;
                }
                if store::active_connection_between(tx, party.tenant, target)
                    .await?
                    .is_some()
                {
                    return Err(store::already_connected());
                }
                let kind = "TENANT_CONNECTION";
                if let Some(pending) =
                    store::pending_between(tx, kind, party.tenant, target).await?
                {
                    return Err(ApiError::already_exists(
                        "PENDING_REQUEST_EXISTS",
                        "a pending request between these tenants exists",
                    )
                    .resource(
                        "portal.approval.v1.ApprovalRequest",
                        &request_name(pending.id),
                    ));
                }
                let new = NewRequest {
                    id: Uuid::now_v7(),
                    kind,
                    requester_tenant: party.tenant,
                    requester_user: party.user,
                    target_tenant: target,
                    message: &given.message,
                    requester: (
                        &requester_profile.display_name,
                        &requester_profile.contract_reference,
                    ),
                    target: (
                        &target_profile.display_name,
                        &target_profile.contract_reference,
                    ),
                    now,
                    expire_time: now + expiry,
                };
                let row = store::insert_request(tx, &new, &party.name).await?;
                view::emit(tx, EventType::Created, &row, None).await?;
                Ok(view::request(&row, now))
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(request = %created.name, "approval request sent");
        Ok(Response::new(created))
    }

    async fn get_approval_request(
        &self,
        request: Request<GetApprovalRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let viewer = self.viewer(caller).await.map_err(status)?;
        let id = domain::request_id(&request.get_ref().name, "name").map_err(status)?;
        let row = self.visible_request(&viewer, id).await.map_err(status)?;
        Ok(Response::new(view::request(&row, Utc::now())))
    }

    async fn list_sent_approval_requests(
        &self,
        request: Request<ListSentApprovalRequestsRequest>,
    ) -> Result<Response<ListSentApprovalRequestsResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let page = ListPage {
            tenant: &body.tenant,
            filter: &body.filter,
            page_size: body.page_size,
            page_token: &body.page_token,
        };
        let (approval_requests, next_page_token) =
            self.list(caller, Side::Sent, page).await.map_err(status)?;
        Ok(Response::new(ListSentApprovalRequestsResponse {
            approval_requests,
            next_page_token,
        }))
    }

    async fn list_received_approval_requests(
        &self,
        request: Request<ListReceivedApprovalRequestsRequest>,
    ) -> Result<Response<ListReceivedApprovalRequestsResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let page = ListPage {
            tenant: &body.tenant,
            filter: &body.filter,
            page_size: body.page_size,
            page_token: &body.page_token,
        };
        let (approval_requests, next_page_token) = self
            .list(caller, Side::Received, page)
            .await
            .map_err(status)?;
        Ok(Response::new(ListReceivedApprovalRequestsResponse {
            approval_requests,
            next_page_token,
        }))
    }

    async fn accept_approval_request(
        &self,
        request: Request<AcceptApprovalRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let fields = DecisionFields {
            name: &body.name,
            etag: &body.etag,
            request_id: &body.request_id,
            reason: "",
        };
        let decided = self
            .decide(caller, Decision::Accept, body, fields)
            .await
            .map_err(status)?;
        tracing::info!(request = %decided.name, "approval request accepted");
        Ok(Response::new(decided))
    }

    async fn reject_approval_request(
        &self,
        request: Request<RejectApprovalRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let fields = DecisionFields {
            name: &body.name,
            etag: &body.etag,
            request_id: &body.request_id,
            reason: &body.reason,
        };
        let decided = self
            .decide(caller, Decision::Reject, body, fields)
            .await
            .map_err(status)?;
        tracing::info!(request = %decided.name, "approval request rejected");
        Ok(Response::new(decided))
    }

    async fn withdraw_approval_request(
        &self,
        request: Request<WithdrawApprovalRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let fields = DecisionFields {
            name: &body.name,
            etag: &body.etag,
            request_id: &body.request_id,
            reason: &body.reason,
        };
        let decided = self
            .decide(caller, Decision::Withdraw, body, fields)
            .await
            .map_err(status)?;
        tracing::info!(request = %decided.name, "approval request withdrawn");
        Ok(Response::new(decided))
    }

    async fn watch_approval_requests(
        &self,
        request: Request<WatchApprovalRequestsRequest>,
    ) -> Result<Response<ResponseStream<ApprovalRequestEvent>>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let viewer = self.viewer(caller).await.map_err(status)?;
        let body = request.get_ref();
        let only = match (&viewer, body.tenant.as_str()) {
            (_, "") => None,
            (Viewer::User(party), given) if given == tenant_name(party.tenant) => None,
            (Viewer::User(_), given) => {
                return Err(status(
                    ApiError::not_found("TENANT_NOT_FOUND", "no such tenant")
                        .resource("portal.identity.v1.Tenant", given),
                ));
            }
            (Viewer::Staff, given) => Some(names::tenant_id(given).ok_or_else(|| {
                status(domain::invalid(
                    "tenant",
                    "must be tenants/{tenant} or empty",
                ))
            })?),
        };
        let stream = events::watch(
            self.pool.clone(),
            SERVICE.schema.name,
            &body.after,
            FEED_POLL,
            SERVICE.error_domain,
            self.draining.clone(),
            move |stored| approval_event(stored, &viewer, only),
        )?;
        Ok(Response::new(stream))
    }

    async fn list_tenant_connections(
        &self,
        request: Request<ListTenantConnectionsRequest>,
    ) -> Result<Response<ListTenantConnectionsResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let viewer = self.viewer(caller).await.map_err(status)?;
        let body = request.get_ref();
        let tenant = viewer.tenant_to_list(&body.tenant).map_err(status)?;
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("connections|{tenant}|{}", body.show_deleted);
        let after = decode_position(&body.page_token, &fingerprint).map_err(status)?;
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows = store::list_connections(&self.pool, tenant, body.show_deleted, after, limit)
            .await
            .map_err(|e| status(e.into()))?;
        let next_page_token = next_token(&mut rows, size, &fingerprint, |r| (r.create_time, r.id));
        Ok(Response::new(ListTenantConnectionsResponse {
            tenant_connections: rows.iter().map(view::connection).collect(),
            next_page_token,
        }))
    }

    async fn delete_tenant_connection(
        &self,
        request: Request<DeleteTenantConnectionRequest>,
    ) -> Result<Response<TenantConnection>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let party = self.user(caller).await.map_err(status)?;
        let body = request.get_ref();
        let id = domain::connection_id(&body.name, "name").map_err(status)?;
        let ended = self
            .end_connection(&party, id, &body.etag)
            .await
            .map_err(status)?;
        Ok(Response::new(ended))
    }

    async fn list_approval_request_history(
        &self,
        request: Request<ListApprovalRequestHistoryRequest>,
    ) -> Result<Response<ListApprovalRequestHistoryResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let viewer = self.viewer(caller).await.map_err(status)?;
        let body = request.get_ref();
        let id = domain::request_id(&body.name, "name").map_err(status)?;
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("history|{id}");
        let skip: usize = paging::decode_token::<usize>(&body.page_token, &fingerprint)
            .map_err(status)?
            .unwrap_or(0);
        let row = self.visible_request(&viewer, id).await.map_err(status)?;
        let stored = store::transitions(&self.pool, id)
            .await
            .map_err(|e| status(e.into()))?;
        let all = view::history(&row, &stored, Utc::now());
        let end = (skip + size).min(all.len());
        let next_page_token = if end < all.len() {
            paging::encode_token(&end, &fingerprint)
        } else {
            String::new()
        };
        Ok(Response::new(ListApprovalRequestHistoryResponse {
            transitions: all.get(skip..end).unwrap_or_default().to_vec(),
            next_page_token,
        }))
    }
}

impl ApprovalServiceApi {
    /// Ends a connection of the caller's tenant (admins only); ending an ended one returns it.
    async fn end_connection(
        &self,
        party: &Party,
        id: Uuid,
        etag: &str,
    ) -> Result<TenantConnection, ApiError> {
        let mut tx = self.pool.begin().await?;
        let row = store::connection(&mut tx, id, true)
            .await?
            .filter(|row| row.involves(party.tenant))
            .ok_or_else(|| connection_not_found(id))?;
        if !party.admin {
            return Err(not_allowed());
        }
        if row.state == "DELETED" {
            return Ok(view::connection(&row));
        }
        if !etag.is_empty() && etag != format!("\"{}\"", row.revision) {
            return Err(ApiError::aborted(
                "ETAG_MISMATCH",
                "the connection changed since it was read; read it again",
            ));
        }
        let now = Utc::now();
        let ended = store::end_connection(&mut tx, id, &party.name, now).await?;
        let request = store::request(&mut tx, row.approval_request, false)
            .await?
            .ok_or_else(|| ApiError::internal("a connection without its request"))?;
        view::emit(&mut tx, EventType::ConnectionDeleted, &request, Some(id)).await?;
        tx.commit().await?;
        tracing::info!(connection = %domain::connection_name(id), "tenant connection ended");
        Ok(view::connection(&ended))
    }
}

/// The stored event as this caller's stream delivers it, or `None` if it concerns other
/// tenants (or is not an approval event).
fn approval_event(
    stored: StoredEvent,
    viewer: &Viewer,
    only: Option<Uuid>,
) -> Result<Option<ApprovalRequestEvent>, ApiError> {
    if stored.event_type == USER_DELETED_MARKER {
        return match viewer {
            Viewer::User(party) if party.name == stored.subject => Err(user_deleted()),
            _ => Ok(None),
        };
    }
    if !stored.event_type.starts_with(EVENT_TYPE_PREFIX) {
        return Ok(None);
    }
    let mut event: ApprovalRequestEvent = stored.decode()?;
    let request = event.approval_request.as_ref();
    let tenants = request.and_then(|r| {
        names::tenant_id(&r.requester_tenant).zip(names::tenant_id(&r.target_tenant))
    });
    let Some((a, b)) = tenants else {
        return Ok(None);
    };
    if !viewer.follows(only, a, b) {
        return Ok(None);
    }
    event.cursor = stored.cursor.encode();
    event.sequence = stored.id;
    event.event_time = Some(std::time::SystemTime::from(stored.event_time).into());
    event.traceparent = stored.traceparent;
    event.tracestate = stored.tracestate;
    Ok(Some(event))
}
