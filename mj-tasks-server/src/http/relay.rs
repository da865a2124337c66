//! The midjourney-proxy compatible relay: `POST /mj/submit/*`, `GET /mj/task/{id}/fetch` and
//! `POST /mj/task/list-by-condition`.
//!
//! Callers authenticate with their access token in `mj-api-secret` or `Authorization: Bearer`.
//! Every outcome, errors included, is answered in midjourney-proxy's shapes: a `SubmitResult`
//! (`{"code", "description", "result", "properties"}`) for submits and errors, the camelCase
//! `Task` for fetches. Handlers never reject, so these routes never fall through to the
//! dashboard's envelope.

use std::convert::Infallible;

use mj_tasks::upstream::{SubmitResult, codes};
use mj_tasks::{Channel, NewTask, Progress, SubmitKind, Task, TaskAction, TaskStatus, now_millis};
use rand::Rng;
use serde_json::{Map, Value, json};
use warp::http::{HeaderMap, StatusCode};
use warp::hyper::body::Bytes;
use warp::{Rejection, Reply};

use crate::App;
use crate::http::auth::{AuthError, authenticate};
use crate::users::{Role, User};

/// Most ids one `list-by-condition` call may ask about.
pub const MAX_LIST_IDS: usize = 500;

/// A relay outcome that is not a success, rendered as a `SubmitResult` with `result: null`.
#[derive(Debug)]
pub struct RelayError {
    status: StatusCode,
    code: i64,
    description: String,
}

impl RelayError {
    fn new(status: StatusCode, code: i64, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
        }
    }

    /// 400, code 4: the request is invalid.
    fn invalid(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::VALIDATION_ERROR,
            description,
        )
    }

    fn store(error: mj_tasks::StoreError) -> Self {
        let (status, message) = crate::http::error::store_failure(&error);
        Self::new(status, 5, message)
    }

    fn into_response(self) -> warp::reply::Response {
        let body = json!({
            "code": self.code,
            "description": self.description,
            "result": null,
            "properties": {},
        });
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }
}

impl From<AuthError> for RelayError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Store(error) => Self::store(error),
            other => Self::new(other.status(), codes::VALIDATION_ERROR, other.to_string()),
        }
    }
}

impl From<mj_tasks::StoreError> for RelayError {
    fn from(error: mj_tasks::StoreError) -> Self {
        Self::store(error)
    }
}

/// Renders every rejection of the relay routes (unknown route, wrong method, body or URI too
/// large, ...) as a `SubmitResult`, never the dashboard's envelope.
pub async fn handle_rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = crate::http::error::rejection_status(&rejection);
    let code = if status == StatusCode::NOT_FOUND {
        codes::NOT_FOUND
    } else if status.is_server_error() {
        codes::FAILURE
    } else {
        codes::VALIDATION_ERROR
    };
    Ok(RelayError::new(status, code, message).into_response())
}

fn respond(result: Result<warp::reply::Response, RelayError>) -> warp::reply::Response {
    result.unwrap_or_else(RelayError::into_response)
}

/// The caller, from `mj-api-secret` or `Authorization` (bare or `Bearer`).
async fn relay_user(app: &App, headers: &HeaderMap) -> Result<User, RelayError> {
    Ok(authenticate(headers, app.users.as_ref(), Role::User).await?)
}

/// A validated submit: what it does, its prompt and the task it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSubmit {
    /// The action billed and recorded.
    pub action: TaskAction,
    /// The prompt recorded (empty for describe/blend until the upstream reports one).
    pub prompt: String,
    /// The origin task's upstream id, for actions on an earlier task.
    pub origin: Option<String>,
}

fn string_field<'a>(
    body: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, RelayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(_) => Err(RelayError::invalid(format!("`{key}` must be a string."))),
    }
}

fn required(body: &Map<String, Value>, key: &str) -> Result<String, RelayError> {
    string_field(body, key)?
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| RelayError::invalid(format!("`{key}` is required.")))
}

fn string_array(body: &Map<String, Value>, key: &str) -> Result<Vec<String>, RelayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| RelayError::invalid(format!("`{key}` must hold strings.")))
            })
            .collect(),
        Some(_) => Err(RelayError::invalid(format!("`{key}` must be an array."))),
    }
}

/// The action a plus `customId` (`MJ::JOB::upsample::1::<hash>`, ...) asks for.
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

/// `"<taskId> U1..U4|V1..V4|R"` (case-insensitive) → (task id, action).
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

/// Validates a submit body (clear code-4 errors, never a panic).
pub fn validate(kind: SubmitKind, body: &Map<String, Value>) -> Result<ValidSubmit, RelayError> {
    let simple = |action, prompt| ValidSubmit {
        action,
        prompt,
        origin: None,
    };
    Ok(match kind {
        SubmitKind::Imagine => {
            string_array(body, "base64Array")?;
            simple(TaskAction::Imagine, required(body, "prompt")?)
        }
        SubmitKind::Shorten => simple(TaskAction::Shorten, required(body, "prompt")?),
        SubmitKind::Describe => {
            required(body, "base64")?;
            simple(TaskAction::Describe, String::new())
        }
        SubmitKind::Blend => {
            let images = string_array(body, "base64Array")?;
            if !(2..=5).contains(&images.len()) {
                return Err(RelayError::invalid(
                    "`base64Array` must hold 2 to 5 images.",
                ));
            }
            if let Some(dimensions) = string_field(body, "dimensions")?
                && !matches!(dimensions, "PORTRAIT" | "SQUARE" | "LANDSCAPE")
            {
                return Err(RelayError::invalid(
                    "`dimensions` must be PORTRAIT, SQUARE or LANDSCAPE.",
                ));
            }
            simple(TaskAction::Blend, String::new())
        }
        SubmitKind::Change => {
            let origin = required(body, "taskId")?;
            let action = match string_field(body, "action")? {
                Some("UPSCALE") => TaskAction::Upscale,
                Some("VARIATION") => TaskAction::Variation,
                Some("REROLL") => TaskAction::Reroll,
                _ => {
                    return Err(RelayError::invalid(
                        "`action` must be UPSCALE, VARIATION or REROLL.",
                    ));
                }
            };
            if action != TaskAction::Reroll {
                match body.get("index").and_then(Value::as_i64) {
                    Some(1..=4) => {}
                    _ => return Err(RelayError::invalid("`index` must be 1 to 4.")),
                }
            }
            ValidSubmit {
                action,
                prompt: String::new(),
                origin: Some(origin),
            }
        }
        SubmitKind::SimpleChange => {
            let content = required(body, "content")?;
            let (origin, action) = parse_simple_change(&content).ok_or_else(|| {
                RelayError::invalid("`content` must be \"<taskId> U1-U4|V1-V4|R\".")
            })?;
            ValidSubmit {
                action,
                prompt: String::new(),
                origin: Some(origin),
            }
        }
        SubmitKind::Action => {
            let origin = required(body, "taskId")?;
            let custom_id = required(body, "customId")?;
            let action = action_of_custom_id(&custom_id)
                .ok_or_else(|| RelayError::invalid("`customId` is not a known action."))?;
            ValidSubmit {
                action,
                prompt: String::new(),
                origin: Some(origin),
            }
        }
        SubmitKind::Modal => {
            let origin = required(body, "taskId")?;
            let prompt = string_field(body, "prompt")?.unwrap_or_default().to_owned();
            ValidSubmit {
                action: TaskAction::Modal,
                prompt,
                origin: Some(origin),
            }
        }
    })
}

/// The code a client sees for an accepted submit: 22 (queued) and 21 (existed) become 1, except
/// 21 on inpaint and custom zoom, where plus uses it for "modal needed".
pub fn client_code(code: i64, action: &TaskAction) -> i64 {
    match code {
        codes::EXISTED if matches!(action, TaskAction::Inpaint | TaskAction::CustomZoom) => code,
        codes::EXISTED | codes::IN_QUEUE => codes::SUCCESS,
        other => other,
    }
}

fn pick_channel(channels: Vec<Channel>) -> Option<Channel> {
    let mut enabled: Vec<Channel> = channels.into_iter().filter(|c| c.enabled).collect();
    if enabled.is_empty() {
        return None;
    }
    let index = rand::rng().random_range(0..enabled.len());
    Some(enabled.swap_remove(index))
}

/// `POST /mj/submit/{kind}`.
pub async fn submit(
    segment: String,
    headers: HeaderMap,
    body: Bytes,
    app: App,
) -> Result<warp::reply::Response, Rejection> {
    let Some(kind) = SubmitKind::from_segment(&segment) else {
        return Err(warp::reject::not_found());
    };
    Ok(respond(submit_inner(kind, &headers, &body, &app).await))
}

async fn submit_inner(
    kind: SubmitKind,
    headers: &HeaderMap,
    body: &[u8],
    app: &App,
) -> Result<warp::reply::Response, RelayError> {
    let user = relay_user(app, headers).await?;
    let mut body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        _ => return Err(RelayError::invalid("The body must be a JSON object.")),
    };
    let mut valid = validate(kind, &body)?;

    let channel = match &valid.origin {
        Some(origin) => {
            let task = app
                .tasks
                .find_by_mj_id(origin, Some(user.id))
                .await?
                .ok_or_else(|| {
                    RelayError::new(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        "The origin task does not exist.",
                    )
                })?;
            let allowed = match kind {
                SubmitKind::Modal => !task.is_finished() || task.status == TaskStatus::Success,
                _ => task.status == TaskStatus::Success,
            };
            if !allowed {
                return Err(RelayError::invalid(
                    "The origin task is not in a state that allows this action.",
                ));
            }
            if valid.prompt.is_empty() {
                valid.prompt.clone_from(&task.prompt);
            }
            app.channels
                .get_channel(task.channel_id)
                .await?
                .filter(|channel| channel.enabled)
                .ok_or_else(|| {
                    RelayError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        codes::NOT_FOUND,
                        "The origin task's channel is disabled.",
                    )
                })?
        }
        None => pick_channel(app.channels.list_channels().await?).ok_or_else(|| {
            RelayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::NOT_FOUND,
                "No upstream channel is available.",
            )
        })?,
    };

    let price = app.settings.prices.price(&valid.action);
    if !app.ledger.reserve(user.id, price).await? {
        return Err(RelayError::new(
            StatusCode::PAYMENT_REQUIRED,
            codes::VALIDATION_ERROR,
            format!("Insufficient quota: this action costs {price}."),
        ));
    }

    // Per-task callbacks would bypass our records: the upstream is polled instead.
    body.remove("notifyHook");
    let state = string_field(&body, "state")?.unwrap_or_default().to_owned();
    let upstream = app
        .upstream
        .submit(&channel, kind, &Value::Object(body))
        .await;
    let result = match upstream {
        Ok(result) => result,
        Err(error) => {
            release(app, user.id, price).await;
            tracing::warn!(channel = channel.id, %error, "submit failed upstream");
            let (status, text) = if error.is_timeout() {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "The upstream did not answer in time.",
                )
            } else {
                (StatusCode::BAD_GATEWAY, "The upstream is unavailable.")
            };
            return Err(RelayError::new(status, 5, text));
        }
    };
    let Some(mj_id) = result.is_accepted().then(|| result.task_id()).flatten() else {
        // Rejected: nothing to poll, nothing charged; the upstream's answer as given.
        release(app, user.id, price).await;
        return Ok(warp::reply::json(&result).into_response());
    };
    let task = NewTask {
        code: codes::SUCCESS,
        user_id: user.id,
        action: valid.action.clone(),
        mj_id: mj_id.to_owned(),
        prompt: valid.prompt.clone(),
        description: result.description.clone(),
        state,
        submit_time: now_millis(),
        status: TaskStatus::NotStart,
        progress: Progress::zero(),
        channel_id: channel.id,
        quota: price,
        buttons: "[]".to_owned(),
        properties: "{}".to_owned(),
        ..NewTask::default()
    };
    if let Err(error) = app.tasks.insert(&task).await {
        release(app, user.id, price).await;
        return Err(RelayError::store(error));
    }
    let answer = SubmitResult {
        code: client_code(result.code, &valid.action),
        ..result
    };
    Ok(warp::reply::json(&answer).into_response())
}

async fn release(app: &App, user_id: i64, price: i64) {
    if let Err(error) = app.ledger.release(user_id, price).await {
        tracing::error!(user_id, price, error = ?error, "could not release a quota reservation");
    }
}

fn json_text(text: &str, fallback: Value) -> Value {
    serde_json::from_str(text).unwrap_or(fallback)
}

fn time(millis: i64) -> Value {
    if millis > 0 {
        json!(millis)
    } else {
        Value::Null
    }
}

/// A task in midjourney-proxy's camelCase `Task` shape. `image_url` is passed in so that the one
/// place deciding what clients see as the image address (raw, or forwarded and signed) stays
/// outside this function.
pub fn relay_task_json(task: &Task, image_url: String) -> Value {
    let optional = |text: &str| {
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text.to_owned())
        }
    };
    json!({
        "id": task.mj_id,
        "action": task.action.as_str(),
        "status": task.status.as_str(),
        "prompt": task.prompt,
        "promptEn": task.prompt_en,
        "description": task.description,
        "state": optional(&task.state),
        "submitTime": time(task.submit_time),
        "startTime": time(task.start_time),
        "finishTime": time(task.finish_time),
        "imageUrl": optional(&image_url),
        "videoUrl": optional(&task.video_url),
        "progress": task.progress.as_str(),
        "failReason": optional(&task.fail_reason),
        "buttons": json_text(&task.buttons, json!([])),
        "properties": json_text(&task.properties, json!({})),
    })
}

/// `GET /mj/task/{id}/fetch`: the caller's task from our database.
pub async fn fetch(
    id: String,
    headers: HeaderMap,
    app: App,
) -> Result<warp::reply::Response, Rejection> {
    let outcome = async {
        let user = relay_user(&app, &headers).await?;
        let task = app
            .tasks
            .find_by_mj_id(&id, Some(user.id))
            .await?
            .ok_or_else(|| {
                RelayError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "Task not found.")
            })?;
        let json = relay_task_json(&task, app.present_image_url(&task));
        Ok(warp::reply::json(&json).into_response())
    };
    Ok(respond(outcome.await))
}

/// `POST /mj/task/list-by-condition`: the caller's tasks among `ids`, in no particular order.
pub async fn list_by_condition(
    headers: HeaderMap,
    body: Bytes,
    app: App,
) -> Result<warp::reply::Response, Rejection> {
    let outcome = async {
        let user = relay_user(&app, &headers).await?;
        let body: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(Value::Object(map)) => map,
            _ => return Err(RelayError::invalid("The body must be a JSON object.")),
        };
        let ids = string_array(&body, "ids")?;
        if ids.len() > MAX_LIST_IDS {
            return Err(RelayError::invalid(format!(
                "At most {MAX_LIST_IDS} ids per call."
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut items = Vec::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            if let Some(task) = app.tasks.find_by_mj_id(id, Some(user.id)).await? {
                items.push(relay_task_json(&task, app.present_image_url(&task)));
            }
        }
        Ok(warp::reply::json(&items).into_response())
    };
    Ok(respond(outcome.await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids() {
        assert_eq!(
            action_of_custom_id("MJ::JOB::upsample::1::abc"),
            Some(TaskAction::Upscale)
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::low_variation::1::abc::SOLO"),
            Some(TaskAction::LowVariation)
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::variation::2::abc"),
            Some(TaskAction::Variation)
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::pan_left::1::abc::SOLO"),
            Some(TaskAction::Pan)
        );
        assert_eq!(
            action_of_custom_id("MJ::Outpaint::50::1::abc::SOLO"),
            Some(TaskAction::Zoom)
        );
        assert_eq!(
            action_of_custom_id("MJ::CustomZoom::abc"),
            Some(TaskAction::CustomZoom)
        );
        assert_eq!(action_of_custom_id("garbage"), None);
        assert_eq!(action_of_custom_id(""), None);
        assert_eq!(action_of_custom_id("MJ::"), None);
    }

    #[test]
    fn simple_changes() {
        assert_eq!(
            parse_simple_change("123 u2"),
            Some(("123".into(), TaskAction::Upscale))
        );
        assert_eq!(
            parse_simple_change("123 R"),
            Some(("123".into(), TaskAction::Reroll))
        );
        assert_eq!(
            parse_simple_change("123 V4"),
            Some(("123".into(), TaskAction::Variation))
        );
        for bad in ["", "123", "123 U5", "123 U1 x", "123 Ü1", "123 V"] {
            assert_eq!(parse_simple_change(bad), None, "{bad}");
        }
    }

    #[test]
    fn codes_are_normalised_structurally() {
        assert_eq!(client_code(22, &TaskAction::Imagine), 1);
        assert_eq!(client_code(21, &TaskAction::Upscale), 1);
        assert_eq!(client_code(21, &TaskAction::Inpaint), 21);
        assert_eq!(client_code(1, &TaskAction::Imagine), 1);
    }

    #[test]
    fn validation_never_panics() {
        let cases = [
            (SubmitKind::Imagine, json!({})),
            (SubmitKind::Imagine, json!({"prompt": 5})),
            (SubmitKind::Imagine, json!({"prompt": "  "})),
            (
                SubmitKind::Imagine,
                json!({"prompt": "x", "base64Array": "no"}),
            ),
            (SubmitKind::Change, json!({"taskId": "1", "action": null})),
            (
                SubmitKind::Change,
                json!({"taskId": "1", "action": "UPSCALE"}),
            ),
            (
                SubmitKind::Change,
                json!({"taskId": "1", "action": "UPSCALE", "index": 9}),
            ),
            (SubmitKind::SimpleChange, json!({"content": "1 Z9"})),
            (SubmitKind::Action, json!({"taskId": "1", "customId": "💥"})),
            (SubmitKind::Blend, json!({"base64Array": ["a"]})),
            (
                SubmitKind::Blend,
                json!({"base64Array": ["a", "b"], "dimensions": "HUGE"}),
            ),
            (SubmitKind::Describe, json!({"base64": ""})),
        ];
        for (kind, body) in cases {
            let Value::Object(map) = body else {
                unreachable!()
            };
            let error = validate(kind, &map).expect_err("invalid");
            assert_eq!(error.code, 4);
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
        }
        let Value::Object(ok) = json!({"taskId": "1", "action": "REROLL"}) else {
            unreachable!()
        };
        assert_eq!(
            validate(SubmitKind::Change, &ok).map(|v| v.action).ok(),
            Some(TaskAction::Reroll)
        );
    }
}
