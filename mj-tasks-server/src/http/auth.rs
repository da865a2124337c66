//! Dashboard authentication: access token (bare or `Bearer`), optional `New-Api-User`, and the
//! user's role and status read from the database on every request.

use std::sync::Arc;

use warp::Filter;
use warp::http::HeaderMap;

use crate::http::error::ApiError;
use crate::users::{Role, User, UserStore, hash_token};

/// Authenticates the request and requires at least `min_role`.
pub fn authenticated(
    users: Arc<dyn UserStore>,
    min_role: Role,
) -> impl Filter<Extract = (User,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: HeaderMap| {
        let users = users.clone();
        async move {
            authenticate(&headers, users.as_ref(), min_role)
                .await
                .map_err(warp::reject::custom)
        }
    })
}

/// The checks, in order: a token is present (401), it belongs to a user (401), `New-Api-User`
/// if sent names that user (401), the user is enabled (403), the role suffices (403).
pub async fn authenticate(
    headers: &HeaderMap,
    users: &dyn UserStore,
    min_role: Role,
) -> Result<User, ApiError> {
    let token = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(strip_bearer)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Not logged in: no access token was provided."))?;
    let user = users
        .user_by_token_hash(&hash_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("The access token is invalid."))?;
    if let Some(claimed) = headers.get("new-api-user") {
        let claimed: i64 = claimed
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::unauthorized("The New-Api-User header must be an integer user id.")
            })?;
        if claimed != user.id {
            return Err(ApiError::unauthorized(
                "The New-Api-User header does not match the authenticated user.",
            ));
        }
    }
    if !user.enabled {
        return Err(ApiError::forbidden("This user is disabled."));
    }
    if user.role < min_role {
        return Err(ApiError::forbidden(
            "Insufficient privileges for this endpoint.",
        ));
    }
    Ok(user)
}

/// `Bearer <t>` (any case) or a bare `<t>`.
pub(crate) fn strip_bearer(value: &str) -> &str {
    let value = value.trim();
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_bearer;

    #[test]
    fn bearer_is_optional() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bearer  abc "), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bearer"), "Bearer");
        assert_eq!(strip_bearer("Bearer "), "Bearer");
        assert_eq!(strip_bearer("Беарер x"), "Беарер x");
    }
}
