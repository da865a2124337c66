//! The one store over every dialect: [`SqlTaskStore`] implements [`TaskStore`],
//! [`ChannelStore`] and [`SettingStore`] for SQLite, PostgreSQL and MySQL/MariaDB alike, with
//! statements from `sql.rs` and `counts.rs` run through the [`Dialect`] seam.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{Database, Pool, QueryBuilder};

use crate::channel::{Channel, NewChannel};
use crate::model::{NewTask, Task, now_millis};
use crate::query::{Page, PageRequest, TaskQuery};
use crate::store::counts::{Deltas, push_total};
use crate::store::dialect::Dialect;
use crate::store::sql::{
    FilterValues, INSERT_CHUNK, SELECT_CHANNELS, insert_tasks, insert_tasks_with_ids, push_page,
    push_where, select_tasks, update_task,
};
use crate::store::{ChannelStore, SettingStore, StoreError, TaskStore};

/// Tasks, channels and settings in one SQL database; use the aliases
/// [`SqliteTaskStore`](crate::SqliteTaskStore), [`PostgresTaskStore`](crate::PostgresTaskStore)
/// and [`MySqlTaskStore`](crate::MySqlTaskStore). Cloning is cheap (a pool handle).
pub struct SqlTaskStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
    /// Keeps the background upkeep (SQLite's periodic `PRAGMA optimize`) tied to the store.
    pub(crate) _upkeep: Option<Arc<UpkeepGuard>>,
}

/// Stops a background task when the last clone of its store is dropped.
#[derive(Debug)]
pub(crate) struct UpkeepGuard(pub(crate) tokio::task::AbortHandle);

impl Drop for UpkeepGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<DB: Database> Clone for SqlTaskStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            _upkeep: self._upkeep.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlTaskStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTaskStore")
            .field("backend", &DB::NAME)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> SqlTaskStore<DB> {
    /// Wraps an existing pool; run the backend's `migrate` before use if the schema may be
    /// missing.
    pub fn from_pool(pool: Pool<DB>) -> Self {
        Self {
            pool,
            _upkeep: None,
        }
    }

    /// The connection pool, for sharing with other tables of an embedding application.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

/// The exact total of `query`, from the counters where they cover it.
async fn total<D: Dialect>(pool: &Pool<D>, query: &TaskQuery) -> Result<u64, StoreError> {
    if query.matches_nothing() {
        return Ok(0);
    }
    let mut conn = pool.acquire().await?;
    let total = if D::TOTAL_UNPREPARED {
        let mut builder = QueryBuilder::<D>::new("SELECT ");
        push_total(&mut builder, query, FilterValues::Literals);
        D::fetch_int_unprepared(&mut conn, builder.into_string()).await?
    } else {
        let mut builder = QueryBuilder::<D>::new("SELECT ");
        push_total(&mut builder, query, FilterValues::Bound);
        D::fetch_int(&mut conn, builder).await?
    };
    Ok(total
        .and_then(|total| u64::try_from(total).ok())
        .unwrap_or(0))
}

/// The page rows (one more than the page holds) and the total.
async fn page_and_total<D: Dialect>(
    pool: &Pool<D>,
    query: &TaskQuery,
    page: PageRequest,
) -> Result<(Vec<Task>, u64), StoreError> {
    if D::TOTAL_IN_PAGE_STATEMENT {
        // One statement: the total is an uncorrelated subquery, evaluated once, and comes
        // with every row (so from the same snapshot as the page).
        let mut builder = select_tasks::<D>(true);
        push_total(&mut builder, query, FilterValues::Bound);
        builder.push(" AS total FROM midjourneys");
        push_page(&mut builder, query, page);
        let rows = D::fetch_page_rows(&mut *pool.acquire().await?, builder).await?;
        let total = match rows.first() {
            Some(row) => u64::try_from(row.total).unwrap_or(0),
            // An empty first page means nothing matches; past the end, count.
            None if page.offset() == 0 && page.cursor().is_none() => 0,
            None => total(pool, query).await?,
        };
        return Ok((rows.into_iter().map(|row| row.task.into()).collect(), total));
    }
    let mut builder = select_tasks::<D>(false);
    push_page(&mut builder, query, page);
    let rows = async {
        let mut conn = pool.acquire().await?;
        Ok::<_, StoreError>(D::fetch_tasks(&mut conn, builder).await?)
    };
    // The total and the page are independent reads: on two pooled connections they overlap
    // instead of adding up.
    let (total, rows) = futures_util::future::try_join(total(pool, query), rows).await?;
    Ok((rows.into_iter().map(Task::from).collect(), total))
}

/// A transaction for writes ([`Dialect::BEGIN_WRITE`]).
pub(crate) async fn begin_write<D: Dialect>(
    pool: &Pool<D>,
) -> Result<sqlx::Transaction<'static, D>, StoreError> {
    Ok(pool.begin_with(D::BEGIN_WRITE).await?)
}

/// Inserts `tasks` and their counts on `conn` (inside the caller's transaction).
async fn insert_counted<D: Dialect>(
    conn: &mut D::Connection,
    tasks: &[NewTask],
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    let mut deltas = Deltas::default();
    for chunk in tasks.chunks(INSERT_CHUNK) {
        inserted += D::execute(conn, insert_tasks::<D>(chunk)).await?;
        chunk.iter().for_each(|task| deltas.add(task, 1));
    }
    apply::<D>(conn, &deltas).await?;
    record_order::<D>(conn, tasks.iter().map(|task| task.submit_time), false).await?;
    Ok(inserted)
}

/// Records in `mj_task_order` ([`Dialect::TRACKS_SUBMIT_ORDER`]) how far the submit times of
/// `tasks`, inserted on `conn` in this order of ids, stray from id order. `below_existing` says
/// that their ids may fall below stored ones (an import), which widens the record to every
/// pair of old and new task.
async fn record_order<D: Dialect>(
    conn: &mut D::Connection,
    submit_times: impl Iterator<Item = i64>,
    below_existing: bool,
) -> Result<(), StoreError> {
    if !D::TRACKS_SUBMIT_ORDER {
        return Ok(());
    }
    let (mut min, mut max, mut lateness) = (None::<i64>, None::<i64>, 0i64);
    for time in submit_times {
        if let Some(earlier) = max {
            lateness = lateness.max(earlier.saturating_sub(time));
        }
        min = Some(min.map_or(time, |min| min.min(time)));
        max = Some(max.map_or(time, |max| max.max(time)));
    }
    let (Some(min), Some(max)) = (min, max) else {
        return Ok(());
    };
    let mut update =
        QueryBuilder::<D>::new("UPDATE mj_task_order SET max_lateness = MAX(max_lateness, ");
    D::bind_int(&mut update, lateness);
    update.push(", COALESCE(max_submit_time - ");
    D::bind_int(&mut update, min);
    update.push(", 0), CASE WHEN ");
    D::bind_flag(&mut update, below_existing);
    update.push(" THEN COALESCE(");
    D::bind_int(&mut update, max);
    update.push(
        " - min_submit_time, 0) ELSE 0 END), min_submit_time = MIN(COALESCE(min_submit_time, ",
    );
    D::bind_int(&mut update, min);
    update.push("), ");
    D::bind_int(&mut update, min);
    update.push("), max_submit_time = MAX(COALESCE(max_submit_time, ");
    D::bind_int(&mut update, max);
    update.push("), ");
    D::bind_int(&mut update, max);
    update.push(") WHERE id = 1");
    D::execute(conn, update).await?;
    Ok(())
}

/// Applies counter changes on `conn`: once per transaction, at its end, so that concurrent
/// writers take the counter rows' locks in one (key) order and cannot deadlock on them.
pub(crate) async fn apply<D: Dialect>(
    conn: &mut D::Connection,
    deltas: &Deltas,
) -> Result<(), StoreError> {
    for statement in deltas.statements::<D>() {
        D::execute(conn, statement).await?;
    }
    Ok(())
}

/// The compare-and-swap update of `task` on `conn` (inside the caller's transaction), adding the
/// counter changes it makes to `deltas` (for [`apply`]): `false` when another writer got there
/// first.
pub(crate) async fn update_counted<D: Dialect>(
    conn: &mut D::Connection,
    task: &Task,
    deltas: &mut Deltas,
) -> Result<bool, StoreError> {
    // The stored row at `task.version` is what the update replaces: every write bumps the
    // version, so if the update below finds this version, the row still holds these values.
    let mut select = select_tasks::<D>(false);
    select.push(" WHERE id = ");
    D::bind_int(&mut select, task.id);
    let Some(stored) = D::fetch_tasks(conn, select).await?.pop().map(Task::from) else {
        return Ok(false);
    };
    if stored.version != task.version {
        return Ok(false);
    }
    if D::execute(conn, update_task::<D>(task)).await? != 1 {
        return Ok(false);
    }
    // `user_id` and `submit_time` are never rewritten: count the row as it now is.
    let mut now = task.fields.clone();
    now.user_id = stored.user_id;
    now.submit_time = stored.submit_time;
    deltas.replace(&stored.fields, &now);
    Ok(true)
}

#[async_trait]
impl<D: Dialect> TaskStore for SqlTaskStore<D> {
    async fn insert(&self, task: &NewTask) -> Result<Task, StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        let id =
            D::insert_returning_id(&mut tx, insert_tasks::<D>(std::slice::from_ref(task))).await?;
        let mut deltas = Deltas::default();
        deltas.add(task, 1);
        apply::<D>(&mut tx, &deltas).await?;
        record_order::<D>(&mut tx, std::iter::once(task.submit_time), false).await?;
        tx.commit().await?;
        Ok(Task {
            id,
            version: 0,
            fields: task.clone(),
        })
    }

    async fn insert_many(&self, tasks: &[NewTask]) -> Result<u64, StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        let inserted = insert_counted::<D>(&mut tx, tasks).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn insert_with_ids(&self, tasks: &[Task]) -> Result<u64, StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        let mut inserted = 0;
        let mut deltas = Deltas::default();
        for chunk in tasks.chunks(INSERT_CHUNK) {
            inserted += D::execute(&mut tx, insert_tasks_with_ids::<D>(chunk)).await?;
            chunk.iter().for_each(|task| deltas.add(task, 1));
        }
        apply::<D>(&mut tx, &deltas).await?;
        let mut by_id: Vec<&Task> = tasks.iter().collect();
        by_id.sort_by_key(|task| task.id);
        record_order::<D>(&mut tx, by_id.iter().map(|task| task.submit_time), true).await?;
        if let Some(statement) = D::sync_id_sequence("midjourneys") {
            D::run_script(&mut tx, statement).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn get(&self, id: i64) -> Result<Option<Task>, StoreError> {
        let mut builder = select_tasks::<D>(false);
        builder.push(" WHERE id = ");
        D::bind_int(&mut builder, id);
        let rows = D::fetch_tasks(&mut *self.pool.acquire().await?, builder).await?;
        Ok(rows.into_iter().next().map(Task::from))
    }

    async fn find_by_mj_id(
        &self,
        mj_id: &str,
        owner: Option<i64>,
    ) -> Result<Option<Task>, StoreError> {
        let query = TaskQuery {
            owner,
            mj_id: Some(mj_id.to_owned()),
            ..TaskQuery::default()
        };
        if query.matches_nothing() {
            return Ok(None);
        }
        // `(user_id, mj_id)` or `(mj_id)`: one index probe, entries in id order.
        let mut builder = select_tasks::<D>(false);
        push_where(&mut builder, &query, None, FilterValues::Bound);
        builder.push(" ORDER BY id DESC LIMIT 1");
        let rows = D::fetch_tasks(&mut *self.pool.acquire().await?, builder).await?;
        Ok(rows.into_iter().next().map(Task::from))
    }

    async fn list(&self, query: &TaskQuery, page: PageRequest) -> Result<Page<Task>, StoreError> {
        if query.matches_nothing() {
            return Ok(Page::empty(page, 0));
        }
        let (rows, total) = page_and_total(&self.pool, query, page).await?;
        if page.cursor().is_none() && page.offset() >= total {
            return Ok(Page::empty(page, total));
        }
        Ok(Page::from_rows(query, page, total, rows))
    }

    async fn count(&self, query: &TaskQuery) -> Result<u64, StoreError> {
        total(&self.pool, query).await
    }

    async fn list_unfinished(&self, after_id: i64, limit: u32) -> Result<Vec<Task>, StoreError> {
        // Served by the (finished, id) index: finished rows are never touched, so an idle round
        // costs one index probe however large the table grows.
        let mut builder = select_tasks::<D>(false);
        builder.push(" WHERE finished = ");
        D::bind_flag(&mut builder, false);
        builder.push(" AND id > ");
        D::bind_int(&mut builder, after_id);
        builder.push(" ORDER BY id LIMIT ");
        D::bind_int(&mut builder, i64::from(limit));
        let rows = D::fetch_tasks(&mut *self.pool.acquire().await?, builder).await?;
        Ok(rows.into_iter().map(Task::from).collect())
    }

    async fn update_if_version(&self, task: &Task) -> Result<bool, StoreError> {
        let mut tx = begin_write(&self.pool).await?;
        let mut deltas = Deltas::default();
        let written = update_counted::<D>(&mut tx, task, &mut deltas).await?;
        apply::<D>(&mut tx, &deltas).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        D::run_script(&mut *self.pool.acquire().await?, "SELECT 1").await?;
        Ok(())
    }

    async fn ping_write(&self) -> Result<(), StoreError> {
        D::run_script(
            &mut *self.pool.acquire().await?,
            "UPDATE mj_leases SET expires_at = expires_at WHERE name = 'mj_poller'",
        )
        .await?;
        Ok(())
    }

    async fn refresh_statistics(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        for &statement in D::REFRESH_STATISTICS {
            D::run_script(&mut conn, statement).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> ChannelStore for SqlTaskStore<D> {
    async fn add_channel(&self, channel: &NewChannel) -> Result<Channel, StoreError> {
        let created_at = now_millis();
        let mut builder = QueryBuilder::<D>::new(
            "INSERT INTO mj_channels (name, base_url, secret, enabled, created_at) VALUES (",
        );
        D::bind_text(&mut builder, &channel.name);
        builder.push(", ");
        D::bind_text(&mut builder, &channel.base_url);
        builder.push(", ");
        D::bind_text(&mut builder, &channel.secret);
        builder.push(", ");
        D::bind_flag(&mut builder, true);
        builder.push(", ");
        D::bind_int(&mut builder, created_at);
        builder.push(")");
        let id = D::insert_returning_id(&mut *self.pool.acquire().await?, builder).await?;
        Ok(Channel {
            id,
            name: channel.name.clone(),
            base_url: channel.base_url.clone(),
            secret: channel.secret.clone(),
            enabled: true,
            created_at,
        })
    }

    async fn get_channel(&self, id: i64) -> Result<Option<Channel>, StoreError> {
        let mut builder = QueryBuilder::<D>::new(SELECT_CHANNELS);
        builder.push(" WHERE id = ");
        D::bind_int(&mut builder, id);
        let rows = D::fetch_channels(&mut *self.pool.acquire().await?, builder).await?;
        Ok(rows.into_iter().next().map(Channel::from))
    }

    async fn list_channels(&self) -> Result<Vec<Channel>, StoreError> {
        let mut builder = QueryBuilder::<D>::new(SELECT_CHANNELS);
        builder.push(" ORDER BY id");
        let rows = D::fetch_channels(&mut *self.pool.acquire().await?, builder).await?;
        Ok(rows.into_iter().map(Channel::from).collect())
    }

    async fn set_channel_enabled(&self, id: i64, enabled: bool) -> Result<bool, StoreError> {
        let mut builder = QueryBuilder::<D>::new("UPDATE mj_channels SET enabled = ");
        D::bind_flag(&mut builder, enabled);
        builder.push(" WHERE id = ");
        D::bind_int(&mut builder, id);
        // MySQL counts only rows whose value changed; re-check existence there.
        if D::execute(&mut *self.pool.acquire().await?, builder).await? == 1 {
            return Ok(true);
        }
        Ok(self.get_channel(id).await?.is_some())
    }
}

/// Race-free without dialect-specific upserts: read; if absent, insert and treat a unique
/// violation as "someone else inserted first"; read again. The primary key on `name` makes
/// exactly one insert win.
#[async_trait]
impl<D: Dialect> SettingStore for SqlTaskStore<D> {
    async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut builder = QueryBuilder::<D>::new("SELECT value FROM mj_settings WHERE name = ");
        D::bind_text(&mut builder, name);
        Ok(D::fetch_text(&mut *self.pool.acquire().await?, builder).await?)
    }

    async fn get_or_insert_setting(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        if let Some(value) = self.setting(name).await? {
            return Ok(value);
        }
        let mut builder =
            QueryBuilder::<D>::new("INSERT INTO mj_settings (name, value, created_at) VALUES (");
        D::bind_text(&mut builder, name);
        builder.push(", ");
        D::bind_text(&mut builder, candidate);
        builder.push(", ");
        D::bind_int(&mut builder, now_millis());
        builder.push(")");
        let inserted = D::execute(&mut *self.pool.acquire().await?, builder).await;
        match inserted.map_err(StoreError::from) {
            // Another instance inserted first: its value is the one to use.
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(other) => return Err(other),
        }
        self.setting(name)
            .await?
            .ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound))
    }
}
