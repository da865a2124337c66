//! A typed async client for midjourney-proxy channels.
//!
//! It tolerates what the real upstream does (see the crate's upstream notes): `null` everywhere,
//! unknown status and action values, free-text progress, an empty 200 body for an unknown task,
//! a 401 with an empty body, list answers that leave ids out and come in any order. Every call
//! has a timeout.

mod wire;

use std::time::Duration;

use serde_json::Value;

use crate::channel::Channel;
pub use wire::{SubmitResult, UpstreamTask, codes};

/// What can go wrong talking to an upstream. The upstream's own body text is never included,
/// so these can be logged but are not meant for clients.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The call did not finish within the timeout.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream could not be reached (connection refused, DNS, TLS, reset).
    #[error("upstream unreachable")]
    Unreachable(#[source] reqwest::Error),
    /// The upstream refused the channel's `mj-api-secret` (401).
    #[error("upstream refused the channel secret (401)")]
    Unauthorized,
    /// Any other unexpected HTTP status.
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    /// The body was not what the endpoint returns.
    #[error("upstream answered an unreadable body: {0}")]
    InvalidBody(&'static str),
    /// The channel's base URL is not a valid URL.
    #[error("invalid channel base URL")]
    InvalidUrl,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl UpstreamError {
    fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_builder() {
            Self::InvalidUrl
        } else {
            Self::Unreachable(error)
        }
    }

    /// Whether the failure is a timeout (HTTP 504 for relays) rather than another error (502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// The submit endpoints, `POST /mj/submit/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubmitKind {
    /// `/mj/submit/imagine`.
    Imagine,
    /// `/mj/submit/change`.
    Change,
    /// `/mj/submit/simple-change`.
    SimpleChange,
    /// `/mj/submit/describe`.
    Describe,
    /// `/mj/submit/blend`.
    Blend,
    /// `/mj/submit/action` (plus).
    Action,
    /// `/mj/submit/modal` (plus).
    Modal,
    /// `/mj/submit/shorten` (plus).
    Shorten,
}

impl SubmitKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::Imagine,
        Self::Change,
        Self::SimpleChange,
        Self::Describe,
        Self::Blend,
        Self::Action,
        Self::Modal,
        Self::Shorten,
    ];

    /// The last path segment: `imagine`, `simple-change`, ...
    pub fn segment(self) -> &'static str {
        match self {
            Self::Imagine => "imagine",
            Self::Change => "change",
            Self::SimpleChange => "simple-change",
            Self::Describe => "describe",
            Self::Blend => "blend",
            Self::Action => "action",
            Self::Modal => "modal",
            Self::Shorten => "shorten",
        }
    }

    /// The kind a path segment names.
    pub fn from_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.segment() == segment)
    }
}

/// A client for midjourney-proxy channels; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
}

impl UpstreamClient {
    /// A client whose every call (connect, send, read) ends after `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// let client = mj_tasks::upstream::UpstreamClient::new(std::time::Duration::from_secs(15))?;
    /// # Ok::<_, mj_tasks::upstream::UpstreamError>(())
    /// ```
    pub fn new(timeout: Duration) -> Result<Self, UpstreamError> {
        crate::image::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(UpstreamError::Client)?;
        Ok(Self { http })
    }

    fn url(channel: &Channel, path: &str) -> String {
        format!("{}/mj/{path}", channel.base_url.trim_end_matches('/'))
    }

    async fn post_json(
        &self,
        channel: &Channel,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Vec<u8>), UpstreamError> {
        let response = self
            .http
            .post(Self::url(channel, path))
            .header("mj-api-secret", &channel.secret)
            .json(body)
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        Self::read(response).await
    }

    async fn read(response: reqwest::Response) -> Result<(u16, Vec<u8>), UpstreamError> {
        let status = response.status().as_u16();
        // A 401 comes with an empty body: check it before any parsing.
        if status == 401 {
            return Err(UpstreamError::Unauthorized);
        }
        let body = response
            .bytes()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        Ok((status, body.to_vec()))
    }

    /// Submits a task: forwards `body` to `POST {base}/mj/submit/{kind}` with the channel's
    /// secret. Business rejections (codes 3, 4, 23, 24, ...) are `Ok` with that code; a non-2xx
    /// answer without a readable `SubmitResult` is an error.
    pub async fn submit(
        &self,
        channel: &Channel,
        kind: SubmitKind,
        body: &Value,
    ) -> Result<SubmitResult, UpstreamError> {
        let path = format!("submit/{}", kind.segment());
        let (status, bytes) = self.post_json(channel, &path, body).await?;
        match SubmitResult::parse(&bytes) {
            Some(result) => Ok(result),
            None if (200..300).contains(&status) => {
                Err(UpstreamError::InvalidBody("not a SubmitResult"))
            }
            None => Err(UpstreamError::Status(status)),
        }
    }

    /// `GET {base}/mj/task/{id}/fetch`: `None` for the empty 200 body of an unknown task.
    pub async fn fetch(
        &self,
        channel: &Channel,
        id: &str,
    ) -> Result<Option<UpstreamTask>, UpstreamError> {
        let segment: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let response = self
            .http
            .get(Self::url(channel, &format!("task/{segment}/fetch")))
            .header("mj-api-secret", &channel.secret)
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        let (status, bytes) = Self::read(response).await?;
        if !(200..300).contains(&status) {
            return Err(UpstreamError::Status(status));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|_| UpstreamError::InvalidBody("not JSON"))?;
        if value.is_null() {
            return Ok(None);
        }
        UpstreamTask::from_value(&value)
            .map(Some)
            .ok_or(UpstreamError::InvalidBody("not a task"))
    }

    /// `POST {base}/mj/task/list-by-condition` with `{"ids": ids}`. The answer is an unordered
    /// subset of the ids (unknown ones are left out): match by [`UpstreamTask::id`].
    pub async fn list_by_condition(
        &self,
        channel: &Channel,
        ids: &[String],
    ) -> Result<Vec<UpstreamTask>, UpstreamError> {
        let body = serde_json::json!({ "ids": ids });
        let (status, bytes) = self
            .post_json(channel, "task/list-by-condition", &body)
            .await?;
        if !(200..300).contains(&status) {
            return Err(UpstreamError::Status(status));
        }
        UpstreamTask::parse_list(&bytes).ok_or(UpstreamError::InvalidBody("not a task array"))
    }
}
