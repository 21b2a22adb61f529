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
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::SERVICE;
use crate::domain::{self, DocumentKind};
use crate::store::{self, DocumentRow};

/// Art. 6, stated with every answer about documents in force.
const PRECEDENCE_EXPLANATION: &str = "Article 6: in case of any conflict between the Terms and \
     the Privacy Policy, the Terms take precedence and apply.";

#[derive(Debug, Clone)]
pub struct ConsentServiceApi {
    /// Connections as `consent_app`.
    pool: PgPool,
}

impl ConsentServiceApi {
    pub fn new(context: ServiceContext) -> Self {
        Self { pool: context.pool }
    }
}

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
