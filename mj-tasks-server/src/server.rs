//! Serving [`App`] on a listener until shutdown, with bounds a public server needs: a header
//! read timeout (slow, half-open and idle keep-alive connections are closed) and a shutdown
//! deadline (in-flight requests get `--shutdown-timeout-secs`, then what is left is closed).

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use mj_tasks::{Poller, PollerHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{App, http};

/// Serves the routes on `listener` until `shutdown` completes. Then no connection is accepted,
/// in-flight requests get `--shutdown-timeout-secs` to finish, the connections still open
/// after that are closed, the poller stops and the pool is closed, each within the deadline.
pub async fn serve<F>(app: App, listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let store = app.store.clone();
    let header_read_timeout = Duration::from_secs(app.settings.header_read_timeout_secs.max(1));
    let deadline = Duration::from_secs(app.settings.shutdown_timeout_secs);
    let poller: Option<PollerHandle> = app.poller().map(Poller::spawn);
    let service = warp::service(http::routes(app));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Reap finished connections so the set only holds live ones.
        while connections.try_join_next().is_some() {}
        // The header read timeout runs whenever a request head is awaited: on a new connection
        // as between requests on a kept-alive one.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            );
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);

    let started = tokio::time::Instant::now();
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            deadline_secs = deadline.as_secs(),
            "shutdown deadline passed: closing the connections still open"
        );
    }
    // Dropping the remaining requests also gives their database connections back to the pool.
    connections.shutdown().await;
    let left = || {
        deadline
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1))
    };
    if let Some(poller) = poller
        && tokio::time::timeout(left(), poller.stop()).await.is_err()
    {
        tracing::warn!("shutdown deadline passed: the poller was stopped mid-round");
    }
    if tokio::time::timeout(left(), store.close()).await.is_err() {
        tracing::warn!("shutdown deadline passed: database connections abandoned");
    }
}

/// Running out of file descriptors makes every accept fail at once: wait instead of spinning,
/// as hyper's own server does. Per-connection errors (reset before accept) are skipped.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
