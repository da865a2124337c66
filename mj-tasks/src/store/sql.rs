//! The one statement-building layer shared by the three backends: one column list, one row
//! type, one `WHERE` builder, one page builder. Values are bound through the dialect
//! ([`RunStatements::bind_int`] and friends, which write `?` or `$n`) or, for totals sent
//! unprepared, written in as literals that no value can break out of.

use sqlx::QueryBuilder;

use crate::channel::Channel;
use crate::model::{NewTask, Progress, Task, TaskAction, TaskStatus};
use crate::query::{PageRequest, TaskQuery};
use crate::store::dialect::Dialect;

/// The task columns after `id`, in [`TaskRow`] order: the columns an insert writes, less
/// `finished` (derived from the status) and `version`.
const TASK_FIELDS: [&str; 21] = [
    "code",
    "user_id",
    "action",
    "mj_id",
    "prompt",
    "prompt_en",
    "description",
    "state",
    "submit_time",
    "start_time",
    "finish_time",
    "image_url",
    "video_url",
    "video_urls",
    "status",
    "progress",
    "fail_reason",
    "channel_id",
    "quota",
    "buttons",
    "properties",
];

/// Columns an update must never rewrite: ownership, and our own submit time, whatever an
/// upstream reports.
const NEVER_UPDATED: [&str; 2] = ["user_id", "submit_time"];

/// `SELECT <every task column>`, then ` FROM midjourneys` unless `with_total` (the caller then
/// appends the total's expression, ` AS total FROM midjourneys` and the rest; see [`PageRow`]).
pub(crate) fn select_tasks<D: Dialect>(with_total: bool) -> QueryBuilder<D> {
    let mut builder = QueryBuilder::new("SELECT id, ");
    builder.push(TASK_FIELDS.join(", ")).push(", version");
    if with_total {
        builder.push(", ");
    } else {
        builder.push(" FROM midjourneys");
    }
    builder
}

/// `SELECT` of every channel column from `mj_channels`.
pub(crate) const SELECT_CHANNELS: &str =
    "SELECT id, name, base_url, secret, enabled, created_at FROM mj_channels";

/// Rows per multi-row insert: 22 binds a row stays far below every backend's bind limit
/// (SQLite 32766, PostgreSQL and MySQL 65535).
pub(crate) const INSERT_CHUNK: usize = 500;

/// A `midjourneys` row as the database returns it, in [`TASK_FIELDS`] order.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
    id: i64,
    code: i64,
    user_id: i64,
    action: String,
    mj_id: String,
    prompt: String,
    prompt_en: String,
    description: String,
    state: String,
    submit_time: i64,
    start_time: i64,
    finish_time: i64,
    image_url: String,
    video_url: String,
    video_urls: String,
    status: String,
    progress: String,
    fail_reason: String,
    channel_id: i64,
    quota: i64,
    buttons: String,
    properties: String,
    version: i64,
}

/// A page row that carries the total of the whole result as well.
#[derive(sqlx::FromRow)]
pub(crate) struct PageRow {
    #[sqlx(flatten)]
    pub(crate) task: TaskRow,
    pub(crate) total: i64,
}

impl From<TaskRow> for Task {
    fn from(row: TaskRow) -> Self {
        Self {
            id: row.id,
            version: row.version,
            fields: NewTask {
                code: row.code,
                user_id: row.user_id,
                action: TaskAction::from(row.action),
                mj_id: row.mj_id,
                prompt: row.prompt,
                prompt_en: row.prompt_en,
                description: row.description,
                state: row.state,
                submit_time: row.submit_time,
                start_time: row.start_time,
                finish_time: row.finish_time,
                image_url: row.image_url,
                video_url: row.video_url,
                video_urls: row.video_urls,
                status: TaskStatus::from(row.status),
                progress: Progress::from(row.progress),
                fail_reason: row.fail_reason,
                channel_id: row.channel_id,
                quota: row.quota,
                buttons: row.buttons,
                properties: row.properties,
            },
        }
    }
}

/// A `mj_channels` row.
#[derive(sqlx::FromRow)]
pub(crate) struct ChannelRow {
    id: i64,
    name: String,
    base_url: String,
    secret: String,
    enabled: bool,
    created_at: i64,
}

impl From<ChannelRow> for Channel {
    fn from(row: ChannelRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            base_url: row.base_url,
            secret: row.secret,
            enabled: row.enabled,
            created_at: row.created_at,
        }
    }
}

/// One column value of a task, for binding.
enum Field<'a> {
    Int(i64),
    Text(&'a str),
}

/// The value of column `name` of `task` ([`TASK_FIELDS`]).
fn field<'a>(task: &'a NewTask, name: &str) -> Field<'a> {
    match name {
        "code" => Field::Int(task.code),
        "user_id" => Field::Int(task.user_id),
        "action" => Field::Text(task.action.as_str()),
        "mj_id" => Field::Text(&task.mj_id),
        "prompt" => Field::Text(&task.prompt),
        "prompt_en" => Field::Text(&task.prompt_en),
        "description" => Field::Text(&task.description),
        "state" => Field::Text(&task.state),
        "submit_time" => Field::Int(task.submit_time),
        "start_time" => Field::Int(task.start_time),
        "finish_time" => Field::Int(task.finish_time),
        "image_url" => Field::Text(&task.image_url),
        "video_url" => Field::Text(&task.video_url),
        "video_urls" => Field::Text(&task.video_urls),
        "status" => Field::Text(task.status.as_str()),
        "progress" => Field::Text(task.progress.as_str()),
        "fail_reason" => Field::Text(&task.fail_reason),
        "channel_id" => Field::Int(task.channel_id),
        "quota" => Field::Int(task.quota),
        "buttons" => Field::Text(&task.buttons),
        "properties" => Field::Text(&task.properties),
        _ => unreachable!("TASK_FIELDS names every column"),
    }
}

fn bind_field<D: Dialect>(builder: &mut QueryBuilder<D>, value: Field<'_>) {
    match value {
        Field::Int(value) => D::bind_int(builder, value),
        Field::Text(value) => D::bind_text(builder, value),
    }
}

/// `INSERT INTO midjourneys (...) VALUES (...), (...)` for `tasks` (at most [`INSERT_CHUNK`]).
pub(crate) fn insert_tasks<D: Dialect>(tasks: &[NewTask]) -> QueryBuilder<D> {
    let mut builder = QueryBuilder::new("INSERT INTO midjourneys (");
    builder
        .push(TASK_FIELDS.join(", "))
        .push(", finished) VALUES ");
    for (n, task) in tasks.iter().enumerate() {
        builder.push(if n == 0 { "(" } else { ", (" });
        for name in TASK_FIELDS {
            bind_field(&mut builder, field(task, name));
            builder.push(", ");
        }
        D::bind_flag(&mut builder, task.status.is_finished());
        builder.push(")");
    }
    builder
}

/// Whether an imported task is left alone by the poller: its status is terminal, or its progress
/// reads `100%`, the one marker new-api's own poller stops at (whatever the status says).
pub(crate) fn imported_as_finished(task: &Task) -> bool {
    task.is_finished() || task.progress.as_str().trim() == "100%"
}

/// `INSERT INTO midjourneys (id, ..., version) VALUES ...` for whole `tasks` that keep their ids
/// and versions (imports; at most [`INSERT_CHUNK`]).
pub(crate) fn insert_tasks_with_ids<D: Dialect>(tasks: &[Task]) -> QueryBuilder<D> {
    let mut builder = QueryBuilder::new("INSERT INTO midjourneys (id, ");
    builder
        .push(TASK_FIELDS.join(", "))
        .push(", finished, version) VALUES ");
    for (n, task) in tasks.iter().enumerate() {
        builder.push(if n == 0 { "(" } else { ", (" });
        D::bind_int(&mut builder, task.id);
        for name in TASK_FIELDS {
            builder.push(", ");
            bind_field(&mut builder, field(task, name));
        }
        builder.push(", ");
        D::bind_flag(&mut builder, imported_as_finished(task));
        builder.push(", ");
        D::bind_int(&mut builder, task.version);
        builder.push(")");
    }
    builder
}

/// The compare-and-swap update of `task`: every mutable column, if the row still has
/// `task.version`, bumping it.
pub(crate) fn update_task<D: Dialect>(task: &Task) -> QueryBuilder<D> {
    let mut builder = QueryBuilder::new("UPDATE midjourneys SET ");
    for name in TASK_FIELDS
        .iter()
        .filter(|name| !NEVER_UPDATED.contains(name))
    {
        builder.push(*name).push(" = ");
        bind_field(&mut builder, field(task, name));
        builder.push(", ");
    }
    builder.push("finished = ");
    D::bind_flag(&mut builder, task.status.is_finished());
    builder.push(", version = version + 1 WHERE id = ");
    D::bind_int(&mut builder, task.id);
    builder.push(" AND version = ");
    D::bind_int(&mut builder, task.version);
    builder
}

/// How filter values are written into a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterValues {
    /// As bound parameters (`?` / `$n`), for prepared statements.
    Bound,
    /// As literals, for a statement sent unprepared ([`Dialect::TOTAL_UNPREPARED`]): integers
    /// in decimal, strings as MySQL's `_utf8mb4 X'<hex>'`. Hex digits cannot end the literal,
    /// so no value can change the statement, whatever the connection's `sql_mode` says about
    /// backslashes.
    Literals,
}

/// A filter value, for [`push_value`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A text.
    Text(&'a str),
}

/// Writes one value as `values` says.
pub(crate) fn push_value<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    values: FilterValues,
    value: Value<'_>,
) {
    match (values, value) {
        (FilterValues::Bound, Value::Int(value)) => D::bind_int(builder, value),
        (FilterValues::Bound, Value::Text(value)) => D::bind_text(builder, value),
        (FilterValues::Literals, Value::Int(value)) => {
            builder.push(value);
        }
        (FilterValues::Literals, Value::Text(value)) => {
            builder.push(mysql_text_literal(value));
        }
    }
}

/// Appends the `WHERE` clause of `query` (nothing when it has no filter), and `id < before_id`
/// when given (the keyset bound of a cursor page).
///
/// Each filter maps onto an index prefix (see the migrations): `user_id` leads `(user_id, id)`,
/// `(user_id, submit_time)`, `(user_id, mj_id)` and `(user_id, status)`; `channel_id` leads
/// `(channel_id, id)`, `(channel_id, submit_time)` and `(channel_id, status)`; `status`,
/// `action`, `submit_time` and `mj_id` have their own. Equality prefixes of an index keep its
/// entries in `id` order, so `ORDER BY id DESC` and the `id` bound read them without a sort.
pub(crate) fn push_where<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    query: &TaskQuery,
    before_id: Option<i64>,
    values: FilterValues,
) {
    push_conditions(builder, query, before_id, values, RangeUse::Seek);
}

/// Appends the subquery of a range page's lower `id` bound: the smallest id among the `wanted`
/// newest entries of the range's index, after the cursor when there is one (see [`push_page`]).
fn push_id_bound<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    query: &TaskQuery,
    cursor: Option<crate::query::CursorPosition>,
    wanted: i64,
) {
    builder.push("(SELECT ");
    match cursor {
        None => {
            // Fewer than `wanted` entries are the whole range: their minimum still bounds.
            builder.push("MIN(id) FROM (SELECT id FROM midjourneys");
            push_where(builder, query, None, FilterValues::Bound);
        }
        Some(position) => {
            // After a cursor the index walk starts at the cursor's submit time instead of the
            // range's end (one upper bound: planners seek on only one), so deep pages cost what
            // the first does. Fewer than `wanted` entries there prove nothing about the rest:
            // then there is no bound.
            let upper = query.submitted_to.map_or(position.last_submit_time, |to| {
                to.min(position.last_submit_time)
            });
            let from_cursor = query
                .clone()
                .submitted_between(query.submitted_from, Some(upper));
            builder.push("CASE WHEN COUNT(*) < ");
            D::bind_int(builder, wanted);
            builder.push(" THEN ");
            D::bind_int(builder, i64::MIN);
            builder.push(" ELSE MIN(id) END FROM (SELECT id FROM midjourneys");
            push_where(
                builder,
                &from_cursor,
                Some(position.last_id),
                FilterValues::Bound,
            );
        }
    }
    builder.push(" ORDER BY submit_time DESC LIMIT ");
    D::bind_int(builder, wanted);
    builder.push(") newest)");
}

/// How the time range of a `WHERE` clause may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeUse {
    /// As an index range, like every other filter.
    Seek,
    /// Only as a filter on rows already found (`submit_time + 0`), so that the planner walks an
    /// `id`-ordered index between id bounds instead.
    Filter,
}

/// Appends the conditions; whether it wrote any (and so the `WHERE`).
fn push_conditions<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    query: &TaskQuery,
    before_id: Option<i64>,
    values: FilterValues,
    range: RangeUse,
) -> bool {
    let (from_column, to_column) = match range {
        RangeUse::Seek => ("submit_time >= ", "submit_time <= "),
        RangeUse::Filter => ("submit_time + 0 >= ", "submit_time + 0 <= "),
    };
    // A seek on an owner's or a channel's range must not lose to a seek on a crowded status or
    // action; alone, a status or action seeks its own `(status, submit_time)` range.
    let scoped = query.owner.is_some() || query.channel_id.is_some();
    let text_prefix = if range == RangeUse::Seek && query.has_range() && scoped {
        D::RANGE_ONLY_PREFIX
    } else {
        ""
    };
    let (status_column, action_column) = (
        format!("{text_prefix}status = "),
        format!("{text_prefix}action = "),
    );
    let filters = [
        ("user_id = ", query.owner.map(Value::Int)),
        ("channel_id = ", query.channel_id.map(Value::Int)),
        ("mj_id = ", query.mj_id.as_deref().map(Value::Text)),
        (from_column, query.submitted_from.map(Value::Int)),
        (to_column, query.submitted_to.map(Value::Int)),
        (
            status_column.as_str(),
            query.status.as_ref().map(|s| Value::Text(s.as_str())),
        ),
        (
            action_column.as_str(),
            query.action.as_ref().map(|a| Value::Text(a.as_str())),
        ),
        ("id < ", before_id.map(Value::Int)),
    ];
    let mut keyword = " WHERE ";
    for (column, value) in filters {
        let Some(value) = value else { continue };
        builder.push(keyword).push(column);
        keyword = " AND ";
        push_value(builder, values, value);
    }
    keyword == " AND "
}

/// `value` as a MySQL `utf8mb4` string literal spelled in hex (see [`FilterValues`]).
fn mysql_text_literal(value: &str) -> String {
    format!("_utf8mb4 X'{}'", hex::encode(value))
}

/// Appends the rest of a page query after [`select_tasks`]: `WHERE`, order, limit and offset.
/// It reads one row more than the page holds, so that the caller knows whether a next page
/// exists (see [`Page::from_rows`](crate::Page::from_rows)).
///
/// Without a time range, a page walks an index whose entries are in `id` order — `(user_id)`,
/// `(status)`, `(channel_id, status)`, ... or the primary key — from the top, or from the
/// cursor's `id` bound, and stops after one page; deeper pages by number go through a deferred
/// join that skips the offset over index entries, not whole rows.
///
/// A time range adds a lower `id` bound: the newest entries of the range's index
/// (`(user_id, submit_time)`, `(channel_id, submit_time)`, `(submit_time)`), read without a
/// sort, are `wanted` ids of the range, and any `wanted` ids of a set bound its `wanted` largest
/// from below. Only entries at or above that bound reach the sort: about a page when ids grow
/// with submit times, as ours do, and never a wrong answer when they do not.
/// - Page `p` reads the range from its index (as its exact total used to) and sorts the
///   entries above the bound; `id + 0` keeps PostgreSQL and MariaDB off a walk of the primary
///   key from the top down to the window (589,000 rows for a week half a year back in 1M).
/// - After a cursor both ends are ids, so the page walks the filter's `id`-ordered index between
///   them (about a page of entries) and checks the range on those rows only (`submit_time + 0`
///   keeps planners from scanning the whole range instead).
pub(crate) fn push_page<D: Dialect>(
    builder: &mut QueryBuilder<D>,
    query: &TaskQuery,
    page: PageRequest,
) {
    let cursor = page.cursor();
    let before_id = cursor.map(|position| position.last_id);
    let limit = i64::from(page.page_size()) + 1;
    if page.offset() == 0 && !query.has_range() {
        push_where(builder, query, before_id, FilterValues::Bound);
        builder.push(" ORDER BY id DESC LIMIT ");
        push_page_limit(builder, limit);
        return;
    }
    // The derived table exposes only `page_id`, so the outer column list stays unqualified.
    builder.push(" JOIN (SELECT id AS page_id FROM midjourneys");
    let range_use = if cursor.is_some() {
        RangeUse::Filter
    } else {
        RangeUse::Seek
    };
    if query.has_range() {
        let wanted = to_i64(
            u64::try_from(limit)
                .unwrap_or(0)
                .saturating_add(page.offset()),
        );
        let narrowed = range_use == RangeUse::Seek && D::TRACKS_SUBMIT_ORDER;
        let conditions = if narrowed {
            // The start is written below; an end is always written, so that the range's index
            // stays the one to seek (see `RANGE_ONLY_PREFIX`).
            let to = query.submitted_to.unwrap_or(i64::MAX);
            query.clone().submitted_between(None, Some(to))
        } else {
            query.clone()
        };
        let opened = push_conditions(
            builder,
            &conditions,
            before_id,
            FilterValues::Bound,
            range_use,
        );
        if narrowed {
            // Every task at or above the bound was submitted at or after the bound's own submit
            // time less the store's recorded lateness (`mj_task_order`): the range is read from
            // there, not from its start, which is about a page of entries when times follow
            // ids, however long the range.
            let from = query.submitted_from.unwrap_or(i64::MIN);
            debug_assert!(opened, "the range's end opened the WHERE");
            builder.push(" AND submit_time >= MAX(");
            D::bind_int(builder, from);
            builder.push(
                ", COALESCE((SELECT bound.submit_time - task_order.max_lateness \
                FROM midjourneys bound, mj_task_order task_order WHERE bound.id = ",
            );
            push_id_bound(builder, query, cursor, wanted);
            builder.push("), ");
            D::bind_int(builder, from);
            builder.push("))");
        }
        builder.push(match range_use {
            RangeUse::Seek => " AND id + 0 >= ",
            RangeUse::Filter => " AND id >= ",
        });
        push_id_bound(builder, query, cursor, wanted);
    } else {
        push_conditions(builder, query, before_id, FilterValues::Bound, range_use);
    }
    builder.push(match range_use {
        RangeUse::Seek if query.has_range() => " ORDER BY id + 0 DESC LIMIT ",
        _ => " ORDER BY id DESC LIMIT ",
    });
    push_page_limit(builder, limit);
    builder.push(" OFFSET ");
    D::bind_int(builder, to_i64(page.offset()));
    builder.push(") page_ids ON id = page_ids.page_id ORDER BY id DESC");
}

/// Writes a page's `LIMIT` (page size + 1, at most a few hundred distinct values) into the SQL
/// text. SQLite re-prepares a statement whose `LIMIT` is a bound parameter on every execution
/// (the value may change its plan): a fifth of the CPU of a list request served over HTTP. As a
/// literal, each page size is one cached statement.
fn push_page_limit<D: Dialect>(builder: &mut QueryBuilder<D>, limit: i64) {
    builder.push(limit);
}

/// Converts a count or offset for binding; every value we produce fits.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_literals_are_hex_so_values_cannot_end_them() {
        assert_eq!(mysql_text_literal(""), "_utf8mb4 X''");
        assert_eq!(mysql_text_literal("a'\\"), "_utf8mb4 X'61275c'");
        assert_eq!(mysql_text_literal("龍"), "_utf8mb4 X'e9be8d'");
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn inlined_where_spells_every_filter_and_binds_nothing() {
        let query = TaskQuery {
            status: Some(TaskStatus::Success),
            action: Some(TaskAction::Imagine),
            ..TaskQuery::owned_by(-7)
                .with_channel(3)
                .with_mj_id("x' OR 1=1 -- ")
                .submitted_between(Some(10), Some(20))
        };
        let mut inlined = QueryBuilder::<sqlx::MySql>::new("SELECT COUNT(*) FROM midjourneys");
        push_where(&mut inlined, &query, None, FilterValues::Literals);
        assert_eq!(
            inlined.sql().as_str(),
            "SELECT COUNT(*) FROM midjourneys WHERE user_id = -7 AND channel_id = 3 \
             AND mj_id = _utf8mb4 X'7827204f5220313d31202d2d20' AND submit_time >= 10 \
             AND submit_time <= 20 AND status = _utf8mb4 X'53554343455353' \
             AND action = _utf8mb4 X'494d4147494e45'"
        );
        let mut bound = QueryBuilder::<sqlx::MySql>::new("SELECT COUNT(*) FROM midjourneys");
        push_where(&mut bound, &query, None, FilterValues::Bound);
        assert_eq!(bound.sql().as_str().matches('?').count(), 7);
        assert!(!bound.sql().as_str().contains("X'"));
    }
}
