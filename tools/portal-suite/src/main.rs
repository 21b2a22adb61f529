//! `portal-suite`: the whole suite in one process for development. Runs the four services on
//! their configured ports against the configured PostgreSQL, or, when none is configured or
//! reachable, against a private PostgreSQL it starts from the local binaries in a data folder
//! it keeps between runs. Stops cleanly on Ctrl-C or SIGTERM. With no keys configured it
//! makes development keys and writes an OPERATOR token; `portal-suite mint-token` mints more.

mod dev_keys;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use portal_platform::ServiceDef;
use portal_platform::auth::Kind;
use portal_platform::config::Settings;
use portal_platform::db::{ensure_database, with_database};
use portal_platform::local_pg::LocalCluster;
use portal_platform::{server, telemetry};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use tokio::sync::watch;

const SERVICES: [&ServiceDef; 4] = [
    &identity_service::SERVICE,
    &consent_service::SERVICE,
    &approval_service::SERVICE,
    &transfer_service::SERVICE,
];

/// The database the suite's services share, one schema each.
const SUITE_DATABASE: &str = "portal";

#[derive(Debug, Parser)]
#[command(about = "Run the portal privacy suite (all four services) in one process")]
struct Args {
    /// A TOML file layered over the compiled-in defaults (the environment still wins).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The suite's folder: the private PostgreSQL (`postgres/`), the development key and the
    /// OPERATOR token.
    #[arg(
        long,
        value_name = "DIR",
        default_value = ".portal-suite",
        global = true
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the suite (the default).
    Run,
    /// Print a token from the development key, e.g. for grpcurl's `-H "authorization: Bearer ..."`.
    MintToken {
        /// USER, SERVICE, OPERATOR or AUDITOR.
        #[arg(long)]
        kind: Kind,
        /// `tenants/{t}/users/{u}`, `services/<name>`, or a staff id such as `operators/me`.
        #[arg(long)]
        subject: String,
        /// The subject's tenant, `tenants/{t}` (users).
        #[arg(long)]
        tenant: Option<String>,
        /// A role (TENANT_ADMIN, MEMBER); repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 900)]
        ttl_secs: i64,
        /// The key id the token names, as the services' `auth.trusted_keys` list the key (a
        /// new id per key lets a successor be trusted before the old key is retired).
        #[arg(long, default_value = dev_keys::KEY_ID)]
        key_id: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("portal-suite: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("portal-suite: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match args.command {
        Some(Command::MintToken {
            kind,
            subject,
            tenant,
            roles,
            ttl_secs,
            key_id,
        }) => dev_keys::mint(
            &settings,
            &args.data_dir,
            &dev_keys::Mint {
                key_id: &key_id,
                kind,
                subject: &subject,
                tenant: tenant.as_deref(),
                roles: &roles,
                ttl_secs,
            },
        )
        .map(|token| println!("{token}")),
        Some(Command::Run) | None => runtime.block_on(run(args.data_dir, settings)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portal-suite: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(data_dir: PathBuf, mut settings: Settings) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("portal-suite", &settings.telemetry)?;
    if dev_keys::wanted(&settings) {
        dev_keys::install(&mut settings, &data_dir)?;
        let token = dev_keys::write_operator_token(&settings, &data_dir)?;
        println!(
            "development keys in {}; OPERATOR token (12 h) in {}",
            data_dir.display(),
            token.display()
        );
    }
    dev_keys::install_pi_keys(&mut settings, &data_dir)?;
    let (url, cluster) = choose_database(&settings, &data_dir.join("postgres")).await?;
    settings.database.url = Some(url);
    if cluster.is_some() {
        settings.database.assume_roles = true;
    }
    // Whatever happens to the services, a private PostgreSQL we started is stopped again.
    let result = serve_all(settings).await;
    if let Some(cluster) = cluster {
        println!(
            "stopping the private PostgreSQL in {}",
            cluster.data_dir().display()
        );
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    println!("portal-suite stopped");
    result
}

/// Runs the four services until Ctrl-C or SIGTERM, or until one of them fails, which stops the
/// others: a suite missing a service would only mislead.
async fn serve_all(mut settings: Settings) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // Every port is taken first, so that services configured with port 0 (tests) can be told
    // where the others really are before any of them calls another.
    let mut listeners = Vec::new();
    for def in SERVICES {
        let listener = server::bind(def, &settings).await?;
        let port = listener.local_addr()?.port();
        let scheme = portal_platform::tls::scheme(&settings.tls);
        if let Some(endpoint @ None) = settings.endpoint_mut(def.name) {
            *endpoint = Some(format!("{scheme}://127.0.0.1:{port}"));
        }
        listeners.push((def, listener));
    }
    let settings = Arc::new(settings);
    for (def, listener) in listeners {
        println!(
            "{:<9} {:<45} listening on {}",
            def.name,
            def.grpc_service,
            listener.local_addr()?
        );
        let mut stop = stop_rx.clone();
        let shutdown = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let served = server::serve(def, Arc::clone(&settings), listener, shutdown);
        tasks.spawn(async move { (def.name, served.await) });
    }
    println!("portal-suite is up; Ctrl-C stops it");

    let mut result = Ok(());
    tokio::select! {
        () = server::shutdown_signal() => {}
        Some(ended) = tasks.join_next() => {
            result = Err(service_failure(ended));
        }
    }
    stop_tx.send_replace(true);
    // The drain may take the grace period; a second Ctrl-C means "now".
    tokio::spawn(async {
        server::shutdown_signal().await;
        eprintln!("portal-suite: second signal, exiting without waiting for the drain");
        std::process::exit(130);
    });
    while let Some(ended) = tasks.join_next().await {
        if let Ok((_, Ok(()))) = ended {
            continue;
        }
        if result.is_ok() {
            result = Err(service_failure(ended));
        }
    }
    result
}

fn service_failure(
    ended: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok((name, Ok(()))) => anyhow::anyhow!("the {name} service stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("the {name} service failed")),
        Err(e) => anyhow::anyhow!("a service task failed: {e}"),
    }
}

/// The configured server when it answers; otherwise a private cluster in `data_dir`.
async fn choose_database(
    settings: &Settings,
    data_dir: &std::path::Path,
) -> anyhow::Result<(SecretString, Option<LocalCluster>)> {
    if let Some(url) = &settings.database.url {
        if reachable(url).await {
            ensure_named_database(url).await?;
            println!("using the configured PostgreSQL");
            return Ok((url.clone(), None));
        }
        println!("the configured PostgreSQL does not answer; starting a private one");
    }
    let dir = data_dir.to_path_buf();
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&dir))
        .await?
        .context("starting a private PostgreSQL")?;
    println!(
        "private PostgreSQL on 127.0.0.1:{}, data kept in {}",
        cluster.port(),
        cluster.data_dir().display()
    );
    let url = with_database(&cluster.admin_url(), SUITE_DATABASE)?;
    ensure_database(&cluster.admin_url(), SUITE_DATABASE).await?;
    Ok((url, Some(cluster)))
}

async fn reachable(url: &SecretString) -> bool {
    let Ok(maintenance) = with_database(url, "postgres") else {
        return false;
    };
    let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(maintenance.expose_secret())
    else {
        return false;
    };
    let attempt = sqlx::PgConnection::connect_with(&options);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(_))
    )
}

/// Development convenience: the database the URL names is created if missing.
async fn ensure_named_database(url: &SecretString) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url.expose_secret())?;
    let name = parsed.path().trim_start_matches('/');
    if !name.is_empty() {
        ensure_database(url, name).await?;
    }
    Ok(())
}
