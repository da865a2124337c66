//! `mj-tasks-server import`: the real binary copying a new-api database (its GORM schema,
//! both versions, on each configured engine) into a store, then the real server on the
//! imported data: old tokens, old tasks, polling through imported channels.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use mj_tasks::{Channel, NewTask, Progress, SqlStore, Task, TaskAction, TaskQuery, TaskStatus};
use mj_tasks_server::users::{UserStore, hash_token, open_user_store};
use mj_tasks_server::{App, Settings};
use serde_json::Value;
use test_support::fake_proxy::{FakeProxy, Outcome};
use test_support::new_api::{
    ALICE_TOKEN, MJ_CHANNEL_ID, MJ_CHANNEL_KEY, NewApiDb, Schema, TaskRow, UNFINISHED_MJ_ID,
    UNFINISHED_TASK_ID,
};
use test_support::{Kind, TestDb};

fn import(target: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mj-tasks-server"))
        .args(["--database-url", target, "import"])
        .args(args)
        .env("MJ_LOG", "warn")
        .output()
        .expect("run mj-tasks-server")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "import failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// What a new-api row must become: every column as it was, NULL as new-api reads it (`""`).
fn expected(row: &TaskRow) -> Task {
    Task {
        id: row.id,
        version: 0,
        fields: NewTask {
            code: row.code,
            user_id: row.user_id,
            action: TaskAction::from(row.action.as_str()),
            mj_id: row.mj_id.clone(),
            prompt: row.prompt.clone(),
            prompt_en: row.prompt_en.clone(),
            description: row.description.clone(),
            state: row.state.clone(),
            submit_time: row.submit_time,
            start_time: row.start_time,
            finish_time: row.finish_time,
            image_url: row.image_url.clone(),
            video_url: row.video_url.clone().unwrap_or_default(),
            video_urls: row.video_urls.clone().unwrap_or_default(),
            status: TaskStatus::from(row.status.as_str()),
            progress: Progress::from(row.progress.as_str()),
            fail_reason: row.fail_reason.clone(),
            channel_id: row.channel_id,
            quota: row.quota,
            buttons: row.buttons.clone(),
            properties: row.properties.clone(),
        },
    }
}

/// Everything an import writes, read back through the store and the user store.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tasks: Vec<Task>,
    unfinished: Vec<i64>,
    users: Vec<(i64, String, i64, bool, i64)>,
    channels: Vec<Channel>,
}

async fn snapshot(store: &SqlStore, users: &dyn UserStore) -> Snapshot {
    let tasks = store.tasks();
    let total = tasks.count(&TaskQuery::all()).await.unwrap();
    let mut all = Vec::new();
    let mut after = 0;
    // Every row in id order, in pages (ids are dense in the fixture, gaps are tolerated).
    while (all.len() as u64) < total {
        let mut found = false;
        for id in after + 1..after + 501 {
            if let Some(task) = tasks.get(id).await.unwrap() {
                all.push(task);
                found = true;
            }
        }
        after += 500;
        assert!(found || after < 10_000_000, "ids run out before the total");
    }
    let unfinished = tasks
        .list_unfinished(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|task| task.id)
        .collect();
    let users = users
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.id, u.username, u.role.value(), u.enabled, u.quota))
        .collect();
    let mut channels = store.channels().list_channels().await.unwrap();
    for channel in &mut channels {
        // Not compared: the fake proxy's port differs between two fixtures.
        if channel.id == MJ_CHANNEL_ID {
            channel.base_url.clear();
        }
    }
    Snapshot {
        tasks: all,
        unfinished,
        users,
        channels,
    }
}

async fn open_target(url: &str) -> (SqlStore, std::sync::Arc<dyn UserStore>) {
    let store = mj_tasks::connect(url).await.unwrap();
    let users = open_user_store(&store).await.unwrap();
    (store, users)
}

/// Field-by-field: every task, user and Midjourney channel of the source, nothing else.
async fn assert_imported(source: &NewApiDb, store: &SqlStore, users: &dyn UserStore, mj_url: &str) {
    let tasks = store.tasks();
    assert_eq!(
        tasks.count(&TaskQuery::all()).await.unwrap(),
        source.task_count()
    );
    for id in 1..=source.task_count() as i64 {
        let want = expected(&source.task(id).unwrap());
        let got = tasks.get(id).await.unwrap().unwrap();
        assert_eq!(got, want, "task {id}");
    }
    // Unfinished: the unknown status with progress "", and the one in progress. Terminal
    // statuses and new-api's "100%" marker are finished.
    let unfinished: Vec<i64> = tasks
        .list_unfinished(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(unfinished, vec![2, UNFINISHED_TASK_ID]);

    let listed = users.list_users().await.unwrap();
    let summary: Vec<(i64, &str, i64, bool, i64)> = listed
        .iter()
        .map(|u| {
            (
                u.id,
                u.username.as_str(),
                u.role.value(),
                u.enabled,
                u.quota,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "root", 100, true, 1_000_000),
            (2, "alice", 1, true, 500_000),
            (3, "bob", 1, true, 0),
            (4, "carol", 1, false, 42),
            (5, "dave", 1, false, 7),
            (7, "erin", 10, true, 100),
            (8, "フランク", 1, true, 1),
        ]
    );
    for user in &source.users {
        let by_token = match &user.access_token {
            Some(token) if !token.is_empty() => {
                users.user_by_token_hash(&hash_token(token)).await.unwrap()
            }
            _ => None,
        };
        if user.deleted || user.access_token.as_deref().unwrap_or("").is_empty() {
            assert!(
                by_token.is_none(),
                "user {} must have no working token",
                user.id
            );
        } else {
            assert_eq!(by_token.unwrap().id, user.id, "token of user {}", user.id);
        }
    }

    let channels = store.channels().list_channels().await.unwrap();
    let summary: Vec<(i64, &str, &str, &str, bool, i64)> = channels
        .iter()
        .map(|c| {
            (
                c.id,
                c.name.as_str(),
                c.base_url.as_str(),
                c.secret.as_str(),
                c.enabled,
                c.created_at,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                MJ_CHANNEL_ID,
                "mj main",
                mj_url,
                MJ_CHANNEL_KEY,
                true,
                1_700_000_002_000
            ),
            (
                3,
                "mj plus",
                "http://127.0.0.1:9",
                "mj-secret-3",
                false,
                1_700_000_003_000
            ),
            (
                5,
                "mj auto-disabled",
                "",
                "mj-secret-5",
                false,
                1_700_000_005_000
            ),
        ]
    );
}

/// Import, compare, rerun (nothing changes), dry run and conflicts, from `source_kind` into
/// `target_kind`.
async fn import_round_trip(source_kind: Kind, target_kind: Kind, schema: Schema, by_path: bool) {
    let mj_url = "http://127.0.0.1:1";
    let Some(source) = NewApiDb::create(source_kind, schema, mj_url, 1200).await else {
        return;
    };
    let Some(target) = TestDb::open(target_kind).await else {
        return;
    };
    let from = if by_path {
        source.url().trim_start_matches("sqlite://").to_owned()
    } else {
        source.url().to_owned()
    };

    // A dry run writes nothing and says what it would do.
    let planned = succeeded(import(target.url(), &["--from", &from, "--dry-run"]));
    assert!(
        planned.contains("tasks:    1209 to import, 0 already imported"),
        "{planned}"
    );
    assert!(planned.contains("users:    7 to import"), "{planned}");
    assert!(planned.contains("channels: 3 to import"), "{planned}");
    assert!(planned.contains("2 of other types skipped"), "{planned}");
    assert!(planned.contains("dry run"), "{planned}");
    {
        let (store, users) = open_target(target.url()).await;
        assert_eq!(store.tasks().count(&TaskQuery::all()).await.unwrap(), 0);
        assert!(users.list_users().await.unwrap().is_empty());
        store.close().await;
    }

    let done = succeeded(import(target.url(), &["--from", &from, "--batch", "500"]));
    assert!(
        done.contains("imported 7 users, 3 channels and 1209 tasks"),
        "{done}"
    );
    let (store, users) = open_target(target.url()).await;
    assert_imported(&source, &store, users.as_ref(), mj_url).await;
    let before = snapshot(&store, users.as_ref()).await;

    // Rerun: nothing twice.
    let again = succeeded(import(target.url(), &["--from", &from]));
    assert!(
        again.contains("tasks:    0 to import, 1209 already imported"),
        "{again}"
    );
    assert!(again.contains("users:    0 to import"), "{again}");
    assert!(
        again.contains("imported 0 users, 0 channels and 0 tasks"),
        "{again}"
    );
    assert_eq!(snapshot(&store, users.as_ref()).await, before);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_current_schema_into_sqlite() {
    import_round_trip(Kind::Sqlite, Kind::Sqlite, Schema::Current, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_legacy_schema_by_file_path_into_sqlite() {
    import_round_trip(Kind::Sqlite, Kind::Sqlite, Schema::Legacy, true).await;
}

/// Rows of ours in the way: every conflict is listed, nothing is written, and the message
/// names what is in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported_and_nothing_is_written() {
    let source = NewApiDb::create(Kind::Sqlite, Schema::Current, "http://127.0.0.1:1", 10)
        .await
        .unwrap();
    let target = TestDb::sqlite();
    {
        let app = App::open(Settings::with_database_url(target.url()))
            .await
            .unwrap();
        // Our own user "alice" takes id 1 (new-api's root) and alice's name.
        app.users
            .create_user(
                "alice",
                mj_tasks_server::users::Role::User,
                0,
                &hash_token("x"),
            )
            .await
            .unwrap();
        app.store.close().await;
    }
    let output = import(target.url(), &["--from", source.url()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("conflict: user 1: new-api user \"root\" has id 1, which our user \"alice\" already uses"),
        "{err}"
    );
    assert!(
        err.contains("conflict: user 2: the username \"alice\" is taken by our user id 1"),
        "{err}"
    );
    assert!(err.contains("2 conflicts"), "{err}");
    let (store, users) = open_target(target.url()).await;
    assert_eq!(store.tasks().count(&TaskQuery::all()).await.unwrap(), 0);
    assert_eq!(users.list_users().await.unwrap().len(), 1);
    assert!(store.channels().list_channels().await.unwrap().is_empty());
    store.close().await;
}

/// Our own tasks in new-api's id range are a conflict too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ids_in_use_are_a_conflict() {
    let source = NewApiDb::create(Kind::Sqlite, Schema::Legacy, "http://127.0.0.1:1", 10)
        .await
        .unwrap();
    let target = TestDb::sqlite();
    let store = mj_tasks::connect(target.url()).await.unwrap();
    let ours = store
        .tasks()
        .insert(&mj_tasks::NewTask::submitted(
            99,
            TaskAction::Imagine,
            "ours",
            "ours-1",
            1,
        ))
        .await
        .unwrap();
    store.close().await;
    let output = import(target.url(), &["--from", source.url()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains(&format!(
            "conflict: task 1: 1 of our tasks (ids {0} to {0}) already use ids in new-api's range 1 to 19",
            ours.id
        )),
        "{err}"
    );
}

/// After the import the real server serves the imported data: alice's old token lists exactly
/// her tasks on `/api/mj/self`, and her unfinished task is polled to SUCCESS by the upstream of
/// its imported channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_data_is_served_and_polled() {
    let fake = FakeProxy::start_with_steps(MJ_CHANNEL_KEY, 2).await;
    fake.insert(UNFINISHED_MJ_ID, Outcome::Success);
    let source = NewApiDb::create(Kind::Sqlite, Schema::Current, &fake.base_url(), 300)
        .await
        .unwrap();
    let target = TestDb::sqlite();
    succeeded(import(target.url(), &["--from", source.url()]));

    let mut settings = Settings::with_database_url(target.url());
    settings.poll_interval_secs = 1;
    let app = App::open(settings).await.unwrap();
    let tasks = app.tasks.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mj_tasks_server::serve(app, listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let mut listed = BTreeSet::new();
    let mut total = 0;
    for page in 1..=10 {
        let body: Value = client
            .get(format!(
                "http://{address}/api/mj/self?p={page}&page_size=100"
            ))
            .header("authorization", format!("Bearer {ALICE_TOKEN}"))
            .header("new-api-user", "2")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["success"], true, "{body}");
        total = body["data"]["total"].as_u64().unwrap();
        let items = body["data"]["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        listed.extend(items.iter().map(|item| item["id"].as_i64().unwrap()));
    }
    let alices: BTreeSet<i64> = (1..=source.task_count() as i64)
        .filter(|&id| source.task(id).unwrap().user_id == 2)
        .collect();
    assert!(alices.len() > 50);
    assert_eq!(listed, alices);
    assert_eq!(total, alices.len() as u64);

    let mut status = TaskStatus::default();
    for _ in 0..150 {
        status = tasks
            .get(UNFINISHED_TASK_ID)
            .await
            .unwrap()
            .unwrap()
            .fields
            .status;
        if status == TaskStatus::Success {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, TaskStatus::Success);
    let polled = tasks.get(UNFINISHED_TASK_ID).await.unwrap().unwrap();
    assert_eq!(polled.progress.as_str(), "100%");
    assert_eq!(polled.user_id, 2);
    assert_eq!(polled.channel_id, MJ_CHANNEL_ID);
    assert!(fake.list_calls() >= 2);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_current_schema_into_postgres() {
    import_round_trip(Kind::Postgres, Kind::Postgres, Schema::Current, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_legacy_schema_into_mysql() {
    import_round_trip(Kind::MySql, Kind::MySql, Schema::Legacy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_schema_into_mysql() {
    import_round_trip(Kind::Postgres, Kind::MySql, Schema::Legacy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_current_schema_into_sqlite() {
    import_round_trip(Kind::MySql, Kind::Sqlite, Schema::Current, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_current_schema_into_postgres() {
    import_round_trip(Kind::Sqlite, Kind::Postgres, Schema::Current, false).await;
}

async fn raw_task_count(kind: Kind, url: &str) -> i64 {
    use sqlx::Connection as _;
    const SQL: &str = "SELECT COUNT(*) FROM midjourneys";
    let count = match kind {
        Kind::Sqlite => match sqlx::SqliteConnection::connect(url).await {
            Ok(mut conn) => sqlx::query_scalar(SQL).fetch_one(&mut conn).await,
            Err(e) => Err(e),
        },
        Kind::Postgres => match sqlx::PgConnection::connect(url).await {
            Ok(mut conn) => sqlx::query_scalar(SQL).fetch_one(&mut conn).await,
            Err(e) => Err(e),
        },
        Kind::MySql => match sqlx::MySqlConnection::connect(url).await {
            Ok(mut conn) => sqlx::query_scalar(SQL).fetch_one(&mut conn).await,
            Err(e) => Err(e),
        },
    };
    count.unwrap_or(0)
}

/// SIGKILL the real binary mid-way through the tasks, rerun it: it continues after what was
/// committed and ends with exactly the rows of an uninterrupted import; a third run copies
/// nothing.
async fn killed_and_resumed(source_kind: Kind, target_kind: Kind) {
    const GENERATED: u64 = 60_000;
    let mj_url = "http://127.0.0.1:1";
    let Some(source) = NewApiDb::create(source_kind, Schema::Current, mj_url, GENERATED).await
    else {
        return;
    };
    let Some(target) = TestDb::open(target_kind).await else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_mj-tasks-server"))
        .args([
            "--database-url",
            target.url(),
            "import",
            "--from",
            source.url(),
        ])
        .args(["--batch", "200"])
        .env("MJ_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some batches are in and well before the end. The count is read without
    // migrating (the binary does that), and reads 0 until the table exists.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the import ended before it could be killed: {status}");
        }
        if raw_task_count(target_kind, target.url()).await >= 2_000 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break;
        }
    }
    let (store, users) = open_target(target.url()).await;
    let partial = store.tasks().count(&TaskQuery::all()).await.unwrap();
    assert!(
        partial < source.task_count(),
        "killed after the end ({partial})"
    );
    let resumed = succeeded(import(target.url(), &["--from", source.url()]));
    assert!(
        resumed.contains(&format!(
            "tasks:    {} to import, {partial} already imported",
            source.task_count() - partial
        )),
        "{resumed}\n(partial: {partial})"
    );
    assert_imported(&source, &store, users.as_ref(), mj_url).await;
    let again = succeeded(import(target.url(), &["--from", source.url()]));
    assert!(
        again.contains(&format!(
            "tasks:    0 to import, {} already imported",
            source.task_count()
        )),
        "{again}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_import_killed_and_resumed() {
    killed_and_resumed(Kind::Sqlite, Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_import_killed_and_resumed_into_mysql() {
    killed_and_resumed(Kind::Postgres, Kind::MySql).await;
}

/// new-api kept running after the first import: a rerun copies only the new rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_copies_only_new_rows() {
    let mut source = NewApiDb::create(Kind::Sqlite, Schema::Current, "http://127.0.0.1:1", 100)
        .await
        .unwrap();
    let target = TestDb::sqlite();
    succeeded(import(target.url(), &["--from", source.url()]));
    source.add_generated(50).await;
    let more = succeeded(import(target.url(), &["--from", source.url()]));
    assert!(
        more.contains("tasks:    50 to import, 109 already imported"),
        "{more}"
    );
    let (store, users) = open_target(target.url()).await;
    assert_imported(&source, &store, users.as_ref(), "http://127.0.0.1:1").await;
    store.close().await;
}
