//! gRPC handlers of `portal.transfer.v1.AffiliateTransferService`: the entity registry, the
//! decision of every transfer (Art. 3, 4) with its record appended to the log as a Merkle leaf,
//! the queries over the log, and its checkpoints and proofs.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use portal_clients::consent::Consent;
use portal_clients::identity::Identity;
use portal_platform::auth::keys::PublishedKeys;
use portal_platform::auth::{self, Kind};
use portal_platform::config::TransferSettings;
use portal_platform::events::ResponseStream;
use portal_platform::idempotency::{self, RequestKey};
use portal_platform::time::{from_timestamp, to_timestamp};
use portal_platform::{ApiError, ServiceContext, paging};
use portal_proto::consent::v1::Scope;
use portal_proto::transfer::v1::affiliate_transfer_service_server::AffiliateTransferService;
use portal_proto::transfer::v1::group_entity::Kind as EntityKind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, Checkpoint, ConsistencyProof, CreateEntityRequest, Decision,
    ExportTransferRecordsRequest, GetCheckpointRequest, GetConsistencyProofRequest,
    GetEntityRequest, GetInclusionProofRequest, GetTransferRecordRequest, GroupEntity,
    InclusionProof, LegalBasis, ListEntitiesRequest, ListEntitiesResponse, ListSigningKeysRequest,
    ListSigningKeysResponse, ListSubjectRecipientsRequest, ListSubjectRecipientsResponse,
    ListTransferRecordsRequest, ListTransferRecordsResponse, Recipient, SigningKey, TransferRecord,
    UpdateEntityRequest,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, EntityFacts, Outcome, Transfer};
use crate::sequencer::{self, Pending, Sequencer};
use crate::store::{self, EntityRow, RecordFilter};
use crate::{SERVICE, leaf, tree, workers};

/// Records per page of an export stream read from the database.
const EXPORT_BATCH: i64 = 500;

#[derive(Debug, Clone)]
pub struct TransferServiceApi {
    /// Connections as `transfer_app`.
    pool: PgPool,
    settings: Arc<TransferSettings>,
    consent: Consent,
    published_keys: Arc<PublishedKeys>,
    /// Appends decided records in batches (group commit).
    sequencer: Sequencer,
}

impl TransferServiceApi {
    /// Also starts the consumer of identity's user events (deleted subjects).
    pub fn new(context: ServiceContext) -> anyhow::Result<Self> {
        workers::start(
            context.clone(),
            Identity::new(&context)?,
            context.signer.clone(),
            origin(&context),
        );
        Ok(Self {
            consent: Consent::new(&context)?,
            sequencer: Sequencer::start(context.pool.clone()),
            published_keys: Arc::new(PublishedKeys::from_settings(&context.settings)),
            settings: Arc::new(context.settings.transfer.clone()),
            pool: context.pool,
        })
    }

    /// CheckConsent within the configured deadline.
    async fn check(
        &self,
        subject: &str,
        scope: Scope,
        recipient: &str,
        country: &str,
    ) -> Result<portal_proto::consent::v1::ConsentDecision, ApiError> {
        let deadline = Duration::from_millis(self.settings.consent_deadline_ms);
        self.consent
            .check(subject, scope, recipient, country, deadline)
            .await
    }

    fn to_entity(&self, row: &EntityRow) -> GroupEntity {
        let kind = domain::kind_from_name(&row.kind);
        let review_due = (kind == EntityKind::Subcontractor)
            .then(|| domain::review_due(row.last_review_time, self.settings.review_validity_days))
            .flatten();
        GroupEntity {
            name: domain::entity_name(row.id),
            kind: kind.into(),
            legal_name: row.legal_name.clone(),
            country_code: row.country_code.clone(),
            region: row.region.clone(),
            security_level: row.security_level,
            last_review_time: row.last_review_time.map(to_timestamp),
            create_time: Some(to_timestamp(row.create_time)),
            update_time: Some(to_timestamp(row.update_time)),
            etag: format!("\"{}\"", row.revision),
            review_due_time: review_due.map(to_timestamp),
        }
    }

    /// The facts of Art. 3 and 4 for this transfer, in the order of the contract's rules.
    async fn decide(
        &self,
        transfer: &Transfer,
        source: Option<&EntityRow>,
        destination: Option<&EntityRow>,
    ) -> Result<Outcome, ApiError> {
        use portal_proto::transfer::v1::DenialReason;
        // Rule 1: both entities registered.
        let (Some(source), Some(destination)) = (source, destination) else {
            return Ok(Outcome::denied(DenialReason::UnknownEntity));
        };
        // Rule 2: a deleted subject, as identity's feed reported it or consent knows it (the
        // full withdrawal is recorded before DeleteUser returns: no window).
        if store::is_deleted_subject(&self.pool, &transfer.subject).await? {
            return Ok(Outcome::denied(DenialReason::SubjectDeleted));
        }
        let subject = transfer.subject.as_str();
        let joint_use = self.check(subject, Scope::JointUse, "", "").await?;
        if let Some(deleted) = domain::deleted(&joint_use) {
            return Ok(deleted);
        }
        let cross_border = source.country_code != destination.country_code;
        let abroad = async {
            if cross_border {
                self.check(
                    subject,
                    Scope::CrossBorderTransfer,
                    "",
                    &destination.country_code,
                )
                .await
                .map(Some)
            } else {
                Ok(None)
            }
        };
        match domain::kind_from_name(&destination.kind) {
            // Rule 3: subcontractors (Art. 3.3).
            EntityKind::Subcontractor => {
                let due = domain::review_due(
                    destination.last_review_time,
                    self.settings.review_validity_days,
                );
                let refusal = domain::subcontractor_refusal(
                    destination.security_level,
                    due,
                    self.settings.baseline_security_level,
                    Utc::now(),
                );
                if let Some(reason) = refusal {
                    return Ok(Outcome::denied(reason));
                }
                let abroad = abroad.await?;
                Ok(domain::within_group(
                    LegalBasis::Subcontracting,
                    &joint_use,
                    abroad.as_ref(),
                ))
            }
            // Rule 4: third parties (Art. 4).
            EntityKind::ThirdParty => {
                if !transfer.legal_reference.is_empty() {
                    return Ok(Outcome {
                        allowed: Ok(LegalBasis::LegalRequirement),
                        consent_record: String::new(),
                        terms_version: 0,
                    });
                }
                let recipient = domain::entity_name(destination.id);
                let explicit = self
                    .check(subject, Scope::ThirdPartyDisclosure, &recipient, "")
                    .await?;
                Ok(domain::third_party(&explicit))
            }
            // Rule 5: the group (Art. 3.1, 3.2).
            _ => {
                let abroad = abroad.await?;
                Ok(domain::within_group(
                    domain::group_basis(cross_border),
                    &joint_use,
                    abroad.as_ref(),
                ))
            }
        }
    }

    /// Reads a page or an export batch of records as served.
    async fn records(
        &self,
        filter: &RecordFilter,
        from: i64,
        until: Option<i64>,
        limit: i64,
    ) -> Result<Vec<TransferRecord>, ApiError> {
        store::records(&self.pool, filter, from, until, limit)
            .await?
            .into_iter()
            .map(|stored| leaf::served(&stored))
            .collect()
    }
}

/// The log's identity in its checkpoints: one per deployment.
fn origin(context: &ServiceContext) -> String {
    format!("portal-transfer/{}", context.settings.deployment.region)
}

/// The size of the tree a proof is asked for: as given, or 0 for the latest checkpoint's;
/// beyond the log is OUT_OF_RANGE.
async fn tree_size(pool: &PgPool, given: i64, field: &str) -> Result<i64, ApiError> {
    if given < 0 {
        return Err(domain::invalid(field, "must not be negative"));
    }
    let size = if given == 0 {
        store::latest_checkpoint(pool)
            .await?
            .map_or(0, |checkpoint| checkpoint.tree_size)
    } else {
        given
    };
    if size > store::log_size(pool).await? {
        return Err(ApiError::new(
            tonic::Code::OutOfRange,
            "TREE_SIZE_TOO_LARGE",
            "the log is not that large (yet)",
        ));
    }
    Ok(size)
}

fn status(error: ApiError) -> Status {
    error.in_domain(SERVICE.error_domain).into()
}

/// Staff and services read the registry and the log; users have no access (their view is
/// identity's ExportUserData).
const READERS: &[Kind] = &[Kind::Operator, Kind::Auditor, Kind::Service];

fn entity_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("ENTITY_NOT_FOUND", "no such entity")
        .resource("portal.transfer.v1.GroupEntity", &domain::entity_name(id))
}

/// The filter fields shared by ListTransferRecords and ExportTransferRecords.
fn record_filter(
    subject: &str,
    region: &str,
    country: &str,
    entity: &str,
    decision: i32,
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<RecordFilter, ApiError> {
    let mut problems = domain::Problems::default();
    if !subject.is_empty() && portal_platform::names::user_ids(subject).is_none() {
        problems.add("subject", "must be tenants/{tenant}/users/{user}");
    }
    if !region.is_empty() && !portal_platform::names::is_region(region) {
        problems.add("region", "must be 2-16 characters of [a-z0-9-]");
    }
    if !country.is_empty() && !portal_platform::names::is_country(country) {
        problems.add("country", "must be an ISO 3166-1 alpha-2 code, upper case");
    }
    let entity = match entity {
        "" => None,
        name => match domain::entity_id(name, "entity") {
            Ok(id) => Some(id),
            Err(_) => {
                problems.add("entity", "must be entities/{entity}");
                None
            }
        },
    };
    let allowed = match Decision::try_from(decision) {
        Ok(Decision::Unspecified) => None,
        Ok(Decision::Allowed) => Some(true),
        Ok(Decision::Denied) => Some(false),
        Err(_) => {
            problems.add("decision", "unknown decision");
            None
        }
    };
    let time =
        |t: Option<&prost_types::Timestamp>, field: &str, problems: &mut domain::Problems| {
            t.and_then(|t| match from_timestamp(t, field) {
                Ok(time) => Some(time),
                Err(_) => {
                    problems.add(field, "must be a valid time");
                    None
                }
            })
        };
    let start_time = time(start, "start_time", &mut problems);
    let end_time = time(end, "end_time", &mut problems);
    if let (Some(start), Some(end)) = (start_time, end_time)
        && end <= start
    {
        problems.add("end_time", "must be after start_time");
    }
    problems.into_result(RecordFilter {
        subject: (!subject.is_empty()).then(|| subject.to_owned()),
        region: (!region.is_empty()).then(|| region.to_owned()),
        country: (!country.is_empty()).then(|| country.to_owned()),
        entity,
        allowed,
        start_time,
        end_time,
    })
}

#[tonic::async_trait]
impl AffiliateTransferService for TransferServiceApi {
    async fn create_entity(
        &self,
        request: Request<CreateEntityRequest>,
    ) -> Result<Response<GroupEntity>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Operator]).map_err(status)?;
        let body = request.get_ref();
        let given = body.entity.clone().unwrap_or_default();
        let facts = domain::entity(&given, Utc::now()).map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: "portal.transfer.v1.AffiliateTransferService/CreateEntity",
            request_id: &body.request_id,
        };
        let this = self.clone();
        let created = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                let row = store::insert_entity(tx, Uuid::now_v7(), &facts, Utc::now()).await?;
                Ok(this.to_entity(&row))
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(entity = %created.name, "entity registered");
        Ok(Response::new(created))
    }

    async fn get_entity(
        &self,
        request: Request<GetEntityRequest>,
    ) -> Result<Response<GroupEntity>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let id = domain::entity_id(&request.get_ref().name, "name").map_err(status)?;
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let row = store::entity(&mut conn, id, false)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(entity_not_found(id)))?;
        Ok(Response::new(self.to_entity(&row)))
    }

    async fn list_entities(
        &self,
        request: Request<ListEntitiesRequest>,
    ) -> Result<Response<ListEntitiesResponse>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let body = request.get_ref();
        let kind = match EntityKind::try_from(body.kind) {
            Ok(EntityKind::Unspecified) => None,
            Ok(kind) => Some(domain::kind_name(kind)),
            Err(_) => return Err(status(domain::invalid("kind", "unknown kind"))),
        };
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("entities|{}", body.kind);
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
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows = store::list_entities(&self.pool, kind, after, limit)
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
        Ok(Response::new(ListEntitiesResponse {
            entities: rows.iter().map(|r| self.to_entity(r)).collect(),
            next_page_token,
        }))
    }

    async fn update_entity(
        &self,
        request: Request<UpdateEntityRequest>,
    ) -> Result<Response<GroupEntity>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Operator]).map_err(status)?;
        let body = request.get_ref();
        let given = body.entity.clone().unwrap_or_default();
        let id = domain::entity_id(&given.name, "entity.name").map_err(status)?;
        let paths = crate::update::paths(&given, body.update_mask.as_ref()).map_err(status)?;
        let mut tx = self.pool.begin().await.map_err(|e| status(e.into()))?;
        let row = store::entity(&mut tx, id, true)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| status(entity_not_found(id)))?;
        if !given.etag.is_empty() && given.etag != format!("\"{}\"", row.revision) {
            return Err(status(ApiError::aborted(
                "ETAG_MISMATCH",
                "the entity changed since it was read; read it again",
            )));
        }
        let merged = crate::update::apply(&self.to_entity(&row), &given, &paths);
        let facts: EntityFacts = domain::entity(&merged, Utc::now()).map_err(status)?;
        let row = store::update_entity(&mut tx, id, &facts, Utc::now())
            .await
            .map_err(|e| status(e.into()))?;
        tx.commit().await.map_err(|e| status(e.into()))?;
        tracing::info!(entity = %domain::entity_name(id), "entity updated");
        Ok(Response::new(self.to_entity(&row)))
    }

    async fn authorize_transfer(
        &self,
        request: Request<AuthorizeTransferRequest>,
    ) -> Result<Response<TransferRecord>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Service]).map_err(status)?;
        let body = request.get_ref();
        let transfer = domain::transfer(body).map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: sequencer::METHOD,
            request_id: &body.request_id,
        };
        // A retry returns the record first appended, even while consent is unreachable.
        if let Some(stored) = idempotency::replay(&self.pool, SERVICE.schema.name, &key, body)
            .await
            .map_err(status)?
        {
            return Ok(Response::new(stored));
        }
        let (source, destination) = {
            let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
            let source = store::entity(&mut conn, transfer.source, false)
                .await
                .map_err(|e| status(e.into()))?;
            let destination = store::entity(&mut conn, transfer.destination, false)
                .await
                .map_err(|e| status(e.into()))?;
            (source, destination)
        };
        // Fail closed: if consent cannot answer, nothing is appended.
        let outcome = self
            .decide(&transfer, source.as_ref(), destination.as_ref())
            .await
            .map_err(status)?;
        let record = leaf::record(
            &transfer,
            source.as_ref(),
            destination.as_ref(),
            &outcome,
            &body.request_id,
            &caller.subject,
        );
        let pending = Pending::new(
            caller.subject.clone(),
            body.clone(),
            record,
            outcome.allowed.is_ok(),
            transfer.source,
            transfer.destination,
        );
        // Answered once the batch holding it is committed (group commit).
        let appended = self.sequencer.append(pending).await.map_err(status)?;
        tracing::info!(
            record = %appended.name,
            sequence = appended.sequence,
            decision = appended.decision().as_str_name(),
            "transfer decided"
        );
        Ok(Response::new(appended))
    }

    async fn get_transfer_record(
        &self,
        request: Request<GetTransferRecordRequest>,
    ) -> Result<Response<TransferRecord>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let id = domain::record_id(&request.get_ref().name, "name").map_err(status)?;
        let stored = store::record(&self.pool, id)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| {
                status(
                    ApiError::not_found("TRANSFER_RECORD_NOT_FOUND", "no such transfer record")
                        .resource(
                            "portal.transfer.v1.TransferRecord",
                            &domain::record_name(id),
                        ),
                )
            })?;
        Ok(Response::new(leaf::served(&stored).map_err(status)?))
    }

    async fn list_transfer_records(
        &self,
        request: Request<ListTransferRecordsRequest>,
    ) -> Result<Response<ListTransferRecordsResponse>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let body = request.get_ref();
        let filter = record_filter(
            &body.subject,
            &body.region,
            &body.country,
            &body.entity,
            body.decision,
            body.start_time.as_ref(),
            body.end_time.as_ref(),
        )
        .map_err(status)?;
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("records|{filter:?}");
        let from: i64 = paging::decode_token(&body.page_token, &fingerprint)
            .map_err(status)?
            .unwrap_or(0);
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut records = self
            .records(&filter, from, None, limit)
            .await
            .map_err(status)?;
        let next_page_token = if records.len() > size {
            records.truncate(size);
            records
                .last()
                .map(|last| paging::encode_token(&(last.sequence + 1), &fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTransferRecordsResponse {
            transfer_records: records,
            next_page_token,
        }))
    }

    async fn list_subject_recipients(
        &self,
        request: Request<ListSubjectRecipientsRequest>,
    ) -> Result<Response<ListSubjectRecipientsResponse>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let body = request.get_ref();
        if portal_platform::names::user_ids(&body.subject).is_none() {
            return Err(status(domain::invalid(
                "subject",
                "required: tenants/{tenant}/users/{user}",
            )));
        }
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("recipients|{}", body.subject);
        let offset: i64 = paging::decode_token(&body.page_token, &fingerprint)
            .map_err(status)?
            .unwrap_or(0);
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let mut rows = store::recipients(&self.pool, &body.subject, offset, limit)
            .await
            .map_err(|e| status(e.into()))?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            let next = offset + i64::try_from(size).unwrap_or(i64::MAX);
            paging::encode_token(&next, &fingerprint)
        } else {
            String::new()
        };
        let recipients = rows
            .into_iter()
            .map(|row| Recipient {
                entity: domain::entity_name(row.entity),
                first_time: Some(to_timestamp(row.first_time)),
                last_time: Some(to_timestamp(row.last_time)),
                data_categories: row.data_categories,
                transfer_count: row.transfer_count,
                entity_kind: row
                    .kind
                    .as_deref()
                    .map_or(EntityKind::Unspecified, domain::kind_from_name)
                    .into(),
                legal_name: row.legal_name.unwrap_or_default(),
                country_code: row.country_code,
                region: row.region,
            })
            .collect();
        Ok(Response::new(ListSubjectRecipientsResponse {
            recipients,
            next_page_token,
        }))
    }

    async fn export_transfer_records(
        &self,
        request: Request<ExportTransferRecordsRequest>,
    ) -> Result<Response<ResponseStream<TransferRecord>>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(&[Kind::Operator, Kind::Auditor])
            .map_err(status)?;
        let body = request.get_ref();
        let filter = record_filter(
            &body.subject,
            &body.region,
            &body.country,
            &body.entity,
            body.decision,
            body.start_time.as_ref(),
            body.end_time.as_ref(),
        )
        .map_err(status)?;
        if body.min_sequence < 0 {
            return Err(status(domain::invalid(
                "min_sequence",
                "must not be negative",
            )));
        }
        // Up to the last record appended when the call started.
        let last = store::log_size(&self.pool)
            .await
            .map_err(|e| status(e.into()))?
            - 1;
        let this = self.clone();
        let mut from = body.min_sequence;
        let stream = async_stream::try_stream! {
            while from <= last {
                let batch = this
                    .records(&filter, from, Some(last), EXPORT_BATCH)
                    .await
                    .map_err(status)?;
                let Some(end) = batch.last().map(|r| r.sequence) else {
                    break;
                };
                for record in batch {
                    yield record;
                }
                from = end + 1;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<Checkpoint>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let latest = store::latest_checkpoint(&self.pool)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| {
                status(ApiError::unavailable(
                    "CHECKPOINT_PENDING",
                    "the first checkpoint is being signed; retry",
                ))
            })?;
        Ok(Response::new(tree::to_proto(&latest)))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<InclusionProof>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let body = request.get_ref();
        let size = tree_size(&self.pool, body.tree_size, "tree_size")
            .await
            .map_err(status)?;
        if body.sequence < 0 || body.sequence >= size {
            return Err(status(domain::invalid(
                "sequence",
                "must be at least 0 and below tree_size",
            )));
        }
        let (index, n) = (
            u64::try_from(body.sequence).unwrap_or_default(),
            u64::try_from(size).unwrap_or_default(),
        );
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        // The leaf and its path, from one read of the stored nodes.
        let (leaf, hashes) = tree::with_nodes(&mut conn, |node| {
            (
                node((0, index)),
                portal_merkle::inclusion_proof(index, n, node),
            )
        })
        .await
        .map_err(status)?;
        let record = store::record_at(&self.pool, body.sequence)
            .await
            .map_err(|e| status(e.into()))?
            .map(domain::record_name)
            .unwrap_or_default();
        Ok(Response::new(InclusionProof {
            sequence: body.sequence,
            tree_size: size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            leaf_hash: leaf.to_vec(),
            transfer_record: record,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProof>, Status> {
        auth::caller(&request)
            .map_err(status)?
            .require_kind(READERS)
            .map_err(status)?;
        let body = request.get_ref();
        let second = tree_size(&self.pool, body.second_size, "second_size")
            .await
            .map_err(status)?;
        if body.first_size < 1 || body.first_size > second {
            return Err(status(domain::invalid(
                "first_size",
                "must be at least 1 and at most second_size",
            )));
        }
        let (m, n) = (
            u64::try_from(body.first_size).unwrap_or_default(),
            u64::try_from(second).unwrap_or_default(),
        );
        let mut conn = self.pool.acquire().await.map_err(|e| status(e.into()))?;
        let hashes = tree::with_nodes(&mut conn, |node| {
            portal_merkle::consistency_proof(m, n, node)
        })
        .await
        .map_err(status)?;
        Ok(Response::new(ConsistencyProof {
            first_size: body.first_size,
            second_size: second,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
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
}
