//! The `main` of every service binary: `<service> [--config FILE] [serve | migrate]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::db::DatabaseAccess;
use crate::server::{self, ServiceDef};
use crate::telemetry;

#[derive(Debug, Parser)]
struct Args {
    /// A TOML file layered over the compiled-in defaults (the environment still wins).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC until SIGTERM or Ctrl-C (the default).
    Serve,
    /// Apply pending migrations as the owner role, then exit (a deployment's migration job).
    Migrate,
}

/// Parses the command line, loads and validates settings, and runs the service. A bad setting
/// ends the process with exit code 2 and a message naming the key.
pub fn run(def: &'static ServiceDef) -> ExitCode {
    let args = Args::parse();
    // A service cannot run without its database, so a missing URL is a configuration error.
    let loaded = Settings::load(args.config.as_deref())
        .and_then(|settings| settings.database_url().map(|_| ()).map(|()| settings));
    let settings = match loaded {
        Ok(settings) => Arc::new(settings),
        Err(e) => {
            eprintln!("{}: {e}", def.name);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", def.name);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = telemetry::init(&format!("{}-service", def.name), &settings.telemetry)?;
        match args.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let listener = server::bind(def, &settings).await?;
                server::serve(def, settings, listener, server::shutdown_signal()).await
            }
            Command::Migrate => migrate(def, &settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", def.name);
            ExitCode::FAILURE
        }
    }
}

async fn migrate(def: &ServiceDef, settings: &Settings) -> anyhow::Result<()> {
    let access = DatabaseAccess::new(
        def.schema,
        settings.database_url()?.clone(),
        &settings.database,
    );
    if !access.can_migrate() {
        anyhow::bail!(
            "configuration key `database.migration_url` is required to migrate (or set database.assume_roles)"
        );
    }
    access.migrate().await?;
    tracing::info!(service = def.name, "migrations applied");
    Ok(())
}
