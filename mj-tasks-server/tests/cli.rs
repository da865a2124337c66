//! The CLI as an operator runs it: the real binary against a fresh SQLite file.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::{Command, Output};

use mj_tasks::{PageRequest, SqlStore, TaskQuery};
use test_support::{Kind, TestDb};

fn run(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mj-tasks-server"))
        .args(args)
        .env("MJ_DATABASE_URL", db)
        .env("MJ_LOG", "warn")
        .output()
        .expect("run mj-tasks-server")
}

fn last_line(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn users_channels_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let token = last_line(&run(
        &db,
        &["user", "add", "alice", "--role", "admin", "--quota", "500"],
    ));
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let duplicate = run(&db, &["user", "add", "alice"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let listed: serde_json::Value =
        serde_json::from_str(&last_line(&run(&db, &["user", "list", "--json"]))).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"id": 1, "name": "alice", "role": "admin", "status": "enabled", "quota": 500}])
    );

    let rotated = last_line(&run(&db, &["user", "token", "alice"]));
    assert_ne!(rotated, token);
    run(&db, &["user", "disable", "alice"]);
    run(&db, &["user", "quota", "alice", "42"]);
    let table = String::from_utf8_lossy(&run(&db, &["user", "list"]).stdout).to_string();
    assert!(
        table.contains("alice") && table.contains("disabled") && table.contains("42"),
        "{table}"
    );
    assert!(!run(&db, &["user", "quota", "alice", "-1"]).status.success());
    assert!(!run(&db, &["user", "enable", "nobody"]).status.success());
    run(&db, &["user", "enable", "alice"]);

    let id = last_line(&run(
        &db,
        &[
            "channel",
            "add",
            "--name",
            "main",
            "--base-url",
            "http://127.0.0.1:8080/",
            "--secret",
            "hush",
        ],
    ));
    assert_eq!(id, "1");
    let channels = String::from_utf8_lossy(&run(&db, &["channel", "list"]).stdout).to_string();
    assert!(
        channels.contains("http://127.0.0.1:8080") && !channels.contains("hush"),
        "{channels}"
    );
    assert!(run(&db, &["channel", "disable", "1"]).status.success());
    assert!(!run(&db, &["channel", "disable", "9"]).status.success());
    assert!(
        !run(
            &db,
            &[
                "channel",
                "add",
                "--name",
                "x",
                "--base-url",
                "ftp://x",
                "--secret",
                "s"
            ]
        )
        .status
        .success()
    );

    let seeded = run(
        &db,
        &[
            "seed",
            "--user",
            "bob",
            "--tasks",
            "2500",
            "--channels",
            "3",
        ],
    );
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let users: serde_json::Value = serde_json::from_str(&last_line(&run(
        &db,
        &["--database-url", &db, "user", "list", "--json"],
    )))
    .unwrap();
    assert_eq!(users[1]["name"], "bob");
}

/// User and channel commands open only the database: broken image and signing settings, which
/// stop `serve`, do not stop an operator from managing accounts.
#[test]
fn account_commands_open_only_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    // A file where the cache directory should be, and a signing key far too short.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let cache_dir = format!("--image-cache-dir={}", not_a_dir.display());
    let broken = [cache_dir.as_str(), "--signing-key=short"];
    let with = |args: &[&str]| -> Vec<String> {
        broken
            .iter()
            .chain(args)
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    let run_with = |args: &[&str]| {
        let args = with(args);
        run(&db, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let token = last_line(&run_with(&["user", "add", "carol"]));
    assert_eq!(token.len(), 48, "{token}");
    last_line(&run_with(&["user", "disable", "carol"]));
    last_line(&run_with(&["user", "list"]));
    let id = last_line(&run_with(&[
        "channel",
        "add",
        "--name",
        "main",
        "--base-url",
        "http://127.0.0.1:9",
        "--secret",
        "s",
    ]));
    assert_eq!(id, "1");
    last_line(&run_with(&["channel", "list"]));
    last_line(&run_with(&["seed", "--user", "carol", "--tasks", "10"]));
}

/// Names no database stores alike are refused before the database (a channel name longer than
/// MariaDB's VARCHAR(191)), or, looked up, name nobody.
#[test]
fn unstorable_names_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let long = "n".repeat(192);
    let added = run(
        &db,
        &[
            "channel",
            "add",
            "--name",
            &long,
            "--base-url",
            "http://127.0.0.1:9",
            "--secret",
            "s",
        ],
    );
    assert!(!added.status.success());
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(stderr.contains("--name is too long"), "{stderr}");
    let listed = String::from_utf8_lossy(&run(&db, &["channel", "list"]).stdout).to_string();
    assert_eq!(listed.lines().count(), 1, "only the header: {listed}");

    for command in ["disable", "enable", "token"] {
        let looked_up = run(&db, &["user", command, &long]);
        assert!(!looked_up.status.success());
        let stderr = String::from_utf8_lossy(&looked_up.stderr);
        assert!(stderr.contains("no user named"), "{command}: {stderr}");
    }
    let added = run(&db, &["user", "add", &long]);
    assert!(!added.status.success());
    assert!(String::from_utf8_lossy(&added.stderr).contains("1 to 64 characters"));
}

/// `seed --light-users U --heavy-share P` on every configured backend: the heavy user gets
/// about P % of the tasks, `NAME-1` ... `NAME-U` (created when missing, reused when present)
/// share the rest, every owner's tasks span the whole period (interleaved, not one block per
/// user), and the task table leaves with planner statistics.
#[tokio::test]
async fn seed_spreads_tasks_over_light_users() {
    for kind in [Kind::Sqlite, Kind::Postgres, Kind::MySql] {
        let Some(db) = TestDb::open(kind).await else {
            continue;
        };
        check_light_user_seed(kind, db.url()).await;
    }
}

async fn check_light_user_seed(kind: Kind, db: &str) {
    const TASKS: u64 = 3_000;
    last_line(&run(db, &["user", "add", "dora-2"]));
    let args = [
        "seed",
        "--user",
        "dora",
        "--tasks",
        "3000",
        "--channels",
        "2",
        "--light-users",
        "3",
        "--heavy-share",
        "40",
    ];
    let seeded = last_line(&run(db, &args));
    assert!(
        seeded.starts_with("seeded 3000 tasks"),
        "{kind:?}: {seeded}"
    );

    let listed: serde_json::Value =
        serde_json::from_str(&last_line(&run(db, &["user", "list", "--json"]))).unwrap();
    let id_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["name"] == name)
            .unwrap_or_else(|| panic!("{kind:?}: no user {name}: {listed}"))["id"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(listed.as_array().unwrap().len(), 4, "{kind:?}: {listed}");

    let store = mj_tasks::connect(db).await.unwrap();
    let tasks = store.tasks();
    let mut counted = 0;
    for (name, expected) in [
        ("dora", 1_200),
        ("dora-1", 600),
        ("dora-2", 600),
        ("dora-3", 600),
    ] {
        let query = TaskQuery::owned_by(id_of(name));
        let count = tasks.count(&query).await.unwrap();
        assert!(
            count.abs_diff(expected) < expected / 5,
            "{kind:?}: {name} owns {count}, expected about {expected}"
        );
        counted += count;
        // Interleaved: each owner's newest and oldest tasks lie near both ends of the period.
        let newest = tasks
            .list(&query, PageRequest::new(1, 1).unwrap())
            .await
            .unwrap();
        let last_page = i64::try_from(count).unwrap();
        let oldest = tasks
            .list(&query, PageRequest::new(last_page, 1).unwrap())
            .await
            .unwrap();
        let span = newest.items[0].submit_time - oldest.items[0].submit_time;
        assert!(
            span > 80 * 86_400_000,
            "{kind:?}: {name}'s tasks span {span} ms"
        );
    }
    assert_eq!(counted, TASKS, "{kind:?}: every task has one of the owners");
    let channels = tasks
        .count(&TaskQuery::all().with_channel(3))
        .await
        .unwrap();
    assert_eq!(channels, 0, "{kind:?}: channels 1..=2 only");
    assert!(
        has_statistics(kind, &store).await,
        "{kind:?}: no statistics"
    );
    store.close().await;

    // A share out of range is refused before anything is written.
    let refused = run(
        db,
        &[
            "seed",
            "--user",
            "dora",
            "--tasks",
            "5",
            "--heavy-share",
            "101",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--heavy-share"));
}

/// Whether the planner has statistics of `midjourneys`.
async fn has_statistics(kind: Kind, store: &SqlStore) -> bool {
    let sql = match kind {
        Kind::Sqlite => "SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'midjourneys'",
        Kind::Postgres => {
            "SELECT COUNT(*) FROM pg_stats WHERE tablename = 'midjourneys' AND attname = 'user_id'"
        }
        Kind::MySql => {
            "SELECT COUNT(*) FROM mysql.innodb_table_stats WHERE table_name = 'midjourneys' \
             AND database_name = DATABASE()"
        }
    };
    let count: i64 = match store {
        SqlStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        SqlStore::MySql(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await.unwrap(),
        _ => unreachable!("a backend this test does not know"),
    };
    count > 0
}
