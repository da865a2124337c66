//! The bundled server of [`mj_tasks`]: warp routes, dashboard users and auth, configuration and
//! the CLI. Task logic and task SQL live in the library; this crate only wires them to HTTP.
//!
//! Tests and embedders start it with [`App::open`] and [`serve`] on a listener of their own.

pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod images;
pub mod import;
pub mod ledger;
pub mod server;
pub mod token_cache;
pub mod users;

pub use app::{App, OpenError};
pub use config::{Cli, Settings};
pub use server::{serve, shutdown_signal};
