//! Every documented query path of mj-tasks, against new-api's `midjourneys` schema and SQL (the
//! anchor) run on identical data in the same process.
//!
//! For each backend (SQLite always; PostgreSQL / MariaDB when `MJ_TEST_POSTGRES_URL` /
//! `MJ_TEST_MYSQL_URL` name a server, on a fresh database that is dropped afterwards):
//!
//! 1. **Seed** `MJ_BENCH_TASKS` tasks (default 1,000,000) through the public API: [`SyntheticSpec`]
//!    (20 % owned by one heavy user, the rest by 1,000 light users, 8 channels, submit times over
//!    one year, 0.1 % unfinished) and [`TaskStore::insert_many`] in chunks of 20,000.
//! 2. **Copy** the same rows into new-api's table: every column but our `finished` / `version`,
//!    with exactly new-api's single-column indexes (`user_id`, `action`, `mj_id`, `submit_time`,
//!    `start_time`, `finish_time`, `status`, `progress`; none on `channel_id`). SQLite: a second
//!    file filled through `ATTACH`; PostgreSQL / MariaDB: a table `anchor_midjourneys` in the same
//!    database. The anchor's indexes exist before the copy, so that both sides' indexes grow by
//!    the same inserts in id order and have the same page fill. Then `ANALYZE` both sides
//!    (PostgreSQL: `VACUUM ANALYZE`) and reopen the pools so that both plan with fresh statistics.
//! 3. **Check** that both sides return the same page ids and totals for every path, so the
//!    timings compare the same answers.
//! 4. **Measure** every path: a criterion group `<backend>/<path>` with the functions `ours`
//!    (the public API: `list` = exact count + page, `find_by_mj_id`, `list_unfinished`) and
//!    `anchor` (new-api's SQL through raw sqlx: the page `SELECT * ... ORDER BY id DESC LIMIT ?
//!    OFFSET ?`, then the separate `SELECT COUNT(*)` with the same `WHERE`, rows decoded into a
//!    struct of every column as GORM does). The anchor goes through sqlx's cached prepared
//!    statements, as new-api's GORM config does (`PrepareStmt: true`); ours through whatever the
//!    store does. Then an own loop runs both sides interleaved (order alternating per round) and
//!    prints, per backend, `path | ours | anchor | anchor/ours | ours faster in | target` with
//!    medians, the rounds ours won and a sign test for ties, also written to
//!    `<target dir>/query_paths_<backend>.md`.
//!
//! Run with `cargo bench --bench query_paths`; `MJ_BENCH_BACKENDS=mysql` (or any comma-separated
//! list of `sqlite`, `postgres`, `mysql`) measures only those backends. Under `cargo test --benches` (criterion's test
//! mode) it runs once on 3,000 tasks as a smoke test of the same checks.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use mj_tasks::query::CursorPosition;
use mj_tasks::synthetic::SyntheticSpec;
use mj_tasks::{NewTask, PageRequest, SqlStore, TaskAction, TaskQuery, TaskStatus, TaskStore};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection};

use test_support::{Kind, TestDb};

/// Tasks seeded when `MJ_BENCH_TASKS` is unset.
const DEFAULT_TASKS: u64 = 1_000_000;
/// Tasks seeded in criterion's test mode (`cargo test --benches`) when `MJ_BENCH_TASKS` is unset.
const TEST_MODE_TASKS: u64 = 3_000;
/// Tasks per `insert_many` call while seeding.
const SEED_CHUNK: u64 = 20_000;
/// The page size of every list path (new-api's UI default).
const PAGE_SIZE: u32 = 20;
/// The poller's batch size (its default, as `serve` runs it).
fn unfinished_batch() -> u32 {
    mj_tasks::PollerConfig::default().batch_size
}

const HEAVY_USER: i64 = 1;
const LIGHT_USERS_FROM: i64 = 100;
const LIGHT_USERS: u32 = 1_000;
/// The light user whose list is measured.
const LIGHT_USER: i64 = LIGHT_USERS_FROM + 500;
const CHANNELS: u32 = 8;
/// The channel of the admin channel filter.
const CHANNEL: i64 = 3;
const DAY_MS: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z: fixed, so that every run seeds the same rows.
const END_MS: i64 = 1_767_225_600_000;
const START_MS: i64 = END_MS - 365 * DAY_MS;
/// The 7-day window of the range paths: days 180..187 of the year.
const WINDOW_FROM_MS: i64 = START_MS + 180 * DAY_MS;
const WINDOW_TO_MS: i64 = WINDOW_FROM_MS + 7 * DAY_MS - 1;

/// Every column of new-api's `midjourneys` (our table minus `finished` and `version`).
const ANCHOR_COLUMNS: &str = "id, code, user_id, action, mj_id, prompt, prompt_en, description, \
    state, submit_time, start_time, finish_time, image_url, video_url, video_urls, status, \
    progress, fail_reason, channel_id, quota, buttons, properties";

/// new-api's single-column indexes (GORM `index` tags), as `(name, column)`.
const ANCHOR_INDEXES: [(&str, &str); 8] = [
    ("idx_midjourneys_user_id", "user_id"),
    ("idx_midjourneys_action", "action"),
    ("idx_midjourneys_mj_id", "mj_id"),
    ("idx_midjourneys_submit_time", "submit_time"),
    ("idx_midjourneys_start_time", "start_time"),
    ("idx_midjourneys_finish_time", "finish_time"),
    ("idx_midjourneys_status", "status"),
    ("idx_midjourneys_progress", "progress"),
];

/// new-api's table as GORM AutoMigrate creates it on SQLite.
const ANCHOR_TABLE_SQLITE: &str = "CREATE TABLE anchor.midjourneys (
    id integer PRIMARY KEY AUTOINCREMENT, code integer, user_id integer, action text,
    mj_id text, prompt text, prompt_en text, description text, state text,
    submit_time integer, start_time integer, finish_time integer, image_url text,
    video_url text, video_urls text, status text, progress text, fail_reason text,
    channel_id integer, quota integer, buttons text, properties text)";

/// new-api's table as GORM AutoMigrate creates it on PostgreSQL.
const ANCHOR_TABLE_POSTGRES: &str = "CREATE TABLE anchor_midjourneys (
    id bigserial PRIMARY KEY, code bigint, user_id bigint, action varchar(40), mj_id text,
    prompt text, prompt_en text, description text, state text, submit_time bigint,
    start_time bigint, finish_time bigint, image_url text, video_url text, video_urls text,
    status varchar(20), progress varchar(30), fail_reason text, channel_id bigint,
    quota bigint, buttons text, properties text)";

/// new-api's table as GORM AutoMigrate creates it on MySQL / MariaDB.
const ANCHOR_TABLE_MYSQL: &str = "CREATE TABLE anchor_midjourneys (
    id bigint AUTO_INCREMENT PRIMARY KEY, code bigint, user_id bigint, action varchar(40),
    mj_id varchar(191), prompt longtext, prompt_en longtext, description longtext,
    state longtext, submit_time bigint, start_time bigint, finish_time bigint,
    image_url longtext, video_url longtext, video_urls longtext, status varchar(20),
    progress varchar(30), fail_reason longtext, channel_id bigint, quota bigint,
    buttons longtext, properties longtext) ENGINE = InnoDB";

/// How the run is sized.
struct Config {
    tasks: u64,
    test_mode: bool,
    /// Time after which the own loop stops adding rounds for a path (once it has `min_rounds`).
    budget: Duration,
    min_rounds: usize,
    max_rounds: usize,
    /// `MJ_BENCH_AS_DEPLOYED=1`: neither side is analyzed by the bench; ours has only the
    /// statistics the store keeps itself (`refresh_statistics` after the load, as `seed` runs
    /// it), new-api's table none, as new-api leaves it.
    as_deployed: bool,
    /// Backends named in `MJ_BENCH_BACKENDS` (comma-separated labels); `None` runs them all.
    backends: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> Self {
        // criterion's rule: `cargo bench` passes `--bench`; `cargo test --benches` does not.
        let args: Vec<String> = std::env::args().collect();
        let test_mode = !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test");
        let tasks = match std::env::var("MJ_BENCH_TASKS") {
            Ok(value) => value
                .replace('_', "")
                .parse()
                .expect("MJ_BENCH_TASKS must be a positive integer"),
            Err(_) if test_mode => TEST_MODE_TASKS,
            Err(_) => DEFAULT_TASKS,
        };
        assert!(tasks > 0, "MJ_BENCH_TASKS must be a positive integer");
        Self {
            tasks,
            test_mode,
            budget: Duration::from_secs(if test_mode { 0 } else { 4 }),
            min_rounds: if test_mode { 1 } else { 7 },
            max_rounds: if test_mode { 1 } else { 201 },
            as_deployed: std::env::var("MJ_BENCH_AS_DEPLOYED").is_ok_and(|value| value == "1"),
            backends: std::env::var("MJ_BENCH_BACKENDS").ok().map(|list| {
                list.split(',')
                    .map(|name| name.trim().to_ascii_lowercase())
                    .filter(|name| !name.is_empty())
                    .collect()
            }),
        }
    }

    /// Whether the backend labelled `label` is to be measured.
    fn runs(&self, label: &str) -> bool {
        self.backends
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == label))
    }
}

fn spec(total: u64) -> SyntheticSpec {
    SyntheticSpec {
        total,
        heavy_user: HEAVY_USER,
        heavy_share_percent: 20,
        light_users: (LIGHT_USERS_FROM..LIGHT_USERS_FROM + i64::from(LIGHT_USERS)).collect(),
        channels: CHANNELS,
        start_ms: START_MS,
        end_ms: END_MS,
        unfinished_per_mille: 1,
        seed: 0x6d6a_6265_6e63,
    }
}

/// A value bound into an anchor statement.
enum Bind {
    Int(i64),
    Text(String),
}

/// One anchor statement, `?` placeholders already rewritten for the backend.
struct Statement {
    sql: String,
    binds: Vec<Bind>,
}

impl Statement {
    fn new(kind: Kind, sql: &str, binds: Vec<Bind>) -> Self {
        let sql = if kind == Kind::Postgres {
            let mut numbered = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    numbered.push_str(&format!("${n}"));
                } else {
                    numbered.push(c);
                }
            }
            numbered
        } else {
            sql.to_owned()
        };
        Self { sql, binds }
    }
}

/// What new-api runs for a path.
enum AnchorOp {
    /// `GetAllUserTask` / `GetAllTasks`, then `CountAllUserTask` / `CountAllTasks`.
    PageAndCount { page: Statement, count: Statement },
    /// A GORM `First`: at most one row.
    First(Statement),
    /// A GORM `Find` without limit: every matching row.
    All(Statement),
}

/// What our API runs for a path.
enum Op {
    /// `list` (exact count, then the page); `after` walks by cursor from that position
    /// instead of `p` (the anchor has no cursor: it reads the same page by `OFFSET`).
    List {
        query: TaskQuery,
        page: u64,
        after: Option<CursorPosition>,
    },
    /// `find_by_mj_id`.
    FindByMjId { mj_id: String, owner: Option<i64> },
    /// One poller batch: `list_unfinished(0, unfinished_batch())`.
    UnfinishedBatch,
    /// The poller's whole walk: batches of `unfinished_batch()` until a short one.
    UnfinishedAll,
}

/// What a path must show: `anchor/ours` at least this.
#[derive(Clone, Copy)]
enum Target {
    AtLeast20x,
    NotSlower,
}

impl Target {
    fn ratio(self) -> f64 {
        match self {
            Self::AtLeast20x => 20.0,
            Self::NotSlower => 1.0,
        }
    }
}

struct QueryPath {
    name: String,
    slug: String,
    target: Target,
    ours: Op,
    anchor: AnchorOp,
}

/// The answer of one side, for checking that both sides agree.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    total: u64,
    ids: Vec<i64>,
}

/// A row of new-api's table, decoded column by column as GORM fills `model.Midjourney`.
#[derive(sqlx::FromRow)]
#[allow(dead_code, reason = "decoded for a fair cost; only `id` is compared")]
struct AnchorRow {
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
}

/// The anchor's connection pool.
enum Anchor {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the anchor's pool and `$db` naming its sqlx database.
macro_rules! with_anchor {
    ($anchor:expr, |$pool:ident, $db:ident| $body:expr) => {
        match $anchor {
            Anchor::Sqlite($pool) => {
                type $db = sqlx::Sqlite;
                $body
            }
            Anchor::Postgres($pool) => {
                type $db = sqlx::Postgres;
                $body
            }
            Anchor::MySql($pool) => {
                type $db = sqlx::MySql;
                $body
            }
        }
    };
}

/// Binds every value of a [`Statement`] onto a sqlx query.
macro_rules! bind_all {
    ($query:expr, $statement:expr) => {{
        let mut query = $query;
        for bind in &$statement.binds {
            query = match bind {
                Bind::Int(value) => query.bind(*value),
                Bind::Text(value) => query.bind(value.as_str()),
            };
        }
        query
    }};
}

impl Anchor {
    async fn rows(&self, statement: &Statement) -> Vec<AnchorRow> {
        with_anchor!(self, |pool, Db| {
            let query = sqlx::query_as::<Db, AnchorRow>(AssertSqlSafe(statement.sql.as_str()));
            bind_all!(query, statement)
                .fetch_all(pool)
                .await
                .expect("anchor: row query")
        })
    }

    async fn count(&self, statement: &Statement) -> u64 {
        let count: i64 = with_anchor!(self, |pool, Db| {
            let query = sqlx::query_scalar::<Db, i64>(AssertSqlSafe(statement.sql.as_str()));
            bind_all!(query, statement)
                .fetch_one(pool)
                .await
                .expect("anchor: count query")
        });
        u64::try_from(count).expect("anchor: negative count")
    }

    /// One text value, for describing the server.
    async fn text(&self, sql: &'static str) -> String {
        with_anchor!(self, |pool, Db| {
            sqlx::query_scalar::<Db, String>(sql)
                .fetch_one(pool)
                .await
                .expect("anchor: server description")
        })
    }

    async fn close(&self) {
        with_anchor!(self, |pool, _Db| pool.close().await)
    }
}

async fn run_ours(tasks: &dyn TaskStore, op: &Op) -> Outcome {
    match op {
        Op::List { query, page, after } => {
            let mut request = PageRequest::new(
                i64::try_from(*page).expect("page fits i64"),
                i64::from(PAGE_SIZE),
            )
            .expect("valid page request");
            if let Some(position) = after {
                request = request.after(*position);
            }
            let page = tasks.list(query, request).await.expect("ours: list");
            Outcome {
                total: page.total,
                ids: page.items.iter().map(|t| t.id).collect(),
            }
        }
        Op::FindByMjId { mj_id, owner } => {
            let found = tasks
                .find_by_mj_id(mj_id, *owner)
                .await
                .expect("ours: find_by_mj_id");
            let ids: Vec<i64> = found.iter().map(|t| t.id).collect();
            Outcome {
                total: ids.len() as u64,
                ids,
            }
        }
        Op::UnfinishedBatch => {
            let batch = tasks
                .list_unfinished(0, unfinished_batch())
                .await
                .expect("ours: list_unfinished");
            let ids: Vec<i64> = batch.iter().map(|t| t.id).collect();
            Outcome {
                total: ids.len() as u64,
                ids,
            }
        }
        Op::UnfinishedAll => {
            let mut ids = Vec::new();
            let mut after = 0;
            loop {
                let batch = tasks
                    .list_unfinished(after, unfinished_batch())
                    .await
                    .expect("ours: list_unfinished");
                ids.extend(batch.iter().map(|t| t.id));
                match batch.last() {
                    Some(last) if batch.len() == unfinished_batch() as usize => after = last.id,
                    _ => break,
                }
            }
            Outcome {
                total: ids.len() as u64,
                ids,
            }
        }
    }
}

async fn run_anchor(anchor: &Anchor, op: &AnchorOp) -> Outcome {
    match op {
        AnchorOp::PageAndCount { page, count } => {
            let rows = anchor.rows(page).await;
            let total = anchor.count(count).await;
            Outcome {
                total,
                ids: rows.iter().map(|r| r.id).collect(),
            }
        }
        AnchorOp::First(statement) | AnchorOp::All(statement) => {
            let rows = anchor.rows(statement).await;
            Outcome {
                total: rows.len() as u64,
                ids: rows.iter().map(|r| r.id).collect(),
            }
        }
    }
}

/// Fails the run when the two sides disagree on a path: the timings would compare different work.
fn check_same_answer(path: &QueryPath, ours: &Outcome, anchor: &Outcome) {
    let expected = match path.ours {
        Op::UnfinishedBatch | Op::UnfinishedAll => {
            let mut ids = anchor.ids.clone();
            ids.sort_unstable();
            if matches!(path.ours, Op::UnfinishedBatch) {
                ids.truncate(unfinished_batch() as usize);
            }
            Outcome {
                total: ids.len() as u64,
                ids,
            }
        }
        _ => Outcome {
            total: anchor.total,
            ids: anchor.ids.clone(),
        },
    };
    assert_eq!(
        ours, &expected,
        "`{}`: ours and the anchor disagree (ours first, anchor second)",
        path.name
    );
}

/// The `WHERE` new-api builds for a list query, in its clause order.
fn anchor_where(query: &TaskQuery) -> (String, Vec<Bind>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    if let Some(owner) = query.owner {
        clauses.push("user_id = ?");
        binds.push(Bind::Int(owner));
    }
    if let Some(mj_id) = &query.mj_id {
        clauses.push("mj_id = ?");
        binds.push(Bind::Text(mj_id.clone()));
    }
    if let Some(from) = query.submitted_from {
        clauses.push("submit_time >= ?");
        binds.push(Bind::Int(from));
    }
    if let Some(to) = query.submitted_to {
        clauses.push("submit_time <= ?");
        binds.push(Bind::Int(to));
    }
    if let Some(channel) = query.channel_id {
        clauses.push("channel_id = ?");
        binds.push(Bind::Int(channel));
    }
    // new-api has no such filters; its `status` and `action` indexes serve the same SQL.
    if let Some(status) = &query.status {
        clauses.push("status = ?");
        binds.push(Bind::Text(status.as_str().to_owned()));
    }
    if let Some(action) = &query.action {
        clauses.push("action = ?");
        binds.push(Bind::Text(action.as_str().to_owned()));
    }
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (clause, binds)
}

/// A database with both tables seeded, and the pools measured.
struct Bed {
    kind: Kind,
    label: &'static str,
    store: SqlStore,
    tasks: Arc<dyn TaskStore>,
    anchor: Anchor,
    anchor_table: &'static str,
    heavy_total: u64,
    /// Server version and cache size, for the report.
    server: String,
    seed_time: Duration,
    copy_time: Duration,
    /// Dropped last: removes the temporary file or drops the database.
    _db: TestDb,
}

impl Bed {
    fn list_path(
        &self,
        name: String,
        slug: &str,
        target: Target,
        query: TaskQuery,
        page: u64,
    ) -> QueryPath {
        let (clause, mut binds) = anchor_where(&query);
        let table = self.anchor_table;
        let count = Statement::new(
            self.kind,
            &format!("SELECT COUNT(*) FROM {table}{clause}"),
            anchor_where(&query).1,
        );
        let offset = (page - 1) * u64::from(PAGE_SIZE);
        binds.push(Bind::Int(i64::from(PAGE_SIZE)));
        binds.push(Bind::Int(i64::try_from(offset).expect("offset fits i64")));
        let page_statement = Statement::new(
            self.kind,
            &format!("SELECT * FROM {table}{clause} ORDER BY id DESC LIMIT ? OFFSET ?"),
            binds,
        );
        QueryPath {
            name,
            slug: slug.to_owned(),
            target,
            ours: Op::List {
                query,
                page,
                after: None,
            },
            anchor: AnchorOp::PageAndCount {
                page: page_statement,
                count,
            },
        }
    }

    /// A task whose `mj_id` is unique: its `mj_id`, owner and submit time.
    async fn unique_mj_id(&self, total: u64) -> (String, i64, i64) {
        let mut id = i64::try_from(total / 2).expect("id fits i64").max(1);
        loop {
            let task = self
                .tasks
                .get(id)
                .await
                .expect("ours: get")
                .expect("seeded ids are 1..=N");
            let query = TaskQuery::all().with_mj_id(task.mj_id.clone());
            if self.tasks.count(&query).await.expect("ours: count") == 1 {
                return (task.mj_id.clone(), task.user_id, task.submit_time);
            }
            id += 1;
        }
    }

    async fn paths(&self, total: u64) -> Vec<QueryPath> {
        let page_size = u64::from(PAGE_SIZE);
        let heavy_deep = (self.heavy_total / page_size / 2).max(1);
        let admin_deep = (total / page_size / 2).max(1);
        let window =
            || TaskQuery::all().submitted_between(Some(WINDOW_FROM_MS), Some(WINDOW_TO_MS));
        let mut paths = vec![
            self.list_path(
                format!("user light (user {LIGHT_USER}) p1 + total"),
                "user_light_p1",
                Target::NotSlower,
                TaskQuery::owned_by(LIGHT_USER),
                1,
            ),
            self.list_path(
                "user heavy p1 + total".to_owned(),
                "user_heavy_p1",
                Target::NotSlower,
                TaskQuery::owned_by(HEAVY_USER),
                1,
            ),
            self.list_path(
                "user heavy 7-day range p1 + total".to_owned(),
                "user_heavy_range_p1",
                Target::AtLeast20x,
                TaskQuery {
                    owner: Some(HEAVY_USER),
                    ..window()
                },
                1,
            ),
            self.list_path(
                "admin all p1 + total".to_owned(),
                "admin_all_p1",
                Target::NotSlower,
                TaskQuery::all(),
                1,
            ),
            self.list_path(
                "admin 7-day range p1 + total".to_owned(),
                "admin_range_p1",
                Target::NotSlower,
                window(),
                1,
            ),
            self.list_path(
                format!("admin channel {CHANNEL} p1 + total"),
                "admin_channel_p1",
                Target::AtLeast20x,
                TaskQuery::all().with_channel(CHANNEL),
                1,
            ),
            self.list_path(
                format!("user heavy deep p{heavy_deep} + total"),
                "user_heavy_deep",
                Target::NotSlower,
                TaskQuery::owned_by(HEAVY_USER),
                heavy_deep,
            ),
            self.list_path(
                format!("admin all deep p{admin_deep} + total"),
                "admin_all_deep",
                Target::NotSlower,
                TaskQuery::all(),
                admin_deep,
            ),
        ];
        let (mj_id, owner, submitted) = self.unique_mj_id(total).await;
        paths.extend(self.matrix_paths(&mj_id, owner, submitted).await);
        let table = self.anchor_table;
        paths.push(QueryPath {
            name: "mj_id fetch (owner-scoped)".to_owned(),
            slug: "mj_id_owner".to_owned(),
            target: Target::NotSlower,
            ours: Op::FindByMjId {
                mj_id: mj_id.clone(),
                owner: Some(owner),
            },
            // GetByMJId(userId, mjId): Where("user_id = ? and mj_id = ?").First(...)
            anchor: AnchorOp::First(Statement::new(
                self.kind,
                &format!(
                    "SELECT * FROM {table} WHERE user_id = ? AND mj_id = ? ORDER BY id LIMIT 1"
                ),
                vec![Bind::Int(owner), Bind::Text(mj_id.clone())],
            )),
        });
        paths.push(QueryPath {
            name: "mj_id lookup (unscoped)".to_owned(),
            slug: "mj_id_any".to_owned(),
            target: Target::NotSlower,
            ours: Op::FindByMjId {
                mj_id: mj_id.clone(),
                owner: None,
            },
            // GetByOnlyMJId(mjId): Where("mj_id = ?").First(...)
            anchor: AnchorOp::First(Statement::new(
                self.kind,
                &format!("SELECT * FROM {table} WHERE mj_id = ? ORDER BY id LIMIT 1"),
                vec![Bind::Text(mj_id)],
            )),
        });
        // The legacy poller: DB.Where("progress != ?", "100%").Find(&tasks)
        let unfinished = || {
            Statement::new(
                self.kind,
                &format!("SELECT * FROM {table} WHERE progress != ?"),
                vec![Bind::Text("100%".to_owned())],
            )
        };
        paths.push(QueryPath {
            name: format!(
                "unfinished scan (ours: one batch of {})",
                unfinished_batch()
            ),
            slug: "unfinished_batch".to_owned(),
            target: Target::AtLeast20x,
            ours: Op::UnfinishedBatch,
            anchor: AnchorOp::All(unfinished()),
        });
        paths.push(QueryPath {
            name: "unfinished scan (ours: every batch)".to_owned(),
            slug: "unfinished_all".to_owned(),
            target: Target::NotSlower,
            ours: Op::UnfinishedAll,
            anchor: AnchorOp::All(unfinished()),
        });
        paths
    }

    /// The matrix beyond the paths above: the filters and their combinations, ranges of
    /// 1, 7 and 90 days, pages by `p` and by cursor at depth.
    async fn matrix_paths(&self, mj_id: &str, owner: i64, submitted: i64) -> Vec<QueryPath> {
        let range = |days: i64| {
            TaskQuery::all()
                .submitted_between(Some(WINDOW_TO_MS - days * DAY_MS + 1), Some(WINDOW_TO_MS))
        };
        let heavy = |query: TaskQuery| TaskQuery {
            owner: Some(HEAVY_USER),
            ..query
        };
        let around_task = TaskQuery::owned_by(owner)
            .with_mj_id(mj_id)
            .submitted_between(Some(submitted - 3 * DAY_MS), Some(submitted + 4 * DAY_MS));
        let heavy_pages = (self.heavy_total / u64::from(PAGE_SIZE)).max(1);
        let mut paths = vec![
            (
                "user with mj_id",
                "user_mj_id",
                TaskQuery::owned_by(owner).with_mj_id(mj_id),
                1,
            ),
            (
                "user mj_id + 7-day range",
                "user_mj_id_range",
                around_task,
                1,
            ),
            (
                "user heavy 1-day range",
                "user_heavy_range_1d",
                heavy(range(1)),
                1,
            ),
            (
                "user heavy 90-day range",
                "user_heavy_range_90d",
                heavy(range(90)),
                1,
            ),
            (
                "user heavy",
                "user_heavy_p2",
                TaskQuery::owned_by(HEAVY_USER),
                2.min(heavy_pages),
            ),
            (
                "user heavy",
                "user_heavy_p50",
                TaskQuery::owned_by(HEAVY_USER),
                50.min(heavy_pages),
            ),
            (
                "user heavy",
                "user_heavy_p500",
                TaskQuery::owned_by(HEAVY_USER),
                500.min(heavy_pages),
            ),
            (
                "admin channel + 7-day range",
                "admin_channel_range",
                range(7).with_channel(CHANNEL),
                1,
            ),
            (
                "admin status IN_PROGRESS",
                "admin_status",
                TaskQuery::all().with_status(TaskStatus::InProgress),
                1,
            ),
            (
                "admin status FAILURE + channel",
                "admin_status_channel",
                TaskQuery::all()
                    .with_status(TaskStatus::Failure)
                    .with_channel(CHANNEL),
                1,
            ),
            (
                "admin action UPSCALE",
                "admin_action",
                TaskQuery::all().with_action(TaskAction::Upscale),
                1,
            ),
            (
                "admin user_id (light user)",
                "admin_user_id",
                TaskQuery::owned_by(LIGHT_USER),
                1,
            ),
            (
                "admin mj_id",
                "admin_mj_id",
                TaskQuery::all().with_mj_id(mj_id),
                1,
            ),
        ]
        .into_iter()
        .map(|(name, slug, query, page)| {
            self.list_path(
                format!("{name} p{page} + total"),
                slug,
                Target::NotSlower,
                query,
                page,
            )
        })
        .collect::<Vec<_>>();
        // Cursors at depth: the page after page 500 (or the deepest there is), against the same
        // page read by `OFFSET` with new-api's SQL.
        let admin_pages = (self
            .tasks
            .count(&TaskQuery::all())
            .await
            .expect("ours: count")
            / u64::from(PAGE_SIZE))
        .max(2);
        for (name, slug, query, pages) in [
            (
                "user heavy cursor",
                "user_heavy_cursor",
                TaskQuery::owned_by(HEAVY_USER),
                heavy_pages,
            ),
            (
                "admin cursor",
                "admin_cursor",
                TaskQuery::all(),
                admin_pages,
            ),
        ] {
            let depth = 500.min(pages.saturating_sub(1)).max(1);
            let request = PageRequest::new(
                i64::try_from(depth).expect("page fits"),
                i64::from(PAGE_SIZE),
            )
            .expect("valid page request");
            let before = self.tasks.list(&query, request).await.expect("ours: list");
            let Some(last) = before.items.last() else {
                continue;
            };
            let mut path = self.list_path(
                format!("{name} after p{depth} + total"),
                slug,
                Target::NotSlower,
                query.clone(),
                depth + 1,
            );
            path.ours = Op::List {
                query,
                page: depth + 1,
                after: Some(CursorPosition::after(last, depth)),
            };
            paths.push(path);
        }
        paths
    }

    async fn close(self) {
        self.store.close().await;
        self.anchor.close().await;
        // `_db` drops here, after the pools are closed.
    }
}

/// Seeds `spec.total` tasks through `insert_many`, generating the next chunk on a blocking
/// thread while the current one is inserted.
async fn seed(tasks: &dyn TaskStore, spec: &SyntheticSpec, label: &str) -> Duration {
    let started = Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<NewTask>>(2);
    let generator_spec = spec.clone();
    let generator = tokio::task::spawn_blocking(move || {
        let mut from = 0;
        while from < generator_spec.total {
            let to = (from + SEED_CHUNK).min(generator_spec.total);
            let chunk = (from..to).map(|i| generator_spec.task(i)).collect();
            if sender.blocking_send(chunk).is_err() {
                return;
            }
            from = to;
        }
    });
    let mut inserted = 0u64;
    let mut reported = Instant::now();
    while let Some(chunk) = receiver.recv().await {
        inserted += tasks.insert_many(&chunk).await.expect("seed: insert_many");
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!("[{label}] seeded {inserted}/{} tasks", spec.total);
            reported = Instant::now();
        }
    }
    generator.await.expect("seed: generator thread");
    assert_eq!(inserted, spec.total, "seed: every task inserted");
    started.elapsed()
}

async fn execute_raw(kind: Kind, url: &str, statements: &[String]) {
    // One statement per call: PostgreSQL refuses VACUUM inside a multi-statement string.
    match kind {
        Kind::Sqlite => {
            // create_if_missing: ATTACH opens a new file with the main connection's flags.
            let options = SqliteConnectOptions::from_str(url)
                .expect("sqlite: URL")
                .create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options)
                .await
                .expect("sqlite: connect");
            for sql in statements {
                sqlx::raw_sql(AssertSqlSafe(sql.as_str()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("sqlite: `{sql}`: {e}"));
            }
            conn.close().await.expect("sqlite: close");
        }
        Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .expect("postgres: connect");
            for sql in statements {
                sqlx::raw_sql(AssertSqlSafe(sql.as_str()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("postgres: `{sql}`: {e}"));
            }
            conn.close().await.expect("postgres: close");
        }
        Kind::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(url)
                .await
                .expect("mysql: connect");
            for sql in statements {
                sqlx::raw_sql(AssertSqlSafe(sql.as_str()))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("mysql: `{sql}`: {e}"));
            }
            conn.close().await.expect("mysql: close");
        }
    }
}

/// Opens the database, seeds ours, copies the rows into the anchor table, analyzes both and
/// opens fresh pools. `None` when the backend's variable is unset.
async fn set_up(kind: Kind, config: &Config) -> Option<Bed> {
    let label = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
        Kind::MySql => "mysql",
    };
    if !config.runs(label) {
        eprintln!("[{label}] skipped: not in MJ_BENCH_BACKENDS");
        return None;
    }
    let db = TestDb::open(kind).await?;
    let url = db.url().to_owned();

    eprintln!("[{label}] seeding {} tasks", config.tasks);
    let store = mj_tasks::connect(&url).await.expect("ours: connect");
    let seed_time = seed(store.tasks().as_ref(), &spec(config.tasks), label).await;
    // What `seed` and imports do after a bulk load.
    store
        .tasks()
        .refresh_statistics()
        .await
        .expect("ours: refresh_statistics");
    store.close().await;
    eprintln!("[{label}] seeded in {seed_time:.1?}; copying into the anchor table");

    let copy_started = Instant::now();
    let (anchor, anchor_table) = copy_into_anchor(kind, &url, !config.as_deployed).await;
    let copy_time = copy_started.elapsed();
    eprintln!("[{label}] anchor copied, indexed and analyzed in {copy_time:.1?}");

    // Reopened after ANALYZE: fresh statistics and no cached statements on either side.
    let store = mj_tasks::connect(&url).await.expect("ours: reconnect");
    let tasks = store.tasks();
    let ours_total = tasks.count(&TaskQuery::all()).await.expect("ours: count");
    let count = Statement::new(
        kind,
        &format!("SELECT COUNT(*) FROM {anchor_table}"),
        Vec::new(),
    );
    assert_eq!(
        ours_total,
        anchor.count(&count).await,
        "both tables hold the same rows"
    );
    let server = anchor
        .text(match kind {
            Kind::Sqlite => "SELECT 'SQLite ' || sqlite_version()",
            Kind::Postgres => {
                "SELECT 'PostgreSQL ' || current_setting('server_version') \
                 || ', shared_buffers ' || current_setting('shared_buffers')"
            }
            Kind::MySql => {
                "SELECT CAST(CONCAT(VERSION(), ', innodb_buffer_pool_size ', \
                 @@innodb_buffer_pool_size DIV 1048576, 'MB') AS CHAR)"
            }
        })
        .await;
    let heavy_total = tasks
        .count(&TaskQuery::owned_by(HEAVY_USER))
        .await
        .expect("ours: count heavy user");
    Some(Bed {
        kind,
        label,
        store,
        tasks,
        anchor,
        anchor_table,
        heavy_total,
        server,
        seed_time,
        copy_time,
        _db: db,
    })
}

/// Creates new-api's table and indexes next to ours, copies every row (same ids, id order),
/// analyzes both tables and opens the anchor's pool; returns it with the anchor table's name.
async fn copy_into_anchor(kind: Kind, url: &str, analyze: bool) -> (Anchor, &'static str) {
    let create_indexes = |prefix: &str, table: &str| -> Vec<String> {
        ANCHOR_INDEXES
            .iter()
            .map(|(name, column)| format!("CREATE INDEX {prefix}{name} ON {table} ({column})"))
            .collect()
    };
    let mut statements = Vec::new();
    match kind {
        Kind::Sqlite => {
            let path = url
                .strip_prefix("sqlite://")
                .map(PathBuf::from)
                .expect("TestDb gives sqlite:// URLs");
            let anchor_path = path.with_file_name("anchor.db");
            let anchor_path_text = anchor_path.to_str().expect("temp path is UTF-8");
            assert!(!anchor_path_text.contains('\''), "temp path has no quote");
            statements.push(format!("ATTACH DATABASE '{anchor_path_text}' AS anchor"));
            statements.push("PRAGMA anchor.journal_mode = WAL".to_owned());
            statements.push(ANCHOR_TABLE_SQLITE.to_owned());
            statements.extend(create_indexes("anchor.", "midjourneys"));
            statements.push(format!(
                "INSERT INTO anchor.midjourneys ({ANCHOR_COLUMNS}) \
                 SELECT {ANCHOR_COLUMNS} FROM main.midjourneys ORDER BY id"
            ));
            if analyze {
                statements.push("ANALYZE main".to_owned());
                statements.push("ANALYZE anchor".to_owned());
            }
            statements.push("PRAGMA main.wal_checkpoint(TRUNCATE)".to_owned());
            statements.push("PRAGMA anchor.wal_checkpoint(TRUNCATE)".to_owned());
            statements.push("DETACH DATABASE anchor".to_owned());
            execute_raw(kind, url, &statements).await;
            let options = SqliteConnectOptions::new()
                .filename(&anchor_path)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            // The same pool settings as SqliteTaskStore::connect.
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .expect("anchor: open sqlite file");
            (Anchor::Sqlite(pool), "midjourneys")
        }
        Kind::Postgres => {
            statements.push(ANCHOR_TABLE_POSTGRES.to_owned());
            // Index names are per schema on PostgreSQL: ours already has `idx_midjourneys_*`.
            statements.extend(create_indexes("anchor_", "anchor_midjourneys"));
            statements.push(format!(
                "INSERT INTO anchor_midjourneys ({ANCHOR_COLUMNS}) \
                 SELECT {ANCHOR_COLUMNS} FROM midjourneys ORDER BY id"
            ));
            if analyze {
                statements.push("VACUUM ANALYZE midjourneys".to_owned());
                statements.push("VACUUM ANALYZE anchor_midjourneys".to_owned());
            }
            execute_raw(kind, url, &statements).await;
            // The same pool settings as PostgresTaskStore::connect.
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .connect(url)
                .await
                .expect("anchor: connect postgres");
            (Anchor::Postgres(pool), "anchor_midjourneys")
        }
        Kind::MySql => {
            statements.push(ANCHOR_TABLE_MYSQL.to_owned());
            let adds: Vec<String> = ANCHOR_INDEXES
                .iter()
                .map(|(name, column)| format!("ADD INDEX {name} ({column})"))
                .collect();
            statements.push(format!(
                "ALTER TABLE anchor_midjourneys {}",
                adds.join(", ")
            ));
            statements.push(format!(
                "INSERT INTO anchor_midjourneys ({ANCHOR_COLUMNS}) \
                 SELECT {ANCHOR_COLUMNS} FROM midjourneys ORDER BY id"
            ));
            if analyze {
                statements.push("ANALYZE TABLE midjourneys, anchor_midjourneys".to_owned());
            }
            execute_raw(kind, url, &statements).await;
            // The same pool settings as MySqlTaskStore::connect.
            let pool = MySqlPoolOptions::new()
                .max_connections(10)
                .connect(url)
                .await
                .expect("anchor: connect mysql");
            (Anchor::MySql(pool), "anchor_midjourneys")
        }
    }
}

async fn timed<F: Future<Output = Outcome>>(future: F) -> Duration {
    let started = Instant::now();
    std::hint::black_box(future.await);
    started.elapsed()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2
    }
}

/// Both sides of one path, measured interleaved.
struct SideBySide {
    ours: Duration,
    anchor: Duration,
    rounds: usize,
    /// Rounds in which ours was faster than the anchor run next to it.
    ours_faster: usize,
}

impl SideBySide {
    /// Two-sided sign test over the paired rounds: the chance of a split at least this uneven
    /// if neither side were faster. Large values mean the medians differ by noise only.
    fn sign_test_p(&self) -> f64 {
        let n = self.rounds;
        let fewer = self.ours_faster.min(n - self.ours_faster);
        // Binomial(n, 1/2) probabilities, built up term by term (0.5^201 still fits an f64).
        let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
        let mut tail = 0.0;
        for i in 0..=fewer {
            tail += term;
            term *= (n - i) as f64 / (i + 1) as f64;
        }
        (2.0 * tail).min(1.0)
    }
}

/// Both sides of a path, interleaved (the order alternates every round): medians of ours and
/// of the anchor, and how often ours won its round.
async fn side_by_side(bed: &Bed, path: &QueryPath, config: &Config) -> SideBySide {
    let mut ours = Vec::new();
    let mut anchor = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    while round < config.min_rounds
        || (round < config.max_rounds && started.elapsed() < config.budget)
    {
        if round % 2 == 0 {
            ours.push(timed(run_ours(bed.tasks.as_ref(), &path.ours)).await);
            anchor.push(timed(run_anchor(&bed.anchor, &path.anchor)).await);
        } else {
            anchor.push(timed(run_anchor(&bed.anchor, &path.anchor)).await);
            ours.push(timed(run_ours(bed.tasks.as_ref(), &path.ours)).await);
        }
        round += 1;
    }
    let ours_faster = ours.iter().zip(&anchor).filter(|(o, a)| o < a).count();
    SideBySide {
        ours: median(&mut ours),
        anchor: median(&mut anchor),
        rounds: round,
        ours_faster,
    }
}

fn show(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1_000.0)
    } else {
        format!("{:.2} s", micros / 1_000_000.0)
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where cargo puts build output: `CARGO_TARGET_DIR`, else three levels above this executable
/// (`<target>/release/deps/query_paths-<hash>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn bench_backend(
    criterion: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    kind: Kind,
) -> Option<String> {
    let bed = runtime.block_on(set_up(kind, config))?;
    let paths = runtime.block_on(bed.paths(config.tasks));
    let label = bed.label;

    for path in &paths {
        let (ours, anchor) = runtime.block_on(async {
            (
                run_ours(bed.tasks.as_ref(), &path.ours).await,
                run_anchor(&bed.anchor, &path.anchor).await,
            )
        });
        check_same_answer(path, &ours, &anchor);
    }
    eprintln!("[{label}] both sides agree on all {} paths", paths.len());

    for path in &paths {
        let mut group = criterion.benchmark_group(format!("{label}/{}", path.slug));
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        group.bench_function("ours", |b| {
            b.to_async(runtime)
                .iter(|| run_ours(bed.tasks.as_ref(), &path.ours))
        });
        group.bench_function("anchor", |b| {
            b.to_async(runtime)
                .iter(|| run_anchor(&bed.anchor, &path.anchor))
        });
        group.finish();
    }

    // The floor under every path: one statement's round trip through our pool.
    let round_trip = runtime.block_on(async {
        let mut samples = Vec::new();
        for _ in 0..if config.test_mode { 1 } else { 201 } {
            let started = Instant::now();
            bed.tasks.ping().await.expect("ours: ping");
            samples.push(started.elapsed());
        }
        median(&mut samples)
    });
    let mut table = format!(
        "### {label} ({}): {} tasks (heavy user {}), seeded in {:.1} s, anchor copied + indexed \
         in {:.1} s\n\n{}; one round trip (`SELECT 1` through the pool, median): {}\n\n\
         | path | ours (median) | anchor (median) | anchor/ours | ours faster in | target |\n\
         |---|---:|---:|---:|---:|---|\n",
        if config.as_deployed {
            "as deployed: no ANALYZE but the store's own"
        } else {
            "both sides analyzed"
        },
        thousands(config.tasks),
        thousands(bed.heavy_total),
        bed.seed_time.as_secs_f64(),
        bed.copy_time.as_secs_f64(),
        bed.server,
        show(round_trip),
    );
    for path in &paths {
        let measured = runtime.block_on(side_by_side(&bed, path, config));
        let ratio = measured.anchor.as_secs_f64() / measured.ours.as_secs_f64().max(1e-9);
        let wanted = path.target.ratio();
        let p = measured.sign_test_p();
        let verdict = if config.test_mode {
            "(test mode)".to_owned()
        } else if ratio >= wanted {
            "held".to_owned()
        } else if matches!(path.target, Target::NotSlower) && p >= 0.05 {
            // "Not slower": a median below 1x that the paired rounds cannot tell from noise.
            format!("held (tie, sign test p = {p:.2})")
        } else {
            "MISSED".to_owned()
        };
        table.push_str(&format!(
            "| {} | {} | {} | {ratio:.1}x | {}/{} | ≥{wanted:.0}x {verdict} |\n",
            path.name,
            show(measured.ours),
            show(measured.anchor),
            measured.ours_faster,
            measured.rounds,
        ));
    }
    runtime.block_on(bed.close());

    let mode = if config.as_deployed { "_deployed" } else { "" };
    let file = target_dir().join(format!("query_paths_{label}{mode}.md"));
    match std::fs::write(&file, &table) {
        Ok(()) => eprintln!("[{label}] table written to {}", file.display()),
        Err(error) => eprintln!("[{label}] could not write {}: {error}", file.display()),
    }
    Some(table)
}

fn main() {
    let config = Config::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let mut tables = Vec::new();
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::MySql] {
        if let Some(table) = bench_backend(&mut criterion, &runtime, &config, kind) {
            tables.push(table);
        }
    }
    criterion.final_summary();

    println!();
    println!(
        "Medians of interleaved rounds (ours and the anchor alternating), same process, same data{}:",
        if config.test_mode {
            " (test mode: one round, not a measurement)"
        } else {
            ""
        }
    );
    for table in tables {
        println!();
        println!("{table}");
    }
}
