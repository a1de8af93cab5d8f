//! Prometheus metrics fed by core telemetry (`ObserverMetrics`, the only place that knows
//! prometheus-client), the ops HTTP server (`/metrics`, `/health`, `/ready`, `/status`,
//! `POST /ingest/debezium`, the `/ui` console), and a reader of the exposition for `observers metrics`.
#![forbid(unsafe_code)]

pub mod error;
pub mod families;
mod handles;
pub mod scrape;
pub mod server;
pub mod sharded;
pub mod telemetry;

pub use error::MetricsError;
pub use families::{JobOutcome, ObserverMetrics};
pub use handles::OVERFLOW;
pub use scrape::{MetricsSummary, Scrape};
pub use server::{
    BoundOpsServer, ConsoleSources, DEFAULT_LISTEN, IngestTarget, InstanceInfo, OpsServer,
    OpsState, ReadinessCheck, ServerLimits, StatusSection, TOKEN_ENV,
};
