//! The task model: one row of the `midjourneys` table and the typed values inside it.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines an enum of well-known upstream strings plus an `Other(String)` variant that keeps any
/// value we do not know yet, so that a value read from an upstream or a database round-trips
/// unchanged.
macro_rules! open_string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            /// The upstream spelling of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )+
                    Self::Other(text) => text,
                }
            }

            /// Parses an upstream value; unknown text becomes [`Self::Other`]. Matching is exact
            /// after trimming, as the upstream sends the enum names verbatim.
            pub fn parse(text: &str) -> Self {
                match text.trim() {
                    $( $text => Self::$variant, )+
                    _ => Self::Other(text.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self::parse(text)
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self::parse(&text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::<str>::deserialize(deserializer)?;
                Ok(Self::parse(&text))
            }
        }
    };
}

open_string_enum! {
    /// The state of a task as midjourney-proxy reports it.
    ///
    /// [`TaskStatus::is_finished`] is the one definition of "finished" used everywhere (listing
    /// unfinished tasks, the poller, billing): a task is finished when its status is terminal.
    /// Unknown statuses are treated as unfinished, so the poller keeps asking until the task
    /// timeout decides.
    pub enum TaskStatus {
        /// Accepted by the upstream but not yet sent to Discord (the default).
        #[default]
        NotStart => "NOT_START",
        /// Submitted to Discord, waiting to start.
        Submitted => "SUBMITTED",
        /// Waiting for a modal form (custom zoom, inpaint, ...).
        Modal => "MODAL",
        /// Being generated.
        InProgress => "IN_PROGRESS",
        /// Finished with a result.
        Success => "SUCCESS",
        /// Finished without a result.
        Failure => "FAILURE",
        /// Cancelled.
        Cancel => "CANCEL",
    }
}

impl TaskStatus {
    /// Whether the status is terminal: `SUCCESS`, `FAILURE` or `CANCEL`.
    ///
    /// ```
    /// use mj_tasks::TaskStatus;
    /// assert!(TaskStatus::Failure.is_finished());
    /// assert!(!TaskStatus::parse("QUEUED").is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Cancel)
    }
}

open_string_enum! {
    /// The kind of job a task runs (midjourney-proxy's `action`).
    pub enum TaskAction {
        /// `/imagine` (the default).
        #[default]
        Imagine => "IMAGINE",
        /// Upscale one image of a grid.
        Upscale => "UPSCALE",
        /// Vary one image of a grid.
        Variation => "VARIATION",
        /// Strong variation.
        HighVariation => "HIGH_VARIATION",
        /// Subtle variation.
        LowVariation => "LOW_VARIATION",
        /// Re-run the prompt.
        Reroll => "REROLL",
        /// Pan in one direction.
        Pan => "PAN",
        /// Zoom out.
        Zoom => "ZOOM",
        /// Custom zoom (needs a modal).
        CustomZoom => "CUSTOM_ZOOM",
        /// Vary a region (needs a modal).
        Inpaint => "INPAINT",
        /// The modal step of an action.
        Modal => "MODAL",
        /// `/describe` an image.
        Describe => "DESCRIBE",
        /// `/blend` images.
        Blend => "BLEND",
        /// `/shorten` a prompt.
        Shorten => "SHORTEN",
        /// Face swap.
        SwapFace => "SWAP_FACE",
        /// Image upload.
        Upload => "UPLOAD",
        /// Video generation.
        Video => "VIDEO",
    }
}

/// Progress text as the upstream reports it (`"0%"`, `"45%"`, `"100%"`, sometimes free text).
///
/// The text is kept verbatim; [`Progress::percent`] reads it leniently.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Progress(String);

impl Progress {
    /// `"0%"`, the progress of a task that was just submitted.
    pub fn zero() -> Self {
        Self("0%".to_owned())
    }

    /// `"100%"`, the progress of a finished task.
    pub fn complete() -> Self {
        Self("100%".to_owned())
    }

    /// Wraps upstream text as is.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The verbatim text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The percentage, if the text holds one: `"45%"`, `" 45 % "`, `"45"` and `"45.5%"` read as
    /// 45; values are clamped to 0..=100. Anything else (`""`, `"queued"`) is `None`.
    ///
    /// ```
    /// use mj_tasks::Progress;
    /// assert_eq!(Progress::new("45%").percent(), Some(45));
    /// assert_eq!(Progress::new(" 99.9 % ").percent(), Some(99));
    /// assert_eq!(Progress::new("150%").percent(), Some(100));
    /// assert_eq!(Progress::new("waiting").percent(), None);
    /// ```
    pub fn percent(&self) -> Option<u8> {
        let number = self.0.trim().trim_end_matches('%').trim_end();
        let value: f64 = number.parse().ok()?;
        if !value.is_finite() {
            return None;
        }
        // Clamped into 0..=100 first, so the cast cannot truncate.
        Some(value.clamp(0.0, 100.0) as u8)
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Progress {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl From<String> for Progress {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl Serialize for Progress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Progress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(String::deserialize(deserializer)?))
    }
}

/// The current time as Unix epoch milliseconds, the unit of every task timestamp.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One Midjourney task: every column of new-api's `midjourneys` table, typed — the store's
/// `id` and `version` around the task's [`NewTask`] fields, which read through as if they were
/// the task's own (`task.status`, `task.mj_id`; [`Deref`](std::ops::Deref)).
///
/// Serialized flat, as one object with every column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Database id; the list order is `id` descending.
    pub id: i64,
    /// Optimistic-concurrency version, bumped by every update; see
    /// [`TaskStore::update_if_version`](crate::TaskStore::update_if_version).
    pub version: i64,
    /// Everything else: what was inserted, as later updates left it.
    #[serde(flatten)]
    pub fields: NewTask,
}

impl std::ops::Deref for Task {
    type Target = NewTask;

    fn deref(&self) -> &NewTask {
        &self.fields
    }
}

impl std::ops::DerefMut for Task {
    fn deref_mut(&mut self) -> &mut NewTask {
        &mut self.fields
    }
}

impl Task {
    /// The JSON view a task's owner sees (no `user_id`, no `channel_id`).
    pub fn user_view(&self) -> UserTaskView<'_> {
        UserTaskView::new(self)
    }

    /// The JSON view an administrator sees (adds `user_id`, `channel_id` and `code`).
    pub fn admin_view(&self) -> AdminTaskView<'_> {
        AdminTaskView::new(self)
    }
}

/// A task's columns other than the store's `id` and `version`: what an insert writes, and
/// what [`Task`] carries.
///
/// Timestamps are Unix epoch milliseconds; `0` means "not yet". `video_urls`, `buttons` and
/// `properties` hold JSON text, as new-api stores and serves them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NewTask {
    /// The upstream's submit code (1 = accepted).
    pub code: i64,
    /// Owner.
    pub user_id: i64,
    /// What the task does.
    pub action: TaskAction,
    /// The upstream's task id (not unique: an upstream can hand out an id twice).
    pub mj_id: String,
    /// Prompt as submitted.
    pub prompt: String,
    /// Prompt as the upstream translated it.
    pub prompt_en: String,
    /// The upstream's description of the task.
    pub description: String,
    /// Opaque client state, passed through.
    pub state: String,
    /// When we accepted the task (ms); recorded by us and never replaced by an upstream value.
    pub submit_time: i64,
    /// When the upstream started it (ms, 0 = not yet).
    pub start_time: i64,
    /// When the upstream finished it (ms, 0 = not yet).
    pub finish_time: i64,
    /// The upstream's image URL, stored raw (forwarding rewrites it on output only).
    pub image_url: String,
    /// Video result URL.
    pub video_url: String,
    /// JSON array text of video URLs.
    pub video_urls: String,
    /// Current status.
    pub status: TaskStatus,
    /// Current progress text.
    pub progress: Progress,
    /// Why the task failed, if it did.
    pub fail_reason: String,
    /// The upstream channel the task runs on.
    pub channel_id: i64,
    /// Quota charged for the task.
    pub quota: i64,
    /// JSON array text of the upstream's action buttons.
    pub buttons: String,
    /// JSON object text of extra properties (`finalPrompt`, ...).
    pub properties: String,
}

impl NewTask {
    /// Whether the task has reached a terminal status ([`TaskStatus::is_finished`]).
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// A freshly submitted task: status `NOT_START`, progress `"0%"`, submitted now, with empty
    /// JSON values (`"[]"` buttons, `"{}"` properties).
    ///
    /// # Examples
    ///
    /// ```
    /// use mj_tasks::{NewTask, TaskAction};
    /// let task = NewTask::submitted(7, TaskAction::Imagine, "a red fox", "1715240000123456", 1);
    /// assert_eq!(task.progress.as_str(), "0%");
    /// ```
    pub fn submitted(
        user_id: i64,
        action: TaskAction,
        prompt: impl Into<String>,
        mj_id: impl Into<String>,
        channel_id: i64,
    ) -> Self {
        Self {
            code: 1,
            user_id,
            action,
            mj_id: mj_id.into(),
            prompt: prompt.into(),
            submit_time: now_millis(),
            status: TaskStatus::NotStart,
            progress: Progress::zero(),
            channel_id,
            buttons: "[]".to_owned(),
            properties: "{}".to_owned(),
            ..Self::default()
        }
    }
}

/// What a task's owner sees of it (`GET /api/mj/self`).
#[derive(Debug, Clone, Serialize)]
pub struct UserTaskView<'a> {
    /// Database id.
    pub id: i64,
    /// Upstream task id.
    pub mj_id: &'a str,
    /// Action.
    pub action: &'a TaskAction,
    /// Prompt.
    pub prompt: &'a str,
    /// Translated prompt.
    pub prompt_en: &'a str,
    /// Description.
    pub description: &'a str,
    /// Client state.
    pub state: &'a str,
    /// Status.
    pub status: &'a TaskStatus,
    /// Progress text.
    pub progress: &'a Progress,
    /// Image URL: the stored one, or a forwarded URL set by [`UserTaskView::with_image_url`].
    pub image_url: Cow<'a, str>,
    /// Video URL.
    pub video_url: &'a str,
    /// JSON array text of video URLs.
    pub video_urls: &'a str,
    /// Submit time (ms).
    pub submit_time: i64,
    /// Start time (ms).
    pub start_time: i64,
    /// Finish time (ms).
    pub finish_time: i64,
    /// Failure reason.
    pub fail_reason: &'a str,
    /// Quota charged.
    pub quota: i64,
    /// JSON array text of buttons.
    pub buttons: &'a str,
    /// JSON object text of properties.
    pub properties: &'a str,
}

impl<'a> UserTaskView<'a> {
    /// The owner's view of `task`, with the image URL as stored.
    pub fn new(task: &'a Task) -> Self {
        Self {
            id: task.id,
            mj_id: &task.mj_id,
            action: &task.action,
            prompt: &task.prompt,
            prompt_en: &task.prompt_en,
            description: &task.description,
            state: &task.state,
            status: &task.status,
            progress: &task.progress,
            image_url: Cow::Borrowed(&task.image_url),
            video_url: &task.video_url,
            video_urls: &task.video_urls,
            submit_time: task.submit_time,
            start_time: task.start_time,
            finish_time: task.finish_time,
            fail_reason: &task.fail_reason,
            quota: task.quota,
            buttons: &task.buttons,
            properties: &task.properties,
        }
    }

    /// Replaces the image URL (image forwarding rewrites it).
    pub fn with_image_url(mut self, image_url: impl Into<Cow<'a, str>>) -> Self {
        self.image_url = image_url.into();
        self
    }
}

/// What an administrator sees of a task (`GET /api/mj/`): the owner's view plus the operator
/// fields.
#[derive(Debug, Clone, Serialize)]
pub struct AdminTaskView<'a> {
    /// Owner.
    pub user_id: i64,
    /// Upstream channel.
    pub channel_id: i64,
    /// Upstream submit code.
    pub code: i64,
    /// Every field the owner sees.
    #[serde(flatten)]
    pub task: UserTaskView<'a>,
}

impl<'a> AdminTaskView<'a> {
    /// The administrator's view of `task`, with the image URL as stored.
    pub fn new(task: &'a Task) -> Self {
        Self {
            user_id: task.user_id,
            channel_id: task.channel_id,
            code: task.code,
            task: UserTaskView::new(task),
        }
    }

    /// Replaces the image URL (image forwarding rewrites it).
    pub fn with_image_url(mut self, image_url: impl Into<Cow<'a, str>>) -> Self {
        self.task.image_url = image_url.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_round_trips() {
        let status = TaskStatus::parse("WAITING_FOR_GPU");
        assert_eq!(status, TaskStatus::Other("WAITING_FOR_GPU".into()));
        assert_eq!(status.as_str(), "WAITING_FOR_GPU");
        assert!(!status.is_finished());
        let json = serde_json::to_string(&status).unwrap_or_default();
        assert_eq!(json, "\"WAITING_FOR_GPU\"");
    }

    #[test]
    fn known_values_parse() {
        assert_eq!(TaskStatus::parse("SUCCESS"), TaskStatus::Success);
        assert_eq!(TaskAction::parse("CUSTOM_ZOOM"), TaskAction::CustomZoom);
        assert_eq!(TaskAction::parse("OUTPAINT").as_str(), "OUTPAINT");
        assert!(TaskStatus::Cancel.is_finished());
        assert!(!TaskStatus::Other(String::new()).is_finished());
    }

    #[test]
    fn progress_is_lenient() {
        assert_eq!(Progress::new("0%").percent(), Some(0));
        assert_eq!(Progress::new("100%").percent(), Some(100));
        assert_eq!(Progress::new("-5%").percent(), Some(0));
        assert_eq!(Progress::new("NaN%").percent(), None);
        assert_eq!(Progress::new("").percent(), None);
        assert_eq!(Progress::new("50 %").percent(), Some(50));
    }

    #[test]
    fn user_view_hides_operator_fields() {
        let task = Task {
            id: 1,
            version: 0,
            fields: NewTask {
                code: 1,
                user_id: 9,
                mj_id: "m".into(),
                submit_time: 1,
                status: TaskStatus::Success,
                progress: Progress::complete(),
                channel_id: 3,
                quota: 10,
                buttons: "[]".into(),
                properties: "{}".into(),
                ..NewTask::default()
            },
        };
        let user = serde_json::to_value(task.user_view()).unwrap_or_default();
        assert!(user.get("user_id").is_none());
        assert!(user.get("channel_id").is_none());
        assert_eq!(user["status"], "SUCCESS");
        let admin = serde_json::to_value(task.admin_view()).unwrap_or_default();
        assert_eq!(admin["user_id"], 9);
        assert_eq!(admin["channel_id"], 3);
        assert_eq!(admin["mj_id"], "m");
    }
}
