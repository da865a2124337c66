//! Image URL forwarding: signed, owner-bound image URLs ([`ImageUrlSigner`]) and the
//! pieces of a streaming image proxy that is safe to expose
//! ([`ImageFetcher`]: SSRF-checked, time- and size-bounded; [`ImageCache`]: finished images on
//! local disk). No web framework here: the fetcher yields a status, headers and a byte stream,
//! and the embedding server turns them into its own response type.

mod cache;
mod fetch;
mod signer;

pub use cache::{
    CacheConfig, CacheEntry, CacheError, CacheFill, ImageCache, RangeAnswer, cache_key,
};
pub use fetch::{
    FetchConfig, FetchedImage, ImageFetchError, ImageFetcher, ImageStream, REQUEST_HEADERS,
    RESPONSE_HEADERS, install_crypto_provider, is_public_ip,
};
pub use signer::{
    ImageUrlSigner, MIN_KEY_LEN, SignatureError, VerifiedImage, WeakKeyError, decode_path_segment,
    encode_path_segment,
};

use crate::model::Task;
use crate::store::{SettingStore, StoreError};

/// Decides the image address a client sees for a task: the one place that does, so that every
/// answer (dashboard lists, relay fetches, submit answers) shows the same one.
pub trait ImagePresenter: Send + Sync {
    /// The `image_url` to show for `task` (`""` for none).
    fn present(&self, task: &Task) -> String;
}

/// Shows the upstream's address as stored (no forwarding).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoredImageUrl;

impl ImagePresenter for StoredImageUrl {
    fn present(&self, task: &Task) -> String {
        task.image_url.clone()
    }
}

/// The `mj_settings` name of the generated signing key.
pub const SIGNING_KEY_SETTING: &str = "image_url_signing_key";

/// The signing key shared by every instance on this database: the stored one, or `candidate`
/// (hex encoded) stored now if there is none yet. Pass 32 fresh random bytes as `candidate`;
/// only the first instance's candidate is ever kept.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = mj_tasks::connect("sqlite::memory:").await?;
/// let first = mj_tasks::image::shared_signing_key(store.settings().as_ref(), &[1; 32]).await?;
/// let again = mj_tasks::image::shared_signing_key(store.settings().as_ref(), &[2; 32]).await?;
/// assert_eq!(first, again);
/// # Ok::<_, mj_tasks::StoreError>(())
/// # }).unwrap();
/// ```
pub async fn shared_signing_key(
    settings: &dyn SettingStore,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let stored = settings
        .get_or_insert_setting(SIGNING_KEY_SETTING, &hex::encode(candidate))
        .await?;
    // The stored text is used as key bytes as is: hex written by us, or whatever an operator
    // put there by hand.
    Ok(stored.into_bytes())
}
