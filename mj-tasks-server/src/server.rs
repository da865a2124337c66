//! Serving [`App`] on a listener until shutdown.

use std::future::Future;

use mj_tasks::{Poller, PollerHandle};
use tokio::net::TcpListener;

use crate::{App, http};

/// Serves the routes on `listener` until `shutdown` completes; in-flight requests finish, then
/// the pool is closed.
pub async fn serve<F>(app: App, listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let store = app.store.clone();
    let poller: Option<PollerHandle> = app.poller().map(Poller::spawn);
    warp::serve(http::routes(app))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    if let Some(poller) = poller {
        poller.stop().await;
    }
    store.close().await;
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
