//! Billing: what each action costs, and the ledger that reserves, releases and refunds quota.
//!
//! The rules: a submit **reserves** the price atomically before the upstream is called (two
//! concurrent submits can never overdraw a balance), in the same transaction as a row of the
//! reservation journal (`mj_reservations`, see [`ReservationStore`](crate::store::ReservationStore)),
//! so a crash at any point leaves a trace the poller resolves; a rejected submit **releases** it
//! at once; the task records what was charged in [`Task::quota`](crate::Task::quota); a task that
//! ends in `FAILURE` or `CANCEL` is **refunded exactly once**. The refund runs inside the database
//! transaction that writes the outcome (see
//! [`PollStore::write_outcome`](crate::store::PollStore::write_outcome)), next to a row in
//! `mj_refunds` keyed by the task id, so a crash, a retry or a second poller can neither lose nor
//! double it. A task charged nothing (`quota == 0`) gets nothing back.
//!
//! [`QuotaLedger`] is the seam: it debits and credits balances **on a connection it is handed**,
//! inside the caller's transaction. [`SqlQuotaLedger`] is the ledger of any plain `(id, quota)`
//! table in the same database (the bundled server's `mj_users` is one); a gateway with balances
//! elsewhere implements the trait itself.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::model::TaskAction;

/// A database connection inside the caller's transaction, handed to the [`QuotaLedger`] so a
/// debit or credit commits or rolls back together with the journal or task write next to it.
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

/// What a ledger call can fail with. Kept apart from the store's error type, so the store (which
/// calls the ledger) depends on billing and never the other way round.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database refused or failed the statement.
    #[error("ledger database error")]
    Database(#[from] sqlx::Error),
    /// The ledger was handed a connection of a backend it does not support.
    #[error("the ledger does not support this database backend")]
    UnsupportedBackend,
}

/// Why a balance is credited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditReason {
    /// A reservation whose submit the upstream rejected or never received (journal row id).
    Release {
        /// The `mj_reservations` row.
        reservation_id: i64,
    },
    /// A task that ended in `FAILURE` or `CANCEL`.
    Refund {
        /// The task's id.
        task_id: i64,
    },
}

/// One credit: give `amount` back to `user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Whose balance.
    pub user_id: i64,
    /// How much (never negative; `0` credits nothing).
    pub amount: i64,
    /// Why: a released reservation or a refunded task.
    pub reason: CreditReason,
}

/// A quota ledger. Object safe: used as `Arc<dyn QuotaLedger>`.
///
/// Both calls run **on the connection they are given** and must not commit: the caller's
/// transaction makes them exactly-once (the journal row or the `mj_refunds` row is written in it).
#[async_trait]
pub trait QuotaLedger: Send + Sync {
    /// Takes `amount` from `user_id`'s balance if the balance covers it, atomically (one
    /// conditional update); `Ok(false)` when it does not (nothing is taken).
    async fn reserve_in(
        &self,
        conn: LedgerConn<'_>,
        user_id: i64,
        amount: i64,
    ) -> Result<bool, LedgerError>;

    /// Gives `credit.amount` back to `credit.user_id`.
    async fn credit_in(&self, conn: LedgerConn<'_>, credit: Credit) -> Result<(), LedgerError>;
}

/// The ledger of a plain `(id, quota)` table in the task database: `UPDATE <table> SET quota =
/// quota - amount WHERE id = user AND quota >= amount` to reserve, `quota + amount` to credit.
///
/// ```
/// use mj_tasks::billing::SqlQuotaLedger;
/// assert!(SqlQuotaLedger::new("mj_users").is_ok());
/// assert!(SqlQuotaLedger::new("users; DROP TABLE x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlQuotaLedger {
    table: String,
}

/// A table name that is not a plain SQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ledger table name `{0}` (letters, digits and `_`, not starting with a digit)")]
pub struct InvalidTableName(pub String);

impl SqlQuotaLedger {
    /// The ledger of `table`, which needs an integer `id` and an integer `quota` column.
    pub fn new(table: &str) -> Result<Self, InvalidTableName> {
        let mut chars = table.chars();
        let plain = chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && table.len() <= 64;
        if !plain {
            return Err(InvalidTableName(table.to_owned()));
        }
        Ok(Self {
            table: table.to_owned(),
        })
    }

    /// `UPDATE <table> SET quota = quota <sign> amount WHERE id = user_id`, plus the balance
    /// condition for a debit.
    fn update<DB>(&self, user_id: i64, amount: i64, debit: bool) -> QueryBuilder<DB>
    where
        DB: Database,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let sign = if debit { " - " } else { " + " };
        let mut builder =
            QueryBuilder::<DB>::new(format!("UPDATE {} SET quota = quota{sign}", self.table));
        builder
            .push_bind(amount)
            .push(" WHERE id = ")
            .push_bind(user_id);
        if debit {
            builder.push(" AND quota >= ").push_bind(amount);
        }
        builder
    }

    /// Runs the update on whichever backend `conn` is; the number of rows it changed.
    async fn execute(
        &self,
        conn: LedgerConn<'_>,
        user_id: i64,
        amount: i64,
        debit: bool,
    ) -> Result<u64, LedgerError> {
        let result = match conn {
            #[cfg(feature = "sqlite")]
            LedgerConn::Sqlite(conn) => self
                .update::<sqlx::Sqlite>(user_id, amount, debit)
                .build()
                .execute(conn)
                .await?
                .rows_affected(),
            #[cfg(feature = "postgres")]
            LedgerConn::Postgres(conn) => self
                .update::<sqlx::Postgres>(user_id, amount, debit)
                .build()
                .execute(conn)
                .await?
                .rows_affected(),
            #[cfg(feature = "mysql")]
            LedgerConn::MySql(conn) => self
                .update::<sqlx::MySql>(user_id, amount, debit)
                .build()
                .execute(conn)
                .await?
                .rows_affected(),
        };
        Ok(result)
    }
}

#[async_trait]
impl QuotaLedger for SqlQuotaLedger {
    async fn reserve_in(
        &self,
        conn: LedgerConn<'_>,
        user_id: i64,
        amount: i64,
    ) -> Result<bool, LedgerError> {
        if amount <= 0 {
            return Ok(true);
        }
        Ok(self.execute(conn, user_id, amount, true).await? == 1)
    }

    async fn credit_in(&self, conn: LedgerConn<'_>, credit: Credit) -> Result<(), LedgerError> {
        if credit.amount <= 0 {
            return Ok(());
        }
        self.execute(conn, credit.user_id, credit.amount, false)
            .await?;
        Ok(())
    }
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
