//! The read-only endpoints: `/metrics`, `/health`, `/ready`, `/status`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use serde_json::{Map, Value, json};

use super::{OpsState, PROVIDER_TIMEOUT};
use crate::scrape::{MetricsSummary, Scrape};

/// The OpenMetrics content type Prometheus negotiates.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn metrics(State(state): State<Arc<OpsState>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        state.metrics.encode(),
    )
        .into_response()
}

/// Liveness: the process serves requests.
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn bounded<F>(fut: F) -> Result<Value, String>
where
    F: std::future::Future<Output = Result<Value, String>>,
{
    match tokio::time::timeout(PROVIDER_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {PROVIDER_TIMEOUT:?}")),
    }
}

/// Readiness: every check passes (database reachable, lease state...). 503 otherwise.
pub(crate) async fn ready(State(state): State<Arc<OpsState>>) -> Response {
    let results = join_all(
        state
            .checks
            .iter()
            .map(|c| async move { (c.name().to_owned(), bounded(c.check()).await) }),
    )
    .await;
    let mut ready = true;
    let mut checks = Map::new();
    for (name, r) in results {
        let v = match r {
            Ok(detail) => json!({"ok": true, "detail": detail}),
            Err(error) => {
                ready = false;
                json!({"ok": false, "error": error})
            }
        };
        checks.insert(name, v);
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

fn uptime_seconds(state: &OpsState) -> f64 {
    let uptime = (chrono::Utc::now() - state.instance.started_at)
        .num_milliseconds()
        .max(0);
    #[allow(clippy::cast_precision_loss)] // milliseconds of uptime fit an f64 exactly
    let seconds = uptime as f64 / 1000.0;
    seconds
}

/// Events per second over the last minute (since start while the instance is younger than a
/// second of samples), sampling the total as a side effect.
pub(crate) fn events_per_second(state: &OpsState) -> f64 {
    let total = Scrape::parse(&state.metrics.encode())
        .map(|s| s.sum("observer_events_processed_total", &[]))
        .unwrap_or_default();
    state
        .rate
        .sample(std::time::Instant::now(), total)
        .unwrap_or_else(|| {
            let up = uptime_seconds(state);
            if up > 0.0 { total / up } else { 0.0 }
        })
}

/// The server's periodic sample: the events-per-second window and the console's history.
pub(crate) fn sample(state: &OpsState) {
    let Ok(scrape) = Scrape::parse(&state.metrics.encode()) else {
        return;
    };
    let now = std::time::Instant::now();
    let total = scrape.sum("observer_events_processed_total", &[]);
    let _ = state.rate.sample(now, total);
    state.history.record(now, chrono::Utc::now(), &scrape);
}

/// The instance's state as JSON: identity, a metrics summary, events per second, breakers,
/// and every section.
pub(crate) async fn status(State(state): State<Arc<OpsState>>) -> Json<Value> {
    let summary = Scrape::parse(&state.metrics.encode())
        .map(|s| MetricsSummary::from_scrape(&s))
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert("instance".into(), json!(state.instance));
    out.insert("uptime_seconds".into(), json!(uptime_seconds(&state)));
    out.insert("events_per_second".into(), json!(events_per_second(&state)));
    out.insert("metrics".into(), json!(summary));
    if let Some(b) = &state.breakers {
        out.insert("breakers".into(), json!(b.snapshot_all()));
    }
    out.insert(
        "ingest".into(),
        json!({
            "debezium": state.ingest.is_some(),
            "token_configured": state.token.is_some(),
        }),
    );
    let sections = join_all(
        state
            .sections
            .iter()
            .map(|s| async move { (s.name().to_owned(), bounded(s.collect()).await) }),
    )
    .await;
    for (name, r) in sections {
        out.insert(name, r.unwrap_or_else(|error| json!({"error": error})));
    }
    Json(Value::Object(out))
}
