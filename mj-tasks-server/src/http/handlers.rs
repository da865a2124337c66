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

/// How long `/healthz` waits for the database before it answers 503: a load balancer must
/// learn of an outage in about this time, not after the pool's acquire timeout.
const HEALTH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /healthz`: 200 `{"status":"ok"}` when the database answers and accepts writes; 503
/// otherwise, with `database` saying `"unreachable"` or `"not writable"` (read-only or full).
pub async fn health(app: App) -> Result<impl Reply, Rejection> {
    let probe = async {
        app.tasks.ping().await?;
        app.tasks.ping_write().await
    };
    let problem = match tokio::time::timeout(HEALTH_DEADLINE, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) if error.is_not_writable() => {
            tracing::warn!(error = ?error, "health check: the database refuses writes");
            Some("not writable")
        }
        Ok(Err(error)) => {
            tracing::warn!(error = ?error, "health check failed");
            Some("unreachable")
        }
        Err(_) => {
            tracing::warn!("health check: no database answer in time");
            Some("unreachable")
        }
    };
    let reply = match problem {
        None => warp::reply::with_status(
            warp::reply::json(&serde_json::json!({ "status": "ok" })),
            StatusCode::OK,
        ),
        Some(database) => warp::reply::with_status(
            warp::reply::json(
                &serde_json::json!({ "status": "unavailable", "database": database }),
            ),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    Ok(reply)
}
