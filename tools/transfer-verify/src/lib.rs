//! Offline verification of the transfer log, trusting nothing the operator says: given the
//! records of an export (`ExportTransferRecords`), a signed checkpoint and the transfer
//! service's public key, recompute every leaf hash from the record itself, rebuild the tree,
//! and check its root against the checkpoint and the checkpoint's signature; given two
//! checkpoints and a consistency proof, check the older log is a prefix of the newer.
//!
//! Files are protobuf binary: an export is a sequence of length-delimited `TransferRecord`s;
//! a checkpoint is one `Checkpoint`; a consistency proof one `ConsistencyProof`.

use std::collections::HashMap;

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portal_merkle::Hash;
use portal_proto::transfer::v1::{Checkpoint, ConsistencyProof, TransferRecord};
use prost::Message;

/// Why a log does not verify. Each names what failed, so an auditor can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error(
        "record {name} (sequence {sequence}) was altered: its content does not hash to its leaf hash"
    )]
    AlteredRecord { name: String, sequence: i64 },
    #[error("the record at sequence {sequence} is missing from the export")]
    MissingRecord { sequence: i64 },
    #[error("the export holds two records at sequence {sequence}")]
    DuplicateRecord { sequence: i64 },
    #[error(
        "the records do not make the tree the checkpoint signs (a record was altered, added or removed)"
    )]
    RootMismatch,
    #[error("the checkpoint's signature does not verify with the given key")]
    BadSignature,
    #[error(
        "the consistency proof does not show the older checkpoint's log as a prefix of the newer"
    )]
    Inconsistent,
    #[error("malformed input: {0}")]
    Malformed(String),
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub tree_size: i64,
    pub records: usize,
}

/// The bytes a checkpoint signs (see `portal_merkle::checkpoint_bytes`).
pub fn signed_bytes(checkpoint: &Checkpoint) -> Vec<u8> {
    portal_merkle::checkpoint_bytes(
        &checkpoint.origin,
        checkpoint.tree_size,
        &checkpoint.root_hash,
        checkpoint.time.map_or(0, |t| t.seconds),
    )
}

/// Whether `checkpoint` is signed by `key`.
pub fn check_signature(checkpoint: &Checkpoint, key: &VerifyingKey) -> Result<(), Failure> {
    let signature =
        Signature::from_slice(&checkpoint.signature).map_err(|_| Failure::BadSignature)?;
    key.verify(&signed_bytes(checkpoint), &signature)
        .map_err(|_| Failure::BadSignature)
}

/// The leaf hash of a record, recomputed from its content (its stated hash cleared).
pub fn recompute(record: &TransferRecord) -> Hash {
    let mut unhashed = record.clone();
    unhashed.leaf_hash.clear();
    portal_merkle::leaf_hash(&unhashed.encode_to_vec())
}

/// Verifies the first `checkpoint.tree_size` records of `records` against the checkpoint.
pub fn verify_export(
    records: &[TransferRecord],
    checkpoint: &Checkpoint,
    key: &VerifyingKey,
) -> Result<Verified, Failure> {
    check_signature(checkpoint, key)?;
    let size = usize::try_from(checkpoint.tree_size)
        .map_err(|_| Failure::Malformed("negative tree size".into()))?;
    let mut by_sequence: HashMap<i64, &TransferRecord> = HashMap::new();
    for record in records {
        if by_sequence.insert(record.sequence, record).is_some() {
            return Err(Failure::DuplicateRecord {
                sequence: record.sequence,
            });
        }
    }
    let mut leaves = Vec::with_capacity(size);
    for sequence in 0..checkpoint.tree_size {
        let record = by_sequence
            .get(&sequence)
            .ok_or(Failure::MissingRecord { sequence })?;
        let leaf = recompute(record);
        if record.leaf_hash != leaf {
            return Err(Failure::AlteredRecord {
                name: record.name.clone(),
                sequence,
            });
        }
        leaves.push(leaf);
    }
    if tree_root(&leaves).as_slice() != checkpoint.root_hash.as_slice() {
        return Err(Failure::RootMismatch);
    }
    Ok(Verified {
        tree_size: checkpoint.tree_size,
        records: leaves.len(),
    })
}

/// Verifies that `older` and `newer` are both signed by `key` and that `proof` shows the older
/// log is a prefix of the newer.
pub fn verify_consistency(
    older: &Checkpoint,
    newer: &Checkpoint,
    proof: &ConsistencyProof,
    key: &VerifyingKey,
) -> Result<(), Failure> {
    check_signature(older, key)?;
    check_signature(newer, key)?;
    let hash = |bytes: &[u8]| -> Result<Hash, Failure> {
        bytes
            .try_into()
            .map_err(|_| Failure::Malformed("a hash is not 32 bytes".into()))
    };
    let path = proof
        .hashes
        .iter()
        .map(|h| hash(h))
        .collect::<Result<Vec<_>, _>>()?;
    let (first, second) = (
        u64::try_from(older.tree_size).map_err(|_| Failure::Inconsistent)?,
        u64::try_from(newer.tree_size).map_err(|_| Failure::Inconsistent)?,
    );
    if proof.first_size != older.tree_size || proof.second_size != newer.tree_size {
        return Err(Failure::Inconsistent);
    }
    let ok = portal_merkle::verify_consistency(
        first,
        second,
        &hash(&older.root_hash)?,
        &hash(&newer.root_hash)?,
        &path,
    );
    if ok {
        Ok(())
    } else {
        Err(Failure::Inconsistent)
    }
}

pub use portal_merkle::tree_root;

/// Reads an export file: length-delimited records.
pub fn read_records(mut bytes: &[u8]) -> Result<Vec<TransferRecord>, Failure> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let record = TransferRecord::decode_length_delimited(&mut bytes)
            .map_err(|e| Failure::Malformed(format!("export: {e}")))?;
        records.push(record);
    }
    Ok(records)
}

/// Writes records as an export file.
pub fn write_records(records: &[TransferRecord]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for record in records {
        // Encoding into a Vec cannot run out of space.
        let _ = record.encode_length_delimited(&mut bytes);
    }
    bytes
}

/// A public key given as base64 of its 32 raw bytes (as ListSigningKeys' `public_key`).
pub fn parse_key(text: &str) -> Result<VerifyingKey, Failure> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| Failure::Malformed("the public key is not base64".into()))?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Failure::Malformed("the public key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| Failure::Malformed("not an Ed25519 key".into()))
}
