//! One way to serve a portal service: health (`NOT_SERVING` until the database is reachable and
//! migrated, and again whenever it is lost), reflection v1 and v1alpha, deadlines, bounded
//! message sizes and concurrency, a readiness gate, and a graceful drain on shutdown.
//!
//! Requests pass, outermost first: the trace span (with the caller's W3C context), the
//! deadline, the request metrics (`metrics`), authentication (`auth::layer`), then the
//! readiness gate; the last two are `admission` checks, which let health and reflection
//! through untouched.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admission::{Admission, AdmissionLayer};
use crate::auth::Caller;
use crate::auth::keys::{Authenticator, TokenSigner};
use crate::auth::layer::Authenticate;
use crate::client::{Outgoing, ServiceToken};
use crate::config::Settings;
use crate::db::{DatabaseAccess, Schema};
use crate::error::{ApiError, DATABASE_UNAVAILABLE};
use crate::telemetry;

/// What makes one service: its names, contract, schema, and how to build its gRPC handlers.
#[derive(Debug)]
pub struct ServiceDef {
    /// Short name: `identity`, `consent`, `approval` or `transfer` (also its config section).
    pub name: &'static str,
    /// Fully-qualified gRPC service name, as health and reflection report it.
    pub grpc_service: &'static str,
    /// `google.rpc.ErrorInfo.domain` of the service's errors (`portal.<name>`).
    pub error_domain: &'static str,
    /// Encoded descriptor set of the service's package, for reflection.
    pub descriptor_set: &'static [u8],
    pub schema: Schema,
    /// Builds the service's handlers; fails, naming the configuration key, when the service
    /// lacks a setting it cannot serve without.
    pub routes: fn(ServiceContext) -> anyhow::Result<Routes>,
}

/// What a service's handlers are built with.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Connections as the service's app role.
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// This process's signing key, when configured.
    pub signer: Option<Arc<TokenSigner>>,
    /// How to call other services.
    pub outgoing: Outgoing,
    /// Becomes true when the server starts draining: long-lived streams end then.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// True while the database answers and is migrated (what health reports as SERVING).
    pub ready: Arc<AtomicBool>,
}

impl ServiceContext {
    /// Waits until the service is ready (database reachable and migrated), for background work
    /// started with the server; false if the server drains first.
    pub async fn until_ready(&self) -> bool {
        const RETRY: Duration = Duration::from_millis(100);
        let mut draining = self.draining.clone();
        while !self.ready.load(Ordering::SeqCst) {
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                _ = draining.wait_for(|drain| *drain) => return false,
            }
        }
        true
    }
}

impl ServiceContext {
    /// The largest request a service accepts; generated servers are configured with it.
    pub fn max_message_bytes(&self) -> usize {
        self.settings.server.max_message_bytes
    }
}

/// Binds the service's configured address. Binding comes first so that the port is known
/// (and taken) before anything is announced.
pub async fn bind(def: &ServiceDef, settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr = settings
        .service(def.name)
        .with_context(|| format!("no configuration section `{}`", def.name))?
        .0;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{}: cannot listen on {addr}", def.name))
}

/// Serves `def` on `listener` until `shutdown` completes, then drains in-flight calls for at
/// most `server.shutdown_grace_ms`.
pub async fn serve(
    def: &'static ServiceDef,
    settings: Arc<Settings>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let url = settings.database_url()?.clone();
    let access = DatabaseAccess::new(def.schema, url, &settings.database);
    let pool = access
        .app_pool()
        .context("database.url is not a usable PostgreSQL URL")?;
    crate::metrics::observe_pool(def.name, &pool);

    let authenticator = Arc::new(Authenticator::from_settings(&settings)?);
    let signer = TokenSigner::from_settings(&settings)?.map(Arc::new);
    let service_token = signer.as_ref().map(|signer| {
        let ttl = i64::try_from(settings.auth.service_token_ttl_secs).unwrap_or(300);
        Arc::new(ServiceToken::new(Arc::clone(signer), def.name, ttl))
    });
    let outgoing = Outgoing::new(
        service_token,
        settings.server.request_timeout(),
        settings.tls.clone(),
    );

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let ready = Arc::new(AtomicBool::new(false));
    set_health(&reporter, def, false).await;
    let (drain_streams, draining) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn(watch_database(
        def,
        access,
        reporter.clone(),
        Arc::clone(&ready),
        Duration::from_millis(settings.database.health_interval_ms),
        draining.clone(),
    ));

    let reflection_v1 = reflection(def).build_v1()?;
    let reflection_v1alpha = reflection(def).build_v1alpha()?;
    let context = ServiceContext {
        pool: pool.clone(),
        settings: Arc::clone(&settings),
        signer,
        outgoing,
        draining,
        ready: Arc::clone(&ready),
    };
    tokio::spawn(forget_expired(def, context.clone()));
    let routes = (def.routes)(context)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let limits = &settings.server;
    let max_streams = u32::try_from(limits.max_concurrent_requests_per_connection).ok();
    let addr = listener.local_addr()?;
    let tls = settings.tls.cert_file.is_some();
    tracing::info!(service = def.name, %addr, tls, "listening");

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_reporter = reporter.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!(service = def.name, "draining");
        // Load balancers stop sending new calls while the in-flight ones finish.
        set_health(&signal_reporter, def, false).await;
        drain_streams.send_replace(true);
        let _ = drain_tx.send(());
    };
    let mut builder = Server::builder();
    if let Some(tls) = crate::tls::server_config(&settings.tls)? {
        builder = builder
            .tls_config(tls)
            .context("tls: the certificate and key cannot be used together")?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = builder
        // tonic's own timeout (until the response headers) answers CANCELLED and honours the
        // caller's `grpc-timeout` (a tower TimeoutLayer would reset the stream instead).
        .timeout(limits.request_timeout())
        .concurrency_limit_per_connection(limits.max_concurrent_requests_per_connection)
        .max_concurrent_streams(max_streams)
        .trace_fn(telemetry::server_span)
        // Outermost, so refused calls (unauthenticated, database lost) are counted too.
        .layer(crate::metrics::RpcMetricsLayer::new(
            def.name,
            def.descriptor_set,
            limits.request_timeout(),
        )?)
        // Who is calling is settled first: without credentials the answer is UNAUTHENTICATED
        // whatever the state of the database.
        .layer(AdmissionLayer::new(
            Authenticate(authenticator),
            def.error_domain,
        ))
        .layer(AdmissionLayer::new(
            DatabaseReady(Arc::clone(&ready)),
            def.error_domain,
        ))
        .add_routes(routes)
        // Without TCP_NODELAY, Nagle holds back small gRPC frames: ~40 ms stalls
        // (docs/benchmarks.md).
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);

    let grace = limits.shutdown_grace();
    let drain_deadline = async move {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = &mut server => result.map_err(anyhow::Error::from),
        () = drain_deadline => {
            tracing::warn!(service = def.name, "drain grace elapsed; closing open calls");
            Ok(())
        }
    };
    probe.abort();
    pool.close().await;
    tracing::info!(service = def.name, "stopped");
    result
}

/// Reflection of the service's contract, health, and the `google.rpc` error details, so that
/// grpcurl can decode the `ErrorInfo` and `BadRequest` of a failed call.
fn reflection(def: &ServiceDef) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(def.descriptor_set)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Once the service is ready, and until it drains: one replica at a time forgets what has
/// outlived its retention, every `RETENTION_SWEEP`: stored idempotency answers, and the oldest
/// events of the service's feed (`events.retention_days`).
async fn forget_expired(def: &'static ServiceDef, context: ServiceContext) {
    const RETENTION_SWEEP: Duration = Duration::from_secs(3600);
    const BATCH: i32 = 10_000;
    if !context.until_ready().await {
        return;
    }
    let drained = |mut draining: tokio::sync::watch::Receiver<bool>| async move {
        let _ = draining.wait_for(|drain| *drain).await;
    };
    let name = format!("{}.retention", def.schema.name);
    let writer = crate::single_writer::SingleWriter::new(&name, RETENTION_SWEEP);
    let retention_days = context.settings.events.retention_days;
    writer
        .run(&context.pool, drained(context.draining.clone()), |conn| {
            let draining = context.draining.clone();
            Box::pin(async move {
                loop {
                    let schema = def.schema.name;
                    // In batches, so no one statement holds locks for long.
                    while crate::idempotency::forget_expired(conn, schema, BATCH.into()).await?
                        == u64::try_from(BATCH).unwrap_or(u64::MAX)
                    {}
                    while crate::events::forget_old_events(conn, schema, retention_days, BATCH)
                        .await?
                        == i64::from(BATCH)
                    {}
                    tokio::select! {
                        () = tokio::time::sleep(RETENTION_SWEEP) => {}
                        () = drained(draining.clone()) => return Ok(()),
                    }
                }
            })
        })
        .await;
}

/// Consecutive failed probes after which a ready service says it is not: one slow answer is
/// not a lost database.
const PROBE_FAILURES_TO_NOT_SERVING: u32 = 2;

/// Keeps health and the readiness gate in step with the database: migrates when this process
/// may, then probes on every tick, over a connection of its own, until the drain starts.
async fn watch_database(
    def: &'static ServiceDef,
    access: DatabaseAccess,
    reporter: HealthReporter,
    ready: Arc<AtomicBool>,
    interval: Duration,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let mut migrated = !access.can_migrate();
    let mut probe_conn: Option<sqlx::PgConnection> = None;
    let mut failures = 0;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // A draining server stays NOT_SERVING whatever the database does.
            _ = draining.wait_for(|draining| *draining) => return,
        }
        if !migrated {
            match access.migrate().await {
                Ok(()) => migrated = true,
                Err(e) => {
                    tracing::warn!(service = def.name, error = %e, "migration failed; retrying")
                }
            }
        }
        let answered = tokio::time::timeout(
            interval.max(Duration::from_secs(2)),
            probe(&access, &mut probe_conn, def.schema),
        )
        .await;
        let healthy = matches!(answered, Ok(Ok(true)));
        if healthy {
            // Up to date, by us or by a migration job: nothing left to migrate.
            migrated = true;
            failures = 0;
        } else {
            failures += 1;
            probe_conn = None;
        }
        let was_ready = ready.load(Ordering::SeqCst);
        let now_ready = healthy || (was_ready && failures < PROBE_FAILURES_TO_NOT_SERVING);
        if now_ready != was_ready {
            ready.store(now_ready, Ordering::SeqCst);
            if now_ready {
                tracing::info!(service = def.name, "database ready: serving");
            } else {
                tracing::warn!(service = def.name, "database unavailable: not serving");
            }
            set_health(&reporter, def, now_ready).await;
        }
    }
}

/// One probe on the kept connection, connecting first if there is none.
async fn probe(
    access: &DatabaseAccess,
    conn: &mut Option<sqlx::PgConnection>,
    schema: Schema,
) -> Result<bool, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(access.connect_app().await?);
    }
    match conn {
        Some(conn) => crate::db::is_ready(conn, schema).await,
        None => Ok(false),
    }
}

async fn set_health(reporter: &HealthReporter, def: &ServiceDef, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(def.grpc_service, status).await;
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Answers `UNAVAILABLE` at once while the database is lost, instead of letting each call wait
/// for a connection until its deadline.
#[derive(Debug, Clone)]
struct DatabaseReady(Arc<AtomicBool>);

impl Admission for DatabaseReady {
    fn admit(&self, _headers: &http::HeaderMap) -> Result<Option<Caller>, ApiError> {
        if self.0.load(Ordering::SeqCst) {
            Ok(None)
        } else {
            Err(ApiError::unavailable(
                DATABASE_UNAVAILABLE,
                "the database is unavailable",
            ))
        }
    }
}
