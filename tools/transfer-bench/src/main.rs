//! `transfer-bench`: how many transfer decisions the log takes per second, and how long each
//! caller waits, with group commit. Runs the real consent and transfer services on real sockets
//! against a PostgreSQL database of its own (dropped on exit); every call is a full
//! AuthorizeTransfer: registry read, CheckConsent over gRPC, then the group-committed append
//! (record, Merkle nodes, idempotency answer). Every answer is checked; a failed call makes the
//! exit status non-zero. Also reports how many records each commit carried.
//!
//! ```sh
//! cargo run --release -p transfer-bench -- --seconds 10 --concurrency 1,4,16,64
//! ```
//!
//! The results, the machine and PostgreSQL's own single-insert rate are in
//! `docs/benchmarks.md`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use clap::Parser;
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{
    Basis, PolicyDocument, PublishDocumentVersionRequest, RecordConsentRequest,
};
use portal_proto::transfer::v1::affiliate_transfer_service_client::AffiliateTransferServiceClient;
use portal_proto::transfer::v1::group_entity::Kind;
use portal_proto::transfer::v1::{
    AuthorizeTransferRequest, CreateEntityRequest, DataCategory, Decision, GroupEntity, Purpose,
};
use portal_testkit::keys::{self, authorized};
use portal_testkit::{TestDb, TestService, load};

const TENANT: &str = "tenants/0190f7a0-0000-7000-8000-00000000000a";

/// Measures AuthorizeTransfer rate and latency with group commit.
#[derive(Debug, Parser)]
#[command(name = "transfer-bench", version)]
struct Args {
    /// Seconds measured at each concurrency level (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of unrecorded calls before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Subjects with deemed consent, called in turn.
    #[arg(long, default_value_t = 1000)]
    subjects: u32,
    /// Concurrent callers per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("transfer-bench: {errors} calls failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("transfer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn user(n: u32) -> String {
    format!("{TENANT}/users/0190f7a0-0000-7000-8000-{n:012}")
}

async fn run(args: Args) -> anyhow::Result<u64> {
    let db = TestDb::new(&[
        consent_service::SERVICE.schema,
        transfer_service::SERVICE.schema,
    ])
    .await?;
    let consent_service = TestService::start(&consent_service::SERVICE, db.url()).await?;
    let consent_uri = consent_service.uri();
    let transfer_service =
        TestService::start_configured(&transfer_service::SERVICE, db.url(), &[], |settings| {
            settings.consent.endpoint = Some(consent_uri);
            // No identity here: its deletion feed is not part of what is measured.
            settings.identity.endpoint = Some("http://127.0.0.1:9".to_owned());
        })
        .await?;
    let mut consent = ConsentServiceClient::new(consent_service.channel().await?);
    let operator = keys::operator_token();
    let terms = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version: 1,
        label: "v1".into(),
        uri: "https://portal.example.com/terms/1".into(),
        content_sha256: format!("{:064x}", 1),
        effective_time: Some(to_timestamp(Utc::now())),
        ..PolicyDocument::default()
    };
    let publish = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(terms),
    };
    consent
        .publish_document_version(authorized(publish, &operator))
        .await?;
    let identity = keys::token(TokenKind::Service, "services/identity", None, &[]);
    for n in 0..args.subjects {
        let request = RecordConsentRequest {
            subject: user(n),
            tenant: TENANT.to_owned(),
            basis: Basis::DeemedByUse.into(),
            ..RecordConsentRequest::default()
        };
        consent
            .record_consent(authorized(request, &identity))
            .await?;
    }
    let mut transfer = AffiliateTransferServiceClient::new(transfer_service.channel().await?);
    let mut register = async |kind: Kind, name: &str, country: &str, region: &str| {
        let request = CreateEntityRequest {
            request_id: String::new(),
            entity: Some(GroupEntity {
                kind: kind.into(),
                legal_name: name.into(),
                country_code: country.into(),
                region: region.into(),
                ..GroupEntity::default()
            }),
        };
        transfer
            .create_entity(authorized(request, &operator))
            .await
            .map(|e| e.into_inner().name)
    };
    let source = register(Kind::Operator, "Example Operator K.K.", "JP", "jp").await?;
    let destination = register(Kind::Affiliate, "Example Affiliate Pte. Ltd.", "SG", "sg").await?;

    println!(
        "| callers | records | records/s | p50 ms | p90 ms | p99 ms | max ms | records per commit | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let admin = db.admin_pool().await?;
    let mut errors = 0;
    for &concurrency in &args.concurrency {
        let before: i64 = sqlx::query_scalar("SELECT size FROM transfer.log_head")
            .fetch_one(&admin)
            .await?;
        let channel = transfer_service.channel().await?;
        let token = keys::token(TokenKind::Service, "services/portal-backend", None, &[]);
        let (source, destination, subjects) = (source.clone(), destination.clone(), args.subjects);
        let level = load::run(
            concurrency,
            Duration::from_secs(args.warmup),
            Duration::from_secs(args.seconds),
            move |task, n| {
                let mut client = AffiliateTransferServiceClient::new(channel.clone());
                let subject = user(((task as u64 * 7919 + n) % u64::from(subjects)) as u32);
                let request = AuthorizeTransferRequest {
                    request_id: uuid::Uuid::now_v7().to_string(),
                    subject,
                    data_categories: vec![DataCategory::Email.into()],
                    source_entity: source.clone(),
                    destination_entity: destination.clone(),
                    purpose: Purpose::PortalService.into(),
                    legal_reference: String::new(),
                };
                let request = authorized(request, &token);
                async move {
                    let record = client
                        .authorize_transfer(request)
                        .await
                        .map_err(|status| format!("{status:?}"))?
                        .into_inner();
                    if record.decision() == Decision::Allowed && record.leaf_hash.len() == 32 {
                        Ok(())
                    } else {
                        Err(format!("unexpected record {record:?}"))
                    }
                }
            },
        )
        .await;
        let (records, commits): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT xmin::text) FROM transfer.records WHERE sequence >= $1",
        )
        .bind(before)
        .fetch_one(&admin)
        .await?;
        println!(
            "| {concurrency} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            level.calls,
            level.rate(),
            level.ms(0.50),
            level.ms(0.90),
            level.ms(0.99),
            level.ms(1.0),
            records as f64 / commits.max(1) as f64,
            level.errors,
        );
        if let Some(error) = &level.first_error {
            eprintln!("first error at {concurrency} callers: {error}");
        }
        errors += level.errors;
    }
    Ok(errors)
}
