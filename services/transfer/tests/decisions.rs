//! The decision table of Articles 3 and 4, row by row, over real gRPC with the real consent
//! service.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{Decision, DenialReason, LegalBasis};

#[tokio::test]
async fn a_cross_border_transfer_to_an_affiliate_rests_on_the_cross_border_consent() {
    let mut suite = suite().await;
    let tokyo = register(
        &mut suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await;
    let singapore = register(
        &mut suite,
        entity(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg"),
    )
    .await;
    let subject = user(1);
    let denied = authorize(&mut suite, transfer_request(&subject, &tokyo, &singapore)).await;
    assert_eq!(denied.decision(), Decision::Denied);
    assert_eq!(denied.denial_reason(), DenialReason::NoConsent);
    deemed_consent(&mut suite, &subject).await;
    let allowed = authorize(&mut suite, transfer_request(&subject, &tokyo, &singapore)).await;
    assert_eq!(allowed.decision(), Decision::Allowed);
    assert_eq!(allowed.legal_basis(), LegalBasis::IntraGroupTransfer);
    assert!(allowed.cross_border);
    assert_eq!(allowed.sequence, denied.sequence + 1);
    assert_eq!(allowed.leaf_hash.len(), 32);
}
