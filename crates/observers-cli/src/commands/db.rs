//! How commands find the database: `--database-url` (default `DATABASE_URL`) or `--config`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use observers_postgres::PgPool;

use crate::{CliResult, Exit};

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL (default: DATABASE_URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// The config file (observers, and [source] database_url for database commands).
    #[arg(long, env = "OBSERVERS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl DbArgs {
    /// The URL to use: the config's `[source] database_url`, else `--database-url`.
    pub fn url(&self) -> CliResult<String> {
        if let Some(path) = &self.config {
            let config = super::load_config(path)?;
            if let Some(url) = config.source.database_url {
                return Ok(url.expose().to_owned());
            }
        }
        self.database_url.clone().ok_or_else(|| {
            Exit::usage(anyhow::anyhow!(
                "no database given: pass --database-url URL, set DATABASE_URL, or pass --config FILE with [source] database_url"
            ))
        })
    }

    pub async fn pool(&self) -> CliResult<PgPool> {
        let url = self.url()?;
        let pool = observers_postgres::connect(&url, 4)
            .await
            .with_context(|| format!("database {}", redact(&url)))?;
        Ok(pool)
    }

    /// Connects and applies pending migrations.
    pub async fn migrated_pool(&self) -> CliResult<PgPool> {
        let pool = self.pool().await?;
        observers_postgres::migrate(&pool).await?;
        Ok(pool)
    }
}

/// A URL with its password and query values replaced, for messages.
pub fn redact(url: &str) -> String {
    observers_core::redact::url(url)
}
