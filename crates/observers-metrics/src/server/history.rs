//! The process's own recent figures for the console's overview: at every sample (every
//! [`super::rate::EVERY`] while the server runs), the events processed per second and the p99 of
//! `observer_event_processing_duration_seconds` over the interval since the previous sample.
//! The last [`KEEP`] points are kept; nothing is read from outside the process.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::scrape::{Scrape, quantile_of};

/// Points kept: 15 minutes at one sample every 5 seconds.
pub const KEEP: usize = 180;

const HISTOGRAM: &str = "observer_event_processing_duration_seconds";

/// One interval's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The end of the interval.
    pub at: DateTime<Utc>,
    pub events_per_second: f64,
    /// `None` when no event finished in the interval.
    pub p99_seconds: Option<f64>,
}

struct Last {
    at: Instant,
    total: f64,
    buckets: Vec<(f64, f64)>,
}

#[derive(Default)]
struct Inner {
    last: Option<Last>,
    points: VecDeque<Point>,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

/// Cumulative buckets minus an earlier scrape's; the earlier ones only count when the bounds
/// are the same (a histogram's bounds never change within a process).
fn delta(now: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let same_bounds = now.len() == before.len()
        && now
            .iter()
            .zip(before)
            .all(|(a, b)| a.0.to_bits() == b.0.to_bits());
    if !same_bounds {
        return now.to_vec();
    }
    now.iter()
        .zip(before)
        .map(|(a, b)| (a.0, (a.1 - b.1).max(0.0)))
        .collect()
}

impl History {
    /// Adds the interval ending at `now` (wall time `at`), read from `scrape`. The first call
    /// only sets the baseline.
    pub fn record(&self, now: Instant, at: DateTime<Utc>, scrape: &Scrape) {
        let total = scrape.sum("observer_events_processed_total", &[]);
        let buckets = scrape.buckets(HISTOGRAM, &[]).unwrap_or_default();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(last) = &inner.last {
            let span = now.saturating_duration_since(last.at).as_secs_f64();
            if span < 0.5 {
                return;
            }
            let point = Point {
                at,
                events_per_second: ((total - last.total) / span).max(0.0),
                p99_seconds: quantile_of(&delta(&buckets, &last.buckets), 0.99),
            };
            inner.points.push_back(point);
            while inner.points.len() > KEEP {
                inner.points.pop_front();
            }
        }
        inner.last = Some(Last {
            at: now,
            total,
            buckets,
        });
    }

    /// Oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.inner
            .lock()
            .map(|i| i.points.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn scrape(total: u64, fast: u64, slow: u64) -> Scrape {
        let text = format!(
            "observer_events_processed_total{{observer=\"o\"}} {total}\n\
             {HISTOGRAM}_bucket{{le=\"0.01\"}} {fast}\n\
             {HISTOGRAM}_bucket{{le=\"1.0\"}} {}\n\
             {HISTOGRAM}_bucket{{le=\"+Inf\"}} {}\n",
            fast + slow,
            fast + slow
        );
        Scrape::parse(&text).unwrap()
    }

    #[test]
    fn points_cover_each_interval_only() {
        let h = History::default();
        let t = Instant::now();
        h.record(t, Utc::now(), &scrape(0, 0, 0));
        assert!(h.points().is_empty(), "the first sample is the baseline");
        // 100 fast events in 10 s.
        h.record(
            t + Duration::from_secs(10),
            Utc::now(),
            &scrape(100, 100, 0),
        );
        // Then 50 events in 5 s, all slow: the p99 is the slow bucket's, not diluted by the
        // earlier fast ones.
        h.record(
            t + Duration::from_secs(15),
            Utc::now(),
            &scrape(150, 100, 50),
        );
        // Nothing happens.
        h.record(
            t + Duration::from_secs(20),
            Utc::now(),
            &scrape(150, 100, 50),
        );
        let p = h.points();
        assert_eq!(p.len(), 3);
        assert!((p[0].events_per_second - 10.0).abs() < 1e-9);
        assert!(p[0].p99_seconds.unwrap() <= 0.01);
        assert!((p[1].events_per_second - 10.0).abs() < 1e-9);
        assert!(p[1].p99_seconds.unwrap() > 0.9);
        assert!(p[2].events_per_second.abs() < 1e-9);
        assert_eq!(p[2].p99_seconds, None);
    }

    #[test]
    fn keeps_the_newest_points() {
        let h = History::default();
        let t = Instant::now();
        for i in 0..(KEEP as u64 + 10) {
            h.record(t + Duration::from_secs(i * 5), Utc::now(), &scrape(i, i, 0));
        }
        assert_eq!(h.points().len(), KEEP);
    }
}
