//! Calls to the consent service. Identity records Art. 5.1 / 5.2 consent, withdraws
//! everything on deletion (Art. 5.3) and reads a user's ledger for export; transfer checks
//! consent before every transfer. Both fail closed: when consent cannot be reached the caller
//! gets `UNAVAILABLE` (`DEPENDENCY_UNAVAILABLE`, metadata `service=consent`) and nothing that
//! needs consent happens.

use portal_platform::ApiError;
use portal_platform::client::{OnBehalfOf, OutgoingChannel, dependency_failure, error_reason};
use portal_platform::server::ServiceContext;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::{
    Attestation as Evidence, Basis, CheckConsentRequest, ConsentDecision, ConsentRecord,
    ListConsentRecordsRequest, RecordConsentRequest, Scope, WithdrawConsentRequest,
};
use portal_proto::identity::v1::Attestation;
use tonic::Code;

/// Largest page the consent service serves.
const PAGE: i32 = 1000;

#[derive(Debug, Clone)]
pub struct Consent {
    client: ConsentServiceClient<OutgoingChannel>,
}

/// The ground of an Art. 5 consent identity records.
#[derive(Debug, Clone, Copy)]
pub enum Ground<'a> {
    /// Art. 5.1: registration through the portal, activation, sign-in.
    DeemedByUse,
    /// Art. 5.2: a contract party's attestation.
    Attested(&'a Attestation),
}

impl Consent {
    pub fn new(context: &ServiceContext) -> anyhow::Result<Self> {
        let outgoing = &context.outgoing;
        let uri = outgoing.peer_uri(&context.settings, "consent")?;
        let channel = outgoing.channel(&uri, OnBehalfOf::Service)?;
        Ok(Self {
            client: ConsentServiceClient::new(channel),
        })
    }

    /// Records the user's consent to the terms in force; returns the ledger entry's name.
    /// Idempotent by nature in the consent service (one deemed consent per terms version).
    pub async fn record(
        &self,
        subject: &str,
        tenant: &str,
        ground: Ground<'_>,
    ) -> Result<String, ApiError> {
        let (basis, evidence) = match ground {
            Ground::DeemedByUse => (Basis::DeemedByUse, None),
            Ground::Attested(given) => (
                Basis::ContractPartyAttestation,
                Some(Evidence {
                    attested_by: given.attested_by.clone(),
                    attest_time: given.attest_time,
                    evidence_uri: given.evidence_uri.clone(),
                }),
            ),
        };
        let request = RecordConsentRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            subject: subject.to_owned(),
            tenant: tenant.to_owned(),
            basis: basis.into(),
            scopes: Vec::new(),
            recipient_entity: String::new(),
            evidence,
            expected_terms_version: 0,
        };
        let record = self
            .client
            .clone()
            .record_consent(request)
            .await
            .map_err(failure)?;
        Ok(record.into_inner().name)
    }

    /// Records the full withdrawal of the user's consent (Art. 5.3); returns the entry's name.
    /// Repeats return the same entry.
    pub async fn withdraw_all(&self, subject: &str) -> Result<String, ApiError> {
        let request = WithdrawConsentRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            subject: subject.to_owned(),
            scopes: vec![
                Scope::JointUse.into(),
                Scope::CrossBorderTransfer.into(),
                Scope::ThirdPartyDisclosure.into(),
            ],
            recipient_entity: String::new(),
            reason: "user registration deleted (Art. 5.3)".to_owned(),
        };
        let record = self
            .client
            .clone()
            .withdraw_consent(request)
            .await
            .map_err(failure)?;
        Ok(record.into_inner().name)
    }

    /// Whether consent covers `scope` for `subject` now (transfer, before every transfer),
    /// answered within `deadline` or not at all.
    pub async fn check(
        &self,
        subject: &str,
        scope: Scope,
        recipient_entity: &str,
        destination_country: &str,
        deadline: std::time::Duration,
    ) -> Result<ConsentDecision, ApiError> {
        let mut request = tonic::Request::new(CheckConsentRequest {
            subject: subject.to_owned(),
            scope: scope.into(),
            recipient_entity: recipient_entity.to_owned(),
            destination_country: destination_country.to_owned(),
        });
        request.set_timeout(deadline);
        self.client
            .clone()
            .check_consent(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(failure)
    }

    /// The user's whole ledger, oldest first (empty if they have none).
    pub async fn records(&self, subject: &str) -> Result<Vec<ConsentRecord>, ApiError> {
        let mut records = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListConsentRecordsRequest {
                subject: subject.to_owned(),
                page_size: PAGE,
                page_token,
            };
            let page = match self.client.clone().list_consent_records(request).await {
                Ok(page) => page.into_inner(),
                Err(status) if status.code() == Code::NotFound => return Ok(records),
                Err(status) => return Err(failure(status)),
            };
            records.extend(page.consent_records);
            if page.next_page_token.is_empty() {
                return Ok(records);
            }
            page_token = page.next_page_token;
        }
    }
}

/// What a failed consent call means to identity's caller.
fn failure(status: tonic::Status) -> ApiError {
    if status.code() == Code::FailedPrecondition && error_reason(&status) == "NO_TERMS_IN_FORCE" {
        return ApiError::failed_precondition(
            "NO_TERMS_IN_FORCE",
            "no terms version is in force, so nothing can be consented to",
        );
    }
    dependency_failure("consent", &status)
}
