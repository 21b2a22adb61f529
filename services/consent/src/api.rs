//! gRPC handlers of `portal.consent.v1.ConsentService`: decode, authorise, apply the rules of
//! `domain`, read and write through `store`. Methods not yet implemented answer
//! `UNIMPLEMENTED` through the generated default stubs.

use chrono::Utc;
use portal_platform::auth::{self, Kind};
use portal_platform::idempotency::{self, RequestKey};
use portal_platform::time::{from_timestamp, to_timestamp};
use portal_platform::{ApiError, ServiceContext, paging};
use portal_proto::consent::v1::consent_service_server::ConsentService;
use portal_proto::consent::v1::{
    EffectiveDocuments, GetEffectiveDocumentsRequest, ListDocumentVersionsRequest,
    ListDocumentVersionsResponse, PolicyDocument, Precedence, PublishDocumentVersionRequest,
};
use std::sync::Arc;

use portal_platform::auth::Caller;
use portal_platform::auth::keys::{PublishedKeys, TokenSigner};
use portal_platform::config::Deployment;
use portal_proto::consent::v1::consent_decision::Reason;
use portal_proto::consent::v1::{
    Action, Basis, CheckConsentRequest, ConsentDecision, ConsentReceipt, ConsentRecord,
    ConsentState, GetConsentStateRequest, ListConsentRecordsRequest, ListConsentRecordsResponse,
    ListSigningKeysRequest, ListSigningKeysResponse, RecipientConsent, RecordConsentRequest, Scope,
    SigningKey, WithdrawConsentRequest,
};
use prost::Message;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::SERVICE;
use crate::domain::{self, ConsentBasis, DocumentKind, Subject, Withdrawal};
use crate::store::{self, DocumentRow, EntryRow, NewEntry};

/// Art. 6, stated with every answer about documents in force.
const PRECEDENCE_EXPLANATION: &str = "Article 6: in case of any conflict between the Terms and \
     the Privacy Policy, the Terms take precedence and apply.";

#[derive(Debug, Clone)]
pub struct ConsentServiceApi {
    /// Connections as `consent_app`.
    pool: PgPool,
    /// Signs consent receipts.
    signer: Option<Arc<TokenSigner>>,
    /// The operating entity and country, named in receipts as controller and jurisdiction.
    deployment: Arc<Deployment>,
    /// The keys that verify receipts: the current one first, then retired ones.
    published_keys: Arc<PublishedKeys>,
}

impl ConsentServiceApi {
    pub fn new(context: ServiceContext) -> Self {
        let published_keys = PublishedKeys::from_settings(&context.settings);
        Self {
            pool: context.pool,
            signer: context.signer,
            deployment: Arc::new(context.settings.deployment.clone()),
            published_keys: Arc::new(published_keys),
        }
    }

    fn signer(&self) -> Result<Arc<TokenSigner>, ApiError> {
        self.signer.clone().ok_or_else(|| {
            tracing::error!("no auth.signing_key: consent receipts cannot be signed");
            ApiError::unavailable(
                "SIGNING_KEY_MISSING",
                "consent receipts cannot be signed now",
            )
        })
    }
}

/// The only service that records Art. 5.1 consent and full withdrawals (API.md call graph).
const IDENTITY_SERVICE: &str = "services/identity";

/// Every error leaves with the consent service's `ErrorInfo` domain.
fn status(error: ApiError) -> Status {
    error.in_domain(SERVICE.error_domain).into()
}

#[tonic::async_trait]
impl ConsentService for ConsentServiceApi {
    async fn publish_document_version(
        &self,
        request: Request<PublishDocumentVersionRequest>,
    ) -> Result<Response<PolicyDocument>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller.require_kind(&[Kind::Operator]).map_err(status)?;
        let publisher = caller.subject.clone();
        let body = request.get_ref();
        let requested = body.document.clone().unwrap_or_default();
        let document = domain::new_document(&requested, Utc::now()).map_err(status)?;
        let published_by = publisher.clone();
        let key = RequestKey {
            caller: &publisher,
            method: "portal.consent.v1.ConsentService/PublishDocumentVersion",
            request_id: &body.request_id,
        };
        let published = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                store::lock_kind(tx, document.kind).await?;
                if store::exists(tx, document.kind, document.version).await? {
                    return Err(ApiError::already_exists(
                        "DOCUMENT_VERSION_EXISTS",
                        "this version is already published",
                    ));
                }
                domain::follows(&document, store::latest(tx, document.kind).await?)?;
                let row = store::insert(tx, &document, &published_by).await?;
                Ok(to_proto(row))
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(document = %published.name, "document version published");
        Ok(Response::new(published))
    }

    async fn list_document_versions(
        &self,
        request: Request<ListDocumentVersionsRequest>,
    ) -> Result<Response<ListDocumentVersionsResponse>, Status> {
        auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let kind = match body.kind {
            0 => None,
            other => Some(DocumentKind::from_proto(other).ok_or_else(|| {
                status(
                    ApiError::invalid_argument("INVALID_REQUEST", "unknown document kind")
                        .violation("kind", "must be KIND_TERMS, KIND_PRIVACY_POLICY or unset"),
                )
            })?),
        };
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("kind={}", body.kind);
        let after = paging::decode_token(&body.page_token, &fingerprint).map_err(status)?;
        let mut rows = store::list(&self.pool, kind, after, size)
            .await
            .map_err(|e| status(e.into()))?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| paging::encode_token(&store::position(last), &fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListDocumentVersionsResponse {
            documents: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_effective_documents(
        &self,
        request: Request<GetEffectiveDocumentsRequest>,
    ) -> Result<Response<EffectiveDocuments>, Status> {
        auth::caller(&request).map_err(status)?;
        let at = match &request.get_ref().at_time {
            Some(at) => from_timestamp(at, "at_time").map_err(status)?,
            None => Utc::now(),
        };
        let read = |kind| async move {
            let in_force = store::in_force(&self.pool, kind, at).await?;
            let upcoming = store::upcoming(&self.pool, kind, at).await?;
            Ok::<_, sqlx::Error>((in_force.map(to_proto), upcoming.map(to_proto)))
        };
        let (terms, upcoming_terms) = read(DocumentKind::Terms)
            .await
            .map_err(|e| status(e.into()))?;
        let (privacy_policy, upcoming_privacy_policy) = read(DocumentKind::PrivacyPolicy)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(EffectiveDocuments {
            at_time: Some(to_timestamp(at)),
            terms,
            privacy_policy,
            precedence: Precedence::TermsOverPrivacyPolicy.into(),
            precedence_explanation: PRECEDENCE_EXPLANATION.to_owned(),
            upcoming_terms,
            upcoming_privacy_policy,
        }))
    }

    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<ConsentRecord>, Status> {
        let caller = auth::caller(&request).map_err(status)?.clone();
        let body = request.get_ref();
        let consent = domain::new_consent(body, Utc::now()).map_err(status)?;
        may_record(&caller, &consent).map_err(status)?;
        let signer = self.signer().map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: "portal.consent.v1.ConsentService/RecordConsent",
            request_id: &body.request_id,
        };
        let request_id = body.request_id.clone();
        let recorded_by = caller.subject.clone();
        let deployment = Arc::clone(&self.deployment);
        let record = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                let subject = &consent.subject;
                let state = store::lock_subject(tx, &subject.name, &subject.tenant).await?;
                if state.withdrawn {
                    return Err(ApiError::failed_precondition(
                        "SUBJECT_WITHDRAWN",
                        "the subject withdrew all consent by deleting their registration (Art. 5.3)",
                    ));
                }
                let terms = in_force_now(tx, DocumentKind::Terms)
                    .await?
                    .ok_or_else(|| {
                        ApiError::failed_precondition(
                            "NO_TERMS_IN_FORCE",
                            "no terms version is in force: nothing can be consented to",
                        )
                    })?;
                if consent.expected_terms_version != 0 && consent.expected_terms_version != terms {
                    return Err(ApiError::failed_precondition(
                        "TERMS_VERSION_MISMATCH",
                        format!("the terms version in force is {terms}"),
                    ));
                }
                // Consent already in force for this terms version or recipient: nothing to add.
                let existing = if consent.basis.is_article_5_1() {
                    store::given_under_terms(tx, &subject.name, terms, consent.basis.as_str())
                        .await?
                } else {
                    store::explicit_consent(tx, &subject.name, &consent.recipient_entity).await?
                };
                if let Some(id) = existing {
                    let entry = store::entry_by_id(tx, id).await?.ok_or_else(|| {
                        ApiError::internal("a consent in force has no ledger entry")
                    })?;
                    return served(entry);
                }
                let record = ConsentRecord {
                    subject: subject.name.clone(),
                    tenant: subject.tenant.clone(),
                    action: Action::Given.into(),
                    basis: consent.basis.to_proto().into(),
                    scopes: consent.scopes.iter().map(|s| *s as i32).collect(),
                    recipient_entity: consent.recipient_entity.clone(),
                    evidence: consent.evidence.clone(),
                    terms_version: terms,
                    request_id,
                    recorded_by,
                    ..ConsentRecord::default()
                };
                let (record, id, now) =
                    append_entry(tx, &signer, &deployment, record, consent.basis.as_str()).await?;
                let sequence = record.sequence;
                if consent.basis.is_article_5_1() {
                    store::record_given_5_1(tx, &subject.name, terms, id, sequence).await?;
                } else {
                    store::record_given_explicit(
                        tx,
                        &subject.name,
                        &consent.recipient_entity,
                        id,
                        now,
                        terms,
                        sequence,
                    )
                    .await?;
                }
                Ok(record)
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(record = %record.name, "consent recorded");
        Ok(Response::new(record))
    }

    async fn withdraw_consent(
        &self,
        request: Request<WithdrawConsentRequest>,
    ) -> Result<Response<ConsentRecord>, Status> {
        let caller = auth::caller(&request).map_err(status)?.clone();
        let body = request.get_ref();
        let (subject, form) = domain::withdrawal(body).map_err(status)?;
        may_withdraw(&caller, &subject, &form).map_err(status)?;
        let signer = self.signer().map_err(status)?;
        let key = RequestKey {
            caller: &caller.subject,
            method: "portal.consent.v1.ConsentService/WithdrawConsent",
            request_id: &body.request_id,
        };
        let (request_id, reason) = (body.request_id.clone(), body.reason.clone());
        let recorded_by = caller.subject.clone();
        let deployment = Arc::clone(&self.deployment);
        let record = idempotency::once(&self.pool, SERVICE.schema.name, key, body, |tx| {
            Box::pin(async move {
                let state = store::lock_subject(tx, &subject.name, &subject.tenant).await?;
                if state.withdrawn {
                    // A repeated full withdrawal returns the first; nothing else can follow it.
                    return match (form, state.withdraw_record) {
                        (Withdrawal::Full, Some(id)) => {
                            served(store::entry_by_id(tx, id).await?.ok_or_else(|| {
                                ApiError::internal("a full withdrawal has no ledger entry")
                            })?)
                        }
                        _ => Err(ApiError::failed_precondition(
                            "SUBJECT_WITHDRAWN",
                            "the subject withdrew all consent by deleting their registration",
                        )),
                    };
                }
                let terms = in_force_now(tx, DocumentKind::Terms).await?.unwrap_or(0);
                let mut record = ConsentRecord {
                    subject: subject.name.clone(),
                    tenant: subject.tenant.clone(),
                    action: Action::Withdrawn.into(),
                    terms_version: terms,
                    reason,
                    request_id,
                    recorded_by,
                    ..ConsentRecord::default()
                };
                match form {
                    Withdrawal::Explicit { recipient_entity } => {
                        if store::explicit_consent(tx, &subject.name, &recipient_entity)
                            .await?
                            .is_none()
                        {
                            return Err(ApiError::failed_precondition(
                                "NOT_CONSENTED",
                                "no explicit consent for this recipient is in force",
                            ));
                        }
                        record.basis = Basis::Explicit.into();
                        record.scopes = vec![Scope::ThirdPartyDisclosure.into()];
                        record.recipient_entity = recipient_entity.clone();
                        let (record, id, _) =
                            append_entry(tx, &signer, &deployment, record, "explicit").await?;
                        store::record_withdrawn_explicit(
                            tx,
                            &subject.name,
                            &recipient_entity,
                            id,
                            record.sequence,
                        )
                        .await?;
                        Ok(record)
                    }
                    Withdrawal::Full => {
                        record.scopes = vec![
                            Scope::JointUse.into(),
                            Scope::CrossBorderTransfer.into(),
                            Scope::ThirdPartyDisclosure.into(),
                        ];
                        record.full_withdrawal = true;
                        let (record, id, now) =
                            append_entry(tx, &signer, &deployment, record, "").await?;
                        store::record_full_withdrawal(tx, &subject.name, id, now, record.sequence)
                            .await?;
                        Ok(record)
                    }
                    Withdrawal::Article51 => Err(ApiError::failed_precondition(
                        "WITHDRAWAL_REQUIRES_DELETION",
                        "consent under Article 5.1 is withdrawn by deleting the registration \
                         (Art. 5.3)",
                    )),
                }
            })
        })
        .await
        .map_err(status)?;
        tracing::info!(record = %record.name, "consent withdrawn");
        Ok(Response::new(record))
    }

    async fn check_consent(
        &self,
        request: Request<CheckConsentRequest>,
    ) -> Result<Response<ConsentDecision>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        caller
            .require_kind(&[Kind::Service, Kind::Operator, Kind::Auditor])
            .map_err(status)?;
        let check = domain::check(request.get_ref()).map_err(status)?;
        let db = |e: sqlx::Error| status(e.into());
        let recipient = if check.scope == Scope::ThirdPartyDisclosure {
            check.recipient_entity.as_str()
        } else {
            ""
        };
        let inputs = store::decision_inputs(&self.pool, &check.subject.name, recipient)
            .await
            .map_err(db)?;
        let decision = decide(&check, &inputs);
        // Withdrawals are rare: their entry's terms version costs one more read by key.
        let terms_version = match (decision.terms_version, decision.record) {
            (Some(version), _) => version,
            (None, Some(id)) => store::entry_terms_version(&self.pool, id)
                .await
                .map_err(db)?,
            (None, None) => 0,
        };
        Ok(Response::new(ConsentDecision {
            allowed: decision.allowed,
            reason: decision.reason.into(),
            consent_record: decision
                .record
                .map(|id| format!("consentRecords/{id}"))
                .unwrap_or_default(),
            terms_version,
            decide_time: Some(to_timestamp(Utc::now())),
        }))
    }

    async fn get_consent_state(
        &self,
        request: Request<GetConsentStateRequest>,
    ) -> Result<Response<ConsentState>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let subject = domain::subject(&request.get_ref().subject, "subject").map_err(status)?;
        may_read(caller, &subject).map_err(status)?;
        let db = |e: sqlx::Error| status(e.into());
        let state = store::state(&self.pool, &subject.name)
            .await
            .map_err(db)?
            .ok_or_else(|| status(subject_not_found()))?;
        let current = store::in_force(&self.pool, DocumentKind::Terms, Utc::now())
            .await
            .map_err(db)?
            .map_or(0, |row| row.version);
        let explicit = store::explicit_consents(&self.pool, &subject.name)
            .await
            .map_err(db)?;
        let reconsent_pending = state.active && current > state.consented_terms_version;
        let material_change_pending = reconsent_pending
            && store::material_change_since(&self.pool, state.consented_terms_version)
                .await
                .map_err(db)?;
        let mut active_scopes = Vec::new();
        if state.active {
            active_scopes.extend([Scope::JointUse as i32, Scope::CrossBorderTransfer as i32]);
        }
        if !explicit.is_empty() {
            active_scopes.push(Scope::ThirdPartyDisclosure as i32);
        }
        let last_record = match store::entry_by_sequence(&self.pool, state.last_sequence)
            .await
            .map_err(db)?
        {
            Some(entry) => Some(served(entry).map_err(status)?),
            None => None,
        };
        Ok(Response::new(ConsentState {
            subject: state.subject,
            tenant: state.tenant,
            active: state.active,
            consented_terms_version: state.consented_terms_version,
            current_terms_version: current,
            reconsent_pending,
            material_change_pending,
            active_scopes,
            explicit_recipients: explicit
                .into_iter()
                .map(|(recipient_entity, record, time)| RecipientConsent {
                    recipient_entity,
                    consent_record: format!("consentRecords/{record}"),
                    record_time: Some(to_timestamp(time)),
                })
                .collect(),
            withdrawn: state.withdrawn,
            withdraw_time: state.withdraw_time.map(to_timestamp),
            last_record,
        }))
    }

    async fn list_consent_records(
        &self,
        request: Request<ListConsentRecordsRequest>,
    ) -> Result<Response<ListConsentRecordsResponse>, Status> {
        let caller = auth::caller(&request).map_err(status)?;
        let body = request.get_ref();
        let subject = if body.subject.is_empty() {
            // The whole ledger is for staff only.
            caller
                .require_kind(&[Kind::Operator, Kind::Auditor])
                .map_err(|_| {
                    status(
                        ApiError::invalid_argument("INVALID_REQUEST", "subject is required")
                            .violation("subject", "required"),
                    )
                })?;
            None
        } else {
            let subject = domain::subject(&body.subject, "subject").map_err(status)?;
            may_read(caller, &subject).map_err(status)?;
            Some(subject)
        };
        let size = paging::page_size(body.page_size).map_err(status)?;
        let fingerprint = format!("subject={}", body.subject);
        let after: i64 = paging::decode_token(&body.page_token, &fingerprint)
            .map_err(status)?
            .unwrap_or(0);
        let mut rows = store::entries(
            &self.pool,
            subject.as_ref().map(|s| s.name.as_str()),
            after,
            size,
        )
        .await
        .map_err(|e| status(e.into()))?;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|last| paging::encode_token(&last.sequence, &fingerprint))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let consent_records = rows
            .into_iter()
            .map(served)
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        Ok(Response::new(ListConsentRecordsResponse {
            consent_records,
            next_page_token,
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

fn to_proto(row: DocumentRow) -> PolicyDocument {
    let kind = DocumentKind::from_segment(&row.kind);
    PolicyDocument {
        name: format!("documents/{}/versions/{}", row.kind, row.version),
        kind: kind.map_or(0, |k| k.to_proto().into()),
        version: row.version,
        label: row.label,
        uri: row.uri,
        content_sha256: row.content_sha256,
        announce_time: Some(to_timestamp(row.announce_time)),
        effective_time: Some(to_timestamp(row.effective_time)),
        change_summary: row.change_summary,
        material_change: row.material_change,
        publish_time: Some(to_timestamp(row.publish_time)),
        published_by: row.published_by,
    }
}

/// Who may record a consent: identity for Art. 5.1 (registration, activation, sign-in), the
/// subject themself for an explicit third-party consent (Art. 4).
fn may_record(caller: &Caller, consent: &domain::NewConsent) -> Result<(), ApiError> {
    match consent.basis {
        ConsentBasis::DeemedByUse | ConsentBasis::ContractPartyAttestation => {
            if caller.kind == Kind::Service && caller.subject == IDENTITY_SERVICE {
                Ok(())
            } else {
                Err(not_allowed())
            }
        }
        ConsentBasis::Explicit => {
            if caller.kind != Kind::User {
                return Err(not_allowed());
            }
            if caller.tenant.as_deref() != Some(consent.subject.tenant.as_str()) {
                return Err(subject_not_found());
            }
            if caller.subject == consent.subject.name {
                Ok(())
            } else {
                Err(not_allowed())
            }
        }
    }
}

/// Who may read a subject's consent: staff and services; the subject themself; an admin of
/// their tenant. Another tenant's subject does not exist for a user.
fn may_read(caller: &Caller, subject: &Subject) -> Result<(), ApiError> {
    if caller.kind != Kind::User {
        return Ok(());
    }
    if caller.tenant.as_deref() != Some(subject.tenant.as_str()) {
        return Err(subject_not_found());
    }
    if caller.subject == subject.name || caller.has_role("TENANT_ADMIN") {
        Ok(())
    } else {
        Err(not_allowed())
    }
}

fn not_allowed() -> ApiError {
    ApiError::permission_denied("CALLER_NOT_ALLOWED", "this caller may not do this")
}

fn subject_not_found() -> ApiError {
    ApiError::not_found(
        "SUBJECT_NOT_FOUND",
        "no consent is recorded for this subject",
    )
}

/// Appends `record` to the ledger: gives it its id, position, time and the documents in force,
/// signs it, and returns it with its receipt.
async fn append_entry(
    tx: &mut sqlx::PgConnection,
    signer: &TokenSigner,
    deployment: &Deployment,
    mut record: ConsentRecord,
    basis: &str,
) -> Result<(ConsentRecord, uuid::Uuid, chrono::DateTime<Utc>), ApiError> {
    let id = uuid::Uuid::now_v7();
    let now = Utc::now();
    record.name = format!("consentRecords/{id}");
    record.sequence = store::next_sequence(tx).await?;
    record.record_time = Some(to_timestamp(now));
    record.precedence = Precedence::TermsOverPrivacyPolicy.into();
    record.privacy_policy_version = in_force_now(tx, DocumentKind::PrivacyPolicy)
        .await?
        .unwrap_or(0);
    record.receipt = None;
    let payload = record.encode_to_vec();
    let signature = signer.sign_bytes(&payload).to_vec();
    let iso27560 = crate::receipt::iso27560(&record, deployment);
    let iso27560_signature = signer.sign_bytes(&iso27560).to_vec();
    let action = if record.action() == Action::Withdrawn {
        "withdrawn"
    } else {
        "given"
    };
    store::append(
        tx,
        &NewEntry {
            sequence: record.sequence,
            id,
            subject: &record.subject,
            action,
            basis,
            terms_version: record.terms_version,
            recipient_entity: &record.recipient_entity,
            record_time: now,
            payload: &payload,
            signature: &signature,
            key_id: signer.key_id(),
            iso27560: &iso27560,
            iso27560_signature: &iso27560_signature,
        },
    )
    .await?;
    record.receipt = Some(ConsentReceipt {
        payload,
        signature,
        key_id: signer.key_id().to_owned(),
        iso27560,
        iso27560_signature,
    });
    Ok((record, id, now))
}

/// A stored entry as served: the signed record itself (the receipt's payload), with its
/// receipts.
fn served(entry: EntryRow) -> Result<ConsentRecord, ApiError> {
    let mut record = ConsentRecord::decode(entry.payload.as_slice())
        .map_err(|e| ApiError::internal(format_args!("ledger entry {}: {e}", entry.sequence)))?;
    record.receipt = Some(ConsentReceipt {
        payload: entry.payload,
        signature: entry.signature,
        key_id: entry.key_id,
        iso27560: entry.iso27560,
        iso27560_signature: entry.iso27560_signature,
    });
    Ok(record)
}

/// The version of `kind` in force now, read in the caller's transaction.
async fn in_force_now(
    tx: &mut sqlx::PgConnection,
    kind: DocumentKind,
) -> Result<Option<i64>, sqlx::Error> {
    let document = store::in_force(&mut *tx, kind, Utc::now()).await?;
    Ok(document.map(|d| d.version))
}

/// What a decision rests on: allowed or not, why, and the ledger entry relied on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decided {
    allowed: bool,
    reason: Reason,
    record: Option<uuid::Uuid>,
    /// The terms version of `record`, when the state already says it.
    terms_version: Option<i64>,
}

/// The rule table of `docs/consent.md`, in order: a full withdrawal denies everything; with no
/// terms in force nothing is consented; JOINT_USE and CROSS_BORDER_TRANSFER need the Art. 5.1
/// consent; THIRD_PARTY_DISCLOSURE needs explicit consent for that recipient (Art. 4).
fn decide(check: &domain::Check, inputs: &store::DecisionInputs) -> Decided {
    let deny = |reason, record| Decided {
        allowed: false,
        reason,
        record,
        terms_version: None,
    };
    let allow = |reason, record, terms_version| Decided {
        allowed: true,
        reason,
        record,
        terms_version,
    };
    if inputs.withdrawn == Some(true) {
        return deny(Reason::ConsentWithdrawn, inputs.withdraw_record);
    }
    if !inputs.terms_in_force {
        return deny(Reason::NoTermsInForce, None);
    }
    match check.scope {
        Scope::JointUse | Scope::CrossBorderTransfer => {
            if inputs.active == Some(true) {
                allow(
                    Reason::ConsentActive,
                    inputs.basis_record,
                    inputs.consented_terms_version,
                )
            } else {
                deny(Reason::NoConsent, None)
            }
        }
        _ => match (inputs.explicit_record, inputs.explicit_withdrawal) {
            (Some(record), None) => allow(
                Reason::ExplicitConsent,
                Some(record),
                inputs.explicit_terms_version,
            ),
            (Some(_), Some(withdrawal)) => deny(Reason::ExplicitConsentWithdrawn, Some(withdrawal)),
            (None, _) => deny(Reason::NoExplicitConsentForRecipient, None),
        },
    }
}

/// Who may withdraw: the subject themself, one explicit consent at a time; identity alone, for
/// everything, when the user deletes their registration (Art. 5.3).
fn may_withdraw(caller: &Caller, subject: &Subject, form: &Withdrawal) -> Result<(), ApiError> {
    match form {
        Withdrawal::Full => {
            if caller.kind == Kind::Service && caller.subject == IDENTITY_SERVICE {
                Ok(())
            } else {
                Err(not_allowed())
            }
        }
        Withdrawal::Explicit { .. } | Withdrawal::Article51 => {
            if caller.kind != Kind::User {
                return Err(not_allowed());
            }
            if caller.tenant.as_deref() != Some(subject.tenant.as_str()) {
                return Err(subject_not_found());
            }
            if caller.subject == subject.name {
                Ok(())
            } else {
                Err(not_allowed())
            }
        }
    }
}
