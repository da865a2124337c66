//! The submit bodies midjourney-proxy accepts, as serde types, and what each one asks for.
//!
//! Fields this crate does not interpret (`botType`, `accountFilter`, `maskBase64`, ...) are kept
//! in each body's `extra` and forwarded as they came; `notifyHook` is read and dropped, since a
//! per-task callback would bypass our records (the upstream is polled instead). Every text that
//! can reach a database is checked with [`crate::text`] before anything is charged or sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::TaskAction;
use crate::text::{TextError, check_long, check_short};
use crate::upstream::SubmitKind;

/// A request the relay refuses before anything is charged or sent upstream; the message names
/// the field at fault and can be shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    /// The body field at fault, when there is one.
    pub field: Option<&'static str>,
    /// A sentence for the client.
    pub message: String,
}

impl InvalidRequest {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            message: message.into(),
        }
    }

    fn body(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }

    fn required(field: &'static str) -> Self {
        Self::field(field, format!("`{field}` is required."))
    }
}

impl From<TextError> for InvalidRequest {
    fn from(error: TextError) -> Self {
        Self::field(error.field(), format!("{error}."))
    }
}

/// `POST /mj/submit/imagine`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagineRequest {
    /// The prompt (required, not blank).
    pub prompt: Option<String>,
    /// Reference images as data URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64_array: Option<Vec<String>>,
    /// One reference image (deprecated upstream, still accepted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Caller state, echoed back in the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped (see the module documentation).
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/change`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequest {
    /// The origin task's upstream id.
    pub task_id: Option<String>,
    /// `UPSCALE`, `VARIATION` or `REROLL`.
    pub action: Option<String>,
    /// 1 to 4, for `UPSCALE` and `VARIATION`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/simple-change`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimpleChangeRequest {
    /// `"<taskId> U1..U4|V1..V4|R"`.
    pub content: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/describe`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRequest {
    /// The image as a data URL (required).
    pub base64: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/blend`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlendRequest {
    /// 2 to 5 images as data URLs.
    pub base64_array: Option<Vec<String>>,
    /// `PORTRAIT`, `SQUARE` (the upstream's default) or `LANDSCAPE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/action` (plus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    /// The origin task's upstream id.
    pub task_id: Option<String>,
    /// A button's id, e.g. `MJ::JOB::upsample::1::<hash>` (see [`action_of_custom_id`]).
    pub custom_id: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/modal` (plus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModalRequest {
    /// The `MODAL` task's upstream id.
    pub task_id: Option<String>,
    /// The prompt of the form (optional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The region mask of an inpaint, as a data URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_base64: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /mj/submit/shorten` (plus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShortenRequest {
    /// The prompt to shorten (required).
    pub prompt: Option<String>,
    /// Caller state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Read and dropped.
    #[serde(skip_serializing)]
    pub notify_hook: Option<Value>,
    /// Everything else, forwarded as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A submit body, one variant per [`SubmitKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitRequest {
    /// `/mj/submit/imagine`.
    Imagine(ImagineRequest),
    /// `/mj/submit/change`.
    Change(ChangeRequest),
    /// `/mj/submit/simple-change`.
    SimpleChange(SimpleChangeRequest),
    /// `/mj/submit/describe`.
    Describe(DescribeRequest),
    /// `/mj/submit/blend`.
    Blend(BlendRequest),
    /// `/mj/submit/action`.
    Action(ActionRequest),
    /// `/mj/submit/modal`.
    Modal(ModalRequest),
    /// `/mj/submit/shorten`.
    Shorten(ShortenRequest),
}

/// What a valid submit asks for: the action billed and recorded, its prompt, its state and the
/// task it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitPlan {
    /// The action billed and recorded.
    pub action: TaskAction,
    /// The prompt recorded (empty for describe, blend and actions on a task until the origin's
    /// prompt or the upstream fills it in).
    pub prompt: String,
    /// The caller's `state`.
    pub state: String,
    /// The origin task's upstream id, for actions on an earlier task.
    pub origin: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(
    kind: SubmitKind,
    body: &[u8],
) -> Result<T, InvalidRequest> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => {}
        _ => return Err(InvalidRequest::body("The body must be a JSON object.")),
    }
    serde_json::from_slice(body).map_err(|error| {
        InvalidRequest::body(format!(
            "The body is not a valid {} request: {error}.",
            kind.segment()
        ))
    })
}

/// A required text: present and not blank, trimmed.
fn required(field: &'static str, value: Option<&String>) -> Result<String, InvalidRequest> {
    value
        .map(|text| text.trim())
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| InvalidRequest::required(field))
}

/// Checks long texts (prompts, state, images) for storability.
fn check_texts<'a>(
    texts: impl IntoIterator<Item = (&'static str, Option<&'a String>)>,
) -> Result<(), InvalidRequest> {
    for (field, text) in texts {
        if let Some(text) = text {
            check_long(field, text)?;
        }
    }
    Ok(())
}

fn check_images(field: &'static str, images: Option<&Vec<String>>) -> Result<(), InvalidRequest> {
    for image in images.into_iter().flatten() {
        check_long(field, image)?;
    }
    Ok(())
}

/// An origin task id: required, and short enough to be an upstream id on every backend.
fn origin(value: Option<&String>) -> Result<String, InvalidRequest> {
    let id = required("taskId", value)?;
    check_short("taskId", &id)?;
    Ok(id)
}

fn state_of(state: Option<&String>) -> String {
    state.cloned().unwrap_or_default()
}

impl SubmitRequest {
    /// Parses a body for `kind`: a JSON object whose known fields have their types. Nothing is
    /// validated beyond that; see [`Self::plan`].
    pub fn parse(kind: SubmitKind, body: &[u8]) -> Result<Self, InvalidRequest> {
        Ok(match kind {
            SubmitKind::Imagine => Self::Imagine(parse_body(kind, body)?),
            SubmitKind::Change => Self::Change(parse_body(kind, body)?),
            SubmitKind::SimpleChange => Self::SimpleChange(parse_body(kind, body)?),
            SubmitKind::Describe => Self::Describe(parse_body(kind, body)?),
            SubmitKind::Blend => Self::Blend(parse_body(kind, body)?),
            SubmitKind::Action => Self::Action(parse_body(kind, body)?),
            SubmitKind::Modal => Self::Modal(parse_body(kind, body)?),
            SubmitKind::Shorten => Self::Shorten(parse_body(kind, body)?),
        })
    }

    /// The endpoint this body is for.
    pub fn kind(&self) -> SubmitKind {
        match self {
            Self::Imagine(_) => SubmitKind::Imagine,
            Self::Change(_) => SubmitKind::Change,
            Self::SimpleChange(_) => SubmitKind::SimpleChange,
            Self::Describe(_) => SubmitKind::Describe,
            Self::Blend(_) => SubmitKind::Blend,
            Self::Action(_) => SubmitKind::Action,
            Self::Modal(_) => SubmitKind::Modal,
            Self::Shorten(_) => SubmitKind::Shorten,
        }
    }

    /// The body forwarded to the upstream (without `notifyHook`).
    pub fn to_upstream_json(&self) -> Value {
        let value = match self {
            Self::Imagine(body) => serde_json::to_value(body),
            Self::Change(body) => serde_json::to_value(body),
            Self::SimpleChange(body) => serde_json::to_value(body),
            Self::Describe(body) => serde_json::to_value(body),
            Self::Blend(body) => serde_json::to_value(body),
            Self::Action(body) => serde_json::to_value(body),
            Self::Modal(body) => serde_json::to_value(body),
            Self::Shorten(body) => serde_json::to_value(body),
        };
        // Maps of strings, numbers and JSON values always serialize.
        value.unwrap_or_else(|_| Value::Object(Map::new()))
    }

    /// Validates the body (required fields, known values, storable text) and says what it asks
    /// for. Clear errors naming the field, never a panic.
    pub fn plan(&self) -> Result<SubmitPlan, InvalidRequest> {
        let simple = |action, prompt, state: Option<&String>| SubmitPlan {
            action,
            prompt,
            state: state_of(state),
            origin: None,
        };
        let on_origin = |action, origin, state: Option<&String>| SubmitPlan {
            action,
            prompt: String::new(),
            state: state_of(state),
            origin: Some(origin),
        };
        Ok(match self {
            Self::Imagine(body) => {
                check_texts([
                    ("prompt", body.prompt.as_ref()),
                    ("base64", body.base64.as_ref()),
                    ("state", body.state.as_ref()),
                ])?;
                check_images("base64Array", body.base64_array.as_ref())?;
                let prompt = required("prompt", body.prompt.as_ref())?;
                simple(TaskAction::Imagine, prompt, body.state.as_ref())
            }
            Self::Shorten(body) => {
                check_texts([
                    ("prompt", body.prompt.as_ref()),
                    ("state", body.state.as_ref()),
                ])?;
                let prompt = required("prompt", body.prompt.as_ref())?;
                simple(TaskAction::Shorten, prompt, body.state.as_ref())
            }
            Self::Describe(body) => {
                check_texts([
                    ("base64", body.base64.as_ref()),
                    ("state", body.state.as_ref()),
                ])?;
                required("base64", body.base64.as_ref())?;
                simple(TaskAction::Describe, String::new(), body.state.as_ref())
            }
            Self::Blend(body) => {
                check_texts([("state", body.state.as_ref())])?;
                check_images("base64Array", body.base64_array.as_ref())?;
                let count = body.base64_array.as_ref().map_or(0, Vec::len);
                if !(2..=5).contains(&count) {
                    return Err(InvalidRequest::field(
                        "base64Array",
                        "`base64Array` must hold 2 to 5 images.",
                    ));
                }
                if let Some(dimensions) = &body.dimensions
                    && !matches!(dimensions.as_str(), "PORTRAIT" | "SQUARE" | "LANDSCAPE")
                {
                    return Err(InvalidRequest::field(
                        "dimensions",
                        "`dimensions` must be PORTRAIT, SQUARE or LANDSCAPE.",
                    ));
                }
                simple(TaskAction::Blend, String::new(), body.state.as_ref())
            }
            Self::Change(body) => {
                check_texts([("state", body.state.as_ref())])?;
                let origin = origin(body.task_id.as_ref())?;
                let action = match body.action.as_deref() {
                    Some("UPSCALE") => TaskAction::Upscale,
                    Some("VARIATION") => TaskAction::Variation,
                    Some("REROLL") => TaskAction::Reroll,
                    _ => {
                        return Err(InvalidRequest::field(
                            "action",
                            "`action` must be UPSCALE, VARIATION or REROLL.",
                        ));
                    }
                };
                if action != TaskAction::Reroll && !matches!(body.index, Some(1..=4)) {
                    return Err(InvalidRequest::field("index", "`index` must be 1 to 4."));
                }
                on_origin(action, origin, body.state.as_ref())
            }
            Self::SimpleChange(body) => {
                check_texts([
                    ("content", body.content.as_ref()),
                    ("state", body.state.as_ref()),
                ])?;
                let content = required("content", body.content.as_ref())?;
                let (origin, action) = parse_simple_change(&content).ok_or_else(|| {
                    InvalidRequest::field(
                        "content",
                        "`content` must be \"<taskId> U1-U4|V1-V4|R\".",
                    )
                })?;
                check_short("content", &origin)?;
                on_origin(action, origin, body.state.as_ref())
            }
            Self::Action(body) => {
                check_texts([("state", body.state.as_ref())])?;
                let origin = origin(body.task_id.as_ref())?;
                let custom_id = required("customId", body.custom_id.as_ref())?;
                check_long("customId", &custom_id)?;
                let action = action_of_custom_id(&custom_id).ok_or_else(|| {
                    InvalidRequest::field("customId", "`customId` is not a known action.")
                })?;
                on_origin(action, origin, body.state.as_ref())
            }
            Self::Modal(body) => {
                check_texts([
                    ("prompt", body.prompt.as_ref()),
                    ("maskBase64", body.mask_base64.as_ref()),
                    ("state", body.state.as_ref()),
                ])?;
                let origin = origin(body.task_id.as_ref())?;
                SubmitPlan {
                    action: TaskAction::Modal,
                    prompt: body.prompt.clone().unwrap_or_default(),
                    state: state_of(body.state.as_ref()),
                    origin: Some(origin),
                }
            }
        })
    }
}

/// The action a plus `customId` (`MJ::JOB::upsample::1::<hash>`, ...) asks for, as new-api
/// bills it.
pub fn action_of_custom_id(custom_id: &str) -> Option<TaskAction> {
    let id = custom_id.trim();
    if !id.starts_with("MJ::") {
        return None;
    }
    // Order matters: `low_variation` contains `variation`.
    let table: [(&str, TaskAction); 9] = [
        ("low_variation", TaskAction::LowVariation),
        ("high_variation", TaskAction::HighVariation),
        ("upsample", TaskAction::Upscale),
        ("variation", TaskAction::Variation),
        ("pan_", TaskAction::Pan),
        ("reroll", TaskAction::Reroll),
        ("Outpaint", TaskAction::Zoom),
        ("CustomZoom", TaskAction::CustomZoom),
        ("Inpaint", TaskAction::Inpaint),
    ];
    table
        .into_iter()
        .find(|(needle, _)| id.contains(needle))
        .map(|(_, action)| action)
}

/// `"<taskId> U1..U4|V1..V4|R"` (case-insensitive, exactly two tokens) → (task id, action).
pub fn parse_simple_change(content: &str) -> Option<(String, TaskAction)> {
    let mut parts = content.split_whitespace();
    let (task_id, change, rest) = (parts.next()?, parts.next()?, parts.next());
    if rest.is_some() {
        return None;
    }
    let change = change.to_ascii_uppercase();
    let action = match change.as_bytes() {
        [b'R'] => TaskAction::Reroll,
        [b'U', b'1'..=b'4'] => TaskAction::Upscale,
        [b'V', b'1'..=b'4'] => TaskAction::Variation,
        _ => return None,
    };
    Some((task_id.to_owned(), action))
}

/// Most ids one `list-by-condition` call may ask about.
pub const MAX_LIST_IDS: usize = 500;

/// `POST /mj/task/list-by-condition`: `{"ids": [...]}` (missing or `null` ids ask for nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListByConditionRequest {
    /// Upstream task ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

impl ListByConditionRequest {
    /// Parses a body: a JSON object with at most [`MAX_LIST_IDS`] string ids.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidRequest> {
        let request: Self = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => serde_json::from_value(Value::Object(map))
                .map_err(|_| InvalidRequest::field("ids", "`ids` must be an array of strings."))?,
            _ => return Err(InvalidRequest::body("The body must be a JSON object.")),
        };
        if request.ids.as_ref().map_or(0, Vec::len) > MAX_LIST_IDS {
            return Err(InvalidRequest::field(
                "ids",
                format!("At most {MAX_LIST_IDS} ids per call."),
            ));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn custom_ids() {
        for (id, action) in [
            ("MJ::JOB::upsample::1::abc", Some(TaskAction::Upscale)),
            (
                "MJ::JOB::low_variation::1::abc::SOLO",
                Some(TaskAction::LowVariation),
            ),
            (
                "MJ::JOB::high_variation::1::abc::SOLO",
                Some(TaskAction::HighVariation),
            ),
            ("MJ::JOB::variation::2::abc", Some(TaskAction::Variation)),
            ("MJ::JOB::pan_left::1::abc::SOLO", Some(TaskAction::Pan)),
            ("MJ::JOB::reroll::0::abc::SOLO", Some(TaskAction::Reroll)),
            ("MJ::Outpaint::50::1::abc::SOLO", Some(TaskAction::Zoom)),
            ("MJ::CustomZoom::abc", Some(TaskAction::CustomZoom)),
            ("MJ::Inpaint::1::abc::SOLO", Some(TaskAction::Inpaint)),
            ("  MJ::JOB::upsample::1::abc ", Some(TaskAction::Upscale)),
            ("garbage", None),
            ("upsample", None),
            ("", None),
            ("MJ::", None),
        ] {
            assert_eq!(action_of_custom_id(id), action, "{id}");
        }
    }

    #[test]
    fn simple_changes() {
        assert_eq!(
            parse_simple_change("123 u2"),
            Some(("123".into(), TaskAction::Upscale))
        );
        assert_eq!(
            parse_simple_change("  123   R "),
            Some(("123".into(), TaskAction::Reroll))
        );
        assert_eq!(
            parse_simple_change("123 V4"),
            Some(("123".into(), TaskAction::Variation))
        );
        for bad in [
            "", "123", "123 U5", "123 U0", "123 U1 x", "123 Ü1", "123 V", "123 UU",
        ] {
            assert_eq!(parse_simple_change(bad), None, "{bad}");
        }
    }

    fn plan(kind: SubmitKind, body: Value) -> Result<SubmitPlan, InvalidRequest> {
        SubmitRequest::parse(kind, body.to_string().as_bytes())?.plan()
    }

    #[test]
    fn invalid_bodies_are_named_never_panics() {
        let cases = [
            (SubmitKind::Imagine, json!({}), Some("prompt")),
            (SubmitKind::Imagine, json!({"prompt": 5}), None),
            (SubmitKind::Imagine, json!({"prompt": "  "}), Some("prompt")),
            (
                SubmitKind::Imagine,
                json!({"prompt": "x", "base64Array": "no"}),
                None,
            ),
            (
                SubmitKind::Imagine,
                json!({"prompt": "a\u{0}b"}),
                Some("prompt"),
            ),
            (
                SubmitKind::Imagine,
                json!({"prompt": "x", "state": "\u{0}"}),
                Some("state"),
            ),
            (
                SubmitKind::Imagine,
                json!({"prompt": "x", "base64Array": ["ok", "\u{0}"]}),
                Some("base64Array"),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "1", "action": null}),
                Some("action"),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "1", "action": "UPSCALE"}),
                Some("index"),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "1", "action": "UPSCALE", "index": 9}),
                Some("index"),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "1\u{0}", "action": "REROLL"}),
                Some("taskId"),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "x".repeat(300), "action": "REROLL"}),
                Some("taskId"),
            ),
            (
                SubmitKind::SimpleChange,
                json!({"content": "1 Z9"}),
                Some("content"),
            ),
            (
                SubmitKind::SimpleChange,
                json!({"content": "\u{0} U1"}),
                Some("content"),
            ),
            (
                SubmitKind::Action,
                json!({"taskId": "1", "customId": "💥"}),
                Some("customId"),
            ),
            (
                SubmitKind::Action,
                json!({"taskId": "1", "customId": 42}),
                None,
            ),
            (
                SubmitKind::Action,
                json!({"taskId": "1", "customId": "MJ::JOB::upsample::1::\u{0}"}),
                Some("customId"),
            ),
            (
                SubmitKind::Blend,
                json!({"base64Array": ["a"]}),
                Some("base64Array"),
            ),
            (
                SubmitKind::Blend,
                json!({"base64Array": ["a", "b"], "dimensions": "HUGE"}),
                Some("dimensions"),
            ),
            (SubmitKind::Describe, json!({"base64": ""}), Some("base64")),
            (
                SubmitKind::Modal,
                json!({"taskId": "1", "maskBase64": "\u{0}"}),
                Some("maskBase64"),
            ),
            (SubmitKind::Shorten, json!({"prompt": null}), Some("prompt")),
        ];
        for (kind, body, field) in cases {
            let error = plan(kind, body.clone()).expect_err(&body.to_string());
            assert_eq!(error.field, field, "{kind:?} {body}: {error}");
            if let Some(field) = field {
                assert!(error.message.contains(field), "{error}");
            }
        }
        for body in [&b"[1, 2]"[..], b"", b"nope", b"\"prompt\""] {
            let error = SubmitRequest::parse(SubmitKind::Imagine, body).unwrap_err();
            assert_eq!(error.message, "The body must be a JSON object.");
        }
    }

    #[test]
    fn plans_say_what_is_billed() {
        let reroll = plan(
            SubmitKind::Change,
            json!({"taskId": " 1 ", "action": "REROLL"}),
        );
        assert_eq!(
            reroll.unwrap(),
            SubmitPlan {
                action: TaskAction::Reroll,
                prompt: String::new(),
                state: String::new(),
                origin: Some("1".into()),
            }
        );
        let imagine = plan(
            SubmitKind::Imagine,
            json!({"prompt": " a red fox ", "state": "s1"}),
        )
        .unwrap();
        assert_eq!(
            (
                imagine.action,
                imagine.prompt.as_str(),
                imagine.state.as_str()
            ),
            (TaskAction::Imagine, "a red fox", "s1")
        );
        let zoom = plan(
            SubmitKind::Action,
            json!({"taskId": "1", "customId": "MJ::Outpaint::50::1::abc::SOLO"}),
        )
        .unwrap();
        assert_eq!(zoom.action, TaskAction::Zoom);
        let simple = plan(SubmitKind::SimpleChange, json!({"content": "99 v3"})).unwrap();
        assert_eq!(
            (simple.action, simple.origin.as_deref()),
            (TaskAction::Variation, Some("99"))
        );
    }

    #[test]
    fn forwarded_bodies_keep_unknown_fields_and_drop_the_notify_hook() {
        let body = json!({
            "prompt": "cat", "notifyHook": "http://evil", "botType": "NIJI_JOURNEY",
            "accountFilter": {"remark": "x"}, "state": null
        });
        let request =
            SubmitRequest::parse(SubmitKind::Imagine, body.to_string().as_bytes()).unwrap();
        assert_eq!(request.kind(), SubmitKind::Imagine);
        assert_eq!(
            request.to_upstream_json(),
            json!({"prompt": "cat", "botType": "NIJI_JOURNEY", "accountFilter": {"remark": "x"}})
        );
    }

    #[test]
    fn list_by_condition_bodies() {
        assert_eq!(ListByConditionRequest::parse(b"{}").unwrap().ids, None);
        assert_eq!(
            ListByConditionRequest::parse(br#"{"ids":["a","b"]}"#)
                .unwrap()
                .ids,
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            ListByConditionRequest::parse(br#"{"ids":"a"}"#)
                .unwrap_err()
                .field,
            Some("ids")
        );
        assert!(ListByConditionRequest::parse(b"[]").is_err());
        let many: Vec<String> = (0..=MAX_LIST_IDS).map(|n| n.to_string()).collect();
        let body = json!({ "ids": many }).to_string();
        assert_eq!(
            ListByConditionRequest::parse(body.as_bytes())
                .unwrap_err()
                .field,
            Some("ids")
        );
    }
}
