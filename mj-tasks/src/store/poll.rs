//! The poller's writes: compare-and-swap of a task together with its refund, and the lease that
//! lets one instance poll at a time.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::billing::QuotaLedger;
use crate::model::Task;
use crate::store::dialect::Dialect;
use crate::store::{BackendVisitor, SqlStore, SqlTaskStore, StoreError};

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
    /// status is `FAILURE` and the task was charged (`quota > 0`), refunds that charge through the
    /// ledger **in the same transaction**, recording it in `mj_refunds` (keyed by task id) so it
    /// can never happen twice.
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
    /// [`QuotaLedger::refund_in`] receives the transaction's connection.
    pub fn new(store: SqlStore, ledger: Arc<dyn QuotaLedger>) -> Self {
        Self { store, ledger }
    }
}

/// The poller's statements, over any dialect.
mod statements {
    use sqlx::{Pool, QueryBuilder};

    use crate::billing::{QuotaLedger, Refund};
    use crate::model::{Task, TaskStatus};
    use crate::store::StoreError;
    use crate::store::counts::Deltas;
    use crate::store::dialect::Dialect;
    use crate::store::poll::WriteOutcome;
    use crate::store::tasks::{apply, begin_write, update_counted};

    pub(super) async fn write_outcomes<D: Dialect>(
        pool: &Pool<D>,
        ledger: &dyn QuotaLedger,
        tasks: &[Task],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut tx = begin_write(pool).await?;
        let mut outcomes = Vec::with_capacity(tasks.len());
        let mut deltas = Deltas::default();
        for task in tasks {
            outcomes.push(write_one::<D>(&mut tx, ledger, task, &mut deltas).await?);
        }
        apply::<D>(&mut tx, &deltas).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn write_one<D: Dialect>(
        conn: &mut D::Connection,
        ledger: &dyn QuotaLedger,
        task: &Task,
        deltas: &mut Deltas,
    ) -> Result<WriteOutcome, StoreError> {
        // The same compare-and-swap as `update_if_version`, totals included.
        if !update_counted::<D>(conn, task, deltas).await? {
            return Ok(WriteOutcome::Lost);
        }
        if task.status != TaskStatus::Failure || task.quota <= 0 {
            return Ok(WriteOutcome::Written { refunded: false });
        }
        let mut check = QueryBuilder::<D>::new("SELECT COUNT(*) FROM mj_refunds WHERE task_id = ");
        D::bind_int(&mut check, task.id);
        if D::fetch_int(conn, check).await?.unwrap_or(0) > 0 {
            return Ok(WriteOutcome::Written { refunded: false });
        }
        // The primary key on task_id backs the check: a racing second refund fails on insert and
        // its whole transaction (status write included) rolls back.
        let mut insert = QueryBuilder::<D>::new(
            "INSERT INTO mj_refunds (task_id, user_id, amount, refunded_at) VALUES (",
        );
        let values = [task.id, task.user_id, task.quota, crate::now_millis()];
        for (n, value) in values.into_iter().enumerate() {
            insert.push(if n == 0 { "" } else { ", " });
            D::bind_int(&mut insert, value);
        }
        insert.push(")");
        D::execute(conn, insert).await?;
        let refund = Refund {
            task_id: task.id,
            user_id: task.user_id,
            amount: task.quota,
        };
        ledger.refund_in(D::ledger_conn(conn), refund).await?;
        Ok(WriteOutcome::Written { refunded: true })
    }

    pub(super) async fn try_lease<D: Dialect>(
        pool: &Pool<D>,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = pool.acquire().await?;
        let expires_at = now_ms.saturating_add(ttl_ms);
        // One conditional update: renew our own lease or take over an expired one.
        // `expires_at` always changes, so MySQL's changed-rows count is 1 on success.
        let mut update = QueryBuilder::<D>::new("UPDATE mj_leases SET holder = ");
        D::bind_text(&mut update, holder);
        update.push(", expires_at = ");
        D::bind_int(&mut update, expires_at);
        update.push(" WHERE name = ");
        D::bind_text(&mut update, name);
        update.push(" AND (holder = ");
        D::bind_text(&mut update, holder);
        update.push(" OR expires_at < ");
        D::bind_int(&mut update, now_ms);
        update.push(")");
        if D::execute(&mut conn, update).await? == 1 {
            return Ok(true);
        }
        let mut exists = QueryBuilder::<D>::new("SELECT COUNT(*) FROM mj_leases WHERE name = ");
        D::bind_text(&mut exists, name);
        if D::fetch_int(&mut conn, exists).await?.unwrap_or(0) > 0 {
            return Ok(false);
        }
        let mut insert =
            QueryBuilder::<D>::new("INSERT INTO mj_leases (name, holder, expires_at) VALUES (");
        D::bind_text(&mut insert, name);
        insert.push(", ");
        D::bind_text(&mut insert, holder);
        insert.push(", ");
        D::bind_int(&mut insert, expires_at);
        insert.push(")");
        match D::execute(&mut conn, insert)
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub(super) async fn release_lease<D: Dialect>(
        pool: &Pool<D>,
        name: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        let mut update =
            QueryBuilder::<D>::new("UPDATE mj_leases SET expires_at = 0 WHERE name = ");
        D::bind_text(&mut update, name);
        update.push(" AND holder = ");
        D::bind_text(&mut update, holder);
        D::execute(&mut *pool.acquire().await?, update).await?;
        Ok(())
    }
}

/// A poll store operation, run on whichever backend the store is.
enum Operation<'a> {
    WriteOutcomes(&'a dyn QuotaLedger, &'a [Task]),
    TryLease {
        name: &'a str,
        holder: &'a str,
        now_ms: i64,
        ttl_ms: i64,
    },
    ReleaseLease {
        name: &'a str,
        holder: &'a str,
    },
}

/// What an [`Operation`] yields.
enum Done {
    Outcomes(Vec<WriteOutcome>),
    Leased(bool),
    Released,
}

impl<'a> BackendVisitor for Operation<'a> {
    type Output = BoxFuture<'a, Result<Done, StoreError>>;

    fn visit<D: Dialect>(self, store: &SqlTaskStore<D>) -> Self::Output {
        let pool = store.pool().clone();
        Box::pin(async move {
            Ok(match self {
                Self::WriteOutcomes(ledger, tasks) => {
                    Done::Outcomes(statements::write_outcomes(&pool, ledger, tasks).await?)
                }
                Self::TryLease {
                    name,
                    holder,
                    now_ms,
                    ttl_ms,
                } => {
                    Done::Leased(statements::try_lease(&pool, name, holder, now_ms, ttl_ms).await?)
                }
                Self::ReleaseLease { name, holder } => {
                    statements::release_lease(&pool, name, holder).await?;
                    Done::Released
                }
            })
        })
    }
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
        let operation = Operation::WriteOutcomes(self.ledger.as_ref(), tasks);
        match self.store.with_backend(operation).await? {
            Done::Outcomes(outcomes) => Ok(outcomes),
            Done::Leased(_) | Done::Released => Ok(Vec::new()),
        }
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let operation = Operation::TryLease {
            name,
            holder,
            now_ms,
            ttl_ms,
        };
        Ok(matches!(
            self.store.with_backend(operation).await?,
            Done::Leased(true)
        ))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.store
            .with_backend(Operation::ReleaseLease { name, holder })
            .await?;
        Ok(())
    }
}
