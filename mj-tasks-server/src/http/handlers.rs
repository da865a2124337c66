//! Route handlers: each one library call and a reply.

use mj_tasks::{Audience, parse_list_query};
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::App;
use crate::http::error::{ApiError, Envelope};
use crate::users::User;

/// `GET /api/mj/self`: the caller's tasks.
pub async fn list_own_tasks(
    user: User,
    raw_query: String,
    app: App,
) -> Result<impl Reply, Rejection> {
    let (query, page) =
        parse_list_query(&raw_query, Audience::Owner(user.id)).map_err(ApiError::from)?;
    let page = app.tasks.list(&query, page).await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&Envelope::ok(page.map_ref(|task| {
        task.user_view().with_image_url(app.present_image_url(task))
    }))))
}

/// `GET /api/mj/`: every task (administrators).
pub async fn list_all_tasks(
    _admin: User,
    raw_query: String,
    app: App,
) -> Result<impl Reply, Rejection> {
    let (query, page) = parse_list_query(&raw_query, Audience::Admin).map_err(ApiError::from)?;
    let page = app.tasks.list(&query, page).await.map_err(ApiError::from)?;
    Ok(warp::reply::json(&Envelope::ok(page.map_ref(|task| {
        task.admin_view()
            .with_image_url(app.present_image_url(task))
    }))))
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise.
pub async fn health(app: App) -> Result<impl Reply, Rejection> {
    let (status, text) = match app.tasks.ping().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(error) => {
            tracing::warn!(error = ?error, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "status": text })),
        status,
    ))
}
