//! The PostgreSQL backend.

use std::str::FromStr;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::billing::LedgerConn;
use crate::store::dialect::Dialect;
use crate::store::tasks::SqlTaskStore;
use crate::store::{Backend, MIGRATIONS_TABLE, StoreError};

/// Tasks and channels in PostgreSQL.
pub type PostgresTaskStore = SqlTaskStore<Postgres>;

run_statements!(Postgres);

impl Dialect for Postgres {
    const BACKEND: Backend = Backend::Postgres;

    /// A page and its total run concurrently on two connections: the server works on both at
    /// once.
    const TOTAL_IN_PAGE_STATEMENT: bool = false;

    /// Totals stay cached prepared statements: PostgreSQL re-plans a prepared statement with
    /// its parameters until a generic plan proves as cheap.
    const TOTAL_UNPREPARED: bool = false;

    /// Statistics, and the visibility map that index-only scans need (a bulk load leaves every
    /// page unmarked until autovacuum gets to it).
    const REFRESH_STATISTICS: &'static [&'static str] = &[
        "VACUUM (ANALYZE) midjourneys",
        "VACUUM (ANALYZE) mj_task_counts",
    ];

    const ADD_TO_EXISTING_COUNT: &'static str = " ON CONFLICT (dims, user_id, channel_id, \
        status, action, bucket) DO UPDATE SET tasks = mj_task_counts.tasks + EXCLUDED.tasks";

    const INTEGER_TYPE: &'static str = "BIGINT";

    const RANGE_ONLY_PREFIX: &'static str = "";

    const TRACKS_SUBMIT_ORDER: bool = false;

    const BEGIN_WRITE: &'static str = "BEGIN";

    fn insert_returning_id(
        conn: &mut PgConnection,
        mut statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<i64>> {
        statement.push(" RETURNING id");
        Box::pin(async move { statement.build_query_scalar().fetch_one(conn).await })
    }

    /// PostgreSQL does not move an identity past explicit ids: the next ordinary insert would
    /// collide.
    fn sync_id_sequence(table: &'static str) -> Option<&'static str> {
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

    fn ledger_conn(conn: &mut PgConnection) -> LedgerConn<'_> {
        LedgerConn::Postgres(conn)
    }
}

impl SqlTaskStore<Postgres> {
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

    /// Applies the migrations that are not applied yet (idempotent, serialised by an advisory
    /// lock when several instances start at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await?;
        Ok(())
    }
}
