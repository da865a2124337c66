//! Billing: what each action costs, and the ledger that reserves, releases and refunds quota.
//!
//! The rules: a submit **reserves** the price atomically before the upstream is called (two
//! concurrent submits can never overdraw a balance); a rejected submit **releases** it at once;
//! the task records what was charged in [`Task::quota`](crate::Task::quota); a task that ends in
//! `FAILURE` is **refunded exactly once**. The refund runs inside the database transaction that
//! writes the failure (see [`PollStore::write_outcome`](crate::store::PollStore::write_outcome)),
//! next to a row in `mj_refunds` keyed by the task id, so a crash, a retry or a second poller can
//! neither lose nor double it. A task charged nothing (`quota == 0`) gets nothing back.
//!
//! [`QuotaLedger`] is the seam: the bundled server implements it on its users table, and a
//! gateway plugs in its own ledger the same way.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::model::TaskAction;
use crate::store::StoreError;

/// A database connection inside the transaction that fails a task, handed to
/// [`QuotaLedger::refund_in`] so the credit commits or rolls back together with the failure.
#[non_exhaustive]
pub enum LedgerConn<'c> {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(&'c mut sqlx::SqliteConnection),
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(&'c mut sqlx::PgConnection),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(&'c mut sqlx::MySqlConnection),
}

/// One refund: give `amount` back to `user_id` for task `task_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// The failed task's id.
    pub task_id: i64,
    /// Its owner.
    pub user_id: i64,
    /// What it was charged.
    pub amount: i64,
}

/// A quota ledger. Object safe: used as `Arc<dyn QuotaLedger>`.
#[async_trait]
pub trait QuotaLedger: Send + Sync {
    /// Takes `amount` from `user_id`'s balance if the balance covers it, atomically (one
    /// conditional update); `Ok(false)` when it does not (nothing is taken).
    async fn reserve(&self, user_id: i64, amount: i64) -> Result<bool, StoreError>;

    /// Gives back a reservation whose submit the upstream rejected or never received.
    async fn release(&self, user_id: i64, amount: i64) -> Result<(), StoreError>;

    /// Credits a refund **on `conn`**, inside the transaction that marks the task failed; it must
    /// not commit. The store guarantees it is called at most once per task.
    async fn refund_in(&self, conn: LedgerConn<'_>, refund: Refund) -> Result<(), StoreError>;
}

/// Price of each action in quota units.
///
/// The defaults follow new-api's per-call model prices at 500 000 quota per US dollar: most
/// actions 50 000 (0.10 $), upscale, describe and face swap 25 000, and inpaint and custom zoom 0
/// (their `MODAL` step is the billed one). Unknown actions cost [`PriceTable::fallback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    prices: HashMap<String, i64>,
    fallback: i64,
}

impl Default for PriceTable {
    fn default() -> Self {
        let mut table = Self {
            prices: HashMap::new(),
            fallback: 50_000,
        };
        for (action, price) in [
            (TaskAction::Imagine, 50_000),
            (TaskAction::Variation, 50_000),
            (TaskAction::HighVariation, 50_000),
            (TaskAction::LowVariation, 50_000),
            (TaskAction::Reroll, 50_000),
            (TaskAction::Pan, 50_000),
            (TaskAction::Zoom, 50_000),
            (TaskAction::Blend, 50_000),
            (TaskAction::Modal, 50_000),
            (TaskAction::Shorten, 50_000),
            (TaskAction::Upscale, 25_000),
            (TaskAction::Describe, 25_000),
            (TaskAction::SwapFace, 25_000),
            (TaskAction::Video, 50_000),
            (TaskAction::Upload, 0),
            (TaskAction::Inpaint, 0),
            (TaskAction::CustomZoom, 0),
        ] {
            table.set(&action, price);
        }
        table
    }
}

/// A price table override that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid price entry `{0}` (expected ACTION=QUOTA, QUOTA a non-negative integer)")]
pub struct PriceError(pub String);

impl PriceTable {
    /// What `action` costs.
    pub fn price(&self, action: &TaskAction) -> i64 {
        self.prices
            .get(action.as_str())
            .copied()
            .unwrap_or(self.fallback)
    }

    /// Sets the price of `action`.
    pub fn set(&mut self, action: &TaskAction, price: i64) {
        self.prices.insert(action.as_str().to_owned(), price);
    }

    /// The price of actions the table does not list.
    pub fn fallback(&self) -> i64 {
        self.fallback
    }

    /// The defaults with overrides applied from `IMAGINE=50000,UPSCALE=10000,*=1000` (`*` sets
    /// the fallback; action names are case-insensitive; blank text changes nothing).
    ///
    /// ```
    /// use mj_tasks::{PriceTable, TaskAction};
    /// let table = PriceTable::with_overrides("imagine=7, *=3").unwrap();
    /// assert_eq!(table.price(&TaskAction::Imagine), 7);
    /// assert_eq!(table.price(&TaskAction::parse("NEW_THING")), 3);
    /// assert!(PriceTable::with_overrides("IMAGINE=-1").is_err());
    /// ```
    pub fn with_overrides(text: &str) -> Result<Self, PriceError> {
        let mut table = Self::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let invalid = || PriceError(entry.to_owned());
            let (name, value) = entry.split_once('=').ok_or_else(invalid)?;
            let price: i64 = value.trim().parse().map_err(|_| invalid())?;
            if price < 0 {
                return Err(invalid());
            }
            let name = name.trim().to_ascii_uppercase();
            match name.as_str() {
                "" => return Err(invalid()),
                "*" => table.fallback = price,
                _ => table.set(&TaskAction::parse(&name), price),
            }
        }
        Ok(table)
    }
}
