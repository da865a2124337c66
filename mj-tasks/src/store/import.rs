//! What an import from another database needs of the store beyond [`TaskStore`]: the claims
//! that make it idempotent and resumable (`mj_import_claims`), a look at the ids it is about to
//! write, and channels written with their ids.
//!
//! [`TaskStore`]: crate::TaskStore

use async_trait::async_trait;
use sqlx::QueryBuilder;

use crate::channel::Channel;
use crate::store::dialect::Dialect;
use crate::store::{SqlTaskStore, StoreError};

/// What a claim reserves ids of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimEntity {
    /// Task ids (`midjourneys`), claimed as ranges.
    Task,
    /// Channel ids (`mj_channels`), one per claim.
    Channel,
    /// User ids (the server's `mj_users`), one per claim.
    User,
}

impl ClaimEntity {
    /// The value stored in `mj_import_claims.entity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Channel => "channel",
            Self::User => "user",
        }
    }
}

/// Ids `first_id..=last_id` reserved by one import source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct ImportClaim {
    /// The first id of the range.
    pub first_id: i64,
    /// The last id of the range (equal to `first_id` for users and channels).
    pub last_id: i64,
}

/// The stored tasks whose ids fall in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct IdSpan {
    /// How many there are.
    pub count: i64,
    /// The smallest of their ids (`None` when there are none).
    pub min_id: Option<i64>,
    /// The largest of their ids.
    pub max_id: Option<i64>,
}

/// Storage an import writes through besides [`TaskStore`](crate::TaskStore). Object safe.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ImportStore: Send + Sync {
    /// The claims `source` holds on `entity` ids, by first id.
    async fn import_claims(
        &self,
        source: &str,
        entity: ClaimEntity,
    ) -> Result<Vec<ImportClaim>, StoreError>;

    /// Records that `source` reserves `entity` ids `first_id..=last_id`; claiming the same
    /// first id twice is [`StoreError::Conflict`].
    async fn add_import_claim(
        &self,
        source: &str,
        entity: ClaimEntity,
        first_id: i64,
        last_id: i64,
    ) -> Result<(), StoreError>;

    /// The stored tasks with ids in `first_id..=last_id` (one primary-key range read).
    async fn task_id_span(&self, first_id: i64, last_id: i64) -> Result<IdSpan, StoreError>;

    /// Inserts a channel with its id, name, secret, state and creation time as given.
    async fn insert_channel_with_id(&self, channel: &Channel) -> Result<(), StoreError>;
}

#[async_trait]
impl<D: Dialect> ImportStore for SqlTaskStore<D> {
    async fn import_claims(
        &self,
        source: &str,
        entity: ClaimEntity,
    ) -> Result<Vec<ImportClaim>, StoreError> {
        let mut builder = QueryBuilder::<D>::new(
            "SELECT first_id, last_id FROM mj_import_claims WHERE source = ",
        );
        D::bind_text(&mut builder, source);
        builder.push(" AND entity = ");
        D::bind_text(&mut builder, entity.as_str());
        builder.push(" ORDER BY first_id");
        Ok(D::fetch_import_claims(&mut *self.pool.acquire().await?, builder).await?)
    }

    async fn add_import_claim(
        &self,
        source: &str,
        entity: ClaimEntity,
        first_id: i64,
        last_id: i64,
    ) -> Result<(), StoreError> {
        let mut builder = QueryBuilder::<D>::new(
            "INSERT INTO mj_import_claims (source, entity, first_id, last_id, claimed_at) VALUES (",
        );
        D::bind_text(&mut builder, source);
        builder.push(", ");
        D::bind_text(&mut builder, entity.as_str());
        for value in [first_id, last_id, crate::now_millis()] {
            builder.push(", ");
            D::bind_int(&mut builder, value);
        }
        builder.push(")");
        D::execute(&mut *self.pool.acquire().await?, builder).await?;
        Ok(())
    }

    async fn task_id_span(&self, first_id: i64, last_id: i64) -> Result<IdSpan, StoreError> {
        let mut builder = QueryBuilder::<D>::new(
            "SELECT COUNT(*) AS count, MIN(id) AS min_id, MAX(id) AS max_id \
             FROM midjourneys WHERE id >= ",
        );
        D::bind_int(&mut builder, first_id);
        builder.push(" AND id <= ");
        D::bind_int(&mut builder, last_id);
        Ok(D::fetch_id_span(&mut *self.pool.acquire().await?, builder).await?)
    }

    async fn insert_channel_with_id(&self, channel: &Channel) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut builder = QueryBuilder::<D>::new(
            "INSERT INTO mj_channels (id, name, base_url, secret, enabled, created_at) VALUES (",
        );
        D::bind_int(&mut builder, channel.id);
        for text in [&channel.name, &channel.base_url, &channel.secret] {
            builder.push(", ");
            D::bind_text(&mut builder, text);
        }
        builder.push(", ");
        D::bind_flag(&mut builder, channel.enabled);
        builder.push(", ");
        D::bind_int(&mut builder, channel.created_at);
        builder.push(")");
        D::execute(&mut tx, builder).await?;
        if let Some(statement) = D::sync_id_sequence("mj_channels") {
            D::run_script(&mut tx, statement).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
