//! The JSON midjourney-proxy speaks, read leniently: every field may be `null` or missing, enums
//! may hold values we do not know, and numbers may arrive as strings.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{Progress, TaskAction, TaskStatus};

/// Submit codes a client must know (midjourney-proxy `ReturnCode`).
pub mod codes {
    /// Accepted.
    pub const SUCCESS: i64 = 1;
    /// No account, or the origin task is unknown.
    pub const NOT_FOUND: i64 = 3;
    /// The request is invalid.
    pub const VALIDATION_ERROR: i64 = 4;
    /// The upstream failed unexpectedly.
    pub const FAILURE: i64 = 9;
    /// Legacy "task exists" / plus "modal needed": accepted, with a task id.
    pub const EXISTED: i64 = 21;
    /// Accepted and queued.
    pub const IN_QUEUE: i64 = 22;
    /// Queue full (rejected).
    pub const QUEUE_REJECTED: i64 = 23;
    /// Banned prompt (rejected).
    pub const BANNED_PROMPT: i64 = 24;
    /// Not a midjourney-proxy code: this gateway could not complete the submit itself (the
    /// upstream unreachable or too slow, or the gateway's database unavailable). Clients treat
    /// it like any other failure code.
    pub const GATEWAY_FAILURE: i64 = 5;
}

/// midjourney-proxy's `SubmitResultVO`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubmitResult {
    /// The business code (1 and 22 accepted, 21 accepted by plus/legacy).
    pub code: i64,
    /// Human-readable text (Chinese upstream).
    pub description: String,
    /// The task id when accepted; `None` for every rejection.
    pub result: Option<String>,
    /// Extra properties (`discordInstanceId`, `numberOfQueues`, ...); `{}` at least.
    pub properties: Map<String, Value>,
}

impl SubmitResult {
    /// Whether the upstream accepted the task: code 1, 21 or 22 **with** a task id.
    pub fn is_accepted(&self) -> bool {
        matches!(self.code, codes::SUCCESS | codes::EXISTED | codes::IN_QUEUE)
            && self.task_id().is_some()
    }

    /// The accepted task's id, if `result` holds a non-blank one.
    pub fn task_id(&self) -> Option<&str> {
        self.result
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
    }

    /// Parses an answer body; `None` when it is not a JSON object with a numeric `code`.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let raw: RawSubmitResult = serde_json::from_slice(body).ok()?;
        let code = lenient_i64(raw.code.as_ref()?)?;
        let result = match raw.result {
            Some(Value::String(text)) => Some(text),
            Some(Value::Number(number)) => Some(number.to_string()),
            _ => None,
        };
        Some(Self {
            code,
            description: raw.description.unwrap_or_default(),
            result,
            properties: match raw.properties {
                Some(Value::Object(map)) => map,
                _ => Map::new(),
            },
        })
    }
}

#[derive(Deserialize)]
struct RawSubmitResult {
    code: Option<Value>,
    description: Option<String>,
    result: Option<Value>,
    properties: Option<Value>,
}

/// One task as the upstream reports it (§4 of the upstream notes). Every field but `id` is
/// optional.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTask {
    /// The upstream id (16 digits), the key every answer is matched on.
    pub id: String,
    /// The action, if reported.
    pub action: Option<TaskAction>,
    /// The status; unknown values are kept as [`TaskStatus::Other`].
    pub status: Option<TaskStatus>,
    /// The original prompt.
    pub prompt: Option<String>,
    /// The effective prompt.
    pub prompt_en: Option<String>,
    /// The description.
    pub description: Option<String>,
    /// The caller's state.
    pub state: Option<String>,
    /// The upstream's submit time (ms); informative only, never replaces ours.
    pub submit_time: Option<i64>,
    /// Start time (ms); `None` also for `0`.
    pub start_time: Option<i64>,
    /// Finish time (ms); `None` also for `0`.
    pub finish_time: Option<i64>,
    /// Image URL (a preview while in progress).
    pub image_url: Option<String>,
    /// Video URL (plus builds).
    pub video_url: Option<String>,
    /// Progress text, kept verbatim.
    pub progress: Option<Progress>,
    /// Why it failed.
    pub fail_reason: Option<String>,
    /// The `buttons` array as JSON text (plus builds).
    pub buttons: Option<String>,
    /// The `properties` object as JSON text.
    pub properties: Option<String>,
}

impl UpstreamTask {
    /// Reads one task from a JSON value; `None` when it is not an object with a non-blank id.
    pub fn from_value(value: &Value) -> Option<Self> {
        let object = value.as_object()?;
        let id = match object.get("id")? {
            Value::String(text) => text.trim().to_owned(),
            Value::Number(number) => number.to_string(),
            _ => return None,
        };
        if id.is_empty() {
            return None;
        }
        let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
        let time = |key: &str| {
            object
                .get(key)
                .and_then(lenient_i64)
                .filter(|millis| *millis > 0)
        };
        let json_text = |key: &str| match object.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.to_string()),
        };
        Some(Self {
            id,
            action: text("action")
                .filter(|a| !a.trim().is_empty())
                .map(TaskAction::from),
            status: text("status")
                .filter(|s| !s.trim().is_empty())
                .map(TaskStatus::from),
            prompt: text("prompt"),
            prompt_en: text("promptEn"),
            description: text("description"),
            state: text("state"),
            submit_time: time("submitTime"),
            start_time: time("startTime"),
            finish_time: time("finishTime"),
            image_url: text("imageUrl"),
            video_url: text("videoUrl"),
            progress: text("progress").map(Progress::from),
            fail_reason: text("failReason"),
            buttons: json_text("buttons"),
            properties: json_text("properties"),
        })
    }

    /// Parses a `Task[]` answer, skipping items that are not tasks (no id, not an object).
    /// `None` when the body is not a JSON array.
    pub fn parse_list(body: &[u8]) -> Option<Vec<Self>> {
        let values: Vec<Value> = serde_json::from_slice(body).ok()?;
        Some(values.iter().filter_map(Self::from_value).collect())
    }
}

/// An integer from a JSON number or numeric string.
fn lenient_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_f64().map(|f| f as i64)),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn submit_results() {
        let ok = SubmitResult::parse(
            br#"{"code":22,"description":"q","result":"1715240000123456","properties":{"numberOfQueues":2}}"#,
        )
        .unwrap();
        assert!(ok.is_accepted());
        assert_eq!(ok.task_id(), Some("1715240000123456"));
        let rejected = SubmitResult::parse(
            br#"{"code":23,"description":"full","result":null,"properties":null}"#,
        )
        .unwrap();
        assert!(!rejected.is_accepted());
        assert!(rejected.properties.is_empty());
        let no_id = SubmitResult::parse(br#"{"code":1,"result":""}"#).unwrap();
        assert!(!no_id.is_accepted());
        assert!(SubmitResult::parse(b"").is_none());
        assert!(SubmitResult::parse(b"<html>").is_none());
        assert!(SubmitResult::parse(br#"{"status":400}"#).is_none());
    }

    #[test]
    fn tasks_tolerate_nulls_and_unknowns() {
        let list = UpstreamTask::parse_list(
            br#"[{"id":"1","status":"QUEUED","action":"WARP","progress":"waiting","submitTime":null,
                  "startTime":0,"finishTime":"1715240052789","imageUrl":null,"properties":{"a":1}},
                 {"status":"SUCCESS"}, 7, {"id":""}, {"id":2,"status":null}]"#,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].status, Some(TaskStatus::Other("QUEUED".into())));
        assert_eq!(list[0].action, Some(TaskAction::Other("WARP".into())));
        assert_eq!(list[0].progress.as_ref().unwrap().percent(), None);
        assert_eq!(list[0].start_time, None);
        assert_eq!(list[0].finish_time, Some(1_715_240_052_789));
        assert_eq!(list[0].properties.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(list[1].id, "2");
        assert_eq!(list[1].status, None);
        assert!(UpstreamTask::parse_list(b"garbage").is_none());
        assert_eq!(UpstreamTask::parse_list(b"[]").unwrap(), vec![]);
    }
}
