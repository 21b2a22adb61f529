//! A fresh database per test, cloned from a template that holds every schema, role grant and
//! migration. The template's name is a hash of what built it, so a changed migration builds a
//! new template and concurrent test runs share an identical one.

use std::str::FromStr;

use portal_platform::config::DatabaseSettings;
use portal_platform::db::{DATABASE_STATEMENTS, DatabaseAccess, Schema, with_database};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};

use crate::postgres::admin_url;

/// Serialises template builds across processes.
const TEMPLATE_LOCK_KEY: i64 = 0x706f_7274_616c_0002;

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: SecretString,
    admin_url: SecretString,
}

impl TestDb {
    /// A new database holding the migrated schemas of `schemas`.
    pub async fn new(schemas: &[Schema]) -> anyhow::Result<Self> {
        let admin_url = admin_url()?;
        let template = ensure_template(&admin_url, schemas).await?;
        let name = format!("portal_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = connect(&admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            )))
            .await?;
        admin.close().await?;
        let url = with_database(&admin_url, &name)?;
        let mut copy = connect(&url).await?;
        for statement in DATABASE_STATEMENTS {
            copy.execute(*statement).await?;
        }
        copy.close().await?;
        Ok(Self {
            name,
            url,
            admin_url,
        })
    }

    /// Superuser URL of this database (services given it assume their roles).
    pub fn url(&self) -> &SecretString {
        &self.url
    }

    /// A pool that works as `schema`'s app role, exactly as the running service does.
    pub fn app_pool(&self, schema: Schema) -> anyhow::Result<PgPool> {
        Ok(DatabaseAccess::new(schema, self.url.clone(), &superuser_settings(10)).app_pool()?)
    }

    /// Bootstraps and migrates `schema` here, as a service's start-up does.
    pub async fn migrate(&self, schema: Schema) -> anyhow::Result<()> {
        Ok(
            DatabaseAccess::new(schema, self.url.clone(), &superuser_settings(1))
                .migrate()
                .await?,
        )
    }

    /// A superuser connection pool, for tests that inspect tables directly.
    pub async fn admin_pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPool::connect(self.url.expose_secret()).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs outside async; a short-lived runtime on its own thread does the I/O, and
        // runs even when the test panicked.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = connect(&admin_url).await?;
                admin.execute(AssertSqlSafe(statement)).await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

async fn connect(url: &SecretString) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url.expose_secret())?;
    Ok(PgConnection::connect_with(&options).await?)
}

fn template_name(schemas: &[Schema]) -> String {
    let mut hash = Sha256::new();
    for schema in schemas {
        hash.update(schema.name.as_bytes());
        for statement in schema.bootstrap_statements() {
            hash.update(statement.as_bytes());
        }
        for migration in schema
            .platform_migrator()
            .iter()
            .chain(schema.migrations.iter())
        {
            hash.update(migration.version.to_be_bytes());
            hash.update(&migration.checksum);
        }
    }
    format!("portal_tpl_{}", &hex::encode(hash.finalize())[..16])
}

async fn ensure_template(admin_url: &SecretString, schemas: &[Schema]) -> anyhow::Result<String> {
    let template = template_name(schemas);
    let mut admin = connect(admin_url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await?;
    let built = build_template(admin_url, &mut admin, &template, schemas).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    built.map(|()| template)
}

/// Builds the template under a temporary name and renames it when complete, so no one ever
/// clones a half-built template.
async fn build_template(
    admin_url: &SecretString,
    admin: &mut PgConnection,
    template: &str,
    schemas: &[Schema],
) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(template)
            .fetch_one(&mut *admin)
            .await?;
    if exists {
        return Ok(());
    }
    let building = format!("portal_tplbuild_{}", uuid::Uuid::now_v7().simple());
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE \"{building}\"")))
        .await?;
    let url = with_database(admin_url, &building)?;
    for schema in schemas {
        DatabaseAccess::new(*schema, url.clone(), &superuser_settings(1))
            .migrate()
            .await?;
    }
    admin
        .execute(AssertSqlSafe(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
        )))
        .await?;
    Ok(())
}

/// Settings for reaching a test database through its superuser URL, assuming the roles.
fn superuser_settings(max_connections: u32) -> DatabaseSettings {
    DatabaseSettings {
        url: None,
        migration_url: None,
        assume_roles: true,
        max_connections,
        acquire_timeout_ms: 30_000,
        health_interval_ms: 1000,
    }
}
