//! The console's JSON API: the overview's history, the dead-letter queue (list, item, retry,
//! purge) and the job queue (stats, jobs, retry). Bad input is a 400 naming the parameter;
//! store failures are logged and answered with a bare 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use observers_core::stores::dlq::{DlqFilter, DlqStatus};
use observers_core::stores::jobs::JobStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::{OpsState, auth};
use super::ConsoleSources;

/// Most items a listing returns.
pub const MAX_LIMIT: usize = 1000;

/// Most items one retry request runs (the page sends the rest in further requests).
pub const MAX_RETRY_ITEMS: usize = 1000;

/// A retry request stops starting items after this long and names the ones it left, so it ends
/// well within the server's request timeout; the page sends those again.
pub const RETRY_BUDGET: Duration = Duration::from_secs(15);

fn error(code: StatusCode, message: impl Into<String>, parameter: Option<&str>) -> Response {
    (
        code,
        Json(json!({"error": message.into(), "parameter": parameter})),
    )
        .into_response()
}

fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console: {what} failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what} failed; see the server's log"),
        None,
    )
}

#[allow(clippy::result_large_err)] // the error is the response itself
fn sources(state: &OpsState) -> Result<&ConsoleSources, Response> {
    state.console.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "this ops server has no dead-letter queue or job queue wired (only `observers run` has)",
            None,
        )
    })
}

pub(crate) async fn history(State(state): State<Arc<OpsState>>) -> Json<Value> {
    Json(json!({
        "every_seconds": super::super::rate::EVERY.as_secs(),
        "points": state.history.points(),
    }))
}

/// The filter fields of a DLQ listing, retry or purge.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqParams {
    /// `pending` (default), `resolved` or `all`.
    status: Option<String>,
    observer: Option<String>,
    entity_type: Option<String>,
    action_type: Option<String>,
    limit: Option<usize>,
}

impl DlqParams {
    #[allow(clippy::result_large_err)] // the error is the response itself
    fn filter(&self) -> Result<DlqFilter, Response> {
        let some = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        let status = match self.status.as_deref().unwrap_or("pending") {
            "pending" => Some(DlqStatus::Pending),
            "resolved" => Some(DlqStatus::Resolved),
            "all" | "" => None,
            other => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("`{other}` is not a DLQ status; use pending, resolved or all"),
                    Some("status"),
                ));
            }
        };
        let limit = limit(self.limit)?;
        Ok(DlqFilter {
            observer: some(&self.observer),
            entity_type: some(&self.entity_type),
            action_type: some(&self.action_type),
            status,
            limit: Some(limit),
            ..DlqFilter::default()
        })
    }
}

/// A listing's `limit`: 100 unless given, from 1 to [`MAX_LIMIT`].
#[allow(clippy::result_large_err)] // the error is the response itself
fn limit(given: Option<usize>) -> Result<usize, Response> {
    let limit = given.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("`{limit}` is not from 1 to {MAX_LIMIT}"),
            Some("limit"),
        ));
    }
    Ok(limit)
}

fn bad_query(e: &QueryRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("bad query string: {e}"),
        None,
    )
}

pub(crate) async fn dlq_list(
    State(state): State<Arc<OpsState>>,
    params: Result<Query<DlqParams>, QueryRejection>,
) -> Response {
    let src = match sources(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return bad_query(&e),
    };
    let filter = match params.filter() {
        Ok(f) => f,
        Err(r) => return r,
    };
    let items = match src.dlq.list(&filter).await {
        Ok(i) => i,
        Err(e) => return unavailable("listing the DLQ", &e),
    };
    let pending = src.dlq.count(Some(DlqStatus::Pending)).await;
    let resolved = src.dlq.count(Some(DlqStatus::Resolved)).await;
    match (pending, resolved) {
        (Ok(pending), Ok(resolved)) => Json(json!({
            "items": items,
            "limit": filter.limit,
            "pending": pending,
            "resolved": resolved,
        }))
        .into_response(),
        (Err(e), _) | (_, Err(e)) => unavailable("counting the DLQ", &e),
    }
}

pub(crate) async fn dlq_show(
    State(state): State<Arc<OpsState>>,
    Path(id): Path<String>,
) -> Response {
    let src = match sources(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a DLQ item id"),
            Some("id"),
        );
    };
    match src.dlq.get(id).await {
        Ok(Some(item)) => Json(json!(item)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no DLQ item {id}"), None),
        Err(e) => unavailable("reading the DLQ", &e),
    }
}

/// Which items a retry or purge applies to: the ids given, or every item matching a filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    #[serde(default)]
    ids: Vec<i64>,
    #[serde(default)]
    matching: Option<DlqParams>,
}

impl Selection {
    #[allow(clippy::result_large_err)] // the error is the response itself
    fn filter(&self, max: usize) -> Result<DlqFilter, Response> {
        match (&self.matching, self.ids.is_empty()) {
            (None, false) => Ok(DlqFilter {
                ids: Some(self.ids.clone()),
                status: None,
                limit: Some(max),
                ..DlqFilter::default()
            }),
            (Some(m), true) => {
                let mut f = m.filter()?;
                f.limit = Some(max);
                Ok(f)
            }
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                "say which items: either `ids` (a list) or `matching` (a filter), not both",
                Some("ids"),
            )),
        }
    }
}

#[allow(clippy::result_large_err)] // the error is the response itself
fn selection(
    state: &OpsState,
    headers: &HeaderMap,
    body: Result<Json<Selection>, JsonRejection>,
    max: usize,
) -> Result<(ConsoleSources, DlqFilter), Response> {
    auth::require(state.token.as_deref(), headers)?;
    let src = sources(state)?.clone();
    let Json(sel) =
        body.map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad body: {e}"), None))?;
    Ok((src, sel.filter(max)?))
}

/// `POST /api/ui/token`: whether the caller's token would be accepted for retry and purge.
pub(crate) async fn token(State(state): State<Arc<OpsState>>, headers: HeaderMap) -> Response {
    match auth::require(state.token.as_deref(), &headers) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(r) => r,
    }
}

pub(crate) async fn dlq_retry(
    State(state): State<Arc<OpsState>>,
    headers: HeaderMap,
    body: Result<Json<Selection>, JsonRejection>,
) -> Response {
    let (src, mut filter) = match selection(&state, &headers, body, MAX_RETRY_ITEMS) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // Resolved items were delivered already.
    filter.status = Some(DlqStatus::Pending);
    let items = match src.dlq.list(&filter).await {
        Ok(i) => i,
        Err(e) => return unavailable("listing the DLQ", &e),
    };
    let started = Instant::now();
    let mut results = Vec::new();
    let mut left = Vec::new();
    for item in &items {
        if started.elapsed() >= RETRY_BUDGET {
            left.push(item.id);
            continue;
        }
        match src.executor.retry_dead_letter(src.dlq.as_ref(), item).await {
            Ok(outcome) => {
                tracing::info!(id = item.id, observer = %item.entry.observer, delivered = outcome.is_ok(), "console: DLQ item retried");
                results.push(json!({"id": item.id, "ok": outcome.is_ok(), "error": outcome.err()}));
            }
            Err(e) => return unavailable("recording a DLQ retry", &e),
        }
    }
    let delivered = results.iter().filter(|r| r["ok"] == true).count();
    Json(json!({
        "retried": results.len(),
        "delivered": delivered,
        "failed": results.len() - delivered,
        "items": results,
        "not_attempted": left,
    }))
    .into_response()
}

pub(crate) async fn dlq_purge(
    State(state): State<Arc<OpsState>>,
    headers: HeaderMap,
    body: Result<Json<Selection>, JsonRejection>,
) -> Response {
    let (src, mut filter) = match selection(&state, &headers, body, usize::MAX) {
        Ok(s) => s,
        Err(r) => return r,
    };
    filter.limit = None;
    match src.dlq.purge(&filter).await {
        Ok(n) => {
            tracing::info!(purged = n, "console: DLQ items purged");
            Json(json!({"purged": n})).into_response()
        }
        Err(e) => unavailable("purging the DLQ", &e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobParams {
    status: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn jobs(
    State(state): State<Arc<OpsState>>,
    params: Result<Query<JobParams>, QueryRejection>,
) -> Response {
    let src = match sources(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return bad_query(&e),
    };
    let status = match params.status.as_deref() {
        None | Some("" | "all") => None,
        Some(s) => match s.parse::<JobStatus>() {
            Ok(s) => Some(s),
            Err(e) => return error(StatusCode::BAD_REQUEST, e, Some("status")),
        },
    };
    let limit = match limit(params.limit) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let stats = match src.jobs.stats().await {
        Ok(s) => s,
        Err(e) => return unavailable("counting jobs", &e),
    };
    match src.jobs.list(status, limit).await {
        Ok(jobs) => Json(json!({"stats": stats, "jobs": jobs, "limit": limit})).into_response(),
        Err(e) => unavailable("listing jobs", &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobRetry {
    #[serde(default)]
    ids: Vec<i64>,
    #[serde(default)]
    all: bool,
}

pub(crate) async fn jobs_retry(
    State(state): State<Arc<OpsState>>,
    headers: HeaderMap,
    body: Result<Json<JobRetry>, JsonRejection>,
) -> Response {
    if let Err(r) = auth::require(state.token.as_deref(), &headers) {
        return r;
    }
    let src = match sources(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad body: {e}"), None),
    };
    let ids = match (req.all, req.ids.is_empty()) {
        (true, true) => None,
        (false, false) => Some(req.ids.as_slice()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "say which failed jobs: either `ids` (a list) or `all: true`",
                Some("ids"),
            );
        }
    };
    match src.jobs.retry_failed(ids).await {
        Ok(n) => {
            tracing::info!(retried = n, "console: failed jobs back to pending");
            Json(json!({"retried": n})).into_response()
        }
        Err(e) => unavailable("retrying jobs", &e),
    }
}
