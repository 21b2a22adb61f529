//! gRPC handlers of `portal.identity.v1.IdentityService`: authorise, check with `domain`, seal
//! and open PI with `crypto`, read and write through `store`, and record consent through
//! `consent` before anything that needs it takes effect (fail closed).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SubsecRound, Utc};
use portal_platform::auth::keys::{PublishedKeys, TokenSigner};
use portal_platform::auth::{self, Caller, Kind};
use portal_platform::config::IdentitySettings;
use portal_platform::events::{self, ResponseStream, StoredEvent};
use portal_platform::idempotency::{self, RequestKey, parse_request_id};
use portal_platform::names::{self, tenant_name, user_name};
use portal_platform::time::to_timestamp;
use portal_platform::{ApiError, ServiceContext, paging};
use portal_proto::identity::v1::deletion_receipt::ErasedData;
use portal_proto::identity::v1::identity_service_server::IdentityService;
use portal_proto::identity::v1::user::{AcquisitionChannel, State};
use portal_proto::identity::v1::user_event::Type as EventType;
use portal_proto::identity::v1::{
    AccessToken, ActivateUserRequest, Attestation, CreateTenantRequest, DeleteUserRequest,
    DeletionReceipt, ExportUserDataRequest, ExportedConsentRecord, ExportedRecipient,
    ExportedTransferRecord, GetTenantRequest, GetUserRequest, ListSigningKeysRequest,
    ListSigningKeysResponse, ListUsersRequest, ListUsersResponse, RegisterUserRequest,
    RegisterUserResponse, SignInRequest, SigningKey, Tenant, UpdateUserRequest, User,
    UserDataExport, UserEvent, WatchUserEventsRequest,
};
use prost::Message;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::crypto::{self, Keys, Pi};
use crate::domain::{self, Channel};
use crate::store::{self, NewUser, TenantRow, UserRow};
use crate::{SERVICE, USER_EVENT_TYPE_PREFIX, record_user_event};
use portal_clients::consent::{Consent, Ground};
use portal_clients::transfer::Transfer;

/// How often a caught-up WatchUserEvents stream looks for new events: the longest a committed
/// event waits before it is sent (while no older transaction is still running).
const FEED_POLL: Duration = Duration::from_millis(200);

/// Transfer records in a data export: the newest, the rest through the transfer service.
const EXPORTED_TRANSFER_RECORDS: usize = 1000;

#[derive(Debug, Clone)]
pub struct IdentityServiceApi {
    /// Connections as `identity_app`.
    pool: PgPool,
    /// Set when the server drains; ends watch streams.
    draining: watch::Receiver<bool>,
    region: String,
    settings: Arc<IdentitySettings>,
    keys: Arc<Keys>,
    /// Signs USER tokens and deletion receipts.
    signer: Arc<TokenSigner>,
    published_keys: Arc<PublishedKeys>,
    consent: Consent,
    /// Read for the data export: where the user's data went.
    transfer: Transfer,
}

impl IdentityServiceApi {
    /// Fails, naming the key, when identity lacks its keys.
    pub fn new(context: ServiceContext) -> anyhow::Result<Self> {
        let settings = &context.settings;
        let signer = context.signer.clone().ok_or_else(|| {
            anyhow::anyhow!("configuration key `auth.signing_key`: is required to serve identity")
        })?;
        Ok(Self {
            keys: Arc::new(Keys::from_settings(&settings.identity)?),
            consent: Consent::new(&context)?,
            transfer: Transfer::new(&context)?,
            published_keys: Arc::new(PublishedKeys::from_settings(settings)),
            region: settings.deployment.region.clone(),
            settings: Arc::new(settings.identity.clone()),
            signer,
            pool: context.pool,
            draining: context.draining,
        })
    }

    /// Runs Argon2 off the async threads: it takes tens of milliseconds by design.
    async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let keys = Arc::clone(&self.keys);
        tokio::task::spawn_blocking(move || keys.hash_password(&password))
            .await
            .map_err(ApiError::internal)?
    }

    async fn verify_password(&self, password: String, stored: Option<String>) -> bool {
        let keys = Arc::clone(&self.keys);
        tokio::task::spawn_blocking(move || keys.verify_password(&password, stored.as_deref()))
            .await
            .unwrap_or(false)
    }

    /// A USER caller's token stops working at identity the moment the user is deleted.
    async fn require_live(&self, caller: &Caller) -> Result<(), ApiError> {
        if caller.kind != Kind::User {
            return Ok(());
        }
        // A token claims roles as they were at sign-in: one claiming a role the user has since
        // lost stops working too (sign in again), so a demoted admin cannot act as one.
        let live = match names::user_ids(&caller.subject) {
            Some((tenant, id)) => {
                let mut conn = self.pool.acquire().await?;
                store::user(&mut conn, tenant, id, false)
                    .await?
                    .is_some_and(|row| {
                        row.state == "ACTIVE" && caller.roles.iter().all(|r| row.roles.contains(r))
                    })
            }
            None => false,
        };
        if live {
            Ok(())
        } else {
            Err(ApiError::unauthenticated(
                "TOKEN_INVALID",
                "the token's user no longer exists or has other roles now; sign in again",
            ))
        }
    }

    /// The user as `view` allows: PI opened only for `View::WithPi` and live users.
    fn to_user(&self, row: &UserRow, view: View) -> Result<User, ApiError> {
        let mut user = user_without_pi(row, &self.region);
        if view == View::WithPi
            && let (Some(pi), Some(data_key), Some(kek_id)) = (&row.pi, &row.data_key, &row.kek_id)
        {
            let opened = self.keys.open(row.id, pi, data_key, kek_id)?;
            user.display_name = opened.display_name;
            user.email = opened.email;
            user.phone_number = opened.phone_number;
        }
        Ok(user)
    }

    fn registration_response(&self, row: &UserRow) -> Result<RegisterUserResponse, ApiError> {
        let (activation_secret, activation_expire_time) =
            match (&row.activation_nonce, row.activation_expire_time) {
                (Some(nonce), Some(expire)) if row.state == "PENDING_ACTIVATION" => (
                    self.keys.activation_secret(row.id, nonce),
                    Some(to_timestamp(expire)),
                ),
                _ => (String::new(), None),
            };
        Ok(RegisterUserResponse {
            user: Some(self.to_user(row, View::WithPi)?),
            activation_secret,
            activation_expire_time,
        })
    }

    /// Who registers, through which channel (Art. 2), and the attester name a TENANT_ADMIN
    /// must give.
    async fn registration_channel(
        &self,
        caller: &Caller,
        tenant: Uuid,
    ) -> Result<(Channel, Option<String>), ApiError> {
        match caller.kind {
            Kind::Service => Ok((Channel::SelfService, None)),
            Kind::Operator => Ok((Channel::ContractParty, None)),
            Kind::User if caller.has_role("TENANT_ADMIN") => {
                if caller.tenant.as_deref() != Some(tenant_name(tenant).as_str()) {
                    return Err(tenant_not_found(tenant));
                }
                self.require_live(caller).await?;
                Ok((Channel::ContractParty, Some(caller.subject.clone())))
            }
            Kind::User | Kind::Auditor => Err(not_allowed()),
        }
    }

    /// Step 1 of a registration, in one transaction: a retry of a registration finds its row;
    /// otherwise the tenant and the email are checked and a REGISTERING row made (or an
    /// unfinished registration of the same email taken over).
    async fn begin_registration(
        &self,
        caller: &Caller,
        tenant: Uuid,
        registration: &domain::Registration,
        channel: Channel,
        registration_key: &str,
        request_hash: &[u8],
    ) -> Result<Begun, ApiError> {
        let password_hash = match &registration.password {
            Some(password) => Some(self.hash_password(password.clone()).await?),
            None => None,
        };
        let email_hash = self
            .keys
            .email_hash(&domain::email_key(&registration.pi.email));
        let now = Utc::now();
        let mut tx = self.pool.begin().await?;
        if let Some(row) = store::user_by_registration(&mut tx, registration_key).await? {
            if row.registration_hash != request_hash {
                return Err(ApiError::invalid_argument(
                    "REQUEST_ID_REUSED",
                    "this request_id was used for a different request",
                ));
            }
            return Ok(if row.state == "REGISTERING" {
                Begun::Registering(row.id)
            } else {
                Begun::Done(Box::new(row))
            });
        }
        store::forget_abandoned_registrations(&mut tx, now).await?;
        if store::tenant(&mut tx, tenant).await?.is_none() {
            return Err(tenant_not_found(tenant));
        }
        if caller.kind == Kind::Operator {
            store::lock_tenant(&mut tx, tenant).await?;
        }
        store::lock_email(&mut tx, &email_hash).await?;
        let take_over = match store::user_by_email(&mut tx, &email_hash).await? {
            Some(existing) if existing.state == "REGISTERING" => Some(existing.id),
            Some(_) => return Err(store::email_taken()),
            None => None,
        };
        // The operator bootstraps one first admin: an admin being registered counts too, so
        // concurrent bootstraps cannot both succeed.
        let any_admin = ["ACTIVE", "PENDING_ACTIVATION", "REGISTERING"];
        if caller.kind == Kind::Operator
            && store::has_admin(&mut tx, tenant, take_over, &any_admin).await?
        {
            return Err(ApiError::failed_precondition(
                "TENANT_HAS_ADMIN",
                "the tenant has an administrator (or one is being registered), who registers its users",
            ));
        }
        let id = take_over.unwrap_or_else(Uuid::now_v7);
        let sealed = self.keys.seal_new(id, &registration.pi)?;
        let attestation = registration.attestation.as_ref();
        let attest_time = attestation
            .and_then(|a| a.attest_time.as_ref())
            .map(|t| portal_platform::time::from_timestamp(t, "attestation.attest_time"))
            .transpose()?;
        let new = NewUser {
            id,
            tenant,
            channel: channel.as_str(),
            roles: &registration.roles,
            pi: &sealed.pi,
            data_key: &sealed.data_key,
            kek_id: &sealed.kek_id,
            email_hash: &email_hash,
            password_hash: password_hash.as_deref(),
            attested_by: attestation.map(|a| a.attested_by.as_str()),
            attest_time,
            evidence_uri: attestation.map(|a| a.evidence_uri.as_str()),
            registration_key,
            registration_hash: request_hash,
        };
        let id = store::begin_registration(&mut tx, &new, take_over, now).await?;
        tx.commit().await?;
        Ok(Begun::Registering(id))
    }

    /// Step 3 of a registration: the consent is recorded, so the user becomes usable.
    async fn complete_registration(
        &self,
        id: Uuid,
        tenant: Uuid,
        channel: Channel,
        registration_key: &str,
        consent_record: &str,
    ) -> Result<UserRow, ApiError> {
        let now = Utc::now();
        let nonce = crypto::activation_nonce();
        let (state, activation) = match channel {
            Channel::SelfService => ("ACTIVE", None),
            Channel::ContractParty => {
                let secret = self.keys.activation_secret(id, &nonce);
                let expire = now + seconds(self.settings.activation_ttl_secs);
                (
                    "PENDING_ACTIVATION",
                    Some((crypto::secret_hash(&secret), expire)),
                )
            }
        };
        let mut tx = self.pool.begin().await?;
        let completed = store::complete_registration(
            &mut tx,
            id,
            registration_key,
            state,
            consent_record,
            activation
                .as_ref()
                .map(|(hash, expire)| (hash.as_slice(), nonce.as_slice(), *expire)),
            now,
        )
        .await?;
        let Some(row) = completed else {
            // Another registration of the same email took the row over while consent was
            // being recorded; that one completes it.
            return Err(ApiError::aborted(
                "CONCURRENT_REGISTRATION",
                "another registration of this email address is in progress",
            ));
        };
        emit(&mut tx, EventType::Registered, tenant, id).await?;
        tx.commit().await?;
        Ok(row)
    }
}

/// Where step 1 of a registration left it.
enum Begun {
    /// Consent still to be recorded for this user id.
    Registering(Uuid),
    /// A retry of a completed registration.
    Done(Box<UserRow>),
}

/// Whether a caller sees the PI fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    WithPi,
    WithoutPi,
}

/// Every error leaves with identity's `ErrorInfo` domain.
fn status(error: ApiError) -> Status {
    error.in_domain(SERVICE.error_domain).into()
}

fn not_allowed() -> ApiError {
    ApiError::permission_denied("CALLER_NOT_ALLOWED", "this caller may not call this method")
}

fn tenant_not_found(tenant: Uuid) -> ApiError {
    ApiError::not_found("TENANT_NOT_FOUND", "no such tenant")
        .resource("portal.identity.v1.Tenant", &tenant_name(tenant))
}

fn user_not_found(tenant: Uuid, id: Uuid) -> ApiError {
    ApiError::not_found("USER_NOT_FOUND", "no such user")
        .resource("portal.identity.v1.User", &user_name(tenant, id))
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

fn parse_tenant(name: &str, field: &str) -> Result<Uuid, ApiError> {
    names::tenant_id(name).ok_or_else(|| domain::invalid(field, "must be tenants/{tenant}"))
}

fn parse_user(name: &str, field: &str) -> Result<(Uuid, Uuid), ApiError> {
    names::user_ids(name)
        .ok_or_else(|| domain::invalid(field, "must be tenants/{tenant}/users/{user}"))
}

/// May `caller` act on the users of `tenant` as a whole (list them)? Admins of the tenant see
/// PI; `staff` kinds see the users without PI; users of other tenants find no such tenant.
fn on_tenant(caller: &Caller, tenant: Uuid, staff: &[Kind]) -> Result<View, ApiError> {
    if caller.kind == Kind::User {
        if caller.tenant.as_deref() != Some(tenant_name(tenant).as_str()) {
            return Err(tenant_not_found(tenant));
        }
        return if caller.has_role("TENANT_ADMIN") {
            Ok(View::WithPi)
        } else {
            Err(not_allowed())
        };
    }
    if staff.contains(&caller.kind) {
        Ok(View::WithoutPi)
    } else {
        Err(not_allowed())
    }
}

/// May `caller` act on user `id` of `tenant`? The user themself and admins of their tenant
/// see PI; `staff` kinds act without PI; a user of another tenant finds no such user, and a
/// MEMBER acting on a colleague is refused.
fn on_user(caller: &Caller, tenant: Uuid, id: Uuid, staff: &[Kind]) -> Result<View, ApiError> {
    if caller.kind == Kind::User {
        if caller.tenant.as_deref() != Some(tenant_name(tenant).as_str()) {
            return Err(user_not_found(tenant, id));
        }
        return if caller.subject == user_name(tenant, id) || caller.has_role("TENANT_ADMIN") {
            Ok(View::WithPi)
        } else {
            Err(not_allowed())
        };
    }
    if staff.contains(&caller.kind) {
        Ok(View::WithoutPi)
    } else {
        Err(not_allowed())
    }
}

/// AIP-154 etag of a row version.
fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

fn check_etag(given: &str, row: &UserRow) -> Result<(), ApiError> {
    if given.is_empty() || given == etag(row.revision) {
        Ok(())
    } else {
        Err(ApiError::aborted(
            "ETAG_MISMATCH",
            "the user changed since it was read; read it again",
        ))
    }
}

fn tenant_to_proto(row: TenantRow) -> Tenant {
    Tenant {
        name: tenant_name(row.id),
        display_name: row.display_name,
        contract_reference: row.contract_reference,
        home_region: row.home_region,
        create_time: Some(to_timestamp(row.create_time)),
        update_time: Some(to_timestamp(row.update_time)),
        etag: etag(row.revision),
    }
}

fn user_without_pi(row: &UserRow, region: &str) -> User {
    let state = match row.state.as_str() {
        "ACTIVE" => State::Active,
        "PENDING_ACTIVATION" => State::PendingActivation,
        "DELETED" => State::Deleted,
        _ => State::Unspecified,
    };
    let channel = match row.channel.as_str() {
        "SELF" => AcquisitionChannel::Self_,
        _ => AcquisitionChannel::ContractParty,
    };
    let attestation = row.attested_by.as_ref().map(|by| Attestation {
        attested_by: by.clone(),
        attest_time: row.attest_time.map(to_timestamp),
        evidence_uri: row.evidence_uri.clone().unwrap_or_default(),
    });
    User {
        name: user_name(row.tenant_id, row.id),
        tenant: tenant_name(row.tenant_id),
        display_name: String::new(),
        email: String::new(),
        phone_number: String::new(),
        roles: row
            .roles
            .iter()
            .filter_map(|r| domain::role_from_name(r))
            .map(i32::from)
            .collect(),
        acquisition_channel: channel.into(),
        home_region: region.to_owned(),
        state: state.into(),
        create_time: Some(to_timestamp(row.create_time)),
        update_time: Some(to_timestamp(row.update_time)),
        delete_time: row.delete_time.map(to_timestamp),
        etag: etag(row.revision),
        attestation,
    }
}

/// Records a user event in the transaction of the change (ids only).
async fn emit(
    conn: &mut PgConnection,
    kind: EventType,
    tenant: Uuid,
    id: Uuid,
) -> Result<i64, ApiError> {
    let event = UserEvent {
        r#type: kind.into(),
        user: user_name(tenant, id),
        tenant: tenant_name(tenant),
        ..UserEvent::default()
    };
    Ok(record_user_event(conn, &event).await?)
}

#[tonic::async_trait]
impl IdentityService for IdentityServiceApi {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Operator]).map_err(status)?;
        let body = request.get_ref();
        let tenant = domain::new_tenant(body.tenant.as_ref(), &self.region).map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: "portal.identity.v1.IdentityService/CreateTenant",
            request_id: &body.request_id,
        };
        let created = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                let row = store::insert_tenant(tx, Uuid::now_v7(), &tenant, Utc::now()).await?;
                Ok(tenant_to_proto(row))
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(tenant = %created.name, "tenant created");
        Ok(Response::new(created))
    }

    async fn get_tenant(
        &self,
        request: Request<GetTenantRequest>,
    ) -> Result<Response<Tenant>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let id = parse_tenant(&request.get_ref().name, "name").map_err(status)?;
        if caller.kind == Kind::User {
            if caller.tenant.as_deref() != Some(tenant_name(id).as_str()) {
                return Err(status(tenant_not_found(id)));
            }
            self.require_live(caller).await.map_err(status)?;
        } else {
            caller
                .require_kind(&[Kind::Operator, Kind::Auditor, Kind::Service])
                .map_err(status)?;
        }
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let row = store::tenant(&mut conn, id)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(tenant_not_found(id)))?;
        Ok(Response::new(tenant_to_proto(row)))
    }

    async fn register_user(
        &self,
        request: Request<RegisterUserRequest>,
    ) -> Result<Response<RegisterUserResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let request_id = parse_request_id(&body.request_id).map_err(status)?;
        let tenant = parse_tenant(&body.parent, "parent").map_err(status)?;
        let (channel, attester) = self
            .registration_channel(caller, tenant)
            .await
            .map_err(status)?;
        let registration = domain::registration(
            body.user.as_ref(),
            &body.password,
            body.attestation.as_ref(),
            channel,
            attester.as_deref(),
            Utc::now(),
        )
        .map_err(status)?;
        if channel == Channel::ContractParty && registration.attestation.is_none() {
            return Err(status(ApiError::failed_precondition(
                "ATTESTATION_REQUIRED",
                "Art. 5.2: a contract party must attest that the user consented before registering them",
            )));
        }
        // Without a request_id each call is its own registration.
        let request_id = request_id.unwrap_or_else(Uuid::now_v7);
        let registration_key = format!("{}|{request_id}", caller.subject);
        let request_hash = self.keys.request_hash(&body.encode_to_vec());
        let begun = self
            .begin_registration(
                caller,
                tenant,
                &registration,
                channel,
                &registration_key,
                &request_hash,
            )
            .await
            .map_err(status)?;
        let id = match begun {
            Begun::Done(row) => {
                return Ok(Response::new(
                    self.registration_response(&row).map_err(status)?,
                ));
            }
            Begun::Registering(id) => id,
        };
        let subject = user_name(tenant, id);
        let ground = match &registration.attestation {
            Some(attestation) => Ground::Attested(attestation),
            None => Ground::DeemedByUse,
        };
        let consent_record = match self
            .consent
            .record(&subject, &tenant_name(tenant), ground)
            .await
        {
            Ok(record) => record,
            Err(error) => {
                // Unreachable: the REGISTERING row waits for a retry. Refused for good: the
                // registration cannot complete, so its sealed PI goes now.
                if error.code() != tonic::Code::Unavailable {
                    let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
                    store::abandon_registration(&mut conn, id, &registration_key)
                        .await
                        .map_err(|e| status(e.into()))?;
                }
                return Err(status(error));
            }
        };
        let row = self
            .complete_registration(id, tenant, channel, &registration_key, &consent_record)
            .await
            .map_err(status)?;
        tracing::info!(user = %subject, channel = channel.as_str(), "user registered");
        Ok(Response::new(
            self.registration_response(&row).map_err(status)?,
        ))
    }

    async fn activate_user(
        &self,
        request: Request<ActivateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Service]).map_err(status)?;
        let body = request.get_ref();
        let mut problems = domain::Problems::default();
        if body.activation_secret.is_empty() {
            problems.add("activation_secret", "required");
        }
        let password = domain::password(&body.password, "password", &mut problems);
        problems.into_result(()).map_err(status)?;
        let secret_hash = crypto::secret_hash(&body.activation_secret);
        let not_found = || {
            ApiError::not_found(
                "ACTIVATION_SECRET_NOT_FOUND",
                "no user awaits activation with this secret",
            )
        };
        let pending = |row: &UserRow| -> Result<(), ApiError> {
            match row.state.as_str() {
                "PENDING_ACTIVATION" => {}
                "ACTIVE" => {
                    return Err(ApiError::failed_precondition(
                        "ALREADY_ACTIVATED",
                        "this activation secret was used",
                    ));
                }
                _ => return Err(not_found()),
            }
            if row.activation_expire_time.is_none_or(|t| t <= Utc::now()) {
                return Err(ApiError::failed_precondition(
                    "ACTIVATION_SECRET_EXPIRED",
                    "the activation secret expired; the tenant admin deletes and re-registers the user",
                ));
            }
            Ok(())
        };
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let row = store::user_by_activation(&mut conn, &secret_hash)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(not_found()))?;
        drop(conn);
        pending(&row).map_err(status)?;
        let password_hash = self.hash_password(password).await.map_err(status)?;
        // First use of the portal: deemed consent before the user can act (Art. 5.1).
        let subject = user_name(row.tenant_id, row.id);
        self.consent
            .record(&subject, &tenant_name(row.tenant_id), Ground::DeemedByUse)
            .await
            .map_err(status)?;
        let mut tx = self.pool.begin().await.map_err(|e| status(e.into()))?;
        let row = store::user_by_activation(&mut tx, &secret_hash)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(not_found()))?;
        pending(&row).map_err(status)?;
        let row = store::activate(&mut tx, row.id, &password_hash, Utc::now())
            .await
            .map_err(|e| status(e.into()))?;
        emit(&mut tx, EventType::Activated, row.tenant_id, row.id)
            .await
            .map_err(status)?;
        tx.commit().await.map_err(|e| status(e.into()))?;
        tracing::info!(user = %subject, "user activated");
        Ok(Response::new(
            self.to_user(&row, View::WithPi).map_err(status)?,
        ))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let (tenant, id) = parse_user(&request.get_ref().name, "name").map_err(status)?;
        let view = on_user(
            caller,
            tenant,
            id,
            &[Kind::Operator, Kind::Auditor, Kind::Service],
        )
        .map_err(status)?;
        self.require_live(caller).await.map_err(status)?;
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let row = store::user(&mut conn, tenant, id, false)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(user_not_found(tenant, id)))?;
        Ok(Response::new(self.to_user(&row, view).map_err(status)?))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let tenant = parse_tenant(&body.parent, "parent").map_err(status)?;
        let view = on_tenant(
            caller,
            tenant,
            &[Kind::Operator, Kind::Auditor, Kind::Service],
        )
        .map_err(status)?;
        self.require_live(caller).await.map_err(status)?;
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("{}|{}", body.parent, body.show_deleted);
        // Position: (create time in microseconds, user id) of the last user served.
        let after: Option<(i64, String)> =
            paging::decode_token(&body.page_token, &fingerprint).map_err(status)?;
        let after = after
            .map(|(micros, id)| {
                DateTime::from_timestamp_micros(micros)
                    .zip(Uuid::parse_str(&id).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_argument(
                            "INVALID_PAGE_TOKEN",
                            "the page token is not valid",
                        )
                    })
            })
            .transpose()
            .map_err(status)?;
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        if store::tenant(&mut conn, tenant)
            .await
            .map_err(|e| status(e.into()))?
            .is_none()
        {
            return Err(status(tenant_not_found(tenant)));
        }
        drop(conn);
        let mut rows = store::list_users(&self.pool, tenant, body.show_deleted, after, size + 1)
            .await
            .map_err(|e| status(e.into()))?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| {
                    let position = (last.create_time.timestamp_micros(), last.id.to_string());
                    paging::encode_token(&position, &fingerprint)
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let users = rows
            .iter()
            .map(|row| self.to_user(row, view))
            .collect::<Result<_, _>>()
            .map_err(status)?;
        Ok(Response::new(ListUsersResponse {
            users,
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let given = body.user.clone().unwrap_or_default();
        let (tenant, id) = parse_user(&given.name, "user.name").map_err(status)?;
        on_user(caller, tenant, id, &[]).map_err(status)?;
        let changes = domain::changes(&given, body.update_mask.as_ref()).map_err(status)?;
        if changes.roles.is_some() && !caller.has_role("TENANT_ADMIN") {
            return Err(status(ApiError::permission_denied(
                "CALLER_NOT_ALLOWED",
                "only a tenant admin may change roles",
            )));
        }
        self.require_live(caller).await.map_err(status)?;
        let updated = self
            .apply_update(tenant, id, &given.etag, changes)
            .await
            .map_err(status)?;
        tracing::info!(user = %updated.name, "user updated");
        Ok(Response::new(updated))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeletionReceipt>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let (tenant, id) = parse_user(&body.name, "name").map_err(status)?;
        parse_request_id(&body.request_id).map_err(status)?;
        on_user(caller, tenant, id, &[]).map_err(status)?;
        // A user deleting themself twice still gets the receipt; anyone else must be live.
        if caller.subject != user_name(tenant, id) {
            self.require_live(caller).await.map_err(status)?;
        }
        let receipt = self.delete(tenant, id, &body.etag).await.map_err(status)?;
        Ok(Response::new(receipt))
    }

    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<AccessToken>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Service]).map_err(status)?;
        let body = request.get_ref();
        let mut problems = domain::Problems::default();
        if body.email.is_empty() {
            problems.add("email", "required");
        }
        if body.password.is_empty() {
            problems.add("password", "required");
        }
        problems.into_result(()).map_err(status)?;
        let token = self.sign_in_checked(body).await.map_err(status)?;
        Ok(Response::new(token))
    }

    async fn list_signing_keys(
        &self,
        request: Request<ListSigningKeysRequest>,
    ) -> Result<Response<ListSigningKeysResponse>, Status> {
        auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let signing_keys: Vec<SigningKey> = self
            .published_keys
            .page(body.page_size, &body.page_token)
            .map_err(status)?;
        Ok(Response::new(ListSigningKeysResponse {
            signing_keys,
            next_page_token: String::new(),
        }))
    }

    async fn export_user_data(
        &self,
        request: Request<ExportUserDataRequest>,
    ) -> Result<Response<UserDataExport>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let (tenant, id) = parse_user(&request.get_ref().name, "name").map_err(status)?;
        let view = on_user(caller, tenant, id, &[Kind::Auditor]).map_err(status)?;
        self.require_live(caller).await.map_err(status)?;
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let row = store::user(&mut conn, tenant, id, false)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(user_not_found(tenant, id)))?;
        drop(conn);
        let user = self.to_user(&row, view).map_err(status)?;
        // All three sources or none: an incomplete export is never returned.
        let (consent_records, recipients, records) = tokio::try_join!(
            self.consent.records(&user.name),
            self.transfer.recipients(&user.name),
            self.transfer
                .newest_records(&user.name, EXPORTED_TRANSFER_RECORDS),
        )
        .map_err(status)?;
        let (transfer_records, transfer_records_truncated) = records;
        Ok(Response::new(UserDataExport {
            user: Some(user),
            export_time: Some(to_timestamp(Utc::now())),
            consent_records: consent_records.into_iter().map(exported_consent).collect(),
            recipients: recipients.into_iter().map(exported_recipient).collect(),
            transfer_records: transfer_records
                .into_iter()
                .map(exported_transfer)
                .collect(),
            transfer_records_truncated,
        }))
    }

    async fn watch_user_events(
        &self,
        request: Request<WatchUserEventsRequest>,
    ) -> Result<Response<ResponseStream<UserEvent>>, Status> {
        // The feed names every user of the deployment: services and staff only.
        auth::caller(&request)
            .map_err(status)?
            .require_kind(&[Kind::Service, Kind::Operator, Kind::Auditor])
            .map_err(status)?;
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

impl IdentityServiceApi {
    async fn apply_update(
        &self,
        tenant: Uuid,
        id: Uuid,
        etag_given: &str,
        changes: domain::Changes,
    ) -> Result<User, ApiError> {
        let mut tx = self.pool.begin().await?;
        if changes.roles.is_some() {
            // Role changes in one tenant go one at a time, so two admins demoting each other
            // cannot both pass the last-admin check.
            store::lock_tenant(&mut tx, tenant).await?;
        }
        let row = store::user(&mut tx, tenant, id, true)
            .await?
            .ok_or_else(|| user_not_found(tenant, id))?;
        if row.state == "DELETED" {
            return Err(ApiError::failed_precondition(
                "USER_DELETED",
                "the user was deleted",
            ));
        }
        check_etag(etag_given, &row)?;
        let (Some(sealed), Some(data_key), Some(kek_id)) = (&row.pi, &row.data_key, &row.kek_id)
        else {
            return Err(ApiError::internal("a live user has no sealed PI"));
        };
        let before: Pi = self.keys.open(row.id, sealed, data_key, kek_id)?;
        let mut pi = before.clone();
        if let Some(name) = changes.display_name {
            pi.display_name = name;
        }
        if let Some(email) = changes.email {
            pi.email = email;
        }
        if let Some(phone) = changes.phone_number {
            pi.phone_number = phone;
        }
        let roles = changes.roles.unwrap_or_else(|| row.roles.clone());
        if pi == before && roles == row.roles {
            // Nothing changes: the same answer, no new version, no event.
            return self.to_user(&row, View::WithPi);
        }
        let was_admin = row.roles.iter().any(|r| r == "TENANT_ADMIN");
        let stays_admin = roles.iter().any(|r| r == "TENANT_ADMIN");
        if row.state == "ACTIVE"
            && was_admin
            && !stays_admin
            && !store::has_admin(&mut tx, tenant, Some(id), &["ACTIVE"]).await?
        {
            return Err(ApiError::failed_precondition(
                "LAST_TENANT_ADMIN",
                "the tenant would have no active administrator left",
            ));
        }
        let email_hash = self.keys.email_hash(&domain::email_key(&pi.email));
        store::lock_email(&mut tx, &email_hash).await?;
        let resealed = self.keys.reseal(row.id, data_key, kek_id, &pi)?;
        let row = store::update(&mut tx, id, &resealed, &email_hash, &roles, Utc::now()).await?;
        emit(&mut tx, EventType::Updated, tenant, id).await?;
        tx.commit().await?;
        self.to_user(&row, View::WithPi)
    }

    /// Art. 5.3 in order: consent withdrawn (consent service), then the data key destroyed and
    /// the DELETED event recorded in one transaction; a signed receipt says what went.
    async fn delete(
        &self,
        tenant: Uuid,
        id: Uuid,
        etag_given: &str,
    ) -> Result<DeletionReceipt, ApiError> {
        let mut conn = self.pool.acquire().await?;
        let row = store::user(&mut conn, tenant, id, false)
            .await?
            .ok_or_else(|| user_not_found(tenant, id))?;
        drop(conn);
        if let Some(receipt) = &row.deletion_receipt {
            return stored_receipt(receipt);
        }
        check_etag(etag_given, &row)?;
        let subject = user_name(tenant, id);
        let withdrawal = self.consent.withdraw_all(&subject).await?;
        let mut tx = self.pool.begin().await?;
        let row = store::user(&mut tx, tenant, id, true)
            .await?
            .ok_or_else(|| user_not_found(tenant, id))?;
        if let Some(receipt) = &row.deletion_receipt {
            return stored_receipt(receipt);
        }
        check_etag(etag_given, &row)?;
        // The database keeps microseconds; the receipt states the time exactly as stored.
        let now = Utc::now().trunc_subsecs(6);
        let sequence = emit(&mut tx, EventType::Deleted, tenant, id).await?;
        let mut receipt = DeletionReceipt {
            receipt_id: Uuid::now_v7().to_string(),
            user: subject.clone(),
            tenant: tenant_name(tenant),
            delete_time: Some(to_timestamp(now)),
            erased_data: [
                ErasedData::DisplayName,
                ErasedData::Email,
                ErasedData::PhoneNumber,
                ErasedData::Credentials,
            ]
            .into_iter()
            .map(i32::from)
            .collect(),
            data_key_destroyed: true,
            backup_expire_time: Some(to_timestamp(
                now + chrono::Duration::days(self.settings.backup_retention_days.into()),
            )),
            consent_withdrawal_record: withdrawal,
            deletion_event_sequence: sequence,
            ..DeletionReceipt::default()
        };
        let payload = receipt.encode_to_vec();
        receipt.signature = self.signer.sign_bytes(&payload).to_vec();
        receipt.key_id = self.signer.key_id().to_owned();
        receipt.signed_payload = payload;
        store::erase(&mut tx, id, &receipt.encode_to_vec(), now).await?;
        tx.commit().await?;
        tracing::info!(user = %subject, "user deleted; data key destroyed");
        Ok(receipt)
    }

    async fn sign_in_checked(&self, body: &SignInRequest) -> Result<AccessToken, ApiError> {
        let now = Utc::now();
        let email_hash = self.keys.email_hash(&domain::email_key(&body.email));
        if store::locked_until(&self.pool, &email_hash, now)
            .await?
            .is_some()
        {
            return Err(ApiError::new(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_ATTEMPTS",
                "too many failed sign-ins; try again later",
            ));
        }
        let mut conn = self.pool.acquire().await?;
        let row = store::user_by_email(&mut conn, &email_hash)
            .await?
            .filter(|row| row.state == "ACTIVE");
        drop(conn);
        let password =
            domain::password(&body.password, "password", &mut domain::Problems::default());
        let stored = row.as_ref().and_then(|r| r.password_hash.clone());
        let ok = self.verify_password(password, stored).await;
        let Some(row) = row.filter(|_| ok) else {
            let lock_until = now + seconds(self.settings.sign_in_lockout_secs);
            let max = i32::try_from(self.settings.sign_in_max_failures).unwrap_or(i32::MAX);
            store::record_failure(&self.pool, &email_hash, max, now, lock_until).await?;
            return Err(ApiError::unauthenticated(
                "INVALID_CREDENTIALS",
                "the email or password is wrong",
            ));
        };
        store::clear_failures(&self.pool, &email_hash).await?;
        let subject = user_name(row.tenant_id, row.id);
        let tenant = tenant_name(row.tenant_id);
        // A sign-in is a use of the portal: deemed consent to the terms in force (Art. 5.1, 7).
        self.consent
            .record(&subject, &tenant, Ground::DeemedByUse)
            .await?;
        let mut tx = self.pool.begin().await?;
        emit(&mut tx, EventType::SignedIn, row.tenant_id, row.id).await?;
        tx.commit().await?;
        let ttl = i64::try_from(self.settings.access_token_ttl_secs).unwrap_or(900);
        let (access_token, expires_at) =
            self.signer
                .mint(Kind::User, &subject, Some(&tenant), &row.roles, ttl);
        tracing::info!(user = %subject, "user signed in");
        Ok(AccessToken {
            access_token,
            expire_time: DateTime::from_timestamp(expires_at, 0).map(to_timestamp),
            token_type: "Bearer".to_owned(),
            user: subject,
        })
    }
}

fn stored_receipt(bytes: &[u8]) -> Result<DeletionReceipt, ApiError> {
    DeletionReceipt::decode(bytes)
        .map_err(|_| ApiError::internal("a stored receipt does not decode"))
}

/// The proto name of an enum value of another package (`BASIS_DEEMED_BY_USE`).
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> String {
    E::try_from(value)
        .map(|e| name(&e))
        .unwrap_or_default()
        .to_owned()
}

fn exported_consent(record: portal_proto::consent::v1::ConsentRecord) -> ExportedConsentRecord {
    use portal_proto::consent::v1::{Action, Basis, Scope};
    let receipt = record.receipt.unwrap_or_default();
    ExportedConsentRecord {
        name: record.name,
        action: enum_name(record.action, Action::as_str_name),
        basis: if record.basis == 0 {
            String::new()
        } else {
            enum_name(record.basis, Basis::as_str_name)
        },
        scopes: record
            .scopes
            .iter()
            .map(|s| enum_name(*s, Scope::as_str_name))
            .collect(),
        recipient_entity: record.recipient_entity,
        terms_version: record.terms_version,
        privacy_policy_version: record.privacy_policy_version,
        record_time: record.record_time,
        receipt_payload: receipt.payload,
        receipt_signature: receipt.signature,
        receipt_key_id: receipt.key_id,
    }
}

/// A recipient of the user's data, copied from the transfer service.
fn exported_recipient(recipient: portal_proto::transfer::v1::Recipient) -> ExportedRecipient {
    use portal_proto::transfer::v1::DataCategory;
    use portal_proto::transfer::v1::group_entity::Kind;
    ExportedRecipient {
        entity_kind: enum_name(recipient.entity_kind, Kind::as_str_name),
        data_categories: recipient
            .data_categories
            .iter()
            .map(|c| enum_name(*c, DataCategory::as_str_name))
            .collect(),
        entity: recipient.entity,
        legal_name: recipient.legal_name,
        country_code: recipient.country_code,
        first_time: recipient.first_time,
        last_time: recipient.last_time,
        transfer_count: recipient.transfer_count,
    }
}

/// A transfer decision about the user, copied from the transfer service.
fn exported_transfer(record: portal_proto::transfer::v1::TransferRecord) -> ExportedTransferRecord {
    use portal_proto::transfer::v1::{DataCategory, Decision, DenialReason, LegalBasis, Purpose};
    let optional = |value: i32, name: String| if value == 0 { String::new() } else { name };
    ExportedTransferRecord {
        name: record.name,
        sequence: record.sequence,
        decision: enum_name(record.decision, Decision::as_str_name),
        denial_reason: optional(
            record.denial_reason,
            enum_name(record.denial_reason, DenialReason::as_str_name),
        ),
        legal_basis: optional(
            record.legal_basis,
            enum_name(record.legal_basis, LegalBasis::as_str_name),
        ),
        purpose: enum_name(record.purpose, Purpose::as_str_name),
        data_categories: record
            .data_categories
            .iter()
            .map(|c| enum_name(*c, DataCategory::as_str_name))
            .collect(),
        source_entity: record.source_entity,
        destination_entity: record.destination_entity,
        source_country: record.source_country,
        destination_country: record.destination_country,
        cross_border: record.cross_border,
        record_time: record.record_time,
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
