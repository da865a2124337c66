//! The MySQL / MariaDB backend.

use futures_util::future::BoxFuture;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use crate::billing::LedgerConn;
use crate::store::dialect::Dialect;
use crate::store::tasks::SqlTaskStore;
use crate::store::{Backend, MIGRATIONS_TABLE, StoreError};

/// Tasks and channels in MySQL or MariaDB.
pub type MySqlTaskStore = SqlTaskStore<MySql>;

run_statements!(MySql);

impl Dialect for MySql {
    const BACKEND: Backend = Backend::MySql;

    /// A page and its total run concurrently on two connections (the total cannot join the
    /// page's cached statement, see below).
    const TOTAL_IN_PAGE_STATEMENT: bool = false;

    /// Totals go over the text protocol with their values inlined: MariaDB 10.11 can re-execute
    /// a cached `SELECT COUNT(*) ... WHERE user_id = ?` as a full table scan (3.5 s on 1M rows)
    /// where the same count planned for its literal values reads an index range (40 ms), and a
    /// text query is one round trip where an uncached prepared statement costs two.
    const TOTAL_UNPREPARED: bool = true;

    /// InnoDB's persistent statistics, re-sampled now rather than after its own threshold.
    const REFRESH_STATISTICS: &'static [&'static str] =
        &["ANALYZE TABLE midjourneys", "ANALYZE TABLE mj_task_counts"];

    const ADD_TO_EXISTING_COUNT: &'static str =
        " ON DUPLICATE KEY UPDATE tasks = tasks + VALUES(tasks)";

    const INTEGER_TYPE: &'static str = "SIGNED";

    const RANGE_ONLY_PREFIX: &'static str = "";

    const TRACKS_SUBMIT_ORDER: bool = false;

    const BEGIN_WRITE: &'static str = "BEGIN";

    // MySQL has no INSERT ... RETURNING (MariaDB's is 10.5+ only); the insert id comes back in
    // the OK packet instead.
    fn insert_returning_id(
        conn: &mut MySqlConnection,
        mut statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<i64>> {
        Box::pin(async move {
            let result = statement.build().execute(conn).await?;
            i64::try_from(result.last_insert_id())
                .map_err(|_| sqlx::Error::Protocol("insert id does not fit in i64".into()))
        })
    }

    /// InnoDB moves `AUTO_INCREMENT` past explicitly written ids by itself.
    fn sync_id_sequence(_table: &'static str) -> Option<&'static str> {
        None
    }

    fn ledger_conn(conn: &mut MySqlConnection) -> LedgerConn<'_> {
        LedgerConn::MySql(conn)
    }
}

impl SqlTaskStore<MySql> {
    /// Connects to `url` (`mysql://root@host/db`; `mariadb://` is accepted as an alias) and
    /// applies the migrations.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), mj_tasks::StoreError> {
    /// let store = mj_tasks::MySqlTaskStore::connect("mysql://root@127.0.0.1/test").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let url = match url.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => url.to_owned(),
        };
        let pool = MySqlPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(crate::store::NETWORK_ACQUIRE_TIMEOUT)
            .connect(&url)
            .await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations that are not applied yet (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/mysql");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await?;
        Ok(())
    }
}
