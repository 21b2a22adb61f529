//! Transfer records as log leaves: the record is built from the decision, numbered, and its
//! leaf hash is SHA-256(0x00 || canonical encoding without the hash) (RFC 6962 / 9162). The
//! stored leaf data is what is served, so a record reads back exactly as it was hashed.

use chrono::Utc;
use portal_platform::ApiError;
use portal_platform::time::to_timestamp;
use portal_proto::transfer::v1::{Decision, DenialReason, LegalBasis, TransferRecord};
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{Outcome, Transfer, entity_name, record_name};
use crate::store::{EntityRow, StoredRecord};

/// The record of a decision, not yet numbered nor hashed.
pub fn record(
    transfer: &Transfer,
    source: Option<&EntityRow>,
    destination: Option<&EntityRow>,
    outcome: &Outcome,
    request_id: &str,
    requested_by: &str,
) -> TransferRecord {
    let (decision, legal_basis, denial_reason) = match outcome.allowed {
        Ok(basis) => (Decision::Allowed, basis, DenialReason::Unspecified),
        Err(reason) => (Decision::Denied, LegalBasis::Unspecified, reason),
    };
    let source_country = source.map(|e| e.country_code.clone()).unwrap_or_default();
    let destination_country = destination
        .map(|e| e.country_code.clone())
        .unwrap_or_default();
    TransferRecord {
        name: record_name(Uuid::now_v7()),
        sequence: 0,
        decision: decision.into(),
        denial_reason: denial_reason.into(),
        legal_basis: legal_basis.into(),
        cross_border: source.is_some()
            && destination.is_some()
            && source_country != destination_country,
        terms_version: outcome.terms_version,
        consent_record: outcome.consent_record.clone(),
        record_time: None,
        leaf_hash: Vec::new(),
        subject: transfer.subject.clone(),
        data_categories: transfer.categories.iter().map(|c| *c as i32).collect(),
        source_entity: entity_name(transfer.source),
        destination_entity: entity_name(transfer.destination),
        purpose: transfer.purpose.into(),
        legal_reference: transfer.legal_reference.clone(),
        source_region: source.map(|e| e.region.clone()).unwrap_or_default(),
        destination_region: destination.map(|e| e.region.clone()).unwrap_or_default(),
        source_country,
        destination_country,
        request_id: request_id.to_owned(),
        requested_by: requested_by.to_owned(),
        trace_id: portal_platform::telemetry::current_trace_id(),
    }
}

/// Numbers `record` as leaf `sequence` and stamps its time, once the sequence is taken (under
/// the log head's lock, so times follow sequence order): the record as served (with its leaf
/// hash) and the leaf data that was hashed.
pub fn seal(mut record: TransferRecord, sequence: i64) -> (TransferRecord, Vec<u8>) {
    record.sequence = sequence;
    // Microseconds, as the database keeps them, so the stored time and the hashed one agree.
    record.record_time = Some(to_timestamp(chrono::SubsecRound::trunc_subsecs(
        Utc::now(),
        6,
    )));
    record.leaf_hash = Vec::new();
    let leaf_data = record.encode_to_vec();
    record.leaf_hash = leaf_hash(&leaf_data);
    (record, leaf_data)
}

/// RFC 6962 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(leaf_data: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(leaf_data);
    hasher.finalize().to_vec()
}

/// A stored record as served: its leaf data with the stored hash.
pub fn served(stored: &StoredRecord) -> Result<TransferRecord, ApiError> {
    let mut record = TransferRecord::decode(stored.leaf_data.as_slice()).map_err(|_| {
        ApiError::internal(format_args!("record {} does not decode", stored.sequence))
    })?;
    record.leaf_hash = stored.leaf_hash.clone();
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_hash_covers_the_record_without_its_hash() {
        let record = TransferRecord {
            name: "transferRecords/x".into(),
            subject: "tenants/a/users/b".into(),
            ..TransferRecord::default()
        };
        let (sealed, data) = seal(record, 7);
        assert_eq!(sealed.sequence, 7);
        let mut unhashed = sealed.clone();
        unhashed.leaf_hash.clear();
        assert_eq!(unhashed.encode_to_vec(), data);
        let mut expected = vec![0u8];
        expected.extend_from_slice(&data);
        assert_eq!(sealed.leaf_hash, Sha256::digest(&expected).to_vec());
    }
}
