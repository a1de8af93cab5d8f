//! `observers jobs list|stats|retry|purge`: inspect and manage the job queue.

use clap::Subcommand;
use observers_core::stores::jobs::{Job, JobQueue, JobStats, JobStatus};
use observers_queue::{PostgresJobQueue, QueueStats};
use serde_json::json;

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first, with their queue and priority.
    List {
        /// pending, processing, completed or failed (default: all).
        #[arg(long, value_parser = parse_status)]
        status: Option<JobStatus>,
        /// Only jobs of this queue (the `queue` of a queued action; `default` when unset).
        #[arg(long, value_parser = parse_queue)]
        queue: Option<String>,
        /// Most jobs to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Counts by status and the mean run time of completed jobs: the totals, then each queue
    /// (with how long its oldest due job has waited).
    Stats {
        /// Only this queue (the totals are then its own).
        #[arg(long, value_parser = parse_queue)]
        queue: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Put failed jobs back to pending (attempts reset).
    Retry {
        /// Every failed job.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only this job (repeatable).
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete every job with a status (completed, failed or pending).
    Purge {
        #[arg(long, value_parser = parse_status)]
        status: JobStatus,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn parse_status(s: &str) -> Result<JobStatus, String> {
    s.parse()
}

fn parse_queue(s: &str) -> Result<String, String> {
    observers_core::config::check_queue_name(s).map(|()| s.to_owned())
}

pub async fn run(cmd: JobsCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let q = PostgresJobQueue::new(pool.clone());
    match cmd {
        JobsCommand::List {
            status,
            queue,
            limit,
            format,
        } => {
            let jobs = observers_queue::list_jobs(&pool, queue.as_deref(), status, limit).await?;
            match format {
                Format::Json => output::json(&jobs)?,
                Format::Text => print_list(&jobs),
            }
        }
        JobsCommand::Stats { queue, format } => {
            let queues = observers_queue::queue_stats(&pool, queue.as_deref()).await?;
            let total = QueueStats::total(&queues);
            match format {
                Format::Json => {
                    let mut body = serde_json::to_value(total)?;
                    body["queues"] = serde_json::to_value(&queues)?;
                    output::json(&body)?;
                }
                Format::Text => print_stats(&total, &queues),
            }
        }
        JobsCommand::Retry { all, ids, format } => {
            if !all && ids.is_empty() {
                return Err(Exit::usage(anyhow::anyhow!(
                    "say which failed jobs to retry: --all or --id N"
                )));
            }
            let n = q.retry_failed(if all { None } else { Some(&ids) }).await?;
            match format {
                Format::Json => output::json(&json!({ "retried": n }))?,
                Format::Text => println!("{n} failed job(s) back to pending"),
            }
        }
        JobsCommand::Purge { status, format } => {
            if status == JobStatus::Processing {
                return Err(Exit::usage(anyhow::anyhow!(
                    "--status processing cannot be purged: workers hold those jobs"
                )));
            }
            let n = q.purge(status).await?;
            match format {
                Format::Json => output::json(&json!({ "purged": n, "status": status }))?,
                Format::Text => println!("purged {n} {status} job(s)"),
            }
        }
    }
    pool.close().await;
    Ok(())
}

fn print_stats(total: &JobStats, queues: &[QueueStats]) {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
    println!(
        "pending     {}\nprocessing  {}\ncompleted   {}\nfailed      {}\navg run     {}",
        total.pending,
        total.processing,
        total.completed,
        total.failed,
        ms(total.avg_run_ms)
    );
    if queues.is_empty() {
        return;
    }
    println!(
        "\n{:<20} {:>9} {:>10} {:>10} {:>8} {:>12} {:>12}",
        "queue", "pending", "processing", "completed", "failed", "avg run", "oldest due"
    );
    for q in queues {
        let age = q
            .oldest_pending_age_seconds
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"));
        println!(
            "{:<20} {:>9} {:>10} {:>10} {:>8} {:>12} {:>12}",
            q.queue,
            q.pending,
            q.processing,
            q.completed,
            q.failed,
            ms(q.avg_run_ms),
            age
        );
    }
}

fn print_list(jobs: &[Job]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    println!(
        "{:>8}  {:<16} {:>5} {:<8} {:<10} {:>8}  {:<25} last error",
        "id", "queue", "prio", "kind", "status", "attempts", "run at"
    );
    for j in jobs {
        let error = j.last_error.as_deref().unwrap_or("");
        let error: String = error.chars().take(60).collect();
        println!(
            "{:>8}  {:<16} {:>5} {:<8} {:<10} {:>4}/{:<3}  {:<25} {error}",
            j.id,
            j.queue,
            j.priority,
            j.kind,
            j.status.as_str(),
            j.attempts,
            j.max_attempts,
            j.run_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        );
    }
}
