//! Calls to the affiliate-transfer service: identity reads where a user's data went, for the
//! user's data export (Art. 2-5).

use std::collections::VecDeque;

use portal_platform::ApiError;
use portal_platform::client::{OnBehalfOf, OutgoingChannel, dependency_failure};
use portal_platform::server::ServiceContext;
use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
use portal_proto::transfer::v1::{
    ListSubjectRecipientsRequest, ListTransferRecordsRequest, Recipient, TransferRecord,
};

/// Largest page the transfer service serves.
const PAGE: i32 = 1000;

#[derive(Debug, Clone)]
pub struct Transfer {
    client: AffiliateTransferServiceClient<OutgoingChannel>,
}

impl Transfer {
    pub fn new(context: &ServiceContext) -> anyhow::Result<Self> {
        let outgoing = &context.outgoing;
        let uri = outgoing.peer_uri(&context.settings, "transfer")?;
        let channel = outgoing.channel(&uri, OnBehalfOf::Service)?;
        Ok(Self {
            client: AffiliateTransferServiceClient::new(channel),
        })
    }

    /// Every entity that received the subject's data, in order of first transfer.
    pub async fn recipients(&self, subject: &str) -> Result<Vec<Recipient>, ApiError> {
        let mut recipients = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ListSubjectRecipientsRequest {
                subject: subject.to_owned(),
                page_size: PAGE,
                page_token,
            };
            let page = self
                .client
                .clone()
                .list_subject_recipients(request)
                .await
                .map_err(|status| dependency_failure("transfer", &status))?
                .into_inner();
            recipients.extend(page.recipients);
            if page.next_page_token.is_empty() {
                return Ok(recipients);
            }
            page_token = page.next_page_token;
        }
    }

    /// The subject's newest `limit` records, newest first, and whether there were more.
    pub async fn newest_records(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<(Vec<TransferRecord>, bool), ApiError> {
        let mut newest = VecDeque::with_capacity(limit + 1);
        let mut more = false;
        let mut page_token = String::new();
        loop {
            let request = ListTransferRecordsRequest {
                subject: subject.to_owned(),
                page_size: PAGE,
                page_token,
                ..ListTransferRecordsRequest::default()
            };
            let page = self
                .client
                .clone()
                .list_transfer_records(request)
                .await
                .map_err(|status| dependency_failure("transfer", &status))?
                .into_inner();
            for record in page.transfer_records {
                newest.push_back(record);
                if newest.len() > limit {
                    newest.pop_front();
                    more = true;
                }
            }
            if page.next_page_token.is_empty() {
                return Ok((newest.into_iter().rev().collect(), more));
            }
            page_token = page.next_page_token;
        }
    }
}
