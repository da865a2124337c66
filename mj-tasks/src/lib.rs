//! # mj-tasks
//!
//! The Midjourney task domain of an AI API gateway, as a library: the task model of new-api's
//! `midjourneys` table, typed; query filters and validated pagination; and a [`TaskStore`] with
//! SQLite, PostgreSQL and MySQL/MariaDB backends built on sqlx.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use mj_tasks::{parse_list_query, Audience, NewTask, TaskAction};
//!
//! let store = mj_tasks::connect("sqlite::memory:").await?;
//! let tasks = store.tasks();
//! tasks.insert(&NewTask::submitted(7, TaskAction::Imagine, "a red fox", "1715240000123456", 1)).await?;
//!
//! // The same rules as `GET /api/mj/self?p=1&page_size=20`.
//! let (query, page) = parse_list_query("p=1&page_size=20", Audience::Owner(7)).unwrap();
//! let page = tasks.list(&query, page).await?;
//! assert_eq!(page.total, 1);
//! assert_eq!(page.items[0].prompt, "a red fox");
//! # Ok::<_, mj_tasks::StoreError>(())
//! # }).unwrap();
//! ```
//!
//! Around the store: [`upstream`], a typed client for midjourney-proxy channels that tolerates
//! the real upstream's quirks; [`poller`], the background poller (bounded batches, channels
//! polled concurrently, compare-and-swap writes, deadlines, a database lease for several
//! instances); and [`billing`], prices per action and the [`QuotaLedger`] through which a
//! failed task is refunded exactly once, in the transaction that records the failure.
//!
//! ## Features
//! - `sqlite` (default), `postgres`, `mysql`: the backends.
//! - `mock`: `MockTaskStore` and `MockChannelStore` (mockall) for tests of code using the traits.
#![warn(missing_docs)]

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("mj-tasks needs at least one backend feature: sqlite, postgres or mysql");

pub mod billing;
pub mod bulk;
pub mod channel;
pub mod image;
pub mod import;
pub mod model;
pub mod poller;
pub mod query;
pub mod store;
pub mod synthetic;
pub mod text;
pub mod upstream;

pub use billing::{LedgerConn, PriceTable, QuotaLedger, Refund};
pub use channel::{Channel, NewChannel};
pub use model::{
    AdminTaskView, NewTask, Progress, Task, TaskAction, TaskStatus, UserTaskView, now_millis,
};
pub use poller::{Poller, PollerConfig, PollerDeps, PollerHandle, RoundStats};
pub use query::{Audience, Page, PageRequest, QueryError, TaskQuery, parse_list_query};
#[cfg(feature = "mysql")]
pub use store::MySqlTaskStore;
#[cfg(feature = "postgres")]
pub use store::PostgresTaskStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteTaskStore;
pub use store::{
    Backend, ChannelStore, ImportStore, PollStore, SettingStore, SqlPollStore, SqlStore,
    StoreError, TaskStore, WriteOutcome, connect,
};
#[cfg(any(test, feature = "mock"))]
pub use store::{MockChannelStore, MockPollStore, MockSettingStore, MockTaskStore};
pub use upstream::{SubmitKind, UpstreamClient, UpstreamError};

/// The sqlx version this crate is built with, so that pools built by an embedding application
/// match ([`SqliteTaskStore::from_pool`] and friends).
pub use sqlx;
