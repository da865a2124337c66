//! Request size bounds, as filters: the body (declared by `Content-Length` or sent chunked) and
//! the URI. Each refusal is a rejection that every route family renders in its own shape.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::reject::Reject;
use warp::{Filter, Rejection};

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The body is larger than the route accepts (413).
#[derive(Debug)]
pub struct BodyTooLarge {
    /// The route's limit, in bytes.
    pub limit: u64,
}

impl Reject for BodyTooLarge {}

/// The body could not be read: the client broke off or sent malformed chunks (400).
#[derive(Debug)]
pub struct BodyUnreadable;

impl Reject for BodyUnreadable {}

/// The request target is longer than [`MAX_URI_BYTES`] (414).
#[derive(Debug)]
pub struct UriTooLong;

impl Reject for UriTooLong {}

/// The whole body, at most `limit` bytes, with or without `Content-Length`: a declared length
/// over the limit is refused before reading, a chunked body as soon as it passes the limit.
pub fn body_within(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared, body| collect_within(declared, body, limit))
}

async fn collect_within<S, B>(
    declared: Option<u64>,
    body: S,
    limit: u64,
) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if declared.is_some_and(|length| length > limit) {
        return Err(warp::reject::custom(BodyTooLarge { limit }));
    }
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            tracing::debug!(%error, "request body unreadable");
            warp::reject::custom(BodyUnreadable)
        })?;
        if (collected.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(BodyTooLarge { limit }));
        }
        collected.put(chunk);
    }
    Ok(collected.freeze())
}

/// Passes requests whose path and query fit in [`MAX_URI_BYTES`].
pub fn uri_within_limit() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(|path: warp::path::FullPath, query: String| async move {
            if path.as_str().len() + query.len() > MAX_URI_BYTES {
                Err(warp::reject::custom(UriTooLong))
            } else {
                Ok(())
            }
        })
        .untuple_one()
}
