//! What an import from another database needs of the store beyond [`TaskStore`]: the claims
//! that make it idempotent and resumable (`mj_import_claims`), a look at the ids it is about to
//! write, and channels written with their ids.
//!
//! [`TaskStore`]: crate::TaskStore

use async_trait::async_trait;

use crate::channel::Channel;
use crate::store::StoreError;

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

/// Implements [`ImportStore`] for a backend store type with a `pool` field of `sqlx::Pool<$db>`
/// and a `sync_id_sequence(table)` function (see the backends), with one body for the three
/// dialects.
macro_rules! impl_import_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::import::ImportStore for $store {
            async fn import_claims(
                &self,
                source: &str,
                entity: $crate::store::import::ClaimEntity,
            ) -> Result<Vec<$crate::store::import::ImportClaim>, $crate::StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "SELECT first_id, last_id FROM mj_import_claims WHERE source = ",
                );
                builder
                    .push_bind(source)
                    .push(" AND entity = ")
                    .push_bind(entity.as_str())
                    .push(" ORDER BY first_id");
                Ok(builder.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn add_import_claim(
                &self,
                source: &str,
                entity: $crate::store::import::ClaimEntity,
                first_id: i64,
                last_id: i64,
            ) -> Result<(), $crate::StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO mj_import_claims (source, entity, first_id, last_id, claimed_at) ",
                );
                builder.push_values(std::iter::once(()), |mut row, ()| {
                    row.push_bind(source)
                        .push_bind(entity.as_str())
                        .push_bind(first_id)
                        .push_bind(last_id)
                        .push_bind($crate::now_millis());
                });
                builder.build().execute(&self.pool).await?;
                Ok(())
            }

            async fn task_id_span(
                &self,
                first_id: i64,
                last_id: i64,
            ) -> Result<$crate::store::import::IdSpan, $crate::StoreError> {
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "SELECT COUNT(*) AS count, MIN(id) AS min_id, MAX(id) AS max_id \
                     FROM midjourneys WHERE id >= ",
                );
                builder
                    .push_bind(first_id)
                    .push(" AND id <= ")
                    .push_bind(last_id);
                Ok(builder.build_query_as().fetch_one(&self.pool).await?)
            }

            async fn insert_channel_with_id(
                &self,
                channel: &$crate::Channel,
            ) -> Result<(), $crate::StoreError> {
                let mut tx = self.pool.begin().await?;
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO mj_channels (id, name, base_url, secret, enabled, created_at) ",
                );
                builder.push_values(std::iter::once(channel), |mut row, channel| {
                    row.push_bind(channel.id)
                        .push_bind(channel.name.as_str())
                        .push_bind(channel.base_url.as_str())
                        .push_bind(channel.secret.as_str())
                        .push_bind(channel.enabled)
                        .push_bind(channel.created_at);
                });
                builder.build().execute(&mut *tx).await?;
                if let Some(statement) = <$store>::sync_id_sequence("mj_channels") {
                    sqlx::raw_sql(statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
