//! The web console under `/ui`: one HTML shell for every page (`/ui/`, `/ui/events`,
//! `/ui/dlq`, `/ui/jobs` and their detail paths, so deep links survive a reload), its script and
//! style sheet, all compiled into the binary, and the small JSON API the pages poll
//! (`/api/ui/...`).
//!
//! Access follows the ops server's rules: the shell and assets hold no data and are open; the
//! API's reads are data endpoints (the token when set, else a loopback bind); retry, purge and
//! the token check are state-changing and always need the token.

mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use observers_core::ObserverExecutor;
use observers_core::stores::dlq::DeadLetterQueue;
use observers_core::stores::jobs::JobQueue;

use super::OpsState;

/// The console's path prefix.
pub const UI_PATH: &str = "/ui";

/// What the console's DLQ and jobs pages act on. Without it (a library user's server) those
/// pages say so and the rest of the console works.
#[derive(Clone)]
pub struct ConsoleSources {
    pub dlq: Arc<dyn DeadLetterQueue>,
    pub jobs: Arc<dyn JobQueue>,
    /// Runs a dead-lettered action again (the running configuration's observers).
    pub executor: Arc<ObserverExecutor>,
}

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const PAGES: &str = include_str!("assets/pages.js");
const QUEUES: &str = include_str!("assets/queues.js");
const STYLE: &str = include_str!("assets/console.css");
const ICON: &str = include_str!("assets/icon.svg");

/// Nothing outside the binary: scripts, styles, images and requests stay on this origin.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn shell() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "console.js" => asset("text/javascript; charset=utf-8", SCRIPT),
        "pages.js" => asset("text/javascript; charset=utf-8", PAGES),
        "queues.js" => asset("text/javascript; charset=utf-8", QUEUES),
        "console.css" => asset("text/css; charset=utf-8", STYLE),
        "icon.svg" => asset("image/svg+xml", ICON),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The open routes: the shell at every page path, and the assets.
pub(crate) fn pages() -> Router<Arc<OpsState>> {
    Router::new()
        .route(UI_PATH, get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(shell))
        .route("/ui/assets/{name}", get(file))
        .route("/ui/{*page}", get(shell))
}

/// The API's reads (data endpoints; the caller adds the data guard).
pub(crate) fn reads() -> Router<Arc<OpsState>> {
    Router::new()
        .route("/api/ui/history", get(api::history))
        .route("/api/ui/dlq", get(api::dlq_list))
        .route("/api/ui/dlq/{id}", get(api::dlq_show))
        .route("/api/ui/jobs", get(api::jobs))
}

/// The API's state-changing routes; each handler checks the token itself.
pub(crate) fn actions() -> Router<Arc<OpsState>> {
    Router::new()
        .route("/api/ui/token", post(api::token))
        .route("/api/ui/dlq/retry", post(api::dlq_retry))
        .route("/api/ui/dlq/purge", post(api::dlq_purge))
        .route("/api/ui/jobs/retry", post(api::jobs_retry))
}
