//! The server's dashboard users and their access tokens.
//!
//! Users live in `mj_users` next to the task tables, with migrations of their own (recorded in
//! `_mj_server_migrations` so they never mix with the library's). Tokens are 192 random bits,
//! shown once, and stored only as a SHA-256 digest; a request's token is hashed and looked up by
//! digest, so no stored secret is ever compared byte by byte.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mj_tasks::{SqlStore, StoreError};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A user's role, with new-api's numeric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees their own tasks.
    User = 1,
    /// Sees every task.
    Admin = 10,
    /// Administrator of administrators.
    Root = 100,
}

impl Role {
    /// The role stored as `value`; unknown values read as the lowest role.
    pub fn from_value(value: i64) -> Self {
        match value {
            100.. => Self::Root,
            10..=99 => Self::Admin,
            _ => Self::User,
        }
    }

    /// new-api's numeric value.
    pub fn value(self) -> i64 {
        self as i64
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Root => "root",
        }
    }
}

/// A dashboard user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id, the owner id of tasks.
    pub id: i64,
    /// Unique name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Disabled users are refused (403) on every request.
    pub enabled: bool,
    /// Quota balance.
    pub quota: i64,
}

/// A freshly issued access token. Its `Debug` is redacted.
pub struct AccessToken(String);

impl AccessToken {
    /// 24 random bytes from the OS-seeded CSPRNG, hex encoded.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// The token text, to show the user once.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// The digest stored in the database.
    pub fn hash(&self) -> String {
        hash_token(&self.0)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// SHA-256 hex digest of a presented token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Storage of users. Object safe.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; a taken name is [`StoreError::Conflict`].
    async fn create_user(
        &self,
        username: &str,
        role: Role,
        quota: i64,
        token_hash: &str,
    ) -> Result<User, StoreError>;
    /// Inserts a user with its id and values as given (an import keeps new-api's ids); a taken
    /// id or name is [`StoreError::Conflict`].
    async fn insert_user_with_id(&self, user: &ImportedUser) -> Result<(), StoreError>;
    /// The user whose token has this digest.
    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>, StoreError>;
    /// The user with this name.
    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;
    /// The user with this id.
    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError>;
    /// Every user, by id.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Enables or disables a user; `false` if there is none.
    async fn set_enabled(&self, username: &str, enabled: bool) -> Result<bool, StoreError>;
    /// Replaces a user's token digest; `false` if there is none.
    async fn set_token_hash(&self, username: &str, token_hash: &str) -> Result<bool, StoreError>;
    /// Sets a user's quota; `false` if there is none.
    async fn set_quota(&self, username: &str, quota: i64) -> Result<bool, StoreError>;
}

/// A user as an import writes it: new-api's id, role and status numbers kept as they are.
#[derive(Clone, PartialEq, Eq)]
pub struct ImportedUser {
    /// new-api's id.
    pub id: i64,
    /// Unique name.
    pub username: String,
    /// new-api's role number (1, 10, 100).
    pub role: i64,
    /// 1 enabled, 2 disabled.
    pub status: i64,
    /// Quota balance.
    pub quota: i64,
    /// Digest of the user's access token; `None` for a user without one.
    pub token_hash: Option<String>,
}

impl fmt::Debug for ImportedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportedUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("status", &self.status)
            .field("quota", &self.quota)
            .field(
                "token_hash",
                &self.token_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

const SELECT_USERS: &str = "SELECT id, username, role, status, quota FROM mj_users";
const STATUS_ENABLED: i64 = 1;
const STATUS_DISABLED: i64 = 2;
const MIGRATIONS_TABLE: &str = "_mj_server_migrations";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    role: i64,
    status: i64,
    quota: i64,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id,
            username: row.username,
            role: Role::from_value(row.role),
            enabled: row.status == STATUS_ENABLED,
            quota: row.quota,
        }
    }
}

/// [`UserStore`] over the same pool as the task store.
#[derive(Debug, Clone)]
pub struct SqlUserStore<P> {
    pub(crate) pool: P,
}

/// One body for the three dialects: every statement here is portable SQL with bound values.
/// `$sync_ids` moves the id sequence past explicitly written ids where the engine does not by
/// itself (PostgreSQL's identity columns).
macro_rules! impl_user_store {
    ($db:ty, $sync_ids:expr) => {
        impl SqlUserStore<sqlx::Pool<$db>> {
            async fn update_user(
                &self,
                column: &'static str,
                value: UpdateValue<'_>,
                username: &str,
            ) -> Result<bool, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new("UPDATE mj_users SET ");
                builder.push(column).push(" = ");
                match value {
                    UpdateValue::Int(v) => builder.push_bind(v),
                    UpdateValue::Text(v) => builder.push_bind(v),
                };
                builder.push(" WHERE username = ").push_bind(username);
                let result = builder.build().execute(&self.pool).await?;
                // MySQL reports changed rows, not matched ones: re-check on 0.
                Ok(result.rows_affected() > 0 || self.user_by_name(username).await?.is_some())
            }
        }

        #[async_trait]
        impl UserStore for SqlUserStore<sqlx::Pool<$db>> {
            async fn create_user(
                &self,
                username: &str,
                role: Role,
                quota: i64,
                token_hash: &str,
            ) -> Result<User, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO mj_users (username, role, status, quota, token_hash, created_at) ",
                );
                builder.push_values(std::iter::once(()), |mut row, ()| {
                    row.push_bind(username)
                        .push_bind(role.value())
                        .push_bind(STATUS_ENABLED)
                        .push_bind(quota)
                        .push_bind(token_hash)
                        .push_bind(mj_tasks::now_millis());
                });
                builder.build().execute(&self.pool).await?;
                // Reading back by the unique name avoids each dialect's own way of returning ids.
                self.user_by_name(username)
                    .await?
                    .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
            }

            async fn insert_user_with_id(&self, user: &ImportedUser) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO mj_users (id, username, role, status, quota, token_hash, created_at) ",
                );
                builder.push_values(std::iter::once(user), |mut row, user| {
                    row.push_bind(user.id)
                        .push_bind(user.username.as_str())
                        .push_bind(user.role)
                        .push_bind(user.status)
                        .push_bind(user.quota)
                        .push_bind(user.token_hash.as_deref())
                        .push_bind(mj_tasks::now_millis());
                });
                builder.build().execute(&mut *tx).await?;
                let sync_ids: Option<&'static str> = $sync_ids;
                if let Some(statement) = sync_ids {
                    sqlx::raw_sql(statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn user_by_token_hash(
                &self,
                token_hash: &str,
            ) -> Result<Option<User>, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(SELECT_USERS);
                builder.push(" WHERE token_hash = ").push_bind(token_hash);
                let row: Option<UserRow> =
                    builder.build_query_as().fetch_optional(&self.pool).await?;
                Ok(row.map(Into::into))
            }

            async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(SELECT_USERS);
                builder.push(" WHERE username = ").push_bind(username);
                let row: Option<UserRow> =
                    builder.build_query_as().fetch_optional(&self.pool).await?;
                Ok(row.map(Into::into))
            }

            async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(SELECT_USERS);
                builder.push(" WHERE id = ").push_bind(id);
                let row: Option<UserRow> =
                    builder.build_query_as().fetch_optional(&self.pool).await?;
                Ok(row.map(Into::into))
            }

            async fn list_users(&self) -> Result<Vec<User>, StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(SELECT_USERS);
                builder.push(" ORDER BY id");
                let rows: Vec<UserRow> = builder.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn set_enabled(&self, username: &str, enabled: bool) -> Result<bool, StoreError> {
                let status = if enabled {
                    STATUS_ENABLED
                } else {
                    STATUS_DISABLED
                };
                self.update_user("status", UpdateValue::Int(status), username)
                    .await
            }

            async fn set_token_hash(
                &self,
                username: &str,
                token_hash: &str,
            ) -> Result<bool, StoreError> {
                self.update_user("token_hash", UpdateValue::Text(token_hash), username)
                    .await
            }

            async fn set_quota(&self, username: &str, quota: i64) -> Result<bool, StoreError> {
                self.update_user("quota", UpdateValue::Int(quota), username)
                    .await
            }
        }
    };
}

enum UpdateValue<'a> {
    Int(i64),
    Text(&'a str),
}

impl_user_store!(sqlx::Sqlite, None);
impl_user_store!(
    sqlx::Postgres,
    Some("SELECT setval(pg_get_serial_sequence('mj_users', 'id'), MAX(id)) FROM mj_users")
);
impl_user_store!(sqlx::MySql, None);

/// Applies the server's migrations on the store's database and returns its user store.
pub async fn open_user_store(store: &SqlStore) -> Result<Arc<dyn UserStore>, StoreError> {
    macro_rules! open {
        ($pool:expr, $dir:literal) => {{
            let pool = $pool.clone();
            let mut migrator = sqlx::migrate!($dir);
            migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
            migrator.run(&pool).await?;
            Ok(Arc::new(SqlUserStore { pool }) as Arc<dyn UserStore>)
        }};
    }
    match store {
        SqlStore::Sqlite(s) => open!(s.pool(), "./migrations/sqlite"),
        SqlStore::Postgres(s) => open!(s.pool(), "./migrations/postgres"),
        SqlStore::MySql(s) => open!(s.pool(), "./migrations/mysql"),
        _ => Err(StoreError::UnsupportedUrl("unknown backend".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = AccessToken::generate();
        let b = AccessToken::generate();
        assert_ne!(a.reveal(), b.reveal());
        assert_eq!(a.reveal().len(), 48);
        assert_eq!(a.hash(), hash_token(a.reveal()));
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(a.reveal()));
    }

    #[test]
    fn roles_order() {
        assert!(Role::Root > Role::Admin && Role::Admin > Role::User);
        assert_eq!(Role::from_value(10), Role::Admin);
        assert_eq!(Role::from_value(0), Role::User);
    }
}
