//! [`App`]: everything a request handler needs, opened from the [`Settings`].

use std::sync::Arc;

use mj_tasks::{
    ChannelStore, PollStore, Poller, PollerConfig, PollerDeps, QuotaLedger, Relay,
    ReservationStore, SqlPollStore, SqlReservationStore, SqlStore, StoreError, Task, TaskStore,
    UpstreamClient, UpstreamError,
};

use crate::config::Settings;
use crate::token_cache::CachedUserStore;
use crate::{images, users};

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
    /// The quota ledger on `mj_users.quota`: reservations, releases, refunds.
    pub ledger: Arc<dyn QuotaLedger>,
    /// The poller's store (outcome writes with refunds, the lease).
    pub poll_store: Arc<dyn PollStore>,
    /// The reservation journal (what makes submits crash-safe).
    pub reservations: Arc<dyn ReservationStore>,
    /// The library's submit workflow the relay routes call (upstream timeout
    /// `--upstream-timeout-secs`, prices `--prices`, image addresses through [`Self::images`]).
    pub relay: Relay,
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
    /// The upstream HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Upstream(#[from] UpstreamError),
    /// The quota ledger's table name is not an identifier.
    #[error("{0}")]
    Ledger(#[from] mj_tasks::billing::InvalidTableName),
}

impl App {
    /// Connects to the configured database, applies the library's and the server's migrations
    /// and sets up image forwarding.
    pub async fn open(settings: Settings) -> Result<Self, OpenError> {
        // Before any reqwest client is built anywhere in the process (reqwest panics without).
        mj_tasks::image::install_crypto_provider();
        let store = mj_tasks::connect(&settings.database_url).await?;
        let users = CachedUserStore::wrap(
            users::open_user_store(&store).await?,
            std::time::Duration::from_millis(settings.token_cache_ms),
        );
        let images = images::Images::open(&settings, &store).await?;
        let ledger: Arc<dyn QuotaLedger> = Arc::new(users::quota_ledger()?);
        let poll_store = Arc::new(SqlPollStore::new(store.clone(), ledger.clone()));
        let reservations = Arc::new(SqlReservationStore::new(store.clone(), ledger.clone()));
        let upstream = UpstreamClient::new(settings.upstream_timeout())?;
        let images = Arc::new(images);
        let relay = Relay::from_parts(
            store.tasks(),
            store.channels(),
            reservations.clone(),
            upstream,
            settings.prices.clone(),
        )
        .with_image_presenter(images.clone());
        Ok(Self {
            tasks: store.tasks(),
            channels: store.channels(),
            users,
            settings: Arc::new(settings),
            ledger,
            poll_store,
            reservations,
            relay,
            store,
            images,
        })
    }

    /// The `image_url` to show for `task` in any answer (dashboard lists, relay fetch and
    /// list-by-condition): signed and forwarded when forwarding is on, see
    /// [`images::Images::present`].
    pub fn present_image_url(&self, task: &Task) -> String {
        self.images.present(task)
    }

    /// The poller configured by the settings (`None` when `--poll-interval-secs` is 0). Several
    /// instances on PostgreSQL or MariaDB share the work through the database lease.
    pub fn poller(&self) -> Option<Poller> {
        if self.settings.poll_interval_secs == 0 {
            return None;
        }
        let config = PollerConfig {
            interval: std::time::Duration::from_secs(self.settings.poll_interval_secs),
            task_timeout: std::time::Duration::from_secs(self.settings.task_timeout_secs),
            // No live submit holds a reservation longer than its upstream call.
            reservation_timeout: self.settings.upstream_timeout(),
            // Lease and write concurrency follow the database (the library's policy).
            ..PollerConfig::for_backend(self.store.backend())
        };
        let deps = PollerDeps {
            tasks: self.tasks.clone(),
            channels: self.channels.clone(),
            store: self.poll_store.clone(),
            reservations: self.reservations.clone(),
        };
        match Poller::new(deps, config) {
            Ok(poller) => Some(poller),
            Err(error) => {
                tracing::error!(%error, "cannot start the poller");
                None
            }
        }
    }
}
