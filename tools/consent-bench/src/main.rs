//! `consent-bench`: how fast `portal.consent.v1.ConsentService/CheckConsent` answers.
//!
//! The affiliate-transfer service asks CheckConsent before every transfer, so its rate and
//! latency bound how fast the suite can move personal information. This binary measures it the
//! way it runs: the real consent service on a real socket (the test harness's `TestService`),
//! against a real PostgreSQL database of its own (`TestDb`, dropped on exit), called over gRPC
//! with a `services/transfer` token. It is not a test, so it prints numbers rather than asserting
//! thresholds; it still checks every answer and exits non-zero if any call failed.
//!
//! ```sh
//! cargo run --release -p consent-bench -- --seconds 10 --concurrency 1,4,16,64
//! ```
//!
//! The results and the machine they were taken on are in `docs/benchmarks.md`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use clap::{Parser, ValueEnum};
use portal_platform::auth::Kind as TokenKind;
use portal_platform::time::to_timestamp;
use portal_proto::consent::v1::consent_service_client::ConsentServiceClient;
use portal_proto::consent::v1::policy_document::Kind as DocumentKind;
use portal_proto::consent::v1::{
    Basis, CheckConsentRequest, PolicyDocument, PublishDocumentVersionRequest,
    RecordConsentRequest, Scope,
};
use portal_testkit::load::percentile;
use portal_testkit::{TestDb, TestService, keys};
use tokio::task::JoinSet;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Measures CheckConsent rate and latency over real gRPC against real PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "consent-bench", version)]
struct Args {
    /// Seconds measured at each concurrency level (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,

    /// Seconds of unrecorded calls before each measurement, so connections, the server's
    /// database pool and PostgreSQL's caches are warm.
    #[arg(long, default_value_t = 2)]
    warmup: u64,

    /// Subjects given deemed (Art. 5.1) consent before measuring.
    #[arg(long, default_value_t = 1000)]
    subjects: usize,

    /// Every Nth subject also gives explicit third-party consent to its recipient, so
    /// THIRD_PARTY_DISCLOSURE checks see both answers (allowed and denied).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    explicit_every: u64,

    /// Concurrent client tasks per level, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,

    /// How the client tasks reach the server: one shared HTTP/2 connection, one connection per
    /// task, or each level run both ways.
    #[arg(long, value_enum, default_value_t = Channels::Both)]
    channels: Channels,

    /// The service's database pool size (`database.max_connections`); unset keeps the
    /// service's default.
    #[arg(long)]
    max_connections: Option<u32>,
}

/// Whether client tasks share one tonic `Channel` (one HTTP/2 connection, multiplexed), as a
/// single transfer-service replica would, or each open their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Channels {
    Shared,
    PerTask,
    Both,
}

impl Channels {
    fn modes(self) -> &'static [Channels] {
        match self {
            Channels::Shared => &[Channels::Shared],
            Channels::PerTask => &[Channels::PerTask],
            Channels::Both => &[Channels::Shared, Channels::PerTask],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Channels::Shared => "shared",
            Channels::PerTask => "per-task",
            Channels::Both => "both",
        }
    }
}

/// Group entities the subjects consent to disclose to (Art. 4).
const RECIPIENTS: usize = 8;

/// Tokens from the harness live ten minutes; client tasks mint a fresh one well before that.
const TOKEN_REFRESH: Duration = Duration::from_secs(240);

/// One subject of the benchmark and what CheckConsent should answer for it.
#[derive(Debug, Clone)]
struct Subject {
    name: String,
    recipient: String,
    /// Whether it gave explicit consent to `recipient`.
    explicit: bool,
}

/// Everything the measured calls need: the running service and its subjects, and the database
/// it serves from (deleted when dropped, so a run leaves nothing behind).
#[derive(Debug)]
struct Bench {
    db: TestDb,
    service: TestService,
    subjects: Arc<[Subject]>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("consent-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("consent-bench: {errors} calls failed or answered wrongly");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("consent-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up, measures every level, prints the table; returns how many calls went wrong.
async fn run(args: Args) -> anyhow::Result<u64> {
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.subjects > 0, "--subjects must be at least 1");
    anyhow::ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs levels of at least 1"
    );
    let setup_started = Instant::now();
    let bench = set_up(&args).await?;
    let explicit = bench.subjects.iter().filter(|s| s.explicit).count();
    println!(
        "setup: {} subjects with deemed consent, {explicit} with explicit third-party consent, \
         in {:.1} s; service at {}, database pool {}",
        bench.subjects.len(),
        setup_started.elapsed().as_secs_f64(),
        bench.service.addr(),
        args.max_connections
            .map_or_else(|| "default".to_owned(), |n| n.to_string()),
    );
    println!(
        "each level: {} s warm-up, then {} s measured; scopes JOINT_USE, CROSS_BORDER_TRANSFER \
         (SG), THIRD_PARTY_DISCLOSURE in equal parts",
        args.warmup, args.seconds
    );
    println!();
    println!(
        "| channels | concurrency | calls | rate (calls/s) | p50 ms | p90 ms | p99 ms | max ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut errors = 0;
    for &concurrency in &args.concurrency {
        for &mode in args.channels.modes() {
            let level = measure(&bench, &args, concurrency, mode).await?;
            errors += level.errors;
            println!("{}", level.row());
            if let Some(first) = &level.first_error {
                eprintln!("  first error: {first}");
            }
        }
    }
    // Stopped before its database is dropped, so it does not report the database lost.
    let Bench { db, service, .. } = bench;
    service
        .stop()
        .await
        .context("stopping the consent service")?;
    drop(db);
    Ok(errors)
}

/// A fresh database and consent service; terms version 1 in force; every subject's deemed
/// consent (recorded by identity, as at sign-in) and some subjects' explicit consent (recorded
/// by the subject, as in the portal).
async fn set_up(args: &Args) -> anyhow::Result<Bench> {
    let db = TestDb::new(&[consent_service::SERVICE.schema])
        .await
        .context("creating the benchmark database")?;
    let service = match args.max_connections {
        None => TestService::start(&consent_service::SERVICE, db.url()).await,
        Some(n) => {
            let n = n.to_string();
            TestService::start_with(
                &consent_service::SERVICE,
                db.url(),
                &[("PORTAL_DATABASE__MAX_CONNECTIONS", n.as_str())],
            )
            .await
        }
    }
    .context("starting the consent service")?;
    let channel = service.channel().await?;
    let mut client = ConsentServiceClient::new(channel.clone());
    publish_terms(&mut client).await?;

    let recipients: Vec<String> = (0..RECIPIENTS)
        .map(|_| format!("entities/{}", uuid::Uuid::now_v7()))
        .collect();
    let tenants: Vec<String> = (0..10)
        .map(|_| format!("tenants/{}", uuid::Uuid::now_v7()))
        .collect();
    let every = usize::try_from(args.explicit_every).unwrap_or(usize::MAX);
    let subjects: Vec<(String, Subject)> = (0..args.subjects)
        .map(|i| {
            let tenant = tenants[i % tenants.len()].clone();
            let subject = Subject {
                name: format!("{tenant}/users/{}", uuid::Uuid::now_v7()),
                recipient: recipients[i % recipients.len()].clone(),
                explicit: i % every == 0,
            };
            (tenant, subject)
        })
        .collect();

    // Recorded a few at a time: setup is not what is measured, but 1000 sequential
    // signed-ledger writes would still take a while.
    let identity = bearer(&keys::token(
        TokenKind::Service,
        "services/identity",
        None,
        &[],
    ))?;
    let mut pending = JoinSet::new();
    for chunk in subjects.chunks(subjects.len().div_ceil(16)) {
        let chunk = chunk.to_vec();
        let mut client = ConsentServiceClient::new(channel.clone());
        let identity = identity.clone();
        pending.spawn(async move { record(&mut client, &identity, &chunk).await });
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    Ok(Bench {
        db,
        service,
        subjects: subjects.into_iter().map(|(_, s)| s).collect(),
    })
}

/// Publishes terms version 1, in force now, as an operator.
async fn publish_terms(client: &mut ConsentServiceClient<Channel>) -> anyhow::Result<()> {
    let document = PolicyDocument {
        kind: DocumentKind::Terms.into(),
        version: 1,
        label: "bench".into(),
        uri: "https://portal.example.com/terms/1".into(),
        content_sha256: "1".repeat(64),
        effective_time: Some(to_timestamp(Utc::now())),
        ..PolicyDocument::default()
    };
    let request = PublishDocumentVersionRequest {
        request_id: String::new(),
        document: Some(document),
    };
    client
        .publish_document_version(with_token(request, &bearer(&keys::operator_token())?))
        .await
        .context("publishing terms version 1")?;
    Ok(())
}

/// Records deemed consent for each subject, then its explicit consent where it gives one.
async fn record(
    client: &mut ConsentServiceClient<Channel>,
    identity: &MetadataValue<Ascii>,
    subjects: &[(String, Subject)],
) -> anyhow::Result<()> {
    for (tenant, subject) in subjects {
        let deemed = RecordConsentRequest {
            subject: subject.name.clone(),
            basis: Basis::DeemedByUse.into(),
            ..RecordConsentRequest::default()
        };
        client
            .record_consent(with_token(deemed, identity))
            .await
            .with_context(|| format!("recording deemed consent for {}", subject.name))?;
        if subject.explicit {
            let explicit = RecordConsentRequest {
                subject: subject.name.clone(),
                basis: Basis::Explicit.into(),
                scopes: vec![Scope::ThirdPartyDisclosure.into()],
                recipient_entity: subject.recipient.clone(),
                ..RecordConsentRequest::default()
            };
            let user = bearer(&keys::token(
                TokenKind::User,
                &subject.name,
                Some(tenant),
                &["MEMBER"],
            ))?;
            client
                .record_consent(with_token(explicit, &user))
                .await
                .with_context(|| format!("recording explicit consent for {}", subject.name))?;
        }
    }
    Ok(())
}

/// The outcome of one level.
#[derive(Debug)]
struct Level {
    mode: Channels,
    concurrency: usize,
    /// Calls started in the measured window.
    calls: u64,
    /// Latency of every correct measured call, sorted.
    latencies: Vec<Duration>,
    /// From the start of measurement to the end of its last call.
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
}

impl Level {
    fn row(&self) -> String {
        let calls = self.calls;
        let rate = calls as f64 / self.elapsed.as_secs_f64();
        let ms = |p: f64| percentile(&self.latencies, p).as_secs_f64() * 1000.0;
        format!(
            "| {} | {} | {calls} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            self.mode.label(),
            self.concurrency,
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(1.0),
            self.errors,
        )
    }
}

/// What one client task saw.
#[derive(Debug, Default)]
struct TaskResult {
    /// Latency of each correct call in the measured window.
    latencies: Vec<Duration>,
    /// Calls started in the measured window, correct or not.
    calls: u64,
    /// Failed or wrong calls, warm-up included: every call must succeed.
    errors: u64,
    first_error: Option<String>,
    last_finish: Option<Instant>,
}

impl TaskResult {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Runs `concurrency` client tasks for the warm-up plus the measured window.
async fn measure(
    bench: &Bench,
    args: &Args,
    concurrency: usize,
    mode: Channels,
) -> anyhow::Result<Level> {
    let shared = match mode {
        Channels::Shared => Some(bench.service.channel().await?),
        _ => None,
    };
    let mut channels = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        channels.push(match &shared {
            Some(channel) => channel.clone(),
            None => bench.service.channel().await?,
        });
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = JoinSet::new();
    for (index, channel) in channels.into_iter().enumerate() {
        let subjects = Arc::clone(&bench.subjects);
        let seed = (concurrency as u64) << 32 | index as u64;
        tasks.spawn(client_task(
            channel,
            subjects,
            seed,
            start,
            measure_from,
            until,
        ));
    }
    let mut level = Level {
        mode,
        concurrency,
        calls: 0,
        latencies: Vec::new(),
        elapsed: Duration::from_secs(args.seconds),
        errors: 0,
        first_error: None,
    };
    let mut last_finish = until;
    while let Some(done) = tasks.join_next().await {
        let task = done?;
        level.calls += task.calls;
        level.latencies.extend(task.latencies);
        level.errors += task.errors;
        if level.first_error.is_none() {
            level.first_error = task.first_error;
        }
        if let Some(finish) = task.last_finish {
            last_finish = last_finish.max(finish);
        }
    }
    level.elapsed = last_finish.duration_since(measure_from);
    level.latencies.sort_unstable();
    Ok(level)
}

/// One caller, as the affiliate-transfer service: CheckConsent in a loop for random subjects
/// and scopes. Calls started during the warm-up are not recorded; the answer of every recorded
/// call is checked against what the subject consented to.
async fn client_task(
    channel: Channel,
    subjects: Arc<[Subject]>,
    seed: u64,
    start: Instant,
    measure_from: Instant,
    until: Instant,
) -> TaskResult {
    let mut result = TaskResult::default();
    let mut client = ConsentServiceClient::new(channel);
    let mut rng = XorShift::new(seed);
    let mut token = match transfer_token() {
        Ok(token) => token,
        Err(error) => {
            result.fail(format!("minting the token: {error:#}"));
            return result;
        }
    };
    let mut minted = Instant::now();
    tokio::time::sleep_until(start.into()).await;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if now.duration_since(minted) > TOKEN_REFRESH {
            match transfer_token() {
                Ok(fresh) => token = fresh,
                Err(error) => result.fail(format!("minting the token: {error:#}")),
            }
            minted = now;
        }
        let subject = &subjects[rng.below(subjects.len())];
        let (scope, expected) = match rng.below(3) {
            0 => (Scope::JointUse, true),
            1 => (Scope::CrossBorderTransfer, true),
            _ => (Scope::ThirdPartyDisclosure, subject.explicit),
        };
        let request = CheckConsentRequest {
            subject: subject.name.clone(),
            scope: scope.into(),
            recipient_entity: if scope == Scope::ThirdPartyDisclosure {
                subject.recipient.clone()
            } else {
                String::new()
            },
            destination_country: if scope == Scope::CrossBorderTransfer {
                "SG".into()
            } else {
                String::new()
            },
        };
        let sent = Instant::now();
        let answer = client.check_consent(with_token(request, &token)).await;
        let finished = Instant::now();
        let measured = sent >= measure_from;
        if measured {
            result.calls += 1;
            result.last_finish = Some(finished);
        }
        match answer {
            Ok(response) => {
                let decision = response.into_inner();
                if decision.allowed != expected {
                    result.fail(format!(
                        "{} {scope:?}: allowed = {}, expected {expected} ({:?})",
                        subject.name,
                        decision.allowed,
                        decision.reason()
                    ));
                } else if measured {
                    result.latencies.push(finished.duration_since(sent));
                }
            }
            Err(status) => result.fail(format!("{} {scope:?}: {status}", subject.name)),
        }
    }
    result
}

/// The affiliate-transfer service's token, the caller CheckConsent serves on every transfer.
fn transfer_token() -> anyhow::Result<MetadataValue<Ascii>> {
    bearer(&keys::token(
        TokenKind::Service,
        "services/transfer",
        None,
        &[],
    ))
}

/// `Bearer <token>` as a header value, parsed once so each call only clones it.
fn bearer(token: &str) -> anyhow::Result<MetadataValue<Ascii>> {
    Ok(format!("Bearer {token}").parse()?)
}

fn with_token<T>(message: T, token: &MetadataValue<Ascii>) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// xorshift64*: enough randomness to spread calls over subjects and scopes, seeded per task so
/// runs are repeatable, and no dependency.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // The state must never be zero; mixing in an odd constant keeps it so for any seed.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n` > 0; the modulo bias is negligible for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn the_generator_stays_in_range() {
        let mut rng = XorShift::new(0);
        assert!((0..10_000).all(|_| rng.below(3) < 3));
    }
}
