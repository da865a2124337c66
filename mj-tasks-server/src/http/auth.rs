//! Authentication of an access token, the same for both route families: the token (in
//! `Authorization`, bare or `Bearer`, or midjourney-proxy's `mj-api-secret`), the optional
//! `New-Api-User`, and the user's role and status read from the database on every request.
//!
//! [`authenticate`] decides; each family renders an [`AuthError`] in its own shape (the
//! dashboard's envelope, the relay's `SubmitResult`).

use std::sync::Arc;

use mj_tasks::StoreError;
use warp::Filter;
use warp::http::{HeaderMap, StatusCode};

use crate::http::error::ApiError;
use crate::users::{Role, User, UserStore, hash_token};

/// Why a request is not authenticated, or not allowed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in `Authorization` nor `mj-api-secret`.
    #[error(
        "Not logged in: send the access token in Authorization: Bearer <token> (or mj-api-secret)."
    )]
    MissingToken,
    /// No user has this token.
    #[error("The access token is invalid.")]
    InvalidToken,
    /// `New-Api-User` is not an integer.
    #[error("The New-Api-User header must be an integer user id.")]
    MalformedUserHeader,
    /// `New-Api-User` names another user than the token's.
    #[error("The New-Api-User header does not match the authenticated user.")]
    UserMismatch,
    /// The user is disabled.
    #[error("This user is disabled.")]
    Disabled,
    /// The user's role is below the route's.
    #[error("Insufficient privileges for this endpoint.")]
    InsufficientRole,
    /// The users could not be read.
    #[error("the user store failed: {0}")]
    Store(#[from] StoreError),
}

impl AuthError {
    /// The status every family answers with: 401 for credentials, 403 for permissions. Store
    /// failures are the families' own mapping (503 or 500) and answer 500 here.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken
            | Self::MalformedUserHeader
            | Self::UserMismatch => StatusCode::UNAUTHORIZED,
            Self::Disabled | Self::InsufficientRole => StatusCode::FORBIDDEN,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A dashboard filter: authenticates the request and requires at least `min_role`, rejecting
/// with the dashboard's [`ApiError`].
pub fn authenticated(
    users: Arc<dyn UserStore>,
    min_role: Role,
) -> impl Filter<Extract = (User,), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: HeaderMap| {
        let users = users.clone();
        async move {
            authenticate(&headers, users.as_ref(), min_role)
                .await
                .map_err(|error| warp::reject::custom(ApiError::from(error)))
        }
    })
}

/// The checks, in order: a token is present (401), it belongs to a user (401), `New-Api-User`
/// if sent names that user (401), the user is enabled (403), the role suffices (403).
pub async fn authenticate(
    headers: &HeaderMap,
    users: &dyn UserStore,
    min_role: Role,
) -> Result<User, AuthError> {
    let token = presented_token(headers).ok_or(AuthError::MissingToken)?;
    let user = users
        .user_by_token_hash(&hash_token(token))
        .await?
        .ok_or(AuthError::InvalidToken)?;
    if let Some(claimed) = headers.get("new-api-user") {
        let claimed: i64 = claimed
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(AuthError::MalformedUserHeader)?;
        if claimed != user.id {
            return Err(AuthError::UserMismatch);
        }
    }
    if !user.enabled {
        return Err(AuthError::Disabled);
    }
    if user.role < min_role {
        return Err(AuthError::InsufficientRole);
    }
    Ok(user)
}

/// The token from `mj-api-secret` (midjourney-proxy's header) or else `Authorization`; an
/// empty value counts as none.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
    };
    header("mj-api-secret")
        .or_else(|| header("authorization").map(strip_bearer))
        .filter(|token| !token.is_empty())
}

/// `Bearer <t>` (any case) or a bare `<t>`.
fn strip_bearer(value: &str) -> &str {
    let value = value.trim();
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_optional() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bearer  abc "), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bearer"), "Bearer");
        assert_eq!(strip_bearer("Bearer "), "Bearer");
        assert_eq!(strip_bearer("Беарер x"), "Беарер x");
    }

    #[test]
    fn either_header_carries_the_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert("authorization", " ".parse().unwrap());
        assert_eq!(presented_token(&headers), None);
        headers.insert("authorization", "Bearer t1".parse().unwrap());
        assert_eq!(presented_token(&headers), Some("t1"));
        headers.insert("mj-api-secret", "t2".parse().unwrap());
        assert_eq!(presented_token(&headers), Some("t2"));
        headers.insert("mj-api-secret", " ".parse().unwrap());
        assert_eq!(presented_token(&headers), Some("t1"));
    }
}
