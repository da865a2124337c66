//! A fake midjourney-proxy for tests and benches: the real wire shapes (§3, §4 of the upstream
//! notes), tasks that progress a step each time they are polled, and switches to fail tasks,
//! answer 500, garbage or slowly, forget tasks and count calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::hyper::body::Bytes;
use warp::reply::Reply;

use crate::local_server::LocalServer;

/// How the fake answers polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal answers.
    Normal,
    /// HTTP 500 with a Spring error body.
    Error500,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// Normal answers after a delay.
    Slow(Duration),
}

/// What a task ends as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SUCCESS with an image.
    Success,
    /// FAILURE with a reason.
    Failure,
    /// Never finishes.
    Stuck,
}

#[derive(Debug, Clone)]
struct FakeTask {
    action: String,
    prompt: String,
    submit_time: i64,
    step: u32,
    outcome: Outcome,
}

/// The fake's state, shared with the test.
pub struct State {
    /// The `mj-api-secret` it requires.
    pub secret: String,
    tasks: Mutex<HashMap<String, FakeTask>>,
    mode: Mutex<Mode>,
    next_id: AtomicU64,
    /// Next submit answer code override (e.g. 22, 24); `None` answers 1.
    submit_code: Mutex<Option<i64>>,
    /// Submits received.
    pub submit_calls: AtomicU64,
    /// `list-by-condition` calls received.
    pub list_calls: AtomicU64,
    /// Ids asked for over all `list-by-condition` calls.
    pub listed_ids: AtomicU64,
    /// Single-task fetches received.
    pub fetch_calls: AtomicU64,
    /// Polls a task needs to finish (NOT_START → SUBMITTED → IN_PROGRESS ... → end).
    pub steps_to_finish: u32,
}

/// A running fake.
pub struct FakeProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state, shared with the test.
    pub state: Arc<State>,
    server: LocalServer,
}

impl FakeProxy {
    /// Starts a fake on 127.0.0.1 with this secret; tasks finish after 3 polls.
    pub async fn start(secret: &str) -> Self {
        Self::start_with_steps(secret, 3).await
    }

    /// Starts a fake whose tasks finish after `steps` polls.
    pub async fn start_with_steps(secret: &str, steps: u32) -> Self {
        let state = Arc::new(State {
            secret: secret.to_owned(),
            tasks: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            next_id: AtomicU64::new(1_715_240_000_000_000),
            submit_code: Mutex::new(None),
            submit_calls: AtomicU64::new(0),
            list_calls: AtomicU64::new(0),
            listed_ids: AtomicU64::new(0),
            fetch_calls: AtomicU64::new(0),
            steps_to_finish: steps,
        });
        let server = LocalServer::start(routes(state.clone())).await;
        Self {
            addr: server.addr,
            state,
            server,
        }
    }

    /// `http://` and its address.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The code the next submits answer (1 when `None`).
    pub fn set_submit_code(&self, code: Option<i64>) {
        *self.state.submit_code.lock().unwrap() = code;
    }

    /// Registers a task directly (benches, seeded tests).
    pub fn insert(&self, id: &str, outcome: Outcome) {
        self.insert_at(id, outcome, 0);
    }

    /// Registers a task that has already been polled `step` times (`u32::MAX / 2`: finished).
    pub fn insert_at(&self, id: &str, outcome: Outcome, step: u32) {
        self.state.tasks.lock().unwrap().insert(
            id.to_owned(),
            FakeTask {
                action: "IMAGINE".into(),
                prompt: "seeded".into(),
                submit_time: now_ms(),
                step,
                outcome,
            },
        );
    }

    /// Forgets a task (as after an upstream restart).
    pub fn forget(&self, id: &str) {
        self.state.tasks.lock().unwrap().remove(id);
    }

    /// `list-by-condition` calls so far.
    pub fn list_calls(&self) -> u64 {
        self.state.list_calls.load(Ordering::SeqCst)
    }

    /// Submits so far.
    pub fn submit_calls(&self) -> u64 {
        self.state.submit_calls.load(Ordering::SeqCst)
    }

    /// Stops it and waits until its port is closed.
    pub async fn stop(mut self) {
        self.server.shut_down().await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn task_json(id: &str, task: &FakeTask, steps: u32) -> Value {
    let (status, progress, image, fail_reason, finish) = if task.step == 0 {
        (
            "NOT_START",
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        )
    } else if task.step >= steps && task.outcome != Outcome::Stuck {
        match task.outcome {
            Outcome::Failure => (
                "FAILURE",
                json!(""),
                Value::Null,
                json!("[Banned prompt] fake failure"),
                json!(now_ms()),
            ),
            _ => (
                "SUCCESS",
                json!("100%"),
                json!(format!("https://cdn.fake/{id}.png")),
                Value::Null,
                json!(now_ms()),
            ),
        }
    } else if task.step == 1 {
        (
            "SUBMITTED",
            json!("0%"),
            Value::Null,
            Value::Null,
            Value::Null,
        )
    } else {
        // Stuck tasks keep moving (1%..99%, cycling) so that every poll changes them.
        let percent = if task.outcome == Outcome::Stuck {
            1 + task.step % 99
        } else {
            (task.step * 100 / steps.max(1)).min(99)
        };
        (
            "IN_PROGRESS",
            json!(format!("{percent}%")),
            json!(format!("https://cdn.fake/{id}-preview.webp")),
            Value::Null,
            Value::Null,
        )
    };
    json!({
        "id": id,
        "properties": {"notifyHook": null, "discordInstanceId": "1118138338562560102", "finalPrompt": task.prompt},
        "action": task.action,
        "status": status,
        "prompt": task.prompt,
        "promptEn": task.prompt,
        "description": format!("/imagine {}", task.prompt),
        "state": null,
        "submitTime": task.submit_time,
        "startTime": if task.step >= 1 { json!(task.submit_time + 1000) } else { Value::Null },
        "finishTime": finish,
        "imageUrl": image,
        "progress": progress,
        "failReason": fail_reason,
    })
}

fn authorized(state: &State, secret: Option<String>) -> bool {
    secret.as_deref() == Some(state.secret.as_str())
}

fn empty(status: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::Response::new(Vec::<u8>::new().into()), status)
        .into_response()
}

async fn apply_mode(state: &State) -> Option<warp::reply::Response> {
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Normal => None,
        Mode::Error500 => Some(
            warp::reply::with_status(
                warp::reply::json(&json!({"timestamp": "2024-05-09T08:00:00.000+00:00", "status": 500, "error": "Internal Server Error", "path": "/mj/task/list-by-condition"})),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .into_response(),
        ),
        Mode::Garbage => Some(warp::reply::html("<html>bad gateway</html>").into_response()),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
    }
}

fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let secret = warp::header::optional::<String>("mj-api-secret");

    let submit = warp::path!("mj" / "submit" / String)
        .and(warp::post())
        .and(secret)
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(|kind: String, secret, body: Bytes, state: Arc<State>| async move {
            if !authorized(&state, secret) {
                return empty(StatusCode::UNAUTHORIZED);
            }
            state.submit_calls.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = apply_mode(&state).await {
                return reply;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return empty(StatusCode::BAD_REQUEST);
            };
            let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("").trim().to_owned();
            if kind == "imagine" && prompt.is_empty() {
                return warp::reply::json(&json!({"code": 4, "description": "prompt不能为空", "result": null, "properties": {}})).into_response();
            }
            let forced = *state.submit_code.lock().unwrap();
            if let Some(code) = forced.filter(|c| ![1, 21, 22].contains(c)) {
                return warp::reply::json(&json!({"code": code, "description": "可能包含敏感词", "result": null, "properties": {"promptEn": prompt, "bannedWord": "x"}})).into_response();
            }
            let id = state.next_id.fetch_add(1, Ordering::SeqCst).to_string();
            let outcome = if prompt.contains("fail") {
                Outcome::Failure
            } else if prompt.contains("stuck") {
                Outcome::Stuck
            } else {
                Outcome::Success
            };
            if !prompt.contains("forget") {
                state.tasks.lock().unwrap().insert(
                    id.clone(),
                    FakeTask {
                        action: kind.replace('-', "_").to_uppercase(),
                        prompt,
                        submit_time: now_ms(),
                        step: 0,
                        outcome,
                    },
                );
            }
            let code = forced.unwrap_or(1);
            let description = if code == 22 { "排队中，前面还有1个任务" } else { "提交成功" };
            warp::reply::json(&json!({"code": code, "description": description, "result": id, "properties": {"discordInstanceId": "1118138338562560102"}})).into_response()
        });

    let list = warp::path!("mj" / "task" / "list-by-condition")
        .and(warp::post())
        .and(secret)
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(|secret, body: Bytes, state: Arc<State>| async move {
            if !authorized(&state, secret) {
                return empty(StatusCode::UNAUTHORIZED);
            }
            state.list_calls.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = apply_mode(&state).await {
                return reply;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return empty(StatusCode::BAD_REQUEST);
            };
            let ids: Vec<String> = body
                .get("ids")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            state
                .listed_ids
                .fetch_add(ids.len() as u64, Ordering::SeqCst);
            let mut tasks = state.tasks.lock().unwrap();
            let mut out = Vec::new();
            for id in ids.iter().rev() {
                // Reverse order on purpose: clients must match by id.
                if let Some(task) = tasks.get_mut(id) {
                    task.step += 1;
                    out.push(task_json(id, task, state.steps_to_finish));
                }
            }
            warp::reply::json(&out).into_response()
        });

    let fetch = warp::path!("mj" / "task" / String / "fetch")
        .and(warp::get())
        .and(secret)
        .and(with_state)
        .then(|id: String, secret, state: Arc<State>| async move {
            if !authorized(&state, secret) {
                return empty(StatusCode::UNAUTHORIZED);
            }
            state.fetch_calls.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = apply_mode(&state).await {
                return reply;
            }
            let tasks = state.tasks.lock().unwrap();
            match tasks.get(&id) {
                Some(task) => {
                    warp::reply::json(&task_json(&id, task, state.steps_to_finish)).into_response()
                }
                None => empty(StatusCode::OK),
            }
        });

    submit
        .or(list)
        .unify()
        .or(fetch)
        .unify()
        .or(warp::any().map(|| empty(StatusCode::NOT_FOUND)))
        .unify()
}
