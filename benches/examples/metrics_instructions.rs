//! The cost of metrics on the executor in instructions, which, unlike time, a busy machine does
//! not blur: runs itself under `valgrind --tool=callgrind` four times, with 0 and with `EVENTS`
//! events (the 0-event runs remove start-up): the executor with metrics off, whole; and with
//! metrics on, counting only what `ObserverMetrics::emit` runs. Prints both per event and their
//! ratio. `cargo xtask bench --metrics` runs it after the criterion group `metrics`.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use observers_benches::{event, executor};
use observers_core::telemetry::NoopTelemetry;
use observers_metrics::ObserverMetrics;

const EVENTS: u64 = 20_000;

/// The function whose instructions are the metrics' cost: everything `emit` runs, callees
/// included (callgrind's `--toggle-collect`).
const EMIT: &str = "observers_metrics::telemetry::<impl observers_core::telemetry::Telemetry \
                    for observers_metrics::families::ObserverMetrics>::emit";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode, n] = args.as_slice()
        && flag == "--child"
    {
        return child(mode == "on", n.parse()?);
    }
    let me = std::env::current_exe()?;
    let run = |mode: &str, n: u64, only: Option<&str>| -> Result<u64> {
        let mut cmd = Command::new("valgrind");
        cmd.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]);
        if let Some(f) = only {
            cmd.arg(format!("--toggle-collect={f}"));
        }
        let out = cmd
            .arg(&me)
            .args(["--child", mode, &n.to_string()])
            .output()
            .context("running valgrind (Debian package `valgrind`)")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("valgrind {mode} {n} failed: {stderr}");
        }
        stderr
            .lines()
            .find_map(|l| l.split("Collected : ").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no instruction total in valgrind's output: {stderr}"))
    };
    let per_event = |mode: &str, only: Option<&str>| -> Result<f64> {
        let (base, full) = (run(mode, 0, only)?, run(mode, EVENTS, only)?);
        #[allow(clippy::cast_precision_loss)] // instruction counts far below 2^52
        Ok(full.saturating_sub(base) as f64 / EVENTS as f64)
    };
    let executor = per_event("off", None)?;
    let emit = per_event("on", Some(EMIT))?;
    println!(
        "metrics/instructions: {EVENTS} events, one matching no-op action: executor with \
         metrics off {executor:.0} instructions/event (malloc makes this vary by ~2 % between \
         runs); ObserverMetrics::emit {emit:.0} instructions/event = {:.2} % of it",
        emit / executor * 100.0
    );
    Ok(())
}

/// Processes `n` events, after one warm-up event (so both modes create their handles first).
fn child(on: bool, n: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let metrics = Arc::new(ObserverMetrics::new());
    let exec = if on {
        executor(metrics.clone())
    } else {
        executor(Arc::new(NoopTelemetry))
    };
    let ev = event();
    runtime.block_on(async {
        exec.process(&ev).await?;
        for _ in 0..n {
            exec.process(std::hint::black_box(&ev)).await?;
        }
        Ok::<_, observers_core::ObserverError>(())
    })?;
    if on {
        let want = format!(
            "observer_events_processed_total{{entity_type=\"Order\"}} {}",
            n + 1
        );
        if !metrics.encode().contains(&want) {
            bail!("metrics did not count {} events", n + 1);
        }
    }
    Ok(())
}
