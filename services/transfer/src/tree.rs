//! The log as a Merkle tree: tree heads and proofs from the stored complete subtrees (each
//! reads O(log n) rows, fetched in one query), and signed checkpoints.

use chrono::{SubsecRound, Utc};
use portal_merkle::{Hash, Node};
use portal_platform::ApiError;
use portal_platform::auth::keys::TokenSigner;
use portal_platform::time::to_timestamp;
use portal_proto::transfer::v1::Checkpoint;
use sqlx::PgConnection;

use crate::store::{self, CheckpointRow};

/// Runs a tree computation on the stored nodes it needs: first learns which, then fetches
/// them in one query, then computes.
pub async fn with_nodes<T>(
    conn: &mut PgConnection,
    compute: impl Fn(&mut dyn FnMut(Node) -> Hash) -> T,
) -> Result<T, ApiError> {
    let wanted = portal_merkle::needed(|node| {
        compute(node);
    });
    let fetched = store::nodes(&mut *conn, &wanted).await?;
    if fetched.len() != wanted.len() {
        return Err(ApiError::internal("a subtree of the log is missing"));
    }
    let mut lookup = |node: Node| {
        fetched
            .iter()
            .find(|(stored, _)| *stored == node)
            .map_or([0u8; 32], |(_, hash)| *hash)
    };
    Ok(compute(&mut lookup))
}

/// Signs the tree head of the first `tree_size` records now.
pub async fn sign(
    conn: &mut PgConnection,
    signer: &TokenSigner,
    origin: &str,
    tree_size: i64,
) -> Result<CheckpointRow, ApiError> {
    let size = u64::try_from(tree_size).unwrap_or_default();
    let root = with_nodes(conn, |node| portal_merkle::root(size, node)).await?;
    let time = Utc::now().trunc_subsecs(0);
    let signed = portal_merkle::checkpoint_bytes(origin, tree_size, &root, time.timestamp());
    let signature = signer.sign_bytes(&signed);
    Ok(CheckpointRow {
        tree_size,
        root_hash: root.to_vec(),
        time,
        key_id: signer.key_id().to_owned(),
        signature: signature.to_vec(),
        origin: origin.to_owned(),
    })
}

pub fn to_proto(row: &CheckpointRow) -> Checkpoint {
    Checkpoint {
        tree_size: row.tree_size,
        root_hash: row.root_hash.clone(),
        time: Some(to_timestamp(row.time)),
        key_id: row.key_id.clone(),
        signature: row.signature.clone(),
        origin: row.origin.clone(),
    }
}
