//! The storage traits and their sqlx backends.
//!
//! [`TaskStore`], [`ChannelStore`] and [`SettingStore`] are object safe and used as
//! `Arc<dyn ...>`. One generic store, [`SqlTaskStore`] (`tasks.rs`), implements them for every
//! backend ([`SqliteTaskStore`], [`PostgresTaskStore`], [`MySqlTaskStore`]) over one
//! statement-building layer (`sql.rs`, and `counts.rs` for exact totals) and a small dialect
//! seam (`dialect.rs`). [`connect`] picks the backend from a database URL and runs the
//! migrations.

use std::sync::Arc;

use async_trait::async_trait;

use crate::channel::{Channel, NewChannel};
use crate::model::{NewTask, Task};
use crate::query::{Page, PageRequest, TaskQuery};

#[macro_use]
mod dialect;
mod counts;
pub mod import;
#[cfg(feature = "mysql")]
mod mysql;
pub mod poll;
#[cfg(feature = "postgres")]
mod postgres;
pub mod reservations;
mod sql;
pub(crate) use sql::TaskRow;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
mod tasks;

#[cfg(any(test, feature = "mock"))]
pub use import::MockImportStore;
pub use import::{ClaimEntity, IdSpan, ImportClaim, ImportStore};
#[cfg(feature = "mysql")]
pub use mysql::MySqlTaskStore;
#[cfg(any(test, feature = "mock"))]
pub use poll::MockPollStore;
pub use poll::{PollStore, SqlPollStore, WriteOutcome};
#[cfg(feature = "postgres")]
pub use postgres::PostgresTaskStore;
#[cfg(any(test, feature = "mock"))]
pub use reservations::MockReservationStore;
pub use reservations::{Reservation, ReservationStore, Settled, SqlReservationStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteTaskStore;
pub use tasks::SqlTaskStore;

use dialect::Dialect;

/// How long a request waits for a PostgreSQL or MariaDB connection before it fails as
/// [`StoreError::Unavailable`]: during an outage every request (health checks too) fails in
/// about this time instead of queueing; once the server is back the next request connects.
pub const NETWORK_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What can go wrong in a store. Database text is kept as a source for logs; callers answering
/// HTTP should map variants, never print the source to a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached (connection refused, pool timed out, I/O error).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database answers but refuses writes for now: a read-only file, mount or replica, or
    /// a full disk. Reads may still work; it passes once the cause is gone.
    #[error("database does not accept writes")]
    NotWritable(#[source] sqlx::Error),
    /// A unique constraint was violated (for example a duplicate user name).
    #[error("conflict with an existing row")]
    Conflict(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Applying the migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names no backend this build supports.
    #[error(
        "unsupported database URL (expected sqlite:, postgres:// or mysql://, with the matching feature): {0}"
    )]
    UnsupportedUrl(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(error),
            sqlx::Error::Database(db) if refuses_writes(db.as_ref()) => Self::NotWritable(error),
            _ => Self::Database(error),
        }
    }
}

impl From<crate::billing::LedgerError> for StoreError {
    fn from(error: crate::billing::LedgerError) -> Self {
        match error {
            crate::billing::LedgerError::Database(error) => error.into(),
            crate::billing::LedgerError::UnsupportedBackend => {
                Self::UnsupportedUrl("the quota ledger does not support this backend".to_owned())
            }
        }
    }
}

/// Whether a database error says writes are refused for now, in each engine's own terms.
fn refuses_writes(error: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "sqlite")]
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        // Primary result codes (the low byte of extended ones): SQLITE_READONLY, SQLITE_FULL.
        let primary = error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .map(|code| code & 0xff);
        return matches!(primary, Some(8 | 13));
    }
    #[cfg(feature = "postgres")]
    if error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        // read_only_sql_transaction (a standby, default_transaction_read_only), disk_full,
        // insufficient_resources.
        return matches!(error.code().as_deref(), Some("25006" | "53100" | "53000"));
    }
    #[cfg(feature = "mysql")]
    if let Some(error) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // ER_OPTION_PREVENTS_STATEMENT (--read-only), ER_OPEN_AS_READONLY, ER_RECORD_FILE_FULL,
        // ER_DISK_FULL, ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION.
        return matches!(error.number(), 1290 | 1036 | 1114 | 1021 | 1792);
    }
    let _ = error;
    false
}

impl StoreError {
    /// Whether the error means the database is unreachable (HTTP 503) rather than a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the error means the database refuses writes for now (HTTP 503), see
    /// [`Self::NotWritable`].
    pub fn is_not_writable(&self) -> bool {
        matches!(self, Self::NotWritable(_))
    }
}

/// Storage of tasks. Object safe: use it as `Arc<dyn TaskStore>`.
///
/// Every list is ordered newest first (`id` descending) and every total is exact.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Inserts one task and returns it with its id.
    async fn insert(&self, task: &NewTask) -> Result<Task, StoreError>;

    /// Inserts many tasks in one transaction (chunked into multi-row inserts); returns how many.
    async fn insert_many(&self, tasks: &[NewTask]) -> Result<u64, StoreError>;

    /// Inserts whole tasks with the ids and versions they carry (an import from another
    /// database keeps its ids), in one transaction; returns how many. An id already taken fails
    /// the whole call with [`StoreError::Conflict`]. A task is stored as finished (never polled)
    /// when its status is terminal or its progress reads `100%`, new-api's own marker.
    async fn insert_with_ids(&self, tasks: &[Task]) -> Result<u64, StoreError>;

    /// The task with this id.
    async fn get(&self, id: i64) -> Result<Option<Task>, StoreError>;

    /// The newest task with this upstream id, only among `owner`'s tasks when given.
    async fn find_by_mj_id(
        &self,
        mj_id: &str,
        owner: Option<i64>,
    ) -> Result<Option<Task>, StoreError>;

    /// One page of the tasks matching `query`, with the exact total. A page past the end is
    /// empty and still carries the total.
    async fn list(&self, query: &TaskQuery, page: PageRequest) -> Result<Page<Task>, StoreError>;

    /// How many tasks match `query`.
    async fn count(&self, query: &TaskQuery) -> Result<u64, StoreError>;

    /// Up to `limit` unfinished tasks with `id > after_id`, in id order: the poller walks them in
    /// bounded batches (pass the last id of a batch to get the next) and never loads the table.
    async fn list_unfinished(&self, after_id: i64, limit: u32) -> Result<Vec<Task>, StoreError>;

    /// Compare-and-swap: writes every mutable column of `task` if the stored row still has
    /// `task.version`, bumping the version. Returns `false` when another writer got there first
    /// (reload and decide again). `user_id` and `submit_time` are never rewritten.
    async fn update_if_version(&self, task: &Task) -> Result<bool, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether the database accepts writes now: a write that changes nothing (it rewrites the
    /// poller's lease row as it is), so a read-only file, mount or replica, and on SQLite a full
    /// disk, show up as [`StoreError::NotWritable`] before a client's write meets them.
    async fn ping_write(&self) -> Result<(), StoreError>;

    /// Brings the planner's statistics of the task tables up to date (SQLite `ANALYZE` within
    /// its analysis limit, PostgreSQL `VACUUM (ANALYZE)`, MariaDB `ANALYZE TABLE`). Normal
    /// operation keeps them fresh by itself; call this after bulk writes (seeding, imports,
    /// large [`Self::insert_many`] runs), which change the data faster than that.
    async fn refresh_statistics(&self) -> Result<(), StoreError>;
}

/// Storage of upstream channels. Object safe: use it as `Arc<dyn ChannelStore>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ChannelStore: Send + Sync {
    /// Registers a channel (enabled) and returns it with its id.
    async fn add_channel(&self, channel: &NewChannel) -> Result<Channel, StoreError>;

    /// The channel with this id.
    async fn get_channel(&self, id: i64) -> Result<Option<Channel>, StoreError>;

    /// Every channel, by id.
    async fn list_channels(&self) -> Result<Vec<Channel>, StoreError>;

    /// Enables or disables a channel; `false` if there is none with this id.
    async fn set_channel_enabled(&self, id: i64, enabled: bool) -> Result<bool, StoreError>;
}

/// Named values shared by every instance on one database (table `mj_settings`). Object safe:
/// use it as `Arc<dyn SettingStore>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait SettingStore: Send + Sync {
    /// The value stored under `name`, if any.
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// The value stored under `name`; when there is none, stores `candidate` first. Race-free
    /// across instances: when several insert at once exactly one value wins and all of them
    /// return it.
    async fn get_or_insert_setting(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError>;
}

/// The table that records applied migrations: named for this crate so that it never collides
/// with an embedding application's own sqlx migrations in the same database.
pub const MIGRATIONS_TABLE: &str = "_mj_tasks_migrations";

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Backend {
    /// The backend a database URL names: `sqlite:`, `postgres://` / `postgresql://`,
    /// `mysql://` / `mariadb://`.
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            _ => None,
        }
    }
}

/// A store opened from a URL, whichever backend it names. Cloning is cheap (a pool handle).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SqlStore {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteTaskStore),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(PostgresTaskStore),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(MySqlTaskStore),
}

/// Something done with a [`SqlStore`]'s backend store, whichever backend it is: the one place
/// that matches on the variants ([`SqlStore::with_backend`]).
pub(crate) trait BackendVisitor {
    /// What the visit yields.
    type Output;
    /// Does it with the backend's store.
    fn visit<D: Dialect>(self, store: &SqlTaskStore<D>) -> Self::Output;
}

/// The store as a shared handle of each trait it implements.
struct Handles;

impl BackendVisitor for Handles {
    type Output = (
        Arc<dyn TaskStore>,
        Arc<dyn ChannelStore>,
        Arc<dyn SettingStore>,
        Arc<dyn ImportStore>,
    );
    fn visit<D: Dialect>(self, store: &SqlTaskStore<D>) -> Self::Output {
        (
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
        )
    }
}

struct Close;

impl BackendVisitor for Close {
    type Output = futures_util::future::BoxFuture<'static, ()>;
    fn visit<D: Dialect>(self, store: &SqlTaskStore<D>) -> Self::Output {
        let pool = store.pool().clone();
        Box::pin(async move { pool.close().await })
    }
}

struct Which;

impl BackendVisitor for Which {
    type Output = Backend;
    fn visit<D: Dialect>(self, _: &SqlTaskStore<D>) -> Backend {
        D::BACKEND
    }
}

impl SqlStore {
    /// Runs `visitor` with the backend's store.
    pub(crate) fn with_backend<V: BackendVisitor>(&self, visitor: V) -> V::Output {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => visitor.visit(store),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => visitor.visit(store),
            #[cfg(feature = "mysql")]
            Self::MySql(store) => visitor.visit(store),
        }
    }

    /// The store as a task store.
    pub fn tasks(&self) -> Arc<dyn TaskStore> {
        self.with_backend(Handles).0
    }

    /// The store as a channel store.
    pub fn channels(&self) -> Arc<dyn ChannelStore> {
        self.with_backend(Handles).1
    }

    /// The store as a setting store.
    pub fn settings(&self) -> Arc<dyn SettingStore> {
        self.with_backend(Handles).2
    }

    /// The store as an import store (claims, channels with their ids).
    pub fn imports(&self) -> Arc<dyn ImportStore> {
        self.with_backend(Handles).3
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.with_backend(Which)
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.with_backend(Close).await;
    }
}

/// Connects to the database a URL names and applies the migrations (idempotent).
///
/// `sqlite://path.db` creates the file if missing; `postgres://...` and `mysql://...` (or
/// `mariadb://...`) need the `postgres` / `mysql` features.
///
/// # Examples
///
/// ```
/// # tokio_test_block_on(async {
/// let store = mj_tasks::connect("sqlite::memory:").await?;
/// let tasks = store.tasks();
/// assert_eq!(tasks.count(&mj_tasks::TaskQuery::all()).await?, 0);
/// # Ok::<_, mj_tasks::StoreError>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
    let unsupported = || StoreError::UnsupportedUrl(redact_url(url));
    match Backend::from_url(url).ok_or_else(unsupported)? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(SqlStore::Sqlite(SqliteTaskStore::connect(url).await?)),
        #[cfg(feature = "postgres")]
        Backend::Postgres => Ok(SqlStore::Postgres(PostgresTaskStore::connect(url).await?)),
        #[cfg(feature = "mysql")]
        Backend::MySql => Ok(SqlStore::MySql(MySqlTaskStore::connect(url).await?)),
        #[allow(unreachable_patterns)]
        _ => Err(unsupported()),
    }
}

/// A database URL with its password replaced by `***`, for logs and errors.
///
/// ```
/// assert_eq!(mj_tasks::store::redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
/// assert_eq!(mj_tasks::store::redact_url("sqlite://a.db"), "sqlite://a.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
