//! `POST /ingest/debezium`: Debezium change events into the change log, in one transaction.
//! Bearer token required. A malformed event rejects the request with 400 naming the event and
//! the problem, and nothing is written; a store failure answers 503 (Debezium Server retries).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use observers_core::debezium;
use serde_json::json;

use super::{OpsState, auth};

pub(crate) async fn debezium(
    State(state): State<Arc<OpsState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = auth::require(state.token.as_deref(), &headers) {
        return resp;
    }
    let Some(target) = &state.ingest else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Debezium ingest is disabled ([metrics.debezium] enabled = false)"})),
        )
            .into_response();
    };
    let parsed = match debezium::parse(&body, &target.mapping) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Debezium ingest refused a malformed request");
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string(), "event": e.index})),
            )
                .into_response();
        }
    };
    if parsed.changes.is_empty() {
        return (
            StatusCode::OK,
            Json(json!({"written": 0, "skipped": parsed.skipped, "ids": []})),
        )
            .into_response();
    }
    match target.sink.append(&parsed.changes).await {
        Ok(ids) => {
            tracing::debug!(
                written = ids.len(),
                skipped = parsed.skipped,
                "Debezium events ingested"
            );
            (
                StatusCode::OK,
                Json(json!({"written": ids.len(), "skipped": parsed.skipped, "ids": ids})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "Debezium ingest could not write to the change log");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "the change log could not be written; retry later"})),
            )
                .into_response()
        }
    }
}
