//! The log as a Merkle tree over real gRPC and PostgreSQL: signed checkpoints, inclusion
//! proofs for every record and consistency proofs between sizes, all checked with the RFC 9162
//! verification algorithms against hashes recomputed from the records themselves.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::*;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portal_merkle::Hash;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    ListSigningKeysRequest, ListTransferRecordsRequest, TransferRecord,
};
use prost::Message;
use tonic::Code;

/// The leaf hash recomputed from the record, not taken from it.
fn recomputed(record: &TransferRecord) -> Hash {
    let mut unhashed = record.clone();
    unhashed.leaf_hash.clear();
    portal_merkle::leaf_hash(&unhashed.encode_to_vec())
}

fn hash(bytes: &[u8]) -> Hash {
    bytes.try_into().unwrap()
}

async fn checkpoint_of_size(suite: &mut Suite, size: i64) -> Checkpoint {
    let transfer = suite.transfer.clone();
    portal_testkit::eventually(Duration::from_secs(10), "the checkpoint", || {
        let mut transfer = transfer.clone();
        async move {
            let checkpoint = transfer
                .get_checkpoint(as_auditor(GetCheckpointRequest {}))
                .await
                .ok()?
                .into_inner();
            (checkpoint.tree_size == size).then_some(checkpoint)
        }
    })
    .await
    .unwrap()
}

async fn verifying_key(suite: &mut Suite, key_id: &str) -> VerifyingKey {
    let keys = suite
        .transfer
        .list_signing_keys(as_auditor(ListSigningKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .signing_keys;
    let key = keys.iter().find(|k| k.key_id == key_id).unwrap();
    VerifyingKey::from_bytes(&key.public_key.as_slice().try_into().unwrap()).unwrap()
}

fn checkpoint_verifies(checkpoint: &Checkpoint, key: &VerifyingKey) -> bool {
    let signed = format!(
        "{}\n{}\n{}\n{}\n",
        checkpoint.origin,
        checkpoint.tree_size,
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &checkpoint.root_hash
        ),
        checkpoint.time.unwrap().seconds
    );
    let Ok(signature) = Signature::from_slice(&checkpoint.signature) else {
        return false;
    };
    key.verify(signed.as_bytes(), &signature).is_ok()
}

#[tokio::test]
async fn the_empty_log_has_a_signed_checkpoint_of_size_zero() {
    let mut suite = suite().await;
    let checkpoint = checkpoint_of_size(&mut suite, 0).await;
    assert_eq!(hash(&checkpoint.root_hash), portal_merkle::empty_root());
    assert_eq!(checkpoint.origin, "portal-transfer/jp");
    assert_eq!(checkpoint.time.unwrap().nanos, 0);
    let key = verifying_key(&mut suite, &checkpoint.key_id).await;
    assert!(checkpoint_verifies(&checkpoint, &key));
    let mut forged = checkpoint.clone();
    forged.tree_size = 1;
    assert!(!checkpoint_verifies(&forged, &key));
}

#[tokio::test]
async fn every_record_is_proven_in_the_signed_tree_and_older_trees_are_its_prefixes() {
    let mut suite = suite().await;
    let tokyo = register(
        &mut suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await;
    let osaka = register(
        &mut suite,
        entity(Kind::Branch, "Example Osaka Branch", "JP", "jp"),
    )
    .await;
    for n in 0..13 {
        let subject = user(n);
        if n % 3 == 0 {
            deemed_consent(&mut suite, &subject).await;
        }
        authorize(&mut suite, transfer_request(&subject, &tokyo, &osaka)).await;
    }
    let checkpoint = checkpoint_of_size(&mut suite, 13).await;
    let key = verifying_key(&mut suite, &checkpoint.key_id).await;
    assert!(checkpoint_verifies(&checkpoint, &key));

    let records = suite
        .transfer
        .list_transfer_records(as_auditor(ListTransferRecordsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .transfer_records;
    let leaves: Vec<Hash> = records.iter().map(recomputed).collect();
    for (record, leaf) in records.iter().zip(&leaves) {
        assert_eq!(
            &hash(&record.leaf_hash),
            leaf,
            "stated and recomputed leaf hashes agree"
        );
    }
    let head = hash(&checkpoint.root_hash);
    assert_eq!(
        portal_merkle::tree_root(&leaves),
        head,
        "the signed root is the tree of the records"
    );

    for record in &records {
        let proof = suite
            .transfer
            .get_inclusion_proof(as_auditor(GetInclusionProofRequest {
                sequence: record.sequence,
                tree_size: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.tree_size, 13);
        assert_eq!(proof.transfer_record, record.name);
        let path: Vec<Hash> = proof.hashes.iter().map(|h| hash(h)).collect();
        let index = record.sequence as u64;
        assert!(portal_merkle::verify_inclusion(
            index,
            13,
            &leaves[record.sequence as usize],
            &path,
            &head
        ));
        // The proof does not fit another record.
        let other = leaves[(record.sequence as usize + 1) % 13];
        assert!(!portal_merkle::verify_inclusion(
            index, 13, &other, &path, &head
        ));
    }

    for first in 1..=13usize {
        let proof = suite
            .transfer
            .get_consistency_proof(as_auditor(GetConsistencyProofRequest {
                first_size: first as i64,
                second_size: 13,
            }))
            .await
            .unwrap()
            .into_inner();
        let path: Vec<Hash> = proof.hashes.iter().map(|h| hash(h)).collect();
        assert!(portal_merkle::verify_consistency(
            first as u64,
            13,
            &portal_merkle::tree_root(&leaves[..first]),
            &head,
            &path
        ));
    }
}

#[tokio::test]
async fn proofs_outside_the_log_are_refused() {
    let mut suite = suite().await;
    let tokyo = register(
        &mut suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await;
    let osaka = register(
        &mut suite,
        entity(Kind::Branch, "Example Osaka Branch", "JP", "jp"),
    )
    .await;
    for n in 0..3 {
        authorize(&mut suite, transfer_request(&user(n), &tokyo, &osaka)).await;
    }
    let inclusion = |sequence, tree_size| GetInclusionProofRequest {
        sequence,
        tree_size,
    };
    let status = assert_error(
        suite
            .transfer
            .get_inclusion_proof(as_auditor(inclusion(3, 3)))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["sequence"]);
    assert_error(
        suite
            .transfer
            .get_inclusion_proof(as_auditor(inclusion(0, 4)))
            .await,
        Code::OutOfRange,
        "TREE_SIZE_TOO_LARGE",
    );
    let consistency = |first_size, second_size| GetConsistencyProofRequest {
        first_size,
        second_size,
    };
    let status = assert_error(
        suite
            .transfer
            .get_consistency_proof(as_auditor(consistency(0, 3)))
            .await,
        Code::InvalidArgument,
        "INVALID_REQUEST",
    );
    assert_eq!(violations(&status), ["first_size"]);
    assert_error(
        suite
            .transfer
            .get_consistency_proof(as_auditor(consistency(1, 9)))
            .await,
        Code::OutOfRange,
        "TREE_SIZE_TOO_LARGE",
    );
}

#[tokio::test]
async fn the_services_own_role_cannot_change_the_tree_or_its_checkpoints() {
    let mut suite = suite().await;
    let tokyo = register(
        &mut suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await;
    let osaka = register(
        &mut suite,
        entity(Kind::Branch, "Example Osaka Branch", "JP", "jp"),
    )
    .await;
    authorize(&mut suite, transfer_request(&user(1), &tokyo, &osaka)).await;
    checkpoint_of_size(&mut suite, 1).await;
    let app = suite.db.app_pool(transfer_service::SERVICE.schema).unwrap();
    for statement in [
        "UPDATE transfer.tree_nodes SET hash = hash",
        "DELETE FROM transfer.tree_nodes",
        "UPDATE transfer.checkpoints SET tree_size = tree_size",
        "DELETE FROM transfer.checkpoints",
    ] {
        let refused = sqlx::query(statement).execute(&app).await.unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code()).unwrap();
        assert_eq!(code, "42501", "{statement}");
    }
}
