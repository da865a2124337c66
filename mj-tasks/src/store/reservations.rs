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
use futures_util::future::BoxFuture;

use crate::billing::QuotaLedger;
use crate::model::{NewTask, Task};
use crate::store::dialect::Dialect;
use crate::store::{BackendVisitor, SqlStore, SqlTaskStore, StoreError};

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

/// The journal's statements, over any dialect.
mod statements {
    use sqlx::{Pool, QueryBuilder};

    use crate::billing::{Credit, CreditReason, QuotaLedger};
    use crate::model::{NewTask, Task};
    use crate::store::StoreError;
    use crate::store::counts::Deltas;
    use crate::store::dialect::Dialect;
    use crate::store::reservations::{Reservation, Settled};
    use crate::store::sql::insert_tasks;
    use crate::store::tasks::{apply, begin_write};

    pub(super) async fn reserve<D: Dialect>(
        pool: &Pool<D>,
        ledger: &dyn QuotaLedger,
        user_id: i64,
        amount: i64,
        now_ms: i64,
    ) -> Result<Option<Reservation>, StoreError> {
        let mut tx = begin_write(pool).await?;
        if !ledger
            .reserve_in(D::ledger_conn(&mut tx), user_id, amount)
            .await?
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut insert = QueryBuilder::<D>::new(
            "INSERT INTO mj_reservations (user_id, amount, created_at) VALUES (",
        );
        D::bind_int(&mut insert, user_id);
        insert.push(", ");
        D::bind_int(&mut insert, amount);
        insert.push(", ");
        D::bind_int(&mut insert, now_ms);
        insert.push(")");
        let id = D::insert_returning_id(&mut tx, insert).await?;
        tx.commit().await?;
        Ok(Some(Reservation {
            id,
            user_id,
            amount,
            created_at: now_ms,
        }))
    }

    /// Deletes the journal row: `true` when this call removed it, and so decides.
    async fn claim<D: Dialect>(conn: &mut D::Connection, id: i64) -> Result<bool, StoreError> {
        let mut delete = QueryBuilder::<D>::new("DELETE FROM mj_reservations WHERE id = ");
        D::bind_int(&mut delete, id);
        Ok(D::execute(conn, delete).await? == 1)
    }

    pub(super) async fn settle<D: Dialect>(
        pool: &Pool<D>,
        reservation: &Reservation,
        task: &NewTask,
    ) -> Result<Settled, StoreError> {
        let mut tx = begin_write(pool).await?;
        let charged = claim::<D>(&mut tx, reservation.id).await?;
        let task = NewTask {
            quota: if charged { reservation.amount } else { 0 },
            ..task.clone()
        };
        let id =
            D::insert_returning_id(&mut tx, insert_tasks::<D>(std::slice::from_ref(&task))).await?;
        // The new task counts in the totals from the same commit on.
        let mut deltas = Deltas::default();
        deltas.add(&task, 1);
        apply::<D>(&mut tx, &deltas).await?;
        tx.commit().await?;
        Ok(Settled {
            task: Task {
                id,
                version: 0,
                fields: task,
            },
            charged,
        })
    }

    pub(super) async fn release<D: Dialect>(
        pool: &Pool<D>,
        ledger: &dyn QuotaLedger,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        let mut tx = begin_write(pool).await?;
        if !claim::<D>(&mut tx, reservation.id).await? {
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
        ledger.credit_in(D::ledger_conn(&mut tx), credit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Up to `limit` journal rows created before `created_before_ms`, oldest first.
    pub(super) async fn expired<D: Dialect>(
        pool: &Pool<D>,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<Reservation>, StoreError> {
        let mut conn = pool.acquire().await?;
        // Ids first (one index range), then each row: the journal is almost always empty.
        let mut select =
            QueryBuilder::<D>::new("SELECT COUNT(*) FROM mj_reservations WHERE created_at < ");
        D::bind_int(&mut select, created_before_ms);
        if D::fetch_int(&mut conn, select).await?.unwrap_or(0) == 0 {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        let mut after = i64::MIN;
        while rows.len() < limit as usize {
            let mut next = QueryBuilder::<D>::new("SELECT id FROM mj_reservations WHERE id > ");
            D::bind_int(&mut next, after);
            next.push(" AND created_at < ");
            D::bind_int(&mut next, created_before_ms);
            next.push(" ORDER BY id LIMIT 1");
            let Some(id) = D::fetch_int(&mut conn, next).await? else {
                break;
            };
            after = id;
            let field = |column: &'static str| {
                let mut select = QueryBuilder::<D>::new("SELECT ");
                select
                    .push(column)
                    .push(" FROM mj_reservations WHERE id = ");
                D::bind_int(&mut select, id);
                select
            };
            let user_id = D::fetch_int(&mut conn, field("user_id")).await?;
            let amount = D::fetch_int(&mut conn, field("amount")).await?;
            let created_at = D::fetch_int(&mut conn, field("created_at")).await?;
            if let (Some(user_id), Some(amount), Some(created_at)) = (user_id, amount, created_at) {
                rows.push(Reservation {
                    id,
                    user_id,
                    amount,
                    created_at,
                });
            }
        }
        Ok(rows)
    }
}

/// A journal operation, run on whichever backend the store is.
enum Operation<'a> {
    Reserve(&'a dyn QuotaLedger, i64, i64),
    Settle(&'a Reservation, &'a NewTask),
    Release(&'a dyn QuotaLedger, &'a Reservation),
    Expired(i64, u32),
}

/// What an [`Operation`] yields.
enum Done {
    Reserved(Option<Reservation>),
    Settled(Box<Settled>),
    Released(bool),
    Expired(Vec<Reservation>),
}

impl<'a> BackendVisitor for Operation<'a> {
    type Output = BoxFuture<'a, Result<Done, StoreError>>;

    fn visit<D: Dialect>(self, store: &SqlTaskStore<D>) -> Self::Output {
        let pool = store.pool().clone();
        Box::pin(async move {
            Ok(match self {
                Self::Reserve(ledger, user_id, amount) => Done::Reserved(
                    statements::reserve(&pool, ledger, user_id, amount, crate::now_millis())
                        .await?,
                ),
                Self::Settle(reservation, task) => Done::Settled(Box::new(
                    statements::settle(&pool, reservation, task).await?,
                )),
                Self::Release(ledger, reservation) => {
                    Done::Released(statements::release(&pool, ledger, reservation).await?)
                }
                Self::Expired(before, limit) => {
                    Done::Expired(statements::expired(&pool, before, limit).await?)
                }
            })
        })
    }
}

/// An answer of another operation than asked: cannot happen (each arm above answers its own).
fn mismatch() -> StoreError {
    StoreError::UnsupportedUrl("reservation journal: mismatched operation".to_owned())
}

#[async_trait]
impl ReservationStore for SqlReservationStore {
    async fn reserve(&self, user_id: i64, amount: i64) -> Result<Option<Reservation>, StoreError> {
        let operation = Operation::Reserve(self.ledger.as_ref(), user_id, amount.max(0));
        match self.store.with_backend(operation).await? {
            Done::Reserved(reservation) => Ok(reservation),
            _ => Err(mismatch()),
        }
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        task: &NewTask,
    ) -> Result<Settled, StoreError> {
        match self
            .store
            .with_backend(Operation::Settle(reservation, task))
            .await?
        {
            Done::Settled(settled) => Ok(*settled),
            _ => Err(mismatch()),
        }
    }

    async fn release(&self, reservation: &Reservation) -> Result<bool, StoreError> {
        let operation = Operation::Release(self.ledger.as_ref(), reservation);
        match self.store.with_backend(operation).await? {
            Done::Released(released) => Ok(released),
            _ => Err(mismatch()),
        }
    }

    async fn release_expired(&self, created_before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let operation = Operation::Expired(created_before_ms, limit);
        let Done::Expired(expired) = self.store.with_backend(operation).await? else {
            return Err(mismatch());
        };
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
