//! The reservation journal (`mj_reservations`): what makes a submit crash-safe.
//!
//! A submit goes through three transactions, never more than one of them open at a time:
//! 1. [`ReservationStore::reserve`]: the ledger's debit and a journal row, **before** the
//!    upstream is called;
//! 2. then either [`ReservationStore::settle`] (the upstream accepted: the journal row is deleted
//!    and the task inserted with its charge) or [`ReservationStore::release`] (it rejected the
//!    submit or could not be reached: the row is deleted and the quota credited back);
//! 3. a row that outlives its submit (the process died, or the database was down when the
//!    release was due) is released by the poller ([`ReservationStore::release_expired`]) once it
//!    is older than the upstream timeout.
//!
//! Every path deletes the journal row in the transaction that acts on it and acts only if the
//! delete removed it, so exactly one of them charges or credits the reservation. A settle that
//! comes after the poller already released the reservation records the task charged nothing.

use std::sync::Arc;

use async_trait::async_trait;

use crate::billing::QuotaLedger;
use crate::model::{NewTask, Task};
use crate::store::{SqlStore, StoreError};

/// One row of the journal: `amount` taken from `user_id` at `created_at` (ms) for a submit in
/// flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The journal row's id.
    pub id: i64,
    /// Whose quota.
    pub user_id: i64,
    /// How much was taken.
    pub amount: i64,
    /// When (epoch ms).
    pub created_at: i64,
}

/// What [`ReservationStore::settle`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The task as inserted (with its id).
    pub task: Task,
    /// `false` when the reservation had already been released (the poller resolved it as a
    /// leftover first): the task is recorded with `quota = 0`, so nobody pays or is refunded
    /// twice.
    pub charged: bool,
}

/// The journal's operations. Object safe: used as `Arc<dyn ReservationStore>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ReservationStore: Send + Sync {
    /// Takes `amount` from `user_id` through the ledger and journals it, in one transaction.
    /// `None` when the balance does not cover it (nothing is taken, nothing journaled).
    async fn reserve(&self, user_id: i64, amount: i64) -> Result<Option<Reservation>, StoreError>;

    /// The upstream accepted: deletes the journal row and inserts `task` charged the reserved
    /// amount (its `quota` is set here), in one transaction.
    async fn settle(
        &self,
        reservation: &Reservation,
        task: &NewTask,
    ) -> Result<Settled, StoreError>;

    /// The submit failed: deletes the journal row and credits the amount back, in one
    /// transaction. `false` when the row was gone already (released or settled before).
    async fn release(&self, reservation: &Reservation) -> Result<bool, StoreError>;

    /// Releases up to `limit` journal rows created before `created_before_ms`, oldest first;
    /// returns how many this call released.
    async fn release_expired(&self, created_before_ms: i64, limit: u32) -> Result<u64, StoreError>;
}

/// [`ReservationStore`] over a [`SqlStore`] and a [`QuotaLedger`] that shares its database.
#[derive(Clone)]
pub struct SqlReservationStore {
    store: SqlStore,
    ledger: Arc<dyn QuotaLedger>,
}

impl std::fmt::Debug for SqlReservationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlReservationStore")
            .field("backend", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl SqlReservationStore {
    /// The journal of `store`; debits and credits go through `ledger` on the transaction's
    /// connection.
    pub fn new(store: SqlStore, ledger: Arc<dyn QuotaLedger>) -> Self {
        Self { store, ledger }
    }
}

/// The id of the row an `INSERT` adds, on a connection: `RETURNING id` where the dialect has
/// it, MySQL's insert id otherwise.
macro_rules! insert_id {
    (returning, $builder:ident, $conn:expr) => {{
        $builder.push(" RETURNING id");
        $builder
            .build_query_scalar::<i64>()
            .fetch_one($conn)
            .await?
    }};
    (last_insert_id, $builder:ident, $conn:expr) => {{
        let result = $builder.build().execute($conn).await?;
        i64::try_from(result.last_insert_id()).map_err(|_| {
            StoreError::from(sqlx::Error::Protocol(
                "insert id does not fit in i64".into(),
            ))
        })?
    }};
}

/// One body for the three dialects: functions over `sqlx::Pool<$db>`, the ledger connection
/// wrapped in `$conn`, new ids read as `$insert_id` (see [`insert_id!`]).
macro_rules! reservation_sql {
    ($module:ident, $db:ty, $conn:path, $insert_id:ident) => {
        mod $module {
            use sqlx::QueryBuilder;

            use crate::billing::{Credit, CreditReason, QuotaLedger};
            use crate::model::NewTask;
            use crate::store::StoreError;
            use crate::store::reservations::{Reservation, Settled};
            use crate::store::sql::{INSERT_TASKS, inserted_task, push_task_values};

            pub(super) async fn reserve(
                pool: &sqlx::Pool<$db>,
                ledger: &dyn QuotaLedger,
                user_id: i64,
                amount: i64,
                now_ms: i64,
            ) -> Result<Option<Reservation>, StoreError> {
                let mut tx = pool.begin().await?;
                if !ledger.reserve_in($conn(&mut *tx), user_id, amount).await? {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let mut insert = QueryBuilder::<$db>::new(
                    "INSERT INTO mj_reservations (user_id, amount, created_at) ",
                );
                insert.push_values(std::iter::once(()), |mut row, ()| {
                    row.push_bind(user_id).push_bind(amount).push_bind(now_ms);
                });
                let id = insert_id!($insert_id, insert, &mut *tx);
                tx.commit().await?;
                Ok(Some(Reservation {
                    id,
                    user_id,
                    amount,
                    created_at: now_ms,
                }))
            }

            /// Deletes the journal row: `true` when this call removed it, and so decides.
            async fn claim(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: i64,
            ) -> Result<bool, StoreError> {
                let mut delete =
                    QueryBuilder::<$db>::new("DELETE FROM mj_reservations WHERE id = ");
                delete.push_bind(id);
                Ok(delete.build().execute(&mut *conn).await?.rows_affected() == 1)
            }

            pub(super) async fn settle(
                pool: &sqlx::Pool<$db>,
                reservation: &Reservation,
                task: &NewTask,
            ) -> Result<Settled, StoreError> {
                let mut tx = pool.begin().await?;
                let charged = claim(&mut *tx, reservation.id).await?;
                let task = NewTask {
                    quota: if charged { reservation.amount } else { 0 },
                    ..task.clone()
                };
                let mut insert = QueryBuilder::<$db>::new(INSERT_TASKS);
                push_task_values(&mut insert, std::slice::from_ref(&task));
                let id = insert_id!($insert_id, insert, &mut *tx);
                tx.commit().await?;
                Ok(Settled {
                    task: inserted_task(id, &task),
                    charged,
                })
            }

            pub(super) async fn release(
                pool: &sqlx::Pool<$db>,
                ledger: &dyn QuotaLedger,
                reservation: &Reservation,
            ) -> Result<bool, StoreError> {
                let mut tx = pool.begin().await?;
                if !claim(&mut *tx, reservation.id).await? {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let credit = Credit {
                    user_id: reservation.user_id,
                    amount: reservation.amount,
                    reason: CreditReason::Release {
                        reservation_id: reservation.id,
                    },
                };
                ledger.credit_in($conn(&mut *tx), credit).await?;
                tx.commit().await?;
                Ok(true)
            }

            pub(super) async fn expired(
                pool: &sqlx::Pool<$db>,
                created_before_ms: i64,
                limit: u32,
            ) -> Result<Vec<Reservation>, StoreError> {
                let mut select = QueryBuilder::<$db>::new(
                    "SELECT id, user_id, amount, created_at FROM mj_reservations \
                     WHERE created_at < ",
                );
                select
                    .push_bind(created_before_ms)
                    .push(" ORDER BY created_at LIMIT ")
                    .push_bind(i64::from(limit));
                let rows: Vec<(i64, i64, i64, i64)> =
                    select.build_query_as().fetch_all(pool).await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, user_id, amount, created_at)| Reservation {
                        id,
                        user_id,
                        amount,
                        created_at,
                    })
                    .collect())
            }
        }
    };
}

#[cfg(feature = "sqlite")]
reservation_sql!(
    sqlite_journal,
    sqlx::Sqlite,
    crate::billing::LedgerConn::Sqlite,
    returning
);
#[cfg(feature = "postgres")]
reservation_sql!(
    postgres_journal,
    sqlx::Postgres,
    crate::billing::LedgerConn::Postgres,
    returning
);
#[cfg(feature = "mysql")]
reservation_sql!(
    mysql_journal,
    sqlx::MySql,
    crate::billing::LedgerConn::MySql,
    last_insert_id
);

/// Dispatches `$function` to the module of the store's backend with its pool.
macro_rules! dispatch {
    ($self:ident, $function:ident ( $($arg:expr),* )) => {
        match &$self.store {
            #[cfg(feature = "sqlite")]
            SqlStore::Sqlite(store) => sqlite_journal::$function(store.pool(), $($arg),*).await,
            #[cfg(feature = "postgres")]
            SqlStore::Postgres(store) => postgres_journal::$function(store.pool(), $($arg),*).await,
            #[cfg(feature = "mysql")]
            SqlStore::MySql(store) => mysql_journal::$function(store.pool(), $($arg),*).await,
        }
    };
}

#[async_trait]
impl ReservationStore for SqlReservationStore {
    async fn reserve(&self, user_id: i64, amount: i64) -> Result<Option<Reservation>, StoreError> {
        let ledger = self.ledger.as_ref();
        let now = crate::now_millis();
        dispatch!(self, reserve(ledger, user_id, amount.max(0), now))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        task: &NewTask,
    ) -> Result<Settled, StoreError> {
        dispatch!(self, settle(reservation, task))
    }

    async fn release(&self, reservation: &Reservation) -> Result<bool, StoreError> {
        let ledger = self.ledger.as_ref();
        dispatch!(self, release(ledger, reservation))
    }

    async fn release_expired(&self, created_before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let expired = dispatch!(self, expired(created_before_ms, limit))?;
        let mut released = 0;
        for reservation in &expired {
            if self.release(reservation).await? {
                tracing::warn!(
                    reservation = reservation.id,
                    user_id = reservation.user_id,
                    amount = reservation.amount,
                    "released a quota reservation its submit left behind"
                );
                released += 1;
            }
        }
        Ok(released)
    }
}
