//! Who may call what. The token comes from the environment (never the config file).
//!
//! - Open: `/metrics`, `/health`, `/ready` (no row data, no error texts).
//! - The console's shell and assets (`/ui/...`): open; they hold no data.
//! - Data endpoints (`/status`, every merged router such as `/api/observers/search`, the
//!   console's reads under `/api/ui/`): with a token set, `Authorization: Bearer <token>` or 401; without a token they
//!   answer only while the server is bound to a loopback address, else 403.
//! - State-changing endpoints (`POST /ingest/debezium`, the console's retry and purge): always the token; without one, 403.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The environment variable holding the ops token.
pub const TOKEN_ENV: &str = "OBSERVERS_OPS_TOKEN";

pub(crate) fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
}

/// Equal-time comparison: the time taken depends only on the length of `given` (the caller's
/// input), never on how much of it matches the token or on the token's length.
fn same(given: &[u8], token: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != token.len());
    for (i, g) in given.iter().enumerate() {
        diff |= g ^ token.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn forbidden(message: &str) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({ "error": message }))).into_response()
}

#[allow(clippy::result_large_err)] // the error is the response itself
fn bearer(token: &str, headers: &HeaderMap) -> Result<(), Response> {
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

/// `Ok` when a state-changing request carries `Authorization: Bearer <token>`.
#[allow(clippy::result_large_err)] // the error is the response itself
pub(crate) fn require(token: Option<&str>, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(forbidden(&format!(
            "state-changing endpoints are disabled: set {TOKEN_ENV} in the environment of `observers run`"
        )));
    };
    bearer(token, headers)
}

/// The access rule of the data endpoints, shared by every route that serves row data or error
/// texts. The bound address is set once the server binds; until then (a router served by the
/// caller) it counts as not loopback, so the data stays closed without a token.
#[derive(Debug, Default)]
pub(crate) struct DataAccess {
    pub(crate) token: Option<String>,
    pub(crate) bound: OnceLock<SocketAddr>,
}

impl DataAccess {
    pub(crate) fn new(token: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            token,
            bound: OnceLock::new(),
        })
    }

    /// Why the data endpoints answer 403, or `None` when they can answer.
    pub(crate) fn closed_because(&self) -> Option<String> {
        if self.token.is_some() {
            return None;
        }
        match self.bound.get() {
            Some(addr) if addr.ip().is_loopback() => None,
            Some(addr) => Some(format!(
                "the ops server listens on {addr}, which is not a loopback address, and {TOKEN_ENV} is not set: /status and the data endpoints (/api/observers/search) answer 403; set {TOKEN_ENV} or bind 127.0.0.1"
            )),
            None => Some(format!(
                "the ops server's address is unknown and {TOKEN_ENV} is not set: the data endpoints answer 403"
            )),
        }
    }

    #[allow(clippy::result_large_err)] // the error is the response itself
    fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        match &self.token {
            Some(token) => bearer(token, headers),
            None => match self.closed_because() {
                None => Ok(()),
                Some(why) => Err(forbidden(&why)),
            },
        }
    }
}

/// Middleware guarding a data endpoint.
pub(crate) async fn data_guard(
    State(access): State<Arc<DataAccess>>,
    req: Request,
    next: Next,
) -> Response {
    match access.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(resp) => resp,
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
        for wrong in ["s3cre", "s3crett", "", "S3cret", "s3cret\0"] {
            assert!(!same(wrong.as_bytes(), b"s3cret"), "{wrong:?}");
        }
        assert!(same(b"s3cret", b"s3cret"));
    }

    #[test]
    fn data_access_follows_token_and_bind() {
        let h = HeaderMap::new();
        let open = DataAccess::new(None);
        open.bound.set("127.0.0.1:9464".parse().unwrap()).unwrap();
        assert!(open.check(&h).is_ok());
        let v6 = DataAccess::new(None);
        v6.bound.set("[::1]:9464".parse().unwrap()).unwrap();
        assert!(v6.check(&h).is_ok());
        let wide = DataAccess::new(None);
        wide.bound.set("0.0.0.0:9464".parse().unwrap()).unwrap();
        assert_eq!(wide.check(&h).unwrap_err().status(), StatusCode::FORBIDDEN);
        assert!(wide.closed_because().unwrap().contains("0.0.0.0:9464"));
        let unbound = DataAccess::new(None);
        assert!(unbound.check(&h).is_err());
        let token = DataAccess::new(Some("t".into()));
        token.bound.set("127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(
            token.check(&h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
