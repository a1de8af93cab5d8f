//! Bearer-token check of the state-changing endpoints. The token comes from the environment
//! (never the config file); without it those endpoints answer 403 and change nothing.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The environment variable holding the ops token.
pub const TOKEN_ENV: &str = "OBSERVERS_OPS_TOKEN";

pub(crate) fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
}

/// Equal-time comparison, so the response time does not reveal a matching prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` when the request carries `Authorization: Bearer <token>`.
#[allow(clippy::result_large_err)] // the error is the response itself
pub(crate) fn require(token: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": format!("state-changing endpoints are disabled: set {TOKEN_ENV} in the environment of `observers run`")
            })),
        )
            .into_response());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "missing or wrong bearer token (Authorization: Bearer <OBSERVERS_OPS_TOKEN>)"})),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_checks() {
        let mut h = HeaderMap::new();
        assert_eq!(
            require(None, &h).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            require(Some("s3cret"), &h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(require(Some("s3cret"), &h).is_err());
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(require(Some("s3cret"), &h).is_ok());
    }
}
