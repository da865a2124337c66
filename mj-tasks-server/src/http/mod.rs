//! The HTTP layer, laid out like warp's `examples/todos.rs`: [`routes`] composes one filter per
//! route, `handlers` makes one library call each, `error` renders every failure.
//!
//! Two route families answer failures in their own shape: the relay (`/mj/...` except
//! `/mj/image/...`) in midjourney-proxy's `SubmitResult`, everything else in the dashboard's
//! envelope. Each family has its own rejection handler, so a relay client never sees the
//! envelope (unknown route, wrong method, body or URI too large included).

pub mod auth;
pub mod error;
pub mod handlers;
pub mod image;
pub mod limits;
pub mod relay;

use std::convert::Infallible;

use warp::Filter;

use crate::App;
use crate::users::Role;

/// Every route, with request logging and the rejection handler installed.
pub fn routes(
    app: App,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let own_tasks = warp::path!("api" / "mj" / "self")
        .and(warp::get())
        .and(auth::authenticated(app.users.clone(), Role::User))
        .and(raw_query())
        .and(with_app(app.clone()))
        .and_then(handlers::list_own_tasks);

    // `/api/mj` and `/api/mj/` both answer directly (new-api redirects the former).
    let all_tasks = warp::path("api")
        .and(warp::path("mj"))
        .and(warp::path::end())
        .and(warp::get())
        .and(auth::authenticated(app.users.clone(), Role::Admin))
        .and(raw_query())
        .and(with_app(app.clone()))
        .and_then(handlers::list_all_tasks);

    // Signed image URLs: no token, the signature is the credential.
    let image = warp::path!("mj" / "image" / String)
        .and(warp::get().or(warp::head()).unify())
        .and(warp::method())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(with_app(app.clone()))
        .and_then(image::serve_image);

    let relay = relay_family().and(
        limits::uri_within_limit()
            .and(relay_routes(app.clone()))
            .recover(relay::handle_rejection)
            .unify(),
    );

    let health = warp::path!("healthz")
        .and(warp::get())
        .and(with_app(app))
        .and_then(handlers::health);

    let dashboard = limits::uri_within_limit()
        .and(
            own_tasks
                .map(warp::Reply::into_response)
                .or(all_tasks.map(warp::Reply::into_response))
                .unify()
                .or(health.map(warp::Reply::into_response))
                .unify()
                .or(image)
                .unify(),
        )
        .recover(error::handle_rejection)
        .unify();

    relay
        .or(dashboard)
        .unify()
        .with(warp::log::custom(log_request))
}

/// Largest relay request body (submits carry base64 images).
const RELAY_BODY_LIMIT: u64 = 32 * 1024 * 1024;

/// Largest `list-by-condition` body.
const LIST_BODY_LIMIT: u64 = 1024 * 1024;

/// Passes requests of the relay family: paths under `/mj/` other than the image proxy's.
fn relay_family() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::peek()
        .and_then(|path: warp::path::Peek| async move {
            let mut segments = path.segments();
            match (segments.next(), segments.next()) {
                (Some("mj"), second) if second != Some("image") => Ok(()),
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
}

/// The midjourney-proxy compatible routes (see [`relay`]).
fn relay_routes(app: App) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let submit = warp::path!("mj" / "submit" / String)
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(limits::body_within(RELAY_BODY_LIMIT))
        .and(with_app(app.clone()))
        .and_then(relay::submit);
    let fetch = warp::path!("mj" / "task" / String / "fetch")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_app(app.clone()))
        .and_then(relay::fetch);
    let list = warp::path!("mj" / "task" / "list-by-condition")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(limits::body_within(LIST_BODY_LIMIT))
        .and(with_app(app))
        .and_then(relay::list_by_condition);
    submit.or(fetch).unify().or(list).unify().boxed()
}

fn with_app(app: App) -> impl Filter<Extract = (App,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The raw query string, `""` when there is none (warp's own filter rejects that case).
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// One line per request; the path only, never headers (tokens) or the query.
fn log_request(info: warp::log::Info<'_>) {
    tracing::info!(
        method = %info.method(),
        path = info.path(),
        status = info.status().as_u16(),
        latency_ms = info.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}
