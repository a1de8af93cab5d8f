//! Events per second for `/status`: the processed-events total sampled every few seconds while
//! the server runs (and at every `/status`), the rate taken over the last minute of samples.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The span the rate is averaged over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How often the server samples the total.
pub const EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct EventRate {
    samples: Mutex<VecDeque<(Instant, f64)>>,
}

impl EventRate {
    /// Records `total` as of `now` and returns the rate since the oldest sample of the window;
    /// `None` until samples span at least a second.
    pub fn sample(&self, now: Instant, total: f64) -> Option<f64> {
        let Ok(mut samples) = self.samples.lock() else {
            return None;
        };
        samples.push_back((now, total));
        // Keep the newest sample at least WINDOW old, so the span stays near a full window.
        while samples
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
        {
            samples.pop_front();
        }
        let (t0, v0) = *samples.front()?;
        let span = now.saturating_duration_since(t0).as_secs_f64();
        (span >= 1.0).then(|| ((total - v0) / span).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_last_window_of_samples() {
        let r = EventRate::default();
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        assert_eq!(r.sample(at(0), 0.0), None, "one sample has no span");
        assert_eq!(r.sample(at(10), 100.0), Some(10.0));
        assert_eq!(r.sample(at(60), 600.0), Some(10.0));
        // The first minute (100 events in 10 s, then 500 in 50 s) leaves the window; the rate
        // follows the last minute only.
        assert_eq!(r.sample(at(70), 1600.0), Some(1500.0 / 60.0));
        assert_eq!(r.sample(at(120), 1600.0), Some(1000.0 / 60.0));
    }
}
