//! A new-api database for import tests and benches, on any of the three engines: the
//! `midjourneys`, `users` and `channels` tables as new-api's GORM AutoMigrate creates them
//! (its column types per engine, its single-column indexes), in the legacy schema (no
//! `video_url` / `video_urls`, no billing columns) or the current one, filled with users,
//! channels of Midjourney and other types, and tasks including odd values.
//!
//! The rows inserted are returned as well, so that a test compares what was imported with what
//! the source holds, field by field.

use sqlx::Connection;

use crate::db::{Kind, TestDb};

/// Which version of new-api's `midjourneys` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Before the video columns (Apr 2025): no `video_url`, `video_urls`, `token_id`,
    /// `billing_channel_id`.
    Legacy,
    /// With the video and billing columns.
    Current,
}

/// A `midjourneys` row as inserted. `None` text is SQL NULL (a column AutoMigrate added after
/// the row was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// id.
    pub id: i64,
    /// code.
    pub code: i64,
    /// user_id.
    pub user_id: i64,
    /// action.
    pub action: String,
    /// mj_id.
    pub mj_id: String,
    /// prompt.
    pub prompt: String,
    /// prompt_en.
    pub prompt_en: String,
    /// description.
    pub description: String,
    /// state.
    pub state: String,
    /// submit_time (ms).
    pub submit_time: i64,
    /// start_time (ms).
    pub start_time: i64,
    /// finish_time (ms).
    pub finish_time: i64,
    /// image_url.
    pub image_url: String,
    /// video_url (current schema only).
    pub video_url: Option<String>,
    /// video_urls (current schema only).
    pub video_urls: Option<String>,
    /// status.
    pub status: String,
    /// progress.
    pub progress: String,
    /// fail_reason.
    pub fail_reason: String,
    /// channel_id.
    pub channel_id: i64,
    /// quota.
    pub quota: i64,
    /// buttons.
    pub buttons: String,
    /// properties.
    pub properties: String,
}

/// A `users` row as inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// id.
    pub id: i64,
    /// username.
    pub username: String,
    /// role (1, 10, 100).
    pub role: i64,
    /// status (1 enabled, 2 disabled).
    pub status: i64,
    /// quota.
    pub quota: i64,
    /// access_token (`None`: NULL).
    pub access_token: Option<String>,
    /// Soft-deleted (`deleted_at` set).
    pub deleted: bool,
}

/// A `channels` row as inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// id.
    pub id: i64,
    /// type (2 Midjourney, 5 MidjourneyPlus, others are not Midjourney).
    pub channel_type: i64,
    /// name.
    pub name: String,
    /// base_url (`None`: NULL).
    pub base_url: Option<String>,
    /// key.
    pub key: String,
    /// status (1 enabled, 2 manually disabled, 3 automatically disabled).
    pub status: i64,
    /// created_time (s).
    pub created_time: i64,
}

/// A filled new-api database.
pub struct NewApiDb {
    /// The database.
    pub db: TestDb,
    /// Its schema version.
    pub schema: Schema,
    /// Its users.
    pub users: Vec<UserRow>,
    /// Its channels.
    pub channels: Vec<ChannelRow>,
    /// The odd tasks (ids 1 to 9); the generated ones follow ([`generated_task`]).
    pub odd_tasks: Vec<TaskRow>,
    /// How many generated tasks follow the odd ones.
    pub generated: u64,
}

/// The id of the unfinished task on Midjourney channel 2 owned by user 2 (`alice`), whose
/// upstream id is [`UNFINISHED_MJ_ID`].
pub const UNFINISHED_TASK_ID: i64 = 9;
/// Its upstream id.
pub const UNFINISHED_MJ_ID: &str = "1700000000000009";
/// The id of the enabled Midjourney channel.
pub const MJ_CHANNEL_ID: i64 = 2;
/// Its key (the `mj-api-secret`).
pub const MJ_CHANNEL_KEY: &str = "mj-secret-2";
/// The access token of user 2, `alice`.
pub const ALICE_TOKEN: &str = "a1ice000000000000000000000000000";
/// The number of odd tasks before the generated ones.
pub const ODD_TASKS: i64 = 9;

impl NewApiDb {
    /// A new-api database of `kind` with `schema`, the fixture's users and channels (the
    /// enabled Midjourney channel pointing at `mj_base_url`), the odd tasks and `generated`
    /// more; `None` when the engine's test server is not configured.
    pub async fn create(
        kind: Kind,
        schema: Schema,
        mj_base_url: &str,
        generated: u64,
    ) -> Option<Self> {
        let db = TestDb::open(kind).await?;
        let users = users();
        let channels = channels(mj_base_url);
        let odd_tasks = odd_tasks(schema);
        let mut conn = Conn::open(kind, db.url()).await;
        for statement in ddl(kind, schema) {
            conn.execute(&statement).await;
        }
        conn.insert_users(&users).await;
        conn.insert_channels(&channels).await;
        conn.insert_tasks(schema, &odd_tasks).await;
        let mut next = 0;
        while next < generated {
            let end = (next + 2000).min(generated);
            let rows: Vec<TaskRow> = (next..end).map(|i| generated_task(schema, i)).collect();
            conn.insert_tasks(schema, &rows).await;
            next = end;
        }
        conn.close().await;
        Some(Self {
            db,
            schema,
            users,
            channels,
            odd_tasks,
            generated,
        })
    }

    /// The source URL to import from.
    pub fn url(&self) -> &str {
        self.db.url()
    }

    /// Every task row, in id order.
    pub fn task(&self, id: i64) -> Option<TaskRow> {
        if (1..=ODD_TASKS).contains(&id) {
            return self.odd_tasks.get((id - 1) as usize).cloned();
        }
        let index = u64::try_from(id - ODD_TASKS - 1).ok()?;
        (index < self.generated).then(|| generated_task(self.schema, index))
    }

    /// How many tasks there are.
    pub fn task_count(&self) -> u64 {
        ODD_TASKS as u64 + self.generated
    }

    /// Appends `count` more generated tasks (new-api kept running).
    pub async fn add_generated(&mut self, count: u64) {
        let mut conn = Conn::open(self.db.kind, self.db.url()).await;
        let rows: Vec<TaskRow> = (self.generated..self.generated + count)
            .map(|i| generated_task(self.schema, i))
            .collect();
        for chunk in rows.chunks(2000) {
            conn.insert_tasks(self.schema, chunk).await;
        }
        conn.close().await;
        self.generated += count;
    }
}

fn users() -> Vec<UserRow> {
    let user = |id, username: &str, role, status, quota, token: Option<&str>, deleted| UserRow {
        id,
        username: username.to_owned(),
        role,
        status,
        quota,
        access_token: token.map(str::to_owned),
        deleted,
    };
    vec![
        user(
            1,
            "root",
            100,
            1,
            1_000_000,
            Some("r00t0000000000000000000000000000"),
            false,
        ),
        user(2, "alice", 1, 1, 500_000, Some(ALICE_TOKEN), false),
        user(3, "bob", 1, 1, 0, None, false),
        user(
            4,
            "carol",
            1,
            2,
            42,
            Some("car01000000000000000000000000000"),
            false,
        ),
        user(
            5,
            "dave",
            1,
            1,
            7,
            Some("dave0000000000000000000000000000"),
            true,
        ),
        // A gap (6 was hard-deleted) and an admin whose token is the empty string.
        user(7, "erin", 10, 1, 100, Some(""), false),
        user(
            8,
            "フランク",
            1,
            1,
            1,
            Some("fran0000000000000000000000000000"),
            false,
        ),
    ]
}

fn channels(mj_base_url: &str) -> Vec<ChannelRow> {
    let channel =
        |id, channel_type, name: &str, base_url: Option<&str>, key: &str, status| ChannelRow {
            id,
            channel_type,
            name: name.to_owned(),
            base_url: base_url.map(str::to_owned),
            key: key.to_owned(),
            status,
            created_time: 1_700_000_000 + id,
        };
    vec![
        channel(
            1,
            1,
            "openai",
            Some("https://api.openai.com"),
            "sk-openai",
            1,
        ),
        channel(
            MJ_CHANNEL_ID,
            2,
            "mj main",
            Some(mj_base_url),
            MJ_CHANNEL_KEY,
            1,
        ),
        channel(
            3,
            5,
            "mj plus",
            Some("http://127.0.0.1:9/"),
            "mj-secret-3",
            2,
        ),
        channel(4, 14, "claude", Some(""), "sk-ant", 1),
        channel(5, 2, "mj auto-disabled", None, "mj-secret-5", 3),
    ]
}

fn odd_tasks(schema: Schema) -> Vec<TaskRow> {
    let video = |value: &str| match schema {
        Schema::Legacy => None,
        Schema::Current => Some(value.to_owned()),
    };
    let base = TaskRow {
        id: 0,
        code: 1,
        user_id: 2,
        action: "IMAGINE".into(),
        mj_id: String::new(),
        prompt: String::new(),
        prompt_en: String::new(),
        description: "提交成功".into(),
        state: String::new(),
        submit_time: 1_711_217_942_120,
        start_time: 1_711_217_943_000,
        finish_time: 1_711_217_999_000,
        image_url: String::new(),
        video_url: video(""),
        video_urls: video(""),
        status: "SUCCESS".into(),
        progress: "100%".into(),
        fail_reason: String::new(),
        channel_id: MJ_CHANNEL_ID,
        quota: 50_000,
        buttons: "[]".into(),
        properties: "{}".into(),
    };
    vec![
        // Empty mj_id (submit accepted without a result id), failed.
        TaskRow {
            id: 1,
            status: "FAILURE".into(),
            fail_reason: "no result id".into(),
            ..base.clone()
        },
        // Progress "", unknown status, zero times.
        TaskRow {
            id: 2,
            mj_id: "1700000000000002".into(),
            status: "WAITING_FOR_GPU".into(),
            progress: String::new(),
            submit_time: 0,
            start_time: 0,
            finish_time: 0,
            user_id: 3,
            ..base.clone()
        },
        // Unknown action, unicode prompt, root's task on the plus channel.
        TaskRow {
            id: 3,
            mj_id: "1700000000000003".into(),
            action: "OUTPAINT".into(),
            prompt: "雪の中の狐 🦊, ultra détaillé".into(),
            prompt_en: "a fox in the snow 🦊".into(),
            user_id: 1,
            channel_id: 3,
            image_url: "https://cdn.example/3.png".into(),
            buttons: r#"[{"customId":"MJ::JOB::upsample::1::x","label":"U1"}]"#.into(),
            properties: r#"{"finalPrompt":"a fox"}"#.into(),
            ..base.clone()
        },
        // A video task (current schema), NULL video columns on legacy.
        TaskRow {
            id: 4,
            mj_id: "1700000000000004".into(),
            action: "VIDEO".into(),
            video_url: video("https://cdn.example/4.mp4"),
            video_urls: video(r#"[{"url":"https://cdn.example/4.mp4"}]"#),
            ..base.clone()
        },
        // A deleted user's task, and a channel that no longer exists.
        TaskRow {
            id: 5,
            mj_id: "1700000000000005".into(),
            user_id: 5,
            channel_id: 99,
            ..base.clone()
        },
        // Progress 100% with a status that is not terminal: new-api no longer polls it.
        TaskRow {
            id: 6,
            mj_id: "1700000000000006".into(),
            status: "IN_PROGRESS".into(),
            user_id: 8,
            ..base.clone()
        },
        // A failed task with quotes, a backslash-free apostrophe and a long prompt.
        TaskRow {
            id: 7,
            mj_id: "1700000000000007".into(),
            prompt: "it's \"quoted\" ".repeat(300),
            status: "FAILURE".into(),
            progress: String::new(),
            fail_reason: "[Banned prompt]".into(),
            user_id: 4,
            ..base.clone()
        },
        // NULL-free but empty everything else, code 22 (queued), cancelled.
        TaskRow {
            id: 8,
            code: 22,
            mj_id: "1700000000000008".into(),
            description: String::new(),
            status: "CANCEL".into(),
            progress: "0%".into(),
            buttons: String::new(),
            properties: String::new(),
            user_id: 7,
            quota: 0,
            ..base.clone()
        },
        // Unfinished, on the enabled Midjourney channel: polled after the import.
        TaskRow {
            id: UNFINISHED_TASK_ID,
            mj_id: UNFINISHED_MJ_ID.into(),
            prompt: "a castle at dawn".into(),
            status: "IN_PROGRESS".into(),
            progress: "45%".into(),
            finish_time: 0,
            submit_time: now_ms() - 60_000,
            start_time: now_ms() - 50_000,
            image_url: "https://cdn.example/9-preview.webp".into(),
            ..base
        },
    ]
}

/// Generated task `index` (id `ODD_TASKS + 1 + index`): finished, spread over users 1, 2, 3,
/// 4 and 8 and channels 2 and 3, with realistic values.
pub fn generated_task(schema: Schema, index: u64) -> TaskRow {
    let id = ODD_TASKS + 1 + index as i64;
    let users = [1, 2, 2, 3, 4, 8];
    let submit = 1_700_000_000_000 + id * 7_919;
    let failed = index.is_multiple_of(17);
    TaskRow {
        id,
        code: 1,
        user_id: users[(index % users.len() as u64) as usize],
        action: ["IMAGINE", "UPSCALE", "VARIATION", "DESCRIBE"][(index % 4) as usize].into(),
        mj_id: format!("{}", 1_710_000_000_000_000 + id),
        prompt: format!("a lighthouse in a storm, number {index}, --ar 16:9"),
        prompt_en: format!("a lighthouse in a storm, number {index}"),
        description: "提交成功".into(),
        state: if index.is_multiple_of(5) { format!("state-{index}") } else { String::new() },
        submit_time: submit,
        start_time: submit + 1_000,
        finish_time: submit + 45_000,
        image_url: format!("https://cdn.example/{id}.png"),
        video_url: match schema {
            Schema::Legacy => None,
            Schema::Current if index.is_multiple_of(3) => None,
            Schema::Current => Some(String::new()),
        },
        video_urls: match schema {
            Schema::Legacy => None,
            Schema::Current => Some(String::new()),
        },
        status: if failed { "FAILURE" } else { "SUCCESS" }.into(),
        progress: "100%".into(),
        fail_reason: if failed { "[Invalid parameter]".into() } else { String::new() },
        channel_id: if index.is_multiple_of(2) { MJ_CHANNEL_ID } else { 3 },
        quota: 50_000,
        buttons: r#"[{"customId":"MJ::JOB::upsample::1::abc","emoji":"","label":"U1","type":2,"style":2}]"#.into(),
        properties: r#"{"finalPrompt":"a lighthouse in a storm"}"#.into(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Go field's kind, which decides its column type per engine the way GORM does.
#[derive(Clone, Copy)]
enum Go {
    /// `int`: `integer` on SQLite, `bigint` elsewhere.
    Int,
    /// `int` with `type:int`.
    Int32,
    /// `string` without a size: `text`, `longtext` on MySQL (`varchar(191)` there when indexed).
    Str,
    /// `string` with `type:varchar(n)` / `char(n)`.
    Sized(&'static str),
    /// `float64`.
    Float,
    /// `gorm.DeletedAt`.
    Time,
}

struct Col {
    name: &'static str,
    go: Go,
    /// `index`, `uniqueIndex` or `unique` tag.
    index: Option<&'static str>,
    default: Option<&'static str>,
    not_null: bool,
}

const fn col(name: &'static str, go: Go) -> Col {
    Col {
        name,
        go,
        index: None,
        default: None,
        not_null: false,
    }
}
const fn indexed(name: &'static str, go: Go) -> Col {
    Col {
        name,
        go,
        index: Some("index"),
        default: None,
        not_null: false,
    }
}
const fn unique(name: &'static str, go: Go) -> Col {
    Col {
        name,
        go,
        index: Some("uniqueIndex"),
        default: None,
        not_null: false,
    }
}
const fn with_default(name: &'static str, go: Go, default: &'static str) -> Col {
    Col {
        name,
        go,
        index: None,
        default: Some(default),
        not_null: false,
    }
}

fn midjourney_columns(schema: Schema) -> Vec<Col> {
    let mut columns = vec![
        col("code", Go::Int),
        indexed("user_id", Go::Int),
        indexed("action", Go::Sized("varchar(40)")),
        indexed("mj_id", Go::Str),
        col("prompt", Go::Str),
        col("prompt_en", Go::Str),
        col("description", Go::Str),
        col("state", Go::Str),
        indexed("submit_time", Go::Int),
        indexed("start_time", Go::Int),
        indexed("finish_time", Go::Int),
        col("image_url", Go::Str),
    ];
    if schema == Schema::Current {
        columns.push(col("video_url", Go::Str));
        columns.push(col("video_urls", Go::Str));
    }
    columns.extend([
        indexed("status", Go::Sized("varchar(20)")),
        indexed("progress", Go::Sized("varchar(30)")),
        col("fail_reason", Go::Str),
        col("channel_id", Go::Int),
        col("quota", Go::Int),
    ]);
    if schema == Schema::Current {
        columns.push(with_default("token_id", Go::Int, "0"));
        columns.push(with_default("billing_channel_id", Go::Int, "0"));
    }
    columns.extend([col("buttons", Go::Str), col("properties", Go::Str)]);
    columns
}

fn user_columns() -> Vec<Col> {
    vec![
        Col {
            index: Some("unique"),
            ..col("username", Go::Str)
        },
        Col {
            not_null: true,
            ..col("password", Go::Str)
        },
        indexed("display_name", Go::Str),
        with_default("role", Go::Int32, "1"),
        with_default("status", Go::Int32, "1"),
        indexed("email", Go::Str),
        indexed("github_id", Go::Str),
        indexed("wechat_id", Go::Str),
        unique("access_token", Go::Sized("char(32)")),
        with_default("quota", Go::Int32, "0"),
        with_default("used_quota", Go::Int32, "0"),
        with_default("request_count", Go::Int32, "0"),
        with_default("group", Go::Sized("varchar(64)"), "'default'"),
        unique("aff_code", Go::Sized("varchar(32)")),
        Col {
            index: Some("index"),
            ..col("inviter_id", Go::Int32)
        },
        indexed("deleted_at", Go::Time),
        col("setting", Go::Sized("text")),
        col("remark", Go::Sized("varchar(255)")),
        col("created_at", Go::Int),
        with_default("last_login_at", Go::Int, "0"),
    ]
}

fn channel_columns() -> Vec<Col> {
    vec![
        with_default("type", Go::Int, "0"),
        Col {
            not_null: true,
            ..col("key", Go::Str)
        },
        col("openai_organization", Go::Str),
        col("test_model", Go::Str),
        with_default("status", Go::Int, "1"),
        indexed("name", Go::Str),
        with_default("weight", Go::Int, "0"),
        col("created_time", Go::Int),
        col("test_time", Go::Int),
        col("response_time", Go::Int),
        with_default("base_url", Go::Str, "''"),
        col("other", Go::Str),
        col("balance", Go::Float),
        col("models", Go::Str),
        with_default("group", Go::Sized("varchar(64)"), "'default'"),
        with_default("used_quota", Go::Int, "0"),
        col("model_mapping", Go::Sized("text")),
        with_default("priority", Go::Int, "0"),
        with_default("auto_ban", Go::Int, "1"),
        indexed("tag", Go::Str),
        col("setting", Go::Sized("text")),
        col("remark", Go::Sized("varchar(255)")),
    ]
}

fn quote(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Postgres => format!("\"{name}\""),
        _ => format!("`{name}`"),
    }
}

fn column_type(kind: Kind, column: &Col) -> String {
    let indexed = column.index.is_some();
    match (column.go, kind) {
        (Go::Int, Kind::Sqlite) | (Go::Int32, Kind::Sqlite) => "integer".into(),
        (Go::Int, _) => "bigint".into(),
        (Go::Int32, _) => "int".into(),
        (Go::Str, Kind::MySql) if indexed => "varchar(191)".into(),
        (Go::Str, Kind::MySql) => "longtext".into(),
        (Go::Str, _) => "text".into(),
        (Go::Sized(sql), _) => sql.into(),
        (Go::Float, Kind::Postgres) => "decimal".into(),
        (Go::Float, _) => "real".into(),
        (Go::Time, Kind::Sqlite) => "datetime".into(),
        (Go::Time, Kind::Postgres) => "timestamptz".into(),
        (Go::Time, Kind::MySql) => "datetime(3) NULL".into(),
    }
}

/// `CREATE TABLE` and `CREATE INDEX` as GORM's AutoMigrate issues them on `kind`.
fn create_table(kind: Kind, table: &str, columns: &[Col]) -> Vec<String> {
    let id = match kind {
        Kind::Sqlite => format!("{} integer PRIMARY KEY AUTOINCREMENT", quote(kind, "id")),
        Kind::Postgres => format!("{} bigserial", quote(kind, "id")),
        Kind::MySql => format!("{} bigint AUTO_INCREMENT", quote(kind, "id")),
    };
    let mut parts = vec![id];
    for column in columns {
        let mut part = format!("{} {}", quote(kind, column.name), column_type(kind, column));
        if column.not_null {
            part.push_str(" NOT NULL");
        }
        if let Some(default) = column.default {
            part.push_str(&format!(" DEFAULT {default}"));
        }
        if column.index == Some("unique") {
            part.push_str(" UNIQUE");
        }
        parts.push(part);
    }
    if kind != Kind::Sqlite {
        parts.push(format!("PRIMARY KEY ({})", quote(kind, "id")));
    }
    let mut statements = vec![format!(
        "CREATE TABLE {} ({})",
        quote(kind, table),
        parts.join(",")
    )];
    for column in columns {
        let unique = match column.index {
            Some("index") => "",
            Some("uniqueIndex") => "UNIQUE ",
            _ => continue,
        };
        statements.push(format!(
            "CREATE {unique}INDEX {} ON {} ({})",
            quote(kind, &format!("idx_{table}_{}", column.name)),
            quote(kind, table),
            quote(kind, column.name)
        ));
    }
    statements
}

fn ddl(kind: Kind, schema: Schema) -> Vec<String> {
    let mut statements = create_table(kind, "users", &user_columns());
    statements.extend(create_table(kind, "channels", &channel_columns()));
    statements.extend(create_table(
        kind,
        "midjourneys",
        &midjourney_columns(schema),
    ));
    statements
}

/// A value to insert.
enum Value<'a> {
    Int(i64),
    Text(&'a str),
    NullText,
    /// SQL written as is (`NULL` or the current time for `deleted_at`).
    Sql(&'static str),
}

enum Conn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

/// Runs `$body` with `$conn` bound to the connection, whichever engine: one body per engine.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
            Conn::MySql($c) => $body,
        }
    };
}

fn builder<C: sqlx::Connection>(_: &C, sql: String) -> sqlx::QueryBuilder<C::Database> {
    sqlx::QueryBuilder::new(sql)
}

impl Conn {
    async fn open(kind: Kind, url: &str) -> Self {
        match kind {
            Kind::Sqlite => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .unwrap()
                    .create_if_missing(true);
                Self::Sqlite(
                    sqlx::SqliteConnection::connect_with(&options)
                        .await
                        .unwrap(),
                )
            }
            Kind::Postgres => Self::Postgres(sqlx::PgConnection::connect(url).await.unwrap()),
            Kind::MySql => Self::MySql(sqlx::MySqlConnection::connect(url).await.unwrap()),
        }
    }

    async fn close(self) {
        with_conn!(self, c => c.close().await.unwrap())
    }

    async fn execute(&mut self, sql: &str) {
        with_conn!(self, c => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut *c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    }

    async fn insert(&mut self, kind: Kind, table: &str, columns: &[&str], rows: &[Vec<Value<'_>>]) {
        let list: Vec<String> = columns.iter().map(|c| quote(kind, c)).collect();
        let sql = format!("INSERT INTO {} ({}) ", quote(kind, table), list.join(", "));
        with_conn!(self, c => {
            let mut query = builder(c, sql);
            query.push_values(rows, |mut row, values| {
                for value in values {
                    match value {
                        Value::Int(v) => row.push_bind(*v),
                        Value::Text(v) => row.push_bind(*v),
                        Value::NullText => row.push_bind(None::<&str>),
                        Value::Sql(sql) => row.push(*sql),
                    };
                }
            });
            query.build().execute(&mut *c).await.unwrap();
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Self::Sqlite(_) => Kind::Sqlite,
            Self::Postgres(_) => Kind::Postgres,
            Self::MySql(_) => Kind::MySql,
        }
    }

    async fn insert_users(&mut self, users: &[UserRow]) {
        let kind = self.kind();
        let rows: Vec<Vec<Value>> = users
            .iter()
            .map(|u| {
                vec![
                    Value::Int(u.id),
                    Value::Text(&u.username),
                    Value::Text("$2a$10$hashedpassword"),
                    Value::Text(&u.username),
                    Value::Int(u.role),
                    Value::Int(u.status),
                    match &u.access_token {
                        Some(token) => Value::Text(token),
                        None => Value::NullText,
                    },
                    Value::Int(u.quota),
                    Value::Text(
                        [
                            "aff1", "aff2", "aff3", "aff4", "aff5", "aff6", "aff7", "aff8",
                        ][(u.id - 1) as usize],
                    ),
                    Value::Sql(if u.deleted {
                        "CURRENT_TIMESTAMP"
                    } else {
                        "NULL"
                    }),
                    Value::Int(1_700_000_000),
                ]
            })
            .collect();
        self.insert(
            kind,
            "users",
            &[
                "id",
                "username",
                "password",
                "display_name",
                "role",
                "status",
                "access_token",
                "quota",
                "aff_code",
                "deleted_at",
                "created_at",
            ],
            &rows,
        )
        .await;
        if kind == Kind::Postgres {
            self.execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), MAX(id)) FROM users",
            )
            .await;
        }
    }

    async fn insert_channels(&mut self, channels: &[ChannelRow]) {
        let kind = self.kind();
        let rows: Vec<Vec<Value>> = channels
            .iter()
            .map(|c| {
                vec![
                    Value::Int(c.id),
                    Value::Int(c.channel_type),
                    Value::Text(&c.key),
                    Value::Int(c.status),
                    Value::Text(&c.name),
                    Value::Int(c.created_time),
                    match &c.base_url {
                        Some(url) => Value::Text(url),
                        None => Value::NullText,
                    },
                    Value::Text("mj_imagine,mj_upscale"),
                ]
            })
            .collect();
        self.insert(
            kind,
            "channels",
            &[
                "id",
                "type",
                "key",
                "status",
                "name",
                "created_time",
                "base_url",
                "models",
            ],
            &rows,
        )
        .await;
    }

    async fn insert_tasks(&mut self, schema: Schema, tasks: &[TaskRow]) {
        let kind = self.kind();
        let mut columns = vec![
            "id",
            "code",
            "user_id",
            "action",
            "mj_id",
            "prompt",
            "prompt_en",
            "description",
            "state",
            "submit_time",
            "start_time",
            "finish_time",
            "image_url",
        ];
        if schema == Schema::Current {
            columns.extend(["video_url", "video_urls"]);
        }
        columns.extend([
            "status",
            "progress",
            "fail_reason",
            "channel_id",
            "quota",
            "buttons",
            "properties",
        ]);
        let rows: Vec<Vec<Value>> = tasks
            .iter()
            .map(|t| {
                let mut row = vec![
                    Value::Int(t.id),
                    Value::Int(t.code),
                    Value::Int(t.user_id),
                    Value::Text(&t.action),
                    Value::Text(&t.mj_id),
                    Value::Text(&t.prompt),
                    Value::Text(&t.prompt_en),
                    Value::Text(&t.description),
                    Value::Text(&t.state),
                    Value::Int(t.submit_time),
                    Value::Int(t.start_time),
                    Value::Int(t.finish_time),
                    Value::Text(&t.image_url),
                ];
                if schema == Schema::Current {
                    for value in [&t.video_url, &t.video_urls] {
                        row.push(match value {
                            Some(v) => Value::Text(v),
                            None => Value::NullText,
                        });
                    }
                }
                row.extend([
                    Value::Text(&t.status),
                    Value::Text(&t.progress),
                    Value::Text(&t.fail_reason),
                    Value::Int(t.channel_id),
                    Value::Int(t.quota),
                    Value::Text(&t.buttons),
                    Value::Text(&t.properties),
                ]);
                row
            })
            .collect();
        for chunk in rows.chunks(1000) {
            self.insert(kind, "midjourneys", &columns, chunk).await;
        }
        if kind == Kind::Postgres {
            self.execute("SELECT setval(pg_get_serial_sequence('midjourneys', 'id'), MAX(id)) FROM midjourneys").await;
        }
    }
}
