//! Retry policy: exponential backoff with full jitter, capped, honouring `Retry-After`.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    Permanent,
    AttemptsExhausted,
    /// The server asked for a wait longer than inline retries allow.
    RetryAfterTooLong(Duration),
}

/// Inline retry policy built from `[retry]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from(&RetryConfig::default())
    }
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            initial_backoff: c.initial_backoff,
            max_backoff: c.max_backoff,
            multiplier: c.multiplier,
            jitter: c.jitter,
        }
    }
}

impl From<&crate::config::QueueConfig> for RetryPolicy {
    /// The long schedule of queued actions (`[queue]`), applied through the job's `run_at`.
    fn from(c: &crate::config::QueueConfig) -> Self {
        Self {
            max_attempts: c.max_attempts,
            initial_backoff: c.initial_backoff,
            max_backoff: c.max_backoff,
            multiplier: c.multiplier,
            jitter: c.jitter,
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The un-jittered delay after attempt `attempt` (1-based): initial × multiplier^(attempt−1),
    /// capped at `max_backoff`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            // Never a panic, whatever the numbers (a negative product means no wait).
            Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(self.max_backoff)
        }
    }

    /// The delay to use after attempt `attempt`: full jitter, uniform in [0, ceiling].
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Decides after a failed attempt number `attempt` (1-based).
    pub fn decide(
        &self,
        attempt: u32,
        transient: bool,
        retry_after: Option<Duration>,
    ) -> RetryDecision {
        if !transient {
            return RetryDecision::GiveUp(GiveUpReason::Permanent);
        }
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        match retry_after {
            Some(wait) if wait > self.max_backoff => {
                RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong(wait))
            }
            Some(wait) => RetryDecision::RetryAfter(wait),
            None => RetryDecision::RetryAfter(self.delay(attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn exponential_and_capped() {
        let p = policy(false);
        let got: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(1000), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_varies() {
        let p = policy(true);
        let samples: Vec<Duration> = (0..200).map(|_| p.delay(3)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 50, "jitter should spread delays");
    }

    #[test]
    fn decisions() {
        let p = policy(false);
        let cases = [
            (
                1,
                false,
                None,
                RetryDecision::GiveUp(GiveUpReason::Permanent),
            ),
            (
                1,
                true,
                None,
                RetryDecision::RetryAfter(Duration::from_millis(100)),
            ),
            (
                5,
                true,
                None,
                RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted),
            ),
            (
                1,
                true,
                Some(Duration::from_millis(700)),
                RetryDecision::RetryAfter(Duration::from_millis(700)),
            ),
            (
                1,
                true,
                Some(Duration::from_secs(30)),
                RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong(Duration::from_secs(30))),
            ),
        ];
        for (attempt, transient, retry_after, want) in cases {
            assert_eq!(
                p.decide(attempt, transient, retry_after),
                want,
                "attempt {attempt} transient {transient}"
            );
        }
    }
}
