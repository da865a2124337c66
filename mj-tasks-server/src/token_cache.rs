//! A short-lived memory of token lookups in front of a [`UserStore`].
//!
//! Every dashboard and relay request authenticates by token, and at thousands of requests per
//! second the lookup (one more database round trip through the pool, for the same few tokens)
//! costs as much as the request's own work. [`CachedUserStore`] remembers each user found by
//! token digest for a short time (`--token-cache-ms`; off by default, since the contract wants a
//! disable from the CLI to take effect at once):
//!
//! * every change made through it (`user disable`, a token rotation, a quota, a new user) clears
//!   the memory at once, so within this server a disable takes effect on the next request;
//! * a change made by another process (the CLI on the same database, another instance) takes
//!   effect within the time-to-live;
//! * only tokens that belong to a user are remembered, so unknown tokens cannot fill it, and it
//!   holds at most [`CAPACITY`] of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mj_tasks::StoreError;

use crate::users::{ImportedUser, Role, User, UserStore};

/// Tokens remembered at most; beyond that the expired ones go, and if none has expired, all.
pub const CAPACITY: usize = 4096;

/// A [`UserStore`] that answers repeated token lookups from memory for a short time.
pub struct CachedUserStore {
    inner: Arc<dyn UserStore>,
    time_to_live: Duration,
    found: Mutex<HashMap<String, Found>>,
}

/// A user found by token, and when.
struct Found {
    user: User,
    at: Instant,
}

impl CachedUserStore {
    /// `inner` behind a memory of `time_to_live`; a zero time-to-live returns `inner` itself.
    pub fn wrap(inner: Arc<dyn UserStore>, time_to_live: Duration) -> Arc<dyn UserStore> {
        if time_to_live.is_zero() {
            return inner;
        }
        Arc::new(Self {
            inner,
            time_to_live,
            found: Mutex::new(HashMap::new()),
        })
    }

    fn remembered(&self, token_hash: &str) -> Option<User> {
        let found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        found
            .get(token_hash)
            .filter(|entry| entry.at.elapsed() < self.time_to_live)
            .map(|entry| entry.user.clone())
    }

    fn remember(&self, token_hash: &str, user: &User, looked_up_at: Instant) {
        let mut found = self.found.lock().unwrap_or_else(PoisonError::into_inner);
        if found.len() >= CAPACITY {
            found.retain(|_, entry| entry.at.elapsed() < self.time_to_live);
            if found.len() >= CAPACITY {
                found.clear();
            }
        }
        found.insert(
            token_hash.to_owned(),
            Found {
                user: user.clone(),
                at: looked_up_at,
            },
        );
    }

    /// Forgets everything: a user changed.
    fn forget(&self) {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs a change through the inner store and forgets what was remembered, also when the
    /// change failed (it may have been applied before the error).
    fn changed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.forget();
        result
    }
}

#[async_trait]
impl UserStore for CachedUserStore {
    async fn create_user(
        &self,
        username: &str,
        role: Role,
        quota: i64,
        token_hash: &str,
    ) -> Result<User, StoreError> {
        let result = self
            .inner
            .create_user(username, role, quota, token_hash)
            .await;
        self.changed(result)
    }

    async fn insert_user_with_id(&self, user: &ImportedUser) -> Result<(), StoreError> {
        let result = self.inner.insert_user_with_id(user).await;
        self.changed(result)
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.inner.user_by_id(id).await
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.remembered(token_hash) {
            return Ok(Some(user));
        }
        // Stamped before the read: an entry never outlives the time-to-live counted from when
        // the database was asked.
        let asked_at = Instant::now();
        let user = self.inner.user_by_token_hash(token_hash).await?;
        if let Some(user) = &user {
            self.remember(token_hash, user, asked_at);
        }
        Ok(user)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_name(username).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.list_users().await
    }

    async fn set_enabled(&self, username: &str, enabled: bool) -> Result<bool, StoreError> {
        let result = self.inner.set_enabled(username, enabled).await;
        self.changed(result)
    }

    async fn set_token_hash(&self, username: &str, token_hash: &str) -> Result<bool, StoreError> {
        let result = self.inner.set_token_hash(username, token_hash).await;
        self.changed(result)
    }

    async fn set_quota(&self, username: &str, quota: i64) -> Result<bool, StoreError> {
        let result = self.inner.set_quota(username, quota).await;
        self.changed(result)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::users::{AccessToken, open_user_store};

    async fn stores(time_to_live: Duration) -> (Arc<dyn UserStore>, Arc<dyn UserStore>) {
        let store = mj_tasks::connect("sqlite::memory:").await.unwrap();
        let inner = open_user_store(&store).await.unwrap();
        (inner.clone(), CachedUserStore::wrap(inner, time_to_live))
    }

    #[tokio::test]
    async fn changes_through_the_cache_apply_at_once() {
        let (_, cached) = stores(Duration::from_secs(3600)).await;
        let token = AccessToken::generate();
        cached
            .create_user("ann", Role::User, 0, &token.hash())
            .await
            .unwrap();
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .unwrap()
                .enabled
        );
        cached.set_enabled("ann", false).await.unwrap();
        let user = cached.user_by_token_hash(&token.hash()).await.unwrap();
        assert!(
            !user.unwrap().enabled,
            "a disable is seen on the next lookup"
        );
        let rotated = AccessToken::generate();
        cached.set_token_hash("ann", &rotated.hash()).await.unwrap();
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            cached
                .user_by_token_hash(&rotated.hash())
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn changes_elsewhere_apply_within_the_time_to_live() {
        let time_to_live = Duration::from_millis(200);
        let (elsewhere, cached) = stores(time_to_live).await;
        let token = AccessToken::generate();
        elsewhere
            .create_user("bea", Role::User, 0, &token.hash())
            .await
            .unwrap();
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .unwrap()
                .enabled
        );
        elsewhere.set_enabled("bea", false).await.unwrap();
        // Remembered for now ...
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .unwrap()
                .enabled
        );
        tokio::time::sleep(time_to_live).await;
        // ... and read again once the time-to-live has passed.
        assert!(
            !cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .unwrap()
                .enabled
        );
    }

    #[tokio::test]
    async fn unknown_tokens_are_not_remembered_and_the_memory_is_bounded() {
        let (elsewhere, cached) = stores(Duration::from_secs(3600)).await;
        let token = AccessToken::generate();
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .is_none()
        );
        // A user created elsewhere with that token is found at once: misses are not kept.
        elsewhere
            .create_user("cat", Role::User, 0, &token.hash())
            .await
            .unwrap();
        assert!(
            cached
                .user_by_token_hash(&token.hash())
                .await
                .unwrap()
                .is_some()
        );

        let memory = CachedUserStore {
            inner: elsewhere,
            time_to_live: Duration::from_secs(3600),
            found: Mutex::new(HashMap::new()),
        };
        let user = memory.inner.user_by_name("cat").await.unwrap().unwrap();
        for index in 0..=CAPACITY {
            memory.remember(&index.to_string(), &user, Instant::now());
        }
        let held = memory.found.lock().unwrap().len();
        assert!(held <= CAPACITY, "{held}");
    }

    #[tokio::test]
    async fn zero_time_to_live_is_no_cache() {
        let (elsewhere, _) = stores(Duration::ZERO).await;
        let plain = CachedUserStore::wrap(elsewhere.clone(), Duration::ZERO);
        assert!(Arc::ptr_eq(&plain, &elsewhere));
    }
}
