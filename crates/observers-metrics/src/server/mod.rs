//! The ops HTTP server (axum): `/metrics`, `/health`, `/ready`, `/status`,
//! `POST /ingest/debezium` and the web console under `/ui` (see `console`). What it reports beyond the metrics comes from pluggable providers
//! (`ReadinessCheck`, `StatusSection`), so this crate knows no database: the CLI plugs in the
//! PostgreSQL checks, the HA issue a lease check and a `group` section. Other routers (search)
//! are merged with [`OpsServer::merge`] and are data endpoints (see `auth`).

mod auth;
pub mod console;
pub mod history;
mod ingest;
mod limits;
mod rate;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use observers_core::breaker::BreakerRegistry;
use observers_core::debezium::DebeziumMapping;
use observers_core::stores::changelog::ChangeLogSink;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::error::MetricsError;
use crate::families::ObserverMetrics;

pub use auth::TOKEN_ENV;
pub use console::{ConsoleSources, UI_PATH};
pub use limits::ServerLimits;

/// The default `[metrics] listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// How long one readiness check or status section may take before it counts as failed.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request body accepted (a Debezium batch).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// One condition of `/ready` (database reachable, lease held, ...). `Ok` carries details shown
/// in the response; `Err` makes the instance unready and says why.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<serde_json::Value, String>;
}

/// One section of `/status` (`database`, `group`, ...).
#[async_trait]
pub trait StatusSection: Send + Sync {
    fn name(&self) -> &str;
    async fn collect(&self) -> Result<serde_json::Value, String>;
}

/// Who this instance is, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub listener_id: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub observers: usize,
}

/// Where `POST /ingest/debezium` writes, and how it maps tables to entities.
#[derive(Clone)]
pub struct IngestTarget {
    pub sink: Arc<dyn ChangeLogSink>,
    pub mapping: DebeziumMapping,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<ObserverMetrics>,
    pub instance: InstanceInfo,
    pub checks: Vec<Arc<dyn ReadinessCheck>>,
    pub sections: Vec<Arc<dyn StatusSection>>,
    pub breakers: Option<Arc<BreakerRegistry>>,
    pub ingest: Option<IngestTarget>,
    /// The bearer token of data and state-changing endpoints; `None` disables the
    /// state-changing ones and opens the data endpoints on a loopback bind only.
    pub token: Option<String>,
    /// What the console's DLQ and jobs pages act on.
    pub console: Option<ConsoleSources>,
    /// Samples of the processed-events total, for `/status`'s events per second.
    pub(crate) rate: Arc<rate::EventRate>,
    /// The console overview's recent events per second and p99.
    pub(crate) history: Arc<history::History>,
}

impl OpsState {
    pub fn new(metrics: Arc<ObserverMetrics>, instance: InstanceInfo) -> Self {
        Self {
            metrics,
            instance,
            checks: Vec::new(),
            sections: Vec::new(),
            breakers: None,
            ingest: None,
            token: auth::token_from_env(),
            console: None,
            rate: Arc::default(),
            history: Arc::default(),
        }
    }

    #[must_use]
    pub fn with_check(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.checks.push(check);
        self
    }

    #[must_use]
    pub fn with_section(mut self, section: Arc<dyn StatusSection>) -> Self {
        self.sections.push(section);
        self
    }

    #[must_use]
    pub fn with_breakers(mut self, breakers: Arc<BreakerRegistry>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    #[must_use]
    pub fn with_ingest(mut self, target: IngestTarget) -> Self {
        self.ingest = Some(target);
        self
    }

    /// Wires the console's DLQ and jobs pages.
    #[must_use]
    pub fn with_console(mut self, sources: ConsoleSources) -> Self {
        self.console = Some(sources);
        self
    }

    /// Overrides the token read from `OBSERVERS_OPS_TOKEN` (`None` disables state-changing
    /// endpoints and keeps data endpoints to a loopback bind).
    #[must_use]
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }
}

/// The ops server's routes, open to extension.
pub struct OpsServer {
    router: Router,
    access: Arc<auth::DataAccess>,
    limits: ServerLimits,
    state: Arc<OpsState>,
}

impl OpsServer {
    pub fn new(state: OpsState) -> Self {
        let access = auth::DataAccess::new(state.token.clone());
        let state = Arc::new(state);
        let data = Router::new()
            .route("/status", get(routes::status))
            .merge(console::reads())
            .route_layer(from_fn_with_state(access.clone(), auth::data_guard));
        let router = Router::new()
            .route("/metrics", get(routes::metrics))
            .route("/health", get(routes::health))
            .route("/ready", get(routes::ready))
            .route("/ingest/debezium", post(ingest::debezium))
            .merge(data)
            .merge(console::pages())
            .merge(console::actions())
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(state.clone());
        Self {
            router,
            access,
            limits: ServerLimits::default(),
            state,
        }
    }

    /// Adds another router's routes (e.g. `observers_search::http::router(..)` for
    /// `/api/observers/search`). Paths must not collide with the ones above. They are data
    /// endpoints: the ops token when one is set, else a loopback bind.
    #[must_use]
    pub fn merge(mut self, other: Router) -> Self {
        let guarded = other.route_layer(from_fn_with_state(self.access.clone(), auth::data_guard));
        self.router = self.router.merge(guarded);
        self
    }

    /// Replaces the default [`ServerLimits`].
    #[must_use]
    pub fn with_limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The routes, for a caller that serves them itself. Data endpoints then need the token
    /// (the bind address is unknown, so it never counts as loopback).
    pub fn router(self) -> Router {
        self.router
    }

    fn bound(self, listener: TcpListener, local: SocketAddr) -> BoundOpsServer {
        let _ = self.access.bound.set(local);
        let router = self.router.layer(from_fn_with_state(
            self.limits.request_timeout,
            limits::request_deadline,
        ));
        BoundOpsServer {
            listener,
            local,
            router,
            access: self.access,
            limits: self.limits,
            state: self.state,
        }
    }

    /// Binds `addr` (`host:port`; port 0 picks a free one).
    pub async fn bind(self, addr: &str) -> Result<BoundOpsServer, MetricsError> {
        let (listener, local) = listen(addr).await?;
        Ok(self.bound(listener, local))
    }

    /// Binds [`DEFAULT_LISTEN`], or a free port on 127.0.0.1 when another process (a second
    /// instance on the same host) holds it.
    pub async fn bind_default(self) -> Result<BoundOpsServer, MetricsError> {
        match listen(DEFAULT_LISTEN).await {
            Ok((listener, local)) => Ok(self.bound(listener, local)),
            Err(e) => {
                tracing::warn!(error = %e, "the default ops address is taken; using a free port on 127.0.0.1");
                self.bind("127.0.0.1:0").await
            }
        }
    }
}

async fn listen(addr: &str) -> Result<(TcpListener, SocketAddr), MetricsError> {
    let err = |e: std::io::Error| MetricsError::Bind {
        addr: addr.to_owned(),
        message: e.to_string(),
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// A bound server, not yet serving.
pub struct BoundOpsServer {
    listener: TcpListener,
    local: SocketAddr,
    router: Router,
    access: Arc<auth::DataAccess>,
    limits: ServerLimits,
    state: Arc<OpsState>,
}

impl BoundOpsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Why the data endpoints (`/status`, search) will answer 403, when they will: no token
    /// and a bind address that is not loopback. `run` logs it at start.
    pub fn data_closed_because(&self) -> Option<String> {
        self.access.closed_because()
    }

    /// Serves until `shutdown` completes; in-flight requests finish first. Meanwhile it samples
    /// the processed-events total for `/status`'s events per second and the console's history.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsError> {
        let state = self.state;
        let sampler = async move {
            let mut ticker = tokio::time::interval(rate::EVERY);
            loop {
                ticker.tick().await;
                routes::sample(&state);
            }
        };
        tokio::select! {
            () = limits::serve(self.listener, self.router, self.limits, shutdown) => {}
            () = sampler => {}
        }
        Ok(())
    }
}
