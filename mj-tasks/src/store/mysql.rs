//! The MySQL / MariaDB backend.

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, QueryBuilder};

use crate::store::{MIGRATIONS_TABLE, StoreError};

/// Tasks and channels in MySQL or MariaDB.
#[derive(Debug, Clone)]
pub struct MySqlTaskStore {
    pool: MySqlPool,
}

impl MySqlTaskStore {
    /// Totals go over the text protocol with their values inlined: MariaDB 10.11 can re-execute
    /// a cached `SELECT COUNT(*) ... WHERE user_id = ?` as a full table scan (3.5 s on 1M rows)
    /// where the same count planned for its literal values reads an index range (40 ms), and a
    /// text query is one round trip where an uncached prepared statement costs two.
    pub(crate) const COUNT_OVER_TEXT_PROTOCOL: bool = true;

    /// A page and its total run concurrently on two connections (the total cannot join the
    /// page's cached statement, see above).
    pub(crate) const TOTAL_IN_PAGE_STATEMENT: bool = false;

    /// InnoDB's persistent statistics, re-sampled now rather than after its own threshold.
    pub(crate) const REFRESH_STATISTICS: &[&str] = &["ANALYZE TABLE midjourneys"];

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

    /// Wraps an existing pool; call [`Self::migrate`] before use if the schema may be missing.
    pub fn from_pool(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Applies the migrations that are not applied yet (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/mysql");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// InnoDB moves `AUTO_INCREMENT` past explicitly written ids by itself.
    pub(crate) fn sync_id_sequence(_table: &'static str) -> Option<&'static str> {
        None
    }

    /// The connection pool, for sharing with other tables of an embedding application.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    // MySQL has no INSERT ... RETURNING (MariaDB's is 10.5+ only); the insert id comes back in
    // the OK packet instead.
    async fn insert_returning_id(
        &self,
        mut builder: QueryBuilder<MySql>,
    ) -> Result<i64, sqlx::Error> {
        let result = builder.build().execute(&self.pool).await?;
        i64::try_from(result.last_insert_id())
            .map_err(|_| sqlx::Error::Protocol("insert id does not fit in i64".into()))
    }
}

impl_sql_stores!(MySqlTaskStore, sqlx::MySql);
impl_setting_store!(MySqlTaskStore, sqlx::MySql);
impl_import_store!(MySqlTaskStore, sqlx::MySql);
