//! The SQLite backend, the embedded default.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};

use crate::billing::LedgerConn;
use crate::store::dialect::Dialect;
use crate::store::tasks::{SqlTaskStore, UpkeepGuard};
use crate::store::{Backend, MIGRATIONS_TABLE, StoreError};

/// Tasks and channels in SQLite.
///
/// Opened files use WAL journaling (readers never wait for the writer) and a 5 s busy timeout.
pub type SqliteTaskStore = SqlTaskStore<Sqlite>;

run_statements!(Sqlite);

impl Dialect for Sqlite {
    const BACKEND: Backend = Backend::Sqlite;

    /// A page and its total in one statement: SQLite is in-process, so a second statement costs
    /// a hop to another connection's thread rather than a network round trip, and two of them
    /// in parallel compete for the same cores as the caller.
    const TOTAL_IN_PAGE_STATEMENT: bool = true;

    /// Totals stay cached prepared statements: SQLite plans them the same for every bound value.
    const TOTAL_UNPREPARED: bool = false;

    /// `ANALYZE` reads at most [`ANALYSIS_LIMIT`] rows per index (set on every connection), so
    /// it takes milliseconds even at ten million tasks.
    const REFRESH_STATISTICS: &'static [&'static str] = &["ANALYZE"];

    const ADD_TO_EXISTING_COUNT: &'static str = " ON CONFLICT (dims, user_id, channel_id, \
        status, action, bucket) DO UPDATE SET tasks = mj_task_counts.tasks + excluded.tasks";

    const INTEGER_TYPE: &'static str = "INTEGER";

    const RANGE_ONLY_PREFIX: &'static str = "+";

    const TRACKS_SUBMIT_ORDER: bool = true;

    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn insert_returning_id(
        conn: &mut SqliteConnection,
        mut statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<i64>> {
        statement.push(" RETURNING id");
        Box::pin(async move { statement.build_query_scalar().fetch_one(conn).await })
    }

    /// SQLite gives the next row `MAX(id) + 1` by itself.
    fn sync_id_sequence(_table: &'static str) -> Option<&'static str> {
        None
    }

    fn ledger_conn(conn: &mut SqliteConnection) -> LedgerConn<'_> {
        LedgerConn::Sqlite(conn)
    }
}

/// Rows `ANALYZE` reads per index, the value SQLite recommends: enough for the planner to
/// tell a unique-ish index (`mj_id`) from a crowded one (a heavy user's).
pub(crate) const ANALYSIS_LIMIT: u32 = 400;

/// Recycles connections SQLite opened read-only.
///
/// SQLite opens a file it cannot write read-only instead of failing, and such a connection
/// stays read-only for its whole life: after a read-only spell (a protected file, a read-only
/// mount) the pool would keep refusing writes long after the file is writable again. So every
/// new connection checks whether the file is writable, as SQLite just did; when one was not,
/// connections opened until then are dropped on their next acquire once the file is writable,
/// and the pool opens fresh, writable ones by itself.
struct ReadOnlyOpens {
    path: std::path::PathBuf,
    epoch: std::time::Instant,
    /// Milliseconds after `epoch` of the last connection opened on a file that was not
    /// writable; 0 = never.
    last_read_only_open: std::sync::atomic::AtomicU64,
}

impl ReadOnlyOpens {
    fn watch(pool: SqlitePoolOptions, path: std::path::PathBuf) -> SqlitePoolOptions {
        let watch = std::sync::Arc::new(Self {
            path,
            epoch: std::time::Instant::now(),
            last_read_only_open: std::sync::atomic::AtomicU64::new(0),
        });
        let on_connect = watch.clone();
        pool.after_connect(move |_, _| {
            let watch = on_connect.clone();
            Box::pin(async move {
                if !watch.file_is_writable() {
                    let now = watch.millis(std::time::Duration::ZERO).max(1);
                    watch
                        .last_read_only_open
                        .store(now, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .before_acquire(move |conn, meta| {
            // A write that fails with SQLITE_FULL or SQLITE_IOERR makes SQLite roll the
            // transaction back by itself; sqlx's own ROLLBACK then fails and it keeps counting
            // the connection as inside a transaction, so every later `BEGIN IMMEDIATE` on it is
            // refused. A pooled connection is never legitimately in one: replace it.
            let stuck_in_transaction = conn.is_in_transaction();
            let watch = watch.clone();
            Box::pin(async move {
                if stuck_in_transaction {
                    return Ok(false);
                }
                let last = watch
                    .last_read_only_open
                    .load(std::sync::atomic::Ordering::Relaxed);
                // The usual case costs this one load.
                if last == 0 || watch.millis(meta.age) > last {
                    return Ok(true);
                }
                // Opened while the file was read-only: keep it only while that lasts.
                Ok(!watch.file_is_writable())
            })
        })
    }

    /// Milliseconds after the epoch of the moment `ago` before now.
    fn millis(&self, ago: std::time::Duration) -> u64 {
        let at = self.epoch.elapsed().saturating_sub(ago);
        u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the file opens for writing, which is what SQLite tries first.
    fn file_is_writable(&self) -> bool {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .is_ok()
    }
}

/// `PRAGMA optimize` at open looks at every table (0x10000), not only those the connection has
/// used, and analyzes where needed (0x02): a file left without statistics, as a bulk load leaves
/// it, gets them before the first request is planned.
const OPTIMIZE_AT_OPEN: &str = "PRAGMA optimize = 0x10002";

/// How often a long-running store refreshes its statistics as the data grows.
const OPTIMIZE_EVERY: Duration = Duration::from_secs(3600);

impl SqlTaskStore<Sqlite> {
    /// Opens (creating if missing) the database at `url` — `sqlite://tasks.db`,
    /// `sqlite::memory:` — and applies the migrations.
    ///
    /// # Examples
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use mj_tasks::{SqliteTaskStore, TaskStore, TaskQuery};
    /// let store = SqliteTaskStore::connect("sqlite::memory:").await?;
    /// assert_eq!(store.count(&TaskQuery::all()).await?, 0);
    /// # Ok::<_, mj_tasks::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .analysis_limit(ANALYSIS_LIMIT)
            .optimize_on_close(true, ANALYSIS_LIMIT);
        // Every connection to `:memory:` is a database of its own, so an in-memory store keeps
        // exactly one connection for its whole life.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool_options = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            ReadOnlyOpens::watch(
                SqlitePoolOptions::new().max_connections(8),
                options.get_filename().to_path_buf(),
            )
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let mut store = Self::from_pool(pool);
        store.migrate().await?;
        sqlx::raw_sql(OPTIMIZE_AT_OPEN).execute(&store.pool).await?;
        store._upkeep = Some(Arc::new(spawn_periodic_optimize(store.pool.clone())));
        Ok(store)
    }

    /// Applies the migrations that are not applied yet (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator.run(&self.pool).await?;
        Ok(())
    }
}

/// Keeps the planner's statistics fresh while the store is in use: SQLite never analyzes by
/// itself, and without statistics it can pick a user's index over `mj_id`'s (seconds instead
/// of a millisecond at a million tasks).
fn spawn_periodic_optimize(pool: SqlitePool) -> UpkeepGuard {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(OPTIMIZE_EVERY);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if pool.is_closed() {
                break;
            }
            if let Err(error) = sqlx::raw_sql("PRAGMA optimize").execute(&pool).await {
                tracing::warn!(%error, "periodic PRAGMA optimize failed");
            }
        }
    });
    UpkeepGuard(task.abort_handle())
}
