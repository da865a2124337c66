//! Upstream channels: the midjourney-proxy instances tasks are sent to.

use std::fmt;

use rand::Rng;
use serde::Serialize;

/// A registered upstream midjourney-proxy.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    /// Database id, referenced by [`Task::channel_id`](crate::Task::channel_id).
    pub id: i64,
    /// Operator's name for it.
    pub name: String,
    /// Base URL, e.g. `https://mj.example.com` (the `/mj/...` paths are appended).
    pub base_url: String,
    /// The `mj-api-secret` sent to the upstream; never serialized or logged.
    #[serde(skip)]
    pub secret: String,
    /// Disabled channels get no new tasks, and their unfinished tasks are failed by the poller.
    pub enabled: bool,
    /// When it was registered (ms).
    pub created_at: i64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A channel to register.
#[derive(Clone, PartialEq, Eq)]
pub struct NewChannel {
    /// Operator's name for it.
    pub name: String,
    /// Base URL of the midjourney-proxy.
    pub base_url: String,
    /// Its `mj-api-secret`.
    pub secret: String,
}

impl fmt::Debug for NewChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewChannel")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Picks the channel a new task (one that acts on no earlier task) is sent to. Actions on an
/// earlier task always go to that task's channel, whatever the chooser says.
pub trait ChannelChooser: Send + Sync {
    /// One of `enabled` (never empty: the relay answers "no channel" itself), or `None` to
    /// refuse the submit as if no channel were available.
    fn choose<'a>(&self, enabled: &'a [Channel]) -> Option<&'a Channel>;
}

/// The default chooser: uniformly at random among the enabled channels.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomChannel;

impl ChannelChooser for RandomChannel {
    fn choose<'a>(&self, enabled: &'a [Channel]) -> Option<&'a Channel> {
        if enabled.is_empty() {
            return None;
        }
        enabled.get(rand::rng().random_range(0..enabled.len()))
    }
}
