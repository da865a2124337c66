//! `GET` / `HEAD /mj/image/{mj_id}?u=..&e=..&s=..`: the image proxy.
//!
//! Order of checks: the signature (403, before any database access), then the owner (403 when
//! disabled), then the task by owner and `mj_id` (404), then its image (404 when it has none),
//! then the disk cache (finished tasks only) or the upstream. Errors use the dashboard envelope
//! `{"success":false,"message":"...","data":null}`; upstream text never reaches the client.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use mj_tasks::TaskStatus;
use mj_tasks::image::{
    CacheEntry, CacheFill, ImageCache, ImageFetchError, ImageStream, RangeAnswer, cache_key,
    decode_path_segment,
};
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::{Rejection, Reply};

use crate::App;
use crate::http::error::ApiError;

/// Response header telling whether the disk cache answered (`hit`) or the upstream (`miss`).
pub const CACHE_STATUS_HEADER: &str = "x-mj-image-cache";

/// The handler behind both methods.
pub async fn serve_image(
    raw_mj_id: String,
    method: Method,
    query: String,
    headers: HeaderMap,
    app: App,
) -> Result<warp::reply::Response, Rejection> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "No image for this task.");
    let mj_id = decode_path_segment(&raw_mj_id).ok_or_else(not_found)?;
    let now = chrono::Utc::now().timestamp();
    let verified = app
        .images
        .signer
        .verify(&mj_id, &query, now)
        .map_err(|error| ApiError::forbidden(format!("{}.", capitalize(&error.to_string()))))?;
    // A signature outlives a disable: the owner's status is read on every request, like a
    // token's.
    let owner = app
        .users
        .user_by_id(verified.owner)
        .await
        .map_err(ApiError::from)?;
    if owner.is_some_and(|owner| !owner.enabled) {
        return Err(ApiError::forbidden("The owner of this image is disabled.").into());
    }
    let task = app
        .tasks
        .find_by_mj_id(&mj_id, Some(verified.owner))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "No such task."))?;
    if task.image_url.trim().is_empty() {
        return Err(not_found().into());
    }
    let method = if method == Method::HEAD {
        Method::HEAD
    } else {
        Method::GET
    };

    // A finished task's image never changes: serve it from disk when we have it.
    let cache = app
        .images
        .cache
        .as_ref()
        .filter(|_| task.status == TaskStatus::Success);
    let key = cache_key(task.id, &task.mj_id, &task.image_url);
    if let Some(cache) = cache
        && let Some((entry, file)) = cache.get(&key).await
    {
        return Ok(cached_response(&method, &headers, entry, file).await);
    }

    let fetched = app
        .images
        .fetcher
        .fetch(method.clone(), &task.image_url, &headers)
        .await
        .map_err(|error| fetch_error(&error, &task.mj_id))?;

    let mut response_headers = HeaderMap::new();
    for (name, value) in &fetched.headers {
        response_headers.append(name.clone(), value.clone());
    }
    // Fill the cache only from a plain, complete GET answer.
    let plain_get = method == Method::GET
        && fetched.status == StatusCode::OK
        && !headers.contains_key(header::RANGE);
    let body = match cache {
        Some(cache) if plain_get => {
            let text = |name: header::HeaderName| {
                fetched
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let fill = CacheFill {
                content_type: text(header::CONTENT_TYPE),
                last_modified: text(header::LAST_MODIFIED),
                cache_control: text(header::CACHE_CONTROL),
                content_length: text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
            };
            cache.tee(&key, fill, fetched.body)
        }
        _ => fetched.body,
    };
    if cache.is_some() {
        response_headers.insert(CACHE_STATUS_HEADER, HeaderValue::from_static("miss"));
    }
    Ok(streaming_response(fetched.status, response_headers, body))
}

fn fetch_error(error: &ImageFetchError, mj_id: &str) -> Rejection {
    let cause = std::error::Error::source(error).map(|source| format!("{source:?}"));
    tracing::warn!(mj_id, error = %error, cause, "image fetch failed");
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    ApiError::new(status, error.public_message()).into()
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn streaming_response(
    status: StatusCode,
    headers: HeaderMap,
    body: ImageStream,
) -> warp::reply::Response {
    let mut response = warp::reply::stream(SyncStream(Mutex::new(body))).into_response();
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    // Upstream bytes are served from our origin: never let a browser run them as a page
    // (an upstream answering text/html must not become script on this domain).
    let hardening = response.headers_mut();
    hardening.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hardening.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    response
}

/// Answers from the cache: 304 for a matching `If-None-Match`, 206/416 for a single range,
/// 200 otherwise.
async fn cached_response(
    method: &Method,
    request: &HeaderMap,
    entry: CacheEntry,
    file: tokio::fs::File,
) -> warp::reply::Response {
    let mut headers = HeaderMap::new();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, &entry.etag);
    set(header::ACCEPT_RANGES, "bytes");
    for (name, value) in [
        (header::CONTENT_TYPE, &entry.content_type),
        (header::LAST_MODIFIED, &entry.last_modified),
        (header::CACHE_CONTROL, &entry.cache_control),
    ] {
        if let Some(value) = value {
            set(name, value);
        }
    }
    set(header::HeaderName::from_static(CACHE_STATUS_HEADER), "hit");
    let empty = || -> ImageStream { Box::pin(futures_util::stream::empty()) };
    if etag_matches(request.get(header::IF_NONE_MATCH), &entry.etag) {
        return streaming_response(StatusCode::NOT_MODIFIED, headers, empty());
    }
    let if_range_ok = request
        .get(header::IF_RANGE)
        .is_none_or(|value| value.to_str().is_ok_and(|v| v.trim() == entry.etag));
    let range = if if_range_ok {
        RangeAnswer::parse(
            request.get(header::RANGE).and_then(|v| v.to_str().ok()),
            entry.size,
        )
    } else {
        RangeAnswer::Full
    };
    let (status, start, len) = match range {
        RangeAnswer::Full => (StatusCode::OK, 0, entry.size),
        RangeAnswer::Partial(start, len) => {
            set(
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{}", start, start + len - 1, entry.size),
            );
            (StatusCode::PARTIAL_CONTENT, start, len)
        }
        RangeAnswer::Unsatisfiable => {
            set(header::CONTENT_RANGE, &format!("bytes */{}", entry.size));
            set(header::CONTENT_LENGTH, "0");
            return streaming_response(StatusCode::RANGE_NOT_SATISFIABLE, headers, empty());
        }
    };
    set(header::CONTENT_LENGTH, &len.to_string());
    if *method == Method::HEAD {
        return streaming_response(status, headers, empty());
    }
    match ImageCache::stream_file(file, start, len).await {
        Ok(body) => streaming_response(status, headers, body),
        Err(error) => {
            tracing::warn!(error = ?error, "reading the image cache failed");
            crate::http::error::error_reply(StatusCode::BAD_GATEWAY, "The image could not be read.")
        }
    }
}

/// `If-None-Match` against a strong ETag, with the weak comparison RFC 9110 prescribes for it.
fn etag_matches(header: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// warp wants a `Sync` body stream; a `Mutex` makes any `Send` stream `Sync` without `unsafe`
/// (it is only ever polled through `&mut`, so the lock is never contended).
struct SyncStream(Mutex<ImageStream>);

impl Stream for SyncStream {
    type Item = Result<Bytes, ImageFetchError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().0.get_mut() {
            Ok(stream) => stream.as_mut().poll_next(cx),
            // Only a panic inside poll_next poisons it; end the body.
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match() {
        let tag = "\"abc\"";
        let check = |v: &str| {
            etag_matches(
                Some(&HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""))),
                tag,
            )
        };
        assert!(check("\"abc\""));
        assert!(check("W/\"abc\""));
        assert!(check("\"x\", \"abc\""));
        assert!(check("*"));
        assert!(!check("\"abd\""));
        assert!(!etag_matches(None, tag));
    }
}
