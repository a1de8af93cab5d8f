//! What `[retention]` reports after each pass: the age of the oldest row each table keeps. (The
//! deletes themselves are the prune functions of each store.)

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::error::PgError;

/// The tables retention trims, named as in `[retention]` and the metrics' `table` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    ChangeLog,
    Events,
    JobsCompleted,
    DlqResolved,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::ChangeLog,
        Table::Events,
        Table::JobsCompleted,
        Table::DlqResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::ChangeLog => "change_log",
            Table::Events => "events",
            Table::JobsCompleted => "jobs_completed",
            Table::DlqResolved => "dlq_resolved",
        }
    }

    /// The age of the oldest row, read through an index (or the primary key's order).
    fn oldest_sql(self) -> &'static str {
        match self {
            Table::ChangeLog => {
                "SELECT extract(epoch FROM now() - created_at)::float8
                   FROM observer_change_log ORDER BY id LIMIT 1"
            }
            Table::Events => {
                "SELECT extract(epoch FROM now() - timestamp)::float8
                   FROM observer_events ORDER BY timestamp LIMIT 1"
            }
            Table::JobsCompleted => {
                "SELECT extract(epoch FROM now() - completed_at)::float8
                   FROM observer_jobs_completed ORDER BY id LIMIT 1"
            }
            Table::DlqResolved => {
                "SELECT extract(epoch FROM now() - created_at)::float8
                   FROM observer_dlq_items WHERE status = 'resolved' ORDER BY created_at LIMIT 1"
            }
        }
    }
}

/// The age of `table`'s oldest row; zero when it is empty.
pub async fn oldest_age(pool: &PgPool, table: Table) -> Result<Duration, PgError> {
    let secs: Option<f64> = sqlx::query_scalar(table.oldest_sql())
        .fetch_optional(pool)
        .await?;
    Ok(Duration::from_secs_f64(secs.unwrap_or(0.0).max(0.0)))
}
