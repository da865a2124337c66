//! The midjourney-proxy compatible relay: `POST /mj/submit/*`, `GET /mj/task/{id}/fetch` and
//! `POST /mj/task/list-by-condition`.
//!
//! Callers authenticate with their access token in `mj-api-secret` or `Authorization: Bearer`.
//! Every outcome, errors included, is answered in midjourney-proxy's shapes: a `SubmitResult`
//! (`{"code", "description", "result", "properties"}`) for submits and errors, the camelCase
//! `Task` for fetches. Handlers never reject, so these routes never fall through to the
//! dashboard's envelope.
//!
//! The workflow itself is the library's ([`mj_tasks::relay::Relay`]): this module reads the
//! caller from the headers, calls it, and maps each outcome to a status code and body.

use std::convert::Infallible;

use mj_tasks::SubmitKind;
use mj_tasks::relay::{InvalidRequest, ListByConditionRequest, SubmitOutcome};
use mj_tasks::upstream::codes;
use serde_json::json;
use warp::http::{HeaderMap, StatusCode};
use warp::hyper::body::Bytes;
use warp::{Rejection, Reply};

use crate::App;
use crate::http::auth::{AuthError, authenticate};
use crate::users::{Role, User};

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
        Self::new(status, codes::GATEWAY_FAILURE, message)
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

impl From<InvalidRequest> for RelayError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::invalid(invalid.message)
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

/// The answer to a submit outcome: the upstream's `SubmitResult` for accepted and rejected
/// submits (HTTP 200, as midjourney-proxy answers every business outcome), a named error
/// otherwise.
fn submit_answer(outcome: SubmitOutcome) -> Result<warp::reply::Response, RelayError> {
    let error = match outcome {
        SubmitOutcome::Accepted { answer, .. } | SubmitOutcome::Rejected { answer } => {
            return Ok(warp::reply::json(&answer).into_response());
        }
        SubmitOutcome::Invalid(invalid) => RelayError::from(invalid),
        SubmitOutcome::OriginNotFound => RelayError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            "The origin task does not exist.",
        ),
        SubmitOutcome::InsufficientQuota { price } => RelayError::new(
            StatusCode::PAYMENT_REQUIRED,
            codes::VALIDATION_ERROR,
            format!("Insufficient quota: this action costs {price}."),
        ),
        SubmitOutcome::NoChannel => RelayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::NOT_FOUND,
            "No upstream channel is available.",
        ),
        SubmitOutcome::OriginChannelDisabled => RelayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::NOT_FOUND,
            "The origin task's channel is disabled.",
        ),
        SubmitOutcome::UpstreamTimedOut => RelayError::new(
            StatusCode::GATEWAY_TIMEOUT,
            codes::GATEWAY_FAILURE,
            "The upstream did not answer in time.",
        ),
        SubmitOutcome::UpstreamUnavailable(_) => RelayError::new(
            StatusCode::BAD_GATEWAY,
            codes::GATEWAY_FAILURE,
            "The upstream is unavailable.",
        ),
    };
    Err(error)
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
    let outcome = async {
        let user = relay_user(&app, &headers).await?;
        submit_answer(app.relay.submit(user.id, kind, &body).await?)
    };
    Ok(respond(outcome.await))
}

/// `GET /mj/task/{id}/fetch`: the caller's task from our database.
pub async fn fetch(
    id: String,
    headers: HeaderMap,
    app: App,
) -> Result<warp::reply::Response, Rejection> {
    let outcome = async {
        let user = relay_user(&app, &headers).await?;
        let task = app.relay.fetch(user.id, &id).await?.ok_or_else(|| {
            RelayError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, "Task not found.")
        })?;
        Ok(warp::reply::json(&task).into_response())
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
        let request = ListByConditionRequest::parse(&body)?;
        let ids = request.ids.unwrap_or_default();
        let items = app.relay.list_by_condition(user.id, &ids).await?;
        Ok(warp::reply::json(&items).into_response())
    };
    Ok(respond(outcome.await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_outcome_has_its_status_and_code() {
        let cases = [
            (SubmitOutcome::OriginNotFound, 404, codes::NOT_FOUND),
            (
                SubmitOutcome::InsufficientQuota { price: 5 },
                402,
                codes::VALIDATION_ERROR,
            ),
            (SubmitOutcome::NoChannel, 503, codes::NOT_FOUND),
            (SubmitOutcome::OriginChannelDisabled, 503, codes::NOT_FOUND),
            (SubmitOutcome::UpstreamTimedOut, 504, codes::GATEWAY_FAILURE),
            (
                SubmitOutcome::UpstreamUnavailable(mj_tasks::UpstreamError::Status(500)),
                502,
                codes::GATEWAY_FAILURE,
            ),
        ];
        for (outcome, status, code) in cases {
            let error = submit_answer(outcome).expect_err("a failure");
            assert_eq!((error.status.as_u16(), error.code), (status, code));
        }
    }
}
