//! PostgreSQL: each service owns one schema, named after it, with two roles (`SPEC.md`,
//! Security): `<schema>_owner` owns the schema and runs its migrations (the migrations table
//! lives inside the schema), and `<schema>_app`, which the running service uses, gets only the
//! data access its migrations grant. Roles are cluster-wide, so creating them is idempotent and
//! serialised by an advisory lock; schemas and grants are per database.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, SqlSafeStr};

use crate::config::DatabaseSettings;

/// Advisory-lock key that serialises bootstrap and migrations within one database: a `GRANT`
/// and a `REVOKE` on the same schema at once fail with "tuple concurrently updated".
const MIGRATION_LOCK_KEY: i64 = 0x706f_7274_616c_0001;

/// Statements for the database as a whole, run with every bootstrap. Database privileges live
/// outside the database, so a copy made from a template does not inherit them: whoever copies
/// one runs these again.
pub const DATABASE_STATEMENTS: &[&str] = &[
    // PUBLIC may create temporary tables and functions by default: DDL the app roles must not
    // run either.
    "DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', \
     current_database()); END $$",
];

/// A table one of the platform's mechanisms keeps in every service's schema. `{schema}` and
/// `{app}` in the SQL stand for the schema and its app role.
#[derive(Debug)]
pub struct PlatformTable {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every platform table. Each mechanism declares its own, with versions in its own range
/// (events 1000-1999, idempotency 2000-2999).
fn platform_tables() -> impl Iterator<Item = &'static PlatformTable> {
    crate::events::TABLES
        .iter()
        .chain(crate::idempotency::TABLES.iter())
}

/// One service's schema and its migrations.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Schema name; also the prefix of the service's two roles.
    pub name: &'static str,
    pub migrations: &'static Migrator,
}

impl Schema {
    pub fn owner_role(&self) -> String {
        format!("{}_owner", self.name)
    }

    pub fn app_role(&self) -> String {
        format!("{}_app", self.name)
    }

    /// The migrator for this schema, recording applied migrations inside the schema itself.
    pub fn migrator(&self) -> Migrator {
        Migrator {
            migrations: self.migrations.migrations.clone(),
            table_name: format!("{}._sqlx_migrations", self.name).into(),
            // Migrations newer than this binary are a newer release's: a rollback must still
            // migrate (nothing to do) and serve.
            ignore_missing: true,
            ..Migrator::DEFAULT
        }
    }

    /// The platform's own tables in this schema (event outbox, consumer cursors, idempotency
    /// records), versioned in `<schema>._platform_migrations` apart from the service's own.
    pub fn platform_migrator(&self) -> Migrator {
        let migrations = platform_tables()
            .map(|table| {
                let sql = table
                    .sql
                    .replace("{schema}", self.name)
                    .replace("{app}", &self.app_role());
                Migration::new(
                    table.version,
                    table.description.into(),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.table_name = format!("{}._platform_migrations", self.name).into();
        migrator.ignore_missing = true;
        migrator
    }

    /// Statements a superuser runs to give this schema its roles (development, tests). In
    /// production a DBA runs the equivalent once; `docs/platform.md` shows them.
    pub fn bootstrap_statements(&self) -> Vec<String> {
        let schema = self.name;
        let mut statements: Vec<String> = [self.owner_role(), self.app_role()]
            .iter()
            // Roles are cluster-wide and advisory locks are not, so processes bootstrapping
            // different databases can race to create a role: losing that race is success.
            .map(|role| {
                format!(
                    "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                )
            })
            .collect();
        statements.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {}",
            self.owner_role()
        ));
        statements.push(format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"));
        statements.extend(DATABASE_STATEMENTS.iter().map(|s| (*s).to_owned()));
        statements
    }
}

/// How this process reaches its database, from configuration.
#[derive(Debug, Clone)]
pub struct DatabaseAccess {
    schema: Schema,
    url: SecretString,
    migration_url: Option<SecretString>,
    assume_roles: bool,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl DatabaseAccess {
    pub fn new(schema: Schema, url: SecretString, settings: &DatabaseSettings) -> Self {
        Self {
            schema,
            url,
            migration_url: settings.migration_url.clone(),
            assume_roles: settings.assume_roles,
            max_connections: settings.max_connections,
            acquire_timeout: Duration::from_millis(settings.acquire_timeout_ms),
        }
    }

    /// The pool the running service uses. It connects lazily, so a service can start (and say
    /// NOT_SERVING) while its database is away; with `assume_roles` every connection runs as
    /// the app role.
    pub fn app_pool(&self) -> Result<PgPool, sqlx::Error> {
        let options = PgConnectOptions::from_str(self.url.expose_secret())?;
        let mut pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout);
        if self.assume_roles {
            let set_role = format!("SET ROLE {}", self.schema.app_role());
            pool = pool.after_connect(move |conn, _meta| {
                // Role names come from compile-time schema names, never from input.
                let set_role = AssertSqlSafe(set_role.clone());
                Box::pin(async move {
                    conn.execute(set_role).await?;
                    Ok(())
                })
            });
        }
        Ok(pool.connect_lazy_with(options))
    }

    /// A connection of its own as the app role, outside the pool: the health probe uses it, so a
    /// busy pool is not mistaken for a lost database.
    pub async fn connect_app(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = self.connect(&self.url).await?;
        if self.assume_roles {
            conn.execute(AssertSqlSafe(format!(
                "SET ROLE {}",
                self.schema.app_role()
            )))
            .await?;
        }
        Ok(conn)
    }

    /// Whether this process may bring its schema up to date itself.
    pub fn can_migrate(&self) -> bool {
        self.assume_roles || self.migration_url.is_some()
    }

    /// Creates roles and schema if needed and applies pending migrations as the owner role.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let url = match (&self.migration_url, self.assume_roles) {
            (_, true) => &self.url,
            (Some(url), false) => url,
            (None, false) => return Ok(()),
        };
        let mut conn = self.connect(url).await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut conn)
            .await?;
        let migrated = self.migrate_locked(&mut conn).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut conn)
            .await;
        migrated?;
        unlocked?;
        conn.close().await
    }

    async fn migrate_locked(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let schema = self.schema;
        if self.assume_roles {
            let mut tx = conn.begin().await?;
            for statement in schema.bootstrap_statements() {
                tx.execute(AssertSqlSafe(statement)).await?;
            }
            tx.commit().await?;
            conn.execute(AssertSqlSafe(format!("SET ROLE {}", schema.owner_role())))
                .await?;
        }
        for (migrator, table) in [
            (schema.platform_migrator(), "_platform_migrations"),
            (schema.migrator(), "_sqlx_migrations"),
        ] {
            migrator
                // `run_direct` is sqlx's way around `run`'s future not being provably `Send`.
                .run_direct(None, &mut *conn, false)
                .await
                .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
            // The app role reads the migrations tables to know its schema is up to date.
            conn.execute(AssertSqlSafe(format!(
                "GRANT SELECT ON {}.{table} TO {}",
                schema.name,
                schema.app_role()
            )))
            .await?;
        }
        Ok(())
    }

    async fn connect(&self, url: &SecretString) -> Result<PgConnection, sqlx::Error> {
        let options = PgConnectOptions::from_str(url.expose_secret())?;
        tokio::time::timeout(self.acquire_timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }
}

/// Whether the database answers and holds every migration this binary knows. Migrations newer
/// than the binary are fine: during a rolling update old replicas keep serving.
pub async fn is_ready(conn: &mut PgConnection, schema: Schema) -> Result<bool, sqlx::Error> {
    for (migrator, table) in [
        (schema.platform_migrator(), "_platform_migrations"),
        (schema.migrator(), "_sqlx_migrations"),
    ] {
        let query = format!("SELECT version FROM {}.{table} WHERE success", schema.name);
        let applied: Vec<i64> = match sqlx::query_scalar(AssertSqlSafe(query))
            .fetch_all(&mut *conn)
            .await
        {
            Ok(versions) => versions,
            // No migrations table yet (42P01), or not yet granted to the app role (42501).
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01" | "42501")) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        if !migrator.iter().all(|m| applied.contains(&m.version)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The URL with its database name replaced: used to reach the `postgres` maintenance database
/// or a freshly created one from the same server.
pub fn with_database(url: &SecretString, database: &str) -> Result<SecretString, url::ParseError> {
    let mut parsed = url::Url::parse(url.expose_secret())?;
    parsed.set_path(&format!("/{database}"));
    Ok(SecretString::from(parsed.to_string()))
}

/// Creates `database` on the server `admin_url` points at, unless it exists.
pub async fn ensure_database(admin_url: &SecretString, database: &str) -> Result<(), sqlx::Error> {
    let maintenance = with_database(admin_url, "postgres")
        .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    let options = PgConnectOptions::from_str(maintenance.expose_secret())?;
    let mut conn = PgConnection::connect_with(&options).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let created = conn
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
            .await;
        match created {
            // Lost a race with another process creating it: that is the state we wanted.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            other => {
                other?;
            }
        }
    }
    conn.close().await
}
