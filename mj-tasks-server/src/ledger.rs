//! The server's quota ledger: [`mj_tasks::QuotaLedger`] on the `mj_users.quota` column.
//!
//! Reserving is one conditional update (`quota >= price`), so concurrent submits can never
//! overdraw a balance; refunds run on the connection of the library's transaction that marks the
//! task failed, so the status change and the credit commit together.

use std::sync::Arc;

use async_trait::async_trait;
use mj_tasks::{LedgerConn, QuotaLedger, Refund, SqlStore, StoreError};

use crate::users::SqlUserStore;

/// `UPDATE mj_users SET quota = quota + amount WHERE id = user_id`.
fn credit_query<DB>(user_id: i64, amount: i64) -> sqlx::QueryBuilder<DB>
where
    DB: sqlx::Database,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut builder = sqlx::QueryBuilder::<DB>::new("UPDATE mj_users SET quota = quota + ");
    builder
        .push_bind(amount)
        .push(" WHERE id = ")
        .push_bind(user_id);
    builder
}

/// One body for the three dialects; `$conn` is the matching [`LedgerConn`] variant.
macro_rules! impl_ledger {
    ($db:ty, $conn:path) => {
        #[async_trait]
        impl QuotaLedger for SqlUserStore<sqlx::Pool<$db>> {
            async fn reserve(&self, user_id: i64, amount: i64) -> Result<bool, StoreError> {
                if amount <= 0 {
                    return Ok(true);
                }
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

            async fn release(&self, user_id: i64, amount: i64) -> Result<(), StoreError> {
                if amount <= 0 {
                    return Ok(());
                }
                credit_query::<$db>(user_id, amount)
                    .build()
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn refund_in(
                &self,
                conn: LedgerConn<'_>,
                refund: Refund,
            ) -> Result<(), StoreError> {
                // The poll store hands over a connection of its own database, which is ours.
                let $conn(conn) = conn else {
                    return Err(StoreError::UnsupportedUrl(
                        "refund on a connection of another database".to_owned(),
                    ));
                };
                credit_query::<$db>(refund.user_id, refund.amount)
                    .build()
                    .execute(conn)
                    .await?;
                Ok(())
            }
        }
    };
}

impl_ledger!(sqlx::Sqlite, LedgerConn::Sqlite);
impl_ledger!(sqlx::Postgres, LedgerConn::Postgres);
impl_ledger!(sqlx::MySql, LedgerConn::MySql);

/// The ledger of the store's database (the users table must exist: see
/// [`crate::users::open_user_store`]).
pub fn open_ledger(store: &SqlStore) -> Result<Arc<dyn QuotaLedger>, StoreError> {
    Ok(match store {
        SqlStore::Sqlite(s) => Arc::new(SqlUserStore {
            pool: s.pool().clone(),
        }),
        SqlStore::Postgres(s) => Arc::new(SqlUserStore {
            pool: s.pool().clone(),
        }),
        SqlStore::MySql(s) => Arc::new(SqlUserStore {
            pool: s.pool().clone(),
        }),
        _ => return Err(StoreError::UnsupportedUrl("unknown backend".to_owned())),
    })
}
