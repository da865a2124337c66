//! Fixtures shared by the workspace's tests, benches and examples (a dev-dependency only, never
//! published):
//! - [`db`]: a throwaway SQLite file, or a fresh PostgreSQL / MariaDB database per test;
//! - [`local_server`]: a warp filter served on an ephemeral port, and generated bodies;
//! - [`fake_proxy`]: a fake midjourney-proxy built on it;
//! - [`new_api`]: a new-api database (its GORM schema on any engine) to import from;
//! - [`tcp_proxy`]: a TCP forwarder to stop and resume, to take a database away and back.
//!
//! A fixture that cannot set itself up panics: that is how a test reports a broken environment.
#![allow(clippy::unwrap_used)]

pub mod db;
pub mod fake_proxy;
pub mod local_server;
pub mod new_api;
pub mod tcp_proxy;

pub use db::{Kind, TestDb};
