//! Faults a careful operator or a hostile client meets, each injected for real on every
//! configured database: text no backend can store in lookups.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use mj_tasks::text::SHORT_TEXT_MAX_CHARS;
use mj_tasks::{NewTask, Progress, TaskAction, TaskStatus};
use mj_tasks_server::users::{AccessToken, Role, User};
use mj_tasks_server::{App, Settings};
use serde_json::{Value, json};
use test_support::{Kind, TestDb};

/// A server on `kind` with one user owning one finished task `mj-1`.
struct Env {
    app: App,
    user: (User, String),
    _db: TestDb,
}

impl Env {
    async fn new(kind: Kind) -> Option<Self> {
        let db = TestDb::open(kind).await?;
        let mut settings = Settings::with_database_url(db.url());
        settings.poll_interval_secs = 0;
        let app = App::open(settings).await.unwrap();
        let token = AccessToken::generate();
        let user = app
            .users
            .create_user("alice", Role::Admin, 0, &token.hash())
            .await
            .unwrap();
        app.tasks
            .insert(&NewTask {
                code: 1,
                user_id: user.id,
                action: TaskAction::Imagine,
                mj_id: "mj-1".into(),
                prompt: "a fox".into(),
                submit_time: 1_715_240_000_000,
                status: TaskStatus::Success,
                progress: Progress::complete(),
                channel_id: 1,
                buttons: "[]".into(),
                properties: "{}".into(),
                ..NewTask::default()
            })
            .await
            .unwrap();
        Some(Self {
            app,
            user: (user, token.reveal().to_owned()),
            _db: db,
        })
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = warp::test::request()
            .method(method)
            .path(path)
            .header("authorization", format!("Bearer {}", self.user.1));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .reply(&mj_tasks_server::http::routes(self.app.clone()))
            .await;
        let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (response.status().as_u16(), body)
    }
}

/// `GET /api/mj/self?mj_id=%00` was a 500 on PostgreSQL. Lookups by text no backend stores
/// (NUL, longer than a `VARCHAR(191)`) match nothing, identically everywhere.
async fn unstorable_lookups_match_nothing(kind: Kind) {
    let Some(env) = Env::new(kind).await else {
        return;
    };
    let long = "9".repeat(SHORT_TEXT_MAX_CHARS + 1);
    for route in ["/api/mj/self", "/api/mj/"] {
        for query in [
            "mj_id=%00".to_owned(),
            "mj_id=mj-1%00".to_owned(),
            format!("mj_id={long}"),
            "status=SUCCESS%00".to_owned(),
            "action=%00IMAGINE".to_owned(),
            format!("action={long}"),
        ] {
            let (status, body) = env.request("GET", &format!("{route}?{query}"), None).await;
            assert_eq!(status, 200, "{route}?{query}: {body}");
            assert_eq!(body["data"]["total"], 0, "{route}?{query}: {body}");
            assert_eq!(body["data"]["items"], json!([]), "{route}?{query}");
        }
        let (status, body) = env
            .request("GET", &format!("{route}?mj_id=mj-1"), None)
            .await;
        assert_eq!((status, body["data"]["total"].clone()), (200, json!(1)));
    }

    for id in ["%00", "mj-1%00", long.as_str()] {
        let (status, body) = env
            .request("GET", &format!("/mj/task/{id}/fetch"), None)
            .await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["code"], 3, "{id}: {body}");
    }

    let (status, body) = env
        .request(
            "POST",
            "/mj/task/list-by-condition",
            Some(json!({"ids": ["\u{0}", "mj-1\u{0}", long, "mj-1"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mj-1"]);
}

#[tokio::test]
async fn unstorable_lookups_match_nothing_sqlite() {
    unstorable_lookups_match_nothing(Kind::Sqlite).await;
}

#[tokio::test]
async fn unstorable_lookups_match_nothing_postgres() {
    unstorable_lookups_match_nothing(Kind::Postgres).await;
}

#[tokio::test]
async fn unstorable_lookups_match_nothing_mysql() {
    unstorable_lookups_match_nothing(Kind::MySql).await;
}
