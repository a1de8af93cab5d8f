//! `observers jobs list|stats|retry|purge`: inspect and manage the job queue.

use clap::Subcommand;
use observers_core::stores::jobs::{Job, JobQueue, JobStatus};
use observers_queue::PostgresJobQueue;
use serde_json::json;

use super::db::DbArgs;
use crate::output::{self, Format};
use crate::{CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// pending, processing, completed or failed (default: all).
        #[arg(long, value_parser = parse_status)]
        status: Option<JobStatus>,
        /// Most jobs to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Counts by status and the mean run time of completed jobs.
    Stats {
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

pub async fn run(cmd: JobsCommand, db: &DbArgs) -> CliResult {
    let pool = db.migrated_pool().await?;
    let q = PostgresJobQueue::new(pool.clone());
    match cmd {
        JobsCommand::List {
            status,
            limit,
            format,
        } => {
            let jobs = q.list(status, limit).await?;
            match format {
                Format::Json => output::json(&jobs)?,
                Format::Text => print_list(&jobs),
            }
        }
        JobsCommand::Stats { format } => {
            let s = q.stats().await?;
            match format {
                Format::Json => output::json(&s)?,
                Format::Text => {
                    println!(
                        "pending     {}\nprocessing  {}\ncompleted   {}\nfailed      {}",
                        s.pending, s.processing, s.completed, s.failed
                    );
                    match s.avg_run_ms {
                        Some(ms) => println!("avg run     {ms:.1} ms"),
                        None => println!("avg run     -"),
                    }
                }
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

fn print_list(jobs: &[Job]) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    println!(
        "{:>8}  {:<10} {:<8} {:<10} {:>8}  {:<25} last error",
        "id", "queue", "kind", "status", "attempts", "run at"
    );
    for j in jobs {
        let error = j.last_error.as_deref().unwrap_or("");
        let error: String = error.chars().take(60).collect();
        println!(
            "{:>8}  {:<10} {:<8} {:<10} {:>4}/{:<3}  {:<25} {error}",
            j.id,
            j.queue,
            j.kind,
            j.status.as_str(),
            j.attempts,
            j.max_attempts,
            j.run_at.format("%Y-%m-%d %H:%M:%S%.3f"),
        );
    }
}
