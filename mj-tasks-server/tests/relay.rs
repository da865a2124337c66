//! End-to-end tests of the relay, the poller and billing against a fake midjourney-proxy, on
//! every configured database.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::Duration;

use mj_tasks::{
    Channel, NewChannel, NewTask, Poller, PollerConfig, PollerDeps, Progress, Task, TaskAction,
    TaskStatus, now_millis,
};
use mj_tasks_server::users::{AccessToken, Role, User};
use mj_tasks_server::{App, Settings};
use serde_json::{Value, json};
use test_support::fake_proxy::{FakeProxy, Mode, Outcome};
use test_support::{Kind, TestDb};

const SECRET: &str = "upstream-secret";
const QUOTA: i64 = 1_000_000;
const IMAGINE: i64 = 50_000;

struct Env {
    app: App,
    fake: FakeProxy,
    channel: Channel,
    alice: (User, String),
    _db: TestDb,
}

impl Env {
    async fn new(kind: Kind) -> Option<Self> {
        let db = TestDb::open(kind).await?;
        let mut settings = Settings::with_database_url(db.url());
        settings.poll_interval_secs = 0;
        settings.upstream_timeout_secs = 5;
        let app = App::open(settings).await.unwrap();
        let fake = FakeProxy::start(SECRET).await;
        let channel = app
            .channels
            .add_channel(&NewChannel {
                name: "fake".into(),
                base_url: fake.base_url(),
                secret: SECRET.into(),
            })
            .await
            .unwrap();
        let alice = add_user(&app, "alice", QUOTA).await;
        Some(Self {
            app,
            fake,
            channel,
            alice,
            _db: db,
        })
    }

    fn poller(&self, config: PollerConfig) -> Poller {
        Poller::new(
            PollerDeps {
                tasks: self.app.tasks.clone(),
                channels: self.app.channels.clone(),
                store: self.app.poll_store.clone(),
            },
            config,
        )
        .unwrap()
    }

    fn default_poller(&self) -> Poller {
        self.poller(fast_config())
    }

    async fn quota(&self, name: &str) -> i64 {
        self.app
            .users
            .user_by_name(name)
            .await
            .unwrap()
            .unwrap()
            .quota
    }

    async fn submit(&self, token: &str, kind: &str, body: Value) -> (u16, Value) {
        request(
            &self.app,
            "POST",
            &format!("/mj/submit/{kind}"),
            token,
            Some(body),
        )
        .await
    }

    /// Alice submits an imagine of `prompt`; the upstream's task id.
    async fn imagine(&self, prompt: &str) -> String {
        let (_, body) = self
            .submit(&self.alice.1, "imagine", json!({ "prompt": prompt }))
            .await;
        body["result"].as_str().unwrap().to_owned()
    }

    async fn task(&self, mj_id: &str) -> Task {
        self.app
            .tasks
            .find_by_mj_id(mj_id, None)
            .await
            .unwrap()
            .unwrap()
    }
}

fn fast_config() -> PollerConfig {
    PollerConfig {
        interval: Duration::from_millis(200),
        upstream_timeout: Duration::from_secs(2),
        ..PollerConfig::default()
    }
}

async fn add_user(app: &App, name: &str, quota: i64) -> (User, String) {
    let token = AccessToken::generate();
    let user = app
        .users
        .create_user(name, Role::User, quota, &token.hash())
        .await
        .unwrap();
    (user, token.reveal().to_owned())
}

async fn request(
    app: &App,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = warp::test::request().method(method).path(path);
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .reply(&mj_tasks_server::http::routes(app.clone()))
        .await;
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

async fn rounds(poller: &Poller, n: usize) {
    for _ in 0..n {
        poller.run_round().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------

async fn submit_poll_success(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let (status, body) = env
        .submit(
            &env.alice.1,
            "imagine",
            json!({"prompt": "a red fox", "notifyHook": "http://evil"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], 1);
    let mj_id = body["result"].as_str().unwrap().to_owned();
    assert_eq!(env.quota("alice").await, QUOTA - IMAGINE);
    let task = env.task(&mj_id).await;
    assert_eq!(
        (task.status.clone(), task.progress.as_str(), task.quota),
        (TaskStatus::NotStart, "0%", IMAGINE)
    );
    let submit_time = task.submit_time;
    assert!((now_millis() - submit_time).abs() < 60_000);

    let poller = env.default_poller();
    poller.run_round().await.unwrap();
    assert_eq!(env.task(&mj_id).await.status, TaskStatus::Submitted);
    rounds(&poller, 3).await;
    let task = env.task(&mj_id).await;
    assert_eq!(task.status, TaskStatus::Success);
    assert_eq!(task.progress.as_str(), "100%");
    assert_eq!(task.image_url, format!("https://cdn.fake/{mj_id}.png"));
    assert_eq!(
        task.submit_time, submit_time,
        "our submit time is never replaced"
    );
    assert!(task.start_time > 0 && task.finish_time > 0);
    assert_eq!(
        env.quota("alice").await,
        QUOTA - IMAGINE,
        "success keeps the charge"
    );

    // The relay fetch and list-by-condition serve it from our database, camelCase.
    let (status, fetched) = request(
        &env.app,
        "GET",
        &format!("/mj/task/{mj_id}/fetch"),
        &env.alice.1,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fetched["id"], mj_id.as_str());
    assert_eq!(fetched["status"], "SUCCESS");
    // Forwarding is on by default: the upstream address stays hidden behind a signed URL.
    let image_url = fetched["imageUrl"].as_str().unwrap();
    let forwarded = format!("{}/mj/image/{mj_id}?", env.app.settings.public_base_url());
    assert!(image_url.starts_with(&forwarded), "{image_url}");
    assert!(!image_url.contains("cdn.fake"));
    assert_eq!(fetched["submitTime"], submit_time);
    assert!(fetched["buttons"].is_array() && fetched["properties"].is_object());
    let (status, listed) = request(
        &env.app,
        "POST",
        "/mj/task/list-by-condition",
        &env.alice.1,
        Some(json!({"ids": [mj_id, "unknown"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["imageUrl"], fetched["imageUrl"]);

    // A finished task is never read again: further rounds ask nothing.
    let calls = env.fake.list_calls();
    let stats = poller.run_round().await.unwrap();
    assert_eq!((stats.scanned, env.fake.list_calls()), (0, calls));

    // Another user sees nothing of it.
    let bob = add_user(&env.app, "bob", 0).await;
    let (status, _) = request(
        &env.app,
        "GET",
        &format!("/mj/task/{mj_id}/fetch"),
        &bob.1,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, listed) = request(
        &env.app,
        "POST",
        "/mj/task/list-by-condition",
        &bob.1,
        Some(json!({"ids": [mj_id]})),
    )
    .await;
    assert_eq!(listed, json!([]));
    // Actions on someone else's task are refused before any charge.
    let (status, body) = env
        .submit(
            &bob.1,
            "change",
            json!({"taskId": mj_id, "action": "UPSCALE", "index": 1}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(3)));

    // Alice's upscale stays on the origin channel and is charged its own price.
    let (status, body) = env
        .submit(
            &env.alice.1,
            "action",
            json!({"taskId": mj_id, "customId": "MJ::JOB::upsample::1::abc"}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(1)), "{body}");
    let upscale = env.task(body["result"].as_str().unwrap()).await;
    assert_eq!(
        (upscale.action.clone(), upscale.channel_id, upscale.quota),
        (TaskAction::Upscale, env.channel.id, 25_000)
    );
    assert_eq!(upscale.prompt, "a red fox");
}

async fn failure_refunds_exactly_once(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let mj_id = env.imagine("please fail").await;
    assert_eq!(env.quota("alice").await, QUOTA - IMAGINE);
    let poller = env.default_poller();
    rounds(&poller, 5).await;
    let task = env.task(&mj_id).await;
    assert_eq!(task.status, TaskStatus::Failure);
    assert_eq!(task.progress.as_str(), "100%");
    assert_eq!(task.fail_reason, "[Banned prompt] fake failure");
    assert_eq!(env.quota("alice").await, QUOTA, "refunded");
    // Writing the failure again (a retry, a second instance) refunds nothing more.
    let outcome = env.app.poll_store.write_outcome(&task).await.unwrap();
    assert_eq!(outcome, mj_tasks::WriteOutcome::Written { refunded: false });
    rounds(&poller, 2).await;
    assert_eq!(env.quota("alice").await, QUOTA);
}

async fn outage_then_recovery(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let mj_id = env.imagine("outage").await;
    let before = env.task(&mj_id).await;
    let mut config = fast_config();
    config.interval = Duration::from_millis(1); // backoff of a few ms: every round retries
    config.upstream_timeout = Duration::from_millis(300);
    let poller = env.poller(config);
    for mode in [
        Mode::Error500,
        Mode::Garbage,
        Mode::Slow(Duration::from_secs(2)),
    ] {
        env.fake.set_mode(mode);
        let stats = poller.run_round().await.unwrap();
        assert_eq!((stats.written, stats.channel_errors), (0, 1), "{mode:?}");
        assert_eq!(env.task(&mj_id).await, before, "{mode:?}: untouched");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.fake.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(20)).await;
    rounds(&poller, 5).await;
    assert_eq!(env.task(&mj_id).await.status, TaskStatus::Success);
    assert_eq!(env.quota("alice").await, QUOTA - IMAGINE);
}

async fn timeout_fails_and_refunds(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    // Stuck upstream: still listed, never finishing.
    let stuck = env.imagine("stuck forever").await;
    // Forgotten by the upstream (restart).
    let forgotten = env.imagine("forget me").await;
    assert_eq!(env.quota("alice").await, QUOTA - 2 * IMAGINE);

    let poller = env.default_poller();
    rounds(&poller, 4).await;
    assert_eq!(env.task(&stuck).await.status, TaskStatus::InProgress);
    assert_eq!(
        env.task(&forgotten).await.status,
        TaskStatus::NotStart,
        "missing before the deadline: untouched"
    );

    let mut config = fast_config();
    config.task_timeout = Duration::from_millis(1);
    let late = env.poller(config);
    tokio::time::sleep(Duration::from_millis(5)).await;
    late.run_round().await.unwrap();
    for mj_id in [&stuck, &forgotten] {
        let task = env.task(mj_id).await;
        assert_eq!(task.status, TaskStatus::Failure);
        assert_eq!(task.fail_reason, mj_tasks::poller::REASON_TIMEOUT);
        assert_eq!(task.progress.as_str(), "100%");
    }
    assert_eq!(env.quota("alice").await, QUOTA);
}

async fn duplicate_mj_id_rows_all_update(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let mj_id = "1715249999000001";
    env.fake.insert(mj_id, Outcome::Success);
    let row = NewTask {
        code: 1,
        user_id: env.alice.0.id,
        mj_id: mj_id.into(),
        prompt: "dup".into(),
        submit_time: now_millis(),
        status: TaskStatus::Submitted,
        progress: Progress::zero(),
        channel_id: env.channel.id,
        quota: 10,
        ..NewTask::default()
    };
    let a = env.app.tasks.insert(&row).await.unwrap();
    let b = env.app.tasks.insert(&row).await.unwrap();
    rounds(&env.default_poller(), 4).await;
    for id in [a.id, b.id] {
        let task = env.app.tasks.get(id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Success, "row {id}");
    }
}

async fn unpollable_tasks_fail_with_refund(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let disabled = env
        .app
        .channels
        .add_channel(&NewChannel {
            name: "off".into(),
            base_url: env.fake.base_url(),
            secret: SECRET.into(),
        })
        .await
        .unwrap();
    env.app
        .channels
        .set_channel_enabled(disabled.id, false)
        .await
        .unwrap();
    let base = NewTask {
        user_id: env.alice.0.id,
        submit_time: now_millis(),
        status: TaskStatus::Submitted,
        progress: Progress::zero(),
        quota: 100,
        ..NewTask::default()
    };
    let cases = [
        (
            NewTask {
                mj_id: String::new(),
                channel_id: env.channel.id,
                ..base.clone()
            },
            mj_tasks::poller::REASON_NO_MJ_ID,
        ),
        (
            NewTask {
                mj_id: "1".into(),
                channel_id: 999,
                ..base.clone()
            },
            mj_tasks::poller::REASON_CHANNEL_GONE,
        ),
        (
            NewTask {
                mj_id: "2".into(),
                channel_id: disabled.id,
                ..base.clone()
            },
            mj_tasks::poller::REASON_CHANNEL_DISABLED,
        ),
        // Never charged: fails, gets nothing back.
        (
            NewTask {
                mj_id: String::new(),
                channel_id: env.channel.id,
                quota: 0,
                ..base.clone()
            },
            mj_tasks::poller::REASON_NO_MJ_ID,
        ),
    ];
    let mut ids = Vec::new();
    for (task, _) in &cases {
        ids.push(env.app.tasks.insert(task).await.unwrap().id);
    }
    let stats = env.default_poller().run_round().await.unwrap();
    assert_eq!((stats.failed, stats.refunded), (4, 3));
    for (id, (_, reason)) in ids.iter().zip(&cases) {
        let task = env.app.tasks.get(*id).await.unwrap().unwrap();
        assert_eq!(
            (task.status.clone(), task.fail_reason.as_str()),
            (TaskStatus::Failure, *reason)
        );
    }
    assert_eq!(env.quota("alice").await, QUOTA + 300);
}

async fn rejected_and_failed_submits_charge_nothing(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    // Rejected upstream (banned prompt): the answer as given, nothing charged, nothing recorded.
    env.fake.set_submit_code(Some(24));
    let (status, body) = env
        .submit(&env.alice.1, "imagine", json!({"prompt": "banned"}))
        .await;
    assert_eq!(
        (status, body["code"].as_i64(), body["result"].clone()),
        (200, Some(24), Value::Null)
    );
    // Queued (22) is accepted and normalised to 1.
    env.fake.set_submit_code(Some(22));
    let (_, body) = env
        .submit(&env.alice.1, "imagine", json!({"prompt": "queued"}))
        .await;
    assert_eq!(body["code"], 1);
    assert!(body["description"].as_str().unwrap().contains("排队"));
    env.fake.set_submit_code(None);
    assert_eq!(env.quota("alice").await, QUOTA - IMAGINE);
    // Upstream down: 502, nothing charged.
    env.fake.set_mode(Mode::Error500);
    let (status, body) = env
        .submit(&env.alice.1, "imagine", json!({"prompt": "down"}))
        .await;
    assert_eq!((status, body["code"].as_i64()), (502, Some(5)));
    env.fake.set_mode(Mode::Normal);
    assert_eq!(env.quota("alice").await, QUOTA - IMAGINE);
    // Bad bodies: code 4, no upstream call.
    let calls = env.fake.submit_calls();
    for (kind, body) in [
        ("imagine", json!({"prompt": ""})),
        ("imagine", json!([1, 2])),
        ("change", json!({"taskId": "x", "action": null})),
        ("simple-change", json!({"content": "💥💥 U9"})),
        ("action", json!({"taskId": "x", "customId": 42})),
        ("blend", json!({"base64Array": ["a"]})),
    ] {
        let (status, answer) = env.submit(&env.alice.1, kind, body).await;
        assert_eq!(
            (status, answer["code"].as_i64()),
            (400, Some(4)),
            "{kind}: {answer}"
        );
    }
    assert_eq!(env.fake.submit_calls(), calls);
    // Auth: mj-api-secret works; nothing or a bad token is a 401.
    let response = warp::test::request()
        .method("POST")
        .path("/mj/submit/imagine")
        .header("mj-api-secret", &env.alice.1)
        .body(json!({"prompt": "via header"}).to_string())
        .reply(&mj_tasks_server::http::routes(env.app.clone()))
        .await;
    assert_eq!(response.status(), 200);
    let (status, _) = env.submit("", "imagine", json!({"prompt": "x"})).await;
    assert_eq!(status, 401);
    let (status, _) = env.submit("nope", "imagine", json!({"prompt": "x"})).await;
    assert_eq!(status, 401);
    // Insufficient quota: clear error, no upstream call.
    let poor = add_user(&env.app, "poor", IMAGINE - 1).await;
    let calls = env.fake.submit_calls();
    let (status, body) = env.submit(&poor.1, "imagine", json!({"prompt": "x"})).await;
    assert_eq!((status, body["code"].as_i64()), (402, Some(4)));
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("Insufficient quota")
    );
    assert_eq!(env.fake.submit_calls(), calls);
}

async fn concurrent_submits_never_overdraw(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let edge = add_user(&env.app, "edge", 3 * IMAGINE).await;
    let env = Arc::new(env);
    let mut handles = Vec::new();
    for n in 0..10 {
        let env = env.clone();
        let token = edge.1.clone();
        handles.push(tokio::spawn(async move {
            env.submit(&token, "imagine", json!({"prompt": format!("race {n}")}))
                .await
                .0
        }));
    }
    let mut accepted = 0;
    for handle in handles {
        if handle.await.unwrap() == 200 {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(env.quota("edge").await, 0);
    assert_eq!(env.fake.submit_calls(), 3);
}

/// 2,000 tasks failing upstream, two pollers at once (no lease, small batches so they
/// interleave): every task is failed and refunded exactly once.
async fn two_pollers_refund_each_failure_once(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    const USERS: usize = 20;
    const PER_USER: usize = 100;
    const PRICE: i64 = 7;
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(add_user(&env.app, &format!("u{u}"), 0).await.0);
    }
    let mut rows = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for n in 0..PER_USER {
            let mj_id = format!("{}", 1_715_000_000_000_000u64 + (u * PER_USER + n) as u64);
            env.fake.insert_at(&mj_id, Outcome::Failure, u32::MAX / 2);
            rows.push(NewTask {
                code: 1,
                user_id: user.id,
                mj_id,
                submit_time: now_millis(),
                status: TaskStatus::InProgress,
                progress: Progress::new("50%"),
                channel_id: env.channel.id,
                quota: PRICE,
                ..NewTask::default()
            });
        }
    }
    env.app.tasks.insert_many(&rows).await.unwrap();
    let config = PollerConfig {
        batch_size: 150,
        chunk_size: 40,
        ..fast_config()
    };
    let (a, b) = (env.poller(config.clone()), env.poller(config));
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(a.run_round(), b.run_round());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        eprintln!("a: {ra:?}\nb: {rb:?}");
    }
    let unfinished = env.app.tasks.list_unfinished(0, 10).await.unwrap();
    assert!(unfinished.is_empty(), "{} left", unfinished.len());
    let mut total = 0;
    for user in &users {
        let quota = env.quota(&user.username).await;
        assert_eq!(quota, PER_USER as i64 * PRICE, "{}", user.username);
        total += quota;
    }
    assert_eq!(total, (USERS * PER_USER) as i64 * PRICE);
}

/// With the lease, one of two instances polls; the other takes over once the lease expires.
async fn lease_lets_one_instance_poll(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    // Work to do: an idle round needs no lease.
    env.submit(
        &env.alice.1,
        "imagine",
        json!({"prompt": "stuck for the lease test"}),
    )
    .await;
    let config = |holder: &str| PollerConfig {
        use_lease: true,
        holder: holder.to_owned(),
        interval: Duration::from_millis(500), // lease TTL: the 2 s minimum
        ..fast_config()
    };
    let (a, b) = (env.poller(config("a")), env.poller(config("b")));
    let (ra, rb) = tokio::join!(a.run_round(), b.run_round());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.ran ^ rb.ran, "exactly one polls: {ra:?} {rb:?}");
    let (holder, other) = if ra.ran { (&a, &b) } else { (&b, &a) };
    assert!(holder.run_round().await.unwrap().ran, "the holder renews");
    assert!(!other.run_round().await.unwrap().ran);
    // The holder dies (stops renewing): taken over after the TTL.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(other.run_round().await.unwrap().ran);
    assert!(!holder.run_round().await.unwrap().ran);
    // A graceful stop releases the lease at once.
    let handle = other.clone().spawn();
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.stop().await;
    assert!(holder.run_round().await.unwrap().ran);
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
    submit_poll_success,
    failure_refunds_exactly_once,
    outage_then_recovery,
    timeout_fails_and_refunds,
    duplicate_mj_id_rows_all_update,
    unpollable_tasks_fail_with_refund,
    rejected_and_failed_submits_charge_nothing,
    concurrent_submits_never_overdraw,
    two_pollers_refund_each_failure_once,
    lease_lets_one_instance_poll,
);

/// The library's client against the fake: empty 200 for an unknown task, 401 with an empty
/// body, 500, garbage, slowness, answers out of order and with ids left out.
#[tokio::test]
async fn upstream_client_tolerates_the_real_quirks() {
    use mj_tasks::{SubmitKind, UpstreamClient, UpstreamError};
    let fake = FakeProxy::start(SECRET).await;
    let channel = |secret: &str| Channel {
        id: 1,
        name: "fake".into(),
        base_url: format!("{}/", fake.base_url()),
        secret: secret.into(),
        enabled: true,
        created_at: 0,
    };
    let client = UpstreamClient::new(Duration::from_millis(500)).unwrap();
    let good = channel(SECRET);
    let submitted = client
        .submit(&good, SubmitKind::Imagine, &json!({"prompt": "quirks"}))
        .await
        .unwrap();
    assert!(submitted.is_accepted());
    let id = submitted.task_id().unwrap().to_owned();
    let rejected = client
        .submit(&good, SubmitKind::Imagine, &json!({"prompt": " "}))
        .await
        .unwrap();
    assert_eq!((rejected.code, rejected.is_accepted()), (4, false));

    let fetched = client.fetch(&good, &id).await.unwrap().unwrap();
    assert_eq!(
        (fetched.id.as_str(), fetched.status.clone()),
        (id.as_str(), Some(TaskStatus::NotStart))
    );
    assert_eq!(fetched.progress, None, "null progress while NOT_START");
    assert!(
        client.fetch(&good, "404404").await.unwrap().is_none(),
        "empty 200 body"
    );

    fake.insert("2", Outcome::Success);
    let listed = client
        .list_by_condition(&good, &[id.clone(), "unknown".into(), "2".into()])
        .await
        .unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    let mut expected = vec!["2", id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    assert!(matches!(
        client
            .list_by_condition(&channel("wrong"), std::slice::from_ref(&id))
            .await,
        Err(UpstreamError::Unauthorized)
    ));
    fake.set_mode(Mode::Error500);
    assert!(matches!(
        client
            .list_by_condition(&good, std::slice::from_ref(&id))
            .await,
        Err(UpstreamError::Status(500))
    ));
    assert!(matches!(
        client.fetch(&good, &id).await,
        Err(UpstreamError::Status(500))
    ));
    fake.set_mode(Mode::Garbage);
    assert!(matches!(
        client
            .list_by_condition(&good, std::slice::from_ref(&id))
            .await,
        Err(UpstreamError::InvalidBody(_))
    ));
    assert!(matches!(
        client
            .submit(&good, SubmitKind::Imagine, &json!({"prompt": "x"}))
            .await,
        Err(UpstreamError::InvalidBody(_))
    ));
    fake.set_mode(Mode::Slow(Duration::from_secs(3)));
    let error = client
        .list_by_condition(&good, std::slice::from_ref(&id))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    // Nothing listens here: unreachable, quickly.
    let dead = Channel {
        base_url: "http://127.0.0.1:1".into(),
        ..good.clone()
    };
    assert!(matches!(
        client.fetch(&dead, &id).await,
        Err(UpstreamError::Unreachable(_))
    ));
}

/// The real server through a real listener: `serve` starts the poller (interval 1 s) and stops
/// it on shutdown; a submitted task reaches SUCCESS without any test-driven round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_app_polls_in_the_background() {
    let db = TestDb::sqlite();
    let mut settings = Settings::with_database_url(db.url());
    settings.poll_interval_secs = 1;
    let app = App::open(settings).await.unwrap();
    let fake = FakeProxy::start_with_steps(SECRET, 2).await;
    app.channels
        .add_channel(&NewChannel {
            name: "fake".into(),
            base_url: fake.base_url(),
            secret: SECRET.into(),
        })
        .await
        .unwrap();
    let (_, token) = add_user(&app, "alice", QUOTA).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mj_tasks_server::serve(app, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let submitted: Value = client
        .post(format!("http://{address}/mj/submit/imagine"))
        .header("mj-api-secret", &token)
        .json(&json!({"prompt": "served"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mj_id = submitted["result"].as_str().unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..100 {
        let task: Value = client
            .get(format!("http://{address}/mj/task/{mj_id}/fetch"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = task["status"].as_str().unwrap_or("").to_owned();
        if status == "SUCCESS" {
            assert_eq!(task["progress"], "100%");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "SUCCESS");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// An upstream slower than `--upstream-timeout-secs`: 504, nothing charged, nothing recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_submit_is_a_504_without_charge() {
    let Some(mut env) = Env::new(Kind::Sqlite).await else {
        return;
    };
    let mut settings = (*env.app.settings).clone();
    settings.upstream_timeout_secs = 1;
    env.app = App::open(settings).await.unwrap();
    env.fake.set_mode(Mode::Slow(Duration::from_millis(2500)));
    let (status, body) = env
        .submit(&env.alice.1, "imagine", json!({"prompt": "slow"}))
        .await;
    assert_eq!((status, body["code"].as_i64()), (504, Some(5)), "{body}");
    assert_eq!(env.quota("alice").await, QUOTA);
    assert_eq!(
        env.app
            .tasks
            .count(&mj_tasks::TaskQuery::all())
            .await
            .unwrap(),
        0
    );
}

/// A slow channel never holds up a healthy one: the healthy channel's tasks are all brought up to
/// date in the round, the slow one's overflow is deferred to the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_channel_never_holds_up_the_others() {
    let Some(env) = Env::new(Kind::Sqlite).await else {
        return;
    };
    let slow_fake = FakeProxy::start(SECRET).await;
    slow_fake.set_mode(Mode::Slow(Duration::from_millis(600)));
    let slow = env
        .app
        .channels
        .add_channel(&NewChannel {
            name: "slow".into(),
            base_url: slow_fake.base_url(),
            secret: SECRET.into(),
        })
        .await
        .unwrap();
    let mut rows = Vec::new();
    for n in 0..120u64 {
        let (fake, channel_id) = if n % 2 == 0 {
            (&env.fake, env.channel.id)
        } else {
            (&slow_fake, slow.id)
        };
        let mj_id = (1_716_000_000_000_000 + n).to_string();
        fake.insert(&mj_id, Outcome::Success);
        rows.push(NewTask {
            code: 1,
            user_id: env.alice.0.id,
            mj_id,
            submit_time: now_millis(),
            status: TaskStatus::NotStart,
            progress: Progress::zero(),
            channel_id,
            ..NewTask::default()
        });
    }
    env.app.tasks.insert_many(&rows).await.unwrap();
    let poller = env.poller(PollerConfig {
        batch_size: 10,
        slow_channel_wait: Duration::from_millis(100),
        upstream_timeout: Duration::from_secs(5),
        ..fast_config()
    });
    let stats = poller.run_round().await.unwrap();
    assert!(stats.deferred > 0, "{stats:?}");
    assert_eq!(stats.channel_errors, 0, "{stats:?}");
    let mut fast_updated = 0;
    let mut slow_updated = 0;
    for row in &rows {
        let task = env.task(&row.mj_id).await;
        if task.status != TaskStatus::NotStart {
            if row.channel_id == env.channel.id {
                fast_updated += 1;
            } else {
                slow_updated += 1;
            }
        }
    }
    assert_eq!(fast_updated, 60, "{stats:?}");
    assert!(
        slow_updated < 60 && slow_updated > 0,
        "{slow_updated} {stats:?}"
    );
}
