//! A disk cache of finished images.
//!
//! Once a task is `SUCCESS` its image never changes, while upstream CDN links (Discord
//! attachments) expire within a day: with the cache on, a finished image stays viewable after
//! its upstream link dies, and repeated views cost no upstream traffic.
//!
//! Layout under the cache directory: `<key>.img` (the bytes) and `<key>.json` (its metadata:
//! size, strong ETag from the SHA-256 of the bytes, upstream content type, last-modified and
//! cache-control), plus `tmp/` for fills in progress. A fill streams into a temporary file while
//! the same bytes go to the client ([`ImageCache::tee`]), and only a complete body is renamed
//! into place, so a reader never sees a partial file.
//!
//! - **Budget**: the stored bytes never exceed [`CacheConfig::max_bytes`]; before an entry is
//!   admitted, the least recently used entries are evicted (access order is kept in memory and
//!   persisted through file modification times, so it survives restarts). A body larger than
//!   the budget is never stored.
//! - **Concurrency**: one fill per key at a time (concurrent misses stream from upstream without
//!   storing); removing a file that is being read is safe on Unix (the open handle keeps it).
//! - **Damage**: a missing data file, a size mismatch or unreadable metadata is a miss and the
//!   entry is dropped; leftovers of an interrupted fill are deleted at start.
//!
//! One process per cache directory: the in-memory index is not shared between processes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::fetch::{ImageFetchError, ImageStream};

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache directory (created if missing).
    pub dir: PathBuf,
    /// Total bytes of stored images at most.
    pub max_bytes: u64,
}

/// What can go wrong with the cache (never shown to clients: a failing cache is a miss).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("image cache I/O error")]
    Io(#[from] io::Error),
    /// Metadata could not be written.
    #[error("image cache metadata error")]
    Metadata(#[from] serde_json::Error),
}

/// A stored image: its metadata, to answer headers and conditional requests without reading
/// the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Bytes.
    pub size: u64,
    /// Strong ETag, quoted: `"<sha256 hex>"` of the bytes.
    pub etag: String,
    /// Upstream `Content-Type`.
    pub content_type: Option<String>,
    /// Upstream `Last-Modified`.
    pub last_modified: Option<String>,
    /// Upstream `Cache-Control`.
    pub cache_control: Option<String>,
}

/// Upstream headers to store with a fill.
#[derive(Debug, Clone, Default)]
pub struct CacheFill {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Length`, when announced: a fill larger than the budget is not even started.
    pub content_length: Option<u64>,
}

struct Slot {
    entry: CacheEntry,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    slots: HashMap<String, Slot>,
    total: u64,
    tick: u64,
    filling: HashSet<String>,
}

/// The cache; share it as `Arc<ImageCache>`.
pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// The cache key of a task's image: SHA-256 over the task id, `mj_id` and upstream URL (a
/// changed URL is a new entry; the old one ages out).
pub fn cache_key(task_id: i64, mj_id: &str, image_url: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"mj-tasks/image-cache/v1\0");
    hasher.update(task_id.to_be_bytes());
    hasher.update((mj_id.len() as u64).to_be_bytes());
    hasher.update(mj_id.as_bytes());
    hasher.update(image_url.as_bytes());
    hex::encode(hasher.finalize())
}

fn valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageCache {
    /// Opens (creating if missing) the cache in `config.dir`: removes leftovers of interrupted
    /// fills and damaged entries, loads the index, and evicts down to the budget. Blocking file
    /// I/O: call it at start-up.
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::image::{CacheConfig, ImageCache};
    /// let dir = tempfile::tempdir().unwrap();
    /// let cache = ImageCache::open(CacheConfig { dir: dir.path().into(), max_bytes: 1 << 20 }).unwrap();
    /// assert_eq!(cache.stored_bytes(), 0);
    /// ```
    pub fn open(config: CacheConfig) -> Result<Self, CacheError> {
        let dir = config.dir;
        std::fs::create_dir_all(dir.join("tmp"))?;
        for item in std::fs::read_dir(dir.join("tmp"))? {
            let _ = std::fs::remove_file(item?.path());
        }
        let mut found: Vec<(String, CacheEntry, SystemTime)> = Vec::new();
        for item in std::fs::read_dir(&dir)? {
            let path = item?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if !valid_key(stem) {
                continue;
            }
            let key = stem.to_owned();
            match ext {
                "json" => match load_entry(&dir, &key) {
                    Some((entry, modified)) => found.push((key, entry, modified)),
                    None => remove_files(&dir, &key),
                },
                "img" if !dir.join(format!("{key}.json")).exists() => remove_files(&dir, &key),
                _ => {}
            }
        }
        // Oldest first, so the tick order is the access order of the previous run.
        found.sort_by_key(|(_, _, modified)| *modified);
        let mut index = Index::default();
        for (key, entry, _) in found {
            index.tick += 1;
            index.total += entry.size;
            let last_used = index.tick;
            index.slots.insert(key, Slot { entry, last_used });
        }
        let cache = Self {
            dir,
            max_bytes: config.max_bytes,
            index: Mutex::new(index),
        };
        {
            let mut index = cache.lock();
            cache.evict_until(&mut index, 0, None);
        }
        Ok(cache)
    }

    /// Bytes currently stored (never more than the budget).
    pub fn stored_bytes(&self) -> u64 {
        self.lock().total
    }

    /// The budget in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether `key` is stored (does not count as a use).
    pub fn contains(&self, key: &str) -> bool {
        self.lock().slots.contains_key(key)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index inconsistent in a way that
        // matters more than losing the cache, so a poisoned lock is simply taken over.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn data_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.img"))
    }

    /// Looks `key` up; on a hit returns its metadata and the opened file, and marks it as most
    /// recently used. A damaged entry is dropped and reported as a miss.
    pub async fn get(&self, key: &str) -> Option<(CacheEntry, tokio::fs::File)> {
        let entry = {
            let mut index = self.lock();
            index.tick += 1;
            let tick = index.tick;
            let slot = index.slots.get_mut(key)?;
            slot.last_used = tick;
            slot.entry.clone()
        };
        let path = self.data_path(key);
        let size = entry.size;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let file = std::fs::File::open(&path)?;
            if file.metadata()?.len() != size {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "size mismatch"));
            }
            // Persist the access order for the next start (best effort).
            let _ = file.set_modified(SystemTime::now());
            Ok(file)
        })
        .await;
        match opened {
            Ok(Ok(file)) => Some((entry, tokio::fs::File::from_std(file))),
            _ => {
                tracing::warn!(key, "image cache entry missing or damaged; dropping it");
                self.forget(key);
                None
            }
        }
    }

    fn forget(&self, key: &str) {
        let mut index = self.lock();
        if let Some(slot) = index.slots.remove(key) {
            index.total = index.total.saturating_sub(slot.entry.size);
        }
        remove_files(&self.dir, key);
    }

    /// Evicts least recently used entries (never `keep`) until `incoming` more bytes fit.
    fn evict_until(&self, index: &mut Index, incoming: u64, keep: Option<&str>) {
        while index.total.saturating_add(incoming) > self.max_bytes {
            let victim = index
                .slots
                .iter()
                .filter(|(key, _)| Some(key.as_str()) != keep)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(key, _)| key.clone());
            let Some(victim) = victim else { break };
            if let Some(slot) = index.slots.remove(&victim) {
                index.total = index.total.saturating_sub(slot.entry.size);
            }
            remove_files(&self.dir, &victim);
            tracing::debug!(key = victim, "image cache eviction");
        }
    }

    /// Wraps an upstream body so that its bytes are also written to the cache under `key`;
    /// the entry is stored only if the body ends normally and fits the budget. Returns the body
    /// unchanged when the key is already being filled or cannot fit.
    pub fn tee(self: &Arc<Self>, key: &str, fill: CacheFill, body: ImageStream) -> ImageStream {
        if !valid_key(key) || fill.content_length.is_some_and(|len| len > self.max_bytes) {
            return body;
        }
        if !self.lock().filling.insert(key.to_owned()) {
            return body;
        }
        let writer = FillWriter {
            cache: self.clone(),
            key: key.to_owned(),
            tmp: self
                .dir
                .join("tmp")
                .join(format!("{key}.{}.part", std::process::id())),
            file: None,
            hasher: Sha256::new(),
            written: 0,
            meta: fill,
        };
        let stream = futures_util::stream::unfold(
            (body, Some(writer)),
            |(mut body, mut writer)| async move {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        if let Some(w) = writer.as_mut()
                            && let Err(error) = w.write(&chunk).await
                        {
                            tracing::warn!(error = ?error, "image cache write failed");
                            writer = None; // dropping it removes the temporary file
                        }
                        // With a declared length, store as soon as the last byte is written:
                        // an HTTP server may stop polling a body once it has sent that many
                        // bytes, so waiting for the end of the stream could never happen.
                        if let Some(w) = writer.take_if(|w| w.is_complete())
                            && let Err(error) = w.finish().await
                        {
                            tracing::warn!(error = ?error, "image cache store failed");
                        }
                        Some((Ok(chunk), (body, writer)))
                    }
                    Some(Err(error)) => Some((Err(error), (body, None))),
                    None => {
                        if let Some(w) = writer.take()
                            && let Err(error) = w.finish().await
                        {
                            tracing::warn!(error = ?error, "image cache store failed");
                        }
                        None
                    }
                }
            },
        );
        Box::pin(stream)
    }

    /// Streams a cached file from `start`, `len` bytes (a whole file: `0` and its size).
    pub async fn stream_file(
        mut file: tokio::fs::File,
        start: u64,
        len: u64,
    ) -> Result<ImageStream, CacheError> {
        if start > 0 {
            file.seek(io::SeekFrom::Start(start)).await?;
        }
        let reader = tokio::io::AsyncReadExt::take(file, len);
        // Large reads: each one is a hop to the blocking pool, so few and big ones are cheaper.
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 512 * 1024)
            .map(|item| item.map_err(|_| ImageFetchError::CacheRead));
        Ok(Box::pin(stream))
    }
}

/// A fill in progress. Dropped before [`FillWriter::finish`], it deletes its temporary file and
/// releases the key.
struct FillWriter {
    cache: Arc<ImageCache>,
    key: String,
    tmp: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    meta: CacheFill,
}

impl FillWriter {
    fn is_complete(&self) -> bool {
        self.meta.content_length == Some(self.written)
    }

    async fn write(&mut self, chunk: &Bytes) -> Result<(), CacheError> {
        self.written = self.written.saturating_add(chunk.len() as u64);
        if self.written > self.cache.max_bytes {
            return Err(
                io::Error::new(io::ErrorKind::FileTooLarge, "larger than the budget").into(),
            );
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tokio::fs::File::create(&self.tmp).await?),
        };
        file.write_all(chunk).await?;
        self.hasher.update(chunk);
        Ok(())
    }

    async fn finish(mut self) -> Result<(), CacheError> {
        let mut file = match self.file.take() {
            Some(file) => file,
            None => tokio::fs::File::create(&self.tmp).await?,
        };
        file.flush().await?;
        drop(file);
        let entry = CacheEntry {
            size: self.written,
            etag: format!(
                "\"{}\"",
                hex::encode(std::mem::take(&mut self.hasher).finalize())
            ),
            content_type: self.meta.content_type.take(),
            last_modified: self.meta.last_modified.take(),
            cache_control: self.meta.cache_control.take(),
        };
        let dir = self.cache.dir.clone();
        let key = self.key.clone();
        let meta_tmp = self.tmp.with_extension("json");
        let cache = self.cache.clone();
        let tmp = self.tmp.clone();
        // Blocking file operations, off the async workers.
        tokio::task::spawn_blocking(move || -> Result<(), CacheError> {
            std::fs::write(&meta_tmp, serde_json::to_vec(&entry)?)?;
            // Admission happens under the index lock, so the budget holds whatever runs
            // concurrently: evict first, then rename the data and the metadata into place.
            let mut index = cache.lock();
            if let Some(old) = index.slots.remove(&key) {
                index.total = index.total.saturating_sub(old.entry.size);
            }
            cache.evict_until(&mut index, entry.size, Some(&key));
            std::fs::rename(&tmp, dir.join(format!("{key}.img")))?;
            std::fs::rename(&meta_tmp, dir.join(format!("{key}.json")))?;
            index.tick += 1;
            let last_used = index.tick;
            index.total += entry.size;
            index.slots.insert(key, Slot { entry, last_used });
            Ok(())
        })
        .await
        .map_err(|error| CacheError::Io(io::Error::other(error)))?
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        // After a successful finish the temporary files are gone and these fail harmlessly.
        let _ = std::fs::remove_file(&self.tmp);
        let _ = std::fs::remove_file(self.tmp.with_extension("json"));
        self.cache.lock().filling.remove(&self.key);
    }
}

fn load_entry(dir: &Path, key: &str) -> Option<(CacheEntry, SystemTime)> {
    let text = std::fs::read(dir.join(format!("{key}.json"))).ok()?;
    let entry: CacheEntry = serde_json::from_slice(&text).ok()?;
    let data = std::fs::metadata(dir.join(format!("{key}.img"))).ok()?;
    if data.len() != entry.size {
        return None;
    }
    Some((entry, data.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

fn remove_files(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(dir.join(format!("{key}.img")));
    let _ = std::fs::remove_file(dir.join(format!("{key}.json")));
}

/// A single `bytes=` range of a body of `size` bytes, as `(start, len)`: `None` when the
/// header is absent, not a single range, or cannot be satisfied (serve the whole body then, or
/// 416 when [`RangeAnswer::Unsatisfiable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: the whole body.
    Full,
    /// `start` and `len` of a satisfiable range.
    Partial(u64, u64),
    /// A syntactically valid range beyond the end: 416.
    Unsatisfiable,
}

impl RangeAnswer {
    /// Parses a `Range` header value against a body of `size` bytes.
    pub fn parse(header: Option<&str>, size: u64) -> Self {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return Self::Full;
        };
        if spec.contains(',') {
            return Self::Full; // multiple ranges: answer with the whole body (allowed)
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return Self::Full;
        };
        let parse = |s: &str| -> Option<u64> {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match (first.trim().is_empty(), parse(first), parse(last)) {
            (true, _, Some(suffix)) => {
                if suffix == 0 || size == 0 {
                    return Self::Unsatisfiable;
                }
                let len = suffix.min(size);
                Self::Partial(size - len, len)
            }
            (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
                if start >= size {
                    return Self::Unsatisfiable;
                }
                let end = end.unwrap_or(size - 1).min(size - 1);
                if end < start {
                    return Self::Full;
                }
                Self::Partial(start, end - start + 1)
            }
            _ => Self::Full,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn body(chunks: Vec<&'static [u8]>) -> ImageStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    async fn fill(cache: &Arc<ImageCache>, key: &str, data: &'static [u8]) {
        let mut stream = cache.tee(key, CacheFill::default(), body(vec![data]));
        while stream.next().await.is_some() {}
    }

    fn key(n: u8) -> String {
        cache_key(i64::from(n), "mj", "http://x/a.png")
    }

    #[tokio::test]
    async fn fills_hits_and_evicts_lru() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            dir: dir.path().into(),
            max_bytes: 10,
        };
        let cache = Arc::new(ImageCache::open(config.clone()).unwrap());
        fill(&cache, &key(1), b"aaaa").await;
        fill(&cache, &key(2), b"bbbb").await;
        assert_eq!(cache.stored_bytes(), 8);
        // Use 1, so 2 is the least recently used.
        let (entry, _) = cache.get(&key(1)).await.unwrap();
        assert_eq!(entry.size, 4);
        assert!(entry.etag.starts_with('"') && entry.etag.len() == 66);
        fill(&cache, &key(3), b"cccc").await;
        assert!(cache.stored_bytes() <= 10);
        assert!(cache.contains(&key(1)) && cache.contains(&key(3)));
        assert!(!cache.contains(&key(2)));
        // Too large for the budget: never stored.
        fill(&cache, &key(4), b"0123456789abc").await;
        assert!(!cache.contains(&key(4)));
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        // Reopen: the index comes back from disk.
        drop(cache);
        let cache = ImageCache::open(config).unwrap();
        assert_eq!(cache.stored_bytes(), 8);
        assert!(cache.contains(&key(1)) && cache.contains(&key(3)));
    }

    #[tokio::test]
    async fn broken_bodies_and_damage_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig {
            dir: dir.path().into(),
            max_bytes: 100,
        };
        let cache = Arc::new(ImageCache::open(config.clone()).unwrap());
        let failing: ImageStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(ImageFetchError::Timeout),
        ]));
        let mut stream = cache.tee(&key(1), CacheFill::default(), failing);
        while stream.next().await.is_some() {}
        assert!(!cache.contains(&key(1)));
        fill(&cache, &key(2), b"hello").await;
        std::fs::write(dir.path().join(format!("{}.img", key(2))), b"hell").unwrap();
        assert!(cache.get(&key(2)).await.is_none());
        assert_eq!(cache.stored_bytes(), 0);
        // A leftover partial file and an orphan are cleaned at open.
        std::fs::write(dir.path().join("tmp").join("x.part"), b"x").unwrap();
        std::fs::write(dir.path().join(format!("{}.img", key(9))), b"x").unwrap();
        drop(cache);
        let _cache = ImageCache::open(config).unwrap();
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert!(!dir.path().join(format!("{}.img", key(9))).exists());
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(RangeAnswer::parse(None, 10), Full);
        assert_eq!(RangeAnswer::parse(Some("bytes=0-3"), 10), Partial(0, 4));
        assert_eq!(RangeAnswer::parse(Some("bytes=5-"), 10), Partial(5, 5));
        assert_eq!(RangeAnswer::parse(Some("bytes=-3"), 10), Partial(7, 3));
        assert_eq!(RangeAnswer::parse(Some("bytes=8-100"), 10), Partial(8, 2));
        assert_eq!(RangeAnswer::parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(RangeAnswer::parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(RangeAnswer::parse(Some("items=0-1"), 10), Full);
        assert_eq!(RangeAnswer::parse(Some("bytes=x-1"), 10), Full);
    }
}
