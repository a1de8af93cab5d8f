//! Search: `observers search`, `observers events prune`, and the search wiring of
//! `observers run` (the indexer attached to the executor, and the router of
//! `GET /api/observers/search` that the ops server serves).

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use observers_core::EventKind;
use observers_core::config::{Config, SearchBackendKind};
use observers_core::executor::ExecutorBuilder;
use observers_core::stores::search::{MAX_PER_PAGE, SearchBackend, SearchQuery};
use observers_core::telemetry::SharedTelemetry;
use observers_postgres::PgPool;
use observers_search::{
    ElasticsearchBackend, EventSearchIndexer, IndexerConfig, IndexerTask, MeteredSearchBackend,
    PostgresSearchBackend,
};

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::{CliResult, Exit};

/// `observers search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Words that must all occur (each matches a word prefix, case-insensitively).
    #[arg(long)]
    text: Option<String>,
    /// Entity type, e.g. `Order`.
    #[arg(long)]
    entity_type: Option<String>,
    #[arg(long)]
    entity_id: Option<String>,
    /// insert, update or delete.
    #[arg(long)]
    event_type: Option<EventKind>,
    #[arg(long)]
    tenant: Option<String>,
    /// Events at or after: an RFC 3339 time, or a duration ago (`2h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Events strictly before: an RFC 3339 time, or a duration ago.
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    page: u32,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_PER_PAGE)))]
    per_page: u32,
    /// Also count matches by entity type and event type.
    #[arg(long)]
    facets: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// `observers events ...`: the audit trail of processed events.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Delete indexed events older than a duration (retention).
    Prune {
        /// e.g. `30d`, `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("`{s}` is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration (2h, 7d)")
    })?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| format!("`{s}`: {e}"))?;
    Ok(Utc::now() - ago)
}

/// The label of a backend in telemetry and status.
pub fn backend_name(kind: SearchBackendKind) -> &'static str {
    match kind {
        SearchBackendKind::None => "none",
        SearchBackendKind::Postgres => "postgres",
        SearchBackendKind::Elasticsearch => "elasticsearch",
    }
}

/// The configured backend; `None` when `[search] backend = "none"`.
pub fn backend(config: &Config, pool: &PgPool) -> CliResult<Option<Arc<dyn SearchBackend>>> {
    Ok(match config.search.backend {
        SearchBackendKind::None => None,
        SearchBackendKind::Postgres => Some(Arc::new(PostgresSearchBackend::new(pool.clone()))),
        SearchBackendKind::Elasticsearch => Some(Arc::new(elasticsearch(config)?)),
    })
}

fn elasticsearch(config: &Config) -> CliResult<ElasticsearchBackend> {
    let url = config.search.url.as_ref().ok_or_else(|| {
        Exit::usage(anyhow::anyhow!(
            "[search] backend = \"elasticsearch\" needs url = \"http://host:9200\""
        ))
    })?;
    let index = config
        .search
        .index
        .as_deref()
        .unwrap_or(observers_search::elasticsearch::DEFAULT_INDEX);
    ElasticsearchBackend::new(url.expose(), index).map_err(Exit::usage)
}

/// The backend the ops commands use: `[search]` of `--config` when given, else PostgreSQL.
async fn command_backend(db: &DbArgs) -> CliResult<Arc<dyn SearchBackend>> {
    if let Some(path) = &db.config {
        let config = super::load_config(path)?;
        if config.search.backend == SearchBackendKind::Elasticsearch {
            return Ok(Arc::new(elasticsearch(&config)?));
        }
        if config.search.backend == SearchBackendKind::None {
            return Err(Exit::usage(anyhow::anyhow!(
                "search is disabled in {}: set [search] backend = \"postgres\" or \"elasticsearch\"",
                path.display()
            )));
        }
    }
    let pool = db.migrated_pool().await?;
    Ok(Arc::new(PostgresSearchBackend::new(pool)))
}

pub async fn search(args: SearchArgs, db: &DbArgs) -> CliResult {
    let backend = command_backend(db).await?;
    let mut q = SearchQuery::new()
        .with_page(args.page)
        .with_per_page(args.per_page);
    q.text = args.text;
    q.entity_type = args.entity_type;
    q.entity_id = args.entity_id;
    q.event_type = args.event_type;
    q.tenant_id = args.tenant;
    q.from = args.since;
    q.to = args.until;
    q.facets = args.facets;
    let r = backend.search(&q).await.context("search failed")?;
    match args.format {
        Format::Json => output::json(&r)?,
        Format::Text => {
            for e in &r.results {
                let outcome = if e.failed_actions.is_empty() {
                    format!("{} ok", e.successful_actions.len())
                } else {
                    format!(
                        "{} ok, {} failed",
                        e.successful_actions.len(),
                        e.failed_actions.len()
                    )
                };
                println!(
                    "{}  #{}  {} {} {}  observers: [{}]  actions: {outcome}",
                    e.timestamp.to_rfc3339(),
                    e.event_id,
                    e.entity_type,
                    e.entity_id,
                    e.event_type,
                    e.matched_observers.join(", "),
                );
            }
            let shown = r.results.len();
            let bound = if r.total_exact { "" } else { "at least " };
            println!(
                "{shown} shown of {bound}{} matching (page {})",
                r.total, q.page
            );
            if let Some(f) = &r.facets {
                for (name, counts) in [
                    ("entity types", &f.entity_types),
                    ("event types", &f.event_types),
                ] {
                    let parts: Vec<String> =
                        counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    println!("{name}: {}", parts.join(" "));
                }
            }
        }
    }
    Ok(())
}

pub async fn events(cmd: EventsCommand, db: &DbArgs) -> CliResult {
    match cmd {
        EventsCommand::Prune { older_than, format } => {
            let backend = command_backend(db).await?;
            let ago = chrono::Duration::from_std(older_than)
                .map_err(|e| Exit::usage(anyhow::anyhow!("--older-than: {e}")))?;
            let cutoff = Utc::now() - ago;
            let mut progress = Progress::new("events prune", "events", None);
            let deleted = backend
                .delete_older_than_reporting(cutoff, &mut |n| progress.add(n))
                .await?;
            progress.finish();
            match format {
                Format::Json => {
                    output::json(&serde_json::json!({"deleted": deleted, "cutoff": cutoff}))?;
                }
                Format::Text => println!("deleted {deleted} indexed events older than {cutoff}"),
            }
        }
    }
    Ok(())
}

/// Search inside `observers run`: the indexer and the HTTP API's backend.
#[derive(Default)]
pub struct SearchRuntime {
    indexer: Option<(Arc<EventSearchIndexer>, IndexerTask)>,
    backend: Option<Arc<dyn SearchBackend>>,
    name: &'static str,
}

impl SearchRuntime {
    /// Starts what `[search]` asks for (nothing for `backend = "none"`); every indexing request
    /// and query is reported through `telemetry`.
    pub async fn start(
        config: &Config,
        pool: &PgPool,
        telemetry: &SharedTelemetry,
    ) -> CliResult<Self> {
        let Some(backend) = backend(config, pool)? else {
            return Ok(Self::default());
        };
        let backend: Arc<dyn SearchBackend> = Arc::new(MeteredSearchBackend::new(
            backend,
            backend_name(config.search.backend),
            telemetry.clone(),
        ));
        if config.search.backend == SearchBackendKind::Elasticsearch
            && let Err(e) = elasticsearch(config)?.ensure_index().await
        {
            tracing::warn!(error = %e, "cannot create the Elasticsearch index template yet; indexing will retry writes");
        }
        if let Err(e) = backend.health().await {
            tracing::warn!(error = %e, "search backend is not healthy yet; events are buffered and retried");
        }
        let (indexer, task) = EventSearchIndexer::start(
            backend.clone(),
            IndexerConfig {
                capacity: config.search.buffer,
                batch_size: config.search.batch_size,
                flush_interval: config.search.flush_interval,
                ..IndexerConfig::default()
            },
        );
        tracing::info!(backend = ?config.search.backend, "search indexing on");
        Ok(Self {
            indexer: Some((indexer, task)),
            backend: Some(backend),
            name: backend_name(config.search.backend),
        })
    }

    /// Hands every processed event to the indexer.
    pub fn attach(&self, builder: ExecutorBuilder) -> ExecutorBuilder {
        match &self.indexer {
            Some((indexer, _)) => builder.summaries(indexer.clone()),
            None => builder,
        }
    }

    /// The backend's name and the indexer, for `/status` (none when search is off).
    pub fn indexer(&self) -> Option<(&'static str, Arc<EventSearchIndexer>)> {
        self.indexer.as_ref().map(|(i, _)| (self.name, i.clone()))
    }

    /// `GET /api/observers/search`, for the ops server (none when search is off).
    pub fn routes(&self) -> Option<axum::Router> {
        self.backend
            .as_ref()
            .map(|b| observers_search::http::router(b.clone()))
    }

    /// Writes what is buffered.
    pub async fn shutdown(self) {
        if let Some((indexer, task)) = self.indexer {
            task.shutdown().await;
            let s = indexer.stats();
            tracing::info!(
                indexed = s.indexed,
                dropped = s.dropped,
                failed = s.failed,
                "search indexer stopped"
            );
        }
    }
}
