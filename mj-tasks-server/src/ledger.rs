//! The server's quota ledger: [`mj_tasks::QuotaLedger`] on the `mj_users.quota` column.
//!
//! Reserving is one conditional update (`quota >= price`), so concurrent submits can never
//! overdraw a balance; refunds run on the connection of the library's transaction that marks the
//! task failed, so the status change and the credit commit together.

use std::sync::Arc;

use async_trait::async_trait;
use mj_tasks::{LedgerConn, QuotaLedger, Refund, SqlStore, StoreError};

use crate::users::SqlUserStore;

/// One body for the three dialects.
macro_rules! impl_ledger {
    ($db:ty) => {
        impl SqlUserStore<sqlx::Pool<$db>> {
            fn credit_query(user_id: i64, amount: i64) -> sqlx::QueryBuilder<$db> {
                let mut builder =
                    sqlx::QueryBuilder::<$db>::new("UPDATE mj_users SET quota = quota + ");
                builder
                    .push_bind(amount)
                    .push(" WHERE id = ")
                    .push_bind(user_id);
                builder
            }

            async fn reserve_quota(&self, user_id: i64, amount: i64) -> Result<bool, StoreError> {
                let mut builder =
                    sqlx::QueryBuilder::<$db>::new("UPDATE mj_users SET quota = quota - ");
                builder
                    .push_bind(amount)
                    .push(" WHERE id = ")
                    .push_bind(user_id)
                    .push(" AND quota >= ")
                    .push_bind(amount);
                let result = builder.build().execute(&self.pool).await?;
                Ok(result.rows_affected() == 1)
            }

            async fn release_quota(&self, user_id: i64, amount: i64) -> Result<(), StoreError> {
                Self::credit_query(user_id, amount)
                    .build()
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

impl_ledger!(sqlx::Sqlite);
impl_ledger!(sqlx::Postgres);
impl_ledger!(sqlx::MySql);

/// The ledger over one backend's pool.
enum Backend {
    Sqlite(SqlUserStore<sqlx::SqlitePool>),
    Postgres(SqlUserStore<sqlx::PgPool>),
    MySql(SqlUserStore<sqlx::MySqlPool>),
}

/// [`QuotaLedger`] on the users table.
pub struct UserLedger(Backend);

/// The ledger of the store's database (the users table must exist: see
/// [`crate::users::open_user_store`]).
pub fn open_ledger(store: &SqlStore) -> Result<Arc<dyn QuotaLedger>, StoreError> {
    let backend = match store {
        SqlStore::Sqlite(s) => Backend::Sqlite(SqlUserStore {
            pool: s.pool().clone(),
        }),
        SqlStore::Postgres(s) => Backend::Postgres(SqlUserStore {
            pool: s.pool().clone(),
        }),
        SqlStore::MySql(s) => Backend::MySql(SqlUserStore {
            pool: s.pool().clone(),
        }),
        _ => return Err(StoreError::UnsupportedUrl("unknown backend".to_owned())),
    };
    Ok(Arc::new(UserLedger(backend)))
}

#[async_trait]
impl QuotaLedger for UserLedger {
    async fn reserve(&self, user_id: i64, amount: i64) -> Result<bool, StoreError> {
        if amount <= 0 {
            return Ok(true);
        }
        match &self.0 {
            Backend::Sqlite(s) => s.reserve_quota(user_id, amount).await,
            Backend::Postgres(s) => s.reserve_quota(user_id, amount).await,
            Backend::MySql(s) => s.reserve_quota(user_id, amount).await,
        }
    }

    async fn release(&self, user_id: i64, amount: i64) -> Result<(), StoreError> {
        if amount <= 0 {
            return Ok(());
        }
        match &self.0 {
            Backend::Sqlite(s) => s.release_quota(user_id, amount).await,
            Backend::Postgres(s) => s.release_quota(user_id, amount).await,
            Backend::MySql(s) => s.release_quota(user_id, amount).await,
        }
    }

    async fn refund_in(&self, conn: LedgerConn<'_>, refund: Refund) -> Result<(), StoreError> {
        let Refund {
            user_id, amount, ..
        } = refund;
        match conn {
            LedgerConn::Sqlite(conn) => {
                SqlUserStore::<sqlx::SqlitePool>::credit_query(user_id, amount)
                    .build()
                    .execute(conn)
                    .await?;
            }
            LedgerConn::Postgres(conn) => {
                SqlUserStore::<sqlx::PgPool>::credit_query(user_id, amount)
                    .build()
                    .execute(conn)
                    .await?;
            }
            LedgerConn::MySql(conn) => {
                SqlUserStore::<sqlx::MySqlPool>::credit_query(user_id, amount)
                    .build()
                    .execute(conn)
                    .await?;
            }
            _ => return Err(StoreError::UnsupportedUrl("unknown backend".to_owned())),
        }
        Ok(())
    }
}
