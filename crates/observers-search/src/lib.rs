//! Search backends (PostgreSQL full-text, Elasticsearch), the event search indexer that feeds
//! them from the executor, the metered wrapper that reports them through telemetry, and the
//! `GET /api/observers/search` router.
#![forbid(unsafe_code)]

pub mod elasticsearch;
pub mod error;
pub mod http;
pub mod indexer;
pub mod metered;
pub mod postgres;

pub use elasticsearch::ElasticsearchBackend;
pub use error::SearchError;
pub use indexer::{EventSearchIndexer, IndexerConfig, IndexerStats, IndexerTask, indexed_event};
pub use metered::MeteredSearchBackend;
pub use postgres::PostgresSearchBackend;
