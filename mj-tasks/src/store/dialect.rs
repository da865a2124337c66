//! The dialect seam: the little that differs between SQLite, PostgreSQL and MySQL/MariaDB.
//!
//! Every statement is built once, over any [`Dialect`], by the shared builders of `sql.rs` and
//! run by the one generic store of `tasks.rs`. A dialect says how values are bound (sqlx writes
//! `?` or `$n`), how a statement is run and its rows decoded ([`RunStatements`], the same body
//! for each driver), and its own strengths and quirks: how an insert reports its id, how a
//! counter is added to, how totals are best sent, how statistics are refreshed.

use futures_util::future::BoxFuture;
use sqlx::{Database, QueryBuilder};

use crate::billing::LedgerConn;
use crate::store::Backend;
use crate::store::import::{IdSpan, ImportClaim};
use crate::store::sql::{ChannelRow, PageRow, TaskRow};

/// What a backend's driver does with a built statement. Implemented by [`run_statements!`] with
/// one body for every driver: the generic store calls these instead of carrying sqlx's
/// higher-ranked executor bounds, which async-trait futures cannot.
pub(crate) trait RunStatements: Database {
    /// Binds an integer.
    fn bind_int(builder: &mut QueryBuilder<Self>, value: i64);
    /// Binds a text.
    fn bind_text(builder: &mut QueryBuilder<Self>, value: &str);
    /// Binds a boolean.
    fn bind_flag(builder: &mut QueryBuilder<Self>, value: bool);
    /// Every row, as tasks.
    fn fetch_tasks(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<TaskRow>>>;
    /// Every row, as tasks that carry the total.
    fn fetch_page_rows(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<PageRow>>>;
    /// Every row, as channels.
    fn fetch_channels(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<ChannelRow>>>;
    /// Every row, as import claims.
    fn fetch_import_claims(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<ImportClaim>>>;
    /// The first row, as an id span.
    fn fetch_id_span(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<IdSpan>>;
    /// The first column of the first row, as an integer.
    fn fetch_int(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Option<i64>>>;
    /// The first column of the first row, as text.
    fn fetch_text(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<Option<String>>>;
    /// The first column of the first row of a statement sent as plain text (no prepare, no
    /// binds: its values are written in as literals).
    fn fetch_int_unprepared(
        conn: &mut Self::Connection,
        sql: String,
    ) -> BoxFuture<'_, sqlx::Result<Option<i64>>>;
    /// Runs a statement; how many rows it changed.
    fn execute(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<u64>>;
    /// Runs a fixed maintenance statement, ignoring what it returns.
    fn run_script<'c>(
        conn: &'c mut Self::Connection,
        sql: &'static str,
    ) -> BoxFuture<'c, sqlx::Result<()>>;
}

/// A backend's own strengths and quirks; see the module documentation.
pub(crate) trait Dialect: RunStatements {
    /// Which backend this is.
    const BACKEND: Backend;
    /// Whether `list` reads the total in the page's own statement (one round trip) instead of
    /// concurrently on a second connection.
    const TOTAL_IN_PAGE_STATEMENT: bool;
    /// Whether totals are sent as plain text with their values written in
    /// ([`FilterValues::Literals`](crate::store::sql::FilterValues)) instead of as cached
    /// prepared statements.
    const TOTAL_UNPREPARED: bool;
    /// The statements of [`TaskStore::refresh_statistics`](crate::TaskStore::refresh_statistics).
    const REFRESH_STATISTICS: &'static [&'static str];
    /// The end of an insert into `mj_task_counts` that adds to a counter that exists already.
    const ADD_TO_EXISTING_COUNT: &'static str;
    /// The SQL type a sum is cast to so that it decodes as `i64`.
    const INTEGER_TYPE: &'static str;
    /// Written before `status` and `action` in an owner's or a channel's time-range condition
    /// so that the planner cannot use their indexes there, only the range's: SQLite's sampled statistics
    /// (`analysis_limit`) cannot tell a status held by nine tasks in ten from a rare one, and
    /// would count a range's edge by walking every `SUCCESS`. PostgreSQL and MariaDB plan with
    /// real statistics and need nothing.
    const RANGE_ONLY_PREFIX: &'static str;
    /// Whether the store keeps `mj_task_order` (how far submit times stray from id order), which
    /// needs ids in commit order: SQLite's serialized writers give that, PostgreSQL's sequences
    /// and InnoDB's auto-increment under concurrent inserts do not.
    const TRACKS_SUBMIT_ORDER: bool;
    /// How a transaction that writes begins. Writes read the row they replace first (its
    /// counters change with it), so SQLite must take the write lock up front: a read lock
    /// cannot wait its way up to a write lock while another connection writes.
    const BEGIN_WRITE: &'static str;

    /// Runs an `INSERT` of one row and yields the new id.
    fn insert_returning_id(
        conn: &mut Self::Connection,
        statement: QueryBuilder<Self>,
    ) -> BoxFuture<'_, sqlx::Result<i64>>;

    /// The statement that moves `table`'s id sequence past rows written with explicit ids (an
    /// import), where the backend does not do it by itself.
    fn sync_id_sequence(table: &'static str) -> Option<&'static str>;

    /// A transaction's connection as the ledger receives it.
    fn ledger_conn(conn: &mut Self::Connection) -> LedgerConn<'_>;
}

/// Implements [`RunStatements`] for a driver: the same few lines for each.
macro_rules! run_statements {
    ($db:ty) => {
        impl $crate::store::dialect::RunStatements for $db {
            fn bind_int(builder: &mut sqlx::QueryBuilder<Self>, value: i64) {
                builder.push_bind(value);
            }

            fn bind_text(builder: &mut sqlx::QueryBuilder<Self>, value: &str) {
                builder.push_bind(value);
            }

            fn bind_flag(builder: &mut sqlx::QueryBuilder<Self>, value: bool) {
                builder.push_bind(value);
            }

            fn fetch_tasks(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<Vec<$crate::store::sql::TaskRow>>>
            {
                Box::pin(async move { statement.build_query_as().fetch_all(conn).await })
            }

            fn fetch_page_rows(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<Vec<$crate::store::sql::PageRow>>>
            {
                Box::pin(async move { statement.build_query_as().fetch_all(conn).await })
            }

            fn fetch_channels(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<
                '_,
                sqlx::Result<Vec<$crate::store::sql::ChannelRow>>,
            > {
                Box::pin(async move { statement.build_query_as().fetch_all(conn).await })
            }

            fn fetch_import_claims(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<
                '_,
                sqlx::Result<Vec<$crate::store::import::ImportClaim>>,
            > {
                Box::pin(async move { statement.build_query_as().fetch_all(conn).await })
            }

            fn fetch_id_span(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<$crate::store::import::IdSpan>>
            {
                Box::pin(async move { statement.build_query_as().fetch_one(conn).await })
            }

            fn fetch_int(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<Option<i64>>> {
                Box::pin(async move { statement.build_query_scalar().fetch_optional(conn).await })
            }

            fn fetch_text(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<Option<String>>> {
                Box::pin(async move { statement.build_query_scalar().fetch_optional(conn).await })
            }

            fn fetch_int_unprepared(
                conn: &mut Self::Connection,
                sql: String,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<Option<i64>>> {
                Box::pin(async move {
                    use sqlx::Row as _;
                    // The caller wrote every value in as a literal (see FilterValues).
                    let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .fetch_optional(conn)
                        .await?;
                    row.map(|row| row.try_get(0)).transpose()
                })
            }

            fn execute(
                conn: &mut Self::Connection,
                mut statement: sqlx::QueryBuilder<Self>,
            ) -> futures_util::future::BoxFuture<'_, sqlx::Result<u64>> {
                Box::pin(async move { Ok(statement.build().execute(conn).await?.rows_affected()) })
            }

            fn run_script<'c>(
                conn: &'c mut Self::Connection,
                sql: &'static str,
            ) -> futures_util::future::BoxFuture<'c, sqlx::Result<()>> {
                Box::pin(async move {
                    sqlx::raw_sql(sql).fetch_all(conn).await?;
                    Ok(())
                })
            }
        }
    };
}
