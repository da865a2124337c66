//! HTTP tests of every route and every auth and bad-input case of the contract, through warp's
//! test client on the real route tree, plus end-to-end runs through a real listener on each
//! configured database.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use mj_tasks::{NewTask, Progress, TaskAction, TaskStatus};
use mj_tasks_server::users::{AccessToken, Role, User};
use mj_tasks_server::{App, Settings};
use proptest::prelude::*;
use serde_json::Value;
use test_support::{Kind, TestDb};

struct Fixture {
    app: App,
    _db: TestDb,
    alice: (User, String), // user, 3 tasks
    bob: (User, String),   // user, 2 tasks
    admin: (User, String),
    root: (User, String),
}

async fn add_user(app: &App, name: &str, role: Role) -> (User, String) {
    let token = AccessToken::generate();
    let user = app
        .users
        .create_user(name, role, 0, &token.hash())
        .await
        .unwrap();
    (user, token.reveal().to_owned())
}

fn task(user_id: i64, n: i64) -> NewTask {
    NewTask {
        code: 1,
        user_id,
        action: TaskAction::Imagine,
        mj_id: format!("mj-{user_id}-{n}"),
        prompt: format!("猫 {n}"),
        submit_time: 1_640_908_800_000 + n * 3_600_000,
        status: TaskStatus::Success,
        progress: Progress::complete(),
        image_url: format!("https://cdn.example/{user_id}/{n}.png"),
        channel_id: 5,
        quota: 1000,
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    }
}

async fn fixture_on(db: TestDb) -> Fixture {
    let app = App::open(Settings::with_database_url(db.url()))
        .await
        .unwrap();
    let alice = add_user(&app, "alice", Role::User).await;
    let bob = add_user(&app, "bob", Role::User).await;
    let admin = add_user(&app, "admin", Role::Admin).await;
    let root = add_user(&app, "root", Role::Root).await;
    for n in 0..3 {
        app.tasks.insert(&task(alice.0.id, n)).await.unwrap();
    }
    for n in 0..2 {
        app.tasks.insert(&task(bob.0.id, n)).await.unwrap();
    }
    Fixture {
        app,
        _db: db,
        alice,
        bob,
        admin,
        root,
    }
}

async fn fixture() -> Fixture {
    fixture_on(TestDb::sqlite()).await
}

async fn get(app: &App, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = warp::test::request().method("GET").path(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .reply(&mj_tasks_server::http::routes(app.clone()))
        .await;
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn health_is_ok() {
    let f = fixture().await;
    let (status, body) = get(&f.app, "/healthz", &[]).await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
}

#[tokio::test]
async fn token_checks() {
    let f = fixture().await;
    let alice = bearer(&f.alice.1);
    let lower = format!("bearer {}", f.alice.1);
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![], 401),
        (vec![("authorization", "")], 401),
        (vec![("authorization", "Bearer ")], 401),
        (vec![("authorization", "Bearer not-a-token")], 401),
        (vec![("authorization", "not-a-token")], 401),
        (vec![("authorization", &alice)], 200),
        (vec![("authorization", &f.alice.1)], 200),
        (vec![("authorization", &lower)], 200),
    ];
    for (headers, expected) in cases {
        let (status, body) = get(&f.app, "/api/mj/self", &headers).await;
        assert_eq!(status, expected, "{headers:?}: {body}");
        assert_eq!(body["success"], expected == 200);
        if expected != 200 {
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}

#[tokio::test]
async fn new_api_user_header() {
    let f = fixture().await;
    let alice = bearer(&f.alice.1);
    let own_id = f.alice.0.id.to_string();
    let other_id = f.bob.0.id.to_string();
    for (value, expected) in [
        (own_id.as_str(), 200),
        (other_id.as_str(), 401),
        ("abc", 401),
        ("", 401),
    ] {
        let (status, _) = get(
            &f.app,
            "/api/mj/self",
            &[("authorization", &alice), ("new-api-user", value)],
        )
        .await;
        assert_eq!(status, expected, "New-Api-User: {value:?}");
    }
}

#[tokio::test]
async fn disabled_user_is_refused_at_once() {
    let f = fixture().await;
    let alice = bearer(&f.alice.1);
    assert_eq!(
        get(&f.app, "/api/mj/self", &[("authorization", &alice)])
            .await
            .0,
        200
    );
    f.app.users.set_enabled("alice", false).await.unwrap();
    let (status, body) = get(&f.app, "/api/mj/self", &[("authorization", &alice)]).await;
    assert_eq!(status, 403, "{body}");
    f.app.users.set_enabled("alice", true).await.unwrap();
    assert_eq!(
        get(&f.app, "/api/mj/self", &[("authorization", &alice)])
            .await
            .0,
        200
    );
    // A rotated token stops the old one.
    f.app
        .users
        .set_token_hash("alice", &AccessToken::generate().hash())
        .await
        .unwrap();
    assert_eq!(
        get(&f.app, "/api/mj/self", &[("authorization", &alice)])
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn admin_route_roles_and_both_paths() {
    let f = fixture().await;
    for path in ["/api/mj/", "/api/mj"] {
        let (status, _) = get(&f.app, path, &[("authorization", &bearer(&f.alice.1))]).await;
        assert_eq!(status, 403, "user on {path}");
        for token in [&f.admin.1, &f.root.1] {
            let (status, body) = get(&f.app, path, &[("authorization", &bearer(token))]).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["data"]["total"], 5);
            let item = &body["data"]["items"][0];
            assert!(
                item["user_id"].is_i64() && item["channel_id"] == 5,
                "{item}"
            );
        }
    }
    // Admins see their own (empty) list on /self too.
    let (status, body) = get(
        &f.app,
        "/api/mj/self",
        &[("authorization", &bearer(&f.admin.1))],
    )
    .await;
    assert_eq!((status, body["data"]["total"].as_i64()), (200, Some(0)));
}

#[tokio::test]
async fn users_see_only_their_own_tasks() {
    let f = fixture().await;
    let alice = bearer(&f.alice.1);
    let (status, body) = get(&f.app, "/api/mj/self", &[("authorization", &alice)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "");
    let data = &body["data"];
    assert_eq!(
        (
            data["total"].as_i64(),
            data["page"].as_i64(),
            data["page_size"].as_i64()
        ),
        (Some(3), Some(1), Some(20))
    );
    let items = data["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let ids: Vec<i64> = items.iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for item in items {
        assert!(
            item.get("user_id").is_none() && item.get("channel_id").is_none(),
            "{item}"
        );
        for key in [
            "mj_id",
            "action",
            "prompt",
            "prompt_en",
            "description",
            "state",
            "status",
            "progress",
            "image_url",
            "video_url",
            "video_urls",
            "fail_reason",
            "buttons",
            "properties",
        ] {
            assert!(item[key].is_string(), "{key} in {item}");
        }
        for key in ["id", "submit_time", "start_time", "finish_time", "quota"] {
            assert!(item[key].is_i64(), "{key} in {item}");
        }
        assert!(
            item["mj_id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("mj-{}-", f.alice.0.id))
        );
    }
    assert_eq!(items[0]["prompt"], "猫 2");
    // Another user's mj_id is simply not found.
    let path = format!("/api/mj/self?mj_id=mj-{}-0", f.bob.0.id);
    let (status, body) = get(&f.app, &path, &[("authorization", &alice)]).await;
    assert_eq!((status, body["data"]["total"].as_i64()), (200, Some(0)));
    assert_eq!(body["data"]["items"], serde_json::json!([]));
    // channel_id is ignored on /self, even when malformed.
    let (status, body) = get(
        &f.app,
        "/api/mj/self?channel_id=abc",
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!((status, body["data"]["total"].as_i64()), (200, Some(3)));
}

#[tokio::test]
async fn filters_and_pagination() {
    let f = fixture().await;
    let alice = bearer(&f.alice.1);
    let admin = bearer(&f.admin.1);
    let total = |body: &Value| body["data"]["total"].as_i64();
    // Seconds and milliseconds: tasks are at t0, t0+1h, t0+2h.
    let (_, body) = get(
        &f.app,
        "/api/mj/self?start_timestamp=1640912400&end_timestamp=1640916000000",
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(total(&body), Some(2));
    let (_, body) = get(
        &f.app,
        "/api/mj/self?start_timestamp=&end_timestamp=",
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(total(&body), Some(3));
    let (_, body) = get(
        &f.app,
        &format!("/api/mj/self?mj_id=mj-{}-1", f.alice.0.id),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(total(&body), Some(1));
    let (_, body) = get(
        &f.app,
        "/api/mj/?channel_id=5",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(total(&body), Some(5));
    let (_, body) = get(
        &f.app,
        "/api/mj/?channel_id=6",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(total(&body), Some(0));
    // Pages.
    let (_, body) = get(
        &f.app,
        "/api/mj/?p=2&page_size=2",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(body["data"]["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        (
            body["data"]["page"].as_i64(),
            body["data"]["page_size"].as_i64()
        ),
        (Some(2), Some(2))
    );
    let (_, body) = get(&f.app, "/api/mj/?ps=4", &[("authorization", &admin)]).await;
    assert_eq!(body["data"]["items"].as_array().map(Vec::len), Some(4));
    let (_, body) = get(
        &f.app,
        "/api/mj/?p=0&page_size=0",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(
        (
            body["data"]["page"].as_i64(),
            body["data"]["page_size"].as_i64()
        ),
        (Some(1), Some(20))
    );
    let (_, body) = get(
        &f.app,
        "/api/mj/?page_size=5000",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(body["data"]["page_size"].as_i64(), Some(100));
    for p in ["99", "999999999999", "99999999999999999999999999"] {
        let (status, body) = get(
            &f.app,
            &format!("/api/mj/?p={p}"),
            &[("authorization", &admin)],
        )
        .await;
        assert_eq!(status, 200, "p={p}");
        assert_eq!(
            (body["data"]["items"].clone(), total(&body)),
            (serde_json::json!([]), Some(5))
        );
    }
}

/// `status`, `action` and (admin) `user_id` filter both routes; `next_cursor` walks a list
/// page by page, `null` on the last page, and a cursor of another list is a 400.
#[tokio::test]
async fn status_action_user_filters_and_cursors() {
    let f = fixture().await;
    let mut failed = task(f.alice.0.id, 10);
    failed.status = TaskStatus::Failure;
    failed.action = TaskAction::Upscale;
    f.app.tasks.insert(&failed).await.unwrap();
    let alice = bearer(&f.alice.1);
    let admin = bearer(&f.admin.1);
    let total = |body: &Value| body["data"]["total"].as_i64();
    for (path, token, expected) in [
        ("/api/mj/self?status=FAILURE", &alice, 1),
        ("/api/mj/self?status=SUCCESS&action=IMAGINE", &alice, 3),
        ("/api/mj/self?action=UPSCALE&user_id=999999", &alice, 1),
        ("/api/mj/?status=NOT_A_STATUS", &admin, 0),
        ("/api/mj/?action=UPSCALE", &admin, 1),
        ("/api/mj/?status=SUCCESS&channel_id=5", &admin, 5),
        ("/api/mj/?mj_id=%00", &admin, 0),
    ] {
        let (status, body) = get(&f.app, path, &[("authorization", token)]).await;
        assert_eq!((status, total(&body)), (200, Some(expected)), "{path}");
    }
    let bob_only = format!("/api/mj/?user_id={}", f.bob.0.id);
    let (_, body) = get(&f.app, &bob_only, &[("authorization", &admin)]).await;
    assert_eq!(total(&body), Some(2));
    assert!(
        body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["user_id"] == f.bob.0.id)
    );

    // A cursor walk over alice's four tasks, two at a time.
    let (_, first) = get(
        &f.app,
        "/api/mj/self?page_size=2",
        &[("authorization", &alice)],
    )
    .await;
    let cursor = first["data"]["next_cursor"].as_str().unwrap().to_owned();
    let (status, second) = get(
        &f.app,
        &format!("/api/mj/self?page_size=2&p=40&cursor={cursor}"),
        &[("authorization", &alice)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (total(&second), second["data"]["page"].as_i64()),
        (Some(4), Some(2))
    );
    assert_eq!(second["data"]["next_cursor"], Value::Null, "last page");
    let walked: Vec<i64> = [&first, &second]
        .iter()
        .flat_map(|body| body["data"]["items"].as_array().unwrap().clone())
        .map(|item| item["id"].as_i64().unwrap())
        .collect();
    assert_eq!(walked.len(), 4);
    assert!(walked.windows(2).all(|pair| pair[0] > pair[1]));
    // The same cursor on another list (other filters, other owner) is refused.
    for (path, token) in [
        (
            format!("/api/mj/self?status=SUCCESS&cursor={cursor}"),
            &alice,
        ),
        (format!("/api/mj/?cursor={cursor}"), &admin),
    ] {
        let (status, body) = get(&f.app, &path, &[("authorization", token)]).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["message"].as_str().unwrap().contains("`cursor`"));
    }
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_parameter() {
    let f = fixture().await;
    let admin = bearer(&f.admin.1);
    for (query, parameter) in [
        ("p=abc", "p"),
        ("end_timestamp=NaN", "end_timestamp"),
        ("start_timestamp=1.5", "start_timestamp"),
        ("page_size=-1", "page_size"),
        ("ps=-5", "ps"),
        ("page_size=ten", "page_size"),
        ("channel_id=abc", "channel_id"),
        ("user_id=abc", "user_id"),
        ("cursor=zz", "cursor"),
        ("cursor=00", "cursor"),
    ] {
        for route in ["/api/mj/", "/api/mj/self"] {
            let admin_only = ["channel_id", "user_id"];
            if admin_only.contains(&parameter) && route == "/api/mj/self" {
                continue;
            }
            let (status, body) = get(
                &f.app,
                &format!("{route}?{query}"),
                &[("authorization", &admin)],
            )
            .await;
            assert_eq!(status, 400, "{route}?{query}: {body}");
            assert_eq!(body["success"], false);
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{parameter}`")), "{message}");
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let f = fixture().await;
    let (status, body) = get(&f.app, "/api/nothing", &[]).await;
    assert_eq!((status, body["success"].clone()), (404, Value::Bool(false)));
    let response = warp::test::request()
        .method("POST")
        .path("/api/mj/self")
        .reply(&mj_tasks_server::http::routes(f.app.clone()))
        .await;
    assert_eq!(response.status().as_u16(), 405);
}

#[tokio::test]
async fn database_down_is_a_503() {
    let f = fixture().await;
    let token = bearer(&f.admin.1);
    f.app.store.close().await;
    assert_eq!(get(&f.app, "/healthz", &[]).await.0, 503);
    let (status, body) = get(&f.app, "/api/mj/", &[("authorization", &token)]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("pool")
    );
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Arbitrary query strings never produce a server error on either list route, on `kind`:
/// NUL and over-long text included, which PostgreSQL and MariaDB would refuse to compare.
fn arbitrary_queries_never_5xx_on(kind: Kind) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = runtime.block_on(TestDb::open(kind)) else {
        return;
    };
    let f = runtime.block_on(fixture_on(db));
    let admin = bearer(&f.admin.1);
    let routes = mj_tasks_server::http::routes(f.app.clone());
    let pairs = prop::collection::vec(
        (
            prop::sample::select(vec![
                "p",
                "page_size",
                "ps",
                "size",
                "mj_id",
                "start_timestamp",
                "end_timestamp",
                "channel_id",
                "status",
                "action",
                "x",
            ]),
            prop_oneof![
                // Text no backend stores alike: NUL anywhere, longer than a VARCHAR(191).
                "[a-z0-9]{0,4}%00[a-z0-9]{0,4}",
                "[a-z]{190,200}",
                "-?[0-9]{0,25}".prop_map(|v| percent_encode(&v)),
                "[ -~]{0,12}".prop_map(|v| percent_encode(&v)),
                "\\PC{0,8}".prop_map(|v| percent_encode(&v)),
                // Sent as is: broken escapes, plus signs, stray '=' and '%'.
                "[%0-9A-Fa-f+=.-]{0,10}",
                Just("NaN".to_owned()),
            ],
        ),
        0..6,
    );
    proptest!(ProptestConfig::with_cases(200), |(pairs in pairs, self_route in any::<bool>())| {
        let query: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let route = if self_route { "/api/mj/self" } else { "/api/mj/" };
        let path = format!("{route}?{query}");
        let response = runtime.block_on(
            warp::test::request()
                .path(&path)
                .header("authorization", &admin)
                .reply(&routes),
        );
        let status = response.status().as_u16();
        prop_assert!(status == 200 || status == 400, "{} -> {}", path, status);
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        prop_assert_eq!(body["success"].as_bool(), Some(status == 200));
    });
}

#[test]
fn arbitrary_queries_never_5xx_sqlite() {
    arbitrary_queries_never_5xx_on(Kind::Sqlite);
}

#[test]
fn arbitrary_queries_never_5xx_postgres() {
    arbitrary_queries_never_5xx_on(Kind::Postgres);
}

#[test]
fn arbitrary_queries_never_5xx_mysql() {
    arbitrary_queries_never_5xx_on(Kind::MySql);
}

/// The real server on a real listener: auth, both list routes, graceful shutdown; on every
/// configured database.
async fn end_to_end(kind: Kind) {
    let Some(db) = TestDb::open(kind).await else {
        return;
    };
    let f = fixture_on(db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mj_tasks_server::serve(f.app.clone(), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let base = format!("http://{address}");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let own: Value = client
        .get(format!("{base}/api/mj/self?page_size=2"))
        .bearer_auth(&f.bob.1)
        .header("New-Api-User", f.bob.0.id.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["data"]["total"], 2);
    assert_eq!(own["data"]["items"][0]["prompt"], "猫 1");
    let all = client
        .get(format!("{base}/api/mj"))
        .header("Authorization", &f.root.1)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status().as_u16(), 200);
    let all: Value = all.json().await.unwrap();
    assert_eq!(all["data"]["total"], 5);
    let denied = client
        .get(format!("{base}/api/mj/"))
        .bearer_auth(&f.bob.1)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn end_to_end_sqlite() {
    end_to_end(Kind::Sqlite).await;
}

#[tokio::test]
async fn end_to_end_postgres() {
    end_to_end(Kind::Postgres).await;
}

#[tokio::test]
async fn end_to_end_mysql() {
    end_to_end(Kind::MySql).await;
}
