//! The dashboard error envelope and the one rejection handler that produces it.

use std::convert::Infallible;

use mj_tasks::{QueryError, StoreError};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reject::Reject;
use warp::{Rejection, Reply};

use crate::http::auth::AuthError;
use crate::http::limits::{BodyTooLarge, BodyUnreadable, MAX_URI_BYTES, UriTooLong};

/// `{"success": ..., "message": ..., "data": ...}`.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    /// Whether the request succeeded.
    pub success: bool,
    /// `""` on success, a sentence on failure.
    pub message: String,
    /// The payload (`null` on failure).
    pub data: Option<T>,
}

impl<T: Serialize> Envelope<T> {
    /// A success envelope around `data`.
    pub fn ok(data: T) -> Self {
        Self {
            success: true,
            message: String::new(),
            data: Some(data),
        }
    }
}

/// A handler outcome that is not a success; becomes an envelope with its status.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Client-facing message (never database or upstream text).
    pub message: String,
}

impl Reject for ApiError {}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// Maps a store failure: unreachable database → 503, anything else → 500. The database's
    /// own text goes to the log only.
    pub fn store(error: StoreError) -> Self {
        let (status, message) = store_failure(&error);
        Self::new(status, message)
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid query parameter `{}`: {}.",
                error.parameter, error.reason
            ),
        )
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Store(error) => Self::store(error),
            other => Self::new(other.status(), other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::store(error)
    }
}

/// Renders an error envelope.
pub fn error_reply(status: StatusCode, message: &str) -> warp::reply::Response {
    let body = Envelope::<()> {
        success: false,
        message: message.to_owned(),
        data: None,
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Turns every rejection of the dashboard family into the envelope with the right status.
pub async fn handle_rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = rejection_status(&rejection);
    Ok(error_reply(status, &message))
}

/// The status and client-facing sentence of a rejection, for every route family (each renders
/// them in its own shape). Anything unexpected is logged and answers 500.
pub fn rejection_status(rejection: &Rejection) -> (StatusCode, String) {
    let known = |status: StatusCode, message: &str| (status, message.to_owned());
    if let Some(error) = rejection.find::<ApiError>() {
        (error.status, error.message.clone())
    } else if rejection.find::<UriTooLong>().is_some() {
        (
            StatusCode::URI_TOO_LONG,
            format!("The request URI is longer than {MAX_URI_BYTES} bytes."),
        )
    } else if let Some(BodyTooLarge { limit }) = rejection.find::<BodyTooLarge>() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is larger than {limit} bytes."),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        known(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.")
    } else if rejection.find::<BodyUnreadable>().is_some() {
        known(
            StatusCode::BAD_REQUEST,
            "The request body could not be read.",
        )
    } else if rejection.is_not_found() {
        known(StatusCode::NOT_FOUND, "Not found.")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        known(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        known(
            StatusCode::LENGTH_REQUIRED,
            "A Content-Length header is required.",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        known(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported content type.",
        )
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        known(StatusCode::BAD_REQUEST, "Bad request.")
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        known(StatusCode::INTERNAL_SERVER_ERROR, "Internal error.")
    }
}

/// Logs a store failure and says how to answer it, for every route family: an unreachable
/// database, or one refusing writes, is a 503, anything else a 500; the database's own text goes to the log only.
pub fn store_failure(error: &StoreError) -> (StatusCode, &'static str) {
    if error.is_not_writable() {
        tracing::warn!(error = ?error, "database refuses writes");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The database does not accept writes right now (read-only or out of space); try again later.",
        )
    } else if error.is_unavailable() {
        tracing::warn!(error = ?error, "database unavailable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is unavailable; try again later.",
        )
    } else {
        tracing::error!(error = ?error, "store error");
        (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.")
    }
}
