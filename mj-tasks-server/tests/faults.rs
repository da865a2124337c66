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
        let url = db.url().to_owned();
        Some(Self::open(db, &url).await)
    }

    /// The server on `db`, connecting through `url` (the database's own, or a proxy's).
    async fn open(db: TestDb, url: &str) -> Self {
        let mut settings = Settings::with_database_url(url);
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
        Self {
            app,
            user: (user, token.reveal().to_owned()),
            _db: db,
        }
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

// ---------------------------------------------------------------------------------------------
// The real server on a real listener, spoken to over raw sockets.

/// `app` served on a fresh port until the returned sender fires (or is dropped).
async fn listen(
    app: App,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mj_tasks_server::serve(app, listener, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

/// Sends `request` as is and reads the answer until the server closes: status and JSON body.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers and closes")
    .ok();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A chunked request body from `parts`.
fn chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn is_submit_result(body: &Value) -> bool {
    body.get("code").is_some_and(Value::is_i64)
        && body.get("description").is_some_and(Value::is_string)
        && body.get("result").is_some()
        && body.get("success").is_none()
}

/// `Transfer-Encoding: chunked` and empty bodies were 500s (warp's `LengthRequired` fell
/// through). Chunked bodies are read with the same cap, an empty body is a 400, and every
/// refusal on a relay route is a `SubmitResult`; the dashboard keeps its envelope.
#[tokio::test]
async fn relay_rejections_keep_the_relay_shape() {
    let env = Env::new(Kind::Sqlite).await.unwrap();
    let (addr, _stop, _server) = listen(env.app.clone()).await;
    let auth = format!("Authorization: Bearer {}\r\n", env.user.1);
    let head = |method: &str, path: &str, extra: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}{extra}\r\n")
            .into_bytes()
    };

    // A chunked list-by-condition body is read whole: the task comes back.
    let mut request = head(
        "POST",
        "/mj/task/list-by-condition",
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    request.extend(chunked(&[b"{\"ids\":", b"[\"mj-1\"]}"]));
    let (status, body) = raw_exchange(addr, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["id"], "mj-1", "{body}");

    // Chunked past the 1 MiB cap of list-by-condition: 413, without reading on forever.
    let mut request = head(
        "POST",
        "/mj/task/list-by-condition",
        "Transfer-Encoding: chunked\r\n",
    );
    let block = vec![b' '; 256 * 1024];
    request.extend(chunked(&[&block, &block, &block, &block, &block]));
    let (status, body) = raw_exchange(addr, &request).await;
    assert_eq!(status, 413, "{body}");
    assert!(is_submit_result(&body), "{body}");

    // Declared too large: 413 before the body is sent.
    let request = head(
        "POST",
        "/mj/submit/imagine",
        "Content-Length: 999999999999\r\n",
    );
    let (status, body) = raw_exchange(addr, &request).await;
    assert_eq!(status, 413, "{body}");
    assert!(is_submit_result(&body), "{body}");

    // Empty bodies, with and without a length: 400, code 4.
    for extra in [
        "",
        "Content-Length: 0\r\n",
        "Transfer-Encoding: chunked\r\n",
    ] {
        let mut request = head("POST", "/mj/submit/imagine", extra);
        if extra.contains("chunked") {
            request.extend(chunked(&[]));
        }
        let (status, body) = raw_exchange(addr, &request).await;
        assert_eq!(status, 400, "{extra:?}: {body}");
        assert!(is_submit_result(&body), "{body}");
        assert_eq!(body["code"], 4, "{body}");
    }

    // Unknown relay routes, wrong methods, an over-long URI.
    let long = format!("/mj/task/{}/fetch", "9".repeat(9000));
    for (method, path, expected) in [
        ("GET", "/mj/nothing", 404),
        ("POST", "/mj/submit/unknown-kind", 404),
        ("GET", "/mj/task/list-by-condition/extra", 404),
        ("GET", "/mj/submit/imagine", 405),
        ("DELETE", "/mj/task/mj-1/fetch", 405),
        ("GET", long.as_str(), 414),
    ] {
        let extra = if method == "POST" {
            "Content-Length: 2\r\n"
        } else {
            ""
        };
        let mut request = head(method, path, extra);
        if method == "POST" {
            request.extend(b"{}");
        }
        let (status, body) = raw_exchange(addr, &request).await;
        assert_eq!(
            status,
            expected,
            "{method} {}: {body}",
            &path[..path.len().min(40)]
        );
        assert!(is_submit_result(&body), "{method}: {body}");
        assert_eq!(body["code"], if expected == 404 { 3 } else { 4 });
    }

    // The dashboard family answers in its envelope, the image proxy too.
    let long = format!("/api/mj/self?mj_id={}", "9".repeat(9000));
    for (method, path, expected) in [
        ("GET", "/api/nothing", 404),
        ("POST", "/api/mj/self", 405),
        ("GET", long.as_str(), 414),
        ("GET", "/mj/image/mj-1", 403),
    ] {
        let (status, body) = raw_exchange(addr, &head(method, path, "")).await;
        assert_eq!(status, expected, "{method}: {body}");
        assert_eq!(body["success"], false, "{body}");
    }
}

/// Half-open connections were held forever (3,000 with partial headers). Partial headers,
/// silent connections and idle kept-alive ones are all closed after the header read timeout,
/// and the server keeps answering.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let mut settings = Settings::with_database_url(db.url());
    settings.poll_interval_secs = 0;
    settings.header_read_timeout_secs = 1;
    let app = App::open(settings).await.unwrap();
    let (addr, _stop, _server) = listen(app).await;

    let mut connections = Vec::new();
    for n in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        match n % 3 {
            // Headers that never end.
            0 => stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1")
                .await
                .unwrap(),
            // A complete request, then the connection is kept alive and left idle.
            1 => {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = [0u8; 512];
                let read = stream.read(&mut answer).await.unwrap();
                assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
            }
            // Connected, silent.
            _ => {}
        }
        connections.push(stream);
    }
    let started = std::time::Instant::now();
    for (n, mut stream) in connections.into_iter().enumerate() {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "connection {n} still open");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let (status, body) = raw_exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

/// One SIGTERM hung for over a minute while a request held on. After SIGTERM the server gives
/// in-flight requests `--shutdown-timeout-secs`, then closes what is left and exits: here a
/// submit that a slow upstream holds for a minute.
#[tokio::test]
async fn sigterm_has_a_deadline() {
    use std::process::{Command, Stdio};
    use test_support::fake_proxy::{FakeProxy, Mode};
    let binary = env!("CARGO_BIN_EXE_mj-tasks-server");
    let db = TestDb::sqlite();
    let fake = FakeProxy::start("secret").await;
    fake.set_mode(Mode::Slow(std::time::Duration::from_secs(60)));
    let cli = |args: &[&str]| {
        let output = Command::new(binary)
            .args(args)
            .env("MJ_DATABASE_URL", db.url())
            .env("MJ_LOG", "warn")
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    };
    let base_url = fake.base_url();
    cli(&[
        "channel",
        "add",
        "--name",
        "slow",
        "--base-url",
        &base_url,
        "--secret",
        "secret",
    ]);
    let token = cli(&["user", "add", "alice", "--quota", "1000000"]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let mut server = Command::new(binary)
        .args(["serve", "--bind", &bind])
        .args(["--poll-interval-secs", "0", "--shutdown-timeout-secs", "2"])
        .args(["--upstream-timeout-secs", "300"])
        .env("MJ_DATABASE_URL", db.url())
        .env("MJ_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{bind}");
    mj_tasks::image::install_crypto_provider();
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "the server started");

    let submit = tokio::spawn(
        client
            .post(format!("{base}/mj/submit/imagine"))
            .bearer_auth(&token)
            .json(&json!({"prompt": "a slow fox"}))
            .send(),
    );
    for _ in 0..100 {
        if fake.submit_calls() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fake.submit_calls(), 1, "the submit waits on the upstream");

    let signalled = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "exited {took:?} after SIGTERM"
    );
    // The held request was cut off, not answered after the deadline.
    assert!(submit.await.unwrap().is_err());
}

// ---------------------------------------------------------------------------------------------
// Database outages.

/// During a PostgreSQL/MariaDB outage every request blocked 10 s on the pool before its 503.
/// With the database behind a proxy of the test's own, stopped and resumed: `/healthz` and
/// reads fail fast with a clear 503, and answer again at once when the database is back.
async fn outage_fails_fast_and_recovers(kind: Kind) {
    use std::time::{Duration, Instant};
    use test_support::tcp_proxy::{TcpProxy, url_through};
    let Some(db) = TestDb::open(kind).await else {
        return;
    };
    let target = db.url().split_once("://").unwrap().1;
    let target = target[target.rfind('@').map_or(0, |at| at + 1)..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut proxy = TcpProxy::start(target).await;
    let url = url_through(db.url(), proxy.addr);
    let env = Env::open(db, &url).await;
    assert_eq!(env.request("GET", "/healthz", None).await.0, 200);
    assert_eq!(env.request("GET", "/api/mj/self", None).await.0, 200);

    proxy.stop().await;
    for path in ["/healthz", "/api/mj/self", "/mj/task/1/fetch"] {
        let started = Instant::now();
        let (status, body) = env.request("GET", path, None).await;
        let took = started.elapsed();
        assert_eq!(status, 503, "{path}: {body}");
        assert!(took < Duration::from_secs(5), "{path} took {took:?}");
        let text = body.to_string();
        assert!(
            text.contains("unavailable") || text.contains("unreachable"),
            "{text}"
        );
    }

    proxy.resume().await;
    let started = Instant::now();
    assert_eq!(env.request("GET", "/healthz", None).await.0, 200);
    assert_eq!(env.request("GET", "/api/mj/self", None).await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "recovered at once"
    );
}

#[tokio::test]
async fn outage_fails_fast_and_recovers_postgres() {
    outage_fails_fast_and_recovers(Kind::Postgres).await;
}

#[tokio::test]
async fn outage_fails_fast_and_recovers_mysql() {
    outage_fails_fast_and_recovers(Kind::MySql).await;
}

/// Marks files immutable (`chattr +i`: read-only even for root) until dropped.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    /// `None` where the machine does not allow it (not root, a filesystem without attributes).
    fn set(files: Vec<std::path::PathBuf>) -> Option<Self> {
        let guard = Self(Vec::new());
        let mut guard = guard;
        for file in files {
            let done = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&file)
                .status()
                .is_ok_and(|status| status.success());
            if !done {
                return None;
            }
            guard.0.push(file);
        }
        Some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(file)
                .status();
        }
    }
}

/// SQLite made read-only and back: the connections the pool opened meanwhile stayed read-only
/// until a restart (8 of 12 writes still failed 40 s later), writes answered 500 and
/// `/healthz` 200. Now writes are a clear 503, `/healthz` says the database is not writable,
/// and the pool recovers by itself once the file is writable again.
#[tokio::test]
async fn sqlite_read_only_and_back() {
    let env = Env::new(Kind::Sqlite).await.unwrap();
    let mj_tasks::SqlStore::Sqlite(sqlite) = &env.app.store else {
        unreachable!()
    };
    let pool = sqlite.pool().clone();
    let file = std::path::PathBuf::from(env._db.url().trim_start_matches("sqlite://"));
    // The database file only: SQLite maps `-shm`, which must stay writable.
    let files = vec![file];
    env.app
        .channels
        .add_channel(&mj_tasks::NewChannel {
            name: "never called".into(),
            base_url: "http://127.0.0.1:9".into(),
            secret: "s".into(),
        })
        .await
        .unwrap();
    env.app
        .users
        .set_quota(&env.user.0.username, 1_000_000)
        .await
        .unwrap();
    let Some(read_only) = Immutable::set(files) else {
        eprintln!("skipped: chattr +i is not allowed here");
        return;
    };

    // Fill the pool with connections opened now (read-only), and take the older ones, which
    // SQLite opened writable, out of the pool. They stay open until the end: SQLite hands the
    // descriptors of closed connections to the next connection it opens on the same file.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.acquire().await.unwrap());
    }
    let mut writable_ones = Vec::new();
    for mut connection in held {
        let writable = sqlx::query("UPDATE mj_leases SET expires_at = expires_at")
            .execute(&mut *connection)
            .await
            .is_ok();
        if writable {
            writable_ones.push(connection.detach());
        }
    }

    let (status, body) = env.request("GET", "/healthz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "not writable");
    let (status, body) = env.request("GET", "/api/mj/self", None).await;
    assert_eq!(status, 200, "reads still work: {body}");
    let new_task = || NewTask {
        user_id: env.user.0.id,
        mj_id: "mj-2".into(),
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    };
    let refused = env.app.tasks.insert(&new_task()).await.unwrap_err();
    assert!(refused.is_not_writable(), "{refused:?}");
    // A submit reserves quota first: that write is refused with a clear 503 SubmitResult.
    let (status, body) = env
        .request(
            "POST",
            "/mj/submit/imagine",
            Some(json!({"prompt": "a fox"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(is_submit_result(&body), "{body}");
    let description = body["description"].as_str().unwrap();
    assert!(
        description.contains("does not accept writes"),
        "{description}"
    );
    let (status, body) = env.request("GET", "/healthz", None).await;
    assert_eq!(
        (status, body["database"].clone()),
        (503, json!("not writable"))
    );

    drop(read_only);
    drop(writable_ones);
    // Back: every write succeeds at once, through whichever pooled connection.
    let (status, body) = env.request("GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    let tasks: Vec<NewTask> = (0..12).map(|_| new_task()).collect();
    let writes = tasks.iter().map(|task| env.app.tasks.insert(task));
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
}

/// A small tmpfs mounted for one test (`None` where mounting is not allowed), unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Disk full answered 500. Writes that meet a full disk are a clear 503 (the store says
/// `NotWritable`), reads keep working, and writes succeed again once space is freed.
#[tokio::test]
async fn sqlite_disk_full_and_back() {
    use std::io::Write;
    let Some(disk) = SmallDisk::mount("4m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let url = format!("sqlite://{}", disk.0.path().join("tasks.db").display());
    let env = Env::open(TestDb::sqlite(), &url).await;
    // Fill the disk.
    let filler = disk.0.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file
        .write_all(&block)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    drop(file);

    let big_task = NewTask {
        user_id: env.user.0.id,
        mj_id: "mj-big".into(),
        prompt: "p".repeat(512 * 1024),
        buttons: "[]".into(),
        properties: "{}".into(),
        ..NewTask::default()
    };
    let refused = env.app.tasks.insert(&big_task).await.unwrap_err();
    assert!(refused.is_not_writable(), "{refused:?}");
    let (status, body) = env.request("GET", "/api/mj/self?mj_id=mj-1", None).await;
    assert_eq!((status, body["data"]["total"].clone()), (200, json!(1)));

    std::fs::remove_file(&filler).unwrap();
    env.app.tasks.insert(&big_task).await.unwrap();
    let (status, body) = env.request("GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    env.app.store.close().await;
}
