//! The poller's writes: compare-and-swap of a task together with its refund, and the lease that
//! lets one instance poll at a time.

use std::sync::Arc;

use async_trait::async_trait;

use crate::billing::QuotaLedger;
use crate::model::Task;
use crate::store::{SqlStore, StoreError};

/// What [`PollStore::write_outcome`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Another writer changed the row since it was read; nothing was written.
    Lost,
    /// Written; `refunded` tells whether this write returned the task's charge.
    Written {
        /// Whether the charge was refunded by this write.
        refunded: bool,
    },
}

/// Storage operations of the poller. Object safe: used as `Arc<dyn PollStore>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait PollStore: Send + Sync {
    /// Writes `task` if the stored row still has `task.version` (as
    /// [`TaskStore::update_if_version`](crate::TaskStore::update_if_version)), and, when the new
    /// status is `FAILURE` or `CANCEL` and the task was charged (`quota > 0`), refunds that charge
    /// through the ledger **in the same transaction**, recording it in `mj_refunds` (keyed by task
    /// id) so it can never happen twice.
    async fn write_outcome(&self, task: &Task) -> Result<WriteOutcome, StoreError>;

    /// [`Self::write_outcome`] for many tasks in **one** transaction (one commit for the lot),
    /// each row still compare-and-swapped on its own version; the outcomes are in `tasks` order.
    /// An error rolls the whole lot back.
    async fn write_outcomes(&self, tasks: &[Task]) -> Result<Vec<WriteOutcome>, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `now_ms + ttl_ms`; `true` when
    /// `holder` holds it afterwards. A lease is taken over only once it has expired.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up (if `holder` holds it) so another instance can take it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// [`PollStore`] over a [`SqlStore`] and a [`QuotaLedger`] that shares its database.
#[derive(Clone)]
pub struct SqlPollStore {
    store: SqlStore,
    ledger: Arc<dyn QuotaLedger>,
}

impl std::fmt::Debug for SqlPollStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlPollStore")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl SqlPollStore {
    /// The poll store of `store`; refunds are credited through `ledger`, whose
    /// [`QuotaLedger::credit_in`] receives the transaction's connection.
    pub fn new(store: SqlStore, ledger: Arc<dyn QuotaLedger>) -> Self {
        Self { store, ledger }
    }
}

/// One body for the three dialects: functions over `sqlx::Pool<$db>`, the ledger connection
/// wrapped in `$conn`.
macro_rules! poll_sql {
    ($module:ident, $db:ty, $conn:path) => {
        mod $module {
            use sqlx::QueryBuilder;

            use crate::billing::{Credit, CreditReason, QuotaLedger};
            use crate::model::{Task, TaskStatus};
            use crate::store::StoreError;
            use crate::store::poll::WriteOutcome;

            pub(super) async fn write_outcomes(
                pool: &sqlx::Pool<$db>,
                ledger: &dyn QuotaLedger,
                tasks: &[Task],
            ) -> Result<Vec<WriteOutcome>, StoreError> {
                let mut tx = pool.begin().await?;
                let mut outcomes = Vec::with_capacity(tasks.len());
                for task in tasks {
                    outcomes.push(write_one(&mut *tx, ledger, task).await?);
                }
                tx.commit().await?;
                Ok(outcomes)
            }

            async fn write_one(
                conn: &mut <$db as sqlx::Database>::Connection,
                ledger: &dyn QuotaLedger,
                task: &Task,
            ) -> Result<WriteOutcome, StoreError> {
                let mut builder = QueryBuilder::<$db>::new("");
                crate::store::sql::push_update(&mut builder, task);
                if builder.build().execute(&mut *conn).await?.rows_affected() != 1 {
                    return Ok(WriteOutcome::Lost);
                }
                // A user who got no image pays nothing: failures and cancellations alike.
                let refundable = matches!(task.status, TaskStatus::Failure | TaskStatus::Cancel);
                if !refundable || task.quota <= 0 {
                    return Ok(WriteOutcome::Written { refunded: false });
                }
                let mut check =
                    QueryBuilder::<$db>::new("SELECT COUNT(*) FROM mj_refunds WHERE task_id = ");
                check.push_bind(task.id);
                let existing: i64 = check.build_query_scalar().fetch_one(&mut *conn).await?;
                if existing > 0 {
                    return Ok(WriteOutcome::Written { refunded: false });
                }
                // The primary key on task_id backs the check: a racing second refund fails on
                // insert and its whole transaction (status write included) rolls back.
                let mut insert = QueryBuilder::<$db>::new(
                    "INSERT INTO mj_refunds (task_id, user_id, amount, refunded_at) ",
                );
                insert.push_values(std::iter::once(task), |mut row, task| {
                    row.push_bind(task.id)
                        .push_bind(task.user_id)
                        .push_bind(task.quota)
                        .push_bind(crate::now_millis());
                });
                insert.build().execute(&mut *conn).await?;
                let credit = Credit {
                    user_id: task.user_id,
                    amount: task.quota,
                    reason: CreditReason::Refund { task_id: task.id },
                };
                ledger.credit_in($conn(&mut *conn), credit).await?;
                Ok(WriteOutcome::Written { refunded: true })
            }

            pub(super) async fn try_lease(
                pool: &sqlx::Pool<$db>,
                name: &str,
                holder: &str,
                now_ms: i64,
                ttl_ms: i64,
            ) -> Result<bool, StoreError> {
                let expires_at = now_ms.saturating_add(ttl_ms);
                // One conditional update: renew our own lease or take over an expired one.
                // `expires_at` always changes, so MySQL's changed-rows count is 1 on success.
                let mut update = QueryBuilder::<$db>::new("UPDATE mj_leases SET holder = ");
                update
                    .push_bind(holder)
                    .push(", expires_at = ")
                    .push_bind(expires_at)
                    .push(" WHERE name = ")
                    .push_bind(name)
                    .push(" AND (holder = ")
                    .push_bind(holder)
                    .push(" OR expires_at < ")
                    .push_bind(now_ms)
                    .push(")");
                if update.build().execute(pool).await?.rows_affected() == 1 {
                    return Ok(true);
                }
                let mut exists =
                    QueryBuilder::<$db>::new("SELECT COUNT(*) FROM mj_leases WHERE name = ");
                exists.push_bind(name);
                let count: i64 = exists.build_query_scalar().fetch_one(pool).await?;
                if count > 0 {
                    return Ok(false);
                }
                let mut insert =
                    QueryBuilder::<$db>::new("INSERT INTO mj_leases (name, holder, expires_at) ");
                insert.push_values(std::iter::once(()), |mut row, ()| {
                    row.push_bind(name).push_bind(holder).push_bind(expires_at);
                });
                match insert.build().execute(pool).await.map_err(StoreError::from) {
                    Ok(_) => Ok(true),
                    Err(StoreError::Conflict(_)) => Ok(false),
                    Err(error) => Err(error),
                }
            }

            pub(super) async fn release_lease(
                pool: &sqlx::Pool<$db>,
                name: &str,
                holder: &str,
            ) -> Result<(), StoreError> {
                let mut update =
                    QueryBuilder::<$db>::new("UPDATE mj_leases SET expires_at = 0 WHERE name = ");
                update
                    .push_bind(name)
                    .push(" AND holder = ")
                    .push_bind(holder);
                update.build().execute(pool).await?;
                Ok(())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
poll_sql!(
    sqlite_poll,
    sqlx::Sqlite,
    crate::billing::LedgerConn::Sqlite
);
#[cfg(feature = "postgres")]
poll_sql!(
    postgres_poll,
    sqlx::Postgres,
    crate::billing::LedgerConn::Postgres
);
#[cfg(feature = "mysql")]
poll_sql!(mysql_poll, sqlx::MySql, crate::billing::LedgerConn::MySql);

/// Dispatches `$call` to the module of the store's backend with its pool.
macro_rules! dispatch {
    ($self:ident, $function:ident ( $($arg:expr),* )) => {
        match &$self.store {
            #[cfg(feature = "sqlite")]
            SqlStore::Sqlite(store) => sqlite_poll::$function(store.pool(), $($arg),*).await,
            #[cfg(feature = "postgres")]
            SqlStore::Postgres(store) => postgres_poll::$function(store.pool(), $($arg),*).await,
            #[cfg(feature = "mysql")]
            SqlStore::MySql(store) => mysql_poll::$function(store.pool(), $($arg),*).await,
        }
    };
}

#[async_trait]
impl PollStore for SqlPollStore {
    async fn write_outcome(&self, task: &Task) -> Result<WriteOutcome, StoreError> {
        let outcomes = self.write_outcomes(std::slice::from_ref(task)).await?;
        Ok(outcomes.into_iter().next().unwrap_or(WriteOutcome::Lost))
    }

    async fn write_outcomes(&self, tasks: &[Task]) -> Result<Vec<WriteOutcome>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let ledger = self.ledger.as_ref();
        dispatch!(self, write_outcomes(ledger, tasks))
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, try_lease(name, holder, now_ms, ttl_ms))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        dispatch!(self, release_lease(name, holder))
    }
}
