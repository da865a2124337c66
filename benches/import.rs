//! `import --from <new-api>` at scale: rows/s and peak memory.
//!
//! For each pair of source and target engine (sources: SQLite, and PostgreSQL when
//! `MJ_TEST_POSTGRES_URL` names a server; targets: SQLite, and PostgreSQL / MariaDB when
//! `MJ_TEST_POSTGRES_URL` / `MJ_TEST_MYSQL_URL` name one; `MJ_BENCH_BACKENDS=sqlite,postgres`
//! limits both), a new-api database with new-api's GORM schema (current version) is filled with
//! `MJ_BENCH_IMPORT_TASKS` tasks (default 1,000,000), then imported into a fresh store by the
//! command's own code (`mj_tasks_server::import::run`, default batch). Prints the tasks/s of the
//! copy and the process's peak resident memory during the import (`VmHWM`, reset through
//! `/proc/self/clear_refs` before it starts), then checks the count.
//!
//! Run with `cargo bench --bench import`. Under `cargo test --benches` it imports 5,000 tasks
//! SQLite to SQLite as a smoke test.

#![allow(clippy::unwrap_used)] // a bench fails loudly

use std::time::Instant;

use mj_tasks::TaskQuery;
use test_support::new_api::{NewApiDb, Schema};
use test_support::{Kind, TestDb};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size to the current one (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn wanted(kind: Kind) -> bool {
    let name = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
        Kind::MySql => "mysql",
    };
    std::env::var("MJ_BENCH_BACKENDS")
        .map(|list| list.split(',').any(|b| b.trim() == name))
        .unwrap_or(true)
}

#[tokio::main]
async fn main() {
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let tasks: u64 = std::env::var("MJ_BENCH_IMPORT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if test_mode { 5_000 } else { 1_000_000 });
    let (sources, targets) = if test_mode {
        (vec![Kind::Sqlite], vec![Kind::Sqlite])
    } else {
        (
            vec![Kind::Sqlite, Kind::Postgres],
            vec![Kind::Sqlite, Kind::Postgres, Kind::MySql],
        )
    };
    for source_kind in sources.into_iter().filter(|k| wanted(*k)) {
        let started = Instant::now();
        let Some(source) = NewApiDb::create(
            source_kind,
            Schema::Current,
            "http://127.0.0.1:1",
            tasks.saturating_sub(9),
        )
        .await
        else {
            continue;
        };
        println!(
            "source {source_kind:?}: {} tasks written in {:.1} s",
            source.task_count(),
            started.elapsed().as_secs_f64()
        );
        for target_kind in targets.iter().copied().filter(|k| wanted(*k)) {
            let Some(target) = TestDb::open(target_kind).await else {
                continue;
            };
            let store = mj_tasks::connect(target.url()).await.unwrap();
            let users = mj_tasks_server::users::open_user_store(&store)
                .await
                .unwrap();
            reset_peak_rss();
            let started = Instant::now();
            mj_tasks_server::import::run(
                &store,
                users.as_ref(),
                target.url(),
                source.url(),
                5000,
                false,
            )
            .await
            .unwrap();
            let seconds = started.elapsed().as_secs_f64();
            let peak = peak_rss_kib().unwrap_or(0);
            // The command closed its store once the users and channels were in.
            let store = mj_tasks::connect(target.url()).await.unwrap();
            let count = store.tasks().count(&TaskQuery::all()).await.unwrap();
            assert_eq!(count, source.task_count());
            println!(
                "import {source_kind:?} -> {target_kind:?}: {count} tasks in {seconds:.1} s = {:.0} tasks/s (whole command), peak RSS {:.1} MiB",
                count as f64 / seconds,
                peak as f64 / 1024.0
            );
            store.close().await;
        }
    }
}
