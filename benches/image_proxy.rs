//! Image proxy throughput, memory and time to first byte.
//!
//! `cargo bench --bench image_proxy` runs, side by side in one run:
//!
//! - a fake upstream (in this process) that generates a 100 MB image on the fly;
//! - the real server (`App::open` + `serve`) in a **child process** (this executable started
//!   again with `MJ_BENCH_ROLE=server`), so that its memory is measured alone, from
//!   `/proc/<pid>/status`;
//! - a client that streams every body and counts bytes (it never holds a body).
//!
//! Rounds alternate direct download and download through `GET /mj/image/{mj_id}`; then small
//! images measure the time to first byte, directly and through the proxy. Without `--bench`
//! (for example under `cargo test --benches`) it runs a quick smoke version.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use mj_tasks::image::ImageUrlSigner;
use mj_tasks::{NewTask, Progress, TaskAction, TaskStatus};
use warp::Filter;

use test_support::local_server::{LocalServer, generated_body};

const SIGNING_KEY: &str = "benchmark signing key, 32 bytes..";

fn main() {
    // reqwest is built with rustls and no default provider (see the library): install *ring*.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if std::env::var_os("MJ_BENCH_ROLE").is_some_and(|role| role == "server") {
        runtime.block_on(run_server());
    } else {
        let full = std::env::args().any(|arg| arg == "--bench");
        runtime.block_on(run_bench(full));
    }
}

/// Child process: the server, until stdin closes.
async fn run_server() {
    let database_url = std::env::var("MJ_DATABASE_URL").expect("MJ_DATABASE_URL");
    let mut settings = mj_tasks_server::Settings::with_database_url(database_url);
    settings.allow_private_upstreams = true;
    settings.signing_key = Some(SIGNING_KEY.to_owned());
    settings.image_max_bytes = 128 * 1024 * 1024;
    settings.image_timeout_secs = 600;
    if let Some(dir) = std::env::var_os("MJ_IMAGE_CACHE_DIR") {
        settings.image_cache_dir = Some(dir.into());
        settings.image_cache_max_bytes = 256 * 1024 * 1024;
    }
    let app = mj_tasks_server::App::open(settings)
        .await
        .expect("open the app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    println!("PORT {port}");
    std::io::stdout().flush().expect("flush");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        let _ = stop.send(());
    });
    mj_tasks_server::serve(app, listener, async {
        let _ = stopped.await;
    })
    .await;
}

async fn start_upstream() -> LocalServer {
    let route = warp::path!("img" / u64).map(|len: u64| {
        let chunk = Bytes::from(vec![0x5a_u8; 64 * 1024]);
        let mut response =
            warp::reply::Reply::into_response(warp::reply::stream(generated_body(len, chunk)));
        let headers = response.headers_mut();
        headers.insert("content-type", "image/png".parse().expect("header"));
        headers.insert("content-length", len.to_string().parse().expect("header"));
        headers.insert("etag", "\"bench\"".parse().expect("header"));
        response
    });
    LocalServer::start(route).await
}

struct ServerProcess {
    child: Child,
    port: u16,
}

impl ServerProcess {
    fn start(database_url: &str, cache_dir: &std::path::Path) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .env("MJ_BENCH_ROLE", "server")
            .env("MJ_DATABASE_URL", database_url)
            .env("MJ_IMAGE_CACHE_DIR", cache_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .expect("PORT line");
        Self { child, port }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time (user + system) the server has used so far.
    fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }

    fn stop(mut self) {
        drop(self.child.stdin.take()); // EOF: graceful shutdown
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time from a `/proc/<pid>/stat` file (clock ticks of 10 ms).
fn cpu_of(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Streams a body, counting bytes; returns (bytes, total time, time to first byte).
async fn download(client: &reqwest::Client, url: &str) -> (u64, Duration, Duration) {
    let started = Instant::now();
    let response = client.get(url).send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let mut stream = response.bytes_stream();
    let mut total = 0u64;
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body chunk");
        if first.is_none() {
            first = Some(started.elapsed());
        }
        total += chunk.len() as u64;
    }
    (
        total,
        started.elapsed(),
        first.unwrap_or_else(|| started.elapsed()),
    )
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

async fn run_bench(full: bool) {
    let (big_len, rounds, ttfb_requests) = if full {
        (100_000_000u64, 9, 300)
    } else {
        (5_000_000u64, 1, 10)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    // Serves until the end of the run (dropping it stops it).
    let upstream_server = start_upstream().await;
    let upstream = upstream_server.addr;

    // The tasks, written through the library; the URLs signed by the library's signer with
    // the key the server is configured with (what an embedding gateway would do).
    let store = mj_tasks::connect(&database_url).await.expect("database");
    let tasks = store.tasks();
    // Unfinished tasks are never cached: "big" and "small" always go to the upstream.
    // "done" is finished, so after its first view it is served from the disk cache.
    for (mj_id, len, status) in [
        ("big", big_len, TaskStatus::InProgress),
        ("small", 10_000, TaskStatus::InProgress),
        ("done", big_len, TaskStatus::Success),
    ] {
        tasks
            .insert(&NewTask {
                user_id: 1,
                action: TaskAction::Imagine,
                mj_id: mj_id.to_owned(),
                status,
                progress: Progress::complete(),
                image_url: format!("http://{upstream}/img/{len}"),
                submit_time: mj_tasks::now_millis(),
                ..NewTask::default()
            })
            .await
            .expect("insert");
    }
    store.close().await;

    let server = ServerProcess::start(&database_url, &dir.path().join("cache"));
    let base = format!("http://127.0.0.1:{}", server.port);
    let signer = ImageUrlSigner::new(SIGNING_KEY.as_bytes().to_vec(), 0).expect("key");
    let now = chrono::Utc::now().timestamp();
    let proxied_big = signer.url_for(&base, 1, "big", now);
    let proxied_small = signer.url_for(&base, 1, "small", now);
    let cached_big = signer.url_for(&base, 1, "done", now);
    let direct_big = format!("http://{upstream}/img/{big_len}");
    let direct_small = format!("http://{upstream}/img/10000");
    let client = Arc::new(reqwest::Client::new());

    // Warm up both paths (connections, SQLite pages, allocator), then take the baseline.
    for _ in 0..3 {
        download(&client, &proxied_small).await;
        download(&client, &direct_small).await;
    }
    let (rss_before, _) = server.memory_kib();
    // Reset the peak (VmHWM) to the current RSS so that start-up does not count (best effort).
    let _ = std::fs::write(format!("/proc/{}/clear_refs", server.child.id()), "5");

    let (mut direct, mut proxied, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    let (mut direct_time, mut proxied_time) = (Duration::ZERO, Duration::ZERO);
    let (mut bench_cpu_direct, mut bench_cpu_proxied, mut server_cpu) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let cpu = cpu_of("/proc/self/stat");
        let (bytes, time, _) = download(&client, &direct_big).await;
        bench_cpu_direct += cpu_of("/proc/self/stat").saturating_sub(cpu);
        assert_eq!(bytes, big_len);
        direct.push(mb_per_s(bytes, time));
        direct_time += time;
        let (cpu, server_before) = (cpu_of("/proc/self/stat"), server.cpu());
        let (bytes, time, _) = download(&client, &proxied_big).await;
        bench_cpu_proxied += cpu_of("/proc/self/stat").saturating_sub(cpu);
        server_cpu += server.cpu().saturating_sub(server_before);
        assert_eq!(bytes, big_len);
        proxied.push(mb_per_s(bytes, time));
        proxied_time += time;
        // The first view of the finished image fills the cache; later ones are hits.
        let (bytes, time, _) = download(&client, &cached_big).await;
        assert_eq!(bytes, big_len);
        cached.push(mb_per_s(bytes, time));
        println!(
            "round {}: direct {:.0} MB/s, proxied {:.0} MB/s, finished image {:.0} MB/s ({})",
            round + 1,
            direct[round],
            proxied[round],
            cached[round],
            if round == 0 {
                "upstream, filling the cache"
            } else {
                "cache hit"
            }
        );
    }
    let (rss_after, hwm) = server.memory_kib();

    let (mut ttfb_direct, mut ttfb_proxied) = (Vec::new(), Vec::new());
    for _ in 0..ttfb_requests {
        let (_, _, first) = download(&client, &direct_small).await;
        ttfb_direct.push(first.as_secs_f64() * 1e3);
        let (_, _, first) = download(&client, &proxied_small).await;
        ttfb_proxied.push(first.as_secs_f64() * 1e3);
    }
    server.stop();

    let cache_hit_median = if cached.len() > 1 {
        median(&mut cached[1..])
    } else {
        0.0
    };
    let direct_median = median(&mut direct);
    let proxied_median = median(&mut proxied);
    println!();
    println!(
        "image proxy, {} MB body, {rounds} interleaved rounds",
        big_len / 1_000_000
    );
    println!("  direct   median {direct_median:.0} MB/s");
    println!("  proxied  median {proxied_median:.0} MB/s");
    println!(
        "  ratio    {:.1}% of direct by median, {:.1}% by total time (target >= 80%)",
        proxied_median / direct_median * 100.0,
        direct_time.as_secs_f64() / proxied_time.as_secs_f64() * 100.0
    );
    println!(
        "  finished image from the disk cache: median {cache_hit_median:.0} MB/s ({:.1}% of direct)",
        cache_hit_median / direct_median * 100.0
    );
    let per_gb = |cpu: Duration| cpu.as_secs_f64() * 1e3 / (rounds as f64 * big_len as f64 / 1e9);
    println!(
        "  CPU ms per GB: direct: upstream+client {:.0}; proxied: upstream+client {:.0}, server {:.0}",
        per_gb(bench_cpu_direct),
        per_gb(bench_cpu_proxied),
        per_gb(server_cpu)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  machine: {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  server RSS before {:.1} MiB, after {:.1} MiB, peak {:.1} MiB: peak growth {:.1} MiB (target < 16 MiB)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        hwm.saturating_sub(rss_before) as f64 / 1024.0
    );
    let (d50, p50) = (median(&mut ttfb_direct), median(&mut ttfb_proxied));
    let (d95, p95) = (
        percentile(&mut ttfb_direct, 0.95),
        percentile(&mut ttfb_proxied, 0.95),
    );
    println!("time to first byte, 10 kB image, {ttfb_requests} requests each");
    println!("  direct   p50 {d50:.3} ms, p95 {d95:.3} ms");
    println!("  proxied  p50 {p50:.3} ms, p95 {p95:.3} ms");
    println!(
        "  overhead p50 {:.3} ms, p95 {:.3} ms",
        p50 - d50,
        p95 - d95
    );
}
