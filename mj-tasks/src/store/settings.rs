//! Named values shared by every instance on one database (`mj_settings`).
//!
//! The first writer of a name wins and every later reader, on any instance, gets its value: the
//! image-URL signing key is generated once and then agreed on by all instances and restarts.

/// Implements [`SettingStore`](crate::store::SettingStore) for a backend store type with a
/// `pool` field of `sqlx::Pool<$db>`, with one body for the three dialects.
///
/// Race-free without dialect-specific upserts (`INSERT OR IGNORE`, `ON CONFLICT DO NOTHING`,
/// `INSERT IGNORE`): read; if absent, insert and treat a unique violation as "someone else
/// inserted first"; read again. The primary key on `name` makes exactly one insert win.
macro_rules! impl_setting_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::SettingStore for $store {
            async fn setting(&self, name: &str) -> Result<Option<String>, $crate::StoreError> {
                let mut builder =
                    sqlx::QueryBuilder::<$db>::new("SELECT value FROM mj_settings WHERE name = ");
                builder.push_bind(name);
                let value: Option<String> = builder
                    .build_query_scalar()
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(value)
            }

            async fn get_or_insert_setting(
                &self,
                name: &str,
                candidate: &str,
            ) -> Result<String, $crate::StoreError> {
                if let Some(value) = self.setting(name).await? {
                    return Ok(value);
                }
                let mut builder = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO mj_settings (name, value, created_at) ",
                );
                builder.push_values(std::iter::once(()), |mut row, ()| {
                    row.push_bind(name)
                        .push_bind(candidate)
                        .push_bind($crate::now_millis());
                });
                match builder.build().execute(&self.pool).await {
                    Ok(_) => {}
                    Err(error) => match $crate::StoreError::from(error) {
                        // Another instance inserted first: its value is the one to use.
                        $crate::StoreError::Conflict(_) => {}
                        other => return Err(other),
                    },
                }
                self.setting(name)
                    .await?
                    .ok_or_else(|| $crate::StoreError::Database(sqlx::Error::RowNotFound))
            }
        }
    };
}
