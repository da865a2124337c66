//! The submit workflow and its money rules, through the library alone (no server): a plain
//! `(id, quota)` accounts table with [`SqlQuotaLedger`], a fake midjourney-proxy, every
//! configured database.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::Duration;

use mj_tasks::image::ImagePresenter;
use mj_tasks::relay::{Relay, SubmitOutcome};
use mj_tasks::{
    NewChannel, NewTask, PollStore, Poller, PollerConfig, PollerDeps, PriceTable, Progress,
    QuotaLedger, ReservationStore, SqlPollStore, SqlQuotaLedger, SqlReservationStore, SqlStore,
    SubmitKind, Task, TaskAction, TaskStatus, UpstreamClient, WriteOutcome, now_millis,
};
use serde_json::{Value, json};
use test_support::fake_proxy::{FakeProxy, Mode, Outcome};
use test_support::{Kind, TestDb};

const SECRET: &str = "upstream-secret";
const QUOTA: i64 = 1_000_000;
const IMAGINE: i64 = 50_000;
const ALICE: i64 = 1;

/// Runs one statement without binds (values inlined by the test itself).
async fn execute(store: &SqlStore, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        SqlStore::Sqlite(s) => {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
        SqlStore::Postgres(s) => {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
        SqlStore::MySql(s) => {
            sqlx::query(sql).execute(s.pool()).await.unwrap();
        }
        _ => unreachable!("every backend is built for tests"),
    }
}

/// One integer from a query without binds.
async fn scalar(store: &SqlStore, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        SqlStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::MySql(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        _ => unreachable!("every backend is built for tests"),
    }
}

struct Env {
    store: SqlStore,
    relay: Relay,
    fake: FakeProxy,
    poll_store: Arc<dyn PollStore>,
    reservations: Arc<dyn ReservationStore>,
    _db: TestDb,
}

impl Env {
    async fn new(kind: Kind) -> Option<Self> {
        Self::with_timeout(kind, Duration::from_secs(5)).await
    }

    async fn with_timeout(kind: Kind, timeout: Duration) -> Option<Self> {
        let db = TestDb::open(kind).await?;
        let store = mj_tasks::connect(db.url()).await.unwrap();
        execute(
            &store,
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, quota BIGINT NOT NULL)",
        )
        .await;
        let ledger: Arc<dyn QuotaLedger> = Arc::new(SqlQuotaLedger::new("accounts").unwrap());
        let fake = FakeProxy::start(SECRET).await;
        store
            .channels()
            .add_channel(&NewChannel {
                name: "fake".into(),
                base_url: fake.base_url(),
                secret: SECRET.into(),
            })
            .await
            .unwrap();
        let reservations: Arc<dyn ReservationStore> =
            Arc::new(SqlReservationStore::new(store.clone(), ledger.clone()));
        let relay = Relay::from_parts(
            store.tasks(),
            store.channels(),
            reservations.clone(),
            UpstreamClient::new(timeout).unwrap(),
            PriceTable::default(),
        );
        let env = Self {
            poll_store: Arc::new(SqlPollStore::new(store.clone(), ledger)),
            reservations,
            relay,
            fake,
            store,
            _db: db,
        };
        env.add_account(ALICE, QUOTA).await;
        Some(env)
    }

    async fn add_account(&self, id: i64, quota: i64) {
        execute(
            &self.store,
            &format!("INSERT INTO accounts (id, quota) VALUES ({id}, {quota})"),
        )
        .await;
    }

    async fn quota(&self, id: i64) -> i64 {
        scalar(
            &self.store,
            &format!("SELECT quota FROM accounts WHERE id = {id}"),
        )
        .await
    }

    async fn journaled(&self) -> i64 {
        scalar(&self.store, "SELECT COUNT(*) FROM mj_reservations").await
    }

    async fn refunds(&self) -> i64 {
        scalar(&self.store, "SELECT COUNT(*) FROM mj_refunds").await
    }

    fn poller(&self, config: PollerConfig) -> Poller {
        Poller::new(
            PollerDeps {
                tasks: self.store.tasks(),
                channels: self.store.channels(),
                store: self.poll_store.clone(),
                reservations: self.reservations.clone(),
            },
            config,
        )
        .unwrap()
    }

    async fn imagine(&self, user: i64, prompt: &str) -> SubmitOutcome {
        let body = json!({ "prompt": prompt }).to_string();
        self.relay
            .submit(user, SubmitKind::Imagine, body.as_bytes())
            .await
            .unwrap()
    }

    async fn accepted(&self, prompt: &str) -> Task {
        match self.imagine(ALICE, prompt).await {
            SubmitOutcome::Accepted { task, answer } => {
                assert_eq!(answer.code, 1);
                assert_eq!(answer.result.as_deref(), Some(task.mj_id.as_str()));
                *task
            }
            other => panic!("not accepted: {other:?}"),
        }
    }

    async fn task(&self, id: i64) -> Task {
        self.store.tasks().get(id).await.unwrap().unwrap()
    }
}

fn fast_config() -> PollerConfig {
    PollerConfig {
        interval: Duration::from_millis(200),
        upstream_timeout: Duration::from_secs(2),
        ..PollerConfig::default()
    }
}

async fn rounds(poller: &Poller, n: usize) {
    for _ in 0..n {
        poller.run_round().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------

async fn submit_is_charged_recorded_and_polled_to_success(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let task = env.accepted("a red fox").await;
    assert_eq!(
        (task.quota, task.status.clone(), task.action.clone()),
        (IMAGINE, TaskStatus::NotStart, TaskAction::Imagine)
    );
    assert_eq!(env.quota(ALICE).await, QUOTA - IMAGINE);
    assert_eq!(env.journaled().await, 0, "settled: nothing left in flight");
    rounds(&env.poller(fast_config()), 4).await;
    assert_eq!(env.task(task.id).await.status, TaskStatus::Success);
    assert_eq!(
        env.quota(ALICE).await,
        QUOTA - IMAGINE,
        "success keeps the charge"
    );
    let fetched = env.relay.fetch(ALICE, &task.mj_id).await.unwrap().unwrap();
    assert_eq!(fetched.status, "SUCCESS");
    assert_eq!(
        fetched.image_url,
        Some(format!("https://cdn.fake/{}.png", task.mj_id))
    );
    assert!(
        env.relay
            .fetch(ALICE + 1, &task.mj_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(env.relay.fetch(ALICE, "a\0b").await.unwrap().is_none());
    let listed = env
        .relay
        .list_by_condition(
            ALICE,
            &[
                task.mj_id.clone(),
                task.mj_id.clone(),
                "\0".into(),
                "x".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(listed, vec![fetched]);

    // An action on it goes to its channel, at its own price, with its prompt.
    let body = json!({"taskId": task.mj_id, "customId": "MJ::JOB::upsample::1::abc"});
    let upscale = env
        .relay
        .submit(ALICE, SubmitKind::Action, body.to_string().as_bytes())
        .await
        .unwrap();
    let SubmitOutcome::Accepted { task: upscale, .. } = upscale else {
        panic!("{upscale:?}");
    };
    assert_eq!(
        (
            upscale.action.clone(),
            upscale.quota,
            upscale.prompt.as_str()
        ),
        (TaskAction::Upscale, 25_000, "a red fox")
    );
    // Someone else's task is not an origin.
    let other = env
        .relay
        .submit(ALICE + 1, SubmitKind::Action, body.to_string().as_bytes())
        .await
        .unwrap();
    assert!(matches!(other, SubmitOutcome::OriginNotFound), "{other:?}");
}

async fn failure_and_cancel_refund_exactly_once(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let failed = env.accepted("please fail").await;
    let cancelled = env.accepted("please cancel").await;
    assert_eq!(env.quota(ALICE).await, QUOTA - 2 * IMAGINE);
    let poller = env.poller(fast_config());
    rounds(&poller, 5).await;
    let failed = env.task(failed.id).await;
    let cancelled = env.task(cancelled.id).await;
    assert_eq!(failed.status, TaskStatus::Failure);
    assert_eq!(cancelled.status, TaskStatus::Cancel);
    assert_eq!(env.quota(ALICE).await, QUOTA, "both refunded");
    assert_eq!(env.refunds().await, 2);
    // Writing either outcome again (a retry, a second instance) refunds nothing more.
    for task in [&failed, &cancelled] {
        let outcome = env.poll_store.write_outcome(task).await.unwrap();
        assert_eq!(outcome, WriteOutcome::Written { refunded: false });
    }
    rounds(&poller, 2).await;
    assert_eq!(env.quota(ALICE).await, QUOTA);
    assert_eq!(env.refunds().await, 2);
}

async fn failed_submits_release_their_reservation(kind: Kind) {
    let Some(env) = Env::with_timeout(kind, Duration::from_millis(800)).await else {
        return;
    };
    env.fake.set_submit_code(Some(24));
    let outcome = env.imagine(ALICE, "banned").await;
    let SubmitOutcome::Rejected { answer } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!((answer.code, answer.result), (24, None));
    env.fake.set_submit_code(None);
    env.fake.set_mode(Mode::Error500);
    let outcome = env.imagine(ALICE, "down").await;
    assert!(
        matches!(outcome, SubmitOutcome::UpstreamUnavailable(_)),
        "{outcome:?}"
    );
    env.fake.set_mode(Mode::Slow(Duration::from_millis(2000)));
    let outcome = env.imagine(ALICE, "slow").await;
    assert!(
        matches!(outcome, SubmitOutcome::UpstreamTimedOut),
        "{outcome:?}"
    );
    env.fake.set_mode(Mode::Normal);
    let outcome = env.imagine(ALICE, "\0").await;
    assert!(matches!(outcome, SubmitOutcome::Invalid(_)), "{outcome:?}");
    env.add_account(2, IMAGINE - 1).await;
    let calls = env.fake.submit_calls();
    let outcome = env.imagine(2, "poor").await;
    assert!(
        matches!(outcome, SubmitOutcome::InsufficientQuota { price: IMAGINE }),
        "{outcome:?}"
    );
    assert_eq!(
        env.fake.submit_calls(),
        calls,
        "refused before the upstream"
    );
    assert_eq!(env.quota(ALICE).await, QUOTA);
    assert_eq!(env.quota(2).await, IMAGINE - 1);
    assert_eq!(env.journaled().await, 0);
    assert_eq!(
        env.store
            .tasks()
            .count(&mj_tasks::TaskQuery::all())
            .await
            .unwrap(),
        0,
        "nothing recorded"
    );
    // No enabled channel: refused before anything is charged.
    let channels = env.store.channels().list_channels().await.unwrap();
    for channel in channels {
        env.store
            .channels()
            .set_channel_enabled(channel.id, false)
            .await
            .unwrap();
    }
    assert!(matches!(
        env.imagine(ALICE, "x").await,
        SubmitOutcome::NoChannel
    ));
    assert_eq!(env.quota(ALICE).await, QUOTA);
}

/// A reservation its submit left behind (the process died during the upstream call) is released
/// by the first round past the timeout, exactly once, by whichever poller gets there first; a
/// settle that arrives after that records the task uncharged.
async fn leftover_reservations_are_released_exactly_once(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let crashed = env
        .reservations
        .reserve(ALICE, IMAGINE)
        .await
        .unwrap()
        .unwrap();
    let late = env.reservations.reserve(ALICE, 7).await.unwrap().unwrap();
    assert_eq!(env.quota(ALICE).await, QUOTA - IMAGINE - 7);
    // Not yet past the timeout: left alone (a live submit may still hold it).
    let stats = env.poller(fast_config()).run_round().await.unwrap();
    assert_eq!(stats.released, 0);
    assert_eq!(env.journaled().await, 2);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let config = PollerConfig {
        reservation_timeout: Duration::from_millis(10),
        ..fast_config()
    };
    let (a, b) = (env.poller(config.clone()), env.poller(config));
    let (ra, rb) = tokio::join!(a.run_round(), b.run_round());
    assert_eq!(ra.unwrap().released + rb.unwrap().released, 2);
    assert_eq!(env.quota(ALICE).await, QUOTA);
    assert_eq!(env.journaled().await, 0);
    assert_eq!(a.run_round().await.unwrap().released, 0);
    assert!(!env.reservations.release(&crashed).await.unwrap());

    // The submit of `late` comes back after all: recorded, charged nothing.
    let task = NewTask::submitted(ALICE, TaskAction::Imagine, "late", "1715249999000009", 1);
    let settled = env.reservations.settle(&late, &task).await.unwrap();
    assert!(!settled.charged);
    assert_eq!(settled.task.quota, 0);
    assert_eq!(env.quota(ALICE).await, QUOTA);
}

/// 2,000 tasks failing upstream, two pollers at once (no lease, small batches so they
/// interleave): every task is failed and refunded exactly once.
async fn two_pollers_refund_each_failure_once(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    const USERS: i64 = 20;
    const PER_USER: i64 = 100;
    const PRICE: i64 = 7;
    let channel = env.store.channels().list_channels().await.unwrap()[0].id;
    let mut rows = Vec::new();
    for user in 100..100 + USERS {
        env.add_account(user, 0).await;
        for n in 0..PER_USER {
            let mj_id = (1_715_000_000_000_000 + user * PER_USER + n).to_string();
            env.fake.insert_at(&mj_id, Outcome::Failure, u32::MAX / 2);
            rows.push(NewTask {
                code: 1,
                user_id: user,
                mj_id,
                submit_time: now_millis(),
                status: TaskStatus::InProgress,
                progress: Progress::new("50%"),
                channel_id: channel,
                quota: PRICE,
                ..NewTask::default()
            });
        }
    }
    env.store.tasks().insert_many(&rows).await.unwrap();
    let config = PollerConfig {
        batch_size: 150,
        chunk_size: 40,
        ..fast_config()
    };
    let (a, b) = (env.poller(config.clone()), env.poller(config));
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(a.run_round(), b.run_round());
        ra.unwrap();
        rb.unwrap();
    }
    let unfinished = env.store.tasks().list_unfinished(0, 10).await.unwrap();
    assert!(unfinished.is_empty(), "{} left", unfinished.len());
    for user in 100..100 + USERS {
        assert_eq!(env.quota(user).await, PER_USER * PRICE, "account {user}");
    }
    assert_eq!(env.refunds().await, USERS * PER_USER);
}

/// Concurrent submits can never overdraw a balance.
async fn concurrent_submits_never_overdraw(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    env.add_account(2, 3 * IMAGINE).await;
    let env = Arc::new(env);
    let mut handles = Vec::new();
    for n in 0..10 {
        let env = env.clone();
        handles.push(tokio::spawn(async move {
            matches!(
                env.imagine(2, &format!("race {n}")).await,
                SubmitOutcome::Accepted { .. }
            )
        }));
    }
    let mut accepted = 0;
    for handle in handles {
        accepted += usize::from(handle.await.unwrap());
    }
    assert_eq!(accepted, 3);
    assert_eq!(env.quota(2).await, 0);
    assert_eq!(env.fake.submit_calls(), 3);
    assert_eq!(env.journaled().await, 0);
}

struct Forwarding;

impl ImagePresenter for Forwarding {
    fn present(&self, task: &Task) -> String {
        format!("https://gateway.example/mj/image/{}?signed", task.mj_id)
    }
}

/// A legacy "task exists" answer (code 21) carries the upstream's raw image address: the client
/// sees the presenter's instead, and the task keeps the raw one for forwarding.
async fn code_21_answers_show_images_through_the_presenter(kind: Kind) {
    let Some(mut env) = Env::new(kind).await else {
        return;
    };
    env.relay = env.relay.clone().with_image_presenter(Arc::new(Forwarding));
    env.fake.set_submit_code(Some(21));
    let SubmitOutcome::Accepted { task, answer } = env.imagine(ALICE, "again").await else {
        panic!("not accepted");
    };
    assert_eq!(answer.code, 1, "21 is normalised for imagine");
    let shown = answer.properties["imageUrl"].as_str().unwrap();
    assert_eq!(
        shown,
        format!("https://gateway.example/mj/image/{}?signed", task.mj_id)
    );
    assert!(!serde_json::to_string(&answer).unwrap().contains("cdn.fake"));
    assert_eq!(
        task.image_url,
        format!("https://cdn.fake/{}.png", task.mj_id)
    );
    let fetched = env.relay.fetch(ALICE, &task.mj_id).await.unwrap().unwrap();
    assert_eq!(fetched.image_url.as_deref(), Some(shown));
    assert_eq!(
        serde_json::to_value(&fetched).unwrap()["properties"],
        Value::Object(Default::default())
    );
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Postgres).await } )*
        }
        mod mysql {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::MySql).await } )*
        }
    };
}

on_every_backend!(
    submit_is_charged_recorded_and_polled_to_success,
    failure_and_cancel_refund_exactly_once,
    failed_submits_release_their_reservation,
    leftover_reservations_are_released_exactly_once,
    two_pollers_refund_each_failure_once,
    concurrent_submits_never_overdraw,
    code_21_answers_show_images_through_the_presenter,
);
