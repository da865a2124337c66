//! A new-api database opened read-only: its `midjourneys` rows as [`Task`]s, its `users` and
//! its Midjourney `channels`.
//!
//! new-api's tables are made by GORM's AutoMigrate, so they differ by version and engine:
//! columns added later (`video_url`, `video_urls`) are missing from older databases and hold
//! NULL in rows written before they were added, and integer columns are `integer` on SQLite and
//! `bigint` elsewhere. Every statement here therefore names the columns the table has, reads
//! NULL as the Go zero value (`''`, `0`) and casts integers to 64 bits. Statements are written
//! once; the only dialect differences are the integer type of a cast and the quoting of the
//! `key` column, which MySQL reserves.

use sha2::{Digest, Sha256};
use sqlx::{Column as _, Executor as _, Statement as _};

use crate::model::Task;
use crate::store::{Backend, TaskRow, redact_url};

use super::ImportError;

/// new-api's channel types that are Midjourney upstreams: 2 (Midjourney) and 5
/// (MidjourneyPlus).
pub const MIDJOURNEY_CHANNEL_TYPES: [i64; 2] = [2, 5];

/// The connection to the source, whichever engine it is on.
#[derive(Debug, Clone)]
enum SourcePool {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

/// Runs `$body` with `$pool` bound to the source's pool, whichever variant it is: one body,
/// compiled once per engine.
macro_rules! with_pool {
    ($source:expr, $pool:ident => $body:expr) => {
        match $source {
            #[cfg(feature = "sqlite")]
            SourcePool::Sqlite($pool) => $body,
            #[cfg(feature = "postgres")]
            SourcePool::Postgres($pool) => $body,
            #[cfg(feature = "mysql")]
            SourcePool::MySql($pool) => $body,
        }
    };
}

/// A query builder for the engine of `pool`.
fn builder<DB: sqlx::Database>(_pool: &sqlx::Pool<DB>, sql: &str) -> sqlx::QueryBuilder<DB> {
    sqlx::QueryBuilder::new(sql)
}

/// A new-api user as the source stores it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SourceUser {
    /// Its id, the `user_id` of its tasks.
    pub id: i64,
    /// Its unique name.
    pub username: String,
    /// 1 common, 10 admin, 100 root.
    pub role: i64,
    /// 1 enabled, 2 disabled.
    pub status: i64,
    /// Its balance.
    pub quota: i64,
    /// Its dashboard access token; empty when it has none.
    pub access_token: String,
    /// 1 when new-api soft-deleted it (`deleted_at` set).
    pub deleted: i64,
}

impl std::fmt::Debug for SourceUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("status", &self.status)
            .field("quota", &self.quota)
            .field("access_token", &"<redacted>")
            .field("deleted", &self.deleted)
            .finish()
    }
}

/// A new-api channel of a Midjourney type as the source stores it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SourceChannel {
    /// Its id, the `channel_id` of its tasks.
    pub id: i64,
    /// 2 Midjourney, 5 MidjourneyPlus.
    pub channel_type: i64,
    /// The operator's name for it.
    pub name: String,
    /// The midjourney-proxy base URL.
    pub base_url: String,
    /// The key, sent upstream as `mj-api-secret`.
    #[sqlx(rename = "channel_key")]
    pub key: String,
    /// 1 enabled, 2 disabled by hand, 3 disabled automatically.
    pub status: i64,
    /// When it was created, in seconds.
    pub created_time: i64,
}

impl std::fmt::Debug for SourceChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceChannel")
            .field("id", &self.id)
            .field("channel_type", &self.channel_type)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .field("status", &self.status)
            .field("created_time", &self.created_time)
            .finish()
    }
}

/// Count and id bounds of the source's `midjourneys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct SourceTaskStats {
    /// Rows.
    pub count: i64,
    /// Smallest id (`None` when empty).
    pub min_id: Option<i64>,
    /// Largest id.
    pub max_id: Option<i64>,
}

/// The columns of `midjourneys` read by the import, in the order of the store's own task row
/// (which the import decodes into, with a `version` of 0 appended).
const TASK_COLUMNS: [(&str, ColumnKind); 22] = [
    ("id", ColumnKind::Integer),
    ("code", ColumnKind::Integer),
    ("user_id", ColumnKind::Integer),
    ("action", ColumnKind::Text),
    ("mj_id", ColumnKind::Text),
    ("prompt", ColumnKind::Text),
    ("prompt_en", ColumnKind::Text),
    ("description", ColumnKind::Text),
    ("state", ColumnKind::Text),
    ("submit_time", ColumnKind::Integer),
    ("start_time", ColumnKind::Integer),
    ("finish_time", ColumnKind::Integer),
    ("image_url", ColumnKind::Text),
    ("video_url", ColumnKind::Text),
    ("video_urls", ColumnKind::Text),
    ("status", ColumnKind::Text),
    ("progress", ColumnKind::Text),
    ("fail_reason", ColumnKind::Text),
    ("channel_id", ColumnKind::Integer),
    ("quota", ColumnKind::Integer),
    ("buttons", ColumnKind::Text),
    ("properties", ColumnKind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Integer,
    Text,
}

/// A new-api database, opened read-only.
#[derive(Debug, Clone)]
pub struct NewApiSource {
    pool: SourcePool,
    select_tasks: String,
    fingerprint: String,
}

impl NewApiSource {
    /// Opens new-api's database read-only: a `sqlite:` URL or a plain file path (never
    /// created), `postgres://...` or `mysql://...` / `mariadb://...`. Fails when the database
    /// has no `midjourneys` table.
    pub async fn open(location: &str) -> Result<Self, ImportError> {
        let pool = open_pool(location).await?;
        let columns = table_columns(&pool, "midjourneys").await?;
        let select_tasks = select_tasks(backend_of(&pool), &columns);
        let mut source = Self {
            pool,
            select_tasks,
            fingerprint: String::new(),
        };
        source.fingerprint = source.compute_fingerprint().await?;
        Ok(source)
    }

    /// The engine the source is on.
    pub fn backend(&self) -> Backend {
        backend_of(&self.pool)
    }

    /// A name for this source that does not change with how its URL is spelled: a digest of
    /// its first task and first user, which new-api never rewrites. Claims are kept under it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    async fn compute_fingerprint(&self) -> Result<String, ImportError> {
        let first_task = format!(
            "{} FROM midjourneys ORDER BY midjourneys.id LIMIT 1",
            self.select_tasks
        );
        let task: Option<Task> = with_pool!(&self.pool, pool => {
            let mut query = builder(pool, &first_task);
            let row: Option<TaskRow> = query.build_query_as().fetch_optional(pool).await?;
            row.map(Task::from)
        });
        let user = self.users().await?.into_iter().next();
        let mut digest = Sha256::new();
        digest.update(b"new-api\0");
        if let Some(task) = task {
            digest.update(format!(
                "{}\0{}\0{}\0",
                task.id, task.mj_id, task.submit_time
            ));
        }
        if let Some(user) = user {
            digest.update(format!("{}\0{}\0", user.id, user.username));
        }
        Ok(hex::encode(&digest.finalize()[..16]))
    }

    /// Count and id bounds of `midjourneys`.
    pub async fn task_stats(&self) -> Result<SourceTaskStats, ImportError> {
        const SQL: &str =
            "SELECT COUNT(*) AS count, MIN(id) AS min_id, MAX(id) AS max_id FROM midjourneys";
        Ok(
            with_pool!(&self.pool, pool => builder(pool, SQL).build_query_as().fetch_one(pool).await?),
        )
    }

    /// How many tasks have `after_id < id <= through_id`.
    pub async fn count_tasks(&self, after_id: i64, through_id: i64) -> Result<u64, ImportError> {
        const SQL: &str = "SELECT COUNT(*) FROM midjourneys WHERE id > ";
        let count: i64 = with_pool!(&self.pool, pool => {
            let mut query = builder(pool, SQL);
            query.push_bind(after_id).push(" AND id <= ").push_bind(through_id);
            query.build_query_scalar().fetch_one(pool).await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Up to `limit` tasks with `after_id < id <= through_id`, in id order (a primary-key range
    /// read; pass the last id to get the next batch).
    pub async fn tasks_after(
        &self,
        after_id: i64,
        through_id: i64,
        limit: u32,
    ) -> Result<Vec<Task>, ImportError> {
        let rows: Vec<TaskRow> = with_pool!(&self.pool, pool => {
            let mut query = builder(pool, &self.select_tasks);
            query
                .push(" FROM midjourneys WHERE id > ")
                .push_bind(after_id)
                .push(" AND id <= ")
                .push_bind(through_id)
                .push(" ORDER BY midjourneys.id LIMIT ")
                .push_bind(i64::from(limit));
            query.build_query_as().fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(Task::from).collect())
    }

    /// Every user, soft-deleted ones included (their tasks still name them), by id.
    pub async fn users(&self) -> Result<Vec<SourceUser>, ImportError> {
        let columns = table_columns(&self.pool, "users").await?;
        let backend = self.backend();
        let int = |column: &str, default: i64| integer(backend, column, &columns, default);
        let deleted = if has(&columns, "deleted_at") {
            "CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END"
        } else {
            "0"
        };
        let sql = format!(
            "SELECT {id} AS id, {username} AS username, {role} AS role, {status} AS status, \
             {quota} AS quota, {token} AS access_token, {deleted} AS deleted FROM users ORDER BY id",
            id = int("id", 0),
            username = text("username", &columns),
            role = int("role", 1),
            status = int("status", 1),
            quota = int("quota", 0),
            token = text("access_token", &columns),
            deleted = cast_integer(backend, deleted),
        );
        Ok(
            with_pool!(&self.pool, pool => builder(pool, &sql).build_query_as().fetch_all(pool).await?),
        )
    }

    /// The channels of the Midjourney types ([`MIDJOURNEY_CHANNEL_TYPES`]), by id.
    pub async fn midjourney_channels(&self) -> Result<Vec<SourceChannel>, ImportError> {
        let backend = self.backend();
        // MySQL reserves `key`; PostgreSQL and SQLite take the standard double quotes.
        let key = if backend == Backend::MySql {
            "`key`"
        } else {
            "\"key\""
        };
        let sql = format!(
            "SELECT {id} AS id, {kind} AS channel_type, COALESCE(name, '') AS name, \
             COALESCE(base_url, '') AS base_url, COALESCE({key}, '') AS channel_key, \
             {status} AS status, {created} AS created_time FROM channels \
             WHERE type IN ({types}) ORDER BY id",
            id = cast_integer(backend, "id"),
            kind = cast_integer(backend, "type"),
            status = cast_integer(backend, "COALESCE(status, 1)"),
            created = cast_integer(backend, "COALESCE(created_time, 0)"),
            types = type_list(),
        );
        Ok(
            with_pool!(&self.pool, pool => builder(pool, &sql).build_query_as().fetch_all(pool).await?),
        )
    }

    /// How many channels are of other types (they are not imported).
    pub async fn other_channel_count(&self) -> Result<u64, ImportError> {
        let sql = format!(
            "SELECT COUNT(*) FROM channels WHERE type NOT IN ({})",
            type_list()
        );
        let count: i64 = with_pool!(&self.pool, pool => builder(pool, &sql).build_query_scalar().fetch_one(pool).await?);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Closes the connections.
    pub async fn close(&self) {
        with_pool!(&self.pool, pool => pool.close().await)
    }
}

fn type_list() -> String {
    MIDJOURNEY_CHANNEL_TYPES
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn backend_of(pool: &SourcePool) -> Backend {
    match pool {
        #[cfg(feature = "sqlite")]
        SourcePool::Sqlite(_) => Backend::Sqlite,
        #[cfg(feature = "postgres")]
        SourcePool::Postgres(_) => Backend::Postgres,
        #[cfg(feature = "mysql")]
        SourcePool::MySql(_) => Backend::MySql,
    }
}

fn has(columns: &[String], name: &str) -> bool {
    columns
        .iter()
        .any(|column| column.eq_ignore_ascii_case(name))
}

/// `CAST(expression AS <64-bit integer>)` in the engine's spelling.
fn cast_integer(backend: Backend, expression: &str) -> String {
    let target = if backend == Backend::MySql {
        "SIGNED"
    } else {
        "BIGINT"
    };
    format!("CAST({expression} AS {target})")
}

/// An integer column read as a 64-bit value, NULL and a missing column as `default`.
fn integer(backend: Backend, column: &str, columns: &[String], default: i64) -> String {
    if has(columns, column) {
        cast_integer(backend, &format!("COALESCE({column}, {default})"))
    } else {
        default.to_string()
    }
}

/// A text column, NULL and a missing column as `''`.
fn text(column: &str, columns: &[String]) -> String {
    if has(columns, column) {
        format!("COALESCE({column}, '')")
    } else {
        "''".to_owned()
    }
}

/// The select list of `midjourneys` for the columns this source has.
fn select_tasks(backend: Backend, columns: &[String]) -> String {
    let list: Vec<String> = TASK_COLUMNS
        .iter()
        .map(|&(name, kind)| {
            // The primary key is read as it is: wrapped in a cast, `ORDER BY id` would sort by
            // the expression (every engine resolves it to the output column) instead of reading
            // the key in order, a sort of the whole remaining range for every batch.
            if name == "id" {
                return "id".to_owned();
            }
            let value = match kind {
                ColumnKind::Integer => integer(backend, name, columns, 0),
                ColumnKind::Text => text(name, columns),
            };
            format!("{value} AS {name}")
        })
        .collect();
    // The store's row carries the compare-and-swap version; an imported task starts at 0.
    format!(
        "SELECT {}, {} AS version",
        list.join(", "),
        cast_integer(backend, "0")
    )
}

/// The column names of `table`, from a prepared `SELECT *` (every engine describes one).
async fn table_columns(pool: &SourcePool, table: &'static str) -> Result<Vec<String>, ImportError> {
    let sql = match table {
        "midjourneys" => "SELECT * FROM midjourneys",
        "users" => "SELECT * FROM users",
        _ => "SELECT * FROM channels",
    };
    let result: Result<Vec<String>, sqlx::Error> = with_pool!(pool, pool => {
        match pool.prepare(sqlx::SqlSafeStr::into_sql_str(sql)).await {
            Ok(statement) => Ok(statement
                .columns()
                .iter()
                .map(|column| column.name().to_owned())
                .collect()),
            Err(error) => Err(error),
        }
    });
    result.map_err(|source| ImportError::MissingTable { table, source })
}

async fn open_pool(location: &str) -> Result<SourcePool, ImportError> {
    let unsupported = || ImportError::UnsupportedSource(redact_url(location));
    let backend = match Backend::from_url(location) {
        Some(backend) => backend,
        // Anything that is not a URL is a path to new-api's SQLite file.
        None if !location.contains("://") => Backend::Sqlite,
        None => return Err(unsupported()),
    };
    let timeout = std::time::Duration::from_secs(10);
    match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => {
            use std::str::FromStr;
            let options = if location.starts_with("sqlite:") {
                sqlx::sqlite::SqliteConnectOptions::from_str(location)?
            } else {
                if !std::path::Path::new(location).is_file() {
                    return Err(ImportError::NoSuchFile(location.to_owned()));
                }
                sqlx::sqlite::SqliteConnectOptions::new().filename(location)
            };
            // Read-only, never created, journal mode left as new-api set it.
            let options = options.read_only(true).create_if_missing(false);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            Ok(SourcePool::Sqlite(pool))
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => {
            use std::str::FromStr;
            let options = sqlx::postgres::PgConnectOptions::from_str(location)?
                .options([("default_transaction_read_only", "on")]);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            Ok(SourcePool::Postgres(pool))
        }
        #[cfg(feature = "mysql")]
        Backend::MySql => {
            let url = match location.strip_prefix("mariadb:") {
                Some(rest) => format!("mysql:{rest}"),
                None => location.to_owned(),
            };
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlx::raw_sql("SET SESSION TRANSACTION READ ONLY")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            Ok(SourcePool::MySql(pool))
        }
        #[allow(unreachable_patterns)]
        _ => Err(unsupported()),
    }
}
