//! `observers metrics`: scrapes a running instance's `/metrics` and summarises it (events,
//! latency quantiles, actions by outcome, DLQ, breakers, lag); `--raw` prints the exposition.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use observers_metrics::{DEFAULT_LISTEN, MetricsSummary, Scrape};

use super::status::configured_listen;
use crate::CliResult;
use crate::output::{self, Format};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The instance's ops server (default: the config's `[metrics] listen`, else
    /// http://127.0.0.1:9464).
    #[arg(long)]
    pub url: Option<String>,
    /// Print the exposition as scraped.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// The ops server's base URL.
pub fn instance_url(url: Option<&str>, config: Option<&Path>) -> CliResult<String> {
    let base = match url {
        Some(u) => u.to_owned(),
        None => configured_listen(config)?.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
    };
    let base = if base.contains("://") {
        base
    } else {
        format!("http://{base}")
    };
    Ok(base.trim_end_matches('/').to_owned())
}

/// GET with a short timeout; non-2xx is an error. Sends `OBSERVERS_OPS_TOKEN` as the bearer
/// token when it is set (`/status` needs it on an instance that has one).
pub async fn get(url: &str) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()?;
    let mut req = client.get(url);
    if let Some(token) = std::env::var(observers_metrics::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
    {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    Ok(body)
}

pub async fn run(args: MetricsArgs, config: Option<&Path>) -> CliResult {
    let url = format!("{}/metrics", instance_url(args.url.as_deref(), config)?);
    let text = get(&url)
        .await
        .with_context(|| "is `observers run` running with [metrics] enabled?")?;
    if args.raw {
        print!("{text}");
        return Ok(());
    }
    let scrape =
        Scrape::parse(&text).with_context(|| format!("{url} is not a metrics exposition"))?;
    let summary = MetricsSummary::from_scrape(&scrape);
    match args.format {
        Format::Json => output::json(&serde_json::json!({
            "url": url,
            "samples": scrape.samples.len(),
            "summary": summary,
        })),
        Format::Text => {
            print!("{}", render(&url, &summary));
            Ok(())
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{:.1}ms", s * 1000.0))
}

fn render(url: &str, s: &MetricsSummary) -> String {
    use std::fmt::Write as _;
    let mut o = format!("Metrics of {url}\n");
    let _ = writeln!(
        o,
        "├── Events processed: {} ({} with a failed action, {} deduplicated, {} matched no observer)",
        s.events_processed, s.events_failed, s.events_deduplicated, s.events_matched_none
    );
    let _ = writeln!(
        o,
        "├── Event processing: p50 {}, p99 {}",
        ms(s.event_processing_p50_seconds),
        ms(s.event_processing_p99_seconds)
    );
    let _ = writeln!(
        o,
        "├── Commit to dispatch: p99 {}",
        ms(s.commit_to_dispatch_p99_seconds)
    );
    let actions: Vec<String> = s.actions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        o,
        "├── Actions: {}",
        if actions.is_empty() {
            "none".into()
        } else {
            actions.join(", ")
        }
    );
    let _ = writeln!(o, "├── Retries: {}", s.retries);
    let _ = writeln!(
        o,
        "├── DLQ: {} written, {} pending",
        s.dlq_items_written, s.dlq_pending
    );
    let _ = writeln!(
        o,
        "├── Checkpoint saves: {}, listener errors: {}",
        s.checkpoint_saves, s.listener_errors
    );
    let _ = writeln!(
        o,
        "├── Cutoff lag: {:.1}s, source backlog: {}",
        s.cutoff_lag_seconds, s.source_backlog
    );
    if let Some(r) = s.cache_hit_ratio {
        let _ = writeln!(o, "├── Cache hit rate: {:.0}%", r * 100.0);
    }
    if !s.fallback_active.is_empty() {
        let _ = writeln!(o, "├── On fallback: {}", s.fallback_active.join(", "));
    }
    let breakers: Vec<String> = s
        .breakers_not_closed
        .iter()
        .map(|(e, st)| format!("{e} {st}"))
        .collect();
    let _ = writeln!(
        o,
        "└── Breakers not closed: {}",
        if breakers.is_empty() {
            "none".into()
        } else {
            breakers.join(", ")
        }
    );
    o
}
