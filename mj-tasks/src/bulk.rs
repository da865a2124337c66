//! Bulk loading: millions of tasks into a store as fast as its backend takes them (the server's
//! `seed`, imports).
//!
//! A [`BulkLoader`] opens its own connection, tuned for one writer appending many rows in big
//! transactions, and writes through [`TaskStore::insert_many`], so every index and every
//! derived table the store keeps is maintained exactly as by normal writes. [`BulkLoader::finish`]
//! then refreshes the planner statistics, so that the database is left as fast as normal
//! operation would leave it, with no manual `ANALYZE`.

use std::sync::Arc;

use crate::model::NewTask;
use crate::store::{Backend, SqlStore, StoreError, TaskStore};

/// SQLite page cache of the loading connection, in KiB: large enough to keep the indexes'
/// interior pages and their growing right edges in memory at 10M rows, where the default 2 MiB
/// sends every index insert to the OS page cache.
#[cfg(feature = "sqlite")]
const SQLITE_BULK_CACHE_KIB: i64 = 512 * 1024;

/// Writes many tasks through one connection tuned for bulk appends.
pub struct BulkLoader {
    store: SqlStore,
    tasks: Arc<dyn TaskStore>,
}

impl BulkLoader {
    /// Opens the database `url` names for a bulk load (applying the migrations, like
    /// [`crate::connect`]).
    ///
    /// SQLite: one connection with a large page cache, a rollback journal instead of WAL while
    /// no other connection has the file open (WAL again at [`Self::finish`]) and
    /// `synchronous = OFF` for this connection only (a power loss mid-load can lose the last
    /// transactions; a crashed process loses nothing committed). PostgreSQL: `synchronous_commit = off`
    /// for this session. MySQL / MariaDB: the store's own settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = match Backend::from_url(url) {
            #[cfg(feature = "sqlite")]
            Some(Backend::Sqlite) => SqlStore::Sqlite(connect_sqlite(url).await?),
            #[cfg(feature = "postgres")]
            Some(Backend::Postgres) => SqlStore::Postgres(connect_postgres(url).await?),
            _ => crate::connect(url).await?,
        };
        Ok(Self {
            tasks: store.tasks(),
            store,
        })
    }

    /// Inserts `tasks` in one transaction; returns how many were inserted. Chunks of tens of
    /// thousands of tasks amortise each commit best.
    pub async fn load(&self, tasks: &[NewTask]) -> Result<u64, StoreError> {
        self.tasks.insert_many(tasks).await
    }

    /// The loader's store on its one tuned connection, for writes that belong with the load
    /// (an import's claims and [`TaskStore::insert_with_ids`]).
    pub fn store(&self) -> &SqlStore {
        &self.store
    }

    /// Puts the database back in its normal mode (SQLite: WAL), refreshes the planner
    /// statistics of the task tables ([`TaskStore::refresh_statistics`]) and closes the
    /// connection.
    pub async fn finish(self) -> Result<(), StoreError> {
        let finished = self.restore_and_analyze().await;
        self.store.close().await;
        finished
    }

    async fn restore_and_analyze(&self) -> Result<(), StoreError> {
        // Irrefutable when SQLite is the only backend built.
        #[cfg(feature = "sqlite")]
        #[allow(irrefutable_let_patterns)]
        if let SqlStore::Sqlite(sqlite) = &self.store {
            // A no-op when the load ran in WAL.
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(sqlite.pool())
                .await?;
        }
        self.tasks.refresh_statistics().await
    }
}

#[cfg(feature = "sqlite")]
async fn connect_sqlite(url: &str) -> Result<crate::SqliteTaskStore, StoreError> {
    use sqlx::sqlite::SqliteJournalMode;

    // A rollback journal writes each appended page once, where WAL writes it twice (to the log,
    // then again at the checkpoint): a fifth less time at a million rows. Leaving WAL needs the
    // only connection to the file; when a server has it open, the load stays in WAL.
    let store = match connect_sqlite_with(url, SqliteJournalMode::Delete).await {
        Ok(store) => store,
        Err(_) => connect_sqlite_with(url, SqliteJournalMode::Wal).await?,
    };
    store.migrate().await?;
    Ok(store)
}

#[cfg(feature = "sqlite")]
async fn connect_sqlite_with(
    url: &str,
    journal_mode: sqlx::sqlite::SqliteJournalMode,
) -> Result<crate::SqliteTaskStore, StoreError> {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};

    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(journal_mode)
        .synchronous(SqliteSynchronous::Off)
        .busy_timeout(Duration::from_secs(5))
        .pragma("cache_size", (-SQLITE_BULK_CACHE_KIB).to_string())
        .pragma("temp_store", "MEMORY")
        .analysis_limit(crate::store::sqlite::ANALYSIS_LIMIT);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    Ok(crate::SqliteTaskStore::from_pool(pool))
}

#[cfg(feature = "postgres")]
async fn connect_postgres(url: &str) -> Result<crate::PostgresTaskStore, StoreError> {
    use std::str::FromStr;

    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    let mut settings = vec![("synchronous_commit", "off")];
    if !url.contains("client_min_messages") {
        settings.push(("client_min_messages", "warning"));
    }
    let options = PgConnectOptions::from_str(url)?.options(settings);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?;
    let store = crate::PostgresTaskStore::from_pool(pool);
    store.migrate().await?;
    Ok(store)
}
