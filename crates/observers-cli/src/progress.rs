//! Progress of long operations (`replay`, `dlq retry`, `changelog prune`), on stderr so stdout
//! keeps the command's output: on a terminal one line redrawn in place with the count, the rate
//! and, when the total is known, the percentage and ETA; otherwise a plain line every
//! `OBSERVERS_PROGRESS_INTERVAL` (a duration, default 10s; `0s` prints every step); a summary
//! line at the end either way.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How often a terminal line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// How often a plain line is printed when the environment does not say.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_print: Instant,
    terminal: bool,
    every: Duration,
}

impl Progress {
    /// Starts counting `unit`s of `what` (e.g. `replay`, `changes`), out of `total` when known.
    pub fn new(what: &'static str, unit: &'static str, total: Option<u64>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            REDRAW
        } else {
            std::env::var("OBSERVERS_PROGRESS_INTERVAL")
                .ok()
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(PLAIN_INTERVAL)
        };
        let now = Instant::now();
        Self {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last_print: now,
            terminal,
            every,
        }
    }

    /// Counts `n` more done, printing when a line is due.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.last_print.elapsed() >= self.every {
            self.last_print = Instant::now();
            let line = self.line();
            if self.terminal {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// Ends with the summary line: how many, in how long, at what rate.
    pub fn finish(self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        let elapsed = self.started.elapsed();
        eprintln!(
            "{}: {} {} in {:.1}s ({:.0}/s)",
            self.what,
            self.done,
            self.unit,
            elapsed.as_secs_f64(),
            rate(self.done, elapsed)
        );
    }

    fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let per_sec = rate(self.done, elapsed);
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done);
                let eta = if per_sec > 0.0 {
                    format!("{:.0}s", approx(left) / per_sec)
                } else {
                    "?".to_owned()
                };
                format!(
                    "{}: {}/{} {} ({:.0}%), {:.0}/s, ETA {eta}",
                    self.what,
                    self.done,
                    total,
                    self.unit,
                    100.0 * approx(self.done.min(total)) / approx(total),
                    per_sec
                )
            }
            _ => format!(
                "{}: {} {}, {:.0}/s",
                self.what, self.done, self.unit, per_sec
            ),
        }
    }
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { approx(n) / secs } else { 0.0 }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "for display: counts far below 2^52"
)]
fn approx(n: u64) -> f64 {
    n as f64
}
