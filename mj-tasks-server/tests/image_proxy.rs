//! End-to-end tests of image forwarding: the real server (`App::open` + `serve` on a
//! `127.0.0.1:0` listener) in front of a local fake upstream that serves images, with the
//! private-upstream switch on unless a test is about SSRF.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mj_tasks::image::{
    FetchConfig, ImageFetchError, ImageFetcher, RangeAnswer, cache_key, shared_signing_key,
};
use mj_tasks::{NewTask, Progress, Task, TaskAction, TaskStatus};
use mj_tasks_server::http::image::CACHE_STATUS_HEADER;
use mj_tasks_server::users::{AccessToken, Role, User};
use mj_tasks_server::{App, Settings};
use serde_json::Value;
use test_support::local_server::LocalServer;
use test_support::{Kind, TestDb};
use tokio::sync::oneshot;
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Filter, Reply};

// ---------------------------------------------------------------------------------------------
// The fake upstream.

const SMALL_LEN: usize = 300_000;
const UPSTREAM_ETAG: &str = "\"up-etag-1\"";
const UPSTREAM_LAST_MODIFIED: &str = "Wed, 21 Oct 2026 07:28:00 GMT";
const SECRET_BODY: &str = "SECRET-UPSTREAM-BODY token=abc123";

/// Deterministic pseudo-random bytes (xorshift), so corruption anywhere is noticed.
fn image_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    server: LocalServer,
}

impl Upstream {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the upstream and waits until its port no longer answers.
    async fn shut_down(&mut self) {
        self.server.shut_down().await;
    }
}

/// A body of `len` bytes generated on the fly in 64 KiB chunks (never held whole).
fn generated_body(
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static {
    test_support::local_server::generated_body(len, Bytes::from(image_bytes(7, 64 * 1024)))
}

fn small_image(headers: &HeaderMap, seed: u64) -> Response<Bytes> {
    let body = image_bytes(seed, SMALL_LEN);
    let base = || {
        Response::builder()
            .header("content-type", "image/png")
            .header("etag", UPSTREAM_ETAG)
            .header("last-modified", UPSTREAM_LAST_MODIFIED)
            .header("cache-control", "public, max-age=86400")
            .header("accept-ranges", "bytes")
            .header("x-upstream-private", "do-not-forward")
    };
    let inm = headers.get("if-none-match").and_then(|v| v.to_str().ok());
    let ims = headers
        .get("if-modified-since")
        .and_then(|v| v.to_str().ok());
    if inm == Some(UPSTREAM_ETAG) || (inm.is_none() && ims == Some(UPSTREAM_LAST_MODIFIED)) {
        return base()
            .status(StatusCode::NOT_MODIFIED)
            .body(Bytes::new())
            .unwrap();
    }
    let range = headers.get("range").and_then(|v| v.to_str().ok());
    match RangeAnswer::parse(range, body.len() as u64) {
        RangeAnswer::Partial(start, len) => {
            let (start, len) = (start as usize, len as usize);
            base()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    "content-range",
                    format!("bytes {}-{}/{}", start, start + len - 1, body.len()),
                )
                .body(Bytes::copy_from_slice(&body[start..start + len]))
                .unwrap()
        }
        RangeAnswer::Unsatisfiable => base()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header("content-range", format!("bytes */{}", body.len()))
            .body(Bytes::new())
            .unwrap(),
        RangeAnswer::Full => base().body(Bytes::from(body)).unwrap(),
    }
}

async fn start_upstream() -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let count = warp::any()
        .map(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .untuple_one();

    let small = warp::path!("img" / "small" / u64)
        .and(warp::header::headers_cloned())
        .map(|seed: u64, headers: HeaderMap| small_image(&headers, seed).into_response());
    let sized = warp::path!("img" / "sized" / u64).map(|len: u64| {
        let mut response = warp::reply::stream(generated_body(len)).into_response();
        response
            .headers_mut()
            .insert("content-type", "image/webp".parse().unwrap());
        response
            .headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
        response
    });
    let chunked = warp::path!("img" / "chunked" / u64).map(|len: u64| {
        let mut response = warp::reply::stream(generated_body(len)).into_response();
        response
            .headers_mut()
            .insert("content-type", "image/webp".parse().unwrap());
        response
    });
    let slow = warp::path!("img" / "slow").then(|| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        Response::new(Bytes::from_static(b"late")).into_response()
    });
    let error = warp::path!("img" / "error").map(|| {
        warp::reply::with_status(SECRET_BODY, StatusCode::INTERNAL_SERVER_ERROR).into_response()
    });
    let not_found = warp::path!("img" / "gone")
        .map(|| warp::reply::with_status("gone", StatusCode::NOT_FOUND).into_response());
    // /redirect?to=<url>
    let redirect = warp::path!("redirect")
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(|query: std::collections::HashMap<String, String>| {
            Response::builder()
                .status(StatusCode::FOUND)
                .header("location", query.get("to").cloned().unwrap_or_default())
                .body(Bytes::new())
                .unwrap()
                .into_response()
        });
    let redirect_loop = warp::path!("loop").map(|| {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/loop")
            .body(Bytes::new())
            .unwrap()
            .into_response()
    });
    let routes = count.and(
        small
            .or(sized)
            .unify()
            .or(chunked)
            .unify()
            .or(slow)
            .unify()
            .or(error)
            .unify()
            .or(not_found)
            .unify()
            .or(redirect)
            .unify()
            .or(redirect_loop)
            .unify(),
    );
    let server = LocalServer::start(routes).await;
    Upstream {
        addr: server.addr,
        hits,
        server,
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test.

struct Server {
    app: App,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    _db: TestDb,
    _cache_dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Default)]
struct Options {
    deny_private: bool,
    cache_budget: Option<u64>,
    max_bytes: Option<u64>,
    timeout_secs: Option<u64>,
    ttl_secs: Option<u64>,
    forward: Option<bool>,
}

async fn start_server(options: Options) -> Server {
    start_server_on(TestDb::sqlite(), options).await
}

async fn start_server_on(db: TestDb, options: Options) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut settings = Settings::with_database_url(db.url());
    settings.server_address = Some(base.clone());
    settings.allow_private_upstreams = !options.deny_private;
    settings.image_timeout_secs = options.timeout_secs.unwrap_or(10);
    settings.image_connect_timeout_secs = 2;
    if let Some(max) = options.max_bytes {
        settings.image_max_bytes = max;
    }
    if let Some(ttl) = options.ttl_secs {
        settings.image_url_ttl_secs = ttl;
    }
    if let Some(forward) = options.forward {
        settings.forward_images = forward;
    }
    let cache_dir = options.cache_budget.map(|budget| {
        let dir = tempfile::tempdir().unwrap();
        settings.image_cache_dir = Some(dir.path().to_path_buf());
        settings.image_cache_max_bytes = budget;
        dir
    });
    let app = App::open(settings).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(mj_tasks_server::serve(app.clone(), listener, async {
        let _ = stopped.await;
    }));
    Server {
        app,
        base,
        stop: Some(stop),
        _db: db,
        _cache_dir: cache_dir,
    }
}

async fn add_user(app: &App, name: &str) -> (User, String) {
    let token = AccessToken::generate();
    let user = app
        .users
        .create_user(name, Role::User, 0, &token.hash())
        .await
        .unwrap();
    (user, token.reveal().to_owned())
}

async fn add_task(app: &App, user_id: i64, mj_id: &str, image_url: &str) -> Task {
    app.tasks
        .insert(&NewTask {
            code: 1,
            user_id,
            action: TaskAction::Imagine,
            mj_id: mj_id.to_owned(),
            prompt: "a red fox".to_owned(),
            submit_time: mj_tasks::now_millis(),
            status: TaskStatus::Success,
            progress: Progress::complete(),
            image_url: image_url.to_owned(),
            channel_id: 1,
            buttons: "[]".into(),
            properties: "{}".into(),
            ..NewTask::default()
        })
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Status and JSON body of an error answer.
async fn get_error(url: &str) -> (u16, Value) {
    let response = get(url, &[]).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn dashboard_urls_are_signed_and_stream_identical_bytes() {
    let upstream = start_upstream().await;
    let server = start_server(Options::default()).await;
    let (alice, token) = add_user(&server.app, "alice").await;
    add_task(&server.app, alice.id, "1001", &upstream.url("/img/small/1")).await;
    add_task(&server.app, alice.id, "1002", "").await;

    let response = get(
        &format!("{}/api/mj/self", server.base),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    let body: Value = response.json().await.unwrap();
    let items = body["data"]["items"].as_array().unwrap();
    let no_image = items.iter().find(|i| i["mj_id"] == "1002").unwrap();
    assert_eq!(no_image["image_url"], "");
    let url = items.iter().find(|i| i["mj_id"] == "1001").unwrap()["image_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        url.starts_with(&format!("{}/mj/image/1001?u={}&e=", server.base, alice.id)),
        "{url}"
    );
    assert!(!url.contains(&upstream.addr.to_string()), "upstream hidden");

    let response = get(&url, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("image/png"));
    assert_eq!(
        header(&response, "content-length"),
        Some(SMALL_LEN.to_string().as_str())
    );
    assert_eq!(header(&response, "etag"), Some(UPSTREAM_ETAG));
    assert_eq!(
        header(&response, "last-modified"),
        Some(UPSTREAM_LAST_MODIFIED)
    );
    assert_eq!(
        header(&response, "cache-control"),
        Some("public, max-age=86400")
    );
    assert_eq!(header(&response, "x-upstream-private"), None);
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert!(header(&response, "content-security-policy").is_some_and(|v| v.contains("sandbox")));
    assert_eq!(header(&response, CACHE_STATUS_HEADER), None, "no cache");
    let bytes = response.bytes().await.unwrap();
    assert!(
        bytes[..] == image_bytes(1, SMALL_LEN)[..],
        "identical bytes"
    );

    // HEAD: the headers, no body.
    let response = client().head(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), Some(UPSTREAM_ETAG));
    assert!(response.bytes().await.unwrap().is_empty());
}

/// A signed URL outlives a disable unless the owner's status is read: refused with 403 while
/// the owner is disabled (cached images too), served again once enabled.
#[tokio::test]
async fn disabled_owners_images_are_refused() {
    let upstream = start_upstream().await;
    let server = start_server(Options {
        cache_budget: Some(10 * 1024 * 1024),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let task = add_task(&server.app, alice.id, "1101", &upstream.url("/img/small/1")).await;
    let url = server.app.present_image_url(&task);
    let response = get(&url, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), SMALL_LEN);

    assert!(server.app.users.set_enabled("alice", false).await.unwrap());
    let hits = upstream.hits.load(Ordering::SeqCst);
    for _ in 0..2 {
        let (status, body) = get_error(&url).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["message"], "The owner of this image is disabled.");
    }
    let response = client().head(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        upstream.hits.load(Ordering::SeqCst),
        hits,
        "nothing fetched"
    );

    assert!(server.app.users.set_enabled("alice", true).await.unwrap());
    let response = get(&url, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, CACHE_STATUS_HEADER), Some("hit"));
}

#[tokio::test]
async fn forwarding_off_shows_the_stored_url() {
    let server = start_server(Options {
        forward: Some(false),
        ..Options::default()
    })
    .await;
    let (alice, token) = add_user(&server.app, "alice").await;
    add_task(&server.app, alice.id, "1", "https://cdn.example/a.png").await;
    let response = get(
        &format!("{}/api/mj/self", server.base),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["data"]["items"][0]["image_url"],
        "https://cdn.example/a.png"
    );
}

#[tokio::test]
async fn conditional_and_range_requests_pass_through() {
    let upstream = start_upstream().await;
    let server = start_server(Options::default()).await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let task = add_task(&server.app, alice.id, "2001", &upstream.url("/img/small/2")).await;
    let url = server.app.present_image_url(&task);

    let response = get(&url, &[("if-none-match", UPSTREAM_ETAG)]).await;
    assert_eq!(response.status(), 304);
    assert_eq!(header(&response, "etag"), Some(UPSTREAM_ETAG));
    assert!(response.bytes().await.unwrap().is_empty());

    let response = get(&url, &[("if-modified-since", UPSTREAM_LAST_MODIFIED)]).await;
    assert_eq!(response.status(), 304);

    let response = get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range"),
        Some(format!("bytes 1000-1999/{SMALL_LEN}").as_str())
    );
    let bytes = response.bytes().await.unwrap();
    assert!(bytes[..] == image_bytes(2, SMALL_LEN)[1000..2000]);

    let response = get(&url, &[("range", "bytes=999999999-")]).await;
    assert_eq!(response.status(), 416);
}

#[tokio::test]
async fn bad_signatures_are_refused_before_lookup() {
    let upstream = start_upstream().await;
    let server = start_server(Options {
        ttl_secs: Some(30 * 86400),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let (bob, _) = add_user(&server.app, "bob").await;
    let task = add_task(&server.app, alice.id, "3001", &upstream.url("/img/small/3")).await;
    let url = server.app.present_image_url(&task);
    let (path, query) = url.split_once('?').unwrap();
    assert_eq!(get(&url, &[]).await.status(), 200);

    let signature = query.rsplit_once("s=").unwrap().1;
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let forged = format!(
        "{path}?{}s={flipped}{}",
        query.rsplit_once("s=").unwrap().0,
        &signature[1..]
    );
    let truncated = &url[..url.len() - 8];
    let other_user = url.replacen(&format!("u={}", alice.id), &format!("u={}", bob.id), 1);
    let signer = &server.app.images.signer;
    let now = chrono::Utc::now().timestamp();
    let expired = signer.url_for(&server.base, alice.id, "3001", now - 31 * 86400);
    let cases = [
        (path.to_owned(), "not signed"),
        (forged, "invalid"),
        (truncated.to_owned(), "invalid"),
        (other_user, "invalid"),
        (format!("{url}&s={signature}"), "malformed"),
        (expired, "expired"),
    ];
    let hits_before = upstream.hits.load(Ordering::SeqCst);
    for (case, word) in cases {
        let (status, body) = get_error(&case).await;
        assert_eq!(status, 403, "{case}");
        assert_eq!(body["success"], false, "{case}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(word),
            "{case}: {body}"
        );
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), hits_before);

    // A valid signature for bob on alice's mj_id: the lookup uses the owner too.
    let bobs = signer.url_for(&server.base, bob.id, "3001", now);
    assert_eq!(get_error(&bobs).await.0, 404);
}

#[tokio::test]
async fn missing_tasks_and_images_are_404() {
    let server = start_server(Options::default()).await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let task = add_task(&server.app, alice.id, "4001", "").await;
    let signer = &server.app.images.signer;
    let now = chrono::Utc::now().timestamp();
    // No image: the dashboard shows "", and a signed URL made anyway is 404.
    assert_eq!(server.app.present_image_url(&task), "");
    let (status, body) = get_error(&signer.url_for(&server.base, alice.id, "4001", now)).await;
    assert_eq!((status, body["success"].clone()), (404, Value::Bool(false)));
    let (status, _) = get_error(&signer.url_for(&server.base, alice.id, "nope", now)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_errors() {
    let upstream = start_upstream().await;
    let server = start_server(Options {
        max_bytes: Some(1_000_000),
        timeout_secs: Some(1),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let url_of = |task: &Task| server.app.present_image_url(task);

    // 500 with a secret body: 502 and a generic message.
    let task = add_task(&server.app, alice.id, "5001", &upstream.url("/img/error")).await;
    let (status, body) = get_error(&url_of(&task)).await;
    assert_eq!(status, 502);
    assert!(!body.to_string().contains("SECRET"), "{body}");
    assert!(!body.to_string().contains("abc123"), "{body}");
    let task = add_task(&server.app, alice.id, "5002", &upstream.url("/img/gone")).await;
    assert_eq!(get_error(&url_of(&task)).await.0, 502);

    // Slow upstream: 504.
    let task = add_task(&server.app, alice.id, "5003", &upstream.url("/img/slow")).await;
    let started = std::time::Instant::now();
    let (status, body) = get_error(&url_of(&task)).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Declared oversize: refused before any byte.
    let task = add_task(
        &server.app,
        alice.id,
        "5004",
        &upstream.url("/img/sized/2000000"),
    )
    .await;
    let (status, body) = get_error(&url_of(&task)).await;
    assert_eq!(status, 502);
    assert!(
        body["message"].as_str().unwrap().contains("larger"),
        "{body}"
    );

    // Undeclared oversize: cut off mid-stream, the client sees an error, not a complete body.
    let task = add_task(
        &server.app,
        alice.id,
        "5005",
        &upstream.url("/img/chunked/2000000"),
    )
    .await;
    let response = get(&url_of(&task), &[]).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = 0usize;
    let mut failed = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => received += chunk.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error");
    assert!(received <= 1_000_000, "{received} bytes passed the cap");

    // Within the cap: fine.
    let task = add_task(
        &server.app,
        alice.id,
        "5006",
        &upstream.url("/img/chunked/999999"),
    )
    .await;
    let response = get(&url_of(&task), &[]).await;
    assert_eq!(response.bytes().await.unwrap().len(), 999_999);
}

#[tokio::test]
async fn private_upstreams_are_refused_when_the_switch_is_off() {
    let upstream = start_upstream().await;
    let server = start_server(Options {
        deny_private: true,
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let port = upstream.addr.port();
    let cases = [
        format!("http://127.0.0.1:{port}/img/small/1"),
        "http://10.1.2.3/img.png".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/img/small/1"),
        format!("http://localhost:{port}/img/small/1"),
        format!("http://0x7f000001:{port}/img/small/1"),
        // IPv6 forms that embed 127.0.0.1: 6to4, SIIT IPv4-translated, and Teredo.
        format!("http://[2002:7f00:1::1]:{port}/img/small/1"),
        format!("http://[::ffff:0:7f00:1]:{port}/img/small/1"),
        format!("http://[2001:0:7f00:1::1]:{port}/img/small/1"),
        "file:///etc/passwd".to_owned(),
        "gopher://127.0.0.1/".to_owned(),
    ];
    for (n, image_url) in cases.iter().enumerate() {
        let task = add_task(&server.app, alice.id, &format!("6{n:03}"), image_url).await;
        let (status, body) = get_error(&server.app.present_image_url(&task)).await;
        assert_eq!(status, 502, "{image_url}: {body}");
        assert_eq!(
            body["message"], "The image upstream address is not allowed.",
            "{image_url}"
        );
    }
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 0, "nothing reached");
}

/// Redirects are re-checked: the fetcher trusts exactly one loopback upstream (its allowlist)
/// and must refuse where that upstream redirects to.
#[tokio::test]
async fn redirects_to_private_addresses_are_refused() {
    let trusted = start_upstream().await;
    let target = start_upstream().await;
    let fetcher = ImageFetcher::new(FetchConfig {
        allow_private: false,
        private_allowlist: vec![trusted.addr],
        ..FetchConfig::default()
    })
    .unwrap();
    let headers = HeaderMap::new();
    // The trusted upstream itself is reachable.
    let direct = fetcher
        .fetch(reqwest::Method::GET, &trusted.url("/img/small/1"), &headers)
        .await
        .unwrap();
    assert_eq!(direct.status, 200);
    // Redirects within the trusted address are followed.
    let same = trusted.url(&format!(
        "/redirect?to={}",
        form_urlencoded_byte_serialize(&trusted.url("/img/small/1"))
    ));
    assert_eq!(
        fetcher
            .fetch(reqwest::Method::GET, &same, &headers)
            .await
            .unwrap()
            .status,
        200
    );
    let port = target.addr.port();
    for to in [
        format!("http://127.0.0.1:{port}/img/small/1"),
        format!("http://localhost:{port}/img/small/1"),
        format!("http://[::1]:{port}/img/small/1"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let encoded: String = form_urlencoded_byte_serialize(&to);
        let url = trusted.url(&format!("/redirect?to={encoded}"));
        let error = fetcher
            .fetch(reqwest::Method::GET, &url, &headers)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ImageFetchError::Blocked(_)),
            "{to}: {error:?}"
        );
    }
    assert_eq!(target.hits.load(Ordering::SeqCst), 0, "never reached");
    // A redirect to another scheme is not followed (reqwest hands back the 3xx, which is not
    // passed on).
    let url = trusted.url("/redirect?to=file%3A%2F%2F%2Fetc%2Fpasswd");
    let error = fetcher
        .fetch(reqwest::Method::GET, &url, &headers)
        .await
        .unwrap_err();
    assert_eq!(error.http_status(), 502, "{error:?}");
    // Redirect loops end.
    let error = fetcher
        .fetch(reqwest::Method::GET, &trusted.url("/loop"), &headers)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImageFetchError::TooManyRedirects),
        "{error:?}"
    );
}

fn form_urlencoded_byte_serialize(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn finished_images_are_served_from_the_cache_after_the_upstream_dies() {
    let mut upstream = start_upstream().await;
    let server = start_server(Options {
        cache_budget: Some(10 * SMALL_LEN as u64),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let task = add_task(&server.app, alice.id, "7001", &upstream.url("/img/small/7")).await;
    let url = server.app.present_image_url(&task);
    let expected = image_bytes(7, SMALL_LEN);

    let response = get(&url, &[]).await;
    assert_eq!(header(&response, CACHE_STATUS_HEADER), Some("miss"));
    assert!(response.bytes().await.unwrap()[..] == expected[..]);
    let cache = server.app.images.cache.clone().unwrap();
    let key = cache_key(task.id, &task.mj_id, &task.image_url);
    assert!(cache.contains(&key), "stored after one complete view");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);

    upstream.shut_down().await;
    let response = get(&url, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, CACHE_STATUS_HEADER), Some("hit"));
    assert_eq!(header(&response, "content-type"), Some("image/png"));
    assert_eq!(
        header(&response, "content-length"),
        Some(SMALL_LEN.to_string().as_str())
    );
    assert_eq!(
        header(&response, "last-modified"),
        Some(UPSTREAM_LAST_MODIFIED)
    );
    let etag = header(&response, "etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/") && etag != UPSTREAM_ETAG,
        "{etag}"
    );
    assert!(response.bytes().await.unwrap()[..] == expected[..]);

    let response = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(response.status(), 304);
    assert!(response.bytes().await.unwrap().is_empty());
    let response = get(&url, &[("range", "bytes=-100")]).await;
    assert_eq!(response.status(), 206);
    assert!(response.bytes().await.unwrap()[..] == expected[SMALL_LEN - 100..]);
    let response = client().head(&url).send().await.unwrap();
    assert_eq!(
        (
            response.status().as_u16(),
            header(&response, CACHE_STATUS_HEADER)
        ),
        (200, Some("hit"))
    );

    // An unfinished task is never cached: its upstream is gone, so 502.
    let mut running = add_task(&server.app, alice.id, "7002", &upstream.url("/img/small/8")).await;
    running.status = TaskStatus::InProgress;
    assert!(server.app.tasks.update_if_version(&running).await.unwrap());
    assert_eq!(
        get_error(&server.app.present_image_url(&running)).await.0,
        502
    );
}

#[tokio::test]
async fn the_cache_evicts_least_recently_used_at_its_budget() {
    let upstream = start_upstream().await;
    let budget = 2 * SMALL_LEN as u64 + SMALL_LEN as u64 / 2;
    let server = start_server(Options {
        cache_budget: Some(budget),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let cache = server.app.images.cache.clone().unwrap();
    let mut keys = Vec::new();
    let mut urls = Vec::new();
    for n in 0..3u64 {
        let task = add_task(
            &server.app,
            alice.id,
            &format!("800{n}"),
            &upstream.url(&format!("/img/small/{}", 10 + n)),
        )
        .await;
        keys.push(cache_key(task.id, &task.mj_id, &task.image_url));
        urls.push(server.app.present_image_url(&task));
    }
    for url in &urls[..2] {
        get(url, &[]).await.bytes().await.unwrap();
    }
    assert!(cache.contains(&keys[0]) && cache.contains(&keys[1]));
    // Touch the first so the second is the least recently used.
    let response = get(&urls[0], &[]).await;
    assert_eq!(header(&response, CACHE_STATUS_HEADER), Some("hit"));
    response.bytes().await.unwrap();
    get(&urls[2], &[]).await.bytes().await.unwrap();
    assert!(cache.stored_bytes() <= budget);
    assert!(cache.contains(&keys[0]), "recently used kept");
    assert!(!cache.contains(&keys[1]), "least recently used evicted");
    assert!(cache.contains(&keys[2]), "newest stored");
    // A body larger than the whole budget is streamed but never stored.
    let big = add_task(
        &server.app,
        alice.id,
        "8009",
        &upstream.url(&format!("/img/sized/{}", budget + 1)),
    )
    .await;
    let response = get(&server.app.present_image_url(&big), &[]).await;
    assert_eq!(response.bytes().await.unwrap().len() as u64, budget + 1);
    assert!(!cache.contains(&cache_key(big.id, &big.mj_id, &big.image_url)));
    assert!(cache.stored_bytes() <= budget);
}

async fn signing_key_is_shared(kind: Kind) {
    let Some(db) = TestDb::open(kind).await else {
        return;
    };
    // Two instances racing to create the key on a fresh database agree on one.
    let first = mj_tasks::connect(db.url()).await.unwrap();
    let second = mj_tasks::connect(db.url()).await.unwrap();
    let (s1, s2) = (first.settings(), second.settings());
    let (k1, k2) = tokio::join!(
        shared_signing_key(s1.as_ref(), &[1; 32]),
        shared_signing_key(s2.as_ref(), &[2; 32])
    );
    assert_eq!(k1.unwrap(), k2.unwrap());
    first.close().await;
    second.close().await;
    let mut settings = Settings::with_database_url(db.url());
    settings.server_address = Some("https://gw.example".to_owned());
    let a = App::open(settings.clone()).await.unwrap();
    let b = App::open(settings.clone()).await.unwrap();
    let task = add_task(&a, 1, "9001", "https://cdn.example/x.png").await;
    let url = a.present_image_url(&task);
    assert_eq!(url, b.present_image_url(&task));
    // And so does a restart.
    a.store.close().await;
    let c = App::open(settings.clone()).await.unwrap();
    assert_eq!(url, c.present_image_url(&task));
    let query = url.split_once('?').unwrap().1;
    let now = chrono::Utc::now().timestamp();
    assert!(c.images.signer.verify("9001", query, now).is_ok());
    // A configured key takes precedence.
    let mut configured = settings.clone();
    configured.signing_key = Some("an operator chosen key, long enough".to_owned());
    let d = App::open(configured.clone()).await.unwrap();
    assert_ne!(url, d.present_image_url(&task));
    assert!(d.images.signer.verify("9001", query, now).is_err());
    // Too short a configured key is refused at start.
    configured.signing_key = Some("short".to_owned());
    assert!(App::open(configured).await.is_err());
    assert!(!format!("{:?}", d.settings).contains("operator chosen"));
    for app in [b, c, d] {
        app.store.close().await;
    }
}

#[tokio::test]
async fn signing_key_is_shared_sqlite() {
    signing_key_is_shared(Kind::Sqlite).await;
}

#[tokio::test]
async fn signing_key_is_shared_postgres() {
    signing_key_is_shared(Kind::Postgres).await;
}

#[tokio::test]
async fn signing_key_is_shared_mysql() {
    signing_key_is_shared(Kind::MySql).await;
}

#[tokio::test]
async fn concurrent_views_of_an_uncached_image_all_succeed() {
    let upstream = start_upstream().await;
    let server = start_server(Options {
        cache_budget: Some(4 * SMALL_LEN as u64),
        ..Options::default()
    })
    .await;
    let (alice, _) = add_user(&server.app, "alice").await;
    let task = add_task(
        &server.app,
        alice.id,
        "9101",
        &upstream.url("/img/small/21"),
    )
    .await;
    let url = server.app.present_image_url(&task);
    let expected = image_bytes(21, SMALL_LEN);
    let views = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { get(&url, &[]).await.bytes().await.unwrap() })
    });
    for view in futures_util::future::join_all(views).await {
        assert!(view.unwrap()[..] == expected[..]);
    }
    let cache = server.app.images.cache.clone().unwrap();
    assert!(cache.contains(&cache_key(task.id, &task.mj_id, &task.image_url)));
    assert_eq!(cache.stored_bytes(), SMALL_LEN as u64, "stored once");
    let response = get(&url, &[]).await;
    assert_eq!(header(&response, CACHE_STATUS_HEADER), Some("hit"));
    assert!(response.bytes().await.unwrap()[..] == expected[..]);
}

/// The signature is checked before the database is touched: a task store that fails the test
/// on any call sees none for refused signatures.
#[tokio::test]
async fn refused_signatures_never_reach_the_database() {
    let db = TestDb::sqlite();
    let mut app = App::open(Settings::with_database_url(db.url()))
        .await
        .unwrap();
    let signer = app.images.signer.clone();
    // A mock with no expectations panics on any call.
    app.tasks = Arc::new(mj_tasks::MockTaskStore::new());
    let routes = mj_tasks_server::http::routes(app);
    let now = chrono::Utc::now().timestamp();
    let valid = signer.url_for("", 1, "42", now);
    // Change the last hex digit (to one it is not, or the "forgery" is the valid URL 1 in 16).
    let (head, last) = valid.split_at(valid.len() - 1);
    let forged = format!("{head}{}", if last == "0" { "1" } else { "0" });
    let expired = signer.url_for("", 1, "42", now - 40 * 86400);
    for path in [
        "/mj/image/42".to_owned(),
        "/mj/image/42?u=1&e=0&s=zz".to_owned(),
        forged,
        expired,
        valid.replacen("/42?", "/43?", 1),
    ] {
        let response = warp::test::request()
            .method("GET")
            .path(&path)
            .reply(&routes)
            .await;
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["data"], Value::Null);
    }
}
