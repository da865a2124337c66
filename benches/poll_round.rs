//! One poll round at scale, against fake midjourney-proxies on loopback.
//!
//! For each backend (SQLite always; PostgreSQL / MariaDB when `MJ_TEST_POSTGRES_URL` /
//! `MJ_TEST_MYSQL_URL` name a server, on a fresh database dropped afterwards):
//!
//! 1. **Busy round**: `MJ_BENCH_POLL_TASKS` unfinished tasks (default 100,000) spread over 10
//!    channels, each channel a fake midjourney-proxy of its own on 127.0.0.1. Every task
//!    progresses on every poll, so every round asks about and writes **every** task (the worst
//!    case). Prints tasks/s and the database time of each of 3 rounds.
//! 2. **Idle round**: `MJ_BENCH_IDLE_FINISHED` finished tasks (default 1,000,000) and none
//!    unfinished; prints the median wall time of 200 rounds (target: under 1 ms; an idle round must
//!    not scan finished rows).
//!
//! Run with `cargo bench --bench poll_round`. Under `cargo test --benches` it runs once on 2,000
//! busy and 20,000 finished tasks as a smoke test.

#![allow(clippy::unwrap_used)] // a bench fails loudly

use std::time::{Duration, Instant};

use mj_tasks::{NewChannel, NewTask, Poller, Progress, TaskAction, TaskStatus, now_millis};
use mj_tasks_server::{App, Settings};
use test_support::fake_proxy::{FakeProxy, Outcome};
use test_support::{Kind, TestDb};

const CHANNELS: usize = 10;
const SECRET: &str = "bench-secret";
const SEED_CHUNK: usize = 20_000;

struct Sizes {
    busy: usize,
    idle_finished: usize,
    idle_rounds: usize,
    busy_rounds: usize,
}

impl Sizes {
    fn from_env() -> Self {
        // `cargo bench` passes `--bench`; `cargo test --benches` does not.
        let args: Vec<String> = std::env::args().collect();
        let test_mode = !args.iter().any(|a| a == "--bench");
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            busy: number(
                "MJ_BENCH_POLL_TASKS",
                if test_mode { 2_000 } else { 100_000 },
            ),
            idle_finished: number(
                "MJ_BENCH_IDLE_FINISHED",
                if test_mode { 20_000 } else { 1_000_000 },
            ),
            idle_rounds: if test_mode { 5 } else { 200 },
            busy_rounds: if test_mode { 1 } else { 3 },
        }
    }
}

async fn open_app(db: &TestDb) -> App {
    let mut settings = Settings::with_database_url(db.url());
    settings.poll_interval_secs = 0;
    App::open(settings).await.unwrap()
}

/// The poller exactly as the server configures it.
fn poller(app: &App) -> Poller {
    let mut settings = (*app.settings).clone();
    settings.poll_interval_secs = 15;
    let app = App {
        settings: std::sync::Arc::new(settings),
        ..app.clone()
    };
    app.poller().unwrap()
}

fn task(channel_id: i64, mj_id: String, status: TaskStatus, progress: &str) -> NewTask {
    NewTask {
        code: 1,
        user_id: 1,
        action: TaskAction::Imagine,
        mj_id,
        prompt: "bench".into(),
        submit_time: now_millis(),
        status,
        progress: Progress::new(progress),
        channel_id,
        quota: 50_000,
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    }
}

async fn seed(app: &App, tasks: Vec<NewTask>) {
    for chunk in tasks.chunks(SEED_CHUNK) {
        app.tasks.insert_many(chunk).await.unwrap();
    }
}

async fn busy(kind: Kind, sizes: &Sizes) {
    let Some(db) = TestDb::open(kind).await else {
        return;
    };
    let app = open_app(&db).await;
    let mut fakes = Vec::new();
    let mut channel_ids = Vec::new();
    for c in 0..CHANNELS {
        // Tasks never finish within the bench: every poll is one more progress step.
        let fake = FakeProxy::start_with_steps(SECRET, u32::MAX / 2).await;
        let channel = app
            .channels
            .add_channel(&NewChannel {
                name: format!("fake-{c}"),
                base_url: fake.base_url(),
                secret: SECRET.into(),
            })
            .await
            .unwrap();
        channel_ids.push(channel.id);
        fakes.push(fake);
    }
    let mut rows = Vec::with_capacity(sizes.busy);
    for n in 0..sizes.busy {
        let c = n % CHANNELS;
        let mj_id = (1_700_000_000_000_000u64 + n as u64).to_string();
        fakes[c].insert_at(&mj_id, Outcome::Stuck, 1);
        rows.push(task(channel_ids[c], mj_id, TaskStatus::Submitted, "0%"));
    }
    let started = Instant::now();
    seed(&app, rows).await;
    println!(
        "{kind:?}: busy: {} unfinished tasks on {CHANNELS} channels seeded in {:.1} s",
        sizes.busy,
        started.elapsed().as_secs_f64()
    );
    let poller = poller(&app);
    let calls = || fakes.iter().map(FakeProxy::list_calls).sum::<u64>();
    for round in 1..=sizes.busy_rounds {
        let calls_before = calls();
        let started = Instant::now();
        let stats = poller.run_round().await.unwrap();
        let wall = started.elapsed();
        assert_eq!(stats.scanned as usize, sizes.busy);
        assert_eq!(stats.written as usize, sizes.busy, "{stats:?}");
        println!(
            "{kind:?}: busy round {round}: {} tasks asked and written in {:.2} s = {:.0} tasks/s; \
             database time {:.2} s (summed over the concurrent channel workers); {} upstream calls",
            stats.scanned,
            wall.as_secs_f64(),
            stats.scanned as f64 / wall.as_secs_f64(),
            stats.db_time.as_secs_f64(),
            calls() - calls_before,
        );
    }
    app.store.close().await;
}

async fn idle(kind: Kind, sizes: &Sizes) {
    let Some(db) = TestDb::open(kind).await else {
        return;
    };
    let app = open_app(&db).await;
    let rows: Vec<NewTask> = (0..sizes.idle_finished)
        .map(|n| {
            let status = if n % 10 == 0 {
                TaskStatus::Failure
            } else {
                TaskStatus::Success
            };
            task(1 + (n % CHANNELS) as i64, n.to_string(), status, "100%")
        })
        .collect();
    let started = Instant::now();
    seed(&app, rows).await;
    println!(
        "{kind:?}: idle: {} finished tasks seeded in {:.1} s",
        sizes.idle_finished,
        started.elapsed().as_secs_f64()
    );
    let poller = poller(&app);
    poller.run_round().await.unwrap(); // warm the pool and the statement cache
    let mut times: Vec<Duration> = Vec::with_capacity(sizes.idle_rounds);
    for _ in 0..sizes.idle_rounds {
        let started = Instant::now();
        let stats = poller.run_round().await.unwrap();
        times.push(started.elapsed());
        assert_eq!(stats.scanned, 0);
    }
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "{kind:?}: idle round with {} finished, 0 unfinished: median {:.3} ms, p99 {:.3} ms ({} rounds; target < 1 ms)",
        sizes.idle_finished,
        median.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        sizes.idle_rounds
    );
    app.store.close().await;
}

fn main() {
    let sizes = Sizes::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::var("MJ_BENCH_BACKENDS").unwrap_or_default();
    runtime.block_on(async {
        for kind in [Kind::Sqlite, Kind::Postgres, Kind::MySql] {
            let name = format!("{kind:?}").to_lowercase();
            if !only.is_empty() && !only.split(',').any(|b| b.trim() == name) {
                continue;
            }
            busy(kind, &sizes).await;
            idle(kind, &sizes).await;
        }
    });
}
