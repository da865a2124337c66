//! The PostgreSQL backend.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use crate::store::{MIGRATIONS_TABLE, StoreError};

/// Tasks and channels in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresTaskStore {
    pool: PgPool,
}

impl PostgresTaskStore {
    /// Totals stay cached prepared statements: PostgreSQL re-plans a prepared statement with
    /// its parameters until a generic plan proves as cheap.
    pub(crate) const COUNT_OVER_TEXT_PROTOCOL: bool = false;

    /// A page and its total run concurrently on two connections: the server works on both at
    /// once.
    pub(crate) const TOTAL_IN_PAGE_STATEMENT: bool = false;

    /// Statistics, and the visibility map that index-only scans need (a bulk load leaves
    /// every page unmarked until autovacuum gets to it).
    pub(crate) const REFRESH_STATISTICS: &[&str] = &["VACUUM (ANALYZE) midjourneys"];

    /// Connects to `url` (`postgres://user@host/db`) and applies the migrations.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), mj_tasks::StoreError> {
    /// let store = mj_tasks::PostgresTaskStore::connect("postgres://postgres@127.0.0.1/test").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url)?;
        // The migrators' `CREATE TABLE IF NOT EXISTS` draws a NOTICE on every start, which
        // sqlx logs at INFO; warnings and errors still come through. A URL that sets the
        // level itself keeps it.
        if !url.contains("client_min_messages") {
            options = options.options([("client_min_messages", "warning")]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(crate::store::NETWORK_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool; call [`Self::migrate`] before use if the schema may be missing.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies the migrations that are not applied yet (idempotent, serialised by an advisory
    /// lock when several instances start at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The statement that moves `table`'s identity sequence past rows written with explicit
    /// ids (an import): PostgreSQL does not, and the next ordinary insert would collide.
    pub(crate) fn sync_id_sequence(table: &'static str) -> Option<&'static str> {
        match table {
            "midjourneys" => Some(
                "SELECT setval(pg_get_serial_sequence('midjourneys', 'id'), MAX(id)) \
                 FROM midjourneys",
            ),
            "mj_channels" => Some(
                "SELECT setval(pg_get_serial_sequence('mj_channels', 'id'), MAX(id)) \
                 FROM mj_channels",
            ),
            _ => None,
        }
    }

    /// The connection pool, for sharing with other tables of an embedding application.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn insert_returning_id(
        &self,
        mut builder: QueryBuilder<Postgres>,
    ) -> Result<i64, sqlx::Error> {
        builder.push(" RETURNING id");
        builder.build_query_scalar().fetch_one(&self.pool).await
    }
}

impl_sql_stores!(PostgresTaskStore, sqlx::Postgres);
impl_setting_store!(PostgresTaskStore, sqlx::Postgres);
impl_import_store!(PostgresTaskStore, sqlx::Postgres);
