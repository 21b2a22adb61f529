//! The offline verifier against the real log: an honest export verifies; a record altered or
//! removed directly in the database (as superuser) does not, and the verifier names it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use common::*;
use ed25519_dalek::VerifyingKey;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    Checkpoint, Decision, ExportTransferRecordsRequest, GetCheckpointRequest,
    GetConsistencyProofRequest, ListSigningKeysRequest, TransferRecord,
};
use prost::Message;
use tokio_stream::StreamExt;
use transfer_verify::{Failure, verify_consistency, verify_export};

async fn append(suite: &mut Suite, count: u32) {
    let tokyo = register(
        suite,
        entity(Kind::Operator, "Example Operator K.K.", "JP", "jp"),
    )
    .await;
    let osaka = register(
        suite,
        entity(Kind::Branch, "Example Osaka Branch", "JP", "jp"),
    )
    .await;
    for n in 0..count {
        authorize(suite, transfer_request(&user(n), &tokyo, &osaka)).await;
    }
}

async fn checkpoint_of_size(suite: &Suite, size: i64) -> Checkpoint {
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

async fn export(suite: &mut Suite) -> Vec<TransferRecord> {
    let mut stream = suite
        .transfer
        .export_transfer_records(as_auditor(ExportTransferRecordsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut records = Vec::new();
    while let Some(record) = stream.next().await {
        records.push(record.unwrap());
    }
    records
}

async fn key(suite: &mut Suite, key_id: &str) -> VerifyingKey {
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

#[tokio::test]
async fn an_honest_export_verifies_against_the_signed_checkpoint() {
    let mut suite = suite().await;
    append(&mut suite, 7).await;
    let checkpoint = checkpoint_of_size(&suite, 7).await;
    let key = key(&mut suite, &checkpoint.key_id).await;
    let verified = verify_export(&export(&mut suite).await, &checkpoint, &key).unwrap();
    assert_eq!((verified.tree_size, verified.records), (7, 7));
    // Another key does not verify the checkpoint.
    let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng).verifying_key();
    assert_eq!(
        verify_export(&export(&mut suite).await, &checkpoint, &stranger),
        Err(Failure::BadSignature)
    );
}

#[tokio::test]
async fn a_record_altered_in_the_database_is_named_by_the_verifier() {
    let mut suite = suite().await;
    append(&mut suite, 5).await;
    let checkpoint = checkpoint_of_size(&suite, 5).await;
    let key = key(&mut suite, &checkpoint.key_id).await;
    let admin = suite.db.admin_pool().await.unwrap();
    // As superuser: turn record 3's denial into an allowance, keeping its stated hash.
    let (data,): (Vec<u8>,) =
        sqlx::query_as("SELECT leaf_data FROM transfer.records WHERE sequence = 3")
            .fetch_one(&admin)
            .await
            .unwrap();
    let mut record = TransferRecord::decode(data.as_slice()).unwrap();
    record.decision = Decision::Allowed.into();
    sqlx::query("UPDATE transfer.records SET leaf_data = $1 WHERE sequence = 3")
        .bind(record.encode_to_vec())
        .execute(&admin)
        .await
        .unwrap();
    let exported = export(&mut suite).await;
    assert_eq!(
        verify_export(&exported, &checkpoint, &key),
        Err(Failure::AlteredRecord {
            name: record.name.clone(),
            sequence: 3
        })
    );
    // A careful forger who also rewrites the stated hash still breaks the signed root.
    let forged_hash = transfer_verify::recompute(&record);
    sqlx::query("UPDATE transfer.records SET leaf_hash = $1 WHERE sequence = 3")
        .bind(forged_hash.to_vec())
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(
        verify_export(&export(&mut suite).await, &checkpoint, &key),
        Err(Failure::RootMismatch)
    );
}

#[tokio::test]
async fn a_record_removed_from_the_database_is_missed_by_the_verifier() {
    let mut suite = suite().await;
    append(&mut suite, 5).await;
    let checkpoint = checkpoint_of_size(&suite, 5).await;
    let key = key(&mut suite, &checkpoint.key_id).await;
    let admin = suite.db.admin_pool().await.unwrap();
    sqlx::query("DELETE FROM transfer.records WHERE sequence = 2")
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(
        verify_export(&export(&mut suite).await, &checkpoint, &key),
        Err(Failure::MissingRecord { sequence: 2 })
    );
}

#[tokio::test]
async fn an_older_checkpoint_is_proven_a_prefix_of_a_newer_one() {
    let mut suite = suite().await;
    append(&mut suite, 3).await;
    let older = checkpoint_of_size(&suite, 3).await;
    append(&mut suite, 4).await;
    let newer = checkpoint_of_size(&suite, 7).await;
    let key = key(&mut suite, &newer.key_id).await;
    let proof = suite
        .transfer
        .get_consistency_proof(as_auditor(GetConsistencyProofRequest {
            first_size: 3,
            second_size: 7,
        }))
        .await
        .unwrap()
        .into_inner();
    verify_consistency(&older, &newer, &proof, &key).unwrap();
    // A rewritten older head (with its signature) is not accepted.
    let mut rewritten = older.clone();
    rewritten.root_hash[0] ^= 1;
    assert_eq!(
        verify_consistency(&rewritten, &newer, &proof, &key),
        Err(Failure::BadSignature)
    );
    // A proof for other sizes does not connect these two.
    let other = suite
        .transfer
        .get_consistency_proof(as_auditor(GetConsistencyProofRequest {
            first_size: 2,
            second_size: 7,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        verify_consistency(&older, &newer, &other, &key),
        Err(Failure::Inconsistent)
    );
}
