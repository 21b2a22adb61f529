//! Group commit: every AuthorizeTransfer of this process hands its decided record to one
//! sequencer task, which appends whatever has queued up meanwhile in one transaction (numbers,
//! leaves, tree nodes, idempotency answers) and answers each caller only after that commit, so
//! an answered record is durable and the log is not limited to one commit per record.
//! Replicas each batch their own callers; their batches take turns on the log head's row lock.

use chrono::Utc;
use portal_platform::ApiError;
use portal_platform::idempotency::{self, Claim, RequestKey};
use portal_platform::time::from_timestamp;
use portal_proto::transfer::v1::{AuthorizeTransferRequest, TransferRecord};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::SERVICE;
use crate::domain;
use crate::leaf;
use crate::store::{self, NewRecord};

/// Most records appended in one transaction.
const MAX_BATCH: usize = 256;
/// Queued decisions before callers wait to queue.
const QUEUE: usize = 4096;

pub const METHOD: &str = "portal.transfer.v1.AffiliateTransferService/AuthorizeTransfer";

/// A decided record waiting to be appended.
pub struct Pending {
    pub caller: String,
    pub request: AuthorizeTransferRequest,
    /// Built from the decision, not yet numbered nor hashed.
    pub record: TransferRecord,
    pub allowed: bool,
    pub source: Uuid,
    pub destination: Uuid,
    reply: Option<oneshot::Sender<Result<TransferRecord, ApiError>>>,
}

impl Pending {
    pub fn new(
        caller: String,
        request: AuthorizeTransferRequest,
        record: TransferRecord,
        allowed: bool,
        source: Uuid,
        destination: Uuid,
    ) -> Self {
        Self {
            caller,
            request,
            record,
            allowed,
            source,
            destination,
            reply: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sequencer {
    queue: mpsc::Sender<Pending>,
}

impl Sequencer {
    /// Starts the sequencer task of this process.
    pub fn start(pool: PgPool) -> Self {
        let (queue, batches) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, batches));
        Self { queue }
    }

    /// Appends `pending` (in the next batch) and returns the record once it is committed; a
    /// retried request gets the record first appended.
    pub async fn append(&self, mut pending: Pending) -> Result<TransferRecord, ApiError> {
        let (reply, answer) = oneshot::channel();
        pending.reply = Some(reply);
        let stopped = || ApiError::unavailable("SERVER_DRAINING", "the server is stopping; retry");
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Pending>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let answers = match commit(&pool, &batch).await {
            Ok(answers) => answers,
            // Nothing of the batch committed: every caller may retry.
            Err(error) => batch.iter().map(|_| Err(error.clone())).collect(),
        };
        for (pending, answer) in batch.into_iter().zip(answers) {
            if let Some(reply) = pending.reply {
                let _ = reply.send(answer);
            }
        }
    }
}

/// One transaction for the whole batch; per-request answers (a reused request_id fails only
/// its own request).
async fn commit(
    pool: &PgPool,
    batch: &[Pending],
) -> Result<Vec<Result<TransferRecord, ApiError>>, ApiError> {
    let mut tx = pool.begin().await?;
    let mut answers = Vec::with_capacity(batch.len());
    for pending in batch {
        answers.push(append_one(&mut tx, pending).await?);
    }
    tx.commit().await?;
    Ok(answers)
}

/// Appends one record inside the batch's transaction. The outer error fails the batch; the
/// inner one only this request.
async fn append_one(
    tx: &mut PgConnection,
    pending: &Pending,
) -> Result<Result<TransferRecord, ApiError>, ApiError> {
    let key = RequestKey {
        caller: &pending.caller,
        method: METHOD,
        request_id: &pending.request.request_id,
    };
    let request_id = match idempotency::claim_in::<_, TransferRecord>(
        tx,
        SERVICE.schema.name,
        &key,
        &pending.request,
    )
    .await
    {
        Ok(Claim::Answered(stored)) => return Ok(Ok(stored)),
        Ok(Claim::Claimed(request_id)) => request_id,
        Err(error) if error.code() == tonic::Code::InvalidArgument => return Ok(Err(error)),
        Err(error) => return Err(error),
    };
    let sequence = store::next_sequence(tx).await?;
    let (served, leaf_data) = leaf::seal(pending.record.clone(), sequence);
    let row = NewRecord {
        id: domain::record_id(&served.name, "name")?,
        subject: &served.subject,
        allowed: pending.allowed,
        source: pending.source,
        destination: pending.destination,
        source_region: &served.source_region,
        destination_region: &served.destination_region,
        source_country: &served.source_country,
        destination_country: &served.destination_country,
        data_categories: &served.data_categories,
        record_time: served
            .record_time
            .as_ref()
            .map(|t| from_timestamp(t, "record_time"))
            .transpose()?
            .unwrap_or_else(Utc::now),
    };
    store::append(tx, sequence, &row, &leaf_data, &served.leaf_hash).await?;
    store::add_leaf(tx, sequence, &served.leaf_hash).await?;
    if let Some(request_id) = request_id {
        idempotency::store_answer(tx, SERVICE.schema.name, &key, request_id, &served).await?;
    }
    Ok(Ok(served))
}
