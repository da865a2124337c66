//! One store conformance suite, run against SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! PostgreSQL and MySQL run when `MJ_TEST_POSTGRES_URL` / `MJ_TEST_MYSQL_URL` are set (each test
//! gets a fresh database); unset, those tests print that they were skipped.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::sync::Arc;

use mj_tasks::{
    Audience, NewChannel, NewTask, PageRequest, Progress, SqlStore, TaskAction, TaskQuery,
    TaskStatus, TaskStore, parse_list_query,
};
use test_support::{Kind, TestDb};

/// The columns every backend's `midjourneys` table must have.
const TASK_COLUMNS: [&str; 24] = [
    "action",
    "buttons",
    "channel_id",
    "code",
    "description",
    "fail_reason",
    "finish_time",
    "finished",
    "id",
    "image_url",
    "mj_id",
    "progress",
    "prompt",
    "prompt_en",
    "properties",
    "quota",
    "start_time",
    "state",
    "status",
    "submit_time",
    "user_id",
    "version",
    "video_url",
    "video_urls",
];

const DAY_MS: i64 = 86_400_000;
const BASE_MS: i64 = 1_700_000_000_000;

fn task(user_id: i64, n: i64) -> NewTask {
    NewTask {
        code: 1,
        user_id,
        action: if n % 3 == 0 {
            TaskAction::Upscale
        } else {
            TaskAction::Imagine
        },
        mj_id: format!("mj-{user_id}-{n}"),
        prompt: format!("prompt {n}"),
        submit_time: BASE_MS + n * DAY_MS,
        status: if n % 2 == 0 {
            TaskStatus::Success
        } else {
            TaskStatus::InProgress
        },
        progress: Progress::new(if n % 2 == 0 { "100%" } else { "40%" }),
        channel_id: 1 + n % 3,
        quota: 100,
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    }
}

/// 30 tasks for user 1 and 10 for user 2, one per day, inserted interleaved.
async fn fixture(tasks: &Arc<dyn TaskStore>) {
    let mut batch = Vec::new();
    for n in 0..30 {
        batch.push(task(1, n));
        if n % 3 == 0 {
            batch.push(task(2, n));
        }
    }
    assert_eq!(tasks.insert_many(&batch).await.unwrap(), 40);
}

fn ids(page: &mj_tasks::Page<mj_tasks::Task>) -> Vec<i64> {
    page.items.iter().map(|t| t.id).collect()
}

async fn insert_and_get(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    let mut new = task(7, 1);
    new.prompt = "日本の猫 🐈 — «ünïcödé» 'quotes' \"double\" \\ %_ ; DROP TABLE x".into();
    new.status = TaskStatus::parse("WAITING_FOR_GPU");
    new.action = TaskAction::parse("OUTPAINT");
    new.buttons = r#"[{"customId":"MJ::JOB::upsample::1::abc","label":"U1"}]"#.into();
    let inserted = tasks.insert(&new).await.unwrap();
    assert!(inserted.id > 0);
    let loaded = tasks.get(inserted.id).await.unwrap().unwrap();
    assert_eq!(loaded, inserted);
    assert_eq!(loaded.status, TaskStatus::Other("WAITING_FOR_GPU".into()));
    assert_eq!(loaded.action.as_str(), "OUTPAINT");
    assert_eq!(loaded.prompt, new.prompt);
    assert!(tasks.get(inserted.id + 1000).await.unwrap().is_none());
}

async fn large_text(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    let mut new = task(1, 1);
    new.prompt = "λ".repeat(300_000);
    new.properties = format!("{{\"finalPrompt\":\"{}\"}}", "x".repeat(200_000));
    let inserted = tasks.insert(&new).await.unwrap();
    let loaded = tasks.get(inserted.id).await.unwrap().unwrap();
    assert_eq!(loaded.prompt.chars().count(), 300_000);
    assert_eq!(loaded.properties, new.properties);
}

async fn ordering_and_totals(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let page = tasks
        .list(&TaskQuery::all(), PageRequest::first())
        .await
        .unwrap();
    assert_eq!(page.total, 40);
    assert_eq!(page.items.len(), 20);
    let listed = ids(&page);
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, sorted, "newest (highest id) first");
    let second = tasks
        .list(&TaskQuery::all(), PageRequest::new(2, 20).unwrap())
        .await
        .unwrap();
    assert_eq!(second.items.len(), 20);
    assert!(second.items[0].id < page.items[19].id);
    assert_eq!((second.page, second.page_size), (2, 20));
}

async fn owner_isolation(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let mine = tasks
        .list(&TaskQuery::owned_by(2), PageRequest::new(1, 100).unwrap())
        .await
        .unwrap();
    assert_eq!(mine.total, 10);
    assert!(mine.items.iter().all(|t| t.user_id == 2));
    let nobody = tasks
        .list(&TaskQuery::owned_by(99), PageRequest::first())
        .await
        .unwrap();
    assert_eq!((nobody.total, nobody.items.len()), (0, 0));
    // Another user's mj_id is invisible in a scoped lookup.
    assert!(
        tasks
            .find_by_mj_id("mj-1-4", Some(2))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tasks
            .find_by_mj_id("mj-1-4", Some(1))
            .await
            .unwrap()
            .is_some()
    );
    assert!(tasks.find_by_mj_id("mj-1-4", None).await.unwrap().is_some());
    let scoped = tasks
        .list(
            &TaskQuery::owned_by(2).with_mj_id("mj-1-4"),
            PageRequest::first(),
        )
        .await
        .unwrap();
    assert_eq!(scoped.total, 0);
}

async fn filters_alone_and_combined(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let count = |q: TaskQuery| {
        let tasks = tasks.clone();
        async move {
            let page = tasks
                .list(&q, PageRequest::new(1, 100).unwrap())
                .await
                .unwrap();
            assert_eq!(page.total as usize, page.items.len());
            page.total
        }
    };
    assert_eq!(count(TaskQuery::all().with_mj_id("mj-2-9")).await, 1);
    assert_eq!(
        count(TaskQuery::all().with_mj_id("MJ-2-9")).await,
        0,
        "exact match"
    );
    assert_eq!(count(TaskQuery::all().with_channel(1)).await, 20);
    assert_eq!(count(TaskQuery::owned_by(1).with_channel(1)).await, 10);
    // Inclusive bounds on submit_time: days 10..=19.
    let range = TaskQuery::owned_by(1)
        .submitted_between(Some(BASE_MS + 10 * DAY_MS), Some(BASE_MS + 19 * DAY_MS));
    assert_eq!(count(range.clone()).await, 10);
    assert_eq!(count(range.clone().with_channel(2)).await, 4);
    assert_eq!(
        count(TaskQuery::all().submitted_between(Some(BASE_MS + 27 * DAY_MS), None)).await,
        4
    );
    assert_eq!(
        count(TaskQuery::all().submitted_between(None, Some(BASE_MS))).await,
        2
    );
    assert_eq!(
        count(TaskQuery::all().submitted_between(Some(BASE_MS + 5), Some(BASE_MS))).await,
        0
    );
    let status = TaskQuery {
        status: Some(TaskStatus::Success),
        ..TaskQuery::owned_by(1)
    };
    assert_eq!(count(status).await, 15);
    let action = TaskQuery {
        action: Some(TaskAction::Upscale),
        ..TaskQuery::owned_by(2)
    };
    assert_eq!(count(action).await, 10);
    let everything = TaskQuery {
        status: Some(TaskStatus::Success),
        action: Some(TaskAction::Upscale),
        ..TaskQuery::owned_by(2)
            .with_channel(1)
            .with_mj_id("mj-2-0")
            .submitted_between(Some(BASE_MS), Some(BASE_MS))
    };
    assert_eq!(count(everything).await, 1);

    // Range pages (the deferred-join path) tile the range's full list in id-descending order.
    let full = tasks
        .list(&range, PageRequest::new(1, 100).unwrap())
        .await
        .unwrap();
    assert!(full.items.windows(2).all(|w| w[0].id > w[1].id));
    let mut tiled = Vec::new();
    for p in 1..=4 {
        let page = tasks
            .list(&range, PageRequest::new(p, 3).unwrap())
            .await
            .unwrap();
        assert_eq!(page.total, 10);
        tiled.extend(ids(&page));
    }
    assert_eq!(tiled, ids(&full));
}

/// Filter values are data, never SQL: quotes, backslashes, comment markers, wildcards and
/// non-ASCII text match exactly one row each, in totals as in pages (MySQL sends its totals as
/// text with the values inlined, so this is its injection test).
async fn hostile_filter_values(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    let hostile = [
        "it's",
        "a\\'b",
        "x' OR '1'='1",
        "-- comment",
        "/* c */ 1",
        "100%",
        "_",
        "龍🐉 ünïcode",
        "\"quoted\"",
        "",
    ];
    let batch: Vec<NewTask> = hostile
        .iter()
        .enumerate()
        .map(|(n, mj_id)| NewTask {
            mj_id: (*mj_id).to_owned(),
            status: TaskStatus::Other((*mj_id).to_owned()),
            action: TaskAction::from((*mj_id).to_owned()),
            ..task(7, n as i64)
        })
        .collect();
    tasks.insert_many(&batch).await.unwrap();
    for mj_id in hostile {
        let by_mj_id = TaskQuery::owned_by(7).with_mj_id(mj_id);
        let page = tasks
            .list(&by_mj_id, PageRequest::new(1, 100).unwrap())
            .await
            .unwrap();
        assert_eq!((page.total, page.items.len()), (1, 1), "mj_id {mj_id:?}");
        assert_eq!(page.items[0].mj_id, mj_id);
        let by_status_and_action = TaskQuery {
            status: Some(TaskStatus::Other(mj_id.to_owned())),
            action: Some(TaskAction::from(mj_id.to_owned())),
            ..TaskQuery::owned_by(7)
        };
        assert_eq!(
            tasks.count(&by_status_and_action).await.unwrap(),
            1,
            "{mj_id:?}"
        );
    }
    assert_eq!(
        tasks
            .count(&TaskQuery::all().with_mj_id("x"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        tasks.count(&TaskQuery::owned_by(i64::MIN)).await.unwrap(),
        0
    );
    assert_eq!(
        tasks
            .count(&TaskQuery::all().submitted_between(Some(i64::MIN), Some(i64::MAX)))
            .await
            .unwrap(),
        hostile.len() as u64
    );
}

/// Range pages stay exact when submit times do not follow ids (imports, clock steps): the
/// page query bounds its sort by the newest entries of the range, which must never drop a row.
async fn range_pages_when_times_do_not_follow_ids(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    // Submit days in a scrambled order: day (n * 37) % 60 for the n-th inserted task.
    let batch: Vec<NewTask> = (0..60)
        .map(|n| NewTask {
            submit_time: BASE_MS + ((n * 37) % 60) * DAY_MS,
            ..task(3, n)
        })
        .collect();
    tasks.insert_many(&batch).await.unwrap();
    let everything = tasks
        .list(&TaskQuery::owned_by(3), PageRequest::new(1, 100).unwrap())
        .await
        .unwrap();
    let (from, to) = (BASE_MS + 10 * DAY_MS, BASE_MS + 49 * DAY_MS);
    let expected: Vec<i64> = everything
        .items
        .iter()
        .filter(|t| (from..=to).contains(&t.submit_time))
        .map(|t| t.id)
        .collect();
    assert_eq!(expected.len(), 40);
    let range = TaskQuery::owned_by(3).submitted_between(Some(from), Some(to));
    for size in [1, 3, 7, 40] {
        let mut tiled = Vec::new();
        for p in 1..=(40 / size + 1) {
            let page = tasks
                .list(&range, PageRequest::new(p, size).unwrap())
                .await
                .unwrap();
            assert_eq!(page.total, 40);
            tiled.extend(ids(&page));
        }
        assert_eq!(tiled, expected, "page size {size}");
    }
    // Cursor walks of the same range, whose bound starts at each cursor's submit time.
    let raw = format!("user_id=3&start_timestamp={from}&end_timestamp={to}");
    for size in [1, 2, 5, 13] {
        assert_eq!(
            walk(&tasks, &raw, size, |_| None).await,
            expected,
            "size {size}"
        );
    }
    // A page far past the end of a range: the bound's LIMIT saturates instead of overflowing.
    let far = tasks
        .list(&range, PageRequest::new(i64::MAX, 100).unwrap())
        .await
        .unwrap();
    assert_eq!((far.total, far.items.len()), (40, 0));
}

async fn seconds_and_millisecond_bounds(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let from_s = (BASE_MS + 10 * DAY_MS) / 1000;
    let to_ms = BASE_MS + 12 * DAY_MS;
    for raw in [
        format!("start_timestamp={from_s}&end_timestamp={to_ms}"),
        format!(
            "start_timestamp={}&end_timestamp={}",
            from_s * 1000,
            to_ms / 1000
        ),
    ] {
        let (query, page) = parse_list_query(&raw, Audience::Owner(1)).unwrap();
        let listed = tasks.list(&query, page).await.unwrap();
        assert_eq!(listed.total, 3, "{raw}");
        assert!(
            listed
                .items
                .iter()
                .all(|t| t.submit_time >= from_s * 1000 && t.submit_time <= to_ms)
        );
    }
}

async fn pages_past_the_end_and_size_cap(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    let batch: Vec<NewTask> = (0..150).map(|n| task(3, n)).collect();
    tasks.insert_many(&batch).await.unwrap();
    let (query, page) = parse_list_query("page_size=1000", Audience::Owner(3)).unwrap();
    let capped = tasks.list(&query, page).await.unwrap();
    assert_eq!(
        (capped.items.len(), capped.page_size, capped.total),
        (100, 100, 150)
    );
    let last = tasks
        .list(&query, PageRequest::new(2, 100).unwrap())
        .await
        .unwrap();
    assert_eq!(last.items.len(), 50);
    for p in [3, 1_000_000, i64::MAX] {
        let past = tasks
            .list(&query, PageRequest::new(p, 100).unwrap())
            .await
            .unwrap();
        assert_eq!((past.items.len(), past.total), (0, 150));
    }
    // Walking every page yields every task exactly once.
    let mut seen = Vec::new();
    for p in 1..=8 {
        seen.extend(ids(&tasks
            .list(&query, PageRequest::new(p, 20).unwrap())
            .await
            .unwrap()));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 150);
}

async fn duplicate_mj_ids(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    let first = tasks.insert(&task(1, 1)).await.unwrap();
    let second = tasks.insert(&task(1, 1)).await.unwrap();
    assert_eq!(first.mj_id, second.mj_id);
    let found = tasks
        .find_by_mj_id(&first.mj_id, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, second.id, "the newest row wins");
    let both = tasks
        .list(
            &TaskQuery::all().with_mj_id(first.mj_id.clone()),
            PageRequest::first(),
        )
        .await
        .unwrap();
    assert_eq!(both.total, 2);
}

async fn unfinished_batches_and_cas(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await; // 20 of 40 unfinished (odd n)
    let mut after = 0;
    let mut unfinished = Vec::new();
    loop {
        let batch = tasks.list_unfinished(after, 7).await.unwrap();
        assert!(batch.len() <= 7);
        let Some(last) = batch.last() else { break };
        after = last.id;
        unfinished.extend(batch);
    }
    assert_eq!(unfinished.len(), 20);
    assert!(unfinished.windows(2).all(|w| w[0].id < w[1].id));
    assert!(unfinished.iter().all(|t| !t.is_finished()));

    let original = unfinished[0].clone();
    let mut update = original.clone();
    update.status = TaskStatus::Failure;
    update.progress = Progress::complete();
    update.fail_reason = "upstream said no".into();
    update.submit_time = 1; // must be ignored
    update.user_id = 999; // must be ignored
    let mut competing = original.clone();
    competing.status = TaskStatus::Success;

    assert!(tasks.update_if_version(&update).await.unwrap());
    assert!(
        !tasks.update_if_version(&competing).await.unwrap(),
        "stale version loses"
    );
    let stored = tasks.get(original.id).await.unwrap().unwrap();
    assert_eq!(stored.status, TaskStatus::Failure);
    assert_eq!(stored.fail_reason, "upstream said no");
    assert_eq!(stored.version, original.version + 1);
    assert_eq!(stored.submit_time, original.submit_time);
    assert_eq!(stored.user_id, original.user_id);
    let remaining = tasks.list_unfinished(0, 100).await.unwrap();
    assert_eq!(
        remaining.len(),
        19,
        "a finished task leaves the unfinished scan"
    );
    // A reloaded task can be updated again.
    let mut again = stored.clone();
    again.fail_reason = "second".into();
    assert!(tasks.update_if_version(&again).await.unwrap());
}

async fn channels(store: &SqlStore, _: &TestDb) {
    let channels = store.channels();
    let added = channels
        .add_channel(&NewChannel {
            name: "primary".into(),
            base_url: "http://127.0.0.1:9".into(),
            secret: "s3cret".into(),
        })
        .await
        .unwrap();
    assert!(added.enabled);
    assert!(!format!("{added:?}").contains("s3cret"));
    assert_eq!(
        channels.get_channel(added.id).await.unwrap().unwrap(),
        added
    );
    assert!(channels.set_channel_enabled(added.id, false).await.unwrap());
    assert!(
        channels.set_channel_enabled(added.id, false).await.unwrap(),
        "no-op still found"
    );
    assert!(
        !channels
            .set_channel_enabled(added.id + 50, false)
            .await
            .unwrap()
    );
    let listed = channels.list_channels().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].enabled);
}

/// The admin route's `user_id`, `status` and `action` filters alone and combined with every
/// other filter; text no backend can store matches nothing (and never reaches PostgreSQL,
/// which would refuse a NUL).
async fn status_action_and_owner_filters(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let total = |raw: &str| {
        let tasks = tasks.clone();
        let raw = raw.to_owned();
        async move {
            let (query, page) = parse_list_query(&raw, Audience::Admin).unwrap();
            let listed = tasks.list(&query, page).await.unwrap();
            assert_eq!(tasks.count(&query).await.unwrap(), listed.total, "{raw}");
            listed.total
        }
    };
    // User 1: n in 0..30; user 2: n in 0, 3, ..., 27. Even n SUCCESS, n % 3 == 0 UPSCALE,
    // channel 1 + n % 3.
    assert_eq!(total("user_id=1").await, 30);
    assert_eq!(total("user_id=2&status=SUCCESS").await, 5);
    assert_eq!(total("status=IN_PROGRESS").await, 20);
    assert_eq!(total("status=IN_PROGRESS&channel_id=1").await, 5 + 5);
    assert_eq!(total("action=UPSCALE").await, 20);
    assert_eq!(total("action=UPSCALE&status=SUCCESS&user_id=1").await, 5);
    assert_eq!(total("action=IMAGINE&channel_id=1").await, 0);
    assert_eq!(total("status=success").await, 0, "exact match");
    assert_eq!(total("status=NO_SUCH_STATUS").await, 0);
    let week = format!(
        "start_timestamp={}&end_timestamp={}",
        BASE_MS + 7 * DAY_MS,
        BASE_MS + 13 * DAY_MS
    );
    assert_eq!(total(&format!("{week}&channel_id=2")).await, 2 + 1);
    assert_eq!(total(&format!("{week}&status=SUCCESS&user_id=1")).await, 3);
    for unstorable in ["a%00b", "%00"] {
        for filter in ["mj_id", "status", "action"] {
            assert_eq!(total(&format!("{filter}={unstorable}")).await, 0);
        }
        assert!(
            tasks
                .find_by_mj_id(&unstorable.replace("%00", "\0"), Some(1))
                .await
                .unwrap()
                .is_none()
        );
    }
    let too_long = "x".repeat(mj_tasks::text::SHORT_TEXT_MAX_CHARS + 1);
    assert_eq!(total(&format!("mj_id={too_long}")).await, 0);
    assert!(
        tasks
            .find_by_mj_id(&too_long, None)
            .await
            .unwrap()
            .is_none()
    );
}

/// Walks a list by cursor and checks it against the same list read in one page.
async fn walk(
    tasks: &Arc<dyn TaskStore>,
    raw: &str,
    page_size: usize,
    between_pages: impl Fn(u64) -> Option<NewTask>,
) -> Vec<i64> {
    let (query, first) =
        parse_list_query(&format!("{raw}&page_size={page_size}"), Audience::Admin).unwrap();
    let total = tasks.count(&query).await.unwrap();
    let mut page = tasks.list(&query, first).await.unwrap();
    let mut walked = ids(&page);
    let mut number: u64 = 1;
    while let Some(cursor) = page.next_cursor.clone() {
        assert_eq!(
            page.items.len(),
            page_size,
            "{raw}: only the last page is short"
        );
        if let Some(new) = between_pages(number) {
            tasks.insert(&new).await.unwrap();
        }
        let (query, request) = parse_list_query(
            &format!("{raw}&page_size={page_size}&p=77&cursor={cursor}"),
            Audience::Admin,
        )
        .unwrap();
        page = tasks.list(&query, request).await.unwrap();
        number += 1;
        assert_eq!(page.page, number, "{raw}: page numbers follow the walk");
        assert!(page.total >= total, "{raw}: totals are the filter's");
        walked.extend(ids(&page));
    }
    walked
}

/// Cursor walks: every list, read by cursor, yields each task of the list once, in order,
/// whatever is inserted between two requests; the last page has no cursor.
async fn cursor_walks(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    let week = format!(
        "start_timestamp={}&end_timestamp={}",
        BASE_MS + 7 * DAY_MS,
        BASE_MS + 20 * DAY_MS
    );
    let lists = [
        String::new(),
        "user_id=1".to_owned(),
        "status=SUCCESS".to_owned(),
        "channel_id=2&status=IN_PROGRESS".to_owned(),
        "action=UPSCALE".to_owned(),
        week.clone(),
        format!("{week}&channel_id=1"),
        format!("{week}&user_id=1&status=SUCCESS"),
        "mj_id=mj-1-4".to_owned(),
        "user_id=99".to_owned(),
    ];
    for raw in &lists {
        let (query, _) = parse_list_query(raw, Audience::Admin).unwrap();
        let everything = tasks
            .list(&query, PageRequest::new(1, 100).unwrap())
            .await
            .unwrap();
        assert_eq!(everything.next_cursor, None, "{raw}: one page holds it all");
        for size in [1, 3, 7, 100] {
            let walked = walk(&tasks, raw, size, |_| None).await;
            assert_eq!(walked, ids(&everything), "{raw}, page size {size}");
        }
    }
    // New tasks, matching every filter, arrive between pages: they are newer than the walk's
    // position, so nothing shifts and nothing repeats.
    for raw in &lists {
        let (query, _) = parse_list_query(raw, Audience::Admin).unwrap();
        let before = tasks
            .list(&query, PageRequest::new(1, 100).unwrap())
            .await
            .unwrap();
        let walked = walk(&tasks, raw, 4, |n| {
            Some(NewTask {
                mj_id: "mj-1-4".into(),
                ..task(1, 10 + n as i64)
            })
        })
        .await;
        assert_eq!(walked, ids(&before), "{raw} with inserts between pages");
    }
}

/// Tasks whose submit times fall behind their ids (a late single insert, an import below the
/// stored ids) top the range pages they belong to, although every other task follows id order:
/// the range page's narrowed scan must widen for them.
async fn late_submissions_stay_in_range_pages(store: &SqlStore, _: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await; // user 1: days 0..30, in id order
    let range = TaskQuery::owned_by(1).submitted_between(Some(BASE_MS + 5 * DAY_MS), None);
    let late = tasks
        .insert(&NewTask {
            submit_time: BASE_MS + 6 * DAY_MS,
            ..task(1, 40)
        })
        .await
        .unwrap();
    let first = tasks
        .list(&range, PageRequest::new(1, 3).unwrap())
        .await
        .unwrap();
    assert_eq!((first.total, first.items[0].id), (26, late.id));
    // An import below every stored id, with the newest submit time of all.
    let mut imported = tasks.get(late.id).await.unwrap().unwrap();
    imported.id = -5;
    imported.submit_time = BASE_MS + 60 * DAY_MS;
    assert_eq!(tasks.insert_with_ids(&[imported]).await.unwrap(), 1);
    let old_range =
        TaskQuery::owned_by(1).submitted_between(Some(BASE_MS), Some(BASE_MS + 70 * DAY_MS));
    let everything = tasks
        .list(&old_range, PageRequest::new(1, 100).unwrap())
        .await
        .unwrap();
    assert_eq!((everything.total, everything.items.len()), (32, 32));
    assert_eq!(everything.items.last().map(|t| t.id), Some(-5));
    assert_eq!(everything.items[0].id, late.id);
    let mut paged = Vec::new();
    for p in 1..=11 {
        let page = tasks
            .list(&old_range, PageRequest::new(p, 3).unwrap())
            .await
            .unwrap();
        paged.extend(ids(&page));
    }
    assert_eq!(paged, ids(&everything));
}

/// Planner statistics can be refreshed on every backend, and the lookups that must stay
/// index probes are planned as such on SQLite, with or without statistics.
async fn statistics_and_lookup_plans(store: &SqlStore, db: &TestDb) {
    let tasks = store.tasks();
    fixture(&tasks).await;
    tasks.refresh_statistics().await.unwrap();
    assert_eq!(tasks.count(&TaskQuery::all()).await.unwrap(), 40);
    if db.kind != Kind::Sqlite {
        return;
    }
    let mj_tasks::SqlStore::Sqlite(sqlite) = store else {
        panic!("a SQLite URL opens a SQLite store");
    };
    let analyzed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'midjourneys'")
            .fetch_one(sqlite.pool())
            .await
            .unwrap();
    assert!(analyzed > 0, "ANALYZE wrote statistics");
    for (statement, index) in [
        (
            "SELECT id FROM midjourneys WHERE user_id = 1 AND mj_id = 'x' ORDER BY id DESC LIMIT 1",
            "idx_midjourneys_user_mj_id",
        ),
        (
            "SELECT COUNT(*) FROM midjourneys WHERE channel_id = 1 AND submit_time >= 5 \
             AND submit_time <= 9",
            "idx_midjourneys_channel_submit",
        ),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT detail FROM (EXPLAIN QUERY PLAN {statement})"
        )))
        .fetch_all(sqlite.pool())
        .await
        .unwrap_or_default();
        let plan = if plan.is_empty() {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {statement}"
            )))
            .fetch_all(sqlite.pool())
            .await
            .unwrap();
            rows.iter()
                .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
                .collect()
        } else {
            plan
        };
        assert!(
            plan.iter().any(|line| line.contains(index)),
            "{statement}: {plan:?}"
        );
    }
}

async fn migrations_are_idempotent_and_schemas_match(store: &SqlStore, db: &TestDb) {
    store.tasks().insert(&task(1, 1)).await.unwrap();
    // Connecting again re-runs the migrator: nothing is applied twice, nothing is lost.
    let again = mj_tasks::connect(db.url()).await.unwrap();
    assert_eq!(again.tasks().count(&TaskQuery::all()).await.unwrap(), 1);
    again.close().await;
    assert_eq!(db.columns("midjourneys").await, TASK_COLUMNS);
    assert_eq!(
        db.columns("mj_channels").await,
        ["base_url", "created_at", "enabled", "id", "name", "secret"]
    );
    assert_eq!(
        db.columns("mj_leases").await,
        ["expires_at", "holder", "name"]
    );
    assert_eq!(
        db.columns("mj_refunds").await,
        ["amount", "refunded_at", "task_id", "user_id"]
    );
    store.tasks().ping().await.unwrap();
}

macro_rules! conformance_suite {
    ($module:ident, $kind:expr, [$($case:ident),+ $(,)?]) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = TestDb::open($kind).await else { return };
                    let store = mj_tasks::connect(db.url()).await.expect("connect to test database");
                    super::$case(&store, &db).await;
                    store.close().await;
                }
            )+
        }
    };
}

macro_rules! all_backends {
    ($($case:ident),+ $(,)?) => {
        conformance_suite!(sqlite, Kind::Sqlite, [$($case),+]);
        #[cfg(feature = "postgres")]
        conformance_suite!(postgres, Kind::Postgres, [$($case),+]);
        #[cfg(feature = "mysql")]
        conformance_suite!(mysql, Kind::MySql, [$($case),+]);
    };
}

all_backends!(
    insert_and_get,
    large_text,
    ordering_and_totals,
    owner_isolation,
    filters_alone_and_combined,
    hostile_filter_values,
    range_pages_when_times_do_not_follow_ids,
    seconds_and_millisecond_bounds,
    pages_past_the_end_and_size_cap,
    duplicate_mj_ids,
    unfinished_batches_and_cas,
    channels,
    status_action_and_owner_filters,
    cursor_walks,
    statistics_and_lookup_plans,
    late_submissions_stay_in_range_pages,
    migrations_are_idempotent_and_schemas_match,
);
