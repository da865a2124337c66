//! Databases for tests: a temporary SQLite file, or a fresh PostgreSQL / MariaDB database per
//! test, created on the server named by `MJ_TEST_POSTGRES_URL` / `MJ_TEST_MYSQL_URL` and dropped
//! afterwards (also when the test panics).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A temporary SQLite file.
    Sqlite,
    /// A database on the server named by `MJ_TEST_POSTGRES_URL`.
    Postgres,
    /// A database on the server named by `MJ_TEST_MYSQL_URL`.
    MySql,
}

/// A database that exists for one test.
pub struct TestDb {
    /// Its backend.
    pub kind: Kind,
    url: String,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "mj_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Replaces the database name (the URL path) of a server URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("server URL has a scheme");
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

impl TestDb {
    /// A database of this kind; `None` when the server's variable is unset.
    pub async fn open(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Sqlite => Some(Self::sqlite()),
            Kind::Postgres => Self::server(kind, "MJ_TEST_POSTGRES_URL").await,
            Kind::MySql => Self::server(kind, "MJ_TEST_MYSQL_URL").await,
        }
    }

    /// A SQLite file in a temporary directory removed with the database.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("tasks.db").display());
        Self {
            kind: Kind::Sqlite,
            url,
            admin_url: None,
            name: String::new(),
            _dir: Some(dir),
        }
    }

    /// `None` (and a note on stderr) when the variable is unset; a panic when it is set and the
    /// server cannot be reached: a configured database must never be silently skipped.
    async fn server(kind: Kind, variable: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var(variable) else {
            eprintln!("skipped: {variable} is not set");
            return None;
        };
        let name = unique_name();
        match kind {
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("{variable} is set but unreachable: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                conn.close().await.ok();
            }
            Kind::MySql => {
                let mut conn = sqlx::MySqlConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("{variable} is set but unreachable: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )))
                .execute(&mut conn)
                .await
                .expect("create test database");
                conn.close().await.ok();
            }
            Kind::Sqlite => unreachable!(),
        }
        Some(Self {
            kind,
            url: with_database(&admin_url, &name),
            admin_url: Some(admin_url),
            name,
            _dir: None,
        })
    }

    /// The URL to connect to it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The sorted column names of a table, read from the database's own catalogue.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        let mut names: Vec<String> = match self.kind {
            Kind::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
                    .bind(table)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1",
                )
                .bind(table)
                .fetch_all(&mut conn)
                .await
                .unwrap()
            }
            Kind::MySql => {
                let mut conn = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = DATABASE() AND table_name = ?",
                )
                .bind(table)
                .fetch_all(&mut conn)
                .await
                .unwrap()
            }
        };
        names.sort();
        names
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin_url) = self.admin_url.take() else {
            return;
        };
        let (kind, name) = (self.kind, std::mem::take(&mut self.name));
        // Drop runs inside the test's runtime (or during a panic): do the async cleanup on a
        // thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                let statement = match kind {
                    Kind::Postgres => format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS `{name}`"),
                };
                let result = match kind {
                    Kind::Postgres => match sqlx::PgConnection::connect(&admin_url).await {
                        Ok(mut conn) => sqlx::query(sqlx::AssertSqlSafe(statement))
                            .execute(&mut conn)
                            .await
                            .map(drop),
                        Err(e) => Err(e),
                    },
                    _ => match sqlx::MySqlConnection::connect(&admin_url).await {
                        Ok(mut conn) => sqlx::query(sqlx::AssertSqlSafe(statement))
                            .execute(&mut conn)
                            .await
                            .map(drop),
                        Err(e) => Err(e),
                    },
                };
                if let Err(error) = result {
                    eprintln!("could not drop test database {name}: {error}");
                }
            });
        });
        let _ = cleanup.join();
    }
}
