//! The bundled server of [`mj_tasks`]: warp routes, dashboard users and auth, configuration and
//! the CLI. Task logic and task SQL live in the library; this crate only wires them to HTTP.
//!
//! Tests and embedders start it with [`App::open`] and [`serve`] on a listener of their own.

pub mod cli;
pub mod config;
pub mod http;
pub mod images;
pub mod users;

use std::future::Future;
use std::sync::Arc;

use mj_tasks::{ChannelStore, SqlStore, StoreError, Task, TaskStore};
use tokio::net::TcpListener;

pub use config::{Cli, Settings};

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The task store.
    pub tasks: Arc<dyn TaskStore>,
    /// The channel store.
    pub channels: Arc<dyn ChannelStore>,
    /// Dashboard users.
    pub users: Arc<dyn users::UserStore>,
    /// The database handle (to close the pool on shutdown).
    pub store: SqlStore,
    /// Settings the server was started with.
    pub settings: Arc<Settings>,
    /// Image forwarding: URL signer, upstream fetcher, disk cache.
    pub images: Arc<images::Images>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Image forwarding could not be set up.
    #[error("{0}")]
    Images(#[from] images::ImagesError),
}

impl App {
    /// Connects to the configured database, applies the library's and the server's migrations
    /// and sets up image forwarding.
    pub async fn open(settings: Settings) -> Result<Self, OpenError> {
        // Before any reqwest client is built anywhere in the process (reqwest panics without).
        mj_tasks::image::install_crypto_provider();
        let store = mj_tasks::connect(&settings.database_url).await?;
        let users = users::open_user_store(&store).await?;
        let images = images::Images::open(&settings, &store).await?;
        Ok(Self {
            tasks: store.tasks(),
            channels: store.channels(),
            users,
            store,
            settings: Arc::new(settings),
            images: Arc::new(images),
        })
    }

    /// The `image_url` to show for `task` in any answer (dashboard lists, relay fetch and
    /// list-by-condition): signed and forwarded when forwarding is on, see
    /// [`images::Images::present`].
    pub fn present_image_url(&self, task: &Task) -> String {
        self.images.present(task)
    }
}

/// Serves the routes on `listener` until `shutdown` completes; in-flight requests finish, then
/// the pool is closed.
pub async fn serve<F>(app: App, listener: TcpListener, shutdown: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let store = app.store.clone();
    warp::serve(http::routes(app))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
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
