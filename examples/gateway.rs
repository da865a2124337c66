//! A gateway relaying Midjourney tasks through the library alone: it keeps balances in its own
//! `(id, quota)` table, submits an imagine with [`Relay::submit`] (validation, channel choice,
//! crash-safe quota reservation, upstream call, task record), polls the task to `SUCCESS` with
//! the library's [`Poller`] and prints it as midjourney-proxy clients see it.
//!
//! The upstream is a tiny fake midjourney-proxy started by the example itself on a local port
//! (its task finishes after three polls), so nothing outside is needed.
//!
//! Run: `cargo run --example gateway` (in-memory SQLite), or pass a database URL:
//! `cargo run --example gateway -- postgres://postgres@127.0.0.1/test`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mj_tasks::relay::{Relay, RelayTask, SubmitOutcome};
use mj_tasks::{
    NewChannel, Poller, PollerConfig, PollerDeps, PriceTable, QuotaLedger, SqlPollStore,
    SqlQuotaLedger, SqlReservationStore, SqlStore, SubmitKind, UpstreamClient,
};
use serde_json::{Value, json};
use warp::Filter;

const SECRET: &str = "example-secret";
const USER: i64 = 42;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite::memory:".to_owned());
    let store = mj_tasks::connect(&url).await?;

    // The gateway's own balances: any table with an integer id and quota will do.
    create_accounts(&store).await?;
    let ledger: Arc<dyn QuotaLedger> = Arc::new(SqlQuotaLedger::new("example_accounts")?);

    // An upstream channel (here the fake started below).
    let upstream_url = start_fake_upstream().await?;
    store
        .channels()
        .add_channel(&NewChannel {
            name: "fake".to_owned(),
            base_url: upstream_url,
            secret: SECRET.to_owned(),
        })
        .await?;

    // The submit workflow, with the default random channel choice and raw image addresses.
    let upstream = UpstreamClient::new(Duration::from_secs(10))?;
    let relay = Relay::new(&store, ledger.clone(), upstream, PriceTable::default());
    let body = json!({"prompt": "a red fox in snow", "state": "order-7"}).to_string();
    let task = match relay
        .submit(USER, SubmitKind::Imagine, body.as_bytes())
        .await?
    {
        SubmitOutcome::Accepted { task, answer } => {
            println!(
                "accepted: code {}, upstream id {:?}, charged {} (balance now {})",
                answer.code,
                answer.result,
                task.quota,
                balance(&store).await?
            );
            task
        }
        other => return Err(format!("the submit was not accepted: {other:?}").into()),
    };

    // The poller brings the task up to date (and would refund a failure exactly once).
    let poller = Poller::new(
        PollerDeps {
            tasks: store.tasks(),
            channels: store.channels(),
            store: Arc::new(SqlPollStore::new(store.clone(), ledger.clone())),
            reservations: Arc::new(SqlReservationStore::new(store.clone(), ledger)),
        },
        PollerConfig::default(),
    )?;
    let mut shown: Option<RelayTask> = None;
    for round in 1..=10 {
        poller.run_round().await?;
        let current = relay.fetch(USER, &task.mj_id).await?;
        if let Some(current) = &current {
            println!("round {round}: {} {}", current.status, current.progress);
        }
        shown = current;
        if shown.as_ref().is_some_and(|t| t.status == "SUCCESS") {
            break;
        }
    }
    match shown {
        Some(task) if task.status == "SUCCESS" => {
            println!("{}", serde_json::to_string_pretty(&task)?);
        }
        _ => return Err("the task did not finish".into()),
    }
    store.close().await;
    Ok(())
}

/// `example_accounts (id, quota)` with one funded user.
async fn create_accounts(store: &SqlStore) -> Result<(), sqlx::Error> {
    let statements = [
        "CREATE TABLE IF NOT EXISTS example_accounts (id BIGINT PRIMARY KEY, quota BIGINT NOT NULL)",
        "DELETE FROM example_accounts WHERE id = 42",
        "INSERT INTO example_accounts (id, quota) VALUES (42, 1000000)",
    ];
    for sql in statements {
        match store {
            SqlStore::Sqlite(s) => {
                sqlx::query(sql).execute(s.pool()).await?;
            }
            SqlStore::Postgres(s) => {
                sqlx::query(sql).execute(s.pool()).await?;
            }
            SqlStore::MySql(s) => {
                sqlx::query(sql).execute(s.pool()).await?;
            }
            _ => return Err(sqlx::Error::Configuration("unknown backend".into())),
        }
    }
    Ok(())
}

async fn balance(store: &SqlStore) -> Result<i64, sqlx::Error> {
    let sql = "SELECT quota FROM example_accounts WHERE id = 42";
    match store {
        SqlStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        SqlStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        SqlStore::MySql(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        _ => Err(sqlx::Error::Configuration("unknown backend".into())),
    }
}

/// A fake midjourney-proxy on 127.0.0.1: `submit/imagine` accepts with a fresh id, and
/// `task/list-by-condition` reports each task one step further per poll (NOT_START, SUBMITTED,
/// IN_PROGRESS, SUCCESS). Returns its base URL.
async fn start_fake_upstream() -> std::io::Result<String> {
    let polls: Arc<Mutex<HashMap<String, (String, u32)>>> = Arc::default();
    let submits = polls.clone();
    let secret = warp::header::exact("mj-api-secret", SECRET);
    let submit = warp::path!("mj" / "submit" / "imagine")
        .and(warp::post())
        .and(secret)
        .and(warp::body::json())
        .map(move |body: Value| {
            let id = format!("17152400{:08}", rand::random::<u32>() % 100_000_000);
            let prompt = body["prompt"].as_str().unwrap_or_default().to_owned();
            lock(&submits).insert(id.clone(), (prompt, 0));
            warp::reply::json(&json!({
                "code": 1, "description": "提交成功", "result": id, "properties": {}
            }))
        });
    let list = warp::path!("mj" / "task" / "list-by-condition")
        .and(warp::post())
        .and(secret)
        .and(warp::body::json())
        .map(move |body: Value| {
            let mut tasks = lock(&polls);
            let answers: Vec<Value> = body["ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|id| {
                    let (prompt, step) = tasks.get_mut(id)?;
                    *step += 1;
                    let (status, progress) = match *step {
                        1 => ("SUBMITTED", "0%"),
                        2 => ("IN_PROGRESS", "50%"),
                        _ => ("SUCCESS", "100%"),
                    };
                    let done = status == "SUCCESS";
                    Some(json!({
                        "id": id, "action": "IMAGINE", "status": status, "progress": progress,
                        "prompt": prompt, "promptEn": prompt, "description": format!("/imagine {prompt}"),
                        "imageUrl": done.then(|| format!("https://cdn.example/{id}.png")),
                        "finishTime": done.then(mj_tasks::now_millis),
                        "failReason": null, "properties": {}
                    }))
                })
                .collect();
            warp::reply::json(&answers)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(warp::serve(submit.or(list)).incoming(listener).run());
    Ok(format!("http://{address}"))
}

/// The fake's state, also after a panicking handler (which would only end the example).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
