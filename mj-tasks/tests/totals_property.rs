//! Property test of exact totals on SQLite, PostgreSQL and MariaDB: random inserts (one by one
//! and in bulk) and random updates (the poller's batched writes and `update_if_version`, which
//! change status, action and channel) must leave every total the store reports equal to
//! `COUNT(*)` of the same filter over the task table, for random filters and ranges that start
//! and end on and off the counters' bucket boundaries.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use async_trait::async_trait;
use mj_tasks::billing::{LedgerConn, QuotaLedger, Refund};
use mj_tasks::{
    NewTask, PollStore, SqlPollStore, SqlStore, StoreError, TaskAction, TaskQuery, TaskStatus,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use test_support::{Kind, TestDb};

const HOUR_MS: i64 = 3_600_000;
/// A day boundary, so that hour and day buckets both start here.
const BASE_MS: i64 = 1_700_006_400_000;
const SPAN_MS: i64 = 3 * 24 * HOUR_MS;

const STATUSES: [&str; 4] = ["NOT_START", "IN_PROGRESS", "SUCCESS", "FAILURE"];
const ACTIONS: [&str; 3] = ["IMAGINE", "UPSCALE", "VARIATION"];

/// Tasks are free here, so no write ever reaches the ledger.
struct NoLedger;

#[async_trait]
impl QuotaLedger for NoLedger {
    async fn reserve(&self, _: i64, _: i64) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn release(&self, _: i64, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn refund_in(&self, _: LedgerConn<'_>, _: Refund) -> Result<(), StoreError> {
        panic!("free tasks are never refunded")
    }
}

#[derive(Debug, Clone)]
struct Columns {
    user_id: i64,
    channel_id: i64,
    status: usize,
    action: usize,
}

#[derive(Debug, Clone)]
enum Write {
    /// Tasks at these submit-time offsets, one insert each or one bulk insert.
    Insert {
        tasks: Vec<(Columns, i64)>,
        bulk: bool,
    },
    /// Rewrites the `nth` stored task (modulo their number), through the poller or not.
    Update {
        nth: usize,
        columns: Columns,
        by_poller: bool,
    },
}

fn columns() -> impl Strategy<Value = Columns> {
    (1..4i64, 1..4i64, 0..STATUSES.len(), 0..ACTIONS.len()).prop_map(
        |(user_id, channel_id, status, action)| Columns {
            user_id,
            channel_id,
            status,
            action,
        },
    )
}

/// Offsets that often sit on, just before or just after an hour boundary.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        0..SPAN_MS,
        (0..72i64, -1..=1i64).prop_map(|(hour, nudge)| (hour * HOUR_MS + nudge).max(0)),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (
            prop::collection::vec((columns(), offset()), 1..12),
            any::<bool>()
        )
            .prop_map(|(tasks, bulk)| Write::Insert { tasks, bulk }),
        (any::<usize>(), columns(), any::<bool>()).prop_map(|(nth, columns, by_poller)| {
            Write::Update {
                nth,
                columns,
                by_poller,
            }
        }),
    ]
}

fn query() -> impl Strategy<Value = TaskQuery> {
    let bound = prop_oneof![
        Just(None),
        offset().prop_map(|offset| Some(BASE_MS + offset)),
        (-2..80i64).prop_map(|hour| Some(BASE_MS + hour * HOUR_MS)),
    ];
    (
        prop::option::of(1..4i64),
        prop::option::of(1..4i64),
        prop::option::of(0..STATUSES.len()),
        prop::option::of(0..ACTIONS.len()),
        bound.clone(),
        bound,
    )
        .prop_map(|(owner, channel_id, status, action, from, to)| TaskQuery {
            owner,
            channel_id,
            status: status.map(|n| TaskStatus::parse(STATUSES[n])),
            action: action.map(|n| TaskAction::parse(ACTIONS[n])),
            submitted_from: from,
            submitted_to: to,
            mj_id: None,
        })
}

fn new_task(columns: &Columns, offset: i64) -> NewTask {
    NewTask {
        user_id: columns.user_id,
        channel_id: columns.channel_id,
        status: TaskStatus::parse(STATUSES[columns.status]),
        action: TaskAction::parse(ACTIONS[columns.action]),
        mj_id: format!("mj-{offset}"),
        submit_time: BASE_MS + offset,
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    }
}

/// `COUNT(*)` of `query` straight from the task table, spelled out independently of the store.
async fn count_rows(store: &SqlStore, query: &TaskQuery) -> u64 {
    let mut conditions = vec!["1 = 1".to_owned()];
    if let Some(owner) = query.owner {
        conditions.push(format!("user_id = {owner}"));
    }
    if let Some(channel) = query.channel_id {
        conditions.push(format!("channel_id = {channel}"));
    }
    if let Some(status) = &query.status {
        conditions.push(format!("status = '{}'", status.as_str()));
    }
    if let Some(action) = &query.action {
        conditions.push(format!("action = '{}'", action.as_str()));
    }
    if let Some(from) = query.submitted_from {
        conditions.push(format!("submit_time >= {from}"));
    }
    if let Some(to) = query.submitted_to {
        conditions.push(format!("submit_time <= {to}"));
    }
    let sql = format!(
        "SELECT COUNT(*) FROM midjourneys WHERE {}",
        conditions.join(" AND ")
    );
    let sql = sqlx::AssertSqlSafe(sql);
    let count: i64 = match store {
        SqlStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::MySql(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        _ => unreachable!("every backend is built for tests"),
    };
    u64::try_from(count).unwrap()
}

async fn apply(store: &SqlStore, poll: &SqlPollStore, writes: &[Write]) {
    let tasks = store.tasks();
    for write in writes {
        match write {
            Write::Insert { tasks: new, bulk } => {
                let new: Vec<NewTask> = new.iter().map(|(c, o)| new_task(c, *o)).collect();
                if *bulk {
                    tasks.insert_many(&new).await.unwrap();
                } else {
                    for task in &new {
                        tasks.insert(task).await.unwrap();
                    }
                }
            }
            Write::Update {
                nth,
                columns,
                by_poller,
            } => {
                let stored = tasks
                    .list(
                        &TaskQuery::all(),
                        mj_tasks::PageRequest::new(1, 100).unwrap(),
                    )
                    .await
                    .unwrap();
                if stored.items.is_empty() {
                    continue;
                }
                let mut task = stored.items[nth % stored.items.len()].clone();
                task.status = TaskStatus::parse(STATUSES[columns.status]);
                task.action = TaskAction::parse(ACTIONS[columns.action]);
                task.channel_id = columns.channel_id;
                // Never rewritten by an update: must not move the task between counters.
                task.user_id = columns.user_id;
                task.submit_time += HOUR_MS;
                if *by_poller {
                    let stale = task.clone();
                    let outcomes = poll.write_outcomes(&[task, stale]).await.unwrap();
                    assert_eq!(outcomes[1], mj_tasks::WriteOutcome::Lost);
                } else {
                    assert!(tasks.update_if_version(&task).await.unwrap());
                    assert!(!tasks.update_if_version(&task).await.unwrap(), "stale");
                }
            }
        }
    }
}

fn totals_match_counts(kind: Kind) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = runtime.block_on(TestDb::open(kind)) else {
        return;
    };
    let store = runtime.block_on(mj_tasks::connect(db.url())).unwrap();
    let poll = SqlPollStore::new(store.clone(), Arc::new(NoLedger));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(write(), 1..6),
        prop::collection::vec(query(), 8..16),
    );
    runner
        .run(&strategy, |(writes, queries)| {
            runtime.block_on(async {
                apply(&store, &poll, &writes).await;
                let tasks = store.tasks();
                for query in &queries {
                    let expected = count_rows(&store, query).await;
                    prop_assert_eq!(tasks.count(query).await.unwrap(), expected, "{:?}", query);
                    let page = tasks
                        .list(query, mj_tasks::PageRequest::first())
                        .await
                        .unwrap();
                    prop_assert_eq!(page.total, expected, "list {:?}", query);
                }
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(store.close());
}

#[test]
fn totals_match_counts_sqlite() {
    totals_match_counts(Kind::Sqlite);
}

#[cfg(feature = "postgres")]
#[test]
fn totals_match_counts_postgres() {
    totals_match_counts(Kind::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
fn totals_match_counts_mysql() {
    totals_match_counts(Kind::MySql);
}
