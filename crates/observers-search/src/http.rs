//! `GET /api/observers/search`: the search API of the ops HTTP server.
//!
//! Query parameters mirror [`SearchQuery`]: `text`, `entity_type`, `entity_id`, `event_type`
//! (`insert|update|delete`), `tenant` (or `tenant_id`), `since` / `until` (RFC 3339; `since`
//! inclusive, `until` exclusive), `page` (1-based), `per_page` (0 to 1000) and `facets`
//! (`true` by default). `page × per_page` may not exceed [`MAX_RESULT_WINDOW`]: a deeper page
//! would make the backend read and skip every match before it. The reply is `{"total": N, "total_exact": bool, "results": [...],
//! "facets": {...}|null}`.
//! A bad or unknown parameter is a 400 naming it: `{"error": "...", "parameter": "..."}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use observers_core::EventKind;
use observers_core::stores::search::{MAX_PER_PAGE, SearchBackend, SearchQuery};
use serde_json::json;

/// The path the router serves.
pub const SEARCH_PATH: &str = "/api/observers/search";

/// The deepest match a page may reach (`page × per_page`), as Elasticsearch's default
/// `index.max_result_window`.
pub const MAX_RESULT_WINDOW: u64 = 10_000;

/// A query parameter that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub parameter: String,
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parameter `{}`: {}", self.parameter, self.message)
    }
}

fn bad(parameter: &str, message: impl Into<String>) -> ParamError {
    ParamError {
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

fn time(name: &str, v: &str) -> Result<DateTime<Utc>, ParamError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            bad(
                name,
                format!("`{v}` is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z): {e}"),
            )
        })
}

fn number(name: &str, v: &str, max: u32) -> Result<u32, ParamError> {
    match v.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(bad(
            name,
            format!("`{v}` is not a whole number from 0 to {max}"),
        )),
    }
}

/// Builds a query from `name=value` pairs (already percent-decoded). Facets are on unless
/// `facets=false`.
pub fn query_from_params<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<SearchQuery, ParamError> {
    let mut q = SearchQuery::new().with_facets();
    for (name, v) in pairs {
        let some = || (!v.is_empty()).then(|| v.to_owned());
        match name {
            "text" | "q" => q.text = some(),
            "entity_type" => q.entity_type = some(),
            "entity_id" => q.entity_id = some(),
            "tenant" | "tenant_id" => q.tenant_id = some(),
            "event_type" => {
                q.event_type = if v.is_empty() {
                    None
                } else {
                    Some(v.parse::<EventKind>().map_err(|e| bad(name, e))?)
                }
            }
            "since" | "from" => q.from = Some(time(name, v)?),
            "until" | "to" => q.to = Some(time(name, v)?),
            "page" => match number(name, v, u32::MAX)? {
                0 => return Err(bad(name, "pages start at 1")),
                n => q.page = n,
            },
            "per_page" => q.per_page = number(name, v, MAX_PER_PAGE)?,
            "facets" => {
                q.facets = match v {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(name, format!("`{v}` is not true or false"))),
                }
            }
            other => {
                return Err(bad(
                    other,
                    "unknown parameter; expected text, entity_type, entity_id, event_type, tenant, since, until, page, per_page, facets",
                ));
            }
        }
    }
    let per_page = u64::from(q.effective_per_page());
    if per_page > 0 && u64::from(q.page) * per_page > MAX_RESULT_WINDOW {
        return Err(bad(
            "page",
            format!(
                "page {} of {per_page} reaches past match {MAX_RESULT_WINDOW}, the deepest a page may go; narrow the query (since, until, entity_type, ...)",
                q.page
            ),
        ));
    }
    Ok(q)
}

/// The search API over `backend`, to merge into the ops server.
pub fn router(backend: Arc<dyn SearchBackend>) -> axum::Router {
    axum::Router::new()
        .route(SEARCH_PATH, get(search))
        .with_state(backend)
}

async fn search(
    State(backend): State<Arc<dyn SearchBackend>>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let pairs = match pairs {
        Ok(Query(p)) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("bad query string: {e}"), "parameter": null})),
            )
                .into_response();
        }
    };
    let q = match query_from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string(), "parameter": e.parameter})),
            )
                .into_response();
        }
    };
    match backend.search(&q).await {
        Ok(r) => Json(
            json!({"total": r.total, "total_exact": r.total_exact, "results": r.results, "facets": r.facets}),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "search failed");
            let status = if e.is_transient() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (status, Json(json!({"error": e.to_string()}))).into_response()
        }
    }
}
